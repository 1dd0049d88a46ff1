"""What the Kafka services (``fds run``, ``fds train``, ``fds produce``) share: stop signals,
the idle limit and the broker watch (idle or cut off?), the errors of a broker out of reach or a
fenced member, and dead letters of Kafka records (DESIGN.md's dead-letter record, with headers).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kafka.errors import UnknownTopicOrPartitionError
from kafka.structs import TopicPartition

from fds.cli import positive_float
from fds.errors import ConfigError, FdsError, describe
from fds.schema import dead_letter, dumps
from fds.streams.kafka_kit import ClientErrors
from fds.streams.settings import KafkaSettings

__all__ = [
    "BrokerUnavailable",
    "BrokerWatch",
    "FencedWatch",
    "IdleTimer",
    "add_max_idle_argument",
    "dead_letter_message",
    "fenced_error",
    "no_topic",
    "on_stop_signals",
    "positioned",
    "probe",
    "say_if_slow",
    "topics_of",
    "unreachable",
]

# (the lines of fds run and fds train keep the logger name operators filter on, whichever
# module says them)
log = logging.getLogger("fds.streams.kafka")

#: How often a state rebuild, a catch-up or fds produce logs how far it got.
PROGRESS_EVERY_S = 5.0
# An idle loop's broker probe waits this long for an answer, less when broker_timeout_s has
# less left (but at least PROBE_MIN_S: a broker just back needs a round trip).
PROBE_TIMEOUT_S = 3.0
PROBE_MIN_S = 0.5
#: A start that has not reached the broker after this long says so (and once it does).
CONNECT_SAY_AFTER_S = 5.0
#: An outage is said at its first unanswered probe, then this often (probes come every 3 s).
OUTAGE_SAY_EVERY_S = 15.0


def on_stop_signals(stop: Callable[..., Any]) -> None:
    """Drain, commit and exit (``stop``) on SIGTERM, SIGINT and SIGHUP (a closed terminal or
    ssh session: it was killed on the spot, no drain, commit or checkpoint, a QA pass), but
    not on a SIGHUP this process was started to ignore (``nohup``: a review)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, stop)


class IdleTimer:
    """``--max-idle``: whether ``limit`` seconds passed without input (``None``: never),
    counted from the consumer's first partitions: the group join is no idle time (a join
    slower than the limit ended a run before it had read anything), for ``JOIN_GRACE_S`` at
    most (a member the group gives no partition, one more than there are, still ends)."""

    JOIN_GRACE_S = 60.0

    def __init__(self, limit: float | None, wait_s: float = math.inf) -> None:
        self.limit = limit
        self.since = self.start = time.monotonic()
        self.joined = False
        self.wait_s = wait_s  # how long a wait for positions is no idle time, at most
        self.waiting: float | None = None  # since when partitions have had no position

    def worked(self, start: float, end: float) -> None:
        """The loop worked from ``start`` to ``end`` (a restore, a checkpoint, a collection):
        no idle time, whether or not partitions had positions (a wait for them in a restore
        ended a run as idle; a slow idle pass, counted, ended one before the records that
        came meanwhile were polled: a CI run and a review)."""
        self.since += end - start

    def over(self, consumer: Any, now: float) -> bool:
        if self.limit is None:
            return False
        if not self.joined:
            self.joined = bool(consumer.assignment())
            if not self.joined and now - self.start < self.JOIN_GRACE_S:
                self.since = now
        # Waiting to know where to read is no idle time (a run taking over from a killed
        # exactly-once instance ended idle, having decided nothing, when its offsets came
        # free), for ``wait_s`` at most (a partition that never gets a position: a review).
        if positioned(consumer):
            self.waiting = None
        else:
            self.waiting = now if self.waiting is None else self.waiting
            if now - self.waiting <= self.wait_s:
                self.since = now
                return False
        return now - self.since > self.limit


