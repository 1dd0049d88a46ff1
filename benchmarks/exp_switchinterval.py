"""Does a shorter GIL switch interval lower `fds run`'s latency? Interleaved rounds.

    python benchmarks/exp_switchinterval.py [--rounds 4] [--intervals 0.005,0.0005] [--out FILE]

kafka-python 3 runs its network I/O on threads of its own, which wait for the interpreter while
the decision loop runs (5 ms switch interval by default). Each round runs the latency scenario
of bench_kafka.py (default rules and model, 2,000 tx/s for 10 s after the ramp) once per
interval, `fds run` started with `sys.setswitchinterval(interval)`; the rounds interleave the
settings, since single runs of one setting vary widely on this shared machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kafka as bk

from fds.streams import kafka_kit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--intervals", default="0.005,0.0005")
    ap.add_argument("--out", default=str(bk.REPO / "benchmarks" / "results" / "switchinterval.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_switchinterval.py", *sys.argv[1:]])
    bootstrap = kafka_kit.up()
    pipeline = bk.default_pipeline()

    def make(interval: float):  # fds run under the given switch interval
        def cmd(topics: dict[str, str]) -> list[str]:
            argv = bk.fds_cmd(bootstrap, topics, *pipeline)[3:]  # after "python -m module"
            code = (f"import runpy, sys; sys.setswitchinterval({interval}); "
                    f"sys.argv = ['fds', *{argv!r}]; "
                    "runpy.run_module('fds.streams.kafka', run_name='__main__')")  # fmt: skip
            return [sys.executable, "-c", code]

        return cmd

    rows = []
    for r in range(1, args.rounds + 1):
        for interval in (float(v) for v in args.intervals.split(",")):
            lat = bk.measure_latency(bootstrap, make(interval), bk.REPO, 2000.0, 10.0)
            tot = lat["total"]
            rows.append(
                f"| {r} | {interval * 1000:g} ms | {bk.pct(tot, 0.5):.0f} | "
                f"{bk.pct(tot, 0.99):.0f} | {bk.pct(tot, 0.999):.0f} |"
            )
            print(rows[-1], flush=True)
    lines = [
        "# `fds run` latency under two GIL switch intervals, interleaved",
        "",
        f"Command: `{command}`. Produce to decision out (as in kafka.md), ms.",
        "",
        "| round | switch interval | p50 | p99 | p99.9 |",
        "|---:|---|---:|---:|---:|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
