"""Promotion, rejection and rollback decisions on crafted label streams."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from fds.engine import Engine
from fds.metrics import Metrics
from fds.models.champion import BudgetRank, Contest
from fds.models.registry import Registry, make_entry
from fds.models.scorer import ModelServer
from fds.models.spec import parse_spec
from fds.models.trainer import Publication
from tests.models.fakes import Counting, FeatureModel, NaNOn, RaisesOn

DAY = 86400.0
SPEC = parse_spec(
    "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
    "promote:\n  shadow_min_labels: 5\n  alert_budget_per_day: 10\n  warmup_labels: 0\n"
)


def _pub(model: Any, seq: int) -> Publication:
    data = pickle.dumps(model)
    e = make_entry(data, version=f"v{seq:06d}", seq=seq, key=None, spec={"name": "t"})
    return Publication(e["version"], data, e)


class Stream:
    """Feeds transactions (200 a day) and fraud labels to a server through the engine."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.engine = Engine(model=server)
        self.i = 0
        self.versions: list[str | None] = []

    def run(self, n: int, fraud_features: dict[str, float]) -> None:
        for _ in range(n):
            i = self.i
            self.i += 1
            ts = i * DAY / 200
            fraud = i % 10 == 0
            # legit transactions score spread over [0, 0.9); frauds carry the given features
            legit = (i * 0.618) % 0.9
            feats = dict(fraud_features) if fraud else {"f_a": legit, "f_b": legit}
            d = self._decide(i, ts, feats)
            self.versions.append(d["model_version"])
            if fraud:
                self.engine.learn({"tx_id": f"t{i}", "ts": ts + 1, "is_fraud": True})

    def _decide(self, i: int, ts: float, feats: dict[str, float]) -> dict[str, Any]:
        class Plan:
            def compute(self, tx: Any) -> dict[str, Any]:
                return dict(feats)

            def on_label(self, label: Any) -> None:
                return None

        self.engine.features = Plan()
        return self.engine.decide({"tx_id": f"t{i}", "ts": ts, "card_id": "c", "amount": 1.0})


def _server(champion: Any) -> tuple[ModelServer, Stream]:
    srv = ModelServer(SPEC, learn=False)
    s = Stream(srv)
    s.run(50, {"f_a": 1.0, "f_b": 1.0})  # recent traffic for canary and thresholds
    assert srv.offer(_pub(champion, 1))
    assert srv.version == "v000001"
    return srv, s


def test_contest_rules() -> None:
    assert BudgetRank([], 0.1).credit(0.5) == 0.0
    assert BudgetRank([0.2] * 100, 0.1).credit(0.2) < 0.2  # a constant model gains ~nothing
    c = Contest("probation", "v2", "v1", min_labels=2)
    c.add(0.0, 1.0)
    assert c.verdict() is None
    c.add(1.0, 1.0)
    assert c.verdict() == "rollback"


def test_better_challenger_is_promoted_after_shadow_then_confirmed() -> None:
    srv, s = _server(FeatureModel("f_none"))  # a champion that sees nothing
    srv.metrics = m = Metrics()
    assert srv.offer(_pub(FeatureModel("f_a"), 2))
    assert srv.challenger_version == "v000002" and srv.version == "v000001"
    s.run(40, {"f_a": 1.0, "f_b": 1.0})  # 4 frauds: not enough labels yet
    assert srv.version == "v000001" and srv.contest is not None and srv.contest.n > 0  # in shadow
    s.run(20, {"f_a": 1.0, "f_b": 1.0})
    assert srv.version == "v000002"
    assert srv.history[0]["verdict"] == "promote"
    # "champion" is the version serving: the winner's figure (a QA pass: it was the loser's)
    get = m.registry.get_sample_value
    won, lost = (
        srv.history[0]["recall_at_budget_candidate"],
        srv.history[0]["recall_at_budget_incumbent"],
    )
    assert won > lost
    assert get("fds_model_precision", {"model": "champion", "window": "contest"}) == won
    assert get("fds_model_precision", {"model": "challenger", "window": "contest"}) == lost
    # a restart serves the figures of the state until the next verdict (a QA pass: no series
    # for days, FdsModelPrecisionDrop blind meanwhile)
    for served, kept in (("v000002", True), ("v000001", False)):  # (another served: not its)
        again = ModelServer(SPEC, learn=False)
        again.metrics = m2 = Metrics()
        assert again.offer(_pub(FeatureModel("f_a"), int(served[-1])))
        again.load_gate_state(srv.gate_state())
        for model, figure in (("champion", won), ("challenger", lost)):
            sample = {"model": model, "window": "contest"}
            got = m2.registry.get_sample_value("fds_model_precision", sample)
            assert got == (figure if kept else None)
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert srv.history[1]["verdict"] == "confirm" and srv.version == "v000002"
    served = [v for v in s.versions if v]
    assert served == sorted(served)


def test_rollback_sets_the_contest_precision_of_both_versions() -> None:
    srv, s = _server(FeatureModel("f_a"))
    srv.metrics = m = Metrics()
    srv.offer(_pub(FeatureModel("f_b"), 2))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    s.run(60, {"f_a": 1.0, "f_b": 0.0})
    assert srv.stats["rollback"] == 1

    def got(model: str) -> float | None:
        return m.registry.get_sample_value(
            "fds_model_precision", {"model": model, "window": "contest"}
        )

    # "champion": the version serving after the verdict, the predecessor a rollback returns to
    assert got("champion") == srv.history[-1]["recall_at_budget_predecessor"]
    assert got("challenger") == srv.history[-1]["recall_at_budget_on_probation"]


def test_worse_challenger_is_rejected() -> None:
    srv, s = _server(FeatureModel("f_a"))
    srv.metrics = m = Metrics()  # as in replay and `fds run`: a lost contest raised KeyError
    srv.offer(_pub(FeatureModel("f_none"), 2))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert [h["verdict"] for h in srv.history] == ["reject"]
    assert srv.version == "v000001" and srv.challenger is None
    assert srv.stats["reject"] == 1
    got = m.registry.get_sample_value(
        "fds_model_precision", {"model": "challenger", "window": "contest"}
    )
    assert got == srv.history[0]["recall_at_budget_candidate"]


def test_promoted_model_that_gets_worse_is_rolled_back() -> None:
    srv, s = _server(FeatureModel("f_a"))
    srv.offer(_pub(FeatureModel("f_b"), 2))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # both catch every fraud: tie -> promote
    assert srv.version == "v000002"
    s.run(60, {"f_a": 1.0, "f_b": 0.0})  # fraud changes: only the predecessor still catches it
    assert [h["verdict"] for h in srv.history] == ["promote", "rollback"]
    assert srv.version == "v000001" and srv.stats["rollback"] == 1
    # named for what they are (the log line called the version returned to "candidate")
    rb = srv.history[1]
    assert (rb["on_probation"], rb["predecessor"]) == ("v000002", "v000001")
    assert rb["recall_at_budget_on_probation"] < rb["recall_at_budget_predecessor"]
    assert "candidate" not in rb and "incumbent" not in rb


