"""fds.guardrails: rate breakers tripped by crafted streams, degraded mode for a bad model."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from fds.guardrails import MODEL, ModelGuard, RuleBreaker, Trip

# --------------------------------------------------------------------------- a tiny engine
# Normal rules: (id, action, hit probability). Together they review ~3% and decline ~0.6%.
NORMAL_RULES = (
    ("velocity", "review", 0.02),
    ("new_country", "review", 0.01),
    ("stolen_bin", "decline", 0.004),
    ("amount_spike", "decline", 0.002),
)
SEVERITY = {"approve": 0, "review": 1, "decline": 2}


class Sim:
    """Decides a synthetic stream with a set of rules, demoting whatever the breaker trips."""

    def __init__(self, breaker: RuleBreaker, seed: int = 7) -> None:
        self.breaker = breaker
        self.rng = random.Random(seed)
        self.rules = {rid: (action, p) for rid, action, p in NORMAL_RULES}
        self.shadow: set[str] = set()
        self.trips: list[Trip] = []
        self.actions: list[str] = []
        self.model_declines = 0.0  # probability that the model alone declines

    def step(self) -> str:
        hits = [
            (rid, action)
            for rid, (action, p) in self.rules.items()
            if rid not in self.shadow and self.rng.random() < p
        ]
        action = max((a for _, a in hits), key=SEVERITY.__getitem__, default="approve")
        sources = [rid for rid, a in hits if a == action]
        if MODEL not in self.shadow and self.rng.random() < self.model_declines:
            action = "decline"
            sources = [*sources, MODEL]
        for trip in self.breaker.observe(action, sources, ts=len(self.actions) * 0.01):
            self.trips.append(trip)
            self.shadow.add(trip.source)  # the engine demotes it to shadow
        self.actions.append(action)
        return action

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()


def rate(actions: list[str], action: str) -> float:
    return actions.count(action) / len(actions)


# --------------------------------------------------------------------------- RuleBreaker
def test_normal_rules_never_trip_over_a_long_stream() -> None:
    sim = Sim(RuleBreaker(window_events=2000, multiple=3.0, min_events=200))
    sim.run(60_000)
    assert sim.trips == []
    assert 0.02 < rate(sim.actions, "review") < 0.04
    # the baseline converged on the engine's real rates
    assert sim.breaker.baseline["decline"] == pytest.approx(0.006, abs=0.002)


def test_a_rule_that_declines_everything_is_demoted_within_its_window() -> None:
    window = 2000
    sim = Sim(RuleBreaker(window_events=window, multiple=3.0, min_events=200))
    sim.run(20_000)  # a clean baseline first
    sim.rules["decline_all"] = ("decline", 1.0)  # hot-reloaded bad rule
    bad_from = len(sim.actions)
    sim.run(3 * window)
    assert [t.source for t in sim.trips] == ["decline_all"]
    trip = sim.trips[0]
    assert trip.kind == "rule" and trip.action == "decline"
    assert trip.at_event - bad_from <= window, "demoted within its window"
    assert trip.rate > trip.limit == pytest.approx(3.0 * trip.baseline)
    # the rest keep deciding: after the trip the decline rate is back to normal, reviews flow
    after = sim.actions[trip.at_event :]
    assert rate(after, "decline") < 0.02
    assert 0.02 < rate(after, "review") < 0.045
    assert sim.shadow == {"decline_all"}


def test_a_rule_bad_from_the_first_event_is_caught_by_the_initial_baseline() -> None:
    sim = Sim(
        RuleBreaker(
            window_events=1000,
            multiple=3.0,
            min_events=100,
            initial_baseline={"decline": 0.006, "review": 0.03},
        )
    )
    sim.rules["decline_all"] = ("decline", 1.0)
    sim.run(5000)
    assert [t.source for t in sim.trips] == ["decline_all"]
    assert sim.trips[0].at_event == 100  # as soon as min_events decisions are in


def test_a_review_storm_trips_on_the_review_rate() -> None:
    sim = Sim(RuleBreaker(window_events=2000, multiple=3.0, min_events=200))
    sim.run(10_000)
    sim.rules["review_half"] = ("review", 0.5)
    sim.run(4000)
    assert [(t.source, t.action) for t in sim.trips] == [("review_half", "review")]


def test_a_rule_just_below_the_multiple_is_left_alone() -> None:
    # decline baseline ~0.6%; a new rule adding 1% declines stays below 3 x 0.6% = 1.8%
    sim = Sim(RuleBreaker(window_events=2000, multiple=3.0, min_events=200))
    sim.run(10_000)
    sim.rules["modest"] = ("decline", 0.01)
    sim.run(20_000)
    assert sim.trips == []


def test_a_newly_promoted_model_that_declines_too_much_is_demoted_and_reset_rearms() -> None:
    window = 2000
    sim = Sim(RuleBreaker(window_events=window, multiple=3.0, min_events=200))
    sim.model_declines = 0.003  # the old champion: declines in line with the baseline
    sim.run(20_000)
    assert sim.trips == []
    sim.model_declines = 0.10  # newly promoted model declines 10% of traffic
    promoted_at = len(sim.actions)
    sim.run(window)
    assert [(t.kind, t.action) for t in sim.trips] == [("model", "decline")]
    assert sim.trips[0].at_event - promoted_at <= window
    assert rate(sim.actions[sim.trips[0].at_event :], "decline") < 0.02  # rules decide on
    # the engine rolls back to the old champion and re-arms the breaker for the next promotion
    sim.breaker.reset(MODEL)
    sim.shadow.discard(MODEL)
    sim.model_declines = 0.003
    sim.run(10_000)
    assert len(sim.trips) == 1
    sim.model_declines = 0.10  # the next bad promotion is caught again (a review: the test
    sim.run(window)  # passed with a reset that did nothing)
    assert [(t.kind, t.action) for t in sim.trips] == [("model", "decline")] * 2


def test_tripped_windows_do_not_poison_the_baseline() -> None:
    rb = RuleBreaker(window_events=100, multiple=3.0, min_events=10)
    before = dict(rb.baseline)
    for _ in range(300):  # three full windows of nothing but a bad rule's declines
        rb.observe("decline", ["bad"])
    assert rb.demoted == {"bad"}
    assert rb.baseline["decline"] < 0.2 + before["decline"]  # at most the one clean-ish window


def test_time_windows_need_ts_and_roll_over_by_event_time() -> None:
    rb = RuleBreaker(window_seconds=60, multiple=3.0, min_events=5)
    with pytest.raises(ValueError, match="ts="):
        rb.observe("approve", ())
    # 60 s of clean traffic: 1 decline in 100 -> baseline moves towards 1%
    for i in range(100):
        rb.observe("decline" if i == 0 else "approve", ["r"] if i == 0 else [], ts=i * 0.5)
    base0 = dict(rb.baseline)
    rb.observe("approve", (), ts=70.0)  # closes the first window
    assert rb.baseline["decline"] != base0["decline"]
    assert rb.baseline["decline"] == pytest.approx(
        base0["decline"] + 0.2 * (0.01 - base0["decline"])
    )


def test_approvals_are_never_judged() -> None:
    rb = RuleBreaker(window_events=10, min_events=1)
    assert all(rb.observe("approve", ["allow_list"]) == () for _ in range(100))
    assert rb.demoted == frozenset()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"window_events": 10, "window_seconds": 5}, "exactly one of"),
        ({"window_events": 0}, "window_events must be >= 1"),
        ({"window_seconds": -1}, "window_seconds must be > 0"),
        ({"window_events": 10, "multiple": 1.0}, "multiple must be > 1"),
        ({"window_events": 10, "min_events": 0}, "min_events must be >= 1"),
        ({"window_events": 10, "min_events": 11}, "must be <= window_events"),
        ({"window_events": 10, "min_entities": 0}, "min_entities must be >= 1"),
    ],
)
def test_rule_breaker_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuleBreaker(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ModelGuard
class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def raising(x: object) -> float:
    raise RuntimeError("model exploded")


def test_degraded_when_the_model_raises_and_recovers_after_cooldown() -> None:
    clock = FakeClock()
    g = ModelGuard(latency_budget_s=0.01, max_failures=3, cooldown_s=30, clock=clock)
    assert g.call(lambda x: 0.2, None) == 0.2
    assert [g.call(raising, None) for _ in range(3)] == [None, None, None]
    assert g.degraded and isinstance(g.last_error, RuntimeError)
    assert g.transitions() == [("degraded", "error")]
    calls = []

    def healthy(x: object) -> float:
        calls.append(x)
        return 0.7

    clock.t = 29.9
    assert g.call(healthy, 1) is None and calls == []  # rules decide alone; model not called
    clock.t = 30.0
    assert g.call(healthy, 2) == 0.7 and calls == [2]  # the trial call succeeds
    assert not g.degraded
    assert g.transitions() == [("recovered", "")]
    assert g.transitions() == []


def test_degraded_when_the_model_exceeds_its_latency_budget() -> None:
    clock = FakeClock()
    g = ModelGuard(latency_budget_s=0.005, max_failures=2, cooldown_s=10, clock=clock)

    def slow(x: object) -> float:
        clock.t += 0.050  # 50 ms: ten times the budget
        return 0.9

    assert g.call(slow, None) == 0.9  # an answer already paid for is still used ...
    assert not g.degraded
    assert g.call(slow, None) == 0.9
    assert g.degraded  # ... but two slow calls open the guard
    assert g.transitions() == [("degraded", "slow")]
    assert g.call(slow, None) is None


def test_a_failed_trial_call_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    g = ModelGuard(latency_budget_s=0.01, max_failures=1, cooldown_s=5, clock=clock)
    g.call(raising, None)
    clock.t = 5.0
    assert g.call(raising, None) is None  # trial fails
    assert g.degraded
    clock.t = 9.9
    assert not g.allow()
    clock.t = 10.0
    assert g.allow()
    assert g.transitions() == [("degraded", "error"), ("degraded", "error")]


def test_sparse_failures_within_the_window_do_not_degrade() -> None:
    clock = FakeClock()
    g = ModelGuard(latency_budget_s=0.01, max_failures=3, window_calls=20, clock=clock)
    for i in range(1000):  # one failure in every 10 calls: at most 2 in any 20
        g.call(raising if i % 10 == 0 else (lambda x: 0.1), None)
    assert not g.degraded
    for _ in range(3):
        g.call(raising, None)
    assert g.degraded


def test_low_level_api_matches_call() -> None:
    g = ModelGuard(latency_budget_s=0.01, max_failures=1, cooldown_s=60, clock=FakeClock())
    assert g.allow()
    g.success(0.001)
    assert not g.degraded
    g.failure(TimeoutError("slow"))
    assert g.degraded and not g.allow()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency_budget_s": 0}, "latency_budget_s"),
        ({"latency_budget_s": 0.01, "max_failures": 0}, "max_failures"),
        ({"latency_budget_s": 0.01, "max_failures": 5, "window_calls": 3}, "window_calls"),
        ({"latency_budget_s": 0.01, "cooldown_s": -1}, "cooldown_s"),
    ],
)
def test_model_guard_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelGuard(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- with the policy
def test_decision_sources_with_the_real_policy_demotes_only_the_bad_rule() -> None:
    """fds.policy.Policy decides; decision_sources attributes; the breaker demotes."""
    from fds.guardrails import decision_sources
    from fds.policy import Policy

    policy = Policy(decline_at=0.9, review_at=0.5)
    rb = RuleBreaker(window_events=1000, multiple=3.0, min_events=100)
    rng = random.Random(3)
    states = {"velocity": "active", "decline_all": "active"}
    trips: list[Trip] = []
    actions: list[str] = []
    for i in range(4000):
        hits = []
        if rng.random() < 0.03:
            hits.append(
                {"id": "velocity", "action": "review", "score": 0.6, "state": states["velocity"]}
            )
        if i >= 2000:  # the bad rule arrives with a hot reload
            hits.append(
                {
                    "id": "decline_all",
                    "action": "decline",
                    "score": 1.0,
                    "state": states["decline_all"],
                }
            )
        model_score = rng.random() * 0.3
        action, _ = policy.decide(hits, model_score, float(i))
        src = decision_sources(action, hits, model_score, decline_at=0.9, review_at=0.5)
        for t in rb.observe(action, src):
            trips.append(t)
            states[t.source] = "shadow"
        actions.append(action)
    assert [(t.source, t.action) for t in trips] == [("decline_all", "decline")]
    assert trips[0].at_event - 2000 <= 1000
    after = actions[trips[0].at_event :]
    assert after.count("decline") == 0
    assert 0.02 < after.count("review") / len(after) < 0.045


def test_decision_sources_attribution() -> None:
    from fds.guardrails import decision_sources

    hits = [
        {"id": "a", "action": "review", "score": 0.95, "state": "active"},  # score declines
        {"id": "b", "action": "decline", "score": 0.1, "state": "active"},
        {"id": "c", "action": "decline", "score": 1.0, "state": "shadow"},  # not acting
        {"id": "d", "action": "approve", "score": 0.2, "state": "active"},
    ]
    assert decision_sources("decline", hits, None, decline_at=0.9, review_at=0.5) == ["a", "b"]
    assert decision_sources("decline", [], 0.92, decline_at=0.9, review_at=0.5) == [MODEL]
    assert decision_sources("review", hits, 0.3, decline_at=0.9, review_at=0.5) == ["a"]


def burst_stream(rb: RuleBreaker, with_entities: bool) -> list[Trip]:
    """Normal traffic (1% reviews over 5000 cards) with a card-testing burst: 150 payments on
    one stolen card in a row, in the third window (after the baseline has settled)."""
    rng = random.Random(5)
    trips: list[Trip] = []
    for i in range(6000):
        card = f"c{rng.randrange(5000)}"
        if 4500 <= i < 4650:
            action, sources, card = "review", ["card_testing"], "c-stolen"
        elif rng.random() < 0.01:
            action, sources = "review", ["velocity"]
        else:
            action, sources = "approve", []
        trips += rb.observe(action, sources, entity=card if with_entities else None)
    return trips


def test_a_fraud_burst_on_one_card_does_not_demote_the_rule_that_catches_it() -> None:
    """With entities the breaker sees one card, not a broken rule; a rule reviewing everybody
    still trips within its window."""
    rb = RuleBreaker(window_events=2000, multiple=3.0, min_events=200, min_entities=20)
    trips = burst_stream(rb, with_entities=True)
    assert trips == []
    for i in range(2000):  # now a broken rule reviews every card
        trips += rb.observe("review", ["review_all"], entity=f"c{i}")
    assert [t.source for t in trips] == ["review_all"]
    assert trips[0].at_event - 6000 <= 2000


def test_without_entities_the_same_burst_trips() -> None:
    rb = RuleBreaker(window_events=2000, multiple=3.0, min_events=200)
    assert [t.source for t in burst_stream(rb, with_entities=False)] == ["card_testing"]


class NaNModel:
    """A model stage whose score is NaN (a blown-up online model)."""

    def score(self, tx: object, feats: object) -> tuple[float, str]:
        return float("nan"), "v9"

    def on_decision(self, *a: object, **kw: object) -> None:
        pass


@pytest.mark.parametrize("guarded", [True, False])
def test_a_nan_score_is_a_model_failure_not_a_score(guarded: bool) -> None:
    """A NaN score was decided on as a score: no `degraded` flag, no fallback counted, and the
    model guard recorded a success."""
    from fds.engine import Engine
    from fds.metrics import Metrics
    from fds.policy import Policy

    guard = ModelGuard(latency_budget_s=1.0, max_failures=2, clock=FakeClock()) if guarded else None
    m = Metrics()
    e = Engine(model=NaNModel(), policy=Policy(), guard=guard, metrics=m)
    tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 1.0}
    d = e.decide(tx)
    assert d["model_score"] is None and "degraded" in d["flags"] and d["action"] == "approve"
    assert b'fds_model_fallbacks_total{reason="error"} 1.0' in m.exposition()
    if guard is not None:
        e.decide(tx)
        assert guard.degraded  # two failures in a row open the guard


def test_a_rule_demoted_to_shadow_that_raises_has_no_effect() -> None:
    """An active rule that raises makes a dead letter; one the breaker demoted to shadow still
    did (a shadow rule's error is only counted: a review)."""
    from fds.engine import Engine
    from fds.errors import StageError
    from fds.rules.ruleset import load_ruleset_text

    rules = load_ruleset_text(
        "version: v\nrules:\n"
        "  - {id: ratio, when: amount / extra.base > 3, action: decline, score: 0.9, reason: r}\n"
    )
    e = Engine(rules=rules)
    tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 100.0, "extra": {"base": 0}}
    with pytest.raises(StageError, match="rule ratio raised ZeroDivisionError"):
        e.decide(tx)
    e.demoted.add("ratio")  # as the rate breaker does
    assert e.decide(tx)["action"] == "approve"
    assert rules.error_counts == {"ratio": 2}


