"""Shared helpers for the feature tests: a declaration type and a random-stream strategy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Spec:
    """Minimal duck-typed feature declaration (what FeaturePlan needs)."""

    name: str
    entity: str
    agg: str
    field: str | None
    window: str


def _utc(*a: int) -> float:
    return datetime(*a, tzinfo=UTC).timestamp()


# Starting points: an ordinary day, Berlin's spring-forward night (2024-03-31 01:00 UTC) and
# New York's fall-back night (2024-11-03 06:00 UTC), each a few hours before local midnight.
STARTS = {
    "UTC": [_utc(2024, 6, 1, 20)],
    "Europe/Berlin": [_utc(2024, 3, 30, 20), _utc(2024, 10, 26, 20)],
    "America/New_York": [_utc(2024, 11, 2, 23), _utc(2024, 3, 9, 23)],
}

ALL_SPECS = [
    Spec("c_n_60s", "card_id", "count", None, "60s"),
    Spec("c_n_10m", "card_id", "count", None, "10m"),
    Spec("c_distinct_m_60s", "card_id", "distinct", "merchant_id", "60s"),
    Spec("c_fraud_n_90s", "card_id", "fraud_count", None, "90s"),
    Spec("c_min_90s", "card_id", "min", "amount", "90s"),
    Spec("c_sum_10m", "card_id", "sum", "amount", "10m"),
    Spec("c_mean_1h", "card_id", "mean", "amount", "1h"),
    Spec("c_std_1h", "card_id", "std", "amount", "1h"),
    Spec("c_min_1h", "card_id", "min", "amount", "1h"),
    Spec("c_max_10m", "card_id", "max", "amount", "10m"),
    Spec("c_max_1h", "card_id", "max", "amount", "1h"),
    Spec("c_distinct_m_1h", "card_id", "distinct", "merchant_id", "1h"),
    Spec("c_seen_country_1d", "card_id", "seen", "country", "1d"),
    Spec("c_gap_1h", "card_id", "last_gap", None, "1h"),
    Spec("c_fraud_n_1h", "card_id", "fraud_count", None, "1h"),
    Spec("c_day_sum", "card_id", "sum", "amount", "calendar_day"),
    Spec("c_day_n", "card_id", "count", None, "calendar_day"),
    Spec("c_day_distinct_m", "card_id", "distinct", "merchant_id", "calendar_day"),
    Spec("c_day_fraud", "card_id", "fraud_count", None, "calendar_day"),
    Spec("c_x_mean_1h", "card_id", "mean", "extra.x", "1h"),
    Spec("c_x_min_1h", "card_id", "min", "extra.x", "1h"),
    Spec("m_n_1h", "merchant_id", "count", None, "1h"),
    Spec("m_fraud_rate_2h", "merchant_id", "fraud_rate", None, "2h"),
    Spec("m_fraud_n_2h", "merchant_id", "fraud_count", None, "2h"),
    Spec("m_seen_card_2h", "merchant_id", "seen", "card_id", "2h"),
    Spec("m_std_2h", "merchant_id", "std", "amount", "2h"),
    Spec("d_n_10m", "device_id", "count", None, "10m"),
    Spec("d_distinct_card_1h", "device_id", "distinct", "card_id", "1h"),
]

GRACE = 300.0

_step = st.one_of(
    st.just(0.0),  # duplicate timestamps
    st.floats(1, 120),
    st.floats(120, 4000),
    st.floats(4000, 30000),  # crosses windows and local midnights
    st.floats(-GRACE + 1, -1),  # out of order, within grace
    st.floats(-4 * GRACE, -GRACE - 1),  # beyond grace: late
    st.just(3 * 86400.0),  # long idle: eviction
)
_amount = st.one_of(
    st.sampled_from([1.0, 5.0, 100.0]), st.floats(0.01, 5000).map(lambda x: round(x, 2))
)


@st.composite
def streams(draw: Any, n_max: int = 50) -> tuple[str, list[dict[str, Any]]]:
    """A timezone and a list of ops: {"kind": "tx", "tx": {...}} or {"kind": "label", ...}."""
    tz = draw(st.sampled_from(sorted(STARTS)))
    t = draw(st.sampled_from(STARTS[tz]))
    top = t
    ops: list[dict[str, Any]] = []
    tx_ids: list[str] = []
    for i in range(draw(st.integers(1, n_max))):
        if tx_ids and draw(st.integers(0, 4)) == 0:
            ops.append(
                {
                    "kind": "label",
                    "tx_id": draw(st.sampled_from([*tx_ids, "unknown"])),
                    "is_fraud": draw(st.booleans()),
                }
            )
            continue
        step = draw(_step)
        ts = top + step
        top = max(top, ts)
        extra: dict[str, Any] = {}
        if draw(st.booleans()):
            extra["x"] = draw(st.integers(-5, 5))
        tx = {
            "tx_id": f"t{i}",
            "ts": ts,
            "card_id": draw(st.sampled_from(["a", "b", "c"])),
            "amount": draw(_amount),
            "merchant_id": draw(st.sampled_from(["m1", "m2", "m3", None])),
            "country": draw(st.sampled_from(["DE", "US", None])),
            "device_id": draw(st.sampled_from(["d1", "d2", None])),
            "extra": extra,
        }
        tx_ids.append(tx["tx_id"])
        ops.append({"kind": "tx", "tx": tx})
    return tz, ops
