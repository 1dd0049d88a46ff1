"""Long-lived engine state kept out of the cyclic garbage collector's passes.

The feature state (per-entity logs, the ``tx_id`` store) holds millions of containers and no
reference cycles, yet CPython's full collection visits every tracked container: at 1,000,000
cards one full pass took up to 9.9 s of CPU inside a single decision (benchmarks/results/
features.md), a gap in service. A :class:`Freezer` moves what is alive into the permanent
generation (:func:`gc.freeze`) when a loop starts and again every ``every`` events, each time
after a collection of what is not frozen yet (its cost follows what was allocated since the last
freeze, not the state held). Frozen objects are still freed by reference counting the moment
they are no longer used; only a reference cycle that forms among objects after they were frozen
is not collected (the engine's state forms none; a replaced model is freed by reference
counting unless its own estimator holds a cycle). Instagram runs its Python services this way.

What is frozen is everything alive at that moment, also short-lived cycles of other threads
(kafka-python's network thread: a future failed with a timeout, whose traceback holds the frame
that holds the future); once garbage, a frozen cycle stays. The freeze therefore comes right
after a young collection (~10 us) that follows the full one: the other threads, held back
during the full pass, run just after it, and the cycles they made and dropped meanwhile were
frozen with the rest (a reproduction: 5.3 objects leaked per freeze before, 0.3 after). Cycles
that were alive during the full pass are not collected by it (they are old by then).

>>> import gc
>>> with Freezer(every=2) as fz:
...     fz.tick()
...     once = fz.freezes
...     fz.tick()  # the second event: a collection, then a freeze
...     print(once, fz.freezes, gc.get_freeze_count() > 0)
0 1 True
"""

from __future__ import annotations

import gc
from types import TracebackType

__all__ = ["FREEZE_EVERY", "Freezer"]

#: Events between two freezes: often enough that the young state is never large, rarely enough
#: that the collection before each freeze (~10-30 ms at 20,000 cards) costs < 1% of the time.
FREEZE_EVERY = 100_000


class Freezer:
    """``with Freezer() as fz:`` around an event loop, ``fz.tick(n)`` after ``n`` events."""

    def __init__(self, every: int = FREEZE_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.freezes = 0
        self._left = every

    def freeze(self) -> None:
        """Collect the garbage among the unfrozen objects, then freeze what is alive."""
        gc.collect()
        # Other threads held back during that pass (kafka-python's network thread, with replies
        # waiting) run as soon as it returns; the cycles they drop meanwhile are young: a young
        # pass (well under a millisecond) collects them, or they would be frozen for good.
        gc.collect(1)
        gc.freeze()
        self.freezes += 1
        self._left = self.every

    def due(self, n: int = 1) -> bool:
        """Will ``tick(n)`` freeze?"""
        return self._left <= n

    def tick(self, n: int = 1) -> None:
        self._left -= n
        if self._left <= 0:
            self.freeze()

    def __enter__(self) -> Freezer:
        # No collection first: it would visit everything the process holds (costly for a
        # test process running many loops); garbage frozen here is collectable again on exit.
        gc.freeze()
        self._left = self.every
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gc.unfreeze()  # back in the collector's sight: garbage once the loop is done
