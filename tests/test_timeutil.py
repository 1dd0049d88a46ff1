from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fds.errors import ConfigError
from fds.timeutil import format_ts, parse_duration, parse_ts


@given(st.floats(min_value=-2e9, max_value=5e9, allow_nan=False))
def test_format_ts_matches_datetime(ts):
    expected = datetime.fromtimestamp(round(ts * 1000) / 1000, UTC)
    assert format_ts(ts) == expected.isoformat(timespec="milliseconds")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_format_then_parse_roundtrips_to_the_millisecond(ts):
    assert parse_ts(format_ts(ts)) == pytest.approx(round(ts * 1000) / 1000, abs=1e-6)


@pytest.mark.parametrize("bad", ["", "5", "5 years", "-1h", "1.2.3s"])
def test_bad_duration_says_how_to_write_one(bad):
    with pytest.raises(ConfigError, match=r"e\.g\. 90s, 10m, 1h, 7d"):
        parse_duration(bad)
