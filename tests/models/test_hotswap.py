"""Hot-swap under a running replay: nothing lost or decided twice, versions never go back,
corrupt or failing artifacts rejected while the current model keeps serving."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fds.engine import Engine
from fds.metrics import Metrics
from fds.models.registry import Registry
from fds.models.scorer import ModelServer
from fds.models.spec import load_spec, parse_spec
from fds.replay import ReplayInput, run
from tests.models.fakes import FeatureModel, NaNModel


class ListSink:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def write(self, r: Any) -> None:
        self.items.append(r)


def _stream(n: int = 6000, days: float = 12.0) -> ReplayInput:
    step = days * 86400.0 / n
    txs = [
        {"tx_id": f"t{i}", "ts": i * step, "card_id": f"c{i % 50}", "amount": 5.0 + (i * 7) % 300}
        for i in range(n)
    ]
    labels = sorted(
        (
            {"tx_id": f"t{i}", "ts": i * step + 86400.0, "is_fraud": True, "source": "t"}
            for i in range(n)
            if txs[i]["amount"] > 280
        ),
        key=lambda lab: lab["ts"],
    )
    return ReplayInput(txs, labels)


def _check(out: ListSink, stream: ReplayInput) -> list[str]:
    ids = [d["tx_id"] for d in out.items]
    assert len(ids) == len(stream.transactions) and len(set(ids)) == len(ids)
    return [d["model_version"] for d in out.items if d["model_version"]]


def test_inline_hot_swaps_during_replay(tmp_path: Path) -> None:
    spec = parse_spec(
        "name: t\npipeline:\n  - preprocessing.StandardScaler: {}\n"
        "  - linear_model.LogisticRegression: {}\n"
        "learn: {legit_sample_rate: 0.5, assume_legit_after: 1d}\n"
        "publish: {every_labels: 50, every_seconds: 1d}\n"
        "promote: {shadow_min_labels: 10, auto: false}\n"
    )
    reg = Registry(tmp_path / "reg")
    srv = ModelServer(spec, registry=reg)
    stream = _stream()
    out = ListSink()
    run(Engine(model=srv), stream, out, ListSink())
    versions = _check(out, stream)
    assert len(set(versions)) >= 3, "several versions served during the replay"
    assert versions == sorted(versions), "the served version never goes backwards"
    assert reg.champion() == versions[-1]
    assert srv.stats["swaps_rejected"] == 0


def test_inline_replay_is_deterministic() -> None:
    spec = load_spec("default")
    runs = []
    for _ in range(2):
        out = ListSink()
        run(Engine(model=ModelServer(spec)), _stream(3000), out, ListSink())
        runs.append([(d["model_score"], d["model_version"]) for d in out.items])
    assert runs[0] == runs[1]


def test_corrupt_and_failing_artifacts_are_rejected_current_stays(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    eng = Engine(model=srv)
    for i in range(100):
        eng.decide({"tx_id": f"w{i}", "ts": float(i), "card_id": "c", "amount": 1.0 + i})
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000001"
    eng.decide({"tx_id": "a", "ts": 200.0, "card_id": "c", "amount": 0.5})
    assert srv.version == "v000001"
    # v2: a flipped byte; v3: unpickles but fails the canary (NaN scores)
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    p = tmp_path / "v000002.pkl"
    data = bytearray(p.read_bytes())
    data[-2] ^= 0xFF
    p.write_bytes(bytes(data))
    assert srv.poll() is None
    reg.publish(NaNModel("amount"), spec={"name": "default"})
    assert srv.poll() is None
    assert srv.stats["swaps_rejected"] == 2
    assert {reg.entry(v)["status"] for v in ("v000002", "v000003")} == {"rejected"}
    # the NaN model is broken (no trainer learns on from it: a QA pass), the corrupt file not
    assert "broken" not in reg.entry("v000002") and reg.entry("v000003")["broken"] is True
    d = eng.decide({"tx_id": "b", "ts": 201.0, "card_id": "c", "amount": 0.5})
    # raw 0.5, corrected for the 5% legit sampling of the default spec
    assert d["model_version"] == "v000001"
    assert abs(d["model_score"] - 0.5 * 0.05 / (0.5 * 0.05 + 0.5)) < 1e-12


def test_watch_thread_swaps_under_load(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    eng = Engine(model=srv)
    stream = _stream(20000)
    published = threading.Event()
    out = ListSink()

    def publisher() -> None:
        for k in range(6):
            model = NaNModel("amount") if k == 3 else FeatureModel("amount")
            reg.publish(model, spec={"name": "default"})
            # wait until the server has dealt with it (swapped or rejected)
            while srv.stats["swaps"] + srv.stats["swaps_rejected"] < k + 1:
                if stop.wait(0.001):
                    return
        published.set()

    stop = threading.Event()
    srv.start_watch(every=0.002)
    th = threading.Thread(target=publisher)
    th.start()
    i = 0
    txs = stream.transactions
    while not published.is_set() or i < 1000:
        tx = dict(txs[i % len(txs)], tx_id=f"t{i}")
        out.write(eng.decide(tx))
        i += 1
        assert i < 5_000_000, "the watcher never took the versions"
    stop.set()
    th.join()
    srv.stop_watch()
    ids = [d["tx_id"] for d in out.items]
    assert len(set(ids)) == len(ids) == i
    versions = [d["model_version"] for d in out.items if d["model_version"]]
    assert versions == sorted(versions)
    assert set(versions) == {"v000001", "v000002", "v000003", "v000005", "v000006"}
    assert srv.stats["swaps_rejected"] == 1


def test_a_nan_score_falls_back_to_the_rules_and_is_never_a_decline(tmp_path: Path) -> None:
    """The canary checks recent traffic; a model can still score NaN on an input it never
    saw. That score must not act (a NaN compared as >= 1.0 became a decline)."""
    from fds.guardrails import ModelGuard

    srv = ModelServer(load_spec("default"), learn=False)
    srv.champion, srv.version = NaNModel("amount"), "v000009"
    eng = Engine(model=srv, guard=ModelGuard(latency_budget_s=1.0))
    d = eng.decide({"tx_id": "a", "ts": 1.0, "card_id": "c", "amount": 5.0})
    assert d["model_score"] is None and "degraded" in d["flags"] and d["action"] == "approve"


def test_a_restarted_scorer_keeps_the_contest_and_orders_versions_by_seq(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1 = reg.publish(FeatureModel("amount"), spec={"name": "default"}, labels_learned=50_000)
    reg.promote(v1["version"])
    m = Metrics()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, metrics=m)  # contests
    assert srv.load_champion() == v1["version"]
    # the champion served from the start is exported (it was only after the first swap)
    assert m.registry.get_sample_value("fds_model_info", {"version": "v000001", "spec": "default"})
    reg.publish(FeatureModel("amount"), spec={"name": "default"}, labels_learned=10)
    srv.poll()
    srv.install_pending()
    # a proven champion: the new version goes to shadow, not straight in as a warm-up model
    assert srv.version == v1["version"] and srv.challenger_version == "v000002"
    assert reg.champion() == v1["version"]


def test_a_contest_a_restart_does_not_resume_is_said(tmp_path: Path, caplog) -> None:
    """A soak: the contest of v000177 (saved in the checkpoint) was dropped without a word
    after a restart, a newer version offered first."""
    srv = ModelServer(load_spec("default"), learn=False)
    srv.version = "v000174"
    srv._saved_contest = {"kind": "shadow", "incumbent": "v000174", "candidate": "v000177",
                          "min_labels": 50, "n": 12}  # fmt: skip
    with caplog.at_level("INFO", logger="fds.models"):
        srv._start_shadow("v000180", FeatureModel("amount"), {})
    assert ('the contest of "v000177" against "v000174" (12 of 50 fraud labels judged before '
            'the restart) is not resumed: "v000180", newer') in caplog.text  # fmt: skip
    assert srv.contest is not None and srv.contest.n == 0


def test_a_version_this_scorer_cannot_load_is_not_rejected_for_everyone(tmp_path: Path) -> None:
    """A wrong local key (or a missing file) is this machine's problem: the version stays
    published for other scorers and is tried again later; a rejected challenger is not
    offered again."""
    reg = Registry(tmp_path, key=b"the trainer's key")
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    other = Registry(tmp_path, key=b"a wrong key")  # a misconfigured scorer
    srv = ModelServer(load_spec("default"), registry=other, learn=False, auto_promote=False)
    assert srv.poll() is None and srv.stats["swaps_rejected"] == 1
    assert reg.entry("v000001")["status"] == "published"
    assert srv.poll() is None and srv.stats["swaps_rejected"] == 1  # not retried at once
    good = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    assert good.poll() == "v000001"
    good.install_pending()
    # a challenger that lost its contest is not offered again on the next poll
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    good.auto_promote = True
    good._champion_labels = 10**6  # a proven champion: the next version goes to shadow
    assert good.poll() == "v000002"
    good.install_pending()
    assert good.challenger_version == "v000002"
    good._drop_challenger("reject", "precision below champion")
    assert good.poll() is None


def test_a_version_prepared_gives_way_to_a_newer_one_published_before_an_event_serves_it(
    tmp_path: Path,
) -> None:
    """Found by a CI run: v1 prepared as the traffic paused held v2, published meanwhile, back
    until an event had served v1 (the watcher prepares one version at a time). A choice by
    hand prepared is served first all the same."""
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000001"
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    srv._recheck_pending()  # (the watcher's look while a version waits for an event)
    assert srv._pending is not None and srv._pending[1] == "v000002"
    # one it cannot serve (another spec's) leaves the prepared one in place
    reg.publish(FeatureModel("amount"), spec={"name": "other"})
    srv._recheck_pending()
    assert srv._pending is not None and srv._pending[1] == "v000002"
    srv.install_pending()
    assert srv.version == "v000002"
    reg.promote("v000001")  # by hand: prepared, then not given way to
    assert srv.poll() == "v000001"
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    srv._recheck_pending()
    assert srv._pending is not None and srv._pending[1] == "v000001"


def test_a_stale_prepared_version_does_not_overwrite_one_the_watcher_prepared_meanwhile(
    tmp_path: Path, monkeypatch
) -> None:
    """A review: the hot path took the prepared version out, read the registry's stamp (a
    stat, during which the watcher runs) and, the manifest having changed, put it back over
    the newer version the watcher had prepared in the meantime."""
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000001"
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    stamp = reg.stamp

    def watcher_runs_during_the_stat() -> Any:
        monkeypatch.setattr(reg, "stamp", stamp)
        srv._recheck_pending()  # prepares v2 in the stead of v1
        return stamp()

    monkeypatch.setattr(reg, "stamp", watcher_runs_during_the_stat)
    srv.install_pending()  # v1's stamp is stale: not served
    assert srv._pending is not None and srv._pending[1] == "v000002"
    srv.install_pending()
    assert srv.version == "v000002" and srv._pending is None


def test_without_labels_versions_are_served_as_published_and_the_gate_counts_frauds(
    tmp_path: Path,
) -> None:
    """`fds run` without --labels-topic: no contest could ever be judged, and the gate's
    window never fills; the trainer's count of frauds learned opens the gate."""
    spec = load_spec("default")  # gate: min_frauds 100, window 100
    reg = Registry(tmp_path)
    v1 = reg.publish(FeatureModel("amount"), spec={"name": "default"}, labels_learned=5000,
                     evaluation={"frauds_learned": 60})  # fmt: skip
    reg.promote(v1["version"])
    metrics = Metrics()  # (opening the gate on the count crashed fds run when it exported it)
    srv = ModelServer(spec, registry=reg, learn=False, metrics=metrics)
    srv.load_champion()
    srv.without_labels()
    assert not srv.acting  # 60 < 100 frauds learned
    # (in shadow, info 1 and degraded 0 looked healthy: fds_model_acting says it, a QA pass)
    assert metrics.registry.get_sample_value("fds_model_acting") == 0
    reg.publish(FeatureModel("amount"), spec={"name": "default"}, labels_learned=6000,
                evaluation={"frauds_learned": 130})  # fmt: skip
    assert srv.poll() == "v000002"
    srv.install_pending()
    assert srv.version == "v000002" and srv.challenger is None and srv.acting
    assert metrics.registry.get_sample_value("fds_model_acting") == 1
    assert (
        metrics.registry.get_sample_value(
            "fds_model_info", {"version": "v000002", "spec": "default"}
        )
        == 1
    )


