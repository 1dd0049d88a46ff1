"""This tree's feature kernel against an older one (first: the untyped), both compiled, one
process each.

    python benchmarks/exp_kernel_typed.py --before DIR [--rounds 3] [--days 30] [--cards 20000]
                                          [--rules FILE] [--out benchmarks/results/kernel_typed.md]

``DIR/basefeat`` is an older ``fds/features`` with its ``fds.features.`` imports renamed
``basefeat.`` (made as for ``bench_features.py --before``; see benchmarks/results/features.md).
Each round runs the older plan and this tree's plan in turn, each alone in a fresh process
(which goes first alternates), both with their kernels built first (own caches under /tmp):
the simulator's stream (``--days`` x ``--cards``, labels merged in), CPU time per ``compute``
with the engine's GC policy, over the whole stream and over its last 7 days. ``--rules``: the
features of a rules file instead of the default set (any older plan against this tree's).
Two plans in one process were no fair race here: three copies of one kernel interleaved in a
process differed by up to 25% in the last 7 days, by their place in the rotation, not by
their code.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import DEFAULT_SPECS, machine, merged


def one(which: str, before: str, days: int, cards: int, rules: Path | None) -> dict[str, float]:
    """(A child process.) The figures of one plan: ``old`` (``basefeat``) or ``new``."""
    if which == "old":
        sys.path.insert(0, before)
        import basefeat  # type: ignore[import-not-found]
        from basefeat.kernel import Compiler  # type: ignore[import-not-found]

        plan_cls, cache = basefeat.FeaturePlan, "/tmp/fds-exp-kernel-old"
    else:
        from fds.features import FeaturePlan as plan_cls
        from fds.features.kernel import Compiler

        cache = "/tmp/fds-exp-kernel-new"
    from fds.gcpolicy import Freezer
    from fds.streams.simulator import simulate

    specs = DEFAULT_SPECS
    if rules is not None:
        from fds.rules import load_ruleset

        specs = load_ruleset(rules).features
    compiler = Compiler(cache)
    plan_cls(specs, timezone="Asia/Seoul", compiler=compiler)
    assert compiler.wait(), "the kernel's build failed"
    plan = plan_cls(specs, timezone="Asia/Seoul", compiler=compiler)
    assert plan.compiled
    sim = simulate(days=days, cards=cards, seed=1)
    for tx in sim.transactions:
        tx["amount"] = float(tx["amount"])
    events = merged(sim)
    steady = sim.end - 7 * 86400
    gc.collect()
    gc.freeze()  # (the stream is the harness's: see bench_features.speed)
    freezer = Freezer()
    clock = time.process_time
    cpu, n = [0.0, 0.0], [0, 0]
    for ts, kind, rec in events:
        if kind:
            plan.on_label(rec)
            continue
        c0 = clock()
        plan.compute(rec)
        freezer.tick()
        dt = clock() - c0
        cpu[0] += dt
        n[0] += 1
        if ts >= steady:
            cpu[1] += dt
            n[1] += 1
    return {"whole": cpu[0] / n[0] * 1e6, "steady": cpu[1] / n[1] * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="directory holding basefeat/")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--cards", type=int, default=20_000)
    ap.add_argument("--rules", type=Path, help="a rules file's features (default: the default set)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/kernel_typed.md")
    ap.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.before, args.days, args.cards, args.rules)))
        return 0
    command = "python " + shlex.join(["benchmarks/exp_kernel_typed.py", *sys.argv[1:]])
    print(command, flush=True)
    rows = []
    for r in range(args.rounds):
        got = {}
        for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", which, *sys.argv[1:]],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            got[which] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {r + 1}: {which} {got[which]}", flush=True)
        rows.append(got)
    lines = [
        "# Feature kernel: this tree against an older one (issue 3)",
        "",
        f"Command: `{command}`",
        "",
        machine(),
        "",
        f"Stream: the simulator, {args.days} days x {args.cards:,} cards, "
        f"{f'the features of `{args.rules}`' if args.rules else 'the default feature set'}; "
        "each plan alone in its own process, compiled (kernels built first), CPU time per "
        f"`compute` with the engine's GC policy; before: `{args.before}/basefeat`.",
        "",
        "| round | before, whole stream | this tree, whole stream | before, last 7 days "
        "| this tree, last 7 days | speed-up, whole / last 7 days |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r, got in enumerate(rows, 1):
        o, w = got["old"], got["new"]
        lines.append(
            f"| {r} | {o['whole']:.2f} us | {w['whole']:.2f} us | {o['steady']:.2f} us "
            f"| {w['steady']:.2f} us | {o['whole'] / w['whole']:.2f}x / "
            f"{o['steady'] / w['steady']:.2f}x |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
