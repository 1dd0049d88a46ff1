"""Precision benchmark: rules alone vs static / frozen / adaptive models vs rules + adaptive.

    python benchmarks/bench_precision.py                    # the committed figures
    python benchmarks/bench_precision.py --days 30 --cards 3000 --drift-day 15 --warmup-days 7
    python benchmarks/bench_precision.py --input my.csv --mapping my-mapping.yaml --k 50

Same code as ``fds bench precision`` (fds/bench.py): the simulator with a scheduled drift and
realistic label delays (customer reports after 1-3 days, chargebacks after 7-60) goes through the
real engine (features -> rules -> adaptive model -> policy); each variant's daily top-k is
scored against the truth. Writes benchmarks/results/precision.md and precision.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fds.bench import run_precision  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--input", help="a historical file instead of the simulator")
    ap.add_argument("--mapping", help="column mapping YAML for --input (with a label section)")
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--cards", type=int, default=10_000)
    ap.add_argument("--merchants", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--drift-day", type=int, default=30, help="-1: none")
    ap.add_argument("--warmup-days", type=int, default=14)
    ap.add_argument("--k", type=int, help="daily alert budget (default: scaled rules budget)")
    ap.add_argument("--spec", default="default")
    ap.add_argument("--rules")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="precision")
    args = ap.parse_args()
    command = "python benchmarks/bench_precision.py " + " ".join(sys.argv[1:])
    print(f"$ {command}")
    drift = None if args.drift_day < 0 or (args.input and args.drift_day == 30) else args.drift_day
    run_precision(
        days=args.days,
        cards=args.cards,
        merchants=args.merchants,
        seed=args.seed,
        drift_day=drift,
        warmup_days=args.warmup_days,
        k=args.k,
        spec=args.spec,
        rules=args.rules,
        input_path=args.input,
        mapping_path=args.mapping,
        out_dir=args.out,
        name=args.name,
        command=command.strip(),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
