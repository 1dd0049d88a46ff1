"""The ``tx_id`` store: which entity values (and event time) a labelled transaction had.

A label arrives days after its transaction and must be attributed to the entity values the
transaction had, at its own event time. Every accepted transaction of a plan with fraud
aggregates is therefore remembered for ``label_ttl`` -- at simulator rates ~29 entries per card,
the largest per-card cost of the plan. So the store is bucketed by event time and a bucket
that no accepted event can reach any more (it ends before ``watermark - grace``) is *frozen*:
its dicts ``tx_id -> keys`` and ``tx_id -> ts`` become three sorted columns (the ids as a
fixed-width NumPy bytes array, the keys as a list of references to the entity values the states
already hold, the timestamps as float64), ~27 bytes per transaction instead of ~140 (a ``str``, a
float and two dict slots). Lookups in a frozen bucket are a binary search. (Two dicts rather
than one of tuples: a dict of strings and floats is not tracked by the cyclic garbage
collector, a tuple per event would be.)

>>> store = TxStore(span=100.0)
>>> store.remember("t1", 5.0, "m1")
>>> store.remember("t2", 150.0, "m2")
>>> store.expire(freeze_before=100.0, drop_before=0.0)  # bucket [0, 100) is frozen
>>> store.find("t1")[1:], store.find("t2")[1:], store.find("t3")
(('m1', 5.0), ('m2', 150.0), None)
>>> len(store)
2
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TxStore"]


class _Bucket:
    """The transactions of one event-time span: a dict while open, sorted columns once frozen.

    ``known`` holds the tx_ids whose fraud label is currently counted (labels are rare).
    """

    __slots__ = ("ids", "keys", "known", "open", "open_ts", "ts")

    def __init__(self) -> None:
        self.open: dict[str, Any] | None = {}  # tx_id -> keys, while open
        self.open_ts: dict[str, float] | None = {}  # tx_id -> event time, while open
        self.ids: np.ndarray | None = None
        self.keys: list[Any] | None = None
        self.ts: np.ndarray | None = None
        self.known: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.open) if self.open is not None else len(self.keys)  # type: ignore[arg-type]

    def find(self, tx_id: str) -> tuple[Any, float] | None:
        if self.open is not None:
            keys = self.open.get(tx_id)
            return None if keys is None else (keys, self.open_ts[tx_id])  # type: ignore[index]
        ids = self.ids
        assert ids is not None and self.keys is not None and self.ts is not None
        key: Any = tx_id
        if ids.dtype.kind == "S":
            try:
                key = tx_id.encode("ascii")
            except UnicodeEncodeError:
                return None  # a frozen ASCII bucket holds no such id
        i = int(np.searchsorted(ids, key))
        if i < len(ids) and ids[i] == key:
            return self.keys[i], float(self.ts[i])
        return None

    def freeze(self) -> None:
        d = self.open
        assert d is not None
        try:
            ids = np.array(list(d), dtype="S")  # ASCII ids: one byte per character
        except UnicodeEncodeError:
            ids = np.array(list(d), dtype="U")
        if ids.dtype.kind == "S" and any(i.endswith("\x00") for i in d):  # pragma: no cover
            ids = np.array(list(d), dtype="U")  # NumPy strips trailing NULs from bytes
        keys = list(d.values())
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        ts = self.open_ts
        assert ts is not None  # same keys, same order as ``d``: filled together
        self.ts = np.fromiter(ts.values(), np.float64, len(d))[order]
        self.keys = [keys[i] for i in order.tolist()]
        self.open = self.open_ts = None


class TxStore:
    """``tx_id -> (entity keys, event time)`` for ``label_ttl``, in buckets of ``span`` seconds.

    ``keys`` is whatever the plan attributes a label to (one entity value, or a tuple of them
    with several fraud groups).
    """

    __slots__ = ("_cur", "_keys", "_ts", "buckets", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self.buckets: dict[int, _Bucket] = {}
        self._cur = -1  # index of the bucket last written, and its two dicts (cached)
        self._keys: dict[str, Any] = {}
        self._ts: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets.values())

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.span, self.buckets)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.span, self.buckets = state
        self._cur, self._keys, self._ts = -1, {}, {}

    def remember(self, tx_id: str, t: float, keys: Any) -> None:
        """Record an accepted transaction (``t`` must be at or after the last freeze horizon)."""
        b = int(t // self.span)
        if b != self._cur:
            bk = self.buckets.get(b)
            if bk is None:
                bk = self.buckets[b] = _Bucket()
            assert bk.open is not None and bk.open_ts is not None  # frozen: out of reach
            self._cur, self._keys, self._ts = b, bk.open, bk.open_ts
        self._keys[tx_id] = keys
        self._ts[tx_id] = t

    def find(self, tx_id: str) -> tuple[_Bucket, Any, float] | None:
        """``(bucket, keys, ts)`` of ``tx_id``, newest bucket first; ``None`` if unknown."""
        for bk in reversed(self.buckets.values()):
            rec = bk.find(tx_id)
            if rec is not None:
                return bk, rec[0], rec[1]
        return None

    def expire(self, *, freeze_before: float, drop_before: float) -> None:
        """Drop buckets that end at or before ``drop_before``; freeze the open ones that end
        at or before ``freeze_before`` (no accepted event can land in them any more)."""
        span = self.span
        for b in [b for b in self.buckets if (b + 1) * span <= drop_before]:
            del self.buckets[b]
        for b, bk in self.buckets.items():
            if bk.open is not None and (b + 1) * span <= freeze_before:
                bk.freeze()
        if self._cur not in self.buckets or self.buckets[self._cur].open is None:
            self._cur, self._keys, self._ts = -1, {}, {}
