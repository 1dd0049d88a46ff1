"""Where `fds run`'s decision loop stalls under a steady load: a timeline of its parts.

    python benchmarks/trace_kafka_loop.py [--rate 2000] [--seconds 60] [--out FILE.md]

Runs the latency scenario of bench_kafka.py (default rules and model, a registry with one
trained version, a paced load, the local broker kit) with `fds run` wrapped so that every
``poll``, ``_process`` (one batch), flush, blocking and asynchronous commit, checkpoint and
state publish is timed, and so is every garbage-collector pass. Reports the latency, each
part's time per call, and the stalls: gaps of more than ``--stall-ms`` between two polls, with
what the loop did in them. This is how the drains that decided the p99 were found (kafka.md).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import scratch_dir

PARTS = {
    "KafkaConsumer": ("poll", "commit", "commit_async"),
    "Runner": ("_process", "_await", "_flush", "_settle", "checkpoint", "_publish_state"),
}


def traced_child(argv: list[str], out: str) -> None:
    """``fds run ...`` (``argv``) with its loop's parts timed."""
    from kafka import KafkaConsumer

    import fds.streams.kafka as fk

    events: list[tuple[str, float, float, int | None]] = []
    passes: list[tuple[str, float, int]] = []
    for cls, names in ((KafkaConsumer, PARTS["KafkaConsumer"]), (fk.Runner, PARTS["Runner"])):
        for name in names:
            f = getattr(cls, name)

            def timed(*a: Any, _f: Any = f, _n: str = name, **k: Any) -> Any:
                t0 = time.time()
                try:
                    return _f(*a, **k)
                finally:
                    n = len(a[1]) if _n == "_process" else None
                    events.append((_n, t0, time.time(), n))

            setattr(cls, name, timed)
    gc.callbacks.append(lambda phase, info: passes.append((phase, time.time(), info["generation"])))
    import atexit

    atexit.register(lambda: Path(out).write_text(json.dumps({"events": events, "gc": passes})))
    from fds.cli import main as fds_main

    sys.argv = ["fds", *argv]  # the console script's call
    sys.exit(fds_main())


def pctl(vals: list[float], q: float) -> float:
    return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else float("nan")


def report(trace: dict[str, Any], stall_ms: float) -> list[str]:
    ev = sorted(trace["events"], key=lambda e: e[1])
    t0 = ev[0][1]
    lines = [
        "| part | calls | p50 | p99 | max | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (*PARTS["KafkaConsumer"], *PARTS["Runner"]):
        ds = sorted((e[2] - e[1]) * 1000 for e in ev if e[0] == name)
        if ds:
            lines.append(
                f"| `{name}` | {len(ds):,} | {pctl(ds, 0.5):.2f} ms | {pctl(ds, 0.99):.2f} ms | "
                f"{ds[-1]:.1f} ms | {sum(ds):,.0f} ms |"
            )
    polls = [e for e in ev if e[0] == "poll"]
    lines += ["", f"Stalls: more than {stall_ms:g} ms between the end of a poll and the next one.",
              "", "| at (s) | gap | inside it (ms) |", "|---:|---:|---|"]  # fmt: skip
    for a, b in itertools.pairwise(polls):
        gap = (b[1] - a[2]) * 1000
        if gap > stall_ms:
            inside = [
                e for e in ev if a[2] <= e[1] < b[1] and e[0] not in ("_settle", "_publish_state")
            ]
            what = ", ".join(
                f"{e[0]}{'' if e[3] is None else f' ({e[3]} records)'} {1000 * (e[2] - e[1]):.1f}"
                for e in inside
            )
            lines.append(f"| {a[2] - t0:.2f} | {gap:.1f} ms | {what} |")
    start: dict[int, float] = {}
    full = []
    for phase, t, gen in trace["gc"]:
        if phase == "start":
            start[gen] = t
        elif gen == 2 and gen in start:
            full.append((start[gen] - t0, (t - start[gen]) * 1000))
    lines += ["", "Full (generation 2) collections: "
              + (", ".join(f"{d:.1f} ms at {at:.1f} s" for at, d in full) or "none")]  # fmt: skip
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--stall-ms", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        traced_child(args.child, os.environ["FDS_TRACE_OUT"])
        return 0
    import bench_kafka as bk

    from fds.streams import kafka_kit

    command = shlex.join(["python", "benchmarks/trace_kafka_loop.py", *sys.argv[1:]])
    bootstrap = kafka_kit.up()
    pipeline = bk.default_pipeline()
    trace_file = scratch_dir("fds-trace-") / "trace.json"
    os.environ["FDS_TRACE_OUT"] = str(trace_file)

    def cmd(topics: dict[str, str]) -> list[str]:
        c = bk.fds_cmd(bootstrap, topics, *pipeline)
        i = c.index("-m")
        return [*c[:i], __file__, "--child", *c[i + 2 :]]  # (from "run", after "-m MODULE")

    lat = bk.measure_latency(bootstrap, cmd, bk.REPO, args.rate, args.seconds)
    tot = lat["total"]
    lines = [
        "# A timeline of `fds run`'s decision loop under a steady load",
        "",
        f"Command: `{command}`",
        "",
        f"Load {args.rate:,.0f} tx/s for {args.seconds:g} s (after a {bk.RAMP_S:g}-s ramp), "
        "produce to the broker's append time of the decision: "
        f"p50 {pctl(tot, 0.5):.0f} ms, p99 {pctl(tot, 0.99):.0f} ms, "
        f"p99.9 {pctl(tot, 0.999):.0f} ms, max {tot[-1]:.0f} ms (the timing wrapper adds a few "
        "microseconds per call). Its parts (bench_kafka.py): *to decide* = produce, broker, "
        "fetch and the wait behind the batch before; *decide* = the engine; *to broker* = the "
        "rest of the batch, the send and the broker's append.",
        "",
        "| part | p50 | p99 | p99.9 | max |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {part} | {pctl(v, 0.5):.1f} ms | {pctl(v, 0.99):.1f} ms | "
            f"{pctl(v, 0.999):.1f} ms | {v[-1]:.1f} ms |"
            for part, v in lat.items()
            if part in ("to decide", "decide", "to broker")
        ),
        "",
        *report(json.loads(trace_file.read_text()), args.stall_ms),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
