"""FeaturePlan.absorb: two plans fed the partitions of one stream, merged, go on as one plan fed
it all would (what a partition taken over from another instance's snapshot relies on)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fds.errors import ConfigError
from fds.features import FeaturePlan
from tests.features.conftest import ALL_SPECS, GRACE, STARTS, Spec, streams
from tests.features.reference import LATE, reference
from tests.features.test_plan_dense import LAST_SEEN_SPECS, dense_stream, recurring
from tests.features.test_plan_properties import assert_same, run_plan


def _split_run(
    ops: list[dict[str, Any]], cut: int, part: Any, make: Any
) -> tuple[FeaturePlan, FeaturePlan]:
    """Feed ``ops[:cut]`` to two plans, each transaction (and a label of it) to the plan of its
    partition ``part(tx)``; a label of a transaction not seen yet to the second (unmatched)."""
    plans = (make(), make())
    owner: dict[str, int] = {}
    for op in ops[:cut]:
        if op["kind"] == "tx":
            owner[op["tx"]["tx_id"]] = p = part(op["tx"])
            plans[p].compute(op["tx"])
        else:
            plans[owner.get(op["tx_id"], 1)].on_label(op)
    return plans


def _accepted(ops: list[dict[str, Any]], want: list[Any]) -> list[dict[str, Any]]:
    """``ops`` without the transactions decided late (never folded in: a plan fed only some
    partitions, its watermark behind, would fold them)."""
    late = iter(w == LATE for w in want)
    return [op for op in ops if op["kind"] != "tx" or not next(late)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(n_max=60), st.floats(0, 1), st.booleans())
def test_merged_partitions_continue_as_one_plan(
    case: tuple[str, list[dict[str, Any]]], where: float, by_card: bool
) -> None:
    tz, ops = case
    ops = _accepted(ops, reference(ALL_SPECS, ops, timezone=tz, grace=GRACE))
    want = reference(ALL_SPECS, ops, timezone=tz, grace=GRACE)
    cut = int(where * len(ops))

    def make() -> FeaturePlan:
        return FeaturePlan(ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1)

    # partitions by card (as the input topic is keyed), or by anything (a merchant's events
    # then split between the two on every entity type)
    key = "card_id" if by_card else "tx_id"
    a, b = _split_run(ops, cut, lambda tx: hash(tx[key]) % 2, make)
    b.absorb(a.state_dict() if by_card else a)  # (its state, or the plan itself)
    tail = ops[cut:]
    n_head = sum(1 for op in ops[:cut] if op["kind"] == "tx")
    assert_same(run_plan(b, tail), want[n_head:], tail)


@pytest.mark.parametrize("seed", range(3))
def test_last_seen_tables_of_both_plans_are_merged(seed: int) -> None:
    # each plan's entities (a device used by both cards) hold last-seen tables of the values
    # their columns cut (codegen._fold): an absorb keeps the newer time of each value
    ops = recurring(dense_stream(seed, 900, STARTS["UTC"][0], mean_step=45.0), seed)
    ops = _accepted(ops, reference(LAST_SEEN_SPECS, ops, timezone="UTC", grace=GRACE))
    want = reference(LAST_SEEN_SPECS, ops, timezone="UTC", grace=GRACE)

    def make() -> FeaturePlan:
        return FeaturePlan(LAST_SEEN_SPECS, grace=GRACE, sweep_min_events=1)

    cut = len(ops) * 2 // 3
    a, b = _split_run(ops, cut, lambda tx: tx["card_id"] == "a", make)
    cg = b._groups[1]  # (devices: both plans hold them, each with its cards' table)
    assert any(a.states[1][d][cg.i_last[0]] and st[cg.i_last[0]] for d, st in b.states[1].items())
    b.absorb(a)
    tail = ops[cut:]
    n_head = sum(1 for op in ops[:cut] if op["kind"] == "tx")
    assert_same(run_plan(b, tail), want[n_head:], tail, LAST_SEEN_SPECS)


@functools.cache
def _dense() -> tuple[list[dict[str, Any]], list[Any]]:
    """A dense stream (label buckets of the 2-hour fraud windows are frozen along the way, so
    both stores hold frozen and open buckets for the same spans) and one plan's features of it;
    made once: its brute force takes ~30 s."""
    ops = dense_stream(4, 3000, STARTS["UTC"][0], mean_step=30.0)
    ops = _accepted(ops, reference(ALL_SPECS, ops, timezone="UTC", grace=GRACE))
    return ops, run_plan(FeaturePlan(ALL_SPECS, grace=GRACE), ops)


@pytest.mark.parametrize("cut", [700, 1500, 2300])
def test_merge_with_frozen_label_buckets(cut: int) -> None:
    ops, whole = _dense()
    a, b = _split_run(
        ops, cut, lambda tx: tx["card_id"] == "a", lambda: FeaturePlan(ALL_SPECS, grace=GRACE)
    )
    for plan in (a, b):
        plan._labels.flush()  # (the freezes due, done now)
        assert any(bk.open is None for bk in plan._labels.buckets.values())
    held = b.label_store_size() + a.label_store_size()
    frozen = {i for i, bk in a._labels.buckets.items() if bk.open is None} & {
        i for i, bk in b._labels.buckets.items() if bk.open is None
    }
    b.absorb(a.state_dict())
    assert b.label_store_size() == held
    # frozen in both: frozen together (reopened, a store took ~5x the memory until refrozen)
    assert frozen and all(b._labels.buckets[i].open is None for i in frozen)
    tail = ops[cut:]
    n_head = sum(1 for op in ops[:cut] if op["kind"] == "tx")
    assert_same(run_plan(b, tail), whole[n_head:], tail)


def test_absorb_refuses_other_declarations() -> None:
    plan = FeaturePlan(ALL_SPECS)
    other = FeaturePlan([Spec("n", "card_id", "count", None, "1h")])
    with pytest.raises(ConfigError, match="other feature declarations"):
        other.absorb(plan.state_dict())
    with pytest.raises(ConfigError, match="label_ttl"):
        FeaturePlan(ALL_SPECS, label_ttl="1d").absorb(plan.state_dict())
