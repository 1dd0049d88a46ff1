"""Event-time alignment of input partitions (fds.streams.align) with an in-memory consumer."""

from __future__ import annotations

import random
import time
from typing import NamedTuple

import pytest

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
    got: list = []
    i, t0 = 2, time.monotonic()
    while not got and time.monotonic() - t0 < 5:  # ... while p0 is fetched and p2 is not ...
        time.sleep(0.01)
        c.hw["p0"] = i + 1
        a.add({"p0": _recs("a", [1.0 + i], first=i)})
        i += 1
        got = a.take(10, ["p0", "p2"])
    assert _names(got)[:2] == ["a1", "a2"] and time.monotonic() - t0 < 1  # ... not for ever


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
    c = Consumer(p0=1, p1=9, p2=9, p3=9)  # p1..p3: one record each, then dry and behind
    a = Aligner(c, _key, max_wait_s=0.5)
    a.add({"p1": _recs("b", [0.1]), "p2": _recs("c", [0.2]), "p3": _recs("d", [0.3])})
    a.add({"p0": _recs("x", [1.0])})
    t0 = time.monotonic()
    got: list = []
    i = 1
    while not got and time.monotonic() - t0 < 5:
        got = a.take(10, assigned=["p0", "p1", "p2", "p3"])
        time.sleep(0.01)  # polling interval: p0 is fetched, p1..p3 are not
        c.hw["p0"] = i + 1
        a.add({"p0": _recs("x", [1.0 + i], first=i)})
        i += 1
    # one wait of 0.5 s, not three (1.5 s at least); 0.9 s to spare for a loaded machine
    assert got and time.monotonic() - t0 < 1.4


P = ["p0", "p1"]


def test_a_partition_that_gave_nothing_since_it_was_assigned_holds_the_others_back():
    """A chaos run (a restart after a broker outage, at-least-once): one partition's first
    records came seconds after the others', whose wait of max_wait_s ran out meanwhile; they
    took hours of event time, and 2,594 records of the late one were decided late, their
    features other than a replay's. How far behind a partition that gave nothing yet is is
    unknown (Kafka Streams, KIP-695): the others wait for its first records, up to
    max_hold_s; then it waits as any (max_wait_s)."""
    c = Consumer(p0=10)  # p1: assigned, nothing fetched yet
    a = Aligner(c, _key, max_wait_s=0.05, max_hold_s=0.5)
    a.add({"p0": _recs("a", [1.0, 2.0])})
    t0, i = time.monotonic(), 2
    while time.monotonic() - t0 < 0.2:  # p0 is fetched on and on: 4 waits of max_wait_s
        assert a.take(10, P) == []
        a.add({"p0": _recs("a", [10.0 + i], first=i)})
        i += 1
        time.sleep(0.01)
    c.hw["p1"] = 5
    a.add({"p1": _recs("b", [1.5])})
    assert _names(a.take(10, P)) == ["a0", "b0"]  # then p1 is dry and behind: a1 waits
    # a partition whose leader is away gives nothing for good: held at most max_hold_s
    c2 = Consumer(p0=10)
    a2 = Aligner(c2, _key, max_wait_s=0.05, max_hold_s=0.3)
    a2.add({"p0": _recs("a", [1.0])})
    deadline = time.monotonic() + 5
    while not (got := a2.take(10, P)):
        assert time.monotonic() < deadline, "held for good"
        time.sleep(0.01)
    assert _names(got) == ["a0"]


@pytest.fixture
def short_pass(monkeypatch):
    """A loop pass of these tests' scale (0.05 s, not a poll's 1 s): their outages and blocks
    last 0.3 s."""
    import fds.streams.align as align

    monkeypatch.setattr(align, "LONG_PASS_S", 0.05)


def test_a_wait_does_not_run_while_the_loop_is_blocked_and_nothing_is_fetched(short_pass):
    """A chaos run (broker kill, at-least-once): the loop blocked in a flush for the whole
    outage right after p0 ran dry while behind; the first poll after it brought p1 only, p0's
    wait had run out meanwhile, and p1's records went ahead of p0's, which then came hours
    behind the watermark: late, folded into no window, and 600 later decisions of those
    cards had features that differed from a replay."""
    c = Consumer(p0=10, p1=10)
    a = Aligner(c, _key, max_wait_s=0.2)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [5.0])})
    assert _names(a.take(10, P)) == ["a0"]  # p0 ran dry, 9 more to read: b0 waits
    time.sleep(0.3)  # blocked in producer.flush() while the broker is down: no poll, no take
    a.add({"p1": _recs("b", [6.0, 7.0], first=1)})  # the first poll after the outage: p1 only
    assert a.take(10, P) == []  # p0 is still behind and has not been fetched since
    a.add({"p0": _recs("a", [2.0, 8.0], first=1)})
    assert _names(a.take(10, P)) == ["a1", "b0", "b1", "b2"]  # p1 dry, behind: a2 waits