def test_a_rejected_version_numbered_past_the_trainers_does_not_hold_later_ones_back(
    tmp_path: Path,
) -> None:
    """A QA pass: one models-topic record numbered v000700 (forged, or another registry's)
    whose model failed its canary was the registry's newest by seq, so no version the trainer
    published after it was ever served (imported, not served, through restarts)."""
    trainer = Registry(tmp_path / "trainer")
    reg = Registry(tmp_path / "scorer")

    def imported(model: Any, version: str | None = None) -> str:
        e = trainer.publish(model, spec={"name": "default"})
        data, _ = trainer.load_bytes(e["version"])
        reg.import_version(data, {**e, "version": version or e["version"]})
        return version or e["version"]

    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    v1 = imported(FeatureModel("amount"))
    assert srv.poll() == v1
    srv.install_pending()
    imported(NaNModel("amount"), "v000700")
    assert srv.poll() is None and reg.manifest()["versions"]["v000700"]["status"] == "rejected"
    v3 = imported(FeatureModel("amount"))  # (the trainer's own numbering goes on)
    assert srv.poll() == v3  # served all the same
    srv.install_pending()
    assert srv.version == v3 == "v000003"
    restarted = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    restarted.load_champion()
    v4 = imported(FeatureModel("amount"))
    assert restarted.poll() == v4  # after a restart too


