"""Which inputs a spec's model reads: the rules' results only when ``inputs.rules`` says so.

The engine always adds the rules' score to the model's snapshot (``rule_score``, which the
maturity gate ranks), and one ``rule:<id>`` per rule only for a spec with ``inputs: {rules:
true}`` (:func:`fds.models.vector.rule_inputs`). A spec with ``rules: false`` gets this first
pipeline step, which hides ``rule_score`` from the model (and the trainer drops ``rule:<id>``
keys from decision records written by an engine serving per-rule inputs unless its own spec
reads them).

>>> WithoutRuleInputs().transform_one({"amount": 5.0, "rule_score": 0.7})
{'amount': 5.0}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from river import base

from fds.models.vector import RULE_SCORE

__all__ = ["WithoutRuleInputs", "without_rule_inputs"]


def without_rule_inputs(x: Mapping[Any, Any]) -> dict[Any, Any]:
    """``x`` without ``rule_score`` (a copy: on the hot path, one C-level dict copy)."""
    out = dict(x)
    out.pop(RULE_SCORE, None)
    return out


class WithoutRuleInputs(base.Transformer):
    """Drops the rules' results from the model input (no state, nothing learned)."""

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        return without_rule_inputs(x)
