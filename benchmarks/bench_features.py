"""Feature-plan speed and memory on the default feature set (issue 3).

Targets: <= 10 microseconds per transaction on one core for ~15 aggregates over card, merchant
and device (windows 10 min .. 30 days); <= 2 KB per active card at simulator rates, with a run
of 1,000,000 cards.

* speed: the built-in simulator's stream (``fds.streams.simulator.simulate``), labels merged in
  at the time they become known; CPU time per ``compute`` (``time.process_time``), over the
  whole stream and over the last 7 days (all windows warm); wall time too.
* memory: RSS delta (``/proc/self/statm``, resident pages) of the plan's state after streaming
  ``--mem-cards`` cards for ``--mem-days`` days. The simulator holds a whole stream in memory,
  which 1,000,000 cards x 30 days does not fit, so this run generates a stream chunk by chunk
  with the simulator's per-card rate law (gamma(2, 0.5) per day, mean 1, clipped 0.05..8),
  8 habitual merchants per card (75 % of payments), 1 merchant per 10 cards, online payments
  (40 %) carrying one of the card's two devices, a home country with 3 % abroad, and fraud
  labels (0.5 %) arriving 1-30 days later. A deep-size account of the states (sys.getsizeof,
  shared objects counted once) splits the figure into card / merchant / device / label store,
  and the state's pickled size (the checkpoint's encoding) shows how dense the same data packs.

Run: ``python benchmarks/bench_features.py`` (defaults below); ``--quick`` for a smoke run;
``--before DIR`` adds a before/after comparison, interleaved in one process, with an older copy
of ``fds/features`` (how to make it: benchmarks/results/features.md); ``--provenance`` adds the
per-event cost of ``FeaturePlan(..., provenance=True)`` (with against without, interleaved in
one process) and the time of a ``split``. The speed run measures the plans as the engine runs
them: compiled (``fds.features.kernel``; the kernels are built first, into ``FDS_KERNEL_CACHE``
or ``~/.cache/fds/kernels``) and adds compiled against interpreted, interleaved in one process;
``--kernel interpreted`` measures the interpreted plans alone.
Writes ``benchmarks/results/features.md``.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import os
import pickle
import platform
import shlex
import sys
import time
import timeit
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Measure the tree this script lives in, whatever ``fds`` happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fds.features import FeaturePlan
from fds.features.kernel import Compiler
from fds.features.txstore import TxStore
from fds.gcpolicy import TICK_EVERY, Freezer

RESULTS = Path(__file__).parent / "results" / "features.md"
TARGET_US = 10.0  # issue 3
TARGET_BYTES_PER_CARD = 2048  # issue 3
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Spec:
    name: str
    entity: str
    agg: str
    field: str | None
    window: str


#: The default feature set: 15 aggregates over card, merchant and device, 10 min .. 30 days.
DEFAULT_SPECS = [
    Spec("card_n_10m", "card_id", "count", None, "10m"),
    Spec("card_n_1h", "card_id", "count", None, "1h"),
    Spec("card_sum_1h", "card_id", "sum", "amount", "1h"),
    Spec("card_max_24h", "card_id", "max", "amount", "24h"),
    Spec("card_distinct_merchants_24h", "card_id", "distinct", "merchant_id", "24h"),
    Spec("card_spend_today", "card_id", "sum", "amount", "calendar_day"),
    Spec("card_mean_30d", "card_id", "mean", "amount", "30d"),
    Spec("card_std_30d", "card_id", "std", "amount", "30d"),
    Spec("card_seen_country_30d", "card_id", "seen", "country", "30d"),
    Spec("card_last_gap", "card_id", "last_gap", None, "30d"),
    Spec("merchant_n_1h", "merchant_id", "count", None, "1h"),
    Spec("merchant_mean_7d", "merchant_id", "mean", "amount", "7d"),
    Spec("merchant_fraud_rate_28d", "merchant_id", "fraud_rate", None, "28d"),
    Spec("device_n_10m", "device_id", "count", None, "10m"),
    Spec("device_distinct_cards_24h", "device_id", "distinct", "card_id", "24h"),
]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    probe = min(timeit.repeat("d.get('a')", "d={'a': 1}", number=1_000_000, repeat=5)) * 1000
    return (
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load} (the machine is shared); calibration: dict.get = {probe:.1f} ns"
    )


class Pauses:
    """The longest single ``compute`` calls (CPU), with and without the cyclic GC's share.

    A gen-2 collection of the garbage collector runs inside whichever call allocates at the
    wrong moment and visits every tracked object of the process (the benchmark's own stream
    included), so it is reported apart from the plan's own pauses (freeze steps, sweeps,
    trims). Usage per call: ``c0 = clock(); compute(tx); dt = clock() - c0`` then
    ``if dt > pauses.floor: pauses.note(c0, dt)`` (no cost for the ordinary calls).
    """

    def __init__(self) -> None:
        self.worst = 0.0  # longest call, GC included
        self.floor = 0.0  # longest call minus the collections that ran inside it
        self.worst_gc2 = 0.0  # longest gen-2 collection
        self._recent: deque[tuple[float, float]] = deque(maxlen=64)  # (start, CPU) of GCs
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        now = time.process_time()
        if phase == "start":
            self._t0 = now
            return
        self._recent.append((self._t0, now - self._t0))
        if info["generation"] == 2:
            self.worst_gc2 = max(self.worst_gc2, now - self._t0)

    def note(self, c0: float, dt: float) -> None:
        self.worst = max(self.worst, dt)
        # (a snapshot: a collection inside the generator ran the callback, which appended to
        # the deque being iterated: "deque mutated during iteration")
        recent = tuple(self._recent)
        self.floor = max(self.floor, dt - sum(d for s, d in recent if s >= c0))

    def close(self) -> None:
        gc.callbacks.remove(self._cb)

    def row(self) -> str:
        return (
            f"longest single `compute` (CPU): {self.worst * 1e3:.1f} ms; without the GC "
            f"collections inside it: {self.floor * 1e3:.1f} ms; longest gen-2 GC "
            f"collection: {self.worst_gc2 * 1e3:.0f} ms"
        )


def merged(sim: Any) -> list[tuple[float, int, dict[str, Any]]]:
    """Transactions and labels in arrival order (labels at the time they become known)."""
    ev = [(tx["ts"], 0, tx) for tx in sim.transactions]
    ev += [(lab["ts"], 1, lab) for lab in sim.labels]
    ev.sort(key=lambda e: (e[0], e[1]))
    return ev


def _no_freeze(n: int = 1) -> None:
    """``--no-freeze``: the collector's default passes (what runs before fds.gcpolicy)."""