def test_a_champion_this_scorer_cannot_load_does_not_hold_newer_versions_back(
    tmp_path: Path,
) -> None:
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000001"
    srv.install_pending()
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    reg.promote("v000002")  # promoted by hand, but its file is gone on this machine
    (tmp_path / "v000002.pkl").unlink()
    assert srv.poll() is None and srv._retry_pending()
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000003"  # the newest still comes through
    srv.install_pending()
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    (tmp_path / "v000004.pkl").unlink()
    assert srv.poll() is None and srv._retry_pending()
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000005"
    srv.install_pending()
    reg.promote("v000005")
    srv.poll()
    # v000004 was superseded: no retry is pending, so the watcher waits for a manifest change
    # (v000002 is no longer the champion pointer either)
    assert not srv._retry_pending()


def test_a_version_prepared_while_the_input_is_idle_is_served_at_the_next_report(tmp_path):
    """A rollback while no transaction came stayed unserved (and fds_model_info showed the
    rejected version) until the next transaction; the runner reports once a second, idle too."""
    from fds.engine import Engine
    from fds.metrics import Metrics
    from fds.models import Registry, build_model_stage

    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("f_a"), spec={"name": "default"})["version"])
    metrics = Metrics()
    srv = build_model_stage("default", registry=reg, watch=True, poll_seconds=3600, metrics=metrics)
    try:
        engine = Engine(model=srv, metrics=metrics)
        reg.promote(reg.publish(FeatureModel("f_b"), spec={"name": "default"})["version"])
        assert srv.poll() == "v000002" and srv.version == "v000001"  # prepared, not served
        engine.report()  # no transaction in between
        assert srv.version == "v000002"
        info = {"version": "v000002", "spec": "default"}
        assert metrics.registry.get_sample_value("fds_model_info", info) == 1
    finally:
        srv.close()


