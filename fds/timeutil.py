"""Durations and event timestamps: the one place that parses them; and waiting on the clock
so that a signal is handled at once (:func:`sleep`)."""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fds.errors import ConfigError

__all__ = [
    "EPOCH_2000", "WAKE_S", "format_ts", "get_zone", "parse_duration", "parse_ts", "second_pass",
    "sleep", "span", "wait",
]  # fmt: skip

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DURATION_PATTERN = r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*"  # (also rules/schema.json's)
_DURATION = re.compile(f"^{DURATION_PATTERN}$")
# Epoch values above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
MS_THRESHOLD = _MS_THRESHOLD = 1e11
#: 2000-01-01T00:00:00Z: a payment dated before it is taken for a time misread (a replay says so).
EPOCH_2000 = 946684800.0


def parse_duration(text: str | float | int) -> float:
    """Parse ``90s``, ``10m``, ``1h``, ``7d``, ``2w`` (or a number of seconds) into seconds.

    >>> parse_duration("10m"), parse_duration("7d"), parse_duration(1.5)
    (600.0, 604800.0, 1.5)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        try:
            return float(text)
        except OverflowError:  # (an int of 400 digits: a traceback, a review)
            return math.inf if text > 0 else -math.inf
    m = _DURATION.match(str(text))
    if not m:
        if _DURATION.match(str(text).strip().removeprefix("-")):  # (told it was no duration: a QA)
            raise ConfigError(f"bad duration {text!r}: a duration is not negative")
        if (hint := unitless(str(text))) is not None:
            raise ConfigError(f"bad duration {text!r}: {hint}")
        raise ConfigError(
            f"bad duration {text!r}: write a number and a unit, e.g. 90s, 10m, 1h, 7d, 2w"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def unitless(text: str) -> str | None:
    """What to write for a number in quotes given as a duration (`"90"`: a bare 90 is read as
    seconds, the quoted one was told to write "a duration of 0 or more", a QA pass), or None.

    >>> unitless("90"), unitless("5m")
    ('a number in quotes has no unit: write 90s (seconds), or 90 unquoted', None)
    """
    number = text.strip()
    if not re.fullmatch(r"\d+(\.\d+)?", number):
        return None
    return f"a number in quotes has no unit: write {number}s (seconds), or {number} unquoted"


def get_zone(name: str) -> tzinfo:
    """A timezone by IANA name (``UTC``, ``Asia/Seoul``), with a helpful error."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:  # (`Europe/berlin`: no hint, a QA pass)
        raise ConfigError(f"unknown timezone {name!r}: {_zone_hint(name)}") from e


def same_zone(a: str, b: str) -> bool:
    """Are zone names ``a`` and ``b`` one zone (``UTC`` and ``Etc/UTC``, ``Asia/Calcutta`` and
    ``Asia/Kolkata``: the same file of one tz database)?

    >>> same_zone("UTC", "Etc/UTC"), same_zone("UTC", "Europe/Berlin"), same_zone("utc", "UTC")
    (True, False, True)
    """
    import zoneinfo

    a, b = ("UTC" if n.upper() == "UTC" else n for n in (a, b))  # (as get_zone reads them)
    if a == b:
        return True
    for root in (*zoneinfo.TZPATH, None):  # both from one source: the system's files and the
        ra, rb = _zone_file(root, a), _zone_file(root, b)  # tzdata package's differ in release
        if ra is not None and rb is not None:  # and layout (a review)
            return ra == rb
    return False


def _zone_file(root: str | None, name: str) -> bytes | None:
    """Zone ``name``'s file in the tz database directory ``root`` (``None``: the tzdata
    package's), or ``None`` when it holds none (or the name is no safe one)."""
    if not name or name.startswith(("/", ".")) or ".." in name:
        return None
    with contextlib.suppress(Exception):  # (missing, unreadable, a NUL in the name)
        if root is None:
            from importlib.resources import files

            return files("tzdata.zoneinfo").joinpath(name).read_bytes()
        return (Path(root) / name).read_bytes()
    return None


def _zone_hint(name: str) -> str:
    """What to write for an unknown zone ``name``: the IANA name it likely meant.

    >>> _zone_hint("Europe/berlin"), _zone_hint("Asia/Seol")
    ('did you mean Europe/Berlin?', 'did you mean Asia/Seoul?')
    >>> _zone_hint("Mars/Olympus")
    'use an IANA name like Europe/Berlin'
    """
    import difflib
    from zoneinfo import available_timezones

    zones = {z.lower(): z for z in available_timezones()}
    close = difflib.get_close_matches(name.lower(), list(zones), n=1, cutoff=0.8)
    if close:
        return f"did you mean {zones[close[0]]}?"
    return "use an IANA name like Europe/Berlin"


