import gc
import weakref

import pytest

from fds.gcpolicy import Freezer


class Node:
    def __init__(self) -> None:
        self.other: object = self  # a reference cycle: only the cyclic collector frees it


def test_a_tick_collects_the_young_garbage_then_freezes_what_is_alive():
    with Freezer(every=3) as fz:
        kept = Node()
        dropped = Node()
        gone = weakref.ref(dropped)
        del dropped
        frozen = gc.get_freeze_count()
        fz.tick(2)  # not yet due
        assert fz.freezes == 0
        fz.tick(1)
        assert gone() is None, "garbage cycles are collected before a freeze, not frozen"
        assert gc.get_freeze_count() > frozen
        assert fz.freezes == 1
        assert kept.other is kept
    assert gc.get_freeze_count() == 0  # everything is back in the collector's sight


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
