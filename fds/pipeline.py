"""Builds an :class:`~fds.engine.Engine` from a rules file and a model spec.

The same builder serves ``fds replay``, ``fds run`` (Kafka), ``fds demo`` and the benchmarks,
so every door runs the same code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fds.engine import Engine

__all__ = ["DEFAULT_MODEL", "DEFAULT_RULES", "build_engine"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RULES = ROOT / "rules" / "default.yaml"
DEFAULT_MODEL = ROOT / "models" / "default.yaml"


def build_engine(
    rules: str | Path | None = DEFAULT_RULES,
    model: str | Path | None = DEFAULT_MODEL,
    *,
    metrics: Any = None,
    watch: bool = False,
) -> Engine:
    """An engine with features + rules + policy from ``rules`` and a model from ``model``.

    ``None`` for either leaves that part out (``rules=None, model=None`` is the bare pipeline:
    every transaction approved with score 0). ``watch`` reloads the rules file when it changes.
    """
    if rules is None and model is None:
        return Engine(metrics=metrics)
    raise NotImplementedError("stages are wired once features/rules/model land")
