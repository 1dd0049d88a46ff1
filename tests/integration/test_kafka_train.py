"""Labels and models over Kafka (issue 6 item 3): ``fds train`` learns from the decisions and
labels topics, publishes a version, and a running scorer (``fds run``) serves it."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaProducer

from fds.models import Registry
from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES
from fds.streams.kafka import Runner, build_run_engine, close_engine, produce_file
from fds.streams.train import TrainService
from tests.integration.test_kafka_run import (
    count_records,
    read_all,
    run_in_thread,
    settings_for,
    wait_until,
    write_simulated,
)

pytestmark = pytest.mark.integration


def _spec(tmp_path: Path) -> Path:
    """The default spec, publishing after 20 learned labels (the test's stream is small)."""
    doc = yaml.safe_load(DEFAULT_MODEL.read_text())
    doc["publish"] = {"every_labels": 20, "every_seconds": "30d"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_version_published_by_trainer_reaches_a_running_scorer(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    write_simulated(tmp_path / "tx.jsonl", days=2, cards=1500)
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines()
    half = len(lines) // 2
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines[:half]) + b"\n")
    (tmp_path / "b.jsonl").write_bytes(b"\n".join(lines[half:]) + b"\n")
    registry = tmp_path / "registry"
    s = settings_for(kafka_bootstrap, topics, unique_name("g"))

    engine = build_run_engine(DEFAULT_RULES, DEFAULT_MODEL, registry=registry, poll_seconds=0.2)
    runner = Runner(s, engine)
    t_run, run_errors = run_in_thread(runner)
    trainer = TrainService(
        settings_for(kafka_bootstrap, topics, unique_name("train")),
        spec=_spec(tmp_path),
        registry=registry,
        state_dir=tmp_path / "train-state",
        decisions_topic=topics["decisions"],
        labels_topic=topics["labels"],
        models_topic=topics["models"],
        label_wait_s=0.5,
    )
    train_errors: list[BaseException] = []

    def train() -> None:
        try:
            trainer.run()
        except BaseException as exc:  # surfaced by the test
            train_errors.append(exc)

    t_train = threading.Thread(target=train, daemon=True)
    t_train.start()
    try:
        produce_file(tmp_path / "a.jsonl", s)
        wait_until(lambda: runner.stats.decided >= half, 60, "the first half decided")
        # Labels for the first half: every 10th a fraud, known an hour after the payment.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i, line in enumerate(lines[:400]):
            tx = orjson.loads(line)
            label = {"tx_id": tx["tx_id"], "ts": tx["ts"] + 3600, "is_fraud": i % 10 == 0}
            producer.send(topics["labels"], key=tx["tx_id"].encode(), value=orjson.dumps(label))
        producer.flush()
        producer.close()
        reg = Registry(registry)
        wait_until(lambda: reg.latest() is not None, 60, "a published version")
        version = reg.latest()
        assert trainer.trainer.stats["frauds_learned"] >= 20
        assert runner.stats.decided == half  # nothing decided with it yet

        produce_file(tmp_path / "b.jsonl", s)
        wait_until(
            lambda: count_records(kafka_bootstrap, topics["decisions"]) >= len(lines),
            60,
            "the second half decided",
        )
    finally:
        runner.stop()
        trainer.stop()
        t_run.join(15)
        t_train.join(15)
        close_engine(engine)
    assert not run_errors and not train_errors, (run_errors, train_errors)

    decisions = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, topics["decisions"])]
    by_id = {d["tx_id"]: d for d in decisions}
    early = [by_id[orjson.loads(x)["tx_id"]] for x in lines[:half]]
    late = [by_id[orjson.loads(x)["tx_id"]] for x in lines[half:]]
    assert all(d["model_version"] is None for d in early)  # no version existed yet
    # The scorer swapped the trainer's version in while running: the second half carries it.
    served = [d for d in late if d["model_version"] == version]
    assert served and all(d["model_score"] is not None for d in served)
    assert late[-1]["model_version"] == version

    # The version was announced on the compacted models topic: a verifiable pointer.
    (ann,) = [r for r in read_all(kafka_bootstrap, topics["models"]) if r.key == b"default"][:1]
    a = orjson.loads(ann.value)
    entry = reg.entry(version)
    assert (a["name"], a["version"], a["sha256"]) == ("default", version, entry["sha256"])
    assert hashlib.sha256(base64.b64decode(a["artifact_b64"])).hexdigest() == entry["sha256"]
    assert Path(a["path"]).read_bytes() == base64.b64decode(a["artifact_b64"])