def positioned(consumer: Any) -> bool:
    """Does every partition assigned to ``consumer`` have a position to fetch from? Not while
    its committed offset is being read, which a transaction another instance left open holds
    until the broker aborts it (``transaction_timeout_ms``). True for a consumer that does
    not say (the in-memory fakes)."""
    has_all = getattr(getattr(consumer, "_subscription", None), "has_all_fetch_positions", None)
    return bool(has_all()) if callable(has_all) else True


def probe(consumer: Any, topic: str, timeout_s: float) -> str | None:
    """``None`` when the broker answers ``consumer`` within ``timeout_s`` (the end offsets of
    its partitions, with nothing assigned ``topic``'s partition 0: ``KafkaConsumer.topics()``
    would wait without a time limit in kafka-python 3.0), else why not."""
    try:
        parts = consumer.assignment() or {TopicPartition(topic, 0)}
        consumer.end_offsets(list(parts), timeout_ms=int(timeout_s * 1000))
        return None
    except Exception as exc:
        return describe(exc)


@contextlib.contextmanager
def say_if_slow(say: Callable[[], None], after_s: float | None = None) -> Iterator[threading.Event]:
    """Call ``say`` (from a timer thread) if the block is still running after ``after_s``
    (default :data:`CONNECT_SAY_AFTER_S`); the event yielded is set once it was said."""
    said = threading.Event()

    def fire() -> None:
        say()
        said.set()  # (after: a caller's "answers" line never comes before it, a review)

    timer = threading.Timer(CONNECT_SAY_AFTER_S if after_s is None else after_s, fire)
    timer.daemon = True
    timer.start()
    try:
        yield said
    finally:
        timer.cancel()
        timer.join()  # (a call under way ends first)


class BrokerWatch:
    """Idle or cut off? An empty poll looks the same: the broker is asked (``probe(timeout_s)``
    answers whether it did) once it has said nothing for ``every`` seconds, and when an idle
    limit is reached, for no longer than the broker timeout has left; a failure is judged by
    the clock after the probe (3 s probes judged by the clock before them: exits after twice
    the timeout). ``contact`` is set by the caller when records come."""

    def __init__(self, probe: Callable[[float], str | None], timeout_s: float,
                 gone: Callable[[], str]) -> None:  # fmt: skip
        self.probe, self.timeout_s, self.gone = probe, timeout_s, gone
        self.every = min(5.0, timeout_s / 4)
        self.contact = self.probed = time.monotonic()
        self._said: float | None = None  # the last contact before an outage said, if one was
        self._say_at = -math.inf  # (the next time an unanswered probe is said)

    def answered(self, now: float) -> None:
        """The broker answered at ``now`` (records came, or a probe did): after an outage said,
        said once (its warnings every few seconds ended in silence: a QA pass)."""
        if self._said is not None:
            log.warning('Kafka answers again after an outage seconds="%.0f"', now - self._said)
            self._said, self._say_at = None, -math.inf
        self.contact = now

    def idle_ended(self, now: float, idle_over: bool) -> bool:
        """Whether an idle run may end (``idle_over``: its limit is reached, and the broker
        answers: an outage was idle time, exit 0 with a backlog the broker could not serve, a
        QA pass). Raises :class:`BrokerUnavailable` after ``timeout_s`` without contact."""
        if now - self.contact <= self.every and not (idle_over and now - self.probed > PROBE_MIN_S):
            return False
        self.probed = now
        left = self.timeout_s - (now - self.contact)
        why = self.probe(min(PROBE_TIMEOUT_S, max(left, PROBE_MIN_S)))
        if why is None:
            self.answered(now)
            return idle_over
        waited = time.monotonic() - self.contact
        if waited > self.timeout_s:
            raise BrokerUnavailable(self.gone())
        # (how long, and for how long more: `broker probe failed: KafkaTimeoutError:
        # KafkaTimeoutError: ...` every 3 s, then an exit, a QA pass; said every
        # OUTAGE_SAY_EVERY_S, not at each probe: 40 lines in a 2-minute outage, a QA pass)
        if now >= self._say_at:
            self._say_at = now + OUTAGE_SAY_EVERY_S
            log.warning(
                "no answer from Kafka for %.0f s of %.0f s (--broker-timeout), then exit: %s",
                waited, self.timeout_s, why,
            )  # fmt: skip
        self._said = self.contact
        return False


