"""How long a process holding a large feature state takes to exit once its work is done.

    python benchmarks/bench_exit.py [--cards 200000 500000] [--days 7]

A child process streams ``--days`` of the feature benchmark's simulator-like stream for each
``--cards`` through the default feature set (benchmarks/bench_features.py) inside the engine's
``Freezer`` (fds.gcpolicy), as ``fds run`` does, and returns from its main function. Measured:
the wall time from that return to the process's exit (the interpreter's teardown), with the
state back in the collector's sight (the ``Freezer`` unfreezes on exit: before) and frozen
again at the end, as the ``fds`` console script now does (``fds.cli.main``). SIGTERM promises an
exit within 10 s after the drain (RELIABILITY.md): the teardown is part of it.
Writes benchmarks/results/exit.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).parent / "results" / "exit.md"
MODES = {
    "unfrozen": "state back in the collector's sight (before)",
    "frozen": "frozen again before the exit (`fds` now)",
}


def child(cards: int, days: int, mode: str) -> None:
    import bench_features as bf

    from fds.features import FeaturePlan
    from fds.gcpolicy import Freezer

    plan = FeaturePlan(bf.DEFAULT_SPECS, timezone="Asia/Seoul")
    with Freezer() as fz:
        for _step, _steps, chunk in bf.stream_chunks(cards, days, seed=1):
            for _ts, kind, rec in chunk:
                if kind:
                    plan.on_label(rec)
                else:
                    plan.compute(rec)
                    fz.tick()
    if mode == "frozen":
        gc.freeze()  # what fds.cli.main does when the console script's command returns
    print(f"{len(gc.get_objects()) + gc.get_freeze_count()} {time.time()}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cards", type=int, nargs="+", default=[200_000, 500_000])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS, help="the report (markdown)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2])
        return 0
    cmd = shlex.join(["python", "benchmarks/bench_exit.py", *sys.argv[1:]])
    rows = []
    for cards in args.cards:
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(cards), str(args.days), mode],
                stdout=subprocess.PIPE, text=True, check=True,
            )  # fmt: skip
            exited = time.time()
            objects, returned = out.stdout.split()
            rows.append((cards, mode, int(objects), exited - float(returned)))
            print(f"{cards:,} cards, {mode}: exit took {rows[-1][3]:.2f} s", flush=True)
    lines = [
        "# Process exit with a large feature state",
        "",
        f"Command: `{cmd}`",
        "",
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end. {args.days} days of the feature benchmark's stream "
        "per run, the default feature set, inside the engine's Freezer.",
        "",
        "| cards | at exit | objects held | return to exit |",
        "|---:|---|---:|---:|",
    ]
    lines += [f"| {c:,} | {MODES[m]} | {n:,} | {dt:.2f} s |" for c, m, n, dt in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
