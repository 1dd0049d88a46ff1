"""The one code path: ``source -> parse -> features -> rules -> model -> policy -> sink``.

Kafka, file replay and the simulator differ only in their source and sink. Each stage is a
small interface (below); with no stages configured every transaction is approved with score 0.

>>> engine = Engine()
>>> d = engine.decide({"tx_id": "t1", "ts": 1767225600.0, "card_id": "c1", "amount": 5.0})
>>> d["action"], d["score"], d["model_score"], d["rule_hits"]
('approve', 0.0, None, [])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from fds.errors import FeatureStateMismatch, RuleError, StageError, ValidationError
from fds.guardrails import MODEL, RAISE, Trip, decision_sources, source_kind
from fds.models.vector import rule_inputs
from fds.policy import round_to
from fds.timeutil import MS_THRESHOLD, format_ts

log = logging.getLogger("fds.engine")

#: Decisions flagged ``late`` are said in a log line at most this often (the first at once).
LATE_SAID_EVERY_S = 60.0

__all__ = ["Engine", "FeatureStage", "ModelStage", "PolicyStage", "RuleStage"]


@runtime_checkable
class FeatureStage(Protocol):
    """Windowed features: a snapshot per transaction, updated by late labels."""

    def compute(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """Fold ``tx`` into the state and return its feature snapshot."""
        ...

    def on_label(self, label: Mapping[str, Any]) -> object:
        """Apply a late label (what it returns is not used here)."""
        ...


@runtime_checkable
class RuleStage(Protocol):
    """The current ruleset (hot-reloadable): hits for one transaction."""

    version: str | None

    def evaluate(
        self, tx: Mapping[str, Any], features: Mapping[str, Any]
    ) -> list[dict[str, Any]]: ...


@runtime_checkable
class ModelStage(Protocol):
    """The serving model: a risk score in [0, 1] and the version that produced it."""

    def score(
        self, tx: Mapping[str, Any], features: Mapping[str, Any]
    ) -> tuple[float | None, str | None]: ...

    def on_decision(self, tx: Mapping[str, Any], decision: Mapping[str, Any]) -> None:
        """See every decision (the trainer keeps its feature snapshot for the later label)."""
        ...

    def on_label(self, label: Mapping[str, Any]) -> None: ...


@runtime_checkable
class PolicyStage(Protocol):
    """Turns rule hits and the model score into ``(action, final score)``."""

    def decide(
        self,
        hits: list[dict[str, Any]],
        model_score: float | None,
        ts: float,
        stacked: bool = False,
    ) -> tuple[str, float]:
        """``stacked``: the model read the rules' results (passed only when true)."""
        ...


def _definition(spec: Any) -> Any:
    """What of a rule decides (a pydantic model, or None), as the rules' version check reads
    it: its inline tests and the layout of its condition aside (an edit of either put a
    demoted rule back in force under the same version: a QA pass), comparable across
    releases: every field, one a definition pickled by an earlier release lacks at its default
    (a checkpoint's demoted rule, saved before `breaker:` existed, was taken for one edited
    since and put back in force: a review)."""
    fields = getattr(type(spec), "model_fields", None)
    if not fields:
        return spec
    out = {k: getattr(spec, k, f.get_default(call_default_factory=True))
           for k, f in fields.items() if k != "tests"}  # fmt: skip
    if isinstance(out.get("when"), str):
        from fds.rules.expr import condition_key  # (the engine imports no stage's module)

        out["when"] = condition_key(out["when"])
    return out


def _as_shadow(hit: dict[str, Any]) -> dict[str, Any]:
    return {**hit, "state": "shadow", "demoted": True}


class _NaNScore(ValueError):
    """A model scored NaN: no score to act on."""


def _scored(model: Any, tx: Mapping[str, Any], feats: Mapping[str, Any]) -> Any:
    result = model.score(tx, feats)
    if result[0] != result[0]:
        raise _NaNScore(f"model {result[1]} scored NaN")
    return result


def _lap(m: Any, stage: str, t: float, perf: Callable[[], float]) -> float:
    now = perf()
    m.stage_time(stage, now - t)
    return now


#: The types of a validated transaction's amount (the simulator's whole amounts are ints).
_NUMBER = (float, int)


