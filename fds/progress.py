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
            yield bar
            return
        with logging_redirect_tqdm(loggers=[logging.getLogger("fds")], tqdm_class=tqdm):
            yield bar
