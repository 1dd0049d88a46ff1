"""ModelFeed: announcements on the models topic verified and imported into a scorer's registry,
idempotently; bad ones rejected and counted, never unpickled, never stopping the feed.

The consumer is an in-memory fake of the kafka-python interface the feed uses; the broker
version of these flows is tests/integration/test_model_feed.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from fds.errors import ConfigError
from fds.metrics import Metrics
from fds.models import build_model_stage
from fds.models.registry import ENTRY_FIELDS, Registry
from fds.models.trainer import Publication
from fds.streams import model_feed
from fds.streams.kafka import KafkaSettings, build_run_engine, register_run
from fds.streams.model_feed import JUDGE_WAIT_S, ModelFeed, _older
from fds.streams.train import announcement, lifecycle
from tests.models.fakes import FeatureModel

TOPIC = "models"
# A booby-trapped pickle and the list it marks when unpickled (autouse fixture `_clear` resets it).
from tests.models.test_registry import UNPICKLED, Booby, _clear  # noqa: E402, F401


@dataclass
class Record:
    offset: int
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    """The kafka-python consumer calls the feed makes, over an in-memory partition log."""

    def __init__(self, log: list[Record], *, exists: Callable[[], bool] = lambda: True) -> None:
        self.log = log
        self.exists = exists
        self.pos = 0
        self.closed = False
        self.tp = TopicPartition(TOPIC, 0)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0} if topic == TOPIC and self.exists() else None

    def assign(self, tps: list[TopicPartition]) -> None:
        assert tps == [self.tp]

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.pos = 0

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {self.tp: len(self.log)}

    def position(self, tp: TopicPartition) -> int:
        return self.pos

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        got = self.log[self.pos : self.pos + 2]  # two per poll: catch-up spans several polls
        if not got:
            time.sleep(timeout_ms / 1000)  # a real poll blocks this long when idle
            return {}
        self.pos += len(got)
        return {self.tp: got}

    def close(self) -> None:
        self.closed = True


def _publish(
    reg: Registry, model: Any, name: str = "m", decisions_topic: str | None = None
) -> dict[str, Any]:
    """Publish ``model`` in the trainer's registry; return its announcement (as fds train)."""
    e = reg.publish(model, spec={"name": name}, labels_learned=5)
    data, _ = reg.load_bytes(e["version"])
    return announcement(Publication(e["version"], data, e), name, reg, decisions_topic)


def _feed(tmp_path: Path, *, key: bytes | None = None, **kw: Any) -> ModelFeed:
    return ModelFeed(KafkaSettings(), Registry(tmp_path / "scorer", key=key), name="m", **kw)


def _value(a: dict[str, Any]) -> bytes:
    return orjson.dumps(a)


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling interval for a condition set by the feed thread


# -- one announcement --------------------------------------------------------------------------


def test_import_keeps_version_and_fields_and_is_idempotent(tmp_path: Path) -> None:
    trainer = Registry(tmp_path / "trainer", key=b"k")
    a = _publish(trainer, {"w": 1})
    feed = _feed(tmp_path, key=b"k")
    assert feed.handle(_value(a)) == "imported"
    mine, theirs = feed.registry.entry(a["version"]), trainer.entry(a["version"])
    assert {k: mine[k] for k in ENTRY_FIELDS} == {k: theirs[k] for k in ENTRY_FIELDS}
    assert feed.registry.load(a["version"]) == {"w": 1}
    stamp = feed.registry.stamp()
    assert feed.handle(_value(a)) == "present"
    assert feed.registry.stamp() == stamp  # nothing rewritten
    assert (feed.stats.imported, feed.stats.present) == (1, 1)


def test_pointer_only_announcement_read_from_a_reachable_path(tmp_path: Path) -> None:
    a = _publish(Registry(tmp_path / "trainer"), {"w": 2})
    a["artifact_b64"] = None  # as for an artifact above the inline limit
    feed = _feed(tmp_path)
    assert feed.handle(_value(a)) == "imported"
    assert feed.registry.load(a["version"]) == {"w": 2}


def test_pointer_only_announcement_with_unreachable_path_is_counted(tmp_path: Path) -> None:
    a = _publish(Registry(tmp_path / "trainer"), {"w": 2})
    a["artifact_b64"] = None
    a["path"] = str(tmp_path / "elsewhere" / "v000001.pkl")
    m = Metrics()
    feed = _feed(tmp_path, metrics=m)
    assert feed.handle(_value(a)) == "unreachable"
    assert feed.registry.versions() == []
    assert m.registry.get_sample_value("fds_model_swaps_total", {"result": "unreachable"}) == 1


