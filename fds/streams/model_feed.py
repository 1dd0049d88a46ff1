"""The models-topic feed of a scorer: versions announced by ``fds train`` into a local registry.

``fds train`` publishes each version into its own registry and announces it on the compacted
models topic (:func:`fds.streams.train.announcement`: key = model name and decisions topic,
value = the manifest entry, the decisions topic it learned from, the artifact inline up to 8 MB,
and its path in the trainer's registry). A scorer on
another machine (``fds run --models-topic models``) runs a :class:`ModelFeed`: a background
consumer that takes each announcement of the model it serves, verifies the artifact and imports
it into the scorer's *local* registry (:meth:`fds.models.Registry.import_version`: same version
id and manifest fields, written atomically). The scorer's registry watch then verifies again,
canaries and hot-swaps it exactly as for a shared registry directory.

The flow (one daemon thread)::

    assign every partition of the topic (no group) -> seek to the beginning
      -> catch-up: read to the end offsets seen at start, check each record, keep the
         newest that passes per key -> import those (a restarted scorer finds each model's
         newest good version, even when a bad record came after it)
      -> live: import each announcement as it arrives

Per announcement: unparseable, wrong sha256 or size, wrong or missing HMAC (when
``FDS_MODEL_KEY`` is set), a bad version id, or a different artifact under a version id the
registry already holds: rejected (a warning, ``fds_model_swaps_total{result="bad_announcement"}``),
the current model stays. Pointer-only announcements (artifact above the inline limit) are read
from their ``path`` when this machine can reach it (a shared mount), else a warning and
``fds_model_swaps_total{result="unreachable"}``. Announcements of other models, and of versions
learned from another decisions topic than the scorer writes (another deployment's trainer on a
shared models topic), are skipped; a version already in the registry is skipped (idempotent).
Nothing is unpickled here. Broker errors are retried with backoff; the feed never stops the
scorer.

A lifecycle announcement (:func:`fds.streams.train.lifecycle`: the trainer registry's champion
and rejected versions, after `fds models promote|rollback` there) is followed once per change
(:meth:`fds.models.Registry.follow`): its champion made the champion here (imported from it
when not held), its rejections marked; the registry watch then swaps.

Version ids are the trainer's: keep one trainer registry per model name. A second trainer (or
a reset registry) reuses ids, and its versions are rejected as different artifacts.

Without ``FDS_MODEL_KEY`` only the sha256 of an unsigned announcement is checked: that catches
corruption, not a forged announcement, since whoever can write to the topic can also compute a
sha256 -- and the scorer unpickles what it imports; a signed one is refused. Set the same key on
the trainer and the scorers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from fds.errors import ArtifactError, describe
from fds.metrics import NullMetrics
from fds.models.registry import (
    FOLLOWED_REASON,
    KEY_ENV,
    WARM_UP,
    Registry,
    sign_deployment,
    sign_record,
)
from fds.streams.kafka_kit import Consumer, UnreadableRecords
from fds.streams.settings import KafkaSettings
from fds.timeutil import format_ts

__all__ = ["FeedStats", "ModelFeed"]

#: The ``kind`` of a models-topic record announcing a trainer registry's lifecycle
#: (:func:`fds.streams.train.lifecycle`), and its fields the ``lifecycle_hmac`` signs.
LIFECYCLE = "lifecycle"
LIFECYCLE_FIELDS = (
    "kind", "name", "decisions_topic", "champion", "rejected", "mark", "judged", "issued",
    "passed_over",
)  # fmt: skip
#: Fields added to a signed record since its first release (absent from older trainers').
_ADDED = frozenset({"judged", "issued", "passed_over"})
#: The ``kind`` of a scorer's contest verdict sent to its trainer (:meth:`ModelFeed.on_event`),
#: and its fields the ``verdict_hmac`` signs.
VERDICT = "verdict"
VERDICT_FIELDS = ("kind", "name", "decisions_topic", "verdict", "version", "other", "by", "at")
#: The scorer events sent as verdicts: (the version judged, the other one) of their figures
#: (``shadow``: a contest began; the trainer's registry keeps its challenger until the verdict).
_VERDICTS = {
    "shadow": ("candidate", "incumbent"),
    "promote": ("candidate", "incumbent"),
    "reject": ("candidate", "incumbent"),
    "rollback": ("on_probation", "predecessor"),
}

log = logging.getLogger(__name__)
#: No record's context (an announcement handled outside the consumer loop).
_NOWHERE: Mapping[str, str] = MappingProxyType({})

# The models topic's max.message.bytes (streams/topics.yaml): one fetch holds a whole
# announcement (an 8 MB artifact is ~11 MB in base64).
MAX_FETCH_BYTES = 16 << 20
# Short enough that stop() is noticed promptly; announcements are rare, so idle polls are cheap.
POLL_MS = 200
# How long a scorer's verdict may wait for the trainer's judgement before the trainer's
# lifecycle is followed without it (it comes within a second or two of the trainer's next poll).
JUDGE_WAIT_S = 60.0
# Backoff between retries after a broker error or while the topic does not exist yet.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
# kafka-python bootstraps in the consumer constructor; bounded so a retry loop stays lively.
BOOTSTRAP_TIMEOUT_S = 5.0
# close() waits this long for the thread: a poll ends within POLL_MS. A thread still
# bootstrapping (broker down) is left to end with the process: the feed holds no group
# membership or offsets, so nothing is lost, and `fds run` keeps its 10 s shutdown promise.
CLOSE_WAIT_S = 2.0


@dataclass(slots=True)
class FeedStats:
    """Counters of one feed (each announcement lands in exactly one of the other fields)."""

    announcements: int = 0
    imported: int = 0
    present: int = 0  # the version was already in the registry
    superseded: int = 0  # a newer one of the same model followed it in the catch-up
    other_model: int = 0
    other_deployment: int = 0  # learned from another decisions topic than the scorer writes
    lifecycle: int = 0  # a trainer registry's champion and rejections, followed (or already)
    verdict: int = 0  # a scorer's contest verdict, judged by the trainer (see ModelFeed.judge)
    skipped: int = 0  # not for this reader: verdicts on a scorer, announcements on the trainer
    rejected: int = 0
    unreachable: int = 0
    tombstone: int = 0  # a null value: the topic's key deleted (compaction), nothing to import


def announcement_key(name: str, decisions_topic: str | None) -> bytes:
    """The models-topic key of ``name``'s announcements learned from ``decisions_topic``: one per
    deployment, so compaction keeps each one's newest (keyed by ``name`` alone, a second
    deployment's announcement removed the first's; a topic name holds no ``/``).

    >>> announcement_key("default", "decisions")
    b'default/decisions'
    """
    return f"{name}/{decisions_topic}".encode()


def lifecycle_key(name: str, decisions_topic: str | None) -> bytes:
    """The models-topic key of the lifecycles of ``name``'s trainer registry for that
    deployment (:func:`fds.streams.train.lifecycle`).

    >>> lifecycle_key("default", "decisions")
    b'default/decisions/lifecycle'
    """
    return announcement_key(name, decisions_topic) + b"/" + LIFECYCLE.encode()


def _older(issued: Any, seen: Any) -> bool:
    """Is lifecycle number ``issued`` older than ``seen`` (both ``[registry id, n]``, see
    :meth:`fds.models.Registry.issue`), from the same registry? A lifecycle with no number
    (of a release before them) is older than any numbered one followed (a review: replayed,
    it got past the check)."""
    pair = (list, tuple)
    if issued is None and isinstance(seen, pair):
        return True
    return (isinstance(issued, pair) and isinstance(seen, pair) and len(issued) == len(seen) == 2
            and issued[0] == seen[0] and int(issued[1]) < int(seen[1]))  # fmt: skip


def _in_order(item: tuple[tuple[dict[str, Any], bytes], Mapping[str, str]]) -> tuple[Any, ...]:
    """The catch-up's order of the newest record per key: lifecycles last, the rest by offset."""
    (ann, _), where = item
    return ann.get("kind") == LIFECYCLE, where.get("partition", ""), int(where.get("offset", 0))


