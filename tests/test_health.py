"""/healthz and /readyz (fds.health) beside /metrics: what each answers, with a fake clock;
then over HTTP from fds.metrics.serve. The Runner's readiness: tests/streams/test_runner_health.py;
against the real broker: tests/integration/test_kafka_health.py."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from fds.health import Health, health_app, stale_after
from fds.metrics import Metrics, serve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(ready: Any = None, stale_after_s: float = 120.0) -> tuple[Health, Clock]:
    clock = Clock()
    wall = lambda: 1_767_225_600.0 + clock.now  # noqa: E731 (2026-01-01T00:00:00Z at 0)
    return Health(stale_after_s=stale_after_s, ready=ready, clock=clock, wall=wall), clock


def test_live_until_no_beat_for_longer_than_the_bound_then_says_since_when() -> None:
    h, clock = health()
    clock.now += 120.0  # the bound itself is still progress (a start counts as a beat)
    ok = {"status": "ok", "reason": "the main loop made progress 120.0 s ago"}
    assert h.liveness() == (200, ok)
    clock.now += 30.5
    code, body = h.liveness()
    assert code == 503
    assert body["status"] == "stuck"
    assert body["stale_for_s"] == 150.5
    assert body["last_progress"] == "2026-01-01T00:16:40Z"  # the start, 1000 s after 0
    assert "no progress for 150 s (more than 120 s)" in body["reason"]
    h.beat = clock.now  # the loop moves again
    assert h.liveness()[0] == 200


def test_ready_only_when_the_service_says_so_and_is_live() -> None:
    state = {"ready": (False, "joining the group 'fds'")}
    h, clock = health(ready=lambda: state["ready"])
    assert h.readiness() == (503, {"status": "not ready", "reason": "joining the group 'fds'"})
    state["ready"] = (True, "deciding 3 partitions")
    assert h.readiness() == (200, {"status": "ready", "reason": "deciding 3 partitions"})
    clock.now += 121.0  # stuck: not ready either, whatever its flags say
    code, body = h.readiness()
    assert code == 503 and body["status"] == "not ready" and "no progress" in body["reason"]


def test_the_bound_is_the_broker_timeout_plus_a_minute() -> None:
    assert stale_after(60.0) == 120.0
    assert stale_after(5.0) == 65.0


def call(app: Any, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    got: list[Any] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": method},
                        lambda status, headers: got.append((status, dict(headers)))))  # fmt: skip
    return got[0][0], got[0][1], body


def test_the_app_dispatches_metrics_health_and_404() -> None:
    h, clock = health(ready=lambda: (False, "restoring the state of partitions [0]"))
    app = health_app(lambda env, start: (start("200 OK", []), [b"metrics"])[1], h)
    assert call(app, "/metrics")[::2] == ("200 OK", b"metrics")
    assert call(app, "/")[::2] == ("200 OK", b"metrics")  # as before: scrape configs without a path
    status, headers, body = call(app, "/healthz")
    ok = {"status": "ok", "reason": "the main loop made progress 0.0 s ago"}
    assert (status, json.loads(body)) == ("200 OK", ok)
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    status, _, body = call(app, "/readyz")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["reason"] == "restoring the state of partitions [0]"
    status, _, body = call(app, "/favicon.ico")
    assert status == "404 Not Found"  # (it said "not found: /metrics, ...": a QA pass)
    assert body == b"not found: /favicon.ico (served here: /metrics, /healthz, /readyz)\n"
    assert call(app, "/healthz", "POST")[0] == "405 Method Not Allowed"
    clock.now += 500
    assert call(app, "/healthz")[0] == "503 Service Unavailable"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_serve_answers_health_beside_metrics_over_http() -> None:
    m = Metrics()
    m.decision("approve", 0.001)
    h, clock = health(ready=lambda: (True, "deciding 1 partition"))
    with serve(m, "127.0.0.1", 0, health=h) as srv:
        base = srv.url.removesuffix("/metrics")
        for path in ("/metrics", "/", "/metrics?name[]=fds_decisions_total"):
            code, body = get(base + path)
            assert code == 200 and b'fds_decisions_total{action="approve"} 1.0' in body, path
        code, body = get(base + "/healthz")
        assert (code, json.loads(body)["status"]) == (200, "ok")
        code, body = get(base + "/readyz")
        assert code == 200 and json.loads(body)["reason"] == "deciding 1 partition"
        assert get(base + "/other")[0] == 404
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:  # (HEAD had
            c.sendall(b"HEAD /healthz HTTP/1.0\r\n\r\n")  # a body, which HTTP forbids)
            answer = b"".join(iter(lambda: c.recv(4096), b""))
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\n")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:  # (405 for
            c.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")  # /metrics: a QA pass)
            answer = b"".join(iter(lambda: c.recv(4096), b""))
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\n"), answer
        length = int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        for path in ("/nope", "/healthz"):  # (a 404's body came with HEAD: a review)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
                c.sendall(b"HEAD " + path.encode() + b" HTTP/1.0\r\n\r\n")
                answer = b"".join(iter(lambda: c.recv(4096), b""))
            assert answer.endswith(b"\r\n\r\n") and b"nosniff" in answer, answer
        page = len(get(base + "/metrics")[1])  # (it said 0: a QA pass; the page's own
        assert page > 1000 and abs(length - page) < page / 20  # gauges may move meanwhile)
        clock.now += 121
        assert get(base + "/healthz")[0] == 503
        assert get(base + "/readyz")[0] == 503


@pytest.mark.parametrize("with_health", [False, True])
def test_without_a_readiness_check_readyz_is_not_served(with_health: bool) -> None:
    """fds replay serves no health checks, fds train liveness only."""
    h = health()[0] if with_health else None
    with serve(Metrics(), "127.0.0.1", 0, health=h) as srv:
        base = srv.url.removesuffix("/metrics")
        assert get(base + "/readyz")[0] == 404
        assert get(base + "/healthz")[0] == (200 if with_health else 404)
        assert get(base + "/metrics")[0] == 200


def test_fds_ready_follows_readyz_and_is_absent_without_a_readiness_check() -> None:
    state = {"ready": (False, "joining the group 'fds'")}
    m = Metrics()
    m.watch_health(health(ready=lambda: state["ready"])[0])
    assert m.registry.get_sample_value("fds_ready") == 0.0
    state["ready"] = (True, "deciding 1 partition")
    assert m.registry.get_sample_value("fds_ready") == 1.0
    liveness_only = Metrics()  # fds train
    liveness_only.watch_health(health()[0])
    for without in (liveness_only, Metrics()):
        assert without.registry.get_sample_value("fds_ready") is None


def test_a_stalled_main_loop_is_logged_with_where_it_is_and_again_once_it_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A QA pass: a loop stuck 200 s in a model call said nothing (only /healthz turned 503),
    so a pod restarted by its probe left no trace of why in its log."""
    import time

    h = Health(stale_after_s=0.3)
    with caplog.at_level("WARNING", "fds.health"), h.watching(every_s=0.05):
        h.tick()
        time.sleep(1.0)  # (stuck here: no beat)
        h.tick()
        deadline = time.monotonic() + 5
        while "progress again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("the main loop has made no progress: /healthz answers 503"), said
    assert "test_a_stalled_main_loop_is_logged" in said[0], said  # (where it was stuck)
    assert said[1].startswith("the main loop makes progress again after a stall seconds=")


