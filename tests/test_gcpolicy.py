import gc
import pickle
import weakref

import pytest

from fds import gcpolicy
from fds.gcpolicy import Freezer


class Node:
    def __init__(self) -> None:
        self.other: object = self  # a reference cycle: only the cyclic collector frees it


def test_a_tick_collects_the_young_garbage_then_freezes_what_is_alive():
    with Freezer(every=3, young=None) as fz:
        kept = Node()
        dropped = Node()
        gone = weakref.ref(dropped)
        del dropped
        fz.tick(2)  # not yet due
        assert fz.freezes == 0
        assert _tracked(kept)
        fz.tick(1)
        assert gone() is None, "garbage cycles are collected before a freeze, not frozen"
        # (not by the freeze count: an earlier test may have left objects frozen, and the
        # collection before the freeze can free some of them, a full suite found)
        assert not _tracked(kept), "what is alive is frozen: in no generation"
        assert fz.freezes == 1
        assert kept.other is kept
    assert gc.get_freeze_count() == 0  # everything is back in the collector's sight


def _tracked(obj: object) -> bool:
    """Is ``obj`` in one of the collector's generations (not frozen)?"""
    return any(o is obj for g in (0, 1, 2) for o in gc.get_objects(generation=g))


def test_frozen_objects_are_not_visited_by_full_collections():
    with Freezer(every=1) as fz:
        state = [[i] for i in range(50_000)]  # long-lived containers, as the feature state
        fz.tick()
        assert gc.get_freeze_count() >= len(state)
        probe = state[0]
        visited = (o for g in (0, 1, 2) for o in gc.get_objects(generation=g))
        assert all(o is not probe for o in visited), "a frozen list is in no generation"


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be >= 1"):
        Freezer(every=0)
    with pytest.raises(ValueError, match="young must be >= 1 or None"):
        Freezer(young=0)


def test_a_fast_growing_heap_is_frozen_before_the_collector_s_own_full_pass():
    """While the state grows fast (a start with no state), 100,000 events made millions of
    containers, and every full pass of the collector between two freezes visited them all
    again: a freeze once its full pass is near visits each of them once."""
    with Freezer(every=10**9, young=3) as fz:
        gc.collect()  # (the young passes counted from here)
        grown = []
        while gc.get_count()[2] < 3:
            fz.tick()
            assert fz.freezes == 0
            grown.append([len(grown)])  # new long-lived containers, as new cards' states
        asked = fz.due()  # what fds run asks before a batch's last tick: it drains first
        assert asked
        fz.tick()
        assert fz.freezes == 1 and not _tracked(grown[-1])
        assert gc.get_count()[2] < 3 and not fz.due()
    # the answer of due() holds for the next tick: a young pass in between (a flush, a commit)
    # freezes nothing the caller did not drain for
    with Freezer(every=10**9, young=1) as fz:
        gc.collect()
        assert not fz.due()
        gc.collect(1)  # a young pass: the count reaches the bound
        assert gc.get_count()[2] >= 1
        fz.tick()
        assert fz.freezes == 0
        fz.tick()  # not asked this time: it freezes
        assert fz.freezes == 1


