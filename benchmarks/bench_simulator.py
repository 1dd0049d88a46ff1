"""Simulator speed: transactions generated per second, without and with writing the files.

Target (issue 2): >= 200,000 transactions/s of generation on one core.

Run: ``python benchmarks/bench_simulator.py [--days 60 --cards 20000 --repeat 3]``
Writes ``benchmarks/results/simulator.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict, deque
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fds.streams.simulator import simulate, summarize, write
from fds.timeutil import get_zone

TARGET_TX_PER_S = 200_000  # issue 2
RESULTS = Path(__file__).parent / "results" / "simulator.md"


def _timed(fn):  # type: ignore[no-untyped-def]
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - cpu0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--cards", type=int, default=20_000)
    ap.add_argument("--merchants", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median kept)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--learnability", action="store_true",
        help="also check that the drift is learnable and hurts frozen models (~1-2 min, sklearn)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    command = "python benchmarks/bench_simulator.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    kw = dict(
        days=args.days, cards=args.cards, merchants=args.merchants, seed=0, drift_day=args.days // 2
    )

    rows: dict[str, list[tuple[float, float]]] = {"generate": [], "jsonl": [], "jsonl.gz": []}
    n = 0
    summary: dict = {}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeat):
            sim, wall, cpu = _timed(lambda: simulate(**kw))
            n = len(sim.transactions)
            rows["generate"].append((wall, cpu))
            for ext in ("jsonl", "jsonl.gz"):
                path = os.path.join(d, f"s.{ext}")
                _, w_wall, w_cpu = _timed(lambda p=path, s=sim: write(s, p))
                rows[ext].append((wall + w_wall, cpu + w_cpu))
            if r == 0:
                summary = summarize(sim)
            del sim
            print(f"run {r + 1}/{args.repeat}: {n:,} tx generated in {wall:.2f} s", file=sys.stderr)

    def rate(kind: str, i: int) -> float:
        return n / statistics.median(x[i] for x in rows[kind])

    lines = [
        "# Simulator speed",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}; one process, one thread. "
        f"Median of {args.repeat} runs; the machine is shared with other jobs, so wall time is "
        "noisy — CPU time (this process only) is shown beside it.",
        "",
        f"Stream: {args.days} days, {args.cards:,} cards, {args.merchants:,} merchants, drift on "
        f"day {args.days // 2}: {n:,} transactions, {summary['frauds']:,} frauds "
        f"({100 * summary['fraud_rate']:.2f}%), label delay p10/p50/p90 = "
        f"{summary['delay_days']['p10']}/{summary['delay_days']['p50']}/"
        f"{summary['delay_days']['p90']} days.",
        "",
        "| measurement | tx/s (wall) | tx/s (CPU) | target 200,000 tx/s |",
        "|---|---:|---:|---|",
    ]
    names = {
        "generate": "generate (`simulate()`: numpy + building the dicts)",
        "jsonl": "generate + write JSONL (transactions + labels)",
        "jsonl.gz": "generate + write JSONL.gz",
    }
    for kind, label in names.items():
        wall_r, cpu_r = rate(kind, 0), rate(kind, 1)
        if kind != "generate":  # (a precedence slip marked these "met" too)
            verdict = "(not a target)"
        elif wall_r >= TARGET_TX_PER_S:
            verdict = "met"
        elif cpu_r >= TARGET_TX_PER_S:
            verdict = "met on CPU time, missed on wall time"
        else:
            verdict = "**missed**"
        lines.append(f"| {label} | {wall_r:,.0f} | {cpu_r:,.0f} | {verdict} |")
    lines += [
        "",
        f"1-minute load average of the machine: {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores): when it is above the core "
        "count, other jobs share the "
        "core and wall time overstates the simulator's cost; CPU time is the per-core figure.",
        "",
    ]
    if args.learnability:
        lines += _learnability()
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


# Alerts per day in the learnability check (6,000 cards: ~25 frauds a day after the drift).
_K = 20
# Legitimate examples learned: a 5% sample of transactions unlabelled 4 days later (as the
# default model spec does).
_LEGIT_SAMPLE = 0.05
_ASSUME_LEGIT_S = 4 * 86400.0


def _features(sim: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per transaction: windowed features computed from the past only (labels as known then).

    Columns: log amount, log(amount / card's mean so far), night (0-6h local), online,
    domestic, card count 1h, card count 24h, distinct merchants 24h, device seen by the card,
    distinct cards of the device 7d, merchant fraud rate 28d (labels known so far).
    """
    tz = get_zone("Asia/Seoul")
    txs, labs = sim.transactions, sim.labels
    fraud_merchant = {
        t["tx_id"]: (t["merchant_id"], t["ts"]) for t in txs if t["tx_id"] in sim.scenarios
    }
    card_h: dict[str, deque] = defaultdict(deque)
    dev_h: dict[str, deque] = defaultdict(deque)
    merch_h: dict[str, deque] = defaultdict(deque)
    card_sum: dict[str, float] = defaultdict(float)
    card_n: dict[str, int] = defaultdict(int)
    card_dev: dict[str, set] = defaultdict(set)
    merch_frauds: dict[str, int] = defaultdict(int)
    known: set[str] = set()
    x = np.zeros((len(txs), 11))
    li = 0
    for i, t in enumerate(txs):
        ts, c, m = t["ts"], t["card_id"], t["merchant_id"]
        while li < len(labs) and labs[li]["ts"] <= ts:
            tid = labs[li]["tx_id"]
            li += 1
            fm, fts = fraud_merchant[tid]
            if fts > ts - 28 * 86400:
                merch_frauds[fm] += 1
            known.add(tid)
        h = card_h[c]
        h.append((ts, m))
        while h[0][0] <= ts - 86400:
            h.popleft()
        avg = card_sum[c] / card_n[c] if card_n[c] else t["amount"]
        seen, dcards = 1.0, 0
        if t["channel"] == "online":
            d = t["device_id"]
            seen = float(d in card_dev[c])
            card_dev[c].add(d)
            dh = dev_h[d]
            dh.append((ts, c))
            while dh[0][0] <= ts - 7 * 86400:
                dh.popleft()
            dcards = len({cc for _, cc in dh})
        mh = merch_h[m]
        mh.append((ts, t["tx_id"]))
        while mh[0][0] <= ts - 28 * 86400:
            if mh.popleft()[1] in known:
                merch_frauds[m] -= 1
        x[i] = [
            math.log(t["amount"]),
            math.log(t["amount"] / avg),
            datetime.fromtimestamp(ts, tz).hour < 6,
            t["channel"] == "online",
            t["country"] == "KR",
            sum(1 for s, _ in h if s > ts - 3600),
            len(h),
            len({mm for _, mm in h}),
            seen,
            min(dcards, 10),
            merch_frauds[m] / len(mh),
        ]
        card_sum[c] += t["amount"]
        card_n[c] += 1
    y = np.array([t["tx_id"] in sim.scenarios for t in txs])
    ts_arr = np.array([t["ts"] for t in txs])
    label_ts = {lab["tx_id"]: lab["ts"] for lab in labs}
    lts = np.array([label_ts.get(t["tx_id"], np.inf) for t in txs])
    return x, y, ts_arr, lts


