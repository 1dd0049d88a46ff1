"""The engine's wiring: stage failures, guardrails (rate breaker, degraded mode), metrics."""

from pathlib import Path
from typing import Any

import pytest

from fds.engine import Engine
from fds.errors import StageError
from fds.guardrails import ModelGuard, RuleBreaker, Trip
from fds.metrics import Metrics
from fds.policy import Policy

T0 = 1767225600.0


def tx(i):
    return {"tx_id": f"t{i}", "ts": T0 + i, "card_id": f"c{i % 50}", "amount": 10.0}


class Rules:
    """A rule stage: ``bad`` declines everything; ``good`` reviews every 100th transaction."""

    version = "test"

    def evaluate(self, t, feats):
        hits = [
            {"id": "bad", "action": "decline", "score": 1.0, "reason": "oops", "state": "active"}
        ]
        if int(t["tx_id"][1:]) % 100 == 0:
            hits.append(
                {"id": "good", "action": "review", "score": 0.6, "reason": "ok", "state": "active"}
            )
        return hits


class Model:
    def __init__(self, fail=False, slow=False):
        self.fail, self.slow, self.seen = fail, slow, 0

    def score(self, t, feats):
        if self.fail:
            raise RuntimeError("model exploded")
        return 0.1, "v1"

    def on_decision(self, t, d):
        self.seen += 1

    def on_label(self, label):
        pass


def test_rule_that_declines_everything_is_demoted_within_its_window_rest_keeps_deciding():
    m = Metrics()
    engine = Engine(
        rules=Rules(),
        policy=Policy(decline_at=0.9, review_at=0.5),
        metrics=m,
        breaker=RuleBreaker(window_events=500, multiple=3.0, min_events=50),
    )
    actions = [engine.decide(tx(i))["action"] for i in range(1000)]
    first_ok = actions.index("approve")
    assert first_ok <= 60  # tripped as soon as the window held min_events decisions
    assert set(actions[first_ok:]) == {"approve", "review"}
    assert engine.demoted == {"bad"}
    late = engine.decide(tx(900))
    assert late["action"] == "review"  # the good rule still acts
    bad = next(h for h in late["rule_hits"] if h["id"] == "bad")
    assert bad["state"] == "shadow" and bad["demoted"] is True
    assert (
        m.registry.get_sample_value(
            "fds_guardrail_demotions_total", {"kind": "rule", "target": "bad"}
        )
        == 1.0
    )
    engine.restore("bad")
    assert engine.decide(tx(1001))["action"] == "decline"


class OneRule(Rules):
    """Only ``good``, on every 97th transaction (many cards): behind every alert, but alerts
    are 1 % of the decisions."""

    def evaluate(self, t, feats):
        if int(t["tx_id"][1:]) % 97:
            return []
        return [{"id": "good", "action": "review", "score": 0.6, "reason": "ok", "state": "active"}]


def test_a_rule_behind_every_alert_at_a_normal_rate_is_not_demoted():
    """The breaker judges a rule's share of all decisions: approvals count in its window.
    (They were left out, so a rule behind most alerts tripped on ordinary traffic.)"""
    engine = Engine(
        rules=OneRule(),
        policy=Policy(decline_at=0.9, review_at=0.5),
        breaker=RuleBreaker(window_events=500, multiple=3.0, min_events=50),
    )
    actions = [engine.decide(tx(i))["action"] for i in range(10_000)]
    assert actions.count("review") == len(range(0, 10_000, 97)) and engine.demoted == set()