def test_a_wait_that_had_begun_begins_again_after_a_time_with_nothing_fetched(short_pass):
    c = Consumer(p0=10, p1=10)
    a = Aligner(c, _key, max_wait_s=0.2)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [5.0])})
    assert _names(a.take(10, P)) == ["a0"]
    a.add({"p1": _recs("b", [6.0], first=1)})  # p0's wait begins: p1 is fetched, p0 is not
    assert a.take(10, P) == []
    time.sleep(0.3)  # then the loop blocks (a flush during an outage)
    a.add({"p1": _recs("b", [7.0], first=2)})
    assert a.take(10, P) == []  # the blocked time did not count


def test_buffered_records_do_not_overtake_a_partition_that_is_behind_while_nothing_is_fetched():
    """The loop keeps polling through an outage (polls return nothing): what is buffered of p1
    does not overtake p0, which is behind."""
    c = Consumer(p0=10, p1=10)
    a = Aligner(c, _key, max_wait_s=0.2)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [5.0, 6.0])})
    assert _names(a.take(10, P)) == ["a0"]
    for _ in range(30):  # 0.3 s of empty polls
        time.sleep(0.01)
        assert a.take(10, P) == []


def test_a_partition_that_is_behind_holds_the_others_back_for_at_most_max_hold_s():
    c = Consumer(p0=10, p1=10)
    a = Aligner(c, _key, max_wait_s=0.05, max_hold_s=0.2)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [5.0])})
    assert _names(a.take(10, P)) == ["a0"]
    got: list = []
    t0 = time.monotonic()
    while not got and time.monotonic() - t0 < 5:  # nothing fetched, the loop polling
        time.sleep(0.01)
        got = a.take(10, P)
    assert _names(got) == ["b0"] and 0.15 < time.monotonic() - t0 < 1


def test_time_the_loop_spent_blocked_does_not_count_towards_max_hold_s(short_pass):
    """The hold bound runs on the loop's clock too: blocked in a flush for longer than
    max_hold_s (a broker outage) right after p0 ran dry while behind, the loop must not let p1
    overtake p0 at its first take after it."""
    c = Consumer(p0=10, p1=10)
    a = Aligner(c, _key, max_wait_s=0.05, max_hold_s=0.2)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [5.0])})
    assert _names(a.take(10, P)) == ["a0"]  # p0 ran dry, 9 more to read: b0 waits
    time.sleep(0.3)  # blocked (no poll, no take) for longer than max_hold_s
    assert a.take(10, P) == []  # the hold begins again: b0 still waits for p0


def test_a_wait_that_had_begun_begins_again_when_fetching_resumes_after_an_outage(short_pass):
    """A chaos run on the fix's first version: p0's wait began with records kafka-python had
    fetched before the broker died; the loop kept polling through the outage and the first
    fetch after it ended the wait at once."""
    c = Consumer(p0=10, p1=10)
    a = Aligner(c, _key, max_wait_s=0.2)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [5.0])})
    assert _names(a.take(10, P)) == ["a0"]
    a.add({"p1": _recs("b", [6.0], first=1)})  # fetched before the broker died: p0's wait begins
    for _ in range(30):  # 0.3 s of empty polls: the broker is down
        time.sleep(0.01)
        assert a.take(10, P) == []
    a.add({"p1": _recs("b", [7.0], first=2)})  # the broker is back: p1 first
    assert a.take(10, P) == []


