"""Registry: atomic publish, sha256/HMAC verified BEFORE unpickling, retention, promote/rollback."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from fds.errors import ArtifactError, ConfigError
from fds.models.registry import ENTRY_FIELDS, Registry, rolled_back_in
from tests.models.fakes import FeatureModel

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
    # the error names the version and its file (`fds train` said only "sha256 mismatch")
    with pytest.raises(ArtifactError, match=rf"v000001 \({tmp_path}/v000001.pkl\): .*sha256"):
        reg.load(e["version"])
    assert UNPICKLED == []


def test_wrong_signature_is_rejected_and_not_unpickled(tmp_path: Path) -> None:
    Registry(tmp_path, key=b"right").publish(Booby("b"), spec={"name": "t"})
    with pytest.raises(ArtifactError, match="HMAC"):
        Registry(tmp_path, key=b"wrong").load("v000001")
    assert UNPICKLED == []


def _forged(tmp_path: Path) -> Registry:
    """A registry signed with b"right" whose v000001 an attacker replaced, fixing its sha256 in
    the manifest, not knowing the key."""
    reg = Registry(tmp_path, key=b"right")
    reg.publish({"ok": 1}, spec={"name": "t"})
    evil = pickle.dumps(Booby("evil"))
    (tmp_path / "v000001.pkl").write_bytes(evil)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["versions"]["v000001"]["sha256"] = hashlib.sha256(evil).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    return reg


@pytest.mark.parametrize("how", ["writable by every user", "another user's"])
def test_without_a_key_an_artifact_someone_else_could_write_is_not_unpickled(
    tmp_path: Path, how: str, caplog
) -> None:
    """A security review: without FDS_MODEL_KEY the registry's artifacts were unpickled
    whoever wrote them: a writer of a shared registry (or of the working folder holding the
    default models/registry) had their code run by fds run, fds train, `fds models show`.
    Without a key only this user's files are loaded; with one the signature decides."""
    for key in (None, b"k"):
        reg = Registry(tmp_path / str(key), key=key)
        reg.publish(Booby(str(key)), spec={"name": "t"})
        art = reg.artifact("v000001")
        if how == "another user's":
            if os.geteuid() != 0:
                pytest.skip("changing a file's owner needs root")
            os.chown(art, 4242, -1)
        else:
            art.chmod(0o666)
        if key is None:
            with pytest.raises(ArtifactError, match="FDS_MODEL_KEY on the trainer"):
                reg.load("v000001")
            assert UNPICKLED == []
        else:
            assert reg.load("v000001") == "b'k'"  # (signed: loaded, whoever owns the file)
    # ... and its manifest, whose sha256s decide the artifacts (a review)
    reg = Registry(tmp_path / "None", key=None)
    (tmp_path / "None" / "manifest.json").chmod(0o666)
    with pytest.raises(ConfigError, match="writable by every user"):
        reg.versions()
    assert Registry(tmp_path / "None", key=b"k").versions()  # (keyed: read, then checked)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with caplog.at_level("WARNING", logger="fds.models.registry"):
        Registry(shared)
    assert "writable by every user" in caplog.text and "others can replace" in caplog.text


def test_forged_artifact_with_matching_sha_but_no_key_is_rejected(tmp_path: Path) -> None:
    reg = _forged(tmp_path)
    with pytest.raises(ArtifactError, match="HMAC"):
        reg.load("v000001")
    assert UNPICKLED == []


def test_a_signed_artifact_is_not_loaded_where_the_key_is_missing_or_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where FDS_MODEL_KEY was unset (or set empty), a signed version was loaded with its
    sha256 checked only: a tampered artifact with a fixed sha256 ran (a review)."""
    from fds.errors import ConfigError

    _forged(tmp_path)
    monkeypatch.delenv("FDS_MODEL_KEY", raising=False)
    with pytest.raises(ArtifactError, match="signed but FDS_MODEL_KEY is not set"):
        Registry(tmp_path).load("v000001")
    monkeypatch.setenv("FDS_MODEL_KEY", "")
    with pytest.raises(ConfigError, match="FDS_MODEL_KEY is set but empty"):
        Registry(tmp_path).load("v000001")
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


def test_retention_deletes_artifacts_only_once_the_manifest_no_longer_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: retention deleted the artifacts before writing the manifest, so a
    crash (or a full disk) in between left a manifest listing versions without a file."""
    import fds.models.registry as registry

    reg = Registry(tmp_path, retain=2)
    for i in range(2):
        reg.publish({"i": i}, spec={"name": "t"})
    write = registry.write_atomic

    def disk_full(path: Path, data: bytes, **kw: Any) -> None:
        if path.name == "manifest.json":
            raise OSError(28, "No space left on device")
        write(path, data, **kw)

    monkeypatch.setattr(registry, "write_atomic", disk_full)
    with pytest.raises(OSError):
        reg.publish({"i": 2}, spec={"name": "t"})
    monkeypatch.setattr(registry, "write_atomic", write)
    assert [e["version"] for e in reg.versions()] == ["v000001", "v000002"]
    assert reg.load("v000001") == {"i": 0}  # still there
    reg.publish({"i": 3}, spec={"name": "t"})  # (the failed one's number again)
    kept = [e["version"] for e in reg.versions()]
    assert kept == ["v000002", "v000003"] == sorted(p.stem for p in tmp_path.glob("v*.pkl"))


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
    with pytest.raises(ConfigError, match="nothing to roll back"):  # not back to v000003
        reg.rollback()
    assert reg.champion() == "v000001"
    with pytest.raises(ConfigError, match="unknown model version"):
        reg.promote("v000099")


def test_a_rollback_goes_further_back_and_its_target_survives_retention(tmp_path: Path) -> None:
    reg = Registry(tmp_path, retain=2)
    for v in ("v000001", "v000002", "v000003"):
        reg.publish({"v": v}, spec={"name": "t"})
        reg.promote(v)
    for i in range(4):  # newer versions, never promoted: retention drops older ones
        reg.publish({"i": i}, spec={"name": "t"})
    assert reg.rollback()["version"] == "v000002"  # kept: a recent champion
    assert reg.rollback()["version"] == "v000001"  # v000003 was rejected: further back
    assert reg.entry("v000002")["status"] == "rejected"


def test_a_rollback_rejects_the_versions_learned_from_the_version_rolled_back(tmp_path):
    """A QA pass: v44, learned on from v43, won its contest 12 s after v43 was rolled back by
    hand, and served what had been rolled back."""
    reg = Registry(tmp_path)
    parents = {"v000001": None, "v000002": "v000001", "v000003": "v000002",
               "v000004": "v000003", "v000005": "v000001"}  # fmt: skip
    for parent in parents.values():
        reg.publish({"x": 1}, spec={"name": "t"}, parent=parent)
    reg.promote("v000001")
    reg.promote("v000002")
    reg.mark_shadow("v000003")
    reg.rollback()  # v2 -> v1: v3 (learned from v2) and v4 (from v3) go with it
    status = {e["version"]: e["status"] for e in reg.versions()}
    assert status == {"v000001": "champion", "v000002": "rejected", "v000003": "rejected",
                      "v000004": "rejected", "v000005": "published"}  # fmt: skip
    assert reg.entry("v000004")["rejected_because"] == "learned from v000002, rolled back"
    reg.promote("v000005")  # a promotion retires: its line stays
    reg.publish({"x": 1}, spec={"name": "t"}, parent="v000001")
    assert reg.entry("v000006")["status"] == "published"


