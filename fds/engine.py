"""The one code path: ``source -> parse -> features -> rules -> model -> policy -> sink``.

Kafka, file replay and the simulator differ only in their source and sink. Each stage is a
small interface (below); with no stages configured every transaction is approved with score 0.

>>> engine = Engine()
>>> d = engine.decide({"tx_id": "t1", "ts": 1767225600.0, "card_id": "c1", "amount": 5.0})
>>> d["action"], d["score"], d["model_score"], d["rule_hits"]
('approve', 0.0, None, [])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from fds.errors import StageError
from fds.timeutil import format_ts

__all__ = ["Engine", "FeatureStage", "ModelStage", "PolicyStage", "RuleStage"]


@runtime_checkable
class FeatureStage(Protocol):
    """Windowed features: a snapshot per transaction, updated by late labels."""

    def compute(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """Fold ``tx`` into the state and return its feature snapshot."""
        ...

    def on_label(self, label: Mapping[str, Any]) -> None: ...


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
        self, hits: list[dict[str, Any]], model_score: float | None, ts: float
    ) -> tuple[str, float]: ...


def _lap(m: Any, stage: str, t: float, perf: Callable[[], float]) -> float:
    now = perf()
    m.stage_time(stage, now - t)
    return now


class Engine:
    """Decides transactions and learns from labels, one event at a time.

    Parameters
    ----------
    features, rules, model, policy
        The stages; any may be ``None`` (skipped).
    clock
        Wall clock for ``decided_at`` and ``latency_ms`` (injectable for tests).
    """

    def __init__(
        self,
        *,
        features: FeatureStage | None = None,
        rules: RuleStage | None = None,
        model: ModelStage | None = None,
        policy: PolicyStage | None = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.features = features
        self.rules = rules
        self.model = model
        self.policy = policy
        self.metrics = metrics
        self._clock = clock
        self._perf = time.perf_counter

    def decide(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """Decide one validated transaction. Raises :class:`StageError` naming the stage."""
        m = self.metrics
        if m is not None and m.sample_stages():
            return self._decide_timed(tx, m)
        perf = self._perf
        t0 = perf()
        features, rules, model, policy = self.features, self.rules, self.model, self.policy
        stage = "features"
        try:
            feats = features.compute(tx) if features is not None else {}
            stage = "rules"
            hits = rules.evaluate(tx, feats) if rules is not None else []
            stage = "model"
            model_score, model_version = (
                model.score(tx, feats) if model is not None else (None, None)
            )
            stage = "policy"
            action, score = (
                policy.decide(hits, model_score, tx["ts"])
                if policy is not None
                else ("approve", 0.0)
            )
        except Exception as e:
            raise StageError(stage, e) from e
        return self._emit(tx, feats, hits, model_score, model_version, action, score, t0)

    def _decide_timed(self, tx: Mapping[str, Any], m: Any) -> dict[str, Any]:
        """The same as :meth:`decide`, timing each stage (a sample of events, for metrics)."""
        perf = self._perf
        t0 = t = perf()
        feats: dict[str, Any] = {}
        hits: list[dict[str, Any]] = []
        model_score = model_version = None
        action, score = "approve", 0.0
        stage = "features"
        try:
            if self.features is not None:
                feats = self.features.compute(tx)
                t = _lap(m, stage, t, perf)
            stage = "rules"
            if self.rules is not None:
                hits = self.rules.evaluate(tx, feats)
                t = _lap(m, stage, t, perf)
            stage = "model"
            if self.model is not None:
                model_score, model_version = self.model.score(tx, feats)
                t = _lap(m, stage, t, perf)
            stage = "policy"
            if self.policy is not None:
                action, score = self.policy.decide(hits, model_score, tx["ts"])
                _lap(m, stage, t, perf)
        except Exception as e:
            raise StageError(stage, e) from e
        return self._emit(tx, feats, hits, model_score, model_version, action, score, t0)

    def _emit(
        self,
        tx: Mapping[str, Any],
        feats: dict[str, Any],
        hits: list[dict[str, Any]],
        model_score: float | None,
        model_version: str | None,
        action: str,
        score: float,
        t0: float,
    ) -> dict[str, Any]:
        ts = tx["ts"]
        now = self._clock()
        flags = feats.pop("_flags", None) if feats else None
        latency = self._perf() - t0
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
            "latency_ms": round(latency * 1000.0, 3),
            "features": feats,
            "flags": flags or [],
        }
        if self.model is not None:
            self.model.on_decision(tx, decision)
        m = self.metrics
        if m is not None:
            m.decision(action, latency, now - ts)
            for h in hits:
                m.rule_hit(h["id"], h["state"])
        return decision

    def close(self) -> None:
        """Stop the stages' background work (rules watcher, model poller)."""
        for stage in (self.features, self.rules, self.model):
            close = getattr(stage, "close", None)
            if close is not None:
                close()

    def learn(self, label: Mapping[str, Any]) -> None:
        """Feed one label (late feedback) to the stages that learn from labels."""
        if self.features is not None:
            self.features.on_label(label)
        if self.model is not None:
            self.model.on_label(label)