def add_max_idle_argument(p: argparse.ArgumentParser) -> None:
    """``--max-idle`` (:class:`IdleTimer`) of ``fds run`` and ``fds train``."""
    p.add_argument(
        "--max-idle",
        type=positive_float,
        default=None,
        help="exit after this many seconds without input, counted from the first partitions "
        "assigned (for tests and demos; default: run until stopped; fds train first waits up "
        "to 5 minutes for the decisions of labels still pending)",
    )


class BrokerUnavailable(FdsError):
    """The broker could not be reached for longer than ``broker_timeout_s``."""


def unreachable(s: KafkaSettings, exc: BaseException, errors: ClientErrors) -> BrokerUnavailable:
    """The error for clients that could not bootstrap: what failed and what to check (a
    refused login or TLS handshake, from the client's log, else the address and the broker)."""
    return BrokerUnavailable(
        errors.explain(
            exc,
            s.bootstrap,
            f"cannot reach Kafka at {s.bootstrap} within {s.broker_timeout_s:g} s",  # (`0 s`
            # for 0.4, and --bootstrap named where the file or the environment gave it: a QA)
            f"check {s.named('bootstrap')} and that the broker is up (`fds kafka status`)",
            s.security_protocol,
        )
    )


def no_topic(
    topic: str, bootstrap: str, fix: str, known: Iterable[str] = (), what: str = "topic"
) -> ConfigError:
    """The error for ``what`` (``"input topic"``) missing on the broker at ``bootstrap``, with
    the closest of the ``known`` topics (`--topic transactons` was told it does not exist, no
    more: a README walk) and ``fix`` (what names the topic)."""
    close = difflib.get_close_matches(topic, [t for t in known if not t.startswith("__")], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{what} {topic!r} does not exist on {bootstrap}{hint}: create it (`fds kafka topics` "
        f"creates the kit's topics) or {fix}"
    )


#: How long a missing topic's error waits for the broker's list of topics (its hint).
TOPICS_WAIT_S = 5.0


def topics_of(client: Any) -> set[str]:
    """The topics a consumer ``client`` sees on the broker, or none when it cannot say within
    TOPICS_WAIT_S: for :func:`no_topic`'s hint, which an error must not cost more than that
    (kafka-python's ``topics()`` waits without a limit, a broker gone meanwhile held the
    error for good: a review)."""
    got: list[set[str]] = []

    def ask() -> None:
        with contextlib.suppress(Exception):  # (a hint: the error is the missing topic's)
            got.append(set(client.topics()))

    asking = threading.Thread(target=ask, name="fds-topics", daemon=True)
    asking.start()
    asking.join(TOPICS_WAIT_S)
    return got[0] if got else set()


def partitions_of(consumer: Any, topic: str, *, patience_s: float = 30.0) -> set[int]:
    """The partitions of ``topic`` a ``consumer`` sees on the broker, none when it is missing.
    kafka-python fails a metadata refresh of one topic the broker does not know with
    UnknownTopicOrPartitionError, and ``partitions_for_topic`` raised it when it waited for
    such a refresh in flight: a subscription's to a missing input topic (exit 1 with the raw
    error instead of the missing topic's, a CI run). That error for another topic is the
    refresh's, not this one's: asked again (the waited refresh is over then), for up to
    ``patience_s`` (the subscription retries its refresh, so a call may meet one in flight
    again; a count of three tries could run out: a review)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return set(consumer.partitions_for_topic(topic) or ())
        except UnknownTopicOrPartitionError as exc:
            if exc.args[:1] == (topic,):
                return set()
            if time.monotonic() >= deadline:
                raise


#: A dead letter whose JSON is larger than this keeps the first DLQ_RAW_KEPT characters of its
#: ``raw`` (``raw_truncated: true``, ``raw_bytes``: the record's size; the record itself stays
#: in the input topic at the partition and offset it names). Escaped, a 250 KB record the
#: broker had taken became a 1.25 MB dead letter it refused (kafka-python's default
#: max_request_size is 1 MB), and fds run stopped at it, every restart (a review).
DLQ_MAX_BYTES = 512 * 1024
DLQ_RAW_KEPT = 64 * 1024
#: ... and of its ``reason`` (which may quote the bad value whole: 480,000 backslashes in an
#: ``amount`` made a 2 MB dead letter, and fds run stopped at it at every restart: a QA pass).
DLQ_REASON_KEPT = 4096
#: A record's key longer than this is cut to it in its dead letter (``key_truncated`` header):
#: a 1 MB key the broker had taken did not fit again with the dead letter's body (a QA pass).
DLQ_KEY_KEPT = 1024


def _cut(value: Any, n: int) -> Any:
    """A text's first ``n`` characters (any other value as it is)."""
    return value[:n] if isinstance(value, str) else value


class FencedWatch(logging.Handler):
    """Sees kafka-python's heartbeat thread learn that the broker fenced this static member
    (another one joined with its ``--group-instance-id``): the thread logs it and stops
    beating, without a word to the poll loop, which decided on until its next commit (14
    duplicate decisions in a README walk; 25 s while idle)."""

    def __init__(self, instance_id: str | None) -> None:
        super().__init__(logging.ERROR)
        self.instance_id = instance_id
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if (
            self.instance_id is not None
            and record.name.startswith("kafka.coordinator")
            and "fenced" in str(record.msg)
            and self.instance_id in map(str, record.args or ())  # (this instance's, not a
        ):  # trainer's in the same process)
            self.seen = True


def fenced_error(what: str, s: KafkaSettings) -> FdsError:
    """The error of a static member the broker fenced (fds run, fds train)."""
    return FdsError(
        f"{what}: another member joined group {s.group!r} with this --group-instance-id "
        f"({s.group_instance_id}), so the broker fenced this one, which stops; give each "
        "instance its own id"
    )


def dead_letter_message(
    msg: Any, stage: str, exc: BaseException
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers of the dead letter of Kafka record ``msg``, which failed at
    ``stage`` with ``exc``: the value is the dead-letter record (DESIGN.md), the headers its
    fields (``raw`` aside) and ``source_topic``/``source_partition``/``source_offset``; cut to
    DLQ_MAX_BYTES and DLQ_KEY_KEPT, and said so (``raw_truncated``, ``key_truncated``)."""
    record = dead_letter(
        stage=stage, error=exc, raw=msg.value, source=msg.topic,
        position={"partition": msg.partition, "offset": msg.offset},
    )  # fmt: skip
    headers = [  # the record's fields (DESIGN.md), raw aside; the source_* as before
        ("source", msg.topic.encode()),
        ("position", dumps(record["position"])),
        ("source_topic", msg.topic.encode()),
        ("source_partition", str(msg.partition).encode()),
        ("source_offset", str(msg.offset).encode()),
        ("stage", stage.encode()),
        ("error", type(exc).__name__.encode()),
        ("reason", str(exc)[:1000].encode("utf-8", "backslashreplace")),
    ]
    value = dumps(record)
    if len(value) > DLQ_MAX_BYTES:  # escaped, a record the broker took may not fit again
        record["raw"] = _cut(record["raw"], DLQ_RAW_KEPT)  # (whole in the input topic)
        record["reason"] = _cut(record["reason"], DLQ_REASON_KEPT)
        record |= {"raw_truncated": True, "raw_bytes": len(msg.value or b"")}
        headers.append(("raw_truncated", b"true"))
        value = dumps(record)
    key = msg.key
    if key is not None and len(key) > DLQ_KEY_KEPT:
        key = key[:DLQ_KEY_KEPT]
        headers.append(("key_truncated", b"true"))
    return key, value, headers