def test_a_rollback_of_an_older_version_spares_what_the_restored_one_learned_from(tmp_path):
    """A QA pass: v2 promoted by hand over v5 (learned on from v2 through v3 and v4), then
    rolled back: v3 and v4 were rejected as "learned from v000002", though v5, the champion
    restored, had learned from them too (and v6-v8, learned on from v5, were not)."""
    reg = Registry(tmp_path)
    for i in range(8):
        reg.publish({"x": i}, spec={"name": "t"}, parent=f"v{i:06d}" if i else None)
    reg.promote("v000005")
    reg.promote("v000002")
    assert reg.rollback()["version"] == "v000005"
    status = {e["version"]: e["status"] for e in reg.versions()}
    assert status == {"v000001": "published", "v000002": "rejected", "v000003": "published",
                      "v000004": "published", "v000005": "champion", "v000006": "published",
                      "v000007": "published", "v000008": "published"}, status  # fmt: skip
    assert reg.promote("v000004")["version"] == "v000004"  # (no --force needed)


def test_a_rollback_follows_a_line_through_versions_retention_removed(tmp_path):
    """A review: with 10 versions kept, a champion that served while more were published had
    no line to its newest versions (their parents removed): its rollback rejected none of
    them, and a version published after the rollback from that line was not rejected either;
    a champion promoted out of a rolled-back line starts a line of its own."""
    reg = Registry(tmp_path, retain=3)
    reg.publish({"x": 1}, spec={"name": "t"})
    reg.promote("v000001")
    for i in range(2, 10):  # v2 promoted, then v3..v9 learned on from it, one by one
        reg.publish({"x": 1}, spec={"name": "t"}, parent=f"v{i - 1:06d}")
        if i == 2:
            reg.promote("v000002")
    assert "v000003" not in reg.manifest()["versions"]  # (removed by retention)
    reg.rollback()
    assert [e["version"] for e in reg.versions() if e["status"] != "rejected"] == ["v000001"]
    late = reg.publish({"x": 1}, spec={"name": "t"}, parent="v000009")  # (its trainer's
    assert late["status"] == "rejected"  # check came before the rollback)
    assert late["rejected_because"] == "learned from v000002, rolled back"
    reg.promote("v000010")  # by hand, out of the rolled-back line: a line of its own
    assert reg.publish({"x": 1}, spec={"name": "t"}, parent="v000010")["status"] == "published"


def test_a_line_stays_rolled_back_after_retention_removed_the_version_rolled_back(tmp_path):
    """A QA pass: versions learned from a rolled-back v3 were rejected until retention removed
    v3; from then on they were published, and a running scorer served one."""
    reg = Registry(tmp_path, retain=3)
    parent = None
    for _ in range(3):
        parent = reg.publish({"x": 1}, spec={"name": "t"}, parent=parent)["version"]
    reg.promote("v000002")
    reg.promote("v000003")
    reg.rollback()  # v3 rolled back: v2 serves again
    parent, seen = "v000003", []
    for _ in range(8):  # a stale trainer goes on from v3
        e = reg.publish({"x": 1}, spec={"name": "t"}, parent=parent)
        parent = e["version"]
        seen.append(e["status"])
    assert "v000003" not in reg.manifest()["versions"]  # (removed by retention)
    assert set(seen) == {"rejected"}, seen
    assert rolled_back_in(Registry(tmp_path).manifest(), "v000011") == "v000003"


def test_a_lifecycle_followed_rejects_what_it_lists_not_a_line_of_its_own(tmp_path):
    """A review: the champion replaced was in the lifecycle's rejected list, and the versions
    learned from the new champion (itself learned from it) were rejected here alone."""
    reg = Registry(tmp_path)
    for parent in (None, "v000001", "v000002", "v000001"):
        reg.publish({"x": 1}, spec={"name": "t"}, parent=parent)
    reg.promote("v000001")
    reg.follow("v000002", ["v000001"], mark="m1", reason="the trainer's registry")
    status = {e["version"]: e["status"] for e in reg.versions()}
    assert status == {"v000001": "rejected", "v000002": "champion", "v000003": "published",
                      "v000004": "published"}  # fmt: skip


def _two_champions(path: Path) -> Registry:
    """v000001 then v000002 promoted."""
    reg = Registry(path)
    for v in ("v000001", "v000002"):
        reg.publish({"x": 1}, spec={"name": "t"})
        reg.promote(v)
    return reg


def test_promoting_the_champion_again_changes_nothing_and_rollback_still_works(tmp_path):
    reg = _two_champions(tmp_path)
    reg.promote("v000002")  # twice (two scorers recording one promotion): no v2 -> v2 entry
    assert reg.rollback()["version"] == "v000001"  # was a no-op "rolled back" to v000002


def test_a_rollback_to_an_artifact_that_does_not_verify_changes_nothing(tmp_path):
    reg = _two_champions(tmp_path)
    _flip_byte(tmp_path / "v000001.pkl")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        reg.rollback()
    assert reg.champion() == "v000002" and UNPICKLED == []


def test_the_models_commands_refuse_a_folder_that_is_no_registry(tmp_path, capsys):
    """Found by a QA pass: `fds models list --registry /tmp` said "no versions", and a
    rollback there wrote its lock file into it."""
    from fds.cli import main

    (tmp_path / "notes.txt").write_text("not a model")
    for command in ("list", "rollback"):
        assert main(["models", "--registry", str(tmp_path), command]) == 2
        assert "is no model registry" in capsys.readouterr().err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert main(["models", "--registry", str(tmp_path / "empty"), "list"]) == 0
    # a first publish writes its artifact (and hidden temp files) before the manifest: a
    # registry being made, not another folder (a review)
    for name in ("v000001.pkl", ".lock", ".manifest.json.x1"):
        (tmp_path / "empty" / name).write_bytes(b"")
    assert main(["models", "--registry", str(tmp_path / "empty"), "list"]) == 0


def test_a_publisher_refuses_a_folder_that_is_no_registry_and_an_empty_path(tmp_path, capsys):
    """A QA pass: `fds train --registry /tmp` would have published into /tmp, and
    `--registry ''` (or `FDS_REGISTRY=`) into the working directory."""
    from fds.cli import main
    from fds.streams.kafka import load_settings

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="is no model registry"):
        Registry(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "volume" / "lost+found").mkdir(parents=True)  # a new volume's (a review)
    Registry(tmp_path / "volume").publish(FeatureModel("amount"), spec={"name": "default"})
    with pytest.raises(SystemExit):
        main(["train", "--registry", "", "--metrics-port", "-1"])
    assert "--registry: empty path: give a model registry folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="setting registry: empty"):
        load_settings(registry="")


