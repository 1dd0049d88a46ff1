"""One pass instead of three: a served ``StandardScaler -> LogisticRegression`` pipeline folded.

River evaluates the default spec's pipeline step by step: a copy of the input without the rules'
results (:class:`~fds.models.inputs.WithoutRuleInputs`), a new dict of scaled values, then a dot
product with the weights -- three passes over the input and two new dicts per transaction. A
served version never learns (the trainer learns its own copy and publishes new versions), so its
steps can be folded once, when the version is loaded, off the hot path::

    logit = intercept + sum over inputs i of  w_i * (x_i - m_i) / s_i
          = (intercept - sum of c_i) + sum of a_i * x_i   with a_i = w_i / s_i,
                                                               c_i = w_i * m_i / s_i

An input the scaler has no spread for (``s_i = 0``, so River scales it to 0), an input with no
weight, and an input the first step drops contribute nothing and are left out. The probability
is River's own sigmoid. The result equals River's up to floating-point summation order (the
tests hold it to 1e-12); anything else (another estimator, a windowed scaler) is served as is.

>>> from river import linear_model, preprocessing
>>> pipe = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> for i in range(50):
...     pipe.learn_one({"a": float(i % 7), "b": float(i % 3)}, i % 7 > 4)
>>> x = {"a": 6.0, "b": 1.0}
>>> fast = fuse(pipe)
>>> abs(fast.predict_proba_one(x)[True] - pipe.predict_proba_one(x)[True]) < 1e-12
True
>>> fuse(linear_model.LogisticRegression()) is None  # nothing to fold
True
"""

from __future__ import annotations

import math
import operator
from typing import Any

from river import compose, linear_model, optim, preprocessing
from river.utils.math import sigmoid

from fds.models.inputs import WithoutRuleInputs
from fds.models.vector import RULE_SCORE

__all__ = ["FusedLogistic", "fuse", "serving"]


class FusedLogistic:
    """A frozen scaled logistic regression in one pass (see the module docstring).

    ``model`` is the River pipeline it was folded from (kept for anything but scoring). The
    engine gives the model the same keys in the same order on every transaction, so the terms
    are also laid out in that order once (``_layout``): scoring is then one C-level dot product
    over ``x.values()``. An input in another order takes a new layout. Inputs must be finite
    (:func:`fds.models.vector.to_vector` makes them so): a key that weighs nothing still enters
    the dot product as ``0.0 * x``, where River would leave a non-finite value out.
    """

    def __init__(self, model: Any, terms: dict[str, tuple[float, float]], intercept: float):
        self.model = model
        self._terms = terms
        self._intercept = intercept
        self._layout: tuple[tuple[str, ...], list[float], float] = ((), [], intercept)

    def _lay_out(self, keys: tuple[str, ...]) -> tuple[tuple[str, ...], list[float], float]:
        terms = self._terms
        a = [terms[k][0] if k in terms else 0.0 for k in keys]
        base = self._intercept - sum(terms[k][1] for k in keys if k in terms)
        self._layout = layout = (keys, a, base)  # one reference: never seen half-built
        return layout

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        keys = tuple(x)
        layout = self._layout
        if keys != layout[0]:
            layout = self._lay_out(keys)
        p = sigmoid(layout[2] + sum(map(operator.mul, layout[1], x.values())))
        return {False: 1.0 - p, True: p}


def fuse(model: Any) -> FusedLogistic | None:
    """The folded form of ``model``, or ``None`` when it is not (optionally
    ``WithoutRuleInputs``, then) ``StandardScaler`` then ``LogisticRegression``."""
    if not isinstance(model, compose.Pipeline):
        return None
    steps = list(model.steps.values())
    drop: set[str] = set()
    if steps and isinstance(steps[0], WithoutRuleInputs):
        drop.add(RULE_SCORE)
        steps = steps[1:]
    if len(steps) != 2:
        return None
    scaler, lr = steps
    if not (
        type(scaler) is preprocessing.StandardScaler
        and scaler.with_std
        and scaler.window_size is None
        and type(lr) is linear_model.LogisticRegression
        and type(lr.loss) is optim.losses.Log
    ):
        return None
    terms: dict[str, tuple[float, float]] = {}
    weights = lr._weights
    for k, var in scaler.vars.items():
        w = weights.get(k, 0.0) if k not in drop else 0.0
        if var and w:
            if var < 0:  # (not from River: a crafted or damaged artifact, its root complex,
                return None  # a TypeError that stopped fds run at start, a QA pass)
            s = var**0.5
            terms[k] = (w / s, w * scaler.means[k] / s)
    if not all(math.isfinite(a) and math.isfinite(c) for a, c in terms.values()):
        return None
    return FusedLogistic(model, terms, float(lr.intercept))


def serving(model: Any) -> Any:
    """What serves ``model``: its folded form when it has one, otherwise ``model`` itself."""
    fast = fuse(model)
    return fast if fast is not None else model