#: The seconds of a leap second in ISO 8601 text (``2016-12-31T23:59:60Z``).
_LEAP = re.compile(r"(?<=[T ]\d\d:\d\d:)60(?![\d])")


def parse_ts(value: object, default_tz: tzinfo = UTC) -> float:
    """An event timestamp as epoch seconds (float).

    Accepts epoch seconds or milliseconds (number or numeric string), ISO 8601 text, or a
    ``datetime`` (what YAML makes of an unquoted timestamp, or a Parquet column); a naive one is
    read in ``default_tz``.

    >>> parse_ts(1700000000), parse_ts(1700000000000), parse_ts("1700000000.5")
    (1700000000.0, 1700000000.0, 1700000000.5)
    >>> parse_ts("2023-11-14T22:13:20Z"), parse_ts("2023-11-15T07:13:20+09:00")
    (1700000000.0, 1700000000.0)
    >>> parse_ts("2023-11-14t22:13:20z")  # RFC 3339 allows lowercase
    1700000000.0
    >>> parse_ts(datetime(2023, 11, 14, 22, 13, 20))
    1700000000.0
    >>> parse_ts("2016-12-31T23:59:60Z") == parse_ts("2017-01-01T00:00:00Z")  # a leap second
    True

    Text of eight, twelve or fourteen digits that form a date, ``YYYYMMDD``, ``YYYYMMDDHHMM``
    (a year 1900-2099) or ``YYYYMMDDHHMMSS``, is that local date (as epoch seconds it would be
    1970-1973, as milliseconds 1976 or after 2286: a file of compact dates was decided in the
    year 2612 before); a number stays an epoch time (a label's time is a number once validated,
    whatever it was written as):

    >>> parse_ts("20231114221320"), parse_ts("202311142213"), parse_ts(1700000000)
    (1700000000.0, 1699999980.0, 1700000000.0)

    A number of microseconds or nanoseconds is refused, and told as such:

    >>> parse_ts(1700000000000000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: timestamp 1700000000000000 is out of range ...; as microseconds it is 2023-11-14...
    """
    if type(value) is float and 0.0 <= value < _MS_THRESHOLD:
        return value  # the common case on the hot path
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, str) and (compact := _compact(value)) is not None:
        return _in_range(compact.replace(tzinfo=default_tz).timestamp(), value)
    if isinstance(value, str) and len(value.strip()) == 14 and value.strip().isdigit():
        raise ValueError(  # (as epoch milliseconds: after 2286; it was read as 2611)
            f"timestamp {value!r} is 14 digits but no YYYYMMDDHHMMSS date"
        )
    if isinstance(value, int | float):
        v = float(value)
    elif isinstance(value, str):
        s = value.strip()
        try:
            v = float(s)
        except ValueError:
            try:
                # (RFC 3339 allows a lowercase t and z, Python 3.11 does not: a QA pass)
                dt = datetime.fromisoformat(s.upper())
            except ValueError as e:
                if _LEAP.search(s.upper()):  # a leap second (23:59:60, ISO 8601 and RFC 3339
                    # allow it): the next second's start, as POSIX time counts none (it was
                    # "no time there is", a dead letter: a QA pass)
                    return parse_ts(_LEAP.sub("59", s.upper(), count=1), default_tz) + 1.0
                if not str(e).startswith("Invalid isoformat"):  # a date that does not exist
                    # (2026-02-29, a leap second, 24:00: "not ISO 8601" misled, a QA pass)
                    raise ValueError(f"timestamp {value!r} is no time there is: {e}") from None
                raise ValueError(
                    f"timestamp {value!r} is neither ISO 8601 nor epoch seconds/milliseconds"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=default_tz)
            return _in_range(dt.timestamp(), value)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=default_tz)
        return _in_range(dt.timestamp(), value)
    else:
        raise ValueError(f"timestamp must be a string or a number, got {type(value).__name__}")
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError("timestamp is not finite")
    ts = v / 1000.0 if abs(v) >= _MS_THRESHOLD else v
    if not _MIN_TS <= ts < _MAX_TS:  # (only "out of range" before: a QA pass)
        for unit, per_s in (("microseconds", 1e6), ("nanoseconds", 1e9)):
            if _EPOCH_UNITS[0] <= v / per_s < _EPOCH_UNITS[1]:
                raise ValueError(
                    f"timestamp {value!r} is out of range as epoch seconds or milliseconds; as "
                    f"{unit} it is {format_ts(v / per_s)}: give epoch seconds or milliseconds "
                    f"(divide by {per_s / 1000:,.0f} for milliseconds)"
                )
    return _in_range(ts, value)


