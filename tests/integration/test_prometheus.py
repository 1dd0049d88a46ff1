"""A real Prometheus scrapes a real fds /metrics endpoint; values are checked via its HTTP API.

Prometheus is the Debian package (installed by ``scripts/install_prometheus.sh`` when missing);
the tests skip, saying why, only when it cannot be installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fds.engine import Engine
from fds.metrics import Metrics, MetricsServer, serve
from fds.replay import ReplayInput, run
from fds.schema import parse_transaction
from fds.streams.simulator import simulate
from tests.integration.prometheus import (
    ALERT_RULES,
    PrometheusError,
    PrometheusServer,
    ensure_installed,
)

pytestmark = pytest.mark.integration

# The metric families RELIABILITY.md fixes, as series names Prometheus stores.
RELIABILITY_SERIES = (
    "fds_events_consumed_total",
    "fds_decisions_total",
    "fds_rule_hits_total",
    "fds_events_failed_total",
    "fds_dlq_messages_total",
    "fds_stage_duration_seconds_bucket",
    "fds_decision_latency_seconds_bucket",
    "fds_event_lag_seconds",
    "fds_consumer_lag_messages",
    "fds_rebalances_total",
    "fds_commit_duration_seconds_bucket",
    "fds_model_info",
    "fds_model_swaps_total",
    "fds_labels_learned_total",
    "fds_model_precision",
    "fds_drift_detected_total",
    "fds_ruleset_info",
    "fds_ruleset_reloads_total",
    "fds_state_entities",
)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    try:
        return ensure_installed()
    except PrometheusError as e:
        pytest.skip(f"prometheus is not installed and could not be installed: {e}")


@pytest.fixture
def endpoint() -> Iterator[tuple[Metrics, MetricsServer]]:
    m = Metrics()
    srv = serve(m, "127.0.0.1", 0)
    yield m, srv
    srv.stop()


@pytest.fixture
def prometheus(
    prometheus_binary: str, endpoint: tuple[Metrics, MetricsServer]
) -> Iterator[PrometheusServer]:
    _, srv = endpoint
    with PrometheusServer(
        [f"127.0.0.1:{srv.port}"], rule_files=[ALERT_RULES], binary=prometheus_binary
    ) as prom:
        prom.wait_for_target_up()
        yield prom


def equals(expected: float) -> Any:
    return lambda r: len(r) == 1 and float(r[0]["value"][1]) == expected


def test_every_series_is_scraped_with_the_values_recorded(
    endpoint: tuple[Metrics, MetricsServer], prometheus: PrometheusServer
) -> None:
    m, _ = endpoint
    # a known workload: 1000 decisions, 8% reviews and 2% declines
    for i in range(1000):
        m.event_consumed("kafka")
        action = "decline" if i % 50 == 0 else "review" if i % 10 == 0 else "approve"
        m.decision(action, latency_s=0.0002 if i % 4 else 0.004, event_lag_s=0.8)
        if action != "approve":
            m.rule_hit("velocity", "active")
        m.stage_time("rules", 0.00005)
    m.rule_hit("new_device", "shadow")
    m.failed("model")
    m.dlq("bad_json")
    m.dlq("schema")
    m.dlq("schema")
    m.consumer_lag(0, 12)
    m.consumer_lag(1, 30)
    m.rebalance()
    m.commit_time(0.02)
    m.model_info("v5", "default")
    m.model_swap("ok")
    m.labels_learned(321)
    m.model_precision("champion", "1d", 0.37)
    m.drift()
    m.ruleset_info("2026-11-22.1")
    m.ruleset_reload("ok")
    m.state_entities("card_id", 500)

    prometheus.wait_for('fds_decisions_total{action="approve"}', equals(900))
    names = {s["metric"]["__name__"] for s in prometheus.query('{__name__=~"fds_.+", job="fds"}')}
    missing = [n for n in RELIABILITY_SERIES if n not in names]
    assert not missing, f"series missing in Prometheus: {missing}"

    assert prometheus.values("fds_decisions_total", "action") == {
        "approve": 900.0,
        "review": 80.0,
        "decline": 20.0,
    }
    assert prometheus.values("fds_events_consumed_total", "source") == {"kafka": 1000.0}
    assert prometheus.values("fds_rule_hits_total", "state") == {"active": 100.0, "shadow": 1.0}
    assert prometheus.values("fds_dlq_messages_total > 0", "reason") == {
        "bad_json": 1.0, "schema": 2.0
    }  # fmt: skip
    assert prometheus.values("fds_events_failed_total > 0", "stage") == {"model": 1.0}
    # the stages none failed at are series at 0 (not absent: a dashboard showed "no data")
    assert prometheus.values("fds_dlq_messages_total", "reason")["rules"] == 0.0
    assert prometheus.values("fds_consumer_lag_messages", "partition") == {"0": 12.0, "1": 30.0}
    assert prometheus.values("sum(fds_consumer_lag_messages)") == {
        "sum(fds_consumer_lag_messages)": 42.0
    }
    assert prometheus.values("fds_decision_latency_seconds_count") == {
        "fds_decision_latency_seconds_count": 1000.0
    }
    # 750 decisions at 0.2 ms, 250 at 4 ms: the median is under 0.25 ms, p99 in (2.5, 5] ms
    p50 = prometheus.values("histogram_quantile(0.5, fds_decision_latency_seconds_bucket)")
    p99 = prometheus.values("histogram_quantile(0.99, fds_decision_latency_seconds_bucket)")
    assert 0.0001 < next(iter(p50.values())) <= 0.00025
    assert 0.0025 < next(iter(p99.values())) <= 0.005
    assert prometheus.values("fds_model_info", "version") == {"v5": 1.0}
    assert prometheus.values("fds_labels_learned_total") == {"fds_labels_learned_total": 321.0}
    assert prometheus.values("fds_model_precision", "window") == {"1d": pytest.approx(0.37)}
    assert prometheus.values("fds_event_lag_seconds") == {"fds_event_lag_seconds": 0.8}

    # the values move on: a swap to v6 replaces the info series, decisions keep counting
    m.model_info("v6", "default")
    for _ in range(5):
        m.decision("decline", 0.001)
    prometheus.wait_for('fds_decisions_total{action="decline"}', equals(25))
    prometheus.wait_for("fds_model_info", lambda r: [s["metric"]["version"] for s in r] == ["v6"])

    # the alert rules of streams/monitoring load and evaluate without errors
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 7
    prometheus.wait_for("up", lambda r: all(rule.get("health") != "err" for rule in rules))
    unhealthy = [
        (r["name"], r.get("lastError"))
        for g in prometheus.api("rules")["groups"]
        for r in g["rules"]
        if r.get("health") == "err"
    ]
    assert not unhealthy


class FailOn:
    """A feature stage that raises on chosen transactions (the stage-failure path)."""

    def __init__(self, bad: set[str]) -> None:
        self.bad = bad

    def compute(self, tx: Any) -> dict[str, Any]:
        if tx["tx_id"] in self.bad:
            raise ValueError("boom")
        return {}

    def on_label(self, label: Any) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.records.append(record)


def test_a_real_replay_is_counted_in_prometheus(
    endpoint: tuple[Metrics, MetricsServer], prometheus: PrometheusServer
) -> None:
    """A simulated stream through fds.replay.run and the Engine, metrics on, scraped for real."""
    m, _ = endpoint
    sim = simulate(days=2, cards=300, merchants=150, seed=5, drift_day=None)
    txs = [parse_transaction(t) for t in sim.transactions]
    bad = {txs[i]["tx_id"] for i in (3, 200, 555)}
    engine = Engine(features=FailOn(bad), metrics=m)
    decisions, dlq = ListSink(), ListSink()
    summary = run(engine, ReplayInput(txs, []), decisions, dlq, source="simulator")
    assert summary.dead_letters == 3 and summary.decided == len(txs) - 3

    # the stage failures: counted by the replay loop, scraped by Prometheus
    prometheus.wait_for("sum(fds_dlq_messages_total)", equals(3))
    assert prometheus.values("fds_events_failed_total > 0", "stage") == {"features": 3.0}

    # every decision, by action, as the replay summary counts them
    prometheus.wait_for("sum(fds_decisions_total)", equals(summary.decided))
    got = prometheus.values("fds_decisions_total", "action")
    assert {a: n for a, n in got.items() if n} == {a: float(n) for a, n in summary.actions.items()}
    assert prometheus.values("sum(fds_events_consumed_total)") == {
        "sum(fds_events_consumed_total)": float(len(txs))
    }
    assert prometheus.values("fds_decision_latency_seconds_count") == {
        "fds_decision_latency_seconds_count": float(summary.decided)
    }
    # stage timing is sampled (1 event in 16), but it is there
    sampled = prometheus.values("fds_stage_duration_seconds_count", "stage")
    assert 0 < sampled["features"] <= summary.decided


def test_a_replay_with_the_default_rules_counts_every_rule_hit(
    endpoint: tuple[Metrics, MetricsServer], prometheus: PrometheusServer
) -> None:
    """build_engine(rules/default.yaml) over a simulated stream: hits by rule and state match
    the decisions written, and the ruleset's own counters are exported at scrape time."""
    from collections import Counter

    from fds.pipeline import DEFAULT_RULES, build_engine

    m, _ = endpoint
    engine = build_engine(DEFAULT_RULES, None, metrics=m)
    m.watch_ruleset(lambda: engine.rules)
    m.watch_features(lambda: engine.features)
    sim = simulate(days=4, cards=800, merchants=300, seed=11, drift_day=None)
    txs = [parse_transaction(t) for t in sim.transactions]
    decisions, dlq = ListSink(), ListSink()
    summary = run(engine, ReplayInput(txs, []), decisions, dlq, source="simulator")
    hits = Counter((h["id"], h["state"]) for d in decisions.records for h in d["rule_hits"])
    assert hits, "the default rules should fire on a simulated stream"

    prometheus.wait_for("sum(fds_decisions_total)", equals(summary.decided))
    got = {
        (s["metric"]["rule"], s["metric"]["state"]): float(s["value"][1])
        for s in prometheus.query("fds_rule_hits_total")
    }
    zeros = {(r.id, r.spec.state): 0.0 for r in engine.rules.evaluated}  # (each rule run)
    assert got == zeros | {k: float(n) for k, n in hits.items()}
    assert len(got) > len(hits), "some default rules never fire on a simulated stream"
    got_actions = prometheus.values("fds_decisions_total", "action")
    assert {a: n for a, n in got_actions.items() if n} == {
        a: float(n) for a, n in summary.actions.items() if n
    }
    # the engine drains the ruleset's counts into Metrics: compare with an identical run
    # without metrics, whose ruleset kept the whole count
    reference = build_engine(DEFAULT_RULES, None)
    run(reference, ReplayInput(txs, []), ListSink(), ListSink(), source="simulator")
    missing = {r: float(n) for r, n in reference.rules.missing_counts.items() if n}
    assert missing, "some default rules read names the simulator leaves out"
    got_missing = prometheus.values("fds_rule_missing_inputs_total", "rule")
    assert {r: n for r, n in got_missing.items() if n} == missing
    sizes = {e: float(n) for e, n in engine.features.state_sizes().items()}
    assert prometheus.values("fds_state_entities", "entity") == sizes
    assert sizes.get("card_id", 0) > 0


