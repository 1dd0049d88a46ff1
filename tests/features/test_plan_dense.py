"""Long dense seeded streams: log trimming, eviction and reordering far from the first events."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import pytest

from fds.features import FeaturePlan
from fds.features.codegen import TS
from tests.features.conftest import ALL_SPECS, GRACE, STARTS, Spec
from tests.features.reference import reference
from tests.features.test_plan_properties import assert_same, run_plan

SHORT_SPECS = [s for s in ALL_SPECS if s.window in ("60s", "90s", "10m", "1h")] + [
    Spec("d_max_1h", "device_id", "max", "amount", "1h"),
    Spec("d_seen_m_1h", "device_id", "seen", "merchant_id", "1h"),
    Spec("d_fraud_rate_1h", "device_id", "fraud_rate", None, "1h"),
]


def dense_stream(seed: int, n: int, start: float, mean_step: float) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    ops: list[dict[str, Any]] = []
    top = start
    for i in range(n):
        r = rng.random()
        if r < 0.15 and i:
            ops.append({"kind": "label", "tx_id": f"t{rng.randrange(i)}", "is_fraud": r < 0.1})
            continue
        # 15 % out of order: mostly within grace, some beyond
        back = r < 0.30
        ts = top - rng.uniform(0, GRACE * 1.2) if back else top + rng.expovariate(1 / mean_step)
        top = max(top, ts)
        ops.append(
            {
                "kind": "tx",
                "tx": {
                    "tx_id": f"t{i}",
                    "ts": ts,
                    "card_id": rng.choice("ab"),
                    "amount": rng.choice([3.0, 7.5, round(rng.uniform(1, 900), 2)]),
                    "merchant_id": rng.choice(["m1", "m2", "m3", "m4", None]),
                    "country": rng.choice(["DE", "FR"]),
                    "device_id": rng.choice(["d1", "d2"]),
                    "extra": {"x": rng.randint(0, 9)} if rng.random() < 0.7 else {},
                },
            }
        )
    return ops


@pytest.mark.parametrize("seed", range(3))
def test_dense_short_windows_trim_and_reorder(seed: int) -> None:
    ops = dense_stream(seed, 400, STARTS["UTC"][0], mean_step=40.0)
    plan = FeaturePlan(SHORT_SPECS, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops)
    assert_same(
        got,
        reference(SHORT_SPECS, ops, timezone="UTC", grace=GRACE),
        ops,
        SHORT_SPECS,
    )
    assert plan.reordered_events > 0 and plan.late_events > 0
    # the log really was trimmed (entries far older than the longest window are gone)
    ts = plan.states[0]["a"][TS]
    n_a = sum(1 for op in ops if op["kind"] == "tx" and op["tx"]["card_id"] == "a")
    assert len(ts) < n_a / 2 and ts[0] > ts[-1] - GRACE - 3600 * (1 + 1 / 16)


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_dense_across_dst_and_midnight(tz: str) -> None:
    ops = dense_stream(7, 500, STARTS[tz][0], mean_step=400.0)
    plan = FeaturePlan(ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops)
    assert_same(got, reference(ALL_SPECS, ops, timezone=tz, grace=GRACE), ops)


def test_idle_entities_are_evicted_and_come_back_fresh() -> None:
    specs = [
        Spec("n_1h", "card_id", "count", None, "1h"),
        Spec("gap_1h", "card_id", "last_gap", None, "1h"),
    ]
    plan = FeaturePlan(specs, grace=GRACE)
    for i in range(100):
        plan.compute({"tx_id": f"x{i}", "ts": float(i), "card_id": f"c{i}", "amount": 1.0})
    assert plan.state_sizes() == {"card_id": 100}
    later = 100 + 3600 + GRACE + 3600  # beyond the window plus grace plus a sweep period
    # sweeps are considered once per max(1000, held states) events: drive a busy card
    for i in range(1000):
        snap = plan.compute({"tx_id": f"z{i}", "ts": later + i, "card_id": "busy", "amount": 1.0})
    assert plan.state_sizes() == {"card_id": 1}
    assert plan.evicted_entities == 100
    snap = plan.compute({"tx_id": "y", "ts": later + 1000, "card_id": "c5", "amount": 1.0})
    assert snap == {"n_1h": 1, "gap_1h": None}  # c5 comes back fresh


def test_missing_entity_gives_none_and_no_state() -> None:
    specs = [Spec("d_n", "device_id", "count", None, "10m")]
    plan = FeaturePlan(specs)
    assert plan.compute({"tx_id": "1", "ts": 0.0, "card_id": "c", "amount": 1.0}) == {"d_n": None}
    assert plan.state_sizes() == {"device_id": 0}


def test_single_fraud_group_labels() -> None:
    # one fraud group: the tx_id store keeps the bare entity key (no tuple)
    specs = [s for s in ALL_SPECS if s.entity != "card_id" or "fraud" not in s.agg]
    assert {s.entity for s in specs if "fraud" in s.agg} == {"merchant_id"}
    ops = dense_stream(11, 500, STARTS["UTC"][0], mean_step=40.0)
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops)
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    assert any(isinstance(g.get("m_fraud_n_2h"), int) and g["m_fraud_n_2h"] > 0 for g in got)


@pytest.mark.parametrize("seed", range(4))
def test_categorical_column_kept_shorter_than_the_log(seed: int) -> None:
    # merchant ids are counted over 10 minutes only, the log is kept for 2 hours
    specs = [
        Spec("n_2h", "card_id", "count", None, "2h"),
        Spec("mean_2h", "card_id", "mean", "amount", "2h"),
        Spec("dm_10m", "card_id", "distinct", "merchant_id", "10m"),
        Spec("seen_m_10m", "card_id", "seen", "merchant_id", "10m"),
        Spec("seen_c_1h", "card_id", "seen", "country", "1h"),
    ]
    ops = dense_stream(seed, 600, STARTS["UTC"][0], mean_step=60.0)
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops)
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    cg = plan._groups[0]
    st = plan.states[0]["a"]
    assert cg.i_coff[0] >= 0 and cg.i_coff[1] >= 0  # both columns are kept shorter
    merchants = st[cg.i_cat[0]]
    assert st[cg.i_coff[0]] > 0 and len(merchants) < len(st[TS])  # ... and were cut
    assert plan.reordered_events > 0


@pytest.mark.parametrize("seed", range(4))
def test_numeric_column_kept_shorter_than_the_log(seed: int) -> None:
    # amounts are summed over 10 minutes only (and their max over 20), the log is kept for 2
    # hours: the column is cut as the categorical ones are, read at h - offset
    specs = [
        Spec("n_2h", "card_id", "count", None, "2h"),
        Spec("mean_10m", "card_id", "mean", "amount", "10m"),
        Spec("std_10m", "card_id", "std", "amount", "10m"),
        Spec("max_20m", "card_id", "max", "amount", "20m"),
        Spec("x_min_1h", "card_id", "min", "extra.x", "1h"),
        Spec("m_fraud_2h", "merchant_id", "fraud_rate", None, "2h"),
        Spec("m_sum_30m", "merchant_id", "sum", "amount", "30m"),
    ]
    ops = dense_stream(seed, 600, STARTS["UTC"][0], mean_step=60.0)
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops)
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    for gi, key in ((0, "a"), (1, "m1")):
        cg, st = plan._groups[gi], plan.states[gi][key]
        assert all(i >= 0 for i in cg.i_noff)  # every numeric column is kept shorter ...
        assert all(st[i] > 0 and len(st[c]) < len(st[TS]) for c, i, _k in cg.i_short)  # ... cut
    assert plan.reordered_events > 0


def test_a_busy_entity_cuts_its_short_columns_every_so_many_events(monkeypatch) -> None:
    # 150 events in the grace period: a test of the window's head cut a value or two at every
    # event, each a copy of the whole column (a review: 12-25x the event's cost at 180,000
    # values); a cut comes once a 16th of the column is past the horizon, and the values are
    # the brute force's
    import fds.features.codegen as codegen

    cuts = []
    real = codegen._cut_column

    def counted(ts, col, st, i_off, horizon):  # type: ignore[no-untyped-def]
        cuts.append(len(col))
        real(ts, col, st, i_off, horizon)

    monkeypatch.setattr(codegen, "_cut_column", counted)
    specs = [
        Spec("n_2h", "card_id", "count", None, "2h"),
        Spec("sum_10m", "card_id", "sum", "amount", "10m"),
        Spec("d_10m", "card_id", "distinct", "merchant_id", "10m"),
    ]
    t0 = STARTS["UTC"][0]
    ops = [
        {"kind": "tx", "tx": {"tx_id": f"t{i}", "ts": t0 + 2.0 * i, "card_id": "c",
                              "amount": float(i % 7), "merchant_id": f"m{i % 50}"}}
        for i in range(2500)  # (5,000: the brute force took 300 s on a loaded CI machine)
    ]  # fmt: skip
    plan = FeaturePlan(specs, grace=GRACE)
    got = run_plan(plan, ops)
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    # two columns of ~450 values, cut once ~36 of each are past the horizon
    assert 0 < len(cuts) <= 2 * 2500 / 30


def test_sweep_visits_a_bounded_number_of_states_per_event() -> None:
    from fds.features.plan import _SWEEP_STEP

    specs = [Spec("n_1h", "card_id", "count", None, "1h")]
    plan = FeaturePlan(specs, grace=GRACE)
    n = 3 * _SWEEP_STEP + 10
    for i in range(n):
        plan.compute({"tx_id": f"x{i}", "ts": i / 100, "card_id": f"c{i}", "amount": 1.0})
    later = 100 + 3600 + GRACE + 3600
    evicted = [plan.evicted_entities]
    for i in range(n + 10):  # sweeps are considered once per max(1000, held states) events
        plan.compute({"tx_id": f"z{i}", "ts": later + i, "card_id": "busy", "amount": 1.0})
        evicted.append(plan.evicted_entities)
    steps = [b - a for a, b in pairwise(evicted)]
    assert evicted[-1] == n and max(steps) <= _SWEEP_STEP
    assert sum(1 for s in steps if s) >= 4  # spread over several events
    assert plan.state_sizes() == {"card_id": 1}


@pytest.mark.parametrize("seed", range(3))
def test_a_value_counter_switches_between_a_number_and_a_dict_with_its_window(seed: int) -> None:
    # codegen.tally: a window's counter is a dict of counts over LARGE entries and a number
    # (distinct) or nothing (seen only) under SMALL; bursts take one card's windows across
    # both ways, with events out of order (folded in by _insert), labels and a cut column
    from fds.features.codegen import LARGE, SMALL

    specs = [
        Spec("dm_1h", "card_id", "distinct", "merchant_id", "1h"),
        Spec("sm_1h", "card_id", "seen", "merchant_id", "1h"),
        Spec("sm_30m", "card_id", "seen", "merchant_id", "30m"),  # (shorter than dm_1h)
        Spec("dd_10m", "card_id", "distinct", "device_id", "10m"),
        Spec("n_2h", "card_id", "count", None, "2h"),
    ]
    ops = []
    for phase in range(6):  # dense, sparse, dense, ...
        step = 6.0 if phase % 2 == 0 else 400.0
        part = dense_stream(seed * 10 + phase, 700 if phase % 2 == 0 else 60, 0.0, step)
        top = max([op["tx"]["ts"] for op in ops if op["kind"] == "tx"] or [STARTS["UTC"][0]])
        for op in part:  # (after the phases before; 40 merchants, ids of their own)
            if op["kind"] == "tx":
                tx = op["tx"]
                tx["ts"] += top
                tx["tx_id"] = f"p{phase}{tx['tx_id']}"
                tx["merchant_id"] = f"m{random.Random(tx['tx_id']).randrange(40)}"
            else:
                op["tx_id"] = f"p{phase}{op['tx_id']}"
            ops.append(op)
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    cg = plan._groups[0]
    kinds: set[tuple[int, type]] = set()
    got = []
    for op in ops:
        if op["kind"] == "label":
            plan.on_label(op)
            continue
        got.append(plan.compute(op["tx"]))
        st = plan.states[0].get(op["tx"]["card_id"])
        if st is not None:
            kinds |= {(slot, type(st[i])) for slot, i in enumerate(cg.i_ctr)}
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    assert {k for _s, k in kinds} == {int, dict}
    assert all((slot, dict) in kinds and (slot, int) in kinds for slot in range(len(cg.i_ctr)))
    assert plan.reordered_events > 0 and SMALL < LARGE


def recurring(ops: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``ops`` with merchants, countries and devices that come back after minutes to hours."""
    rng = random.Random(seed)
    for op in ops:
        if op["kind"] == "tx":
            op["tx"]["merchant_id"] = f"m{rng.randrange(25)}" if rng.random() < 0.95 else None
            op["tx"]["country"] = rng.choice("AAAAAAAABBBBCCDEFG")
            op["tx"]["device_id"] = f"d{rng.randrange(12)}"
    return ops