def test_a_pointer_is_read_only_when_signed_and_a_regular_file_of_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A security review: the path of a pointer announcement was read before anything was
    verified: /dev/zero grew the scorer to 2 GB, a FIFO blocked the feed thread for good, and
    any local file could be read (its outcome told whether it existed)."""
    import os

    a = _publish(Registry(tmp_path / "trainer", key=b"k"), {"w": 2})
    a["artifact_b64"] = None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, size in (
        ("/dev/zero", a["size"]),
        (str(fifo), a["size"]),
        (a["path"], 7),
        (str(tmp_path), 7),
    ):  # (a folder: rejected, its descriptor closed, a review)
        feed = _feed(tmp_path, key=b"k")
        assert feed.handle(_value({**a, "path": path, "size": size})) == "rejected"
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert feed.handle(_value({**a, "path": str(tmp_path)})) == "rejected"
    assert len(os.listdir("/proc/self/fd")) == fds_before
    # signed fields first: an unsigned pointer is refused before its path is looked at
    # (a path that does not exist is "unreachable" once looked at)
    feed = _feed(tmp_path, key=b"k")
    gone = str(tmp_path / "gone.pkl")
    assert feed.handle(_value({**a, "fields_hmac": None, "path": gone})) == "rejected"
    assert feed.handle(_value({**a, "path": gone})) == "unreachable"
    assert feed.handle(_value(a)) == "imported"  # the real one
    assert feed.registry.load(a["version"]) == {"w": 2}
    # without a key nothing is signed: a file of another size than announced is refused
    plain = _publish(Registry(tmp_path / "plain"), {"w": 3})
    plain["artifact_b64"] = None
    feed = _feed(tmp_path / "unsigned")
    assert feed.handle(_value({**plain, "size": 7})) == "rejected"
    assert feed.handle(_value(plain)) == "imported"


def test_a_pointer_is_checked_on_the_file_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A security review: the path was stat-ed, then opened by name: a FIFO swapped in between
    the two (here: a stat that still saw the regular file) blocked the feed thread for good."""
    import os
    import threading

    import fds.streams.model_feed as mf

    a = _publish(Registry(tmp_path / "trainer", key=b"k"), {"w": 2})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real, stat = os.stat(a["path"]), os.stat
    monkeypatch.setattr(mf.os, "stat", lambda p, **k: real if p == str(fifo) else stat(p, **k))
    feed = _feed(tmp_path, key=b"k")
    said: list[str] = []
    pointer = _value({**a, "artifact_b64": None, "path": str(fifo)})
    worker = threading.Thread(target=lambda: said.append(feed.handle(pointer)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # (let the blocked open go, so the thread ends)
        with open(fifo, "wb"):
            pass
    assert said == ["rejected"]


def _tampered(a: dict[str, Any]) -> dict[str, Any]:
    blob = bytearray(base64.b64decode(a["artifact_b64"]))
    blob[-3] ^= 1
    return {**a, "artifact_b64": base64.b64encode(bytes(blob)).decode()}


def _forged(a: dict[str, Any]) -> dict[str, Any]:
    """Another artifact with a correct sha256 (anyone can compute one) but no valid HMAC."""
    evil = pickle.dumps(Booby("evil"))
    return {
        **a,
        "artifact_b64": base64.b64encode(evil).decode(),
        "sha256": hashlib.sha256(evil).hexdigest(),
        "size": len(evil),
    }


@pytest.mark.parametrize(
    "bad",
    [
        lambda a: b"{not json",
        lambda a: b"[1, 2]",
        lambda a: b"",
        lambda a: _value(_tampered(a)),
        lambda a: _value(_forged(a)),
        lambda a: _value({**a, "hmac": None}),
        lambda a: _value({**a, "artifact_b64": "%%%"}),
        lambda a: _value({**a, "artifact_b64": None, "path": None}),
        lambda a: _value({**a, "version": "../../evil"}),
    ],
    ids=[
        "unparseable", "not-an-object", "empty", "wrong-sha256", "wrong-hmac", "unsigned",
        "bad-base64", "no-artifact", "bad-version-id",
    ],
)  # fmt: skip
def test_bad_announcements_are_rejected_counted_and_not_unpickled(
    tmp_path: Path, bad: Callable[[dict[str, Any]], bytes | None]
) -> None:
    a = _publish(Registry(tmp_path / "trainer", key=b"k"), Booby("ok"))
    m = Metrics()
    feed = _feed(tmp_path, key=b"k", metrics=m)
    assert feed.handle(bad(a)) == "rejected"
    assert feed.registry.versions() == [] and not list(feed.registry.path.glob("*.pkl"))
    assert UNPICKLED == []
    assert m.registry.get_sample_value("fds_model_swaps_total", {"result": "bad_announcement"}) == 1
    # The feed goes on: the genuine announcement still imports.
    assert feed.handle(_value(a)) == "imported"


def test_a_tombstone_is_no_bad_announcement(tmp_path: Path) -> None:
    """A null value (the model's key deleted from the compacted topic) is skipped, not counted
    as a rejected announcement with a JSONDecodeError (a QA pass)."""
    m = Metrics()
    feed = _feed(tmp_path, metrics=m)
    assert feed.handle(None) == "tombstone" and feed.stats.rejected == 0
    assert m.registry.get_sample_value("fds_model_swaps_total", {"result": "bad_announcement"}) in (
        None, 0.0,
    )  # fmt: skip


def test_a_different_artifact_under_a_known_version_is_rejected(tmp_path: Path) -> None:
    a = _publish(Registry(tmp_path / "trainer"), {"w": 1})
    feed = _feed(tmp_path)
    feed.handle(_value(a))
    other = pickle.dumps({"w": 666})
    forged = {
        **a, "artifact_b64": base64.b64encode(other).decode(),
        "sha256": hashlib.sha256(other).hexdigest(), "size": len(other),
    }  # fmt: skip
    assert feed.handle(_value(forged)) == "rejected"
    assert feed.registry.load(a["version"]) == {"w": 1}


def test_a_signed_version_renamed_to_another_model_is_refused(tmp_path: Path) -> None:
    """Found by a QA pass: the announcement's name is not signed, its spec is; a signed
    version of model "other" re-announced as "m" was imported and served as m's."""
    a = _publish(Registry(tmp_path / "trainer", key=b"k"), Booby("ok"), name="other")
    feed = _feed(tmp_path, key=b"k")
    assert feed.handle(_value({**a, "name": "m"})) == "rejected"
    assert feed.registry.versions() == [] and UNPICKLED == []


def test_a_signed_version_whose_spec_names_no_model_is_refused(tmp_path: Path) -> None:
    """A review: a signed spec without a name could be announced under any model's name."""
    trainer = Registry(tmp_path / "trainer", key=b"k")
    e = trainer.publish(Booby("ok"), spec={}, labels_learned=5)
    data, _ = trainer.load_bytes(e["version"])
    a = announcement(Publication(e["version"], data, e), "m", trainer)
    feed = _feed(tmp_path, key=b"k")
    assert feed.handle(_value(a)) == "rejected"
    assert feed.registry.versions() == [] and UNPICKLED == []


def test_other_models_are_skipped(tmp_path: Path) -> None:
    a = _publish(Registry(tmp_path / "trainer"), {"w": 1}, name="other")
    feed = _feed(tmp_path)
    assert feed.handle(_value(a)) == "other_model"
    assert feed.registry.versions() == []


def test_versions_learned_from_another_decisions_topic_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two deployments on one models topic (a QA pass, left until now): the staging trainer's
    versions of the same model were imported and served by production's scorers (or refused as
    different artifacts under a known id). Skipped, said once per topic; an announcement that
    names no decisions topic (an older trainer) is taken as before."""
    staging = Registry(tmp_path / "staging")
    prod = Registry(tmp_path / "prod")
    feed = _feed(tmp_path, decisions_topic="decisions")
    ours = _publish(prod, {"w": 1}, decisions_topic="decisions")
    theirs = [_publish(staging, {"w": n}, decisions_topic="staging.decisions")
              for n in (2, 3)]  # fmt: skip
    with caplog.at_level("WARNING"):
        assert [feed.handle(_value(a)) for a in theirs] == ["other_deployment"] * 2
    assert caplog.text.count('learned from decisions topic="staging.decisions"') == 1
    assert feed.registry.versions() == []
    assert feed.handle(_value(ours)) == "imported"
    assert feed.registry.load(ours["version"]) == {"w": 1}
    older = {k: v for k, v in _publish(prod, {"w": 4}).items() if k != "decisions_topic"}
    assert feed.handle(_value(older)) == "imported"
    assert _feed(tmp_path / "any").handle(_value(theirs[0])) == "imported"  # (none given)
    assert feed.stats.other_deployment == 2


def test_a_version_relabelled_for_another_deployment_is_refused_under_a_shared_key(
    tmp_path: Path,
) -> None:
    """A security review: the decisions topic of an announcement was not signed, so a writer of
    a models topic two deployments share took staging's signed version, named production's
    decisions topic in it, and production's scorers (one key for both) imported and served it."""
    staging = Registry(tmp_path / "staging", key=b"k")
    theirs = _publish(staging, {"w": 2}, decisions_topic="staging.decisions")
    feed = _feed(tmp_path, key=b"k", decisions_topic="decisions")
    relabelled = {**theirs, "decisions_topic": "decisions"}
    stripped = {**relabelled, "deployment_hmac": None}  # (as an older trainer's: unsigned)
    assert feed.handle(_value(relabelled)) == "rejected"
    assert feed.handle(_value(stripped)) == "rejected"
    assert feed.handle(_value({**theirs, "decisions_topic": None})) == "rejected"
    assert feed.registry.versions() == []
    prod = Registry(tmp_path / "prod", key=b"k")
    ours = _publish(prod, {"w": 1}, decisions_topic="decisions")
    assert feed.handle(_value(ours)) == "imported"
    # held already: an older trainer's announcement of it (no such signature) imports nothing
    # and is no warning after the upgrade (a review)
    assert feed.handle(_value({**ours, "deployment_hmac": None})) == "present"


def test_a_scorer_follows_the_lifecycle_of_the_trainers_registry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A QA pass (a fleet fed by the models topic): `fds models rollback` on the trainer's
    registry never reached the scorers, and a scorer started with an empty registry served the
    rolled-back version. The trainer announces its registry's lifecycle (signed); a scorer
    takes its champion (imported from it when not held) and its rejections, once."""
    trainer = Registry(tmp_path / "trainer", key=b"k")
    anns = [_publish(trainer, {"w": n}, decisions_topic="decisions") for n in (1, 2, 3)]
    trainer.promote("v000002")
    trainer.promote("v000003")
    trainer.rollback()  # v000003 rejected, v000002 the champion again
    life = lifecycle(trainer, "m", "decisions")
    assert life is not None and (life["champion"], life["rejected"]) == ("v000002", ["v000003"])
    feed = _feed(tmp_path, key=b"k", decisions_topic="decisions")
    for a in (anns[0], anns[2]):
        assert feed.handle(_value(a)) == "imported"
    feed.registry.promote("v000003")  # served here (its own verdict)
    with caplog.at_level("INFO"):
        assert feed.handle(_value(life)) == "lifecycle"
    assert "followed the trainer's registry: champion v000003 -> v000002" in caplog.text
    m = feed.registry.manifest()
    assert m["champion"] == "v000002" and m["versions"]["v000003"]["status"] == "rejected"
    assert feed.registry.load("v000002") == {"w": 2}  # imported from the lifecycle
    feed.registry.promote("v000001")  # a verdict of its own since: the same lifecycle again
    assert feed.handle(_value(life)) == "lifecycle"  # (a restarted trainer) leaves it
    assert feed.registry.champion() == "v000001"
    # refused: unsigned, or its champion or rejections altered (signed fields)
    for bad in ({**life, "lifecycle_hmac": None}, {**life, "rejected": ["v000001"]},
                {**life, "champion": "v000001"}):  # fmt: skip
        assert feed.handle(_value(bad)) == "rejected"
    assert feed.registry.champion() == "v000001"
    # a scorer started with an empty registry serves the champion, never the rejected one
    fresh = _feed(tmp_path / "fresh", key=b"k", decisions_topic="decisions")
    assert fresh.handle(_value(anns[2])) == "imported"
    assert fresh.handle(_value(life)) == "lifecycle"
    m = fresh.registry.manifest()
    assert m["champion"] == "v000002" and m["versions"]["v000003"]["status"] == "rejected"


def test_a_champion_older_than_the_versions_kept_is_followed(tmp_path: Path) -> None:
    """QA of a fleet: the trainer's champion, older than the 10 newest versions a scorer kept,
    was imported from the lifecycle and removed by the same import's retention; the scorer
    then skipped the change without a word and kept the lifecycle's mark, so it never
    followed, not even after a restart."""
    trainer = Registry(tmp_path / "trainer", key=b"k", retain=20)
    anns = [_publish(trainer, {"w": n}, decisions_topic="decisions") for n in range(12)]
    scorer = _feed(tmp_path, key=b"k", decisions_topic="decisions")
    for a in anns:
        scorer.handle(_value(a))
    assert "v000001" not in scorer.registry.manifest()["versions"]  # (10 kept)
    trainer.promote("v000001", reason="manual")
    life = lifecycle(trainer, "m", "decisions") or {}
    assert scorer.handle(_value(life)) == "lifecycle"
    assert scorer.registry.champion() == "v000001"
    assert scorer.registry.load("v000001") == {"w": 0}


def test_a_trainer_says_another_one_announcing_its_model_on_the_topic(
    tmp_path: Path, caplog
) -> None:
    """A QA pass: a second fds train (its own group and registry) publishing the same model
    to the same models topic went unnoticed: the scorers imported its versions, no trainer
    warned. A trainer's judge says a lifecycle of another registry read while it runs (not
    one of the topic's history: a registry this one replaced)."""
    trainer, rogue = Registry(tmp_path / "trainer"), Registry(tmp_path / "rogue")
    for reg in (trainer, rogue):
        _publish(reg, {"w": 1}, decisions_topic="decisions")
        reg.promote("v000001")
    old = lifecycle(rogue, "m", "decisions", rogue.issue()) or {}
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)
    with caplog.at_level("WARNING", logger="fds.streams.model_feed"):
        judge._check(_value(old), {})  # read in the catch-up: history, no word
        assert "another trainer" not in caplog.text
        judge.caught_up.set()
        for _ in range(2):
            judge.handle(_value(lifecycle(rogue, "m", "decisions", rogue.issue()) or {}))
        judge.handle(_value(lifecycle(trainer, "m", "decisions", trainer.issue()) or {}))
    said = [r.getMessage() for r in caplog.records if "another trainer" in r.getMessage()]
    assert len(said) == 1, said  # (once per registry)
    assert f"its registry {rogue.manifest()['id']}, not this one, " in said[0]


