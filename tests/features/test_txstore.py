"""The tx_id store: open and frozen buckets answer alike; labels after a freeze still count."""

from __future__ import annotations

import pickle

from fds.features import FeaturePlan
from fds.features.txstore import TxStore
from tests.features.conftest import Spec


def test_frozen_buckets_find_exactly_what_open_ones_did() -> None:
    store = TxStore(span=10.0)
    ids = [f"t{i}" for i in range(50)] + ["ü-1", "", "x" * 40]  # non-ASCII, empty, long
    for i, tx_id in enumerate(ids):
        store.remember(tx_id, float(i) / 2, ("k", i % 3))
    before = {tx_id: store.find(tx_id)[1:] for tx_id in ids}  # type: ignore[index]
    store.expire(freeze_before=1e9, drop_before=-1e9)
    assert all(bk.open is None for bk in store.buckets.values())
    assert {tx_id: store.find(tx_id)[1:] for tx_id in ids} == before  # type: ignore[index]
    assert store.find("t50") is None and store.find("é") is None and store.find("t4 ") is None
    again = pickle.loads(pickle.dumps(store))
    assert {tx_id: again.find(tx_id)[1:] for tx_id in ids} == before  # type: ignore[index]
    assert len(again) == len(ids)


def test_expire_drops_whole_buckets_and_keeps_writing() -> None:
    store = TxStore(span=10.0)
    store.remember("a", 5.0, "m")
    store.remember("b", 15.0, "m")
    store.expire(freeze_before=20.0, drop_before=10.0)  # [0, 10) dropped, [10, 20) frozen
    assert store.find("a") is None and store.find("b")[1:] == ("m", 15.0)  # type: ignore[index]
    store.remember("c", 25.0, "n")  # a new open bucket after the cached one was frozen
    assert store.find("c")[1:] == ("n", 25.0) and len(store) == 2  # type: ignore[index]


def test_label_for_a_frozen_transaction_counts_once_and_can_be_withdrawn() -> None:
    specs = [Spec("m_fraud_n_2h", "merchant_id", "fraud_count", None, "2h")]
    plan = FeaturePlan(specs, grace=60.0)  # label_ttl = 2h + 60 s; buckets of ~7.5 min
    plan.compute({"tx_id": "a", "ts": 0.0, "card_id": "c", "merchant_id": "m", "amount": 1.0})
    plan.compute({"tx_id": "b", "ts": 0.0, "card_id": "c", "merchant_id": "m", "amount": 1.0})
    snap = plan.compute({"tx_id": "z", "ts": 3000.0, "card_id": "c", "merchant_id": "m"})
    assert snap == {"m_fraud_n_2h": 0}
    assert any(bk.open is None for bk in plan._labels.buckets.values())  # "a" is frozen
    for _ in range(2):  # the same label twice counts once
        plan.on_label({"tx_id": "a", "ts": 3001.0, "is_fraud": True})
    tx = {"card_id": "c", "merchant_id": "m", "amount": 1.0}
    assert plan.compute({**tx, "tx_id": "y", "ts": 3002.0}) == {"m_fraud_n_2h": 1}
    plan.on_label({"tx_id": "b", "ts": 3003.0, "is_fraud": True})  # same timestamp as "a"
    assert plan.compute({**tx, "tx_id": "x", "ts": 3004.0}) == {"m_fraud_n_2h": 2}
    plan.on_label({"tx_id": "a", "ts": 3005.0, "is_fraud": False})  # withdrawn
    assert plan.compute({**tx, "tx_id": "w", "ts": 3006.0}) == {"m_fraud_n_2h": 1}
    assert plan.compute({**tx, "tx_id": "v", "ts": 7201.0}) == {"m_fraud_n_2h": 0}  # expired
    plan.on_label({"tx_id": "nope", "ts": 7202.0, "is_fraud": True})
    assert plan.unmatched_labels == 1