LAST_SEEN_SPECS = [
    Spec("n_2h", "card_id", "count", None, "2h"),
    Spec("dm_10m", "card_id", "distinct", "merchant_id", "10m"),
    Spec("seen_m_2h", "card_id", "seen", "merchant_id", "2h"),
    Spec("seen_m_day", "card_id", "seen", "merchant_id", "calendar_day"),
    Spec("seen_m_5m", "card_id", "seen", "merchant_id", "5m"),
    Spec("seen_c_1h", "card_id", "seen", "country", "1h"),
    Spec("seen_d_90m", "card_id", "seen", "device_id", "90m"),
    Spec("d_seen_card_1h", "device_id", "seen", "card_id", "1h"),
]


@pytest.mark.parametrize("seed", range(4))
def test_a_long_seen_window_reads_the_values_its_column_cut_from_a_table(seed: int) -> None:
    # a seen-only window longer than every distinct window of its field (merchants: 2 h and a
    # calendar day against 10 min; countries, devices, a device's cards: no distinct at all)
    # keeps no column that long and no counter: the values the column cuts go to the field's
    # last-seen table, the newest time of each (codegen._fold); events out of order, late
    # ones, labels and a checkpoint restored halfway, against the brute force
    ops = recurring(dense_stream(seed, 900, STARTS["UTC"][0], mean_step=45.0), seed)
    mid = len(ops) // 2
    plan = FeaturePlan(LAST_SEEN_SPECS, grace=GRACE, sweep_min_events=1)
    got = run_plan(plan, ops[:mid])
    again = FeaturePlan(LAST_SEEN_SPECS, grace=GRACE, sweep_min_events=1)
    again.load_state_dict(plan.state_dict())
    got += run_plan(again, ops[mid:])
    assert_same(got, reference(LAST_SEEN_SPECS, ops, timezone="UTC", grace=GRACE), ops,
                LAST_SEEN_SPECS)  # fmt: skip
    card, device = again._groups
    # merchants (but over 5 min: the column's 10 min cover it), countries and devices; cards
    assert [card.seen_keep[ci] for ci in range(3)] == [48 * 3600.0, 3600.0, 5400.0]
    assert len(card.last_slots) == 4 and len(device.last_slots) == 1
    st = again.states[0]["a"]
    # the log kept for the 2-hour count, not for the tables' calendar day (48 h): trimmed
    assert card.log_longest == 7200.0 < card.longest
    kept, fed = st[TS][-1] - st[TS][0], st[TS][-1] - ops[0]["tx"]["ts"]
    assert kept < GRACE + 7200.0 + card.longest / 16 < fed
    for ci, i in enumerate(card.i_last):
        assert st[i] and len(st[card.i_cat[ci]]) < len(st[TS]) - 8  # (cut, folded, read)
        assert all(st[card.i_ctr[slot]] == 0 for slot in card.last_slots)  # (no counter)
    assert again.reordered_events > 0 and again.late_events > 0