def test_an_old_signed_lifecycle_replayed_is_refused(tmp_path: Path) -> None:
    """A review: a lifecycle was followed whenever its mark differed from the last one
    followed, so whoever could write to the models topic could replay an old signed one and
    put the fleet back on an old champion. Each carries its registry's id and number (signed):
    an older one of the same registry is refused; a registry made anew has another id."""
    trainer = Registry(tmp_path / "trainer", key=b"k")
    anns = [_publish(trainer, {"w": n}, decisions_topic="decisions") for n in (1, 2)]
    scorer = _feed(tmp_path, key=b"k", decisions_topic="decisions")
    for a in anns:
        scorer.handle(_value(a))
    trainer.promote("v000001")
    old = lifecycle(trainer, "m", "decisions", trainer.issue()) or {}
    assert scorer.handle(_value(old)) == "lifecycle"
    trainer.promote("v000002")
    new = lifecycle(trainer, "m", "decisions", trainer.issue()) or {}
    assert new["issued"] == [old["issued"][0], 2]
    assert scorer.handle(_value(new)) == "lifecycle" and scorer.registry.champion() == "v000002"
    assert scorer.handle(_value(old)) == "rejected"  # replayed
    assert scorer.handle(_value({**new, "issued": [new["issued"][0], 9]})) == "rejected"  # (signed)
    assert scorer.registry.champion() == "v000002"
    assert scorer.handle(_value(new)) == "lifecycle"  # the same one again: no replay
    # a trainer registry made anew (another id) numbers from 1 again: not older
    assert not _older(["another id", 1], new["issued"]) and _older(old["issued"], new["issued"])
    # one of a release before the numbers, replayed (its signature signs no number): refused
    unnumbered = {k: v for k, v in old.items() if k != "issued"}
    assert _older(None, new["issued"]) and not _older(None, None)
    assert scorer.handle(_value(unnumbered)) == "rejected"


def test_an_imported_version_is_served_by_the_watching_scorer(tmp_path: Path) -> None:
    a = _publish(Registry(tmp_path / "trainer"), FeatureModel("amount"), name="default")
    scorer = build_model_stage("default", registry=tmp_path / "scorer", watch=True)
    scorer.stop_watch()  # polled by hand below: one step at a time
    feed = ModelFeed(KafkaSettings(), scorer.registry, name="default")  # the scorer's spec
    assert scorer.poll() is None
    feed.handle(_value(a))
    assert scorer.poll() == a["version"]
    _, version = scorer.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})
    assert version == a["version"]


