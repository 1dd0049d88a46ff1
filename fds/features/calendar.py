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
from datetime import datetime, timedelta, tzinfo

from fds.timeutil import get_zone

__all__ = ["DayClock"]


class DayClock:
    """Start of the local day containing an instant, cached for the current day.

    Parameters
    ----------
    timezone
        IANA name (``UTC``, ``Europe/Berlin``) or a ``tzinfo``.
    """

    __slots__ = ("_cutoff", "_end", "_start", "cache", "tz")

    def __init__(self, timezone: str | tzinfo = "UTC") -> None:
        self.tz = get_zone(timezone) if isinstance(timezone, str) else timezone
        self._start = math.inf
        self._end = -math.inf
        self._cutoff = -math.inf
        # [start, end, cutoff] of the cached day, for generated code to test without a call
        self.cache = [self._start, self._end, self._cutoff]

    def _bounds(self, t: float) -> tuple[float, float]:
        # (whole seconds: every midnight is one, and fromtimestamp rounds to the microsecond,
        # so 0.4 us before midnight was the next day: a QA pass)
        day = datetime.fromtimestamp(math.floor(t), self.tz).date()
        nxt = day + timedelta(days=1)
        # A midnight that does not exist (DST jump at 00:00) resolves, with fold=0, to the
        # instant of the jump: the day starts when the clocks say it does.
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.tz).timestamp()
        return start, end

    def day_start(self, t: float) -> float:
        """Epoch seconds of the local midnight that starts ``t``'s day."""
        if self._start <= t < self._end:
            return self._start
        start, end = self._bounds(t)
        self._start, self._end = start, end
        self._cutoff = math.nextafter(start, -math.inf)
        self.cache[:] = (start, end, self._cutoff)
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
