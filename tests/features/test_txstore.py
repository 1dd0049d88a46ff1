"""The tx_id store: open and frozen buckets answer alike; labels after a freeze still count."""

from __future__ import annotations

import pickle
import random

from fds.features import FeaturePlan
from fds.features.txstore import _SEGMENT, PART_SIZE, TxStore
from tests.features.conftest import Spec


def test_frozen_buckets_find_exactly_what_open_ones_did() -> None:
    store = TxStore(span=10.0)
    # non-ASCII, empty, long, trailing NULs (NumPy bytes would strip them)
    ids = [f"t{i}" for i in range(50)] + ["ü-1", "", "x" * 90, "a", "a\x00", "a\x00\x00", "\x00"]
    for i, tx_id in enumerate(ids):
        store.remember(tx_id, float(i) / 2, ("k", i % 3))
    before = {tx_id: store.find(tx_id)[1:] for tx_id in ids}  # type: ignore[index]
    store.expire(freeze_before=1e9, drop_before=-1e9)
    store.flush()
    assert all(bk.open is None for bk in store.buckets.values())
    assert {tx_id: store.find(tx_id)[1:] for tx_id in ids} == before  # type: ignore[index]
    assert store.find("t50") is None and store.find("é") is None and store.find("t4 ") is None
    assert store.find("x" * 89) is None and store.find("a\x00\x00\x00") is None
    again = pickle.loads(pickle.dumps(store))
    assert {tx_id: again.find(tx_id)[1:] for tx_id in ids} == before  # type: ignore[index]
    assert len(again) == len(ids)


def test_expire_drops_whole_buckets_and_keeps_writing() -> None:
    store = TxStore(span=10.0)
    store.remember("a", 5.0, "m")
    store.remember("b", 15.0, "m")
    store.expire(freeze_before=20.0, drop_before=10.0)  # [0, 10) dropped, [10, 20) frozen
    store.flush()
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
    plan._labels.flush()
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


def test_freeze_is_spread_over_later_transactions_and_answers_throughout() -> None:
    store = TxStore(span=1000.0)
    rng = random.Random(5)
    n = _SEGMENT + 3 * PART_SIZE + 17  # several segments and partitions, the last one short
    ids = [f"id-{rng.randrange(10**12)}-{i}" for i in range(n)]
    for i, tx_id in enumerate(ids):
        store.remember(tx_id, i * 999.0 / n, i % 7)
    want = {tx_id: (i % 7, i * 999.0 / n) for i, tx_id in enumerate(ids)}
    store.expire(freeze_before=1000.0, drop_before=-1.0)
    old = store.buckets[0]
    assert old.open is not None and len(old.open) == 2  # queued, not frozen inside the call
    steps = 0
    t = 1000.0
    while old.open is not None:  # each step is one remember call: at most PART_SIZE entries
        for _ in range(PART_SIZE // 4):
            t += 0.001
            store.remember(f"new{t}", t, "n")
        steps += 1
        probe = rng.sample(ids, 20)
        assert all(store.find(x)[1:] == want[x] for x in probe)  # type: ignore[index]
        if steps == 3:  # a checkpoint taken mid-freeze restores and freezes again
            again = pickle.loads(pickle.dumps(store))
            again.flush()
            assert all(again.find(x)[1:] == want[x] for x in ids)  # type: ignore[index]
    chunks = -(-n // PART_SIZE)  # 12 steps split PART_SIZE entries each by partition ...
    assert old.parts is not None and len(old.parts) == 16  # ... into 12 rounded up to 2^k
    assert steps == chunks + 16  # then each step sorts one partition
    assert all(store.find(x)[1:] == want[x] for x in ids)  # type: ignore[index]
    assert len(store) == n + steps * (PART_SIZE // 4)
