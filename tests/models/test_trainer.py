"""Trainer: label/snapshot join, sampling, assumed-legit horizon, publish policy, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fds.engine import Engine
from fds.models.registry import Registry
from fds.models.scorer import ModelServer
from fds.models.spec import load_spec, parse_spec
from fds.models.trainer import MemoryStore, SqliteStore, Trainer, keep_legit

DAY = 86400.0


def _spec(**learn: Any) -> Any:
    learn_yaml = "".join(f"  {k}: {v}\n" for k, v in learn.items())
    return parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        + (f"learn:\n{learn_yaml}" if learn_yaml else "")
        + "publish:\n  every_labels: 3\n  every_seconds: 1d\n"
    )


class Recorder:
    """A stand-in model that records what it learns, and when (the trainer's event time)."""

    def __init__(self) -> None:
        self.learned: list[tuple[dict[str, float], bool]] = []
        self.trainer: Trainer | None = None
        self.times: list[float] = []
        self.events: list[tuple[str, float]] | None = None  # shared with a decision log

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        return {True: 0.5, False: 0.5}

    def __getstate__(self) -> dict[str, Any]:  # published copies need not carry the log
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        self.learned.append((x, y))
        if self.trainer is not None:
            self.times.append(self.trainer.now)
            if self.events is not None and y:
                self.events.append(("learn", self.trainer.now))


def _trainer(store: Any = None, **learn: Any) -> tuple[Trainer, Recorder]:
    rec = Recorder()
    t = Trainer(_spec(**learn), model=rec, store=store)
    rec.trainer = t
    return t, rec


def _tx(i: int, ts: float) -> dict[str, Any]:
    return {"tx_id": f"t{i}", "ts": ts, "card_id": "c", "amount": 10.0 + i}


def test_label_joins_its_own_snapshot_exactly_once() -> None:
    t, rec = _trainer(legit_sample_rate=1.0)
    for i in range(5):
        t.on_decision(_tx(i, i * 60.0), {"features": {"uid": i}})
    assert t.on_label({"tx_id": "t3", "ts": 400.0, "is_fraud": True})
    assert not t.on_label({"tx_id": "t3", "ts": 401.0, "is_fraud": True})  # duplicate
    assert not t.on_label({"tx_id": "nope", "ts": 402.0, "is_fraud": True})
    assert len(rec.learned) == 1
    x, y = rec.learned[0]
    assert y is True and x["uid"] == 3.0 and x["amount"] == 13.0
    # a label repeated (a producer's retry) is no unjoined label: it was counted so, and its
    # alert fired (a QA pass)
    assert (t.stats["labels_unjoined"], t.stats["labels_repeated"]) == (1, 1)


def test_both_stores_tell_a_settled_id(tmp_path) -> None:
    from fds.models.trainer import MemoryStore, SqliteStore

    for store in (MemoryStore(), SqliteStore(tmp_path / "s.db")):
        store.put("a", 1.0, {"x": 1.0})
        store.put("b", 2.0, {"x": 1.0})
        assert store.settled("a") is None
        store.settle("a", True)
        store.settle("b", False)  # legit: kept as assumed, for a chargeback
        assert (store.settled("a"), store.settled("b"), store.settled("c")) == (True, None, None)
        assert store.get("a") is None
        assert store.get("b") == (2.0, {"x": 1.0}, True)
        assert len(store) == 1
        store.settle("b", True)
        assert (store.get("b"), store.settled("b")) == (None, True)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_chargeback_after_a_legit_label_is_learned_as_fraud(kind, tmp_path) -> None:
    """A QA pass: "the customer said it was them", then a chargeback: the fraud label found
    no input (the legit label had dropped it) and was never learned. A review before: it was
    counted as a producer's retry, its unjoined count and alert silenced."""
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    t, rec = _trainer(legit_sample_rate=1.0, store=store)
    t.on_decision(_tx(1, 60.0), {"features": {"uid": 1}})
    assert t.on_label({"tx_id": "t1", "ts": 100.0, "is_fraud": False})
    assert not t.on_label({"tx_id": "t1", "ts": 101.0, "is_fraud": False})  # a retry
    assert t.on_label({"tx_id": "t1", "ts": 102.0, "is_fraud": True})  # a chargeback
    assert not t.on_label({"tx_id": "t1", "ts": 103.0, "is_fraud": True})  # its retry
    assert not t.on_label({"tx_id": "t1", "ts": 104.0, "is_fraud": False})  # contradicts it
    assert [y for _, y in rec.learned] == [False, True]
    assert rec.learned[1][0]["uid"] == 1.0  # its own decision-time input
    assert (t.stats["labels_repeated"], t.stats["labels_unjoined"]) == (2, 1)
    assert (t.stats["late_frauds"], t.stats["frauds_learned"]) == (1, 1)
    t.advance(100 * 86400.0)  # past assume_legit_after: not learned again
    assert t.stats["assumed_legit"] == 0 and len(store) == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_repeated_tx_id_is_learned_with_its_newest_input(kind, tmp_path) -> None:
    """A QA pass: the store kept the first transaction's input of a repeated tx_id, so its
    label was learned with that one, where the features give the label to the newest; one
    already learned stays settled (a redelivered decision does not bring it back)."""
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    t, rec = _trainer(legit_sample_rate=1.0, store=store)
    t.on_decision(_tx(1, 60.0), {"features": {"uid": 1}})
    t.on_decision(_tx(1, 70.0), {"features": {"uid": 2}})  # the same id again
    assert t.on_label({"tx_id": "t1", "ts": 100.0, "is_fraud": True})
    assert [(x["uid"], y) for x, y in rec.learned] == [(2.0, True)]
    t.on_decision(_tx(1, 80.0), {"features": {"uid": 3}})  # after its label: settled
    assert not t.on_label({"tx_id": "t1", "ts": 101.0, "is_fraud": True})
    assert len(rec.learned) == 1


def test_legit_sampling_is_deterministic_by_tx_id() -> None:
    kept = [i for i in range(2000) if keep_legit(f"t{i}", 0.1)]
    assert kept == [i for i in range(2000) if keep_legit(f"t{i}", 0.1)]
    assert 150 < len(kept) < 250
    t, rec = _trainer(legit_sample_rate=0.1)
    for i in range(2000):
        t.on_decision(_tx(i, 0.0), {"features": {"uid": i}})
    for i in range(2000):
        t.on_label({"tx_id": f"t{i}", "ts": 1.0, "is_fraud": False})
    assert sorted(int(x["uid"]) for x, _ in rec.learned) == kept


def test_unlabelled_becomes_legit_after_horizon_and_late_fraud_still_joins() -> None:
    t, rec = _trainer(legit_sample_rate=1.0, assume_legit_after="2d", ttl="10d")
    t.on_decision(_tx(1, 0.0), {"features": {"uid": 1}})
    t.on_decision(_tx(2, 1 * DAY), {"features": {"uid": 2}})
    assert rec.learned == []
    t.on_decision(_tx(3, 2 * DAY + 1), {"features": {"uid": 3}})  # event time moves on
    assert [(x["uid"], y) for x, y in rec.learned] == [(1.0, False)]
    assert t.stats["assumed_legit"] == 1
    # A chargeback weeks later still finds tx 1's own input and learns it as fraud.
    assert t.on_label({"tx_id": "t1", "ts": 5 * DAY, "is_fraud": True})
    assert rec.learned[-1][0]["uid"] == 1.0 and rec.learned[-1][1] is True
    assert t.stats["late_frauds"] == 1
    # A legit label for an already-assumed transaction changes nothing.
    n = len(rec.learned)
    t.on_label({"tx_id": "t2", "ts": 5 * DAY, "is_fraud": False})
    assert len(rec.learned) == n
    # Past the TTL, the input is gone.
    t.on_decision(_tx(4, 20 * DAY), {"features": {"uid": 4}})
    assert not t.on_label({"tx_id": "t3", "ts": 20 * DAY, "is_fraud": True})


def test_publish_policy_by_labels_and_event_time() -> None:
    t, _ = _trainer(legit_sample_rate=1.0)
    assert t.maybe_publish(0.0) is None  # nothing learned yet
    for i in range(3):
        t.on_decision(_tx(i, float(i)), {"features": {}})
        t.on_label({"tx_id": f"t{i}", "ts": 10.0, "is_fraud": i != 1})
    pub = t.maybe_publish(10.0)
    assert pub is not None and pub.version == "v000001"
    assert pub.entry["labels_learned"] == 3 and pub.entry["parent"] is None
    t.on_decision(_tx(9, 11.0), {"features": {}})
    t.on_label({"tx_id": "t9", "ts": 12.0, "is_fraud": True})
    assert t.maybe_publish(12.0) is None  # 1 label, not a day yet
    pub2 = t.maybe_publish(10.0 + DAY)  # a day of event time later
    assert pub2 is not None and pub2.entry["parent"] == "v000001"


@pytest.mark.parametrize("first", [True, False])
def test_no_version_is_published_before_the_model_learned_both_classes(first: bool, caplog) -> None:
    """A QA pass: the first version had learned frauds only (the legitimate examples come
    assume_legit_after later), scored every payment ~1.0, and a spec without gate: declined
    111 payments of a replay at once."""
    t = Trainer(_spec(legit_sample_rate=1.0))  # (a fresh pipeline: no class learned yet)
    with caplog.at_level("INFO", logger="fds.models"):
        for i in range(30):
            t.on_decision(_tx(i, float(i)), {"features": {"f": float(i)}})
            t.on_label({"tx_id": f"t{i}", "ts": 40.0, "is_fraud": first})
            assert t.maybe_publish(40.0 + DAY * i) is None
    said = [r.getMessage() for r in caplog.records if "no version published" in r.getMessage()]
    only = "it has learned frauds only" if first else "it has learned legitimate ones only"
    assert len(said) == 1 and only in said[0], said  # (said once)
    # where the legitimate examples come from (a replay's label column gives frauds only)
    assert ("without one, assume_legit_after (4.0 days) after it" in said[0]) is first, said
    t.on_decision(_tx(99, 50.0), {"features": {"f": 3.0}})
    t.on_label({"tx_id": "t99", "ts": 60.0, "is_fraud": not first})
    pub = t.maybe_publish(60.0 + DAY * 40)
    assert pub is not None and pub.entry["labels_learned"] == 31


@pytest.mark.parametrize("restarted", [False, True])
def test_a_model_that_scores_no_probability_is_not_published_learning_goes_back(
    tmp_path: Path, restarted: bool, caplog
) -> None:
    """A QA pass: a NaN weight was published, every scorer refused the version, and each next
    one inherited it. The trainer checks as the scorers' canary does, on the inputs it learned
    last: such a model is not published and learning goes back to the last good one (after a
    restart, the parent version from the registry: no copy of it is checkpointed)."""
    from tests.models.fakes import NaNModel

    reg = Registry(tmp_path)
    t = Trainer(_spec(legit_sample_rate=1.0), registry=reg)
    i = 0

    def learn(n: int) -> None:
        nonlocal i
        for _ in range(n):
            t.on_decision(_tx(i, float(i)), {"features": {"f": float(i % 5)}})
            t.on_label({"tx_id": f"t{i}", "ts": float(i), "is_fraud": i % 2 == 0})
            i += 1

    learn(3)
    assert t.maybe_publish(10.0).version == "v000001"
    if restarted:
        t._good = None  # (as a restored checkpoint: not kept)
    t.model = NaNModel("f")  # what learning on made of it
    learn(3)
    with caplog.at_level("ERROR", logger="fds.models"):
        assert t.maybe_publish(20.0) is None
    assert t.stats["broken"] == 1 and reg.latest() == "v000001"
    assert "scores no probability" in caplog.text
    assert 'learning goes on from version "v000001"' in caplog.text
    assert 0.0 <= t.model.predict_proba_one({"f": 1.0})[True] <= 1.0  # v000001's model
    learn(3)
    pub = t.maybe_publish(20.0 + DAY)
    assert pub is not None and (pub.version, pub.entry["parent"]) == ("v000002", "v000001")


def test_replay_never_learns_a_label_before_its_time() -> None:
    from fds.replay import ReplayInput, run

    rec = Recorder()
    spec = _spec(legit_sample_rate=1.0)
    trainer = Trainer(spec, model=rec)
    rec.trainer = trainer
    server = ModelServer(spec, trainer=trainer)
    txs = [_tx(i, i * 3600.0) for i in range(100)]
    labels = sorted(
        (
            {"tx_id": f"t{i}", "ts": i * 3600.0 + 7 * 3600.0, "is_fraud": True, "source": "x"}
            for i in range(0, 100, 7)
        ),
        key=lambda lab: lab["ts"],
    )

    class Sink:
        def __init__(self) -> None:
            self.items: list[Any] = []

        def write(self, r: Any) -> None:
            self.items.append(r)

    events: list[tuple[str, float]] = []
    rec.events = events

    class Clock:  # a feature stage that logs the event time of each transaction decided
        def compute(self, tx: Any) -> dict[str, Any]:
            events.append(("decide", tx["ts"]))
            return {}

        def on_label(self, label: Any) -> None:
            return None

    run(Engine(features=Clock(), model=server), ReplayInput(txs, labels), Sink(), Sink())
    learned = [int(x["amount"]) - 10 for x, y in rec.learned if y]
    assert sorted(learned) == list(range(0, 92, 7))  # t98's label (105 h) is after the stream
    # a label stamped L is learned once every transaction at or before L is decided, and
    # before any later one
    for k, (kind, t) in enumerate(events):
        if kind == "learn":
            before = [ts for e, ts in events[:k] if e == "decide"]
            after = [ts for e, ts in events[k:] if e == "decide"]
            assert before and max(before) <= t < min(after), (t, max(before), min(after))


def test_sqlite_store_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "snaps.db"
    s = SqliteStore(path)
    s.put("a", 1.0, {"f": 1.5})
    s.put("b", 2.0, {"f": 2.5})
    s.close()
    s2 = SqliteStore(path)
    assert len(s2) == 2
    assert [k for k, _, _ in s2.assume_older(1.5)] == ["a"]
    assert s2.get("a") == (1.0, {"f": 1.5}, True)
    assert s2.get("b") == (2.0, {"f": 2.5}, False)
    s2.settle("b", True)
    assert s2.get("b") is None and len(s2) == 1
    s2.close()


def test_sqlite_store_expires_through_its_index(tmp_path: Path) -> None:
    """A soak run: `DELETE ... WHERE ts < ?` scanned the whole table (the index leads with
    `assumed`), 93% of the trainer's time at 600,000 rows, its lag growing for good. Rows of
    every state expire."""
    s = SqliteStore(tmp_path / "snaps.db")
    plan = s._db.execute("EXPLAIN QUERY PLAN " + SqliteStore.EXPIRE, (0.0,)).fetchall()
    assert "USING INDEX snaps_ts" in str(plan) and "SCAN" not in str(plan), plan
    for i, tx in enumerate("abcd"):
        s.put(tx, float(i), {})
    list(s.assume_older(1.5))  # a, b assumed legitimate
    s.settle("c", True)
    assert s.expire(3.0) == 3 and len(s) == 1 and s.get("d") is not None
    s.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_redelivered_decision_does_not_bring_back_a_settled_snapshot(kind, tmp_path):
    """At least once: a decision read again after its fraud label was learned re-inserted the
    snapshot, which was later learned again as legitimate."""
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    t = Trainer(load_spec("default"), store=store)
    # an id inside the sample of legitimate transactions learned (else it never could be)
    tx_id = next(f"t{i}" for i in range(10_000) if keep_legit(f"t{i}", t._rate))
    tx = {"tx_id": tx_id, "ts": 0.0, "card_id": "c", "amount": 5.0}
    decision = {"features": {"f": 1.0}}
    t.on_decision(tx, decision)
    assert t.on_label({"tx_id": tx_id, "ts": 3600.0, "is_fraud": True})
    t.on_decision(tx, decision)  # redelivered
    assert len(store) == 0
    t.advance(40 * 86400.0)  # past assume_legit_after
    assert t.stats["frauds_learned"] == 1 and t.stats["assumed_legit"] == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_legit_label_on_an_assumed_entry_keeps_it_for_a_later_chargeback(kind, tmp_path):
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    t = Trainer(load_spec("default"), store=store)
    t.on_decision({"tx_id": "a", "ts": 0.0, "card_id": "c", "amount": 5.0}, {"features": {}})
    t.advance(t._legit_after + 1.0)  # assumed legitimate
    assert not t.on_label({"tx_id": "a", "ts": t._legit_after + 2.0, "is_fraud": False})
    assert t.on_label({"tx_id": "a", "ts": t._legit_after + 3.0, "is_fraud": True})
    assert t.stats["late_frauds"] == 1 and t.stats["labels_unjoined"] == 0


def _two_champions(tmp_path: Path) -> tuple[Any, Trainer]:
    """A registry and its trainer, which published v1, then v2 (parent v1), both promoted."""
    from fds.models.registry import Registry

    reg = Registry(tmp_path / "reg")
    t = Trainer(_spec(legit_sample_rate=1.0), registry=reg)
    for i in range(6):
        t.on_decision(_tx(i, float(i)), {"features": {}})
        t.on_label({"tx_id": f"t{i}", "ts": 10.0 + i, "is_fraud": i % 2 == 0})
        if i in (2, 5):
            reg.promote(t.publish(10.0 + i).version)
    return reg, t


def test_a_rollback_is_followed_after_retention_removed_the_version_rolled_back(tmp_path):
    """A review: once retention removed the version rolled back, the trainer's follow (and
    fds train's start on a copy of a scorer's registry) looked its entry up: a KeyError."""
    from types import SimpleNamespace

    from fds.models.registry import Registry
    from fds.streams.train import TrainService

    reg, t = _two_champions(tmp_path)
    reg.rollback()  # v2 rejected, v1 champion again
    small = Registry(tmp_path / "reg", retain=3)
    parent = "v000002"
    for _ in range(6):  # a stale publisher goes on from v2 (each published rejected)
        parent = small.publish({"x": 1}, spec={"name": "t"}, parent=parent)["version"]
    assert "v000002" not in small.manifest()["versions"]  # (removed by retention)
    t.registry, t.parent = small, parent
    assert t.follow_rollback() == "v000001" and t.parent == "v000001"
    assert TrainService._start_version(SimpleNamespace(registry=small)) == "v000001"


def test_after_a_rollback_the_trainer_goes_on_from_the_champion(tmp_path: Path) -> None:
    """`fds models rollback` rejected v2; `fds train` published v3 from v2's line, which the
    scorer took directly (warm-up): the rollback was undone within seconds."""
    reg, t = _two_champions(tmp_path)
    assert t.follow_rollback() is None  # nothing rejected: the line goes on
    lost = t.publish(17.0).version  # v3, a challenger that loses its shadow contest
    reg.reject(lost, "precision below champion")
    assert t.follow_rollback() is None  # never champion: the line goes on (a new contest)
    t.parent = "v000002"  # (as if v3 had not been published)
    reg.rollback()  # by hand: v1 is champion again, v2 rejected
    assert t.follow_rollback() == "v000001" and t.parent == "v000001"
    # what the champion had learned, not the rolled-back line (the scorer reads these)
    assert t.stats["labels_learned"] == reg.entry("v000001")["labels_learned"] == 3
    # (legit_learned too: it kept the rolled-back line's count, 3 + 3 != 3, a QA pass)
    assert t.stats["frauds_learned"] + t.stats["legit_learned"] == 3
    x = {"amount": 50.0, "log_amount": 3.9}
    score = lambda m: m.predict_proba_one(x)[True]  # noqa: E731
    assert score(t.model) == score(reg.load("v000001")) != score(reg.load("v000002"))
    t.on_decision(_tx(9, 20.0), {"features": {}})
    t.on_label({"tx_id": "t9", "ts": 21.0, "is_fraud": True})
    assert t.publish(22.0).entry["parent"] == "v000001"


def test_a_trainer_follows_a_rollback_of_a_version_its_line_learned_from(tmp_path: Path):
    """A QA pass: v43 promoted by hand, the trainer published v44 from it, then v43 was rolled
    back: the trainer looked at v44 alone (never champion) and learned on from v43's line."""
    reg, t = _two_champions(tmp_path)
    assert t.publish(17.0).entry["parent"] == "v000002"  # v3
    assert t.follow_rollback() is None
    reg.rollback()  # by hand: v2 rejected, and v3 with it
    assert reg.entry("v000003")["status"] == "rejected"
    assert t.follow_rollback() == "v000001" and t.parent == "v000001"


def test_the_sqlite_stores_write_ahead_log_does_not_stay_large(tmp_path, monkeypatch) -> None:
    """A soak run: one large batch left 243 MB of write-ahead log beside the database for
    good (SQLite reuses a WAL but does not shrink it unless told)."""
    monkeypatch.setattr("fds.models.trainer.WAL_LIMIT", 64 * 1024)
    s = SqliteStore(tmp_path / "s.db")
    x = {f"f{i}": i + 0.5 for i in range(40)}
    for i in range(5000):  # ~4 MB in one batch
        s.put(f"t{i}", float(i), x)
    s.flush()
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size < 64 * 1024  # (2.5 MB before)
    assert len(s) == 5000
    s.put("next", 1.0, x)
    s.flush()
    s.close()
    assert len(SqliteStore(tmp_path / "s.db")) == 5001


def test_the_trainers_store_is_readable_by_its_owner_only(tmp_path) -> None:
    """A security review: snapshots.sqlite and its -wal/-shm (every kept model input and the
    trainer's pickled checkpoint) were 0644, while checkpoints and the registry are 0600."""
    (tmp_path / "s.db").touch(mode=0o644)  # written by an older release
    (tmp_path / "s.db").chmod(0o644)
    s = SqliteStore(tmp_path / "s.db")
    s.put("a", 1.0, {"f": 1.0})
    s.flush()
    for f in tmp_path.glob("s.db*"):
        assert f.stat().st_mode & 0o077 == 0, (f, oct(f.stat().st_mode))
    s.close()


class Raising(Recorder):
    """An estimator that raises on some examples (River's SGTClassifier divides by zero on
    some streams)."""

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        if x["amount"] == 12.0:
            raise ZeroDivisionError("float division by zero")
        super().learn_one(x, y)


def test_an_example_the_model_raises_on_is_not_learned_and_the_stream_goes_on(caplog) -> None:
    """A QA pass: the estimator's exception stopped a replay halfway with a traceback."""
    rec = Raising()
    t = Trainer(_spec(legit_sample_rate=1.0), model=rec)
    rec.trainer = t
    for i in range(4):
        t.on_decision(_tx(i, i * 60.0), {"features": {}})
    with caplog.at_level("ERROR", logger="fds.models"):
        for i in range(4):
            t.on_label({"tx_id": f"t{i}", "ts": 400.0, "is_fraud": True})
    assert (t.stats["learn_errors"], t.stats["labels_learned"], len(rec.learned)) == (1, 3, 3)
    assert t.last_learn_error == "ZeroDivisionError: float division by zero"
    assert 'estimator="linear_model.LogisticRegression" raised while learning' in caplog.text


def test_the_memory_store_takes_entries_oldest_first_skipping_those_settled() -> None:
    """The store finds its oldest entries through their arrival order (walking the dict from
    its front rescanned every slot emptied before: quadratic, a 47 s stall in a replay)."""
    from fds.models.trainer import MemoryStore

    store = MemoryStore()
    for i, name in enumerate("abcde"):
        store.put(name, float(i), {"x": float(i)})
    store.settle("b", True)
    assert [k for k, _, _ in store.assume_older(3.0)] == ["a", "c"]
    assert [k for k, _, _ in store.assume_older(3.0)] == []
    store.settle("c", True)
    assert store.expire(10.0) == 1  # a (c was settled)
    assert [k for k, _, _ in store.assume_older(10.0)] == ["d", "e"] and len(store) == 2
    assert store.expire(10.0) == 2 and len(store) == 0


def test_an_id_put_again_does_not_hold_the_older_entries_back() -> None:
    """A review: an id settled, expired and put again later kept its first place in the
    arrival order, and the entries behind it waited for its new time."""
    from fds.models.trainer import MemoryStore

    store = MemoryStore()
    for name, ts in (("z", 100.0), ("k", 0.0), ("a", 1.0)):
        store.put(name, ts, {"x": 1.0})
    store.settle("k", True)
    assert list(store.assume_older(50.0)) == []  # (z, first to arrive, is not older)
    store.expire(50.0)
    store._settled.clear()  # (its id kept no longer: as after the TTL)
    store.put("k", 1000.0, {"x": 1.0})
    assert [k for k, _, _ in store.assume_older(200.0)] == ["z", "a"]


def test_a_decision_redelivered_after_its_ttl_is_not_learned_again() -> None:
    """A review: a decision read again after its TTL (its settled id dropped) was kept again,
    assumed legitimate and learned as such after its fraud label."""
    t, rec = _trainer(legit_sample_rate=1.0)
    t.on_decision(_tx(1, 0.0), {"features": {}})
    assert t.on_label({"tx_id": "t1", "ts": 10.0, "is_fraud": True})
    t.on_decision(_tx(2, 100 * 86400.0), {"features": {}})  # event time far past the TTL
    t.on_decision(_tx(1, 0.0), {"features": {}})  # t1 again (a redelivery)
    t.advance(200 * 86400.0)
    assert [y for _, y in rec.learned].count(False) == 1  # t2 only, not t1 again


def test_a_store_others_could_have_written_is_not_opened(tmp_path: Path) -> None:
    """A review: `fds train` unpickles its snapshots.sqlite's checkpoint row at start, and a
    database (or its -wal, which SQLite replays on open) planted in a shared state dir ran its
    code: only its own user's files, not writable by every user, not links, are opened."""
    import os

    from fds.errors import ConfigError

    db = tmp_path / "snapshots.sqlite"
    SqliteStore(db).close()
    os.chmod(db, 0o666)
    with pytest.raises(ConfigError, match="writable by every user \\(mode 0666\\)"):
        SqliteStore(db)
    os.chmod(db, 0o660)  # (a Kubernetes fsGroup's mode: its own)
    SqliteStore(db).close()
    wal = tmp_path / "snapshots.sqlite-wal"
    wal.unlink(missing_ok=True)
    wal.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as e:
        SqliteStore(db)
    assert e.value.where == str(wal) and "the file is a link" in str(e.value)
    wal.unlink()
    journal = tmp_path / "snapshots.sqlite-journal"  # (played back into the db on open)
    journal.write_bytes(b"x")
    journal.chmod(0o666)
    with pytest.raises(ConfigError) as e:
        SqliteStore(db)
    assert e.value.where == str(journal)
    journal.unlink()
    if os.geteuid() == 0:  # (only root can give a file to another user)
        os.chown(db, 4242, -1)
        with pytest.raises(ConfigError, match="owned by user 4242"):
            SqliteStore(db)
    os.chown(db, os.geteuid(), -1)
    # a folder every user may write (the sticky bit too: a journal not there yet can be made)
    for mode in (0o777, 0o1777):
        tmp_path.chmod(mode)
        with pytest.raises(ConfigError, match="folder is writable by every user") as e:
            SqliteStore(db)
        assert e.value.where == str(tmp_path)
    tmp_path.chmod(0o770)
    SqliteStore(db).close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_labels_not_read_yet_hold_the_assumption_and_the_expiry_back(kind, tmp_path) -> None:
    """A QA pass and a review: in a catch-up event time ran ahead of the labels read, and the
    inputs were assumed legitimate (and, past the ttl, deleted unlearned) before their labels
    were read."""
    rec = Recorder()
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    t = Trainer(_spec(legit_sample_rate=1.0, assume_legit_after="1d", ttl="2d"), model=rec,
                store=store)  # fmt: skip
    rec.trainer = t
    t.labels_read_to(-float("inf"))  # no label read yet
    t.on_decision(_tx(0, 0.0), {"features": {"uid": 0}})
    t.on_decision(_tx(1, 10 * 86400.0), {"features": {"uid": 1}})  # 10 days on
    assert rec.learned == [] and t.store.get("t0") is not None  # neither assumed nor expired
    t.labels_read_to(0.5 * 86400)  # labels read to 12 h: still within assume_legit_after
    assert rec.learned == []
    assert t.on_label({"tx_id": "t0", "ts": 0.4 * 86400, "is_fraud": True})
    assert [y for _, y in rec.learned] == [True]  # learned as fraud, never as legitimate
    t.labels_read_to(float("inf"))  # every label read: t1 waits its own day
    assert t.stats["late_frauds"] == 0 and len(rec.learned) == 1


def test_an_input_labelled_legitimate_does_not_hold_back_the_expiry_of_older_ones() -> None:
    """A review: kept for a chargeback in the queue of the assumed ones, a recent input
    labelled legitimate held back the expiry of every one assumed after it (a replay held
    1.5x the inputs, some past the ttl)."""
    store = MemoryStore()
    store.put("a", 0.0, {"x": 1.0})
    store.put("x", 100.0, {"x": 1.0})
    store.settle("x", False)  # labelled legitimate: kept until the ttl
    assert [k for k, _, _ in store.assume_older(50.0)] == ["a"]
    assert store.expire(60.0) == 1 and len(store) == 1  # a went; x stays
    assert store.get("x") == (100.0, {"x": 1.0}, True)
    assert store.expire(101.0) == 1 and len(store) == 0


def test_a_model_restored_from_a_checkpoint_is_published_as_the_same_bytes() -> None:
    """A QA pass: a trainer restarted from its checkpoint published the model an uninterrupted
    trainer published (identical weights) under another sha256: its strings, read back from
    the checkpoint, were pickled otherwise."""
    import pickle
    import random

    from fds.models.spec import build_pipeline
    from fds.models.trainer import canonical_pickle

    spec = load_spec(Path(__file__).parents[2] / "models" / "default.yaml")
    fresh, rng = build_pipeline(spec), random.Random(1)

    def learn(model: Any, n: int) -> None:
        for _ in range(n):
            x = {"amount": rng.random() * 100, "n": rng.randint(0, 5), "rules_score": rng.random()}
            model.learn_one(x, rng.random() < 0.1)

    learn(fresh, 500)
    restored = pickle.loads(pickle.dumps(fresh))  # as a checkpoint brings it back
    state = rng.getstate()
    learn(fresh, 100)
    rng.setstate(state)
    learn(restored, 100)
    assert pickle.dumps(fresh) != pickle.dumps(restored)  # (the same model, other bytes)
    assert canonical_pickle(fresh) == canonical_pickle(restored)
