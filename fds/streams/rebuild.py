"""Rebuild engine state from the input topic: the source topic is the state's changelog.

Feature windows are exact, so the state of a window *is* the events it covers. The input
topic already holds those events, keyed by ``card_id`` like the state, so ``fds run`` restores
state by re-reading the input (as Kafka Streams does with ``topology.optimization=all``, where a
source topic doubles as its table's changelog) instead of writing every update twice:

* **restart** (a checkpoint covers every assigned partition): fold ``[checkpoint offset,
  committed offset)`` of each partition on top of the checkpoint;
* **a partition moved here** while the state follows others: fold that partition alone, from
  the horizon offset (or, taken back, from the offset the state covered when it left it) to
  its committed offset, into an empty feature plan and merge it into the state
  (``FeaturePlan.absorb``; ``fds run`` decides when that is exact: ``Runner._moved_alone``);
* **new partition** otherwise (first start without a checkpoint, the cases the merge cannot
  take): start from an empty state and fold ``[horizon offset, committed offset)`` of *every*
  assigned partition, where the horizon is the feature plan's longest window plus its grace
  before now (``offsets_for_times`` on the record timestamps). Only the records of the last
  :data:`STAGES_TAIL_S` go through the whole engine (the alert budget, the rate breaker and the
  model's decision counts depend on no more); the older ones through the feature plan alone
  (3.6x faster over the default rules' 90-day horizon: benchmarks/results/rebuild.md).

Either way the records of all partitions are folded **merged in event-time order** (a k-way
merge over the partitions' heads), so no record is later than the plan's grace period behind
the watermark: entities that span partitions (merchant, device) get every event, in order, as
an uninterrupted run holding those partitions would have. Records are read with a separate
group-less consumer, up to the group's committed offsets only: the state never runs ahead of
them. Memory is bounded by ``buffer`` records per partition (the rest is fetched again later).

Partitions decided to different event times (instances apart during a backlog: one at day 2,
the other at day 1) are folded only **up to the event time of the one furthest behind**: the
fold stops where a partition with records still to decide (``hold``) is read to its committed
offset. Folding the others on would move the watermark a day past the records still to decide
of that partition, and every one of them would be *late*. The rest of the others (already
decided) is folded by ``fds run`` as it decides the partitions behind, merged with them in
event time; ``reached`` tells where each partition's fold stopped.

>>> list(merge_sorted({0: [(1.0, "a"), (5.0, "c")], 1: [(2.0, "b")]}))
['a', 'b', 'c']
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from kafka.errors import KafkaTimeoutError

from fds.errors import FdsError
from fds.streams.kafka_kit import Stopped
from fds.timeutil import span

__all__ = ["STAGES_TAIL_S", "horizon_seconds", "merge_sorted", "read_merged", "start_offsets"]

log = logging.getLogger(__name__)

#: How much of a rebuild's history goes through the whole engine (rules, model, policy) rather
#: than the feature plan alone: what the other stages' state depends on is shorter (the alert
#: budget: a sliding day and a 2-hour burst guard; the rate breaker: windows of decisions, a few
#: minutes each at any real rate; the scorer's decisions per day: fds.models.scorer.DAYS_COUNTED,
#: 8 days), plus a day. (A number, not imported: the scorer imports River, and `fds --help`
#: must not.)
STAGES_TAIL_S = 9 * 86400.0

# Records buffered per partition before its fetching pauses (bounded memory).
BUFFER = 5_000


def horizon_seconds(engine: Any) -> float:
    """How much event time the engine's decisions depend on: the feature plan's longest
    window plus its grace (``inf`` when a window is unbounded or unknown)."""
    plan = getattr(engine, "features", None)
    layout = getattr(plan, "layout", None)
    if plan is None:
        return 0.0
    if layout is None:
        return math.inf
    longest = max((g.longest for g in layout.groups), default=0.0)
    return float(longest) + float(getattr(plan, "grace", 0.0))


def merge_sorted(
    streams: Mapping[Any, Iterable[tuple[float, Any]]], *, until_end_of: Collection[Any] = ()
) -> Iterator[Any]:
    """Merge per-partition ``(event_time, item)`` iterables by their heads' event time (ties:
    partition order), yielding the items. Each partition keeps its own order. The merge ends
    as soon as one of the partitions ``until_end_of`` ends (at once when one is empty).

    >>> list(merge_sorted({0: [(1.0, "a"), (5.0, "c")], 1: [(2.0, "b")]}, until_end_of={1}))
    ['a', 'b']
    """
    heads: list[tuple[float, int, Any, Iterator[tuple[float, Any]]]] = []
    keys = sorted(streams)
    for rank, key in enumerate(keys):
        it = iter(streams[key])
        for t, item in it:
            heads.append((t, rank, item, it))
            break
        else:
            if key in until_end_of:
                return
    heapq.heapify(heads)
    while heads:
        _, rank, item, it = heads[0]
        yield item
        for t, nxt in it:
            heapq.heapreplace(heads, (t, rank, nxt, it))
            break
        else:
            heapq.heappop(heads)
            if keys[rank] in until_end_of:
                return


def start_offsets(
    consumer: Any,
    tps: Iterable[Any],
    horizon_s: float,
    needs: str | None = None,
    *,
    at_s: float = math.inf,
) -> dict[Any, int]:
    """First offset of each partition whose record timestamp is within ``horizon_s`` before
    ``at_s`` (epoch seconds), or before now when that is earlier (the partition's beginning
    when the horizon is unbounded or reaches past it).

    A rebuild gives as ``at_s`` the time of the earliest of its partitions' last decided
    records (:func:`last_times`): measured from now, a rebuild after an outage longer than
    the horizon, or of a topic whose records carry their event time (a backfill, MirrorMaker),
    started past the committed offset and folded nothing, and the next decisions counted on
    empty windows (a QA pass); one time for every partition, so that an entity spanning them
    gets the history of each from the time the one furthest behind decides on (a review).

    ``needs`` (what reads them, for the log): say so when a partition's log starts inside the
    horizon after records were deleted from it (retention shorter than the horizon): what is
    rebuilt from it then lacks history, and nothing else said so (a QA pass: 536 of 600
    decisions after a rebuild had other features than a replay's)."""
    tps = list(tps)
    begin = consumer.beginning_offsets(tps)
    if not math.isfinite(horizon_s):
        return dict(begin)
    now = time.time()
    since_ms = max(0, int((min(now, at_s) if at_s > 0 else now) * 1000 - horizon_s * 1000))
    found = consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
    end = consumer.end_offsets(tps)
    starts = {
        tp: max(begin[tp], found[tp].offset) if found.get(tp) is not None else end[tp] for tp in tps
    }
    short = sorted(tp.partition for tp in tps if 0 < begin[tp] == starts[tp] < end[tp])
    if needs is not None and short:
        log.warning(
            "%s needs the last %s of topic %r, but partitions %s start inside it (older "
            "records deleted, by retention?): what it reads lacks that history; keep the topic "
            "longer than that (retention.ms)",
            needs, span(horizon_s), tps[0].topic, short,
        )  # fmt: skip
    return starts


#: How far before a partition's committed offset :func:`last_times` looks first for its last
#: record (an exactly-once commit's marker, or a few aborted records, may sit just before it);
#: where none is there, 8 times further back, up to LAST_LOOK_MAX (an aborted batch of 20 hid
#: it: a review).
LAST_LOOK = 16
LAST_LOOK_MAX = 16 * 8**3


def last_times(
    open_reader: Callable[[], Any],
    until: Mapping[Any, int | None],
    timeout_s: float,
) -> dict[Any, int]:
    """The record timestamp (ms) of the last record before ``until[tp]`` of each partition
    (none for a partition with no record before it, within LAST_LOOK_MAX offsets), each look
    with a reader of its own from ``open_reader()`` (no group), closed after it: a reader
    paused and re-assigned with records in flight may be parked by kafka-python 3.0.12."""
    wanted = [tp for tp, u in until.items() if u is not None]
    times: dict[Any, int] = {}
    upto: dict[Any, int] | None = None  # (read with the first reader)
    look = LAST_LOOK
    while upto != {} and look <= LAST_LOOK_MAX:
        consumer = open_reader()
        try:
            if upto is None:
                begin = consumer.beginning_offsets(wanted)
                ends = consumer.end_offsets(wanted)
                upto = {tp: u for tp in wanted if (u := min(until[tp] or 0, ends[tp])) > begin[tp]}
                if not upto:
                    break
            ranges = {tp: (max(begin[tp], u - look), u) for tp, u in upto.items()}
            times.update(_last_in(consumer, ranges, timeout_s))
        finally:
            with contextlib.suppress(Exception):
                consumer.close()
        upto = {tp: u for tp, u in upto.items() if tp not in times and ranges[tp][0] > begin[tp]}
        look *= 8
    return times


def _last_in(
    consumer: Any, ranges: Mapping[Any, tuple[int, int]], timeout_s: float
) -> dict[Any, int]:
    """The newest record timestamp in ``[a, u)`` of each partition that has a record there."""
    consumer.assign(list(ranges))
    consumer.resume(*ranges)  # (assign() keeps a pause of an earlier read)
    for tp, (a, _) in ranges.items():
        consumer.seek(tp, a)
    times: dict[Any, int] = {}
    todo = set(ranges)
    deadline = time.monotonic() + timeout_s
    while todo:
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(
                f"the last decided records of partitions {sorted(tp.partition for tp in todo)} "
                f"could not be read within {timeout_s:.0f} s"
            )
        for tp, records in consumer.poll(timeout_ms=200).items():
            if tp not in todo:
                continue
            u = ranges[tp][1]
            for r in records:
                if r.offset < u:
                    times[tp] = max(times.get(tp, r.timestamp), r.timestamp)
            if records[-1].offset >= u - 1:
                todo.discard(tp)
                consumer.pause(tp)
        for tp in list(todo):  # (nothing more to read before ``u``: markers, aborted ones)
            if consumer.position(tp) >= ranges[tp][1]:
                todo.discard(tp)
                consumer.pause(tp)
    return times


def read_merged(
    consumer: Any,
    ranges: Mapping[Any, tuple[int, int]],
    parse: Callable[[Any], Mapping[str, Any] | None],
    *,
    timeout_s: float,
    buffer: int = BUFFER,
    hold: Collection[Any] = (),
    reached: dict[Any, int] | None = None,
    positions: dict[str, Any] | None = None,
    stop: Callable[[], bool] | None = None,
    stalled: Callable[[float], None] | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Read ``[start, end)`` of each partition with ``consumer`` (assigned here, no group) and
    yield the parsed records (``parse`` returns ``None`` for a bad one: skipped, it was
    dead-lettered when first decided) merged in event-time order.

    ``hold``: partitions with records after ``end`` still to decide; the merge stops when one
    of them is read to its end (at once when one has nothing in range), so that no record is
    folded past its event time. ``reached`` is filled with the offset after the last record
    yielded of each partition (its ``end`` once read to it). ``positions``, when given, holds
    the partition and offset of the record just yielded (keys ``"tp"``, ``"offset"``).
    ``stop()`` true (a SIGTERM) raises :class:`~fds.streams.kafka_kit.Stopped` between two
    polls (heard only once a record came: after the timeout when none did, a QA pass).
    ``stalled(seconds)`` is told after each poll how long the read has made no progress (0
    when it just did)."""
    if reached is None:
        reached = {}
    reached.update({tp: r[0] for tp, r in ranges.items()})
    todo = {tp: r for tp, r in ranges.items() if r[0] < r[1]}
    if not todo or any(tp not in todo for tp in hold):
        return
    consumer.assign(list(todo))
    consumer.resume(*todo)  # (paused by an earlier read of this consumer: assign keeps that)
    for tp, (start, _) in todo.items():
        consumer.seek(tp, start)
    bufs: dict[Any, deque[tuple[float, Any]]] = {tp: deque() for tp in todo}
    done: set[Any] = set()
    deadline = time.monotonic() + timeout_s

    def fetch() -> None:
        """One poll: top up the buffers (a full one is sought back to its first record not
        kept, as in :mod:`fds.streams.align`), note the partitions read to their end."""
        nonlocal deadline
        if stop is not None and stop():
            raise Stopped("stopped while reading the input's history")
        now = time.monotonic()
        if now > deadline:
            raise FdsError(
                f"rebuilding state: no input could be read for {timeout_s:.0f} s "
                f"(partitions {sorted(tp.partition for tp in todo if tp not in done)})"
            )
        for tp, records in consumer.poll(timeout_ms=200).items():
            end = todo[tp][1]
            buf = bufs[tp]
            for msg in records:
                if msg.offset >= end:
                    break
                if len(buf) >= buffer:
                    consumer.seek(tp, msg.offset)
                    break
                deadline = now + timeout_s  # progress (records polled and dropped are none)
                tx = parse(msg)
                if tx is not None:
                    buf.append((tx["ts"], (tp, msg.offset, tx)))
        for tp, (_, end) in todo.items():
            if tp not in done and consumer.position(tp) >= end:
                done.add(tp)
                deadline = now + timeout_s
                consumer.pause(tp)  # read to its end: never resumed
        if stalled is not None:
            stalled(max(0.0, now - (deadline - timeout_s)))

    def stream(tp: Any) -> Iterator[tuple[float, Any]]:
        buf = bufs[tp]
        while True:
            while not buf:
                if tp in done:
                    reached[tp] = todo[tp][1]
                    return
                fetch()
            yield buf.popleft()

    streams = {tp.partition: stream(tp) for tp in todo}
    for tp, offset, tx in merge_sorted(streams, until_end_of={tp.partition for tp in hold}):
        reached[tp] = offset + 1
        if positions is not None:
            positions["tp"], positions["offset"] = tp, offset
        yield tx
