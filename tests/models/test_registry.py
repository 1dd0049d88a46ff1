"""Registry: atomic publish, sha256/HMAC verified BEFORE unpickling, retention, promote/rollback."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from fds.errors import ArtifactError, ConfigError
from fds.models.registry import Registry

UNPICKLED: list[str] = []


def _mark(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Booby:
    """Unpickling this object calls ``_mark``: proof that the bytes were unpickled."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self):
        return (_mark, (self.tag,))


@pytest.fixture(autouse=True)
def _clear() -> None:
    UNPICKLED.clear()


def _flip_byte(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    reg = Registry(tmp_path, key=b"k")
    e = reg.publish({"w": 2}, spec={"name": "t"}, labels_learned=5, evaluation={"auc": 0.9})
    assert reg.load(e["version"]) == {"w": 2}
    m = json.loads((tmp_path / "manifest.json").read_text())
    entry = m["versions"]["v000001"]
    for field in (
        "version",
        "spec",
        "parent",
        "created_at",
        "labels_learned",
        "evaluation",
        "sha256",
        "hmac",
    ):
        assert field in entry
    assert not list(tmp_path.glob(".*.pkl.*")), "no temp files left behind"


def test_flipped_byte_is_rejected_and_not_unpickled(tmp_path: Path) -> None:
    reg = Registry(tmp_path, key=None)
    e = reg.publish(Booby("a"), spec={"name": "t"})
    reg.load(e["version"])
    assert UNPICKLED == ["a"]  # the trap works when the artifact is intact
    UNPICKLED.clear()
    _flip_byte(tmp_path / f"{e['version']}.pkl")
    with pytest.raises(ArtifactError, match="sha256"):
        reg.load(e["version"])
    assert UNPICKLED == []


def test_wrong_signature_is_rejected_and_not_unpickled(tmp_path: Path) -> None:
    Registry(tmp_path, key=b"right").publish(Booby("b"), spec={"name": "t"})
    with pytest.raises(ArtifactError, match="HMAC"):
        Registry(tmp_path, key=b"wrong").load("v000001")
    assert UNPICKLED == []


def test_forged_artifact_with_matching_sha_but_no_key_is_rejected(tmp_path: Path) -> None:
    reg = Registry(tmp_path, key=b"right")
    reg.publish({"ok": 1}, spec={"name": "t"})
    # An attacker replaces the artifact and fixes the sha256 in the manifest, not knowing the key.
    evil = pickle.dumps(Booby("evil"))
    (tmp_path / "v000001.pkl").write_bytes(evil)
    m = json.loads((tmp_path / "manifest.json").read_text())
    import hashlib

    m["versions"]["v000001"]["sha256"] = hashlib.sha256(evil).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="HMAC"):
        reg.load("v000001")
    assert UNPICKLED == []


def test_unsigned_artifact_rejected_when_key_configured(tmp_path: Path) -> None:
    Registry(tmp_path, key=None).publish({"x": 1}, spec={"name": "t"})
    with pytest.raises(ArtifactError, match="not signed"):
        Registry(tmp_path, key=b"k").load("v000001")


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDS_MODEL_KEY", "env-secret")
    e = Registry(tmp_path).publish({"x": 1}, spec={"name": "t"})
    assert e["hmac"]
    monkeypatch.setenv("FDS_MODEL_KEY", "other")
    with pytest.raises(ArtifactError):
        Registry(tmp_path).load("v000001")


def test_retention_keeps_last_n_and_the_champion(tmp_path: Path) -> None:
    reg = Registry(tmp_path, retain=3)
    for i in range(3):
        reg.publish({"i": i}, spec={"name": "t"})
    reg.promote("v000001")
    for i in range(3, 8):
        reg.publish({"i": i}, spec={"name": "t"})
    kept = [e["version"] for e in reg.versions()]
    assert kept == ["v000001", "v000006", "v000007", "v000008"]
    assert sorted(p.stem for p in tmp_path.glob("*.pkl")) == kept


def test_promote_and_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for i in range(3):
        reg.publish({"i": i}, spec={"name": "t"})
    with pytest.raises(ConfigError, match="nothing to roll back"):
        reg.rollback()
    reg.promote("v000001")
    reg.promote("v000003")
    assert reg.champion() == "v000003"
    back = reg.rollback(reason="test")
    assert back["version"] == "v000001" and reg.champion() == "v000001"
    assert reg.entry("v000003")["status"] == "rejected"
    with pytest.raises(ConfigError, match="unknown model version"):
        reg.promote("v000099")
