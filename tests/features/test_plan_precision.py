"""Cases a second differential review found (each failed before its fix): rounding left in
running sums by a value far larger than the others, a shift far from the window's values, a
missing ``amount`` counted, a day longer than 25 hours, a state moved by an input that then
failed, and field names that are not identifiers."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace as S

import pytest

from fds.features import FeaturePlan

H = 3600.0


def moments(window: str = "1h", entity: str = "card_id") -> FeaturePlan:
    return FeaturePlan(
        [S(name=a, entity=entity, agg=a, field="amount", window=window)
         for a in ("sum", "mean", "std")],
        grace=0,
    )  # fmt: skip


def run(plan: FeaturePlan, events: list[tuple[float, float | None]], **fields) -> list[dict]:
    return [
        plan.compute({"tx_id": f"t{i}", "ts": t, "card_id": "c", "amount": a, **fields})
        for i, (t, a) in enumerate(events)
    ]


@pytest.mark.parametrize("big", [1e17, 1e90])  # (1e100 and more are missing: codegen.BIG)
def test_a_huge_value_leaves_no_rounding_behind_when_it_leaves(big):
    out = run(moments(), [(0, 5.0), (10, big), (20, 1.0), (30, 2.0), (H + 15, 4.0)])
    assert out[2]["std"] == pytest.approx(big * math.sqrt(2) / 3)
    assert out[-1]["sum"] == 7.0  # the window (15, 3615] holds 1, 2, 4
    assert out[-1]["mean"] == pytest.approx(7 / 3, rel=1e-12)
    assert out[-1]["std"] == pytest.approx(statistics.pstdev([1.0, 2.0, 4.0]), rel=1e-12)


def test_a_first_value_far_from_the_rest_does_not_cost_the_std_its_precision():
    """The shift is the entity's first value: 2e9 ahead of amounts around 10,000 left a std of
    25.7 for 29.6, for as long as the merchant stayed active."""
    plan = moments("1h", entity="merchant_id")
    amounts = [2e9] + [10_000.0 + (i * 7919 % 101) - 50 for i in range(1, 4000)]
    out = [
        plan.compute({"tx_id": f"t{i}", "ts": float(i), "merchant_id": "m", "amount": a})
        for i, a in enumerate(amounts)
    ]
    inside = amounts[4000 - 3600 :]  # (399, 3999]
    assert out[-1]["std"] == pytest.approx(statistics.pstdev(inside), rel=1e-9)
    assert out[-1]["mean"] == pytest.approx(statistics.mean(inside), rel=1e-12)
    assert out[100]["std"] == pytest.approx(statistics.pstdev(amounts[:101]), rel=1e-9)


def test_a_std_that_moves_the_shift_keeps_the_sums_of_whole_amounts_exact():
    """A QA pass: a std's move of the shift to its window's mean (651,820.2) made a 1-hour sum
    of whole amounts 3259099.9999999995, and a rule `>= 3259100` did not fire: the shift moves
    to the window's value closest to its mean."""
    plan = FeaturePlan(
        [S(name="std_10m", entity="card_id", agg="std", field="amount", window="10m"),
         S(name="sum_1h", entity="card_id", agg="sum", field="amount", window="1h")],
        grace=0,
    )  # fmt: skip
    m = 60.0
    events = [(0, 3_000_000.0), (41 * m, 7100.0), (46 * m, 1000.0), (48 * m, 1000.0),
              (49.5 * m, 250_000.0)]  # fmt: skip
    out = run(plan, events)
    assert out[-1]["sum_1h"] == 3_259_100.0
    assert out[-1]["std_10m"] == pytest.approx(statistics.pstdev([7100.0, 1e3, 1e3, 250_000.0]))