def test_newest_queued_version_gets_its_turn() -> None:
    srv, s = _server(FeatureModel("f_a"))
    srv.offer(_pub(FeatureModel("f_none"), 2))
    srv.offer(_pub(FeatureModel("f_none"), 3))
    srv.offer(_pub(FeatureModel("f_a"), 4))  # replaces v3 in the queue
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert srv.challenger_version == "v000004"


def test_warm_up_versions_replace_a_cold_champion_directly() -> None:
    spec = parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        "promote:\n  shadow_min_labels: 5\n  warmup_labels: 100\n"
    )
    srv = ModelServer(spec, learn=False)
    Stream(srv).run(20, {"f_a": 1.0})
    for seq, labels in ((1, 10), (2, 150), (3, 200)):
        data = pickle.dumps(FeatureModel("f_a"))
        e = make_entry(
            data, version=f"v{seq:06d}", seq=seq, key=None, spec={}, labels_learned=labels
        )
        srv.offer(Publication(e["version"], data, e))
    # v1 and v2 went straight in (champion still cold); v3 must win a contest against v2
    assert srv.version == "v000002" and srv.challenger_version == "v000003"


def test_probation_and_next_shadow_run_together() -> None:
    srv, s = _server(FeatureModel("f_none"))
    srv.offer(_pub(FeatureModel("f_a"), 2))
    srv.offer(_pub(FeatureModel("f_b"), 3))  # queued while v2 is in shadow
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert srv.version == "v000002"
    assert srv.probation is not None or srv.history[-1]["verdict"] == "confirm"
    assert srv.challenger_version == "v000003" or "v000003" in {
        h.get("candidate") for h in srv.history
    }


def _registered(reg: Registry, model: Any, rate: float | None = None) -> Publication:
    learn = {"learn": {"legit_sample_rate": rate}} if rate is not None else {}
    e = reg.publish(model, spec={"name": "t", **learn})
    data, entry = reg.load_bytes(e["version"])
    return Publication(e["version"], data, entry)


def _registry_server(tmp_path: Any, champion: Any) -> tuple[ModelServer, Stream, Registry]:
    reg = Registry(tmp_path)
    srv = ModelServer(SPEC, learn=False, registry=reg)
    s = Stream(srv)
    s.run(50, {"f_a": 1.0, "f_b": 1.0})
    assert srv.offer(_registered(reg, champion)) and reg.champion() == "v000001"
    return srv, s, reg


def test_a_restart_before_any_champion_serves_the_version_served_not_its_challenger(
    tmp_path,
) -> None:
    """A QA pass: with no champion chosen yet (a scorer serving the newest version), the newer
    version in shadow against it was served after a restart, unjudged, as "the newest
    version": the state's served version is served again and the contest resumed."""
    reg = Registry(tmp_path)
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    srv = ModelServer(SPEC, learn=False, registry=reg)
    assert srv.load_champion() == "v000001" and reg.champion() is None
    s = Stream(srv)
    s.run(50, {"f_a": 1.0, "f_b": 1.0})
    reg.publish(FeatureModel("f_b"), spec={"name": "t"})
    assert srv.poll() == "v000002"
    srv.install_pending()
    assert (srv.version, srv.challenger_version) == ("v000001", "v000002")
    s.run(20, {"f_a": 1.0, "f_b": 1.0})
    state = srv.gate_state()
    assert srv.contest is not None and (judged := srv.contest.n) > 0
    again = ModelServer(SPEC, learn=False, registry=reg)
    assert again.load_champion() == "v000002"  # the newest, before the state is read ...
    again.load_gate_state(state)
    assert again.version == "v000001"  # ... then the one served
    assert again.poll() == "v000002"
    again.install_pending()
    assert again.challenger_version == "v000002" and again.contest is not None
    assert again.contest.n == judged  # the same contest, resumed


def test_a_lost_contest_is_recorded_and_the_loser_never_offered_again(tmp_path) -> None:
    """Before, the loser stayed 'published': a restarted scorer took it as a challenger again."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_none")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert srv.stats["reject"] == 1 and reg.entry("v000002")["status"] == "rejected"
    restarted = ModelServer(SPEC, learn=False, registry=reg)
    assert restarted.load_champion() == "v000001" and restarted.poll() is None


def test_an_automatic_rollback_rejects_the_version_that_lost_its_probation(tmp_path) -> None:
    """Before, it was recorded as a plain promotion: the loser 'retired', so a later manual
    rollback could make it champion again."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_b")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # tie: promoted, on probation
    assert reg.champion() == "v000002"
    s.run(60, {"f_a": 1.0, "f_b": 0.0})  # only the predecessor still catches fraud
    assert srv.stats["rollback"] == 1 and reg.champion() == "v000001"
    assert reg.entry("v000002")["status"] == "rejected"


