"""Every aggregate of FeaturePlan against the brute-force reference, on random streams."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings

from fds.features import FeaturePlan
from tests.features.conftest import ALL_SPECS, GRACE, streams
from tests.features.reference import LATE, reference

# Float tolerance: running sums add and subtract values, so sums/means carry ~1e-12 relative
# error; std takes a square root of a difference of such sums, so near-zero spreads get an
# absolute error of order sqrt(eps * sum of squares): 1e-3 on amounts up to 5000.
REL = 1e-9
ABS = {"std": 1e-3}


def run_plan(plan: FeaturePlan, ops: list[dict[str, Any]]) -> list[Any]:
    out = []
    for op in ops:
        if op["kind"] == "label":
            plan.on_label(op)
        else:
            out.append(plan.compute(op["tx"]))
    return out


def assert_same(
    got: list[Any], want: list[Any], ops: list[dict[str, Any]], specs: list[Any] = ALL_SPECS
) -> None:
    aggs = {s.name: s.agg for s in specs}
    txs = [op["tx"] for op in ops if op["kind"] == "tx"]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w == LATE:
            assert g.get("_flags") == ["late"], f"tx {txs[i]['tx_id']} should be flagged late"
            continue
        assert "_flags" not in g, f"tx {txs[i]['tx_id']} flagged but within grace"
        assert list(g) == list(w), "snapshot keys in declaration order"
        for name, wv in w.items():
            gv = g[name]
            ctx = f"{name} at tx {txs[i]['tx_id']} (#{i})"
            if wv is None or isinstance(wv, bool) or isinstance(gv, bool):
                assert gv == wv and type(gv) is type(wv), f"{ctx}: got {gv!r}, want {wv!r}"
            elif isinstance(wv, int) and aggs[name] in ("count", "distinct", "fraud_count"):
                assert gv == wv and isinstance(gv, int), f"{ctx}: got {gv!r}, want {wv!r}"
            else:
                tol = ABS.get(aggs[name], 1e-9)
                assert gv is not None and math.isclose(gv, wv, rel_tol=REL, abs_tol=tol), (
                    f"{ctx}: got {gv!r}, want {wv!r}"
                )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_every_aggregate_matches_brute_force(case: tuple[str, list[dict[str, Any]]]) -> None:
    tz, ops = case
    plan = FeaturePlan(ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops)
    want = reference(ALL_SPECS, ops, timezone=tz, grace=GRACE)
    assert_same(got, want, ops)
    assert plan.late_events == sum(1 for w in want if w == LATE)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), __import__("hypothesis").strategies.floats(0, 1))
def test_checkpoint_restore_continues_exactly(
    case: tuple[str, list[dict[str, Any]]], where: float
) -> None:
    tz, ops = case
    cut = int(where * len(ops))
    whole = run_plan(FeaturePlan(ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1), ops)
    first = FeaturePlan(ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1)
    head = run_plan(first, ops[:cut])
    sd = first.state_dict()
    run_plan(first, ops[cut:])  # the saved state must not alias the live one
    second = FeaturePlan(ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1)
    second.load_state_dict(sd)
    tail = run_plan(second, ops[cut:])
    assert head + tail == whole  # exact, floats included
