"""The settings of the Kafka commands (``fds run``, ``fds train``, ``fds produce``, ``fds kafka
topics``): :class:`KafkaSettings` (pydantic: flags > environment ``FDS_*`` > a YAML file),
:func:`load_settings` (errors name the setting and where it was given), the settings flags,
and the warning of ``FDS_*`` variables fds does not read.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import socket
import ssl
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

from fds.cli import arg_type, file_path
from fds.errors import ConfigError
from fds.health import Health
from fds.metrics import METRICS_HOST, MetricsServer, check_metrics_host, check_metrics_port, serve
from fds.streams.files import invalid, read_yaml
from fds.streams.kafka_kit import DEFAULT_BOOTSTRAP

__all__ = [
    "CONNECTION_SETTINGS",
    "DEPLOYMENT_FLAGS",
    "KafkaSettings",
    "add_settings_flags",
    "check_topic",
    "load_settings",
    "settings_from",
    "topic_arg",
    "unknown_env",
    "warn_unknown_env",
]

# (the lines of fds run and fds train keep the logger name operators filter on, whichever
# module says them)
log = logging.getLogger("fds.streams.kafka")

#: At-least-once: the default of ``commit_interval_ms`` (Kafka Streams commits every 100 ms
#: under exactly-once; benchmarks/results/commit_interval.md).
COMMIT_INTERVAL_MS = 1000


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


#: The most poll_timeout_ms and shutdown_timeout_s take: with one another, under 10 s.
_STOP_BOUNDS = {"poll_timeout_ms": 1000, "shutdown_timeout_s": 9.0}


def check_topic(name: str) -> str:
    """``name`` if Kafka takes it as a topic name, else a ``ValueError`` saying why (an input
    topic with a space was a traceback from the client; others waited for the broker).

    >>> check_topic("fds.decisions-1")
    'fds.decisions-1'
    """
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{name!r} is no Kafka topic name: 1 to 249 ASCII letters, digits, '.', '_' and '-'"
        )
    return name


#: argparse type: a Kafka topic name.
topic_arg = arg_type(check_topic)


class KafkaSettings(BaseSettings):
    """Settings of ``fds run`` / ``fds produce``: flags > environment (``FDS_*``) > file.

    Examples
    --------
    >>> s = KafkaSettings(bootstrap="broker:9092", group="g1")
    >>> s.client_config()["bootstrap_servers"], s.exactly_once
    (['broker:9092'], False)
    """

    model_config = SettingsConfigDict(env_prefix="FDS_", frozen=True, extra="forbid")

    bootstrap: str = DEFAULT_BOOTSTRAP
    input_topic: str = "transactions"
    output_topic: str = "decisions"
    dlq_topic: str = "dead-letters"
    group: str = Field(default="fds", min_length=1)  # ("": the state root itself, a review)
    # Static membership: a restarted instance with the same id takes its partitions back at
    # once instead of waiting a session timeout for the dead member to expire.
    group_instance_id: str | None = None
    client_id: str = Field(default_factory=lambda: f"fds-{socket.gethostname()}-{os.getpid()}")
    exactly_once: bool = False
    # Stable across restarts of the same instance so a restarted process fences its zombie.
    transactional_id: str | None = None
    # Exactly-once: the broker aborts a transaction open longer than this (and fences its
    # producer: fds run exits, a restart resumes from the last commit). A killed instance's
    # open transaction holds its partitions' committed offsets back from their new owner until
    # then, which waits for it (a chaos review saw a 57 s stall). Shorter takes over sooner
    # but turns a shorter pause into an exit: 10 s (Kafka Streams' value) ended fds run after a
    # 25 s SIGSTOP in a chaos run, where 60 s (kafka-python's default) rides it out.
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    # Where a partition without a committed offset starts. (Kafka's ``none``, an error for
    # such a partition, is refused: fds run retried it for ever as a broker out of reach.)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # At-least-once: batches whose decisions may still await the broker's acknowledgement (and
    # their offsets a commit) while the next batch is decided. 0: flush and commit each batch
    # before the next poll (adds the round trips to every record's latency).
    max_unacked_batches: int = Field(default=2, ge=0)
    # At-least-once: the offsets of acknowledged batches are committed (asynchronously) at
    # most this often (milliseconds), the newer ones gathered meanwhile, and sent with the
    # next batch after the interval: a crash replays about this much more input (identical
    # duplicates), plus the time to that batch; a failed asynchronous commit is covered by
    # the next one. Every commit is a write to the broker's offsets log: under a light load a
    # poll returns a few records, and a commit per batch (~170/s at 2,000 tx/s) took 8% of the
    # decision loop and 8-19% of a shared broker's CPU. 0: after every batch. A drain
    # (checkpoint, idle input, stop, revocation) commits everything at once. No effect with
    # exactly_once (a transaction per batch) or max_unacked_batches 0 (a drain per batch).
    commit_interval_ms: int = Field(default=COMMIT_INTERVAL_MS, ge=0, le=2**31 - 1)
    # One batch is the unit of commit: large enough to amortise the flush and commit round
    # trips (500: 7.2k tx/s, 5000: 10-11k tx/s on the benchmark), small enough that a replay
    # after a crash is short. Under a light load a poll returns what has arrived, far fewer.
    max_poll_records: int = Field(default=5000, ge=1, le=2**31 - 1)
    # Short so SIGTERM is noticed promptly even when idle.
    # (bounded: a stop is heard between two polls; 99999999999 never stopped, a QA pass)
    poll_timeout_ms: int = Field(default=100, ge=1)
    # How long the broker may hold a fetch until ``fetch_min_bytes`` have arrived (the
    # consumer's own settings; kafka-python's defaults). Under a light load every fetch
    # answers with the few records that came, so the client's per-poll work dominates: a
    # larger fetch_min_bytes trades latency (up to fetch_max_wait_ms) for CPU
    # (benchmarks/results/fetch_wait.md).
    fetch_min_bytes: int = Field(default=1, ge=1, le=2**31 - 1)
    # (below kafka-python's request timeout, 30 s: above it the client refused to start,
    # told as a broker out of reach; 0 fetched in a tight loop while idle: a review)
    fetch_max_wait_ms: int = Field(default=500, ge=1, lt=30_000)
    # Event-time alignment (fds.streams.align): how long a partition that is behind may hold
    # the others back while its records are fetched (Kafka Streams' max.task.idle.ms).
    align_wait_s: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    # A state rebuild runs between two polls; the group must not evict the member meanwhile
    # (a dead process is still noticed within session_timeout_ms). Kafka Streams: no limit.
    max_poll_interval_ms: int = Field(default=1_800_000, ge=1000, le=2**31 - 1)
    # (at most 2**31 - 1 ms, as Kafka's timeouts are 32-bit: 1e10 s was a traceback from the
    # client's wait, OverflowError, a QA pass)
    broker_timeout_s: float = Field(default=60.0, gt=0, le=2_147_483, allow_inf_nan=False)
    # Compression of what fds run writes (decisions, dead letters) and fds produce sends. Any
    # compression is read: every codec's library is installed with fds.
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    # Labels for the label-aware features (fraud_count, fraud_rate): every partition of this
    # topic is read by every instance (fds.streams.label_feed). None: the features see no labels.
    labels_topic: str | None = None
    # the deadline of a stop: with a poll's wait, under the 10 s promise (inf was taken)
    shutdown_timeout_s: float = Field(default=8.0, gt=0, allow_inf_nan=False)
    # A transaction stamped more than this after its record was produced is dead-lettered
    # (stage validate): a clock or data error that would push every window's watermark ahead.
    # 0: no check. The default grace period: one record stamped further ahead left every later
    # transaction of every card late, out of the windows (3600 s until 2026-12-05: an hour of
    # velocity rules blind after one record stamped 30 minutes ahead, a QA pass).
    max_event_ahead_s: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    # how fast a dead one is noticed
    session_timeout_ms: int = Field(default=10_000, ge=1000, le=2**31 - 1)
    # Engine state checkpoints (None: ~/.cache/fds/state/<group>[/<group_instance_id>]).
    state_dir: str | None = None
    # A rename: restore the state (and resume from the committed offsets) of this other group,
    # stopped for good. Without it a checkpoint written by another group is refused.
    adopt_state_of: str | None = None
    # How often the state is checkpointed (after a commit); a restart re-folds at most this
    # much input in catch-up mode (~10,000 records/s). 0: after every commit.
    checkpoint_every_s: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    # Periodic checkpoints are written by a forked child (fds.streams.checkpoint): the loop
    # pauses for the fork, not for pickling the state. False: pickle on the loop (no fork;
    # no transient extra memory).
    checkpoint_in_background: bool = True
    # Publish every checkpoint to this compacted topic (fds.streams.state_topic), and restore
    # from it when there is no local checkpoint: a replacement instance on another machine
    # (same group and group_instance_id) starts in seconds instead of rebuilding the state.
    state_topic: str | None = None
    # A partition without checkpointed state (first start, or moved here from another
    # instance) is re-read from its start to rebuild the state: exact, but costs a pass over
    # the retained input. False: start such partitions from an empty state.
    rebuild_state: bool = True
    # Security, passed to kafka-python unchanged when set.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None  # one kafka-python knows (SASL_MECHANISMS)
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    # A deployment's own, read by fds run and fds train alike (they were flags only, so each
    # process of two deployments on one cluster had to be given them: a QA pass). None: the
    # command's default (models_topic_for, metrics_address); flags: --registry, ...
    registry: Path | None = None  # the model registry dir (default models/registry)
    models_topic: str | None = None  # "none": none (fds train announces on "models" by default)
    metrics_port: int | None = None  # -1: off, 0: any free port (default 9108 / 9109)
    metrics_host: str | None = None  # (default 127.0.0.1: this machine only)

    # where each setting came from (load_settings): a flag, FDS_<NAME>, the file, the default
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def fix(self, setting: str) -> str:
        """How to change ``setting`` where it was given (``fix --output-topic``, ``fix
        FDS_OUTPUT_TOPIC``, ``fix output_topic in kafka.yaml``); set by its flag when it was
        not given (a missing topic named in a settings file was told to fix a flag: a QA)."""
        where = self.given_as(setting)
        return f"fix {where}" if where else f"set {flag_of(setting) or 'FDS_' + setting.upper()}"

    def given_as(self, setting: str) -> str | None:
        """Where ``setting`` was given (``--state-topic``, ``FDS_STATE_TOPIC``, ``state_topic in
        kafka.yaml``); None for its default."""
        env = f"FDS_{setting.upper()}"
        given = next((v for k, v in os.environ.items() if k.upper() == env), None)
        if setting not in self._origins and given == str(getattr(self, setting)):
            return env  # (settings made without load_settings read it too)
        origin = self._origins.get(setting, "the default")
        if origin == "the default":
            return None
        return origin if origin.startswith(("-", "FDS_")) else f"{setting} in {origin}"

    def named(self, setting: str) -> str:
        """``setting`` by the name it was given under (its flag for a default), for a message
        that names two settings that conflict."""
        return self.given_as(setting) or flag_of(setting) or f"FDS_{setting.upper()}"

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, v: Any, info: ValidationInfo) -> Any:
        """A setting's value of the kind it needs, not coerced from another YAML made of it:
        ``yes``/``no`` (YAML's true/false) for a number was taken as 1 or 0 (a broker timeout
        of 1 s, one commit per record: a QA pass), and a number for a text was refused with no
        fix (a numeric password: YAML reads ``0123`` as 83)."""
        kind = cls.model_fields[str(info.field_name)].annotation
        kinds = typing.get_args(kind) or (kind,)
        if isinstance(v, bool) and bool not in kinds:
            raise ValueError(
                f"{str(v).lower()} (YAML reads yes/no/on/off as true/false) where a "
                "number or a text is wanted: write the value itself"
            )
        if (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and (str in kinds or SecretStr in kinds)
            and not ({int, float} & set(kinds))
        ):
            raise ValueError('a number where a text is wanted: quote it in the file ("...")')
        return v

    @field_validator("bootstrap")
    @classmethod
    def _host_port(cls, v: str) -> str:
        """Each of the comma-separated servers is ``host:port`` (a port that is no number was
        a traceback from the client; an empty one, a wait for the broker timeout)."""
        for server in v.split(","):
            host, colon, port = server.strip().rpartition(":")
            if not colon and port and not port.endswith("]"):  # a host alone: port 9092, as
                continue  # kafka-python reads it
            bad_host = ":" in host and not host.startswith("[")  # (host:1:2 waited a minute)
            if not host or bad_host or not port.isdigit() or not 0 < int(port) < 65536:
                why = (  # (said as the piece alone: '' for a trailing comma, a QA pass)
                    f"{v!r} has an empty server between or after its commas" if not server.strip()
                    else f"{server.strip()!r}: port {port} is not 1 to 65535"
                    if host and not bad_host and port.isdigit()
                    else f"{server.strip()!r} is not host:port"
                )  # fmt: skip
                raise ValueError(f"{why} (e.g. 127.0.0.1:19092; several separated by commas)")
        return v

    @field_validator("poll_timeout_ms", "shutdown_timeout_s")
    @classmethod
    def _within_the_stop(cls, v: float, info: Any) -> float:
        """At most what the 10 s stop promise leaves (a poll of 99999999999 ms never stopped:
        a QA pass); more is taken as that, with a warning (a deployment file's 25 s was
        refused at the upgrade, a review)."""
        most = _STOP_BOUNDS[info.field_name]
        if v > most:
            shown = [f"{x:g}" if isinstance(x, float) else str(x) for x in (v, most)]
            log.warning("%s %s is more than a stop can wait (10 s): %s is used", info.field_name,
                        *shown)  # fmt: skip
            return type(v)(most)
        return v

    @field_validator("security_protocol", mode="before")
    @classmethod
    def _protocol_case(cls, v: Any) -> Any:
        """Any case, as Kafka's own clients read it (`sasl_ssl` was refused)."""
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("compression_type", mode="before")
    @classmethod
    def _no_compression(cls, v: Any) -> Any:
        """``none`` is no compression, as ``--help`` names the default (it was refused, so a
        flag could not turn off a file's setting: a QA pass); any case, as every codec; the
        refusal of another value names it too."""
        if isinstance(v, str):
            v = v.strip().lower()
            if v == "none":
                return None
        if v is not None and v not in ("gzip", "snappy", "lz4", "zstd"):
            raise ValueError(f"{v!r} is not one of 'none', 'gzip', 'snappy', 'lz4' or 'zstd'")
        return v

    @field_validator("group_instance_id", mode="before")
    @classmethod
    def _no_instance(cls, v: Any) -> Any:
        """An empty id is none (an unset variable in a template), as it was read before."""
        return None if v == "" else v

    @field_validator("auto_offset_reset", mode="before")
    @classmethod
    def _reset(cls, v: Any) -> Any:
        """Any case, and the old names ``smallest``/``largest``; ``none`` said why it is
        refused."""
        v = v.strip().lower() if isinstance(v, str) else v
        v = {"smallest": "earliest", "largest": "latest"}.get(v, v)  # (the old names)
        if v == "none":
            raise ValueError(
                "'none' is not supported: a partition without a committed offset needs a start; "
                "use earliest (the log start) or latest (new records only)"
            )
        return v

    @field_validator(
        "input_topic", "output_topic", "dlq_topic", "labels_topic", "state_topic", "models_topic"
    )
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        return v if v is None else check_topic(v)

    @field_validator("labels_topic", "state_topic", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        """``none`` (any case) is none: a flag or an environment variable turns a file's
        labels or state topic off for one process (it was a topic named none, a QA pass)."""
        return None if isinstance(v, str) and v.strip().lower() == "none" else v

    @field_validator("models_topic", mode="before")
    @classmethod
    def _no_models_topic(cls, v: Any) -> Any:
        """``none`` (any case) is none, as ``fds train --models-topic`` takes it (and ``fds
        run``'s now: a flag can turn a file's models topic off); kept apart from ``None``,
        the command's default (``models_topic_for``)."""
        return "none" if isinstance(v, str) and v.strip().lower() == "none" else v

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port(cls, v: Any) -> Any:
        return v if v is None else check_metrics_port(v)

    @field_validator("state_dir", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "registry",
                     mode="before")  # fmt: skip
    @classmethod
    def _home(cls, v: Any) -> Any:
        """``~`` is the home folder, from the environment as from a flag or the file
        (systemd and Kubernetes do not expand it: FDS_STATE_DIR='~/sd' made a folder `~` in
        the working directory, a QA pass)."""
        if isinstance(v, Path):  # (--registry is parsed into a Path: `~/r` made a folder `~`
            v = str(v)  # in the working directory, a QA pass)
        return os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v

    @field_validator("registry", mode="before")
    @classmethod
    def _registry(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():  # (FDS_REGISTRY= was the working directory)
            raise ValueError("empty: give a folder, or leave it out for models/registry")
        if isinstance(v, str | Path) and str(v).lower() == "none":  # (a folder `none`: a review)
            raise ValueError(
                "a model registry is a folder, never none: leave it out for the default, "
                "models/registry"
            )
        return v

    @field_validator("sasl_mechanism")
    @classmethod
    def _known_mechanism(cls, v: str | None) -> str | None:
        """In any case, as the protocol is (`plain` was refused where `sasl_ssl` was taken)."""
        from kafka.net.sasl import SASL_MECHANISMS

        if v is None:
            return v
        known = {m.upper(): m for m in SASL_MECHANISMS}
        if v.strip().upper() not in known:
            raise ValueError(f"unknown SASL mechanism {v!r}: one of {', '.join(SASL_MECHANISMS)}")
        return known[v.strip().upper()]

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _existing_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol", "PLAINTEXT")
        if v is not None and protocol in ("SSL", "SASL_SSL") and not Path(v).is_file():
            raise ValueError(f"no such file {v!r}")  # (a plaintext client does not read it)
        if v is not None and protocol in ("SSL", "SASL_SSL") and info.field_name == "ssl_cafile":
            try:  # (one that is no certificate waited out the broker timeout, then blamed
                ssl.create_default_context(cafile=v)  # the broker: a QA pass)
            except (ssl.SSLError, OSError, ValueError) as e:
                raise ValueError(
                    f"{v!r} holds no CA certificate ({e}): give the PEM file of the certificate "
                    "that signed the broker's (-----BEGIN CERTIFICATE-----)"
                ) from None
        return v

    @model_validator(mode="after")
    def _distinct_topics(self) -> KafkaSettings:
        """What fds run writes goes to no topic it reads, and each topic it reads has one role:
        dead letters sent to the input were read back and wrapped again, growing, until one was
        too large (a review). (Decisions and dead letters may share a topic.)"""
        reads = {"input_topic": self.input_topic, "labels_topic": self.labels_topic,
                 "state_topic": self.state_topic}  # fmt: skip
        writes = {"output_topic": self.output_topic, "dlq_topic": self.dlq_topic}
        seen: dict[str, str] = {}
        for name, topic in [*reads.items(), *writes.items()]:
            other = seen.get(topic) if topic is not None else None
            if other is not None and (name in reads or other in reads):
                raise ValueError(f"{name} and {other} are both {topic!r}: give each its own topic")
            if topic is not None:
                seen.setdefault(topic, name)
        return self

    @model_validator(mode="after")
    def _usable_security(self) -> KafkaSettings:
        """What the client would otherwise find only after ``broker_timeout_s``, as if the
        broker were down (a review: a missing password, a CA file not there)."""
        sasl = self.security_protocol.startswith("SASL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"{self.security_protocol} needs --sasl-mechanism")
        if sasl and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if self.sasl_plain_username is None:
                raise ValueError(f"{self.sasl_mechanism} needs --sasl-username")
            if self.sasl_plain_password is None or not self.sasl_plain_password.get_secret_value():
                raise ValueError(  # (an empty one was taken: told as a failed login, a review)
                    f"{self.sasl_mechanism} needs the password: set FDS_SASL_PLAIN_PASSWORD"
                    + (" (it is empty)" if self.sasl_plain_password is not None else "")
                )
        if self.security_protocol in ("SSL", "SASL_SSL") and self.ssl_certfile:
            _check_client_key(self.ssl_certfile, self.ssl_keyfile, self.ssl_password)
        return self

    def unused(self) -> list[str]:
        """Settings given that have no effect with the others (each was silently ignored:
        a QA pass, `--sasl-mechanism PLAIN` over PLAINTEXT connected without a word)."""
        said = []
        proto = self.security_protocol
        given = [n for n in ("sasl_mechanism", "sasl_plain_username") if getattr(self, n)]
        if given and not proto.startswith("SASL"):
            said.append(f"{', '.join(given)} given, but security_protocol is {proto}: not "
                        "used (only SASL_PLAINTEXT and SASL_SSL use them)")  # fmt: skip
        files = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, n)]
        if files and proto not in ("SSL", "SASL_SSL"):
            said.append(f"{', '.join(files)} given, but security_protocol is {proto}: not "
                        "used (only SSL and SASL_SSL use them)")  # fmt: skip
        if self.transactional_id and not self.exactly_once:
            said.append("transactional_id given without exactly_once (--exactly-once): not "
                        "used")  # fmt: skip
        if "commit_interval_ms" in self.model_fields_set and (
            self.exactly_once or not self.max_unacked_batches
        ):
            why = ("exactly_once commits a transaction per batch" if self.exactly_once else
                   "max_unacked_batches 0 commits each batch synchronously")  # fmt: skip
            said.append(f"commit_interval_ms given, but {why}: not used")
        if "max_unacked_batches" in self.model_fields_set and self.exactly_once:  # (a QA)
            said.append("max_unacked_batches given, but exactly_once commits a transaction "
                        "per batch, each waited for: not used")  # fmt: skip
        return said

    def models_topic_for(self, default: str | None) -> str | None:
        """The models topic of a command whose own default is ``default``: the one given,
        else ``default``; ``None`` for none."""
        topic = self.models_topic or default
        return None if topic == "none" else topic

    def metrics_address(self, default_port: int) -> tuple[str, int]:
        """``(host, port)`` a command whose own default port is ``default_port`` serves
        /metrics on (port -1: it serves none)."""
        port = default_port if self.metrics_port is None else self.metrics_port
        host = self.metrics_host or METRICS_HOST
        # Checked here, by the commands that serve, before their engine loads: a deployment's
        # file names the scorer's address, which `fds produce` or `fds kafka topics` on
        # another machine refused to load (a review).
        if port >= 0 and self.metrics_host is not None:
            try:
                check_metrics_host(host)
            except ValueError as e:
                raise ConfigError(f"{self.named('metrics_host')}: {e}") from None
        return host, port

    def serves_metrics(self, default_port: int) -> bool:
        """Does a command whose own default port is ``default_port`` serve /metrics? (Its
        metrics are made enabled or not by this, before :meth:`serve_metrics`.)"""
        return self.metrics_address(default_port)[1] >= 0

    def serve_metrics(
        self, metrics: Any, default_port: int, health: Health
    ) -> MetricsServer | None:
        """Serve ``metrics`` and ``health`` at :meth:`metrics_address` (``None``: port -1,
        off); a refusal names the setting where it was given (``metrics_port in kafka.yaml``)."""
        host, port = self.metrics_address(default_port)
        if port < 0:
            return None
        named = (self.named("metrics_host"), self.named("metrics_port"))
        return serve(metrics, host, port, health=health, named=named)

    @property
    def timeout_ms(self) -> int:
        """``broker_timeout_s`` in milliseconds, as the client takes it."""
        return int(self.broker_timeout_s * 1000)

    @property
    def n_servers(self) -> int:
        """How many bootstrap servers are given."""
        return len(self.bootstrap.split(","))

    def reader_config(self, group: str | None = None, **over: Any) -> dict[str, Any]:
        """A consumer's config: committed records only, offsets committed by hand. Without
        ``group`` a group-less reader that assigns partitions itself and commits nothing
        (state restores, label and model feeds)."""
        return {
            **self.client_config(),
            "group_id": group,
            "enable_auto_commit": False,
            # (at-least-once too: records of a producer's aborted transaction are payments
            # that never happened; they were decided and counted in the windows, a QA pass)
            "isolation_level": "read_committed",
            "bootstrap_timeout_ms": self.timeout_ms,
            **over,
        }

    def liveness(self) -> dict[str, int]:
        """A group member's session timeout and its heartbeat, a third of it (below it: 1000
        against 1000 was refused by the client, told as a broker out of reach, a QA pass)."""
        ms = self.session_timeout_ms
        return {"session_timeout_ms": ms, "heartbeat_interval_ms": min(max(1000, ms // 3), ms - 1)}

    def client_config(self) -> dict[str, Any]:
        """Connection and security options common to consumer, producer and admin."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            # the Java client's default: kafka-python's 30 s left fds run without a connection
            # for 27-39 s after a broker came back, and a commit refused after an eviction
            # then arrived too late to rejoin before broker_timeout_s (a chaos run)
            "reconnect_backoff_max_ms": 1000,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "ssl_cafile", "ssl_certfile",
                     "ssl_keyfile"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                cfg[name] = value
        for name in ("sasl_plain_password", "ssl_password"):
            secret = getattr(self, name)
            if secret is not None:
                cfg[name] = secret.get_secret_value()
        if self.ssl_certfile:  # (none: OpenSSL asks for an encrypted key's on the terminal)
            cfg.setdefault("ssl_password", "")
        if self.security_protocol.startswith("SASL") or self.security_protocol == "SSL":
            cfg["ssl_check_hostname"] = self.ssl_check_hostname
        return cfg


def _check_client_key(certfile: str, keyfile: str | None, password: SecretStr | None) -> None:
    """Refuse a client certificate and key the TLS client cannot load, before connecting: an
    encrypted key without FDS_SSL_PASSWORD made OpenSSL ask for it on the terminal, and fds
    waited there deaf to its timeout and to signals; a wrong password, or a file that holds no
    certificate, waited out the broker timeout and blamed --ssl-cafile (a QA pass)."""
    given = password.get_secret_value() if password is not None else ""
    try:  # (a password given, "" when none: OpenSSL never prompts)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certfile, keyfile, given)
    except (ssl.SSLError, OSError) as e:
        key = keyfile or certfile
        try:
            encrypted = b"ENCRYPTED" in Path(key).read_bytes()[:4096]
        except OSError:
            encrypted = False
        if encrypted and not given:
            raise ValueError(
                f"the client key {key!r} is encrypted: set its password in FDS_SSL_PASSWORD"
            ) from None
        if encrypted:
            raise ValueError(f"FDS_SSL_PASSWORD does not open the client key {key!r}") from None
        raise ValueError(
            f"{certfile!r} and {'its key ' + repr(keyfile) if keyfile else 'the key in it'} are no "
            "client certificate and key that match (PEM: -----BEGIN CERTIFICATE----- and "
            f"-----BEGIN PRIVATE KEY-----; {e})"
        ) from None


def flag_of(setting: str) -> str | None:
    """The flag that sets ``setting``, if any."""
    flags = {**SETTING_FLAGS, **DEPLOYMENT_FLAGS}
    return next((f for f, dest in flags.items() if dest == setting), None)


#: The ``FDS_*`` variables fds reads besides its settings' (``FDS_<SETTING>``).
OTHER_ENV = frozenset({
    "FDS_MODEL_KEY", "FDS_STATE_ROOT", "FDS_KAFKA_DIR", "FDS_KAFKA_KIT", "FDS_KAFKA_VERSION",
    "FDS_KIT_STOREPASS", "FDS_REQUIRE_INTEGRATION", "FDS_TEST_BOOTSTRAP", "FDS_TEST_KEEP_BROKER",
    "FDS_TRACE_OUT", "FDS_FAULT_KILL_AFTER_FLUSH", "FDS_FAULT_FOLD_DELAY_S", "FDS_KAFKA_LOG_MB",
    "FDS_FEATURE_KERNEL", "FDS_KERNEL_CACHE",  # (fds.features.kernel.Compiler.from_env)
    # (read by benchmarks/, warned of by every command once every command warned: a review)
    "FDS_KEEP_SCRATCH", "FDS_BENCH_TREE",
})  # fmt: skip
_WARNED_ENV: set[str] = set()


def unknown_env(environ: Mapping[str, str], flags: Collection[str] = ()) -> list[tuple[str, str]]:
    """Each ``FDS_*`` variable in ``environ`` that fds does not read (a typo, or a flag-only
    option such as ``--rules``: it was ignored without a word, a QA pass) and what to say of
    it; ``flags``: the command line's options, one of which it may have meant.

    >>> env = {"FDS_GROUP": "g", "FDS_BOOTSTRAPP": "h", "FDS_RULES": "r", "FDS_FOO": "1",
    ...        "FDS_SASL_PASSWORD": "p"}
    >>> for _, said in unknown_env(env, flags={"--rules"}):
    ...     print(said)
    FDS_BOOTSTRAPP is no variable fds reads: ignored (did you mean FDS_BOOTSTRAP?)
    FDS_FOO is no variable fds reads: ignored
    FDS_RULES is no variable fds reads: ignored (give --rules where the command has it)
    FDS_SASL_PASSWORD is no variable fds reads: ignored (did you mean FDS_SASL_PLAIN_PASSWORD?)
    """
    known = {f"FDS_{k.upper()}" for k in KafkaSettings.model_fields} | OTHER_ENV
    said = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("FDS_") or upper in known:
            continue
        # the closest, those sharing more of its words first (FDS_SASL_PASSWORD was told
        # FDS_SSL_PASSWORD, not FDS_SASL_PLAIN_PASSWORD: a QA pass)
        words = set(upper.split("_"))
        close = sorted(difflib.get_close_matches(upper, known, n=3, cutoff=0.8),
                       key=lambda k: -len(words & set(k.split("_"))))  # fmt: skip
        flag = f"--{upper[4:].lower().replace('_', '-')}"
        hint = (
            f" (did you mean {close[0]}?)" if close
            else f" (give {flag} where the command has it)" if flag in flags
            else ""
        )  # fmt: skip
        said.append((name, f"{name} is no variable fds reads: ignored{hint}"))
    return said


def warn_unknown_env(flags: Collection[str] = (), logger: logging.Logger = log) -> None:
    """Warn of each ``FDS_*`` variable of the environment fds does not read (once each), to
    ``logger`` (the command's, from the CLI, with its ``flags``)."""
    for name, said in unknown_env(os.environ, flags):
        if name not in _WARNED_ENV:
            _WARNED_ENV.add(name)
            logger.warning("%s", said)


def _settings_file(path: Path) -> dict[str, Any]:
    """The settings of a file, its paths relative to it."""
    if not path.exists():  # (a pipe, <(...), is read; a folder, /dev/zero said as they
        raise ConfigError(f"settings file not found: {path}")  # are: a README walk)
    doc = read_yaml(path, "a settings file") or {}
    if not isinstance(doc, dict):
        raise ConfigError("expected a mapping of setting: value", where=str(path))
    for k in doc:
        if not isinstance(k, str):
            raise ConfigError(f"{k!r}: a setting's name is text (e.g. group: fds)",
                              where=str(path))  # fmt: skip
    # relative to the file (the state dir was relative to the working directory: a QA)
    for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "state_dir", "registry"):
        v = doc.get(k)
        if isinstance(v, str) and v.strip() and v.lower() != "none":  # (an empty one is
            # refused as FDS_REGISTRY= is, or the default as FDS_STATE_DIR=: it was the
            # file's own folder, a QA pass)
            doc[k] = str(path.parent / Path(v).expanduser())  # (an absolute path: as it is)
    return doc


def registry_setting(file: Path | str | None = None) -> Path | None:
    """The ``registry`` setting alone, as :func:`load_settings` reads it (``FDS_REGISTRY``
    over the file's), the other settings neither read nor checked: ``fds models`` talks to no
    broker, and a rollback was refused over a CA file and a SASL password it never uses (a QA
    pass)."""
    env = [v for k, v in os.environ.items() if k.upper() == "FDS_REGISTRY"]
    where, value = ("FDS_REGISTRY", env[0]) if env else (str(file), None)
    if not env and file is not None:
        value = _settings_file(Path(file)).get("registry")
    if value is None:
        return None
    if not isinstance(value, str):  # (5 or a list was a folder of that name: a review)
        raise ConfigError(f"setting registry: a folder's path, got {value!r} (from {where})")
    try:
        return Path(str(KafkaSettings._registry(KafkaSettings._home(value))))
    except ValueError as e:
        raise ConfigError(f"setting registry: {e} (from {where})") from None


def load_settings(file: Path | str | None = None, **flags: Any) -> KafkaSettings:
    """Build settings from a YAML file, the environment and flags (highest wins: flags).

    ``None`` flags are ignored (argparse defaults). Errors name the setting and where it came
    from: the file's line (an unknown key with the closest known one), else the flag or the
    environment variable. An ``FDS_*`` variable fds does not read is warned about, once.
    """
    warn_unknown_env()
    values: dict[str, Any] = {}
    doc: dict[str, Any] = {}
    path = Path(file) if file is not None else None
    if path is not None:
        doc = _settings_file(path)
        # The environment outranks the file: drop file keys that FDS_<KEY> sets.
        # (case-insensitively, as pydantic reads the environment: fds_group lost to the file)
        env = {k.upper() for k in os.environ}
        values = {k: v for k, v in doc.items() if f"FDS_{k.upper()}" not in env}
    given = {k: v for k, v in flags.items() if v is not None}
    values.update(given)

    def source(setting: str) -> str:
        flag = flag_of(setting)
        if setting in given:
            return flag or f"--{setting.replace('_', '-')}"
        env = f"FDS_{setting.upper()}"
        if any(k.upper() == env for k in os.environ):
            return env
        return f"{path}" if path is not None and setting in doc else "the default"

    try:
        settings = KafkaSettings(**values)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # (the file's line only when the value is the file's: an environment variable that
        # overrode it was blamed on the file, a QA pass)
        if path is not None and name in values and name not in given:
            raise invalid(path, exc, KafkaSettings, "the settings file") from None
        if not name:  # several settings together: say whence those it names (else the
            # security ones: whence the protocol)
            named = [k for k in KafkaSettings.model_fields if k in msg] or ["security_protocol"]
            whence = ", ".join(f"{k} from {source(k)}" for k in named)
            raise ConfigError(f"{msg} ({whence})") from None
        raise ConfigError(f"setting {name}: {msg} (from {source(name)})") from None
    settings._origins = {k: source(k) for k in KafkaSettings.model_fields}
    for said in settings.unused():
        log.warning("%s", said)
    return settings


SETTING_FLAGS = {
    "--bootstrap": "bootstrap",
    "--input-topic": "input_topic",
    "--output-topic": "output_topic",
    "--dlq-topic": "dlq_topic",
    "--group": "group",
    "--group-instance-id": "group_instance_id",
    "--transactional-id": "transactional_id",
    "--max-poll-records": "max_poll_records",
    "--max-unacked-batches": "max_unacked_batches",
    "--commit-interval": "commit_interval_ms",
    "--broker-timeout": "broker_timeout_s",
    "--max-event-ahead": "max_event_ahead_s",
    "--state-dir": "state_dir",
    "--adopt-state-of": "adopt_state_of",
    "--checkpoint-every": "checkpoint_every_s",
    "--align-wait": "align_wait_s",
    "--state-topic": "state_topic",
    "--session-timeout": "session_timeout_ms",
    "--max-poll-interval": "max_poll_interval_ms",
    "--fetch-min-bytes": "fetch_min_bytes",
    "--fetch-max-wait": "fetch_max_wait_ms",
    "--compression": "compression_type",
    "--security-protocol": "security_protocol",
    "--sasl-mechanism": "sasl_mechanism",
    "--sasl-username": "sasl_plain_username",
    "--ssl-cafile": "ssl_cafile",
    "--ssl-certfile": "ssl_certfile",
    "--ssl-keyfile": "ssl_keyfile",
}

#: The settings flags of ``fds run`` and ``fds train`` that each defines itself, for its own
#: default and help (``models_topic_for``, ``metrics_address``).
DEPLOYMENT_FLAGS = {
    "--registry": "registry",
    "--models-topic": "models_topic",
    "--metrics-port": "metrics_port",
    "--metrics-host": "metrics_host",
}


#: The settings every client takes: where the broker is and how to reach it.
CONNECTION_SETTINGS = (
    "bootstrap", "broker_timeout_s", "security_protocol", "sasl_mechanism",
    "sasl_plain_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
)  # fmt: skip


def add_settings_flags(
    p: argparse.ArgumentParser,
    only: Sequence[str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """The settings flags (``only``: those of these settings; ``fds run`` takes them all;
    ``helps``: a command's own help of some)."""
    p.add_argument(
        "--config", type=file_path("settings file"), default=None,
        help="YAML file of settings (lowest rank)",
    )  # fmt: skip
    for flag, dest in SETTING_FLAGS.items():
        if only is not None and dest not in only:
            continue
        kind = (
            float
            if dest
            in ("broker_timeout_s", "checkpoint_every_s", "align_wait_s", "max_event_ahead_s")
            else int
            if dest in ("max_poll_records", "max_unacked_batches", "fetch_min_bytes")
            or dest.endswith("_ms")
            else str
        )
        p.add_argument(
            flag,
            dest=dest,
            type=_number(kind) if kind is int or kind is float else kind,
            default=None,
            help=(helps or {}).get(dest)
            or f"setting {dest}{_UNITS.get(dest.rpartition('_')[2], '')} (env "
            f"FDS_{dest.upper()}; default {_default_of(dest)})",
        )


def _number(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """argparse type of a number setting, saying what to give (argparse's own said "invalid
    int value: 'abc'", where every other number flag says what to give: a QA pass); its range
    is the setting's to check.

    >>> _number(int)("1.5")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: invalid value '1.5': give a whole number
    """
    what = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: give {what}") from None

    return parse


#: A setting's unit by the end of its name, for ``--help`` (``--commit-interval 1`` is 1 ms,
#: ``--checkpoint-every 1`` one second).
_UNITS = {"ms": ", in milliseconds", "s": ", in seconds"}


def _default_of(setting: str) -> Any:
    """A setting's default as ``--help`` states it."""
    if setting == "state_dir":
        return "~/.cache/fds/state/<group>[/<instance>]; 'none': no checkpoints"
    if setting == "transactional_id":
        return "fds-<group>-<group-instance-id or 0>"
    default = KafkaSettings.model_fields[setting].default
    return "none" if default in (None, PydanticUndefined) else default


def settings_from(args: argparse.Namespace, **extra: Any) -> KafkaSettings:
    """The settings of a command's ``args``: its settings flags (those it has) over the
    environment over ``--config``."""
    dests = (*SETTING_FLAGS.values(), *DEPLOYMENT_FLAGS.values())
    return load_settings(args.config, **{d: getattr(args, d, None) for d in dests}, **extra)