def test_cycles_other_threads_drop_right_after_the_full_collection_are_not_frozen():
    """A thread held back during the full pass (kafka-python's network thread) runs as soon as
    it returns: the cycles it dropped then were frozen with the rest, and never collected."""
    made: list[weakref.ref[Node]] = []

    def other_thread(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2 and not made:
            made.append(weakref.ref(Node()))  # garbage at once, after the full pass

    gc.callbacks.append(other_thread)
    try:
        with Freezer(every=1) as fz:
            fz.tick()
            assert made and made[0]() is None
    finally:
        gc.callbacks.remove(other_thread)


def test_a_quiet_loop_collects_the_cycles_that_died_frozen():
    with Freezer(every=1, quiet_s=5.0, compact_every_s=3600.0) as fz:
        alive = Node()  # a cycle alive at a freeze (a future in flight) ...
        fz.tick()
        gone = weakref.ref(alive)
        del alive  # ... that dies later: frozen garbage, which no tick collects
        fz.tick()
        assert gone() is not None
        assert not fz.idle(quiet_s=0.1)  # one empty poll is no lull
        assert fz.idle(quiet_s=5.0)
        assert gone() is None and fz.compactions == 1
        assert gc.get_freeze_count() > 0  # what is alive is frozen again
        assert not fz.idle(quiet_s=60.0), "nothing was frozen since"
        fz.tick()
        assert not fz.idle(quiet_s=60.0), "at most one compaction per compact_every_s"


def test_no_compaction_whose_pause_is_estimated_over_the_limit():
    with Freezer(every=1, compact_every_s=0.0) as fz:
        fz.tick()
        assert not fz.idle(quiet_s=60.0, max_pause_s=0.0)
        assert fz.compactions == 0
        assert fz.idle(quiet_s=60.0, max_pause_s=60.0)


class _Seen:
    """Notes, as it is unpickled, whether the collector is on."""

    states: list[bool] = []  # noqa: RUF012

    def __init__(self) -> None:
        self.x = 1  # (a state to set: __setstate__ is called)

    def __setstate__(self, state: object) -> None:
        _Seen.states.append(gc.isenabled())


def test_a_state_is_unpickled_frame_by_frame_with_the_collector_paused(monkeypatch):
    """pickle.loads is one C call: no other thread runs during it (kafka-python's heartbeat: a
    takeover unpickling a large snapshot got its instance evicted). gcpolicy.loads reads
    through a Python method per frame (where threads switch), collector paused."""
    state = [[float(i), str(i), list(range(20))] for i in range(20_000)] + [_Seen()]
    data = gcpolicy.dumps(state)
    assert data == pickle.dumps(state, protocol=5)
    reads = []
    read = gcpolicy._Frames.read
    monkeypatch.setattr(
        gcpolicy._Frames, "read", lambda self, n=-1: reads.append(n) or read(self, n)
    )
    _Seen.states.clear()
    assert gc.isenabled()
    got = gcpolicy.loads(data)
    assert got[:-1] == state[:-1] and len(reads) > len(data) // (128 << 10)  # (64 KB frames)
    assert _Seen.states == [False] and gc.isenabled()  # paused while unpickling, then back
    assert _tracked(got), "not frozen: a throwaway plan is a cycle a freeze would keep (a review)"


def test_a_state_unpickled_to_be_kept_can_be_frozen_at_once(monkeypatch):
    """``freeze=True``: what was unpickled is frozen before the collector resumes, so no
    collection after visits it (benchmarks/results/load_collect.md: a collection of 0.44 s after
    loading the state of 100,000 cards, 0.05 s with it frozen)."""
    state = [[float(i), str(i), [i]] for i in range(1000)]
    data = gcpolicy.dumps(state)
    gc.unfreeze()
    try:
        small = gcpolicy.loads(data, freeze=True)  # (under LOAD_FREEZE_MIN_BYTES: not worth it)
        assert small == state and _tracked(small)
        monkeypatch.setattr(gcpolicy, "LOAD_FREEZE_MIN_BYTES", len(data))
        dead = Node()  # garbage at the load: collected first, not frozen with the rest
        ref = weakref.ref(dead)
        del dead
        got = gcpolicy.loads(data, freeze=True)
        assert got == state and not _tracked(got) and not _tracked(got[0])
        assert gc.isenabled() and ref() is None
    finally:
        gc.unfreeze()


def test_a_freeze_by_loads_lets_a_quiet_loop_compact_again():
    """Cycles that die frozen by a load are collected by the next compaction, like those of
    the loop's own freezes (a compaction skips when nothing was frozen since the last)."""
    with Freezer(every=10**9, quiet_s=0.0, compact_every_s=0.0) as fz:
        fz.freeze()
        assert fz.idle(1.0)
        assert not fz.idle(1.0)  # nothing frozen since
        gcpolicy._load_freezes[0] += 1  # (a load froze the heap)
        assert fz.idle(1.0)