def test_degraded_mode_when_model_raises():
    model = Model(fail=True)
    m = Metrics()
    engine = Engine(
        rules=Rules(),
        model=model,
        policy=Policy(),
        metrics=m,
        guard=ModelGuard(latency_budget_s=0.05, max_failures=3, cooldown_s=60),
    )
    ds = [engine.decide(tx(i)) for i in range(10)]
    assert all(d["model_score"] is None and "degraded" in d["flags"] for d in ds)
    assert all(d["action"] == "decline" for d in ds)  # rules alone still decide
    assert engine.guard.degraded
    assert m.registry.get_sample_value("fds_degraded_mode") == 1.0
    assert m.registry.get_sample_value("fds_model_fallbacks_total", {"reason": "error"}) == 3.0
    assert m.registry.get_sample_value("fds_model_fallbacks_total", {"reason": "degraded"}) == 7.0


def test_no_model_version_yet_is_not_degraded():
    """Before the first version is published the model has no score: that is not a fallback."""

    class Unpublished(Model):
        def score(self, t, feats):
            return None, None

    engine = Engine(model=Unpublished(), policy=Policy(), guard=ModelGuard(latency_budget_s=0.05))
    d = engine.decide(tx(1))
    assert d["model_score"] is None and d["model_version"] is None and d["flags"] == []


def test_degraded_mode_when_model_exceeds_latency_budget(caplog):
    clock = [0.0]

    class Slow(Model):
        def score(self, t, feats):
            clock[0] += 0.2  # every call takes 200 ms of (fake) time
            return 0.2, "v1"

    engine = Engine(
        model=Slow(),
        policy=Policy(),
        guard=ModelGuard(
            latency_budget_s=0.05, max_failures=2, cooldown_s=1.0, clock=lambda: clock[0]
        ),
    )
    engine._perf = lambda: clock[0]
    ds = [engine.decide(tx(i)) for i in range(5)]
    # two slow calls are paid for (and their scores used), then the model is bypassed
    assert [d["model_score"] for d in ds] == [0.2, 0.2, None, None, None]
    clock[0] += 5.0  # cool-down over: one trial call, still slow -> degraded again
    assert engine.decide(tx(6))["model_score"] == 0.2
    assert engine.guard.degraded
    # the budget, not `error="None"` (a QA pass)
    assert 'model degraded reason="slow" latency_budget_ms="50"' in caplog.text
    assert "None" not in caplog.text


def test_stage_error_names_the_stage():
    class Broken:
        version = "x"

        def evaluate(self, t, feats):
            raise KeyError("amount_eur")

    with pytest.raises(StageError, match=r"rules: KeyError") as e:
        Engine(rules=Broken()).decide(tx(1))
    assert e.value.stage == "rules"


def test_metrics_count_decisions_and_hits():
    m = Metrics()
    engine = Engine(rules=Rules(), policy=Policy(), metrics=m)
    for i in range(10):
        engine.decide(tx(i))
    assert m.summary()["decisions"]["decline"] == 10
    assert m.summary()["rule_hits"]


def test_state_dict_roundtrip_gives_identical_decisions():
    import pickle

    from fds.pipeline import DEFAULT_RULES, build_engine
    from fds.streams.simulator import simulate

    sim = simulate(days=3, seed=5, cards=300, merchants=100, drift_day=None)
    txs = sim.transactions
    cut = len(txs) // 2

    def strip(d):
        return {k: v for k, v in d.items() if k not in ("decided_at", "latency_ms")}

    straight = build_engine(DEFAULT_RULES, None)
    expected = [strip(straight.decide(t)) for t in txs]
    first = build_engine(DEFAULT_RULES, None)
    for t in txs[:cut]:
        first.decide(t)
    blob = pickle.dumps(first.state_dict())
    second = build_engine(DEFAULT_RULES, None)
    second.load_state_dict(pickle.loads(blob))
    assert [strip(second.decide(t)) for t in txs[cut:]] == expected[cut:]


