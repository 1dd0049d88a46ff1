"""The folded serving form of a scaled logistic regression scores as River does."""

from __future__ import annotations

import random
import re

import pytest

from fds.models.fused import FusedLogistic, fuse, serving
from fds.models.scorer import ModelServer
from fds.models.spec import build_pipeline, load_spec, parse_spec
from fds.models.vector import RULE_SCORE
from fds.pipeline import DEFAULT_MODEL


def _trained(text: str) -> object:
    model = build_pipeline(parse_spec(text))
    rng = random.Random(1)
    for _ in range(400):
        x = {
            "n": float(rng.randint(0, 9)),
            "amount": rng.lognormvariate(10, 1),
            "const": 3.0,  # no spread: River scales it to 0
            RULE_SCORE: rng.choice([0.0, 0.7]),
        }
        model.learn_one(x, x["n"] > 6 or x[RULE_SCORE] > 0)  # type: ignore[attr-defined]
    return model


@pytest.mark.parametrize("stacked", [False, True])
def test_folded_scores_equal_river_s(stacked: bool) -> None:
    text = re.sub(
        r"^  rules: \w+", f"  rules: {str(stacked).lower()}", DEFAULT_MODEL.read_text(), flags=re.M
    )
    assert parse_spec(text).inputs.rules is stacked
    model = _trained(text)
    fast = fuse(model)
    assert isinstance(fast, FusedLogistic)
    rng = random.Random(2)
    for _ in range(300):
        x = {
            "n": float(rng.randint(0, 12)),
            "amount": rng.lognormvariate(10, 2),
            "const": rng.choice([3.0, 4.0]),
            RULE_SCORE: rng.choice([0.0, 0.7, 1.0]),
            "never_seen": rng.random(),  # a feature added after training: weight 0
        }
        if rng.random() < 0.3:  # another key order or a missing key: a new layout
            items = list(x.items())[: rng.randint(1, len(x))]
            rng.shuffle(items)
            x = dict(items)
        want = model.predict_proba_one(x)[True]  # type: ignore[attr-defined]
        got = fast.predict_proba_one(x)
        assert got[True] == pytest.approx(want, abs=1e-12)
        assert got[False] == pytest.approx(1.0 - want, abs=1e-12)


def test_other_models_are_served_as_they_are() -> None:
    tree = build_pipeline(load_spec("tree"))
    assert serving(tree) is tree
    windowed = build_pipeline(
        parse_spec(
            "name: w\npipeline:\n  - preprocessing.StandardScaler: {window_size: 10}\n"
            "  - linear_model.LogisticRegression: {}\n"
        )
    )
    assert fuse(windowed) is None


def test_a_negative_variance_is_not_folded() -> None:
    """A QA pass: an artifact whose scaler holds a negative variance (not River's: crafted or
    damaged, its sha256 fine) made the fold raise a TypeError (a complex root), and fds run
    did not start; it is served as it is, its canary then judging it."""
    model = _trained(
        "name: t\npipeline:\n  - preprocessing.StandardScaler: {}\n"
        "  - linear_model.LogisticRegression: {}\n"
    )
    (scaler,) = [s for s in model.steps.values() if hasattr(s, "vars")]  # type: ignore[attr-defined]
    assert fuse(model) is not None
    scaler.vars["amount"] = -1e-300
    assert fuse(model) is None and serving(model) is model


def test_the_server_serves_the_folded_form() -> None:
    srv = ModelServer(load_spec("default"))  # inline trainer: labels -> versions -> offer
    t = 0.0
    for i in range(5000):
        t += 60.0
        tx = {"tx_id": f"t{i}", "ts": t, "amount": float(i % 50)}
        feats = {"n": float(i % 9)}
        srv.score(tx, feats)
        srv.on_decision(tx, {"features": feats})
        if i % 9 in (4, 8):  # (a legitimate label too: no version of one class is published)
            srv.on_label({"tx_id": f"t{i}", "ts": t, "is_fraud": i % 9 == 8})
        if srv.champion is not None:
            break
    assert isinstance(srv.champion, FusedLogistic)
    x = {"n": 8.0, "amount": 20.0, "log_amount": 3.0}
    want = srv.champion.model.predict_proba_one(x)[True]
    assert srv.champion.predict_proba_one(x)[True] == pytest.approx(want, abs=1e-12)
    assert srv.champion.predict_proba_one(x)[True] != pytest.approx(0.5)  # it learned