def _unparsed(
    record: Any, what: str = "transaction", parse: str = "parse_transaction"
) -> ValidationError:
    """The error for a record given to the engine without being validated."""
    keys = sorted(map(str, record)) if isinstance(record, Mapping) else type(record).__name__
    return ValidationError(
        f"not a validated {what} ({keys}): give the engine what fds.{parse}(record) returns "
        "(it checks the contract's fields and reads ts as epoch seconds)"
    )


class Engine:
    """Decides transactions and learns from labels, one event at a time.

    Parameters
    ----------
    features, rules, model, policy
        The stages; any may be ``None`` (skipped).
    metrics
        A :class:`fds.metrics.Metrics` (or ``None``): decisions, rule hits, sampled stage times.
    breaker
        A :class:`fds.guardrails.RuleBreaker`: a rule (or the model) that alone pushes the
        decline or review rate beyond its limit is demoted to shadow: its hits are still
        recorded (``state: shadow``, ``demoted: true``) but no longer act.
    guard
        A :class:`fds.guardrails.ModelGuard`: a model that raises or exceeds its latency
        budget is bypassed ("degraded mode": rules decide alone, decisions flagged
        ``degraded``) until it recovers, instead of stalling or failing decisions.
    clock
        Wall clock for ``decided_at`` (injectable for tests).
    """

    def __init__(
        self,
        *,
        features: FeatureStage | None = None,
        rules: RuleStage | None = None,
        model: ModelStage | None = None,
        policy: PolicyStage | None = None,
        metrics: Any = None,
        breaker: Any = None,
        guard: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.features = features
        self.rules = rules
        self.model = model
        self.policy = policy
        self.metrics = metrics
        # the metrics while a fold holds them back (see fold): changes of state still go there
        self._held_metrics: Any = None
        if metrics is not None and rules is not None:  # every rule deciding, at 0 until it
            metrics.watch_ruleset(lambda: self.rules)  # counts (it was never watched: no
            # series for a rule never hit, the dashboard's "no data", a QA pass)
        if metrics is not None and features is not None:  # (fds_features_compiled, documented
            metrics.watch_features(lambda: self.features)  # and never exported: a QA pass)
        self.breaker = breaker
        self.guard = guard
        self.demoted: set[str] = set()  # rule ids (and MODEL) demoted to shadow by the breaker
        # what was demoted, as it was then: the rule's definition (an edit lifts the demotion)
        # and the model version (a swap lifts it)
        self._demoted_as: dict[str, Any] = {}
        self._lifted_for: Any = None  # the ruleset _lift_edited last looked at
        self._breaker_for: Any = None  # the ruleset whose breaker settings are in force
        self.demotions = 0  # by the rate breaker, since this engine was built
        self._exempt: frozenset[str] = frozenset()  # rules written `breaker: false`
        self._rule_ids: tuple[Any, tuple[str, ...]] | None = None  # (ruleset, its rule ids)
        # What the model reads of the rules (fixed per model stage): its score is then final
        # (``reads_rules``), and it gets one input per rule (``reads_rule_ids``; a stage
        # without that attribute: ``reads_rules``).
        self._stacked = bool(getattr(model, "reads_rules", False))
        self._per_rule = bool(getattr(model, "reads_rule_ids", self._stacked))
        self._clock = clock
        self._perf = time.perf_counter
        self._quiet_ok = bool(getattr(rules, "takes_quiet", False))
        self._late_unsaid = 0  # decisions flagged late since the last line that said so
        self._late_say_at = 0.0  # (monotonic) the next such line, at the earliest
        # the last one: its tx_id and ts, the watermark it was judged against and who set it
        self._late_last: tuple[Any, float, float | None, Any] = (None, 0.0, None, None)

    def decide(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """Decide one validated transaction (:func:`fds.parse_transaction`'s). Raises
        :class:`StageError` naming the stage, :class:`ValidationError` for a record that was
        not validated (without ``tx_id``, ``card_id``, a number ``amount`` or ``ts`` as float
        epoch seconds)."""
        m = self.metrics
        timed = m is not None and m.sample_stages()  # time the stages of a sample of events
        perf = self._perf
        t0 = t = perf()
        try:  # (a raw dict: a bare KeyError, or approved with no amount, a QA pass)
            ts = tx["ts"]
            if (
                ts.__class__ is not float or ts >= MS_THRESHOLD  # (seconds, as parsed)
                or tx["amount"].__class__ not in _NUMBER or "card_id" not in tx
                or "tx_id" not in tx
            ):  # fmt: skip
                raise KeyError
        except (KeyError, TypeError, AttributeError):
            raise _unparsed(tx) from None
        feats: dict[str, Any] = {}
        hits: list[dict[str, Any]] = []
        model_score = model_version = None
        flags: list[str] = []
        stage = "features"
        try:
            if self.features is not None:
                feats = self.features.compute(tx)
                if "_flags" in feats:
                    flags = feats.pop("_flags")
                if timed:
                    t = _lap(m, stage, t, perf)
            stage = "rules"
            if self.rules is not None:
                if self.demoted and self._quiet_ok:  # a demoted rule that raises: no effect
                    hits = self.rules.evaluate(tx, feats, quiet=self.demoted)  # type: ignore[call-arg]
                else:
                    hits = self.rules.evaluate(tx, feats)
                if self.demoted:
                    self._lift_edited()
                if self.demoted and hits:
                    hits = [_as_shadow(h) if h["id"] in self.demoted else h for h in hits]
                if timed:
                    t = _lap(m, stage, t, perf)
            stage = "model"
            acting_score = None
            if self.model is not None:
                if self.rules is not None:  # the rules' results join the model's snapshot
                    feats = {**feats, **self._rule_inputs(hits)}
                model_score, model_version = self._score(tx, feats, flags)
                acting_score = model_score
                if model_score is not None and not getattr(self.model, "acting", True):
                    acting_score = None  # maturity gate: scored and logged, not acted on
                    flags.append("model_shadow")
                if timed:
                    t = _lap(m, stage, t, perf)
            stage = "policy"
            if MODEL in self.demoted:
                if model_version is not None and model_version != self._demoted_as.get(MODEL):
                    self.restore(MODEL, why=f"model {model_version} serves now")
                elif acting_score is not None:  # (no trace in the decision: a QA pass)
                    acting_score = None
                    flags.append("model_demoted")
            if self.policy is not None:
                if acting_score is not None and self._stacked:
                    action, score = self.policy.decide(hits, acting_score, ts, stacked=True)
                else:
                    action, score = self.policy.decide(hits, acting_score, ts)
                if timed:
                    _lap(m, stage, t, perf)
            else:
                action, score = "approve", 0.0
        except Exception as e:
            if self.breaker is not None and isinstance(e, RuleError):
                self._configure_breaker()
                self._demote(self.breaker.observe(RAISE, (e.rule,), ts, tx.get("card_id")), None)
            raise StageError(stage, e) from e
        if self.breaker is not None:  # rates are shares of every decision, approvals too
            if action == "approve":
                self.breaker.observe(action, (), ts)
            else:
                self._watch_rates(action, hits, acting_score, ts, tx["card_id"], model_version)
        now = self._clock()
        latency = perf() - t0
        decision = {
            "tx_id": tx["tx_id"],
            "ts": format_ts(ts),
            "decided_at": format_ts(now),
            "action": action,
            "score": score,
            "model_score": model_score,
            "rule_hits": hits,
            "model_version": model_version,
            "ruleset_version": self.rules.version if self.rules is not None else None,
            "latency_ms": round_to(latency * 1000.0, 3),
            "features": feats,
            "flags": flags,
        }
        if self.model is not None:
            self.model.on_decision(tx, decision)
        if m is not None:
            m.decision(action, latency, now - ts)
            if flags and "late" in flags:
                m.late_event("decided")
                self._say_late(tx)
            for h in hits:
                m.rule_hit(h["id"], h["state"])
        return decision

    def _say_late(self, tx: Mapping[str, Any]) -> None:
        """A warning for decisions flagged ``late``, at most every LATE_SAID_EVERY_S, with the
        count since the last one (a burst of them showed in fds_late_events_total alone: a
        soak run); :meth:`report` and :meth:`close` say what is left."""
        self._late_unsaid += 1
        # the watermark it was judged against, as it stands now (said up to a minute later,
        # the watermark then was another: a QA pass)
        by = getattr(self.features, "watermark_tx", None)
        wm = getattr(self.features, "watermark", None)
        self._late_last = (tx.get("tx_id"), tx["ts"], wm, None if by is None else by.get("tx_id"))
        self._flush_late()

    def _flush_late(self, *, now: bool = False) -> None:
        t = time.monotonic()
        if self._late_unsaid and (now or t >= self._late_say_at):
            # the event that set the watermark they are late against: a clock or data error
            # there (a record stamped 2099) made every later one late without a name (QA pass)
            _, _, wm, by = self._late_last
            log.warning(  # (every pair in the template: fields of their own in JSON logs, a QA)
                "events later than the grace period (the rules file's `grace:`) decided on the "
                'state held and flagged late count="%d" last_tx_id="%s" last_ts="%s" '
                'grace_s="%s" watermark="%s" set_by_tx_id="%s"',
                self._late_unsaid, self._late_last[0], format_ts(self._late_last[1]),
                f"{getattr(self.features, 'grace', 0):g}",
                "unknown" if wm is None else format_ts(wm), "unknown" if by is None else by,
            )  # fmt: skip
            self._late_unsaid, self._late_say_at = 0, t + LATE_SAID_EVERY_S

    def _rule_inputs(self, hits: list[dict[str, Any]]) -> dict[str, Any]:
        """The rules' results for the model (:func:`fds.models.vector.rule_inputs`): the rules'
        score, and one input per rule only for a model that reads them."""
        if not self._per_rule:
            return rule_inputs(hits)
        # a reloading ruleset: the one that produced ``hits`` (a reload may have swapped since)
        ruleset = getattr(self.rules, "applied", self.rules)
        ids = self._rule_ids
        if ids is None or ids[0] is not ruleset:
            evaluated = getattr(ruleset, "evaluated", ())
            ids = self._rule_ids = (ruleset, tuple(r.id for r in evaluated))
        return rule_inputs(hits, ids[1])

    def _score(
        self, tx: Mapping[str, Any], feats: Mapping[str, Any], flags: list[str]
    ) -> tuple[float | None, str | None]:
        model, guard = self.model, self.guard
        assert model is not None
        if guard is None:
            try:
                return _scored(model, tx, feats)
            except _NaNScore:  # no score to act on, as a model that failed
                self._fallback("error")
                flags.append("degraded")
                return None, None
        degraded = True  # a model that failed or is bypassed (not one with no version yet)
        if guard.allow():
            t = self._perf()
            try:
                result = _scored(model, tx, feats)
            except Exception as e:  # a failing model degrades to rules alone, never stalls
                result = (None, None)
                guard.failure(e)
                self._fallback("error")
            else:
                guard.success(self._perf() - t)
                degraded = False
        else:
            result = (None, None)
            self._fallback("degraded")
        for kind, reason in guard.transitions():
            if (metrics := self.metrics or self._held_metrics) is not None:
                metrics.degraded(kind == "degraded")
            if reason == "error":
                log.warning('model %s reason="%s" error="%s"', kind, reason, guard.last_error)
            elif reason == "slow":  # (it said error="None": a QA pass)
                log.warning('model %s reason="%s" latency_budget_ms="%g"', kind, reason,
                            guard.latency_budget_s * 1000)  # fmt: skip
            else:
                log.warning("model %s", kind)
        if degraded:
            flags.append("degraded")
        return result

    def _fallback(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.model_fallback(reason)

    def _watch_rates(
        self,
        action: str,
        hits: list[dict[str, Any]],
        model_score: float | None,
        ts: float,
        card: str,
        model_version: str | None,
    ) -> None:
        policy = self.policy
        sources = decision_sources(
            action,
            hits,
            model_score,
            decline_at=getattr(policy, "decline_at", 1.0),
            review_at=getattr(policy, "review_threshold", getattr(policy, "review_at", 1.0)),
        )
        self._configure_breaker()
        if self._exempt:
            sources = [s for s in sources if s not in self._exempt]
        # the card lets the breaker tell one card's fraud burst from a rule gone wrong
        self._demote(self.breaker.observe(action, sources, ts=ts, entity=card), model_version)

    def _configure_breaker(self) -> None:
        """Take the rate breaker's settings of the rules in force, once per ruleset (at its
        first decision the breaker judges, a raise too: a raise before any review took the
        default multiple, a QA pass): ``policy.breaker_multiple`` and the rules written
        ``breaker: false``, whose rates it does not judge. They were fixed in the code, and the
        README told analysts to choose them (a QA pass)."""
        ruleset = getattr(self.rules, "applied", self.rules)
        if ruleset is self._breaker_for:
            return
        self._breaker_for = ruleset
        spec = getattr(ruleset, "spec", None)
        if spec is None:  # (a rule stage of a test, no file behind it)
            return
        assert self.breaker is not None
        self.breaker.multiple = spec.policy.breaker_multiple
        self._exempt = frozenset(r.id for r in spec.rules if not r.breaker)

    def _demote(self, trips: tuple[Trip, ...], model_version: str | None) -> None:
        """Demote what the rate breaker tripped to shadow: logged and counted."""
        for trip in trips:
            self.demoted.add(trip.source)
            self.demotions += 1
            self._demoted_as[trip.source] = (
                self._rule_spec(trip.source) if trip.source != MODEL else model_version
            )
            if (metrics := self.metrics or self._held_metrics) is not None:
                metrics.demoted(trip.kind, trip.source)
            log.warning(
                'demoted to shadow by rate breaker kind="%s" target="%s" action="%s" '
                'rate="%.4f" limit="%.4f"',
                trip.kind,
                trip.source,
                trip.action,
                trip.rate,
                trip.limit,
            )

    def _rule_spec(self, rule_id: str) -> Any:
        """The definition of rule ``rule_id`` in the ruleset in force (``None``: none)."""
        ruleset = getattr(self.rules, "applied", self.rules)
        for r in getattr(ruleset, "rules", ()):
            if r.id == rule_id:
                return r.spec
        return None

    def _lift_edited(self) -> None:
        """Lift the demotion of a rule whose definition changed since (a reload, or a restart
        with an edited file): "an analyst re-activates it in one edit". Looked at once per
        ruleset in force."""
        ruleset = getattr(self.rules, "applied", self.rules)
        if ruleset is self._lifted_for:
            return
        self._lifted_for = ruleset
        for source in [s for s in self.demoted if s != MODEL]:
            spec = self._rule_spec(source)
            if _definition(spec) != _definition(self._demoted_as.get(source)):
                gone = spec is None  # (said "back in force" of it: a QA pass)
                why = "taken out of the rules" if gone else "its definition changed"
                self.restore(source, why=why, gone=gone)

    def restore(self, source: str, why: str = "restored", *, gone: bool = False) -> None:
        """Put a demoted rule (or ``"@model"``) back in force after a fix. The engine does it
        itself when the rule's definition is edited (a reload) or another model version
        serves; ``gone``: the rule was taken out, its demotion is only forgotten."""
        if source in self.demoted:
            said = "demotion forgotten" if gone else "back in force after a demotion"
            log.warning('%s target="%s" why="%s"', said, source, why)
        self.demoted.discard(source)
        self._demoted_as.pop(source, None)
        if self.breaker is not None:
            self.breaker.reset(source)

    def state_dict(self) -> dict[str, Any]:
        """Everything a decision depends on besides the input and the config files.

        Feature windows, the alert budget's recent scores, the rate breaker and its demotions,
        the model's maturity gate and contests.
        With :meth:`load_state_dict` a restarted engine decides exactly as an uninterrupted one
        (rules come from their file, the model from its registry). Picklable.
        """
        save = getattr(self.features, "state_dict", None)
        gate = getattr(self.model, "gate_state", None)
        return {
            **self.history(),
            "features": save() if save is not None else None,
            "budget": getattr(self.policy, "budget", None),
            "breaker": self.breaker,
            "model_gate": gate() if gate is not None else None,
        }

    def history(self) -> dict[str, Any]:
        """The part of :meth:`state_dict` that no rebuild from the input gives back: the
        ruleset versions served (a version never names other rules) and the demotions."""
        served = getattr(self.rules, "served", None)
        return {
            # (under a key of its own for each kind of digest: an earlier release read them
            # as its own kind, and called unchanged files other rules after an up- or
            # downgrade; "rulesets": of the condition's text, "served_rulesets": of windows as
            # written, before `2h` and `120m` were one)
            "served_rulesets_2": served() if served is not None else None,
            "demoted": set(self.demoted),
            "demoted_as": dict(self._demoted_as),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, features: bool = True) -> None:
        """Restore what :meth:`state_dict` saved (same feature declarations required).
        ``features=False``: everything but the feature state, which stays as it is (an
        instance taking its partitions' feature state from another's snapshot adopts that
        instance's alert budget, breaker and model gate with it)."""
        load = getattr(self.features, "load_state_dict", None) if features else None
        if state.get("features") is not None and load is not None:
            load(state["features"])
        elif load is not None and getattr(getattr(self.features, "layout", None), "names", None):
            # (a checkpoint of `--rules none` was restored as complete under rules with
            # features: their windows started empty at the restart, a QA pass)
            raise FeatureStateMismatch(
                "the state was saved without feature state (an engine without features, "
                "e.g. --rules none): the features cannot be restored from it"
            )
        # The budget's history is restored; its size, or whether there is one, is the rules
        # file's as it reads now (an edit made while the engine was down applies).
        budget, now = state.get("budget"), getattr(self.policy, "budget", None)
        if budget is not None and now is not None:
            if budget.budget != now.budget:
                budget.set_budget(now.budget)
            self.policy.budget = budget  # type: ignore[union-attr]
        if state.get("breaker") is not None and self.breaker is not None:
            self.breaker = state["breaker"]
        self.demoted = set(state.get("demoted", ()))
        was = state.get("demoted_as")
        if was is None:  # a checkpoint of a release that did not keep it: as things are now
            model = getattr(self.model, "version", None)
            was = {s: model if s == MODEL else self._rule_spec(s) for s in self.demoted}
        self._demoted_as = dict(was)
        self._lifted_for = None  # a rule edited while the engine was down is lifted
        self._breaker_for = None  # (its breaker, replaced: the rules' settings again, a review)
        if self.rules is not None and self.demoted:  # ... now, not at the next event (a rule
            self._lift_edited()  # taken out stayed exported as demoted, its alert firing, until
            # then: a QA pass)
        served = getattr(self.model, "version", None)  # (and a model demoted before another
        if MODEL in self.demoted and served is not None and served != self._demoted_as.get(MODEL):
            self.restore(MODEL, why=f"model {served} serves now")  # version serves: a review)
        load_gate = getattr(self.model, "load_gate_state", None)
        if state.get("model_gate") is not None and load_gate is not None:
            load_gate(state["model_gate"])
        remember = getattr(self.rules, "remember_served", None)
        if state.get("served_rulesets_2") and remember is not None:  # (earlier releases'
            remember(state["served_rulesets_2"])  # digests, of other kinds: ignored)

    def report(self) -> None:
        """Export slow-moving state to metrics; call between events every few thousand events.

        Rules skipped for a missing name and who is demoted by the rate breaker now (a
        restored engine included); the entities held in window state are read at each scrape
        (the metrics watch the features since they are given). Also serves a model version
        prepared meanwhile (a rollback while the input is idle is served, and shown in
        ``fds_model_info``, without waiting for the next transaction).
        """
        install = getattr(self.model, "install_pending", None)
        if install is not None:
            install()
        self._flush_late()
        m = self.metrics
        if m is None:
            return
        drain = getattr(self.rules, "drain_counts", None)  # a Ruleset or a RulesReloader
        if drain is not None:
            m.drain_rule_counts(drain)
        m.demoted_now((source_kind(s), s) for s in sorted(self.demoted))

    def close(self) -> None:
        """Stop the stages' background work (rules watcher, model poller); say the late
        decisions not said yet."""
        self._flush_late(now=True)
        for stage in (self.features, self.rules, self.model):
            close = getattr(stage, "close", None)
            if close is not None:
                close()

    def fold(self, tx: Mapping[str, Any]) -> None:
        """Decide ``tx`` for its effect on the state only (a restore catching up on what was
        decided before): the decision is dropped and nothing is counted, in the metrics or in
        the rule stage's skip counts (the record was counted when first decided). A change of
        state it makes, the model guard's degraded mode or a rate breaker's demotion, is this
        process's and goes to the metrics (their gauges stayed as they were until the next
        change, an alert firing on for a model acting again: a review)."""
        m, self.metrics = self.metrics, None
        self._held_metrics = m
        hold = getattr(self.rules, "hold_counts", None)
        restore = hold() if hold is not None else None
        plan: Any = self.features if hasattr(self.features, "folding") else None
        if plan is not None:
            plan.folding = True  # (its cap's evictions: counted by who decided them)
        try:
            self.decide(tx)
        finally:
            self.metrics, self._held_metrics = m, None
            if restore is not None:
                restore()
            if plan is not None:
                plan.folding = False

    def learn(self, label: Mapping[str, Any]) -> None:
        """Feed one label (late feedback, :func:`fds.parse_label`'s) to the stages that learn
        from labels; :class:`ValidationError` for a record that was not validated (a bare
        KeyError once the features had learned it and the model not: a QA pass)."""
        try:
            ts = label["ts"]
            if (
                ts.__class__ is not float or ts >= MS_THRESHOLD or "is_fraud" not in label
                or "tx_id" not in label
            ):  # fmt: skip
                raise KeyError
        except (KeyError, TypeError, AttributeError):
            raise _unparsed(label, "label", "parse_label") from None
        if self.features is not None:
            self.features.on_label(label)
        if self.model is not None:
            self.model.on_label(label)