def test_a_scorers_verdict_on_a_version_the_trainer_rejected_meanwhile_is_undone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The QA pass saw a scorer's contest promote the version just rolled back on the
    trainer's registry (followed here: rejected). The promotion is refused in the registry
    and the scorer serves the registry's champion again at its next poll."""
    trainer = Registry(tmp_path / "trainer")
    anns = [_publish(trainer, FeatureModel("amount"), name="default") for _ in range(2)]
    scorer = build_model_stage("default", registry=tmp_path / "scorer", watch=True)
    scorer.stop_watch()  # polled by hand below
    feed = ModelFeed(KafkaSettings(), scorer.registry, name="default")
    for a in anns:
        feed.handle(_value(a))
    scorer.registry.promote("v000001")
    assert scorer.poll() == "v000001"
    scorer.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})  # installed
    scorer.registry.reject("v000002", "the trainer's registry (models topic)")
    with caplog.at_level("WARNING"):  # the contest's verdict, reached after the rejection
        scorer._set_champion("v000002", scorer.registry.load("v000002"), "promoted: test")
        scorer._writes.join()
    assert 'registry update refused change="promote v000002": v000002 was rejected' in caplog.text
    assert scorer.registry.champion() == "v000001"
    assert scorer.poll() == "v000001"  # served again
    _, version = scorer.score({"tx_id": "t2", "ts": 1.0, "amount": 5.0}, {})
    assert version == "v000001"


def test_a_scorers_promotion_refused_over_a_champion_changed_since_is_undone_at_once(
    tmp_path: Path,
) -> None:
    """A QA pass of a fleet: a scorer's contest promoted its challenger after the fleet's
    champion had changed (refused in the registry), and the scorer served its own pick until
    the watcher's next poll (1.4 s). The refusal wakes the watcher: with a poll a minute away,
    the registry's champion is served well before it."""
    trainer = Registry(tmp_path / "trainer")
    anns = [_publish(trainer, FeatureModel("amount"), name="default") for _ in range(3)]
    feed = ModelFeed(KafkaSettings(), Registry(tmp_path / "scorer"), name="default")
    for a in anns:
        feed.handle(_value(a))
    feed.registry.promote("v000001")
    scorer = build_model_stage("default", registry=tmp_path / "scorer", watch=True,
                               poll_seconds=60.0)  # fmt: skip
    try:
        assert scorer.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})[1] == "v000001"
        scorer.registry.promote("v000003")  # the fleet's champion, followed meanwhile
        # the contest's verdict (v000002 over v000001), reached after that
        scorer._set_champion("v000002", scorer.registry.load("v000002"), "promoted: test")
        assert scorer.registry.champion() == "v000003" or scorer._writing()
        wait_until(
            lambda: scorer.score({"tx_id": "t2", "ts": 1.0, "amount": 5.0}, {})[1] == "v000003",
            "the registry's champion served",
        )
        assert scorer.registry.champion() == "v000003"
    finally:
        scorer.stop_watch()


def _fleet_of_one(tmp_path: Path, producer: Any) -> tuple[Registry, ModelFeed]:
    """A trainer's registry (v000001 its champion, v000002 and v000003) and scorer "fds/a"
    fed by it, following its lifecycle."""
    trainer = Registry(tmp_path / "trainer", key=b"k")
    anns = [_publish(trainer, {"w": n}, decisions_topic="decisions") for n in (1, 2, 3)]
    trainer.promote("v000001")
    scorer = _feed(tmp_path / "a", key=b"k", decisions_topic="decisions", by="fds/a",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    for a in anns:
        scorer.handle(_value(a))
    scorer.handle(_value(lifecycle(trainer, "m", "decisions") or {}))
    return trainer, scorer


def test_a_verdict_queued_or_sent_before_a_restart_holds_the_lifecycle_back_too(
    tmp_path: Path,
) -> None:
    """A review: a verdict queued but not sent yet when a lifecycle came (another scorer's,
    judged) did not hold it back: the scorer swapped back, then forward once its own was
    judged, and each swap, taken as one by hand, ended the probation of the version it had
    promoted. The same for a verdict sent before a restart, read again in the catch-up."""
    from tests.streams.test_train_service import Producer

    producer = Producer(limit=1 << 20)
    trainer, scorer = _fleet_of_one(tmp_path, producer)
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)
    other = _feed(tmp_path / "b", key=b"k", decisions_topic="decisions", by="fds/b",
                  producer_factory=lambda **cfg: producer)  # fmt: skip
    other.on_event("shadow", {"candidate": "v000003", "incumbent": "v000001"})
    other._send_verdicts()
    assert judge.handle(_value(producer.values[0]), {"partition": "models[0]", "offset": "0"})
    scorer.registry.promote("v000002")
    scorer.on_event("promote", {**CONTEST, "why": "promoted: precision >= champion"})  # queued
    assert scorer.handle(_value(lifecycle(trainer, "m", "decisions") or {})) == "lifecycle"
    assert scorer.registry.champion() == "v000002" and len(producer.values) == 2  # sent first
    # restarted before its verdict was judged: read again in the catch-up, it holds back too
    log = [Record(i, k, _value(v)) for i, (k, v) in enumerate(
        zip(producer.keys, producer.values, strict=True))]  # fmt: skip
    log.append(Record(2, b"m/decisions/lifecycle", _value(lifecycle(trainer, "m", "decisions"))))
    restarted = _feed(tmp_path / "a", key=b"k", decisions_topic="decisions", by="fds/a",
                      topic=TOPIC, consumer_factory=lambda **cfg: FakeConsumer(log))  # fmt: skip
    restarted.start()
    try:
        assert restarted.caught_up.wait(10)
    finally:
        restarted.close()
    assert restarted.registry.champion() == "v000002"


def test_a_shadow_notice_sent_after_a_verdict_does_not_hold_the_lifecycle_back(
    tmp_path: Path,
) -> None:
    """QA of a fleet: a promote and the next contest's shadow notice went together; the
    trainer announced its lifecycle between judging the two, and none for the notice alone
    (it changes no champion), so the scorer waited 60 s, then said the trainer judged none of
    its verdicts. A notice is not waited for."""
    from tests.streams.test_train_service import Producer

    producer = Producer(limit=1 << 20)
    trainer, scorer = _fleet_of_one(tmp_path, producer)
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)
    scorer.registry.promote("v000002")
    scorer.on_event("promote", {**CONTEST, "why": "promoted: precision >= champion"})
    scorer.on_event("shadow", {"candidate": "v000003", "incumbent": "v000002"})
    scorer._send_verdicts()
    assert judge.handle(_value(producer.values[0]), {"partition": "models[0]", "offset": "0"})
    trainer.promote("v000001", reason="manual")  # (so that following it shows)
    assert scorer.handle(_value(lifecycle(trainer, "m", "decisions") or {})) == "lifecycle"
    assert scorer.registry.champion() == "v000001" and scorer._deferred is None