def test_the_std_of_repeated_amounts_is_0_after_a_far_larger_one_left():
    """A QA pass: 1.5 and 1.5 left in a 10-minute window after 999.99 and 0.01 had a std of
    4.18e-6, and a rule `std == 0` (the same amount repeated) did not fire."""
    m = 60.0
    events = [(30, 1.5), (90, 999.99), (91, 0.01), (6 * m + 31, 1.5), (11 * m + 31, 1.5)]
    out = run(moments("10m"), events)
    assert out[-1]["std"] == 0.0 and out[-1]["sum"] == 3.0 and out[-1]["mean"] == 1.5


def test_a_missing_amount_is_skipped_like_any_missing_value():
    out = run(moments(), [(0, 10.0), (1, None), (2, 20.0)])
    assert out[1] == {"sum": 10.0, "mean": 10.0, "std": 0.0}
    assert out[2] == {"sum": 30.0, "mean": 15.0, "std": 5.0}


def test_a_26_hour_local_day_keeps_its_first_entries():
    """Antarctica/Troll's day of 2024-10-27 lasts 26 h: trimming at 25 h dropped its first
    payment while the day still counted it (and its max candidate pointed at another)."""
    start, end = 1729980000.0, 1730073600.0  # local midnight to midnight, 26 h
    plan = FeaturePlan(
        [S(name="n", entity="card_id", agg="count", field=None, window="calendar_day"),
         S(name="mx", entity="card_id", agg="max", field="amount", window="calendar_day")],
        timezone="Antarctica/Troll", grace=0, sweep_min_events=1,
    )  # fmt: skip
    out = run(plan, [(start - H, 1.0), (start + 600, 50.0), (end - 1200, 5.0), (end - 600, 2.0)])
    assert out[-1] == {"n": 3, "mx": 50.0}


def test_an_input_that_fails_leaves_the_state_as_it_was():
    plan = FeaturePlan(
        [S(name="n", entity="card_id", agg="count", field=None, window="1h"),
         S(name="s", entity="extra.shop", agg="count", field=None, window="1h"),
         S(name="f", entity="card_id", agg="fraud_count", field=None, window="1h")],
    )  # fmt: skip
    plan.compute({"tx_id": "a", "ts": 1000.0, "card_id": "c", "amount": 1.0})
    with pytest.raises(AttributeError):  # ``extra`` not a mapping, an hour ahead
        plan.compute({"tx_id": "b", "ts": 90000.0, "card_id": "c", "extra": ["x"]})
    with pytest.raises(KeyError):  # no tx_id (a fraud group remembers it)
        plan.compute({"ts": 1001.0, "card_id": "c", "amount": 1.0})
    assert plan.watermark == 1000.0
    out = plan.compute({"tx_id": "c", "ts": 1010.0, "card_id": "c", "amount": 1.0})
    assert out == {"n": 2, "s": None, "f": 0}  # not late, the failed ones not counted


def test_field_names_need_not_be_identifiers():
    plan = FeaturePlan(
        [S(name="n", entity="card-id", agg="count", field=None, window="1h"),
         S(name="m", entity="kärte", agg="sum", field="amt-x", window="1h")],
    )  # fmt: skip
    assert plan.compute({"tx_id": "x", "ts": 2.0, "card-id": "c", "kärte": "k", "amt-x": 3}) == {
        "n": 1, "m": 3.0,
    }  # fmt: skip


def test_an_event_reordered_in_several_groups_counts_once():
    plan = FeaturePlan(
        [S(name="n", entity="card_id", agg="count", field=None, window="1h"),
         S(name="m", entity="merchant_id", agg="count", field=None, window="1h")],
    )  # fmt: skip
    run(plan, [(100.0, 1.0), (50.0, 1.0)], merchant_id="m")
    assert plan.reordered_events == 1