def _raising_engine() -> tuple[Any, Any]:
    from fds.engine import Engine
    from fds.metrics import Metrics
    from fds.pipeline import BREAKER_MIN_EVENTS, BREAKER_MULTIPLE, BREAKER_WINDOW
    from fds.rules.ruleset import load_ruleset_text

    rules = load_ruleset_text(
        "version: v\nrules:\n"
        "  - {id: big, when: amount > 990, action: review, score: 0.6, reason: r}\n"
        "  - {id: ratio, when: amount / extra.base > 3, action: decline, score: 0.9, reason: r}\n"
    )
    breaker = RuleBreaker(BREAKER_WINDOW, multiple=BREAKER_MULTIPLE, min_events=BREAKER_MIN_EVENTS)
    return Engine(rules=rules, breaker=breaker, metrics=Metrics()), rules


def _outcomes(engine: Any, bad: Callable[[int], bool], n: int = 3000) -> list[str]:
    from fds.errors import StageError

    out = []
    for i in range(n):
        base = 0 if bad(i) else 10
        tx = {"tx_id": f"t{i}", "ts": float(i), "card_id": f"c{i % 500}", "amount": 100.0,
              "extra": {"base": base}}  # fmt: skip
        try:
            out.append(engine.decide(tx)["action"])
        except StageError:
            out.append("dead letter")
    return out


