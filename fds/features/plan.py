"""The feature plan: exact event-time windows per entity, label-aware, checkpointable.

Semantics (DESIGN.md, "Rules file"): a window aggregate of transaction ``tx`` at event time ``t``
covers the entity's transactions with ``t - width < ts <= t`` (``calendar_day``: local midnight
``<= ts <= t``), ``tx`` included and transactions that arrived earlier with the same or an
earlier timestamp; ``seen`` and ``last_gap`` look only at the others. ``fraud_count`` and
``fraud_rate`` count the transactions whose fraud label had arrived before the decision.

How (see the README, "Features" for the full account):

* one flat state list per entity value: an append-only log (timestamps and value columns)
  shared by every window of the entity; a window is a head position in it plus, where needed,
  running sums, a min/max candidate list, a value counter (a number while the window is
  short: ``codegen.tally``) and a known-fraud count;
* events up to ``grace`` behind the watermark (the largest event time seen) are inserted in
  order; later ones are decided on the state still held, not folded in, counted and flagged;
* the log keeps ``grace + longest window`` of history (a value column only as long as the
  longest window reading it), idle entities are swept out by event time a few hundred per
  event, a label is attributed through a ``tx_id`` store kept as long as it can still matter;
* two plans' states merge (``absorb``); a plan made with ``provenance`` also logs each entry's
  input partition, so the entries of some partitions can be taken out again (``split``).

Every window is exact (no bucketing, long windows included). Sums are running sums of
deviations from the entity's first value, so they carry floating-point rounding like any
running total (relative error ~1e-12 at simulator amounts; reset to exact zeros whenever the
window empties, recomputed exactly after an out-of-order insert, after a leave that cancelled
most of a sum, and with a new shift when ``std`` lost precision to a far shift: see
``codegen._DRIFT``).

>>> from types import SimpleNamespace as S
>>> plan = FeaturePlan([
...     S(name="n_1h", entity="card_id", agg="count", field=None, window="1h"),
...     S(name="avg_1h", entity="card_id", agg="mean", field="amount", window="1h"),
...     S(name="gap", entity="card_id", agg="last_gap", field=None, window="1h"),
... ])
>>> plan.compute({"tx_id": "a", "ts": 0.0, "card_id": "c", "amount": 10.0})
{'n_1h': 1, 'avg_1h': 10.0, 'gap': None}
>>> plan.compute({"tx_id": "b", "ts": 60.0, "card_id": "c", "amount": 30.0})
{'n_1h': 2, 'avg_1h': 20.0, 'gap': 60.0}
>>> plan.compute({"tx_id": "c", "ts": 3660.0, "card_id": "c", "amount": 5.0})
{'n_1h': 1, 'avg_1h': 5.0, 'gap': None}
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
import weakref
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import compress
from operator import not_
from pathlib import Path
from typing import Any

from fds import gcpolicy
from fds.errors import ConfigError, FeatureStateMismatch, describe
from fds.features.calendar import DayClock
from fds.features.codegen import (
    _DRIFT2,
    TS,
    _exact,
    _fold,
    _std,
    assign_slots,
    build_fused,
    build_new_state,
    counted_entities,
    prune,
    set_table,
    table_items,
    tally,
)
from fds.features.codegen import cat as _cat
from fds.features.codegen import num as _num
from fds.features.kernel import Compiler
from fds.features.shards import SHARDS, Shards, shard_of
from fds.features.spec import DEFAULT_GRACE, Group, Layout, compile_specs, grace_seconds
from fds.features.txstore import TxStore
from fds.schema import ID_MAX, id_text
from fds.timeutil import MAX_TS, MIN_TS, parse_duration, parse_ts, same_zone, span

__all__ = ["FeaturePlan", "read_field"]

log = logging.getLogger(__name__)

NAN = math.nan
# Checkpoint format version: bump when the pickled state layout changes. A plan with
# provenance has one more column and its own format: a release before it (which knew no
# "provenance" in a state's identity, see _IDENTITY_DEFAULTS) refuses such a state by its
# format rather than misread it.
_FORMAT = 10
_FORMAT_PROVENANCE = 11  # (a bump of either skips past both: they share one range)
# Each format and the earlier ones this release also reads: 4 and 5 held each group's states
# in one dict (6 and 7 in fds.features.shards, which a release before them cannot load); up
# to 6 and 7 every value counter was a dict (8 and 9: a number in a short window,
# codegen.tally, which a release before them cannot fold into) and every numeric column as
# long as the log (8 and 9 keep one only as long as the longest window reading it: its offset
# is the state's last slot, appended as 0 to a state of before); up to 8 a `seen`-only window
# longer than its field's `distinct` windows kept the field's column (10 keeps a last-seen
# table instead: its slots come last, appended empty to a state of before, and the column is
# cut at the entity's next event; 11, with provenance, keeps the column as 9 did).
_READS = {_FORMAT: (4, 6, 8), _FORMAT_PROVENANCE: (5, 7, 9)}
# Identity entries that a state saved before they existed lacks, and what it had then.
_IDENTITY_DEFAULTS = {"provenance": False}
# Input partitions are logged as unsigned 16-bit numbers (array "H").
_MAX_PART = 0xFFFF
# The log may hold this fraction of its longest window (the entity's, where every window is
# read from last-seen tables alone) beyond what is needed before it is trimmed: trimming then
# happens once per 1/16 window per entity (amortised O(1) per event) at a memory cost of at
# most ~6 % extra entries.
_TRIM_SLACK = 1 / 16
# Idle entities of a group are swept every 1/8 of its longest window of event time, checked
# once as many events as there are held states (at least _SWEEP_MIN_EVENTS) went by: a sweep
# visits every state of the group, so this bounds its amortised cost to one state visit per
# event, while idle state is at most ~1/8 window (plus one check period) old past evictable.
# A sweep is incremental: it visits at most _SWEEP_STEP states per event, shard by shard
# (fds.features.shards; a copy of one shard's keys at a time, where a copy of a million keys
# at once held one event for 5-40 ms), so no event pays for visiting every state (~1 s for a
# million cards).
_SWEEP_FRACTION = 1 / 8
_SWEEP_MIN_EVENTS = 1000
_SWEEP_STEP = 512
# A group with a cap (max_entities) is checked again after an eighth of its cap of events (an
# event adds at most one entity to it); a sweep that starts over it evicts the entities idle
# longest, so that 7/8 of the cap stays, judged on the newest event times of a sample of its
# states: whole shards, at least 4,096 states (one shard of ~20,000 at 5 million held: a few
# ms once per check over the cap).
_CAP_CHECKS = 8
_CAP_KEEP = 7 / 8
# The cap a warning advises: this times what a sweep keeping _CAP_KEEP holds of the entities
# active then (a cap of 8/7 of them was the cap in force, or one at the floor half the time:
# a review)
_CAP_MARGIN = 1.25
_CAP_SAMPLE = 4096
# The tx_id store is bucketed by event time, so expiry drops whole buckets; a bucket no
# accepted event can reach is frozen incrementally (see txstore). A label's lookup visits the
# buckets newest first (one binary search per frozen bucket): 128 buckets of a 28-day TTL
# hold 5.25 h each.
_LABEL_BUCKETS = 128
# A plan left interpreted by its kernel's failed build asks for it again this often (wall
# time, read every 1,024 events): built once the failure's marker is an hour old or deleted,
# without a restart (a service ran interpreted until its next start or rules reload).
_KERNEL_RETRY_S = 600.0


def _split(name: str) -> tuple[str, str | None]:
    """``extra.shop`` -> ("extra", "shop"); ``merchant_id`` -> ("merchant_id", None)."""
    if name.startswith("extra."):
        return "extra", name[6:]
    return name, None


def _event_time(t: Any) -> float:
    """An event time given to :meth:`FeaturePlan.compute` other than a float in range, read as
    a transaction's ``ts`` is (:func:`fds.timeutil.parse_ts`: an int, epoch milliseconds, ISO
    8601 text), or refused with the reason before the state changes. (A Decimal, a string or a
    huge int had changed part of the state before it raised, and a Fraction became the
    watermark: a QA pass.)"""
    try:
        return parse_ts(t)
    except ValueError as e:
        raise ValueError(f"ts: {e}") from None


def _get(tx: Mapping[str, Any], key: str, sub: str | None) -> Any:
    if sub is None:
        return tx.get(key)
    extra = tx.get("extra")
    return extra.get(sub) if extra else None


def _check_kept(extra: Any, names: tuple[str, ...]) -> None:
    """Refuse (before any change) an ``extra`` text a feature would keep in its state that is
    longer than an id may be (:data:`fds.schema.ID_MAX`)."""
    if not isinstance(extra, Mapping):  # (refused as the state's code reads it)
        return
    for name in names:
        v = extra.get(name)
        if v.__class__ is not str and isinstance(v, list | dict):  # (kept as its JSON text,
            v = _cat(v)  # a list of 1 MB passed the text's bound: a review)
        if v.__class__ is str and len(v) > ID_MAX:
            raise ValueError(
                f"extra.{name}: a text of {len(v):,} characters; a feature keeps it in its "
                f"state (an entity, or a value it counts), so it is bounded as an id is: at "
                f"most {ID_MAX:,}"
            )


def read_field(tx: Mapping[str, Any], name: str) -> Any:
    """The value of field ``name`` (``extra.NAME`` included) a feature reads from ``tx``."""
    return _get(tx, *_split(name))


class _CompiledGroup:
    """Per-group constants used on the hot path (tuples, no attribute chasing)."""

    # indices into the flat state list, set by codegen.assign_slots (-1: not held)
    i_num: list[int]
    i_shift: list[int]
    i_sum: list[tuple[tuple[int, int, int, int], ...]]  # per window: (field, s1, s2, count)
    i_cat: list[int]
    i_coff: list[int]
    i_noff: list[int]
    i_short: tuple[tuple[int, int, float], ...]  # (column, offset or -1, kept): see assign_slots
    i_last: list[int]  # per categorical field: its last-seen table's first slot, or -1
    appended: list[Any]  # the last slots' values in a state of before them (assign_slots)
    i_flags: int
    i_part: int
    i_log: tuple[int, ...]  # the columns as long as the log, timestamps first
    i_head: list[int]
    i_mono: list[int]
    i_ctr: list[int]
    i_nf: list[int]
    size: int
    providers: tuple[int, ...]  # per categorical field: the group it is the entity of, or -1

    def __init__(self, g: Group, grace: float, prov: bool) -> None:
        self.g = g
        self.prov = prov  # each entry's input partition logged
        self.ent, self.ent_sub = _split(g.entity)
        self.nums = tuple(_split(f) for f in g.num_fields)
        self.cats = tuple(_split(f) for f in g.cat_fields)
        self.sums = tuple(g.num_sums)
        self.fraud = g.has_fraud
        self.longest = g.longest
        self.names = tuple(f.name for f in g.features)
        # per counter slot: whether a ``distinct`` reads it (a number kept, codegen.tally)
        dist = {f.slot for f in g.features if f.agg == "distinct"}
        self.distinct = tuple(slot in dist for slot in range(g.n_counters))
        # per categorical field: how long its column is kept, the longest window counting it
        # (``cat_keep``) but a ``seen``-only window longer than every ``distinct`` window of
        # the field, in a plan without provenance (a split divides columns, not tables): that
        # one reads the values the column cut from the field's last-seen table
        # (``codegen._fold``; ``seen_keep``: the longest such window, 0 if none); per numeric
        # field: the longest window summing it or keeping its min/max
        n_cat = range(len(g.cat_fields))
        counting = [[(w.retention, w.counters[ci]) for w in g.windows if ci in w.counters]
                    for ci in n_cat]  # fmt: skip
        counted = [max((r for r, slot in c if self.distinct[slot]), default=0.0) for c in counting]
        self.last_slots = frozenset(
            slot
            for ci in n_cat
            for r, slot in counting[ci]
            if not self.distinct[slot] and r > counted[ci] and not prov
        )
        self.cat_keep = tuple(
            max((r for r, slot in counting[ci] if slot not in self.last_slots), default=0.0)
            for ci in n_cat
        )
        self.seen_keep = tuple(
            max((r for r, slot in counting[ci] if slot in self.last_slots), default=0.0)
            for ci in n_cat
        )
        # (the columns a release before last-seen tables kept: where their offsets are)
        self.cat_keep_before = tuple(max(r for r, _slot in c) for c in counting)
        # per window: (index, width or None, per-entry expiry work?, mono slots, counter slots,
        #              fraud slot, features, seen-only slots read from a last-seen table)
        wins = []
        for wi, w in enumerate(g.windows):
            feats = tuple((f.agg, f.name, f.fi, f.slot) for f in g.features if f.win == wi)
            mono = tuple((slot, fi, kind == "max") for (fi, kind), slot in w.mono.items())
            # value counters, and the seen-only ones read from a last-seen table (no counter)
            ctrs = tuple((slot, fi) for fi, slot in w.counters.items())
            lasts = tuple((slot, fi) for slot, fi in ctrs if slot in self.last_slots)
            ctrs = tuple((slot, fi) for slot, fi in ctrs if slot not in self.last_slots)
            per_entry = bool(ctrs) or w.fraud >= 0 or bool(w.sums)
            wins.append((wi, w.seconds, per_entry, mono, ctrs, w.fraud, feats, lasts))
        self.windows = tuple(wins)
        self.num_keep = tuple(
            max(
                w.retention for w in g.windows
                if fi in w.sums or any(f == fi for f, _kind in w.mono)
            )
            for fi in range(len(g.num_fields))
        )  # fmt: skip
        # an entity is held ``keep`` seconds after its newest event (its longest window and the
        # grace); its log keeps ``log_keep`` seconds behind the watermark, trimmed once
        # ``trim_lag`` old: as long as ``keep`` but for windows read from last-seen tables
        # alone (a card's 90-day ``seen`` windows do not keep its 90 days of timestamps)
        self.keep = grace + self.longest
        tables_only = {
            wi for wi in range(len(g.windows))
            if all(f.agg == "seen" and f.slot in self.last_slots for f in g.features if f.win == wi)
        }  # fmt: skip
        self.log_longest = max(
            (w.retention for wi, w in enumerate(g.windows) if wi not in tables_only), default=0.0
        )
        self.log_keep = grace + self.log_longest
        # the least idle time after which a cap evicts (max_entities): the shortest window's
        self.floor = grace + min(w.retention for w in g.windows)
        self.trim_lag = self.log_keep + (self.log_longest or self.longest) * _TRIM_SLACK
        assign_slots(self)
        self.new_state = build_new_state(self)


class _Cursor:
    """Where the generated hot path reads the current event's input partition (a slot: the
    cheapest attribute read)."""

    __slots__ = ("part",)

    def __init__(self) -> None:
        self.part = 0


class FeaturePlan:
    """Compiled windowed features: ``compute(tx) -> snapshot``, ``on_label(label)``.

    Parameters
    ----------
    specs
        Declarations with attributes ``name, entity, agg, field, window``.
    timezone
        IANA zone for ``calendar_day`` windows (the ruleset's ``timezone``).
    grace
        How late (behind the largest event time seen) an event may be and still be folded in
        exactly; later events are decided on the current state, counted in ``late_events`` and
        flagged ``"late"`` (the ruleset's ``grace``; a duration of 0 or more, default 5m).
    label_ttl
        How long (event time) a transaction stays attributable to a late label. Default: the
        longest fraud window plus ``grace`` -- a label for an older transaction can no longer
        change any current or future ``fraud_*`` value, so keeping it longer only costs memory.
    sweep_min_events
        Idle-entity sweeps are considered once per ``max(sweep_min_events, states held)``
        events (a sweep visits every state; this keeps its cost amortised).
    provenance
        Log each entry's input partition (:attr:`part` when it was folded in), so that the
        entries of some partitions can be taken out (:meth:`split`); the ``tx_id`` store
        records each transaction's too, so that a label marks an entry of its own partition.
        Costs an attribute read per event, two bytes and an append per entity group, and a
        dict entry per transaction remembered for labels (two bytes once its bucket is
        frozen); off, the plan generates the same code as one without the option.
    compiler
        A :class:`fds.features.kernel.Compiler`: the generated hot path runs as a compiled
        kernel (a little faster, the same values) once built; until then, and without one, it is
        interpreted. ``compiled`` says which runs now.
    """

    _sweep_after: int  # (set by _reset; read by the max_entities setter after it)

    def __init__(
        self,
        specs: Sequence[Any],
        *,
        timezone: str = "UTC",
        grace: str | float = DEFAULT_GRACE,
        label_ttl: str | float | None = None,
        sweep_min_events: int = _SWEEP_MIN_EVENTS,
        provenance: bool = False,
        compiler: Compiler | None = None,
        max_entities: Mapping[str, int] | None = None,
    ) -> None:
        self.layout: Layout = compile_specs(specs)
        self.compiler = compiler
        self.compiled = False
        self._args = (tuple(specs), timezone, grace, sweep_min_events)
        self.provenance = bool(provenance)
        self._cursor = _Cursor()
        self.sweep_min_events = max(int(sweep_min_events), 1)
        self.timezone = timezone
        self.clock = DayClock(timezone)
        self.grace = grace_seconds(grace)  # (one check with the rules file's `grace`)
        self._groups = tuple(
            _CompiledGroup(g, self.grace, self.provenance) for g in self.layout.groups
        )
        counted = counted_entities(self._groups)
        for cg in self._groups:  # (the group whose state key a categorical value is logged as)
            cg.providers = tuple(counted.get(f, -1) for f in cg.cats)
        self._names = tuple(self.layout.names)
        # the extra names whose texts the state keeps (an entity, a value counted), each
        # bounded as an id is: 300 events of two 1-MB `extra` values took 655 MB (a QA pass)
        kept = [(cg.ent, cg.ent_sub) for cg in self._groups]
        kept += [c for cg in self._groups for c in cg.cats]
        self._kept_extra = tuple(sorted({sub for _, sub in kept if sub}))
        self._multi_fraud = sum(1 for g in self.layout.groups if g.has_fraud) > 1
        fraud_windows = [
            g.longest for g in self.layout.groups if g.has_fraud
        ]  # calendar/fraud retention
        if label_ttl is None:
            self.label_ttl = (max(fraud_windows) + self.grace) if fraud_windows else 0.0
        else:
            self.label_ttl = parse_duration(label_ttl)
        self._label_span = max(self.label_ttl / _LABEL_BUCKETS, 1.0)
        self.max_entities = max_entities
        # True while events are folded for their effect on the state alone (a restore catching
        # up on what was decided before): what a cap evicts then is not counted in
        # evictions_by_cap(decided=True), whose counts this process made (not saved, not reset
        # by a restore: the metric's; read from the state, it fell after a kill -9 and a
        # restart, a counter reset to Prometheus and a spike of every eviction restored, and a
        # takeover's rebuild counted the evictions of the instance it replaced again: a QA pass)
        self.folding = False
        self._decided_by_cap = [0 for _ in self._groups]
        self._retry_at = 0  # (events folded in when its kernel is looked for next: compute)
        self._reset()

    @property
    def max_entities(self) -> dict[str, int]:
        """The entities each entity type may hold (``{"card_id": 2_000_000}``; a type not
        named has no cap). Settable at any time (a rules reload): see :meth:`_sweep`."""
        return {cg.g.entity: c for cg, c in zip(self._groups, self._caps, strict=True) if c}

    @max_entities.setter
    def max_entities(self, caps: Mapping[str, int] | None) -> None:
        caps = dict(caps or {})
        ents = [cg.g.entity for cg in self._groups]
        for ent, cap in caps.items():
            if ent not in ents:
                raise ValueError(
                    f"max_entities names {ent!r}, no feature's entity: use one of "
                    f"{', '.join(ents) or '(none declared)'}"
                )
            if cap.__class__ is not int or cap < 1:
                raise ValueError(f"max_entities of {ent} is a whole number of 1 or more: {cap!r}")
        before = getattr(self, "_caps", None)
        self._caps = tuple(caps.get(ent, 0) for ent in ents)
        if hasattr(self, "_idle"):  # (not while the plan is made: no state yet)
            self._follow_caps(before)

    def _follow_caps(self, before: tuple[int, ...] | None) -> None:
        """Take the caps in force (set, or a state restored under them) of the groups whose
        cap is not ``before``'s (a reload of the same rules changes nothing: it ended a sweep
        under way, a review): a group without one, or holding no more than it, evicts at its
        horizon again, a sweep in progress too; one over its cap is swept from the next event
        with the cut of this cap, a sweep in progress too (it went on with the cut of a cap
        taken away or raised: reviews; a cap set during a flood waited for the sweep's
        schedule, every entity held of events: 62 times the cap were held first, a QA pass)."""
        for gi in range(len(self._groups)):
            if before is not None and gi < len(before) and before[gi] == self._caps[gi]:
                continue
            if self._capped(gi):  # (the cut, or the horizon; a cap that cannot be held said)
                self._sweep_after = min(self._sweep_after, self._accepted)

    def fresh(self) -> FeaturePlan:
        """A plan of the same declarations and settings with an empty state."""
        specs, timezone, grace, sweep = self._args
        return FeaturePlan(  # (the label_ttl held: a restored state keeps its own)
            specs, timezone=timezone, grace=grace, label_ttl=self.label_ttl,
            sweep_min_events=sweep, provenance=self.provenance, compiler=self.compiler,
            max_entities=self.max_entities,
        )  # fmt: skip

    @property
    def part(self) -> int:
        """The input partition of the events :meth:`compute` folds in (0 to 65535), logged
        with each entry when the plan keeps provenance: set it before each ``compute``."""
        return self._cursor.part

    @part.setter
    def part(self, value: int) -> None:
        # checked here, not as the state changes: the hot path cannot fail halfway through
        if value.__class__ is not int or not 0 <= value <= _MAX_PART:
            raise ValueError(f"an input partition is an int from 0 to {_MAX_PART}: {value!r}")
        self._cursor.part = value

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        # per group: entity value -> flat state list (layout: codegen.assign_slots)
        self.states: list[Shards] = [Shards() for _ in self._groups]
        self.watermark = -math.inf
        self.watermark_tx: Mapping[str, Any] | None = None  # the event that set it (its id saved)
        self.late_events = 0  # beyond grace: decided on current state, flagged
        self.reordered_events = 0  # within grace: inserted in order
        self._reordered_tx: Any = None  # the last of them (counted once for all its groups)
        self.evicted_entities = 0  # idle past every window (and by the cap, counted here too)
        # per group: evicted by its cap before that, and the idle time that evicts now
        self.evicted_by_cap = [0 for _ in self._groups]
        self._idle = [cg.keep for cg in self._groups]
        self._cap_said = [False for _ in self._groups]
        self._at_floor = [False for _ in self._groups]  # over a cap that cannot be held
        self.unmatched_labels = 0
        self._sweep_at = [-math.inf for _ in self._groups]  # event time of each group's sweep
        self._accepted = 0  # events folded in (drives the sweep's amortisation)
        self._sweep_after = 0  # ... and the count at which sweeps are next considered
        self._sweep_todo: list[list[Any]] = []  # sweeps in progress (see _sweep)
        self._labels = TxStore(self._label_span)
        self._next_label_expiry = -math.inf
        self._bind()

    def _bind(self) -> None:
        """The generated hot path, bound to the current state dicts and ``tx_id`` store.

        Its helpers reach the plan through a weak reference: the plan holds no reference
        cycle, so a plan dropped (a takeover's snapshot once cut, a replaced state) is freed
        by reference counting alone, also once frozen out of the collector's sight
        (:func:`fds.gcpolicy.loads`)."""
        groups = self._groups
        me = weakref.ref(self)

        def reorder(gi: int, st: list[Any], t: float, tx: Mapping[str, Any], out: dict) -> None:
            plan = me()
            assert plan is not None  # (called by its own hot path)
            if tx is not plan._reordered_tx:  # once per event, not per entity group
                plan._reordered_tx = tx
                plan.reordered_events += 1
            plan._brute(groups[gi], st, t, tx, out)
            plan._insert(groups[gi], st, t, tx)

        def trim(gi: int, st: list[Any], horizon: float) -> None:
            plan = me()
            assert plan is not None
            plan._trim(groups[gi], st, horizon)

        helpers = {
            "_reorder": reorder,
            "_trim": trim,
            "_remember": self._labels.remember_part if self.provenance else self._labels.remember,
            "_cutoff": self.clock.cutoff,
            "_DAY": self.clock.cache,
            **({"_PROV": self._cursor} if self.provenance else {}),
        }
        run, self.source, ns, typed = build_fused(groups, self._names, self.states, helpers)
        if self.compiler is None:
            self._run = run
        else:  # (the compiled kernel of its typed source, once built: fds.features.kernel)
            self.compiled = self.compiler.attach(self, typed, ns, run)
            self._kernel_retry = time.monotonic() + _KERNEL_RETRY_S

    def state_sizes(self) -> dict[str, int]:
        """Entities held per entity type, e.g. ``{"card_id": 1203, "merchant_id": 88}``."""
        return {cg.g.entity: len(s) for cg, s in zip(self._groups, self.states, strict=True)}

    def evictions_by_cap(self, *, decided: bool = False) -> dict[str, int]:
        """Entities evicted before their horizon by their type's cap (:attr:`max_entities`),
        per entity type with a cap: in the state (restored with it), or with ``decided`` those
        this plan evicted while deciding, since it was made (``folding`` off;
        ``fds_state_evicted_by_cap_total{entity}``)."""
        counts = self._decided_by_cap if decided else self.evicted_by_cap
        return {
            cg.g.entity: n
            for cg, n, cap in zip(self._groups, counts, self._caps, strict=True)
            if cap or n
        }

    def label_store_size(self) -> int:
        """Entries of transactions a late label can be attributed to (a ``tx_id`` repeated
        in another segment or bucket is one entry more until the older one expires)."""
        return len(self._labels)

    def knows(self, tx_id: str) -> bool:
        """Would a label for ``tx_id`` be attributed now (the transaction was decided and is
        still within the label TTL)?"""
        return self._labels.find(tx_id) is not None

    # ------------------------------------------------------------------ hot path
    def compute(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """Fold ``tx`` into the state and return its feature snapshot (name -> value).

        ``tx["ts"]`` is epoch seconds, a float (what :func:`fds.schema.parse_transaction`
        makes); another value is read as a transaction's ``ts`` is, or refused before the
        state changes."""
        t = tx["ts"]
        if t.__class__ is not float or not MIN_TS <= t < MAX_TS:
            t = _event_time(t)
        if self._kept_extra and (extra := tx.get("extra")):
            _check_kept(extra, self._kept_extra)
        wm = self.watermark
        if t < wm - self.grace:
            self.late_events += 1
            out: dict[str, Any] = dict.fromkeys(self._names)
            for gi, cg in enumerate(self._groups):
                v = _cat(_get(tx, cg.ent, cg.ent_sub))
                if v is not None:
                    self._brute(cg, self.states[gi].get(v), t, tx, out)
            out["_flags"] = ["late"]
            return out
        # The state moves only once the event is folded in: an input the generated code
        # cannot read (a missing tx_id, ``extra`` not a mapping) raises before any change.
        out = self._run(tx, t, t if t > wm else wm)
        if t > wm:
            self.watermark = t
            self.watermark_tx = tx  # (named when later events come late: a QA pass)
            if t >= self._next_label_expiry:
                self._expire_labels()
        self._accepted += 1
        if self._accepted >= self._sweep_after:
            self._sweep()
        if self._accepted >= self._retry_at:  # (its kernel asked for again, see
            # _KERNEL_RETRY_S: the clock read each 1,024 events, not only at sweeps, which a
            # million states make hours apart, a review; on a count of its own: woken through
            # the sweeps' count, a plan waiting for its kernel checked its caps on another
            # schedule than a compiled one, and evicted others, a review)
            self._retry_at = self._accepted + 1024
            if self.compiled or self.compiler is None:
                self._retry_at = 1 << 62
            elif time.monotonic() > self._kernel_retry:
                self._bind()
        return out

    # ------------------------------------------------------------------ rare paths
    def _brute(
        self, cg: _CompiledGroup, st: list[Any] | None, t: float, tx: Mapping[str, Any], out: dict
    ) -> None:
        """Snapshot of ``tx`` at ``t`` recomputed from the log (out-of-order / late events)."""
        ts = st[TS] if st is not None else array("d")
        hi = bisect_right(ts, t)  # others with ts <= t
        xs = [_num(_get(tx, k, sub)) for k, sub in cg.nums]
        cvals = [self._logged(cg, ci, tx) for ci in range(len(cg.cats))]
        for _wi, width, _pe, _mono, _ctrs, _fslot, feats, _lasts in cg.windows:
            cutoff = t - width if width is not None else self.clock.cutoff(t)
            lo = bisect_right(ts, cutoff, 0, hi)
            for agg, name, fi, slot in feats:
                if agg == "count":
                    out[name] = hi - lo + 1
                elif agg == "last_gap":
                    out[name] = t - ts[hi - 1] if hi > lo else None
                elif agg in ("fraud_count", "fraud_rate"):
                    nfr = sum(st[cg.i_flags][lo:hi]) if st is not None else 0
                    out[name] = nfr if agg == "fraud_count" else nfr / (hi - lo + 1)
                elif agg in ("distinct", "seen"):
                    o = _offset(st, cg.i_coff[fi]) if st is not None else 0
                    col = st[cg.i_cat[fi]] if st is not None else ()
                    others = set(col[max(lo - o, 0) : max(hi - o, 0)])
                    if slot in cg.last_slots and st is not None:  # (and the values the
                        got = table_items(st, cg.i_last[fi])  # column cut, at their times)
                        others.update(x for x, u in got if cutoff < u <= t)
                    others.discard(None)
                    v = cvals[fi]
                    if agg == "seen":
                        out[name] = None if v is None else v in others
                    else:
                        out[name] = len(others) + (v is not None and v not in others)
                else:
                    o = _offset(st, cg.i_noff[fi]) if st is not None else 0
                    col = st[cg.i_num[fi]] if st is not None else ()
                    vals = [x for x in col[max(lo - o, 0) : max(hi - o, 0)] if x == x]
                    if xs[fi] == xs[fi]:
                        vals.append(xs[fi])
                    out[name] = _num_agg(agg, vals)

    def _logged(self, cg: _CompiledGroup, ci: int, tx: Mapping[str, Any]) -> Any:
        """Categorical field ``ci`` of ``tx`` as the hot path logs it: another group's entity
        as that group's state key (the value as read while it holds none: the key it gets
        when this event is folded there), any other value as :func:`~codegen.cat` makes it
        (a review: a reordered event's ids went into the interpreter's table of interned
        strings, which grows in one call)."""
        k, sub = cg.cats[ci]
        v = _get(tx, k, sub)
        p = cg.providers[ci]
        if p < 0 or v.__class__ is not str:
            v = _cat(v)
        if p < 0 or v is None:
            return v
        st = self.states[p].get(v)
        return v if st is None else st[0]

    def _insert(self, cg: _CompiledGroup, st: list[Any], t: float, tx: Mapping[str, Any]) -> None:
        """Insert an out-of-order event in timestamp order and repair the window state."""
        ts = st[TS]
        p = bisect_right(ts, t)  # after equal timestamps: they arrived first
        ts.insert(p, t)
        for fi, (k, sub) in enumerate(cg.nums):
            st[cg.i_num[fi]].insert(p - _offset(st, cg.i_noff[fi]), _num(_get(tx, k, sub)))
        cvals = []
        for ci in range(len(cg.cats)):
            v = self._logged(cg, ci, tx)
            st[cg.i_cat[ci]].insert(p - _offset(st, cg.i_coff[ci]), v)
            cvals.append(v)
        if cg.fraud:
            st[cg.i_flags].insert(p, 0)
        if cg.prov:
            st[cg.i_part].insert(p, self._cursor.part)
        _reshift(cg, st, p, p + 1)
        last = ts[-1]
        for wi, width, _pe, _mono, ctrs, _fslot, _feats, _lasts in cg.windows:
            cutoff = last - width if width is not None else self.clock.cutoff(last)
            if t > cutoff:  # inside the window as it stands: count it
                for slot, ci in ctrs:
                    v, i = cvals[ci], cg.i_ctr[slot]
                    c = st[i]
                    if c.__class__ is not dict:  # (a number: counted again, codegen.tally)
                        st[i] = _counter(cg, st, wi, slot, ci)
                    elif v is not None:
                        c[v] = c.get(v, 0) + 1
            else:  # inserted before the head: the head entry moved one place right
                st[cg.i_head[wi]] += 1
            _resum(cg, st, wi)  # positions moved: sums and min/max candidates from the log

    def _repair(self, cg: _CompiledGroup, st: list[Any]) -> None:
        """Recompute every window of ``st`` from its log, as of its newest entry: head,
        counters, known-fraud count, running sums and min/max candidates (after a merge of two
        logs; an out-of-order insert changes them in place)."""
        ts = st[TS]
        last = ts[-1]
        _reshift(cg, st, 0, len(ts))
        for wi, width, _pe, _mono, ctrs, fslot, _feats, _lasts in cg.windows:
            cutoff = last - width if width is not None else self.clock.cutoff(last)
            h = st[cg.i_head[wi]] = bisect_right(ts, cutoff)
            for slot, ci in ctrs:
                st[cg.i_ctr[slot]] = _counter(cg, st, wi, slot, ci)
            if fslot >= 0:
                st[cg.i_nf[fslot]] = sum(st[cg.i_flags][h:])
            _resum(cg, st, wi)

    def _trim(self, cg: _CompiledGroup, st: list[Any], horizon: float) -> None:
        """Drop log entries no accepted event can see any more (``ts <= horizon``), and the
        values of categorical columns kept shorter (``cg.cat_keep``) that their windows left.

        Runs right after an in-order event of the entity: every window was just advanced to
        at least ``horizon`` (``watermark - grace - window``), so nothing dropped is counted.
        """
        ts = st[TS]
        # (the newest entry stays: an event exactly the grace behind the watermark is at the
        # horizon of an entity whose windows are all read from last-seen tables, and its log
        # was emptied, after which the sweep raised IndexError at every event: a review)
        k = min(bisect_right(ts, horizon), len(ts) - 1)
        if k <= 0:
            return
        wm, grace = horizon + cg.log_keep, cg.keep - cg.longest
        for ci, i_last in enumerate(cg.i_last):  # (columns with a last-seen table: cut first,
            if i_last >= 0:  # the values folded into it, and its entries out of reach dropped)
                col, lag = st[cg.i_cat[ci]], grace + cg.seen_keep[ci]
                cut = wm - grace - cg.cat_keep[ci]
                _fold(ts, col, st, cg.i_coff[ci], cut, i_last)
                prune(st, i_last, wm - lag)
        for i in cg.i_log:
            del st[i][:k]
        for i in cg.i_head:  # (a window read from a table alone may reach behind the log)
            st[i] = max(st[i] - k, 0)
        for i in cg.i_mono:
            st[i] = array("q", [q - k for q in st[i]])
        for i, off, keep in cg.i_short:
            if off < 0:
                del st[i][:k]
                continue
            o = st[off] - k  # its first value's position in the trimmed log
            if o < 0:
                del st[i][:-o]
                o = 0
            kc = bisect_right(ts, horizon + cg.log_longest - keep)
            if kc > o:
                del st[i][: kc - o]
                o = kc
            st[off] = o

    def _sweep(self) -> None:
        """Evict entities whose newest event no accepted event can see any more: start the
        sweeps that are due, then visit at most ``_SWEEP_STEP`` states per event (see its
        comment). A group over its cap (:attr:`max_entities`) is swept at once, evicting the
        entities idle longest first (:meth:`_capped`)."""
        wm = self.watermark
        # each sweep in progress: [group, keys of the shard in hand, next of them, the shards
        # left to visit (their numbers, the next one last; those empty at the start left out)]
        todo = self._sweep_todo
        if not todo:
            for gi, cg in enumerate(self._groups):
                if self._capped(gi) or wm >= self._sweep_at[gi]:
                    parts = self.states[gi].parts
                    todo.append([gi, [], 0, [j for j in range(SHARDS - 1, -1, -1) if parts[j]]])
                    self._sweep_at[gi] = wm + cg.longest * _SWEEP_FRACTION
        budget = _SWEEP_STEP
        while todo and budget > 0:
            item = todo[0]
            gi, keys, pos, shards = item
            parts = self.states[gi].parts
            if pos == len(keys):  # the shard in hand visited: the next one's keys
                if shards:
                    item[1], item[2] = list(parts[shards.pop()]), 0
                    budget -= 1
                else:
                    del todo[0]
                continue
            horizon = wm - self._groups[gi].keep
            idle = wm - self._idle[gi]  # (the horizon itself but under a cap)
            end = min(pos + budget, len(keys))
            for k in keys[pos:end]:
                part = parts[shard_of(k)]
                st = part.get(k)
                if st is not None and st[TS][-1] <= idle:
                    del part[k]
                    self.evicted_entities += 1
                    if st[TS][-1] > horizon:
                        self.evicted_by_cap[gi] += 1
                        if not self.folding:
                            self._decided_by_cap[gi] += 1
            budget -= end - pos
            item[2] = end
        if todo:  # more to visit: again at the next event
            self._sweep_after = self._accepted + 1
        else:
            # Next considered after as many events as states are held (a sweep's visits paid
            # over as many events), a type with a cap sooner: after an eighth of it (a small
            # one below sweep_min_events: at 400, 1,351 were held between two checks of 1,000
            # events, a QA pass), or, while its cap cannot be held, after as many events as
            # it holds itself (each check sweeps all its states again: at an eighth of the
            # cap, 2-7x each event's cost at caps of 2,000 or 100, a review; after as many as
            # all types held, a card type capped at 100 grew to 10,554 states between checks
            # for ~500 active, a QA pass)
            every = max(sum(len(s) for s in self.states), self.sweep_min_events)
            for gi, cap in enumerate(self._caps):
                if self._at_floor[gi]:
                    every = min(every, max(len(self.states[gi]), self.sweep_min_events))
                elif cap:
                    every = min(every, max(cap // _CAP_CHECKS, 1))
            self._sweep_after = self._accepted + every

    def _sample(self, gi: int) -> Iterator[list[Any]]:
        """At least ``_CAP_SAMPLE`` states of group ``gi`` (all, when it holds up to twice
        that): whole shards, each a random share of its entities (the first of each in a dict's
        order would be the oldest inserted, and those of one shard alone once a shard holds
        more: a review saw the cut fall to the floor at a cap of a million), from a shard
        that moves with every event, and none holding over twice the median shard (the shards
        are a public CRC of the id: a flood of ids made to fall in shard 0, the sample's
        shard, drove the cut to the floor, 90 of 11,000 devices kept where random ids left
        4,311, a review; so a shard at most half made-up ids is ever read, and no known one)."""
        parts = self.states[gi].parts
        if len(self.states[gi]) <= 2 * _CAP_SAMPLE:
            for part in parts:
                yield from part.values()
            return
        big = 2 * sorted(map(len, parts))[SHARDS // 2] + 16
        start = self._accepted % SHARDS
        for limit in (big, len(self.states[gi])):  # (every shard holding any over it: all
            n = 0  # of them, from the same start: the sample was empty and compute raised
            for j in range(SHARDS):  # IndexError at each event, a review)
                part = parts[(start + j) % SHARDS]
                if n >= _CAP_SAMPLE:
                    return
                if len(part) <= limit:
                    n += len(part)
                    yield from part.values()
            if n:
                return

    def _capped(self, gi: int) -> bool:
        """Is group ``gi`` over its cap? If so, the idle time after which the sweep starting
        now evicts is set so that about ``_CAP_KEEP`` of the cap stays: read from the newest
        event times of a sample of its states (``_CAP_SAMPLE``), never under its shortest
        window plus the grace (said once if that is not enough); else its full horizon."""
        cap, cg = self._caps[gi], self._groups[gi]
        held = len(self.states[gi]) if cap else 0
        if held <= cap:
            self._idle[gi] = cg.keep
            self._cap_said[gi] = self._at_floor[gi] = False
            return False
        newest = sorted(st[TS][-1] for st in self._sample(gi))
        cut = newest[int((1 - cap * _CAP_KEEP / held) * len(newest))]
        self._idle[gi] = min(max(self.watermark - cut, cg.floor), cg.keep)
        self._at_floor[gi] = self._idle[gi] == cg.floor
        if self._at_floor[gi] and not self._cap_said[gi]:
            self._cap_said[gi] = True
            # (how many are active, from the sample: held alone counts the new ones since the
            # last sweep too, and an operator raised the cap 50x for nothing, a QA pass)
            active = round(
                (len(newest) - bisect_right(newest, self.watermark - cg.floor))
                * held / len(newest)
            )  # fmt: skip
            log.warning(
                "%s holds %d entities, over its max_entities of %d, and about %d of them were "
                "active within %s (its shortest window and the grace), which the cap never "
                "evicts: raise max_entities to %d or more, memory permitting (a sweep keeps "
                "7/8 of the cap, and how many are active varies)",
                cg.g.entity, held, cap, active, span(cg.floor),
                max(math.ceil(active / _CAP_KEEP * _CAP_MARGIN), cap + 1),
            )  # fmt: skip
        return True

    # ------------------------------------------------------------------ labels
    def _expire_labels(self) -> None:
        wm = self.watermark
        self._labels.expire(
            freeze_before=wm - self.grace, drop_before=wm - self.grace - self.label_ttl
        )
        self._next_label_expiry = wm + self._label_span

    def on_label(self, label: Mapping[str, Any]) -> bool:
        """Record a (late) label: later decisions count it in ``fraud_count``/``fraud_rate``.

        The label is attributed to the entity values the transaction had, at its own event
        time. Labels for unknown or expired transactions are counted in ``unmatched_labels``.
        Returns whether the label changed anything (not unmatched, not already counted).
        """
        tx_id = label["tx_id"]
        if tx_id.__class__ is not str:  # (the store's key: see TxStore.remember)
            tx_id = id_text(tx_id)
        found = self._labels.find(tx_id)
        if found is None:
            self.unmatched_labels += 1
            return False
        bucket, rec, t, part = found
        want = 1 if label["is_fraud"] else 0
        if bucket.known.get(tx_id, 0) == want:
            return False  # already counted as it says
        if want:
            bucket.known[tx_id] = 1
        else:
            del bucket.known[tx_id]
        delta = 1 if want else -1
        j = 0
        for gi, cg in enumerate(self._groups):
            if not cg.fraud:
                continue
            key = rec[j] if self._multi_fraud else rec
            j += 1
            st = self.states[gi].get(key)
            if st is None:
                continue
            # The log holds no tx_ids: entries with this timestamp are in or out of every
            # window together, so flagging any one of them not yet flagged counts the same;
            # with provenance, one of the transaction's own input partition (a split sends
            # it to that partition's side), unless the store did not record it.
            ts = st[TS]
            flags = st[cg.i_flags]
            p = bisect_left(ts, t)
            hi = bisect_right(ts, t, p)
            if part is None:
                while p < hi and flags[p] == want:
                    p += 1
            else:
                col = st[cg.i_part]
                while p < hi and (flags[p] == want or col[p] != part):
                    p += 1
            if p >= hi:
                continue  # trimmed or evicted: can no longer matter
            flags[p] = want
            for wi, _w, _pe, _mono, _ctrs, fslot, _feats, _lasts in cg.windows:
                if fslot >= 0 and p >= st[cg.i_head[wi]]:
                    st[cg.i_nf[fslot]] += delta
        return True

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict[str, Any]:
        """What a state must have been saved with to be loaded or merged here (an entry at its
        ``_IDENTITY_DEFAULTS`` value is left out: states saved before it existed had it)."""
        ident = {
            "format": _FORMAT_PROVENANCE if self.provenance else _FORMAT,
            "fingerprint": self.layout.fingerprint,
            "timezone": str(self.timezone),
            "grace": self.grace,
            "provenance": self.provenance,
        }
        return {k: v for k, v in ident.items() if _IDENTITY_DEFAULTS.get(k, ...) != v}

    def state_dict(self) -> dict[str, Any]:
        """The whole state as a detached dict (``state`` holds it pickled)."""
        body = {
            "states": self.states,
            "watermark": self.watermark,
            # the id of the event that set it, for the late warning after a restore (it lost
            # both names, the watermark known: a QA pass)
            "watermark_tx_id": (self.watermark_tx or {}).get("tx_id"),
            "late_events": self.late_events,
            "reordered_events": self.reordered_events,
            "evicted_entities": self.evicted_entities,
            "evicted_by_cap": self.evicted_by_cap,
            "idle": self._idle,
            "caps": self._caps,
            # (a restore mid-sweep with a cap that cannot be held checked it again after an
            # eighth of the cap, not after as many events as it holds: other evictions, a QA)
            "at_floor": self._at_floor,
            "unmatched_labels": self.unmatched_labels,
            "sweep_at": self._sweep_at,
            "accepted": self._accepted,
            "sweep_after": self._sweep_after,
            "sweep_todo": self._sweep_todo,
            "shards": "crc32",  # (by shard_of: a sweep's shard numbers hold in any process)
            "labels": self._labels,
            "next_label_expiry": self._next_label_expiry,
            "label_ttl": self.label_ttl,
        }
        return {**self._identity(), "state": gcpolicy.dumps(body)}

    def _body_of(self, sd: Mapping[str, Any]) -> dict[str, Any]:
        """The unpickled state of ``sd``, checked to be of this plan's declarations."""
        self._check(sd)
        try:
            body = gcpolicy.loads(sd["state"], freeze=True)  # (no cycles in it: see _bind)
        except gcpolicy.DAMAGED as exc:  # (bytes a failing disk changed: an UnpicklingError stopped
            # fds run at every start, where an unreadable checkpoint is set aside: a QA pass;
            # not a MemoryError, nor a class a later release pickled: no damage, a review)
            raise ConfigError(f"feature state is unreadable ({describe(exc)})") from exc
        if sd.get("format") in _READS[_FORMAT] + _READS[_FORMAT_PROVENANCE]:
            for cg, states in zip(self._groups, body["states"], strict=True):
                first = cg.size - len(cg.appended)  # (slots added since: see assign_slots)
                dead = [cg.i_ctr[slot] for slot in cg.last_slots]  # (counters no more read)
                if not cg.appended and not dead:
                    continue
                for st in states.values():
                    st.extend(cg.appended[len(st) - first :])
                    for i in dead:
                        st[i] = 0
        return body

    def _check(self, sd: Mapping[str, Any]) -> None:
        """Refuse a state of other declarations, timezone, grace or provenance (``sd``: its
        identity)."""
        mine = {**_IDENTITY_DEFAULTS, **self._identity()}
        for k, v in mine.items():
            got = sd.get(k, _IDENTITY_DEFAULTS.get(k))
            if k == "timezone" and isinstance(got, str) and same_zone(got, v):
                continue  # (another name of the zone: a reload takes it, so must a restart)
            if got != v and not (k == "format" and got in _READS[v]):
                if k == "format" and isinstance(got, int) and got > v:  # (provenance: same)
                    raise FeatureStateMismatch(
                        f"feature state was saved by a newer release of fds (format {got}; "
                        f"this one reads {v} and {', '.join(map(str, _READS[v]))}): restore "
                        "it with that release, or start from an empty state"
                    )
                was = (
                    _changed(str(got or ""), str(v))
                    if k == "fingerprint"  # (both in full: 2,267 characters, a QA pass)
                    else f"{span(got)}, now {span(v)}"  # (as a reload says it: a QA pass)
                    if k == "grace" and isinstance(got, int | float)
                    else f"{got!r}, now {v!r}"
                )
                what = "feature declarations" if k == "fingerprint" else k
                raise FeatureStateMismatch(
                    f"feature state was saved with other {what} ({was}): restore with the same "
                    "feature declarations, timezone, grace and provenance, or start from an "
                    "empty state"
                )

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict` (same declarations required)."""
        body = self._body_of(sd)
        self._reset()
        self.states = [s if isinstance(s, Shards) else Shards(s) for s in body["states"]]
        self.watermark = body["watermark"]
        self.late_events = body["late_events"]
        self.reordered_events = body["reordered_events"]
        self.evicted_entities = body["evicted_entities"]
        # (a state saved before caps existed: none evicted by one, every horizon in full)
        self.evicted_by_cap = body.get("evicted_by_cap", self.evicted_by_cap)
        self._idle = body.get("idle", self._idle)
        self._at_floor = body.get("at_floor", self._at_floor)  # (the warning: again in a new
        # process, whose log would say nothing of it else, a QA pass)
        self.unmatched_labels = body["unmatched_labels"]
        self._sweep_at = body["sweep_at"]
        self._accepted = body["accepted"]
        self._sweep_after = body["sweep_after"]
        # A sweep in progress goes on where it was: the shards are the same in every process
        # (shard_of), so is what a restart decides under a cap. In a state of an earlier
        # release the keys were spread by that process's string hash, and the numbers of the
        # shards it had left name other keys now (a review: 4,012 of 20,000 idle cards stayed
        # until the next sweep): it visits every shard again, its keys in hand kept (a state
        # of format 4 or 5 saved [group, all its keys, next]).
        self._sweep_todo = body["sweep_todo"]
        if body.get("shards") != "crc32":
            self._sweep_todo = [
                [*item[:3], list(range(SHARDS - 1, -1, -1))] for item in self._sweep_todo
            ]
            # (and its schedule was the earlier release's: at a cap's floor, after as many
            # events as every type held, 4,294 cards held for a cap of 100 after an upgrade,
            # a QA pass; considered at the next event, the schedule is this release's)
            self._sweep_after = min(self._sweep_after, self._accepted)
        self._labels = body["labels"]
        self._next_label_expiry = body["next_label_expiry"]
        self.watermark_tx = _named(body)
        self._follow_caps(body.get("caps"))  # (saved under other caps, or before them; under
        # the same, its schedule is kept)
        if body["label_ttl"] != self.label_ttl:  # (replaced without a word: a QA pass)
            log.warning(  # (kept: the restored store's buckets are made for it, a review)
                "the restored feature state keeps its label_ttl of %.0f s (its tx_id store is "
                "bucketed for it), not the %.0f s configured: that applies to a state started "
                "empty", body["label_ttl"], self.label_ttl,
            )  # fmt: skip
        self.label_ttl = body["label_ttl"]
        self._label_span = max(self.label_ttl / _LABEL_BUCKETS, 1.0)
        self._bind()

    def absorb(self, other: FeaturePlan | Mapping[str, Any]) -> None:
        """Merge another plan (same declarations), or its :meth:`state_dict`, into this one; a
        plan given is left sharing its entity states with this one: discard it.

        Exact when the two states hold different events -- each the events of its own input
        partitions, as two instances of a consumer group do: the result is the state one plan
        fed both streams would hold (running sums up to rounding: they are recomputed from the
        merged logs). An entity only the other state holds is taken as it is; one both hold
        gets the two logs merged in event time and its windows recomputed as of its newest
        entry (:meth:`_repair`). Labels known there are attributed here; the watermark is the
        later of the two; this plan's counters (late, evicted, ...) stay its own.
        """
        if isinstance(other, FeaturePlan):  # (no pickling: ~3x the state's size at its peak)
            self._check(other._identity())
            body: dict[str, Any] = {
                "states": other.states, "labels": other._labels,
                "watermark": other.watermark, "label_ttl": other.label_ttl,
            }  # fmt: skip
        else:
            body = self._body_of(other)
        if body["label_ttl"] != self.label_ttl:
            raise ConfigError(
                f"feature state with a label_ttl of {body['label_ttl']:.0f} s cannot be merged "
                f"into one of {self.label_ttl:.0f} s (their tx_id stores are bucketed for each)"
            )
        for cg, states, theirs in zip(self._groups, self.states, body["states"], strict=True):
            for key, so in theirs.items():
                st = states.get(key)
                if st is None:
                    states[key] = so
                else:
                    self._merge(cg, st, so)
        self._labels.absorb(body["labels"])
        if body["watermark"] > self.watermark:
            self.watermark, self.watermark_tx = body["watermark"], _named(body)
        self._sweep_todo = []  # (their keys are visited by the next sweep)
        self._sweep_after = self._accepted
        self._expire_labels()

    def _merge(self, cg: _CompiledGroup, st: list[Any], so: list[Any]) -> None:
        """Merge the log of ``so`` into ``st`` in event time (on equal timestamps ``st``'s
        entries first) and recompute the windows. Categorical columns become whole logs
        (values a column had already cut, which no window counts, are ``None``)."""
        ta, tb = st[TS], so[TS]
        na = len(ta)
        order = sorted(range(na + len(tb)), key=lambda i: ta[i] if i < na else tb[i - na])

        def merged(i: int, off: int = -1) -> list[Any]:
            both = _whole(st, i, off) + _whole(so, i, off)
            return [both[q] for q in order]

        for i in cg.i_log:
            st[i] = _like(st[i], merged(i))
        for i, off, _keep in cg.i_short:
            st[i] = _like(st[i], merged(i, off))
            if off >= 0:
                st[off] = 0
        for i in cg.i_last:  # last-seen tables: both sides' entries, the newest of each
            if i >= 0:
                both: dict[Any, float] = {}
                for v, u in [*table_items(st, i), *table_items(so, i)]:
                    if u > both.get(v, -math.inf):
                        both[v] = u
                set_table(st, i, both)
        self._repair(cg, st)

    def split(self, parts: Iterable[int]) -> FeaturePlan:
        """Move every log entry of the input partitions ``parts`` out of this plan into a new
        plan (:meth:`fresh`, with this plan's watermark), and return it.

        The inverse of :meth:`absorb`: each side holds the entries of its own partitions, its
        windows as if it had been fed only those (sums to rounding), and ``absorb`` of the two
        gives back this plan's state; but both keep this plan's watermark, so an event of the
        moved partitions folded next is late as it would be here, not as it would be in a
        plan fed them alone. An entity whose entries all move is moved whole (one scan of its
        partition column when they are of one partition); one whose entries all stay is left
        as it is; one with entries on both sides is cut in two, each with its windows
        recomputed (:meth:`_repair`; categorical columns become whole logs as in
        :meth:`_merge`). The new plan's counters (late, evicted, ...) start at zero.

        The ``tx_id`` store records each transaction's input partition: a transaction moves,
        with its known label, when its partition does (a label marks an entry of its own
        partition, :meth:`on_label`, so the mark moves with it).

        Raises ``ValueError`` for a plan without provenance.
        """
        if not self.provenance:
            raise ValueError(
                "split needs the input partition of every entry: make the plan with "
                "FeaturePlan(..., provenance=True)"
            )
        moving = frozenset(parts)
        new = self.fresh()
        new.watermark, new.watermark_tx = self.watermark, self.watermark_tx
        for cg, mine, theirs in zip(self._groups, self.states, new.states, strict=True):
            self._split_group(cg, mine, theirs, moving)
        new._labels = self._labels.split(moving)
        new._bind()  # (to its new tx_id store)
        new._expire_labels()
        return new

    def _split_group(
        self, cg: _CompiledGroup, mine: Shards, theirs: Shards, moving: frozenset
    ) -> None:
        """Move the entries of partitions ``moving`` from one group's states ``mine`` to
        ``theirs``."""
        whole = []
        for key, st in mine.items():
            col = st[cg.i_part]
            if col.count(col[0]) == len(col):  # of one partition: stays or moves whole
                if col[0] in moving:
                    whole.append(key)
                continue
            m = list(map(moving.__contains__, col))
            if all(m):
                whole.append(key)
            elif any(m):
                theirs[key] = self._cut(cg, st, m)
        for key in whole:
            theirs[key] = mine.pop(key)

    def _cut(self, cg: _CompiledGroup, st: list[Any], m: list[bool]) -> list[Any]:
        """Take the entries where ``m`` out of ``st`` into a new state of the same entity
        (returned); both get their windows recomputed."""
        keep = list(map(not_, m))
        so = list(st)  # (every column and window part is replaced below or by _repair)
        for i in cg.i_log:
            col = st[i]
            so[i], st[i] = _like(col, compress(col, m)), _like(col, compress(col, keep))
        for i, off, _keep in cg.i_short:
            col = _whole(st, i, off)
            so[i], st[i] = _like(st[i], compress(col, m)), _like(st[i], compress(col, keep))
            if off >= 0:
                so[off] = st[off] = 0
        self._repair(cg, st)
        self._repair(cg, so)
        return so

    def checkpoint(self, path: str | os.PathLike[str], position: Any) -> None:
        """Write the state and the source ``position`` it corresponds to, atomically.

        Written to a temporary file in the same directory, fsynced, renamed over ``path``,
        then the directory is fsynced: a crash leaves the old or the new checkpoint, never a
        torn one (the file is 0600). Its SHA-256 follows the state, checked by :meth:`restore`.
        The file is a pickle: :meth:`restore` refuses one of another user or writable by every
        user, as ``fds run`` does its own; load only checkpoints this process family wrote.
        """
        from fds.models.registry import dump_summed

        dump_summed(Path(path), {**self.state_dict(), "position": position})

    def restore(self, path: str | os.PathLike[str]) -> Any:
        """Load a checkpoint written by :meth:`checkpoint`; returns its source position."""
        from fds.models.registry import read_own, sum_matches

        try:
            data = read_own(Path(path).resolve())  # (another user's, or every user's: not
            # unpickled; a link, `latest -> ckpt-12`, is followed: the file it names is checked)
        except FileNotFoundError:
            raise ConfigError(f"no feature checkpoint at {path}: check the path") from None
        except OSError as e:  # (a directory, a FIFO)
            raise ConfigError(f"feature checkpoint {path} cannot be read ({describe(e)})") from None
        if not sum_matches(data):
            raise ConfigError(
                f"feature checkpoint {path} is unreadable: its bytes do not match the checksum "
                "written with them (a failing disk, or a file cut short)"
            )
        try:
            payload = pickle.loads(data)
        except (pickle.UnpicklingError, EOFError) as e:
            raise ConfigError(f"feature checkpoint {path} is unreadable ({e})") from None
        self.load_state_dict(payload)
        return payload["position"]

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], specs: Sequence[Any], **kwargs: Any
    ) -> tuple[FeaturePlan, Any]:
        """A plan for ``specs`` restored from ``path``, and the source position to resume at."""
        plan = cls(specs, **kwargs)
        return plan, plan.restore(path)


def _named(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The event that set a saved state's watermark, as far as it is kept: its id (a state
    of an earlier release keeps none)."""
    tx_id = body.get("watermark_tx_id")
    return None if tx_id is None else {"tx_id": tx_id}


def _changed(old: str, new: str) -> str:
    """The features two fingerprints (``name=definition;...``) declare otherwise.

    >>> _changed("a=card_id:count::600.0;b=x", "a=card_id:count::60.0;c=y")
    'changed: a; added: c; removed: b'
    """
    was, now = (dict(p.partition("=")[::2] for p in f.split(";") if p) for f in (old, new))
    parts = [
        f"{what}: {', '.join(names)}"
        for what, names in (
            ("changed", [n for n in now if n in was and was[n] != now[n]]),
            ("added", [n for n in now if n not in was]),
            ("removed", [n for n in was if n not in now]),
        )
        if names
    ]
    return "; ".join(parts) or "their order changed"


def _offset(st: list[Any], i_off: int) -> int:
    """Log position of the first value held in a column whose offset is slot ``i_off`` (-1:
    a column as long as the log)."""
    return st[i_off] if i_off >= 0 else 0


def _counter(cg: _CompiledGroup, st: list[Any], wi: int, slot: int, ci: int) -> Any:
    """Counter ``slot`` of window ``wi`` (categorical field ``ci``) counted from the log."""
    col = st[cg.i_cat[ci]][max(st[cg.i_head[wi]] - _offset(st, cg.i_coff[ci]), 0) :]
    return tally(col, cg.distinct[slot])


def _reshift(cg: _CompiledGroup, st: list[Any], lo: int, hi: int) -> None:
    """Move a summed field's shift to the newest of its values at log positions ``lo:hi``
    far below it, as the in-order path moves it to a new value far below it (``codegen._DRIFT``):
    an event inserted out of order, or logs merged (``absorb``), recomputed the sums against
    the shift of a first value of 1e20 long gone, and a 1-hour sum of 5 read 0.0 (a QA pass).
    The windows' sums are recomputed after it (:func:`_resum`)."""
    for fi, summed in enumerate(cg.sums):
        if not summed:
            continue
        k = st[cg.i_shift[fi]]
        kk = k * k
        o = _offset(st, cg.i_noff[fi])
        vals = st[cg.i_num[fi]][max(lo - o, 0) : max(hi - o, 0)]
        far = [x for x in vals if kk > _DRIFT2 * x * x]  # (NaN: never)
        if far:
            st[cg.i_shift[fi]] = far[-1]


def _resum(cg: _CompiledGroup, st: list[Any], wi: int) -> None:
    """Recompute window ``wi``'s running sums (exactly) and min/max candidates from the log,
    from its head."""
    h, n = st[cg.i_head[wi]], len(st[TS])
    for fi, i1, i2, i_n in cg.i_sum[wi]:
        o = _offset(st, cg.i_noff[fi])
        _exact(st[cg.i_num[fi]], st[cg.i_shift[fi]], h - o, n - o, st, i1, i2, i_n)
    for slot, fi, is_max in cg.windows[wi][3]:
        col = st[cg.i_num[fi]]
        o = _offset(st, cg.i_noff[fi])
        lst: list[int] = []
        for q in range(h, n):
            x = col[q - o]
            if x != x:
                continue
            while lst and (col[lst[-1] - o] <= x if is_max else col[lst[-1] - o] >= x):
                lst.pop()
            lst.append(q)
        st[cg.i_mono[slot]] = array("q", lst)


def _like(col: Any, values: Iterable[Any]) -> Any:
    """A column of the kind of ``col`` (an array of its type code, a bytearray, a list)
    holding ``values``."""
    return array(col.typecode, values) if isinstance(col, array) else type(col)(values)


def _whole(st: list[Any], i: int, off: int) -> list[Any]:
    """Column ``st[i]`` as long as the log: missing (``None``, NaN in a numeric column) for
    the values it cut (``off``: the slot of its offset, -1 for a column never cut)."""
    col = st[i]
    return [NAN if isinstance(col, array) else None] * _offset(st, off) + list(col)


def _num_agg(agg: str, vals: list[float]) -> float | None:
    """An aggregate of a window's values (an out-of-order or late event's), computed as the
    running sums are: deviations from a shift (the oldest value), summed exactly, so repeated
    amounts have a mean of that amount and a std of exactly 0 here too (a naive mean and
    two-pass std gave 1.4e-17 for three 0.1s: a QA pass)."""
    if not vals:
        return 0.0 if agg == "sum" else None
    if agg == "min":
        return min(vals)
    if agg == "max":
        return max(vals)
    k, n = vals[0], len(vals)
    ds = [x - k for x in vals]
    s = math.fsum(ds)
    if agg == "sum":
        return s + k * n
    if agg == "mean":
        return k + s / n
    if n == 1:  # (one value: exactly 0, as the running sums say)
        return 0.0
    # std (population); squares by multiplication: a value beyond ~1e154 gives inf (as the
    # running sums do), where ``** 2`` raised OverflowError
    var = (math.fsum([d * d for d in ds]) - s * s / n) / n
    return _std(var)
