"""State rebuild from the input topic (fds.streams.rebuild) against an in-memory consumer that
implements the part of kafka-python's KafkaConsumer it uses."""

from __future__ import annotations

import random
from collections import namedtuple
from typing import Any

import pytest
from kafka.structs import OffsetAndTimestamp, TopicPartition

from fds.errors import FdsError
from fds.pipeline import DEFAULT_RULES, build_engine
from fds.streams.rebuild import (
    STAGES_TAIL_S,
    horizon_seconds,
    last_times,
    merge_sorted,
    read_merged,
    start_offsets,
)

Record = namedtuple("Record", "topic partition offset timestamp value")


class FakeConsumer:
    """Partitions as lists of records; ``poll`` returns up to ``per_poll`` records of each
    assigned, unpaused partition from its position (like a fetch)."""

    def __init__(self, data: dict[TopicPartition, list[Record]], per_poll: int = 3) -> None:
        self.data = data
        self.per_poll = per_poll
        self.pos: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.max_buffered_polls = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.pos = {tp: 0 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        out = {}
        for tp, at in self.pos.items():
            if tp in self.paused:
                continue
            got = self.data[tp][at : at + self.per_poll]
            if got:
                out[tp] = got
                self.pos[tp] = at + len(got)
        return out

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.data[tp]) for tp in tps}

    def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        out: dict[TopicPartition, Any] = {}
        for tp, ms in query.items():
            hit = next((r for r in self.data[tp] if r.timestamp >= ms), None)
            out[tp] = None if hit is None else OffsetAndTimestamp(hit.offset, hit.timestamp, -1)
        return out


def _stream(partitions: int, n: int, seed: int) -> dict[TopicPartition, list[Record]]:
    """Each partition in event-time order (as a card-keyed input is), interleaved in time."""
    rng = random.Random(seed)
    times = sorted(rng.uniform(0, 86400) for _ in range(n))
    data: dict[TopicPartition, list[Record]] = {
        TopicPartition("tx", p): [] for p in range(partitions)
    }
    for t in times:
        tp = TopicPartition("tx", rng.randrange(partitions))
        recs = data[tp]
        recs.append(Record("tx", tp.partition, len(recs), int(t * 1000), {"ts": t, "p": tp}))
    return data


def _parse(msg: Record) -> dict[str, Any] | None:
    return None if msg.value.get("bad") else msg.value


