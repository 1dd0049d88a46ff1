"""Event-time alignment of input partitions (fds.streams.align) with an in-memory consumer."""

from __future__ import annotations

import random
import time

from fds.streams.align import Aligner


class Consumer:
    """What the aligner asks a KafkaConsumer: high watermarks, positions, pause/resume."""

    def __init__(self) -> None:
        self.hw: dict[str, int | None] = {}
        self.pos: dict[str, int] = {}
        self.paused: set[str] = set()

    def highwater(self, tp: str) -> int | None:
        return self.hw.get(tp)

    def position(self, tp: str) -> int:
        return self.pos.get(tp, 0)

    def pause(self, *tps: str) -> None:
        self.paused.update(tps)

    def resume(self, *tps: str) -> None:
        self.paused.difference_update(tps)


def _key(msg: tuple[str, float]) -> tuple[float, tuple[str, float]]:
    return msg[1], msg


def _names(out: list) -> list[str]:
    return [msg[0] for _tp, msg, _item in out]


def test_records_of_partitions_polled_one_after_the_other_come_out_in_event_time_order():
    rng = random.Random(7)
    times = sorted(rng.uniform(0, 1e5) for _ in range(300))
    parts: dict[str, list[tuple[str, float]]] = {"p0": [], "p1": [], "p2": []}
    for i, t in enumerate(times):
        parts[f"p{rng.randrange(3)}"].append((f"r{i}", t))
    c = Consumer()
    a = Aligner(c, _key)
    got = []
    for tp, records in parts.items():  # a backlog: whole partitions in turn
        c.hw[tp], c.pos[tp] = len(records), len(records)
        a.add({tp: records})
    got += a.take(1000, parts)
    assert [m[1] for _tp, m, _ in got] == times


def test_a_partition_that_is_behind_holds_the_others_back_until_its_records_arrive():
    c = Consumer()
    c.hw.update(p0=10, p1=10)
    c.pos.update(p0=2, p1=0)  # p1 not fetched yet: behind
    a = Aligner(c, _key, max_wait_s=60)
    a.add({"p0": [("a", 1.0), ("c", 3.0)]})
    assert a.take(10, ["p0", "p1"]) == []
    c.pos["p1"] = 1
    a.add({"p1": [("b", 2.0)]})
    # p1 runs dry after "b" while still behind (position 1 < 10): stop there
    assert _names(a.take(10, ["p0", "p1"])) == ["a", "b"]
    c.pos["p1"] = 10  # caught up: no longer holds p0 back
    assert _names(a.take(10, ["p0", "p1"])) == ["c"]


def test_a_caught_up_empty_partition_does_not_hold_back_and_waiting_is_bounded():
    c = Consumer()
    c.hw.update(p0=1, p1=5, p2=7)
    c.pos.update(p0=1, p1=5, p2=0)
    a = Aligner(c, _key, max_wait_s=0.05)
    a.add({"p0": [("a", 1.0)]})
    assert a.take(10, ["p0", "p1"]) and not len(a)  # p1 caught up
    a.add({"p0": [("b", 2.0)]})
    assert a.take(10, ["p0", "p2"]) == []  # p2 behind: waits ...
    time.sleep(0.06)
    assert _names(a.take(10, ["p0", "p2"])) == ["b"]  # ... but not for ever


def test_full_buffers_pause_their_partition_until_drained_and_revoked_ones_are_dropped():
    c = Consumer()
    c.hw.update(p0=100, p1=100)
    c.pos.update(p0=100, p1=100)
    a = Aligner(c, _key, max_buffer=4)
    a.add({"p0": [(f"a{i}", float(i)) for i in range(5)], "p1": [("b", 99.0)]})
    assert c.paused == {"p0"}
    assert len(a.take(4)) == 4 and c.paused == set()
    a.forget(["p0"])
    assert _names(a.take(10)) == ["b"]