def test_a_last_seen_table_of_many_values_is_a_dict() -> None:
    # a merchant's seen of card ids over 2 hours, its column kept 10 minutes: a table of
    # hundreds of cards is a dict (a lookup, not a scan of every card at every event: a review
    # measured 300x at 40,000 events), and lists again once pruned under SMALL entries
    from fds.features.codegen import LARGE, SMALL

    specs = [
        Spec("m_cards_10m", "merchant_id", "distinct", "card_id", "10m"),
        Spec("m_seen_card_2h", "merchant_id", "seen", "card_id", "2h"),
        Spec("m_n_1h", "merchant_id", "count", None, "1h"),
    ]
    rng = random.Random(3)
    ops, t = [], STARTS["UTC"][0]
    for i in range(2400):  # busy for 10 hours (cards of 400), then 4 hours of one card
        t += rng.uniform(0, 30) if i < 1200 or i % 2 else rng.uniform(20, 400)
        busy = i < 1200
        card = f"c{rng.randrange(400)}" if busy else f"c{rng.randrange(3)}"
        back = rng.uniform(0, GRACE) if rng.random() < 0.1 else 0.0  # (out of order, in grace)
        tx = {"tx_id": f"t{i}", "ts": t - back, "card_id": card, "merchant_id": "m"}
        ops.append({"kind": "tx", "tx": tx})
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    cg = plan._groups[0]
    kinds = []
    got = []
    for op in ops:
        got.append(plan.compute(op["tx"]))
        kinds.append(type(plan.states[0]["m"][cg.i_last[0]]))
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    assert dict in kinds[:1200] and kinds[-1] is list and SMALL < LARGE