@pytest.mark.parametrize(("watch", "skipped"), [(False, False), (True, False), (True, True)])
def test_a_rollback_ends_the_contest_of_a_version_learned_from_the_rolled_back_one(
    tmp_path, watch, skipped
) -> None:
    """The registry rejects the line learned from a rolled-back version; the scorer saw that
    at its watcher's next poll (a replay, at none): a contest ending in between promoted such
    a version here, which the registry refused (a review). ``skipped``: the challenger learned
    from a version this scorer never took (the watcher offers the newest only: a review)."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    if watch:
        srv.start_watch(every=3600)  # (no poll in this test)
    srv.offer(_registered(reg, FeatureModel("f_b")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # tie: v2 promoted, on probation
    assert srv.version == "v000002" and srv.probation is not None
    parent = "v000002"
    if skipped:  # v3, learned from v2, published and never offered here
        parent = reg.publish(FeatureModel("f_a"), spec={"name": "t"}, parent=parent)["version"]
    e = reg.publish(FeatureModel("f_a"), spec={"name": "t"}, parent=parent)
    srv.offer(Publication(e["version"], *reg.load_bytes(e["version"])))
    line = e["version"]
    assert srv.challenger_version == line
    if watch:
        srv._writes.join()  # (its shadow mark written, the manifest read after it)
    s.run(40, {"f_a": 1.0, "f_b": 0.0})  # v2 worse than v1: rolled back
    assert srv.stats["rollback"] == 1 and srv.version == "v000001"
    # its contest ended with the rollback, before the registry's write of it (a QA pass: the
    # labels of the next moment promoted v3, which then scored 111 decisions): the next
    # labels do not promote it, and the next version does not wait for its verdict
    assert srv.challenger is None and srv.contest is None
    late = reg.publish(FeatureModel("f_a"), spec={"name": "t"}, parent=line)  # prepared before
    srv.offer(Publication(late["version"], *reg.load_bytes(late["version"])))  # the write
    assert srv.challenger is None  # of the line too: not contested (a review)
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert srv.version == "v000001" and line not in s.versions
    if watch:
        srv._writes.join()
    assert reg.entry(line)["status"] == "rejected"
    e = reg.publish(FeatureModel("f_a"), spec={"name": "t"}, parent="v000001")
    assert srv.offer(Publication(e["version"], *reg.load_bytes(e["version"])))
    assert srv.challenger_version == e["version"]
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # it ties with v1: promoted
    assert srv.version == e["version"]
    if watch:
        srv._writes.join()
    assert reg.champion() == e["version"]
    if watch:
        srv.close()


def test_in_a_replay_the_trainer_goes_on_from_the_champion_a_rollback_restored() -> None:
    """In memory (a replay) the trainer learned on from the rolled-back version: its next
    versions carried back what was rolled back, and one in its shadow contest could win it;
    `fds train` goes on from the restored champion (follow_rollback), and a replay now too."""
    from fds.models.trainer import Trainer

    class Manual(Trainer):  # publishes when the test says
        def maybe_publish(self, now: float | None = None) -> None:
            return None

    t = Manual(SPEC)
    srv = ModelServer(SPEC, trainer=t)
    s = Stream(srv)
    s.run(50, {"f_a": 1.0, "f_b": 1.0})
    t.model = FeatureModel("f_a")
    assert srv.offer(t.publish()) and srv.version == "v000001"
    t.model = FeatureModel("f_b")
    srv.offer(t.publish())
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # tie: v2 promoted, on probation
    assert srv.version == "v000002" and srv.probation is not None
    t.model = FeatureModel("f_a")  # (learned on from v2)
    srv.offer(t.publish())
    assert srv.challenger_version == "v000003"
    s.run(40, {"f_a": 1.0, "f_b": 0.0})  # v2 worse than v1: rolled back
    assert srv.stats["rollback"] == 1 and srv.version == "v000001"
    assert t.parent == "v000001" and t.model.feature == "f_a"  # v1's model, its own copy
    assert t.line_from("v000002") == []
    assert srv.challenger is None  # v3's contest ended with the rollback
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # v3 ties with v1: it would have been promoted
    assert srv.version == "v000001" and srv.challenger is None
    assert t.publish().entry["parent"] == "v000001"
    assert srv.offer(t.publish()) and srv.challenger_version == "v000005"  # a new contest


def test_a_rolled_back_champion_is_served_with_the_sampling_rate_it_learned_at(tmp_path):
    """A review: the rollback undid the spec's legit sampling rate, not the version's own."""
    reg = Registry(tmp_path)
    srv = ModelServer(SPEC, learn=False, registry=reg)
    s = Stream(srv)
    s.run(50, {"f_a": 1.0, "f_b": 1.0})
    assert srv.offer(_registered(reg, FeatureModel("f_a"), rate=1.0))
    assert srv._rate == 1.0
    srv.offer(_registered(reg, FeatureModel("f_b")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # tie: promoted, on probation
    assert srv.version == "v000002" and srv._rate == SPEC.learn.legit_sample_rate
    s.run(60, {"f_a": 1.0, "f_b": 0.0})  # only the predecessor still catches fraud
    assert srv.stats["rollback"] == 1 and srv.version == "v000001" and srv._rate == 1.0


def test_a_challenger_survives_retention_while_its_contest_runs(tmp_path) -> None:
    """retain=3 and four versions published during the contest: the challenger was deleted,
    its promotion failed in the registry, and the scorer went back to the old champion."""
    reg = Registry(tmp_path, retain=3)
    srv = ModelServer(SPEC, learn=False, registry=reg)
    s = Stream(srv)
    s.run(50, {"f_a": 1.0, "f_b": 1.0})
    assert srv.offer(_registered(reg, FeatureModel("f_none")))
    assert srv.offer(_registered(reg, FeatureModel("f_a")))  # v2 in shadow
    assert reg.entry("v000002")["status"] == "shadow"
    for _ in range(4):
        reg.publish(FeatureModel("f_none"), spec={"name": "t"})
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # v2 catches the frauds: promoted
    assert srv.version == "v000002" and reg.champion() == "v000002"
    srv.poll()
    assert srv.version == "v000002"


def test_a_challenger_promoted_by_hand_ends_its_contest(tmp_path) -> None:
    """The contest went on against itself and could reject the champion in the registry."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_none")))
    assert srv.challenger_version == "v000002"
    reg.promote("v000002")  # fds models promote, while it is in shadow
    assert srv.poll() == "v000002"
    srv.install_pending()
    assert srv.version == "v000002" and srv.challenger is None and srv.contest is None
    s.run(60, {"f_a": 1.0, "f_b": 1.0})
    assert reg.champion() == "v000002" and reg.entry("v000002")["status"] == "champion"


def test_a_champion_promoted_by_hand_is_not_judged_by_the_probation_it_ended(tmp_path) -> None:
    """An operator promotes v3 while v2 is on probation against v1: the stale probation went on
    with v3 as 'champion', rolled it back to v1 and rejected v3 in the registry."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_b")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # tie: v2 promoted, on probation against v1
    assert srv.version == "v000002" and srv.probation is not None
    reg.publish(FeatureModel("f_none"), spec={"name": "t"})
    reg.promote("v000003", reason="by hand")  # fds models promote
    assert srv.poll() == "v000003"
    srv.install_pending()
    assert srv.version == "v000003" and srv.probation is None
    s.run(60, {"f_a": 1.0, "f_b": 0.0})
    assert srv.stats["rollback"] == 0 and reg.champion() == "v000003"
    assert reg.entry("v000003")["status"] == "champion"


def test_a_contest_of_a_version_older_than_a_champion_set_by_hand_ends(tmp_path) -> None:
    """QA of a fleet: a scorer's contest of v69 went on against each champion the fleet
    followed (v97, then v102), then expired with no label judged and promoted v69 over them
    all. A challenger older than the champion the registry sets ends with its contest (a
    newer one goes on against it)."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_b")))
    assert srv.contest is not None and srv.challenger_version == "v000002"
    reg.publish(FeatureModel("f_none"), spec={"name": "t"})
    reg.promote("v000003", reason="the trainer's registry (models topic)")
    assert srv.poll() == "v000003"
    srv.install_pending()
    assert srv.version == "v000003" and srv.contest is None and srv.challenger is None
    s.run(60, {"f_a": 1.0, "f_b": 1.0, "f_none": 0.0})
    assert reg.champion() == "v000003" and srv.stats["promote"] == 0
    newer = _registered(reg, FeatureModel("f_b"))  # v000004: contested against v000003
    srv.offer(newer)
    assert srv.contest is not None and srv.contest.incumbent == "v000003"


def test_a_queued_version_promoted_by_hand_is_not_contested_against_itself(tmp_path) -> None:
    """A QA pass: `fds models promote v43` while v30 was in its contest and v43 waited: the
    scorer then ran v43 in shadow against v43, swapped it for itself and put it on probation
    against itself, while the next version waited."""
    srv, _s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_none")))  # v2 in its contest
    srv.offer(_registered(reg, FeatureModel("f_b")))  # v3 waits
    assert srv.challenger_version == "v000002" and srv._queued is not None
    reg.promote("v000003")
    assert srv.poll() == "v000003"
    srv.install_pending()
    assert srv.version == "v000003" and srv.contest is None and srv._queued is None
    assert srv.challenger is None and srv.stats["swaps"] == 2