def test_a_corrupt_champion_at_startup_falls_back_to_the_previous_one(
    tmp_path: Path, caplog
) -> None:
    """A scorer (re)starting while the champion's file is corrupt used to exit: it serves the
    previous champion, then the rules alone when no version loads, and takes the champion once
    it can be loaded."""
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    reg.reject("v000002", "bad")  # never returned to
    good = (tmp_path / "v000003.pkl").read_bytes()
    (tmp_path / "v000003.pkl").write_bytes(good[:-2] + b"xx")
    events: list[tuple[str, dict[str, Any]]] = []
    srv = ModelServer(load_spec("default"), registry=reg, learn=False,
                      on_event=lambda k, i: events.append((k, i)))  # fmt: skip
    with caplog.at_level("WARNING", logger="fds.models"):  # (seen with `fds -q`: a QA report)
        assert srv.load_champion() == "v000001" and srv.version == "v000001"
    assert 'model swap_rejected version="v000003"' in caplog.text
    assert events == [("swap_rejected", {"version": "v000003", "error": events[0][1]["error"]})]
    assert "sha256" in events[0][1]["error"]
    assert reg.champion() == "v000003"  # the pointer is the owner's to change
    assert srv.poll() is None  # a corrupt file is not tried again
    # nothing loads: rules alone, and the champion is served once its file is whole again
    (tmp_path / "v000001.pkl").unlink()
    (tmp_path / "v000003.pkl").unlink()  # a missing file: this machine's problem, retried
    alone = ModelServer(load_spec("default"), registry=reg, learn=False)
    assert alone.load_champion() is None and alone.champion is None
    (tmp_path / "v000003.pkl").write_bytes(good)
    alone._retry_at["v000003"] = 0.0  # (instead of waiting LOCAL_RETRY_S)
    assert alone.poll() == "v000003"
    alone.install_pending()
    assert alone.version == "v000003"


def test_a_champion_missing_here_is_not_replaced_in_the_registry_by_a_stand_in(
    tmp_path: Path,
) -> None:
    """A QA pass: a scorer whose champion's file was missing served the previous champion,
    took it for a warm-up model (it had learned fewer labels) and made the newest version
    the registry's champion, for every scorer, without a contest."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    good = (tmp_path / "v000002.pkl").read_bytes()
    (tmp_path / "v000002.pkl").unlink()  # this machine's problem: retried
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    assert srv.load_champion() == "v000001"
    reg.publish(FeatureModel("amount"), spec={"name": "default"})  # v000003, newer
    assert srv.poll() == "v000003"
    srv.install_pending()
    assert srv.version == "v000003"  # served in its stead ...
    assert reg.champion() == "v000002"  # ... written nowhere: the pointer is its owner's
    assert [h["to"] for h in reg.manifest()["history"]] == ["v000001", "v000002"]
    (tmp_path / "v000002.pkl").write_bytes(good)
    srv._retry_at["v000002"] = 0.0  # (instead of waiting LOCAL_RETRY_S)
    assert srv.poll() == "v000002"
    srv.install_pending()
    assert srv.version == "v000002" and reg.champion() == "v000002"
    # the version served meanwhile is offered again, as any newer one (it was skipped: a
    # review); here the champion learned nothing, so it replaces it as a warm-up
    assert srv.poll() == "v000003"
    srv.install_pending()
    assert srv.version == "v000003" and reg.champion() == "v000003"


def test_a_champion_bad_for_good_is_stood_in_for_without_contests(tmp_path: Path) -> None:
    """A QA pass: a champion whose file failed its sha256 at start was stood in for by the
    previous one, but newer versions then ran contests against the stand-in: the registry
    refused each promotion (its champion is another) and the scorer served the winners anyway,
    apart from every other scorer. They are served as the stand-in, written nowhere."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    path = tmp_path / "v000002.pkl"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    assert srv.load_champion() == "v000001" and srv._standing_in
    reg.publish(FeatureModel("amount"), spec={"name": "default"})  # v000003
    assert srv.poll() == "v000003"
    srv.install_pending()
    assert srv.version == "v000003" and srv.contest is None and srv.challenger is None
    assert reg.champion() == "v000002"  # the pointer is its owner's