def test_a_verdict_not_sent_at_stop_is_said_and_the_restart_follows_the_trainer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A review: a verdict queued when fds run stopped was never sent, and the restarted
    scorer, its registry having followed the trainer's lifecycle already, served its own
    champion for good. It is sent at the stop, or said; a restarted scorer follows the
    trainer's lifecycle whatever it followed before."""
    from tests.streams.test_train_service import Producer

    producer = Producer(limit=1 << 20)
    trainer, scorer = _fleet_of_one(tmp_path, producer)
    scorer.registry.promote("v000002")
    scorer.on_event("promote", {**CONTEST, "why": "promoted: precision >= champion"})
    producer.down = True
    with caplog.at_level("WARNING"):
        scorer.close()
    assert "1 contest verdict(s) not sent to the trainer at stop" in caplog.text
    restarted = _feed(tmp_path / "a", key=b"k", decisions_topic="decisions", by="fds/a")
    assert restarted.handle(_value(lifecycle(trainer, "m", "decisions") or {})) == "lifecycle"
    assert restarted.registry.champion() == trainer.champion() == "v000001"
    producer.down = False
    scorer = _feed(tmp_path / "c", decisions_topic="decisions", by="fds/c",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    scorer.on_event("promote", CONTEST)
    scorer.close()  # (no thread: sent at the stop)
    assert producer.values[-1]["by"] == "fds/c"


def test_a_contest_against_a_champion_replaced_since_does_not_override_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA of a fleet: a scorer's contest against v5 ended after its registry had followed v38
    from the trainer (not served yet), and its promotion overrode v38 there."""
    reg = Registry(tmp_path / "scorer")
    for _ in range(3):
        reg.publish(FeatureModel("amount"), spec={"name": "default"})
    reg.promote("v000001")
    scorer = build_model_stage("default", registry=reg, watch=True)
    scorer.stop_watch()  # polled by hand below
    assert scorer.version == "v000001"
    reg.promote("v000003", reason="the trainer's registry (models topic)")  # followed
    with caplog.at_level("WARNING"):  # the contest's verdict, against v000001
        scorer._set_champion("v000002", reg.load("v000002"), "promoted: test")
        scorer._writes.join()
    assert "the champion is v000003 now, not v000001 as judged against" in caplog.text
    assert reg.champion() == "v000003"
    assert scorer.poll() == "v000003"
    _, version = scorer.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})
    assert version == "v000003"


@pytest.mark.parametrize(("change", "served"), [("rollback", "v000001"), ("import", "v000002")])
def test_a_version_prepared_before_any_event_is_served_as_the_registry_says_now(
    tmp_path: Path, change: str, served: str
) -> None:
    """A version promoted, prepared by the watcher, then rolled back while no event came was
    still installed by the next events (until the next poll): here, after a rollback on the
    trainer's registry followed through the models topic (a fleet's integration test). But a
    change that leaves the manifest's champion and the version's status alone keeps it: a
    fleet's imports changed the manifest every 1-3 s, each change dropped the version
    prepared, and a swap waited 11 s (a QA pass); the watcher checks it again."""
    reg = Registry(tmp_path / "scorer")
    for _ in range(2):
        reg.publish(FeatureModel("amount"), spec={"name": "default"})
    reg.promote("v000001")
    scorer = build_model_stage("default", registry=reg, watch=True, poll_seconds=0.02)
    try:
        assert scorer.version == "v000001"
        reg.promote("v000002")
        wait_until(lambda: (scorer._pending or (0, ""))[1] == "v000002", "v000002 prepared")
        scorer.stop_watch()  # (polled by hand below, and no event meanwhile)
        if change == "rollback":
            reg.rollback()
        else:
            reg.publish(FeatureModel("amount"), spec={"name": "default"})  # an import
        scorer._still_pending()  # (the watcher's next round)
        _, version = scorer.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})
        assert version == served
    finally:
        scorer.stop_watch()


def test_a_followed_champion_whose_swap_waited_out_a_manifest_change_is_still_served(
    tmp_path: Path,
) -> None:
    """A review: the watcher prepared the champion a lifecycle named, another lifecycle (a
    second scorer's verdict judged) rewrote the manifest before the next event, and the
    version was dropped and never prepared again: the registry named v000002, v000001 served
    for good. A fleet rewrites the manifest about every verdict."""
    reg = Registry(tmp_path / "scorer")
    for _ in range(2):
        reg.publish(FeatureModel("amount"), spec={"name": "default"}, labels_learned=50_000)
    reg.promote("v000001")
    scorer = build_model_stage("default", registry=reg, watch=True)
    scorer.stop_watch()  # polled by hand below
    reg.follow("v000002", [], "mark-1", "trainer")
    assert scorer.poll() == "v000002"
    time.sleep(0.01)  # (a stamp of its own)
    reg.follow("v000002", [], "mark-2", "trainer")
    _, version = scorer.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})
    assert version == "v000001"  # not before it is checked again
    scorer._still_pending()  # (the watcher's next round): still the champion there
    _, version = scorer.score({"tx_id": "t2", "ts": 1.0, "amount": 5.0}, {})
    assert version == "v000002"


CONTEST = {  # a shadow contest's figures, as the scorer's "promote"/"reject" events carry them
    "labels": 20, "recall_at_budget_incumbent": 0.5, "recall_at_budget_candidate": 0.6,
    "incumbent": "v000001", "candidate": "v000002",
}  # fmt: skip


def test_a_scorers_contest_verdicts_are_sent_signed_and_judged_by_the_trainer(
    tmp_path: Path,
) -> None:
    """A QA pass: each scorer fed by the models topic judged alone, in its own registry, and
    two served different versions. A contest's verdict is sent to the trainer (signed; a
    failed send kept for the next round); the trainer's registry takes the first one."""
    from tests.streams.test_train_service import Producer

    trainer = Registry(tmp_path / "trainer", key=b"k")
    for n in (1, 2):
        _publish(trainer, {"w": n})
    trainer.promote("v000001")  # (before the verdicts: a later change makes them stale)
    producer = Producer(limit=1 << 20)
    scorer = _feed(tmp_path / "a", key=b"k", decisions_topic="decisions", by="fds/a",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    scorer.on_event("swap", {"from": None, "to": "v000001", "why": "first version"})
    scorer.on_event("reject", {"version": "v000002", "why": "shadow scoring raised"})  # local
    producer.down = True
    scorer.on_event("promote", {**CONTEST, "why": "promoted: precision >= champion"})
    scorer._send_verdicts()
    assert producer.values == [] and len(scorer._unsent) == 1  # kept
    producer.down = False
    scorer._send_verdicts()
    (sent,) = producer.values
    assert producer.keys == [b"m/decisions/verdict/v000002/promote/fds/a"]  # (one per scorer)
    assert (sent["kind"], sent["verdict"], sent["version"], sent["other"], sent["by"]) == (
        "verdict",
        "promote",
        "v000002",
        "v000001",
        "fds/a",
    )
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)
    assert judge.handle(_value({**sent, "verdict_hmac": None})) == "rejected"  # unsigned
    assert judge.handle(_value({**sent, "other": None})) == "rejected"  # altered
    assert judge.handle(_value(sent)) == "verdict"
    assert trainer.champion() == "v000002"
    late = {**sent, "verdict": "reject"}  # another scorer's, after: the first one stands
    assert judge.handle(_value(late)) == "rejected"  # (its signature was the promote's)
    scorer.on_event("reject", {**CONTEST, "why": "precision below champion"})
    scorer._send_verdicts()
    assert judge.handle(_value(producer.values[-1])) == "verdict"
    assert trainer.champion() == "v000002"
    # not for the other reader: versions on the trainer, verdicts on a scorer
    assert judge.handle(_value(_publish(Registry(tmp_path / "t2", key=b"k"), {"w": 3}))) == (
        "skipped"
    )
    assert scorer.handle(_value(sent)) == "skipped"


