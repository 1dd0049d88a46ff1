"""The trainer: learns from delayed labels joined with the snapshot taken at decision time.

Flow for each decided transaction: ``on_decision`` stores its model input (the vector built by
:func:`fds.models.vector.to_vector` from the decision-time feature snapshot) keyed by
``tx_id``. When a label arrives, ``on_label`` takes that stored vector out of the store (so a
label is learned at most once) and learns it -- every fraud, and legitimate ones sampled at
``learn.legit_sample_rate`` by hashing ``tx_id`` (deterministic). A transaction still
unlabelled ``learn.assume_legit_after`` after its event time counts as legitimate (sampled the
same way). Time is the events' own time (transaction ``ts``, label ``ts``), never the wall
clock, so a replay is deterministic. ``maybe_publish(now)`` publishes a new version per the
spec's ``publish`` policy. An ADWIN detector on the model's prequential error reports drift.

>>> from fds.models.spec import load_spec
>>> t = Trainer(load_spec("default"))
>>> t.on_decision({"tx_id": "a", "ts": 0.0, "amount": 10.0}, {"features": {"n": 1}})
>>> t.on_label({"tx_id": "a", "ts": 3600.0, "is_fraud": True}), t.stats["frauds_learned"]
(True, 1)
>>> t.on_label({"tx_id": "a", "ts": 3601.0, "is_fraud": True})  # learned once only
False
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import pickle
import sqlite3
import stat
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from fds.errors import ArtifactError, ConfigError, describe
from fds.models.registry import (
    CANARY_SIZE,
    Registry,
    canary,
    learned,
    make_entry,
    owner_only,
    refused_as_untrusted,
    rolled_back_entry,
    rolled_back_in,
    untrusted,
)
from fds.models.spec import ModelSpec, build_pipeline
from fds.models.vector import strip_rule_ids, to_vector
from fds.timeutil import parse_ts, span

__all__ = ["MemoryStore", "Publication", "SnapshotStore", "SqliteStore", "Trainer", "keep_legit"]

log = logging.getLogger("fds.models")

# Expiry scans run at most this often (event time): TTL precision of an hour is plenty.
_EXPIRE_EVERY = 3600.0
MAX_LINE = 1000  # versions of its own line an in-memory trainer recalls (a rollback's reach)
_HASH_SPACE = float(2**32)  # crc32 range: tx_id hashes map uniformly to [0, 1)


def keep_legit(tx_id: str, rate: float) -> bool:
    """Deterministic sampling of legitimate examples: the same tx_id is always kept or not.

    >>> keep_legit("t1", 1.0), sum(keep_legit(f"t{i}", 0.1) for i in range(10000)) // 100
    (True, 10)
    """
    return rate >= 1.0 or zlib.crc32(tx_id.encode()) / _HASH_SPACE < rate


class SnapshotStore(Protocol):
    """Decision-time model inputs keyed by tx_id, oldest first.

    An entry is *pending* until its label arrives or it is ``assume_legit_after`` old; then it
    is *assumed* legitimate but kept until the TTL, so that a late fraud label (a chargeback
    weeks later) still finds its own input. Once a label is learned from it, it is *settled*:
    its input is dropped and its id kept until the TTL, so that a redelivered decision (at
    least once) cannot bring it back.
    """

    def put(self, tx_id: str, ts: float, x: dict[str, float]) -> None:
        """Store a decision's input; one pending already is replaced (a repeated ``tx_id``'s
        label is its newest transaction's, as the features take it: the first one's input
        was learned, a QA pass; a redelivered decision is the same), one assumed legitimate,
        labelled or settled is left as it is."""
        ...

    def get(self, tx_id: str) -> tuple[float, dict[str, float], bool] | None:
        """``(ts, x, assumed)`` of a pending or assumed entry; ``None`` otherwise."""
        ...

    def settle(self, tx_id: str, y: bool) -> None:
        """Label ``y`` was learned from it. A fraud: drop its input, keep its id (and ``y``)
        until the TTL. Legitimate: it is assumed legitimate from now on, its input kept until
        the TTL (a chargeback after a legit label, "the customer said it was them", must still
        find it: it was unjoined for good, a QA pass)."""
        ...

    def settled(self, tx_id: str) -> bool | None:
        """The label learned from it while its id is kept; ``None``: none (or not known)."""
        ...

    def assume_older(self, cutoff: float) -> Iterator[tuple[str, float, dict[str, float]]]:
        """Mark pending entries older than ``cutoff`` assumed; yield them."""
        ...

    def expire(self, cutoff: float) -> int:
        """Drop entries older than ``cutoff`` (the TTL); return how many."""
        ...

    def __len__(self) -> int: ...

    def flush(self) -> None: ...


class MemoryStore:
    """In-memory store (replay, tests). Insertion order approximates event-time order.

    Inputs are kept compactly as a shared key tuple plus a value tuple (a replay holds a
    month or two of transactions).
    """

    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, tuple[str, ...], tuple[float, ...]]] = {}
        self._assumed: dict[str, tuple[float, tuple[str, ...], tuple[float, ...]]] = {}
        self._settled: dict[str, tuple[float, bool]] = {}  # tx_id -> (ts, label learned)
        # the keys and entries of _pending and _assumed in the order they came (_pop_older)
        self._pending_order: collections.deque[tuple[str, Any]] = collections.deque()
        self._assumed_order: collections.deque[tuple[str, Any]] = collections.deque()
        # labelled legitimate, kept for a chargeback: apart, in label order (which follows
        # event time closely), so that their recent times do not hold back the expiry of the
        # assumed ones queued after them (a review)
        self._legit: dict[str, tuple[float, tuple[str, ...], tuple[float, ...]]] = {}
        self._legit_order: collections.deque[tuple[str, Any]] = collections.deque()
        self._keys: tuple[str, ...] = ()

    def put(self, tx_id: str, ts: float, x: dict[str, float]) -> None:
        if tx_id in self._assumed or tx_id in self._legit or tx_id in self._settled:
            return
        keys = tuple(x)
        if keys == self._keys:
            keys = self._keys
        else:
            self._keys = keys
        e = self._pending[tx_id] = (ts, keys, tuple(x.values()))
        self._pending_order.append((tx_id, e))

    def get(self, tx_id: str) -> tuple[float, dict[str, float], bool] | None:
        e = self._pending.get(tx_id)
        assumed = e is None
        if e is None:
            e = self._assumed.get(tx_id) or self._legit.get(tx_id)
            if e is None:
                return None
        return e[0], dict(zip(e[1], e[2], strict=True)), assumed

    def settle(self, tx_id: str, y: bool) -> None:
        if not y:
            e = self._pending.pop(tx_id, None)
            if e is not None:
                self._legit[tx_id] = e
                self._legit_order.append((tx_id, e))
            return
        e = (
            self._pending.pop(tx_id, None) or self._assumed.pop(tx_id, None)
            or self._legit.pop(tx_id, None)
        )  # fmt: skip
        if e is not None:
            self._settled[tx_id] = (e[0], y)

    def settled(self, tx_id: str) -> bool | None:
        got = self._settled.get(tx_id)
        return None if got is None else got[1]

    def assume_older(self, cutoff: float) -> Iterator[tuple[str, float, dict[str, float]]]:
        moved = _pop_older(self._pending, self._pending_order, cutoff)
        self._assumed.update(moved)
        self._assumed_order.extend(moved)
        for k, e in moved:
            yield k, e[0], dict(zip(e[1], e[2], strict=True))

    def expire(self, cutoff: float) -> int:
        n = len(_pop_older(self._assumed, self._assumed_order, cutoff))
        n += len(_pop_older(self._legit, self._legit_order, cutoff))
        if self._settled:  # settled in label order, not event-time order: filter them all
            self._settled = {k: v for k, v in self._settled.items() if v[0] >= cutoff}
        return n

    def __len__(self) -> int:
        return len(self._pending) + len(self._assumed) + len(self._legit)

    def flush(self) -> None:
        return None


#: Bytes of write-ahead log above which a flush checkpoints it and truncates it.
WAL_LIMIT = 16 * 2**20


def canonical_pickle(model: Any) -> bytes:
    """``model`` pickled as any model equal to it is: pickled, read back and pickled again, so
    that how its strings are shared (a model restored from a checkpoint holds its own copies
    where a fresh one shares them) does not change the bytes (a trainer restarted from its
    checkpoint published the same model under another sha256: a QA pass)."""
    once = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(pickle.loads(once), protocol=pickle.HIGHEST_PROTOCOL)


def _pop_older(
    d: dict[str, Any], order: collections.deque[tuple[str, Any]], cutoff: float
) -> list[tuple[str, Any]]:
    """Remove from ``d`` the entries older than ``cutoff``, oldest first, found through
    ``order`` (its keys and entries in insertion order; an entry no longer in ``d`` is skipped:
    a key settled and put again later must not hold the older ones back), and return them.

    Iterating the dict from its front instead walked again the slots of the entries removed
    before (a dict keeps them until it is resized): one ``next(iter(d))`` at a time was
    quadratic in one call (4 days of event time without a label released 300,000 at once: a
    47 s stall in a replay, a QA pass) and cost every later call ~78 us at 300,000 held."""
    out: list[tuple[str, Any]] = []
    while order:
        k, e = order[0]
        ts = e[0]
        if d.get(k) is e:  # (else: gone, or put again since: its own place comes later)
            if ts >= cutoff:
                break
            del d[k]
            out.append((k, e))
        order.popleft()
    return out


class SqliteStore:
    """Persistent store for the trainer service (survives restarts). Commits on ``flush``."""

    def __init__(self, path: str | Path) -> None:
        # Its checkpoint row is unpickled at start: the database and what SQLite reads beside
        # it (-wal, -shm, and a hot -journal, played back into the database whoever owns it)
        # are this user's files only, no links (planted ones ran their code: security passes),
        # in a folder not every user may write (there a file could be swapped in, or a hot
        # journal made, between these checks and SQLite's open: a review)
        folder = Path(path).parent
        with contextlib.suppress(FileNotFoundError):
            if (mode := os.stat(folder).st_mode) & 0o002:
                raise ConfigError(
                    f"not opened: the folder is writable by every user (mode "
                    f"{stat.S_IMODE(mode):04o}), so another user could put a database or "
                    "journal of theirs there, which this store would load as code; give the "
                    "trainer a state folder of its own (chmod 700)",
                    where=str(folder),
                )
        for side in (Path(path), *(Path(f"{path}-{x}") for x in ("wal", "shm", "journal"))):
            try:
                st = os.lstat(side)
            except FileNotFoundError:
                continue
            why = "a link" if stat.S_ISLNK(st.st_mode) else untrusted(st)
            if why is not None:
                raise refused_as_untrusted(side, why)
        # owner-only, as the checkpoints and the registry are (0644 showed every kept input and
        # the trainer's checkpoint to the machine's users: a security review); SQLite gives its
        # -wal and -shm files the database's mode
        os.close(owner_only(Path(path)))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._wal = Path(f"{path}-wal")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS snaps "
            "(tx_id TEXT PRIMARY KEY, ts REAL, assumed INTEGER DEFAULT 0, x BLOB)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS snaps_ts ON snaps (assumed, ts)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB)")
        self._db.execute("BEGIN")

    # ``assumed``: 0 pending, 1 assumed legitimate, 2 settled (input dropped, id kept; ``x``
    # then holds the label learned, b"1" or b"0": NULL in a store of an earlier release)
    def put(self, tx_id: str, ts: float, x: dict[str, float]) -> None:
        self._db.execute(  # (a pending one replaced: see Store.put)
            "INSERT INTO snaps VALUES (?, ?, 0, ?) ON CONFLICT (tx_id) DO UPDATE SET "
            "ts = excluded.ts, x = excluded.x WHERE assumed = 0",
            (tx_id, ts, orjson.dumps(x)),
        )

    def get(self, tx_id: str) -> tuple[float, dict[str, float], bool] | None:
        row = self._db.execute(
            "SELECT ts, x, assumed FROM snaps WHERE tx_id = ? AND assumed < 2", (tx_id,)
        ).fetchone()
        if row is None:
            return None
        return row[0], orjson.loads(row[1]), bool(row[2])

    def settle(self, tx_id: str, y: bool) -> None:
        if not y:
            sql = "UPDATE snaps SET assumed = 1 WHERE tx_id = ? AND assumed = 0"
            self._db.execute(sql, (tx_id,))
            return
        self._db.execute("UPDATE snaps SET assumed = 2, x = ? WHERE tx_id = ?", (b"1", tx_id))

    def settled(self, tx_id: str) -> bool | None:
        sql = "SELECT x FROM snaps WHERE tx_id = ? AND assumed = 2"
        row = self._db.execute(sql, (tx_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0]) == b"1"

    def assume_older(self, cutoff: float) -> Iterator[tuple[str, float, dict[str, float]]]:
        rows = self._db.execute(
            "SELECT tx_id, ts, x FROM snaps WHERE assumed = 0 AND ts < ? ORDER BY ts, tx_id",
            (cutoff,),
        ).fetchall()
        if rows:
            self._db.execute("UPDATE snaps SET assumed = 1 WHERE assumed = 0 AND ts < ?", (cutoff,))
        for tx_id, ts, x in rows:
            yield tx_id, ts, orjson.loads(x)

    # Every ``assumed`` value named: so the (assumed, ts) index serves the range (``ts < ?``
    # alone scanned the whole table, 93% of a soak run's trainer time, its lag growing)
    EXPIRE = "DELETE FROM snaps WHERE assumed IN (0, 1, 2) AND ts < ?"

    def expire(self, cutoff: float) -> int:
        return self._db.execute(self.EXPIRE, (cutoff,)).rowcount

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM snaps WHERE assumed < 2").fetchone()[0])

    def flush(self) -> None:
        self._db.execute("COMMIT")
        with contextlib.suppress(OSError):
            # SQLite reuses its write-ahead log but never shrinks it: one large batch left 243
            # MB of it beside the database for good (a soak run)
            if self._wal.stat().st_size > WAL_LIMIT:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("BEGIN")

    def rollback(self) -> None:
        """Undo everything since the last :meth:`flush`. A failed write may have ended the
        transaction already (SQLite rolls it back on a full disk): ROLLBACK then raised
        "no transaction is active" over the real error (a QA pass)."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._db.execute("BEGIN")

    def put_checkpoint(self, data: bytes) -> None:
        """Keep the owner's checkpoint in the store: it commits with the snapshots at the
        next :meth:`flush`, so the two never disagree after a crash."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('checkpoint', ?)", (data,))

    def checkpoint(self) -> bytes | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'checkpoint'").fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self.flush()
        self._db.close()


@dataclass(frozen=True)
class Publication:
    """A published version: its manifest entry and the artifact bytes (verified on load)."""

    version: str
    data: bytes
    entry: dict[str, Any]


def event_time(v: Any) -> float:
    """A ``ts`` as epoch seconds (a number as it is, text as ISO 8601)."""
    return float(v) if isinstance(v, int | float) else parse_ts(v)


class Trainer:
    """Online learner on delayed labels (see the module docstring).

    Parameters
    ----------
    spec
        The model spec (pipeline, ``learn`` and ``publish`` policies).
    store
        Where decision-time inputs wait for their label (default: in memory).
    registry
        Publish versions there; ``None`` keeps publications in memory (replay, tests).
    model, parent
        Resume from a model (e.g. the registry's latest) and its version.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        store: SnapshotStore | None = None,
        registry: Registry | None = None,
        model: Any = None,
        parent: str | None = None,
    ) -> None:
        from river import drift

        self.spec = spec
        self.store: SnapshotStore = store if store is not None else MemoryStore()
        self.registry = registry
        self.model = model if model is not None else build_pipeline(spec)
        self.parent = parent
        self._rate = spec.learn.legit_sample_rate
        self._legit_after = spec.learn.assume_legit_after
        # (a spec file with a shorter ttl is refused: this is for a spec built in code)
        self._ttl = max(spec.learn.ttl or 0.0, self._legit_after)
        self._last_expire = -math.inf
        self._adwin = drift.ADWIN()
        self._seq = 0
        # in memory (a replay): the versions published since it last went on from another
        # model, oldest first (what a rollback of one of them drops: line_from)
        self._line: collections.deque[str] = collections.deque(maxlen=MAX_LINE)
        self._since_publish = 0
        self._last_publish: float | None = None
        self._one_class_said = False
        # the classes the model in hand has learned (a version it went on from: both, as it
        # was published or served; a fresh pipeline: none)
        self._classes: set[bool] = set() if model is None else {True, False}
        self.now = -math.inf
        self.labels_to = math.inf  # every label before it read (:meth:`labels_read_to`)
        self.stats: dict[str, int] = {
            "labels_seen": 0,
            "labels_learned": 0,
            "frauds_learned": 0,
            "legit_learned": 0,
            "assumed_legit": 0,
            "labels_unjoined": 0,
            "labels_repeated": 0,  # adding nothing: learned from already, or legit again
            "late_frauds": 0,
            "drifts": 0,
            "published": 0,
            "learn_errors": 0,
        }
        self.stats["broken"] = 0  # versions not published: the model scored no probability
        self.last_learn_error: str | None = None
        # the inputs learned last, which a version must score as the scorers' canary does,
        # and the last good model (pickled; None: the spec's fresh pipeline) to go back to
        self._recent: collections.deque[dict[str, float]] = collections.deque(maxlen=CANARY_SIZE)
        self._good: bytes | None = pickle.dumps(model) if model is not None else None
        self.on_drift: Any = None  # optional callback(now) for metrics/logs
        # optional callback(x, y) seeing each joined label before it is learned (contests)
        self.on_example: Any = None

    # -- inputs ----------------------------------------------------------------------------
    def on_decision(
        self,
        tx: Mapping[str, Any],
        decision: Mapping[str, Any] | None = None,
        *,
        x: dict[str, float] | None = None,
    ) -> None:
        """Keep the model input of a decided transaction until its label (or expiry).

        ``tx`` needs ``tx_id``, ``ts`` and ``amount``; the snapshot is ``decision["features"]``
        (or ``tx["features"]`` for a decision record that carries the transaction fields).
        ``x`` passes an already built vector (the scorer's) so it is not built twice.
        """
        if x is None:
            feats = (decision or tx).get("features") or {}
            x = to_vector(tx, feats)
            if not self.spec.inputs.per_rule:  # written by an engine serving per-rule inputs
                x = strip_rule_ids(x)
        ts = event_time(tx["ts"])
        if ts < self.now - self._ttl:  # (redelivered after its TTL, its settled id gone: it
            return  # was assumed legitimate and learned again, a review; no label joins it)
        self.store.put(tx["tx_id"], ts, x)
        self.advance(ts)

    def on_label(self, label: Mapping[str, Any], *, join: bool = True) -> bool:
        """Learn one label; ``True`` if it was joined and learned (or sampled out). With
        ``join=False`` it is counted as unjoined whatever the store holds (fds train: a label
        dated more than a day before the transaction it names)."""
        self.stats["labels_seen"] += 1
        self.advance(event_time(label["ts"]))
        got = self.store.get(label["tx_id"]) if join else None
        y = bool(label["is_fraud"])
        if got is None:  # the same label again (a producer's retry, counted unjoined: its alert
            # fired, a QA pass) is repeated; a legit one after a fraud finds no input to learn
            # from, unjoined as before (a review)
            repeated = self.store.settled(label["tx_id"]) is y
            self.stats["labels_repeated" if repeated else "labels_unjoined"] += 1
            return False
        _, x, assumed = got
        if assumed:
            # Already counted as legitimate (assumed, or labelled so); only a fraud label
            # changes anything (a late chargeback, which a legit label before it must not keep
            # from joining). Its legit sample, if any, is outweighed by learning the fraud now.
            if not y:
                self.stats["labels_repeated"] += 1
                return False
            self.stats["late_frauds"] += 1
        self.store.settle(label["tx_id"], y)
        if self.on_example is not None:
            self.on_example(x, y)
        if y or keep_legit(label["tx_id"], self._rate):
            self._learn(x, y)
        return True

    def advance(self, now: float) -> None:
        """Move event time to ``now``: unlabelled inputs older than the horizon are legit."""
        if now <= self.now:
            return
        self.now = now
        self._assume()
        if now - self._last_expire >= _EXPIRE_EVERY:
            self._last_expire = now
            # (not past what the labels read let be assumed: inputs waiting for their labels
            # in a catch-up were deleted unlearned, a review)
            # (nor past what the decisions read let be assumed: one partition far behind
            # the others held the assumptions back, and their inputs were expired unlearned)
            read = min(now, self.labels_to, self.decisions_to + self._legit_after)
            self.store.expire(read - self._ttl)

    def labels_read_to(self, t: float) -> None:
        """Every label before event time ``t`` has been read (``inf``: every label there is;
        fds train sets it from the labels topic): an input is assumed legitimate only once
        ``assume_legit_after`` has passed both in event time and in the labels read. A
        trainer catching up read its decisions days ahead of its labels and took 114 frauds
        labelled within 4 days for legitimate first (a QA pass)."""
        if t != self.labels_to:
            self.labels_to = t
            self._assume()

    #: Every decision before this event time has been read (fds train: the least of its
    #: decisions partitions'; ``inf``: a replay, which reads one stream in order).
    decisions_to = math.inf

    def decisions_read_to(self, t: float) -> None:
        """Every decision before event time ``t`` has been read: an input is assumed
        legitimate only once the other inputs before it are read, so the inputs assumed, and
        their order (time, then tx_id), do not depend on the polls that read the decisions
        partitions (two trainers of one stream ended on different models once a catch-up
        assumed inputs: a lagging partition's older inputs came after newer ones, a QA pass)."""
        if t != self.decisions_to:
            self.decisions_to = t
            self._assume()

    def _assume(self) -> None:
        # (the inputs before decisions_to are all read: the bound is on their time)
        cutoff = min(min(self.now, self.labels_to) - self._legit_after, self.decisions_to)
        for tx_id, _, x in self.store.assume_older(cutoff):
            if keep_legit(tx_id, self._rate):
                self.stats["assumed_legit"] += 1
                self._learn(x, False)

    def _learn(self, x: dict[str, float], y: bool) -> None:
        try:
            p = self.model.predict_proba_one(x).get(True, 0.0)
            self.model.learn_one(x, y)
        except Exception as e:  # the estimator's own failure (River's SGTClassifier divides
            self._learn_failed(e)  # by zero on some streams): the stream goes on, told. (The
            return  # steps before the one that raised, a scaler say, have taken the example.)
        self._adwin.update(float((p >= 0.5) != y))
        if self._adwin.drift_detected:
            self.stats["drifts"] += 1
            if self.on_drift is not None:
                self.on_drift(self.now)
        self.stats["labels_learned"] += 1
        self.stats["frauds_learned" if y else "legit_learned"] += 1
        self._classes.add(y)
        self._since_publish += 1
        self._recent.append(x)

    def _learn_failed(self, e: Exception) -> None:
        """An example the model raised on is not learned: counted, logged the first time and
        every 1,000th (it stopped a replay with a traceback halfway, a QA pass)."""
        n = self.stats["learn_errors"] = self.stats["learn_errors"] + 1
        self.last_learn_error = describe(e)
        if n == 1 or n % 1000 == 0:
            step = self.spec.steps[-1][0] if self.spec.steps else "?"
            log.error(
                'model spec="%s" estimator="%s" raised while learning, example not learned '
                '(%d so far): %s',
                self.spec.name, step, n, self.last_learn_error,
            )  # fmt: skip

    # -- publishing ------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        """Whether the ``publish`` policy asks for a new version at event time ``now``: never
        before the model has learned both classes (one that learned only frauds scored every
        payment ~1.0, and a spec without ``gate:`` declined them: a QA pass; the first
        legitimate examples come ``assume_legit_after`` after the first decisions)."""
        if self._since_publish == 0:
            return False
        if len(self._classes) < 2:  # (the model's own, not the lineage's counts: a review)
            if not self._one_class_said:
                self._one_class_said = True
                frauds = True in self._classes
                log.info(
                    'model spec="%s": no version published until it has learned frauds and '
                    "legitimate payments (it has learned %s only): a model of one class scores "
                    "every payment as that class%s",
                    self.spec.name, "frauds" if frauds else "legitimate ones",
                    # (a replay of 3 days with a yes/no label column blamed the data: its "no"
                    # values are no labels, and 4 days never passed, a QA pass)
                    f"; a transaction is learned as legitimate from a legitimate label or, "
                    f"without one, assume_legit_after ({span(self._legit_after)}) after it (a "
                    f"label column's legitimate values are no labels)" if frauds else "",
                )  # fmt: skip
            return False
        if self._since_publish >= self.spec.publish.every_labels:
            return True
        if self._last_publish is None:
            self._last_publish = now
        return now - self._last_publish >= self.spec.publish.every_seconds

    def maybe_publish(self, now: float | None = None) -> Publication | None:
        """Publish when due (see :meth:`due`); returns the publication or ``None``."""
        now = self.now if now is None else now
        return self.publish(now) if self.due(now) else None

    def count_from(self, entry: Mapping[str, Any]) -> None:
        """Count on from what the version of registry ``entry`` had learned, when learning goes
        on from it: the scorers read these counts (the warm-up, the maturity gate's count),
        and a trainer resumed from the registry published its next version with 400 labels
        learned of 2,551, putting the champion back in warm-up (a QA pass)."""
        labels, frauds = self.stats["labels_learned"], self.stats["frauds_learned"] = learned(entry)
        self.stats["legit_learned"] = labels - frauds  # (kept: the three disagreed, a QA pass)

    def follow_rollback(self) -> str | None:
        """If the registry rolled back the version this trainer last published (``fds models
        rollback``, or a scorer's lost probation: rejected after it had been champion), go on
        learning from the champion's model instead: otherwise the next version would carry back
        what was rolled back (a version published from the rejected one, replacing the champion
        while the scorer still takes versions directly, undid a manual rollback in seconds).
        Returns the champion learning goes on from, or None. The learning since that champion
        is dropped with the rejected line; nothing is published until the policy is due
        again."""
        reg, parent = self.registry, self.parent
        if reg is None or parent is None:
            return None
        m = reg.manifest()
        champ = m.get("champion")
        # rolled back: rejected after it had been champion, this version or one it learned on
        # from (a challenger that lost its shadow contest was never champion: the line goes
        # on, its next version faces a new contest)
        back = rolled_back_in(m, parent)
        if back is None or champ in (None, parent):
            return None
        entry = rolled_back_entry(m, back)  # (one retention removed: a KeyError, a review)
        try:
            model = reg.load(champ)
        except Exception as e:  # this machine's key or files: go on as before, say so
            log.warning(
                'version "%s" was rolled back, but the champion "%s" cannot be loaded here '
                "(%s): learning goes on from the rolled-back line", parent, champ, e,
            )  # fmt: skip
            return None
        self.go_on_from(champ, model, m["versions"][champ])
        log.warning(
            'version "%s" was rejected (%s): learning goes on from the champion "%s"',
            back, entry.get("rejected_because") or "", champ,
        )  # fmt: skip
        return champ

    def line_from(self, version: str) -> list[str]:
        """In memory (a replay): ``version`` and the versions published on from it, when the
        model learning now learned on from it (else none): what its rollback drops."""
        line = self._line
        return list(line)[line.index(version) :] if version in line else []

    def go_on_from(self, version: str, model: Any, entry: Mapping[str, Any]) -> None:
        """Learn on from ``version`` (its ``model`` and ``entry``) instead: the learning since
        it is dropped, and nothing is published until the policy is due again."""
        self.model, self.parent = model, version
        self._classes = {True, False}  # (a version published: judged so then)
        self._good = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        self.count_from(entry)
        self._line.clear()
        self._since_publish = 0
        self._last_publish = self.now if math.isfinite(self.now) else None

    def publish(self, now: float | None = None, evaluation: dict[str, Any] | None = None):
        """Snapshot the model now as a new version (registry or in memory)."""
        now = self.now if now is None else now
        if self._broken(now):
            return None
        data = canonical_pickle(self.model)
        meta: dict[str, Any] = {
            "spec": self.spec.to_dict(),
            "parent": self.parent,
            "labels_learned": self.stats["labels_learned"],
            "evaluation": {
                **(evaluation or {}),
                "drifts": self.stats["drifts"],
                "frauds_learned": self.stats["frauds_learned"],
            },
            "event_time": now if math.isfinite(now) else None,
        }
        if self.registry is not None:
            entry = self.registry.publish_bytes(data, **meta)
        else:
            self._seq += 1
            entry = make_entry(data, version=f"v{self._seq:06d}", seq=self._seq, key=None, **meta)
            self._line.append(entry["version"])
        self.parent = entry["version"]
        self._good = data
        self._since_publish = 0
        self._last_publish = now
        self.stats["published"] += 1
        return Publication(entry["version"], data, entry)

    def _broken(self, now: float) -> bool:
        """Does the model fail the scorers' canary on the inputs learned last (a NaN or
        infinite weight: every scorer refused each version, and each next one inherited it,
        a QA pass)? Then it is not published: learning goes back to the last good model (the
        version it went on from, else a fresh one), the examples since are dropped."""
        try:
            canary(self.model, list(self._recent) or [{}])
        except ArtifactError as exc:
            if not exc.bad_model:  # (raised while scoring: the scorers judge that one)
                return False
            dropped, back = self._since_publish, self._last_good()
            self.stats["broken"] += 1
            self._recent.clear()
            self._since_publish = 0
            self._last_publish = now
            log.error(
                'model spec="%s": what it learned since version "%s" (%d example(s)) scores no '
                "probability (%s): not published; learning goes on from %s",
                self.spec.name, self.parent or "none", dropped, exc, back,
            )  # fmt: skip
            return True
        return False

    def _last_good(self) -> str:
        """Learn on from the last good model: the one published or gone on from last (in
        memory), else the parent version from the registry (after a restart: not in the
        checkpoint), else a fresh one; says which."""
        if self._good is not None:
            self.model = pickle.loads(self._good)
            self._classes = {True, False}  # (published, or gone on from)
            return f'version "{self.parent}"' if self.parent else "the model it started from"
        if self.registry is not None and self.parent is not None:
            with contextlib.suppress(Exception):  # (then a fresh one)
                self.model = self.registry.load(self.parent)
                self._classes = {True, False}
                self._good = pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)
                return f'version "{self.parent}"'
        self.model = build_pipeline(self.spec)
        self._classes = set()  # (a fresh one: both classes to learn again before a version)
        return "a fresh model"
