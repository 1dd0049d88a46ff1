"""The tx_id store: open and frozen buckets answer alike; labels after a freeze still count."""

from __future__ import annotations

import pickle
import random
from typing import Any

import numpy as np

from fds.features import FeaturePlan, txstore
from fds.features.txstore import _SEGMENT, PART_SIZE, TxStore
from tests.features.conftest import Spec


def test_frozen_buckets_find_exactly_what_open_ones_did() -> None:
    store = TxStore(span=10.0)
    # non-ASCII, empty, long, trailing NULs (NumPy bytes would strip them)
    ids = [f"t{i}" for i in range(50)] + ["ü-1", "", "x" * 90, "a", "a\x00", "a\x00\x00", "\x00"]
    for i, tx_id in enumerate(ids):
        store.remember(tx_id, float(i) / 2, ("k", i % 3))
    before = {tx_id: store.find(tx_id)[1:3] for tx_id in ids}  # type: ignore[index]
    store.expire(freeze_before=1e9, drop_before=-1e9)
    store.flush()
    assert all(bk.open is None for bk in store.buckets.values())
    assert {tx_id: store.find(tx_id)[1:3] for tx_id in ids} == before  # type: ignore[index]
    assert store.find("t50") is None and store.find("é") is None and store.find("t4 ") is None
    assert store.find("x" * 89) is None and store.find("a\x00\x00\x00") is None
    again = pickle.loads(pickle.dumps(store))
    assert {tx_id: again.find(tx_id)[1:3] for tx_id in ids} == before  # type: ignore[index]
    assert len(again) == len(ids)


def test_expire_drops_whole_buckets_and_keeps_writing() -> None:
    store = TxStore(span=10.0)
    store.remember("a", 5.0, "m")
    store.remember("b", 15.0, "m")
    store.expire(freeze_before=20.0, drop_before=10.0)  # [0, 10) dropped, [10, 20) frozen
    store.flush()
    assert store.find("a") is None and store.find("b")[1:3] == ("m", 15.0)  # type: ignore[index]
    store.remember("c", 25.0, "n")  # a new open bucket after the cached one was frozen
    assert store.find("c")[1:3] == ("n", 25.0) and len(store) == 2  # type: ignore[index]


