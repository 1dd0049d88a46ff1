"""Precision of the alerts a replay raises, at the policy's thresholds: rules alone against rules
+ the adaptive model, on the demo's stream.

    python benchmarks/bench_alerts.py [--days 45] [--cards 5000] [--seed 7]

`fds bench precision` ranks each day's k highest scores (precision@k); a replay acts on the
policy's thresholds (`review_at`, `decline_at`) instead, and raises as many alerts as they
let through. This runs the commands a user would (`fds simulate`, then `fds replay` twice with
the simulator's labels, `--model none` and the default model, the pre-drift rules in both) and
counts the share of review and decline decisions that are fraud, and the alerts a day.
Writes benchmarks/results/alerts.md with each command.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "alerts.md"


def fds(*args: str) -> str:
    """Run ``python -m fds ARGS`` (this interpreter's fds) from the repository; its command."""
    cmd = [sys.executable, "-m", "fds", *args]
    shown = shlex.join(["fds", *args])
    print("$", shown, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return shown


def alerts(decisions: Path, fraud: set[str]) -> tuple[int, int, int]:
    """``(alerts, of them fraud, days)`` of a decisions file."""
    n = hit = 0
    days: Counter[str] = Counter()
    with open(decisions, "rb") as f:
        for line in f:
            d = orjson.loads(line)
            days[d["ts"][:10]] += 1
            if d["action"] != "approve":
                n += 1
                hit += d["tx_id"] in fraud
    return n, hit, len(days)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=int, default=45)
    ap.add_argument("--cards", type=int, default=5000)
    ap.add_argument("--merchants", type=int, default=2000)
    ap.add_argument("--drift-day", type=int, default=21)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/bench_alerts.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        tx, labels = Path(tmp) / "tx.jsonl", Path(tmp) / "tx.labels.jsonl"
        made = fds(
            "simulate", "--days", str(args.days), "--cards", str(args.cards),
            "--merchants", str(args.merchants), "--seed", str(args.seed),
            "--drift-day", str(args.drift_day), "--out", str(tx),
        )  # fmt: skip
        fraud = {
            r["tx_id"] for r in map(orjson.loads, labels.read_bytes().splitlines()) if r["is_fraud"]
        }
        rows, commands = [], [made]
        for name, model in (("rules alone", "none"), ("rules + adaptive", "models/default.yaml")):
            out = Path(tmp) / f"{model.replace('/', '_')}.jsonl"
            commands.append(fds(
                "replay", str(tx), "--labels", str(labels), "--rules", "rules/pre-drift.yaml",
                "--model", model, "--out", str(out), "--no-progress",
            ))  # fmt: skip
            n, hit, days = alerts(out, fraud)
            rows.append((name, n, hit, days))
    base = rows[0][2] / rows[0][1] if rows[0][1] else float("nan")
    lines = [
        "# Alert precision of a replay at the policy's thresholds",
        "",
        f"Command: `{command}`, which ran (the files in a temporary folder):",
        "",
        *(f"    {c}" for c in commands),
        "",
        f"{len(fraud):,} frauds in the stream. An alert is a decision `review` or `decline`; "
        "its precision is the share of alerts that are fraud (the simulator's labels).",
        "",
        "| variant | alerts | of them fraud | precision | alerts a day | vs rules alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, n, hit, days in rows:
        p = hit / n if n else float("nan")
        lines.append(f"| {name} | {n:,} | {hit:,} | {p:.3f} | {n / days:.1f} | {p / base:.2f}x |")
    lines += [
        "",
        "Not precision@k (`fds bench precision`, `fds demo`): there each variant is judged on "
        "the same number of alerts a day; here each raises what its thresholds let through.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
