"""What ``max_entities`` holds under a flood of new card ids, and what it costs the regulars.

The memory run's stream of ``bench_features.py`` (``--cards`` regular cards, simulator rates,
the default feature set of that benchmark), and with each regular payment, from
``--flood-from`` days on, one payment of a card id never seen before (a card-testing flood at
the regulars' own rate). Each variant runs in a process of its own (its RSS its own): no cap,
and ``card_id`` capped at ``--cap``. Per variant: the cards held at the end and at most, the
RSS the plan added, CPU per transaction, the entities the cap evicted, and the share of the
regular cards' decisions whose whole feature snapshot equals the uncapped run's.

Run: ``python benchmarks/bench_caps.py`` (defaults below). Writes
``benchmarks/results/caps.md`` and ``caps.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import DEFAULT_SPECS, Stream, machine, rss
from plots import figure

from fds.features import FeaturePlan

RESULTS = Path(__file__).parent / "results"


def variant(cards: int, days: int, flood_from: float, cap: int, seed: int) -> dict[str, Any]:
    """One run: the plan's figures and a digest of each regular decision's snapshot."""
    gc.collect()
    stream = Stream(cards, days, seed)
    before = rss()
    plan = FeaturePlan(
        DEFAULT_SPECS, timezone="Asia/Seoul", max_entities={"card_id": cap} if cap else None
    )
    start = 1767193200.0 + flood_from * 86400
    digests, held, n_tx, most = [], [], 0, 0
    cpu0 = time.process_time()
    for _step, _steps, chunk in stream:
        for ts, kind, rec in chunk:
            if kind:
                plan.on_label(rec)
                continue
            snap = plan.compute(rec)
            digests.append(zlib.crc32(repr(tuple(snap.values())).encode()))
            n_tx += 1
            if ts >= start:  # a new card at the same moment, as a card tester's
                plan.compute({
                    "tx_id": f"f{n_tx}", "ts": ts, "card_id": f"x{n_tx:09d}",
                    "amount": 100.0, "merchant_id": rec["merchant_id"], "country": "KR",
                    "device_id": None,
                })  # fmt: skip
                n_tx += 1
            if not n_tx % 1000:
                most = max(most, len(plan.states[0]))
        held.append(len(plan.states[0]))
    cpu = time.process_time() - cpu0
    gc.collect()
    return {
        "cap": cap,
        "tx": n_tx,
        "held_end": len(plan.states[0]),
        "held_most": max(most, len(plan.states[0])),
        "held": held,
        "rss": rss() - before,
        "cpu_us": cpu / n_tx * 1e6,
        "evicted_by_cap": plan.evictions_by_cap().get("card_id", 0),
        "digests": digests,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cards", type=int, default=50_000, help="regular cards (default 50,000)")
    ap.add_argument("--days", type=int, default=10, help="days of the stream (default 10)")
    ap.add_argument("--flood-from", type=float, default=2.0, help="first day of the flood")
    ap.add_argument("--cap", type=int, default=200_000, help="max_entities of card_id")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "caps.md")
    ap.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant is not None:  # (a child: one variant, its figures as JSON on stdout)
        print(json.dumps(variant(a.cards, a.days, a.flood_from, a.variant, a.seed)))
        return 0
    command = "python benchmarks/bench_caps.py " + shlex.join(sys.argv[1:])
    runs = {}
    for cap in (0, a.cap):
        child = [
            sys.executable, __file__, "--variant", str(cap), "--cards", str(a.cards),
            "--days", str(a.days), "--flood-from", str(a.flood_from), "--seed", str(a.seed),
        ]  # fmt: skip
        print(f"running {'no cap' if not cap else f'card_id capped at {cap:,}'} ...", flush=True)
        runs[cap] = json.loads(subprocess.run(child, check=True, capture_output=True).stdout)
    free, capped = runs[0], runs[a.cap]
    same = np.mean(np.array(free["digests"]) == np.array(capped["digests"]))
    rows = []
    for name, r in (("no cap", free), (f"card_id capped at {a.cap:,}", capped)):
        rows.append(
            f"| {name} | {r['tx']:,} | {r['held_end']:,} | {r['held_most']:,} | "
            f"{r['rss'] / 2**20:,.0f} MiB | {r['cpu_us']:.1f} us | {r['evicted_by_cap']:,} |"
        )
    fig, (ax,) = figure(1)
    for name, r in (("no cap", free), (f"capped at {a.cap:,}", capped)):
        ax.plot(np.arange(1, len(r["held"]) + 1) / 4, r["held"], label=name)
    ax.axhline(a.cap, color="tab:red", ls="--", label="max_entities")
    ax.set_xlabel("day of the stream")
    ax.set_ylabel("cards held")
    ax.set_title(f"{a.cards:,} regular cards, a new card id per payment from day {a.flood_from:g}")
    ax.legend()
    png = a.out.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    report = f"""# A flood of new card ids, with and without `max_entities`

Command: `{command}`. {machine()}.

{a.cards:,} regular cards for {a.days} days (the memory stream of `bench_features.py`, its
feature set), and from day {a.flood_from:g} on one payment of a new card id with each regular
payment. Each variant in a process of its own; RSS is what the plan added.

| variant | transactions | cards held, end | at most* | RSS | CPU per tx | evicted by the cap |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

\\* looked at every 1,000 transactions and at the end of each quarter day.

Regular cards' decisions whose whole feature snapshot equals the uncapped run's:
**{same:.2%}** of {len(free["digests"]):,} (those that differ are of regular cards idle
longer than the cap's cut at the time, evicted with the flood's, their history started again).

![cards held]({png.name})
"""
    a.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
