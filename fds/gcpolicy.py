"""Long-lived engine state kept out of the cyclic garbage collector's passes.

The feature state (per-entity logs, the ``tx_id`` store) holds millions of containers and no
reference cycles, yet CPython's full collection visits every tracked container: at 1,000,000
cards one full pass took up to 9.9 s of CPU inside a single decision (benchmarks/results/
features.md), a gap in service. A :class:`Freezer` moves what is alive into the permanent
generation (:func:`gc.freeze`) when a loop starts and again every ``every`` events (sooner
where the collector's own full pass is near: :data:`YOUNG_PASSES`), each time after a
collection of what is not frozen yet (its cost follows what was allocated since the last
freeze, not the state held). Frozen objects are still freed by reference counting the moment
they are no longer used; only a reference cycle that forms among objects after they were frozen
is not collected (the engine's state forms none; a replaced model is freed by reference
counting unless its own estimator holds a cycle). Instagram runs its Python services this way.

What is frozen is everything alive at that moment, also short-lived cycles of other threads
(kafka-python's network thread: a future failed with a timeout, whose traceback holds the frame
that holds the future); once garbage, a frozen cycle stays. Two things keep that small:

- the freeze comes right after a young collection (~10 us) that follows the full one: the other
  threads, held back during the full pass, run just after it, and the cycles they made and
  dropped meanwhile were frozen with the rest (a reproduction: 5.3 objects leaked per freeze
  before, 0.3 after). Cycles alive during the full pass are old by then: not collected by it;
- :meth:`Freezer.idle`: once the caller's input has been quiet for a while, the whole heap is
  unfrozen, collected and frozen again (:meth:`Freezer.compact`), a full pass over the state
  (0.2 s at 50,000 cards, ~10 s at 1,000,000) that no waiting event pays for. A loop that is
  never idle keeps the cycles frozen alive (~0.13 B per event on the Kafka path before the
  young collection, an upper bound now).

>>> import gc
>>> with Freezer(every=2, young=None) as fz:
...     fz.tick()
...     once = fz.freezes
...     fz.tick()  # the second event: a collection, then a freeze
...     print(once, fz.freezes, gc.get_freeze_count() > 0)
0 1 True
"""

from __future__ import annotations

import gc
import io
import logging
import math
import pickle
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

__all__ = [
    "COMPACT_EVERY_S",
    "DAMAGED",
    "FREEZE_EVERY",
    "QUIET_S",
    "TICK_EVERY",
    "YOUNG_PASSES",
    "Freezer",
    "collector_paused",
    "dumps",
    "loads",
]

log = logging.getLogger("fds.gc")

#: Events between two freezes: often enough that the young state is never large, rarely enough
#: that the collection before each freeze (~10-30 ms at 20,000 cards) costs < 1% of the time.
FREEZE_EVERY = 100_000
#: ... or sooner, once the collector's own full pass is near: when this many young (generation
#: 1) passes have run since its last full one, CPython's threshold for it (10 by default; its
#: own full pass comes at the first collection after the 11th, once the old generation has also
#: grown by a quarter since that pass: the freeze comes one young pass before it, ~84,000
#: containers kept against ~93,000, and a tick has those ~9,000 containers to come in). While
#: the state grows fast (a start with no state, a flood of new cards) 100,000 events made
#: millions of containers, and the collector's full passes between two freezes visited all of
#: them again each time. At 200,000 new cards x 3 days, with a tick per event: 24 passes, 2.8-3.4
#: s in all, the longest 294-349 ms, against 25 (all freezes), 0.45-0.61 s, the longest 36-50 ms
#: (benchmarks/exp_gc_young.py, results/gc_young.md). A tick per batch of thousands of new
#: cards (a backlog in fds run) mostly comes after the collector's own pass, as before.
YOUNG_PASSES = max(gc.get_threshold()[2], 1)
#: Events a loop may let go by between two ticks and still come in that window even while every
#: event makes a new card's state (~15 containers: 256 events ~3,800 of the ~9,000): how often
#: a replay tells the policy.
TICK_EVERY = 256
#: Seconds without input before :meth:`Freezer.idle` compacts: one empty poll is no lull (fds
#: run polls for 100 ms at a time), and a record that comes during a compaction waits for it.
QUIET_S = 5.0
#: Least seconds between two compactions (or two estimates of one): each is a full pass over the
#: state, so at most that pass's CPU every 15 min; what a busy loop froze meanwhile is ~1 MB at
#: 12,000 tx/s (0.13 B per event measured on the Kafka path before the young collection).
COMPACT_EVERY_S = 900.0
#: A compaction's pause, estimated as this many times the time to count the frozen objects (the
#: same list, walked once): 8.0-9.6 times on the feature state (the benchmarks' default set:
#: 50,000 cards x 14 days, 26 ms then 0.20-0.24 s; 200,000 x 21 days, 0.19-0.21 s then
#: 1.5-2.0 s), with room to spare.
PROBE_RATIO = 12.0
#: ``loads(..., freeze=True)`` freezes only from this size on: a small state costs the
#: collector little, and a freeze takes the whole heap with it (see :func:`loads`).
LOAD_FREEZE_MIN_BYTES = 1 << 20
_load_freezes = [0]  # freezes made by loads: a Freezer compacts the garbage they hide too


