"""`fds replay --pushgateway`: a real Pushgateway, scraped by a real Prometheus, keeps a
replay's final counts after the replay is gone; pushes while it runs survive a gateway outage.

Both are Debian packages (``scripts/install_prometheus.sh``); the tests skip, saying why, only
when they cannot be installed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from fds.metrics import Metrics, Pusher
from tests.integration.prometheus import (
    PrometheusError,
    PrometheusServer,
    Pushgateway,
    ensure_installed,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    try:
        return ensure_installed(), ensure_installed("prometheus-pushgateway")
    except PrometheusError as e:
        pytest.skip(f"prometheus or the pushgateway cannot be installed: {e}")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


def test_a_replay_s_final_counts_reach_prometheus_after_it_ended(
    binaries: tuple[str, str], tmp_path: Path
) -> None:
    prom_bin, pgw_bin = binaries
    n_good = 300
    lines = [
        orjson.dumps(
            {"tx_id": f"t{i}", "ts": 1_767_225_600 + i, "card_id": f"c{i % 7}", "amount": 5 + i}
        ).decode()
        for i in range(n_good)
    ]
    lines.insert(100, "{not json")
    stream = tmp_path / "history.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    with Pushgateway(pgw_bin) as pgw:

        def replay(path: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fds.cli",
                    "replay",
                    str(path),
                    "--out",
                    str(tmp_path / "d.jsonl"),
                    "--no-progress",
                    "--pushgateway",
                    f"127.0.0.1:{pgw.port}",
                    "--push-job",
                    "nightly",
                ],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )

        proc = replay(stream)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"pushing metrics to http://127.0.0.1:{pgw.port} as job nightly" in proc.stderr
        succeeded = pgw.value("fds_last_success_timestamp_seconds", job="nightly")
        assert succeeded is not None and time.time() - 300 < succeeded <= time.time()
        # a failed run of the job (nothing decided: exit 1) reports its counts, but is no
        # success: the last success stays the first run's (a QA pass)
        broken = tmp_path / "broken.jsonl"
        broken.write_text("{not json\n[1, 2\n")
        assert replay(broken).returncode == 1
        assert pgw.value("fds_decisions_total", job="nightly", action="approve") == 0
        assert pgw.value("fds_last_success_timestamp_seconds", job="nightly") == succeeded
        assert replay(stream).returncode == 0  # (the counts of a good run, for what follows)
        # the replay is gone; Prometheus scrapes its last counts from the gateway
        with PrometheusServer(
            [f"127.0.0.1:{pgw.port}"], binary=prom_bin, honor_labels=True
        ) as prom:
            prom.wait_for_target_up()

            def one(expr: str, value: float) -> Any:
                return prom.wait_for(
                    expr, lambda r: len(r) == 1 and float(r[0]["value"][1]) == value
                )

            one('sum(fds_decisions_total{job="nightly"})', n_good)
            one('fds_events_consumed_total{job="nightly", source="file"}', n_good + 1)
            one('fds_dlq_messages_total{job="nightly", reason="bad_json"}', 1)
            pushed = prom.query('push_time_seconds{job="nightly"}')
            assert len(pushed) == 1 and float(pushed[0]["value"][1]) > time.time() - 600


def test_pushes_while_running_and_again_after_a_gateway_outage(
    binaries: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, pgw_bin = binaries
    metrics = Metrics()
    gw = Pushgateway(pgw_bin).start()
    try:
        pusher = Pusher(metrics, gw.url, "live", every_s=0.1).start()
        for _ in range(5):
            metrics.decision("approve", 0.001)

        def pushed() -> float | None:
            return gw.value("fds_decisions_total", job="live", action="approve")

        wait_until(lambda: pushed() == 5, "the running job's counts were pushed")
        gw.stop()
        tries = [0]
        real_push = pusher.push

        def push(timeout_s: float | None = None) -> None:  # (the real push, counted)
            tries[0] += 1
            real_push(timeout_s)

        pusher.push = push  # type: ignore[method-assign]
        with caplog.at_level(logging.INFO, logger="fds"):
            wait_until(lambda: tries[0] >= 4, "several pushes failed")  # (said once)
            metrics.decision("approve", 0.001)
            gw.start(gw.port)
            wait_until(lambda: pushed() == 6, "the pushes resumed after the outage")
            # (said once the push has returned: after the gateway holds its counts)
            back = f"pushing metrics to {gw.url} again"
            wait_until(lambda: back in [r.getMessage() for r in caplog.records], "it said so")
        said = [r.getMessage() for r in caplog.records]
        down = [
            m for m in said if m.startswith(f"cannot push metrics to the Pushgateway at {gw.url}")
        ]
        assert len(down) == 1, said
        assert f"pushing metrics to {gw.url} again" in said
        metrics.decision("review", 0.001)
        gw.stop()  # gone for the end: the last push fails, said so
        with caplog.at_level(logging.WARNING, logger="fds"):
            caplog.clear()
            assert pusher.stop(attempts=2) is False
        assert "the gateway holds the last push that got through" in caplog.text
        gw.start(gw.port)  # (a gateway without persistence forgets: pushes again)
        assert Pusher(metrics, gw.url, "live").stop() is True  # (the final push alone)
        assert gw.value("fds_decisions_total", job="live", action="review") == 1
    finally:
        gw.stop()


def test_a_push_the_gateway_refuses_says_the_gateway_s_reason(binaries: tuple[str, str]) -> None:
    """A QA pass: a gateway that refused a push (HTTP 400: a metric of one name pushed by
    another job with another type) was told as `Bad Request; start it, ...`, its reason
    dropped, though it ran."""
    from urllib.request import Request, urlopen

    from fds.errors import ConfigError

    _, pgw_bin = binaries
    with Pushgateway(pgw_bin) as gw:
        other = b"# TYPE fds_decisions_total gauge\nfds_decisions_total 1\n"
        urlopen(Request(f"{gw.url}/metrics/job/other", data=other, method="PUT"), timeout=10)
        with pytest.raises(ConfigError) as e:
            Pusher(Metrics(), gw.url, "nightly").start()
    said = str(e.value)
    assert f"at {gw.url} refused the metrics of job 'nightly': Bad Request (" in said
    assert "fds_decisions_total" in said and "start it" not in said


def test_a_second_run_pushing_the_same_job_is_warned(
    binaries: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A QA pass: two replays given one --push-job replaced each other's metrics every 10 s
    without a word. The job's `fds_push_running` says a run is under way (0 once it ended)."""
    _, pgw_bin = binaries
    with Pushgateway(pgw_bin) as gw:
        first = Pusher(Metrics(), gw.url, "nightly", every_s=0.2).start()
        assert gw.value("fds_push_running", job="nightly") == 1
        with caplog.at_level(logging.WARNING, logger="fds"):
            second = Pusher(Metrics(), gw.url, "nightly").start()
            assert "another run pushes job 'nightly' to the Pushgateway now" in caplog.text
            second.stop()
            first.stop(succeeded=True)
            assert gw.value("fds_push_running", job="nightly") == 0
            caplog.clear()  # one after the other, as a nightly script: nothing said
            Pusher(Metrics(), gw.url, "nightly").start().stop()
            Pusher(Metrics(), gw.url, "other").start().stop()
        assert "another run" not in caplog.text