def test_a_null_count_in_the_manifest_is_no_count(tmp_path: Path) -> None:
    """A review: `frauds_learned: null` passed the manifest's check, then stopped fds run
    (None compared with the gate's count)."""
    import json

    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["versions"]["v000001"]["evaluation"] = {"frauds_learned": None}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    srv.without_labels()
    assert srv.load_champion() == "v000001" and not srv.acting  # 0 frauds learned: gated


def test_a_champion_set_by_hand_while_a_stand_in_serves_is_served(tmp_path: Path) -> None:
    """A review: the pointer was set to the stand-in's predecessor, so a rollback by hand to
    that version read as no change, and the stand-in served on for good."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    (tmp_path / "v000002.pkl").unlink()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    assert srv.load_champion() == "v000001"
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000003"
    srv.install_pending()
    reg.promote("v000001")  # by hand (`fds models promote 1`)
    assert srv.poll() == "v000001"
    srv.install_pending()
    assert srv.version == "v000001" and reg.champion() == "v000001"


def test_a_champion_file_that_cannot_be_read_is_retried_not_fatal(tmp_path: Path) -> None:
    """A QA pass: a folder in place of the champion's file (an IsADirectoryError, as a
    PermissionError would) stopped fds run at start, where a missing file falls back."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    (tmp_path / "v000002.pkl").unlink()
    (tmp_path / "v000002.pkl").mkdir()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    assert srv.load_champion() == "v000001"
    assert math.isfinite(srv._retry_at["v000002"])  # this machine's: retried, not rejected
    assert reg.manifest()["versions"]["v000002"]["status"] != "rejected"


def test_an_empty_registry_is_said_at_start(tmp_path: Path, caplog, monkeypatch) -> None:
    """A typo in --registry created an empty registry and fds run decided on the rules alone
    without a word (found by a README walkthrough)."""
    from fds.models import build_model_stage

    monkeypatch.chdir(tmp_path)  # (a relative path said absolute: a README walk's fds train
    with caplog.at_level("WARNING", logger="fds.models"):  # in another folder published there)
        srv = build_model_stage("default", registry=Path("typo"), watch=True)
        srv.close()
    assert "no model version in registry" in caplog.text
    assert f"registry {tmp_path / 'typo'} yet" in caplog.text


def test_the_first_swap_names_no_version_it_came_from(tmp_path: Path, caplog) -> None:
    """A QA pass: a scorer's first swap was logged `model swap from="None" to="v000001"`."""
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    assert srv.load_champion() is None  # (an empty registry: the rules alone)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    with caplog.at_level("INFO", logger="fds.models"):
        srv.poll()
        Engine(model=srv).report()
    assert srv.version == "v000001"
    assert 'model swap to="v000001"' in caplog.text and "None" not in caplog.text


def test_a_model_event_s_pairs_are_fields_of_a_json_log_line(tmp_path: Path, caplog) -> None:
    """A QA pass: `model swap from=... to=... why=...` was one argument of "model %s %s", so
    `--log-format json` kept the versions inside `msg`."""
    import orjson

    from fds.logs import JsonFormatter

    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    with caplog.at_level("INFO", logger="fds.models"):
        srv.poll()
        Engine(model=srv).report()  # (said by the deciding thread)
    lines = [orjson.loads(JsonFormatter().format(r)) for r in caplog.records]
    swap = next(r for r in lines if "swap" in r["msg"])
    assert swap["msg"] == "model swap" and swap["to"] == "v000001" and "from" not in swap