def test_a_log_behind_tables_alone_is_trimmed_by_its_own_window() -> None:
    # a 1-hour count and a 1-day seen read from its table alone: the log is kept for the hour
    # (and the grace), trimmed once a sixteenth of that hour more is held, not of the day (a
    # review: 9,295 s held against 3,900 s needed)
    specs = [
        Spec("n_1h", "card_id", "count", None, "1h"),
        Spec("seen_m_1d", "card_id", "seen", "merchant_id", "1d"),
    ]
    plan = FeaturePlan(specs, grace=GRACE)
    cg = plan._groups[0]
    assert cg.log_keep == GRACE + 3600.0 and cg.keep == GRACE + 86400.0
    held = 0.0
    for i in range(6000):
        tx = {"tx_id": f"t{i}", "ts": STARTS["UTC"][0] + 5.0 * i, "card_id": "a",
              "merchant_id": f"m{i % 97}"}  # fmt: skip
        plan.compute(tx)
        ts = plan.states[0]["a"][TS]
        held = max(held, ts[-1] - ts[0])
    assert GRACE + 3600.0 < held <= GRACE + 3600.0 * (1 + 1 / 16)


@pytest.mark.parametrize("grace", [0.0, GRACE])
def test_a_log_behind_tables_alone_keeps_its_newest_entry(grace: float) -> None:
    # a review: a device whose one feature is read from a last-seen table keeps a log as long
    # as the grace alone, and an event exactly the grace behind the watermark (every event at
    # grace 0) was trimmed with the rest: the log emptied, then the sweep raised IndexError at
    # every event of any entity
    specs = [Spec("d_seen_card_1h", "device_id", "seen", "card_id", "1h")]
    t0 = STARTS["UTC"][0]
    events = [(0, "d", "c1"), (900, "e", "c2"), (900 - grace, "d", "c1")]
    events += [(2000 + i, f"x{i}", "c1") for i in range(50)]
    ops = [{"kind": "tx", "tx": {"tx_id": f"t{i}", "ts": t0 + t, "device_id": d, "card_id": c}}
           for i, (t, d, c) in enumerate(events)]  # fmt: skip
    plan = FeaturePlan(specs, grace=grace, sweep_min_events=1)
    got = run_plan(plan, ops)
    assert_same(got, reference(specs, ops, timezone="UTC", grace=grace), ops, specs)
    assert all(len(st[TS]) >= 1 for st in plan.states[0].values())
