"""What one contest threshold refresh costs on the decision thread, per shipped model spec.

    python benchmarks/bench_refresh.py [--out benchmarks/results/refresh.md]

Every THRESHOLD_REFRESH fraud labels, a contest re-ranks RECENT_SIZE / RANK_STRIDE recent inputs
(fds.models.scorer). The champion's and a shadow challenger's scores are reused from the
decision path; a predecessor on probation scores them again. This times that re-scoring by one
model of each spec (trained on 4,000 simulated examples), and what it cost before the reuse:
every model of a contest, a probation and the gate (four model passes).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fds.models.fused import serving  # noqa: E402
from fds.models.scorer import RANK_STRIDE, RECENT_SIZE  # noqa: E402
from fds.models.spec import build_pipeline, load_spec  # noqa: E402
from fds.models.vector import rule_inputs, to_vector  # noqa: E402
from fds.pipeline import DEFAULT_RULES, build_engine  # noqa: E402
from fds.streams.simulator import simulate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refresh.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/bench_refresh.py", *sys.argv[1:]])
    sim = simulate(days=2, cards=3000, merchants=200, seed=5, drift_day=None)
    engine = build_engine(DEFAULT_RULES, None, guardrails=False)
    fraud = {lab["tx_id"] for lab in sim.labels}
    xs = []
    for tx in sim.transactions[:8000]:
        d = engine.decide(tx)
        feats = {**d["features"], **rule_inputs(d["rule_hits"])}
        xs.append((to_vector(tx, feats), tx["tx_id"] in fraud))
    recent = [x for x, _ in xs[-RECENT_SIZE:]][::RANK_STRIDE]
    rows = []
    for name in ("default", "tree", "forest"):
        model = build_pipeline(load_spec(name))
        for x, y in xs[:4000]:
            model.learn_one(x, y)
        model = serving(model)
        t = time.process_time()
        for x in recent:
            model.predict_proba_one(x)
        one = (time.process_time() - t) * 1000.0
        rows.append(f"| `{name}` | {one:,.1f} ms | {4 * one:,.1f} ms |")
        print(rows[-1], flush=True)
    lines = [
        "# Contest threshold refresh on the decision thread",
        "",
        f"Command: `{command}`. CPU time (`time.process_time`) of re-scoring {len(recent):,} "
        "recent inputs once per model spec.",
        "",
        "| spec | now: a predecessor on probation re-scores (one model) | before the reuse: "
        "four model passes (contest, probation, gate) |",
        "|---|---:|---:|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