def test_a_version_learned_from_one_rolled_back_by_hand_is_not_promoted(tmp_path) -> None:
    """A QA pass: v43 promoted by hand, v44 learned on from it in its contest, v43 rolled back
    by hand: the contest went on against v23, and 12 s later v44 (a tie) was promoted."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    reg.promote("v000002")  # by hand
    assert srv.poll() == "v000002"
    srv.install_pending()
    data, entry = reg.load_bytes(
        reg.publish(FeatureModel("f_b"), spec={"name": "t"}, parent="v000002")["version"]
    )
    srv.offer(Publication("v000003", data, entry))
    assert srv.challenger_version == "v000003"
    reg.rollback()  # v2 rejected, and v3 learned from it
    assert srv.poll() == "v000001"
    srv.install_pending()
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # a tie: promoted before
    assert srv.version == "v000001" and srv.stats["promote"] == 0 and srv.contest is None
    assert reg.champion() == "v000001" and reg.entry("v000003")["status"] == "rejected"


def test_the_watcher_does_not_undo_a_promotion_whose_write_is_still_pending(tmp_path) -> None:
    """Watch mode writes verdicts off the hot path. The watcher read the manifest before the
    promotion landed, took the old champion pointer for a change made by hand and swapped the
    contest's loser back in."""
    import threading

    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_none"))
    srv.start_watch(every=3600)  # watch mode; the test calls poll() itself
    release = threading.Event()
    promote = reg.promote

    def slow_promote(*args: Any, **kw: Any) -> Any:
        release.wait(10)  # a registry lock held by `fds train`, a slow fsync
        return promote(*args, **kw)

    reg.promote = slow_promote  # type: ignore[method-assign]
    try:
        srv.offer(_registered(reg, FeatureModel("f_a")))
        s.run(60, {"f_a": 1.0, "f_b": 1.0})  # v2 wins its contest; the write waits
        assert srv.version == "v000002" and reg.champion() == "v000001"
        reg.publish(FeatureModel("f_none"), spec={"name": "t"})  # the manifest changes
        srv.poll()
        srv.install_pending()
        assert srv.version == "v000002"
        release.set()
        srv._writes.join()
        assert reg.champion() == "v000002"
    finally:
        release.set()
        srv.stop_watch()


def test_the_watcher_drops_a_change_by_hand_read_before_our_own_promotion(tmp_path) -> None:
    """Found by a review: the watcher checked that no verdict was being written, then read the
    manifest; the decision thread promoted its challenger in between, and the manifest's old
    champion was taken for a change by hand: the loser served again, the probation lost."""
    import threading

    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_none"))
    srv.start_watch(every=3600)  # watch mode; the test calls poll() itself
    try:
        srv.offer(_registered(reg, FeatureModel("f_a")))
        srv._writes.join()
        manifest = reg.manifest

        def read_while_promoted() -> Any:  # the decision thread runs during the file read
            m = manifest()
            if threading.current_thread().name == "poller" and srv.contest is not None:
                s.run(60, {"f_a": 1.0, "f_b": 1.0})  # v2 wins its contest
            return m

        reg.manifest = read_while_promoted  # type: ignore[method-assign]
        poller = threading.Thread(target=srv.poll, name="poller")
        poller.start()
        poller.join()
        reg.manifest = manifest  # type: ignore[method-assign]
        srv.install_pending()
        assert srv.version == "v000002" and srv.probation is not None
        srv._writes.join()
        assert reg.champion() == "v000002" and srv.poll() is None
    finally:
        srv.stop_watch()


def test_a_challenger_scoring_nan_in_shadow_is_rejected_not_promoted(tmp_path) -> None:
    """Found by a review: only a challenger that raised was dropped; one that scored NaN on
    some live inputs was ranked on the others, won, and then each such decision fell back
    to the rules (the model guard counting failures)."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    assert srv.offer(_registered(reg, NaNOn("f_a")))  # the canary's inputs have no odd one
    s._decide(s.i, s.i * DAY / 200, {"f_a": 0.5, "odd": 1.0})
    assert srv.challenger is None and srv.stats["reject"] == 1
    assert reg.entry("v000002")["status"] == "rejected" and srv.version == "v000001"


def test_a_canary_that_raises_here_does_not_reject_the_version_for_every_scorer(tmp_path):
    """Found by a review: a version whose scoring raised in the canary (a library of this
    machine: a River version mismatch) was rejected in the shared registry; it is retried."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    s._decide(s.i, s.i * DAY / 200, {"f_a": 0.5, "boom": 1.0})  # among the canary's inputs
    reg.publish(RaisesOn("f_a"), spec={"name": "t"})
    assert srv.poll() is None and srv.stats["swaps_rejected"] == 1
    assert reg.entry("v000002")["status"] == "published" and srv._retry_pending()


@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("where", ["here", "the trainer's registry"])
def test_a_scorer_started_after_a_champion_set_by_hand_keeps_it(tmp_path, labels, where):
    """A QA pass: v1 and v2 published, v2 served as the newest, `fds models promote v1`: the
    running scorers served v1, but one started later served v2 as a new version (with labels
    its warm-up wrote v2 back as champion, for every scorer). A version published after it is
    new. So for a choice made in a trainer's registry, followed from its lifecycle."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    if where == "here":
        reg.promote("v000001", reason="manual (fds models promote)")
    else:
        reg.follow("v000001", [], "mark", "the trainer's registry (models topic)", passed_over=2)
    srv = ModelServer(SPEC, learn=False, registry=reg)
    assert srv.load_champion() == "v000001"
    if not labels:
        srv.without_labels()
    assert srv.poll() is None and srv.version == reg.champion() == "v000001"
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    assert srv.poll() == "v000003"


def test_a_scorer_restarted_after_a_rollback_it_followed_serves_the_restored_champion(tmp_path):
    """A QA pass of a fleet: stopped while v2 served, the trainer's registry rolled v2 back; the
    restarted scorer followed that in its models feed's catch-up and still served v2 for its
    first events, until the watcher's first look 2-5 s later."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    reg.promote("v000001")
    reg.promote("v000002")
    srv = ModelServer(SPEC, learn=False, registry=reg)
    assert srv.load_champion() == "v000002"
    assert srv.load_champion_if_changed() == "v000002"  # (unchanged: not loaded again)
    reg.follow("v000001", ["v000002"], "mark", "the trainer's registry (models topic)")
    assert srv.load_champion_if_changed() == "v000001" and srv.version == "v000001"
    # a stand-in for a champion that cannot be loaded is not refused a second time (a review)
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    reg.promote("v000003")
    (tmp_path / "v000003.pkl").write_bytes(b"not the artifact")
    stand_in = ModelServer(SPEC, learn=False, registry=reg)
    assert stand_in.load_champion() == "v000001" and stand_in.stats["swaps_rejected"] == 1
    assert stand_in.load_champion_if_changed() == "v000001"
    assert stand_in.stats["swaps_rejected"] == 1