def test_a_rebase_with_an_empty_window_of_the_field_gives_none():
    """A std triggered the rebase while the new day's window held only a missing value: the
    recompute divided by its count of 0 (ZeroDivisionError, the event left in the log)."""
    plan = FeaturePlan(
        [S(name="a", entity="card_id", agg="std", field="amount", window="1h"),
         S(name="b", entity="card_id", agg="std", field="amount", window="calendar_day")],
        grace=0,
    )  # fmt: skip
    m = 86400 * 20000.0  # a UTC midnight
    events = [(m - 10000, 5.0), (m - 3000, 50.0), (m - 2000, 100.0), (m - 1000, 100.0)]
    out = run(plan, [*events, (m + 700, None)])
    assert out[-1] == {"a": 0.0, "b": None}


@pytest.mark.parametrize("first", [1e17, 1e160])
def test_a_first_value_far_above_the_rest_does_not_cost_sum_and_mean_their_values(first):
    """The shift is the entity's first value: deviations from 1e17 rounded 12.34 away (a sum
    of 16.0), and from 1e160 their squares overflowed (a std of inf for [12, 10])."""
    plan = FeaturePlan(
        [S(name=a, entity="card_id", agg=a, field="amount", window="1h")
         for a in ("sum", "mean", "std")],
        grace=0,
    )  # fmt: skip
    out = run(plan, [(0, first), (4000, 12.34), (4001, 10.0)])
    assert out[1] == {"sum": 12.34, "mean": 12.34, "std": 0.0}
    assert out[2]["sum"] == pytest.approx(22.34, rel=1e-12)
    assert out[2]["mean"] == pytest.approx(11.17, rel=1e-12)
    assert out[2]["std"] == pytest.approx(1.17, rel=1e-9)


@pytest.mark.parametrize(("big", "small"), [(1e18, 12.34), (1e20, 362.48), (1e20, 0.1)])
def test_a_longer_window_s_std_does_not_undo_the_move_to_a_value_far_below_the_shift(big, small):
    """A QA pass: a std of a longer window asked for the shift to move to its own mean in the
    same event as a value far below the shift asked to move to it; the std's request won, the
    shift stayed far above the value, and the shorter window's sum read 12.3125 for 12.34
    (360.0 for 362.48, 0.0 for 0.1)."""
    plan = FeaturePlan(
        [S(name=f"{a}_{w}", entity="card_id", agg=a, field="amount", window=w)
         for w in ("10m", "1h") for a in ("sum", "mean", "std")],
        grace=0,
    )  # fmt: skip
    out = run(plan, [(0, big), (3000, big / 1000), (6000, small)])
    assert out[-1]["sum_10m"] == small and out[-1]["mean_10m"] == small
    assert out[-1]["std_10m"] == 0.0


def test_a_reordered_event_next_to_a_value_too_large_to_square_raises_nothing():
    plan = FeaturePlan(
        [S(name="sd", entity="card_id", agg="std", field="amount", window="1h")], grace="5m"
    )
    out = run(plan, [(100.0, 1e160), (200.0, 1.0), (150.0, 2.0)])  # the last reordered
    # (it raised OverflowError; then it gave inf; now 1e160 is missing: codegen.BIG)
    assert out[1:] == [{"sd": 0.0}, {"sd": 0.0}]


def test_the_std_of_one_value_is_exactly_zero():
    """Left by the values before it, a window holding one value gave 1.9e-6 (the sums'
    rounding), not 0."""
    plan = moments("1h")
    events = [(100.0, 401.13), (110.0, None), (1310.0, 236.12), (2510.0, 46.93),
              (2520.0, 194.9), (5520.0, 1.05), (6720.0, None)]  # fmt: skip
    out = run(plan, events)
    assert out[-1]["std"] == 0.0  # the window (3120, 6720]: 1.05 and a missing value


def test_a_sum_over_no_present_value_is_exactly_zero():
    plan = moments("1h")
    events = [(100.0, 401.13), (110.0, None), (1310.0, 236.12), (2510.0, 46.93),
              (2520.0, 194.9), (5520.0, 1.05), (6720.0, None), (9130.0, None)]  # fmt: skip
    out = run(plan, events)
    assert out[-1] == {"sum": 0.0, "mean": None, "std": None}  # (5530, 9130]: missing values