def test_a_verdict_the_registry_cannot_take_is_tried_until_it_is_written(tmp_path: Path) -> None:
    """A QA pass: a promotion the registry could not take for 36 s (read-only for a moment)
    was given up, and the watcher then took the registry's old champion for a change made by
    hand and served it again, with nothing counted. It is tried every last wait until it is
    written (the watcher waits meanwhile), counted once as unrecorded."""
    reg = Registry(tmp_path)
    metrics = Metrics()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, metrics=metrics)
    fails = [OSError(30, "Read-only file system")] * 5
    done: list[str] = []

    def change(r: Registry) -> None:
        if fails:
            raise fails.pop()
        done.append("written")

    assert srv._write(reg, "promote v000002", change, retries=(0.001, 0.002)) is False
    assert done == ["written"] and not fails
    get = metrics.registry.get_sample_value
    assert get("fds_model_swaps_total", {"result": "unrecorded"}) == 1
    srv._give_up.set()  # closing: no more tries
    fails[:] = [OSError(30, "Read-only file system")] * 3
    with pytest.raises(OSError):
        srv._write(reg, "promote v000003", change, retries=(0.001, 0.002))
    # a registry this scorer can never write: given up after RECORD_GIVE_UP_S, said as an
    # error (the watcher waits meanwhile, following no new version: a review)
    import fds.models.scorer as scorer_mod

    srv._give_up.clear()
    fails[:] = [OSError(30, "Read-only file system")] * 10**6
    scorer_mod.RECORD_GIVE_UP_S, was = 0.05, scorer_mod.RECORD_GIVE_UP_S
    try:
        with pytest.raises(OSError):
            srv._write(reg, "promote v000004", change, retries=(0.001, 0.002))
    finally:
        scorer_mod.RECORD_GIVE_UP_S = was


def test_registry_problems_are_logged_once_each(tmp_path: Path, caplog) -> None:
    """Found by a QA pass: an invalid manifest was logged at every poll (each second), a
    deleted one not at all."""
    import time

    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    srv.load_champion()
    manifest = tmp_path / "manifest.json"

    def polls(n: int) -> None:  # the watcher's polls, n of them at least
        for _ in range(n):
            before = reg.stamp()
            time.sleep(0.03)
            assert reg.stamp() == before  # (nothing else touches it)

    with caplog.at_level("WARNING", logger="fds.models"):
        srv.start_watch(every=0.005)
        try:
            bad = tmp_path / "bad.json"  # (replaced at once: a write_text seen half done,
            bad.write_text("{not json")  # empty, was a second problem of its own)
            bad.replace(manifest)
            polls(5)
            manifest.unlink()
            polls(5)
        finally:
            srv.stop_watch()
    said = [r.getMessage() for r in caplog.records]
    assert sum("manifest is not valid JSON" in m for m in said) == 1, said
    assert sum("manifest.json is gone; still serving v000001" in m for m in said) == 1, said
    assert srv.version == "v000001"


def test_a_registry_restored_with_its_old_mtime_is_said_back_and_a_new_failure_said(
    tmp_path: Path, caplog
) -> None:
    """A QA pass: a manifest truncated (said, counted), then restored with `cp -p` (the old
    mtime and size: taken for the file read before the failure), said nothing; truncated
    again, the same error was not said or counted either."""
    import os
    import shutil
    import time

    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    metrics = Metrics()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, metrics=metrics)
    srv.load_champion()
    manifest, good = tmp_path / "manifest.json", tmp_path.parent / "manifest.bak"
    shutil.copy2(manifest, good)
    get = metrics.registry.get_sample_value

    def failed(n: int) -> None:
        deadline = time.monotonic() + 10
        while get("fds_model_swaps_total", {"result": "poll_failed"}) != n:
            assert time.monotonic() < deadline, f"not {n} poll failures"
            time.sleep(0.01)

    def cut() -> None:
        with open(manifest, "r+") as f:
            f.truncate(20)

    with caplog.at_level("INFO", logger="fds.models"):
        srv.start_watch(every=0.005)
        try:
            cut()
            failed(1)
            shutil.copy2(good, manifest)  # (cp -p: the old mtime)
            os.utime(manifest, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns))
            deadline = time.monotonic() + 10
            while "readable again" not in caplog.text:
                assert time.monotonic() < deadline, "the restore was not seen"
                time.sleep(0.01)
            cut()
            failed(2)
        finally:
            srv.stop_watch()
    assert srv.version == "v000001"


def test_a_passing_failure_to_read_the_registry_is_read_again(tmp_path: Path) -> None:
    """A review: a read that failed for a passing cause (EMFILE, an NFS hiccup) at the
    manifest's change was not tried again until the next change: the promotion it carried
    was missed."""
    import errno
    import time

    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    srv.load_champion()
    real, failed = reg.manifest, []

    def once() -> dict[str, Any]:  # (the watcher's first read after the change fails)
        if not failed and threading.current_thread().name == "fds-model-watch":
            failed.append(1)
            raise OSError(errno.EMFILE, "Too many open files")
        return real()

    srv.start_watch(every=0.005)
    try:
        reg.manifest = once  # type: ignore[method-assign]
        reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
        deadline = time.monotonic() + 10
        while srv._pending is None and srv.version != "v000002":
            assert time.monotonic() < deadline, "the promotion was missed"
            time.sleep(0.01)
    finally:
        srv.stop_watch()
    assert failed