def test_a_bucket_is_frozen_only_once_no_accepted_time_maps_to_it() -> None:
    """A QA pass: with a span that is no binary fraction (a label ttl of 1.1d), the end of a
    bucket, ``(b + 1) * span``, rounds below a time whose bucket is still ``b``; an event
    accepted at that time (the freeze horizon) went into a bucket queued for freezing (its
    entries lost at the freeze: labels unmatched) or frozen (an AssertionError)."""
    from fractions import Fraction

    span = 95040.00000000001 / 128  # (FeaturePlan's label span of a 1.1d window)
    b = next(
        b
        for b in range(int(1.767e9 // span), int(1.767e9 // span) + 100_000)
        if Fraction((b + 1) * span) < Fraction(span) * (b + 1) and (b + 1) * span // span == b
    )
    edge = (b + 1) * span  # still in bucket b
    store = TxStore(span=span)
    store.remember("first", edge - span / 2, "m")  # (bucket b exists when it expires)
    store.expire(freeze_before=edge, drop_before=0.0)  # an event at `edge` is still accepted
    ids = [f"x{i}" for i in range(3 * PART_SIZE)]
    for tx_id in ids:  # (the freeze steps come every PART_SIZE // 4 of them)
        store.remember(tx_id, edge, "m")
    store.expire(freeze_before=edge + span, drop_before=0.0)
    store.flush()
    assert all(store.find(tx_id) is not None for tx_id in [*ids, "first"])
    store.remember("next", edge + span, "m")  # (bucket b frozen now; the next one open)
    assert store.find("next") is not None


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


def test_a_repeated_tx_id_has_its_labels_go_to_its_newest_transaction() -> None:
    """A QA pass: repeated within a bucket of the store (~11 min at a 1d window), a label
    found the first transaction's label known, so the new one's fraud label was "already
    counted" and a `false` withdrew the old one's, against the README."""
    specs = [
        Spec("c_fc", "card_id", "fraud_count", None, "1d"),
        Spec("m_fc", "merchant_id", "fraud_count", None, "1d"),
    ]
    for gap in (100.0, 2000.0):  # (the same bucket, then the next)
        plan = FeaturePlan(specs)
        plan.compute({"tx_id": "t6", "ts": 0.0, "card_id": "c1", "merchant_id": "m1"})
        assert plan.on_label({"tx_id": "t6", "ts": 1.0, "is_fraud": True})
        plan.compute({"tx_id": "t6", "ts": gap, "card_id": "c2", "merchant_id": "m4"})
        assert plan.on_label({"tx_id": "t6", "ts": gap + 1, "is_fraud": True})
        tx = {"tx_id": "x", "ts": gap + 2, "card_id": "c2", "merchant_id": "m4"}
        assert plan.compute(tx) == {"c_fc": 1, "m_fc": 1}
        plan = FeaturePlan(specs)
        plan.compute({"tx_id": "t1", "ts": 0.0, "card_id": "c", "merchant_id": "m"})
        plan.on_label({"tx_id": "t1", "ts": 1.0, "is_fraud": True})
        plan.compute({"tx_id": "a", "ts": gap, "card_id": "c", "merchant_id": "m"})
        plan.on_label({"tx_id": "a", "ts": gap + 1, "is_fraud": True})
        plan.compute({"tx_id": "t1", "ts": gap, "card_id": "c", "merchant_id": "m"})
        assert not plan.on_label({"tx_id": "t1", "ts": gap + 2, "is_fraud": False})
        tx = {"tx_id": "y", "ts": gap + 3, "card_id": "c", "merchant_id": "m"}
        assert plan.compute(tx) == {"c_fc": 2, "m_fc": 2}


def test_a_repeated_tx_id_is_found_newest_across_segments_open_and_frozen(monkeypatch) -> None:
    """An id repeated in a later segment of its bucket was found in the first one (the
    oldest), open or frozen."""
    from fds.features import txstore

    monkeypatch.setattr(txstore, "_SEGMENT", 8)
    store = TxStore(span=1000.0)
    store.remember("dup", 1.0, "old")
    for i in range(3 * txstore._STEP_EVERY):  # (a new segment at the next tick past 8)
        store.remember(f"f{i}", 2.0, "m")
    assert len(store.buckets[0].open or ()) > 1
    store.remember("dup", 3.0, "new")
    assert store.find("dup")[1:3] == ("new", 3.0)  # type: ignore[index]
    store.expire(freeze_before=1e9, drop_before=-1e9)
    store.flush()
    assert store.buckets[0].open is None
    assert store.find("dup")[1:3] == ("new", 3.0)  # type: ignore[index]


def test_buckets_made_out_of_time_order_are_searched_newest_first() -> None:
    """A review: the first events out of order made an earlier bucket after a later one, and
    `find` took their order of creation for time: a repeat at a later time was found old."""
    store = TxStore(span=100.0)
    store.remember("y", 150.0, "m")  # (bucket 1)
    store.remember("x", 50.0, "old")  # (bucket 0, made after it)
    store.remember("x", 160.0, "new")  # (the same id again, later: bucket 1)
    assert store.find("x")[1:3] == ("new", 160.0)  # type: ignore[index]
    assert list(store.buckets) == [0, 1]
    assert store.find(12) is None  # (an id that is no text: its text, none held)
    store.remember(42.0, 170.0, "f")  # (a whole float: its text as the schema reads it)
    assert store.find("42")[1:3] == ("f", 170.0)  # type: ignore[index]


def test_a_transaction_of_the_bucket_before_time_0_is_remembered() -> None:
    """Times in [-span, 0) are bucket -1, the index that meant "no bucket written yet": their
    transactions went into dicts of no bucket and their labels were unmatched (a QA pass)."""
    plan = FeaturePlan([Spec("fc", "card_id", "fraud_count", None, "1d")])
    plan.compute({"tx_id": "a", "ts": -100.0, "card_id": "c", "amount": 1.0})
    assert plan.on_label({"tx_id": "a", "ts": -50.0, "is_fraud": True})
    assert plan.unmatched_labels == 0
    assert plan.compute({"tx_id": "b", "ts": -10.0, "card_id": "c", "amount": 1.0}) == {"fc": 1}


def test_an_id_that_is_no_text_is_its_text_open_and_frozen() -> None:
    """A QA pass: an int tx_id (the plan takes a record as it is) failed `on_label` and, once
    its bucket froze, a later `compute`; it is read as the schema reads it, its text."""
    plan = FeaturePlan([Spec("fc", "card_id", "fraud_count", None, "1d")])
    plan.compute({"tx_id": 1, "ts": 0.0, "card_id": "c", "amount": 1.0})
    assert plan.on_label({"tx_id": 1, "ts": 5.0, "is_fraud": True})
    assert plan.compute({"tx_id": 2, "ts": 6.0, "card_id": "c", "amount": 1.0}) == {"fc": 1}
    for i in range(3, 2000):  # (its bucket frozen by the later ones)
        plan.compute({"tx_id": i, "ts": 6.0 + 5 * i, "card_id": "c", "amount": 1.0})
    plan._labels.flush()
    assert any(bk.open is None for bk in plan._labels.buckets.values())
    assert plan.on_label({"tx_id": "2", "ts": 9000.0, "is_fraud": True})
    assert plan.on_label({"tx_id": 1999, "ts": 10001.0, "is_fraud": True})


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
        assert all(store.find(x)[1:3] == want[x] for x in probe)  # type: ignore[index]
        if steps == 3:  # a checkpoint taken mid-freeze restores and freezes again
            again = pickle.loads(pickle.dumps(store))
            again.flush()
            assert all(again.find(x)[1:3] == want[x] for x in ids)  # type: ignore[index]
    chunks = -(-n // PART_SIZE)  # 12 steps split PART_SIZE entries each by partition ...
    assert old.parts is not None and len(old.parts) == 16  # ... into 12 rounded up to 2^k
    assert steps == chunks + 16  # then each step sorts one partition
    assert all(store.find(x)[1:3] == want[x] for x in ids)  # type: ignore[index]
    assert len(store) == n + steps * (PART_SIZE // 4)


# ------------------------------------------------------------------ input partitions


def saved_before_partitions(store: TxStore) -> bytes:
    """``store`` pickled as a store was before it recorded input partitions: open segments of
    two dicts, frozen partitions without a ``parts`` slot (byte for byte what that code wrote
    of the same store: checked when partitions were added)."""
    copy = pickle.loads(pickle.dumps(store))
    for bk in copy.buckets.values():  # (pickled as before once they record none)
        if bk.open is not None:
            bk.open = [(keys, ts, {}) for keys, ts, _parts in bk.open]
        for p in bk.parts or ():
            p.parts = None
    return pickle.dumps(copy, protocol=5)


def test_a_store_without_partitions_pickles_as_before_them():
    """A downgrade reads it: open segments of two dicts, frozen partitions with no ``parts``
    (a release before them fails on anything else: a plan without provenance must keep its
    state readable by it)."""
    store = TxStore(span=100.0)
    for i in range(300):
        store.remember(f"t{i}", i * 1.0, ("k", i % 3))
    store.expire(freeze_before=150.0, drop_before=0.0)
    store.flush()
    state = pickle.loads(pickle.dumps(store)).__getstate__()
    buckets = [bk.__getstate__() for bk in store.buckets.values()]
    assert {len(seg) for segs, _p, _k in buckets if segs for seg in segs} == {2}
    assert all("parts" not in p.__getstate__()[1] for _s, ps, _k in buckets for p in ps or ())
    assert any(ps for _s, ps, _k in buckets) and state[0] == store.span


def _parted(store: TxStore, n: int, t0: float = 0.0, step: float = 0.5) -> dict[str, Any]:
    """Remember ``n`` transactions with input partitions 0..3; ``tx_id -> (keys, ts, part)``."""
    want = {}
    for i in range(n):
        tx_id, t, keys, part = f"p{i}", t0 + i * step, ("k", i % 5), (i * 7) % 4
        store.remember_part(tx_id, t, keys, part)
        want[tx_id] = (keys, t, part)
    return want


def _everything(store: TxStore) -> dict[str, Any]:
    """``tx_id -> (keys, ts, part)`` of every transaction held (open or frozen)."""
    return {x: (k, t, p) for bk in store.buckets.values() for x, k, t, p in bk.entries()}


def test_input_partitions_are_kept_open_frozen_and_pickled() -> None:
    store = TxStore(span=10.0)
    want = _parted(store, 60)  # buckets [0, 10), [10, 20), [20, 30)
    store.remember("q", 25.0, ("k", 9))  # [20, 30) holds one of unknown partition
    assert all(store.find(x)[1:] == w for x, w in want.items())  # type: ignore[index]
    store.expire(freeze_before=30.0, drop_before=-1.0)
    store.flush()
    assert all(bk.open is None for bk in store.buckets.values())
    for x, w in want.items():  # kept by the freeze, but where an entry had none
        assert store.find(x)[1:] == (w if w[1] < 20 else (*w[:2], None))  # type: ignore[index]
    assert store.buckets[0].parts[0].parts.dtype == np.uint16  # type: ignore[index, union-attr]
    assert store.buckets[2].parts[0].parts is None  # type: ignore[index]
    again = pickle.loads(pickle.dumps(store))
    assert _everything(again) == _everything(store)


def test_a_store_with_partitions_splits_by_them_and_absorbs_back() -> None:
    store = TxStore(span=10.0)
    want = _parted(store, 50)
    store.expire(freeze_before=20.0, drop_before=-1.0)  # [0, 20) frozen, [20, 25) open
    store.flush()
    store.buckets[0].known["p1"] = store.buckets[2].known["p41"] = 1  # parts 3 and 3
    store.buckets[1].known["p22"] = 1  # part 2
    moved = store.split({3, 1})
    assert _everything(moved) == {x: w for x, w in want.items() if w[2] in (1, 3)}
    assert _everything(store) == {x: w for x, w in want.items() if w[2] not in (1, 3)}
    assert [set(bk.known) for bk in moved.buckets.values()] == [{"p1"}, set(), {"p41"}]
    assert [set(bk.known) for bk in store.buckets.values()] == [set(), {"p22"}, set()]
    assert [bk.open is None for bk in moved.buckets.values()] == [True, True, False]
    store.absorb(moved)
    assert _everything(store) == want
    assert all(p.parts is not None for b in (0, 1) for p in store.buckets[b].parts or [None])


def test_stores_with_and_without_partitions_absorb_and_split() -> None:
    mine, theirs = TxStore(span=10.0), TxStore(span=10.0)
    want = _parted(mine, 50)  # [0, 10) .. [20, 25)
    for i in range(30):  # [0, 10) .. [20, 30), no partitions: moved when the key says so
        theirs.remember(f"u{i}", i, "moves" if i % 2 else "stays")
    mine.remember_part("only", 35.0, "k", 3)
    for store in (mine, theirs):
        store.expire(freeze_before=10.0, drop_before=-1.0)  # [0, 10) frozen
        store.flush()
    mine.absorb(theirs)
    got = _everything(mine)
    for x, (keys, t, part) in want.items():  # a bucket frozen in both holds no partition
        assert got.pop(x) == (keys, t, None if t < 10 else part)
    assert got.pop("only") == ("k", 35.0, 3)
    assert got == {f"u{i}": ("moves" if i % 2 else "stays", i, None) for i in range(30)}

    # by partition where every entry of a frozen bucket or open segment has one ([30, 40)):
    # those without one stay
    moved = mine.split({3})
    assert set(_everything(moved)) == {"only"}
    assert len(mine) == 50 + 30


def test_a_store_saved_before_partitions_loads_and_goes_on() -> None:
    old = TxStore(span=10.0)
    for i in range(30):  # [0, 10) .. [20, 30)
        old.remember(f"o{i}", i, "moves" if i % 2 else "stays")
    old.expire(freeze_before=20.0, drop_before=-1.0)  # [0, 20) frozen, [20, 30) open
    old.flush()
    old.buckets[0].known["o3"] = 1
    store = pickle.loads(saved_before_partitions(old))
    assert _everything(store) == {
        f"o{i}": ("moves" if i % 2 else "stays", i, None) for i in range(30)
    }
    assert store.find("o3")[0].known == {"o3": 1}  # type: ignore[index]
    # it goes on recording partitions: in the open bucket it had and in new ones
    store.remember_part("n1", 29.5, "stays", 1)
    store.remember_part("n2", 35.0, "stays", 1)
    store.remember_part("n3", 36.0, "moves", 2)
    assert store.find("n1")[1:] == ("stays", 29.5, 1)  # type: ignore[index]
    store.expire(freeze_before=40.0, drop_before=-1.0)
    store.flush()
    store = pickle.loads(pickle.dumps(store))
    assert store.find("n1")[1:] == ("stays", 29.5, None)  # frozen with the old ones
    assert store.find("n2")[1:] == ("stays", 35.0, 1)  # type: ignore[index]

    moved = store.split({1})  # (the old entries, of no partition known, stay)
    assert set(_everything(moved)) == {"n2"}
    assert set(_everything(store)) == {"n1", "n3"} | {f"o{i}" for i in range(30)}


def _long_ids(store: TxStore, n: int, every: int) -> dict[str, Any]:
    """``n`` transactions with input partitions, one in ``every`` of a 1,000-character id of
    four-byte characters (in the contract's 1,024), sharing their first 100 bytes."""
    want = {}
    for i in range(n):
        tx_id = f"t{i:07d}" if i % every else "\U0001f4b3" * 990 + f"{i:010d}"
        keys, t, part = ("k", i % 5), i * 0.01, i % 4
        store.remember_part(tx_id, t, keys, part)
        want[tx_id] = (keys, t, part)
    return want


def test_a_long_id_does_not_widen_its_frozen_partition() -> None:
    """A QA pass: a partition's ids were as wide as its longest one (UTF-8), so one id of
    1,000 four-byte characters in 2,048 made every entry 4 KB: 98 such transactions of
    200,000 took a replay from 104 MB to 908 MB. Long ids are stand-ins now; found, listed
    (their text), split, absorbed and pickled as the others."""
    store = TxStore(span=100.0)  # two buckets of 10,000, eight partitions each
    want = _long_ids(store, 20_000, every=500)
    store.expire(freeze_before=1e9, drop_before=-1e9)
    store.flush()
    frozen = [p for bk in store.buckets.values() for p in bk.parts or ()]
    assert frozen and max(p.ids.dtype.itemsize for p in frozen) <= txstore.LONG_ID
    assert sum(p.ids.nbytes for p in frozen) < 20_000 * 24
    long_ones = [x for x in want if len(x) > 100]
    assert len(long_ones) == 40
    assert all(store.find(x)[1:] == want[x] for x in want)  # type: ignore[index]
    assert store.find("\U0001f4b3" * 990 + "0000000001") is None  # a stand-in of no id
    assert _everything(store) == want
    again = pickle.loads(pickle.dumps(store))
    assert _everything(again) == want
    assert all(again.find(x)[1:] == want[x] for x in long_ones)  # type: ignore[index]
    # long ids sharing their first 64 bytes no longer fall in one partition (a QA pass)
    bucket = store.buckets[0]
    assert len(bucket.long) == 20
    held = [p for p in bucket.parts or () if any(b[:1] == b"\xfe" for b in p.ids.tolist())]
    assert len(held) > 1
    moved = again.split({1, 3})
    assert _everything(moved) == {x: w for x, w in want.items() if w[2] in (1, 3)}
    assert _everything(again) == {x: w for x, w in want.items() if w[2] not in (1, 3)}
    again.absorb(moved)
    assert _everything(again) == want
    assert all(again.find(x)[1:] == want[x] for x in long_ones)  # type: ignore[index]


def test_a_40_byte_id_ending_in_nul_beside_a_long_one_pickles() -> None:
    """A review: a 40-byte id ending in NUL is stored 41 wide (its 0xFF mark), and the load
    took its partition for one saved before stand-ins: decoding the stand-ins as text made
    the whole feature state unreadable."""
    store = TxStore(span=100.0)
    ids = ["a" * 39 + "\x00", "b" * 50, "c" * 40, "d" * 41]
    for i, tx_id in enumerate(ids):
        store.remember(tx_id, float(i), f"k{i}")
    store.expire(freeze_before=100.0, drop_before=0.0)
    store.flush()
    again = pickle.loads(pickle.dumps(store))
    assert [again.find(x)[1:3] for x in ids] == [(f"k{i}", float(i)) for i in range(4)]  # type: ignore[index]
    assert {x for bk in again.buckets.values() for x, *_ in bk.entries()} == set(ids)


def test_a_store_saved_with_long_ids_whole_loads_with_stand_ins(monkeypatch) -> None:
    """A state saved before stand-ins (its long ids stored whole, partitioned by them) finds
    them after a restore, and its partitions are narrow again."""
    store = TxStore(span=10.0)
    with monkeypatch.context() as m:
        m.setattr(txstore, "LONG_ID", 10**9)  # as the release before stored them
        want = _long_ids(store, 6_000, every=300)
        store.expire(freeze_before=1e9, drop_before=-1e9)
        store.flush()
        assert (
            max(p.ids.dtype.itemsize for bk in store.buckets.values() for p in bk.parts or ())
            > 3000
        )
        saved = pickle.dumps(store)
    again = pickle.loads(saved)
    frozen = [p for bk in again.buckets.values() for p in bk.parts or ()]
    assert max(p.ids.dtype.itemsize for p in frozen) <= txstore.LONG_ID
    assert all(again.find(x)[1:] == w for x, w in want.items())  # type: ignore[index]
    assert _everything(again) == want
