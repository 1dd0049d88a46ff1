"""FeaturePlan.split: a plan keeping provenance gives up the entries of some input partitions,
each side then goes on as a plan fed only its own partitions would (what taking over the
partitions of a dead instance's snapshot relies on); absorbing them back undoes it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fds.errors import ConfigError
from fds.features import FeaturePlan
from fds.features.codegen import TS
from tests.features.conftest import ALL_SPECS, GRACE, STARTS, Spec, streams
from tests.features.reference import reference
from tests.features.test_absorb import _accepted
from tests.features.test_plan_dense import dense_stream
from tests.features.test_plan_properties import assert_same

N_PARTS = 4


def _make(tz: str = "UTC", **kw: Any) -> FeaturePlan:
    return FeaturePlan(
        ALL_SPECS, timezone=tz, grace=GRACE, sweep_min_events=1, provenance=True, **kw
    )


def _partitions(ops: list[dict[str, Any]], tags: list[int], by_card: bool) -> dict[str, int]:
    """tx_id -> input partition: by card (as the input topic is keyed) or by ``tags`` (the
    transactions of one instant may be of different partitions: the ``tx_id`` store records
    each one's, so its label marks an entry of its own partition)."""
    part = {}
    for i, op in enumerate(op for op in ops if op["kind"] == "tx"):
        tx = op["tx"]
        part[tx["tx_id"]] = "abc".index(tx["card_id"]) if by_card else tags[i % len(tags)]
    return part


def _feed(plans: Any, ops: list[dict[str, Any]], part: dict[str, int]) -> list[Any]:
    """Feed ``ops`` to ``plans(p)``, the plan of partition ``p`` (its ``part`` set first): a
    label to the plan of its transaction's partition; outputs in order."""
    out = []
    for op in ops:
        if op["kind"] == "tx":
            p = part[op["tx"]["tx_id"]]
            plan = plans(p)
            plan.part = p
            out.append(plan.compute(op["tx"]))
        else:
            plans(part.get(op["tx_id"], 0)).on_label(op)
    return out


def _only(ops: list[dict[str, Any]], part: dict[str, int], keep: Any) -> list[dict[str, Any]]:
    """The ops of the partitions ``keep`` accepts (a label goes with its transaction)."""
    return [
        op
        for op in ops
        if keep(part.get(op["tx"]["tx_id"] if op["kind"] == "tx" else op["tx_id"], -1))
    ]


def _tx_ids(ops: list[dict[str, Any]]) -> list[str]:
    return [op["tx"]["tx_id"] for op in ops if op["kind"] == "tx"]


def _snapshots(ops: list[dict[str, Any]], out: list[Any]) -> dict[str, Any]:
    return dict(zip(_tx_ids(ops), out, strict=True))


# Timestamps are floored to this grid in half the cases: transactions of one instant (of
# different partitions when partitioned by tag) on an entity, labels of them among them. (The
# code before the tx_id store recorded partitions broke the absorb-back property on 2 to 7 %
# of the cases drawn with 600 s, 0 to 2 % with 60 s; windows of 60 s to 1 day still see more
# than one instant. The review's case is an explicit example besides.)
_CROWD = 600.0


@st.composite
def _split_cases(draw: Any) -> tuple[str, list[dict[str, Any]], dict[str, int], int, set[int]]:
    """A timezone, a stream without late events, its transactions' input partitions, where to
    split and the partitions to move."""
    tz, ops = draw(streams(n_max=60))
    if draw(st.booleans()):
        for op in ops:
            if op["kind"] == "tx":
                op["tx"]["ts"] -= op["tx"]["ts"] % _CROWD
    ops = _accepted(ops, reference(ALL_SPECS, ops, timezone=tz, grace=GRACE))
    tags = draw(st.lists(st.integers(0, N_PARTS - 1), min_size=1, max_size=60))
    part = _partitions(ops, tags, by_card=draw(st.booleans()))
    cut = int(draw(st.floats(0, 1)) * len(ops))
    return tz, ops, part, cut, draw(st.sets(st.integers(0, N_PARTS - 1)))


def _same_instant_case() -> tuple[str, list[dict[str, Any]], dict[str, int], int, set[int]]:
    """The review's case: a merchant's two transactions of one instant, of partitions 1 and 0,
    the second labelled fraud before partition 0 moves."""
    t0 = STARTS["UTC"][0]
    txs = [(t0, "a", 1), (t0, "b", 0), (t0 + 10, "c", 0), (t0 + 20, "c", 1)]
    ops = [
        {"kind": "tx", "tx": {
            "tx_id": f"t{i}", "ts": t, "card_id": card, "amount": 1.0, "merchant_id": "m1",
            "country": None, "device_id": None, "extra": {},
        }}
        for i, (t, card, _p) in enumerate(txs)
    ]  # fmt: skip
    ops.insert(2, {"kind": "label", "tx_id": "t1", "is_fraud": True})
    return "UTC", ops, {f"t{i}": p for i, (_t, _c, p) in enumerate(txs)}, 3, {0}


def _go_on_apart(
    plan: FeaturePlan,
    moved: FeaturePlan,
    moving: set[int],
    ops: list[dict[str, Any]],
    cut: int,
    part: dict[str, int],
    specs: list[Any] = ALL_SPECS,
    tz: str = "UTC",
) -> None:
    """Feed ``ops[cut:]`` to ``moved`` (the partitions ``moving``) and ``plan`` (the others):
    each gives the snapshots of a plan fed only its partitions' ops all along."""
    got = _snapshots(ops[cut:], _feed(lambda p: moved if p in moving else plan, ops[cut:], part))
    for side in (lambda p: p in moving, lambda p: p not in moving):
        mine = _only(ops, part, side)
        want = _snapshots(mine, reference(specs, mine, timezone=tz, grace=GRACE))
        tail = _only(ops[cut:], part, side)
        ids = _tx_ids(tail)
        assert_same([got[i] for i in ids], [want[i] for i in ids], tail, specs)


def _fed(tz: str, ops: list[dict[str, Any]], part: dict[str, int]) -> FeaturePlan:
    plan = _make(tz)
    _feed(lambda p: plan, ops, part)
    return plan


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_split_cases(), st.booleans())
@example(_same_instant_case(), False)
def test_split_plans_go_on_as_plans_fed_their_partitions_only(
    case: tuple[str, list[dict[str, Any]], dict[str, int], int, set[int]], restored: bool
) -> None:
    tz, ops, part, cut, moving = case
    plan = _fed(tz, ops[:cut], part)
    if restored:  # the snapshot of a dead instance: its partition column kept
        sd = plan.state_dict()
        plan = _make(tz)
        plan.load_state_dict(sd)
    moved = plan.split(moving)
    assert moved.watermark == plan.watermark
    _go_on_apart(plan, moved, moving, ops, cut, part, tz=tz)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_split_cases(), st.booleans())
