"""Progress bars for long work: on a terminal only, with fds's log lines printed above them.

A bar is drawn on stderr when it is a terminal (``disable=None``: a bar redrawn into a log
file every half second was noise there, a QA pass). While a bar is shown, the ``fds`` loggers
write through it (``tqdm.write``), so a warning is printed on its own line above the bar
instead of being cut into it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(
    total: int | Callable[[], int | None] | None,
    *,
    unit: str,
    desc: str,
    mininterval: float = 0.5,
    enabled: bool = True,
) -> Iterator[Any]:
    """A tqdm bar (its ``update`` a no-op when not shown) for the ``with`` block; ``total``
    may be a function, called only when the bar is shown (a count that costs a pass).

    >>> with progress_bar(3, unit="tx", desc="demo", enabled=False) as bar:
    ...     bar.update(3)
    >>> bar.disable
    True
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    shown = enabled and bool(getattr(sys.stderr, "isatty", lambda: False)())
    if callable(total):
        total = total() if shown else None
    with tqdm(
        total=total, unit=unit, unit_scale=True, desc=desc, mininterval=mininterval,
        file=sys.stderr, disable=not shown,
    ) as bar:  # fmt: skip
        if bar.disable:
            yield _Logged(bar, desc, unit) if enabled else bar
            return
        with logging_redirect_tqdm(loggers=[logging.getLogger("fds")], tqdm_class=tqdm):
            yield bar


#: Without a terminal, how often a long task logs how far it got instead of drawing a bar.
LOG_EVERY_S = 30.0


class _Logged:
    """A hidden bar's stand-in: counts as tqdm does and logs ``progress`` at INFO every
    LOG_EVERY_S (a long `fds bench precision` into a file said nothing until its end: a README
    walk). Everything else is the hidden bar's."""

    def __init__(self, bar: Any, desc: str, unit: str) -> None:
        import time

        self._bar, self._desc, self._unit, self._clock = bar, desc, unit, time.monotonic
        self._at = self._clock() + LOG_EVERY_S
        self.n: float = 0

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._clock() >= self._at:
            self._at = self._clock() + LOG_EVERY_S
            logging.getLogger("fds.progress").info(
                'progress task="%s" done="%d" unit="%s"', self._desc, self.n, self._unit
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