def _learnability() -> list[str]:
    """Is the post-drift pattern learnable, and do frozen models miss it?

    Not the precision benchmark (issue 5 owns that): a sanity check of the stream with a
    logistic regression on hand-computed windowed features, learning only from labels known
    at the time (a fraud once its label arrived; legit: a 5% sample unlabelled after 4 days).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sim = simulate(days=60, seed=0, cards=6_000, merchants=600, drift_day=30)
    x, y, ts, lts = _features(sim)
    day = ((ts - sim.start) // 86400).astype(int)
    sample = np.random.default_rng(0).random(len(y)) < _LEGIT_SAMPLE

    def fit(now: float):  # type: ignore[no-untyped-def]
        fraud = lts <= now
        sel = fraud | ((ts < now - _ASSUME_LEGIT_S) & sample & ~fraud)
        sc = StandardScaler().fit(x[sel])
        m = LogisticRegression(max_iter=1_000).fit(sc.transform(x[sel]), fraud[sel])
        return lambda z: m.predict_proba(sc.transform(z))[:, 1]

    def precision_at_k(score: np.ndarray) -> np.ndarray:
        out = []
        for d in range(60):
            idx = np.flatnonzero(day == d)
            out.append(y[idx[np.argsort(-score[idx], kind="stable")[:_K]]].mean())
        return np.array(out)

    frozen = fit(sim.start + 21 * 86400)(x)
    adaptive = np.zeros(len(y))
    for d in range(7, 60):  # retrained at each local midnight on what is known by then
        idx = np.flatnonzero(day == d)
        adaptive[idx] = fit(sim.start + d * 86400)(x[idx])
    # What amount/country/card-testing rules look at: spike, new device abroad, tiny bursts.
    rules = (
        0.6 * (x[:, 1] > math.log(8))
        + 0.7 * ((x[:, 4] == 0) & (x[:, 8] == 0) & (x[:, 3] == 1))
        + 0.7 * ((x[:, 5] >= 4) & (x[:, 0] < math.log(5_000)))
        + 1e-6 * x[:, 1]
    )
    lines = [
        "## Is the drift learnable? (sanity check, `--learnability`)",
        "",
        f"6,000 cards, 60 days, drift on day 30; precision@{_K} alerts/day, mean over days. "
        "Logistic regression on 11 windowed features computed from the past only; it learns "
        "only labels known at the time. Frozen: trained once on day 21. Adaptive: retrained "
        "each midnight. Rules: amount spike / new device abroad / tiny bursts.",
        "",
        "| scorer | days 7-29 (before) | days 30-59 (after) | days 36-59 |",
        "|---|---:|---:|---:|",
    ]
    for name, score in (("amount/country rules", rules), ("frozen model", frozen),
                        ("adaptive model", adaptive)):  # fmt: skip
        p = precision_at_k(score)
        lines.append(
            f"| {name} | {p[7:30].mean():.2f} | {p[30:].mean():.2f} | {p[36:].mean():.2f} |"
        )
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
