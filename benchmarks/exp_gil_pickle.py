"""Does another thread run while the feature state is pickled or unpickled?

    python benchmarks/exp_gil_pickle.py [--cards 100000] [--days 10] [--rounds 3]
                                        [--out benchmarks/results/gil_pickle.md]

kafka-python sends a group member's heartbeats from a thread of its own; the takeover of
partitions unpickles another instance's snapshot (README, "partitions that move"), and a
checkpoint written on the loop (``--foreground-checkpoints``) pickles the state. ``pickle``'s
``loads``/``dumps`` are one C call that holds the interpreter throughout: no heartbeat goes out
meanwhile, and a member silent for its session timeout is evicted. ``fds.gcpolicy``'s
``loads``/``dumps`` go through Python-level reads and writes (one per 64 KB frame, where the
interpreter can switch threads) with the collector paused.

Here a feature plan with the benchmarks' default set (benchmarks/bench_features.py) is fed
``--cards`` cards for ``--days`` days; its state is then pickled and unpickled both ways, in
turn, ``--rounds`` times, while a thread that stands in for the heartbeat sleeps 10 ms at a time
and notes how long each of its turns really took: the longest is how long it was held off.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import DEFAULT_SPECS, stream_chunks

from fds import gcpolicy
from fds.features import FeaturePlan

RESULTS = Path(__file__).parent / "results" / "gil_pickle.md"


def held_off(work: Callable[[], Any]) -> tuple[float, float]:
    """(seconds ``work`` took, the longest turn of a thread sleeping 10 ms at a time)."""
    turns: list[float] = []
    stop = threading.Event()

    def beat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            time.sleep(0.01)
            now = time.monotonic()
            turns.append(now - last)
            last = now

    t = threading.Thread(target=beat)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    got = work()
    took = time.monotonic() - t0
    time.sleep(0.1)
    stop.set()
    t.join()
    del got
    gc.collect()
    return took, max(turns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_gil_pickle.py", *sys.argv[1:]])
    plan = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul")
    n = 0
    for step, steps, chunk in stream_chunks(args.cards, args.days, 1):
        for _ts, kind, rec in chunk:
            (plan.on_label if kind else plan.compute)(rec)
            n += not kind
        if step % 8 == 7:
            print(f"day {(step + 1) / 4:.0f}/{steps / 4:.0f}: {n:,} tx", flush=True)
    body = gcpolicy.loads(plan.state_dict()["state"])  # (the object a checkpoint pickles)
    data = pickle.dumps(body, protocol=5)
    del plan
    gc.collect()
    ways: dict[str, Callable[[], Any]] = {
        "pickle.dumps": lambda: pickle.dumps(body, protocol=5),
        "gcpolicy.dumps": lambda: gcpolicy.dumps(body),
        "pickle.loads": lambda: pickle.loads(data),
        "gcpolicy.loads": lambda: gcpolicy.loads(data),
    }
    got: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    for rnd in range(args.rounds):
        for w, work in ways.items() if rnd % 2 == 0 else reversed(ways.items()):
            got[w].append(held_off(work))
            print(f"round {rnd + 1} {w}: {got[w][-1][0]:.2f} s, held off "
                  f"{got[w][-1][1]:.3f} s", flush=True)  # fmt: skip
    med = {w: (statistics.median(t for t, _ in v), max(h for _, h in v)) for w, v in got.items()}
    lines = [
        "# Pickling the feature state: does another thread (the heartbeat) run meanwhile?",
        "",
        f"Command: `{command}`",
        "",
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared "
        f"machine). The state of the benchmarks' default feature set after {args.cards:,} cards "
        f"x {args.days} days ({n:,} transactions): {len(data) / 2**20:,.0f} MB pickled. "
        f"{args.rounds} rounds, the order reversed every other round; a thread sleeping 10 ms "
        "at a time stands in for kafka-python's heartbeat thread.",
        "",
        "| how | time (median) | longest the other thread was held off (worst round) |",
        "|---|---:|---:|",
        *(f"| `{w}` | {t:.2f} s | {h:.3f} s |" for w, (t, h) in med.items()),
        "",
        "With `pickle` the other thread waits for the whole call; with `fds.gcpolicy` (Python "
        "reads and writes per 64 KB frame, the collector paused meanwhile) it runs between "
        "frames. A group member is evicted when it sends no heartbeat "
        'for its session timeout (10 s by default, 3 s in README\'s "Under 5 seconds").',
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
