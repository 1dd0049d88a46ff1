"""The feature plan: exact event-time windows per entity, label-aware, checkpointable.

Semantics (DESIGN.md, "Rules file"): a window aggregate of transaction ``tx`` at event time ``t``
covers the entity's transactions with ``t - width < ts <= t`` (``calendar_day``: local midnight
``<= ts <= t``), ``tx`` included and transactions that arrived earlier with the same or an
earlier timestamp; ``seen`` and ``last_gap`` look only at the others. ``fraud_count`` and
``fraud_rate`` count the transactions whose fraud label had arrived before the decision.

How (see docs/features.md for the full account):

* one :class:`_State` per entity value: an append-only log (timestamps, value columns, prefix
  sums of the numeric ones) shared by every window of the entity; a window is a head index into
  it plus, where needed, a min/max candidate list, a value counter and a known-fraud count;
* events up to ``grace`` behind the watermark (the largest event time seen) are inserted in
  order; later ones are decided on the state still held, not folded in, counted and flagged;
* the log keeps ``grace + longest window`` of history, idle entities are swept out by event time,
  a label is attributed through a ``tx_id`` store kept as long as it can still matter.

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

import math
import os
import pickle
import sys
from array import array
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fds.errors import ConfigError
from fds.features.calendar import DayClock
from fds.features.codegen import build_append, build_new_state
from fds.features.codegen import num as _num
from fds.features.spec import Group, Layout, compile_specs
from fds.timeutil import parse_duration

__all__ = ["FeaturePlan"]

NAN = math.nan
# Checkpoint format version: bump when the pickled state layout changes.
_FORMAT = 1
# The log may hold this fraction of the longest window beyond what is needed before it is
# trimmed: trimming then happens once per 1/16 window per entity (amortised O(1) per event)
# at a memory cost of at most ~6 % extra entries.
_TRIM_SLACK = 1 / 16
# Idle entities of a group are swept every 1/8 of its longest window of event time, checked
# once as many events as there are held states (at least _SWEEP_MIN_EVENTS) went by: a sweep
# visits every state of the group, so this bounds its amortised cost to one state visit per
# event, while idle state is at most ~1/8 window (plus one check period) old past evictable.
_SWEEP_FRACTION = 1 / 8
_SWEEP_MIN_EVENTS = 1000
# The tx_id store is bucketed by event time in 16 buckets per TTL, so expiry drops whole dicts.
_LABEL_BUCKETS = 16


class _State:
    """Everything held for one entity value (one card, one merchant ...).

    Prefix arrays (``c0`` present-value counts, ``c1`` shifted sums, ``c2`` shifted squares)
    have one more element than the log: ``c[i]`` sums log positions ``< i``, so a window from
    absolute index ``h`` to the end sums ``c[-1] - c[h - base]``. Instances are built by the
    group's generated constructor (:func:`fds.features.codegen.build_new_state`).
    """

    key: Any
    base: int  # absolute index of ts[0]
    ts: array
    num: list[array]  # raw values per numeric field (NaN = missing)
    shift: list[float]  # per numeric field: the entity's first value, subtracted in the sums
    c0: list[array | None]
    c1: list[array | None]
    c2: list[array | None]
    cats: list[list[Any]]  # values per categorical field
    txids: list[str] | None  # with fraud aggregates: to find a labelled transaction
    flags: bytearray | None  # ... and its known-fraud flag
    heads: list[int]  # per window: absolute index of its first entry
    mono: list[list[int]]  # min/max candidates (absolute indices), per (window, field, kind)
    ctrs: list[dict[Any, int]]  # value counters per (window, categorical field)
    nf: list[int]  # known frauds per fraud window

    __slots__ = (
        "base", "c0", "c1", "c2", "cats", "ctrs", "flags", "heads", "key", "mono", "nf", "num",
        "shift", "ts", "txids",
    )  # fmt: skip

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, s) for s in _State.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for s, v in zip(_State.__slots__, state, strict=True):
            setattr(self, s, v)


def _split(name: str) -> tuple[str, str | None]:
    """``extra.shop`` -> ("extra", "shop"); ``merchant_id`` -> ("merchant_id", None)."""
    if name.startswith("extra."):
        return "extra", name[6:]
    return name, None


def _get(tx: Mapping[str, Any], key: str, sub: str | None) -> Any:
    if sub is None:
        return tx.get(key)
    extra = tx.get("extra")
    return extra.get(sub) if extra else None


def _cat(v: Any) -> Any:
    # Interning makes the many copies of a merchant or country id one object in the logs.
    return sys.intern(v) if v.__class__ is str else v


def _rebase(prefix: array) -> None:
    """Subtract the first element from a prefix array (keeps magnitudes to the window)."""
    view = np.frombuffer(prefix, dtype=np.float64)
    view -= view[0]
    del view  # release the buffer so the array can grow again


class _CompiledGroup:
    """Per-group constants used on the hot path (tuples, no attribute chasing)."""

    def __init__(self, g: Group, clock: DayClock, grace: float) -> None:
        self.g = g
        self.ent, self.ent_sub = _split(g.entity)
        self.nums = tuple(_split(f) for f in g.num_fields)
        self.cats = tuple(_split(f) for f in g.cat_fields)
        self.sums = tuple(g.num_sums)
        self.counted = tuple(
            s and f != "amount" for s, f in zip(g.num_sums, g.num_fields, strict=True)
        )
        self.squares = tuple(g.num_squares)
        self.fraud = g.has_fraud
        self.longest = g.longest
        self.names = tuple(f.name for f in g.features)
        # per window: (index, width or None, per-entry expiry work?, mono slots, counter slots,
        #              fraud slot, features)
        wins = []
        for wi, w in enumerate(g.windows):
            feats = tuple((f.agg, f.name, f.fi, f.slot) for f in g.features if f.win == wi)
            mono = tuple((slot, fi, kind == "max") for (fi, kind), slot in w.mono.items())
            ctrs = tuple((slot, fi) for fi, slot in w.counters.items())
            per_entry = bool(ctrs) or w.fraud >= 0
            wins.append((wi, w.seconds, per_entry, mono, ctrs, w.fraud, feats))
        self.windows = tuple(wins)
        # the log keeps ``keep`` seconds behind the watermark; trimmed once ``trim_lag`` old
        self.keep = grace + self.longest
        self.trim_lag = self.keep + self.longest * _TRIM_SLACK
        self.append, self.source = build_append(self, clock.cutoff)
        self.new_state = build_new_state(self, _State)


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
        flagged ``"late"``.
    label_ttl
        How long (event time) a transaction stays attributable to a late label. Default: the
        longest fraud window plus ``grace`` -- a label for an older transaction can no longer
        change any current or future ``fraud_*`` value, so keeping it longer only costs memory.
    sweep_min_events
        Idle-entity sweeps are considered once per ``max(sweep_min_events, states held)``
        events (a sweep visits every state; this keeps its cost amortised).
    """

    def __init__(
        self,
        specs: Sequence[Any],
        *,
        timezone: str = "UTC",
        grace: str | float = "5m",
        label_ttl: str | float | None = None,
        sweep_min_events: int = _SWEEP_MIN_EVENTS,
    ) -> None:
        self.layout: Layout = compile_specs(specs)
        self.sweep_min_events = max(int(sweep_min_events), 1)
        self.timezone = timezone
        self.clock = DayClock(timezone)
        self.grace = parse_duration(grace)
        if self.grace < 0:
            raise ConfigError(f"grace must be >= 0, got {grace!r}")
        self._groups = tuple(_CompiledGroup(g, self.clock, self.grace) for g in self.layout.groups)
        self._names = tuple(self.layout.names)
        self._multi_fraud = sum(1 for g in self.layout.groups if g.has_fraud) > 1
        fraud_windows = [
            g.longest for g in self.layout.groups if g.has_fraud
        ]  # calendar/fraud retention
        if label_ttl is None:
            self.label_ttl = (max(fraud_windows) + self.grace) if fraud_windows else 0.0
        else:
            self.label_ttl = parse_duration(label_ttl)
        self._label_span = max(self.label_ttl / _LABEL_BUCKETS, 1.0)
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.states: list[dict[Any, _State]] = [{} for _ in self._groups]
        self._bind()
        self.watermark = -math.inf
        self.late_events = 0  # beyond grace: decided on current state, flagged
        self.reordered_events = 0  # within grace: inserted in order
        self.evicted_entities = 0
        self.unmatched_labels = 0
        self._sweep_at = [-math.inf for _ in self._groups]  # event time of each group's sweep
        self._accepted = 0  # events folded in (drives the sweep's amortisation)
        self._sweep_after = 0  # ... and the count at which sweeps are next considered
        self._labels: dict[int, dict[str, tuple[Any, ...]]] = {}
        self._label_bucket = -1
        self._label_dict: dict[str, tuple[Any, ...]] = {}
        self._next_label_expiry = -math.inf

    def _bind(self) -> None:
        """The per-group constants the hot path reads, bound to the current state dicts."""
        self._hot = tuple(
            (cg, states, cg.ent, cg.ent_sub, cg.fraud, cg.append, cg.trim_lag)
            for cg, states in zip(self._groups, self.states, strict=True)
        )

    def state_sizes(self) -> dict[str, int]:
        """Entities held per entity type, e.g. ``{"card_id": 1203, "merchant_id": 88}``."""
        return {cg.g.entity: len(s) for cg, s in zip(self._groups, self.states, strict=True)}

    def label_store_size(self) -> int:
        """Transactions currently attributable to a late label."""
        return sum(len(d) for d in self._labels.values())

    # ------------------------------------------------------------------ hot path
    def compute(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """Fold ``tx`` into the state and return its feature snapshot (name -> value)."""
        t = tx["ts"]
        out: dict[str, Any] = dict.fromkeys(self._names)
        if t < self.watermark - self.grace:
            self.late_events += 1
            for gi, cg in enumerate(self._groups):
                v = _get(tx, cg.ent, cg.ent_sub)
                if v is not None:
                    self._brute(cg, self.states[gi].get(v), t, tx, out)
            out["_flags"] = ["late"]
            return out
        if t > self.watermark:
            self.watermark = t
            if t >= self._next_label_expiry:
                self._expire_labels()
        self._accepted += 1
        if self._accepted >= self._sweep_after:
            self._sweep()
        keys: Any = None  # what the tx_id store keeps: the fraud groups' entity keys
        wm = self.watermark
        for cg, states, ent, sub, fraud, append, trim_lag in self._hot:
            v = tx.get(ent) if sub is None else _get(tx, ent, sub)
            if v is None:
                if fraud and self._multi_fraud:
                    keys = [] if keys is None else keys
                    keys.append(None)
                continue  # features stay None: undefined without the entity
            st = states.get(v)
            if st is None:
                st = states[v] = self._new_state(cg, v, tx)
            if t < st.ts[-1] if st.ts else False:
                self.reordered_events += 1
                self._brute(cg, st, t, tx, out)
                self._insert(cg, st, t, tx)
            elif append(st, t, tx, out) <= wm - trim_lag:
                self._trim(cg, st, wm - cg.keep)
            if fraud:
                if not self._multi_fraud:
                    keys = st.key
                elif keys is None:
                    keys = [st.key]
                else:
                    keys.append(st.key)
        if keys is not None:
            self._remember(tx["tx_id"], t, keys if keys.__class__ is not list else tuple(keys))
        return out

    # ------------------------------------------------------------------ rare paths
    @staticmethod
    def _new_state(cg: _CompiledGroup, key: Any, tx: Mapping[str, Any]) -> _State:
        # The shift for the prefix sums is the entity's first value: sums of deviations from
        # it stay small, which keeps std exact enough when values are large and close together.
        shifts = [0.0 if x != x else x for x in (_num(_get(tx, k, sub)) for k, sub in cg.nums)]
        return cg.new_state(key, shifts)

    def _brute(
        self, cg: _CompiledGroup, st: _State | None, t: float, tx: Mapping[str, Any], out: dict
    ) -> None:
        """Snapshot of ``tx`` at ``t`` recomputed from the log (out-of-order / late events)."""
        ts = st.ts if st is not None else array("d")
        hi = bisect_right(ts, t)  # others with ts <= t
        xs = [_num(_get(tx, k, sub)) for k, sub in cg.nums]
        cvals = [_get(tx, k, sub) for k, sub in cg.cats]
        for _wi, width, _pe, _mono, _ctrs, _fslot, feats in cg.windows:
            cutoff = t - width if width is not None else self.clock.cutoff(t)
            lo = bisect_right(ts, cutoff, 0, hi)
            for agg, name, fi, _slot in feats:
                if agg == "count":
                    out[name] = hi - lo + 1
                elif agg == "last_gap":
                    out[name] = t - ts[hi - 1] if hi > lo else None
                elif agg in ("fraud_count", "fraud_rate"):
                    nfr = sum(st.flags[lo:hi]) if st is not None else 0  # type: ignore[index]
                    out[name] = nfr if agg == "fraud_count" else nfr / (hi - lo + 1)
                elif agg in ("distinct", "seen"):
                    others = set(st.cats[fi][lo:hi]) if st is not None else set()
                    others.discard(None)
                    v = cvals[fi]
                    if agg == "seen":
                        out[name] = None if v is None else v in others
                    else:
                        out[name] = len(others) + (v is not None and v not in others)
                else:
                    vals = [x for x in (st.num[fi][lo:hi] if st is not None else ()) if x == x]
                    if xs[fi] == xs[fi]:
                        vals.append(xs[fi])
                    out[name] = _num_agg(agg, vals)

    def _insert(self, cg: _CompiledGroup, st: _State, t: float, tx: Mapping[str, Any]) -> None:
        """Insert an out-of-order event in timestamp order and repair the window state."""
        ts = st.ts
        base = st.base
        p = bisect_right(ts, t)  # after equal timestamps: they arrived first
        ts.insert(p, t)
        for fi, (k, sub) in enumerate(cg.nums):
            st.num[fi].insert(p, _num(_get(tx, k, sub)))
            if cg.sums[fi]:
                _reprefix(st, fi, p)
        cvals = []
        for ci, (k, sub) in enumerate(cg.cats):
            v = _get(tx, k, sub)
            v = _cat(v) if v is not None else None
            st.cats[ci].insert(p, v)
            cvals.append(v)
        if st.flags is not None:
            st.txids.insert(p, tx["tx_id"])  # type: ignore[union-attr]
            st.flags.insert(p, 0)
        last = ts[-1]
        for wi, width, _pe, mono, ctrs, _fslot, _feats in cg.windows:
            cutoff = last - width if width is not None else self.clock.cutoff(last)
            if t > cutoff:  # inside the window as it stands: count it
                for slot, ci in ctrs:
                    v = cvals[ci]
                    if v is not None:
                        c = st.ctrs[slot]
                        c[v] = c.get(v, 0) + 1
            else:  # inserted before the head: the head entry moved one place right
                st.heads[wi] += 1
            h = st.heads[wi]
            for slot, fi, is_max in mono:  # absolute indices moved: rebuild from the log
                col = st.num[fi]
                lst: list[int] = []
                for q in range(h - base, len(ts)):
                    x = col[q]
                    if x != x:
                        continue
                    while lst and (
                        col[lst[-1] - base] <= x if is_max else col[lst[-1] - base] >= x
                    ):
                        lst.pop()
                    lst.append(q + base)
                st.mono[slot] = lst

    def _trim(self, cg: _CompiledGroup, st: _State, horizon: float) -> None:
        """Drop log entries no accepted event can see any more (``ts <= horizon``)."""
        k = bisect_right(st.ts, horizon)
        if k <= 0:
            return
        del st.ts[:k]
        for fi in range(len(cg.nums)):
            del st.num[fi][:k]
            for prefix in (st.c0[fi], st.c1[fi], st.c2[fi]):
                if prefix is not None:
                    del prefix[:k]
                    _rebase(prefix)
        for col in st.cats:
            del col[:k]
        if st.flags is not None:
            del st.flags[:k]
            del st.txids[:k]  # type: ignore[union-attr]
        st.base += k

    def _sweep(self) -> None:
        """Evict entities whose newest event no accepted event can see any more."""
        wm = self.watermark
        for gi, (cg, states) in enumerate(zip(self._groups, self.states, strict=True)):
            if wm < self._sweep_at[gi]:
                continue
            horizon = wm - cg.keep
            dead = [k for k, st in states.items() if st.ts[-1] <= horizon]
            for k in dead:
                del states[k]
            self.evicted_entities += len(dead)
            self._sweep_at[gi] = wm + cg.longest * _SWEEP_FRACTION
        held = sum(len(s) for s in self.states)
        self._sweep_after = self._accepted + max(held, self.sweep_min_events)

    # ------------------------------------------------------------------ labels
    def _remember(self, tx_id: str, t: float, keys: Any) -> None:
        # One entity key (or a tuple of them with several fraud groups) per transaction, and
        # no timestamp: the entry is found by tx_id in the entity's log. This store is the
        # largest per-transaction cost, so it holds nothing it can do without.
        b = int(t // self._label_span)
        if b != self._label_bucket:
            self._label_bucket = b
            d = self._labels.get(b)
            if d is None:
                d = self._labels[b] = {}
            self._label_dict = d
        self._label_dict[tx_id] = keys

    def _expire_labels(self) -> None:
        horizon = self.watermark - self.grace - self.label_ttl
        for b in [b for b in self._labels if (b + 1) * self._label_span <= horizon]:
            del self._labels[b]
            if b == self._label_bucket:
                self._label_bucket = -1
                self._label_dict = {}
        self._next_label_expiry = self.watermark + self._label_span

    def on_label(self, label: Mapping[str, Any]) -> None:
        """Record a (late) label: later decisions count it in ``fraud_count``/``fraud_rate``.

        The label is attributed to the entity values the transaction had, at its own event
        time. Labels for unknown or expired transactions are counted in ``unmatched_labels``.
        """
        tx_id = label["tx_id"]
        rec = None
        for d in reversed(self._labels.values()):
            rec = d.get(tx_id)
            if rec is not None:
                break
        if rec is None:
            self.unmatched_labels += 1
            return
        want = 1 if label["is_fraud"] else 0
        j = 0
        for gi, cg in enumerate(self._groups):
            if not cg.fraud:
                continue
            key = rec[j] if self._multi_fraud else rec
            j += 1
            st = self.states[gi].get(key)
            if st is None:
                continue
            try:
                p = st.txids.index(tx_id)  # type: ignore[union-attr]
            except ValueError:
                continue  # trimmed or evicted: can no longer matter
            flags = st.flags
            if flags[p] == want:  # type: ignore[index]
                continue
            flags[p] = want  # type: ignore[index]
            delta = 1 if want else -1
            a = st.base + p
            for wi, _w, _pe, _mono, _ctrs, fslot, _feats in cg.windows:
                if fslot >= 0 and a >= st.heads[wi]:
                    st.nf[fslot] += delta

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "fingerprint": self.layout.fingerprint,
            "timezone": str(self.timezone),
            "grace": self.grace,
        }

    def state_dict(self) -> dict[str, Any]:
        """The whole state as a detached dict (``state`` holds it pickled)."""
        body = {
            "states": self.states,
            "watermark": self.watermark,
            "late_events": self.late_events,
            "reordered_events": self.reordered_events,
            "evicted_entities": self.evicted_entities,
            "unmatched_labels": self.unmatched_labels,
            "sweep_at": self._sweep_at,
            "accepted": self._accepted,
            "sweep_after": self._sweep_after,
            "labels": self._labels,
            "next_label_expiry": self._next_label_expiry,
            "label_ttl": self.label_ttl,
        }
        return {**self._identity(), "state": pickle.dumps(body, protocol=5)}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict` (same declarations required)."""
        mine = self._identity()
        for k, v in mine.items():
            if sd.get(k) != v:
                raise ConfigError(
                    f"feature state was saved with a different {k} ({sd.get(k)!r}, now {v!r}): "
                    "restore with the same feature declarations, timezone and grace, or start "
                    "from an empty state"
                )
        body = pickle.loads(sd["state"])
        self._reset()
        self.states = body["states"]
        self._bind()
        self.watermark = body["watermark"]
        self.late_events = body["late_events"]
        self.reordered_events = body["reordered_events"]
        self.evicted_entities = body["evicted_entities"]
        self.unmatched_labels = body["unmatched_labels"]
        self._sweep_at = body["sweep_at"]
        self._accepted = body["accepted"]
        self._sweep_after = body["sweep_after"]
        self._labels = body["labels"]
        self._next_label_expiry = body["next_label_expiry"]
        self.label_ttl = body["label_ttl"]
        self._label_span = max(self.label_ttl / _LABEL_BUCKETS, 1.0)

    def checkpoint(self, path: str | os.PathLike[str], position: Any) -> None:
        """Write the state and the source ``position`` it corresponds to, atomically.

        Written to a temporary file in the same directory, fsynced, renamed over ``path``,
        then the directory is fsynced: a crash leaves the old or the new checkpoint, never a
        torn one. The file is a pickle: load only checkpoints this process family wrote.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        payload = {**self.state_dict(), "position": position}
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def restore(self, path: str | os.PathLike[str]) -> Any:
        """Load a checkpoint written by :meth:`checkpoint`; returns its source position."""
        try:
            with open(path, "rb") as f:
                payload = pickle.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no feature checkpoint at {path}: check the path") from None
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


def _reprefix(st: _State, fi: int, p: int) -> None:
    """Recompute the prefix arrays of numeric field ``fi`` from log position ``p`` on."""
    col = st.num[fi]
    k = st.shift[fi]
    c0, c1, c2 = st.c0[fi], st.c1[fi], st.c2[fi]
    if c0 is not None:
        c0.insert(p + 1, 0.0)
    c1.insert(p + 1, 0.0)  # type: ignore[union-attr]
    if c2 is not None:
        c2.insert(p + 1, 0.0)
    for q in range(p, len(col)):
        x = col[q]
        if x == x:
            d = x - k
            if c0 is not None:
                c0[q + 1] = c0[q] + 1.0
            c1[q + 1] = c1[q] + d  # type: ignore[index]
            if c2 is not None:
                c2[q + 1] = c2[q] + d * d
        else:
            if c0 is not None:
                c0[q + 1] = c0[q]
            c1[q + 1] = c1[q]  # type: ignore[index]
            if c2 is not None:
                c2[q + 1] = c2[q]


def _num_agg(agg: str, vals: list[float]) -> float | None:
    if agg == "sum":
        return float(sum(vals))
    if not vals:
        return None
    if agg == "min":
        return min(vals)
    if agg == "max":
        return max(vals)
    mean = sum(vals) / len(vals)
    if agg == "mean":
        return mean
    return math.sqrt(sum((x - mean) ** 2 for x in vals) / len(vals))  # std (population)
