"""Does loading a model version hold the decision loop up?

    python benchmarks/exp_model_load.py [--days 30] [--cards 6000] [--seconds 3] [--rounds 2]
                                        [--out benchmarks/results/model_load.md]

A scorer's watcher thread loads each new version (``fds.models.registry.load_verified``) while
the decision loop runs: ``pickle.loads`` is one C call that holds the interpreter for the whole
artifact, so no decision is made meanwhile. ``fds.gcpolicy.loads`` reads through Python calls,
one per 64 KB frame, where threads switch. Here the shipped specs are trained as in
benchmarks/bench_model.py; then, for each spec and each way of unpickling (in turn, the order
reversed every other round), a thread loads its artifact back to back for ``--seconds`` while
the main thread stands in for the decision loop (a short piece of Python work per "decision",
each gap between two of them noted): the longest gap and the 99.9th percentile.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import serving_and_training, snapshots

from fds import gcpolicy

RESULTS = Path(__file__).parent / "results" / "model_load.md"


def gaps_while(load: Any, data: bytes, seconds: float) -> tuple[float, float, int]:
    """(longest gap ms, p99.9 gap ms, loads done) of a stand-in decision loop while a thread
    loads ``data`` with ``load`` back to back."""
    stop = threading.Event()
    loads = [0]

    def loader() -> None:
        while not stop.is_set():
            load(data)
            loads[0] += 1

    th = threading.Thread(target=loader)
    th.start()
    gaps = []
    perf = time.perf_counter
    end = perf() + seconds
    last = perf()
    work = {"a": 1.0}
    while last < end:
        for _ in range(20):  # ~ a few microseconds of Python, as a decision's share
            work["a"] = work.get("a", 0.0) * 1.0000001
        now = perf()
        gaps.append(now - last)
        last = now
    stop.set()
    th.join()
    gaps.sort()
    return gaps[-1] * 1e3, gaps[int(len(gaps) * 0.999)] * 1e3, loads[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--cards", type=int, default=6000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_model_load.py", *sys.argv[1:]])
    txs, feats, labels = snapshots(args.days, args.cards)
    ways = {"pickle.loads": pickle.loads, "gcpolicy.loads": gcpolicy.loads}
    rows = []
    for spec in ("default", "tree", "forest"):
        data = serving_and_training(spec, txs, feats, labels)["_model"]
        got: dict[str, list[tuple[float, float, int]]] = {w: [] for w in ways}
        for rnd in range(args.rounds):
            for w, load in ways.items() if rnd % 2 == 0 else reversed(ways.items()):
                longest, p999, n = gaps_while(load, data, args.seconds)
                got[w].append((longest, p999, n))
                print(f"{spec} round {rnd + 1} {w}: longest gap {longest:.2f} ms, "
                      f"p99.9 {p999:.3f} ms, {n} loads", flush=True)  # fmt: skip
        for w, v in got.items():
            rows.append(
                f"| {spec} | {len(data):,} | `{w}` | {max(g for g, _, _ in v):.2f} | "
                f"{max(p for _, p, _ in v):.3f} | {sum(n for _, _, n in v):,} |"
            )
    lines = [
        "# Loading a model version: is the decision loop held up?",
        "",
        f"Command: `{command}`",
        "",
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared "
        f"machine). Each spec trained on {len(txs):,} simulated transactions as in "
        f"bench_model.py; per way of unpickling, {args.rounds} runs of {args.seconds:g} s in "
        "which a thread loads the artifact back to back while the main thread makes stand-in "
        "decisions; the worst of the runs.",
        "",
        "| spec | artifact (bytes) | unpickled by | longest gap (ms) | p99.9 gap (ms) | loads |",
        "|---|---:|---|---:|---:|---:|",
        *rows,
        "",
        "The shipped specs' artifacts are River objects that unpickle through Python code, "
        "where threads switch anyway: the two ways differ by no more than the runs' spread "
        "(the longest gaps are pauses of the machine and collections, in either column), so "
        "the registry keeps `pickle.loads` (a load held the decision loop up for the whole "
        "artifact only where a state is plain containers: the feature state, gil_pickle.md).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