def test_a_scorer_without_labels_never_goes_back_to_the_registry_champion(tmp_path) -> None:
    """Found by a review: serving the newest version (no labels here) set the scorer's idea of
    the champion pointer to it, so at the next publication the registry's unchanged pointer
    looked like a change by hand: every other version served was the old champion."""
    reg = Registry(tmp_path)
    reg.promote(reg.publish(FeatureModel("f_a"), spec={"name": "t"})["version"])
    srv = ModelServer(SPEC, learn=False, registry=reg)
    srv.load_champion()
    srv.without_labels()
    served = [srv.version]
    for _ in range(4):
        reg.publish(FeatureModel("f_a"), spec={"name": "t"})  # fds train publishes
        srv.poll()
        srv.install_pending()
        served.append(srv.version)
    assert served == [f"v{i:06d}" for i in range(1, 6)]
    assert reg.champion() == "v000001"  # no verdict of a scorer that judges nothing
    reg.promote("v000003")  # a change by hand is still taken
    srv.poll()
    srv.install_pending()
    assert srv.version == "v000003"
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})  # v6, served as the newest
    srv.poll()
    srv.install_pending()
    reg.promote("v000006")  # by hand, the version served already (nothing to do) ...
    assert srv.poll() is None and srv.version == "v000006"
    reg.promote("v000003")  # ... and back to the one before: a change by hand too (a review
    srv.poll()  # found it ignored: the pointer seen was still v3's)
    srv.install_pending()
    assert srv.version == "v000003"


def test_a_scorer_without_labels_starts_on_the_newest_good_version(tmp_path) -> None:
    """A QA pass: a registry no scorer with labels judged has no champion; when its newest
    version was bad (a flipped byte) or another spec's, a restarted scorer (or a new replica)
    decided with the rules alone until the next publish, hours later, good versions there."""
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    reg.publish(FeatureModel("f_a"), spec={"name": "other"})  # another model's, newest
    bad = reg.publish(FeatureModel("f_a"), spec={"name": "t"})["version"]
    path = reg.artifact(bad)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    srv = ModelServer(SPEC, learn=False, registry=reg)
    srv.without_labels()
    assert srv.load_champion() == "v000003" and reg.entry(bad)["status"] == "rejected"
    again = ModelServer(SPEC, learn=False, registry=reg)  # (rejected now: skipped at once)
    again.without_labels()
    assert again.load_champion() == "v000003"


def test_a_challenger_that_raises_on_a_label_is_dropped_not_raised(tmp_path) -> None:
    """Scoring a labelled input with the challenger raised out of on_label, which stops
    `fds run` (the decision path already dropped such a challenger)."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    i = s.i
    s.i += 1
    s._decide(i, i * DAY / 200, {"f_a": 1.0, "boom": 1.0})  # decided before the challenger
    s.run(100, {"f_a": 1.0})  # the canary's recent inputs: none with boom
    assert srv.offer(_registered(reg, RaisesOn("f_a")))
    s.engine.learn({"tx_id": f"t{i}", "ts": i * DAY / 200 + 1, "is_fraud": True})
    assert srv.challenger is None and srv.stats["reject"] == 1
    assert srv.version == "v000001"


def test_no_input_is_kept_when_no_label_can_reach_the_scorer(tmp_path) -> None:
    srv, s, _reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.without_labels()
    s.run(50, {"f_a": 1.0})
    assert len(srv._inputs) == 0


def test_a_restart_keeps_the_probation_and_can_still_roll_back(tmp_path) -> None:
    """The engine's checkpoint held only the maturity gate: a restarted scorer forgot that its
    champion was on probation (no rollback possible any more) and restarted contests from 0."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_b")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # tie: v2 promoted, on probation against v1
    s.run(20, {"f_a": 1.0, "f_b": 0.0})  # part of the probation: v2 now misses the frauds
    assert srv.probation is not None and 0 < srv.probation.n < srv.probation.min_labels
    state = pickle.loads(pickle.dumps(srv.gate_state()))  # through the engine's checkpoint

    restarted = ModelServer(SPEC, learn=False, registry=reg)
    assert restarted.load_champion() == "v000002"
    restarted.load_gate_state(state)
    assert restarted.probation == srv.probation and restarted.predecessor_version == "v000001"
    s2 = Stream(restarted)
    s2.i = s.i
    s2.run(50, {"f_a": 1.0, "f_b": 0.0})
    assert restarted.stats["rollback"] == 1 and reg.champion() == "v000001"


def test_a_restart_resumes_the_contest_of_the_challenger_offered_again(tmp_path) -> None:
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_none"))
    srv.offer(_registered(reg, FeatureModel("f_a")))
    s.run(30, {"f_a": 1.0, "f_b": 1.0})  # 3 of the 5 labels a verdict needs
    state = srv.gate_state()
    assert state["contest"]["n"] == 3

    restarted = ModelServer(SPEC, learn=False, registry=reg)
    assert restarted.load_champion() == "v000001"
    restarted.load_gate_state(state)
    restarted.load_gate_state(ModelServer(SPEC, learn=False).gate_state())  # a rebuild's
    assert restarted.poll() == "v000002"  # the watcher offers the challenger again
    restarted.install_pending()
    assert restarted.contest is not None and restarted.contest.n == 3


