"""Cases a randomized differential review found (each failed before its fix): a categorical
column cut before a later window had expired it, a late event counting newer values, values
that could not be converted leaving a state half-updated, NaN categories after a restore, and
infinite numbers poisoning running sums."""

from __future__ import annotations

import json
from types import SimpleNamespace as S
from typing import Any

from fds.features import FeaturePlan

H = 3600.0
D0 = 1717200000.0  # 2024-06-01 00:00 UTC


def feed(plan: FeaturePlan, t: float, **fields: Any) -> dict[str, Any]:
    feed.n = getattr(feed, "n", 0) + 1  # type: ignore[attr-defined]
    tx = {"tx_id": f"t{feed.n}", "ts": t, "card_id": "c", "amount": 1.0, **fields}  # type: ignore[attr-defined]
    return plan.compute(tx)


def distinct_plan(a: str, b: str, c: str) -> FeaturePlan:
    return FeaturePlan(
        [
            S(name="da", entity="card_id", agg="distinct", field="merchant_id", window=a),
            S(name="db", entity="card_id", agg="distinct", field="merchant_id", window=b),
            S(name="n", entity="card_id", agg="count", field=None, window=c),
        ],
        grace=0,
    )


def test_a_column_counted_by_two_windows_is_cut_only_after_both_expired():
    """The longer window declared first, a still longer one on the entity: the column was cut
    before the shorter window expired its values (a wrong ``distinct``)."""
    plan = distinct_plan("calendar_day", "24h", "30d")
    for i in range(9):
        feed(plan, D0 + H + i, merchant_id="early")
    for i in range(12):
        feed(plan, D0 + 20 * H + i, merchant_id=f"late{i}")
    got = feed(plan, D0 + 26.5 * H, merchant_id="late0")
    assert got == {"da": 1, "db": 12, "n": 22}


def test_a_column_cut_too_early_no_longer_raises():
    plan = distinct_plan("90m", "1h", "30d")
    for i in range(9):
        feed(plan, 8.3 * H + i, merchant_id=f"m{i}")
    feed(plan, 9.2 * H, merchant_id="x")
    assert feed(plan, 10 * H, merchant_id="y") == {"da": 2, "db": 2, "n": 11}  # was IndexError


def test_a_late_event_does_not_count_values_logged_after_it():
    plan = FeaturePlan(
        [
            S(name="seen", entity="card_id", agg="seen", field="merchant_id", window="1h"),
            S(name="dist", entity="card_id", agg="distinct", field="merchant_id", window="1h"),
            S(name="n", entity="card_id", agg="count", field=None, window="30d"),
        ],
        grace=0,
    )
    for i in range(241):
        feed(plan, i * 300.0, merchant_id="old" if i * 5 <= 19 * 60 else "new")
    # 18.5 h is 1.5 h behind: decided on the state held (the column keeps 1 h), which must not
    # count "new", first logged after 19:00 (a negative slice end read the newest values)
    got = feed(plan, 18.5 * H, merchant_id="new")
    # ... and counts the "old" values of its window the column still holds (the cut comes
    # once a few values are past the horizon: which ones are held is the state's)
    cg, st = plan._groups[0], plan.states[0]["c"]
    held = list(st[1])[st[cg.i_coff[0]] :]
    old = any(17.5 * H < t <= 18.5 * H for t in held)
    assert got["_flags"] == ["late"] and got["seen"] is False and got["dist"] == 1 + old


