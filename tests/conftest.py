"""Hooks of the whole suite.

They live here, not in tests/integration/conftest.py, because with pytest-xdist (`make test`
runs workers) only the controller decides the exit status, and it loads this file but not the
conftest of a directory it never collects.
"""

from __future__ import annotations

import os

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
