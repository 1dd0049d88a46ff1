"""The precision benchmark on other simulator seeds: how far its figures carry.

    python benchmarks/bench_seeds.py [--seeds 1 2 3 4 5] [--reuse]

Runs ``fds bench precision --rules rules/pre-drift.yaml --seed S`` for each seed (reports under
benchmarks/results/seeds/; ``--reuse`` keeps a report that exists), reads seed 7 (the default
seed, on which the default spec and features were chosen) from
benchmarks/results/precision_pre_drift.md, and writes the table of the issue's figures per seed
to benchmarks/results/precision_seeds.md. Each report quotes its own command.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
BENCHMARK_SEED = 7  # run_precision's default seed: the committed precision_pre_drift.md
# the frozen models' gaps, per reading (see figures)
GAPS = (
    "sklearn over the recovery window", "river over the recovery window",
    "sklearn after the deadline", "river after the deadline",
)  # fmt: skip


def report(seed: int, out: Path = OUT) -> Path:
    if seed == BENCHMARK_SEED:
        return OUT / "precision_pre_drift.md"
    return out / "seeds" / f"pre_drift_seed{seed}.md"


def figures(text: str) -> dict[str, str | float]:
    def num(pattern: str) -> float:
        m = re.search(pattern, text, re.M)
        if m is None:
            raise SystemExit(f"report lacks {pattern!r}: rerun without --reuse")
        return float(m.group(1).rstrip("."))

    def variant(v: str) -> float:
        return num(r"^\| " + re.escape(v) + r" \| ([0-9.]+) \|")

    def lower(v: str, reading: str) -> float:
        """A share lower (negative: higher; the report writes "6% higher", where earlier
        reports wrote "-6% lower": both read)."""
        m = re.search(rf"{v} vs adaptive {reading}: (-?\d+(?:\.\d)?)% (lower|higher)", text)
        if m is None:
            raise SystemExit(f"report lacks {v} vs adaptive {reading}: rerun without --reuse")
        return float(m.group(1)) * (1 if m.group(2) == "lower" else -1)

    rec = re.search(r"within label delay \+ 3 d \(= \d+ d\) \| (.*?) \|", text)
    return {
        "rules": variant("rules"),
        "both": variant("rules+adaptive"),
        "perfect": num(r"perfect ranker reaches ([0-9.]+)"),
        "gbm": num(r"reverse\), reaches ([0-9.]+)"),
        "recovery": rec.group(1) if rec else "?",
        **{
            f"{short} {reading}": lower(v, reading)
            for v, short in (("static_sklearn", "sklearn"), ("river_frozen", "river"))
            for reading in ("over the recovery window", "after the deadline")
        },
    }


def row(name: str, f: dict[str, str | float], ratio: float, best: float) -> str:
    """A seed's line of the table; the gaps as the reports write them, to a tenth cut (whole
    percents rounded 29.6% to "30%", a miss of the 30% target shown as a pass: a QA pass)."""
    gaps = " | ".join(f"{f[k]:.1f}%" for k in GAPS)
    return (
        f"| {name} | {f['rules']:.3f} | {f['both']:.3f} | **{ratio:.2f}x** | {best:.2f}x | "
        f"{f['gbm']:.3f} | {f['recovery']} | {gaps} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--reuse", action="store_true", help="keep reports that exist")
    ap.add_argument(
        "--out-dir", type=Path, default=OUT,
        help="where the seeds' reports (DIR/seeds) and the summary go; the benchmark seed's "
        "own report is read from benchmarks/results",
    )  # fmt: skip
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/bench_seeds.py", *sys.argv[1:]])
    for seed in args.seeds:
        if seed == BENCHMARK_SEED or (args.reuse and report(seed, args.out_dir).exists()):
            continue
        cmd = [
            # (this interpreter's fds: an `fds` on PATH may be another tree's, a QA pass)
            *(sys.executable, "-m", "fds", "bench", "precision", "--rules", "rules/pre-drift.yaml"),
            *("--seed", str(seed), "--out", str(args.out_dir / "seeds")),
            *("--name", f"pre_drift_seed{seed}"),
        ]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    rows, ratios = [], {}
    for seed in sorted({*args.seeds, BENCHMARK_SEED}):
        f = figures(report(seed, args.out_dir).read_text())
        ratio = ratios[seed] = f["both"] / f["rules"]  # type: ignore[operator]
        best = f["perfect"] / f["rules"]  # type: ignore[operator]
        name = f"{seed} (the benchmark's)" if seed == BENCHMARK_SEED else str(seed)
        rows.append(row(name, f, ratio, best))
    rank = sorted(ratios.values(), reverse=True).index(ratios[BENCHMARK_SEED]) + 1
    standing = "the best" if rank == 1 else f"number {rank} of {len(ratios)}"
    lines = [
        "# Precision benchmark across simulator seeds",
        "",
        f"Command: `{command}` (each seed's report, under `seeds/`, quotes its own command).",
        "",
        "Rules as they were before the drift (`rules/pre-drift.yaml`), default spec, k = 25, "
        "drift on day 30, warm-up 14 days; means over the evaluated days. Targets (issue 5): "
        "rules + adaptive >= 2.5x rules alone; recovery within label delay + 3 d; both frozen "
        "models >= 30% lower than the adaptive one over the same days. *Window*: the days after "
        "the drift day up to the recovery deadline (the issue's wording); *after*: from the "
        "deadline on (another reading: the frozen models stay behind once the adaptive one "
        "has recovered).",
        "",
        "| seed | rules | rules + adaptive | ratio | a perfect ranker's ratio | hindsight GBM | "
        "adaptive recovered | scikit-learn frozen lower, window | River frozen lower, window | "
        "scikit-learn frozen lower, after | River frozen lower, after |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"The default spec, its optimiser and the 8 newer features were chosen by their figures "
        f"on seed {BENCHMARK_SEED}: its ratio is {standing} of the table. *A perfect "
        "ranker's ratio* is the most any model could reach on that seed (days with fewer than k "
        "frauds cap precision); *hindsight GBM* is gradient boosting trained offline with every "
        "label, cross-fitted by day parity.",
        "",
    ]
    (args.out_dir / "precision_seeds.md").write_text("\n".join(lines))
    print(f"wrote {args.out_dir / 'precision_seeds.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
