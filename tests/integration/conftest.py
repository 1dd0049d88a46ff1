"""Fixtures for the integration tier: a real Kafka broker started by the kit, unique names.

The broker is started once per session with :func:`fds.streams.kafka_kit.up` (idempotent: a
broker left running by an earlier session is reused) and stopped at the end only if this
session started it. ``FDS_TEST_BOOTSTRAP=host:port`` uses an existing broker instead.
Tests isolate themselves with uuid topic prefixes and group names; the topics they create are
deleted when the test ends (thousands of leftover partitions slow the single broker down), and
every ``fds run`` a test spawned is killed when it ends, whether it passed or failed.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fds.streams import kafka_kit


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a running broker (started here when needed)."""
    external = os.environ.get("FDS_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    was_running = kafka_kit.status().reachable
    bootstrap = kafka_kit.up()
    yield bootstrap
    if not was_running and os.environ.get("FDS_TEST_KEEP_BROKER") != "1":
        kafka_kit.down()


# Every `fds run` started by a test (test_kafka_run.spawn_run appends it): the autouse fixture
# below kills what is still running when the test ends, failed or not.
SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A failing test must not leave an `fds run` consuming in the background."""
    yield
    while SPAWNED:
        p = SPAWNED.pop()
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if p.stderr is not None:
            p.stderr.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory: ``unique_name("group")`` -> ``"test-group-3f2a..."`` (never reused)."""

    def make(kind: str) -> str:
        return f"test-{kind}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def make_topics(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., dict[str, str]]]:
    """Factory for topic sets with overridden partition counts: ``make_topics(partitions=2)``;
    every set made is deleted when the test ends."""
    made: list[str] = []

    def make(partitions: int | None = None) -> dict[str, str]:
        specs: dict[str, dict[str, Any]] = kafka_kit.load_topic_specs()
        if partitions is not None:
            for logical in ("transactions", "decisions", "state_changelog"):
                specs[logical] = {**specs[logical], "partitions": partitions}
        names = kafka_kit.create_topics(kafka_bootstrap, specs, prefix=unique_name("t") + ".")
        made.extend(names.values())
        return names

    yield make
    if made:
        kafka_kit.delete_topics(kafka_bootstrap, made)


@pytest.fixture
def topics(make_topics: Callable[..., dict[str, str]]) -> dict[str, str]:
    """All topics of streams/topics.yaml under a fresh prefix: logical name -> topic name."""
    return make_topics()


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
