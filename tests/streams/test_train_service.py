"""``fds train``'s checkpoint (fds.streams.train.TrainService): what a restart takes from it and
what from the current spec file. The service against the real broker is in
tests/integration/test_kafka_train.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fds.errors import ConfigError
from fds.pipeline import DEFAULT_MODEL
from fds.streams.kafka import KafkaSettings
from fds.streams.train import TrainService


def service(tmp_path: Path, spec: Path | str = DEFAULT_MODEL) -> TrainService:
    return TrainService(
        KafkaSettings(group="fds-train"), spec=spec, registry=tmp_path / "registry",
        state_dir=tmp_path / "state", models_topic=None,
    )  # fmt: skip


def test_a_restart_resumes_from_the_checkpointed_offsets(tmp_path):
    first = service(tmp_path)
    first._offsets = {("labels", 0): 5, ("decisions", 2): 40}
    first._save_state()
    again = service(tmp_path)
    assert again._offsets == again._restored == {("labels", 0): 5, ("decisions", 2): 40}


def test_a_restart_takes_the_learning_policy_from_the_current_spec(tmp_path):
    text = Path(DEFAULT_MODEL).read_text()
    spec = tmp_path / "default.yaml"
    spec.write_text(text)
    service(tmp_path, spec)._save_state()
    spec.write_text(text.replace("legit_sample_rate: 0.05", "legit_sample_rate: 0.5"))
    assert service(tmp_path, spec).trainer._rate == 0.5
    # another pipeline under the same name: refused, naming the checkpoint
    spec.write_text(text.replace("l2: 0.0001", "l2: 0.001"))
    with pytest.raises(ConfigError, match="another pipeline") as err:
        service(tmp_path, spec)
    assert "trainer" in str(err.value) and str(tmp_path / "state") in str(err.value)


def test_the_snapshots_and_the_checkpoint_commit_together(tmp_path):
    """A label consumed in a batch that never commits is neither learned nor lost: its
    snapshot comes back with the offsets before it."""
    svc = service(tmp_path)
    svc.trainer.on_decision({"tx_id": "t1", "ts": 1000.0, "amount": 5.0}, {"features": {}})
    svc._offsets = {("decisions", 0): 1}
    svc._save_state()
    svc.trainer.on_label({"tx_id": "t1", "ts": 2000.0, "is_fraud": True})  # takes the snapshot
    svc._offsets = {("decisions", 0): 1, ("labels", 0): 1}
    svc.store.rollback()  # the batch failed before its commit (run() rolls it back)
    again = service(tmp_path)
    assert again._offsets == {("decisions", 0): 1}
    assert again.trainer.stats["labels_learned"] == 0 and len(again.store) == 1
    assert again.trainer.on_label({"tx_id": "t1", "ts": 2000.0, "is_fraud": True})