class Freezer:
    """``with Freezer() as fz:`` around an event loop, ``fz.tick(n)`` after ``n`` events, and
    ``fz.idle(quiet_s)`` when the loop has nothing to do (optional: see the module's text)."""

    def __init__(
        self,
        every: int = FREEZE_EVERY,
        *,
        young: int | None = YOUNG_PASSES,
        quiet_s: float = QUIET_S,
        compact_every_s: float = COMPACT_EVERY_S,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if young is not None and young < 1:
            raise ValueError(f"young must be >= 1 or None, got {young}")
        self.every = every
        # young passes since the last full one at which a tick freezes early (0: never)
        self.young = young or 0
        self._said: bool | None = None  # what due() said for the next tick
        self.quiet_s = quiet_s
        self.compact_every_s = compact_every_s
        self.freezes = 0
        self.compactions = 0
        self._left = every
        # freezes then (its own, and loads'): a compaction with none since finds nothing new
        self._compacted_at = (0, _load_freezes[0])
        self._next_compaction = -math.inf  # (monotonic time)

    def freeze(self) -> None:
        """Collect the garbage among the unfrozen objects, then freeze what is alive."""
        _collect_and_freeze()
        self.freezes += 1
        self._left = self.every

    def compact(self) -> int:
        """Unfreeze everything, collect it all, freeze again: the frozen garbage is freed (a
        full pass over the whole heap). Returns the objects collected."""
        gc.unfreeze()
        collected = _collect_and_freeze()
        self.compactions += 1
        self._compacted_at = (self.freezes, _load_freezes[0])
        self._left = self.every
        return collected

    def idle(self, quiet_s: float, max_pause_s: float = math.inf) -> bool:
        """The caller's input has been quiet for ``quiet_s`` seconds: :meth:`compact` when that
        is ``self.quiet_s`` or more, a freeze came since the last compaction, none was done or
        estimated in the last ``compact_every_s``, and its pause is estimated at no more than
        ``max_pause_s`` (a Kafka consumer whose thread waits longer than its session timeout
        is dropped from its group). Returns whether it compacted."""
        now = time.monotonic()
        if quiet_s < self.quiet_s or (self.freezes, _load_freezes[0]) == self._compacted_at:
            return False
        if now < self._next_compaction:
            return False
        self._next_compaction = now + self.compact_every_s
        if max_pause_s < math.inf:
            t = time.perf_counter()
            frozen = gc.get_freeze_count()
            estimate = (time.perf_counter() - t) * PROBE_RATIO
            if estimate > max_pause_s:
                log.info(
                    'heap compaction skipped: estimated_s="%.1f" max_pause_s="%.1f" frozen="%d"',
                    estimate, max_pause_s, frozen,
                )  # fmt: skip
                return False
        t = time.perf_counter()
        collected = self.compact()
        log.info(
            'heap compacted: collected="%d" pause_s="%.2f"', collected, time.perf_counter() - t
        )
        return True

    def due(self, n: int = 1) -> bool:
        """Will ``tick(n)`` freeze? The answer holds for the next tick: a young pass in between
        (a commit, a flush) does not make a freeze due that the caller did not prepare for (fds
        run drains its sends first, so that no future in flight is frozen)."""
        self._said = self._left <= n or 0 < self.young <= gc.get_count()[2]
        return self._said

    def tick(self, n: int = 1) -> None:
        """``n`` events done: a freeze once ``every`` events went by since the last, or once
        the collector's own full pass is near (``young``)."""
        self._left -= n
        said, self._said = self._said, None
        if said is None:
            said = self._left <= 0 or 0 < self.young <= gc.get_count()[2]
        if said:
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


def _collect_and_freeze() -> int:
    """A full collection of what is not frozen, then a freeze of what is alive; the number of
    objects collected."""
    collected = gc.collect()
    # Other threads held back during that pass (kafka-python's network thread, with replies
    # waiting) run as soon as it returns; the cycles they drop meanwhile are young: a young
    # pass (well under a millisecond) collects them, or they would be frozen for good.
    collected += gc.collect(1)
    gc.freeze()
    return collected


# -- pickling a large state ------------------------------------------------------------------
# ``pickle.loads``/``dumps`` of the feature state are one C call each: they hold the interpreter
# for all of it (6.0 / 3.3 s for 78 MB in results/gil_pickle.md), so no other thread runs
# meanwhile, kafka-python's heartbeat thread included: a takeover unpickling a snapshot for
# longer than the session timeout would have its instance evicted from the group (and,
# assigned the same partitions again, unpickle it again). Through a file object whose
# ``read``/``write`` are Python methods, the pickler calls back once per 64 KB frame, and the
# interpreter can switch threads there; the collector is paused meanwhile (unpickling makes
# millions of containers: collections over them took most of the time, and were the longest
# holds left). Measured: ``python benchmarks/exp_gil_pickle.py`` (results/gil_pickle.md).


class _Frames:
    """Bytes read, or written, by Python calls (see above)."""

    def __init__(self, data: bytes = b"") -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int | None = -1) -> bytes:
        return self._buf.read(n)

    def readinto(self, b: Any) -> int:
        return self._buf.readinto(b)

    def readline(self, size: int | None = -1) -> bytes:
        return self._buf.readline(size)

    def write(self, b: Any) -> int:
        return self._buf.write(b)

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block (as it was before, after it): a pass over a
    large structure being built holds every thread for its length. What the block leaves
    alive is young after it: one young collection visits it (what holds no cycle is freed by
    reference counting meanwhile)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: What unpickling damaged bytes raises (8 bytes flipped at 30 random places of a state: the
#: first three, or nothing; EOFError, IndexError and struct.error for bytes cut short). Not a
#: MemoryError, nor a class a later release pickled: those are no damage to set aside.
DAMAGED = (pickle.UnpicklingError, ValueError, OverflowError, EOFError, IndexError, struct.error)


def loads(data: bytes, *, freeze: bool = False) -> Any:
    """``pickle.loads(data)`` letting other threads run while it works, without a collector
    pass over what it makes meanwhile.

    ``freeze`` (``data`` of :data:`LOAD_FREEZE_MIN_BYTES` or more): the heap is frozen before
    the collector resumes, what this made included. Otherwise every container made is young,
    and the collections that follow visit them all, each one call holding the interpreter
    (0.44 s after the state of 100,000 cards x 10 days, 0.05 s frozen: results/load_collect.md;
    it grows with the state, towards a session timeout at 1,000,000 cards, and the loop's
    Freezer starts with a full pass too). For what holds no reference cycle: the feature
    state, as a plan loads it (the plan holds none, so a takeover's snapshot, dropped once
    cut, is freed at once). A freeze takes the whole heap: the garbage is collected first,
    but cycles made by other threads meanwhile, or that form later among what was alive,
    stay until a :meth:`Freezer.compact` (counted: a Freezer compacts after such a freeze
    too), as with the Freezer's own freezes.

    >>> loads(dumps({"a": [1.5, "x"]}))
    {'a': [1.5, 'x']}
    """
    freeze = freeze and len(data) >= LOAD_FREEZE_MIN_BYTES
    if freeze:
        gc.collect()  # (what is garbage now is not frozen; the loop keeps little unfrozen)
    with collector_paused():
        got = pickle.load(_Frames(data))
        if freeze:
            gc.freeze()
            _load_freezes[0] += 1
        return got


def dumps(obj: Any) -> bytes:
    """``pickle.dumps(obj, protocol=5)`` letting other threads run while it works, without a
    collector pass meanwhile (objects' reductions allocate, and a full pass over a large heap
    is one long hold: results/gil_pickle.md)."""
    out = _Frames()
    with collector_paused():
        pickle.dump(obj, out, protocol=5)
    return out.getvalue()