def test_a_partition_read_to_its_end_holds_a_head_far_ahead_of_it_for_one_wait():
    """A QA pass: a file produced at full speed into a running fds run (days of event time a
    minute) came 20-49% late: each partition, read to its end for a few milliseconds, held
    nothing back, and the others' records ran ahead of its next ones by more than the grace."""
    c = Consumer(p0=1, p1=1)  # both read to their ends
    a = Aligner(c, _key, max_wait_s=0.2, skew_s=300.0)
    a.add({"p0": _recs("a", [100.0]), "p1": _recs("b", [101.0])})
    assert _names(a.take(10, ["p0", "p1"])) == ["a0", "b0"]
    c.hw["p0"] = 3
    a.add({"p0": _recs("a", [150.0, 900.0], first=1)})  # 900: past p1's newest + the grace
    assert _names(a.take(10, ["p0", "p1"])) == ["a1"]  # held at a2 ...
    assert a.take(10, ["p0", "p1"]) == []
    c.hw["p1"] = 2
    a.add({"p1": _recs("b", [200.0], first=1)})  # ... while p1's records stay 300 s behind
    assert _names(a.take(10, ["p0", "p1"])) == ["b1"]
    c.hw["p1"] = 3
    a.add({"p1": _recs("b", [650.0], first=2)})  # ... and released once they are not
    assert _names(a.take(10, ["p0", "p1"])) == ["b2", "a2"]
    # p1 gone quiet: a head far ahead is held once, for one wait, not again
    a.add({"p0": _recs("a", [2000.0, 3000.0], first=3)})
    c.hw["p0"] = 5
    t0, got = time.monotonic(), []
    while not got and time.monotonic() - t0 < 5:  # (the loop polls meanwhile)
        time.sleep(0.02)
        got = a.take(10, ["p0", "p1"])
    assert _names(got) == ["a3", "a4"] and time.monotonic() - t0 >= 0.2
    a.add({"p0": _recs("a", [4000.0], first=5)})
    c.hw["p0"] = 6
    assert _names(a.take(10, ["p0", "p1"])) == ["a5"]
    # live input (event time within skew_s of the clock): a partition gone quiet holds no
    # decision (each would wait up to --align-wait); nor without skew_s or --align-wait 0
    now = time.time()
    c = Consumer(p0=2, p1=1)
    live = Aligner(c, _key, max_wait_s=0.2, skew_s=300.0)
    live.add({"p0": _recs("a", [now - 900.0]), "p1": _recs("b", [now - 899.0])})
    live.take(10, ["p0", "p1"])
    live.add({"p0": _recs("a", [now], first=1)})  # p1 quiet for 15 minutes
    assert _names(live.take(10, ["p0", "p1"])) == ["b0", "a1"]
    for b in (Aligner(c, _key, max_wait_s=0.2), Aligner(c, _key, max_wait_s=0, skew_s=300.0)):
        b.add({"p0": _recs("a", [100.0]), "p1": _recs("b", [101.0])})
        b.take(10, ["p0", "p1"])
        b.add({"p0": _recs("a", [900.0], first=1)})
        assert _names(b.take(10, ["p0", "p1"])) == ["b0", "a1"]


def test_a_skew_hold_ends_after_one_wait_however_slowly_the_loop_polls():
    """A review: a loop pass longer than --align-wait (the poll timeout above it) began the
    hold again at every pass, and 12 records were held for good; two quiet partitions held one
    after the other (k waits). A grace of 0 made every past record history (SKEW_MIN_S)."""
    from fds.streams.align import SKEW_MIN_S

    assert Aligner(None, _key, skew_s=0.0).skew_s == SKEW_MIN_S
    c = Consumer(p0=1, p1=1, p2=1)
    a = Aligner(c, _key, max_wait_s=0.1, skew_s=300.0)
    a.add({"p0": _recs("a", [100.0]), "p1": _recs("b", [101.0]), "p2": _recs("c", [102.0])})
    assert _names(a.take(10, ["p0", "p1", "p2"])) == ["a0", "b0", "c0"]
    c.hw["p0"] = 2
    a.add({"p0": _recs("a", [5000.0], first=1)})  # far ahead of both quiet partitions
    got, passes = [], 0
    while not got and passes < 20:
        passes += 1
        got = a.take(10, ["p0", "p1", "p2"])
        time.sleep(0.105)  # (each pass longer than a wait)
    assert _names(got) == ["a1"] and passes <= 3, passes  # one wait, both together


