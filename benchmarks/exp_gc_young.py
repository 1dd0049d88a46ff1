"""The collector's full passes while the feature state grows fast, with and without the early
freeze (``fds.gcpolicy.Freezer``'s ``young``).

    python benchmarks/exp_gc_young.py [--cards 200000] [--days 3] [--rounds 2] [--restore]
                                      [--out benchmarks/results/gc_young.md]

A start with no state (or a flood of new cards) makes ~15 containers per new card. The freezer
froze them every 100,000 events; between two freezes CPython's own full passes (after the 11th
young pass since the last, once the old generation has grown by a quarter) visited every
container made since the last freeze, again at each pass. ``Freezer()`` now also freezes
where such a pass is near (``YOUNG_PASSES``); ``Freezer(young=None)`` is the old policy. Each
variant runs the default feature set (benchmarks/bench_features.py) over the same stream in a
process of its own (the collector's counts are per process), the two alternating, the order
reversed every other round; every full pass is timed with ``gc.callbacks``, every
``compute`` (with its tick: one per event here, where a replay ticks every 256 and fds run
after each batch) with ``time.perf_counter``. The CPU per transaction includes making the
stream.

``--restore``: the same, the early freeze on in both, as `fds run`'s restore folds a rebuild or
a catch-up (all of its state new): it tells the policy nothing (no freeze until the restore
ends, and the collector's own full passes go over everything it built so far), against the
same told every 256 records. Not done in fds run: a freeze there would also freeze the
restore's own reader (a KafkaConsumer, alive during the restore and a web of reference cycles
once closed: ~500 objects, and any records it had fetched ahead, kept until a compaction), so
it needs a reader kept for the instance's life first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import DEFAULT_SPECS, Stream

from fds.features import FeaturePlan
from fds.gcpolicy import TICK_EVERY, Freezer

RESULTS = Path(__file__).parent / "results" / "gc_young.md"
RESTORE_RESULTS = RESULTS.with_name("gc_young_restore.md")  # (--restore)
#: name -> (the early freeze on, events between two ticks: 0 = never told)
VARIANTS = {
    "every 100,000 events only (before)": (False, 1),
    "and before a full pass (now)": (True, 1),
}
#: ``--restore``: how fds run's restore (a rebuild, a catch-up) folds (all its state new, the
#: policy told nothing), and the same told every 256 records (not done: see the module's text)
RESTORE = {
    "a restore as fds run folds it (the policy not told)": (True, 0),
    f"told every {TICK_EVERY} records (not in fds run)": (True, TICK_EVERY),
}


def child(cards: int, days: int, early: bool, every: int) -> dict[str, Any]:
    passes: list[float] = []
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        elif info["generation"] == 2:
            passes.append(time.perf_counter() - began[0])

    plan = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul")
    stream = Stream(cards, days, 0)
    n, worst = 0, 0.0
    cpu0 = time.process_time()
    gc.callbacks.append(timed)
    with Freezer() if early else Freezer(young=None) as fz:
        for _step, _steps, chunk in stream:
            for _ts, kind, rec in chunk:
                if kind:
                    plan.on_label(rec)
                    continue
                t = time.perf_counter()
                plan.compute(rec)
                if every and not n % every:
                    fz.tick(every)
                worst = max(worst, time.perf_counter() - t)
                n += 1
    gc.callbacks.remove(timed)
    return {
        "tx": n, "cpu_s": time.process_time() - cpu0, "freezes": fz.freezes,
        "passes": len(passes), "pass_s": sum(passes), "longest_pass_s": max(passes, default=0.0),
        "worst_call_s": worst,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cards", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--restore", action="store_true", help="fds run's restore, before and now")
    ap.add_argument("--out", type=Path, help=f"default {RESULTS} ({RESTORE_RESULTS.name})")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)  # early, every
    args = ap.parse_args()
    if args.child:
        early, every = args.child
        print(json.dumps(child(args.cards, args.days, bool(early), every)))
        return 0
    out_path = args.out or (RESTORE_RESULTS if args.restore else RESULTS)
    command = shlex.join(["python", "benchmarks/exp_gc_young.py", *sys.argv[1:]])
    rows = []
    for r in range(args.rounds):
        order = list((RESTORE if args.restore else VARIANTS).items())
        for name, (early, every) in order if r % 2 == 0 else order[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(int(early)), str(every),
                 "--cards", str(args.cards), "--days", str(args.days)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            m = json.loads(out)
            rows.append((r + 1, name, m))
            print(f"round {r + 1}, {name}: {m}", flush=True)
    lines = [
        "# Full collections while the feature state grows (`fds.gcpolicy.Freezer`, `young`)",
        "",
        f"Command: `{command}`  ",
        f"Stream: {args.cards:,} new cards x {args.days} days (benchmarks/bench_features.py's "
        f"`Stream`, the default feature set, interpreted), {rows[0][2]['tx']:,} transactions; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| round | freezes | full passes (freezes' own included) | their time | longest | "
        "longest `compute` + tick | CPU per transaction | variant |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r, name, m in rows:
        lines.append(
            f"| {r} | {m['freezes']} | {m['passes']} | {m['pass_s']:.2f} s | "
            f"{m['longest_pass_s'] * 1e3:.0f} ms | {m['worst_call_s'] * 1e3:.0f} ms | "
            f"{m['cpu_s'] / m['tx'] * 1e6:.1f} us | {name} |"
        )
    out_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