def test_an_active_rule_raising_on_many_cards_is_demoted_and_they_are_decided() -> None:
    """A QA pass: a hot-reloaded rule raising on 40% of the payments made 2,400 of 6,000 dead
    letters, none decided, nothing demoted (the breaker watched actions only)."""
    engine, rules = _raising_engine()
    got = _outcomes(engine, lambda i: i >= 1000 and i % 5 < 2)
    assert engine.demoted == {"ratio"}
    at = [i for i, a in enumerate(got) if a == "dead letter"]
    assert at[0] == 1000 and len(at) < 100  # demoted within the first hundred it raised on
    assert at[-1] < 1250 and got.count("approve") == len(got) - len(at)  # then decided
    assert (
        engine.metrics.registry.get_sample_value(
            "fds_guardrail_demotions_total", {"kind": "rule", "target": "ratio"}
        )
        == 1
    )
    assert rules.error_counts["ratio"] > len(at)  # still counted in shadow


def test_a_raise_before_any_review_is_judged_by_the_files_multiple() -> None:
    """A QA pass: ``policy.breaker_multiple`` was taken at the first review or decline, so a
    rule raising while everything was approved was demoted at the default 3x (a limit of
    0.015 where the file asked 0.05)."""
    from fds.engine import Engine
    from fds.errors import StageError
    from fds.rules.ruleset import load_ruleset_text

    rules = load_ruleset_text(
        "version: v\nrules:\n"
        "  - {id: ratio, when: amount / extra.base > 3, action: review, score: 0.5, reason: r}\n"
        "policy: {breaker_multiple: 10}\n",
        "r.yaml",
    )
    engine = Engine(rules=rules, breaker=RuleBreaker(1000, multiple=3.0, min_events=100))
    with pytest.raises(StageError):
        engine.decide({"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 1.0,
                       "extra": {"base": 0}})  # fmt: skip
    assert engine.breaker.multiple == 10.0


