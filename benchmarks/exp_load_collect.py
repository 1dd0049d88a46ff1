"""After a large feature state is loaded, do the collector's next passes hold the interpreter?

    python benchmarks/exp_load_collect.py [--cards 100000] [--days 10] [--rounds 2]
                                          [--out benchmarks/results/load_collect.md]

A takeover loads another instance's snapshot while kafka-python's heartbeat thread must keep
the member in its group. ``fds.gcpolicy.loads`` unpickles with the collector paused; every
container it made is then young, and the collections that follow (the young one after the
next few hundred allocations, then the older ones) visit them all, each one call holding the
interpreter. Since this change a plan loads its state frozen (``loads(..., freeze=True)``: the
plan holds no reference cycle, so nothing frozen outlives it). Each round loads the state both
ways, in turn (the order reversed every other round), then decides the next ``--follow``
transactions, while a thread sleeping 10 ms at a time notes how long each of its turns took;
the collector's own passes are timed with ``gc.callbacks``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import DEFAULT_SPECS, stream_chunks
from exp_gil_pickle import held_off

from fds import gcpolicy
from fds.features import FeaturePlan

RESULTS = Path(__file__).parent / "results" / "load_collect.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--follow", type=int, default=20_000, help="transactions decided after")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_load_collect.py", *sys.argv[1:]])
    plan = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul")
    n, after = 0, []
    for step, steps, chunk in stream_chunks(args.cards, args.days + 1, 1):
        for _ts, kind, rec in chunk:
            if step >= 4 * args.days:  # the last day: decided after the load
                if not kind and len(after) < args.follow:
                    after.append(rec)
                continue
            (plan.on_label if kind else plan.compute)(rec)
            n += not kind
        if step % 8 == 7:
            print(f"day {(step + 1) / 4:.0f}/{steps / 4:.0f}: {n:,} tx", flush=True)
    sd = plan.state_dict()
    del plan
    gc.collect()
    passes: list[float] = []
    started: list[float] = []

    def timing(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            passes.append(time.perf_counter() - started.pop())

    gc.callbacks.append(timing)
    real = gcpolicy.loads

    def load_and_go(freeze: bool) -> Any:
        def loads(data: bytes, *, freeze_: bool = freeze, **_: Any) -> Any:
            return real(data, freeze=freeze_)

        gcpolicy.loads = loads  # type: ignore[assignment]
        try:
            p = FeaturePlan(DEFAULT_SPECS, timezone="Asia/Seoul")
            p.load_state_dict(sd)
        finally:
            gcpolicy.loads = real  # type: ignore[assignment]
        for rec in after:
            p.compute(rec)
        return p

    ways = {"collected (before)": False, "frozen (now)": True}
    got: dict[str, list[tuple[float, float, float]]] = {w: [] for w in ways}
    for rnd in range(args.rounds):
        for w, freeze in ways.items() if rnd % 2 == 0 else reversed(ways.items()):
            passes.clear()
            took, held = held_off(lambda f=freeze: load_and_go(f))
            gc.unfreeze()
            gc.collect()
            got[w].append((took, held, max(passes, default=0.0)))
            print(f"round {rnd + 1} {w}: {took:.2f} s, held off {held:.3f} s, longest "
                  f"collection {got[w][-1][2]:.3f} s", flush=True)  # fmt: skip
    gc.callbacks.remove(timing)
    lines = [
        "# After loading a large feature state: the collector's next passes",
        "",
        f"Command: `{command}`",
        "",
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared "
        f"machine). The state of the benchmarks' default feature set after {args.cards:,} "
        f"cards x {args.days} days ({n:,} transactions) loaded into a plan "
        f"(`FeaturePlan.load_state_dict`), then the next {len(after):,} transactions decided; "
        f"{args.rounds} rounds, the order reversed every other round; a thread sleeping 10 ms "
        "at a time stands in for kafka-python's heartbeat thread.",
        "",
        "| loaded state | load + decisions (worst) | longest the other thread was held off "
        "(worst) | longest collection (worst) |",
        "|---|---:|---:|---:|",
        *(
            f"| {w} | {max(t for t, _, _ in v):.2f} s | {max(h for _, h, _ in v):.3f} s | "
            f"{max(c for _, _, c in v):.3f} s |"
            for w, v in got.items()
        ),
        "",
        "Collected: every container the load made is young, and the collections that follow "
        "visit them all, one call each. Frozen: the garbage collected first, then `gc.freeze()` "
        "right after the load, the collector still paused; the collections that follow visit "
        "what was made since (the collection first is inside the load's time).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
