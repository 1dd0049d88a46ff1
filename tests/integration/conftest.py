"""Fixtures for the integration tier: a real Kafka broker started by the kit, unique names.

The broker is started once with :func:`fds.streams.kafka_kit.up` (idempotent: a broker left
running by an earlier run is reused) and stopped by the last test session to end only if a
test session started it; the sessions on the machine (the pytest-xdist workers of `make test`,
other runs at the same time) share it, as the pids of its users under a file lock.
``FDS_TEST_BOOTSTRAP=host:port`` uses an existing broker instead.
A test that needs a broker of its own starts it on :func:`free_ports` (fixed ports collided
between two test runs at once on one machine).
Tests isolate themselves with uuid topic prefixes and group names; the topics they create are
deleted when the test ends (thousands of leftover partitions slow the single broker down), and
every ``fds run`` a test spawned is killed when it ends, whether it passed or failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
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
    with _broker_users(join=True) as users:
        if users["pids"] == [os.getpid()]:  # the first (a flag left by a killed run: reset)
            users["started"] = not kafka_kit.status().reachable
        try:
            bootstrap = kafka_kit.up()
        except BaseException:  # (no session to end: not counted)
            users["pids"].remove(os.getpid())
            raise
    yield bootstrap
    with _broker_users(join=False) as users:
        ours = not users["pids"] and users.pop("started", False)
        if ours and os.environ.get("FDS_TEST_KEEP_BROKER") != "1":
            kafka_kit.down()


@contextlib.contextmanager
def _broker_users(*, join: bool) -> Iterator[dict[str, Any]]:
    """The test sessions using the kit's broker (their pids), under a file lock beside its
    data dir.

    Every pytest-xdist worker (`make test` runs `-n`) is a session of its own, and two test
    runs may share the machine (two clones): the first session starts the broker if it is
    down, the last one to end stops it if a test session started it, and none starts it while
    another stops it. (Counted per run, a run that started it stopped it under another run
    still testing; a worker killed mid-run, counted for ever, kept it up after the run: a
    review.) A session that died without ending (killed, crashed) is no user any more.
    """
    ddir = kafka_kit.data_dir_default()
    ddir.parent.mkdir(parents=True, exist_ok=True)
    state = ddir.with_name(f"{ddir.name}.test-users.json")
    with open(state.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = json.loads(state.read_text()) if state.exists() else {"pids": []}
        _users(users, join)
        try:
            yield users
        finally:
            state.write_text(json.dumps(users))


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (the system's pick), for a broker of a
    test's own."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _users(users: dict[str, Any], join: bool) -> None:
    """Add (``join``) or remove this process among ``users["pids"]``, dropping dead ones."""
    me = os.getpid()
    users["pids"] = [p for p in users["pids"] if p != me and _alive(p)] + ([me] if join else [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's process: alive)
        pass
    return True


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