def test_a_scorers_warm_up_swap_is_sent_as_a_promotion_and_judged_by_the_trainer(
    tmp_path: Path,
) -> None:
    """A QA pass of a fleet: warm-up swaps were not sent, so the trainer's registry kept a
    champion set by hand under its warm-up (or none at all: a rollback there found "nothing
    to roll back to"); each lifecycle put the fleet back on it, and a contest won against a
    warm-up's champion was refused there. A warm-up is sent as a promotion over the version
    it replaced; a first version or a scorer without labels serving the newest is not."""
    from tests.streams.test_train_service import Producer

    trainer = Registry(tmp_path / "trainer", key=b"k")
    for n in (1, 2, 3):
        _publish(trainer, {"w": n})
    trainer.promote("v000001")
    producer = Producer(limit=1 << 20)
    scorer = _feed(tmp_path / "a", key=b"k", decisions_topic="decisions", by="fds/a",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    scorer.on_event("swap", {"from": None, "to": "v000001", "why": "first version"})
    scorer.on_event("swap", {"from": "v000001", "to": "v000002", "why": "newest"})
    scorer.on_event("swap", {"from": "v000001", "to": "v000002", "why": "warm-up"})
    scorer._send_verdicts()
    (sent,) = producer.values
    assert (sent["verdict"], sent["version"], sent["other"], sent["figures"]["why"]) == (
        "promote", "v000002", "v000001", "warm-up"
    )  # fmt: skip
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)
    assert judge.handle(_value(sent)) == "verdict"
    assert trainer.champion() == "v000002"
    # a contest won against the warm-up's champion now fits the trainer's registry
    scorer.on_event("promote", {**CONTEST, "candidate": "v000003", "incumbent": "v000002"})
    scorer._send_verdicts()
    assert judge.handle(_value(producer.values[-1])) == "verdict"
    assert trainer.champion() == "v000003"