def second_pass(value: object, default_tz: tzinfo) -> float | None:
    """For a naive local time in the hour a DST change repeats (``2026-11-01 01:30`` in
    New York), the epoch seconds of its second pass; ``None`` for any other value. (Read alone
    such a time is its first pass: a reader in file order takes the second when the first
    would go back in time.)

    >>> from zoneinfo import ZoneInfo
    >>> ny = ZoneInfo("America/New_York")
    >>> second_pass("2026-11-01 01:30", ny) - parse_ts("2026-11-01 01:30", ny)
    3600.0
    >>> second_pass("2026-11-01 02:30", ny) is None
    True
    >>> second_pass("2026-03-08 02:30", ny) is None  # the hour a spring change skips: none
    True
    >>> second_pass("202611010130", ny) == second_pass("2026-11-01 01:30", ny)  # compact too
    True
    """
    dt: datetime | None = None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            dt = datetime.fromisoformat(value.strip())
        if dt is None:  # (a compact local time, as parse_ts reads it: its second pass was
            dt = _compact(value)  # never read, the hour's times an hour early, a review)
    if dt is None or dt.tzinfo is not None:
        return None
    first, second = dt.replace(tzinfo=default_tz), dt.replace(tzinfo=default_tz, fold=1)
    a, b = first.utcoffset(), second.utcoffset()
    if a is None or b is None or a <= b:  # (in a skipped hour the second offset is larger:
        return None  # read after a later time, 02:30 was taken an hour early: a QA report)
    return second.timestamp()


#: A step back in a file's local times at least this long may be the second pass of an hour a
#: DST change repeats (a record a minute late is not: a review found one garbling the hour);
#: at least half the repeated span where that is shorter (Lord Howe repeats 30 minutes, so a
#: second pass there is always less than 30 minutes behind: a QA pass).
FALL_BACK_STEP = 1800.0


class FileClock:
    """The event times of a file's records read in file order, in zone ``zone``: a naive local
    time of the hour a DST change repeats that comes well after the file's newest time (or
    right after one that did) is its second pass (read alone, it is the first). ``fds replay``
    and ``fds produce`` read files with it (``fds produce`` sent such records an hour early,
    decided `late` or in the wrong windows: a review).

    >>> from zoneinfo import ZoneInfo
    >>> ny, clock = ZoneInfo("America/New_York"), FileClock(ZoneInfo("America/New_York"))
    >>> times = ["2026-11-01 01:10", "2026-11-01 01:50", "2026-11-01 01:20", "2026-11-01 02:10"]
    >>> [(clock(x, parse_ts(x, ny)) - parse_ts(times[0], ny)) / 60 for x in times]
    [0.0, 40.0, 70.0, 120.0]
    """

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self.last = -math.inf  # the newest time read
        self.second = False  # reading the second pass of such an hour

    def __call__(self, value: object, t: float) -> float:
        """The event time of a record whose ``ts`` is ``value``, read alone as ``t``."""
        behind = self.last - t
        if self.second or behind > 0:
            again = second_pass(value, self.zone)
            if (
                not self.second
                and again is not None
                and behind < min(FALL_BACK_STEP, (again - t) / 2)
            ):
                again = None  # a record a little late, in the first pass
            self.second = again is not None  # (until a time outside the repeated hour)
            if again is not None:
                t = again
        if t > self.last:
            self.last = t
        return t


def naive_text(value: str) -> bool:
    """Is ``value`` a time written without its UTC offset (read in a default zone)? Epoch
    seconds or milliseconds as text are not; a compact local date is.

    >>> [naive_text(v) for v in ("2026-03-01T08:04:13+09:00", "2026-03-01 08:04", "2026-03-01",
    ...                          "1772319853", "20260301", "2026-03-01T08:04:13Z")]
    [False, True, True, False, True, False]
    """
    if _compact(value) is not None:
        return True
    try:
        float(value)
        return False
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.strip()).tzinfo is None
    except ValueError:
        return False  # (no time at all: its own dead letter says so)


#: Compact local dates by their number of digits. Twelve digits of a year 1900-2099: as epoch
#: milliseconds they would be 1976 (``YYYYMMDDHHMM`` was read as milliseconds, four hours of
#: payments in half a second of 1976: a QA pass); ten digits (``YYYYMMDDHH``) stay epoch seconds.
_COMPACT = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _compact(value: str) -> datetime | None:
    """``value`` as a naive ``YYYYMMDD``, ``YYYYMMDDHHMM`` (years 1900-2099) or
    ``YYYYMMDDHHMMSS`` date, else ``None``.

    >>> _compact("202603010804"), _compact("946684800000")  # (the latter: epoch milliseconds)
    (datetime.datetime(2026, 3, 1, 8, 4), None)
    """
    s = value.strip()
    form = _COMPACT.get(len(s))
    if form is None or not (s.isdigit() and s.isascii()):
        return None
    if len(s) == 12 and s[:2] not in ("19", "20"):
        return None
    try:
        return datetime.strptime(s, form)
    except ValueError:
        return None