def test_a_few_poison_pills_stay_dead_letters_and_demote_nothing() -> None:
    """RELIABILITY test 4: a value that makes a rule throw is a dead letter, each one."""
    engine, _ = _raising_engine()
    pills = {7, 500, 1234, 2900}
    got = _outcomes(engine, lambda i: i in pills)
    assert not engine.demoted
    assert [i for i, a in enumerate(got) if a == "dead letter"] == sorted(pills)


def test_a_breaker_pickled_before_it_guarded_raises_still_works() -> None:
    import pickle

    rb = RuleBreaker(window_events=100, multiple=3.0, min_events=20)
    for k in (rb.baseline, rb._count, rb._hits, rb._entities):
        del k["raise"]  # as an engine checkpoint of an earlier release holds it
    old = pickle.loads(pickle.dumps(rb))
    trips = [t for i in range(100) for t in old.observe("raise", ("r",), entity=f"c{i}")]
    assert [(t.source, t.action) for t in trips] == [("r", "raise")]
    for _ in range(200):  # windows close, baselines update
        old.observe("approve")
    old.reset("r")


@pytest.mark.parametrize(
    ("written", "demoted"),
    [
        ("", {"wave"}),  # the default: demoted
        ("    breaker: false\n", set()),  # the analyst's exemption
        ("policy: {breaker_multiple: 1000}\n", set()),  # the analyst's own multiple
    ],
)
def test_an_analyst_sets_the_breaker_in_the_rules_file(written: str, demoted: set) -> None:
    """A QA pass: the README told analysts to choose the breaker's `multiple` from a
    backtest, but it was fixed in the code (3.0), and a rule catching a genuine fraud wave
    could not be kept from demotion. `policy.breaker_multiple` sets it, a rule's `breaker:
    false` exempts that rule's rate."""
    from fds.engine import Engine
    from fds.pipeline import BREAKER_MIN_EVENTS, BREAKER_MULTIPLE, BREAKER_WINDOW
    from fds.policy import Policy
    from fds.rules.ruleset import load_ruleset_text

    text = (
        "version: v\nrules:\n"
        "  - id: wave\n    when: amount > 500\n    action: decline\n    score: 1.0\n"
        "    reason: a fraud wave\n"
    )
    rules = load_ruleset_text(text + written, "r.yaml")
    breaker = RuleBreaker(BREAKER_WINDOW, multiple=BREAKER_MULTIPLE, min_events=BREAKER_MIN_EVENTS,
                          initial_baseline={"decline": 0.01})  # fmt: skip
    engine = Engine(rules=rules, breaker=breaker, policy=Policy.from_spec(rules.spec.policy))
    for i in range(3000):  # a wave: 10% of payments, of many cards
        amount = 900.0 if i % 10 == 0 else 100.0
        engine.decide({"tx_id": f"t{i}", "ts": float(i), "card_id": f"c{i % 500}",
                       "amount": amount})  # fmt: skip
    assert engine.demoted == demoted