def test_the_trainers_judgement_is_final_and_a_scorer_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA of a fleet: a verdict the trainer's registry did not take (its incumbent no longer
    the champion there) left the scorer that sent it on its own champion for good (a v97, b
    v74, the trainer v38). The trainer announces its lifecycle after each verdict, naming the
    records judged: the scorer follows it, back to the champion there, but not while a
    verdict of its own is still on its way (it would flap back and forth)."""
    from tests.streams.test_train_service import Producer

    trainer = Registry(tmp_path / "trainer", key=b"k")
    anns = [_publish(trainer, {"w": n}, decisions_topic="decisions") for n in (1, 2, 3)]
    trainer.promote("v000001")
    producer = Producer(limit=1 << 20)
    scorer = _feed(tmp_path / "a", key=b"k", decisions_topic="decisions", by="fds/a",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    for a in anns:
        assert scorer.handle(_value(a)) == "imported"
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)

    def judged(n: int) -> None:  # the trainer reads the scorer's n-th record
        where = {"partition": "models[0]", "offset": str(n)}
        assert judge.handle(_value(producer.values[n]), where) == "verdict"

    def announced() -> str:
        assert scorer.handle(_value(lifecycle(trainer, "m", "decisions") or {})) == "lifecycle"
        return str(scorer.registry.champion())

    scorer.on_event("shadow", {"candidate": "v000002", "incumbent": "v000001"})
    scorer.registry.promote("v000002")  # its contest ends: promoted here at once, and sent
    scorer.on_event("promote", {**CONTEST, "why": "promoted: precision >= champion"})
    scorer._send_verdicts()
    assert [v["verdict"] for v in producer.values] == ["shadow", "promote"]
    assert announced() == "v000002"  # the trainer's v000001: ours not judged yet, waits
    judged(0)
    assert trainer.manifest()["versions"]["v000002"]["status"] == "shadow"
    assert announced() == "v000002"  # still waiting for the promote
    judged(1)
    assert trainer.champion() == "v000002" and announced() == "v000002"
    # a verdict against a champion the trainer no longer has: refused there, undone here
    scorer.registry.promote("v000003")
    scorer.on_event("promote", {**CONTEST, "candidate": "v000003", "incumbent": "v000001"})
    scorer._send_verdicts()
    judged(2)
    judged(2)  # (read again by a restarted trainer: judged once)
    assert trainer.champion() == "v000002" and trainer.manifest()["judged"] == {"models[0]": 3}
    assert announced() == "v000002"
    # a verdict the trainer never judges (refused unread) holds a promotion by hand back a
    # minute at most
    scorer.registry.promote("v000003")
    scorer.on_event("promote", {**CONTEST, "candidate": "v000003", "incumbent": "v000002"})
    scorer._send_verdicts()
    trainer.promote("v000001", reason="manual")
    assert announced() == "v000003"
    scorer._follow_deferred()
    assert scorer.registry.champion() == "v000003"  # not a minute yet
    scorer._awaiting = {p: (o, t - JUDGE_WAIT_S) for p, (o, t) in scorer._awaiting.items()}
    with caplog.at_level("WARNING"):
        scorer._follow_deferred()
        scorer._follow_deferred()  # (said once: the feed's loop calls it every round)
    said = "the trainer judged none of this scorer's verdicts at offsets {'models[0]': 3} (0 "
    assert caplog.text.count(said) == 1
    assert scorer.registry.champion() == "v000001"


# -- the consumer loop -------------------------------------------------------------------------


def test_catch_up_imports_the_newest_per_model_then_follows_live(tmp_path: Path) -> None:
    trainer = Registry(tmp_path / "trainer")
    history = [_publish(trainer, {"w": i}) for i in range(3)]  # v000001..v000003
    other = _publish(Registry(tmp_path / "other"), {"w": 9}, name="other")
    log = [Record(i, b"m", _value(a)) for i, a in enumerate(history)]
    log.insert(1, Record(1, b"other", _value(other)))
    for i, r in enumerate(log):
        r.offset = i
    consumer = FakeConsumer(log)
    configs: list[dict[str, Any]] = []

    def factory(**cfg: Any) -> FakeConsumer:
        configs.append(cfg)
        return consumer

    feed = _feed(tmp_path, consumer_factory=factory)
    feed.start()
    try:
        assert feed.caught_up.wait(10)
        assert [e["version"] for e in feed.registry.versions()] == ["v000003"]
        # Only the newest of each model is imported, not the whole history.
        s = feed.stats
        assert (s.imported, s.superseded, s.other_model, s.announcements) == (1, 2, 1, 4)
        live = _publish(trainer, {"w": 4})
        log.append(Record(len(log), b"m", _value(live)))
        wait_until(lambda: feed.registry.latest() == "v000004", "the live version imported")
    finally:
        feed.close()
    assert consumer.closed and not feed._thread.is_alive()
    assert configs[0]["group_id"] is None and configs[0]["allow_auto_create_topics"] is False
    assert feed.registry.load("v000004") == {"w": 4}


def test_a_restarted_trainer_judges_the_verdicts_it_catches_up_on_in_order_and_deletes_them(
    tmp_path: Path,
) -> None:
    """Each verdict is judged once, by its offset: the catch-up (the newest record per key)
    judges them in the topic's order, or a key sent again later (a retried send) hid the
    verdicts between its two records."""
    from tests.streams.test_train_service import Producer

    trainer = Registry(tmp_path / "trainer")
    for n in (1, 2):
        _publish(trainer, {"w": n})
    trainer.promote("v000001")
    producer = Producer(limit=1 << 20)
    scorer = _feed(tmp_path / "a", decisions_topic="decisions", by="fds/a",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    scorer.on_event("shadow", {"candidate": "v000002", "incumbent": "v000001"})
    scorer.on_event("promote", CONTEST)
    scorer.on_event("shadow", {"candidate": "v000002", "incumbent": "v000001"})  # again
    scorer._send_verdicts()
    sent = zip(producer.keys, producer.values, strict=True)
    log = [Record(i, k, _value(v)) for i, (k, v) in enumerate(sent)]
    deleted = Producer(limit=1 << 20)
    _judge_reading(trainer, log, deleted)
    assert trainer.champion() == "v000002"
    assert trainer.manifest()["judged"] == {f"{TOPIC}[0]": 3}
    assert deleted.keys == [producer.keys[1], producer.keys[2]] and deleted.values == [None] * 2
    # the next start reads the tombstones after them: nothing is judged (nor deleted) again
    log += [Record(len(log) + i, k, None) for i, k in enumerate(deleted.keys)]
    again = Producer(limit=1 << 20)
    judge = _judge_reading(trainer, log, again)
    assert (judge.stats.verdict, judge.stats.tombstone, again.keys) == (0, 2, [])


def test_a_models_topic_made_again_under_a_running_trainer_has_its_verdicts_judged(
    tmp_path: Path,
) -> None:
    """A QA pass: the models topic deleted and made again while the trainer ran, every
    scorer verdict on it was "judged before" (its offsets below those judged on the old
    topic) and deleted; only a restart of the trainer noticed."""
    from tests.streams.test_train_service import Producer

    trainer = Registry(tmp_path / "trainer")
    for n in (1, 2, 3):
        _publish(trainer, {"w": n})
    trainer.promote("v000001")
    producer = Producer(limit=1 << 20)
    scorer = _feed(tmp_path / "a", decisions_topic="decisions", by="fds/a",
                   producer_factory=lambda **cfg: producer)  # fmt: skip
    for old, new in (("v000001", "v000002"), ("v000002", "v000003")):
        scorer.on_event("shadow", {"candidate": new, "incumbent": old})
        scorer.on_event("promote", {**CONTEST, "candidate": new, "incumbent": old})
    scorer._send_verdicts()
    sent = [(k, _value(v)) for k, v in zip(producer.keys, producer.values, strict=True)]
    # the old topic: 38 records, then the verdicts on v000002 (judged up to offset 40)
    log = [Record(i, b"old", None) for i in range(38)]
    log += [Record(38 + i, k, v) for i, (k, v) in enumerate(sent[:2])]
    consumers: list[FakeConsumer] = []

    def consumer(**cfg: Any) -> FakeConsumer:
        consumers.append(FakeConsumer(log))
        return consumers[-1]

    judge = ModelFeed(
        KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True,
        topic=TOPIC, consumer_factory=consumer, producer_factory=lambda **cfg: Producer(1 << 20),
    )  # fmt: skip
    judge.start()
    try:
        assert judge.caught_up.wait(10) and trainer.champion() == "v000002"
        assert trainer.manifest()["judged"] == {f"{TOPIC}[0]": 40}
        # made again: a new log from offset 0, the verdicts on v000003 at 2 and 3; the client
        # reads it from its start (its position out of range)
        new = [Record(0, b"new", None), Record(1, b"new", None)]
        new += [Record(2 + i, k, v) for i, (k, v) in enumerate(sent[2:])]
        log[:] = new
        consumers[0].pos = 0
        wait_until(lambda: trainer.champion() == "v000003", "the verdict on the new topic")
    finally:
        judge.close()


def _judge_reading(trainer: Registry, log: list[Record], producer: Any) -> ModelFeed:
    """A trainer's judge fed by ``log``, caught up and closed (what it sends: ``producer``;
    each key it judged is deleted from the topic: one per version, kind and scorer,
    compaction alone kept them all, read again at every start)."""
    judge = ModelFeed(
        KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True,
        topic=TOPIC, consumer_factory=lambda **cfg: FakeConsumer(log),
        producer_factory=lambda **cfg: producer,
    )  # fmt: skip
    judge.start()
    try:
        assert judge.caught_up.wait(10)
    finally:
        judge.close()  # (sends what is left)
    return judge


def test_a_bad_newest_record_does_not_hide_the_good_one_before_it(tmp_path: Path) -> None:
    trainer = Registry(tmp_path / "trainer", key=b"k")
    good = [_publish(trainer, {"w": i}) for i in range(2)]
    forged = _forged({**good[-1], "version": "v000003"})
    log = [Record(i, b"m", _value(a)) for i, a in enumerate([*good, forged])]
    feed = _feed(tmp_path, key=b"k", consumer_factory=lambda **cfg: FakeConsumer(log))
    feed.start()
    try:
        assert feed.caught_up.wait(10)
    finally:
        feed.close()
    assert [e["version"] for e in feed.registry.versions()] == ["v000002"]
    assert (feed.stats.imported, feed.stats.superseded, feed.stats.rejected) == (1, 1, 1)
    assert UNPICKLED == []


def test_waits_for_the_topic_and_retries_broker_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_feed, "RETRY_MIN_S", 0.01)  # the backoff's length is not tested
    a = _publish(Registry(tmp_path / "trainer"), {"w": 1})
    exists = threading.Event()
    calls = {"n": 0}

    def factory(**cfg: Any) -> FakeConsumer:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KafkaTimeoutError("no broker")
        if calls["n"] == 2:
            raise TypeError("a bug in the client or the feed")  # logged, retried: not fatal
        if calls["n"] == 4:
            exists.set()  # the topic appears after one more look
        return FakeConsumer([Record(0, b"m", _value(a))], exists=exists.is_set)

    feed = _feed(tmp_path, consumer_factory=factory)
    feed.start()
    try:
        wait_until(lambda: feed.registry.latest() == a["version"], "the version imported")
    finally:
        feed.close()
    assert calls["n"] == 4


# -- fds run wiring ----------------------------------------------------------------------------


def test_run_flag_is_off_by_default() -> None:
    parser = argparse.ArgumentParser()
    register_run(parser.add_subparsers())
    assert parser.parse_args(["run"]).models_topic is None
    assert parser.parse_args(["run", "--models-topic", "models"]).models_topic == "models"


def test_models_topic_without_a_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a model"):
        build_run_engine(None, None, models_topic="models")


def test_a_rejected_announcement_is_logged_with_its_partition_and_offset(tmp_path: Path):
    """A review: once log fields were read from the template only, the record's position
    (given as one "%s" of pairs) landed inside the message instead of fields of its own."""
    import io

    from fds.logs import configure_logging

    out = io.StringIO()
    configure_logging("INFO", fmt="json", stream=out, logger_name="fds.streams.model_feed")
    _feed(tmp_path).handle(b"not json", {"partition": "models[0]", "offset": "12"})
    line = orjson.loads(out.getvalue().splitlines()[-1])
    assert line["msg"] == "rejected model announcement"
    assert (line["partition"], line["offset"]) == ("models[0]", "12") and line["error"]


def test_a_rejected_announcement_read_again_is_said_once(tmp_path: Path, caplog):
    """A QA pass: every reconnect's catch-up reads the topic again, and each old bad
    announcement was logged (and counted in fds_model_swaps_total) again."""
    feed = _feed(tmp_path)
    for _ in range(3):
        assert feed.handle(b"not json", {"partition": "models[0]", "offset": "12"}) == "rejected"
    feed.handle(b"not json", {"partition": "models[0]", "offset": "13"})
    said = [r for r in caplog.records if r.getMessage().startswith("rejected model")]
    assert len(said) == 2 and feed.stats.rejected == 4


def test_the_topic_read_again_after_a_reconnect_is_no_replay(tmp_path: Path) -> None:
    """A review: the trainer's feed kept the newest lifecycle number it had read across a
    reconnect, which reads the topic again from its start: every older lifecycle still in the
    log was taken for a replay (a warning, and the lifecycle announced anew, its champion
    inline, after each reconnect)."""
    from kafka.errors import KafkaConnectionError

    trainer = Registry(tmp_path / "trainer")
    trainer.promote(_publish(trainer, {"w": 1}, decisions_topic="decisions")["version"])
    lives = [lifecycle(trainer, "m", "decisions", trainer.issue()) for _ in range(2)]
    log = [Record(i, b"m/decisions/lifecycle", _value(life)) for i, life in enumerate(lives)]
    made: list[FakeConsumer] = []

    class Dropping(FakeConsumer):
        def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
            if len(made) == 1 and self.pos >= len(self.log):
                raise KafkaConnectionError("broker gone")  # (once: the next one reads on)
            return super().poll(timeout_ms)

    def factory(**cfg: Any) -> FakeConsumer:
        made.append(Dropping(log))
        return made[-1]

    monkey = pytest.MonkeyPatch()
    monkey.setattr(model_feed, "RETRY_MIN_S", 0.01)
    judge = ModelFeed(
        KafkaSettings(), trainer, name="m", topic=TOPIC, decisions_topic="decisions",
        judge=True, consumer_factory=factory,
    )  # fmt: skip
    judge.start()
    try:
        wait_until(lambda: len(made) == 2 and made[1].pos >= len(log), "the topic read again")
        assert not judge.replayed.is_set()
        log.append(Record(2, b"m/decisions/lifecycle", _value(lives[0])))  # a true replay
        wait_until(judge.replayed.is_set, "the replay seen")
    finally:
        judge.close()
        monkey.undo()


def test_a_scorer_s_catch_up_keeps_a_lifecycle_whose_key_was_deleted(tmp_path: Path) -> None:
    """A second security pass: a tombstone written on a lifecycle key (no trainer sends one)
    made a new scorer's catch-up drop the lifecycle and serve the newest version, a rolled-back
    one, instead of the trainer's champion."""
    trainer = Registry(tmp_path / "trainer")
    anns = [_publish(trainer, {"w": n}, decisions_topic="decisions") for n in (1, 2)]
    trainer.promote("v000001")
    trainer.promote("v000002")
    trainer.rollback()  # v000002 rejected, v000001 the champion
    life = lifecycle(trainer, "m", "decisions", trainer.issue())
    key = b"m/decisions/lifecycle"
    log = [Record(0, b"m/decisions", _value(anns[0])), Record(1, b"m/decisions", _value(anns[1])),
           Record(2, key, _value(life)), Record(3, key, None)]  # fmt: skip
    feed = _feed(
        tmp_path, decisions_topic="decisions", consumer_factory=lambda **_: FakeConsumer(log)
    )
    feed.start()
    try:
        assert feed.caught_up.wait(10)
        assert feed.registry.champion() == "v000001"
    finally:
        feed.close()