# Event times fds accepts: local calendar arithmetic (any zone) stays inside datetime's range.
MIN_TS = _MIN_TS = datetime(1900, 1, 1, tzinfo=UTC).timestamp()
MAX_TS = _MAX_TS = datetime(9998, 1, 1, tzinfo=UTC).timestamp()


# Epoch times a number of another unit is taken for, to say so: 1970 to 2200.
_EPOCH_UNITS = (0.0, datetime(2200, 1, 1, tzinfo=UTC).timestamp())


def _in_range(ts: float, value: object) -> float:
    if not _MIN_TS <= ts < _MAX_TS:
        # (a datetime as written, not its repr: a Parquet column's, a QA pass)
        shown = value.isoformat() if isinstance(value, datetime) else repr(value)
        raise ValueError(f"timestamp {shown} is out of range: fds takes years 1900 to 9997")
    return ts


_second_prefix: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS"
_day_prefix: dict[int, str] = {}  # epoch day -> "YYYY-MM-DDT"
# millisecond -> ".mmm+00:00": one concatenation instead of formatting (~4x faster)
_ms_suffix = tuple(f".{ms:03d}+00:00" for ms in range(1000))


def format_ts(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds.

    Hot path (two calls per decision): the text up to the second is cached per epoch second
    and its date per epoch day (both bounded), and the text after it is taken from a table,
    so most calls are one floor, one divmod and one concatenation.

    Truncated to the millisecond, never rounded up: a time 0.4 ms before midnight stays on its
    day, as its calendar-day windows count it (rounded, it read as the next day's 00:00:00.000:
    a QA pass). It is read to the nearest microsecond first, so a binary float a hair below a
    whole millisecond (``.001`` held as ``.000999999...``) reads as that millisecond, and
    ``23:59:59.999999`` as ``.999``.

    >>> format_ts(1700000000.25), format_ts(-0.5)
    ('2023-11-14T22:13:20.250+00:00', '1969-12-31T23:59:59.500+00:00')
    >>> format_ts(1700000000.001)
    '2023-11-14T22:13:20.001+00:00'
    >>> format_ts(1700006399.9996)  # stays in its second (and its day)
    '2023-11-14T23:59:59.999+00:00'
    """
    sec, ms = divmod(round(ts * 1e6) // 1000, 1000)
    prefix = _second_prefix.get(sec)
    if prefix is None:
        if len(_second_prefix) > 8192:  # bounded; a replay moves forward through time
            _second_prefix.clear()
            _day_prefix.clear()  # (at most one new day per second cached: bounded too)
        day, s = divmod(sec, 86400)
        date = _day_prefix.get(day)
        if date is None:
            date = _day_prefix[day] = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")
        h, s = divmod(s, 3600)
        m, s = divmod(s, 60)
        prefix = _second_prefix[sec] = f"{date}{h:02d}:{m:02d}:{s:02d}"
    return prefix + _ms_suffix[ms]


def span(seconds: float) -> str:
    """A duration for people: ``90 s``, ``2.5 h``, ``36.5 days``.

    >>> span(90), span(9000), span(86400 * 36.5)
    ('90 s', '2.5 h', '36.5 days')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.1f} days"


#: The longest single wait of the main thread where a signal must be handled at once: a signal
#: the kernel hands to another thread (kafka-python's network thread, the metrics server's) runs
#: its Python handler only when the main thread wakes, so one long wait held a SIGTERM or a
#: Ctrl-C for all of it (`fds produce`'s last flush in an outage: over 60 s in a test run).
WAKE_S = 0.2


def sleep(seconds: float) -> None:
    """``time.sleep(seconds)`` as waits of at most :data:`WAKE_S` (a paced replay's wait for
    its next event can last minutes)."""
    wait(threading.Event(), seconds)


def wait(event: threading.Event, timeout: float) -> bool:
    """``event.wait(timeout)`` as waits of at most :data:`WAKE_S` (`fds run` waiting up to 30 s
    for its models topic to be read at its start)."""
    end = time.monotonic() + timeout
    while not event.wait(min(WAKE_S, max(end - time.monotonic(), 0.0))):
        if time.monotonic() >= end:
            return False
    return True