def test_values_that_cannot_be_numbers_or_keys_leave_no_half_updated_state():
    """A huge integer (float() overflows) is a missing number; a list is a category by its
    JSON text. Before, the first raised after the log was appended, and every later event of
    the entity failed or counted the failed one."""
    plan = FeaturePlan(
        [
            S(name="n", entity="card_id", agg="count", field=None, window="1h"),
            S(name="x_max", entity="card_id", agg="max", field="extra.x", window="1h"),
            S(name="x_mean", entity="card_id", agg="mean", field="extra.x", window="1h"),
            S(name="devs", entity="card_id", agg="distinct", field="extra.dev", window="1h"),
            S(name="per_dev", entity="extra.dev", agg="count", field=None, window="1h"),
        ],
        grace=0,
    )
    feed(plan, 0.0, extra={"x": 1, "dev": "d1"})
    got = feed(plan, 10.0, extra={"x": 10**400, "dev": ["d1", "d2"]})
    assert got == {"n": 2, "x_max": 1.0, "x_mean": 1.0, "devs": 2, "per_dev": 1}
    got = feed(plan, 20.0, extra={"x": 5, "dev": ["d1", "d2"]})
    assert got == {"n": 3, "x_max": 5.0, "x_mean": 3.0, "devs": 2, "per_dev": 2}
    got = feed(plan, 3615.0, extra={"x": 7, "dev": "d3"})  # the first two have left
    assert got == {"n": 2, "x_max": 7.0, "x_mean": 6.0, "devs": 2, "per_dev": 1}


def test_an_event_time_that_is_no_float_is_read_as_a_ts_or_refused_before_the_state_changes():
    """From the Python API: a Decimal, a string or a huge int raised after the card's log had
    grown (every later feature of the card counted it), a Fraction became the watermark. Now
    the time is read as a transaction's ``ts`` is (``parse_ts``) or refused first."""
    from decimal import Decimal
    from fractions import Fraction

    import pytest

    def plan() -> FeaturePlan:
        return FeaturePlan(
            [
                S(name="n", entity="card_id", agg="count", field=None, window="1h"),
                S(name="today", entity="card_id", agg="sum", field="amount", window="calendar_day"),
                S(name="m_n", entity="merchant_id", agg="count", field=None, window="1h"),
            ],
            grace=0,
        )

    hurt, clean = plan(), plan()
    for p in (hurt, clean):
        feed(p, D0 + 10.0, merchant_id="m")
    bad = [  # (a list: a Decimal and a Fraction of one value are one dict key)
        (Decimal(D0 + 20), "got Decimal"), (Fraction(int(D0) + 20), "got Fraction"),
        ("soon", "neither ISO 8601 nor epoch"), (None, "got NoneType"), (True, "a boolean"),
        (2**60, "out of range"), (float("nan"), "not finite"), (-1e300, "out of range"),
        (D0 * 1e6, "as microseconds it is 2024-06-01"),
    ]  # fmt: skip
    for t, says in bad:
        with pytest.raises(ValueError, match=f"^ts: .*{says}"):
            feed(hurt, t, merchant_id="m")  # type: ignore[arg-type]
    assert hurt.watermark == clean.watermark == D0 + 10.0
    # read as a transaction's ts: an int, milliseconds, ISO 8601 text
    for t, same in ((int(D0) + 30, D0 + 30), ((D0 + 40) * 1000, D0 + 40),
                    ("2024-06-01T00:00:50Z", D0 + 50)):  # fmt: skip
        assert feed(hurt, t, merchant_id="m") == feed(clean, same, merchant_id="m")  # type: ignore[arg-type]
    assert hurt.watermark.__class__ is float and hurt.watermark == D0 + 50
    assert hurt.state_sizes() == clean.state_sizes()


def test_a_nan_category_is_missing_and_survives_a_restore():
    specs = [S(name="d", entity="card_id", agg="distinct", field="extra.shop", window="1h")]
    p = FeaturePlan(specs, grace=0)
    assert feed(p, 0.0, extra=json.loads('{"shop": NaN}')) == {"d": 0}
    feed(p, 3000.0, extra={"shop": "s"})
    q = FeaturePlan(specs, grace=0)
    q.load_state_dict(p.state_dict())
    assert feed(q, 3700.0, extra={"shop": "s"}) == {"d": 1}  # was KeyError: nan


def test_an_infinite_number_is_missing_not_a_poisoned_sum():
    specs = [S(name="s", entity="card_id", agg="sum", field="extra.x", window="1h")]
    p = FeaturePlan(specs, grace=0)
    assert feed(p, 0.0, extra={"x": "1e999"}) == {"s": 0.0}  # the entity's first value
    feed(p, 1800.0, extra={"x": 2})
    assert feed(p, 3700.0, extra={"x": 3}) == {"s": 5.0}
    assert feed(p, 3800.0, extra={"x": float("-inf")}) == {"s": 5.0}