def test_a_version_made_by_another_spec_is_not_served(tmp_path: Path, caplog) -> None:
    """A QA pass: a scorer of spec `tree` served the versions a trainer of spec `nogate`
    published to the registry it shared, without a word, feeding them its own spec's inputs;
    and it undid its own spec's legit sampling, not the one the version learned at."""
    reg = Registry(tmp_path)
    reg.publish(FeatureModel("amount"), spec={"name": "nogate"})
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    with caplog.at_level("ERROR", logger="fds.models"):
        assert srv.load_champion() is None  # at start
        reg.publish(FeatureModel("amount"), spec={"name": "default", "inputs": {"rules": False}})
        assert srv.poll() is None and srv.poll() is None  # running
    assert "model v000001 of" in caplog.text and "made by spec 'nogate' with name" in caplog.text
    assert "inputs.rules False, not 'default' with 'score'" in caplog.text
    assert caplog.text.count("model v000002 of") == 1  # said once
    assert reg.entry("v000002")["status"] != "rejected"  # good for its own spec's scorers
    # a version learned at another legit sampling rate (a trainer restarted with it) is
    # served, its scores corrected by its own rate
    tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 0.5}
    for rate, want in ((1.0, 0.5), (0.2, 0.5 * 0.2 / (0.5 * 0.2 + 0.5))):  # (spec's: 0.05)
        spec = {"name": "default", "learn": {"legit_sample_rate": rate}}
        ours = reg.publish(FeatureModel("amount"), spec=spec)["version"]
        assert srv.poll() == ours
        srv.install_pending()
        assert abs(srv.score(tx, {})[0] - want) < 1e-12


@pytest.mark.parametrize("at_start", [False, True])
def test_a_champion_whose_file_failed_its_check_is_served_once_the_file_is_restored(
    tmp_path: Path, at_start: bool
) -> None:
    """A QA leftover: a champion whose artifact failed its sha256 check was never tried again
    (only a missing file was), so restoring the file from a backup needed a restart. Also
    when it failed as the scorer started (a QA pass: its earlier champion stood in for good)."""
    reg = Registry(tmp_path)
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, auto_promote=False)
    eng = Engine(model=srv)
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    if at_start:
        reg.promote("v000001")
    else:
        assert srv.poll() == "v000001"
        srv.install_pending()
    reg.publish(FeatureModel("amount"), spec={"name": "default"})
    good = reg.artifact("v000002").read_bytes()
    reg.artifact("v000002").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # damaged
    reg.promote("v000002")
    if at_start:  # (the scorer starts now: its earlier champion stands in)
        assert srv.load_champion() == "v000001" and srv.stats["swaps_rejected"] == 1
    srv.start_watch(every=0.01)
    tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 5.0}

    def deciding_until(done: Any) -> None:  # (the hot path installs what the watcher took)
        deadline = time.monotonic() + 30
        while not done() and time.monotonic() < deadline:
            eng.decide(tx)
            time.sleep(0.005)

    try:
        deciding_until(lambda: srv.stats["swaps_rejected"])
        assert srv.stats["swaps_rejected"] == 1 and srv.version == "v000001"
        time.sleep(0.05)  # (a file system's timestamps may be that coarse)
        # restored from a backup, by rename (written in place, the watcher may catch it half
        # written and reject it once more before the whole file: flaky in a full run)
        restored = tmp_path / "restored.pkl"
        restored.write_bytes(good)
        restored.replace(reg.artifact("v000002"))
        deciding_until(lambda: srv.version == "v000002")
        assert srv.version == "v000002" and srv.stats["swaps_rejected"] == 1
    finally:
        srv.stop_watch()


def test_a_registry_begun_again_is_said_once_and_counted_not_ignored(
    tmp_path: Path, caplog
) -> None:
    """A QA pass: the registry deleted and its numbering begun again (v000001 after v000003),
    a running scorer ignored the new versions without a word; one that had loaded its champion
    at start would have served the renumbered v000001 as newer."""
    import shutil

    reg = Registry(tmp_path / "reg")
    for _ in range(3):
        reg.publish(FeatureModel("amount"), spec={"name": "default"})
    reg.promote("v000003")
    metrics = Metrics()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, metrics=metrics)
    assert srv.load_champion() == "v000003"
    shutil.rmtree(tmp_path / "reg")
    reg = Registry(tmp_path / "reg")
    for _ in range(2):
        reg.publish(FeatureModel("amount"), spec={"name": "default"})
        assert srv.poll() is None  # not served: v000001 is no newer than v000003
    assert srv.version == "v000003"
    said = [r.getMessage() for r in caplog.records if "went backwards" in r.getMessage()]
    assert len(said) == 1  # once, not at each version or poll
    assert str(tmp_path / "reg") in said[0] and "v000003" in said[0] and "restore" in said[0]
    get = metrics.registry.get_sample_value
    assert get("fds_model_swaps_total", {"result": "registry_rewound"}) == 1
    for _ in range(2):  # the registry numbers past what was served: served again
        reg.publish(FeatureModel("amount"), spec={"name": "default"})
    assert srv.poll() == "v000004"