def test_a_probation_whose_predecessor_is_gone_is_dropped_not_raised(tmp_path) -> None:
    """Retention deletes old versions: loading the predecessor raised ConfigError out of the
    engine's restore, which then discarded the whole checkpoint."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_b")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # v2 on probation against v1
    state = {**srv.gate_state(), "predecessor": "v000009"}  # no such version any more
    restarted = ModelServer(SPEC, learn=False, registry=reg)
    restarted.load_champion()
    restarted.load_gate_state(state)
    assert restarted.probation is None and restarted.acting == srv.acting


def test_closing_waits_for_the_verdicts_queued_for_the_registry(tmp_path) -> None:
    """close() stopped the watcher only: a promotion still queued was lost with the process,
    and a restarted scorer served the loser again."""
    import time

    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_none"))
    srv.start_watch(every=3600)
    promote = reg.promote

    def slow_promote(*args: Any, **kw: Any) -> Any:
        time.sleep(0.3)
        return promote(*args, **kw)

    reg.promote = slow_promote  # type: ignore[method-assign]
    srv.offer(_registered(reg, FeatureModel("f_a")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # v2 wins: its promotion is queued
    srv.close()
    assert reg.champion() == "v000002"


def test_a_champion_that_raises_on_a_label_does_not_cost_the_challenger_its_contest(
    tmp_path,
) -> None:
    srv, s, reg = _registry_server(tmp_path, RaisesOn("f_a"))
    i = s.i
    s.i += 1
    tx = {"tx_id": f"t{i}", "ts": i * DAY / 200, "card_id": "c", "amount": 1.0}
    srv.on_decision(tx, {"features": {"f_a": 1.0, "boom": 1.0}})  # (the model guard served it)
    s.run(100, {"f_a": 1.0})
    assert srv.offer(_registered(reg, FeatureModel("f_a")))
    s.engine.learn({"tx_id": f"t{i}", "ts": i * DAY / 200 + 1, "is_fraud": True})
    assert srv.challenger_version == "v000002" and srv.stats["reject"] == 0


def test_re_ranking_recent_traffic_reuses_the_scores_given_on_the_decision_path(tmp_path):
    """Every threshold refresh re-scored 2,048 recent inputs with both models on the decision
    thread (~0.3 s per model for a forest). The champion, and a challenger in shadow, already
    scored them when they were decided."""
    from fds.models.scorer import RANK_STRIDE, _p, _scores

    srv, s, reg = _registry_server(tmp_path, Counting("f_a"))  # 50 decided before the contest
    srv.offer(_registered(reg, Counting("f_b")))
    s.run(200, {"f_a": 1.0, "f_b": 1.0})
    assert srv.contest is not None or srv.history  # the contest ran on these labels
    for model, version in ((srv.champion, srv.version), (srv.challenger, srv.challenger_version)):
        if model is None:
            continue
        Counting.calls = 0
        recent = list(srv._recent)[::RANK_STRIDE]
        got = _scores(model, version, recent, list(srv._recent_scored)[::RANK_STRIDE])
        calls = Counting.calls
        assert got == [_p(model, x) for x in list(srv._recent)[::RANK_STRIDE]]
        # re-scored: at most the 50 inputs decided before the contest (every RANK_STRIDE-th);
        # all 250 before (125 at that stride)
        assert calls <= 50 // RANK_STRIDE < len(got)


def test_a_contest_that_no_label_reaches_ends_after_its_wait(tmp_path) -> None:
    """In `fds run` a label is judged only with the input of one of the last KEEP_SIZE
    decisions: at 1 M decisions a day a label days late finds none, the challenger stayed in
    shadow for good and the model stopped being updated."""
    srv, _s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_b")))
    assert srv.challenger_version == "v000002"
    engine = Engine(model=srv)

    def days(d0: float, d1: float) -> None:  # decisions every hour, no label ever matched
        for h in range(int(d0 * 24), int(d1 * 24)):
            engine.decide({"tx_id": f"h{h}", "ts": h * 3600.0, "card_id": "c", "amount": 1.0})

    days(1, 14)  # the contest started at the first decision after it (~day 0.25)
    assert srv.version == "v000001" and srv.contest is not None
    days(14, 16)
    assert srv.version == "v000002" and srv.stats["expired"] == 1
    assert reg.champion() == "v000002" and srv.probation is not None
    days(16, 31)
    assert srv.probation is None and srv.stats["confirm"] == 1 and srv.version == "v000002"


def test_the_wait_is_a_duration_in_the_spec() -> None:
    import pytest

    from fds.errors import ConfigError

    base = "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\npromote:\n"
    assert parse_spec(base + "  shadow_max_wait: 3d\n").promote.shadow_max_wait == 3 * DAY
    assert parse_spec(base + "  shadow_min_labels: 5\n").promote.shadow_max_wait == 14 * DAY
    with pytest.raises(ConfigError, match="shadow_max_wait: must be a positive duration"):
        parse_spec(base + "  shadow_max_wait: 0\n")


def test_a_gate_whose_window_cannot_fill_opens_on_the_count_after_the_wait() -> None:
    """With a labels topic but no label ever matched (see the test above), the maturity gate's
    window never filled and the model never acted."""
    spec = parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        "gate:\n  min_frauds: 0\n  window: 5\n"
    )
    srv = ModelServer(spec, learn=False)
    engine = Engine(model=srv)
    assert srv.offer(_pub(FeatureModel("f_a"), 1)) and not srv.acting
    for h in range(16 * 24):  # decisions every hour for 16 days, no label
        engine.decide({"tx_id": f"h{h}", "ts": h * 3600.0, "card_id": "c", "amount": 1.0})
    assert srv.acting and srv.gate_state()["starved"]
    engine.decide({"tx_id": "f", "ts": 16 * DAY + 1, "card_id": "c", "amount": 1.0})
    engine.learn({"tx_id": "f", "ts": 16 * DAY + 2, "is_fraud": True})  # the window: 1 of 5
    assert srv.acting  # not closed again by a window that cannot fill


def test_an_expired_contest_is_decided_on_the_labels_it_judged(tmp_path) -> None:
    """Expiry promoted a challenger that had lost every label judged so far."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.offer(_registered(reg, FeatureModel("f_none")))  # catches no fraud
    s.run(30, {"f_a": 1.0, "f_b": 1.0})  # 3 of the 5 labels a verdict needs
    assert srv.contest is not None and srv.contest.n == 3
    for h in range(24, 16 * 24):  # then no label for two weeks
        s.engine.decide({"tx_id": f"h{h}", "ts": h * 3600.0, "card_id": "c", "amount": 1.0})
    assert srv.stats["expired"] == 1 and srv.stats["reject"] == 1
    assert srv.version == "v000001" and reg.entry("v000002")["status"] == "rejected"
    # (its reason said "precision below champion" alone, as if on every label: a QA pass)
    assert reg.entry("v000002")["rejected_because"].startswith("expired: no verdict within")


def test_a_contest_expired_without_a_label_exports_no_precision(tmp_path) -> None:
    """A QA pass: a verdict of no label judged exported precision 0.0 for both models (the
    dashboard's panel dropped to 0 and FdsModelPrecisionDrop fired)."""
    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    srv.metrics = m = Metrics()
    srv.offer(_registered(reg, FeatureModel("f_none")))
    s.run(60, {"f_a": 1.0, "f_b": 1.0})  # a contest judged on labels: rejected
    assert srv.history[-1]["verdict"] == "reject"

    def figures() -> list[float | None]:
        return [m.registry.get_sample_value("fds_model_precision", {"model": x, "window":
                "contest"}) for x in ("champion", "challenger")]  # fmt: skip

    assert None not in figures()
    srv.offer(_registered(reg, FeatureModel("f_b")))
    t0 = 3 * 86400
    for h in range(16 * 24):  # then no label for two weeks: promoted on none judged
        s.engine.decide({"tx_id": f"h{h}", "ts": t0 + h * 3600.0, "card_id": "c", "amount": 1})
    assert srv.stats["expired"] == 1 and srv.history[-1]["labels"] == 0
    # (the figures of the contest before were the replaced champion's: removed, a review)
    assert srv.version == "v000003" and figures() == [None, None]
    assert srv.gate_state()["precision"] == {}


