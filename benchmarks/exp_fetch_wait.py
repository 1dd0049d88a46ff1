"""CPU of `fds run` under a light load, and what fetch_min_bytes / fetch_max_wait_ms trade for it.

    python benchmarks/exp_fetch_wait.py [--rate 400] [--seconds 30] [--rounds 2]
                                        [--out benchmarks/results/fetch_wait.md]

A soak run found `fds run` using 35-40% of a core at 400 tx/s (~0.9 ms of CPU per transaction,
against ~63 us at saturation): each fetch answers with the few records that came, so
kafka-python's per-poll work dominates. Each setting runs `fds run` (default rules and model,
at-least-once) under the same paced load; reported: the process's CPU time per transaction over
the paced load (user + system, /proc), its polls (decided batches), and produce-to-decision
latency (as bench_kafka.py measures it). Settings alternate within a round (a shared machine).
Needs the local broker kit (`fds kafka up`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kafka import (
    REPO,
    WARM,
    count,
    cpu_s,
    default_pipeline,
    fds_cmd,
    fresh_topics,
    paced_producer,
    pct,
    produce,
    read_topic,
    run_env,
)

RESULTS = REPO / "benchmarks" / "results" / "fetch_wait.md"
#: (fetch_min_bytes, fetch_max_wait_ms): kafka-python's defaults first
SETTINGS = [(1, 500), (16384, 20), (65536, 50)]


def trial(
    bootstrap: str, pipeline: list[str], flags: list[str], rate: float, seconds: float
) -> dict[str, float]:
    t = fresh_topics(bootstrap)
    cmd = fds_cmd(bootstrap, t, *pipeline, *flags)
    proc = subprocess.Popen(cmd, cwd=REPO, env=run_env(REPO))
    load = paced_producer(bootstrap)
    produce(bootstrap, t["transactions"], WARM, producer=load)
    while count(bootstrap, t["decisions"]) < WARM:
        time.sleep(0.2)  # polling for the group join, not a fixed wait
    n = int(rate * seconds)
    c0 = cpu_s(proc.pid)
    produce(bootstrap, t["transactions"], n, rate=rate, start=WARM, producer=load)
    load.close()
    deadline = time.monotonic() + 60
    while count(bootstrap, t["decisions"]) < WARM + n and time.monotonic() < deadline:
        time.sleep(0.2)
    cpu = cpu_s(proc.pid) - c0
    proc.terminate()
    proc.wait(20)
    sent = {
        orjson.loads(r.value)["tx_id"]: r.timestamp
        for r in read_topic(bootstrap, t["transactions"])
    }
    lat, batches = [], set()
    for r in read_topic(bootstrap, t["decisions"]):
        out = orjson.loads(r.value)
        if out["tx_id"] >= f"tx{WARM:09d}":
            lat.append(float(r.timestamp - sent[out["tx_id"]]))
            batches.add(out["decided_at"][:23])  # a batch's decisions share their ms, mostly
    lat.sort()
    return {
        "cpu_us_per_tx": cpu / n * 1e6,
        "cpu_share": cpu / seconds,
        "batches_per_s": len(batches) / seconds,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows: list[tuple[str, int, dict[str, float]]] = []
    pipeline = default_pipeline()
    for rnd in range(1, args.rounds + 1):
        for least, wait in SETTINGS:
            label = f"fetch_min_bytes {least}, fetch_max_wait_ms {wait}"
            flags = ["--fetch-min-bytes", str(least), "--fetch-max-wait", str(wait)]
            r = trial(args.bootstrap, pipeline, flags, args.rate, args.seconds)
            rows.append((label, rnd, r))
            print(label, rnd, {k: round(v, 1) for k, v in r.items()}, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# `fds run` under a light load: CPU against fetch_min_bytes / fetch_max_wait_ms",
        "",
        f"Command: `python benchmarks/exp_fetch_wait.py {shlex.join(sys.argv[1:])}`".strip(),
        "",
        f"{args.rate:.0f} tx/s for {args.seconds:.0f} s per run, default rules and model, "
        f"at-least-once, broker of the local kit on the same 2-core machine; load average "
        f"after the runs {load}. CPU: user + system time of the `fds run` process over the "
        "paced load; batches: distinct `decided_at` milliseconds (about one per poll); "
        "latency: produce (CreateTime) to decision (LogAppendTime).",
        "",
        "| setting | round | CPU per tx | CPU (share of a core) | batches/s | p50 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {label} | {rnd} | {r['cpu_us_per_tx']:,.0f} us | {r['cpu_share']:.0%} | "
            f"{r['batches_per_s']:.0f} | {r['p50']:.0f} ms | {r['p99']:.0f} ms |"
            for label, rnd, r in rows
        ),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
