"""Entity states in shards (fds.features.shards): a mapping, pickled across hash seeds, and
states of the format before them still loaded."""

from __future__ import annotations

import copy
import math
import os
import pickle
import subprocess
import sys
from array import array
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fds import gcpolicy
from fds.errors import ConfigError
from fds.features.plan import FeaturePlan
from fds.features.shards import SHARDS, Shards, shard_of
from tests.features.conftest import Spec

SPECS = [
    Spec("card_n_1h", "card_id", "count", None, "1h"),
    Spec("card_sum_1h", "card_id", "sum", "amount", "1h"),
    Spec("m_countries", "merchant_id", "distinct", "country", "1d"),
    Spec("m_fraud", "merchant_id", "fraud_count", None, "7d"),
]
T0 = 1767225600.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("sgdp"), st.integers(-3, 40) | st.text(max_size=3))))
def test_shards_behave_as_a_dict(ops: list[tuple[str, object]]) -> None:
    s, d = Shards(), {}
    for op, k in ops:
        if op == "s":
            s[k] = d[k] = [k]
        elif op == "g":
            assert s.get(k) == d.get(k) and (k in s) == (k in d)
        elif op == "d" and k in d:
            del s[k], d[k]
        elif op == "p":
            assert s.pop(k, None) == d.pop(k, None)
        assert len(s) == len(d)
    assert dict(s.items()) == d and sorted(map(repr, s)) == sorted(map(repr, d))
    assert sorted(map(repr, s.values())) == sorted(map(repr, d.values()))
    assert len(s.items()) == len(d)