def test_a_stall_is_said_as_long_as_it_lasted_not_until_the_watcher_looked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The loop's stall was said from its newest beat when the watcher next looked: up to a
    watcher's pass (5 s) more than it lasted (a QA pass)."""
    clock = [100.0]
    h = Health(stale_after_s=10.0, clock=lambda: clock[0])

    def said(what: str) -> None:  # (waits for the watcher's line, 5 s at most)
        deadline = time.monotonic() + 5
        while what not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)

    with caplog.at_level("WARNING", "fds.health"), h.watching(every_s=0.2):
        clock[0] = 130.0  # (30 s without a beat)
        said("no progress")
        h.tick()  # it goes on at 130 s ...
        clock[0] = 134.0
        h.tick()  # ... and beats again at 134 s before the watcher's next look
        said("progress again")
    assert caplog.records[-1].getMessage().endswith('after a stall seconds="30.0"')
    # the same where the loop sets its beat (fds run, fds train: ``health.beat = now``)
    caplog.clear()
    with caplog.at_level("WARNING", "fds.health"), h.watching(every_s=0.2):
        clock[0] = 154.0  # (20 s without a beat)
        said("no progress")
        h.beat = clock[0]
        clock[0] = h.beat = 160.0
        said("progress again")
    assert caplog.records[-1].getMessage().endswith('after a stall seconds="20.0"')


#: The body of the test below, run in a process of its own: faulthandler writes 100 threads at
#: most, the newest first, and a test process that had gathered more cut the main one off.
_HELD = """
import re, sys, time
from fds.health import Health

def held_in_c():
    h = Health(stale_after_s=0.2)
    with h.watching(every_s=0.05):
        time.sleep(0.2)  # (the watcher arms its timer)
        t0 = time.monotonic()
        re.match(r"(a+)+$", "a" * 26 + "b")  # (catastrophic backtracking: the GIL held)
        return time.monotonic() - t0

print(f"held={held_in_c():.3f}")
"""


def test_a_loop_stuck_holding_the_interpreter_gets_its_stacks_written() -> None:
    """A review: a loop stuck in C code that holds the interpreter (a native call, a giant
    unpickle) stops the watching thread too, so nothing was said until the call returned: a C
    timer armed by the watcher writes every thread's stack to stderr meanwhile."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])  # (the tree tested)
    run = subprocess.run(
        [sys.executable, "-c", _HELD], capture_output=True, text=True, timeout=120, check=True,
        cwd=root, env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    held, err = float(run.stdout.strip().removeprefix("held=")), run.stderr
    if held < 0.6:
        pytest.skip(f"the interpreter was held {held:.2f} s only, not past the timer's 0.3 s")
    if "held_in_c" not in err and "_wait_for_tstate_lock" in err:
        # (a loaded machine: the watcher had not armed its timer before the hold began, and it
        # fired after it, while the block's end waited for the watcher: a unit run beside two
        # other jobs)
        pytest.skip("the watcher armed its timer only after the hold: the machine is loaded")
    assert "most recent call first" in err and "held_in_c" in err, err[-2000:]
