"""State checkpoints: the pause they put into the decision loop, on it and in a forked child.

    python benchmarks/bench_checkpoint.py [--cards 5000 50000 200000] [--per-card 5]

For each state size: the engine of `fds run` (default rules, no model) decides ``per-card``
transactions per card (5,000 cards and a 5-day horizon of the Kafka benchmark's generator),
then goes on deciding 10,000 more three times: without a checkpoint, with one written on the
loop (`Checkpointer.save`, `--foreground-checkpoints`) and with one written by a forked child
(`Checkpointer.save_background`, the default), each started after the first 1,000 of them.
Reported: the pause of the call that starts the checkpoint, the longest gap between two
decisions, the time of the 10,000 decisions (the child competes for the two cores and the
parent pays copy-on-write faults while it runs), and how long the background write took.
Results go to benchmarks/results/checkpoint.md and checkpoint.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_kafka  # noqa: E402
from scratch import scratch_dir  # noqa: E402

from fds.gcpolicy import Freezer  # noqa: E402
from fds.pipeline import build_engine  # noqa: E402
from fds.schema import parse_transaction  # noqa: E402
from fds.streams.checkpoint import Checkpointer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "checkpoint.md"
AFTER = 10_000  # decisions measured around each checkpoint
START_AT = 1_000  # the checkpoint starts after this many of them


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(cards: int, per_card: int) -> dict[str, Any]:
    bench_kafka.CARDS = cards  # the generator's card population
    engine = build_engine(str(REPO / "rules" / "default.yaml"), None, guardrails=False)
    rng = random.Random(1)
    n = cards * per_card
    txs = (parse_transaction(orjson.loads(bench_kafka.make_tx(i, rng))) for i in range(n))
    fz = Freezer()
    with fz:  # as `fds run`: the long-lived state out of the collector's passes
        for i, tx in enumerate(txs):
            engine.decide(tx)
            if i % 10_000 == 0:
                fz.tick(10_000)
        fz.freeze()
        more = [
            parse_transaction(orjson.loads(bench_kafka.make_tx(i, rng)))
            for i in range(n, n + 3 * AFTER)
        ]
        ck = Checkpointer(scratch_dir("fds-bench-ckpt-"))
        out: dict[str, Any] = {"cards": cards, "transactions": n, "rss_mb": rss_mb()}
        triggers = {
            "none": lambda: None,
            "on the loop": lambda: ck.save(engine.state_dict(), topic="t", offsets={0: n}),
            "forked child": lambda: ck.save_background(
                engine.state_dict, topic="t", offsets={0: n}
            ),
        }
        for k, (name, trigger) in enumerate(triggers.items()):
            gaps, start_pause = [], 0.0
            t_start = t_prev = time.perf_counter()
            for j, tx in enumerate(more[k * AFTER : (k + 1) * AFTER]):
                if j == START_AT:
                    t = time.perf_counter()
                    trigger()
                    start_pause = time.perf_counter() - t
                engine.decide(tx)
                now = time.perf_counter()
                gaps.append(now - t_prev)
                t_prev = now
            out[name] = {
                "start_ms": start_pause * 1000,
                "max_gap_ms": max(gaps) * 1000,
                "total_ms": (time.perf_counter() - t_start) * 1000,
            }
            if name == "forked child":  # how much longer the child still wrote
                t = time.perf_counter()
                ck.wait()
                out[name]["left_s"] = time.perf_counter() - t
        out["file_mb"] = ck.path.stat().st_size / 1e6
        print(f"{cards:,} cards: {out}", flush=True)
        return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['cards']:,} cards\n({r['file_mb']:.0f} MB)" for r in rows]
    xs = range(len(rows))
    for off, name, color in ((-0.2, "on the loop", "tab:red"), (0.2, "forked child", "tab:blue")):
        ax.bar([x + off for x in xs], [r[name]["max_gap_ms"] for r in rows], 0.4,
               label=name, color=color)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("longest gap between two decisions (ms, log)")
    ax.set_title("A state checkpoint: the pause in the decision loop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cards", type=int, nargs="+", default=[5_000, 50_000, 200_000])
    ap.add_argument("--per-card", type=int, default=5, help="transactions per card first")
    ap.add_argument("--out", type=Path, default=RESULTS, help="the report (markdown)")
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/bench_checkpoint.py", *sys.argv[1:]])
    load = os.getloadavg()[0]
    rows = [measure(c, args.per_card) for c in args.cards]
    plot(rows, args.out.with_suffix(".png"))
    lines = [
        "# State checkpoints: the pause in the decision loop",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; 1-minute load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. Engine: `rules/default.yaml`, no model (the state "
        "a checkpoint holds: feature windows, the `tx_id` store, the alert budget).",
        "",
        f"Each row: the state after {args.per_card} transactions per card, then {AFTER:,} "
        f"decisions with a checkpoint started after {START_AT:,} of them.",
        "",
        "| state | process RSS | checkpoint file | written | call that starts it | "
        f"longest gap between decisions | {AFTER:,} decisions take | background write done |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = r["none"]["total_ms"]
        for name in ("none", "on the loop", "forked child"):
            m = r[name]
            done = f"{m['total_ms'] / 1000 + m['left_s']:.1f} s" if "left_s" in m else ""
            what = "no checkpoint" if name == "none" else name
            lines.append(
                f"| {r['cards']:,} cards, {r['transactions']:,} tx | {r['rss_mb']:.0f} MB | "
                f"{r['file_mb']:.0f} MB | {what} | {m['start_ms']:.1f} ms | "
                f"{m['max_gap_ms']:.1f} ms | {m['total_ms']:.0f} ms "
                f"({m['total_ms'] / base:.2f}x) | {done} |"
            )
    big = rows[-1]
    lines += [
        "",
        "![the longest gap](checkpoint.png)",
        "",
        f"Reading it: written on the loop, a checkpoint stops every decision for as long as "
        f"pickling the state takes ({big['on the loop']['max_gap_ms'] / 1000:.1f} s at "
        f"{big['cards']:,} cards), a hole in service that grows with the state. Written by a "
        f"forked child, the loop pauses for the fork ({big['forked child']['start_ms']:.0f} ms "
        "there: the page tables) and then runs slower while the child writes (the child takes "
        "one of the two cores, and every page the loop changes is copied once): the "
        f"{AFTER:,} decisions take the factor in brackets longer instead of stopping. Memory: "
        "up to the process's resident size again, for the duration of a write.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
