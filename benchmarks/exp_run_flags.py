"""`fds run`'s latency under variants of its flags, interleaved rounds, with the CPU each used.

    python benchmarks/exp_run_flags.py --variant 'per batch=--commit-interval 0' \\
        --variant '100 ms=--commit-interval 100' [--rounds 4] [--seconds 15] [--out FILE.md]

Each round runs the latency scenario of bench_kafka.py (default rules and model, a registry
with one trained version, 2,000 tx/s after a 2-s ramp, the local broker kit) once per variant,
`fds run` started with the variant's extra flags; rounds interleave the variants, since single
runs of one setting vary widely on this shared machine. `--load-tick-ms MS` among FLAGS
sets the load generator's tick for that variant (bench_kafka.py's
`--load-tick-ms`; 0: a send and a sleep per record) instead of a flag of `fds run`, and
`--fds-tree DIR` runs that variant's `fds run` from the `fds` package in DIR (another version
of the code, say `git archive COMMIT fds | tar -x -C DIR`; rules and model still read from
this tree). Besides
the latency (produce to the broker's append time of the decision), each row gives the CPU
seconds `fds run` and the broker used in it: on two cores shared by the broker, the load and
fds, CPU one saves is latency the others gain.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kafka as bk

from fds.streams import kafka_kit


def interleaved(
    variants: list[tuple[str, Callable[[dict[str, str]], list[str]]]],
    rounds: int,
    rate: float,
    seconds: float,
) -> list[str]:
    """Table rows (round, variant, p50, p99, p99.9, max, fds run CPU, broker CPU) of the latency
    scenario run ``rounds`` times per variant, the variants interleaved in each round; a variant
    is a label and the command of the consumer given its topics."""
    bootstrap = kafka_kit.up()
    broker = kafka_kit.status().pid

    def broker_cpu() -> float:
        return 0.0 if broker is None else bk.cpu_s(broker)

    rows = []
    for r in range(1, rounds + 1):
        for label, cmd in variants:
            b0, c0 = broker_cpu(), os.times().children_user + os.times().children_system
            lat = bk.measure_latency(bootstrap, cmd, bk.REPO, rate, seconds)
            b1, c1 = broker_cpu(), os.times().children_user + os.times().children_system
            tot = lat["total"]
            rows.append(
                f"| {r} | {label} | {bk.pct(tot, 0.5):.0f} | {bk.pct(tot, 0.99):.0f} | "
                f"{bk.pct(tot, 0.999):.0f} | {tot[-1]:.0f} | {c1 - c0:.1f} s | {b1 - b0:.1f} s |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, metavar="LABEL=FLAGS")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    variants = [(v.partition("=")[0], shlex.split(v.partition("=")[2])) for v in args.variant]
    command = shlex.join(["python", "benchmarks/exp_run_flags.py", *sys.argv[1:]])
    bootstrap = kafka_kit.up()
    pipeline = bk.default_pipeline()

    def consumer(flags: list[str]) -> Callable[[dict[str, str]], list[str]]:
        tick, tree = bk.TICK_S, None
        if "--load-tick-ms" in flags:  # the load's, not fds run's
            i = flags.index("--load-tick-ms")
            tick, flags = float(flags[i + 1]) / 1000, flags[:i] + flags[i + 2 :]
        if "--fds-tree" in flags:  # which fds runs, not a flag of fds run
            i = flags.index("--fds-tree")
            tree, flags = Path(flags[i + 1]).resolve(), flags[:i] + flags[i + 2 :]

        def cmd(topics: dict[str, str]) -> list[str]:
            bk.TICK_S = tick  # (called before the load starts)
            run = bk.fds_cmd(bootstrap, topics, *pipeline, *flags)
            return run if tree is None else ["env", f"PYTHONPATH={tree}", *run]

        return cmd

    rows = interleaved(
        [(label, consumer(flags)) for label, flags in variants], args.rounds, args.rate,
        args.seconds,
    )  # fmt: skip
    lines = [
        "# `fds run` latency under variants of its flags, interleaved",
        "",
        f"Command: `{command}`",
        "",
        f"Load {args.rate:,.0f} tx/s for {args.seconds:g} s after the ramp; produce to decision "
        "out (as in kafka.md), ms. CPU: what `fds run` (its whole life: start, warm-up, load, "
        "stop) and the broker used during the scenario.",
        "",
        "| round | variant | p50 | p99 | p99.9 | max | fds run CPU | broker CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Variants: "
        + "; ".join(f"*{lab}*: `{shlex.join(f) or '(defaults)'}`" for lab, f in variants),
        "",
    ]
    text = "\n".join(lines)
    if args.out is not None:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