def _ticker(freeze: bool) -> Callable[[int], None]:
    """Called with ``TICK_EVERY`` before every ``TICK_EVERY``-th ``compute`` returns (inside
    its timing), as a replay tells the engine's GC policy (until 2026-12-06, evening, a tick per
    call: 0.07-0.18 us of each call's figure that no engine pays); or nothing (``--no-freeze``)."""
    return Freezer().tick if freeze else _no_freeze


def built(compiler: Compiler | None) -> Compiler | None:
    """``compiler`` with the kernels of the default set and of each entity's part of it built
    (waited for: the measured plans run compiled from their first event)."""
    if compiler is not None:
        for ent in ("card_id", "merchant_id", "device_id", None, "all"):  # (as speed's)
            specs = [sp for sp in DEFAULT_SPECS if ent in ("all", sp.entity)]
            FeaturePlan(specs, timezone="Asia/Seoul", compiler=compiler)
        assert compiler.wait(), "a kernel's build did not end"
    return compiler


def speed(
    days: int, cards: int, seed: int, freeze: bool = True, compiler: Compiler | None = None
) -> dict[str, Any]:
    """The figures of the plan as the engine runs it (``compiler``: compiled, else
    interpreted); with a compiler, also both interleaved in one process (``kernel``)."""
    from fds.streams.simulator import simulate

    sim = simulate(days=days, cards=cards, seed=seed)
    for tx in sim.transactions:  # what fds.schema.parse_transaction hands the engine
        tx["amount"] = float(tx["amount"])
    events = merged(sim)
    # The stream (600,000 dicts held for the whole run) is the benchmark's, not the plan's: in
    # the engine transactions are transient. Frozen out of the cyclic GC's sight so that its
    # collections see what they would see in the engine: the plan's state.
    gc.collect()
    gc.freeze()
    steady_from = sim.end - 7 * 86400
    plan = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul", compiler=compiler)
    compute, on_label = plan.compute, plan.on_label
    tick = _ticker(freeze)
    pauses = Pauses()
    n_tx = n_lab = n_steady = 0
    cpu_tx = cpu_lab = cpu_steady = 0.0
    clock = time.process_time
    wall0 = time.perf_counter()
    for ts, kind, rec in events:
        if kind:
            c0 = clock()
            on_label(rec)
            cpu_lab += clock() - c0
            n_lab += 1
        else:
            c0 = clock()
            compute(rec)
            if not n_tx % TICK_EVERY:  # the engine's GC policy (fds.gcpolicy), its cost counted
                tick(TICK_EVERY)
            dt = clock() - c0
            if dt > pauses.floor:
                pauses.note(c0, dt)
            cpu_tx += dt
            n_tx += 1
            if ts >= steady_from:
                cpu_steady += dt
                n_steady += 1
    wall = time.perf_counter() - wall0
    pauses.close()
    # process_time per call has a coarse clock on some kernels: cross-check with one block
    plan2 = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul", compiler=compiler)
    txs = sim.transactions
    c0 = clock()
    for tx in txs:
        plan2.compute(tx)
    block = (clock() - c0) / len(txs) * 1e6
    # the per-call figures' own bias: what they measure around an empty body
    acc = 0.0
    for _ in range(100_000):
        c0 = clock()
        acc += clock() - c0
    timer = acc / 100_000 * 1e6
    # the same block with the cyclic garbage collector off: how much of the time is GC
    # visiting the (long-lived) feature state, a cost that grows with the state held
    plan3 = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul", compiler=compiler)
    gc.collect()
    gc.disable()
    try:
        c0 = clock()
        for tx in txs:
            plan3.compute(tx)
        block_nogc = (clock() - c0) / len(txs) * 1e6
    finally:
        gc.enable()
    del plan2, plan3
    split = {}
    for ent in ("card_id", "merchant_id", "device_id", None):
        specs = [sp for sp in DEFAULT_SPECS if sp.entity == ent]
        p = FeaturePlan(specs, timezone="Asia/Seoul", compiler=compiler)
        c0 = clock()
        for tx in txs:
            p.compute(tx)
        split[ent or "(no features: fixed cost)"] = (clock() - c0) / len(txs) * 1e6
    kernel = None
    if compiler is not None:
        plans = {
            "interpreted": FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul"),
            "compiled": FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul", compiler=compiler),
        }
        assert plans["compiled"].compiled
        kernel = race(plans, events, steady_from)
    gc.unfreeze()
    return {
        "compiled": plan.compiled,
        "kernel": kernel,
        "n_steady": n_steady,
        "split": split,
        "days": days,
        "cards": cards,
        "tx": n_tx,
        "labels": n_lab,
        "pauses": pauses.row(),
        "us_tx": cpu_tx / n_tx * 1e6,
        "us_steady": cpu_steady / max(n_steady, 1) * 1e6,
        "us_block": block,
        "us_timer": timer,
        "us_block_nogc": block_nogc,
        "us_label": cpu_lab / max(n_lab, 1) * 1e6,
        "wall_us": wall / (n_tx + n_lab) * 1e6,
        "sizes": plan.state_sizes(),
        "label_store": plan.label_store_size(),
        "reordered": plan.reordered_events,
        "late": plan.late_events,
    }


