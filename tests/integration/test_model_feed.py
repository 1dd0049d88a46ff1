"""Scorers on any machine (issue 6 item 3): a scorer whose registry is NOT the trainer's takes
the versions ``fds train`` announces on the models topic (fds.streams.model_feed), verified;
tampered announcements are rejected while the current model keeps serving."""

from __future__ import annotations

import base64
import hashlib
import pickle
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from fds.metrics import Metrics
from fds.models import Registry
from fds.models.registry import ENTRY_FIELDS, KEY_ENV, sign
from fds.pipeline import DEFAULT_MODEL
from fds.schema import parse_transaction
from fds.streams.kafka import build_run_engine, close_engine
from fds.streams.model_feed import ModelFeed
from tests.integration.test_kafka_run import read_all, settings_for, wait_until
from tests.integration.test_kafka_train import train_and_serve

pytestmark = pytest.mark.integration

KEY = "integration-test-key"  # FDS_MODEL_KEY of the trainer and the scorers
BAD_VERSIONS = ("v000998", "v000999")


def _bad_announcements(genuine: dict) -> list[dict]:
    """Two announcements of newer versions: a corrupted copy of ``genuine`` (wrong sha256) and
    a forged artifact with a correct sha256 (anyone can compute one) signed with another key."""
    corrupt = bytearray(base64.b64decode(genuine["artifact_b64"]))
    corrupt[-3] ^= 1
    evil = pickle.dumps({"evil": True})
    return [
        {
            **genuine, "version": BAD_VERSIONS[0],
            "artifact_b64": base64.b64encode(bytes(corrupt)).decode(),
        },
        {
            **genuine, "version": BAD_VERSIONS[1], "artifact_b64": base64.b64encode(evil).decode(),
            "sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil),
            "hmac": sign(evil, b"not-the-key"), "path": None,
        },
    ]  # fmt: skip


def _first_decision_of_a_new_scorer(bootstrap: str, topics: dict, registry: Path) -> str | None:
    """The model version of the first decision of `fds run`'s engine started now with
    ``registry`` (empty, or another scorer's) fed by the models topic."""
    engine = build_run_engine(
        None, DEFAULT_MODEL, registry=registry,
        models_topic=topics["models"], settings=settings_for(bootstrap, topics, "g2"),
    )  # fmt: skip
    try:
        tx = {"tx_id": "first", "ts": 1_767_225_600.0, "card_id": "c1", "amount": 10.0}
        return engine.decide(parse_transaction(tx))["model_version"]
    finally:
        close_engine(engine)


def test_announced_version_reaches_a_scorer_with_its_own_registry(
    kafka_bootstrap, topics, unique_name, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv(KEY_ENV, KEY)
    scorer_dir = tmp_path / "scorer-registry"
    metrics = Metrics()

    def rejected() -> float:
        value = metrics.registry.get_sample_value(
            "fds_model_swaps_total", {"result": "bad_announcement"}
        )
        return value or 0.0

    def tamper(version: str) -> None:
        anns = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, topics["models"])]
        (genuine,) = [a for a in anns if a["version"] == version]
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=16 << 20)
        for bad in _bad_announcements(genuine):
            producer.send(topics["models"], key=b"default", value=orjson.dumps(bad))
        producer.flush()
        producer.close()
        wait_until(lambda: rejected() >= 2, 30, "both bad announcements rejected")
        assert Registry(scorer_dir).latest() == version

    got = train_and_serve(
        kafka_bootstrap, topics, unique_name, tmp_path,
        scorer_registry=scorer_dir, models_topic=topics["models"], metrics=metrics,
        before_second_half=tamper,
    )  # fmt: skip
    version = got.version
    assert got.registry.path != scorer_dir
    assert all(d["model_version"] is None for d in got.early)  # no version existed yet
    # The running scorer swapped the announced version in: the second half carries it, and
    # never a rejected one.
    served = [d for d in got.late if d["model_version"] == version]
    assert served and all(d["model_score"] is not None for d in served)
    # Decided after the scorer took it: the version, or no model at all (degraded by the guard).
    assert {d["model_version"] for d in got.tail} <= {version, None}
    assert any(d["model_version"] == version for d in got.tail)
    assert not {d["model_version"] for d in got.late} & set(BAD_VERSIONS)
    assert rejected() == 2
    # Imported under the same id, with the trainer's manifest fields and bytes, signed.
    scorer = Registry(scorer_dir)
    mine, theirs = scorer.entry(version), got.registry.entry(version)
    assert {k: mine[k] for k in ENTRY_FIELDS} == {k: theirs[k] for k in ENTRY_FIELDS}
    assert mine["hmac"] and scorer.load_bytes(version)[0] == got.registry.load_bytes(version)[0]
    assert not set(BAD_VERSIONS) & {e["version"] for e in scorer.versions()}

    # A scorer started now, with an empty registry, catches up from the start of the topic:
    # it takes the newest good version, though two bad records came after it.
    fresh = Registry(tmp_path / "fresh-registry")
    feed = ModelFeed(
        settings_for(kafka_bootstrap, topics, unique_name("g")), fresh,
        name="default", topic=topics["models"],
    )  # fmt: skip
    feed.start()
    try:
        assert feed.caught_up.wait(30), "the feed did not catch up"
    finally:
        feed.close()
    assert [e["version"] for e in fresh.versions()] == [version]
    assert (feed.stats.imported, feed.stats.rejected) == (1, 2)
    assert Path(fresh.path / f"{version}.pkl").read_bytes() == scorer.load_bytes(version)[0]

    # `fds run`'s engine for a new scorer waits for that catch-up: its very first decision is
    # scored by the version (it decided its first batches with rules alone before), and its
    # empty registry is not said to be (a QA pass: "decisions use the rules alone").
    caplog.clear()
    assert _first_decision_of_a_new_scorer(kafka_bootstrap, topics, tmp_path / "new") == version
    assert "no model version in registry" not in caplog.text


