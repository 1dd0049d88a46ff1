"""The model's input: one function shared by the scorer and the trainer.

``to_vector(tx, features)`` turns a feature snapshot plus the numeric transaction fields into
the ``{name: float}`` dict River models read. Rules for the snapshot:

- numbers pass through (``float``); ``True``/``False`` become ``1.0``/``0.0``;
- ``None`` (a feature with no value yet, e.g. an average over an empty window) becomes ``0.0``
  so that every estimator (trees included) sees the same keys on every transaction;
- strings and other objects are skipped (the model is numeric; encode categories as features);
- keys starting with ``_`` (engine internals such as ``_flags``) are skipped;
- non-finite numbers become ``0.0``.

From the transaction: ``amount``, ``log_amount`` (``log1p``), and the UTC hour as
``hour_sin``/``hour_cos`` (a cyclic encoding: 23h and 0h are neighbours).

>>> x = to_vector({"amount": 99.0, "ts": 0.0}, {"n_1h": 3, "new_country": True, "avg": None})
>>> x["n_1h"], x["new_country"], x["avg"], round(x["log_amount"], 3), x["hour_cos"]
(3.0, 1.0, 0.0, 4.605, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["to_vector"]

_DAY = 86400.0
_TAU_PER_HOUR = 2.0 * math.pi / 24.0
_isfinite = math.isfinite


def to_vector(tx: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, float]:
    """Model input for one transaction (see the module docstring for the rules)."""
    x: dict[str, float] = {}
    for k, v in features.items():
        if k[:1] == "_":
            continue
        t = type(v)
        if t is float:
            x[k] = v if _isfinite(v) else 0.0
        elif t is bool:
            x[k] = 1.0 if v else 0.0
        elif t is int:
            x[k] = float(v)
        elif v is None:
            x[k] = 0.0
        elif isinstance(v, int | float):  # numpy scalars and other numeric types
            f = float(v)
            x[k] = f if _isfinite(f) else 0.0
    amount = float(tx.get("amount") or 0.0)
    x["amount"] = amount
    x["log_amount"] = math.log1p(amount) if amount > 0 else 0.0
    ts = tx.get("ts")
    if isinstance(ts, int | float):
        h = (ts % _DAY) / 3600.0 * _TAU_PER_HOUR
        x["hour_sin"] = math.sin(h)
        x["hour_cos"] = math.cos(h)
    return x
