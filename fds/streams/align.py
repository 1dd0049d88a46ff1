"""Event-time alignment of input partitions (Kafka Streams' stream-time synchronisation).

A consumer fetches partition by partition: when it is behind (after a restart, an outage, a
rebalance) one poll returns hundreds of records of one partition, the next of another, hours
apart in event time. Decided in that order, the partitions' records would be far behind the
watermark of the others and arrive as *late* events (decided, not folded into the windows of
entities that span partitions, such as merchants and devices). So polled records wait in
per-partition buffers and are released in event-time order across partitions: the head with
the smallest event time goes first, and only while every partition that still has unread input
has a buffered head to compare with. A partition that is caught up (nothing more to read) does
not hold the others back; one that is behind holds them back until the others have been
fetched for ``max_wait_s`` without it (uneven fetching; then its records may be late: Kafka
Streams' ``max.task.idle.ms``), or for at most ``max_hold_s``; one of which no fetch was read
since it was assigned (no high watermark: how far behind it is is unknown, Kafka Streams'
KIP-695) holds them for its first records, up to ``UNKNOWN_WAITS`` waits. The wait runs on
the fetch clock, from the first poll that fetched records after the partition ran dry: time
with nothing fetched (the broker down) or with the loop not polling (blocked in a flush, a
commit or a restore) is not uneven fetching. Counted on the wall clock, it let the partitions
fetched first after a broker outage overtake the others by hours (a chaos run: hundreds of
late events, features that differed from a replay). Each partition keeps its own order. A
partition's buffer holds at most ``max_buffer`` records (bounded memory).

``skew_s`` (the feature plan's grace, :data:`SKEW_MIN_S` at least): a partition read to its
end also holds the others while the head to release next is more than ``skew_s`` of event time
past the newest record it gave and more than ``skew_s`` before this machine's clock (Kafka
Streams' ``max.task.idle.ms`` above 0), for one wait at most on this clock, every partition
it is ahead of waiting together. Live traffic never meets it (event time moves with the clock,
partitions within seconds of one another; a partition gone quiet holds no live decision);
history produced at full speed into a running ``fds run`` does: days of event time a minute,
each partition fetched a few milliseconds after the others, and 20-49% of the records arrived
late (decided with what the windows held, not folded into them; a QA pass). It is not armed
again for that partition until it gives a newer record (a partition gone quiet holds the
others once).

>>> class C:  # the consumer calls the aligner makes
...     def highwater(self, tp): return 2
...     def seek(self, tp, offset): pass
>>> a = Aligner(C(), lambda msg: (msg[1], msg))
>>> from collections import namedtuple
>>> R = namedtuple("R", "name ts offset")
>>> a.add({"p0": [R("a", 5.0, 0), R("c", 9.0, 1)], "p1": [R("b", 7.0, 1)]})
>>> [msg.name for _tp, msg, _item in a.take(10)]
['a', 'b', 'c']
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["SEQ_HEADER", "Aligner", "fetched_to"]

#: A record header ``fds produce`` stamps with each record's place in its file after its run's
#: start (ASCII digits): records of equal event time in different partitions are taken in that
#: order, as ``fds replay`` takes them (file order; files produced one after the other, in
#: that order). Without it, by partition: a file of whole-minute
#: times produced and run decided 2,489 of 3,000 transactions otherwise than its replay, its
#: devices and merchants seeing them in another order (a QA pass).
SEQ_HEADER = "fds-seq"

#: A partition of which no fetch was read since its assignment holds the others for its first
#: records this many waits (``max_wait_s``) at most, 10 s at fds run's default (a partition
#: whose leader is away, or whose one reply was dropped by a seek, held them up to max_hold_s,
#: 60 s: a review).
UNKNOWN_WAITS = 10
#: A loop pass may take this long and be no block: a poll waits up to its timeout (fds run's
#: ``poll_timeout_ms``: 1 s at most) for records. Passes of a loop that took longer between
#: two takes (a flush or a commit during a broker outage, a restore) count as blocked beyond it.
LONG_PASS_S = 1.0
#: The least ``skew_s`` taken (a grace of 0 made every past record "history", and each live
#: decision waited up to --align-wait whenever a partition had drained: a review).
SKEW_MIN_S = 60.0


def _by_partition(tp: Any) -> tuple[str, int, str]:
    """The order of a partition among others: a TopicPartition (topic, partition) by topic and
    number, anything else by its text."""
    if isinstance(tp, tuple):
        return str(tp[0]), int(tp[1]), ""
    return "", 0, str(tp)


def _seq(msg: Any) -> int:
    """A record's :data:`SEQ_HEADER` (0 without it: a producer other than ``fds produce``)."""
    for name, value in getattr(msg, "headers", None) or ():
        if name == SEQ_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0


