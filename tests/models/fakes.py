"""Tiny stand-in models for serving tests (module level, so they pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class FeatureModel:
    """Scores a transaction by one input feature (clipped to [0, 1])."""

    def __init__(self, feature: str) -> None:
        self.feature = feature

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        p = min(1.0, max(0.0, x.get(self.feature, 0.0)))
        return {True: p, False: 1.0 - p}

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        return None


class NaNModel(FeatureModel):
    """Unpickles fine, but its scores are not probabilities: must fail the canary."""

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        return {True: float("nan"), False: float("nan")}


class RaisesOn(FeatureModel):
    """Scores like :class:`FeatureModel` but raises on inputs whose ``boom`` is 1 (a library
    edge case the canary's recent inputs did not meet)."""

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        if x.get("boom") == 1.0:
            raise ZeroDivisionError("boom")
        return super().predict_proba_one(x)


class LearnRaises(FeatureModel):
    """Scores like :class:`FeatureModel` but raises on every example it learns."""

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        raise ValueError("math domain error")


class NaNOn(FeatureModel):
    """Scores like :class:`FeatureModel` but NaN on inputs whose ``odd`` is 1 (an overflow on
    a rare value the canary's recent inputs did not meet)."""

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        if x.get("odd") == 1.0:
            return {True: float("nan"), False: float("nan")}
        return super().predict_proba_one(x)


class Counting(FeatureModel):
    """A :class:`FeatureModel` that counts its scorings (all instances together)."""

    calls = 0

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        Counting.calls += 1
        return super().predict_proba_one(x)


class Threads(FeatureModel):
    """A :class:`FeatureModel` that records the thread of each scoring (all instances)."""

    names: ClassVar[list[str]] = []

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        import threading

        Threads.names.append(threading.current_thread().name)
        return super().predict_proba_one(x)


def servers_inline_and_watching(spec: Any, folder: Path) -> list[tuple[bool, Any, Any]]:
    """``(watch, server, registry)`` for a replay's scorer (inline) and fds run's (watch mode,
    no poll: offers come directly), each on a registry of its own under ``folder``."""
    from fds.models.registry import Registry
    from fds.models.scorer import ModelServer

    out = []
    for watch in (False, True):
        reg = Registry(folder / str(watch))
        srv = ModelServer(spec, learn=False, registry=reg)
        if watch:
            srv.start_watch(every=3600)
        out.append((watch, srv, reg))
    return out