def test_a_calendar_day_ends_at_midnight_to_the_last_fraction_of_a_second() -> None:
    """Found by a QA pass: the day of a time 0.4 us before midnight was read rounded to the
    microsecond, the next day, when another card had moved the cached day past midnight."""
    plan = FeaturePlan([
        S(name="n", entity="card_id", agg="count", field=None, window="calendar_day"),
        S(name="s", entity="card_id", agg="sum", field="amount", window="calendar_day"),
    ])  # fmt: skip
    m = 1767225600.0  # 2026-01-01 00:00 UTC
    feed(plan, m - H, amount=1.0)
    feed(plan, m + 10, card_id="other")
    assert feed(plan, m - 4e-7, amount=2.0) == {"n": 2, "s": 3.0}


def test_the_hour_repeated_across_midnight_reads_its_own_date_whatever_came_before() -> None:
    """A QA pass: where the clocks fell back across midnight (St. John's, 2010-11-07: 00:01
    NDT back to 23:01 NST), the cached day (all of Sunday) answered for the repeated hour once
    another card's event had fallen in Sunday's first minute: Saturday 23:15 counted from
    Sunday's midnight, and from Saturday's after a restore."""
    from datetime import datetime, timedelta, timezone

    from fds.features import DayClock

    ndt, nst = timezone(timedelta(hours=-2.5)), timezone(timedelta(hours=-3.5))
    sat_noon = datetime(2010, 11, 6, 12, 0, tzinfo=ndt).timestamp()
    sun_first_minute = datetime(2010, 11, 7, 0, 0, 30, tzinfo=ndt).timestamp()
    repeated = datetime(2010, 11, 6, 23, 15, tzinfo=nst).timestamp()
    sun_late = datetime(2010, 11, 7, 0, 30, tzinfo=nst).timestamp()
    saturday = datetime(2010, 11, 6, tzinfo=ndt).timestamp()
    sunday = datetime(2010, 11, 7, tzinfo=ndt).timestamp()
    for order in ([sun_first_minute, repeated], [repeated], [sun_late, repeated]):
        clock = DayClock("America/St_Johns")
        for t in order:
            clock.day_start(t)
        assert clock.day_start(repeated) == saturday, order
    assert DayClock("America/St_Johns").day_start(sun_late) == sunday
    specs = [S(name="n", entity="card_id", agg="count", field=None, window="calendar_day")]
    plan = FeaturePlan(specs, timezone="America/St_Johns")
    feed(plan, sat_noon)
    feed(plan, sun_first_minute, card_id="other")
    assert feed(plan, repeated) == {"n": 2}  # (Saturday noon and itself: it said 1)


def test_a_number_too_large_to_square_is_missing_and_breaks_no_sum() -> None:
    """Found by a QA pass: two values of 1e308 made the window's mean None for its whole
    length and the entity's later events dead letters (fsum's intermediate overflow)."""
    plan = FeaturePlan([
        S(name="s", entity="card_id", agg="sum", field="extra.x", window="30d"),
        S(name="sd", entity="card_id", agg="std", field="extra.x", window="30d"),
        S(name="n", entity="card_id", agg="count", field=None, window="30d"),
    ])  # fmt: skip
    for i, x in enumerate((1e308, 1e308, -1e200)):
        feed(plan, D0 + i, extra={"x": x})
    assert feed(plan, D0 + 10, extra={"x": 5.0}) == {"s": 5.0, "sd": 0.0, "n": 4}
    assert feed(plan, D0 + 11, extra={"x": 7.0}) == {"s": 12.0, "sd": 1.0, "n": 5}


_HUGE_THEN_SMALL = [
    S(name="m", entity="card_id", agg="mean", field="extra.x", window="1h"),
    S(name="s", entity="card_id", agg="sum", field="extra.x", window="1h"),
]


def _tx(tx_id: str, t: float, x: float | None = None) -> dict[str, Any]:
    return {"tx_id": tx_id, "ts": t, "card_id": "c", "extra": {} if x is None else {"x": x}}