def fetched_to(consumer: Any, tp: Any, buffered_to: int) -> int:
    """The offset after what has been read of ``tp``: after the last record buffered, or
    further where the consumer skipped transaction markers (each commit of a transactional
    producer takes an offset no record has, so by its records alone such a partition would
    always look one behind its high watermark). The consumer's position is asked only here,
    without waiting (an unknown one counts as nothing read)."""
    try:
        pos = consumer.position(tp, timeout_ms=0)
    except Exception:  # not assigned any more, or not known yet
        pos = None
    return max(buffered_to, pos or 0)


class Aligner:
    """Buffers of polled records released in event-time order across partitions.

    Parameters
    ----------
    consumer
        The KafkaConsumer (``highwater``, ``seek``).
    key
        ``msg -> (event_time, item)``: parses a record once; ``item`` is handed back with the
        record (``event_time`` ``-inf`` for a record that cannot be parsed: released at once).
    max_wait_s
        How long a partition that is behind may hold the others back without data.
    max_buffer
        Records buffered per partition; more are fetched again later.
    """

    def __init__(
        self,
        consumer: Any,
        key: Callable[[Any], tuple[float, Any]],
        *,
        max_wait_s: float = 1.0,
        max_buffer: int = 2000,
        max_hold_s: float = 30.0,
        skew_s: float | None = None,
    ) -> None:
        self.consumer = consumer
        self.skew_s = None if skew_s is None else max(skew_s, SKEW_MIN_S)
        # partition read to its end that holds the others (skew_s) -> since when (the clock);
        # one whose wait ran out -> the newest event time it had given then
        self._skew_since: dict[Any, float] = {}
        self._skew_done: dict[Any, float] = {}
        self.key = key
        self.max_wait_s = max_wait_s
        self.max_buffer = max_buffer
        self._bufs: dict[Any, deque[tuple[float, Any, Any]]] = {}
        self.max_hold_s = max_hold_s
        # partition that ran dry while behind -> [when (the loop's clock), when its wait began:
        # the first poll that fetched records after it ran dry (None: none yet)]
        self._waiting_since: dict[Any, list[Any]] = {}
        self._fetched_at = -math.inf  # when a poll last fetched records
        self._took_at = math.inf  # when the loop last asked for records
        self._next: dict[Any, int] = {}  # partition -> offset of the next record to fetch
        self._taken_to: dict[Any, float] = {}  # partition -> newest event time taken
        self._unknown_since: dict[Any, float] = {}  # partition -> first seen without a fetch

    def __len__(self) -> int:
        return sum(len(b) for b in self._bufs.values())

    def add(self, batch: Mapping[Any, list[Any]]) -> None:
        """Buffer a poll's records. A partition's records beyond ``max_buffer`` are not kept:
        the consumer is sought back to the first of them and fetches them again later (bounded
        memory without ``pause``: kafka-python 3.0 can leave a resumed partition unfetched for
        good -- it parks what it had fetched at the pause and puts it back in line only when
        no other partition's records are in line, which in a busy loop never happens)."""
        key = self.key
        cap = self.max_buffer
        if any(batch.values()):  # the consumer fetches: the waits of dry partitions run
            now = time.monotonic()
            # after longer than a wait with nothing fetched (the broker down), waits that had
            # begun begin again: that time was no uneven fetching
            # (a pass of the loop apart: fetches a poll's timeout apart, above --align-wait,
            # began the waits again at each one, which never ended: a review)
            again = now - self._fetched_at > max(self.max_wait_s, LONG_PASS_S)
            self._fetched_at = now
            for w in self._waiting_since.values():
                if w[1] is None or again:
                    w[1] = now
        for tp, records in batch.items():
            buf = self._bufs.get(tp)
            if buf is None:
                buf = self._bufs[tp] = deque()
            room = max(cap - len(buf), 0)
            if room < len(records):
                self.consumer.seek(tp, records[room].offset)
                self._next[tp] = records[room].offset
                records = records[:room]
            elif records:
                self._next[tp] = records[-1].offset + 1
            for msg in records:
                t, item = key(msg)
                buf.append((t, msg, item))
            self._waiting_since.pop(tp, None)
            if records:
                self._skew_since.pop(tp, None)

    def read_to(self, assigned: Iterable[Any]) -> float:
        """The event time before which every record of ``assigned`` has been taken (each
        partition read in event-time order): a partition's first record buffered, or, where
        it has records still to fetch (and holds the others back, :meth:`take`'s rule: not
        past ``max_hold_s``, so a partition whose leader is away does not hold it for good),
        the newest it gave; ``inf`` where it is read to its end with nothing buffered."""
        out = math.inf
        now = time.monotonic()
        for tp in assigned:
            buf = self._bufs.get(tp)
            if buf:
                t = buf[0][0]
            elif self._holds_back(tp, now):
                t = self._taken_to.get(tp, -math.inf)
            else:
                t = math.inf
            out = min(out, t)
        return out

    def first(self, tp: Any) -> int | None:
        """Offset of the first record of ``tp`` buffered (``None``: none)."""
        buf = self._bufs.get(tp)
        return buf[0][1].offset if buf else None

    def put_back(self, tp: Any, t: float, msg: Any, item: Any) -> None:
        """Put a record :meth:`take` gave back at the head of its partition (it cannot be
        handled yet: a label waiting for its decision)."""
        self._bufs.setdefault(tp, deque()).appendleft((t, msg, item))

    def forget(self, tps: Iterable[Any], *, seek: bool = True) -> None:
        """Drop the buffers of revoked partitions. Their new owner reads them from the committed
        offset; the consumer is sought back to the first dropped record in case the partition
        stays here (kafka-python keeps the position of a partition that is in both the old and
        the new assignment), unless ``seek`` is false (the caller's assignment listener did)."""
        for tp in tps:
            buf = self._bufs.pop(tp, None)
            if buf and seek:
                self.consumer.seek(tp, buf[0][1].offset)
            self._waiting_since.pop(tp, None)
            self._next.pop(tp, None)
            self._taken_to.pop(tp, None)
            self._unknown_since.pop(tp, None)
            self._skew_since.pop(tp, None)
            self._skew_done.pop(tp, None)

    def _skew_limit(self, tp: Any, now: float) -> float:
        """The event time past which empty partition ``tp``, read to its end, holds the
        others (``skew_s`` past the newest it gave; ``inf``: it does not)."""
        # (one that gave nothing since its assignment holds any head of history: the first
        # poll of a start, 100 records of one partition over 8 hours of event time, went out
        # before the others' first records were fetched, 184 late: a QA pass)
        last = self._taken_to.get(tp, -math.inf)
        if self._skew_done.get(tp) == last:
            return math.inf
        since = self._skew_since.get(tp)
        if since is not None and now - since >= self.max_wait_s:
            self._skew_done[tp] = last  # waited: not again before it gives a newer record
            del self._skew_since[tp]
            return math.inf
        return last + self.skew_s  # type: ignore[operator]

    def _holds_back(self, tp: Any, now: float) -> bool:
        """Does empty partition ``tp`` still have input to read (and has not waited too long)?"""
        hw = self.consumer.highwater(tp)  # of the last fetch: local, no request
        if hw is not None and (
            self._next.get(tp, 0) >= hw or fetched_to(self.consumer, tp, 0) >= hw
        ):
            self._waiting_since.pop(tp, None)
            return False
        dry, since = self._waiting_since.setdefault(tp, [now, None])
        if now - dry >= self.max_hold_s:
            return False
        if hw is None and tp not in self._next:  # no fetch of it read since it was assigned
            # (kafka-python sets the high watermark as it reads one): how far behind it is is
            # unknown (Kafka Streams, KIP-695), so the others wait for its first records, up
            # to UNKNOWN_WAITS waits from when that was first seen, not re-armed by a slow
            # pass (after a restart one partition came seconds after the others, which took
            # hours of event time meanwhile: 2,594 late decisions, a chaos run)
            first = self._unknown_since.setdefault(tp, now)
            if now - first < min(self.max_hold_s, UNKNOWN_WAITS * self.max_wait_s):
                return True
        return since is None or self._fetched_at - since < self.max_wait_s

    def take(self, n: int, assigned: Iterable[Any] | None = None) -> list[tuple[Any, Any, Any]]:
        """Up to ``n`` buffered ``(tp, msg, item)`` in event-time order, stopping where a
        partition that is behind (one of ``assigned``, or one buffered before) has run dry.

        ``assigned`` (the consumer's assignment now): a partition buffered before that is no
        longer in it is dropped (its new owner reads it; kafka-python may report the old
        assignment between a revocation and the new assignment)."""
        now = time.monotonic()
        gap = now - self._took_at
        if gap > max(self.max_wait_s, LONG_PASS_S):
            # the loop did not poll for longer than a pass (blocked in a flush during a broker
            # outage, a commit, a restore): that time is no wait, nor part of max_hold_s; a
            # wait begun by this pass's fetch stands. (Reset to now at every pass longer than
            # a wait, the waits never ran where --align-wait is below the poll timeout, or on a
            # loaded machine: a partition behind held the others for good, a review.)
            for w in self._waiting_since.values():
                w[0] += gap - LONG_PASS_S
                if w[1] is not None and w[1] <= self._took_at:
                    w[1] = None
            # (not the skew holds: a loop pass longer than a wait, the poll timeout above
            # --align-wait, began them again at each pass, and records were held for good: a
            # review; one wait on this clock at most, whatever the loop did meanwhile)
        self._took_at = now
        bufs = self._bufs
        if assigned is not None:
            assigned = set(assigned)
            for tp in [tp for tp in bufs if tp not in assigned]:
                del bufs[tp]
                self._waiting_since.pop(tp, None)
                self._next.pop(tp, None)
                self._unknown_since.pop(tp, None)
                self._skew_since.pop(tp, None)
                self._skew_done.pop(tp, None)
            for tp in assigned:
                if tp not in bufs:
                    bufs[tp] = deque()
        # every empty partition is asked (not any(): its short-circuit would start the waits
        # of the partitions that are behind one after another, k of them waiting k times)
        if sum([not buf and self._holds_back(tp, now) for tp, buf in bufs.items()]):
            return []
        # (equal times and seq: by partition, not in the order the buffers were made, which
        # followed a set's, Python's string hash of the topic in this process: a review)
        order = sorted(bufs, key=_by_partition)
        heads = [(bufs[tp][0][0], _seq(bufs[tp][0][1]), i, tp) for i, tp in enumerate(order)
                 if bufs[tp]]  # fmt: skip
        heapq.heapify(heads)
        skewed = self.skew_s is not None and self.max_wait_s > 0 and len(bufs) > 1
        # (not a live record, its event time within skew_s of this clock: a partition gone
        # quiet for minutes would hold its decision up to a wait, a latency of seconds)
        live = time.time() - self.skew_s if skewed else math.inf  # type: ignore[operator]
        # the event time past which a partition read to its end holds the others
        limit = math.inf
        if skewed:
            for tp, buf in bufs.items():
                if not buf:
                    limit = min(limit, self._skew_limit(tp, now))
        out: list[tuple[Any, Any, Any]] = []
        while heads and len(out) < n:
            t0, _, i, tp = heads[0]
            if t0 > limit and t0 < live:
                # every partition it is ahead of waits from now, together (one after another,
                # k quiet partitions held k waits: a review)
                for other, buf in bufs.items():
                    if not buf and self._skew_limit(other, now) < t0:
                        self._skew_since.setdefault(other, now)
                break
            buf = bufs[tp]
            t, msg, item = buf.popleft()
            out.append((tp, msg, item))
            if t > self._taken_to.get(tp, -math.inf):
                self._taken_to[tp] = t
            if buf:
                heapq.heapreplace(heads, (buf[0][0], _seq(buf[0][1]), i, tp))
                continue
            heapq.heappop(heads)
            if self._holds_back(tp, now):
                break
            if skewed:
                limit = min(limit, self._skew_limit(tp, now))
        return out