def race(
    plans: dict[str, Any], evs: list[Any], steady_from: float, parts: list[int] | None = None
) -> dict[str, list[float]]:
    """CPU seconds of each plan (name -> plan) over ``evs`` (whole stream, from
    ``steady_from`` on), interleaved: the plans are fed alternating blocks of 2,000 events
    (which one goes first alternates too), so load changes on the shared machine hit all alike.
    A plan keeping provenance has its ``part`` set before each transaction, as the Kafka runner
    sets it, to ``parts[i]`` (the input partition of event ``i``)."""
    clock = time.process_time
    cpu = {k: [0.0, 0.0] for k in plans}
    for b, i in enumerate(range(0, len(evs), 2000)):
        blk = evs[i : i + 2000]
        steady = blk[0][0] >= steady_from
        for name in list(plans) if b % 2 == 0 else list(plans)[::-1]:
            plan = plans[name]
            compute, on_label = plan.compute, plan.on_label
            c0 = clock()
            if getattr(plan, "provenance", False):
                assert parts is not None
                for (_ts, kind, rec), p in zip(blk, parts[i : i + 2000], strict=True):
                    if kind:
                        on_label(rec)
                    else:
                        plan.part = p
                        compute(rec)
            else:
                for _ts, kind, rec in blk:
                    if kind:
                        on_label(rec)
                    else:
                        compute(rec)
            dt = clock() - c0
            cpu[name][0] += dt
            cpu[name][1] += dt if steady else 0.0
    return cpu


