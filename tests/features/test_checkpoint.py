"""Checkpoint files: atomic, carry the source position, refuse a different feature set."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import pytest

from fds.errors import ConfigError
from fds.features import FeaturePlan
from tests.features.conftest import ALL_SPECS, GRACE, Spec
from tests.features.test_plan_dense import dense_stream
from tests.features.test_plan_properties import run_plan


def test_checkpoint_file_roundtrip_and_position(tmp_path: Path) -> None:
    ops = dense_stream(3, 400, 1_717_272_000.0, mean_step=200.0)
    whole = run_plan(FeaturePlan(ALL_SPECS, timezone="Europe/Berlin", grace=GRACE), ops)
    first = FeaturePlan(ALL_SPECS, timezone="Europe/Berlin", grace=GRACE)
    head = run_plan(first, ops[:250])
    path = tmp_path / "features.ckpt"
    first.checkpoint(path, {"file": "tx.jsonl", "line": 250})
    first.checkpoint(path, {"file": "tx.jsonl", "line": 250})  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["features.ckpt"]  # no temp file left
    second, position = FeaturePlan.from_checkpoint(
        path, ALL_SPECS, timezone="Europe/Berlin", grace=GRACE
    )
    assert position == {"file": "tx.jsonl", "line": 250}
    assert head + run_plan(second, ops[250:]) == whole
    assert second.state_sizes() == first.state_sizes()


def test_restore_refuses_other_declarations(tmp_path: Path) -> None:
    plan = FeaturePlan(ALL_SPECS)
    plan.checkpoint(tmp_path / "c", 0)
    other = FeaturePlan([Spec("n", "card_id", "count", None, "1h")])
    # the features that differ are named (both declarations in full, 2,267 characters: a QA)
    with pytest.raises(
        ConfigError, match=r"other feature declarations \((changed|added)[^)]*removed: "
    ):
        other.restore(tmp_path / "c")
    with pytest.raises(ConfigError, match="other timezone"):
        FeaturePlan(ALL_SPECS, timezone="Asia/Seoul").restore(tmp_path / "c")
    # another name of the zone is the zone: a rules reload takes it (a QA pass: refused), and
    # the restart after it must take the state saved under the old name (a review)
    FeaturePlan(ALL_SPECS, timezone="Etc/UTC").restore(tmp_path / "c")
    FeaturePlan(ALL_SPECS, timezone="Asia/Calcutta").checkpoint(tmp_path / "k", 0)
    FeaturePlan(ALL_SPECS, timezone="Asia/Kolkata").restore(tmp_path / "k")


def test_restore_missing_or_torn_file(tmp_path: Path) -> None:
    plan = FeaturePlan(ALL_SPECS)
    with pytest.raises(ConfigError, match="no feature checkpoint"):
        plan.restore(tmp_path / "nope")
    torn = tmp_path / "torn"
    plan.checkpoint(torn, 1)
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="unreadable"):
        plan.restore(torn)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert os.access(tmp_path, os.W_OK)


def test_restore_refuses_a_checkpoint_whose_bytes_changed(tmp_path: Path) -> None:
    """A failing disk's flipped bytes: refused by the checksum, not a state restored wrong
    (flipped in a float of the state, the pickle still loads)."""
    plan = FeaturePlan(ALL_SPECS, grace=GRACE)
    run_plan(plan, dense_stream(3, 100, 1_717_272_000.0, mean_step=200.0))
    path = tmp_path / "c"
    plan.checkpoint(path, 7)
    data = bytearray(path.read_bytes())
    at = data.index(b"G" + struct.pack(">d", plan.watermark))  # (the watermark, BINFLOAT)
    data[at + 7] ^= 1
    path.write_bytes(bytes(data))
    assert pickle.loads(bytes(data))  # (it unpickles)
    with pytest.raises(ConfigError, match="do not match the checksum"):
        FeaturePlan(ALL_SPECS, grace=GRACE).restore(path)
    plan.checkpoint(path, 7)  # a byte changed in the checksum's mark: no file of before (QA)
    data = bytearray(path.read_bytes())
    data[-70] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="do not match the checksum"):
        FeaturePlan(ALL_SPECS, grace=GRACE).restore(path)
    unsummed = tmp_path / "old"  # a checkpoint of a release before the sum: read as it is
    unsummed.write_bytes(pickle.dumps({**plan.state_dict(), "position": 3}, 5))
    assert FeaturePlan(ALL_SPECS, grace=GRACE).restore(unsummed) == 3
    unsummed.chmod(0o666)  # one every user could have written: not unpickled (as fds run's)
    with pytest.raises(ConfigError, match="writable by every user"):
        FeaturePlan(ALL_SPECS, grace=GRACE).restore(unsummed)
    with pytest.raises(ConfigError, match="cannot be read"):
        FeaturePlan(ALL_SPECS, grace=GRACE).restore(tmp_path)  # (a directory)
    (tmp_path / "latest").symlink_to(path.name)  # (a link to the newest: followed, a review)
    path.write_bytes(b"")
    plan.checkpoint(path, 9)
    assert FeaturePlan(ALL_SPECS, grace=GRACE).restore(tmp_path / "latest") == 9


def test_late_event_is_flagged_counted_and_not_folded() -> None:
    specs = [Spec("n", "card_id", "count", None, "1h")]
    plan = FeaturePlan(specs, grace="5m")
    plan.compute({"tx_id": "1", "ts": 1000.0, "card_id": "c", "amount": 1.0})
    within = plan.compute({"tx_id": "2", "ts": 1000.0 - 299, "card_id": "c", "amount": 1.0})
    assert within == {"n": 1}  # the later tx is not in its window; no flag
    late = plan.compute({"tx_id": "3", "ts": 1000.0 - 301, "card_id": "c", "amount": 1.0})
    assert late["_flags"] == ["late"] and plan.late_events == 1
    assert plan.compute({"tx_id": "4", "ts": 1001.0, "card_id": "c", "amount": 1.0}) == {"n": 3}


@pytest.mark.parametrize("cut", [700, 1500, 2300])
def test_restore_mid_freeze_continues_exactly(cut: int) -> None:
    # a long dense stream: label buckets of the 2-hour fraud windows (~1 min each) are frozen
    # a step per 512 transactions, so a checkpoint lands with freezes queued or half done
    ops = dense_stream(9, 3000, 1_717_272_000.0, mean_step=30.0)
    whole_plan = FeaturePlan(ALL_SPECS, grace=GRACE)
    whole = run_plan(whole_plan, ops)
    first = FeaturePlan(ALL_SPECS, grace=GRACE)
    head = run_plan(first, ops[:cut])
    assert first._labels._due  # freezing in progress
    second = FeaturePlan(ALL_SPECS, grace=GRACE)
    second.load_state_dict(first.state_dict())
    assert head + run_plan(second, ops[cut:]) == whole
    assert second.unmatched_labels == whole_plan.unmatched_labels
    assert any(bk.parts is not None for bk in second._labels.buckets.values())


def test_a_restore_says_when_it_keeps_another_label_ttl(caplog) -> None:
    """Found by a QA pass: the checkpoint's label_ttl replaced the plan's without a word. It
    is kept (the restored store's buckets are made for it: keeping the configured one made
    thousands of them, a review) and said."""
    specs = [Spec("m_fr", "merchant_id", "fraud_rate", None, "1h")]
    saved = FeaturePlan(specs, label_ttl="2h").state_dict()
    plan = FeaturePlan(specs, label_ttl="7d")
    plan.load_state_dict(saved)
    assert plan.label_ttl == 7200
    assert (
        "keeps its label_ttl of 7200 s (its tx_id store is bucketed for it), not the "
        "604800 s configured" in caplog.text
    )