#: A record to send: key, value (``None``: a tombstone), and whether the trainer's judgement of
#: it is awaited before its lifecycle is followed (see ``ModelFeed._follow``).
Outgoing = tuple[bytes, bytes | None, bool]


class ModelFeed:
    """Import the versions announced on the models topic into ``registry`` (a daemon thread).

    Parameters
    ----------
    settings
        Connection and security options (``client_config``) and ``broker_timeout_s``.
    registry
        The scorer's local registry (its key, from ``FDS_MODEL_KEY``, checks the HMAC).
    name
        The model name the scorer serves (the spec name); other models' announcements are
        skipped.
    decisions_topic
        The decisions topic the scorer writes: announcements of versions learned from another
        one (another deployment's trainer on a shared models topic) are skipped, said once per
        topic; ``None``, and announcements that do not say theirs (older trainers): taken.
    topic
        The models topic.
    consumer_factory
        Builds the consumer from keyword options (a fake in unit tests).
    metrics
        A :class:`fds.metrics.Metrics` for ``fds_model_swaps_total`` (``None``: none).
    judge
        The trainer's reader (``fds train``): its registry takes the scorers' contest verdicts
        (:meth:`fds.models.Registry.judge`, the first one stands), so its lifecycle, announced,
        puts the whole fleet on one champion; it skips version and lifecycle announcements.
    by
        A scorer's name in the verdicts it sends (:meth:`on_event`; ``<group>/<instance>``).
    producer_factory
        Builds the producer of those verdicts from keyword options (a fake in unit tests).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        registry: Registry,
        *,
        name: str,
        topic: str = "models",
        decisions_topic: str | None = None,
        consumer_factory: Callable[..., Any] | None = None,
        metrics: Any = None,
        judge: bool = False,
        by: str | None = None,
        producer_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.s = settings
        self.judge, self.by = judge, by
        self._producer_factory = producer_factory or KafkaProducer
        self._producer: Any = None
        # (key, value, awaited) to send: a scorer's verdicts; the trainer's tombstones of those
        # judged (awaited: the trainer's judgement is, for a verdict, not for a shadow notice)
        self._verdicts: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self._unsent: list[Outgoing] = []
        # per partition, the newest offset of the verdicts sent and not judged by the trainer
        # yet, and when it was sent; the trainer's lifecycle that came meanwhile (_follow)
        self._awaiting: dict[str, tuple[int, float]] = {}
        self._unsent_since = 0.0  # ... and since when the verdicts not sent yet were not
        self._deferred: tuple[dict[str, Any], Mapping[str, str]] | None = None
        self._followed = False  # a lifecycle followed since the start (see _follow)
        self.registry = registry
        self.name = name
        self.topic = topic
        self.decisions_topic = decisions_topic
        self._others: set[str] = set()  # other deployments' decisions topics, said once each
        self._registries: set[str] = set()  # (judge) other trainers' registry ids, said once each
        self.stats = FeedStats()
        self.metrics: Any = metrics if metrics is not None else NullMetrics()
        self.caught_up = threading.Event()  # set once the topic's history has been read
        self._consumer_factory = consumer_factory or Consumer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = RETRY_MIN_S
        # (partition, offset, error) said: a record read again, rejected for the same reason
        self._rejected: set[tuple[str | None, str | None, str]] = set()
        # (judge) the newest lifecycle number of this registry read from the topic, and whether
        # an older one came after it (see _note_replay)
        self._newest_issued = 0
        self.replayed = threading.Event()

    # -- one announcement --------------------------------------------------------------------

    def handle(
        self, value: bytes | None, where: Mapping[str, str] = _NOWHERE, key: bytes | None = None
    ) -> str:
        """Verify and import one announcement (the record's ``value`` and ``key``); returns the
        outcome (a :class:`FeedStats` field name)."""
        checked = self._check(value, where)
        if isinstance(checked, str):
            if checked == "tombstone":
                self._lifecycle_deleted(key, where)
            return self._count(checked)
        return self._count(self._install(checked, where, key))

    def _lifecycle_deleted(self, key: bytes | None, where: Mapping[str, str]) -> bool:
        """Is ``key``, just deleted (a tombstone), a trainer's lifecycle key? No trainer deletes
        one: whoever can write to the topic did, and scorers started since served the newest
        version instead of the trainer's champion (a second security pass). The trainer
        announces its lifecycle anew (:attr:`replayed`); a scorer's catch-up keeps the one
        before it."""
        if key is None or not key.endswith(b"/" + LIFECYCLE.encode()):
            return False
        if self.judge and key == lifecycle_key(self.name, self.decisions_topic):
            log.warning(
                'this registry\'s lifecycle was deleted from models topic="%s" (a tombstone: '
                "no trainer sends one); announcing it anew", self.topic, extra=where,
            )  # fmt: skip
            self.replayed.set()
        return True

    def _count(self, outcome: str) -> str:
        self.stats.announcements += 1
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        return outcome

    def _reject(self, exc: Exception, where: Mapping[str, str]) -> str:
        """Said (and counted in the metric) once per record: the catch-up after a reconnect
        reads the topic again and said every old bad one again (a QA pass)."""
        error = str(exc) if isinstance(exc, ArtifactError) else f"{describe(exc)}"
        at = (where.get("partition"), where.get("offset"), error)
        if at[:2] == (None, None) or at not in self._rejected:
            self._rejected.add(at)
            self.metrics.model_swap("bad_announcement")
            log.warning('rejected model announcement error="%s"', error, extra=where)
        return "rejected"

    def _check(
        self, value: bytes | None, where: Mapping[str, str]
    ) -> str | tuple[dict[str, Any], bytes]:
        """``(announcement, verified artifact)`` to import, or the outcome that ends it."""
        if value is None:  # (was "rejected: JSONDecodeError", a QA pass)
            log.debug("skipped a tombstone on the models topic", extra=where)
            return "tombstone"
        try:
            ann = orjson.loads(value or b"")
            if not isinstance(ann, dict):
                raise ArtifactError("not a JSON object")
            if ann.get("name") != self.name:
                log.debug('skipped announcement of model="%s"', ann.get("name"), extra=where)
                return "other_model"
            learned_from = ann.get("decisions_topic")
            if self.decisions_topic and learned_from not in (None, self.decisions_topic):
                if learned_from not in self._others:
                    self._others.add(learned_from)
                    log.warning(
                        'models topic="%s" also carries model="%s" learned from decisions '
                        'topic="%s", not this scorer\'s "%s": another deployment\'s, skipped '
                        "(give each deployment its own models topic)",
                        self.topic, self.name, learned_from, self.decisions_topic, extra=where,
                    )  # fmt: skip
                return "other_deployment"
            kind = ann.get("kind")
            if self.judge and kind == LIFECYCLE:
                self._note_replay(ann, where)
            if (kind == VERDICT) != self.judge:  # (a scorer's verdict: for the trainer only)
                if (kind == VERDICT and self.by and ann.get("by") == self.by and where
                        and ann.get("verdict") != "shadow"):  # fmt: skip
                    # ours (sent before a restart, say): held back by the lifecycle till judged
                    at, offset = where["partition"], int(where["offset"])
                    if offset > self._awaiting.get(at, (-1, 0.0))[0]:
                        self._awaiting[at] = (offset, time.monotonic())
                return "skipped"
            if kind == VERDICT:
                return self._check_signed(ann, VERDICT_FIELDS, "verdict"), b""
            if kind == LIFECYCLE:
                return self._check_lifecycle(ann, where)
            return self._check_version(ann, where)
        except Exception as exc:  # a bad record never stops the feed
            return self._reject(exc, where)

    def _note_replay(self, life: dict[str, Any], where: Mapping[str, str]) -> None:
        """(The trainer) a lifecycle of its own registry written after a newer one: a writer of
        the topic sent an old signed one again, and once compaction removed the newer one, every
        scorer started since followed it (the rolled-back champion, its rejections undone: a
        security review). Sets :attr:`replayed`: the trainer announces its lifecycle anew. Only
        numbers this registry issued count (a forged larger one would flag each that follows)."""
        issued, m = life.get("issued"), self.registry.manifest()
        if not (isinstance(issued, list) and len(issued) == 2 and issued[0] == m.get("id")):
            other = issued[0] if isinstance(issued, list) and len(issued) == 2 else None
            if self.caught_up.is_set() and isinstance(other, str) and other not in self._registries:
                # written now by another registry's trainer of this model and deployment (one
                # of the topic's history may be a registry this one replaced): the scorers
                # imported its versions too, without a word (a QA pass)
                self._registries.add(other)
                log.warning(
                    'another trainer announces model="%s" learned from decisions topic="%s" on '
                    'models topic="%s" (its registry %s, not this one, %s): scorers take the '
                    "versions of both; run one fds train per model (stop the other, or give it "
                    "its own models topic)", self.name, self.decisions_topic, self.topic, other,
                    m.get("id"), extra=where,
                )  # fmt: skip
            return
        with contextlib.suppress(ArtifactError):  # (not ours: signed with another key)
            self._check_signed(life, LIFECYCLE_FIELDS, "lifecycle")
            n = int(issued[1])
            if n > int(m.get("lifecycles", 0)):
                return
            if n < self._newest_issued:
                log.warning(
                    "an older lifecycle of this registry (number %d, after %d) was written to "
                    'models topic="%s" again: a replay by whoever can write to it; announcing '
                    "the registry's lifecycle anew", n, self._newest_issued, self.topic,
                    extra=where,
                )  # fmt: skip
                self.replayed.set()
            self._newest_issued = max(self._newest_issued, n)

    def _check_version(
        self, ann: dict[str, Any], where: Mapping[str, str]
    ) -> str | tuple[dict[str, Any], bytes]:
        have = self.registry.manifest()["versions"].get(ann.get("version"))
        if have is not None and have["sha256"] == ann.get("sha256"):
            return "present"  # cheap (no artifact read), nothing imported (an
            # announcement of an older trainer, held already, is no warning after its upgrade)
        key, signed = self.registry.key, ann.get("deployment_hmac")
        if key and not hmac.compare_digest(sign_deployment(ann, key), str(signed)):
            raise ArtifactError(  # (another deployment's signed version, relabelled as ours)
                f"version {ann.get('version')!r} is announced for model {ann.get('name')!r} "
                f"and decisions topic {ann.get('decisions_topic')!r} "
                + ("without their signature while " + KEY_ENV + " is set (a trainer before "
                   "2026-12-04: upgrade it)" if not signed else "under another signature: "
                   "relabelled from another deployment, or another key")
                + ": refused"
            )  # fmt: skip
        data = self._artifact(ann, where)
        if data is None:
            return "unreachable"
        self.registry.check_import(data, ann)
        return ann, data

    def _check_lifecycle(
        self, life: dict[str, Any], where: Mapping[str, str]
    ) -> str | tuple[dict[str, Any], bytes]:
        """A trainer registry's lifecycle (:func:`fds.streams.train.lifecycle`): signed with
        the key when one is set, its champion's announcement checked as any version's. Returns
        it with the champion's bytes to import (empty: held here already, or none)."""
        self._check_signed(life, LIFECYCLE_FIELDS, "lifecycle")
        champ, rejected = life.get("champion"), life.get("rejected")
        if not (isinstance(rejected, list) and all(isinstance(v, str) for v in rejected)):
            raise ArtifactError(f"a lifecycle's rejected versions are no list of ids: {rejected!r}")
        if champ is None:
            return life, b""
        ann = life.get("champion_announcement")
        if not isinstance(ann, dict) or ann.get("version") != champ:
            raise ArtifactError(f"a lifecycle naming champion {champ!r} does not announce it")
        checked = self._check_version(ann, where)
        if isinstance(checked, str):
            return checked if checked != "present" else (life, b"")
        return life, checked[1]

    def _check_signed(
        self, record: dict[str, Any], fields: tuple[str, ...], what: str
    ) -> dict[str, Any]:
        """``record``, unless a key is set and its ``<what>_hmac`` does not sign ``fields``."""
        key, signed = self.registry.key, record.get(f"{what}_hmac")
        # (a field added since is signed when the record has it: an older trainer's not)
        body = {k: record.get(k) for k in fields if k in record or k not in _ADDED}
        if key and not hmac.compare_digest(sign_record(body, key), str(signed)):
            how = "whose signature does not match" if signed else "not signed"
            raise ArtifactError(f"a {what} announcement {how} while {KEY_ENV} is set: refused")
        return record

    def _install(
        self, checked: tuple[dict[str, Any], bytes], where: Mapping[str, str],
        key: bytes | None = None, *, keep: bool = False,
    ) -> str:  # fmt: skip
        ann, data = checked
        if ann.get("kind") == VERDICT:
            return self._judge(ann, where, key)
        if ann.get("kind") == LIFECYCLE:
            return self._follow(ann, data, where)
        try:
            if self.registry.import_version(data, ann, keep=keep) is None:
                return "present"
        except Exception as exc:  # a different artifact under a known id, a full disk, ...
            return self._reject(exc, where)
        log.info(
            'imported model version="%s" model="%s" size="%d"',
            ann["version"], self.name, len(data), extra=where,
        )  # fmt: skip
        return "imported"

    def _judge(self, v: dict[str, Any], where: Mapping[str, str], key: bytes | None) -> str:
        """A scorer's verdict into the trainer's registry, once per record; its lifecycle is
        then announced again (:func:`fds.streams.train.lifecycle` names the records judged),
        also when nothing changed: the scorer that sent it goes back to the champion there.
        Its ``key`` is then deleted from the topic (a tombstone: keys are one per version,
        kind and scorer, so compaction alone kept every verdict, read at every start)."""
        said = (v.get("figures") or {}).get("why")
        why = f"{v.get('verdict')} of {v.get('version')} by scorer {v.get('by')}" + (
            f" ({said})" if said else ""
        )
        offset = where.get("offset")
        # (what it signs, its time and scorer included: the same verdict sent again at another
        # offset, no key needed, undid a champion chosen by hand, a second security pass)
        digest = hashlib.sha256(
            orjson.dumps({k: v.get(k) for k in VERDICT_FIELDS}, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        try:
            changed, what = self.registry.judge(
                str(v.get("verdict")), str(v.get("version")), v.get("other"), why,
                record=(where["partition"], int(offset)) if offset is not None else None,
                digest=digest,
            )  # fmt: skip
        except Exception as exc:  # a full disk, a manifest edited by hand
            return self._reject(exc, where)
        if changed:
            log.info("judged by a scorer's verdict: %s (%s)", what, why, extra=where)
        else:
            log.info("a scorer's verdict changed nothing: %s (%s)", what, why, extra=where)
        if key is not None:
            self._verdicts.put((key, None, False))
        return "verdict"

    # -- a scorer's verdicts, to the trainer ---------------------------------------------------

    def on_event(self, kind: str, info: Mapping[str, Any]) -> None:
        """A scorer's model event (:class:`fds.models.ModelServer`'s ``on_event``, on the
        decision thread: only queued here): a contest's verdict is sent to the trainer on the
        models topic, signed, by the feed thread. Scorers fed by a topic each judged in their
        own registry and served different versions (a QA pass of a fleet)."""
        warm_up = kind == "swap" and info.get("why") == WARM_UP
        if warm_up:  # the fleet's champion too: sent as a promotion over the one it replaced
            # (not sent, the trainer's registry kept an older champion, every lifecycle put
            # the fleet back on it, and a contest won against the warm-up's was refused there:
            # a QA pass)
            kind, info = "promote", {"candidate": info.get("to"), "incumbent": info.get("from"),
                                     "why": WARM_UP}  # fmt: skip
        judged = _VERDICTS.get(kind)
        version = info.get(judged[0]) if judged else None
        if judged is None or version is None:
            return
        if kind != "shadow" and not warm_up and f"recall_at_budget_{judged[0]}" not in info:
            return  # (a challenger dropped because it raised here: this machine's, not sent)
        body = {
            "kind": VERDICT, "name": self.name, "decisions_topic": self.decisions_topic,
            "verdict": kind, "version": version, "other": info.get(judged[1]), "by": self.by,
            "at": format_ts(time.time()),
        }  # fmt: skip
        key = self.registry.key
        record = {**body, "figures": dict(info),
                  "verdict_hmac": sign_record(body, key) if key else None}  # fmt: skip
        at = f"{self.name}/{self.decisions_topic}/{VERDICT}/{version}/{kind}/{self.by}"
        # (a shadow notice changes no champion: no lifecycle need wait for it, and none comes
        # for it alone; one sent after a promote held the lifecycle 60 s: a QA pass)
        self._verdicts.put((at.encode(), orjson.dumps(record, default=str), kind != "shadow"))

    def _send_verdicts(self, timeout_s: float | None = None) -> None:
        """Send the verdicts (or tombstones) queued (feed thread); kept for the next round on a
        broker error."""
        while not self._verdicts.empty():
            if not self._unsent:
                self._unsent_since = time.monotonic()
            self._unsent.append(self._verdicts.get())
        if not self._unsent:
            return
        timeout_s = self.s.broker_timeout_s if timeout_s is None else timeout_s
        try:
            if self._producer is None:
                ms = int(min(timeout_s, BOOTSTRAP_TIMEOUT_S) * 1000)
                self._producer = self._producer_factory(
                    **self.s.client_config(), acks="all", bootstrap_timeout_ms=ms,
                    max_block_ms=ms,
                )  # fmt: skip
            sends = [(self._producer.send(self.topic, key=k, value=v), awaited)
                     for k, v, awaited in self._unsent]  # fmt: skip
            self._producer.flush(timeout=timeout_s)
            for f, awaited in sends:
                sent = f.get(timeout=0)
                at = f"{sent.topic}[{sent.partition}]"
                if awaited:
                    self._awaiting[at] = (sent.offset, time.monotonic())
        except (KafkaError, OSError) as exc:
            log.warning("models feed: %d verdict(s) not sent (%s); tried again",
                        len(self._unsent), describe(exc))  # fmt: skip
            return
        if self.judge:
            log.debug("deleted %d judged verdict(s) from the topic", len(self._unsent))
        else:
            log.info('sent %d contest verdict(s) to the trainer topic="%s"', len(self._unsent),
                     self.topic)  # fmt: skip
        self._unsent.clear()

    def _held(self) -> bool:
        """Is a verdict of ours not sent yet (one the trainer's judgement is awaited for)?"""
        return any(awaited for _, _, awaited in self._unsent)

    def _follow_deferred(self) -> None:
        """Follow the lifecycle put off for our verdicts once they waited ``JUDGE_WAIT_S``
        unjudged (the trainer refused them unread: another key, another model name), or this
        scorer would follow no promotion by hand for good."""
        now = time.monotonic()
        since = [t for _, t in self._awaiting.values()] + [self._unsent_since] * self._held()
        if self._deferred is None or any(now - t < JUDGE_WAIT_S for t in since):
            return
        log.warning(
            "the trainer judged none of this scorer's verdicts at offsets %s (%d not sent) "
            "within %.0f s (see its log): following its lifecycle",
            {p: a[0] for p, a in self._awaiting.items()}, len(self._unsent), JUDGE_WAIT_S,
        )  # fmt: skip
        (life, where), self._awaiting, self._deferred = self._deferred, {}, None
        try:  # (its champion's bytes again: retention may have removed what was imported)
            checked = self._check_lifecycle(life, where)
        except Exception as exc:
            self._reject(exc, where)
            return
        if not isinstance(checked, str):
            self._follow(life, checked[1], where, wait=False)

    def _follow(
        self, life: dict[str, Any], data: bytes, where: Mapping[str, str], *, wait: bool = True
    ) -> str:
        """Take a trainer registry's lifecycle: its champion imported when not held here, then
        made the champion, its rejected versions rejected (:meth:`Registry.follow`; the
        registry watch then swaps, as for a promotion by hand). ``wait``: put off while a
        verdict of ours is not judged yet (see :meth:`_follow_deferred`)."""
        judged = life.get("judged")
        judging = isinstance(judged, dict)  # (an older trainer judges no verdict)
        if isinstance(judged, dict) and wait:
            self._send_verdicts()  # (one queued this moment holds the lifecycle back too)
            self._awaiting = {p: a for p, a in self._awaiting.items() if a[0] >= judged.get(p, 0)}
            if self._awaiting or self._held():  # ours on its way: the next lifecycle says it
                self._deferred = (life, where)
                return "lifecycle"
        self._deferred = None
        issued = life.get("issued")
        m = self.registry.manifest()
        seen = m.get("followed_issued")
        if _older(issued, seen):
            return self._reject(ArtifactError(
                f"a lifecycle older than one followed ({issued}, {seen} followed) replayed on "
                "the models topic: refused"), where)  # fmt: skip
        if isinstance(issued, list) and issued and issued[0] in m.get("retired_ids", ()):
            # (a trainer registry this scorer followed before the one it follows now, after a
            # move of the trainer: its old lifecycles, replayed, switched the fleet back, a
            # second security pass)
            return self._reject(ArtifactError(
                f"a lifecycle of trainer registry {issued[0]}, which this scorer followed before "
                f"{(seen or ['?'])[0]}, replayed on the models topic: refused"), where)  # fmt: skip
        # (kept by the import's retention: it removed an old champion at once, a QA pass)
        if data and self._install((life["champion_announcement"], data), where, keep=True) == (
            "rejected"
        ):
            return "rejected"
        champ, rejected = life.get("champion"), life["rejected"]
        try:
            changes = self.registry.follow(
                champ, rejected, str(life.get("mark")), FOLLOWED_REASON,
                again=judging and not self._followed, issued=issued,
                passed_over=life.get("passed_over"),
            )  # fmt: skip
        except Exception as exc:  # a full disk, a manifest edited by hand
            return self._reject(exc, where)
        self._followed = True
        if changes:
            log.info("followed the trainer's registry: %s", "; ".join(changes), extra=where)
        m = self.registry.manifest()
        mine = m.get("champion")
        if champ and champ not in m["versions"]:  # (its import failed: said above)
            log.warning(
                'the trainer\'s champion version="%s" is not in this registry: serving "%s" '
                "until it is (the lifecycle is followed again when read again)",
                champ, mine, extra=where,
            )  # fmt: skip
        if mine in rejected and mine != champ:  # (no champion there to return to)
            log.warning(
                'the trainer\'s registry rejected version="%s", served here, and names no '
                "champion to serve instead: it stays (`fds models rollback` on this registry)",
                mine, extra=where,
            )  # fmt: skip
        return "lifecycle"

    def _artifact(self, ann: dict[str, Any], where: Mapping[str, str]) -> bytes | None:
        """The announced bytes (unverified): inline, else read from the pointer path."""
        inline = ann.get("artifact_b64")
        if inline is not None:
            try:
                return base64.b64decode(inline, validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise ArtifactError(f"artifact_b64 is not base64: {exc}") from None
        path = ann.get("path")
        if not path:
            raise ArtifactError("neither artifact_b64 nor path: nothing to import")
        # Nothing of the announcement is verified yet: its signed fields first, then only a
        # regular file of the announced size is read (/dev/zero grew the scorer to 2 GB, a
        # FIFO blocked the feed for good, any file was read: a security review).
        self.registry.check_fields(ann)
        size = ann.get("size")
        if type(size) is not int or size < 0:
            raise ArtifactError(f"a pointer announcement needs its size, got {size!r}")
        try:  # (checked on the file opened: a FIFO swapped in after a stat blocked the thread)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):  # (before fdopen, which refuses a folder and
                    raise ArtifactError(f"path {path!r} is not a regular file")  # leaks its fd)
                if info.st_size != size:
                    raise ArtifactError(f"path {path!r} holds {info.st_size} bytes, not {size}")
            except BaseException:
                os.close(fd)
                raise
            with os.fdopen(fd, "rb") as f:
                return f.read(size)
        except OSError as exc:
            self.metrics.model_swap("unreachable")
            log.warning(
                "model announced by pointer only and its path is not readable here: share the "
                'trainer\'s registry path with this machine version="%s" path="%s" error="%s"',
                ann.get("version"), path, exc, extra=where,
            )  # fmt: skip
            return None

    # -- the consumer loop -------------------------------------------------------------------

    def start(self) -> None:
        """Start the feed thread."""
        if self.registry.key is None and not self.judge:
            log.warning(
                "models feed without %s: unsigned announcements are checked by sha256 only "
                "(corruption, not forgery), signed ones refused; set the trainer's key on this "
                "scorer",
                KEY_ENV,
            )
        self._thread = threading.Thread(target=self._run, name="fds-model-feed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the consumer (waits at most ``CLOSE_WAIT_S``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CLOSE_WAIT_S)
        if self._thread is None or not self._thread.is_alive():  # (else it may be sending)
            self._send_verdicts(CLOSE_WAIT_S)  # a verdict of the last moments: not lost
            if self._unsent and not self.judge:
                log.warning(
                    "%d contest verdict(s) not sent to the trainer at stop: at its next start "
                    "this scorer serves the trainer's champion", len(self._unsent),
                )  # fmt: skip
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=CLOSE_WAIT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._consumer_factory(  # every scorer reads the whole topic
                    **self.s.reader_config(
                        allow_auto_create_topics=False,  # a mistyped name must not make one
                        max_partition_fetch_bytes=MAX_FETCH_BYTES,
                        bootstrap_timeout_ms=int(
                            min(self.s.broker_timeout_s, BOOTSTRAP_TIMEOUT_S) * 1000
                        ),
                    )
                )
                if self._consume(consumer):
                    return
            except (KafkaError, OSError) as exc:
                log.warning(
                    'models feed: broker error, retrying in %.1f s topic="%s" error="%s: %s"',
                    self._backoff, self.topic, type(exc).__name__, exc,
                )  # fmt: skip
            except UnreadableRecords as exc:  # (the scorer goes on with the versions it has)
                log.error("models feed: %s; retrying in %.1f s", exc, self._backoff)
            except Exception:  # a bug must not end the feed silently: scorers would go stale
                log.exception(
                    'models feed: unexpected error, retrying in %.1f s topic="%s"',
                    self._backoff, self.topic,
                )  # fmt: skip
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        consumer.close()
            self._stop.wait(self._backoff)
            self._backoff = min(self._backoff * 2, RETRY_MAX_S)

    def _consume(self, consumer: Any) -> bool:
        """Read the topic until stopped (``True``); ``False`` when the topic does not exist."""
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            log.warning(
                'models feed: topic="%s" does not exist (yet); `fds kafka topics` creates it',
                self.topic,
            )
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        self._newest_issued = 0  # (the topic read again from its start: in its order again,
        # its history was taken for a replay after each reconnect, a review)
        end = consumer.end_offsets(tps)
        if self.judge:
            self.registry.judged_before({f"{tp.topic}[{tp.partition}]": end[tp] for tp in tps})
        self._backoff = RETRY_MIN_S  # connected: the next outage starts its backoff afresh
        # Catching up (also after a reconnect): each record is checked, and only the newest
        # one per key that passes is imported; a bad newest record does not hide a good one.
        newest: dict[Any, tuple[tuple[dict[str, Any], bytes], Mapping[str, str]]] = {}
        catching_up = True
        after: dict[Any, int] = {}  # partition -> the offset after its last record read
        while not self._stop.is_set():
            if catching_up and all(consumer.position(tp) >= end[tp] for tp in tps):
                catching_up = False
                # (lifecycles last: a champion they name may be one of the versions; the rest
                # in the topic's order: a verdict is judged once, by offset, see Registry.judge)
                for key, (good, where) in sorted(newest.items(), key=lambda kv: _in_order(kv[1])):
                    self._count(self._install(good, where, key))
                newest.clear()
                for tp in tps:  # (the next record comes at the end or after it)
                    after[tp] = max(after.get(tp, 0), end[tp])
                self.caught_up.set()
                log.info('models feed caught up topic="%s"', self.topic)
            self._send_verdicts()
            self._follow_deferred()
            batch = consumer.poll(timeout_ms=POLL_MS)
            for tp, records in batch.items():
                for r in records:
                    where = {"partition": f"{tp.topic}[{tp.partition}]", "offset": str(r.offset)}
                    if r.offset < after.get(tp, 0) and self.judge:  # the partition went back:
                        # deleted and made again while read (the reset at a reconnect only:
                        # every verdict after it was "judged before", a QA pass)
                        self.registry.judged_before({where["partition"]: r.offset})
                    after[tp] = r.offset + 1
                    if not catching_up:
                        self.handle(r.value, where, r.key)
                        continue
                    checked = self._check(r.value, where)
                    if isinstance(checked, str):
                        # (a verdict judged: not judged again; a lifecycle's: see
                        # _lifecycle_deleted, the one before it kept)
                        if checked == "tombstone" and not self._lifecycle_deleted(r.key, where):
                            newest.pop(r.key, None)
                        self._count(checked)
                        continue
                    if r.key in newest:
                        self._count("superseded")
                    newest[r.key] = (checked, where)
        return True