@example(_same_instant_case(), False)
def test_absorbing_a_split_back_goes_on_as_never_split(
    case: tuple[str, list[dict[str, Any]], dict[str, int], int, set[int]], state_dict: bool
) -> None:
    tz, ops, part, cut, moving = case
    plan = _fed(tz, ops[:cut], part)
    held = plan.label_store_size()
    moved = plan.split(moving)
    assert plan.label_store_size() + moved.label_store_size() == held
    plan.absorb(moved.state_dict() if state_dict else moved)
    assert plan.label_store_size() == held
    want = reference(ALL_SPECS, ops, timezone=tz, grace=GRACE)
    n_head = len(_tx_ids(ops[:cut]))
    assert_same(_feed(lambda p: plan, ops[cut:], part), want[n_head:], ops[cut:])


# ---------------------------------------------------------------------------- unit cases

T0 = STARTS["UTC"][0]
COUNTS = [
    Spec("c_n", "card_id", "count", None, "1h"),
    Spec("c_fraud", "card_id", "fraud_count", None, "1h"),
    Spec("m_n", "merchant_id", "count", None, "1h"),
    Spec("m_fraud", "merchant_id", "fraud_count", None, "1h"),
    Spec("m_cards", "merchant_id", "distinct", "card_id", "10m"),
]


def _tx(i: int, t: float, card: str, merchant: str | None = "m") -> dict[str, Any]:
    return {"tx_id": f"t{i}", "ts": t, "card_id": card, "merchant_id": merchant}


