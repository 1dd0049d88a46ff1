"""Calls that may block for good (an ``open()`` of a FIFO no one writes to): run on a thread,
so that a regression fails the test rather than hangs it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def raised_within(call: Callable[[], Any], seconds: float = 30.0) -> BaseException | None:
    """What ``call`` raised (None if it returned), asserting it ended within ``seconds``."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # (whatever it is, the caller's to judge)
            raised.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds:g} s"
    return raised[0] if raised else None
