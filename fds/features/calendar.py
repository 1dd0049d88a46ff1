"""Local calendar days in a timezone, for ``calendar_day`` windows.

A calendar-day window at event time ``t`` covers ``[local midnight of t's day, t]``. The day
start is computed per event but cached: while events stay inside the cached day, it costs two
comparisons; nothing runs at the boundary itself (no batch job, no pause).

>>> clock = DayClock("Europe/Berlin")
>>> clock.day_start(1711839600.0)  # 2024-03-31 01:00 CET, the day clocks jump 02:00 -> 03:00
1711839600.0
>>> clock.day_start(1711900000.0) - clock.day_start(1711839600.0)  # that day lasts 23 h
0.0
>>> clock.day_start(1711929600.0) - clock.day_start(1711839600.0)  # next midnight (CEST)
82800.0
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo

from fds.timeutil import get_zone

__all__ = ["DayClock"]


class DayClock:
    """Start of the local day containing an instant, cached for the current day.

    Parameters
    ----------
    timezone
        IANA name (``UTC``, ``Europe/Berlin``) or a ``tzinfo``.
    """

    __slots__ = ("_cutoff", "_day", "_end", "_start", "cache", "tz")

    def __init__(self, timezone: str | tzinfo = "UTC") -> None:
        self.tz = get_zone(timezone) if isinstance(timezone, str) else timezone
        self._start = math.inf  # [_start, _end): the instants the cached day answers for
        self._end = -math.inf
        self._day = math.inf  # (their day's start)
        self._cutoff = -math.inf
        # [start, end, cutoff] of the cached run, for generated code to test without a call
        self.cache = [self._start, self._end, self._cutoff]

    def _offset(self, x: int) -> float:
        """The zone's UTC offset (seconds) at whole second ``x``."""
        off = datetime.fromtimestamp(x, self.tz).utcoffset()
        return off.total_seconds() if off is not None else 0.0

    def _bounds(self, t: float) -> tuple[float, float, float]:
        """``(day start, lo, hi)``: the local midnight of ``t``'s date, and the instants around
        ``t`` that share its date and its UTC offset, ``[lo, hi)``, which the cache may answer
        for. That run is the whole day but on the day of a clock change (two runs, each with
        the same start). Where the clocks fell back across midnight (St. John's, 2010: 00:01
        back to 23:01) the instants of a date are no interval: the cache held the whole of
        Sunday, so a time of the repeated hour read Sunday's midnight once any event had fallen
        in Sunday's first minute, and its own date's after a restore (a QA pass)."""
        # (whole seconds: every midnight is one, and fromtimestamp rounds to the microsecond,
        # so 0.4 us before midnight was the next day: a QA pass)
        x = math.floor(t)
        local = datetime.fromtimestamp(x, self.tz)
        day = local.date()
        # A midnight that does not exist (DST jump at 00:00) resolves, with fold=0, to the
        # instant of the jump: the day starts when the clocks say it does.
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()
        off = local.utcoffset()
        off_s = off.total_seconds() if off is not None else 0.0
        lo = math.floor(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() - off_s)
        hi = lo + 86400  # (t's date at t's offset; whole seconds, as every offset since 1900)
        if self._offset(lo) != off_s:  # a change between: its instant, by bisection
            a, b = lo, x  # (offset at a differs, at b is t's)
            while b - a > 1:
                m = (a + b) // 2
                a, b = (a, m) if self._offset(m) == off_s else (m, b)
            lo = b
        if self._offset(hi - 1) != off_s:
            a, b = x, hi - 1  # (offset at a is t's, at b differs)
            while b - a > 1:
                m = (a + b) // 2
                a, b = (m, b) if self._offset(m) == off_s else (a, m)
            hi = b
        return start, float(lo), float(hi)

    def day_start(self, t: float) -> float:
        """Epoch seconds of the local midnight that starts ``t``'s day."""
        if self._start <= t < self._end:
            return self._day
        start, lo, hi = self._bounds(t)
        self._start, self._end = lo, hi
        self._day = start
        self._cutoff = math.nextafter(start, -math.inf)
        self.cache[:] = (lo, hi, self._cutoff)
        return start

    def cutoff(self, t: float) -> float:
        """The largest instant *before* ``t``'s day: entries with ``ts <= cutoff`` are out.

        Sliding windows expire ``ts <= t - width``; expressing the calendar day the same way
        lets one comparison serve both kinds of window.
        """
        if self._start <= t < self._end:
            return self._cutoff
        self.day_start(t)
        return self._cutoff