def test_a_state_without_features_is_refused_by_an_engine_with_features():
    """A QA pass: a checkpoint of `fds run --rules none` restored under rules with features
    was taken as complete: every window started empty after the restart, no rebuild."""
    from fds.errors import ConfigError
    from fds.pipeline import DEFAULT_RULES, build_engine

    bare = build_engine(None, None)
    bare.decide(tx(1))
    with pytest.raises(ConfigError, match="saved without feature state"):
        build_engine(DEFAULT_RULES, None).load_state_dict(bare.state_dict())
    build_engine(None, None).load_state_dict(bare.state_dict())  # the same engine: fine
    full = build_engine(DEFAULT_RULES, None)
    bare.load_state_dict(full.state_dict())  # features no longer needed: fine


def test_a_model_that_reads_the_rules_without_rules_is_warned_about(tmp_path, caplog):
    """A QA pass: `--rules none` with the default model (inputs: rules: score) served it a
    rule_score of 0 for every transaction, unlike what it learned from, without a word."""
    from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES, build_engine

    with caplog.at_level("WARNING", logger="fds.pipeline"):
        build_engine(None, DEFAULT_MODEL, registry=tmp_path / "r")
    assert "no rules, and model spec 'default' reads the rules' results" in caplog.text
    caplog.clear()
    spec = tmp_path / "plain.yaml"
    spec.write_text(Path(DEFAULT_MODEL).read_text().replace("rules: score", "rules: false"))
    with caplog.at_level("WARNING", logger="fds.pipeline"):
        build_engine(None, spec, registry=tmp_path / "r2")
        build_engine(DEFAULT_RULES, DEFAULT_MODEL, registry=tmp_path / "r3")
    assert "reads the rules" not in caplog.text


def test_the_shipped_rules_deciding_beside_a_rules_file_of_the_working_folder_is_said(
    tmp_path, monkeypatch, caplog
):
    """A README walk: a user edited rules/default.yaml in their own folder and ran `fds replay`
    without --rules; the shipped file decided, without a word."""
    from fds.pipeline import DEFAULT_RULES, build_engine

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules").mkdir()
    own = tmp_path / "rules" / "default.yaml"
    own.write_bytes(DEFAULT_RULES.read_bytes())  # a copy: the same rules, nothing to say
    with caplog.at_level("WARNING", logger="fds.pipeline"):
        build_engine(DEFAULT_RULES, None)
        own.write_text(DEFAULT_RULES.read_text().replace("version:", "version: mine #", 1))
        build_engine(own, None)  # named: it decides, nothing to say
        assert "shipped rules" not in caplog.text
        build_engine(DEFAULT_RULES, None)
    assert caplog.text.count("the shipped rules decide") == 1
    assert "give --rules rules/default.yaml to use that one" in caplog.text


def test_who_is_demoted_now_is_exported_after_a_restore_too():
    """fds_guardrail_demotions_total restarts at 0 with the process: a rule still demoted by a
    restored engine was invisible."""
    engine = Engine(
        rules=Rules(), policy=Policy(decline_at=0.9, review_at=0.5),
        breaker=RuleBreaker(window_events=500, multiple=3.0, min_events=50),
    )  # fmt: skip
    for i in range(200):
        engine.decide(tx(i))
    assert engine.demoted == {"bad"}
    m = Metrics()
    restored = Engine(rules=Rules(), policy=Policy(), metrics=m, breaker=RuleBreaker(500))
    restored.load_state_dict(engine.state_dict())
    restored.report()
    get = m.registry.get_sample_value
    assert get("fds_guardrail_demoted", {"kind": "rule", "target": "bad"}) == 1.0
    restored.restore("bad")
    restored.report()
    assert get("fds_guardrail_demoted", {"kind": "rule", "target": "bad"}) is None


def test_a_restored_budget_keeps_its_history_but_takes_the_rules_file_as_it_reads_now():
    """The checkpoint's budget replaced the file's: a budget edited (or removed) while the
    engine was down stayed as it was before the restart."""
    old = Engine(rules=Rules(), policy=Policy(alert_budget_per_day=10))
    for i in range(50):
        old.decide(tx(i))
    state = old.state_dict()
    scores = int(state["budget"]._total.sum())
    assert scores == 50
    bigger = Engine(rules=Rules(), policy=Policy(alert_budget_per_day=500))
    bigger.load_state_dict(state)
    assert bigger.policy.budget.budget == 500  # the file's budget ...
    assert int(bigger.policy.budget._total.sum()) == scores  # ... over the restored history
    none = Engine(rules=Rules(), policy=Policy())
    none.load_state_dict(old.state_dict())
    assert none.policy.budget is None


