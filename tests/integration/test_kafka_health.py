"""``fds run``'s /healthz and /readyz against the real broker: not ready while it joins and
rebuilds its state, ready once it decides, not ready while it drains after SIGTERM, and live
throughout. Waits on conditions (answers, records, a process exit), never a fixed time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES
from fds.streams.kafka import produce_file
from fds.streams.train import TrainService
from tests.integration.conftest import SPAWNED
from tests.integration.test_kafka_run import (
    REPO,
    count_records,
    settings_for,
    spawn_run,
    wait_until,
    write_stream,
)

pytestmark = pytest.mark.integration


def ask(url: str) -> tuple[int, dict[str, Any]] | None:
    """``(status, JSON body)``, or ``None`` when nothing listens (the process has exited)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:  # (a 404 is no JSON)
        if e.code == 404:
            return e.code, None
        try:
            return e.code, json.loads(e.read())
        except (ValueError, OSError):  # (its body cut: the process exited as it answered, a
            return None  # CI dry run read b"" from a 503 at the exit)
    except (urllib.error.URLError, ConnectionError):
        return None


def serving(p: subprocess.Popen) -> tuple[str, list[str], threading.Thread]:
    """The base URL a process spawned with ``--metrics-port 0`` says it serves on, and its
    stderr lines, read on by the thread returned (join it after the exit)."""
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(p.stderr.readline, "")))
    reader.start()
    wait_until(lambda: any("serving metrics on" in line for line in log), 60, "the port")
    url = re.search(r"serving metrics on (http://\S+)/metrics", "".join(log))[1]  # type: ignore[index]
    return url, log, reader


def test_readyz_follows_join_rebuild_decide_and_drain_healthz_stays_200(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    ids = write_stream(tmp_path / "tx.jsonl", 3000, step=0.01)
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)
    produce_file(tmp_path / "tx.jsonl", s)

    def stages(name: str) -> tuple[str, ...]:
        return ("--rules", str(DEFAULT_RULES), "--model", "none",
                "--state-dir", str(tmp_path / name))  # fmt: skip

    # A decides the backlog and commits it; B, with a state dir of its own, rebuilds the state
    # of those records from the input (slowed down to ~6 s) before it decides anything.
    a = spawn_run(kafka_bootstrap, topics, group, "--max-idle", "1", stages=stages("a"))
    _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err[-4000:]
    assert count_records(kafka_bootstrap, topics["decisions"]) == len(ids)
    b = spawn_run(
        kafka_bootstrap, topics, group, "--metrics-port", "0", stages=stages("b"),
        env={"FDS_FAULT_FOLD_DELAY_S": "0.002"},
    )  # fmt: skip
    url, log, reader = serving(b)

    answers: list[tuple[str, tuple[int, dict[str, Any]] | None]] = []

    def probe() -> bool:  # both endpoints, as a supervisor asks them
        answers.append(("live", ask(url + "/healthz")))
        answers.append(("ready", ready := ask(url + "/readyz")))
        return ready is not None and ready[0] == 200

    wait_until(probe, 120, "/readyz 200")
    before = [got for what, got in answers[:-1] if what == "ready"]
    assert before and all(got is not None and got[0] == 503 for got in before), before
    reasons = [got[1]["reason"] for got in before if got is not None]
    assert any(r.startswith("restoring the state (rebuild): partitions") for r in reasons), reasons
    assert any("rebuild partitions=" in line for line in log), "".join(log)[-4000:]
    assert answers[-1][1] == (200, {"status": "ready", "reason": "deciding 6 partitions"})

    more = write_stream(tmp_path / "more.jsonl", 300, start=len(ids), step=0.01)
    produce_file(tmp_path / "more.jsonl", s)
    wait_until(lambda: probe() and count_records(kafka_bootstrap, topics["decisions"])
               == len(ids) + len(more), 60, "the new input decided")  # fmt: skip

    b.send_signal(signal.SIGTERM)
    signalled = len(answers)
    wait_until(lambda: (probe(), answers[-1][1] is None)[1], 30, "the endpoint gone at the exit")
    b.wait(30)
    reader.join(10)
    assert b.returncode == 0, "".join(log)[-4000:]
    after = [got for what, got in answers[signalled:] if what == "ready" and got is not None]
    # (an answer given before the signal handler ran may still say ready; none after a 503)
    first = next((i for i, got in enumerate(after) if got[0] == 503), len(after))
    assert all(got[0] == 503 for got in after[first:]), after
    for got in after[first:]:
        assert got[1]["reason"].startswith(("draining after a stop", "stopping")), got
    print(f"/readyz answers while draining: {len(after) - first}")
    lives = [got for what, got in answers if what == "live" and got is not None]
    assert lives and all(got[0] == 200 and got[1]["status"] == "ok" for got in lives), lives


def test_fds_train_serves_healthz_its_loop_beating_and_no_readyz(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    svc = TrainService(
        settings_for(kafka_bootstrap, topics, unique_name("train")), spec=DEFAULT_MODEL,
        registry=tmp_path / "registry", state_dir=tmp_path / "state",
        decisions_topic=topics["decisions"], labels_topic=topics["labels"], models_topic=None,
    )  # fmt: skip
    started = svc.health.beat
    svc.run(max_idle_s=0.5)
    assert svc.health.beat > started  # (the loop's: no other code beats)

    p = subprocess.Popen(
        [sys.executable, "-m", "fds", "train", "--bootstrap", kafka_bootstrap,
         "--group", unique_name("train"), "--state-dir", str(tmp_path / "s2"),
         "--registry", str(tmp_path / "r2"), "--decisions-topic", topics["decisions"],
         "--labels-topic", topics["labels"], "--models-topic", "none", "--metrics-port", "0"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    SPAWNED.append(p)
    url, log, reader = serving(p)
    code, body = ask(url + "/healthz")
    assert (code, body["status"]) == (200, "ok") and "made progress" in body["reason"]
    assert ask(url + "/readyz") == (404, None)
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    reader.join(10)
    assert p.returncode == 0, "".join(log)[-4000:]


def test_produce_says_when_it_waits_for_the_broker_s_acknowledgements(
    kafka_bootstrap, topics, unique_name, tmp_path, caplog, monkeypatch
):
    """A QA pass: `fds produce` waited silently in its final flush (up to --broker-timeout),
    and a wrapper's `timeout` killed it with nothing said."""
    import time

    import fds.streams.produce as produce
    import fds.streams.service as service

    flush = produce.flush_within

    def slow_flush(producer: Any, timeout: float, cap: Any = None) -> None:
        time.sleep(0.5)  # (acknowledgements slow to come)
        flush(producer, timeout, cap)

    monkeypatch.setattr(service, "CONNECT_SAY_AFTER_S", 0.1)
    monkeypatch.setattr(produce, "flush_within", slow_flush)
    write_stream(tmp_path / "tx.jsonl", 20)
    s = settings_for(kafka_bootstrap, topics, unique_name("g"))
    with caplog.at_level("INFO", logger="fds.streams.kafka"):
        assert produce_file(tmp_path / "tx.jsonl", s) == 20
    said = [r.getMessage() for r in caplog.records if "waiting for Kafka" in r.getMessage()]
    assert len(said) == 1 and 'records="20"' in said[0], said
    assert said[0].startswith("waiting for Kafka to acknowledge the records sent, up to 60 s")
