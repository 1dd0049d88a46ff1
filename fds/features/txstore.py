"""The ``tx_id`` store: which entity values (and event time) a labelled transaction had.

A label arrives days after its transaction and must be attributed to the entity values the
transaction had, at its own event time. Every accepted transaction of a plan with fraud
aggregates is therefore remembered for ``label_ttl`` -- at simulator rates ~29 entries per card,
one of the largest per-card costs of the plan. So the store is bucketed by event time and a
bucket that no accepted event can reach any more (it ends before ``watermark - grace``) is
*frozen*: its dicts ``tx_id -> keys`` and ``tx_id -> ts`` become sorted columns (the ids as a
fixed-width NumPy bytes array, the keys as a list of references to the entity values the states
already hold, the timestamps as float64), ~27 bytes per transaction instead of ~140 (a ``str``, a
float and two dict slots). (Two dicts rather than one of tuples: a dict of strings and floats is
not tracked by the cyclic garbage collector, a tuple per event would be.)

A plan keeping provenance also records each transaction's input partition
(:meth:`TxStore.remember_part`): a third dict while open, a uint16 column once frozen (2 bytes
per transaction), so a label marks an entry of its own transaction's partition and a split
sends each transaction to its partition's side. A bucket holding any transaction of unknown
partition (remembered without one: a plan without provenance, or a store saved before
partitions were recorded) freezes without the column; its transactions answer ``None``.

The freeze is **incremental**: a frozen bucket is split into partitions of about
``PART_SIZE`` transactions by a stable hash of the id (fixed weights: the same in every
process, so a restored checkpoint finds its ids), and the work -- splitting the open entries
by partition, then sorting one partition -- is done in steps of at most ``PART_SIZE`` entries,
one step every ``PART_SIZE // 4`` transactions remembered (twice the pace at which entries
arrive, so freezing keeps up). No single event pays for a whole bucket: at 1,000,000
transactions a day a bucket of 5.25 h holds ~220,000 entries (~0.1-0.2 s to freeze at once); a
step handles 2,048. Until its freeze completes a bucket answers from its open dicts. A lookup
in a frozen bucket is one binary search in the id's partition.

>>> store = TxStore(span=100.0)
>>> store.remember("t1", 5.0, "m1")
>>> store.remember("t2", 150.0, "m2")
>>> store.expire(freeze_before=100.0, drop_before=0.0)  # bucket [0, 100) is due to freeze
>>> store.flush()  # finish the pending freeze steps now (normally spread over remember calls)
>>> store.find("t1")[1:], store.find("t2")[1:], store.find("t3")
(('m1', 5.0, None), ('m2', 150.0, None), None)
>>> len(store)
2
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Collection, Iterator
from itertools import compress, islice
from operator import mul
from typing import Any

import numpy as np

from fds.schema import id_text

__all__ = ["PART_SIZE", "TxStore"]

#: Target transactions per frozen partition, and the most entries one freeze step handles.
PART_SIZE = 2048
# A freeze step runs every _STEP_EVERY remembered transactions: two steps (~2 * PART_SIZE
# entries of work) per PART_SIZE arrivals.
_STEP_EVERY = PART_SIZE // 4
# An open bucket's dicts are split into segments of about this many entries: a dict that grows
# past two thirds of its table is copied into a table twice as large in one go (~40 ms for a
# bucket of 220,000 entries); segments bound that to a copy of ~11,000 (checked with the freeze
# steps, so a segment may exceed it by up to _STEP_EVERY).
_SEGMENT = 16384
# Partition hash: a weighted sum of the first bytes of the encoded id, computed with NumPy
# for a chunk of ids and in Python for one id. Fixed weights (odd, 31-bit): stable across
# processes, so a restored checkpoint finds its ids.
_HASH_BYTES = 64
_WEIGHTS = [(((i + 1) * 0x9E3779B1) & 0x7FFFFFFF) | 1 for i in range(_HASH_BYTES)]
_WEIGHTS_NP = np.array(_WEIGHTS, dtype=np.int64)


#: An id longer than this in UTF-8 is stored in a frozen partition as a stand-in: 0xFE (never
#: in UTF-8) and a 19-byte BLAKE2b digest of it, its text kept aside (``_Bucket.long``). A
#: partition's ids are as wide as its widest: one id of 1,024 four-byte characters in 2,048
#: made every entry 4 KB, 98 of 200,000 transactions took a replay from 104 MB to 908 MB (a
#: QA pass). 40 bytes keeps a UUID (36) and most ids of payment systems as they are.
LONG_ID = 40


def _encode(tx_id: str) -> bytes:
    """The id as stored: UTF-8 (a stand-in past LONG_ID bytes), plus a 0xFF byte (never in
    UTF-8) after a trailing NUL, which NumPy's fixed-width bytes would strip."""
    b = tx_id.encode("utf-8", "surrogatepass")
    if len(b) > LONG_ID:
        b = b"\xfe" + hashlib.blake2b(b, digest_size=19).digest()
    return b + b"\xff" if b.endswith(b"\x00") else b