def _declining_everybody(more: str = "") -> tuple[Any, Any]:
    """An engine whose one rule, ``all``, declines every payment (``more``: the rules file's
    text after it), guarded by the rate breaker; and its ruleset."""
    from fds.engine import Engine
    from fds.policy import Policy
    from fds.rules.ruleset import load_ruleset_text

    rules = load_ruleset_text(
        "version: v\nrules:\n  - {id: all, when: amount > 0, action: decline, score: 1.0,"
        " reason: r}\n" + more,
        "r.yaml",
    )
    engine = Engine(rules=rules, breaker=RuleBreaker(2000, min_events=200),
                    policy=Policy.from_spec(rules.spec.policy))  # fmt: skip
    return engine, rules


def test_a_rule_demoted_in_an_earlier_releases_checkpoint_stays_demoted() -> None:
    """A review: a checkpoint of the release before `breaker:` keeps each demoted rule's
    definition without that field; the new one has it, so every demotion was lifted at the
    first decision ("its definition changed") and a rule declining everybody was back in
    force. Compared with the field at its default, it stays demoted; and a state loaded
    mid-run takes the rules file's breaker settings again."""
    import pickle

    from fds.engine import Engine

    engine, rules = _declining_everybody("policy: {breaker_multiple: 10}\n")
    old = pickle.loads(pickle.dumps(rules.rules[0].spec))
    del old.__dict__["breaker"]  # (as an earlier release pickled it)
    engine.demoted.add("all")
    engine._demoted_as["all"] = old
    tx = {"tx_id": "t", "ts": 1.0, "card_id": "c", "amount": 5.0}
    assert engine.decide(tx)["rule_hits"][0]["state"] == "shadow" and engine.demoted == {"all"}
    engine.restore("all")
    assert engine.decide(tx)["action"] == "decline" and engine.breaker.multiple == 10.0
    engine.load_state_dict(pickle.loads(pickle.dumps(Engine(
        rules=rules, breaker=RuleBreaker(2000, min_events=200)).state_dict())))  # fmt: skip
    assert engine.breaker.multiple == 3.0  # (the state's, until the next judged decision)
    engine.decide(tx)
    assert engine.breaker.multiple == 10.0


def test_a_replay_summary_counts_the_demotions_lifted_since() -> None:
    """A QA pass: a rule demoted and put back in force by an edit during a replay left no
    trace in its summary (5,720 decisions made without it)."""
    from fds.replay import ReplayInput, run

    engine, _ = _declining_everybody()
    txs = [{"tx_id": f"t{i}", "ts": float(i), "card_id": f"c{i % 50}", "amount": 5.0}
           for i in range(600)]  # fmt: skip

    def on_event(i: int) -> None:
        if i == 500:
            engine.restore("all", why="edited")

    class Sink(list):
        write = list.append

    s = run(engine, ReplayInput(txs, []), Sink(), Sink(), on_event=on_event)
    assert s.demotions >= 1 and ("rate-breaker demotions", f"{s.demotions} (lifted since: "
                                 f"{s.demotions - len(s.demoted)})") in s.rows()  # fmt: skip