def test_a_demoted_model_is_back_in_force_when_another_version_serves():
    """A champion demoted by the rate breaker stayed in shadow after a good version replaced
    it (found by a review): the breaker guards a promotion, not the model stage for good."""
    from fds.guardrails import MODEL

    class Model:
        acting, reads_rules = True, False

        def __init__(self) -> None:
            self.version, self.p = "v1", 0.99  # v1 declines everything

        def score(self, tx, feats):
            return self.p, self.version

        def on_decision(self, tx, decision) -> None:
            pass

    model = Model()
    engine = Engine(
        model=model, policy=Policy(decline_at=0.9, review_at=0.5),
        breaker=RuleBreaker(window_events=500, multiple=3.0, min_events=50,
                            initial_baseline={"decline": 0.01, "review": 0.05}),
    )  # fmt: skip
    for i in range(200):
        engine.decide({**tx(i), "card_id": f"c{i}"})
    assert engine.demoted == {MODEL}
    shadowed = engine.decide(tx(200))
    assert shadowed["action"] == "approve"  # v1 still serves: in shadow
    assert "model_demoted" in shadowed["flags"]  # (no trace in the decision: a QA pass)
    state = engine.state_dict()
    model.version, model.p = "v2", 0.95
    restored = engine.decide(tx(201))
    assert restored["action"] == "decline" and engine.demoted == set()
    assert "model_demoted" not in restored["flags"]
    # a restart serving another version lifts it at once, not at the first transaction (its
    # gauge and alert stayed until then: a review)
    again = Engine(model=model, policy=Policy(decline_at=0.9, review_at=0.5), breaker=RuleBreaker(
        window_events=500, multiple=3.0, min_events=50,
        initial_baseline={"decline": 0.01, "review": 0.05}))  # fmt: skip
    again.load_state_dict(state)
    assert again.demoted == set()
    model.version = "v1"  # (the version demoted, serving still: kept)
    again.load_state_dict(state)
    assert again.demoted == {MODEL}


@pytest.mark.parametrize("reloading", [False, True])
def test_a_fold_counts_no_rule_skip(tmp_path, reloading):
    """A fold decides again a record that was counted when first decided (a restore, or what a
    restore left to fold as fds run decides): the rules' skip counts must not grow."""
    from fds.rules.reload import ReloadingRuleset
    from fds.rules.ruleset import load_ruleset_text

    text = (
        "version: v\nrules:\n"
        "  - {id: r, when: extra.x > 1, action: review, score: 0.5, reason: r}\n"
        "  - {id: e, when: amount / extra.zero > 1, action: review, score: 0.5, reason: e}\n"
    )
    if reloading:
        path = tmp_path / "r.yaml"
        path.write_text(text)
        rules: Any = ReloadingRuleset(path, start=False)  # (a poll thread outlived the test)
    else:
        rules = load_ruleset_text(text)
    engine = Engine(rules=rules)
    tx = {"tx_id": "t", "ts": 1.7e9, "card_id": "c", "amount": 5.0, "extra": {"zero": 0}}
    for _ in range(2):
        with pytest.raises(StageError):  # rule e raises: the fold's caller drops the record
            engine.fold(tx)
    assert rules.missing_counts == {"r": 0, "e": 0} and rules.error_counts == {"r": 0, "e": 0}
    with pytest.raises(StageError):
        engine.decide(tx)
    assert rules.missing_counts["r"] == 1 and rules.error_counts["e"] == 1