def test_a_partition_that_gave_nothing_since_its_assignment_holds_history_for_one_wait():
    """A QA pass: at a start (and after each rebalance) the first poll, 100 records of one
    partition over 8 hours of event time, went out before the other partitions' first records
    were fetched: 184 decisions late."""
    c = Consumer(p0=100, p1=0)  # p1 read to its end (nothing yet), p0's first poll in
    a = Aligner(c, _key, max_wait_s=0.2, skew_s=300.0)
    a.add({"p0": _recs("a", [1000.0 + 300 * i for i in range(100)])})
    assert a.take(1000, ["p0", "p1"]) == []  # held: p1 may bring earlier records ...
    c.hw["p1"] = 1
    a.add({"p1": _recs("b", [900.0])})
    assert _names(a.take(1, ["p0", "p1"])) == ["b0"]  # ... and it did
    b = Aligner(Consumer(p0=1, p1=0), _key, max_wait_s=0.2, skew_s=300.0)
    b.add({"p0": _recs("a", [1000.0])})
    got: list = []
    while not got:  # p1 gives nothing: one wait, then on
        time.sleep(0.05)
        got = b.take(10, ["p0", "p1"])
    assert _names(got) == ["a0"]


class Stamped(NamedTuple):
    name: str
    ts: float
    offset: int
    headers: list


def test_records_of_one_event_time_are_taken_in_the_order_fds_produce_stamped():
    """A QA pass: a file of whole-minute times, produced and run, decided 2,489 of 3,000
    transactions otherwise than its replay: records of one event time in different
    partitions were taken partition by partition, not in file order, so a device or a
    merchant saw them in another order. fds produce stamps each record's place in the file
    (SEQ_HEADER); a record without it (another producer) comes first, by partition."""
    from fds.streams.align import SEQ_HEADER

    def rec(name: str, ts: float, offset: int, seq: int | None) -> Stamped:
        headers = [("other", b"x")] + ([(SEQ_HEADER, b"%d" % seq)] if seq is not None else [])
        return Stamped(name, ts, offset, headers)

    c = Consumer(p0=3, p1=3, p2=2)
    a = Aligner(c, _key)
    a.add({
        "p0": [rec("f1", 60.0, 0, 1), rec("f4", 60.0, 1, 4), rec("f6", 120.0, 2, 6)],
        "p1": [rec("f2", 60.0, 0, 2), rec("f3", 60.0, 1, 3), rec("f5", 120.0, 2, 5)],
        "p2": [rec("live", 60.0, 0, None), rec("bad", 120.0, 1, -1)],
    })  # fmt: skip
    a.add({"p2": []})
    assert _names(a.take(100, ["p0", "p1", "p2"])) == [
        "live", "f1", "f2", "f3", "f4", "bad", "f5", "f6"
    ]  # fmt: skip


def test_records_of_one_time_without_seq_come_out_by_partition_whatever_the_assignment_order():
    # the buffers were made in the order of a set of the assignment (Python's string hash of
    # the topic, seeded per process): ties came out in another order in each process (a review)
    from kafka import TopicPartition

    tps = [TopicPartition("tx", p) for p in range(6)]
    for order in ([5, 3, 1, 0, 2, 4], [2, 0, 4, 5, 1, 3]):
        c = Consumer()
        c.hw = {tp: 1 for tp in tps}  # (each read to its end)
        a = Aligner(c, _key)
        a.add({tps[p]: [Rec(f"p{p}", 100.0, 0)] for p in order})
        got = a.take(10, assigned=[tps[p] for p in order])
        assert _names(got) == [f"p{p}" for p in range(6)]


@pytest.mark.parametrize(("wait", "fetched"), [(0.0, True), (0.05, True), (0.05, False)])
def test_a_wait_shorter_than_a_loop_pass_still_ends(wait, fetched):
    """A review: every pass longer than --align-wait (0, or below the poll timeout) began the
    waits again, the time a partition ran dry included, so one behind with nothing to give
    held the others for good (nothing released after 6 s, max_hold_s 2 s). Now a wait ends
    after --align-wait of fetching the others, and in every case after max_hold_s."""
    c = Consumer(p0=100, p1=10)
    a = Aligner(c, _key, max_wait_s=wait, max_hold_s=0.6)
    a.add({"p0": _recs("a", [1.0]), "p1": _recs("b", [0.5])})
    assert _names(a.take(10, P)) == ["b0"]  # p1 ran dry, 9 more to read: a0 waits
    t0, got, n = time.monotonic(), [], 1
    while not got and time.monotonic() - t0 < 3:
        time.sleep(0.1)  # (a pass: the poll's timeout)
        if fetched:
            a.add({"p0": _recs("a", [1.0 + n], first=n)})
            n += 1
        got = a.take(10, P)
    assert got and time.monotonic() - t0 < (0.5 if fetched else 1.0), time.monotonic() - t0
