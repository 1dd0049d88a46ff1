"""Fixtures for the stream tests."""

from __future__ import annotations

import functools

import pytest

from fds.gcpolicy import Freezer


@pytest.fixture(autouse=True)
def _freezes_by_event_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fds run``'s freezer freezes (and drains first) by its event count only: its early
    freeze follows the collector's counts, which are the whole test process's (a test that
    counts flushes and commits found a drain it had not made; tests/test_gcpolicy.py tests
    that freeze)."""
    monkeypatch.setattr("fds.streams.kafka.Freezer", functools.partial(Freezer, young=None))
