import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fds import timeutil
from fds.errors import ConfigError
from fds.timeutil import format_ts, parse_duration, parse_ts


@given(st.integers(min_value=-2_000_000_000_000, max_value=5_000_000_000_000))
def test_format_ts_matches_datetime_on_whole_milliseconds(ms):
    expected = datetime.fromtimestamp(ms / 1000, UTC)
    assert format_ts(ms / 1000) == expected.isoformat(timespec="milliseconds")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_format_truncates_to_the_millisecond_never_into_the_next(ts):
    """Never rounded up: a time just before midnight stays on its day, as its calendar-day
    windows count it (rounded, 23:59:59.9996 read as the next day: a QA pass)."""
    back = parse_ts(format_ts(ts))
    assert ts - 0.001 < back <= ts + 1e-6  # (read to the microsecond: see format_ts)


def test_a_time_just_before_midnight_stays_on_its_day():
    assert format_ts(1792454399.9996) == "2026-10-19T23:59:59.999+00:00"  # (not 20T00:00)
    assert format_ts(1700006399.999999) == "2023-11-14T23:59:59.999+00:00"  # (a review)


def test_the_format_caches_stay_bounded_over_years_of_event_time():
    for day in range(10_000):  # 27 years, one event a day
        ts = day * 86400.0 + 0.5
        assert format_ts(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    assert len(timeutil._day_prefix) <= 8193
    assert len(timeutil._second_prefix) <= 8193


@pytest.mark.parametrize("bad", ["", "5 years", "1.2.3s"])
def test_bad_duration_says_how_to_write_one(bad):
    with pytest.raises(ConfigError, match=r"e\.g\. 90s, 10m, 1h, 7d"):
        parse_duration(bad)
    # a number as text (quoted in YAML) is told its unit (a bare number is seconds)
    with pytest.raises(ConfigError, match=r"'5': a number in quotes has no unit: write 5s"):
        parse_duration("5")


def test_a_negative_duration_is_said_to_be_one():
    """A QA pass: `assume_legit_after: -1d` was told to write a number and a unit."""
    with pytest.raises(ConfigError, match=r"bad duration '-1h': a duration is not negative"):
        parse_duration("-1h")


@pytest.mark.parametrize("value", ["9999-12-31T23:00:00Z", 1e19, "1800-01-01T00:00:00Z"])
def test_timestamps_beyond_calendar_arithmetic_are_rejected(value):
    """A year-9999 (or 1e19 ms) event time overflowed the rules' clock and dead-lettered the
    transaction at the rules stage; it is now a validation error with a clear reason."""
    with pytest.raises(ValueError, match="out of range"):
        parse_ts(value)
    from fds.errors import ValidationError
    from fds.schema import parse_transaction

    with pytest.raises(ValidationError, match="out of range"):
        parse_transaction({"tx_id": "a", "ts": value, "card_id": "c", "amount": 5})


def test_a_datetime_out_of_range_is_said_as_written_not_as_its_repr():
    """A QA pass: a Parquet timestamp of 1850 was said as datetime.datetime(1850, 1, 1, 0, 0)."""
    with pytest.raises(ValueError, match=r"^timestamp 1850-01-01T00:00:00 is out of range"):
        parse_ts(datetime(1850, 1, 1))


@pytest.mark.parametrize(
    ("value", "unit"),
    [(1_700_000_000_000_000, "microseconds"), ("1700000000000000000", "nanoseconds")],
)
def test_epoch_microseconds_and_nanoseconds_are_told_as_such(value, unit):
    """A QA pass: both were only "out of range: fds takes years 1900 to 9997"."""
    with pytest.raises(ValueError, match=f"as {unit} it is 2023-11-14T22:13:20.000"):
        parse_ts(value)


def test_the_wakeful_waits_wait_their_time_in_short_steps(monkeypatch):
    """A SIGTERM the kernel hands another thread is heard only when the main thread wakes: a
    paced replay and `fds run`'s start waited minutes, and seconds, in one piece."""
    import threading
    import time

    from fds import timeutil

    steps: list[float] = []
    real = threading.Event.wait

    def step(self: threading.Event, timeout: float | None = None) -> bool:
        if threading.current_thread() is threading.main_thread():  # (a Timer's own waits)
            steps.append(math.inf if timeout is None else timeout)
        return real(self, timeout)

    monkeypatch.setattr(threading.Event, "wait", step)
    t0 = time.monotonic()
    timeutil.sleep(0.5)
    assert time.monotonic() - t0 >= 0.5 and max(steps) <= timeutil.WAKE_S and len(steps) >= 3
    done = threading.Event()
    threading.Timer(0.3, done.set).start()
    steps.clear()  # (the timer's start waited for its thread)
    assert timeutil.wait(done, 60.0) and max(steps) <= timeutil.WAKE_S
    assert not timeutil.wait(threading.Event(), 0.3)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2026-02-29T12:00:00Z", "day is out of range for month"),
        ("2016-12-31T23:59:61Z", "second must be in 0..59"),  # (no second at all)
        ("2026-10-25T24:00:00Z", "hour must be in 0..23"),
    ],
)
def test_an_iso_time_that_does_not_exist_says_why(text: str, why: str) -> None:
    """A QA pass: a well-formed date that does not exist was "neither ISO 8601 nor epoch"."""
    with pytest.raises(ValueError, match=f"is no time there is: {why}"):
        parse_ts(text)


def test_a_leap_second_is_the_next_second_s_start() -> None:
    """A QA pass: 2016-12-31T23:59:60Z, which ISO 8601 and RFC 3339 allow and which was, was a
    dead letter ("no time there is"); POSIX time counts no leap second."""
    assert parse_ts("2016-12-31T23:59:60Z") == parse_ts("2017-01-01T00:00:00Z")
    assert parse_ts("2016-12-31 23:59:60.25+00:00") == parse_ts("2017-01-01T00:00:00Z") + 0.25


def test_other_names_of_a_zone_are_compared_in_one_tz_database(tmp_path) -> None:
    """A review: with the system's tz database lacking the old names (no tzdata-legacy),
    `Asia/Calcutta` came from the tzdata package and `Asia/Kolkata` from the system, two
    releases of the file: never equal, the rename refused."""
    import zoneinfo
    from importlib.resources import files

    from fds.timeutil import same_zone

    for name in ("Asia/Kolkata", "Asia/Seoul"):  # (another release: other bytes)
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        data = files("tzdata.zoneinfo").joinpath(name).read_bytes()
        (tmp_path / name).write_bytes(data + b"\n")
    zoneinfo.reset_tzpath([str(tmp_path)])
    try:
        assert same_zone("Asia/Calcutta", "Asia/Kolkata") and same_zone("ROK", "Asia/Seoul")
        assert not same_zone("ROK", "Asia/Tokyo") and not same_zone("Asia/Seoul", "Asia/Tokyo")
        assert not same_zone("Asia/Seoul\x00", "UTC")  # (a NUL: no ValueError)
    finally:
        zoneinfo.reset_tzpath()