@pytest.mark.parametrize("buffer", [1, 4, 5000])
def test_read_merged_yields_every_record_in_range_in_event_time_order(buffer):
    data = _stream(partitions=4, n=400, seed=buffer)
    consumer = FakeConsumer(data)
    ranges = {tp: (len(recs) // 4, len(recs) - 3) for tp, recs in data.items()}
    got = list(read_merged(consumer, ranges, _parse, timeout_s=30, buffer=buffer))
    want = sorted(
        (r.value for tp, recs in data.items() for r in recs[ranges[tp][0] : ranges[tp][1]]),
        key=lambda v: v["ts"],
    )
    assert [v["ts"] for v in got] == [v["ts"] for v in want]
    assert len(got) == sum(b - a for a, b in ranges.values())


def test_read_merged_skips_bad_records_and_empty_ranges():
    data = _stream(partitions=2, n=50, seed=1)
    tp0, tp1 = sorted(data, key=lambda tp: tp.partition)
    data[tp0][2] = data[tp0][2]._replace(value={"bad": True})
    consumer = FakeConsumer(data)
    got = list(read_merged(consumer, {tp0: (0, 10), tp1: (5, 5)}, _parse, timeout_s=30))
    assert len(got) == 9 and all(v["p"] == tp0 for v in got)


def test_one_consumer_reads_a_partition_again_after_reading_it_to_an_end():
    """A partition read to its end is paused, and kafka-python's assign() keeps that for a
    partition assigned again: a second read with the same consumer got nothing and gave up
    after the timeout."""
    data = _stream(partitions=1, n=20, seed=2)
    (tp,) = data
    consumer = FakeConsumer(data)
    assert len(list(read_merged(consumer, {tp: (10, 11)}, _parse, timeout_s=30))) == 1
    assert len(list(read_merged(consumer, {tp: (0, 10)}, _parse, timeout_s=0.5))) == 10


def test_read_merged_gives_up_with_a_clear_error_when_the_input_ends_early():
    data = _stream(partitions=1, n=10, seed=2)
    (tp,) = data
    with pytest.raises(FdsError, match=r"no input could be read for .* \(partitions \[0\]\)"):
        list(read_merged(FakeConsumer(data), {tp: (0, 50)}, _parse, timeout_s=0.2))


def test_read_merged_hears_a_stop_while_no_input_comes():
    """A QA pass: a SIGTERM during a rebuild from a broker that answers nothing was heard only
    at the timeout (55-118 s after it)."""
    import time

    from fds.streams.kafka_kit import Stopped

    data = _stream(partitions=1, n=10, seed=2)
    (tp,) = data
    stop_at = time.monotonic() + 0.3
    t0 = time.monotonic()
    with pytest.raises(Stopped):
        list(read_merged(FakeConsumer(data), {tp: (0, 50)}, _parse, timeout_s=60,
                         stop=lambda: time.monotonic() >= stop_at))  # fmt: skip
    assert time.monotonic() - t0 < 5


def test_start_offsets_follow_the_horizon_on_record_time():
    import time

    now_ms = int(time.time() * 1000)
    tp = TopicPartition("tx", 0)
    recs = [Record("tx", 0, i, now_ms - (10 - i) * 3_600_000, {"ts": i}) for i in range(10)]
    consumer = FakeConsumer({tp: recs})
    # records 1 h .. 10 h old: a 4.5 h horizon starts at the first one younger than 4.5 h
    assert start_offsets(consumer, [tp], 4.5 * 3600) == {tp: 6}
    assert start_offsets(consumer, [tp], float("inf")) == {tp: 0}
    assert start_offsets(consumer, [tp], 60.0) == {tp: 10}  # nothing that recent: the end


def test_start_offsets_count_the_horizon_back_from_the_last_record_decided():
    """A QA pass: measured from now, a rebuild after an outage longer than the horizon (or of
    a topic whose records carry their event time, days old) started past the committed offset
    and folded nothing; the next decisions counted on empty windows."""
    import time

    now_ms = int(time.time() * 1000)
    tp, tp1, tp2 = (TopicPartition("tx", p) for p in range(3))
    day, hour = 86_400_000, 3_600_000
    # 20 records an hour apart, written 30 days ago; 10 of them decided (committed 10)
    recs = [Record("tx", 0, i, now_ms - 30 * day + i * hour, {"ts": i}) for i in range(20)]
    consumer = FakeConsumer({tp: recs, tp1: [], tp2: recs[:12]})
    assert start_offsets(consumer, [tp], 4.5 * 3600) == {tp: 20}  # (from now: nothing)
    last = last_times(lambda: consumer, {tp: 10, tp1: None, tp2: 12}, timeout_s=5)
    assert last == {tp: recs[9].timestamp, tp2: recs[11].timestamp}
    # 4.5 h before the earliest last decided record (offset 9, written at hour 9): hour 4.5 on,
    # for every partition (an entity spanning them needs each one's history from there)
    at = min(last.values()) / 1000
    assert start_offsets(consumer, [tp, tp1, tp2], 4.5 * 3600, at_s=at) == {tp: 5, tp1: 0, tp2: 5}
    assert start_offsets(consumer, [tp], 4.5 * 3600, at_s=-float("inf")) == {tp: 20}  # (now)


def test_the_last_record_decided_is_found_behind_markers_and_aborted_records():
    """A review: an exactly-once commit's marker, or an aborted batch of 20 (more than the
    first look of 16 offsets), sits before the committed offset: the look goes further back."""
    import time

    now_ms = int(time.time() * 1000)
    tp = TopicPartition("tx", 0)
    kept = [Record("tx", 0, i, now_ms + i, {"ts": i}) for i in range(100)]  # then 20 aborted

    class Aborted(FakeConsumer):  # offsets 100-119 hold no record a read_committed read gets
        def seek(self, tp, offset):
            self.pos[tp] = min(offset, 100)

        def position(self, tp, timeout_ms=None):
            return 120 if self.pos[tp] >= 100 else self.pos[tp]

        def end_offsets(self, tps):
            return dict.fromkeys(tps, 120)

    readers: list[Aborted] = []

    def reader() -> Aborted:
        readers.append(Aborted({tp: kept}))
        return readers[-1]

    assert last_times(reader, {tp: 120}, timeout_s=5) == {tp: kept[99].timestamp}
    # each look a reader of its own, closed after it (the final reread of a session: one
    # reader paused and re-assigned between looks may be parked by kafka-python 3.0.12)
    assert len(readers) == 2 and all(r.closed for r in readers)


def test_a_log_cut_inside_the_horizon_is_said(caplog):
    """Found by a QA pass: the input kept 7 days and the features 30 to 90; a rebuild read what
    was left without a word, and 536 of the next 600 decisions had other features."""
    import time

    now_ms = int(time.time() * 1000)
    tp = TopicPartition("tx", 0)
    kept = [Record("tx", 0, i, now_ms - (10 - i) * 3_600_000, {"ts": i}) for i in range(4, 10)]

    class Trimmed(FakeConsumer):  # offsets 0-3 deleted by retention
        def beginning_offsets(self, tps):
            return dict.fromkeys(tps, 4)

        def end_offsets(self, tps):
            return dict.fromkeys(tps, 10)

    consumer = Trimmed({tp: kept})
    with caplog.at_level("WARNING", logger="fds.streams.rebuild"):
        assert start_offsets(consumer, [tp], 4.5 * 3600, "the rebuild") == {tp: 6}
        assert not caplog.text  # what was deleted is older than the horizon
        assert start_offsets(consumer, [tp], 8 * 3600, "the rebuild") == {tp: 4}
    assert "the rebuild needs the last 8.0 h of topic 'tx', but partitions [0] start" in (
        caplog.text
    )


def test_a_rebuilds_tail_covers_every_stage_state_that_depends_on_the_input():
    from fds.models.scorer import DAYS_COUNTED
    from fds.policy import AlertBudget

    assert STAGES_TAIL_S >= DAYS_COUNTED * 86400 + 86400  # the scorer's day counts, a day more
    assert AlertBudget(10).window + 86400 <= STAGES_TAIL_S


def test_horizon_is_the_longest_window_plus_grace():
    engine = build_engine(DEFAULT_RULES, None)
    longest = max(g.longest for g in engine.features.layout.groups)  # type: ignore[union-attr]
    assert horizon_seconds(engine) == longest + engine.features.grace  # type: ignore[union-attr]
    assert horizon_seconds(build_engine(None, None)) == 0.0


def test_merge_sorted_keeps_each_partitions_order_on_ties():
    got = list(merge_sorted({1: [(1.0, "b1"), (1.0, "b2")], 0: [(1.0, "a1"), (0.5, "a0")]}))
    assert got == ["a1", "a0", "b1", "b2"]


def test_read_merged_stops_at_the_event_time_of_a_partition_with_more_to_decide():
    # partition 0 was decided to t=300, partition 1 only to t=100 (more of it to decide):
    # the fold of partition 0 stops where partition 1's ends; reached says where each stands
    tp0, tp1 = TopicPartition("tx", 0), TopicPartition("tx", 1)
    data = {
        tp: [Record("tx", tp.partition, i, 0, {"ts": float(t), "p": tp}) for i, t in enumerate(ts)]
        for tp, ts in ((tp0, range(0, 400, 10)), (tp1, range(5, 400, 10)))
    }
    ranges = {tp0: (0, 31), tp1: (0, 10)}  # up to t=300 and t=95
    reached: dict[Any, int] = {}
    got = list(
        read_merged(FakeConsumer(data), ranges, _parse, timeout_s=30, hold=[tp1], reached=reached)
    )
    assert [v["ts"] for v in got] == sorted([*range(0, 100, 10), *range(5, 100, 10)])
    assert reached == {tp0: 10, tp1: 10}
    # without partition 1 to wait for: everything in range
    reached.clear()
    got = list(read_merged(FakeConsumer(data), ranges, _parse, timeout_s=30, reached=reached))
    assert len(got) == 41 and reached == {tp0: 31, tp1: 10}
    # a partition with more to decide but nothing in range: nothing is folded here
    reached.clear()
    ranges[tp1] = (10, 10)
    got = list(
        read_merged(FakeConsumer(data), ranges, _parse, timeout_s=30, hold=[tp1], reached=reached)
    )
    assert got == [] and reached == {tp0: 0, tp1: 10}


def test_a_client_connecting_hears_a_stop():
    """A QA pass: a SIGTERM while fds run or fds train connected to a broker down or frozen
    was heard after the broker timeout (exit 1 after 57 s)."""
    import time

    from fds.streams.kafka_kit import ClientErrors, Stopped

    stop_at = time.monotonic() + 0.2
    t0 = time.monotonic()
    with ClientErrors() as errors, pytest.raises(Stopped):
        errors.connect(lambda: time.sleep(5), 1, stop=lambda: time.monotonic() >= stop_at)
    assert time.monotonic() - t0 < 2
