"""Builds an :class:`~fds.engine.Engine` from a rules file and a model spec.

The same builder serves ``fds replay``, ``fds run`` (Kafka), ``fds demo`` and the benchmarks,
so every door runs the same code path.

>>> engine = build_engine(DEFAULT_RULES, None)
>>> d = engine.decide({"tx_id": "t1", "ts": 1767225600.0, "card_id": "c1", "amount": 5.0,
...                    "merchant_id": "m1", "country": "KR", "device_id": "d1"})
>>> d["action"], d["ruleset_version"] == engine.rules.version, "card_count_1h" in d["features"]
('approve', True, True)
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fds.shipped import DEFAULT_MODEL, DEFAULT_RULES

if TYPE_CHECKING:  # (imported when an engine is built: the CLI reads the defaults above)
    from fds.engine import Engine

__all__ = ["DEFAULT_MODEL", "DEFAULT_RULES", "build_engine"]

# Guardrail defaults. A window of 2,000 decisions is a few seconds of peak traffic: a rule
# that declines everything is caught within ~min_events decisions, long before customers notice.
BREAKER_WINDOW = 2_000
BREAKER_MIN_EVENTS = 200
BREAKER_MULTIPLE = 3.0  # a rule may triple the decline/review rate before it is demoted


def _say_if_shadowed(rules: str | Path) -> None:
    """Warn when the shipped rules decide while the working folder has a ``rules/default.yaml``
    of its own: a user editing that file without ``--rules`` saw no change and no word (a
    README walk: the decisions carried the shipped ruleset's version)."""
    here = Path("rules") / DEFAULT_RULES.name
    if Path(rules) != DEFAULT_RULES or not here.is_file():
        return
    with contextlib.suppress(OSError):
        if (
            here.resolve() != DEFAULT_RULES.resolve()
            and here.read_bytes() != DEFAULT_RULES.read_bytes()
        ):
            logging.getLogger("fds.pipeline").warning(
                "the shipped rules decide (%s), not %s of the working folder: give --rules %s "
                "to use that one", DEFAULT_RULES, here, here,
            )  # fmt: skip


def build_engine(
    rules: str | Path | None = DEFAULT_RULES,
    model: str | Path | None = DEFAULT_MODEL,
    *,
    metrics: Any = None,
    watch: bool = False,
    model_watch: bool = False,
    model_fed: bool = False,
    poll_seconds: float = 1.0,
    guardrails: bool = True,
    grace: str | float | None = None,
    registry: str | Path | None = None,
    provenance: bool = False,
    keep_rules: str | Path | None = None,
    compiler: Any = None,
) -> Engine:
    """An engine with features + rules + policy from ``rules`` and a model from ``model``.

    ``None`` for either leaves that part out (``rules=None, model=None`` is the bare pipeline:
    every transaction approved with score 0). ``watch`` reloads the rules file when it changes
    (off the hot path; a broken file is rejected and the last good ruleset stays).
    ``model_watch`` serves the registry's champion and hot-swaps new versions as ``fds train``
    publishes them (the streaming service); without it an in-process trainer learns from
    :meth:`Engine.learn` labels, deterministically (replay, demo, benchmarks).
    ``poll_seconds``: how often ``model_watch`` looks for a new champion in ``registry`` (the
    model registry's folder; ``None``: ``models/registry`` with ``model_watch``, else none: the
    versions stay in the process); the rules file is looked at every
    second. ``metrics``: a :class:`fds.metrics.Metrics` the engine reports to.
    ``model_fed``: a models topic fills the registry (its emptiness is said once it is read).
    ``guardrails`` adds the rate circuit breaker and the model guard (fds.guardrails).
    ``grace``: how late an event may be and still be folded in exactly (``None``: the rules
    file's ``grace``, 5m when it gives none).
    ``provenance``: the feature state records each event's input partition (``fds run`` with
    a state topic: another instance takes partitions over from its snapshot).
    ``compiler``: a :class:`fds.features.kernel.Compiler`: the features run as a compiled kernel
    once built (the CLI's :meth:`~fds.features.kernel.Compiler.from_env`); ``None``: interpreted.
    ``keep_rules``: with ``watch``, a file that keeps a copy of the last good rules, which
    decide when the rules file does not load at the next start (``fds run``: its state dir).
    """
    from fds.engine import Engine
    from fds.features import FeaturePlan
    from fds.guardrails import MODEL_BUDGET_S, ModelGuard, RuleBreaker
    from fds.policy import Policy
    from fds.rules import ReloadingRuleset, load_ruleset

    features: Any = None
    rule_stage: Any = None
    policy: Any = None
    if rules is not None:
        _say_if_shadowed(rules)
        if watch:
            # (started once every stage is built: a model spec refused left it running, and a
            # test process gathered 100 of them)
            rule_stage = ReloadingRuleset(rules, metrics=metrics, keep=keep_rules, start=False)
            ruleset = rule_stage.current
            policy = rule_stage.policy
        else:
            rule_stage = ruleset = load_ruleset(rules, run_tests=True)
            policy = Policy.from_spec(ruleset.policy)
            if metrics is not None:
                metrics.ruleset_info(ruleset.version)
        features = FeaturePlan(
            list(ruleset.features),
            timezone=ruleset.spec.timezone,
            grace=ruleset.spec.grace if grace is None else grace,
            provenance=provenance,
            compiler=compiler,
            max_entities=ruleset.spec.max_entities,
        )
        if watch:  # (a reload's caps apply at its first transaction, on the deciding thread)
            plan = features
            follow = rule_stage.on_swap
            follow.append(lambda rs: setattr(plan, "max_entities", rs.spec.max_entities))
    model_stage = None
    if model is not None:
        from fds.models import build_model_stage

        model_stage = build_model_stage(
            model, registry=registry, watch=model_watch, poll_seconds=poll_seconds,
            metrics=metrics, fed=model_fed,
        )  # fmt: skip
        if policy is None:
            policy = Policy()
        inputs = model_stage.spec.inputs
        if rules is None and inputs.reads_rules:  # (served without a word: a QA pass)
            logging.getLogger("fds.pipeline").warning(
                "no rules, and model spec %r reads the rules' results (inputs: rules: %s): "
                "its rule_score is 0 for every transaction, as if no rule ever fired, unlike "
                "what it learned from; give it its rules (--rules FILE), or use a spec with "
                "inputs: {rules: false}",
                model_stage.spec.name, "true" if inputs.rules is True else inputs.rules,
            )  # fmt: skip
    if watch and rule_stage is not None:
        rule_stage.start()
    breaker = guard = None
    if guardrails:
        breaker = RuleBreaker(
            window_events=BREAKER_WINDOW, multiple=BREAKER_MULTIPLE, min_events=BREAKER_MIN_EVENTS
        )
        guard = ModelGuard(latency_budget_s=MODEL_BUDGET_S) if model_stage is not None else None
    return Engine(
        features=features,
        rules=rule_stage,
        model=model_stage,
        policy=policy,
        metrics=metrics,
        breaker=breaker,
        guard=guard,
    )