def test_the_gate_waits_for_labels_only_once_there_is_a_champion() -> None:
    """Its starved timer ran with no champion (nothing to judge): the first champion's gate
    then opened on the count alone."""
    spec = parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        "gate:\n  min_frauds: 0\n  window: 5\n"
    )
    srv = ModelServer(spec, learn=False)
    engine = Engine(model=srv)
    for h in range(16 * 24):  # 16 days without any version
        engine.decide({"tx_id": f"h{h}", "ts": h * 3600.0, "card_id": "c", "amount": 1.0})
    assert srv.offer(_pub(FeatureModel("f_a"), 1))
    engine.decide({"tx_id": "x", "ts": 16 * DAY + 1, "card_id": "c", "amount": 1.0})
    assert not srv.gate_state()["starved"] and not srv.acting


def test_a_version_loaded_at_start_is_not_also_its_own_challenger(tmp_path) -> None:
    """fds run --models-topic loads the imported version at start while the registry watcher
    may have prepared it too: it then ran a shadow contest against itself."""
    reg = Registry(tmp_path)
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    srv = ModelServer(SPEC, learn=False, registry=reg)
    assert srv.poll() == "v000001"  # the watcher, before anything is served
    assert srv.load_champion() == "v000001"  # the start
    srv.install_pending()
    assert srv.version == "v000001" and srv.contest is None and srv.challenger is None


def test_in_fds_run_a_predecessor_re_scores_recent_traffic_off_the_decision_thread(
    tmp_path, monkeypatch
):
    """A predecessor on probation re-scored 2,048 inputs on the decision thread at every
    threshold refresh (158 ms with a forest: a gap in decisions). In watch mode one that would
    take longer than RESCORE_INLINE_S does so on a worker thread, the thresholds it had
    serving meanwhile; a replay stays inline."""
    from tests.models.fakes import Threads, servers_inline_and_watching

    monkeypatch.setattr("fds.models.scorer.RESCORE_INLINE_S", 0.0)  # (the fake is fast)

    spec = parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        "promote:\n  shadow_min_labels: 60\n  alert_budget_per_day: 10\n  warmup_labels: 0\n"
    )
    for watch, srv, reg in servers_inline_and_watching(spec, tmp_path):
        s = Stream(srv)
        s.run(50, {"f_a": 1.0, "f_b": 1.0})
        assert srv.offer(_registered(reg, Threads("f_a")))
        assert srv.offer(_registered(reg, FeatureModel("f_a")))
        s.run(600, {"f_a": 1.0, "f_b": 1.0})  # 60 frauds in shadow: a tie, promoted
        assert srv.version == "v000002" and srv.probation is not None
        # jobs of the shadow contest never serve the probation (a review found the champion's
        # shadow-contest ranks, from before the promotion, taken at its second label)
        stale = [job for contest, job in srv._reranks.values() if contest is not srv.probation]
        Threads.names = []
        s.run(250, {"f_a": 1.0, "f_b": 1.0})  # refreshes at the 20th and 40th label
        done = [job.result() for job in stale if job.done() and not job.cancelled()]
        assert srv._prob_ranks is not None and all(r not in srv._prob_ranks for r in done)
        s.run(350, {"f_a": 1.0, "f_b": 1.0})
        for _contest, job in list(srv._reranks.values()):
            job.result(timeout=10)
        on_loop = sum(1 for n in Threads.names if n == "MainThread")
        off_loop = len(Threads.names) - on_loop
        # on the loop besides each label's own input (60): the first refresh of the probation
        # (no thresholds to go on with yet: few inputs decided since the promotion) and a
        # probe of RESCORE_PROBE inputs at each later one
        if watch:
            assert off_loop > 100 and on_loop - 60 < off_loop / 2
            srv.close()
        else:
            assert off_loop == 0 and on_loop - 60 > 100
        assert srv.probation is None or srv.probation.n > 0


def test_a_new_version_is_ranked_on_recent_traffic_by_the_watcher_not_the_label_path(
    tmp_path,
) -> None:
    """Found by a review: the first fraud label after a version change (the maturity gate) and
    the first of a new contest scored 2,048 recent inputs with the new version on the decision
    thread (160-320 ms with a forest). The watcher scores them when it prepares the version,
    off the decision thread; the label path reuses those scores."""
    from tests.models.fakes import Threads

    spec = parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        "promote:\n  shadow_min_labels: 60\n  warmup_labels: 0\n"
        "gate:\n  min_frauds: 1\n  window: 5\n"
    )
    reg = Registry(tmp_path)
    reg.promote(reg.publish(Threads("f_a"), spec={"name": "t"})["version"])
    srv = ModelServer(spec, learn=False, registry=reg)
    srv.load_champion()
    s = Stream(srv)
    s.run(900, {"f_a": 1.0, "f_b": 1.0})  # recent traffic, and the gate ranked once

    def on_the_label_path(version: str) -> int:
        watcher = threading.Thread(target=srv.poll, name="watcher")
        watcher.start()
        watcher.join()
        srv.install_pending()
        assert version in (srv.version, srv.challenger_version)
        Threads.names = []
        s.run(10, {"f_a": 1.0, "f_b": 1.0})  # one fraud label
        return sum(1 for n in Threads.names if n == "MainThread")

    reg.publish(Threads("f_a"), spec={"name": "t"})  # v2: promoted by hand (the gate ranks)
    reg.promote("v000002")
    assert on_the_label_path("v000002") < 50  # (the 10 decisions, the label's own input)
    reg.publish(Threads("f_b"), spec={"name": "t"})  # v3: a challenger (its contest ranks)
    assert on_the_label_path("v000003") < 50
    for _ in range(4):  # the scores of versions no longer served or contested are dropped
        reg.publish(Threads("f_b"), spec={"name": "t"})
        srv.poll()
        srv.install_pending()
    live = {srv.version, srv.challenger_version, srv.predecessor_version}
    assert set(srv._prescored) <= live
    srv.close()


def test_a_registry_without_a_champion_serves_its_newest_version_without_an_error(
    tmp_path, caplog
) -> None:
    """`fds train` publishes, nobody promotes yet: every `fds run` start logged an ERROR that
    the champion "None" could not be loaded."""
    import logging

    reg = Registry(tmp_path)
    reg.publish(FeatureModel("f_a"), spec={"name": "t"})
    assert reg.champion() is None
    with caplog.at_level(logging.INFO, logger="fds.models"):
        assert ModelServer(SPEC, learn=False, registry=reg).load_champion() == "v000001"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "no champion chosen yet" in caplog.text


def test_the_canary_has_inputs_after_a_restart_and_before_any_traffic(tmp_path) -> None:
    """Found by a review: the canary scored the last 64 inputs decided, none after a restart
    or before any traffic, so any version passed it (one scoring NaN on everything served,
    each decision then falling back to the rules). The checkpoint keeps the canary's inputs;
    with none at all an empty input is scored."""
    from tests.models.fakes import NaNModel

    srv, s, reg = _registry_server(tmp_path, FeatureModel("f_a"))
    s._decide(s.i, s.i * DAY / 200, {"f_a": 0.5, "odd": 1.0})  # among the canary's inputs
    saved = srv.gate_state()
    restarted = ModelServer(SPEC, learn=False, registry=reg)
    restarted.load_champion()
    restarted.load_gate_state(saved)  # the engine's checkpoint
    reg.publish(NaNOn("f_a"), spec={"name": "t"})
    assert restarted.poll() is None and reg.entry("v000002")["status"] == "rejected"
    fresh = ModelServer(SPEC, learn=False, registry=Registry(tmp_path / "fresh"))
    fresh.registry.publish(NaNModel("f_a"), spec={"name": "t"})
    assert fresh.load_champion() is None and fresh.registry.entry("v000001")["status"] == (
        "rejected"
    )


