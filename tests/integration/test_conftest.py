"""The suite's own broker sharing (tests/integration/conftest.py): pytest-xdist workers and
test runs at the same time on one machine use one kit broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.conftest import _broker_users


@pytest.fixture
def other() -> Iterator[subprocess.Popen]:
    """Another test session, alive."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


@pytest.fixture(autouse=True)
def _own_kit_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FDS_KAFKA_DIR", str(tmp_path / "run"))


def test_a_session_that_died_is_no_user_of_the_broker(tmp_path):
    """A worker killed mid-run never ended its session: counted as a user, it kept the broker
    up after the run (the last session to end did not stop it: a review)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = tmp_path / "run.test-users.json"
    state.write_text(json.dumps({"pids": [dead.pid], "started": True}))
    with _broker_users(join=True) as users:
        assert len(users["pids"]) == 1  # this one only
    with _broker_users(join=False) as users:
        assert users["pids"] == [] and users["started"]  # the last one: it stops the broker
    assert json.loads(state.read_text())["pids"] == []


def test_the_last_session_of_any_run_stops_the_broker(other):
    """Two test runs on one machine (two clones): the run that started the broker stopped it
    at its end under the other run, still testing (each counted its own workers)."""
    with _broker_users(join=True) as users:
        users["pids"].append(other.pid)  # a session of another run, still testing
    with _broker_users(join=False) as users:
        assert users["pids"] == [other.pid]  # not the last: the broker stays up