def test_a_registry_that_cannot_be_read_is_counted(tmp_path: Path) -> None:
    """A QA pass: a manifest.json made invalid under a running scorer was a warning only;
    fds_model_swaps_total did not move, so no alert could fire."""
    import time

    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("amount"), spec={"name": "default"})["version"])
    metrics = Metrics()
    srv = ModelServer(load_spec("default"), registry=reg, learn=False, metrics=metrics)
    srv.load_champion()
    (tmp_path / "manifest.json").write_text('{"versions": {"v000002": {}}}')  # no "version"
    srv.start_watch(every=0.05)
    try:
        deadline = time.monotonic() + 10
        while (
            metrics.registry.get_sample_value("fds_model_swaps_total", {"result": "poll_failed"})
            != 1
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        srv.stop_watch()
    got = metrics.registry.get_sample_value("fds_model_swaps_total", {"result": "poll_failed"})
    assert got == 1


def test_a_contest_ends_when_a_warm_up_or_a_rejection_passes_its_challenger_by(
    tmp_path: Path,
) -> None:
    """A QA pass of a fleet: the champion set back by hand to a version under its warm-up
    (946 of 1,000 examples learned), the next version replaced it directly, and the contest
    of an older challenger went on: every newer version waited in the queue (10 published,
    none served or contested for 8 min); a second pass: the challenger of a running contest
    (or the one queued) was contested against that champion, which the fleet served for good.
    A champion set under its warm-up is replaced by the challenger at once, as by a version
    published after it. And a challenger rejected in the registry (its line rolled back) kept
    its contest until a label was judged here: it ends at the next decision."""
    reg = Registry(tmp_path)

    def publish(learned: int) -> str:
        return reg.publish(FeatureModel("amount"), spec={"name": "default"},
                           labels_learned=learned)["version"]  # fmt: skip

    def offered() -> str | None:
        version = srv.poll()
        srv.score({"tx_id": "t", "ts": 1.0, "amount": 5.0}, {})  # the hot path takes it
        return version

    reg.promote(publish(50_000))
    publish(946)  # v2: under its warm-up
    srv = ModelServer(load_spec("default"), registry=reg, learn=False)
    srv.load_champion()
    publish(5_000)
    assert offered() == "v000003" and srv.challenger_version == "v000003"
    assert offered() is None and srv.contest is not None  # (the contest runs)
    reg.promote("v000002", reason="by hand")  # older than the challenger, under its warm-up
    assert offered() == "v000002" and srv.version == "v000003"  # the challenger replaces it
    assert srv.contest is None and srv.challenger_version is None
    assert srv._champion_labels == 5_000
    publish(3_000)
    assert offered() == "v000004" and srv.challenger_version == "v000004"  # contested
    srv._writes.join()
    reg.reject("v000004", "rolled back by hand")
    assert offered() is None  # (the watcher reads the rejection) and the next event ends it
    assert srv.contest is None and srv.challenger_version is None
    publish(4_000)
    assert offered() == "v000005" and srv.challenger_version == "v000005"
    # a warm-up swap ends a contest of an older version (a champion under its warm-up with a
    # contest running: set here as a rollback may leave it)
    srv._champion_labels = 10
    publish(2_000)
    assert offered() == "v000006" and srv.version == "v000006"
    assert srv.contest is None and srv.challenger_version is None
    # a challenger rejected by hand with its champion set back under its warm-up: no warm-up
    # swap to it (a review: the rejected version served until the next poll)
    srv._champion_labels = 50_000
    publish(4_000)
    assert offered() == "v000007" and srv.challenger_version == "v000007"
    srv._writes.join()
    reg.reject("v000007", "by hand")
    reg.promote("v000002", reason="by hand")
    assert offered() == "v000002" and srv.version == "v000002" and srv.contest is None
    # a version queued behind a contest is swapped in, not contested, when the champion is
    # under its warm-up by then
    srv._champion_labels = 10
    srv._queued = ("v000008", FeatureModel("amount"), {"labels_learned": 3_000})
    srv._next_queued()
    assert srv.version == "v000008" and srv.contest is None