def test_a_pickle_of_another_hash_seed_has_the_same_shards() -> None:
    # a string's hash differs between processes, the shards do not (shard_of): shards pickled
    # by one are found by another, each key in the same shard, in the same order
    code = (
        "import pickle, sys; from fds.features.shards import Shards;"
        "sys.stdout.buffer.write(pickle.dumps(Shards({f'c{i}': i for i in range(5000)})))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "1"}
    data = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    s = pickle.loads(data.stdout)
    assert len(s) == 5000 and all(s.get(f"c{i}") == i for i in range(5000))
    here = Shards({f"c{i}": i for i in range(5000)})
    assert [list(p) for p in s.parts] == [list(p) for p in here.parts]
    assert all(shard_of(k) == n for n, part in enumerate(s.parts) for k in part)


def _tx(i: int) -> dict[str, object]:
    return {
        "tx_id": f"t{i}", "ts": T0 + i * 37.0, "card_id": f"c{i % 7}",
        "merchant_id": f"m{i % 3}", "amount": float(i % 11), "country": "KR" if i % 2 else "DE",
    }  # fmt: skip


def test_a_state_of_the_format_before_shards_loads() -> None:
    # formats 4 and 5 held each group's states in one dict: such a checkpoint still loads
    plan = FeaturePlan(SPECS)
    for i in range(200):
        plan.compute(_tx(i))
    plan.on_label({"tx_id": "t150", "is_fraud": True})
    sd = plan.state_dict()
    assert sd["format"] == 10
    body = gcpolicy.loads(sd["state"])
    body["states"] = [dict(s.items()) for s in body["states"]]
    del body["shards"]  # (spread by the string hash: no release before shard_of said how)
    # ... its sweep in progress as [group, all its keys, next], due at the next event
    body["sweep_todo"] = [[0, list(body["states"][0]), 1]]
    body["sweep_after"] = body["accepted"]
    old = {**sd, "format": 4, "state": gcpolicy.dumps(body)}
    again = FeaturePlan(SPECS)
    again.load_state_dict(old)
    assert all(isinstance(s, Shards) for s in again.states)
    assert again.state_sizes() == plan.state_sizes() == {"card_id": 7, "merchant_id": 3}
    for i in range(200, 400):
        assert again.compute(_tx(i)) == plan.compute(_tx(i))
    assert not again._sweep_todo
    # ... and format 5 (with provenance) does not load into a plan without it
    with pytest.raises(ConfigError, match=r"other format \(5, now 10\)"):
        FeaturePlan(SPECS).load_state_dict({**old, "format": 5})


def test_a_categorical_value_that_is_an_entity_is_its_state_key() -> None:
    # the device's cards are the card states' keys, not interned copies: the interpreter's
    # table of interned strings would hold every card (and grow in one call: fds.features.codegen
    # _order); the card group goes first although declared after the device's
    specs = [
        Spec("d_cards", "device_id", "distinct", "card_id", "1h"),
        Spec("c_n", "card_id", "count", None, "1h"),
        Spec("c_merchants", "card_id", "distinct", "merchant_id", "1h"),
    ]
    plan = FeaturePlan(specs, compiler=None)
    got = []
    for i in range(6):  # (ids made at run time: a literal would be interned by the compiler)
        card, merchant = "".join(["card-", str(i % 2)]), "".join(["m-", str(i % 3)])
        tx = {"tx_id": f"t{i}", "ts": T0 + i, "card_id": card, "merchant_id": merchant,
              "device_id": "d"}  # fmt: skip
        got.append(plan.compute(tx))
    assert [g["d_cards"] for g in got] == [1, 2, 2, 2, 2, 2]
    assert [(g["c_n"], g["c_merchants"]) for g in got] == [
        (1, 1),
        (1, 1),
        (2, 2),
        (2, 2),
        (3, 3),
        (3, 3),
    ]
    cards = {k: k for k in plan.states[1]}
    assert len(cards) == 2 and all(sys.intern("".join(["card-", k[-1]])) is not k for k in cards)
    col = plan.states[0]["d"][plan._groups[0].i_cat[0]]
    assert all(v is cards[v] for v in col)  # one object per card
    # merchants are no group's entity here: interned, one object each
    col = plan.states[1]["card-0"][plan._groups[1].i_cat[0]]
    assert all(v is sys.intern("".join(["m-", v[-1]])) for v in col)


def test_int_ids_in_steps_of_a_power_of_two_spread_over_every_shard() -> None:
    # an int hashes to itself: with 256 shards by its low 8 bits, ids in steps of 256 all went
    # to one shard, and its resizes paused as the one dict's did (a review)
    for step in (1, 10, 256, 1000, 65536):
        s = Shards({i * step: i for i in range(20_000)})
        sizes = sorted(map(len, s.parts))
        assert sizes[0] > 0 and sizes[-1] < 2 * 20_000 / SHARDS, (step, sizes[-1])


def test_a_copy_shares_nothing_with_the_original() -> None:
    s = Shards({"a": 1, "b": 2})
    c = copy.copy(s)
    c["c"] = 3
    del c["a"]
    assert dict(s.items()) == {"a": 1, "b": 2} and dict(c.items()) == {"b": 2, "c": 3}


def test_a_sweep_restored_under_another_hash_seed_evicts_every_idle_entity() -> None:
    # the sweep in progress listed shards by number: under another hash they name other keys
    code = f"""
import pickle, sys, types
from fds.features.plan import FeaturePlan
spec = types.SimpleNamespace(name="n", entity="card_id", agg="count", field=None, window="1h")
plan = FeaturePlan([spec], sweep_min_events=1)
for i in range(3000):
    plan.compute({{"tx_id": f"t{{i}}", "ts": {T0} + i / 100, "card_id": f"c{{i}}"}})
for i in range(5000):  # (a sweep is considered once per as many events as states held)
    plan.compute({{"tx_id": f"a{{i}}", "ts": {T0} + 3 * 3600 + i, "card_id": "busy"}})
    if plan._sweep_todo:
        break
assert plan._sweep_todo and plan.state_sizes()["card_id"] > 1000  # a sweep under way
sys.stdout.buffer.write(pickle.dumps(plan.state_dict()))
"""
    env = {**os.environ, "PYTHONHASHSEED": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    spec = Spec("n", "card_id", "count", None, "1h")
    plan = FeaturePlan([spec], sweep_min_events=1)
    plan.load_state_dict(pickle.loads(out.stdout))
    i = 0
    while plan._sweep_todo:
        i += 1
        plan.compute({"tx_id": f"b{i}", "ts": T0 + 4 * 3600 + i, "card_id": "busy"})
    assert plan.state_sizes() == {"card_id": 1} and plan.evicted_entities == 3000


def test_two_groups_that_count_each_others_entity_log_each_others_keys() -> None:
    # the card counts its devices and the device its cards: the device's state is looked up
    # before the card is folded (its key, or the value that becomes its key), nothing interned
    specs = [
        Spec("c_devices", "card_id", "distinct", "device_id", "1h"),
        Spec("d_cards", "device_id", "distinct", "card_id", "1h"),
    ]
    plan = FeaturePlan(specs, compiler=None)
    got = []
    for i in range(8):  # (ids made at run time: a literal would be interned by the compiler)
        card, device = "".join(["card-", str(i % 2)]), "".join(["dev-", str(i % 3)])
        tx = {"tx_id": f"t{i}", "ts": T0 + i, "card_id": card, "device_id": device}
        got.append((plan.compute(tx)["c_devices"], plan.states[0][card], plan.states[1][device]))
    assert [g[0] for g in got] == [1, 1, 2, 2, 3, 3, 3, 3]
    cards, devices = ({k: k for k in s} for s in plan.states)
    assert len(cards) == 2 and len(devices) == 3
    for keys, prefix in ((cards, "card-"), (devices, "dev-")):
        assert all(sys.intern("".join([prefix, k[-1]])) is not k for k in keys)
    for state in plan.states[0].values():
        assert all(v is devices[v] for v in state[plan._groups[0].i_cat[0]])
    for state in plan.states[1].values():
        assert all(v is cards[v] for v in state[plan._groups[1].i_cat[0]])


def test_a_reordered_event_logs_the_state_keys_too() -> None:
    # an event older than its card's newest (within grace) is inserted by the rare path: its
    # device is logged as the device state's key there too, not interned (a review)
    specs = [
        Spec("c_devices", "card_id", "distinct", "device_id", "1h"),
        Spec("d_cards", "device_id", "distinct", "card_id", "1h"),
    ]
    plan = FeaturePlan(specs, grace=300.0, compiler=None)
    dev = "".join(["dev-", "9"])
    plan.compute({"tx_id": "a", "ts": T0, "card_id": "".join(["x", "1"]), "device_id": dev})
    card = "".join(["card-", "z"])
    plan.compute({"tx_id": "b", "ts": T0 + 100, "card_id": card, "device_id": "".join(["e", "1"])})
    again = "".join(["dev-", "9"])  # (equal, another object)
    plan.compute({"tx_id": "c", "ts": T0 + 50, "card_id": card, "device_id": again})
    assert plan.reordered_events == 1
    col = plan.states[0][card][plan._groups[0].i_cat[0]]
    assert col[0] is dev and sys.intern("".join(["dev-", "9"])) is not dev
    # ... and a new device first seen out of order becomes the key it was logged as
    new = "".join(["dev-", "n"])
    plan.compute({"tx_id": "d", "ts": T0 + 60, "card_id": card, "device_id": new})
    assert next(k for k in plan.states[1] if k == new) is new
    assert any(v is new for v in plan.states[0][card][plan._groups[0].i_cat[0]])


def _goes_on_as_format_6(specs: list[Spec], n: int, rewrite: Any) -> None:
    """A plan fed ``n`` transactions, its state rewritten as a format-6 release saved it
    (``rewrite(plan, body)``), loads and goes on as the plan does for 300 more."""
    plan = FeaturePlan(specs)
    for i in range(n):
        plan.compute(_tx(i))
    sd = plan.state_dict()
    body = gcpolicy.loads(sd["state"])
    rewrite(plan, body)
    again = FeaturePlan(specs)
    again.load_state_dict({**sd, "format": 6, "state": gcpolicy.dumps(body)})
    for i in range(n, n + 300):
        assert again.compute(_tx(i)) == plan.compute(_tx(i))


def test_a_state_of_formats_6_and_7_with_a_dict_per_counter_loads() -> None:
    # up to formats 6 and 7 every value counter was a dict of counts (now a number while its
    # window is short: codegen.tally): such a checkpoint still loads, and goes on as the plan
    # does, across the window's growth past LARGE
    def dicts(plan: FeaturePlan, body: dict[str, Any]) -> None:
        cg = plan._groups[1]
        ((wi, *_rest, ((slot, ci),), _fraud, _feats, _lasts),) = (w for w in cg.windows if w[4])
        for state in body["states"][1].values():
            assert state[cg.i_ctr[slot]].__class__ is int  # (20 entries each)
            state[cg.i_ctr[slot]] = dict(Counter(state[cg.i_cat[ci]][state[cg.i_head[wi]] :]))

    _goes_on_as_format_6(SPECS, 60, dicts)


def test_a_state_of_before_numeric_offsets_loads() -> None:
    # up to formats 6 and 7 a numeric column was as long as the log; since 8 one that no
    # window reads as far back is cut, its offset the state's last slot: an older state gets
    # it appended as 0 (its column whole) and goes on as the plan does
    def whole(plan: FeaturePlan, body: dict[str, Any]) -> None:
        cg = plan._groups[0]
        ((col, off, _keep),) = cg.i_short
        assert off == cg.size - 1
        cut = 0
        for state in body["states"][0].values():
            n = state.pop()  # (the offset, last)
            cut += n
            state[col] = array("d", [math.nan] * n) + state[col]  # (the log's length)
        assert cut  # (some were cut)

    specs = [
        Spec("n_2h", "card_id", "count", None, "2h"),
        Spec("mean_10m", "card_id", "mean", "amount", "10m"),
    ]
    _goes_on_as_format_6(specs, 300, whole)


def test_a_state_of_a_newer_release_is_refused_by_name() -> None:
    # a downgrade: the advice to restore with the same declarations, timezone, grace and
    # provenance did not fit a state whose only difference is its newer format (a QA pass)
    plan = FeaturePlan(SPECS)
    plan.compute(_tx(0))
    sd = plan.state_dict()
    with pytest.raises(ConfigError, match=r"saved by a newer release of fds \(format 12; this "
                       r"one reads 10 and 4, 6, 8\): restore it with that release"):  # fmt: skip
        FeaturePlan(SPECS).load_state_dict({**sd, "format": 12})
    # ... an older one not read says what differs, as before
    with pytest.raises(ConfigError, match=r"other format \(2, now 10\)"):
        FeaturePlan(SPECS).load_state_dict({**sd, "format": 2})


def test_a_state_of_format_8_with_long_seen_columns_goes_on() -> None:
    # up to formats 8 and 9 a seen-only window longer than its field's distinct windows kept
    # the field's column and a counter (a dict over 64 entries); since 10 the column is cut
    # to the distinct windows' length, the values cut going to a last-seen table. A state
    # saved by the release before (data/format8_seen.pickle, made by badbd52 from the first
    # 600 ops of this stream) loads, gets its tables appended empty, cuts its columns at its
    # entities' next events and goes on as the brute force says
    from tests.features.conftest import GRACE, STARTS
    from tests.features.reference import reference
    from tests.features.test_plan_dense import LAST_SEEN_SPECS, dense_stream, recurring
    from tests.features.test_plan_properties import assert_same, run_plan

    specs = [s for s in LAST_SEEN_SPECS if s.name not in ("seen_m_day", "seen_m_5m")]
    ops = recurring(dense_stream(7, 900, STARTS["UTC"][0], mean_step=20.0), 7)
    with open(os.path.join(os.path.dirname(__file__), "data", "format8_seen.pickle"), "rb") as f:
        sd = pickle.load(f)
    assert sd["format"] == 8
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    plan.load_state_dict(sd)
    card = plan._groups[0]
    st = plan.states[0]["a"]
    assert len(st) == card.size and all(st[i] is None for i in card.i_last)
    assert all(st[card.i_ctr[slot]] == 0 for slot in card.last_slots)  # (its dicts dropped)
    want = reference(specs, ops, timezone="UTC", grace=GRACE)
    n_head = sum(op["kind"] == "tx" for op in ops[:600])
    assert_same(run_plan(plan, ops[600:]), want[n_head:], ops[600:], specs)
    assert all(st[i] for i in card.i_last) and len(st[card.i_cat[1]]) < 30  # (cut since)
