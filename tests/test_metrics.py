"""fds.metrics: names and conventions of RELIABILITY.md, exact counts, serving, the null switch."""

from __future__ import annotations

import inspect
import re
import socket
import threading
import time
import urllib.request
from typing import ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fds.errors import ConfigError
from fds.features import FeaturePlan
from fds.metrics import LATENCY_BUCKETS, Metrics, NullMetrics, make_metrics, serve
from fds.rules.ruleset import FeatureSpec

# Every metric RELIABILITY.md names (family names as Prometheus shows them), with its type.
RELIABILITY_METRICS = {
    "fds_events_consumed": "counter",
    "fds_decisions": "counter",
    "fds_rule_hits": "counter",
    "fds_events_failed": "counter",
    "fds_dlq_messages": "counter",
    "fds_stage_duration_seconds": "histogram",
    "fds_decision_latency_seconds": "histogram",
    "fds_event_lag_seconds": "gauge",
    "fds_consumer_lag_messages": "gauge",
    "fds_rebalances": "counter",
    "fds_commit_duration_seconds": "histogram",
    "fds_model_info": "gauge",
    "fds_model_swaps": "counter",
    "fds_labels_learned": "counter",
    "fds_model_precision": "gauge",
    "fds_drift_detected": "counter",
    "fds_ruleset_info": "gauge",
    "fds_ruleset_reloads": "counter",
    "fds_state_entities": "gauge",
    "fds_state_evicted_by_cap": "counter",
    "fds_state_max_entities": "gauge",
}

# Labels that would carry personal data or unbounded ids: never allowed on any series.
FORBIDDEN_LABELS = {"card_id", "tx_id", "customer_id", "device_id", "ip", "merchant_id"}


class RulesetCounts:
    """What fds.rules.Ruleset exposes for metrics: cumulative counts by rule id."""

    missing_counts: ClassVar[dict[str, int]] = {"velocity": 2}
    error_counts: ClassVar[dict[str, int]] = {"ratio_rule": 1}


def exercise(m: Metrics) -> None:
    """Call every recording method once or more with known values."""
    for _ in range(7):
        m.event_consumed("file")
    m.events_consumed("kafka", 5)
    for action, n in (("approve", 9), ("review", 2), ("decline", 1)):
        for _ in range(n):
            m.decision(action, latency_s=0.0003, event_lag_s=1.5)
    m.rule_hit("velocity", "active")
    m.rule_hit("velocity", "active")
    m.rule_hit("new_country", "shadow")
    m.rule_missing_input("new_country")
    m.watch_ruleset(lambda: RulesetCounts())
    m.stage_time("features", 0.00002)
    m.stage_time("rules", 0.002)
    m.failed("rules")
    m.dlq("bad_json")
    m.dlq("bad_json")
    m.dlq("schema")
    m.late_event("dlq")
    m.consumer_lag(3, 42)
    m.rebalance()
    m.commit_time(0.004)
    m.checkpoints(ok=3, failed=1)
    m.broker_reachable(True)
    m.model_info("v3", "default")
    m.model_swap("ok")
    m.model_swap("rejected")
    m.labels_learned(250)
    m.feature_labels(7)
    m.model_precision("champion", "1h", 0.42)
    m.drift()
    m.ruleset_info("2026-11-22.1")
    m.ruleset_reload("ok")
    m.state_entities("card_id", 1234)
    m.demoted("rule", "decline_all")
    m.degraded(True)
    m.model_fallback("error")
    ip = FeatureSpec(name="ip_n", entity="ip", agg="count", window="1h")
    plan = FeaturePlan([ip], max_entities={"ip": 5})  # (fds_features_compiled, the cap's)
    plan.evicted_by_cap[0] = 9  # (restored with the state: not this process's evictions)
    plan._decided_by_cap[0] = 4
    m.watch_features(lambda: plan)


def scrape(m: Metrics) -> dict[str, object]:
    """Parse the exposition as Prometheus would: family name -> family."""
    text = m.exposition().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_every_reliability_metric_is_exposed_with_its_type() -> None:
    m = Metrics()
    exercise(m)
    families = scrape(m)
    for name, kind in RELIABILITY_METRICS.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, f"{name}: {families[name].type} != {kind}"


