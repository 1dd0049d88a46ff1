"""Declaration validation, layout sharing and the public surface."""

from __future__ import annotations

import pytest

import fds.features
from fds.errors import ConfigError
from fds.features import FeaturePlan, compile_specs
from fds.rules.ruleset import FeatureSpec
from tests.features.conftest import Spec


def test_public_api_is_explicit() -> None:
    assert set(fds.features.__all__) == {
        "AGGS", "CALENDAR_DAY", "Compiler", "DayClock", "FIELD_AGGS", "FeaturePlan", "Layout",
        "compile_specs",
    }  # fmt: skip
    for name in fds.features.__all__:
        assert hasattr(fds.features, name)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (Spec("a", "card_id", "median", "amount", "1h"), "unknown agg 'median'"),
        (Spec("a", "card_id", "sum", None, "1h"), "needs a field"),
        (Spec("a", "card_id", "seen", None, "1h"), "needs a field"),
        (Spec("a", "card_id", "count", None, "fortnight"), "bad window 'fortnight'"),
        (Spec("a", "card_id", "count", None, "0s"), "of at least 1ms"),
        # (`t - 1e-7 == t` at today's times: the same second's transaction was out, a QA pass)
        (Spec("a", "card_id", "count", None, "0.0000001s"), "of at least 1ms"),
        (Spec("a", "card_id", "count", None, "0.9ms"), "of at least 1ms"),
        (Spec("a", "", "count", None, "1h"), "entity must be"),
        (Spec("a", "tx_id", "count", None, "1h"), "entity tx_id differs for every transaction"),
        (Spec("a", "ts", "count", None, "1h"), "entity ts differs for every transaction"),
        (Spec("_flags", "card_id", "count", None, "1h"), "kept for the engine"),
    ],
)
def test_bad_declarations_say_what_to_fix(spec: Spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeaturePlan([spec])


def test_duplicate_names_rejected() -> None:
    s = Spec("a", "card_id", "count", None, "1h")
    with pytest.raises(ConfigError, match="declared twice"):
        compile_specs([s, s])


def test_windows_are_shared_per_entity() -> None:
    layout = compile_specs(
        [
            Spec("n", "card_id", "count", None, "1h"),
            Spec("s", "card_id", "sum", "amount", "60m"),
            Spec("mx", "card_id", "max", "amount", "3600s"),
            Spec("d", "card_id", "distinct", "merchant_id", "1h"),
            Spec("day", "card_id", "sum", "amount", "calendar_day"),
            Spec("mn", "merchant_id", "count", None, "1h"),
        ]
    )
    card, merchant = layout.groups
    assert [w.seconds for w in card.windows] == [3600.0, None]
    assert card.num_fields == ["amount"] and card.cat_fields == ["merchant_id"]
    assert merchant.entity == "merchant_id" and len(merchant.windows) == 1


def test_ruleset_feature_spec_is_accepted() -> None:
    spec = FeatureSpec(name="c1h", entity="card_id", agg="count", window="1h")
    plan = FeaturePlan([spec])
    assert plan.compute({"tx_id": "1", "ts": 1.0, "card_id": "c", "amount": 2.0}) == {"c1h": 1}


def test_a_plan_without_features_gives_empty_snapshots() -> None:
    plan = FeaturePlan([])
    assert plan.compute({"tx_id": "1", "ts": 1.0, "card_id": "c", "amount": 2.0}) == {}
    assert plan.state_sizes() == {}


def test_an_extra_name_written_as_a_rule_reads_it_declares_the_same_feature() -> None:
    """A QA pass: `extra['risk-score']` in a declaration other than the rules file's (the
    plan's own docstring declares with a SimpleNamespace) read a top-level field of that name,
    always missing."""
    from types import SimpleNamespace

    d = dict(name="a", entity="extra['risk-score']", agg="sum", field='extra["v-x"]', window="1h")
    tx = {"tx_id": "1", "ts": 0.0, "card_id": "c", "extra": {"risk-score": "r", "v-x": 2.0}}
    plans = [FeaturePlan([SimpleNamespace(**d)]), FeaturePlan([FeatureSpec(**d)])]
    assert [p.compute(dict(tx)) for p in plans] == [{"a": 2.0}, {"a": 2.0}]
    assert plans[0].layout.fingerprint == plans[1].layout.fingerprint
