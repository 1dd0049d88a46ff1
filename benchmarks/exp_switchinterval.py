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
from exp_run_flags import interleaved

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

    intervals = [float(v) for v in args.intervals.split(",")]
    rows = interleaved(
        [(f"{i * 1000:g} ms", make(i)) for i in intervals], args.rounds, 2000.0, 10.0
    )
    lines = [
        "# `fds run` latency under two GIL switch intervals, interleaved",
        "",
        f"Command: `{command}`. Produce to decision out (as in kafka.md), ms.",
        "",
        "| round | switch interval | p50 | p99 | p99.9 | max | fds run CPU | broker CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