def test_a_promote_and_a_rollback_on_the_trainers_registry_reach_the_scorers(
    kafka_bootstrap, topics, unique_name, tmp_path, monkeypatch
):
    """A QA pass (a fleet fed by the models topic): `fds models promote|rollback` on the
    trainer's registry never reached the scorers, which served a rolled-back version on; a
    scorer started with an empty registry served it too. Now the running scorer follows both
    (a champion it did not hold imported), and a new one serves the champion from its first
    decision."""
    monkeypatch.setenv(KEY_ENV, KEY)
    scorer = Registry(scorer_dir := tmp_path / "scorer-registry")
    rolled_back: list[str] = []

    def operator(version: str) -> None:  # while the trainer and the scorer run
        trainer = Registry(tmp_path / "registry")
        trainer.promote(version)
        e = trainer.entry(version)  # a newer version, never announced (as if by the trainer)
        newer = trainer.publish(
            trainer.load(version), spec=e["spec"], parent=version,
            labels_learned=e["labels_learned"], evaluation=e["evaluation"],
        )["version"]  # fmt: skip
        trainer.promote(newer)
        wait_until(lambda: scorer.champion() == newer, 30, "the promotion to reach the scorer")
        trainer.rollback()  # champion: version again; newer rejected
        wait_until(
            lambda: scorer.champion() == version and scorer.entry(newer)["status"] == "rejected",
            30, "the rollback to reach the scorer",
        )  # fmt: skip
        rolled_back.append(newer)

    got = train_and_serve(
        kafka_bootstrap, topics, unique_name, tmp_path, scorer_registry=scorer_dir,
        models_topic=topics["models"], before_second_half=operator,
    )  # fmt: skip
    ((newer,), version) = rolled_back, got.version
    assert newer not in {d["model_version"] for d in got.late}
    assert {d["model_version"] for d in got.tail} <= {version, None}
    assert any(d["model_version"] == version for d in got.tail)
    # A scorer started now, with an empty registry: the champion from its first decision.
    assert _first_decision_of_a_new_scorer(kafka_bootstrap, topics, tmp_path / "new") == version
    assert Registry(tmp_path / "new").champion() == version
    # A scorer stopped while `newer` served, restarted after the rollback: the champion from
    # its first decision too (it served `newer` until its watcher's first look: a QA pass)
    trainer, stopped = Registry(tmp_path / "registry"), Registry(tmp_path / "stopped")
    for v in (version, newer):
        stopped.import_version(trainer.load_bytes(v)[0], trainer.entry(v))
        stopped.promote(v)
    assert _first_decision_of_a_new_scorer(kafka_bootstrap, topics, tmp_path / "stopped") == (
        version
    )


def test_a_scorers_verdict_reaches_the_trainer_and_the_fleet_follows(
    kafka_bootstrap, topics, unique_name, tmp_path, monkeypatch
):
    """A QA pass (a fleet fed by the models topic): each scorer judged its contests alone, in
    its own registry, and two scorers served different versions. A scorer's verdict now goes
    to the trainer (its real feed and producer), whose registry takes it and whose lifecycle
    the other scorers follow: here a running `fds run` engine serves the version another
    scorer promoted, imported from the lifecycle (it never held it)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    scorer = Registry(scorer_dir := tmp_path / "scorer-registry")
    promoted: list[str] = []

    def scorer_b_promotes(version: str) -> None:  # while the trainer and the scorer run
        trainer = Registry(tmp_path / "registry")
        trainer.promote(version)  # the fleet's champion
        e = trainer.entry(version)  # a newer version, never announced (as if by the trainer)
        newer = trainer.publish(
            trainer.load(version), spec=e["spec"], parent=version,
            labels_learned=e["labels_learned"], evaluation=e["evaluation"],
        )["version"]  # fmt: skip
        b = ModelFeed(
            settings_for(kafka_bootstrap, topics, unique_name("b")), Registry(tmp_path / "b"),
            name="default", topic=topics["models"], decisions_topic=topics["decisions"],
            by="fds/b",
        )  # fmt: skip
        b.start()
        try:
            figures = {"labels": 20, "recall_at_budget_incumbent": 0.5, "incumbent": version,
                       "recall_at_budget_candidate": 0.7, "candidate": newer}  # fmt: skip
            b.on_event("promote", {**figures, "why": "promoted: precision >= champion"})
            wait_until(lambda: trainer.champion() == newer, 30, "the trainer to take b's verdict")
            wait_until(lambda: scorer.champion() == newer, 30, "the running scorer to follow")
        finally:
            b.close()
        promoted.append(newer)

    got = train_and_serve(
        kafka_bootstrap, topics, unique_name, tmp_path, scorer_registry=scorer_dir,
        models_topic=topics["models"], before_second_half=scorer_b_promotes,
        serves=lambda version: promoted[0],
    )  # fmt: skip
    (newer,) = promoted
    assert {d["model_version"] for d in got.tail} <= {newer, None}
    assert any(d["model_version"] == newer for d in got.tail)
    assert got.registry.entry(newer)["status"] == "champion"