def test_the_models_commands_read_the_deployments_registry(tmp_path, capsys, monkeypatch):
    """A QA pass: `FDS_REGISTRY=/data/reg fds models list` (a deployment's pod) listed
    ./models/registry; it takes FDS_REGISTRY and --config's registry, as fds run and train."""
    from fds.cli import main

    reg = Registry(tmp_path / "deployed")
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FDS_REGISTRY", str(tmp_path / "deployed"))
    assert main(["models", "list"]) == 0
    assert "v000001" in capsys.readouterr().out
    monkeypatch.delenv("FDS_REGISTRY")
    (tmp_path / "fds.yaml").write_text("registry: deployed\n")
    assert main(["models", "--config", str(tmp_path / "fds.yaml"), "show"]) == 0
    assert "v000001" in capsys.readouterr().out
    assert main(["models", "list"]) == 2  # (no ./models/registry here)


def test_the_models_commands_read_the_registry_alone_of_the_settings(tmp_path, capsys, monkeypatch):
    """A QA pass: a rollback with the deployment's settings file was refused over its CA file
    and SASL password, settings of the broker `fds models` never talks to."""
    from fds.cli import main

    reg = Registry(tmp_path / "deployed")
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    (tmp_path / "fds.yaml").write_text(
        "registry: deployed\nsecurity_protocol: SASL_SSL\nsasl_mechanism: SCRAM-SHA-512\n"
        "sasl_username: fds\nssl_cafile: /etc/fds/no-such-ca.pem\n"
    )
    monkeypatch.setenv("FDS_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("FDS_REGISTRY", raising=False)
    assert main(["models", "--config", str(tmp_path / "fds.yaml"), "list"]) == 0
    assert "v000001" in capsys.readouterr().out
    (tmp_path / "five.yaml").write_text("registry: 5\n")  # (a folder `5`: a review)
    assert main(["models", "--config", str(tmp_path / "five.yaml"), "list"]) == 2
    assert "setting registry: a folder's path, got 5" in capsys.readouterr().err
    monkeypatch.setenv("FDS_REGISTRY", "")  # (the registry is still checked as before)
    assert main(["models", "--config", str(tmp_path / "fds.yaml"), "list"]) == 2
    assert "setting registry: empty: give a folder" in capsys.readouterr().err


def test_a_rollback_of_an_empty_registry_leaves_its_folder_as_it_was(tmp_path, capsys):
    """A QA pass: it said there was nothing to roll back to, and left a .lock file there."""
    from fds.cli import main

    assert main(["models", "--registry", str(tmp_path), "rollback"]) == 1
    assert "nothing to roll back to: no earlier champion" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_models_commands_create_no_registry_and_refuse_a_foreign_manifest(tmp_path, capsys):
    from fds.cli import main

    missing = tmp_path / "typo"
    for command in ("list", "show", "rollback"):
        assert main(["models", "--registry", str(missing), command]) == 2
        said = capsys.readouterr().err
        assert "no model registry at" in said and not missing.exists()
        # (a QA pass: it said "check --registry" of a registry given by FDS_REGISTRY too)
        assert "--registry, FDS_REGISTRY or a settings file's `registry`" in said
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text("{}")
    assert main(["models", "--registry", str(tmp_path / "r"), "list"]) == 2
    assert "no 'versions' mapping" in capsys.readouterr().err
    # an entry without the fields fds writes was a traceback (KeyError 'seq', a None spec)
    bad = ('{"version": "v000001"}', '{"version": "v1", "seq": 1, "status": "x", "spec": null}')
    for entry in bad:
        (tmp_path / "r" / "manifest.json").write_text(f'{{"versions": {{"v000001": {entry}}}}}')
        for command in (["list"], ["show", "v000001"], ["promote", "v000001"]):
            assert main(["models", "--registry", str(tmp_path / "r"), *command]) == 2
            assert "entry 'v000001' lacks a valid " in capsys.readouterr().err
    # hand-edited fields fds formats or follows (tracebacks: TypeError, KeyError; a QA pass)
    reg = Registry(tmp_path / "e")
    reg.publish({"x": 1}, spec={"name": "t"})
    reg.publish({"x": 2}, spec={"name": "t"})
    reg.promote("v000001")
    reg.promote("v000002")
    good = json.loads((tmp_path / "e" / "manifest.json").read_text())
    edits = [
        (lambda m: m["versions"]["v000001"].update(labels_learned=None), "labels_learned"),
        (lambda m: m["versions"]["v000001"].pop("created_at"), "created_at"),
        (lambda m: m["versions"]["v000001"].pop("version"), "version"),
        (lambda m: m["history"][-1].pop("from"), "history items need 'from' and 'to'"),
        # (more of them, another QA pass: tracebacks, or fds run stopped at its start)
        (lambda m: m["versions"]["v000001"].pop("sha256"), "sha256"),
        (lambda m: m["versions"]["v000001"].update(evaluation="x"), "valid evaluation"),
        (lambda m: m["versions"]["v000001"].update(parent=["v0"]), "valid parent"),
        (lambda m: m["versions"]["v000001"]["spec"].update(name=["t"]), "spec.name"),
        (
            lambda m: m["versions"]["v000001"].update(evaluation={"frauds_learned": "9"}),
            "evaluation.frauds_learned",
        ),
        # (another QA pass: `show` took it for the user's typo, `list` showed no champion and
        # `promote` went on; a status fds never writes was listed and promoted)
        (
            lambda m: m.update(champion="v000042"),
            "registry manifest champion 'v000042' is not one of its versions",
        ),
        (
            lambda m: m["versions"]["v000001"].update(status="weird"),
            "entry 'v000001' has status 'weird', not one of published, shadow, champion",
        ),
        # (another QA pass: `next: 2` made the next publish overwrite the champion's file;
        # an id is a file name: `../../etc/passwd` was listed and its path built)
        (lambda m: m.update(next=2), "'next' is 2, not a whole number past every version's"),
        (lambda m: m.update(next=True), "'next' is True"),
        (
            lambda m: m["versions"].update(
                {"../x": {**m["versions"]["v000001"], "version": "../x"}}
            ),
            "entry '../x' lacks a valid version id",
        ),
    ]
    for edit, says in edits:
        m = json.loads(json.dumps(good))
        edit(m)
        (tmp_path / "e" / "manifest.json").write_text(json.dumps(m))
        for command in (["list"], ["show"], ["promote", "v000001"], ["rollback"]):
            assert main(["models", "--registry", str(tmp_path / "e"), *command]) == 2, command
            assert says in capsys.readouterr().err


def test_a_registry_file_that_is_no_regular_file_is_refused_without_waiting(tmp_path):
    """A QA pass: an artifact replaced by a FIFO held the watcher in open() for good (newer
    versions were never served), a manifest that was one hung every `fds models` command, and
    a link to /dev/zero was read until memory ran out."""
    from tests.blocking import raised_within

    reg = Registry(tmp_path / "r")
    reg.publish({"x": 1}, spec={"name": "t"})
    art = reg.artifact("v000001")
    art.unlink()
    os.mkfifo(art)
    said = raised_within(lambda: reg.load("v000001"))
    assert isinstance(said, ArtifactError) and "not a regular file" in str(said)
    art.unlink()
    art.symlink_to("/dev/zero")  # (without a key a link is not followed: a review)
    with pytest.raises(ArtifactError, match="Too many levels of symbolic links"):
        reg.load("v000001")
    keyed = Registry(tmp_path / "r", key=b"k")  # (with one it is, to what it opens)
    with pytest.raises(ArtifactError, match="not a regular file"):
        keyed.load_bytes("v000001")
    (tmp_path / "r" / "manifest.json").unlink()
    (tmp_path / "r" / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="manifest cannot be read: Too many levels"):
        reg.manifest()
    with pytest.raises(ConfigError, match="manifest cannot be read: not a regular file"):
        keyed.manifest()
    (tmp_path / "r" / "manifest.json").unlink()
    (tmp_path / "r" / "manifest.json").mkdir()
    with pytest.raises(ConfigError, match="manifest cannot be read: Is a directory"):
        reg.manifest()
    (tmp_path / "r" / "manifest.json").rmdir()
    (tmp_path / "r" / "manifest.json").write_text("[" * 100_000)  # (a RecursionError traceback)
    with pytest.raises(ConfigError, match="manifest is not valid JSON: nested too deeply"):
        reg.manifest()


def test_a_passing_fault_reading_the_manifest_is_no_refusal(tmp_path, monkeypatch):
    """A review: every OSError of the manifest became a ConfigError, which a scorer's verdict
    writer takes for a refusal: a verdict lost to one EMFILE instead of retried."""
    import errno

    from fds.models import registry as registry_module

    reg = Registry(tmp_path / "r")
    reg.publish({"x": 1}, spec={"name": "t"})

    def emfile(path, limit, **_):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(registry_module, "read_regular", emfile)
    with pytest.raises(OSError, match="Too many open files") as e:
        reg.promote("v000001")
    assert not isinstance(e.value, ConfigError)


def test_models_without_a_command_names_the_commands(tmp_path, capsys):
    """A QA pass: it said "the following arguments are required: models_cmd"."""
    from fds.cli import main

    with pytest.raises(SystemExit) as e:
        main(["models", "--registry", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "fds models: error: give a command: list, show, promote, rollback" in err
    assert "models_cmd" not in err


def test_the_champion_is_never_marked_rejected(tmp_path):
    """A scorer whose contest lost against a version someone promoted meanwhile."""
    reg = _two_champions(tmp_path)
    reg.reject("v000002", "lost its shadow contest")
    assert reg.entry("v000002")["status"] == "champion"
    reg.rollback(reason="worse")
    assert reg.entry("v000002")["rejected_because"] == "worse"


def test_promoting_a_rejected_version_needs_force(tmp_path, capsys):
    from fds.cli import main

    reg = Registry(tmp_path)
    reg.publish({"x": 1}, spec={"name": "t"})
    reg.reject("v000001", "lost its shadow contest")
    args = ["models", "--registry", str(tmp_path), "promote", "v000001"]
    assert main(args) == 2 and "lost its shadow contest" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0 and reg.champion() == "v000001"
    assert "rejected_because" not in reg.entry("v000001")  # (it stayed: a QA pass)


def test_promoting_a_version_that_fails_its_canary_says_it_will_not_be_served(tmp_path, capsys):
    """`promote --force` of a version a scorer rejected for its canary said running scorers
    picked it up: each refused it again and kept its model (a QA pass)."""
    from fds.cli import main
    from tests.models.fakes import FeatureModel, NaNModel, NaNOn

    reg = Registry(tmp_path)
    reg.publish(FeatureModel("amount"), spec={"name": "t"})  # v000001: fine
    reg.publish(NaNModel("amount"), spec={"name": "t"})  # v000002: NaN on every input
    reg.publish(NaNOn("amount"), spec={"name": "t"})  # v000003: NaN on a scorer's inputs
    reg.reject("v000003", "canary: score nan is not a probability in [0, 1]")
    base = ["models", "--registry", str(tmp_path), "promote", "--force"]
    # without --force it is not promoted (it was, exit 0, with a warning: a QA pass)
    assert main([*base[:-1], "v000002"]) == 1 and reg.champion() is None
    assert "v000002 not promoted: it fails the canary check scorers make (score nan" in (
        capsys.readouterr().err
    )
    for version in ("v000002", "v000003"):
        assert main([*base, version]) == 0 and reg.champion() == version
        out = capsys.readouterr()
        assert "pick it up" not in out.out
        assert (
            f"scorers will not serve {version} while it fails their canary check (score nan"
            in out.err
        )
    assert main([*base, "v000001"]) == 0
    assert "running scorers pick it up on their next poll" in capsys.readouterr().out


def test_show_verify_runs_the_canary_check_scorers_run(tmp_path, capsys):
    """`show --verify` checked the sha256 and loaded the artifact, and said nothing of a
    version every scorer refuses for its canary (a QA pass): now it runs that check too."""
    from fds.cli import main
    from tests.models.fakes import FeatureModel, NaNModel

    reg = Registry(tmp_path)
    reg.publish(FeatureModel("amount"), spec={"name": "t"})
    reg.publish(NaNModel("amount"), spec={"name": "t"})
    base = ["models", "--registry", str(tmp_path), "show", "--verify"]
    assert main([*base, "v000001"]) == 0
    assert '"canary": "passed"' in capsys.readouterr().out
    assert main([*base, "v000002"]) == 1
    out = capsys.readouterr()
    assert '"canary": "score nan is not a probability in [0, 1]"' in out.out
    assert "v000002 fails the scorers' canary check (score nan" in out.err


@pytest.mark.parametrize("fault", ["corrupt", "missing", "unsigned", None])
def test_list_says_when_the_champion_fails_its_check(tmp_path, capsys, monkeypatch, fault):
    """A QA pass: a champion whose file is corrupt (a restored backup) is refused by every
    scorer, which serve an earlier version, while `list` showed it as champion, no hint."""
    from fds.cli import main

    reg = Registry(tmp_path)
    for _ in range(2):
        reg.publish({"x": 1}, spec={"name": "t"})
    reg.promote("v000002")
    if fault == "corrupt":
        reg.artifact("v000002").write_bytes(b"XX")
    elif fault == "missing":
        reg.artifact("v000002").unlink()
    reg.artifact("v000001").write_bytes(b"XX")  # (only the champion's file is read)
    if fault == "unsigned":  # (the key set here, as on the scorers: a review)
        monkeypatch.setenv("FDS_MODEL_KEY", "k")
    assert main(["models", "--registry", str(tmp_path), "list"]) == (1 if fault else 0)
    out = capsys.readouterr()
    assert "v000002    champion" in out.out
    why = {
        "corrupt": "sha256 mismatch",
        "missing": "missing from",
        "unsigned": "is not signed but FDS_MODEL_KEY is set",
        None: "",
    }[fault]
    if fault:
        assert "fds models list: failed: the champion fails its check: " in out.err
        assert why in out.err and "`fds models promote` a good one or" in out.err
    else:
        assert not out.err


def test_models_commands_read_a_bare_number_and_say_what_they_show(tmp_path, capsys):
    """A README walk: `promote 3` was no version; `show` without a champion showed the newest
    without a word; "nothing to roll back to" said `error:` (a usage error's) with exit 1."""
    from fds.cli import main
    from tests.models.fakes import FeatureModel

    reg = Registry(tmp_path)
    for _ in range(2):
        reg.publish(FeatureModel("amount"), spec={"name": "t"})
    base = ["models", "--registry", str(tmp_path)]
    assert main([*base, "show"]) == 0
    out = capsys.readouterr()
    assert '"version": "v000002"' in out.out and "no champion yet: the newest" in out.err
    assert main([*base, "rollback"]) == 1
    assert "fds models rollback: failed: " in capsys.readouterr().err
    assert main([*base, "promote", "1"]) == 0 and reg.champion() == "v000001"
    assert main([*base, "show", "1"]) == 0 and "no champion" not in capsys.readouterr().err


def test_the_registry_may_follow_the_command(tmp_path, capsys):
    """`fds models list --registry DIR` was a usage error: only `fds models --registry DIR
    list` worked."""
    from fds.cli import main

    Registry(tmp_path).publish({"x": 1}, spec={"name": "t"})
    assert main(["models", "list", "--registry", str(tmp_path)]) == 0
    assert "v000001" in capsys.readouterr().out
    assert main(["models", "list", "--registry", str(tmp_path / "nope")]) == 2


# -- import_version: a version published by another registry (the models-topic feed) ----------


def _published(tmp_path: Path, model: object, key: bytes | None = None) -> tuple[bytes, dict]:
    src = Registry(tmp_path / "src", key=key)
    e = src.publish(model, spec={"name": "t"}, parent="v000000", labels_learned=7)
    data, _ = src.load_bytes(e["version"])
    return data, e


def test_import_keeps_the_version_id_and_manifest_fields(tmp_path: Path) -> None:
    data, e = _published(tmp_path, {"w": 3})
    dst = Registry(tmp_path / "dst")
    got = dst.import_version(data, e)
    assert got is not None
    assert {k: got[k] for k in ENTRY_FIELDS} == {k: e[k] for k in ENTRY_FIELDS}
    assert got["status"] == "published" and dst.latest() == e["version"]
    assert (tmp_path / "dst" / f"{e['version']}.pkl").read_bytes() == data
    assert dst.load(e["version"]) == {"w": 3}
    # The next local publish does not reuse the imported id.
    assert dst.publish({"w": 4}, spec={"name": "t"})["version"] == "v000002"


def test_import_is_idempotent(tmp_path: Path) -> None:
    data, e = _published(tmp_path, {"w": 3})
    dst = Registry(tmp_path / "dst")
    assert dst.import_version(data, e) is not None
    stamp = (tmp_path / "dst" / "manifest.json").read_bytes()
    assert dst.import_version(data, e) is None
    assert (tmp_path / "dst" / "manifest.json").read_bytes() == stamp


def test_import_verifies_before_writing_and_never_unpickles(tmp_path: Path) -> None:
    data, e = _published(tmp_path, Booby("imp"), key=b"right")
    bad = bytearray(data)
    bad[-3] ^= 1
    cases = [
        (bytes(bad), e, b"right", "sha256"),
        (data, {**e, "size": len(data) + 1}, b"right", "size"),
        (data, e, b"wrong", "HMAC"),
        (data, {**e, "hmac": None}, b"right", "not signed"),
        (data, {**e, "version": "../evil"}, b"right", "invalid version id"),
        # kept, a spec that is no mapping made every later read of the manifest refuse it
        (data, {**e, "spec": "demo"}, b"right", "announced spec of v000001 is no mapping"),
    ]
    for i, (blob, fields, key, match) in enumerate(cases):
        dst = Registry(tmp_path / f"dst{i}", key=key)
        with pytest.raises(ArtifactError, match=match):
            dst.import_version(blob, fields)
        assert dst.versions() == [] and not list((tmp_path / f"dst{i}").glob("*.pkl"))
    assert UNPICKLED == []
    assert not (tmp_path / "evil.pkl").exists()


def test_import_refuses_a_different_artifact_under_a_known_id(tmp_path: Path) -> None:
    data, e = _published(tmp_path, {"w": 3})
    dst = Registry(tmp_path / "dst")
    dst.import_version(data, e)
    other = pickle.dumps({"w": 99})
    forged = {**e, "sha256": hashlib.sha256(other).hexdigest(), "size": len(other)}
    with pytest.raises(ArtifactError, match="different artifact"):
        dst.import_version(other, forged)
    assert dst.load(e["version"]) == {"w": 3}


def test_announced_fields_are_verified_with_the_key(tmp_path: Path) -> None:
    """The artifact's HMAC alone let a writer of the models topic re-announce an old signed
    artifact under a new id with invented counts (found by a review): the fields are signed."""
    data, e = _published(tmp_path, {"w": 3}, key=b"right")
    dst = Registry(tmp_path / "dst", key=b"right")
    forged = {**e, "version": "v000777", "labels_learned": 10**6,
              "evaluation": {"frauds_learned": 10**6}}  # fmt: skip
    with pytest.raises(ArtifactError, match="do not match their signature") as ei:
        dst.import_version(data, forged)
    assert not ei.value.local  # bad for every scorer, not this machine's problem
    assert dst.versions() == []
    # without the fields' signature (removed, or a trainer that signed the artifact only)
    with pytest.raises(ArtifactError, match="are not signed but FDS_MODEL_KEY is set"):
        dst.import_version(data, {**forged, "fields_hmac": None})
    assert dst.versions() == []
    # the genuine one is taken with its counts (another registry: the id is new there)
    other = Registry(tmp_path / "other", key=b"right")
    assert other.import_version(data, e)["labels_learned"] == 7


def test_a_keyed_registrys_manifest_entries_are_verified_as_announcements_are(
    tmp_path: Path,
) -> None:
    """A QA pass: only an import checked the entry's signed fields; a writer of the registry
    folder (no key needed) copied v000001 as v000002 with invented counts and legit rate in
    manifest.json, and the scorers served it (its score 10x, the maturity gate opened)."""
    from fds.models.scorer import ModelServer
    from fds.models.spec import load_spec

    spec = load_spec("default")
    reg = Registry(tmp_path, key=b"secret")
    reg.publish(FeatureModel("amount"), spec=spec.to_dict(), labels_learned=10)
    reg.promote("v000001")
    server = ModelServer(spec, registry=Registry(tmp_path, key=b"secret"), learn=False)
    server.without_labels()
    server.load_champion()
    m = json.loads((tmp_path / "manifest.json").read_text())
    forged = {**m["versions"]["v000001"], "version": "v000002", "seq": 2, "status": "published",
              "labels_learned": 10**6, "evaluation": {"frauds_learned": 10**6}}  # fmt: skip
    m["versions"]["v000002"], m["next"] = forged, 3
    (tmp_path / "v000002.pkl").write_bytes((tmp_path / "v000001.pkl").read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"v000002 .* do not match their signature"):
        reg.load("v000002")
    server.poll()
    assert server.version == "v000001"
    assert reg.load("v000001") is not None  # (the genuine entry still loads)


def test_a_registry_that_cannot_be_created_is_a_clear_error(tmp_path) -> None:
    """A QA pass: `fds train --registry FILE/reg` ended in NotADirectoryError, a traceback."""
    from fds.errors import ConfigError

    f = tmp_path / "f.jsonl"
    f.write_text("")
    with pytest.raises(ConfigError, match=r"cannot create the model registry .*: Not a directory"):
        Registry(f / "reg")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        Registry(f)


def test_the_lock_files_are_readable_by_their_owner_only(tmp_path):
    """A QA pass: the registry's and the state dir's lock files were 0644, where every other
    state and registry file is 0600."""
    import os

    from fds.streams.checkpoint import LOCK_NAME, Checkpointer

    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / ".lock").touch(mode=0o644)  # an earlier release's
    old = os.umask(0o022)
    try:
        reg = Registry(tmp_path / "reg")
        reg.publish({"w": 1}, spec={"name": "t"})
        ck = Checkpointer(tmp_path / "state")
        ck.lock()
        ck.unlock()
    finally:
        os.umask(old)
    for f in (tmp_path / "reg" / ".lock", tmp_path / "state" / LOCK_NAME):
        assert f.stat().st_mode & 0o077 == 0, (f, oct(f.stat().st_mode))


@pytest.mark.parametrize("what", ["folder", "link"])
def test_a_lock_that_is_no_file_is_named_with_what_to_do(tmp_path, what):
    """A QA pass: a `.lock` that is a folder or a dangling link was said raw ("[Errno 40] Too
    many levels of symbolic links"), and fds train advised to free space."""
    reg = Registry(tmp_path / "reg")
    lock = tmp_path / "reg" / ".lock"
    if what == "folder":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as e:
        reg.publish({"w": 1}, spec={"name": "t"})
    assert e.value.where == str(lock)
    assert f"the registry's lock is a {what}, not a file: remove it" in str(e.value)
    assert not (tmp_path / "nowhere").exists()  # (a planted link is not followed)


def test_an_artifact_retention_cannot_remove_does_not_fail_the_publish(tmp_path, caplog):
    """A review: removing an artifact retention dropped ran after the manifest was written;
    its error failed the publish though the version was in: the trainer published it again
    as the next one, this one never announced."""
    reg = Registry(tmp_path / "r", retain=1)
    reg.publish({"m": 1}, spec={"name": "s"})
    stuck = reg.artifact("v000001")
    stuck.unlink()
    stuck.mkdir()  # a real refusal of the unlink (EISDIR)
    (stuck / "x").write_text("x")
    entry = reg.publish({"m": 2}, spec={"name": "s"})
    assert entry["version"] == "v000002" and set(reg.manifest()["versions"]) == {"v000002"}
    assert f"{stuck} is no longer in the registry but could not be removed" in caplog.text


def test_following_another_registrys_lifecycle_happens_once_per_mark(tmp_path):
    """A scorer fed by the models topic follows the trainer's registry (a QA pass: a rollback
    there never reached it): the named champion served, the current one rejected when the
    trainer rejected it, the others marked; the same mark again changes nothing, so the
    scorer's own verdicts since stand."""
    reg = Registry(tmp_path / "r")
    for w in range(4):
        reg.publish({"w": w}, spec={"name": "m"})
    reg.promote("v000004")
    why = "the trainer's registry (models topic)"
    changes = reg.follow("v000002", ["v000003", "v000004"], "mark-1", why)
    assert changes == ["champion v000004 -> v000002", "rejected v000003"]
    m = reg.manifest()
    assert m["champion"] == "v000002" and m["followed"] == "mark-1"
    assert {v: e["status"] for v, e in m["versions"].items()} == {
        "v000001": "published", "v000002": "champion",
        "v000003": "rejected", "v000004": "rejected",
    }  # fmt: skip
    assert m["versions"]["v000004"]["rejected_because"] == why
    reg.promote("v000001")  # a verdict of this registry's own since
    assert reg.follow("v000002", ["v000003", "v000004"], "mark-1", why) == []
    assert reg.champion() == "v000001"
    # a champion not held here is left as it is; the rejections still land, and the mark is
    # not kept: read again (a restart), the lifecycle is followed again (a QA pass)
    assert reg.follow("v000009", ["v000002"], "mark-2", why) == ["rejected v000002"]
    assert reg.champion() == "v000001" and reg.manifest()["followed"] == "mark-1"


def test_a_scorers_promotion_of_a_version_rejected_meanwhile_is_refused(tmp_path):
    reg = Registry(tmp_path / "r")
    for w in range(2):
        reg.publish({"w": w}, spec={"name": "m"})
    reg.reject("v000002", "rejected in the trainer's registry")
    with pytest.raises(ConfigError, match="v000002 was rejected in the registry meanwhile"):
        reg.promote("v000002", reason="promoted: precision >= champion", unless_rejected=True)
    assert reg.champion() is None
    assert reg.promote("v000001", unless_rejected=True)["status"] == "champion"
    assert reg.promote("v000002")["status"] == "champion"  # (by hand: fds models checks it)


def test_a_trainers_registry_takes_the_first_of_the_scorers_verdicts(tmp_path):
    """A QA pass: scorers fed by the models topic judged each in its own registry and served
    different versions (one promoted v34, another rejected it). Their verdicts go to the
    trainer's registry, whose lifecycle they all follow: the first verdict stands, and a
    verdict that changes nothing says why (the trainer logs it)."""
    reg = Registry(tmp_path / "r")
    for w in range(4):
        reg.publish({"w": w}, spec={"name": "m"})
    moved = "it no longer fits: the champion is v000002"
    said = [  # (verdict, version, over, by) -> (changed, what)
        (("promote", "v000001", None, "a"), (True, "champion none -> v000001")),
        (("promote", "v000002", "v000001", "b"), (True, "champion v000001 -> v000002")),
        # promoted first: stands
        (("reject", "v000002", "v000001", "c"), (False, moved)),
        (("promote", "v000003", "v000001", "d"), (False, moved)),
        (("reject", "v000003", "v000002", "e"), (True, "rejected v000003")),
        (("promote", "v000003", "v000002", "f"), (False, "v000003 was rejected first")),
        (("rollback", "v000004", "v000002", "g"), (False, moved)),
        (("promote", "v000009", "v000002", "h"),  # (it said "removed by its retention": a
         (False, "v000009 is not in the registry (never published here: this registry's "
          "newest is v000004; another trainer's?)")),  # QA pass, of another trainer's version)
        (("rollback", "v000002", "v000001", "i"),
         (True, "champion v000002 -> v000001 (rolled back)")),
    ]  # fmt: skip
    assert [reg.judge(*verdict) for verdict, _ in said] == [want for _, want in said]
    m = reg.manifest()
    assert m["champion"] == "v000001"
    assert {v: e["status"] for v, e in m["versions"].items()} == {
        "v000001": "champion", "v000002": "rejected", "v000003": "rejected",
        "v000004": "published",
    }  # fmt: skip
    assert [h["why"] for h in m["history"]] == ["a", "b", "i"]
    with reg._locked() as m:  # one removed by retention is said so
        del m["versions"]["v000004"]
    assert reg.judge("promote", "v000004", "v000001", "j") == (
        False, "v000004 is not in the registry (removed by its retention)"
    )  # fmt: skip


def test_a_verdict_judged_after_a_promotion_by_hand_does_not_undo_it(tmp_path):
    """A verdict made before a promotion by hand (the trainer down, say) and judged after it
    judged against the champion of then: it changes nothing. Its scorer's clock is not
    compared with the trainer's (a review: one 2 s behind had its lost probation ignored)."""
    reg = Registry(tmp_path / "r")
    for w in range(3):
        reg.publish({"w": w}, spec={"name": "m"})
    reg.promote("v000001")
    reg.promote("v000003", reason="manual (fds models promote)")
    assert reg.judge("promote", "v000002", "v000001", "a") == (
        False, "it no longer fits: the champion is v000003"
    )  # fmt: skip
    assert reg.judge("rollback", "v000001", "v000003", "b")[1].startswith("it no longer fits")
    assert reg.champion() == "v000003"
    assert reg.judge("rollback", "v000003", "v000001", "c")[0]  # (whatever its clock said)


def test_a_verdict_is_judged_once_per_record_even_by_a_restarted_trainer(tmp_path):
    """QA: a restarted trainer read the verdicts again and re-applied a 4-minute-old promote
    over a promotion by hand. The registry keeps the models-topic offsets it judged, whatever
    the clocks say; a topic made again (its end below them) is judged from its start."""
    reg = Registry(tmp_path / "r")
    for w in range(3):
        reg.publish({"w": w}, spec={"name": "m"})
    reg.promote("v000001")
    assert reg.judge("promote", "v000002", "v000001", "a", record=("models[0]", 7))[0]
    reg.promote("v000001", reason="manual")  # within the same second as the verdict
    again = Registry(tmp_path / "r")  # the restarted trainer
    assert again.judge("promote", "v000002", "v000001", "a", record=("models[0]", 7)) == (
        False, "judged before (offset 7 of models[0])"
    )  # fmt: skip
    assert not again.judge("promote", "v000002", "v000001", "a", record=("models[0]", 3))[0]
    assert again.champion() == "v000001" and again.manifest()["judged"] == {"models[0]": 8}
    again.judged_before({"models[0]": 9, "models[1]": 0})  # nothing beyond the ends
    assert again.manifest()["judged"] == {"models[0]": 8}
    again.judged_before({"models[0]": 2})  # the topic made again
    assert again.manifest()["judged"] == {"models[0]": 0}
    assert again.judge("reject", "v000003", "v000001", "b", record=("models[0]", 1))[0]


def test_a_shadow_notice_keeps_its_challenger_through_retention(tmp_path):
    """QA: the trainer's retention (10 versions) removed the version scorers were still
    judging, and their verdict on it was dropped without a word. A scorer says when a contest
    begins: the trainer's registry keeps that version until its verdict."""
    reg = Registry(tmp_path / "r", retain=2)
    reg.publish({"w": 0}, spec={"name": "m"})
    reg.promote("v000001")
    reg.publish({"w": 1}, spec={"name": "m"})
    assert reg.judge("shadow", "v000002", "v000001", "a") == (
        True, "v000002 in a shadow contest (kept until its verdict)"
    )  # fmt: skip
    assert reg.judge("shadow", "v000002", "v000001", "b") == (False, "v000002 is shadow already")
    for w in range(2, 6):
        reg.publish({"w": w}, spec={"name": "m"})
    assert "v000002" in reg.manifest()["versions"]
    assert reg.judge("promote", "v000002", "v000001", "a")[0]
    # a contest of a version older than the champion set ends (the scorers drop it): its
    # version is no longer shown in one (QA: `fds models list` showed stale shadows for good)
    assert reg.judge("shadow", "v000005", "v000002", "a")[0]
    assert reg.judge("shadow", "v000006", "v000002", "b")[0]
    reg.promote("v000006", reason="manual")
    assert reg.entry("v000005")["status"] == "published"


def test_a_scorers_promotion_over_a_champion_changed_since_is_refused(tmp_path):
    """QA: a scorer's contest against v5 ended after the fleet had followed v38 from the
    trainer, and promoted its challenger over v38."""
    reg = Registry(tmp_path / "r")
    for w in range(3):
        reg.publish({"w": w}, spec={"name": "m"})
    reg.promote("v000003")  # followed meanwhile
    with pytest.raises(ConfigError, match="the champion is v000003 now, not v000001 as judged"):
        reg.promote("v000002", unless_rejected=True, over="v000001")
    assert reg.champion() == "v000003"
    assert reg.promote("v000002", unless_rejected=True, over="v000003")["status"] == "champion"


def test_a_version_retention_removed_is_said_removed_not_unknown(tmp_path: Path) -> None:
    """A QA pass: `fds models promote` of a version listed a second before said "unknown
    model version": the trainer's retention had removed it meanwhile."""
    from tests.models.fakes import FeatureModel

    reg = Registry(tmp_path, retain=2)
    for _ in range(4):
        reg.publish(FeatureModel("amount"), spec={"name": "t"})
    with pytest.raises(ConfigError, match="'v000001' is no longer in the registry: removed by"):
        reg.promote("v000001")
    with pytest.raises(ConfigError, match="unknown model version 'v000009'"):
        reg.entry("v000009")


def test_the_models_commands_take_v3_and_say_a_champion_promoted_again_is_already_one(
    tmp_path, capsys
):
    """A README walk: `promote v1` was "unknown model version 'v1'" (`1` and `v000001` were
    taken), and promoting the champion again said "champion is now v000001" as if it changed."""
    from fds.cli import main
    from tests.models.fakes import FeatureModel

    reg = Registry(tmp_path)
    reg.publish(FeatureModel("amount"), spec={"name": "t"})
    base = ["models", "--registry", str(tmp_path), "promote"]
    assert main([*base, "v1"]) == 0 and reg.champion() == "v000001"
    assert "champion is now v000001" in capsys.readouterr().out
    assert main([*base, "1"]) == 0
    assert capsys.readouterr().out == (
        "v000001 is already the champion (its artifact verifies): nothing changed\n"
    )
    # The champion is verified too (it skipped the check: a QA pass): an artifact that rotted
    # since is said, with what to do.
    path = reg.artifact("v000001")
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")
    assert main([*base, "v1"]) == 1
    err = capsys.readouterr().err
    assert "v000001 is the champion, but it fails its check" in err, err
    assert "`fds models promote` a good one or `fds models rollback`" in err


def test_promoting_the_champion_where_its_key_is_not_set_says_it_is_not_verified_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signed champion promoted again on a machine without FDS_MODEL_KEY: not checkable
    here, as `fds models list` says nothing of it; no false alarm with a rollback's advice
    (a review)."""
    from fds.cli import main
    from tests.models.fakes import FeatureModel

    monkeypatch.setenv("FDS_MODEL_KEY", "secret")
    Registry(tmp_path).publish(FeatureModel("amount"), spec={"name": "t"})
    base = ["models", "--registry", str(tmp_path), "promote", "v1"]
    assert main(base) == 0
    capsys.readouterr()
    monkeypatch.delenv("FDS_MODEL_KEY")
    assert main(base) == 0
    out, err = capsys.readouterr()
    assert "v000001 is already the champion: nothing changed (not verified here:" in out
    assert "FDS_MODEL_KEY" in out and "rollback" not in out + err


def test_promoting_a_version_of_another_spec_says_the_champions_scorers_will_not_serve_it(
    tmp_path, capsys
):
    """`promote` of a version made by spec `tree` over a champion of `default` said running
    scorers picked it up: those of `default` refused it and kept their model (a QA pass)."""
    from fds.cli import main
    from fds.models.spec import SPEC_DIR, load_spec
    from tests.models.fakes import FeatureModel

    reg = Registry(tmp_path)
    tree = load_spec(SPEC_DIR / "tree.yaml").to_dict()  # (a shipped spec as it is shipped)
    reg.publish(FeatureModel("amount"), spec={"name": "default", "pipeline": ["a"]})
    reg.publish(FeatureModel("amount"), spec=tree)
    reg.publish(FeatureModel("amount"), spec={"name": "default", "pipeline": ["a"]})
    reg.promote("v000001")
    base = ["models", "--registry", str(tmp_path), "promote"]
    assert main([*base, "v000002"]) == 0 and reg.champion() == "v000002"
    out = capsys.readouterr()
    assert out.out == "champion is now v000002\n"
    assert "v000002 was made by spec 'tree' with name 'tree', not 'default'" in out.err, out.err
    assert "(v000001, the champion before)" in out.err and "--model tree" in out.err
    assert main([*base, "v000001"]) == 0  # (back to its spec's: told of `tree` again)
    assert "was made by spec 'default'" in capsys.readouterr().err
    reg.publish(FeatureModel("amount"), spec={"name": "mine", "pipeline": ["c"]})  # v000004
    assert main([*base, "v000004"]) == 0  # (a spec of its owner's: --model mine finds none)
    assert "(fds run --model with the file of spec 'mine' that made it" in capsys.readouterr().err
    reg.promote("v000003")
    assert main([*base, "v000001"]) == 0  # one of the same spec: picked up, as before
    assert "running scorers pick it up on their next poll" in capsys.readouterr().out
    # a rollback to a version of another spec says it too (a review: it said nothing, and the
    # scorers kept serving the version rolled back); a shipped name whose pipeline is not the
    # shipped one's is named by its file (`--model default` told nothing: both were `default`)
    reg.publish(FeatureModel("amount"), spec={"name": "default", "pipeline": ["z"]})  # v000005
    reg.promote("v000005")
    assert main(["models", "--registry", str(tmp_path), "rollback"]) == 0
    out = capsys.readouterr()
    assert out.out == "rolled back: champion is now v000001\n"
    assert "v000001 was made by spec 'default' with pipeline ['a'], not 'default' with ['z']" in (
        out.err
    ), out.err
    assert "keep serving v000005" in out.err and "file of spec 'default' that made it" in out.err


@pytest.mark.parametrize("edit", ["deleted", "null"])
def test_a_next_edited_out_of_the_manifest_never_overwrites_a_version(tmp_path, edit):
    """A review: with `next` deleted from a hand-edited manifest the next publish reused
    v000001, over the champion's file, and every reader then refused the registry (`null`: a
    TypeError). A publish numbers past every version's seq whatever `next` says."""
    reg = Registry(tmp_path)
    reg.publish({"x": 1}, spec={"name": "t"})
    reg.publish({"x": 2}, spec={"name": "t"})
    reg.promote("v000001")
    champion = reg.artifact("v000001").read_bytes()
    m = json.loads((tmp_path / "manifest.json").read_text())
    if edit == "deleted":
        del m["next"]
    else:
        m["next"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    assert reg.publish({"x": 3}, spec={"name": "t"})["version"] == "v000003"
    assert reg.artifact("v000001").read_bytes() == champion
    assert [e["version"] for e in reg.versions()] == ["v000001", "v000002", "v000003"]


def test_a_writer_holding_the_lock_is_said_and_a_killed_write_s_files_swept(
    tmp_path, caplog, monkeypatch
):
    """A review: `fds models promote` behind a writer that hung holding the lock waited
    without a word; the temporary files of writes a kill cut short (whole artifacts) were
    never removed."""
    import fcntl
    import threading

    from fds.models import registry as registry_module

    reg = Registry(tmp_path)
    reg.publish({"x": 1}, spec={"name": "t"})
    stale = tmp_path / ".v000002.pkl.abcd1234"
    stale.write_bytes(b"x" * 1000)
    fresh = tmp_path / ".manifest.json.efgh5678"  # (a live writer's, as far as one can tell)
    fresh.write_bytes(b"{}")
    other = tmp_path / ".keep.me"
    other.write_bytes(b"")
    monkeypatch.setattr(registry_module, "LOCK_QUIET_S", 0.1)
    old = time.time() - registry_module.TEMP_AGE_S - 5
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    with open(tmp_path / ".lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        timer = threading.Timer(0.5, fcntl.flock, (held, fcntl.LOCK_UN))
        timer.start()
        with caplog.at_level("WARNING", logger="fds.models"):
            reg.promote("v000001")
        timer.join()
    assert "waiting for its lock, held by another writer" in caplog.text
    assert reg.champion() == "v000001"
    assert not stale.exists() and fresh.exists() and other.exists()


def test_a_keyed_registry_every_user_may_write_is_warned_of(tmp_path, caplog):
    """A review: with FDS_MODEL_KEY the artifacts are checked, not the manifest, and a folder
    every user may write was said nowhere: anyone could point the champion back at an older
    signed version or reject the good ones."""
    (tmp_path / "r").mkdir()
    os.chmod(tmp_path / "r", 0o777)
    with caplog.at_level("WARNING", logger="fds.models"):
        Registry(tmp_path / "r", key=b"k")
    assert "is writable by every user (mode 0777): FDS_MODEL_KEY checks its artifacts" in (
        caplog.text
    )
    caplog.clear()
    os.chmod(tmp_path / "r", 0o700)
    with caplog.at_level("WARNING", logger="fds.models"):
        Registry(tmp_path / "r", key=b"k")
    assert caplog.text == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another user")
def test_a_write_by_root_leaves_the_manifest_and_lock_their_owner_s(tmp_path):
    """A review: `sudo -E fds models promote` (with the key) made the manifest root's, 0600:
    the service user could no longer read its registry (its scorers never picked the
    promotion up) nor publish into it."""
    reg = Registry(tmp_path / "r", key=b"k")
    reg.publish({"x": 1}, spec={"name": "t"})
    for f in (tmp_path / "r").iterdir():
        os.chown(f, 1234, 1234)
    os.chown(tmp_path / "r", 1234, 1234)
    Registry(tmp_path / "r", key=b"k").promote("v000001")
    assert reg.champion() == "v000001"
    for name in ("manifest.json", ".lock"):
        st = (tmp_path / "r" / name).stat()
        assert (st.st_uid, st.st_gid) == (1234, 1234), name
    # without a key a file of another user is refused, root's own in a folder it does not own
    # too (a container's root on a mounted volume): its writes stay its own, and readable
    (tmp_path / "vol").mkdir()
    os.chown(tmp_path / "vol", 1234, 1234)
    keyless = Registry(tmp_path / "vol")
    keyless.publish({"x": 2}, spec={"name": "t"})
    keyless.promote("v000001")
    assert keyless.load("v000001") == {"x": 2} and keyless.champion() == "v000001"
    assert (tmp_path / "vol" / "manifest.json").stat().st_uid == 0