def _decode(b: bytes) -> str:
    """The id :func:`_encode` stored as ``b``."""
    return (b[:-1] if b.endswith(b"\x00\xff") else b).decode("utf-8", "surrogatepass")


def _whole_long(b: bytes) -> bool:
    """Is ``b`` an id over LONG_ID bytes stored whole (by a release before stand-ins)? (A
    40-byte id ending in NUL is stored 41 wide, as it always was: a review found such a
    partition taken for one of before, its stand-ins decoded as text.)"""
    return b[:1] != b"\xfe" and len(b) - b.endswith(b"\x00\xff") > LONG_ID


def _hash(key: bytes) -> int:
    return sum(map(mul, key[:_HASH_BYTES], _WEIGHTS))


def _encode_all(ids: list[str], long: dict[bytes, str]) -> np.ndarray:
    """:func:`_encode` of every id, as a fixed-width bytes array (C-level for short ASCII
    ids); the text of each id stored as a stand-in goes into ``long``."""
    if "\x00" not in "".join(ids):
        try:
            arr = np.array(ids, dtype="S")  # ASCII: one byte per character, in C
        except UnicodeEncodeError:
            pass
        else:
            if arr.dtype.itemsize <= LONG_ID:
                return arr
    keys = [_encode(i) for i in ids]
    long.update((k, i) for k, i in zip(keys, ids, strict=True) if k[:1] == b"\xfe")
    return np.array(keys, dtype="S")


def _hash_all(arr: np.ndarray) -> np.ndarray:
    """:func:`_hash` of every encoded id of ``arr`` (zero padding adds nothing)."""
    width = min(arr.dtype.itemsize, _HASH_BYTES)
    if width == 0:
        return np.zeros(len(arr), dtype=np.int64)
    mat = arr.view(np.uint8).reshape(len(arr), arr.dtype.itemsize)[:, :width]
    return mat.astype(np.int64) @ _WEIGHTS_NP[:width]


