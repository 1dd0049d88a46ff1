"""A real Prometheus server for the integration tests: start, query, wait, stop.

Started on loopback on a free port with a temporary data directory and a 1 s scrape interval,
scraping the targets it is given. Installed by ``scripts/install_prometheus.sh`` (Debian
package ``prometheus``); :func:`ensure_installed` runs that script once when the binary is
missing.

Usage (not a doctest: it needs the binary and a running target)::

    with PrometheusServer(["127.0.0.1:9108"]) as prom:
        prom.wait_for_target_up()
        prom.values("fds_decisions_total", "action")   # {"approve": 880.0, ...}

:class:`Pushgateway` starts a real Pushgateway (Debian package ``prometheus-pushgateway``,
installed by the same script) the same way, for ``fds replay --pushgateway``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PrometheusError", "PrometheusServer", "Pushgateway", "ensure_installed", "free_port"]

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install_prometheus.sh"
ALERT_RULES = ROOT / "streams" / "monitoring" / "alerts.yml"

#: Scrape (and rule evaluation) every second: tests wait for a couple of scrapes, not 15 s.
SCRAPE_INTERVAL = "1s"

#: Prometheus needs ~1-3 s to open its TSDB and become ready on this machine; 60 s is a hang.
READY_TIMEOUT_S = 60.0


class PrometheusError(RuntimeError):
    """Prometheus could not be installed, started or queried."""


def ensure_installed(name: str = "prometheus") -> str:
    """Path of the ``prometheus`` binary (or ``prometheus-pushgateway``), installing the
    Debian packages if needed.

    Raises
    ------
    PrometheusError
        When it is missing and the install script fails (no root, no apt mirror, ...).
    """
    found = shutil.which(name)
    if found:
        return found
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    found = shutil.which(name)
    if proc.returncode != 0 or not found:
        raise PrometheusError(
            f"cannot install {name} with {INSTALL_SCRIPT} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``proc`` if it runs (kill after 10 s)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class PrometheusServer:
    """One Prometheus process scraping ``targets`` (``host:port`` of ``/metrics`` endpoints).

    Parameters
    ----------
    targets
        Scrape targets; job ``fds``, path ``/metrics``.
    rule_files
        Alert/recording rule files to load (e.g. ``streams/monitoring/alerts.yml``).
    binary
        The ``prometheus`` executable; found (or installed) when omitted.
    honor_labels
        Keep the ``job``/``instance`` labels the target's samples carry (a Pushgateway's
        targets: the pushing job's), as a Pushgateway's scrape config should.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        rule_files: Sequence[str | Path] = (),
        binary: str | None = None,
        honor_labels: bool = False,
    ) -> None:
        self.honor_labels = honor_labels
        self.targets = list(targets)
        self.rule_files = [str(p) for p in rule_files]
        self.binary = binary or ensure_installed()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PrometheusServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="fds-prom-")
        tmp = Path(self._tmp.name)
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": "fds",
                    "scrape_interval": SCRAPE_INTERVAL,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "metrics_path": "/metrics",
                    "honor_labels": self.honor_labels,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is valid YAML
        self._log = (tmp / "prometheus.log").open("wb")
        # A port can be taken between free_port() and the bind: retry on a new one.
        for _ in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            try:
                self._wait_ready()
                return self
            except PrometheusError:
                if self.proc.poll() is None:
                    raise
                self.proc = None
        raise PrometheusError(f"prometheus did not start; its log:\n{self.log_tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate Prometheus (kill after 10 s) and remove its data directory."""
        _terminate(self.proc)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "prometheus.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    # ------------------------------------------------------------------ HTTP API
    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` field, or :class:`PrometheusError`."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the vector's samples as ``[{metric: {...}, value: [ts, "v"]}]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return list(data["result"])

    def values(self, expr: str, label: str | None = None) -> dict[str, float]:
        """``{label value (or expr): float value}`` of an instant query."""
        return {
            (s["metric"].get(label, "") if label else expr): float(s["value"][1])
            for s in self.query(expr)
        }

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` holds; return that result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout}s waiting on {expr!r}; last result: {result}"
                )
            time.sleep(0.2)

    def wait_for_target_up(self, timeout: float = 30.0) -> None:
        """Wait until every target was scraped successfully (``up == 1``)."""
        n = len(self.targets)
        self.wait_for('up{job="fds"} == 1', lambda r: len(r) == n, timeout)

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending or firing)."""
        return list(self.api("alerts")["alerts"])


class Pushgateway:
    """One Pushgateway process on a free loopback port (no persistence file): ``url`` to push
    to, :meth:`metrics` to read back what it holds, :meth:`stop` to take it away."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or ensure_installed("prometheus-pushgateway")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> Pushgateway:
        """Start on ``port`` (0: a free one); again on the same port after :meth:`stop`."""
        for _ in range(3):  # (a port taken between free_port() and the bind: another)
            self.port = port or free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--persistence.file=",  # (Debian's default file is shared by every run)
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + READY_TIMEOUT_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.1)
            self.stop()
        raise PrometheusError(f"the Pushgateway did not start ({self.binary})")

    def metrics(self) -> str:
        """What the gateway serves on ``/metrics`` (the pushed groups and its own)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample ``name{labels...}`` it holds (labels it has beyond those
        given are ignored; the first match), or ``None``."""
        for line in self.metrics().splitlines():
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
        return None

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def __enter__(self) -> Pushgateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