def test_conventions_prefix_units_total_and_no_id_labels() -> None:
    m = Metrics()
    exercise(m)
    for fam in scrape(m).values():
        assert fam.name.startswith("fds_"), fam.name
        for s in fam.samples:
            assert not FORBIDDEN_LABELS & set(s.labels), (s.name, s.labels)
            assert not s.name.endswith("_created"), s.name  # (~40 series more: a QA pass)
            if fam.type == "counter":
                assert s.name.endswith("_total"), s.name
        assert "milliseconds" not in fam.name and "_ms" not in fam.name, "base units: seconds"


def test_counts_match_the_workload_exactly() -> None:
    m = Metrics()
    exercise(m)
    assert value(m, "fds_events_consumed_total", source="file") == 7
    assert value(m, "fds_events_consumed_total", source="kafka") == 5
    assert value(m, "fds_decisions_total", action="approve") == 9
    assert value(m, "fds_decisions_total", action="review") == 2
    assert value(m, "fds_decisions_total", action="decline") == 1
    assert value(m, "fds_rule_hits_total", rule="velocity", state="active") == 2
    assert value(m, "fds_rule_hits_total", rule="new_country", state="shadow") == 1
    assert value(m, "fds_rule_missing_inputs_total", rule="new_country") == 1
    assert value(m, "fds_rule_missing_inputs_total", rule="velocity") == 2
    assert value(m, "fds_rule_errors_total", rule="ratio_rule") == 1
    assert value(m, "fds_events_failed_total", stage="rules") == 1
    assert value(m, "fds_dlq_messages_total", reason="bad_json") == 2
    assert value(m, "fds_dlq_messages_total", reason="schema") == 1
    assert value(m, "fds_late_events_total", outcome="dlq") == 1
    assert value(m, "fds_consumer_lag_messages", partition="3") == 42
    assert value(m, "fds_rebalances_total") == 1
    assert value(m, "fds_commit_duration_seconds_count") == 1
    assert value(m, "fds_model_info", version="v3", spec="default") == 1
    assert value(m, "fds_model_swaps_total", result="rejected") == 1
    assert value(m, "fds_labels_learned_total") == 250
    assert value(m, "fds_feature_labels_total") == 7
    assert value(m, "fds_model_precision", model="champion", window="1h") == pytest.approx(0.42)
    assert value(m, "fds_drift_detected_total") == 1
    assert value(m, "fds_ruleset_info", version="2026-11-22.1") == 1
    assert value(m, "fds_ruleset_reloads_total", result="ok") == 1
    assert value(m, "fds_state_entities", entity="card_id") == 1234
    assert value(m, "fds_state_evicted_by_cap_total", entity="ip") == 4
    assert value(m, "fds_state_max_entities", entity="ip") == 5
    assert value(m, "fds_guardrail_demotions_total", kind="rule", target="decline_all") == 1
    assert value(m, "fds_degraded_mode") == 1
    assert value(m, "fds_model_fallbacks_total", reason="error") == 1
    assert value(m, "fds_event_lag_seconds") == 1.5
    # the latency histogram: 12 decisions, all 0.3 ms, so in the 0.5 ms bucket and above
    assert value(m, "fds_decision_latency_seconds_count") == 12
    assert value(m, "fds_decision_latency_seconds_sum") == pytest.approx(12 * 0.0003)
    assert value(m, "fds_decision_latency_seconds_bucket", le="0.00025") == 0
    assert value(m, "fds_decision_latency_seconds_bucket", le="0.0005") == 12
    assert value(m, "fds_stage_duration_seconds_bucket", stage="rules", le="0.001") == 0
    assert value(m, "fds_stage_duration_seconds_bucket", stage="rules", le="0.0025") == 1


