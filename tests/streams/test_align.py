"""Event-time alignment of input partitions (fds.streams.align) with an in-memory consumer."""

from __future__ import annotations

import random
import time
from typing import NamedTuple

from fds.streams.align import Aligner


class Rec(NamedTuple):
    name: str
    ts: float
    offset: int


class Consumer:
    """What the aligner asks a KafkaConsumer: high watermarks of the last fetch, and seek."""

    def __init__(self, **hw: int) -> None:
        self.hw: dict[str, int] = hw
        self.sought: dict[str, int] = {}

    def highwater(self, tp: str) -> int | None:
        return self.hw.get(tp)

    def seek(self, tp: str, offset: int) -> None:
        self.sought[tp] = offset


def _key(msg: Rec) -> tuple[float, Rec]:
    return msg.ts, msg


def _names(out: list) -> list[str]:
    return [msg.name for _tp, msg, _item in out]


def _recs(prefix: str, times: list[float], first: int = 0) -> list[Rec]:
    return [Rec(f"{prefix}{i}", t, i) for i, t in enumerate(times, first)]


def test_records_of_partitions_polled_one_after_the_other_come_out_in_event_time_order():
    rng = random.Random(7)
    times = sorted(rng.uniform(0, 1e5) for _ in range(300))
    parts: dict[str, list[float]] = {"p0": [], "p1": [], "p2": []}
    for t in times:
        parts[f"p{rng.randrange(3)}"].append(t)
    c = Consumer(**{tp: len(ts) for tp, ts in parts.items()})
    a = Aligner(c, _key)
    for tp, ts in parts.items():  # a backlog: whole partitions in turn
        a.add({tp: _recs(tp, ts)})
    got = a.take(1000, parts)
    assert [msg.ts for _tp, msg, _ in got] == times


def test_a_partition_that_is_behind_holds_the_others_back_until_its_records_arrive():
    c = Consumer(p0=2, p1=10)
    a = Aligner(c, _key, max_wait_s=60)
    a.add({"p0": _recs("a", [1.0, 3.0])})
    assert a.take(10, ["p0", "p1"]) == []  # p1: nothing fetched yet, 10 records to read
    a.add({"p1": _recs("b", [2.0])})
    # p1 runs dry after b0 while still behind (next offset 1 < 10): stop there
    assert _names(a.take(10, ["p0", "p1"])) == ["a0", "b0"]
    a.add({"p1": _recs("b", [4.0] * 9, first=1)})  # caught up: p1 no longer holds p0 back
    assert _names(a.take(10, ["p0", "p1"])) == ["a1"] + [f"b{i}" for i in range(1, 10)]


def test_a_caught_up_empty_partition_does_not_hold_back_and_waiting_is_bounded():
    c = Consumer(p0=2, p1=0, p2=7)
    a = Aligner(c, _key, max_wait_s=0.05)
    a.add({"p0": _recs("a", [1.0])})
    assert _names(a.take(10, ["p0", "p1"])) == ["a0"]  # p1 is empty: caught up
    a.add({"p0": _recs("a", [2.0], first=1)})
    assert a.take(10, ["p0", "p2"]) == []  # p2 behind: waits ...
    time.sleep(0.06)
    assert _names(a.take(10, ["p0", "p2"])) == ["a1"]  # ... but not for ever


def test_a_full_buffer_keeps_max_buffer_records_and_refetches_the_rest_later():
    c = Consumer(p0=100, p1=8)
    a = Aligner(c, _key, max_buffer=4)
    a.add({"p0": _recs("a", [float(i) for i in range(6)]), "p1": [Rec("b", 99.0, 7)]})
    assert len(a) == 5 and c.sought == {"p0": 4}  # a4, a5 dropped: fetched again from 4
    assert _names(a.take(3)) == ["a0", "a1", "a2"]
    a.add({"p0": _recs("a", [float(i) for i in range(4, 9)], first=4)})
    assert c.sought == {"p0": 7}  # room for 3 more: a4 .. a6
    # revoked: undecided records are dropped and the position goes back to the first of them
    # (kafka-python keeps the position of a partition that is assigned again)
    a.forget(["p0"])
    assert c.sought == {"p0": 3}
    assert _names(a.take(10)) == ["b"]


def test_a_partition_no_longer_assigned_is_dropped_not_asked_about():
    """Between a revocation and the new assignment kafka-python may report the old assignment,
    so the loop can buffer a partition it then loses: it is dropped at the next take (its new
    owner reads it), and the consumer is never asked about it (kafka-python raises
    IllegalStateError for the high watermark of a partition not assigned)."""

    class Strict(Consumer):
        def highwater(self, tp: str) -> int | None:
            assert tp in self.hw, f"asked about unassigned {tp}"
            return self.hw[tp]

    a = Aligner(Strict(p0=2, p1=2, p2=0), _key)
    a.add({"p0": _recs("a", [1.0, 3.0]), "p1": _recs("b", [2.0])})
    a.take(0, {"p0", "p1", "p2"})  # the old assignment, p2 still in it
    del a.consumer.hw["p1"], a.consumer.hw["p2"]  # p1 and p2 moved away
    assert _names(a.take(10, {"p0"})) == ["a0", "a1"]
    assert len(a) == 0


def test_a_partition_ending_in_a_transaction_marker_is_caught_up_not_behind():
    """Input written by a transactional producer: each commit marker takes an offset no record
    has, so by its records a caught-up partition looked one behind its high watermark forever
    and held every other partition back for max_wait_s after each drain (a review)."""

    class Positions(Consumer):
        def position(self, tp: str, timeout_ms: int | None = None) -> int:
            return {"p0": 2}.get(tp, 0)  # p0: record 0, then its commit marker at offset 1

    c = Positions(p0=2, p1=100)
    a = Aligner(c, _key, max_wait_s=60.0)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [2.0], first=98)})
    c.hw["p1"] = 99
    assert _names(a.take(10)) == ["a0", "b98"]
    a.add({"p1": _recs("c", [3.0], first=99)})
    assert _names(a.take(10)) == ["c99"]  # at once, not after max_wait_s


def test_partitions_that_are_behind_wait_together_not_one_after_another():
    c = Consumer(p0=1)  # p1..p3: no high watermark yet (behind)
    a = Aligner(c, _key, max_wait_s=0.3)
    a.add({"p0": _recs("x", [1.0])})
    t0 = time.monotonic()
    got: list = []
    while not got:
        got = a.take(10, assigned=["p0", "p1", "p2", "p3"])
        time.sleep(0.01)  # polling interval
    assert time.monotonic() - t0 < 0.6  # one wait of 0.3 s, not three
