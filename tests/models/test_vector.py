"""The model input (fds.models.vector.to_vector) from feature values of every kind."""

from __future__ import annotations

import math

import numpy as np

from fds.models.vector import to_vector


def test_numeric_values_of_every_kind_become_finite_floats():
    """numpy scalars were dropped silently (they are not int/float subclasses) and an int
    beyond the float range raised OverflowError out of the model stage."""
    feats = {
        "f32": np.float32(1.5), "i64": np.int64(7), "b": np.bool_(True), "big": 10**400,
        "inf": np.float64("inf"), "nan": math.nan, "s": "KR", "none": None, "flag": False,
    }  # fmt: skip
    x = to_vector({"amount": 10.0, "ts": 0.0}, feats)
    assert {k: x[k] for k in feats if k in x} == {
        "f32": 1.5, "i64": 7.0, "b": 1.0, "big": 0.0, "inf": 0.0, "nan": 0.0, "none": 0.0,
        "flag": 0.0,
    }  # fmt: skip
    assert "s" not in x
    assert all(type(v) is float for v in x.values())


def test_the_names_a_feature_may_not_take_are_the_ones_to_vector_writes() -> None:
    """MODEL_INPUTS (refused as feature names by the rules file's checks) names every input
    to_vector adds to the snapshot, and the rules' score: a name added there is refused too."""
    from fds.models.vector import MODEL_INPUTS, RULE_SCORE, to_vector

    assert set(to_vector({"amount": 5.0, "ts": 0.0}, {})) | {RULE_SCORE} == MODEL_INPUTS