def provenance(days: int, cards: int, seed: int, n_parts: int = 12) -> dict[str, Any]:
    """The per-event cost of ``provenance=True``: a plan with it and one without, interleaved
    (:func:`race`) on the same stream, the input keyed by card over ``n_parts`` partitions;
    then the time of ``split`` of half the partitions out of the plan with it."""
    from fds.streams.simulator import simulate

    sim = simulate(days=days, cards=cards, seed=seed)
    for tx in sim.transactions:
        tx["amount"] = float(tx["amount"])
    events = merged(sim)
    parts = [
        0 if kind else zlib.crc32(rec["card_id"].encode()) % n_parts for _t, kind, rec in events
    ]
    gc.collect()
    gc.freeze()  # the stream is the harness's (see speed)
    plans = {
        "without": FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul"),
        "with": FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul", provenance=True),
    }
    steady_from = sim.end - 7 * 86400
    cpu = race(plans, events, steady_from, parts)
    gc.unfreeze()
    c0 = time.process_time()
    moved = plans["with"].split(range(n_parts // 2))
    split_s = time.process_time() - c0
    return {
        "cpu": cpu,
        "tx": len(sim.transactions),
        "steady": sum(1 for tx in sim.transactions if tx["ts"] >= steady_from),
        "days": days,
        "cards": cards,
        "split_s": split_s,
        "sizes": (plans["with"].state_sizes(), moved.state_sizes()),
        "labels": (plans["with"].label_store_size(), moved.label_store_size()),
    }


def compare(before: Path, days: int, cards: int, seed: int) -> dict[str, Any]:
    """Before/after in one process: the package ``basefeat`` in directory ``before`` (an
    older ``fds/features``, see ``--before``) against this tree, on the same stream.

    Both plans are fed alternating blocks of 2,000 events (which one goes first alternates
    too), CPU time per plan per block, so load changes on the shared machine hit both alike.
    Then the same per entity group (only its features), on transactions alone.
    """
    sys.path.insert(0, str(before))
    import basefeat  # type: ignore[import-not-found]

    from fds.streams.simulator import simulate

    sim = simulate(days=days, cards=cards, seed=seed)
    for tx in sim.transactions:
        tx["amount"] = float(tx["amount"])
    events = merged(sim)
    gc.collect()
    gc.freeze()  # the stream is the harness's (see speed)
    steady_from = sim.end - 7 * 86400

    def two(specs: list[Spec], evs: list[Any]) -> dict[str, list[float]]:
        plans = {
            "before": basefeat.FeaturePlan(specs, timezone="Asia/Seoul"),
            "after": FeaturePlan(specs, timezone="Asia/Seoul"),
        }
        return race(plans, evs, steady_from)

    n_tx = len(sim.transactions)
    n_steady = sum(1 for tx in sim.transactions if tx["ts"] >= steady_from)
    rows = {"all features, labels included": two(DEFAULT_SPECS, events)}
    txs = [e for e in events if not e[1]]
    for ent in ("card_id", "merchant_id", "device_id"):
        rows[f"only the {ent} features"] = two(
            [sp for sp in DEFAULT_SPECS if sp.entity == ent], txs
        )
    gc.unfreeze()
    pauses = {}
    for name, store in (("before", basefeat.txstore.TxStore), ("after", TxStore)):
        pauses[name] = label_store_pauses(store, FeaturePlan(DEFAULT_SPECS)._label_span)
    return {
        "rows": rows,
        "tx": n_tx,
        "steady": n_steady,
        "days": days,
        "cards": cards,
        "pauses": pauses,
    }


def label_store_pauses(store_cls: Any, span: float, n: int = 700_000) -> tuple[float, float]:
    """The ``tx_id`` store alone at 1,000,000 transactions a day: (longest ``remember`` +
    ``expire`` call, mean per call), CPU seconds, GC off (its pauses are reported apart).

    ``expire`` runs every 1,000 transactions, as the plan runs it when the watermark moves
    on; 700,000 transactions cover three freezes of 5.25-hour buckets (~219,000 entries).
    """
    store = store_cls(span)
    ids = [f"t{i:09d}" for i in range(n)]
    clock = time.process_time
    worst = total = 0.0
    gc.disable()
    try:
        for i, tx_id in enumerate(ids):
            t = i * 86400 / 1_000_000
            c0 = clock()
            store.remember(tx_id, t, "m")
            if i % 1000 == 0:
                store.expire(freeze_before=t - 300, drop_before=t - 300 - 28 * 86400)
            dt = clock() - c0
            total += dt
            worst = max(worst, dt)
    finally:
        gc.enable()
    return worst, total / n


class Stream:
    """Simulator-like transactions and labels, in event-time order, chunk by chunk.

    The per-card tables (rates, habitual merchants, home countries) are drawn when the stream
    is made, so that a memory run can measure from there: they are the generator's, not the
    plan's (77 B per card at 1,000,000 cards, 203 B at 20,000 with numpy's own share). A
    chunk's transactions are made as they are read (an iterator, not a list of a quarter day's
    dicts, ~250 MB at a million cards), and every id is its own string, as a parsed message's
    is: the plan keeps the first one it sees as a state key. Before 2026-12-06, evening, the
    tables and a chunk's pages were in the RSS the plan was charged with: 4,644 B per card at
    20,000 cards for the 4,333 B measured since, 4,466 for 4,333 at a million."""

    def __init__(self, cards: int, days: int, seed: int, chunk_days: float = 0.25) -> None:
        if not 0 < chunk_days <= 1:  # (a label comes a day or more after its transaction)
            raise ValueError(f"chunk_days must be in (0, 1], got {chunk_days}")
        self.rng = rng = np.random.default_rng(seed)
        self.cards, self.days, self.chunk_days = cards, days, chunk_days
        self.merchants = max(cards // 10, 100)
        self.rate = np.clip(rng.gamma(2.0, 0.5, cards), 0.05, 8.0)
        self.habits = rng.integers(0, self.merchants, (cards, 8))
        home = rng.choice(np.array(["KR", "US", "JP", "DE"]), cards, p=[0.85, 0.05, 0.05, 0.05])
        self.home = home.astype("S2")  # (1-byte characters: 8 B a card less than "<U2")
        self._drawn = rng.bit_generator.state  # each iteration draws the same stream from here

    def __iter__(self) -> Iterator[tuple[int, int, Iterator[tuple[float, int, dict[str, Any]]]]]:
        """``(step, steps, events)`` per chunk; ``events`` yields ``(ts, kind, record)`` (kind 0
        a transaction, 1 a label) and is to be read to its end before the next chunk."""
        rng, cards, chunk_days = self.rng, self.cards, self.chunk_days
        rng.bit_generator.state = self._drawn
        start = 1767193200.0  # 2026-01-01 00:00 Asia/Seoul
        pending: list[tuple[float, int, dict[str, Any]]] = []  # labels to come, a heap
        seq = 0
        steps = int(self.days / chunk_days)
        for step in range(steps):
            t0 = start + step * chunk_days * 86400
            counts = rng.poisson(self.rate * chunk_days)
            card = np.repeat(np.arange(cards), counts)
            n = len(card)
            ts = t0 + rng.random(n) * chunk_days * 86400
            order = np.argsort(ts)
            card, ts = card[order], ts[order]
            habitual = rng.random(n) < 0.75
            merch = np.where(
                habitual,
                self.habits[card, rng.integers(0, 8, n)],
                rng.integers(0, self.merchants, n),
            )
            amount = np.round(np.exp(rng.normal(9.5, 1.0, n)), 0)
            online = rng.random(n) < 0.4
            dev = card * 2 + rng.integers(0, 2, n)
            abroad = rng.random(n) < 0.03
            fraud = rng.random(n) < 0.005
            delay = rng.uniform(1, 30, n) * 86400
            t1 = t0 + chunk_days * 86400
            # (a label comes a day or more after its transaction: never in the same chunk)
            due = []
            while pending and pending[0][0] < t1:
                due.append(heapq.heappop(pending))

            def transactions(first: int = seq, card: Any = card, ts: Any = ts, merch: Any = merch,
                             amount: Any = amount, online: Any = online, dev: Any = dev,
                             abroad: Any = abroad, fraud: Any = fraud, delay: Any = delay,
                             ) -> Iterator[tuple[float, int, dict[str, Any]]]:  # fmt: skip
                home = self.home
                for i in range(len(card)):
                    c, d = int(card[i]), int(dev[i])
                    tx = {
                        "tx_id": f"t{first + i:09d}",
                        "ts": float(ts[i]),
                        "card_id": f"c{c:07d}",
                        "amount": float(amount[i]),
                        "merchant_id": f"m{int(merch[i]):06d}",
                        "country": "FR" if abroad[i] else home[c].decode(),
                        "device_id": f"d{d}" if online[i] else None,
                        # (one IP per device, as the simulator's; no draw: the stream is the same
                        # draw for draw, and only a rules file's ip features read it)
                        "ip": f"10.{d >> 16}.{(d >> 8) & 255}.{d & 255}" if online[i] else None,
                    }
                    yield tx["ts"], 0, tx
                    if fraud[i]:
                        t = tx["ts"] + float(delay[i])
                        lab = {"tx_id": tx["tx_id"], "ts": t, "is_fraud": True}
                        heapq.heappush(pending, (t, first + i, lab))

            seq += n
            labels = ((t, 1, lab) for t, _, lab in due)
            yield step, steps, heapq.merge(transactions(), labels, key=lambda e: (e[0], e[1]))


def stream_chunks(
    cards: int, days: int, seed: int, chunk_days: float = 0.25
) -> Iterator[tuple[int, int, Iterator[tuple[float, int, dict[str, Any]]]]]:
    """The chunks of a new :class:`Stream`."""
    return iter(Stream(cards, days, seed, chunk_days))


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of ``obj`` and everything it references, each object counted once."""
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        elif hasattr(o, "__slots__"):
            stack.extend(getattr(o, s) for s in o.__slots__ if hasattr(o, s))
    return total


class _Counted:
    """A file that keeps only how many bytes were written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


def _pickled_size(parts: Iterable[Any]) -> int:
    """Bytes of ``parts`` pickled one after the other by one pickler, whose memo spans them
    (shared values once, as in one pickle), without holding the pickle (28 M label store
    entries are ~730 MB)."""
    out = _Counted()
    pickler = pickle.Pickler(out, protocol=5)
    for part in parts:
        pickler.dump(part)
    return out.n


def memory(
    cards: int, days: int, seed: int, log: Any, freeze: bool = True, specs: Any = DEFAULT_SPECS
) -> dict[str, Any]:
    gc.collect()
    base = rss()
    stream = Stream(cards, days, seed)  # its per-card tables are the generator's: left out
    tables = rss() - base
    tick = _ticker(freeze)
    before = rss()
    plan = FeaturePlan(specs, timezone="Asia/Seoul")
    n_tx = 0
    clock = time.process_time
    cpu0 = clock()
    compute = plan.compute
    pauses = Pauses()
    for step, steps, chunk in stream:
        for _ts, kind, rec in chunk:
            if kind:
                plan.on_label(rec)
            else:
                c0 = clock()
                compute(rec)
                if not n_tx % TICK_EVERY:  # the engine's GC policy, its cost counted
                    tick(TICK_EVERY)
                dt = clock() - c0
                if dt > pauses.floor:
                    pauses.note(c0, dt)
                n_tx += 1
        del chunk
        if step % 4 == 3:
            gc.collect()
            log(
                f"  day {(step + 1) / 4:.0f}/{steps / 4:.0f}: {n_tx:,} tx, "
                f"RSS delta {(rss() - before) / 2**20:,.0f} MiB, {plan.state_sizes()}; "
                f"{pauses.row()}"
            )
    pauses.close()
    gc.collect()
    total = rss() - before
    cpu = time.process_time() - cpu0
    sizes = plan.state_sizes()
    # deep-size split on a sample of states (shared interned strings counted once overall)
    seen: set[int] = set()
    split = {}
    for gi, (ent, n) in enumerate(sizes.items()):
        states = plan.states[gi]
        sample = list(states.values())[: min(n, 20000)]
        size = sum(deep_size(st, seen) for st in sample)
        split[ent] = size / max(len(sample), 1) * n
    n_labels = plan.label_store_size()
    lab = deep_size(plan._labels, seen)
    split["label store"] = lab
    # The same state at a pickle's density (the checkpoint's encoding: no container headers,
    # no allocator, repeated values once per sample): what a columnar store could approach.
    packed = {}
    for gi, (ent, n) in enumerate(sizes.items()):
        sample = list(plan.states[gi].items())[: min(n, 20000)]
        packed[ent] = _pickled_size([sample]) / max(len(sample), 1) * n
    packed["label store"] = _pickled_size(plan._labels.buckets.values())
    return {
        "cards": cards,
        "days": days,
        "tx": n_tx,
        "rss_delta": total,
        "tables": tables,
        "sizes": sizes,
        "split": split,
        "packed": packed,
        "label_entries": n_labels,
        "cpu_us": cpu / n_tx * 1e6,
        "pauses": pauses.row(),
    }


def plot(m: dict[str, Any] | None, s: dict[str, Any] | None, path: Path) -> str:
    """Memory per active card by part (left) and CPU per transaction by entity (right), each
    against its target."""
    import plots

    fig, axes = plots.figure(int(m is not None) + int(s is not None))
    ax = iter(axes)
    if m is not None:
        a = next(ax)
        active = m["sizes"]["card_id"]
        parts = {k: v / active for k, v in m["split"].items()}
        parts["allocator and the rest (RSS - deep sizes)"] = max(
            0.0, m["rss_delta"] / active - sum(parts.values())
        )
        left = 0.0
        for name, size in parts.items():
            a.barh(["RSS per active card"], [size], left=left, label=f"{name}: {size:,.0f} B")
            left += size
        a.axvline(TARGET_BYTES_PER_CARD, color="tab:red", ls="--", label="target 2 KB")
        a.set_xlabel("bytes per active card")
        a.set_title(f"Memory, {m['cards']:,} cards x {m['days']} days")
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    if s is not None:
        rows = {
            "all features, last 7 days (per call)": s["us_steady"],
            **{k if k.startswith("(") else f"only the {k} features": v
               for k, v in s["split"].items()},
        }  # fmt: skip
        plots.bars(
            next(ax), rows, xlabel="CPU microseconds per transaction", fmt=".1f",
            title=f"Speed, {s['days']} days x {s['cards']:,} cards",
            targets=[(TARGET_US, f"target {TARGET_US:g} us")],
        )  # fmt: skip
    return plots.save(fig, path, "memory and speed against the targets")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=30, help="speed run: simulated days")
    ap.add_argument("--cards", type=int, default=20_000, help="speed run: simulated cards")
    ap.add_argument("--mem-cards", type=int, default=1_000_000, help="memory run: cards")
    ap.add_argument("--mem-days", type=int, default=30, help="memory run: days")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run (small)")
    ap.add_argument(
        "--no-freeze", action="store_true",
        help="without the engine's GC policy (fds.gcpolicy.Freezer): the collector's passes",
    )  # fmt: skip
    ap.add_argument(
        "--provenance", action="store_true",
        help="also measure the per-event cost of provenance=True (a plan with it and one "
        "without, interleaved in one process), and split's time",
    )  # fmt: skip
    ap.add_argument(
        "--kernel", choices=("compiled", "interpreted"), default="compiled",
        help="the speed run's plans: as the engine runs them (compiled, the kernel built "
        "first; FDS_KERNEL_CACHE is its cache) or interpreted",
    )  # fmt: skip
    ap.add_argument(
        "--rules", type=Path,
        help="memory run: the features of this rules file instead of the default set (e.g. "
        "rules/default.yaml, whose longest windows are 90 days: --mem-days 90)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--before",
        type=Path,
        help="also compare, interleaved in one process, with an older fds/features copied to "
        "DIR/basefeat (its 'fds.features.' imports renamed 'basefeat.'; see the results file)",
    )
    args = ap.parse_args()
    if args.quick:
        args.days, args.cards, args.mem_cards, args.mem_days = 8, 2000, 20_000, 8
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    mem_specs = DEFAULT_SPECS
    if args.rules is not None:
        from fds.rules.ruleset import load_ruleset

        mem_specs = load_ruleset(args.rules).features
    lines = [
        "# Feature plan: speed and memory",
        "",
        f"Command: `{cmd}`",
        "",
        machine(),
        "",
        "Feature set (`DEFAULT_SPECS` in benchmarks/bench_features.py): "
        + ", ".join(f"`{s.name}`" for s in DEFAULT_SPECS),
        "",
    ]
    if args.rules is not None:
        lines += [
            f"Memory run's feature set (the set above is the speed run's): the `features` of "
            f"`{args.rules}` (an IP per device, as the simulator's): "
            + ", ".join(f"`{s.name}`" for s in mem_specs),
            "",
        ]

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.before is not None:
        log(f"before/after: {args.before} vs this tree ...")
        c = compare(args.before, args.days, args.cards, args.seed)
        lines += [
            "## Before / after, interleaved in one process (CPU time per transaction)",
            "",
            f"Stream: built-in simulator, {c['days']} days, {c['cards']:,} cards, "
            f"{c['tx']:,} transactions ({c['steady']:,} in the last 7 days).",
            "",
            "| run | before: whole | after: whole | before: last 7 d | after: last 7 d | "
            "speed-up (last 7 d) |",
            "|---|---|---|---|---|---|",
        ]
        for name, cpu in c["rows"].items():
            b, a = cpu["before"], cpu["after"]
            lines.append(
                f"| {name} | {b[0] / c['tx'] * 1e6:.2f} us | {a[0] / c['tx'] * 1e6:.2f} us | "
                f"{b[1] / c['steady'] * 1e6:.2f} us | {a[1] / c['steady'] * 1e6:.2f} us | "
                f"{b[1] / a[1]:.2f}x |"
            )
        (bw, bm), (aw, am) = c["pauses"]["before"], c["pauses"]["after"]
        lines += [
            "",
            "`tx_id` store alone at 1,000,000 transactions a day (`label_store_pauses`, GC "
            f"off): longest `remember`/`expire` call before {bw * 1e3:.1f} ms, after "
            f"{aw * 1e3:.1f} ms; mean per call before {bm * 1e6:.2f} us, after {am * 1e6:.2f} us.",
            "",
        ]
        log("\n".join(lines[-len(c["rows"]) - 10 :]))
    if args.provenance:
        log(f"provenance: simulate(days={args.days}, cards={args.cards}), with and without ...")
        pv = provenance(args.days, args.cards, args.seed)
        (w0, w1), (p0, p1) = pv["cpu"]["without"], pv["cpu"]["with"]
        lines += [
            "## The cost of provenance, interleaved in one process (CPU time per transaction)",
            "",
            f"Stream: built-in simulator, {pv['days']} days, {pv['cards']:,} cards, "
            f"{pv['tx']:,} transactions, keyed by card over 12 input partitions (`part` set "
            "before each `compute`, as the Kafka runner does).",
            "",
            "| run | without | with | with / without |",
            "|---|---|---|---|",
            f"| whole stream | {w0 / pv['tx'] * 1e6:.2f} us | {p0 / pv['tx'] * 1e6:.2f} us | "
            f"{p0 / w0:.3f} |",
            f"| last 7 days | {w1 / pv['steady'] * 1e6:.2f} us | "
            f"{p1 / pv['steady'] * 1e6:.2f} us | {p1 / w1:.3f} |",
            "",
            f"`split` of 6 of the 12 partitions at the end: {pv['split_s'] * 1e3:.0f} ms CPU "
            f"(states kept {pv['sizes'][0]}, moved {pv['sizes'][1]}; label store kept "
            f"{pv['labels'][0]:,}, moved {pv['labels'][1]:,}).",
            "",
        ]
        log("\n".join(lines[-11:]))
    # memory first: its RSS delta is only meaningful in a process that has not yet grown
    m = s = None
    if not args.skip_memory:
        log(f"memory: {args.mem_cards:,} cards x {args.mem_days} days ...")
        m = memory(args.mem_cards, args.mem_days, args.seed, log, not args.no_freeze, mem_specs)
        active = m["sizes"]["card_id"]
        per_card = m["rss_delta"] / active
        verdict = "met" if per_card <= TARGET_BYTES_PER_CARD else "MISSED"
        if args.mem_days != 30 or args.rules is not None:  # (a QA pass: --quick's 8 days read
            # as a near miss of a target set for the default features over 30 days)
            verdict += ", not comparable: the target is for the default set over 30 days"
        lines += [
            "## Memory (RSS delta of the plan's state)",
            "",
            f"Stream: {m['cards']:,} cards x {m['days']} days, simulator-like rates (see the "
            f"module docstring), {m['tx']:,} transactions; {m['cpu_us']:.1f} us CPU per "
            "transaction including stream generation.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| RSS delta (resident pages, /proc/self/statm) | {m['rss_delta'] / 2**20:,.0f} MiB |",
            f"| active cards (states held) | {active:,} |",
            f"| **RSS delta per active card (everything)** | **{per_card:,.0f} B** |",
            "| the stream generator's per-card tables, before the plan was made (not in the "
            f"delta) | {m['tables'] / active:,.0f} B per card |",
            f"| entities held | {m['sizes']} |",
            f"| label store entries (tx_id -> entity, kept 28 d + grace) | "
            f"{m['label_entries']:,} |",
            f"| pauses | {m['pauses']} |",
        ]
        for part, size in m["split"].items():
            lines.append(f"| deep size: {part} (per active card) | {size / active:,.0f} B |")
        packed = sum(m["packed"].values()) / active
        lines.append(
            "| the same state pickled (the checkpoint's encoding, a sample of up to 20,000 "
            "states per entity type, the label store whole; the density a columnar "
            "store could approach): "
            + " / ".join(f"{k} {v / active:,.0f}" for k, v in m["packed"].items())
            + f" | {packed:,.0f} B per active card |"
        )
        lines += [
            "",
            f"Target <= {TARGET_BYTES_PER_CARD} B per active card: **{verdict}** "
            f"({per_card:,.0f} B).",
            "",
        ]
        log("\n".join(lines[-14:]))
    if not args.skip_speed:
        log(f"speed: simulate(days={args.days}, cards={args.cards}) ...")
        compiler = built(Compiler.from_env() if args.kernel == "compiled" else None)
        s = speed(args.days, args.cards, args.seed, freeze=not args.no_freeze, compiler=compiler)
        net = s["us_steady"] - s["us_timer"]  # the plan's own time per call
        verdict = "met" if net <= TARGET_US else "MISSED"
        if args.days < 30:  # (--quick's 8 days: its 30-day windows never fill, a QA pass)
            verdict += ", not comparable: the target is measured over 30 days or more"
        lines += [
            "## Speed (one core, CPU time per transaction)",
            "",
            f"Stream: built-in simulator, {s['days']} days, {s['cards']:,} cards: "
            f"{s['tx']:,} transactions and {s['labels']:,} labels (merged by arrival time).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| the plan's hot path | {'compiled' if s['compiled'] else 'interpreted'} |",
            f"| `compute` CPU, whole stream (per call) | {s['us_tx']:.1f} us |",
            f"| `compute` CPU, last 7 days (windows warm) | {s['us_steady']:.1f} us |",
            f"| `compute` CPU, one block over the stream (no per-call timer) | "
            f"{s['us_block']:.1f} us |",
            f"| an empty timed call (the per-call figures' own bias) | {s['us_timer']:.2f} us |",
            f"| the same block with the cyclic GC disabled (`gc.disable()`; not how it runs) | "
            f"{s['us_block_nogc']:.1f} us |",
            f"| `on_label` CPU (per label) | {s['us_label']:.1f} us |",
            f"| wall time per event, timers included | {s['wall_us']:.1f} us |",
            f"| state held at the end | {s['sizes']}, label store {s['label_store']:,} |",
            f"| pauses | {s['pauses']} |",
        ]
        for part, us in s["split"].items():
            which = (
                "no features (the fixed cost)"
                if part.startswith("(")
                else f"only the {part} features"
            )
            lines.append(f"| `compute` CPU with {which} (per transaction) | {us:.1f} us |")
        lines += [
            "",
            f"Target <= {TARGET_US:g} us per transaction: **{verdict}** (steady state "
            f"{s['us_steady']:.1f} us per call, of which {s['us_timer']:.1f} us is the timer's "
            f"own bias: {net:.1f} us). The block rows run a second and third plan in the "
            "same process, after the first one's state: allocator state makes them vary by "
            "+-30% between runs.",
            "",
        ]
        if s["kernel"] is not None:
            (i0, i1), (k0, k1) = s["kernel"]["interpreted"], s["kernel"]["compiled"]
            lines += [
                "### Compiled against interpreted, interleaved in one process",
                "",
                "| run | interpreted | compiled | speed-up |",
                "|---|---|---|---|",
                f"| whole stream, labels included | {i0 / s['tx'] * 1e6:.2f} us | "
                f"{k0 / s['tx'] * 1e6:.2f} us | {i0 / k0:.2f}x |",
                f"| last 7 days | {i1 / s['n_steady'] * 1e6:.2f} us | "
                f"{k1 / s['n_steady'] * 1e6:.2f} us | {i1 / k1:.2f}x |",
                "",
            ]
        log("\n".join(lines[-27:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if m is not None or s is not None:
        lines += [plot(m, s, args.out.with_suffix(".png")), ""]
    args.out.write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
