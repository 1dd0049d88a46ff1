"""Hooks of the whole suite.

They live here, not in tests/integration/conftest.py, because with pytest-xdist (`make test`
runs workers) only the controller decides the exit status, and it loads this file but not the
conftest of a directory it never collects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

# The suite's engines run their features interpreted: a compiled kernel is built in the
# background (10-20 s of a core per feature set, fds.features.kernel), which hundreds of
# feature sets would spend here; tests/features/test_kernel.py builds and tests kernels on
# purpose. The CLI's children inherit it. FDS_FEATURE_KERNEL=compiled runs the suite compiled.
os.environ.setdefault("FDS_FEATURE_KERNEL", "off")

# `make test` (and so CI) sets FDS_REQUIRE_INTEGRATION=1: there an integration test that skips
# (Prometheus could not be installed, say) fails the run, instead of a green run that tested
# nothing against the real broker or Prometheus.
_SKIPPED: list[str] = []


@pytest.fixture(autouse=True)
def _rules_watchers_stopped() -> Iterator[None]:
    """Stop the rules watchers a test started and left running (an engine built with
    ``watch=True`` and never closed): a CI dry run's worker held 100 of them, polling, and a
    timing test of the health watcher then hung in its one-second sleep."""
    from fds.rules.reload import ReloadingRuleset

    started: list[ReloadingRuleset] = []
    real = ReloadingRuleset.start

    def start(self: ReloadingRuleset) -> None:
        started.append(self)
        real(self)

    ReloadingRuleset.start = start  # type: ignore[method-assign]
    yield
    ReloadingRuleset.start = real  # type: ignore[method-assign]
    for rs in started:
        rs.close()


@pytest.fixture(autouse=True)
def _fds_logger_as_it_was() -> Iterator[None]:
    """Give the ``fds`` logger back as it was after each test.

    The CLI's ``configure_logging`` gives it its own stderr handler and stops its propagation,
    so a test that ran the CLI in this process would hide every later test's records from
    ``caplog`` (the result would depend on the order the tests run in).
    """
    logger = logging.getLogger("fds")
    was = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in logger.handlers:
        if h not in was[0]:
            logger.removeHandler(h)
    logger.handlers[:] = was[0]
    logger.setLevel(was[1])
    logger.propagate = was[2]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if (
        report.skipped
        and os.environ.get("FDS_REQUIRE_INTEGRATION") == "1"
        and "tests/integration/" in report.nodeid.replace(os.sep, "/")
    ):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED:
        print(f"\nFDS_REQUIRE_INTEGRATION=1 and {len(_SKIPPED)} integration test(s) skipped:")
        for nodeid in _SKIPPED:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