def test_a_small_value_inserted_out_of_order_moves_a_far_shift_as_in_order() -> None:
    """A QA pass: a first value of 1e20 set the shift; a 5 that came 100 s out of order
    (within the grace) was summed against it long after it had left: the 1-hour sum read 0.0
    for every later event (in order: 5.0); and a merge of logs (absorb) alike."""
    late, in_order = FeaturePlan(_HUGE_THEN_SMALL), FeaturePlan(_HUGE_THEN_SMALL)
    for t in (_tx("a", 0.0, 1e20), _tx("b", 7200.0), _tx("c", 7100.0, 5.0)):
        late.compute(t)
    for t in (_tx("a", 0.0, 1e20), _tx("c", 7100.0, 5.0), _tx("b", 7200.0)):
        in_order.compute(t)
    assert late.compute(_tx("d", 7300.0)) == in_order.compute(_tx("d", 7300.0))
    assert in_order.compute(_tx("e", 7400.0)) == {"m": 5.0, "s": 5.0}
    # absorb: one plan holds the 1e20, the other the 5 (another partition's)
    p, q = FeaturePlan(_HUGE_THEN_SMALL), FeaturePlan(_HUGE_THEN_SMALL)
    p.compute(_tx("a", 0.0, 1e20))
    p.compute(_tx("b", 7200.0))
    q.compute(_tx("c", 7150.0, 5.0))
    p.absorb(q)
    assert p.compute(_tx("d", 7300.0)) == {"m": 5.0, "s": 5.0}


def test_repeated_amounts_out_of_order_have_their_mean_and_a_std_of_0() -> None:
    """A QA pass: in order, three 0.1s had std 0.0 and mean 0.1; a fourth 0.1 out of order
    got std 1.39e-17 and mean 0.10000000000000002 (a naive mean, a two-pass std): a rule
    `std == 0` decided by the arrival order."""
    specs = [
        S(name="sd", entity="card_id", agg="std", field="amount", window="1h"),
        S(name="avg", entity="card_id", agg="mean", field="amount", window="1h"),
    ]
    plan = FeaturePlan(specs)
    for i, t in enumerate((100.0, 110.0, 120.0)):
        assert plan.compute({"tx_id": f"t{i}", "ts": t, "card_id": "c", "amount": 0.1}) == {
            "sd": 0.0, "avg": 0.1,
        }  # fmt: skip
    assert plan.compute({"tx_id": "t3", "ts": 115.0, "card_id": "c", "amount": 0.1}) == {
        "sd": 0.0, "avg": 0.1,
    }  # fmt: skip


def test_an_extra_text_a_feature_keeps_is_bounded_as_an_id_is() -> None:
    """A QA pass: `extra` values an entity or a counted field reads were kept whole for the
    window (300 events of two 1-MB values: 655 MB). Longer than an id may be, the event is
    refused before any change, naming the field; other `extra` values stay unbounded."""
    import pytest

    from fds.schema import ID_MAX
    from tests.features.conftest import Spec

    plan = FeaturePlan([
        Spec("s_n", "extra.sess", "count", None, "1h"),
        Spec("c_d", "card_id", "distinct", "extra.x", "1h"),
    ])  # fmt: skip
    ok = {"sess": "s" * ID_MAX, "x": "x", "note": "n" * (ID_MAX + 1)}
    assert feed(plan, 0.0, extra=ok) == {"s_n": 1, "c_d": 1}
    for name in ("sess", "x"):
        with pytest.raises(ValueError, match=f"extra.{name}: a text of 1,025 characters"):
            feed(plan, 1.0, extra={**ok, name: "a" * (ID_MAX + 1)})
    for wrapped in (["a" * ID_MAX], {"k": "a" * ID_MAX}):  # kept as JSON text (a review)
        with pytest.raises(ValueError, match=r"extra\.sess: a text of 1,0"):
            feed(plan, 1.5, extra={**ok, "sess": wrapped})
    assert feed(plan, 2.0, extra=ok) == {"s_n": 2, "c_d": 1}  # the refused ones changed nothing