def test_late_decisions_are_said_in_a_log_line_at_most_once_a_minute(caplog):
    """A soak run: a burst of 8,737 decisions flagged `late` showed in fds_late_events_total
    alone, no log line."""
    from fds.features import FeaturePlan
    from fds.rules.ruleset import FeatureSpec

    plan = FeaturePlan([FeatureSpec(name="n", entity="card_id", agg="count", window="1h")])
    engine = Engine(features=plan, metrics=Metrics())
    engine.decide(tx(10_000))  # the newest event time: 1 h + grace later than the next ones
    with caplog.at_level("WARNING", logger="fds.engine"):
        for i in range(3):
            assert engine.decide(tx(i))["flags"] == ["late"]
    said = [r.getMessage() for r in caplog.records if "flagged late" in r.getMessage()]
    assert len(said) == 1 and 'count="1"' in said[0] and 'last_tx_id="t0"' in said[0]
    assert engine._late_unsaid == 2  # said a minute later at the earliest, or at close
    assert engine.decide(tx(30_000))["flags"] == []  # the watermark moves on before it is said
    engine.close()
    said = [r.getMessage() for r in caplog.records if "flagged late" in r.getMessage()]
    assert len(said) == 2 and 'count="2"' in said[1] and 'last_tx_id="t2"' in said[1]
    # the event they are late against is named (a record stamped ahead: a QA pass)
    assert f'set_by_tx_id="{tx(10_000)["tx_id"]}"' in said[0]
    assert 'grace_s="300"' in said[0] and "the rules file's `grace:`" in said[0]  # (a QA pass)
    assert 'set_by_tx_id="t10000"' in said[1]  # the one they were judged against (a QA pass)


def test_a_late_decision_after_a_restore_names_the_watermark_and_its_event(caplog):
    """A QA pass: after a restore the warning named neither (the event that set the
    watermark was not saved), the watermark known."""
    from fds.features import FeaturePlan
    from fds.rules.ruleset import FeatureSpec

    def plan() -> FeaturePlan:
        return FeaturePlan([FeatureSpec(name="n", entity="card_id", agg="count", window="1h")])

    before = plan()
    before.compute(tx(10_000))
    after = plan()
    after.load_state_dict(before.state_dict())
    engine = Engine(features=after, metrics=Metrics())
    with caplog.at_level("WARNING", logger="fds.engine"):
        assert engine.decide(tx(0))["flags"] == ["late"]
    said = [r.getMessage() for r in caplog.records if "flagged late" in r.getMessage()]
    assert 'set_by_tx_id="t10000"' in said[0] and ' watermark="' in said[0]


GRACE_RULES = """\
version: "1"
{grace}features:
  - {{name: n_1h, entity: card_id, agg: count, window: 1h}}
rules:
  - {{id: fourth, when: n_1h >= 4, action: review, score: 0.7, reason: Fourth in an hour}}
"""


def _grace_engine(tmp_path, line: str, **kw):
    from fds.pipeline import build_engine

    path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(GRACE_RULES.format(grace=line))
    return build_engine(path, None, guardrails=False, **kw)


def _late_by_7_minutes(engine):
    """One card at 0, 10 min, then 3 min (7 minutes behind the latest), then 11:40."""
    out = []
    for i, dt in enumerate([0, 600, 180, 700]):
        out.append(engine.decide({"tx_id": f"t{i}", "ts": T0 + dt, "card_id": "c", "amount": 1.0}))
    return out


@pytest.mark.parametrize("grace", ["grace: 10m\n", "grace: 600s\n", "grace: 1h\n"])
def test_the_rules_file_grace_folds_in_an_event_later_than_the_default(tmp_path, grace):
    """The README's grace period was configurable only from Python (FeaturePlan(grace=...)):
    `grace:` in a rules file was an unknown key (a QA pass)."""
    late, after = _late_by_7_minutes(_grace_engine(tmp_path, grace))[2:]
    assert late["flags"] == [] and late["features"] == {"n_1h": 2}  # folded in exactly
    assert after["features"] == {"n_1h": 4} and after["action"] == "review"  # it counts