# --------------------------------------------------------------------------- monitoring kit
MONITORING = ALERT_RULES.parent


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, template variables filled in."""
    import json

    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"].replace("$job", ".*").replace("$instance", ".*")))
    for a in dash["annotations"]["list"]:
        out.append((a["name"], a["expr"].replace("$job", ".*").replace("$instance", ".*")))
    return out


def promtool() -> str:
    import shutil

    ensure_installed()
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not found after installing prometheus")
    return found


def test_promtool_checks_the_alert_rules_and_config() -> None:
    import subprocess

    tool = promtool()
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts.test.yml"],
    ):
        proc = subprocess.run(
            [tool, *args], cwd=MONITORING, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_every_dashboard_query_runs_on_real_data(
    endpoint: tuple[Metrics, MetricsServer], prometheus: PrometheusServer
) -> None:
    m, _ = endpoint
    for i in range(200):
        m.event_consumed("kafka")
        m.decision("review" if i % 20 == 0 else "approve", 0.0004, 0.5)
        m.stage_time("rules", 0.0001)
        m.rule_hit("velocity", "active")
    m.model_info("v1", "default")
    m.ruleset_info("r1")
    m.model_precision("champion", "1d", 0.4)
    m.consumer_lag(0, 3)
    m.state_entities("card_id", 10)
    m.demoted_now([("rule", "velocity")])
    m.ruleset_file_ok(True)
    prometheus.wait_for("sum(fds_decisions_total)", equals(200))
    # rate() needs two samples of each series: wait for a second scrape of the new ones
    prometheus.wait_for(
        "min(count_over_time(fds_rule_hits_total[1m]))",
        lambda r: r != [] and float(r[0]["value"][1]) >= 2,
    )
    for title, expr in dashboard_queries():
        try:
            prometheus.api("query", query=expr)
        except PrometheusError as e:
            pytest.fail(f"dashboard panel {title!r}: {e}")
    # the core panels show data
    for title in (
        "Throughput", "Decision mix", "Champion model", "Rule hit rates", "Ruleset",
        "In shadow by the breaker", "Rules file in force",  # (the "Now" row)
    ):  # fmt: skip
        exprs = [e for t, e in dashboard_queries() if t == title]
        assert any(prometheus.query(e) for e in exprs), f"panel {title!r} shows no data"


# --------------------------------------------------------------------------- fds run on Kafka
def test_fds_run_on_kafka_is_scraped_by_prometheus(
    prometheus_binary: str, kafka_bootstrap: str, topics: dict[str, str], tmp_path: Any
) -> None:
    """A real `fds run` process on the real broker, scraped by a real Prometheus.

    Poison pills at known positions: the DLQ counter rises by exactly the number injected, and
    every other transaction is counted as decided (RELIABILITY.md test 4, seen through metrics).
    """
    import os
    import signal
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    import orjson

    from fds.streams.kafka import KafkaSettings, produce_file
    from tests.integration.prometheus import free_port

    n_good = 400
    lines = []
    for i in range(n_good):
        rec = {"tx_id": f"tx{i:05d}", "ts": 1_767_225_600 + i, "card_id": f"c{i % 37}",
               "amount": 1 + i % 300}  # fmt: skip
        lines.append(orjson.dumps(rec).decode())
    lines.insert(10, "{not json")  # parse -> bad_json
    lines.insert(200, '{"tx_id": "bad1", "ts": 1767225700, "card_id": "c1", "amount": -5}')
    lines.insert(300, "[1, 2")  # parse -> bad_json
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    settings = KafkaSettings(bootstrap=kafka_bootstrap, input_topic=topics["transactions"])
    assert produce_file(stream, settings) == n_good + 3

    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    log = (tmp_path / "fds-run.log").open("wb")
    group = f"test-prom-{uuid.uuid4().hex[:10]}"
    cmd = [
        sys.executable, "-m", "fds.cli", "run",
        "--bootstrap", kafka_bootstrap,
        "--input-topic", topics["transactions"],
        "--output-topic", topics["decisions"],
        "--dlq-topic", topics["dead_letters"],
        "--group", group,
        "--rules", "none", "--model", "none",
        "--metrics-port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with PrometheusServer([f"127.0.0.1:{port}"], binary=prometheus_binary) as prom:
            prom.wait_for_target_up(timeout=60)
            prom.wait_for("sum(fds_events_consumed_total)", equals(n_good + 3), timeout=60)
            prom.wait_for("sum(fds_decisions_total)", equals(n_good))
            assert prom.values("fds_events_consumed_total", "source") == {"kafka": n_good + 3}
            assert prom.values("fds_dlq_messages_total > 0", "reason") == {
                "bad_json": 2.0,
                "schema": 1.0,
            }
            # caught up: no lag left on any partition, commits were timed
            prom.wait_for("sum(fds_consumer_lag_messages)", equals(0))
            commits = prom.values("fds_commit_duration_seconds_count")
            assert next(iter(commits.values())) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    assert code == 0, (tmp_path / "fds-run.log").read_text()[-3000:]