def test_the_same_verdict_sent_again_is_not_judged_again(tmp_path: Path) -> None:
    """A second security pass: a scorer's signed verdict, captured and sent again at another
    offset (no key needed), was judged anew and undid a champion an operator chose by hand
    since; the trainer's registry keeps the digests of the verdicts it judged."""
    from fds.streams.model_feed import VERDICT

    trainer = Registry(tmp_path / "trainer")
    for n in (1, 2, 3):
        _publish(trainer, {"w": n}, decisions_topic="decisions")
    trainer.promote("v000001")
    judge = ModelFeed(KafkaSettings(), trainer, name="m", decisions_topic="decisions", judge=True)
    verdict = {"kind": VERDICT, "name": "m", "decisions_topic": "decisions", "verdict": "promote",
               "version": "v000003", "other": "v000001", "by": "fds/a", "at": 1.0e9}  # fmt: skip
    at = {"partition": "models[0]", "offset": "5"}
    assert judge.handle(_value(verdict), at) == "verdict" and trainer.champion() == "v000003"
    trainer.promote("v000001")  # an operator's choice
    again = {"partition": "models[0]", "offset": "9"}
    assert judge.handle(_value(verdict), again) == "verdict"
    assert trainer.champion() == "v000001"  # (not undone)
    later = {**verdict, "at": 1.0e9 + 60}  # a new verdict of the same kind is judged as ever
    assert judge.handle(_value(later), {"partition": "models[0]", "offset": "10"}) == "verdict"
    assert trainer.champion() == "v000003"


def test_a_retired_trainer_registry_s_lifecycle_replayed_is_refused(tmp_path: Path) -> None:
    """A second security pass: after the trainer moved to a new registry (the README's
    recovery: a copy of a scorer's registry, another id), an old lifecycle of the first one,
    sent again by whoever can write to the topic, switched running scorers back (to a version
    rejected there). A registry followed before the current one is refused."""
    import json
    import shutil

    a = Registry(tmp_path / "a")
    anns = [_publish(a, {"w": n}, decisions_topic="decisions") for n in (1, 2)]
    a.promote("v000001")
    a.promote("v000002")
    old = lifecycle(a, "m", "decisions", a.issue())
    a.rollback()  # v000002 rejected
    newer = lifecycle(a, "m", "decisions", a.issue())
    scorer = _feed(tmp_path, decisions_topic="decisions")
    for ann in anns:
        scorer.handle(_value(ann))
    assert scorer.handle(_value(newer)) == "lifecycle" and scorer.registry.champion() == "v000001"
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the trainer moved: a registry of its own
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    del m["id"]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    b = Registry(tmp_path / "b")
    b.promote(_publish(b, {"w": 3}, decisions_topic="decisions")["version"])
    moved = lifecycle(b, "m", "decisions", b.issue())
    assert moved["issued"][0] != newer["issued"][0]
    assert scorer.handle(_value(moved)) == "lifecycle" and scorer.registry.champion() == "v000003"
    assert scorer.handle(_value(old)) == "rejected"  # the first registry's, replayed
    assert scorer.registry.champion() == "v000003"