def test_without_grace_in_the_rules_file_an_event_7_minutes_late_is_flagged(tmp_path):
    """The default (5m) unchanged; and the Python API's grace still overrides the file's."""
    late, after = _late_by_7_minutes(_grace_engine(tmp_path, ""))[2:]
    assert late["flags"] == ["late"] and after["features"] == {"n_1h": 3}
    late, _ = _late_by_7_minutes(_grace_engine(tmp_path, "grace: 10m\n", grace="5m"))[2:]
    assert late["flags"] == ["late"]


def test_a_state_of_another_grace_is_refused_and_a_rebuild_keeps_the_file_s(tmp_path):
    """fds run restores a checkpoint into the engine built from the rules file, and rebuilds
    feature state with plan.fresh(): both must have the file's grace."""
    from fds.errors import FeatureStateMismatch

    ten = _grace_engine(tmp_path, "grace: 10m\n")
    _late_by_7_minutes(ten)
    with pytest.raises(FeatureStateMismatch, match=r"other grace \(10.0 min, now 5.0 min\)"):
        _grace_engine(tmp_path, "").load_state_dict(ten.state_dict())
    _grace_engine(tmp_path, "grace: 600s\n").load_state_dict(ten.state_dict())  # one grace
    assert ten.features.grace == ten.features.fresh().grace == 600.0


def test_a_shadow_or_demoted_rule_is_no_input_of_a_model_reading_each_rule(tmp_path):
    """A QA pass: with `inputs: {rules: true}` a shadow rule's hit was `rule:<id>` 1 in the
    model's input, and a shadow rule changed 41 of 16,036 actions of a replay through the
    model's score ("shadow rules have no effect"); so did a rule the breaker demoted."""
    from fds.pipeline import DEFAULT_MODEL, build_engine

    rules = tmp_path / "r.yaml"
    rules.write_text(
        "version: v1\nrules:\n"
        "  - {id: main, when: amount > 1, action: review, score: 0.4, reason: m}\n"
        "  - {id: watch, when: amount > 1, action: decline, score: 0.9, reason: w,"
        " state: shadow}\n"
    )
    spec = tmp_path / "stack.yaml"
    spec.write_text(Path(DEFAULT_MODEL).read_text().replace("rules: score", "rules: true"))
    engine = build_engine(rules, spec, registry=tmp_path / "reg", guardrails=False)
    feats = engine.decide(tx(1))["features"]
    assert feats["rule:main"] is True and feats["rule:watch"] is False
    engine._demote((Trip("main", "review", 1.0, 0.01, 0.1, 100, 100),), None)  # (the breaker's)
    feats = engine.decide(tx(2))["features"]
    assert feats["rule:main"] is False and feats["rule:watch"] is False


class _Flaky:
    """A model stage that raises while ``broken``, else scores 0.1."""

    broken = True
    version = "v1"
    acting = True

    def score(self, tx: Any, feats: Any) -> tuple[float, str]:
        if self.broken:
            raise RuntimeError("model down")
        return 0.1, "v1"

    def on_decision(self, tx: Any, d: Any) -> None:
        pass


