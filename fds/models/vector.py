"""The model's input: one function shared by the scorer and the trainer.

``to_vector(tx, features)`` turns a feature snapshot plus the numeric transaction fields into
the ``{name: float}`` dict River models read. Rules for the snapshot:

- numbers pass through (``float``, numpy scalars included); ``True``/``False`` become
  ``1.0``/``0.0``;
- ``None`` (a feature with no value yet, e.g. an average over an empty window) becomes ``0.0``
  so that every estimator (trees included) sees the same keys on every transaction;
- strings and other objects are skipped (the model is numeric; encode categories as features),
  and so are engine internals such as ``_flags`` (a list; declared feature names cannot start
  with ``_``);
- non-finite numbers, and integers beyond the float range, become ``0.0``.

From the transaction: ``amount``, ``log_amount`` (``log1p``), and the UTC hour as
``hour_sin``/``hour_cos`` (a cyclic encoding: 23h and 0h are neighbours).

The rules' results: the engine adds :func:`rule_inputs` to the snapshot it gives the model --
always ``rule_score`` (the policy's rule score: the highest active hit's score; the maturity
gate ranks it), and for a spec with ``inputs: {rules: true}`` (per-rule stacking) also
``rule:<id>`` (1 when the rule fired and acts; 0 otherwise, for every rule the ruleset
evaluates, so the keys are stable: a shadow rule's hit, or one of a rule the guardrails
demoted, is 0, as it has no effect on the decision; it was 1, and a shadow rule changed
decisions through the model's score, until 2026-12-05: a QA pass). They are part of the
decision's ``features``, so ``fds train`` sees them in decision records too.

>>> x = to_vector({"amount": 99.0, "ts": 0.0}, {"n_1h": 3, "new_country": True, "avg": None})
>>> x["n_1h"], x["new_country"], x["avg"], round(x["log_amount"], 3), x["hour_cos"]
(3.0, 1.0, 0.0, 4.605, 1.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fds.policy import rule_score

__all__ = [
    "MODEL_INPUTS",
    "RULE_PREFIX",
    "RULE_SCORE",
    "rule_inputs",
    "strip_rule_ids",
    "to_vector",
]

#: Key prefix of one rule's result in the model input; the policy's rule score is ``RULE_SCORE``.
RULE_PREFIX = "rule:"
RULE_SCORE = "rule_score"
#: The names the model's input takes besides the snapshot's (a feature of one of them was
#: overwritten in the model's input and in the decision's snapshot: refused by the rules
#: file's checks).
MODEL_INPUTS = frozenset({RULE_SCORE, "amount", "log_amount", "hour_sin", "hour_cos"})

_DAY = 86400.0
_TAU_PER_HOUR = 2.0 * math.pi / 24.0
_isfinite = math.isfinite
_log1p, _sin, _cos = math.log1p, math.sin, math.cos
_NUMBER = (int, float)  # (a tuple: ``int | float`` would build a union on every call)


def to_vector(tx: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, float]:
    """Model input for one transaction (see the module docstring for the rules)."""
    x: dict[str, float] = {}
    for k, v in features.items():
        t = type(v)
        if t is float:
            x[k] = v if v - v == 0.0 else 0.0  # inf - inf and nan - nan are nan
        elif t is int or t is bool:
            try:
                x[k] = float(v)
            except OverflowError:  # beyond the float range
                x[k] = 0.0
        elif v is None:
            x[k] = 0.0
        elif hasattr(t, "__float__"):  # numpy scalars (float32, int64, bool_), Decimal, ...
            try:
                f = float(v)
            except (TypeError, ValueError, OverflowError):  # e.g. an int beyond float range
                f = 0.0
            x[k] = f if _isfinite(f) else 0.0
    amount = float(tx.get("amount") or 0.0)
    x["amount"] = amount
    x["log_amount"] = _log1p(amount) if amount > 0 else 0.0
    ts = tx.get("ts")
    if isinstance(ts, _NUMBER):
        h = (ts % _DAY) / 3600.0 * _TAU_PER_HOUR
        x["hour_sin"] = _sin(h)
        x["hour_cos"] = _cos(h)
    return x


def rule_inputs(
    hits: Sequence[Mapping[str, Any]], rule_ids: Iterable[str] | None = None
) -> dict[str, Any]:
    """The rules' results as model inputs (see the module docstring): ``rule_score``, and with
    ``rule_ids`` (the ruleset's evaluated rules) one ``rule:<id>`` per rule.

    >>> rule_inputs([{"id": "b", "score": 0.5, "state": "active"}], ["a", "b"])
    {'rule:a': False, 'rule:b': True, 'rule_score': 0.5}
    >>> rule_inputs([{"id": "b", "score": 0.5, "state": "shadow"}], ["a", "b"])
    {'rule:a': False, 'rule:b': False, 'rule_score': 0.0}
    >>> rule_inputs([{"id": "b", "score": 0.5, "state": "active"}])
    {'rule_score': 0.5}
    """
    out: dict[str, Any] = {}
    if rule_ids is not None:
        out = _template(tuple(rule_ids)).copy()
        for h in hits:
            if h.get("state", "active") == "active":  # (a shadow hit acts through no model)
                out[RULE_PREFIX + h["id"]] = True
    out[RULE_SCORE] = rule_score(hits)
    return out


@functools.lru_cache(maxsize=64)
def _template(rule_ids: tuple[str, ...]) -> dict[str, bool]:
    """``rule:<id>: False`` for every rule (built once per ruleset; callers copy it)."""
    return dict.fromkeys((RULE_PREFIX + r for r in rule_ids), False)


def strip_rule_ids(x: Mapping[str, float]) -> dict[str, float]:
    """``x`` without its ``rule:<id>`` keys (a spec that does not read them).

    >>> strip_rule_ids({"amount": 1.0, "rule:a": 1.0, "rule_score": 0.5})
    {'amount': 1.0, 'rule_score': 0.5}
    """
    n = len(RULE_PREFIX)
    return {k: v for k, v in x.items() if k[:n] != RULE_PREFIX}