def _run(plan: FeaturePlan, txs: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for p, tx in txs:
        plan.part = p
        out.append(plan.compute(tx))
    return out


def test_the_partition_column_follows_the_log() -> None:
    plan = FeaturePlan(COUNTS, grace=GRACE, provenance=True)
    # out of order within grace: inserted at its place, with its partition
    _run(plan, [(1, _tx(0, T0, "a")), (2, _tx(1, T0 + 60, "a")), (3, _tx(2, T0 + 30, "a"))])
    cg = plan._groups[0]
    st = plan.states[0]["a"]
    assert list(st[TS]) == [T0, T0 + 30, T0 + 60] and list(st[cg.i_part]) == [1, 3, 2]
    # trimmed with the log: two days on, the first three entries are gone
    _run(plan, [(4, _tx(3, T0 + 2 * 86400, "a"))])
    assert list(st[TS]) == [T0 + 2 * 86400] and list(st[cg.i_part]) == [4]
    # merged with another plan's log
    other = FeaturePlan(COUNTS, grace=GRACE, provenance=True)
    _run(other, [(5, _tx(4, T0 + 2 * 86400 - 10, "a"))])
    plan.absorb(other)
    assert list(plan.states[0]["a"][cg.i_part]) == [5, 4]
    # kept by a checkpoint
    again = FeaturePlan(COUNTS, grace=GRACE, provenance=True)
    again.load_state_dict(plan.state_dict())
    assert list(again.states[0]["a"][cg.i_part]) == [5, 4]


def test_without_provenance_the_plan_is_as_it_was() -> None:
    plan = FeaturePlan(COUNTS)
    assert "_PROV" not in plan.source and "part" not in plan.source
    assert plan._groups[0].i_part == -1 and "provenance" not in plan.state_dict()
    with pytest.raises(ValueError, match="provenance=True"):
        plan.split([1])


def test_part_must_be_an_unsigned_16_bit_int() -> None:
    plan = FeaturePlan(COUNTS, provenance=True)
    for bad in (-1, 65536, 1.0, "1", None):
        with pytest.raises(ValueError, match="from 0 to 65535"):
            plan.part = bad  # type: ignore[assignment]
    plan.part = 65535
    assert plan.part == 65535


def test_states_with_and_without_provenance_refuse_each_other() -> None:
    with_p, without = FeaturePlan(COUNTS, provenance=True), FeaturePlan(COUNTS)
    for plan, sd in ((with_p, without.state_dict()), (without, with_p.state_dict())):
        with pytest.raises(ConfigError, match=r"other provenance .*grace and provenance"):
            plan.load_state_dict(sd)
        with pytest.raises(ConfigError, match="other provenance"):
            plan.absorb(sd)
    with pytest.raises(ConfigError, match=r"other provenance \(False, now True\)"):
        with_p.absorb(without)
    # a checkpoint of before the option (no "provenance" in it) loads into a plan without
    old = without.state_dict()
    assert "provenance" not in old
    FeaturePlan(COUNTS).load_state_dict(old)
    # a release before provenance checks no such key: it refuses such a state by its format
    assert old["format"] == 10 and with_p.state_dict()["format"] == 11
    assert with_p.fresh().provenance and with_p.fresh()._identity()["provenance"] is True


def test_entities_move_whole_or_cut_in_two() -> None:
    plan = FeaturePlan(COUNTS, grace=GRACE, provenance=True)
    _run(plan, [(0, _tx(0, T0, "a")), (1, _tx(1, T0 + 1, "b")), (0, _tx(2, T0 + 2, "a"))])
    a, m = plan.states[0]["a"], plan.states[1]["m"]
    moved = plan.split({1})
    assert plan.states[0]["a"] is a and "b" not in plan.states[0]  # stayed / moved whole
    assert list(moved.states[0]) == ["b"] and list(moved.states[1]["m"][TS]) == [T0 + 1]
    assert plan.states[1]["m"] is m and list(m[TS]) == [T0, T0 + 2]
    # the windows of both sides are their own: counts, distinct cards
    assert _run(moved, [(1, _tx(3, T0 + 3, "c"))]) == [
        {"c_n": 1, "c_fraud": 0, "m_n": 2, "m_fraud": 0, "m_cards": 2}
    ]
    assert _run(plan, [(0, _tx(4, T0 + 4, "a"))])[0]["m_n"] == 3
    # nothing of those partitions: an empty plan, the watermark kept
    empty = plan.split({7})
    assert empty.state_sizes() == {"card_id": 0, "merchant_id": 0}
    assert empty.label_store_size() == 0 and empty.watermark == T0 + 4


def test_labels_move_with_their_transactions() -> None:
    plan = FeaturePlan(COUNTS, grace=GRACE, provenance=True)
    _run(plan, [(0, _tx(0, T0, "a")), (1, _tx(1, T0 + 1, "b")), (1, _tx(2, T0 + 2, "a"))])
    for i in (0, 1, 2):
        assert plan.on_label({"tx_id": f"t{i}", "is_fraud": True})
    moved = plan.split({1})
    assert [moved.knows(f"t{i}") for i in range(3)] == [False, True, True]
    assert [plan.knows(f"t{i}") for i in range(3)] == [True, False, False]
    # the labels known went along: a repeated label changes nothing, a retraction counts
    assert not moved.on_label({"tx_id": "t1", "is_fraud": True})
    assert not plan.on_label({"tx_id": "t0", "is_fraud": True})
    assert moved.on_label({"tx_id": "t2", "is_fraud": False})
    assert _run(moved, [(1, _tx(3, T0 + 3, "a"))])[0] == {
        "c_n": 2, "c_fraud": 0, "m_n": 3, "m_fraud": 1, "m_cards": 2,
    }  # fmt: skip
    assert _run(plan, [(0, _tx(4, T0 + 4, "a"))])[0]["c_fraud"] == 1


def test_transactions_at_one_instant_go_to_their_own_partitions_side() -> None:
    plan = FeaturePlan(COUNTS, grace=GRACE, provenance=True)
    _run(plan, [(0, _tx(0, T0, "a")), (1, _tx(1, T0, "b")), (1, _tx(2, T0 + 5, "b"))])
    moved = plan.split({1})
    assert [plan.knows(f"t{i}") for i in range(3)] == [True, False, False]
    assert [moved.knows(f"t{i}") for i in range(3)] == [False, True, True]


def test_a_label_at_an_instant_of_two_partitions_marks_its_own_partitions_entry() -> None:
    """From a review: merchant m1 has tx b (partition 1), then tx a (partition 0) at the same
    instant; a is labelled fraud. The mark sat on b's entry (the first not yet marked), which
    a split of partition 0 left behind, while the label known went with a: the moved state
    counted 0 frauds for m1, and the label read again changed nothing (known already)."""
    specs = [Spec("m_fraud", "merchant_id", "fraud_count", None, "1d")]
    plan = FeaturePlan(specs, grace=GRACE, provenance=True)
    _run(plan, [(1, _tx(0, T0, "c1", "m1")), (0, _tx(1, T0, "c0", "m1"))])
    assert plan.on_label({"tx_id": "t1", "is_fraud": True})
    moved = plan.split([0])
    assert not moved.on_label({"tx_id": "t1", "is_fraud": True})  # (read again: known)
    assert _run(moved, [(0, _tx(2, T0 + 10, "c9", "m1"))]) == [{"m_fraud": 1}]
    assert _run(plan, [(1, _tx(3, T0 + 10, "c9", "m1"))]) == [{"m_fraud": 0}]
    assert plan.on_label({"tx_id": "t0", "is_fraud": True})  # b's own label: its own entry
    assert _run(plan, [(1, _tx(4, T0 + 20, "c9", "m1"))]) == [{"m_fraud": 1}]


def test_trimmed_or_evicted_entries_move_by_partition() -> None:
    plan = FeaturePlan(COUNTS, grace=GRACE, provenance=True, label_ttl="3d", sweep_min_events=1)
    _run(plan, [(1, _tx(0, T0, "a", "m0")), (1, _tx(1, T0 + 10, "b", "m1"))])
    # a day on: "a"'s first entry trimmed (merchant m2), merchant m0 and card b evicted
    day = T0 + 86400
    _run(plan, [(1, _tx(2, day, "a", "m2")), (1, _tx(3, day + 1000, "a", "m2"))])
    assert "m0" not in plan.states[1] and "b" not in plan.states[0]
    moved = plan.split({1})
    assert [moved.knows(f"t{i}") for i in range(4)] == [True] * 4
    assert [plan.knows(f"t{i}") for i in range(4)] == [False] * 4
    assert plan.state_sizes() == {"card_id": 0, "merchant_id": 0}


def _known(plan: FeaturePlan) -> set[str]:
    """The transactions whose fraud label ``plan`` counts."""
    return {x for bk in plan._labels.buckets.values() for x in bk.known}


def test_frozen_label_buckets_stay_frozen() -> None:
    # dense: the label buckets of the 2-hour fraud windows freeze along the way
    ops = dense_stream(4, 1200, T0, mean_step=30.0)
    ops = _accepted(ops, reference(ALL_SPECS, ops, timezone="UTC", grace=GRACE))
    part = _partitions(ops, [0, 1, 2], by_card=False)
    plan = FeaturePlan(ALL_SPECS, grace=GRACE, provenance=True)
    _feed(lambda p: plan, ops[:800], part)
    plan._labels.flush()
    frozen = {b for b, bk in plan._labels.buckets.items() if bk.open is None}
    held = plan.label_store_size()
    known = _known(plan)
    moved = plan.split({2})
    for side in (plan, moved):
        assert frozen and all(side._labels.buckets[b].open is None for b in frozen)
        for x in _known(side):
            assert side.knows(x) and (part[x] == 2 or side is plan)
    assert plan.label_store_size() + moved.label_store_size() == held
    assert _known(plan) | _known(moved) == known
    _go_on_apart(plan, moved, {2}, ops, 800, part)


def test_a_categorical_column_kept_shorter_is_made_whole_on_both_sides() -> None:
    specs = [
        Spec("c_distinct_m_10m", "card_id", "distinct", "merchant_id", "10m"),
        Spec("c_seen_m_10m", "card_id", "seen", "merchant_id", "10m"),
        Spec("c_n_2h", "card_id", "count", None, "2h"),
    ]
    ops = [
        {"kind": "tx", "tx": _tx(i, T0 + 60 * i, "a", f"m{i % 7}")} for i in range(100)
    ]  # fmt: skip
    part = {f"t{i}": i % 2 for i in range(100)}
    plan = FeaturePlan(specs, grace=GRACE, provenance=True)
    _feed(lambda p: plan, ops[:80], part)
    cg = plan._groups[0]
    assert plan.states[0]["a"][cg.i_coff[0]] > 0  # (cut: its first values are gone)
    moved = plan.split({1})
    _go_on_apart(plan, moved, {1}, ops, 80, part, specs)


def test_with_provenance_a_long_seen_window_keeps_its_column() -> None:
    # a seen-only window longer than its field's column reads a last-seen table (codegen._fold)
    # in a plan without provenance; with it, the column is kept as long as the window (as
    # before the tables), so that a split divides each entity's values by partition
    specs = [
        Spec("c_distinct_m_10m", "card_id", "distinct", "merchant_id", "10m"),
        Spec("c_seen_m_3h", "card_id", "seen", "merchant_id", "3h"),
        Spec("c_seen_d_2h", "card_id", "seen", "device_id", "2h"),
        Spec("c_n_3h", "card_id", "count", None, "3h"),
    ]
    txs = [{**_tx(i, T0 + 60 * i, "a", f"m{i * i % 47}"), "device_id": f"d{i % 29}"}
           for i in range(240)]  # fmt: skip
    ops = [{"kind": "tx", "tx": tx} for tx in txs]
    part = {f"t{i}": i // 3 % 2 for i in range(240)}
    assert FeaturePlan(specs, grace=GRACE)._groups[0].last_slots  # (without: tables)
    plan = FeaturePlan(specs, grace=GRACE, provenance=True)
    cg = plan._groups[0]
    assert not cg.last_slots and cg.i_last == [-1, -1]
    _feed(lambda p: plan, ops[:180], part)
    again = FeaturePlan(specs, grace=GRACE, provenance=True)
    again.load_state_dict(plan.state_dict())
    moved = plan.split({1})
    _go_on_apart(plan, moved, {1}, ops, 180, part, specs)
    again.absorb(again.split({1}))
    want = reference(specs, ops, timezone="UTC", grace=GRACE)
    assert_same(_feed(lambda p: again, ops[180:], part), want[180:], ops[180:], specs)


def test_a_plan_dropped_is_freed_by_reference_counting_alone():
    """A plan holds no reference cycle (its generated code reaches it weakly, and is not in
    its own globals), so its state is freed the moment it is dropped: a takeover's snapshot,
    loaded frozen out of the collector's sight (fds.gcpolicy.loads) and dropped once cut, is
    not kept for good. Before: ~5,000 containers of a small plan were cyclic garbage. Counted
    in a process of its own: in a test worker, the threads earlier tests left (a client's, a
    server's) made cyclic garbage of their own meanwhile (6 objects, a loaded CI run)."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import gc
from tests.features.test_split import _feed, _make, _partitions
from tests.features.test_plan_dense import dense_stream

ops = dense_stream(3, 300, 1_717_272_000.0, mean_step=120.0)
part = _partitions(ops, [0], by_card=True)

def life():  # what a takeover does with plans
    plan = _make()
    _feed(lambda p: plan, ops, part)
    other = plan.fresh()
    other.load_state_dict(plan.state_dict())  # (frozen)
    cut = other.split([1])
    plan.split([1])
    plan.absorb(cut)

life()  # (once first: one-time caches of the libraries it calls)
gc.unfreeze()
gc.collect()
gc.disable()
life()
gc.unfreeze()  # (in the collector's sight again, to be counted)
print(gc.collect())
"""
    root = Path(__file__).resolve().parents[2]
    got = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "0", got.stdout