def test_a_gate_changed_while_the_scorer_was_down_is_judged_anew() -> None:
    """A QA pass: a restart with the spec's gate removed ("acts at once", the README) kept the
    model in shadow, restored as it was; a gated spec restored from an ungated run acted."""
    gated = parse_spec(
        "name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n"
        "gate:\n  min_frauds: 3\n  window: 5\n"
    )
    ungated = parse_spec("name: t\npipeline:\n  - linear_model.LogisticRegression: {}\n")
    shadow = ModelServer(gated, learn=False)
    assert shadow.offer(_pub(FeatureModel("f_a"), 1)) and not shadow.acting
    restarted = ModelServer(ungated, learn=False)
    restarted.load_gate_state(pickle.loads(pickle.dumps(shadow.gate_state())))
    assert restarted.acting
    acting = ModelServer(ungated, learn=False)
    assert acting.offer(_pub(FeatureModel("f_a"), 1)) and acting.acting
    restarted = ModelServer(gated, learn=False)
    restarted.load_gate_state(acting.gate_state())
    assert not restarted.acting  # nothing learned, no window: closed until judged
    same = ModelServer(gated, learn=False)
    same.load_gate_state({**shadow.gate_state(), "acting": True})  # the same gate: as saved
    assert same.acting


def test_decisions_per_day_keep_only_the_days_the_alert_share_reads() -> None:
    """A service runs for years: one count per day was kept for good, 8 are ever read."""
    srv = ModelServer(SPEC, learn=False)
    per_day = {d: 20 + d for d in range(40)}  # each day its own volume
    for d, n in per_day.items():
        for i in range(n):
            srv.on_decision({"tx_id": f"t{d}-{i}", "ts": d * DAY + i}, {})
    srv.on_decision({"tx_id": "late", "ts": 3 * DAY}, {})  # a late one brings a day back
    srv.on_decision({"tx_id": "next", "ts": 40 * DAY}, {})
    assert len(srv._day_counts) == 8  # today and the 7 days before it
    # the budget (10 a day) over the mean of the 7 days before the one under way, as before
    assert srv._alert_share() == 10 / (sum(per_day[d] for d in range(33, 40)) / 7)


def test_the_verdict_history_keeps_the_newest_1000() -> None:
    srv = ModelServer(SPEC, learn=False)
    for i in range(1005):  # (a verdict or a few a day: years of a service)
        srv.probation = Contest("probation", f"v{i}", "v0", min_labels=1)
        srv._judge_probation("confirm")
    assert len(srv.history) == 1000
    assert [h["on_probation"] for h in srv.history[::999]] == ["v5", "v1004"]


def _replay_with(tmp_path: Any, txs: list, labels: list, spec: str) -> list[dict[str, Any]]:
    """``fds replay`` of ``txs`` with ``labels`` and model spec text ``spec``, rules none:
    its decisions."""
    import json

    from fds.cli import main

    for name, rows in (("tx.jsonl", txs), ("labels.jsonl", labels)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "spec.yaml").write_text(spec)
    out = tmp_path / "d.jsonl"
    args = ["replay", str(tmp_path / "tx.jsonl"), "--labels", str(tmp_path / "labels.jsonl")]
    args += ["--rules", "none", "--model", str(tmp_path / "spec.yaml"), "--out", str(out)]
    assert main(args) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_probation_and_a_contest_expiring_together_end_in_a_rollback_cleanly(tmp_path):
    """A QA pass: with `shadow_max_wait` (sparse labels), a probation and the contest of a
    version of its line ran out at one event; the probation's rollback ended that contest,
    which was then judged anyway: an AssertionError stopped the replay halfway (and would have
    dead-lettered a decided transaction in fds run)."""
    import random

    rnd, t0, txs, labels = random.Random(1), 1767225600, [], []
    for i in range(3000):  # a merchant of frauds, labelled two days later
        ts, fraud = t0 + i * 288, i % 20 == 0
        txs.append({"tx_id": f"t{i:05d}", "ts": ts, "card_id": f"c{rnd.randint(1, 300)}",
                    "merchant_id": "mFRAUD" if fraud else f"m{rnd.randint(1, 30)}",
                    "amount": 5000 if fraud else round(rnd.uniform(10, 100), 2)})  # fmt: skip
        if fraud:
            labels.append({"tx_id": f"t{i:05d}", "ts": ts + 2 * 86400, "is_fraud": True})
    decisions = _replay_with(tmp_path, txs, labels, (
        "name: wait\npipeline:\n  - preprocessing.StandardScaler: {}\n"
        "  - linear_model.LogisticRegression: {optimizer: {optim.SGD: {lr: 0.1}}}\n"
        "learn: {legit_sample_rate: 1.0, assume_legit_after: 3d, ttl: 30d}\n"
        "publish: {every_labels: 20, every_seconds: 1h}\n"
        "promote: {warmup_labels: 0, shadow_min_labels: 1000, shadow_max_wait: 1d}\n"
        "inputs: {rules: false}\n"
    ))  # fmt: skip
    assert len(decisions) == 3000


def test_a_replay_publishes_on_its_schedule_between_labels(tmp_path):
    """A QA pass: a replay checked the publish policy at labels only; with one label at day 9
    its first version came then, after 1,600 examples assumed legitimate, where fds train
    (checking after each batch) published from day 1."""
    t0 = 1767225600
    txs = [{"tx_id": f"t{i}", "ts": t0 + i * 432, "card_id": f"c{i % 50}",
            "amount": 5000 if i % 100 == 0 else 11 + i % 7} for i in range(2000)]  # fmt: skip
    labels = [  # (a fraud on day 1 too: no version is published before both classes)
        {"tx_id": "t100", "ts": t0 + 86400, "is_fraud": True},
        {"tx_id": "t1700", "ts": t0 + 9 * 86400, "is_fraud": True},
    ]
    decisions = _replay_with(tmp_path, txs, labels, (
        "name: pub\npipeline:\n  - preprocessing.StandardScaler: {}\n"
        "  - linear_model.LogisticRegression: {}\n"
        "learn: {legit_sample_rate: 1.0, assume_legit_after: 1d, ttl: 30d}\n"
        "publish: {every_labels: 20, every_seconds: 1h}\n"
    ))  # fmt: skip
    first = next(i for i, d in enumerate(decisions) if d.get("model_version"))
    assert txs[first]["ts"] < t0 + 2 * 86400  # (a day to assume, then an hour of examples)
