"""Single decisions that pay for a dict's resize: the feature plan with a million entities.

    python benchmarks/exp_state_resize.py [--entities 1500000] [--rules FILE]
                                          [--out benchmarks/results/state_resize.md]

Feeds the default feature set (bench_features.DEFAULT_SPECS; ``--rules``: a rules file's,
e.g. rules/default.yaml, whose card and device count each other's entity) one transaction
per new card (20 per second of event time, 100,000 merchants, up to 500,000 devices, 62,500
IPs) with the cyclic GC off,
so that no collection is counted, and lists every ``compute`` call over 10 ms of wall time with
the entity counts at that moment. Beside it, the same number of insertions into a plain dict
of string keys, the same way: where the two line up, the pause is a resize of the plan's
entity-state dict (a CPython dict doubles its table at 2/3 full, copying every entry in one
call), and the five slowest calls of all. Since 2026-12-06 (third session) the states are in
shards (fds/features/shards.py) and the plan interns no entity key: the pauses are gone.
A check of the latency that issue 3's state must keep, not a target's figure.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_features as bf

from fds.features.plan import FeaturePlan
from fds.rules.ruleset import load_ruleset

RESULTS = Path(__file__).parent / "results" / "state_resize.md"
SLOW_S = 0.010
T0 = 1767225600.0  # 2026-01-01 00:00 UTC


def plan_pauses(n: int, specs: list[Any]) -> tuple[list[tuple[int, int, int, float]], list[float]]:
    """(event, cards held, devices held, ms) of each ``compute`` over SLOW_S, and every
    call's time in ms."""
    plan = FeaturePlan(specs, timezone="Asia/Seoul")
    slow, clock, times = [], time.perf_counter, array("d", bytes(8 * n))
    for i in range(n):
        tx = {
            "tx_id": f"t{i:09d}", "ts": T0 + i * 0.05, "card_id": f"c{i:09d}",
            "merchant_id": f"m{i % 100_000:06d}", "device_id": f"d{i % 500_000:07d}",
            "amount": 10.0 + i % 7, "country": "KR", "ip": f"10.{i % 250}.{i // 250 % 250}.9",
        }  # fmt: skip
        t = clock()
        plan.compute(tx)
        dt = clock() - t
        times[i] = dt * 1e3
        if dt > SLOW_S:
            sizes = plan.state_sizes()
            slow.append((i, sizes["card_id"], sizes["device_id"], dt * 1e3))
    return slow, sorted(times)


def dict_pauses(n: int) -> list[tuple[int, float]]:
    """(size after, ms) of each insertion into a plain dict over SLOW_S."""
    d: dict[str, list[int]] = {}
    slow, clock = [], time.perf_counter
    for i in range(n):
        k = f"c{i:09d}"
        t = clock()
        d[k] = [i]
        dt = clock() - t
        if dt > SLOW_S:
            slow.append((len(d), dt * 1e3))
    return slow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entities", type=int, default=1_500_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--rules", type=Path, help="the feature set of this rules file (default: bench_features')"
    )
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_state_resize.py", *sys.argv[1:]])
    gc.disable()  # (a collection's pause is another matter: fds.gcpolicy)
    plain = dict_pauses(args.entities)
    gc.collect()
    specs = bf.DEFAULT_SPECS if args.rules is None else load_ruleset(args.rules).features
    pauses, times = plan_pauses(args.entities, specs)
    n = len(times)
    resized = {size for size, _ in plain}
    lines = [
        "# Decisions that pay for a dict's resize (a million entities)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {bf.machine()}",
        "",
        f"{args.entities:,} transactions, each of a new card, through "
        + ("the default feature set" if args.rules is None else f"the features of {args.rules}")
        + " with the cyclic GC off; every `compute` call over 10 ms (wall time):",
        "",
        "| event | cards held | devices held | ms | a plain dict of string keys resized at the "
        "same size |",
        "|---:|---:|---:|---:|---|",
        *(
            f"| {i:,} | {cards:,} | {devices:,} | {ms:.1f} | "
            f"{'yes' if cards in resized else 'no'} |"
            for i, cards, devices, ms in pauses
        ),
        "",
        "The plain dict's insertions over 10 ms (size after, ms): "
        + ", ".join(f"{size:,}: {ms:.1f}" for size, ms in plain),
        "",
        "Every `compute` call (ms): median {:.3f}, p99.9 {:.3f}, p99.99 {:.3f}; the five "
        "slowest {}.".format(
            times[n // 2],
            times[int(n * 0.999)],
            times[int(n * 0.9999)],
            ", ".join(f"{ms:.1f}" for ms in reversed(times[-5:])),
        ),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
