"""Fixtures for the integration tier: a real Kafka broker started by the kit, unique names.

The broker is started once per test run with :func:`fds.streams.kafka_kit.up` (idempotent: a
broker left running by an earlier run is reused) and stopped at the end only if this run
started it; the pytest-xdist workers of one run (`make test`) share it, counted under a file
lock. ``FDS_TEST_BOOTSTRAP=host:port`` uses an existing broker instead.
A test file runs on one worker (`--dist loadfile`): the fixed ports of its own brokers (29192,
29292-29294, 29392) are not taken twice, and no other file may use them.
Tests isolate themselves with uuid topic prefixes and group names; the topics they create are
deleted when the test ends (thousands of leftover partitions slow the single broker down), and
every ``fds run`` a test spawned is killed when it ends, whether it passed or failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fds.streams import kafka_kit


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a running broker (started here when needed)."""
    external = os.environ.get("FDS_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    with _broker_users(tmp_path_factory, +1) as users:
        if users["n"] == 1 and not kafka_kit.status().reachable:
            users["started"] = True
        try:
            bootstrap = kafka_kit.up()
        except BaseException:  # (no session to end: not counted)
            users["n"] -= 1
            raise
    yield bootstrap
    with _broker_users(tmp_path_factory, -1) as users:
        ours = users["n"] == 0 and users.pop("started", False)
        if ours and os.environ.get("FDS_TEST_KEEP_BROKER") != "1":
            kafka_kit.down()


@contextlib.contextmanager
def _broker_users(factory: pytest.TempPathFactory, step: int) -> Iterator[dict[str, Any]]:
    """The sessions of one test run that use the kit's broker, counted under a file lock.

    With pytest-xdist (`make test` runs `-n`) every worker is a session of its own: the first
    one starts the broker if it is down, the last one to end stops it if this run started it,
    and none starts it while another stops it. Without xdist the count lives in this process.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        _USERS["n"] += step
        yield _USERS
        return
    state = factory.getbasetemp().parent / f"fds-kafka-users-{run}.json"
    with open(state.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = json.loads(state.read_text()) if state.exists() else {"n": 0}
        users["n"] += step
        try:
            yield users
        finally:
            state.write_text(json.dumps(users))


_USERS: dict[str, Any] = {"n": 0}


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