def _n_parts(n: int) -> int:
    """Partitions of a frozen bucket of ``n`` entries: ~PART_SIZE each, a power of two."""
    return 1 << (max(1, -(-n // PART_SIZE)) - 1).bit_length()


#: The input partitions of a batch of entries (``np.uint16``), or ``None`` when any is unknown.
Parts = np.ndarray | None


def _by_part(
    arr: np.ndarray, keys: list[Any], ts: np.ndarray, parts: Parts, n_parts: int
) -> Iterator[tuple[int, np.ndarray, list[Any], np.ndarray, Parts]]:
    """The entries (encoded ids, keys, timestamps, input partitions) of each partition of the
    hash holding any (NumPy: no Python work per entry but the keys' reorder)."""
    part = _hash_all(arr) & (n_parts - 1)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n_parts + 1)).tolist()
    keys = [keys[i] for i in order.tolist()]
    arr, ts = arr[order], ts[order]
    parts = parts[order] if parts is not None else None
    for p, (a, b) in enumerate(itertools.pairwise(bounds)):
        if b > a:
            yield p, arr[a:b], keys[a:b], ts[a:b], parts[a:b] if parts is not None else None


def _no_parts(parts: Parts) -> Parts:
    """An empty partition column of the kind of ``parts`` (none where ``parts`` is none)."""
    return None if parts is None else np.empty(0, np.uint16)


def _open_parts(keys: dict[str, Any], parts: dict[str, int]) -> Parts:
    """The input partitions of an open segment's entries, in the order of ``keys``; ``None``
    unless ``parts`` knows every one (the two dicts hold the same ids then)."""
    if len(parts) != len(keys):
        return None
    return np.fromiter(map(parts.__getitem__, keys), np.uint16, len(keys))


class _Part:
    """One frozen partition: encoded ids sorted, with their keys, event times and input
    partitions (``parts``: ``None`` when not recorded) alike."""

    __slots__ = ("ids", "keys", "parts", "ts")

    def __init__(self, ids: np.ndarray, keys: list[Any], ts: np.ndarray, parts: Parts) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.ts = ts[order]
        self.keys = [keys[i] for i in order.tolist()]
        self.parts = parts[order] if parts is not None else None

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        # As pickled before ``parts`` existed when none are recorded: a release before this
        # one reads a state of a plan without provenance (a downgrade), not just the reverse.
        state = {"ids": self.ids, "keys": self.keys, "ts": self.ts}
        if self.parts is not None:
            state["parts"] = self.parts
        return None, state

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # (pickled as slots: one saved before ``parts`` existed has none)
        self.parts = None
        for name, value in state[1].items():
            setattr(self, name, value)

    def find(self, key: bytes) -> tuple[Any, float, int | None] | None:
        ids = self.ids  # (the last of equal ids: the newest, a stable sort kept their order)
        i = int(ids.searchsorted(key, side="right")) - 1
        if i >= 0 and ids[i] == key:
            parts = self.parts
            return self.keys[i], float(self.ts[i]), int(parts[i]) if parts is not None else None
        return None


class _Bucket:
    """The transactions of one event-time span: dicts while open, partitions once frozen.

    While open, ``open`` holds segments of three dicts (``tx_id -> keys``, ``tx_id -> ts``,
    filled together, and ``tx_id -> input partition`` for those remembered with one).
    ``known`` holds the tx_ids whose fraud label is currently counted
    (labels are rare); ``long`` the text of each id a frozen partition holds as a stand-in
    (:data:`LONG_ID`). While a freeze is in progress the open dicts stay intact and answer
    lookups; ``_work`` holds the partial result (never pickled: a restored bucket starts its
    freeze again).
    """

    __slots__ = ("_work", "known", "long", "open", "parts")

    def __init__(self) -> None:
        self.open: list[tuple[dict[str, Any], dict[str, float], dict[str, int]]] | None = [
            ({}, {}, {})
        ]
        self.parts: list[_Part] | None = None
        self.known: dict[str, int] = {}
        self.long: dict[bytes, str] = {}
        self._work: Any = None

    def __getstate__(self) -> tuple[Any, ...]:
        segs: Any = self.open  # (segments without partitions as saved before: see _Part)
        if segs is not None and not any(parts for _keys, _ts, parts in segs):
            segs = [(keys, ts) for keys, ts, _parts in segs]
        # (``long`` only when any: a state without long ids is read by a release before it)
        kept = (segs, self.parts, self.known)
        return (*kept, self.long) if self.long else kept

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.open, self.parts, self.known = state[:3]
        self.long = state[3] if len(state) > 3 else {}
        if self.open and len(self.open[0]) == 2:  # saved before partitions were recorded
            self.open = [(seg[0], seg[1], {}) for seg in self.open]
        if self.parts and any(
            p.ids.dtype.itemsize > LONG_ID and any(map(_whole_long, p.ids.tolist()))
            for p in self.parts
        ):  # saved before stand-ins: its long ids stored whole, partitioned by them
            ids, keys, ts, parts = _columns(self.parts)
            long = self.long
            texts = [long[b] if b[:1] == b"\xfe" else _decode(b) for b in ids.tolist()]
            self.parts = _frozen(_encode_all(texts, long), keys, ts, parts)
        self._work = None

    def __len__(self) -> int:
        if self.open is not None:
            return sum(len(keys) for keys, _ts, _parts in self.open)
        return sum(len(p.keys) for p in self.parts or ())

    def entries(self) -> Iterator[tuple[str, Any, float, int | None]]:
        """Every ``(tx_id, keys, ts, input partition or None)`` held, open or frozen."""
        if self.open is not None:
            for keys, ts, parts in self.open:
                for tx_id, k in keys.items():
                    yield tx_id, k, ts[tx_id], parts.get(tx_id)
            return
        for p in self.parts or ():
            pp = p.parts.tolist() if p.parts is not None else [None] * len(p.keys)
            long = self.long
            for b, k, t, q in zip(p.ids.tolist(), p.keys, p.ts.tolist(), pp, strict=True):
                yield long[b] if b[:1] == b"\xfe" else _decode(b), k, t, q

    def find(self, tx_id: str, key: bytes, h: int) -> tuple[Any, float, int | None] | None:
        if self.open is not None:  # (newest segment first: a repeated id is its newest)
            for keys, ts, in_part in reversed(self.open):
                k = keys.get(tx_id)
                if k is not None:
                    return k, ts[tx_id], in_part.get(tx_id)
            return None
        parts = self.parts
        assert parts is not None
        return parts[h & (len(parts) - 1)].find(key)

    def freeze_step(self) -> list[Any] | None:
        """Do one bounded step of the freeze (<= PART_SIZE entries); once frozen, return the
        open segments it replaced (freeing them all at once would cost ~5 ms at 220,000
        entries: the caller drops them one per step).

        First steps: split the next PART_SIZE entries by partition (encode, hash and order
        them with NumPy: no Python work per entry but two list reorders); then one step per
        partition: sort it. The input partitions are kept when every entry has one.
        """
        segs = self.open
        assert segs is not None
        if self._work is None:  # start: partitions (a power of two), iterators over entries
            pieces: list[Any] = [[] for _ in range(_n_parts(len(self)))]
            chain = itertools.chain.from_iterable
            known = all(len(parts) == len(keys) for keys, _ts, parts in segs)
            self._work = (
                chain(keys for keys, _ts, _parts in segs),
                chain(keys.values() for keys, _ts, _parts in segs),
                chain(ts.values() for _keys, ts, _parts in segs),
                chain(map(parts.__getitem__, keys) for keys, _ts, parts in segs) if known else None,
                pieces,
                [],
            )
        it_ids, it_keys, it_ts, it_parts, pieces, done = self._work
        ids = list(islice(it_ids, PART_SIZE))
        if ids:  # split the next entries into their partitions
            keys = list(islice(it_keys, PART_SIZE))
            ts = np.fromiter(islice(it_ts, PART_SIZE), np.float64, len(ids))
            parts = (
                np.fromiter(islice(it_parts, PART_SIZE), np.uint16, len(ids))
                if it_parts is not None
                else None
            )
            for p, *piece in _by_part(_encode_all(ids, self.long), keys, ts, parts, len(pieces)):
                pieces[p].append(piece)
            return None
        if len(done) < len(pieces):  # sort one partition
            got = pieces[len(done)]
            pieces[len(done)] = None
            done.append(
                _Part(
                    np.concatenate([g[0] for g in got]) if got else np.array([], dtype="S1"),
                    [k for g in got for k in g[1]],
                    np.concatenate([g[2] for g in got]) if got else np.array([]),
                    (np.concatenate([g[3] for g in got]) if got else np.empty(0, np.uint16))
                    if it_parts is not None
                    else None,
                )
            )
            if len(done) < len(pieces):
                return None
        self.parts = done
        self._work = None
        segs, self.open = self.open, None
        return segs


def _columns(parts: list[_Part]) -> tuple[np.ndarray, list[Any], np.ndarray, Parts]:
    """The entries of frozen partitions as four columns: encoded ids, keys, timestamps and
    input partitions (``None`` unless every partition has them)."""
    known = all(p.parts is not None for p in parts)
    return (
        np.concatenate([p.ids for p in parts]),
        [k for p in parts for k in p.keys],
        np.concatenate([p.ts for p in parts]),
        np.concatenate([p.parts for p in parts]) if known else None,
    )


def _frozen(ids: np.ndarray, keys: list[Any], ts: np.ndarray, parts: Parts) -> list[_Part]:
    """The partitions of one frozen bucket holding these entries (of one span)."""
    n_parts = _n_parts(len(keys))
    got = {p: _Part(i, k, t, q) for p, i, k, t, q in _by_part(ids, keys, ts, parts, n_parts)}
    empty = _Part(np.array([], dtype="S1"), [], np.array([]), _no_parts(parts))
    return [got.get(p, empty) for p in range(n_parts)]


def _sides(moving: np.ndarray, parts: Parts, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(moves, stays)`` of a batch of ``n`` entries by input partition (one of ``moving``, a
    sorted array); entries without one (a store of a plan without provenance, which never
    splits) stay."""
    if parts is None:
        return np.zeros(n, bool), np.ones(n, bool)
    m = _member(parts, moving)
    return m, ~m


def _member(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Which of ``values`` the sorted array ``ref`` holds."""
    if not len(ref):
        return np.zeros(len(values), bool)
    return ref[np.minimum(np.searchsorted(ref, values), len(ref) - 1)] == values


def _split_bucket(bk: _Bucket, moving: np.ndarray) -> tuple[_Bucket, _Bucket] | None:
    """The entries of ``bk`` that move and those that stay (:func:`_sides`), each in a bucket
    of its kind (open: segment by segment; frozen: partitioned anew) with the labels known of
    them; ``None`` when none moves."""
    moved, kept = _Bucket(), _Bucket()
    if bk.open is None:
        ids, keys, ts, parts = _columns(bk.parts or [])
        masks = _sides(moving, parts, len(keys))
        if not masks[0].any():
            return None
        for side, m in zip((moved, kept), masks, strict=True):
            side.open = None
            side_parts = parts[m] if parts is not None else None
            side.parts = _frozen(ids[m], list(compress(keys, m.tolist())), ts[m], side_parts)
    else:
        segs = bk.open
        cut = [_sides(moving, _open_parts(kd, pd), len(kd)) for kd, _td, pd in segs]
        if not any(mv.any() for mv, _st in cut):
            return None
        for j, side in enumerate((moved, kept)):
            side.open = []
            for (kd, td, pd), masks in zip(segs, cut, strict=True):
                m = masks[j].tolist()
                kd2 = dict(compress(kd.items(), m))
                pd2 = (
                    dict(zip(kd2, map(pd.__getitem__, kd2), strict=True))
                    if len(pd) == len(kd)
                    else {x: pd[x] for x in kd2 if x in pd}
                )
                side.open.append((kd2, dict(compress(td.items(), m)), pd2))
    for side in (moved, kept):
        side.known = {x: v for x, v in bk.known.items() if side.find(x, k := _encode(x), _hash(k))}
        if side.open is None:
            side.long = {k: x for k, x in bk.long.items() if side.find(x, k, _hash(k))}
    return moved, kept


class TxStore:
    """``tx_id -> (entity keys, event time, input partition)`` for ``label_ttl``, in buckets
    of ``span`` seconds.

    ``keys`` is whatever the plan attributes a label to (one entity value, or a tuple of them
    with several fraud groups); the input partition is recorded by :meth:`remember_part`
    (``None`` for a transaction remembered without one).
    """

    __slots__ = (
        "_countdown", "_cur", "_due", "_garbage", "_keys", "_known", "_parts", "_ts", "buckets",
        "span",
    )  # fmt: skip

    def __init__(self, span: float) -> None:
        self.span = span
        self.buckets: dict[int, _Bucket] = {}
        # index of the bucket last written (None: none; it was -1, the index of the bucket
        # of the times in [-span, 0): their transactions went into dicts of no bucket, and
        # their labels were unmatched), its three dicts and its labels known (cached)
        self._cur: int | None = None
        self._keys: dict[str, Any] = {}
        self._ts: dict[str, float] = {}
        self._parts: dict[str, int] = {}
        self._known: dict[str, int] = {}
        self._due: list[int] = []  # buckets to freeze, oldest first
        self._garbage: list[Any] = []  # open segments of frozen buckets, dropped one per step
        self._countdown = _STEP_EVERY  # remembered transactions until the next freeze step

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets.values())

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.span, self.buckets, self._due)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.span, self.buckets, self._due = state
        self._uncache()
        self._garbage = []
        self._countdown = _STEP_EVERY

    def _uncache(self) -> None:
        """Forget the bucket last written (its dicts were replaced or frozen)."""
        self._cur, self._keys, self._ts, self._parts, self._known = None, {}, {}, {}, {}

    def remember(self, tx_id: str, t: float, keys: Any) -> None:
        """Record an accepted transaction (``t`` must be at or after the last freeze horizon).
        A ``tx_id`` remembered before is the new transaction's from then on (:meth:`find`
        answers the newest), with no label known of it."""
        # (a whole float against the int: the same test as int(t // span) != _cur, no call)
        if t // self.span != self._cur:
            self._enter(t)
        if tx_id.__class__ is not str:  # (an int id failed the bucket's freeze: as the
            tx_id = id_text(tx_id)  # schema reads it, the text of the number, a QA pass)
        if self._known:  # (labels are rare: a repeated id's label was the old one's, a QA)
            self._known.pop(tx_id, None)
        self._keys[tx_id] = keys
        self._ts[tx_id] = t
        self._countdown -= 1
        if not self._countdown:
            self._tick()

    def remember_part(self, tx_id: str, t: float, keys: Any, part: int) -> None:
        """:meth:`remember`, with the transaction's input partition (0 to 65535)."""
        if t // self.span != self._cur:
            self._enter(t)
        if tx_id.__class__ is not str:
            tx_id = id_text(tx_id)
        if self._known:
            self._known.pop(tx_id, None)
        self._keys[tx_id] = keys
        self._ts[tx_id] = t
        self._parts[tx_id] = part
        self._countdown -= 1
        if not self._countdown:
            self._tick()

    def _enter(self, t: float) -> None:
        """Make the last segment of the bucket of ``t`` the one written (created if new)."""
        b = int(t // self.span)
        bk = self.buckets.get(b)
        if bk is None:
            newest = next(reversed(self.buckets), None)
            bk = self.buckets[b] = _Bucket()
            if newest is not None and b < newest:  # (the first events out of order: find
                # goes newest bucket first, and took creation order for it, a review)
                self.buckets = dict(sorted(self.buckets.items()))
        assert bk.open is not None  # frozen: out of reach
        self._cur, (self._keys, self._ts, self._parts) = b, bk.open[-1]
        self._known = bk.known

    def _tick(self) -> None:
        """Every _STEP_EVERY transactions: a new segment if the current one is full, and a
        step of the freezes due."""
        self._countdown = _STEP_EVERY
        if len(self._keys) >= _SEGMENT and self._cur is not None:  # a new segment of the
            segs = self.buckets[self._cur].open  # current bucket
            assert segs is not None
            segs.append(({}, {}, {}))
            self._keys, self._ts, self._parts = segs[-1]
        if self._due or self._garbage:
            self._step()

    def _step(self) -> None:
        """One bounded step: drop one replaced segment, or a freeze step on the oldest bucket
        due (dropped ones are skipped)."""
        if self._garbage:
            self._garbage.pop()
            return
        while self._due:
            bk = self.buckets.get(self._due[0])
            if bk is None or bk.open is None:
                del self._due[0]
                continue
            segs = bk.freeze_step()
            if segs is not None:
                del self._due[0]
                self._garbage = segs
            return

    def flush(self) -> None:
        """Finish every pending freeze now (tests, and before measuring memory)."""
        while self._due or self._garbage:
            self._step()

    def find(self, tx_id: str) -> tuple[_Bucket, Any, float, int | None] | None:
        """``(bucket, keys, ts, input partition)`` of ``tx_id`` (not text: its text, as
        remembered), newest bucket first (the partition ``None`` when not recorded); ``None``
        if unknown."""
        if tx_id.__class__ is not str:
            tx_id = id_text(tx_id)
        key = _encode(tx_id)
        h = _hash(key)
        for bk in reversed(self.buckets.values()):
            rec = bk.find(tx_id, key, h)
            if rec is not None:
                return bk, *rec
        return None

    def absorb(self, other: TxStore) -> None:
        """Add the transactions (and known labels) of ``other``, a store of the same span. A
        bucket both hold frozen is frozen with the entries of both (with their input
        partitions if both have them); one that either holds open is reopened with them (the
        next :meth:`expire` freezes it again if it is due)."""
        if other.span != self.span:
            raise ValueError(f"spans differ: {other.span} and {self.span}")
        for b, theirs in other.buckets.items():
            mine = self.buckets.get(b)
            if mine is None:
                self.buckets[b] = theirs
                continue
            both = _Bucket()
            both.known = {**mine.known, **theirs.known}
            if mine.open is None and theirs.open is None:  # frozen both: frozen together
                both.open = None
                both.long = {**mine.long, **theirs.long}
                both.parts = _frozen(*_columns([*(mine.parts or ()), *(theirs.parts or ())]))
            else:  # (a bucket still open is recent: small)
                keys, ts, parts = both.open[0]  # type: ignore[index]
                for bk in (mine, theirs):
                    for tx_id, k, t, q in bk.entries():
                        keys[tx_id] = k
                        ts[tx_id] = t
                        if q is None:
                            parts.pop(tx_id, None)
                        else:
                            parts[tx_id] = q
            self.buckets[b] = both
        self.buckets = dict(sorted(self.buckets.items()))  # oldest first, as find expects
        self._due = []  # (made again by the next expire: reopened buckets included)
        self._uncache()

    def split(self, parts: Collection[int]) -> TxStore:
        """Move the transactions of the input partitions ``parts`` into a new store of the
        same span, returned, with the labels known of them; one remembered without its
        partition (:meth:`remember`) stays. A bucket keeps its kind: a frozen one is
        partitioned anew on each side (NumPy masks: no Python work per entry but the keys'
        filter), an open one is filtered segment by segment (a freeze in progress starts
        again); a bucket left empty is dropped. The new store freezes its open buckets once
        its :meth:`expire` finds them due."""
        moving = np.unique(np.fromiter(parts, np.int64))
        new = TxStore(self.span)
        for b, bk in list(self.buckets.items()):
            sides = _split_bucket(bk, moving)
            if sides is None:
                continue
            for store, side in zip((new, self), sides, strict=True):
                if len(side):
                    store.buckets[b] = side
                else:
                    store.buckets.pop(b, None)
        self._uncache()  # (its dicts were replaced)
        return new

    def expire(self, *, freeze_before: float, drop_before: float) -> None:
        """Drop buckets that end at or before ``drop_before``; queue the open ones that end at
        or before ``freeze_before`` (no accepted event can land in them any more) for freezing.
        """
        # Bucket indices, as remember() finds them (``t // span``), not the bucket's end:
        # ``(b + 1) * span`` rounded below a time whose bucket is ``b`` when ``span`` is not a
        # binary fraction (a ttl of 1.1d), so an event accepted at ``freeze_before`` was sent
        # into a bucket queued (its entries lost at the freeze) or frozen (an assertion): a
        # QA pass.
        drop, freeze = drop_before // self.span, freeze_before // self.span
        for b in [b for b in self.buckets if b < drop]:
            del self.buckets[b]
        due = set(self._due)
        for b, bk in self.buckets.items():
            if bk.open is not None and b < freeze and b not in due:
                self._due.append(b)
        self._due.sort()
        if self._cur in self._due:
            self._uncache()