def test_latency_buckets_span_0_1ms_to_1s() -> None:
    m = Metrics()
    m.decision("approve", 5.0)  # beyond the last bucket: only +Inf counts it
    les = [
        s.labels["le"]
        for s in scrape(m)["fds_decision_latency_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    assert float(les[0]) == 0.0001 and float(les[-2]) == 1.0 and les[-1] == "+Inf"
    assert [float(x) for x in les[:-1]] == list(LATENCY_BUCKETS)
    assert value(m, "fds_decision_latency_seconds_bucket", le="1.0") == 0
    assert value(m, "fds_decision_latency_seconds_bucket", le="+Inf") == 1


def test_boundary_value_falls_in_its_le_bucket() -> None:
    m = Metrics()
    m.decision("approve", 0.001)  # exactly on a bound: le="0.001" includes it
    assert value(m, "fds_decision_latency_seconds_bucket", le="0.001") == 1
    assert value(m, "fds_decision_latency_seconds_bucket", le="0.0005") == 0


def test_action_series_exist_at_zero_before_any_decision() -> None:
    m = Metrics()
    for action in ("approve", "review", "decline"):
        assert value(m, "fds_decisions_total", action=action) == 0
    assert value(m, "fds_degraded_mode") == 0
    assert value(m, "fds_rebalances_total") == 0


def test_two_instances_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.decision("decline", 0.001)
    a.model_info("v1", "x")
    b.model_info("v2", "y")
    assert value(a, "fds_decisions_total", action="decline") == 1
    assert value(b, "fds_decisions_total", action="decline") == 0
    assert value(b, "fds_model_info", version="v1", spec="x") is None


def test_info_gauges_keep_one_series() -> None:
    m = Metrics()
    for v in ("v1", "v2", "v3"):
        m.model_info(v, "default")
        m.ruleset_info(f"r{v}")
    names = [
        s.labels["version"]
        for s in scrape(m)["fds_model_info"].samples
        if s.name == "fds_model_info"
    ]
    assert names == ["v3"]
    assert value(m, "fds_ruleset_info", version="rv3") == 1
    assert value(m, "fds_ruleset_info", version="rv2") is None


def test_forget_partition_removes_the_series() -> None:
    m = Metrics()
    m.consumer_lag(0, 5)
    m.consumer_lag(1, 7)
    m.forget_partition(1)
    m.forget_partition(9)  # never owned: no error
    assert value(m, "fds_consumer_lag_messages", partition="0") == 5
    assert value(m, "fds_consumer_lag_messages", partition="1") is None


def test_summary_counts_and_quantiles() -> None:
    m = Metrics()
    exercise(m)
    for _ in range(88):
        m.decision("approve", 0.002)  # 100 decisions: 12 at 0.3 ms, 88 at 2 ms
    s = m.summary()
    assert s["events"] == 12
    assert s["consumed"] == {"file": 7, "kafka": 5}
    assert s["decisions"] == {"approve": 97, "review": 2, "decline": 1}
    assert s["rule_hits"] == {"velocity": {"active": 2}, "new_country": {"shadow": 1}}
    assert s["failed"] == {"rules": 1}
    assert s["dlq"] == {"bad_json": 2, "schema": 1}
    # p50 and p99 lie in the (1 ms, 2.5 ms] bucket, p50 interpolated within it
    assert 1.0 < s["latency_ms"]["p50"] <= 2.5
    assert 1.0 < s["latency_ms"]["p99"] <= 2.5
    assert s["latency_ms"]["mean"] == pytest.approx((12 * 0.3 + 88 * 2.0) / 100, rel=1e-6)
    assert set(s["stage_ms"]) == {"features", "rules"}
    # the max is exact, and an estimate interpolated past it is capped there (a QA pass: a p99
    # above the max, and a 244-ms worst case that no quantile showed)
    assert s["latency_ms"]["max"] == 2.0 and s["latency_ms"]["p99"] == 2.0


def test_the_replay_summary_says_its_latency_quantiles_are_estimates(capsys) -> None:
    """A QA pass: a fast replay showed p50 0.050 and p99 0.100 ms (the first bucket's
    interpolation) as measured, and not the worst case."""
    from fds.replay import ReplaySummary, print_summary

    m = Metrics()
    for _ in range(99):
        m.decision("approve", 0.00003)
    m.decision("approve", 0.244)
    print_summary(ReplaySummary(), m.summary())
    out = capsys.readouterr().out
    assert re.search(r"decision latency p50 \(histogram\) .* <= 0\.1 ms", out)
    assert re.search(r"decision latency max .* 244\.000 ms", out)
    assert re.search(r"decision latency mean .* 2\.470 ms", out)


def test_sample_stages_rate() -> None:
    m = Metrics(stage_sample_every=16)
    assert sum(m.sample_stages() for _ in range(1600)) == 100


def test_null_metrics_overrides_every_recording_method() -> None:
    public = {
        name
        for name, fn in inspect.getmembers(Metrics, inspect.isfunction)
        if not name.startswith("_") and name not in {"describe", "exposition"}
    }
    for name in public:
        assert name in vars(NullMetrics), f"NullMetrics must override {name}() (no recording)"
    m = make_metrics(enabled=False)
    exercise(m)
    assert not m.enabled
    assert m.summary()["events"] == 0
    assert m.exposition() == b""


def test_serve_scrape_and_stop_frees_the_port() -> None:
    m = Metrics()
    exercise(m)
    srv = serve(m, "127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(srv.url, timeout=5).read().decode()
    finally:
        srv.stop()
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert set(RELIABILITY_METRICS) <= set(fams)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", srv.port))
    srv.stop()  # idempotent


def test_a_client_that_sends_nothing_is_dropped(monkeypatch, capfd) -> None:
    """A QA pass: each idle or half-sent connection held a thread and a descriptor of the
    server for good (100 connections: 100 threads), a peer gone without a word included."""
    from fds import metrics as metrics_module

    monkeypatch.setattr(metrics_module._QuietHandler, "timeout", 0.3)
    srv = serve(Metrics(), "127.0.0.1", 0)
    try:
        before = threading.active_count()
        clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]
        clients[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # (half a request)
        for c in clients:
            c.settimeout(5)
            assert c.recv(100) == b""  # closed by the server after its timeout
            c.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() <= before
        body = urllib.request.urlopen(srv.url, timeout=5).read()  # (still serving)
        assert b"fds_" in body
    finally:
        srv.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_a_connection_past_the_bound_takes_the_place_of_the_oldest_idle_one(monkeypatch) -> None:
    """A review: a client trickling its request a byte at a time kept its thread past the
    read timeout (each read got a byte): at most MAX_CLIENTS connections are served at once.
    A QA pass: closing the new ones let 32 idle connections, reconnecting once cut, fail the
    health checks for as long; the oldest that sent no request gives way instead."""
    from fds import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MAX_CLIENTS", 3)
    srv = serve(Metrics(), "127.0.0.1", 0)
    try:
        held = []
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", srv.port)))
            held[-1].sendall(b"G")  # (a request begun, never ended)
            time.sleep(0.1)  # (in this order)
        probe = socket.create_connection(("127.0.0.1", srv.port))  # a new one is served ...
        probe.settimeout(5)
        probe.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert probe.recv(100).startswith(b"HTTP/1.0 200"), "the probe was not served"
        probe.close()
        held[0].settimeout(5)
        assert held[0].recv(100) == b""  # ... in the place of the oldest idle one
        for c in held[1:]:  # (the others held on)
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recv(100)
        for c in held:
            c.close()
    finally:
        srv.stop()


def test_a_client_trickling_its_request_is_dropped_after_the_timeout(monkeypatch) -> None:
    """A QA pass: clients sending a byte every few seconds were never dropped (the timeout
    bounded each read), so MAX_CLIENTS of them failed the health checks for as long."""
    from fds import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MAX_CLIENTS", 3)
    monkeypatch.setattr(metrics_module._QuietHandler, "timeout", 0.5)
    srv = serve(Metrics(), "127.0.0.1", 0)
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        held[0].sendall(b"GET /metrics HTTP/1.1\r\n")  # (one trickles its headers)
        deadline = time.monotonic() + 10
        dropped = set()
        while len(dropped) < 3 and time.monotonic() < deadline:
            for i, c in enumerate(held):  # a byte each 0.2 s: every read gets one
                try:
                    c.sendall(b"X" if i == 0 else b"G")
                except OSError:
                    dropped.add(i)
            time.sleep(0.2)
        assert len(dropped) == 3
        body = urllib.request.urlopen(srv.url, timeout=5).read()  # served again
        assert b"fds_" in body
        for c in held:
            c.close()
    finally:
        srv.stop()


def test_serve_on_a_busy_port_says_what_to_do() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+.*port"):
            serve(Metrics(), "127.0.0.1", port)
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:70000.*0-65535"):
        serve(Metrics(), "127.0.0.1", 70000)


def test_a_metrics_address_or_port_that_cannot_work_says_so(capsys) -> None:
    """An unknown host was told as a port problem, and a port below -1 turned metrics off
    without a word (a review)."""
    import argparse

    from fds.metrics import add_metrics_arguments

    with pytest.raises(ConfigError, match=r"nosuchhost\.invalid:0: .*give an address of this"):
        serve(Metrics(), "nosuchhost.invalid", 0)
    # an address, but not this machine's (TEST-NET-1): no port problem either (a QA pass)
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1:0: .*give an address of this"):
        serve(Metrics(), "192.0.2.1", 0)
    parser = argparse.ArgumentParser()
    add_metrics_arguments(parser, -1)
    assert parser.parse_args(["--metrics-port", "-1"]).metrics_port == -1
    with pytest.raises(SystemExit):
        parser.parse_args(["--metrics-port", "-5"])
    assert "a port is 0-65535 (0: any free port), or -1: off; got -5" in capsys.readouterr().err


def test_scrape_while_the_engine_thread_writes() -> None:
    """A scrape from the HTTP thread during hot-path writes never fails or goes backwards."""
    m = Metrics()
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            m.event_consumed("kafka")
            m.decision("approve", 0.0001 * (i % 50), 0.1)
            m.rule_hit(f"r{i % 40}", "active")  # new label keys appear while scraping
            m.stage_time(f"s{i % 7}", 0.0002)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        last = -1.0
        for _ in range(50):
            fams = scrape(m)
            buckets = [
                s.value
                for s in fams["fds_decision_latency_seconds"].samples
                if s.name.endswith("_bucket")
            ]
            assert buckets == sorted(buckets), "cumulative buckets must not decrease"
            total = value(m, "fds_decisions_total", action="approve")
            assert total is not None and total >= last
            last = total
    finally:
        stop.set()
        t.join()
    assert last > 0


def test_dashboard_and_alerts_only_use_metrics_that_exist() -> None:
    """The monitoring kit cannot rot: every fds_* name it queries is one Metrics exposes."""
    import json
    import re
    from pathlib import Path

    import yaml

    m = Metrics()
    exercise(m)
    exposed = {s.name for fam in scrape(m).values() for s in fam.samples}
    exposed |= {fam.name for fam in scrape(m).values()}
    from fds.streams.train import trainer_metrics

    trained = {s.name for fam in scrape(trainer_metrics(True)).values() for s in fam.samples}
    kit = Path(__file__).resolve().parents[1] / "streams" / "monitoring"
    dash = json.loads((kit / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    alerts = yaml.safe_load((kit / "alerts.yml").read_text())
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bfds_[a-z_]+", e)}
    assert used, "no fds_ metric found in the monitoring kit"
    unknown = used - exposed - trained  # (the trainer's own series: fds_model_publishes_total)
    assert not unknown, f"unknown metrics in streams/monitoring: {sorted(unknown)}"
    # the job/instance choices list the trainer too (they read fds_decisions_total, which only
    # a scorer has: the trainer could not be picked, a QA pass)
    for var in dash["templating"]["list"]:
        for name in re.findall(r"\bfds_[a-z_]+", var.get("query", "")):
            assert name in trained and name in exposed, (var["name"], name)
    # the panels and alerts are all there
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for panel in (
        "throughput",
        "decision mix",
        "latency",
        "lag",
        "dead letters",
        "model",
        "precision",
        "rule hit rates",
        "ready",  # (the current state at the top: no panel showed who is in shadow now)
        "in shadow by the breaker",
        "rules file in force",
    ):
        assert panel in titles, panel
    # a replay's pushed series (role batch, from the Pushgateway) are in no live panel or
    # service alert: they were summed into the throughput, lag and model panels (a QA pass)
    live = exprs + [var.get("query", "") for var in dash["templating"]["list"]]
    for e in live:
        for m_ in re.finditer(r"\b(fds_[a-z_]+)(\{[^}]*\})?", e):
            assert re.search(r'role![=~]"[^"]*batch', m_.group(2) or ""), (m_.group(0), e)
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    assert {
        "FdsNoDecisions",
        "FdsConsumerLagGrowing",
        "FdsDeadLettersHigh",
        "FdsDeclineRateSpike",
        "FdsModelPrecisionDrop",
        "FdsDriftDetected",
        "FdsModelSwapRejected",
    } <= names


def test_watch_ruleset_follows_reloads_and_adds_per_event_counts() -> None:
    class Rules:
        def __init__(self, missing: dict[str, int], errors: dict[str, int]) -> None:
            self.missing_counts, self.error_counts = missing, errors

    live: list[Rules | None] = [None]
    m = Metrics()
    m.watch_ruleset(lambda: live[0])
    m.rule_missing_input("a")
    assert value(m, "fds_rule_missing_inputs_total", rule="a") == 1  # no ruleset yet
    live[0] = Rules({"a": 4, "b": 2}, {"b": 1})
    assert value(m, "fds_rule_missing_inputs_total", rule="a") == 5
    assert value(m, "fds_rule_errors_total", rule="b") == 1
    live[0] = Rules({"c": 1}, {})  # reloaded: the new ruleset's counts
    assert value(m, "fds_rule_missing_inputs_total", rule="b") is None
    assert value(m, "fds_rule_missing_inputs_total", rule="c") == 1


def test_drained_counts_plus_watched_residual_stay_exact() -> None:
    """The engine drains the ruleset's counts into Metrics now and then; the scrape adds what
    has not been drained yet, so the exported total is right at any moment."""

    class Rules:
        def __init__(self) -> None:
            self.missing, self.errors = {"a": 0}, {"a": 0}

        @property
        def missing_counts(self) -> dict[str, int]:
            return dict(self.missing)

        @property
        def error_counts(self) -> dict[str, int]:
            return dict(self.errors)

        def drain(self) -> tuple[dict[str, int], dict[str, int]]:
            out = dict(self.missing), dict(self.errors)
            self.missing, self.errors = {"a": 0}, {"a": 0}
            return out

    rs = Rules()
    m = Metrics()
    m.watch_ruleset(lambda: rs)
    true_missing = true_errors = 0
    for i in range(1, 50):
        rs.missing["a"] += 2
        rs.errors["a"] += 1
        true_missing, true_errors = true_missing + 2, true_errors + 1
        if i % 7 == 0:
            missing, errors = rs.drain()
            for rule, n in missing.items():
                m.rule_missing_input(rule, n)
            for rule, n in errors.items():
                m.rule_error(rule, n)
        assert value(m, "fds_rule_missing_inputs_total", rule="a") == true_missing
        assert value(m, "fds_rule_errors_total", rule="a") == true_errors


def test_watch_features_reads_state_sizes_and_the_kernel_at_scrape() -> None:
    class Plan:
        def __init__(self) -> None:
            self.sizes = {"card_id": 10}
            self.compiled = False

        def state_sizes(self) -> dict[str, int]:
            return dict(self.sizes)

    plan = Plan()
    live: list[Plan | None] = [None]
    m = Metrics()
    m.watch_features(lambda: live[0])
    m.state_entities("device_id", 3)  # set directly, e.g. by a component without state_sizes
    assert value(m, "fds_state_entities", entity="card_id") is None
    live[0] = plan
    assert value(m, "fds_state_entities", entity="card_id") == 10
    plan.sizes["card_id"] = 25  # no call needed: read at scrape time
    assert value(m, "fds_state_entities", entity="card_id") == 25
    assert value(m, "fds_state_entities", entity="device_id") == 3
    assert value(m, "fds_features_compiled") == 0
    plan.compiled = True  # (its kernel built: fds.features.kernel)
    assert value(m, "fds_features_compiled") == 1


def test_a_scrape_never_sees_a_rule_count_between_the_ruleset_and_the_counters():
    """With watch_ruleset, a scrape between Engine.report's drain and its adds saw the drained
    counts in neither place: fds_rule_missing_inputs_total went down (57 times in a review's
    run). The drain and the adds are one step for a scrape now."""
    import threading

    from fds.metrics import Metrics

    class Ruleset:
        def __init__(self) -> None:
            self.missing_counts, self.error_counts = {"r": 5}, {}

    rs = Ruleset()
    m = Metrics()
    m.watch_ruleset(lambda: rs)
    seen: list[float | None] = []
    scrapes: list[threading.Thread] = []

    def drain():
        rs.missing_counts = {}  # drained: the ruleset's counts start again at 0 ...
        scrape = threading.Thread(  # ... and a scrape comes before they reach the counters
            target=lambda: seen.append(
                m.registry.get_sample_value("fds_rule_missing_inputs_total", {"rule": "r"})
            )
        )
        scrape.start()
        scrape.join(0.2)
        scrapes.append(scrape)
        return {"r": 5}, {}

    m.drain_rule_counts(drain)
    scrapes[0].join(5)
    assert seen == [5.0]


def test_the_consumed_and_fallback_series_exist_at_0_before_the_first_event(tmp_path) -> None:
    """A QA pass: `fds_events_consumed_total{source}` and `fds_model_fallbacks_total{reason}`
    appeared with their first batch or fallback, so increase() (the dashboard's throughput, the
    dead-letter alert's denominator) missed the first 5,000 records of a run."""
    from fds.engine import Engine
    from fds.replay import ReplayInput, run
    from fds.streams.files import JsonlSink
    from fds.streams.kafka import KafkaSettings, Runner

    m = Metrics()
    assert value(m, "fds_model_fallbacks_total", reason="error") == 0.0
    assert value(m, "fds_model_fallbacks_total", reason="degraded") == 0.0
    assert value(m, "fds_events_consumed_total", source="kafka") is None
    Runner(KafkaSettings(), Engine(metrics=m))
    assert value(m, "fds_events_consumed_total", source="kafka") == 0.0
    m = Metrics()
    with JsonlSink(tmp_path / "d.jsonl") as sink, JsonlSink(tmp_path / "x.jsonl") as dlq:
        run(Engine(metrics=m), ReplayInput(iter(())), sink, dlq, source="f", progress=False)
    assert value(m, "fds_events_consumed_total", source="file") == 0.0


def _not_http_server() -> tuple[socket.socket, int]:
    """A loopback port that answers every connection with an SSH greeting (no HTTP)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve_forever() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=serve_forever, daemon=True).start()
    return srv, int(srv.getsockname()[1])


def test_a_pushgateway_address_that_answers_no_http_is_told_not_raised(caplog) -> None:
    """A review: BadStatusLine is no OSError: a traceback at the start, the push thread dead
    without a word, and the replay's summary lost at the end."""
    import time

    from fds.metrics import Pusher

    srv, port = _not_http_server()
    try:
        with pytest.raises(
            ConfigError, match=f"cannot push metrics to the Pushgateway at http://127.0.0.1:{port}"
        ):
            Pusher(Metrics(), f"127.0.0.1:{port}", "j").start()
        metrics = Metrics()
        with pytest.raises(ConfigError):
            Pusher(metrics, f"127.0.0.1:{port}", "j").start()
        pusher = Pusher(metrics, f"127.0.0.1:{port}", "j", every_s=0.05)  # (the same metrics:
        # the failed one's gauges were left registered, DuplicateTimeseries, a review)
        pusher._thread = threading.Thread(target=pusher._loop, daemon=True)
        pusher._thread.start()
        with caplog.at_level("WARNING", logger="fds"):
            deadline = time.monotonic() + 10
            while "cannot push" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pusher._thread.is_alive()  # it goes on trying
            t0 = time.monotonic()
            assert pusher.stop(attempts=2) is False  # the last push: two tries a second apart
            assert time.monotonic() - t0 >= 1.0
        assert caplog.text.count("cannot push metrics") == 2  # once while running, once at the end
        assert "retrying every 0.05 s" in caplog.text  # (it said "every 0 s")
    finally:
        srv.close()


def test_a_gateway_that_never_answers_holds_the_stop_for_at_most_its_budget(caplog) -> None:
    """A QA pass: a Pushgateway that accepts and never answers held a stopped replay's exit
    17 s after its summary (the push under way joined without a limit, then three pushes of
    5 s each), against SIGTERM's 10 s."""
    import socket
    import time

    from fds.metrics import STOP_WITHIN_S, Pusher

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # accepted by the kernel, never read nor answered
    try:
        pusher = Pusher(Metrics(), f"127.0.0.1:{srv.getsockname()[1]}", "j", every_s=0.05)
        pusher._thread = threading.Thread(target=pusher._loop, daemon=True)
        pusher._thread.start()
        time.sleep(0.2)  # (a push under way)
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="fds"):
            assert pusher.stop() is False
        assert time.monotonic() - t0 < STOP_WITHIN_S + 2.0
        assert "cannot push metrics" in caplog.text
    finally:
        srv.close()


def test_every_rule_deciding_has_its_series_at_0_before_it_counts() -> None:
    """A rare rule's series appeared at its first hit, so increase() and rate() missed that
    hit, and a replay pushed to a Pushgateway had no series for a rule it never hit ("no data"
    on the dashboard rather than 0)."""
    from fds.rules.ruleset import load_ruleset_text

    def ruleset(ids: str) -> object:
        rules = "".join(
            f"  - {{id: {i}, when: amount > 1, action: review, score: 0.5, reason: r"
            + (", state: shadow}\n" if i.startswith("watch") else "}\n")
            + "  - {id: old, when: amount > 1, action: review, score: 0.5, reason: r, "
            "state: paused}\n" * (i == "big")
            for i in ids.split()
        )
        return load_ruleset_text(f'version: "t"\nrules:\n{rules}', "r.yaml")

    live = [ruleset("big watch")]
    m = Metrics()
    m.watch_ruleset(lambda: live[0])
    assert value(m, "fds_rule_hits_total", rule="big", state="active") == 0
    assert value(m, "fds_rule_hits_total", rule="watch", state="shadow") == 0
    assert value(m, "fds_rule_hits_total", rule="watch", state="active") is None
    assert value(m, "fds_rule_hits_total", rule="old", state="paused") is None  # (not run)
    for family in ("fds_rule_missing_inputs_total", "fds_rule_errors_total"):
        assert value(m, family, rule="big") == value(m, family, rule="watch") == 0
    m.rule_hit("big", "active")
    m.rule_missing_input("watch", 2)
    assert value(m, "fds_rule_hits_total", rule="big", state="active") == 1
    assert value(m, "fds_rule_missing_inputs_total", rule="watch") == 2
    live[0] = ruleset("big new")  # reloaded: the new rule at 0, what was counted stays
    assert value(m, "fds_rule_hits_total", rule="new", state="active") == 0
    assert value(m, "fds_rule_hits_total", rule="big", state="active") == 1
    assert value(m, "fds_rule_missing_inputs_total", rule="watch") == 2


@pytest.mark.parametrize("reloading", [False, True])
def test_an_engine_exports_every_rule_of_its_ruleset_at_0(tmp_path, reloading) -> None:
    """A QA pass: the engine never watched its ruleset (only the test above did), so `fds run`
    had no fds_rule_errors_total series at all, and a replay pushed to a Pushgateway none for
    a rule it never hit, as before the change above."""
    from fds.engine import Engine
    from fds.rules.reload import ReloadingRuleset
    from fds.rules.ruleset import load_ruleset

    path = tmp_path / "r.yaml"
    path.write_text(
        'version: "t"\nrules:\n'
        "  - {id: big, when: amount > 1, action: review, score: 0.5, reason: r}\n"
    )
    rules = ReloadingRuleset(path, start=False) if reloading else load_ruleset(path)
    m = Metrics()
    Engine(rules=rules, metrics=m)
    assert value(m, "fds_rule_hits_total", rule="big", state="active") == 0
    assert value(m, "fds_rule_missing_inputs_total", rule="big") == 0
    assert value(m, "fds_rule_errors_total", rule="big") == 0


def test_an_engine_with_a_feature_stage_of_its_own_is_scraped() -> None:
    """A feature stage without ``state_sizes`` (any object with ``compute``) failed every
    scrape once the engine watched its features (a CI run)."""
    from fds.engine import Engine

    class Stage:
        def compute(self, tx: object) -> dict[str, object]:
            return {}

    m = Metrics()
    Engine(features=Stage(), metrics=m)
    assert b"fds_decisions_total" in m.exposition()
    assert m.registry.get_sample_value("fds_features_compiled") is None


def test_the_model_acts_only_while_served_gated_open_not_demoted_nor_bypassed() -> None:
    """A QA pass: with the model demoted by the breaker (every decision flagged
    model_demoted) or bypassed in degraded mode, fds_model_acting stayed 1, and the
    dashboard's "Model acting" tile said it acted."""
    m = Metrics()

    def acting() -> float | None:
        return m.registry.get_sample_value("fds_model_acting")

    m.model_acting(True)
    assert acting() == 0  # (no version served)
    m.model_info("v000001", "default")
    assert acting() == 1
    m.demoted_now([("rule", "r1")])
    assert acting() == 1
    m.demoted_now([("model", "@model"), ("rule", "r1")])
    assert acting() == 0
    m.demoted_now([])
    m.demoted("model", "@model")  # (at once, not at the next report: a review)
    assert acting() == 0
    m.demoted_now([])
    m.degraded(True)
    assert acting() == 0
    m.degraded(False)
    assert acting() == 1


def test_a_gateway_whose_api_cannot_be_read_is_said_at_the_start(caplog) -> None:
    """A QA pass: behind a proxy that serves the push path alone (its API answered 404), the
    job's last success could not be read back, and each push of a failed run replaced the
    job's metrics without it, without a word (a staleness alert then fired on its absence)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fds.metrics import Pusher

    class PushPathOnly(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # (the gateway's API behind the proxy: not served)
            self.send_error(404)

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), PushPathOnly)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with caplog.at_level("WARNING", logger="fds"):
            pusher = Pusher(Metrics(), f"127.0.0.1:{srv.server_port}", "nightly", every_s=60)
            pusher.start()
            pusher.stop()
        assert pusher.last_success is None
        assert "api/v1/metrics could not be read (HTTPError: HTTP Error 404" in caplog.text
        assert "fds_last_success_timestamp_seconds until it ends well" in caplog.text
    finally:
        srv.shutdown()
        srv.server_close()
    caplog.clear()  # a gateway down: its error alone (a review: the API's warning came first)
    with caplog.at_level("WARNING", logger="fds"), pytest.raises(ConfigError, match="start it"):
        Pusher(Metrics(), f"127.0.0.1:{srv.server_port}", "nightly").start()
    assert "could not be read" not in caplog.text
