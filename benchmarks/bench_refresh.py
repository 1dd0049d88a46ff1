"""What one contest threshold refresh costs on the decision thread, per shipped model spec.

    python benchmarks/bench_refresh.py [--out benchmarks/results/refresh.md]

Every THRESHOLD_REFRESH fraud labels, a contest re-ranks RECENT_SIZE / RANK_STRIDE recent inputs
(fds.models.scorer). The champion's and a shadow challenger's scores are reused from the
decision path; a predecessor on probation scores them again. This times that re-scoring by one
model of each spec (trained on 4,000 simulated examples), and what it cost before the reuse:
every model of a contest, a probation and the gate (four model passes).

It also measures what that means for decisions in `fds run` (watch mode), where the re-scoring
runs on a worker thread that yields the interpreter after each millisecond of work: a loop on
the main thread scores one input per iteration with the champion (a decision's model work) while the
predecessor re-scores; the longest gap between two iterations is what a decision waits. Inline
(replays), the loop stops for the whole re-scoring.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fds.models.fused import serving  # noqa: E402
from fds.models.scorer import RANK_STRIDE, RECENT_SIZE, _pacer, _scores  # noqa: E402
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
    rows, gaps = [], []
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
        alone, worker = _gap_with_worker(model, recent)
        gaps.append(f"| `{name}` | {one:,.1f} ms | {worker:,.2f} ms | {alone:,.2f} ms |")
        print(gaps[-1], flush=True)
    lines = [
        "# Contest threshold refresh on the decision thread",
        "",
        f"Command: `{command}`. CPU time (`time.process_time`) of re-scoring {len(recent):,} "
        "recent inputs once per model spec.",
        "",
        "| spec | now: a predecessor on probation re-scores (one model) | before the reuse: "
        "four model passes (contest, probation, gate), estimated as 4 x the one measured |",
        "|---|---:|---:|",
        *rows,
        "",
        "## What a decision waits in `fds run`",
        "",
        "Longest gap between two iterations of a loop on the main thread that scores one input "
        "per iteration with the champion, while the predecessor re-scores the same inputs: "
        "inline (the gap is the whole re-scoring, as in a replay) and on the worker thread "
        "`fds run` uses (wall time, the longest of 3 runs).",
        "",
        "| spec | inline: the loop stops for | worker thread: longest gap | the loop alone "
        "for as long: longest gap |",
        "|---|---:|---:|---:|",
        *gaps,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


def _gap_with_worker(model: object, recent: list[dict[str, float]]) -> tuple[float, float]:
    """Longest gap (ms) in a main-thread scoring loop, alone and while ``model`` re-scores
    ``recent`` on a worker thread paced as ModelServer._rank paces it in watch mode (the
    longest of 3 runs each: a worst case; the loop alone runs as long as the worker took, so
    both see the machine's noise)."""

    def loop(until: Callable[[], bool]) -> float:
        worst, last, i = 0.0, time.perf_counter(), 0
        while not until():
            model.predict_proba_one(recent[i % len(recent)])  # type: ignore[attr-defined]
            i += 1
            now = time.perf_counter()
            worst, last = max(worst, now - last), now
        return worst * 1000.0

    alone = worker = 0.0
    for _ in range(3):
        scored = [(None, 0.0, None, 0.0)] * len(recent)
        job = threading.Thread(target=_scores, args=(model, "pred", recent, scored, _pacer()))
        t0 = time.perf_counter()
        job.start()
        worker = max(worker, loop(lambda j=job: not j.is_alive()))  # type: ignore[misc]
        job.join()
        end = time.perf_counter() + (time.perf_counter() - t0)
        alone = max(alone, loop(lambda e=end: time.perf_counter() >= e))  # type: ignore[misc]
    return alone, worker


if __name__ == "__main__":
    raise SystemExit(main())