def test_a_change_of_the_model_guard_in_a_fold_reaches_the_metrics():
    """A review: a fold (fds run's catch-up after a restore) held the metrics back, and the
    guard's change of state made there was used up unsaid: the model degraded in a fold left
    fds_degraded_mode at 0 (no alert), and one recovered in a fold left it at 1 for good
    (the alert firing on for a model acting, a later degradation paging no one)."""
    clock = [0.0]
    tx = lambda i: {"tx_id": f"t{i}", "ts": 1.8e9 + i, "card_id": "c", "amount": 1.0}  # noqa: E731
    m, model = Metrics(), _Flaky()
    guard = ModelGuard(latency_budget_s=1.0, max_failures=3, cooldown_s=30, clock=lambda: clock[0])
    engine = Engine(model=model, metrics=m, guard=guard)
    m.model_info("v1", "default")
    m.model_acting(True)
    gauge = m.registry.get_sample_value
    for i in range(3):
        engine.fold(tx(i))  # degraded in a fold
    assert guard.degraded and gauge("fds_degraded_mode") == 1 and gauge("fds_model_acting") == 0
    assert gauge("fds_decisions_total", {"action": "approve"}) in (None, 0)  # (still no count)
    model.broken, clock[0] = False, 31.0
    engine.fold(tx(20))  # the trial after the cool-down, in a fold: acting again
    assert not guard.degraded and gauge("fds_degraded_mode") == 0
    assert gauge("fds_model_acting") == 1 and engine.decide(tx(21))["flags"] == []


@pytest.mark.parametrize("raw", [
    {"tx_id": "x", "card_id": "c", "amount": 1.0},  # no ts
    {"tx_id": "x", "ts": 1767225600.0, "card_id": "c"},  # no amount: it was approved
    {"tx_id": "x", "ts": 1767225600.0, "amount": 1.0},  # no card_id: approved
    {"tx_id": "x", "ts": "2026-01-01T00:00:10Z", "card_id": "c", "amount": 1.0},  # ts as text
    {"tx_id": "x", "ts": 1767225700000, "card_id": "c", "amount": 1.0},  # epoch ms, an int
    {"tx_id": "x", "ts": 1767225700000.0, "card_id": "c", "amount": 1.0},  # ms, a float
    {"tx_id": "x", "ts": 1767225600.0, "card_id": "c", "amount": "5.0"},  # amount as text
    "hello",
])  # fmt: skip
def test_a_record_that_was_not_validated_is_refused_before_any_stage(raw):
    """A QA pass of the Python API: a raw dict given to decide raised a bare KeyError (no ts),
    was approved (no amount, no card_id), or was counted in the windows and then failed in the
    rules on a ts read two ways; a raw label was learned by the features, then a KeyError."""
    from fds import build_engine, parse_transaction
    from fds.errors import ValidationError

    engine = build_engine("rules/default.yaml", None)
    with pytest.raises(ValidationError, match=r"not a validated transaction .*give the engine "
                       r"what fds.parse_transaction\(record\) returns"):  # fmt: skip
        engine.decide(raw)
    assert engine.features.state_sizes() == {}.fromkeys(engine.features.state_sizes(), 0)
    good = {"tx_id": "x", "ts": 1767225600, "card_id": "c", "amount": 1.0, "merchant_id": "m"}
    assert engine.decide(parse_transaction(good))["action"] in ("approve", "review", "decline")
    with pytest.raises(ValidationError, match=r"not a validated label .*fds\.parse_label"):
        engine.learn({"tx_id": "x", "is_fraud": True})  # no ts
    again = parse_transaction(good | {"tx_id": "y", "ts": 1767225660})
    assert engine.decide(again)["features"]["merchant_fraud_count_28d"] == 0  # (not learned)


def test_an_engine_that_cannot_be_built_leaves_no_rules_watcher_running(tmp_path):
    """A unit run: each replay refused at its model spec (after the rules loaded) left the
    rules watcher thread running, 100 of them in one test process."""
    import threading

    from fds.errors import ConfigError
    from fds.pipeline import DEFAULT_RULES, build_engine

    def watchers() -> int:
        return sum(t.name == "fds-rules-watch" for t in threading.enumerate())

    before = watchers()
    with pytest.raises(ConfigError):
        build_engine(DEFAULT_RULES, DEFAULT_RULES, watch=True)  # (a rules file as the spec)
    assert watchers() == before
    engine = build_engine(DEFAULT_RULES, None, watch=True)
    assert watchers() == before + 1  # (started once built)
    engine.close()
    assert watchers() == before
