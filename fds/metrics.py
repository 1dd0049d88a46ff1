"""Prometheus metrics for every stage of fds, cheap enough for the per-event hot path.

Names, units and labels follow ``RELIABILITY.md``: prefix ``fds_``, base units (seconds),
counters end in ``_total``, latency histograms have buckets from 0.1 ms to 1 s, and no card or
transaction id ever becomes a label value (labels are bounded sets: sources, actions, rule ids,
stages, reasons, partitions).

Two kinds of metric live side by side in one :class:`Metrics` object, each with its own
``CollectorRegistry`` so that several engines (or tests) in one process never collide:

* **hot** metrics, touched for every event (consumed events, decisions, rule hits, stage and
  decision latency, event lag), are plain Python ints, floats and bucket lists updated without
  locks, and turned into Prometheus samples only when ``/metrics`` is scraped. A
  ``prometheus_client`` ``Histogram.observe`` costs about 1.2 us and a labelled ``Counter.inc``
  about 0.45 us on the CI machine; the plain updates here cost about 0.1-0.2 us. Hot methods
  must be called from one thread (the engine loop); a scrape from the HTTP thread reads a
  consistent-enough snapshot (each value is read atomically under the GIL). The same collector
  reads counts other components keep anyway (per-rule missing inputs and errors, state size)
  at scrape time: :meth:`Metrics.watch_ruleset`, :meth:`Metrics.watch_features`.
* **cold** metrics, touched a few times a second at most (failures, dead letters, swaps,
  reloads, consumer lag, commits, labels learned, ...), are ordinary, thread-safe
  ``prometheus_client`` objects, so the trainer thread may update them too.

:class:`NullMetrics` has the same methods doing nothing: code may always call
``m.decision(...)``, and the benchmark measures the cost of metrics by swapping one for the
other.

Examples
--------
>>> m = Metrics()
>>> m.event_consumed("file")
>>> m.decision("decline", latency_s=0.0004, event_lag_s=0.2)
>>> m.rule_hit("large_amount", "active")
>>> s = m.summary()
>>> s["events"], s["decisions"]["decline"], s["rule_hits"]["large_amount"]["active"]
(1, 1, 1)
>>> b"fds_decisions_total{action=\\"decline\\"} 1.0" in m.exposition()
True
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app, push_to_gateway
from prometheus_client.registry import Collector

from fds.cli import arg_type
from fds.errors import ConfigError, describe
from fds.guardrails import MODEL
from fds.health import Health, health_app

# No `*_created` series beside each counter and histogram (prometheus_client's default: ~40 of
# them in every scrape and push, a QA pass); a counter's reset is seen by rate() anyway.
disable_created_metrics()

__all__ = [
    "ACTIONS",
    "COMMIT_BUCKETS",
    "DLQ_REASON",
    "LATENCY_BUCKETS",
    "Metrics",
    "MetricsServer",
    "NullMetrics",
    "Pusher",
    "add_metrics_arguments",
    "make_metrics",
    "serve",
]

#: Upper bounds of the stage and decision latency histograms, in seconds: 0.1 ms to 1 s as
#: RELIABILITY.md fixes. A 1-2-5-ish progression keeps quantile estimates within ~2x anywhere
#: in that range with only 13 buckets (each bucket is a series in Prometheus).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

#: Offset (and Kafka transaction) commits take milliseconds to seconds, longer than a decision:
#: 1 ms to 10 s.
COMMIT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: The three decision actions; their series exist (at 0) from the start so that ``rate()`` and
#: the "no decisions" alert work before the first decline is ever made.
ACTIONS: tuple[str, ...] = ("approve", "review", "decline")

#: Stage timing is sampled: timing each of ~5 stages costs two clock reads and one histogram
#: update per stage (~1.3 us per event), more than the whole 10% budget of a 10 us event. One
#: event in 16 keeps the quantiles accurate at thousands of samples per second.
STAGE_SAMPLE_EVERY = 16

_NB = len(LATENCY_BUCKETS) + 1  # bucket counts per histogram, +Inf included

log = logging.getLogger(__name__)


class _Hist:
    """A lock-free histogram for one writer thread: bucket counts (last is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: first bound >= value, i.e. Prometheus' "le" (less-or-equal) bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float, int]:
        """Cumulative ``(le, count)`` buckets, the sum and the count, as Prometheus wants them."""
        counts = list(self.counts)  # one atomic copy under the GIL
        total = self.sum
        buckets: list[tuple[str, float]] = []
        acc = 0
        for bound, c in zip(self.bounds, counts, strict=False):
            acc += c
            buckets.append((repr(float(bound)), float(acc)))
        acc += counts[-1]
        buckets.append(("+Inf", float(acc)))
        return buckets, total, acc

    def quantile(self, q: float) -> float | None:
        """Estimate quantile ``q`` as Prometheus' ``histogram_quantile`` does (linear in a bucket).

        >>> h = _Hist((1.0, 2.0))
        >>> for v in (0.5, 1.5, 1.5, 1.5):
        ...     h.observe(v)
        >>> h.quantile(0.5)
        1.3333333333333333
        """
        counts = list(self.counts)
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        acc = 0
        lower = 0.0
        for bound, c in zip(self.bounds, counts, strict=False):
            if c and acc + c >= rank:
                return lower + (bound - lower) * (rank - acc) / c
            acc += c
            lower = bound
        return self.bounds[-1]  # in the +Inf bucket: the largest finite bound, as Prometheus does


#: ``fds_dlq_messages_total{reason}`` of a dead letter from each reading stage.
DLQ_REASON = {"parse": "bad_json", "validate": "schema"}
#: The stages a record can fail at (a dead letter's ``stage``).
STAGES = ("parse", "validate", "features", "rules", "model", "policy")


#: The families of :meth:`Metrics.collect` that only a process deciding transactions sets.
_DECIDING = frozenset(
    {
        "fds_decisions", "fds_rule_hits", "fds_rule_missing_inputs", "fds_rule_errors",
        "fds_stage_duration_seconds", "fds_decision_latency_seconds", "fds_state_entities",
        "fds_ruleset_info", "fds_guardrail_demoted", "fds_event_lag_seconds",
        "fds_features_compiled", "fds_state_evicted_by_cap", "fds_state_max_entities",
    }
)  # fmt: skip


def _family(kind: Any, name: str, doc: str, labels: list[str], values: Mapping[Any, float]) -> Any:
    """A metric family of ``kind`` with a sample per item of ``values``: its label value (a
    tuple of them for several labels) and its value."""
    family = kind(name, doc, labels=labels)
    for key, n in values.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], float(n))
    return family


class Metrics(Collector):
    """All fds metrics, in a registry of their own.

    Parameters
    ----------
    registry
        Where to register; a fresh ``CollectorRegistry`` when omitted (the usual case).
    stage_sample_every
        :meth:`sample_stages` answers ``True`` once per this many calls.

    Examples
    --------
    >>> m = Metrics()
    >>> m.events_consumed("kafka", 100)
    >>> m.dlq("bad_json")
    >>> m.model_info("v7", "default")
    >>> m.model_info("v8", "default")  # replaces v7: one info series at a time
    >>> m.registry.get_sample_value("fds_model_info", {"version": "v8", "spec": "default"})
    1.0
    >>> m.registry.get_sample_value("fds_model_info", {"version": "v7", "spec": "default"}) is None
    True
    """

    # fds_broker_reachable, exported once set (a replay or a trainer has no broker state to
    # report, and an unset gauge would read 0: "unreachable")
    _broker: float | None = None

    enabled = True

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        stage_sample_every: int = STAGE_SAMPLE_EVERY,
        decides: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.decides = decides
        self.stage_sample_every = max(1, stage_sample_every)
        self._countdown = 0  # events until the next timed one (0: time this one)
        # The info gauges, set by one assignment and turned into samples at scrape time (a
        # Gauge's clear() then set() let a scrape in between see no series at all: a review).
        self._info_model: tuple[str, str] | None = None
        self._model_acting = False
        self._bypassed = False  # (degraded mode: the model guard bypasses the model)
        self._info_ruleset: str | None = None
        self._info_demoted: tuple[tuple[str, str], ...] = ()
        self._rules_lock = threading.Lock()  # a drain of rule counts vs a scrape

        # hot, single-writer state (see the module docstring)
        self._consumed: dict[str, int] = {}
        # Decisions are counted by their latency buckets, one bucket list per action: the
        # count by action and the latency histogram come from the same increment (measured
        # ~40% cheaper than a counter plus a histogram). The latency sum is shared.
        self._by_action: dict[str, list[int]] = {a: [0] * _NB for a in ACTIONS}
        self._lat_sum = 0.0
        self._lat_max = 0.0
        self._rule_hits: dict[str, dict[str, int]] = {}
        self._missing: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._stages: dict[str, _Hist] = {}
        self._event_lag: float | None = None
        self._ruleset_source: Callable[[], Any] | None = None
        self._entities: dict[str, int] = {}
        self._features_source: Callable[[], Any] | None = None
        self._health: Health | None = None
        self.registry.register(self)

        # cold, thread-safe prometheus_client objects; those only a scorer sets are exported
        # by a scorer only (``rs``: the trainer exported them at 0 beside its own)
        r = self.registry
        rs = r if decides else None
        self._failed = Counter(
            "fds_events_failed_total", "Events a stage failed on, by stage.", ["stage"], registry=rs
        )
        self._dlq = Counter(  # (the trainer's too: it dead-letters bad labels, and the sum
            "fds_dlq_messages_total",  # over the jobs was short of the topic's: a QA pass)
            "Records sent to the dead letters, by reason.",
            ["reason"],
            registry=r,
        )
        self._late = Counter(
            "fds_late_events_total",
            "Events older than the watermark minus the grace period, by what was done with them.",
            ["outcome"],
            registry=rs,
        )
        self._consumer_lag = Gauge(
            "fds_consumer_lag_messages",
            "Messages between the consumer position and the end of the partition.",
            ["partition"],
            registry=rs,
        )
        # At 0 from the start, for the values a run may see: a dashboard shows 0 rather than no
        # data on a healthy run, and increase() sees the first one (a README walk)
        for stage in STAGES:
            self._failed.labels(stage=stage)
            if decides:
                self._dlq.labels(reason=DLQ_REASON.get(stage, stage))
        self._dlq.labels(reason="label")
        self._late.labels(outcome="decided")
        self._rebalances = Counter(
            "fds_rebalances_total", "Consumer-group rebalances seen by this instance.", registry=rs
        )
        self._checkpoints = Counter(
            "fds_checkpoints_total",
            "State checkpoints written by fds run, by result (ok, failed).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):  # at 0 from the start: increase() sees the first one
            self._checkpoints.labels(result=result)

        self._commit = Histogram(
            "fds_commit_duration_seconds",
            "Time to commit offsets (and the Kafka transaction under exactly-once).",
            buckets=COMMIT_BUCKETS,
            registry=rs,
        )
        self._swaps = Counter(
            "fds_model_swaps_total",
            "Model hot-swaps attempted, by result.",
            ["result"],
            registry=rs,
        )
        self._publishes = Counter(
            "fds_model_publishes_total",
            "Model versions fds train published into its registry, by result (ok, failed; "
            "broken: not published, its model scored no probability).",
            ["result"],
            registry=r if not decides else None,
        )
        for result in ("ok", "failed", "broken"):  # at 0 from the start: increase() sees the
            self._publishes.labels(result=result)  # first one
        self._learned = Counter(
            "fds_labels_learned_total", "Delayed labels the model learned from.", registry=r
        )
        self._learn_errors = Counter(
            "fds_model_learn_errors_total",
            "Labelled examples the model raised on while learning, so not learned.",
            registry=r,
        )
        self._unjoined = Counter(
            "fds_labels_unjoined_total",
            "Labels fds train read whose decision it does not hold (expired, never decided, or "
            "of another model), so learned nothing from.",
            registry=r,
        )
        self._waiting = Gauge(
            "fds_labels_waiting",
            "Labels fds train holds until their decision is read.",
            registry=r,
        )
        self._feature_labels = Counter(
            "fds_feature_labels_total",
            "Fraud labels applied to the label-aware features (fds run --labels-topic).",
            registry=rs,
        )
        self._precision = Gauge(
            "fds_model_precision",
            "From delayed labels: the share of labelled frauds a model (or the rules) would have "
            "caught within the daily alert budget (recall at the budget).",
            ["model", "window"],
            registry=r,
        )
        self._drift = Counter(
            "fds_drift_detected_total", "Concept drifts flagged by the drift detector.", registry=r
        )
        self._reloads = Counter(
            "fds_ruleset_reloads_total",
            "Ruleset reloads attempted, by result.",
            ["result"],
            registry=rs,
        )
        self._reload_ok = Gauge(
            "fds_ruleset_last_reload_successful",
            "0 while the rules file on disk is rejected (the last good rules decide; a "
            "restart decides with the copy of them kept in the state dir), else 1.",
            registry=rs,
        )
        self._reload_ok.set(1)
        self._demotions = Counter(
            "fds_guardrail_demotions_total",
            "Rules or models demoted to shadow by a rate circuit breaker.",
            ["kind", "target"],
            registry=rs,
        )
        self._degraded = Gauge(
            "fds_degraded_mode",
            "1 while the model is bypassed and rules decide alone.",
            registry=rs,
        )
        self._fallbacks = Counter(
            "fds_model_fallbacks_total",
            "Events decided by rules alone because the model failed, was slow or was bypassed.",
            ["reason"],
            registry=rs,
        )
        # Series that exist (at 0) from the start: rate()/increase() and the alerts then see
        # the first failure as a step from 0, not as a brand-new series without history.
        for result in ("ok", "rejected"):
            self._swaps.labels(result=result)
            self._reloads.labels(result=result)
        for reason in ("error", "degraded"):  # (Engine._fallback's reasons)
            self._fallbacks.labels(reason=reason)
        self._degraded.set(0)
        self._rebalances.inc(0)
        self._drift.inc(0)
        self._learned.inc(0)

    # ----------------------------------------------------------------- hot path (one thread)
    def event_consumed(self, source: str) -> None:
        """Count one event read from ``source`` (``kafka``, ``file``, ``simulator``)."""
        d = self._consumed
        d[source] = d.get(source, 0) + 1

    def events_consumed(self, source: str, n: int) -> None:
        """Count ``n`` events read from ``source`` at once (cheaper: one call per poll batch)."""
        d = self._consumed
        d[source] = d.get(source, 0) + n

    def decision(self, action: str, latency_s: float, event_lag_s: float | None = None) -> None:
        """Count one decision, observe its end-to-end latency and remember the event lag.

        ``latency_s`` is receipt-to-decision time of this event; ``event_lag_s`` is decision
        wall-clock time minus the transaction's event time (meaningful for live traffic; a
        replay of history shows its age).
        """
        try:
            self._by_action[action][bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        except KeyError:  # an action outside ACTIONS: counted all the same
            self._by_action[action] = counts = [0] * _NB
            counts[bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        self._lat_sum += latency_s
        if latency_s > self._lat_max:
            self._lat_max = latency_s
        if event_lag_s is not None:
            self._event_lag = event_lag_s

    def rule_hit(self, rule: str, state: str) -> None:
        """Count one hit of ``rule`` in ``state`` (``active`` or ``shadow``)."""
        # nested dicts, not a (rule, state) key: no tuple (a GC-tracked object) per hit
        by_state = self._rule_hits.get(rule)
        if by_state is None:
            by_state = self._rule_hits[rule] = {}
        by_state[state] = by_state.get(state, 0) + 1

    def rule_missing_input(self, rule: str, n: int = 1) -> None:
        """Count ``n`` evaluations of ``rule`` skipped because a name it uses was missing."""
        d = self._missing
        d[rule] = d.get(rule, 0) + n

    def rule_error(self, rule: str, n: int = 1) -> None:
        """Count ``n`` evaluations of ``rule`` that raised (an active rule's transaction is then
        a dead letter, a shadow rule's is decided)."""
        d = self._errors
        d[rule] = d.get(rule, 0) + n

    def drain_rule_counts(self, drain: Callable[[], tuple[dict[str, int], dict[str, int]]]) -> None:
        """Move the per-rule counts ``drain()`` hands over (``Ruleset.drain_counts``: missing,
        errors; reset by the call) into the counters, as one step for a scrape: with
        :meth:`watch_ruleset` a scrape between the drain and the adds saw them in neither
        place, and the counter went down."""
        with self._rules_lock:
            missing, errors = drain()
            for rule, n in missing.items():
                self.rule_missing_input(rule, n)
            for rule, n in errors.items():
                self.rule_error(rule, n)

    def watch_ruleset(self, current: Callable[[], Any]) -> None:
        """Export the live ruleset's own per-rule counters at each scrape, at no per-event cost.

        ``current()`` returns the ruleset deciding now (it changes on reload) or ``None``; its
        ``missing_counts`` and ``error_counts`` (``{rule id: count}``) are added to what
        :meth:`rule_missing_input` / :meth:`rule_error` recorded, giving
        ``fds_rule_missing_inputs_total{rule}`` and ``fds_rule_errors_total{rule}``. So the
        scrape is exact whether the engine drains the ruleset's counts into those methods
        now and then (``Ruleset.drain_counts``), reads them only here, or both. Counts lost
        with a reloaded ruleset look like a counter reset to Prometheus.

        >>> class Rules:
        ...     missing_counts = {"new_country": 3}
        ...     error_counts = {"ratio": 1}
        >>> m = Metrics()
        >>> m.watch_ruleset(lambda: Rules())
        >>> m.registry.get_sample_value("fds_rule_errors_total", {"rule": "ratio"})
        1.0
        """
        self._ruleset_source = current

    def sample_stages(self) -> bool:
        """Whether to time the stages of this event (once every ``stage_sample_every`` calls).

        >>> m = Metrics(stage_sample_every=4)
        >>> [m.sample_stages() for _ in range(8)]
        [True, False, False, False, True, False, False, False]
        """
        n = self._countdown
        if n:
            self._countdown = n - 1
            return False
        self._countdown = self.stage_sample_every - 1
        return True

    def stage_time(self, stage: str, seconds: float) -> None:
        """Observe how long ``stage`` (``parse``, ``features``, ``rules``, ``model``, ...) took."""
        h = self._stages.get(stage)
        if h is None:
            h = self._stages[stage] = _Hist(LATENCY_BUCKETS)
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.sum += seconds

    # ---------------------------------------------------------------------- cold path
    def failed(self, stage: str) -> None:
        """Count one event that ``stage`` failed on."""
        self._failed.labels(stage=stage).inc()

    def dlq(self, reason: str) -> None:
        """Count one dead letter; ``reason`` is a short class (``bad_json``, ``schema``, ...)."""
        self._dlq.labels(reason=reason).inc()

    def dead_letter(self, stage: str) -> None:
        """Count one event dead-lettered at ``stage``: failed there, and a dead letter whose
        reason is the stage's class (``parse`` -> ``bad_json``, ``validate`` -> ``schema``, the
        stage's own name otherwise). Replay and ``fds run`` count the same way."""
        self.failed(stage)
        self.dlq(DLQ_REASON.get(stage, stage))

    def late_event(self, outcome: str) -> None:
        """Count one event later than the grace period (``outcome``: ``decided``, on the
        state held, flagged ``late``)."""
        self._late.labels(outcome=outcome).inc()

    def consumer_lag(self, partition: int | str, n: int) -> None:
        """Set the consumer lag of ``partition`` in messages."""
        self._consumer_lag.labels(partition=str(partition)).set(n)

    def forget_partition(self, partition: int | str) -> None:
        """Drop the lag series of a partition this instance no longer owns (after a rebalance)."""
        with contextlib.suppress(KeyError):
            self._consumer_lag.remove(str(partition))

    def rebalance(self) -> None:
        """Count one consumer-group rebalance."""
        self._rebalances.inc()

    def commit_time(self, seconds: float) -> None:
        """Observe one offset/transaction commit duration."""
        self._commit.observe(seconds)

    def checkpoints(self, ok: int, failed: int) -> None:
        """Count ``ok`` checkpoints written and ``failed`` ones (a full disk: decisions go on,
        but a crash then rebuilds more; nothing showed it but a log line, a QA pass)."""
        if ok:
            self._checkpoints.labels(result="ok").inc(ok)
        if failed:
            self._checkpoints.labels(result="failed").inc(failed)

    def broker_reachable(self, up: bool) -> None:
        """Whether the broker answers (a probe or a call succeeded, or failed): an outage
        showed only as an instance down, once fds run had given up (a QA pass)."""
        self._broker = 1.0 if up else 0.0

    def model_info(self, version: str, spec: str) -> None:
        """Record the champion now scoring; the previous info series is removed."""
        self._info_model = (version, spec)

    def model_acting(self, on: bool) -> None:
        """Whether the model's score acts on the decisions (its maturity gate open), or it
        scores in shadow: `fds_model_acting` (1 only while a version is served too)."""
        self._model_acting = on

    def model_swap(self, result: str) -> None:
        """Count one hot-swap attempt: ``ok`` or ``rejected`` (corrupt, unverified, failed
        canary: the log line says which)."""
        self._swaps.labels(result=result).inc()

    def model_publish(self, result: str) -> None:
        """Count one publish of the trainer: ``ok``, ``failed`` (a full or read-only
        registry: the trainer died of it, a QA pass; it now learns on and tries again) or
        ``broken`` (its model scored no probability: not published)."""
        self._publishes.labels(result=result).inc()

    def labels_learned(self, n: int = 1) -> None:
        """Count ``n`` delayed labels learned."""
        self._learned.inc(n)

    def feature_labels(self, n: int) -> None:
        """Count ``n`` labels applied to the label-aware features."""
        self._feature_labels.inc(n)

    def labels_unjoined(self, n: int) -> None:
        """Count ``n`` labels the trainer found no decision for."""
        self._unjoined.inc(n)

    def learn_errors(self, n: int) -> None:
        """Count ``n`` examples the model raised on while learning."""
        self._learn_errors.inc(n)

    def labels_waiting(self, n: int) -> None:
        """Labels the trainer holds until their decision is read (a soak run: only its
        checkpoint showed them)."""
        self._waiting.set(n)

    def model_precision(self, model: str, window: str, value: float | None) -> None:
        """Set, from delayed labels, the share of labelled frauds ``model`` (``champion``,
        ``challenger``, ``rules``) would have caught within the alert budget over ``window``
        (``contest`` at a contest's verdict, ``gate`` when the maturity gate changes);
        ``None`` removes the series (figures of a model no longer in that place)."""
        if value is None:
            with contextlib.suppress(KeyError):
                self._precision.remove(model, window)
            return
        self._precision.labels(model=model, window=window).set(value)

    def drift(self) -> None:
        """Count one detected concept drift."""
        self._drift.inc()

    def ruleset_info(self, version: str) -> None:
        """Record the ruleset deciding now; the previous info series is removed."""
        self._info_ruleset = version

    def ruleset_reload(self, result: str) -> None:
        """Count one ruleset reload attempt (``ok`` or ``rejected``)."""
        self._reloads.labels(result=result).inc()

    def ruleset_file_ok(self, ok: bool) -> None:
        """Whether the rules file on disk is the one deciding (a rejected one stood without
        a lasting signal once its reload alert resolved: a QA pass)."""
        self._reload_ok.set(1 if ok else 0)

    def state_entities(self, entity: str, n: int) -> None:
        """Set how many entities of kind ``entity`` (``card_id``, ...) window state holds."""
        self._entities[entity] = n

    def watch_features(self, current: Callable[[], Any]) -> None:
        """Export window-state sizes at each scrape, at no per-event cost.

        ``current()`` returns the live feature state (or ``None``); its ``state_sizes()``
        (``{entity: n}``) becomes ``fds_state_entities{entity}``, its ``compiled``
        ``fds_features_compiled``.

        >>> class Plan:
        ...     def state_sizes(self):
        ...         return {"card_id": 1203, "merchant_id": 88}
        >>> m = Metrics()
        >>> m.watch_features(lambda: Plan())
        >>> m.registry.get_sample_value("fds_state_entities", {"entity": "card_id"})
        1203.0
        """
        self._features_source = current

    def watch_health(self, health: Health) -> None:
        """Export ``fds_ready`` at each scrape: 1 when ``/readyz`` would answer 200, else 0
        (:meth:`fds.health.Health.readiness`); absent for a service without a readiness check.

        >>> from fds.health import Health
        >>> m = Metrics()
        >>> m.watch_health(Health(stale_after_s=60, ready=lambda: (False, "joining the group")))
        >>> m.registry.get_sample_value("fds_ready")
        0.0
        """
        self._health = health

    def demoted(self, kind: str, target: str) -> None:
        """Count one breaker demotion; ``kind`` is ``rule`` or ``model``, ``target`` its id
        (shown demoted at once, not at the next report: fds_model_acting, a review)."""
        self._demotions.labels(kind=kind, target=target).inc()
        if (kind, target) not in self._info_demoted:
            self._info_demoted = (*self._info_demoted, (kind, target))

    def demoted_now(self, demoted: Iterable[tuple[str, str]]) -> None:
        """Set who is demoted now: ``(kind, target)`` pairs (a demotion restored from a
        checkpoint is not counted again in ``fds_guardrail_demotions_total``, but shows here)."""
        self._info_demoted = tuple(demoted)

    def degraded(self, on: bool) -> None:
        """Enter (``True``) or leave (``False``) degraded mode (rules decide alone)."""
        self._degraded.set(1 if on else 0)
        self._bypassed = on

    def model_fallback(self, reason: str) -> None:
        """Count one event decided without the model: ``error`` (it raised or scored NaN),
        ``degraded`` (bypassed by the model guard)."""
        self._fallbacks.labels(reason=reason).inc()

    # ---------------------------------------------------------------------- exposition
    def describe(self) -> list[Any]:
        """Metric families of the hot collector, for duplicate-name checks at registration."""
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        """Turn the hot, plain-Python state into Prometheus metric families (at scrape time);
        without ``decides`` (``fds train``), none of those only a scorer sets."""
        for family in self._families():
            if self.decides or family.name not in _DECIDING:
                yield family

    def _families(self) -> Iterator[Any]:
        yield _family(CounterMetricFamily, "fds_events_consumed", "Events read from a source.",
                      ["source"], dict(self._consumed))  # fmt: skip
        yield _family(CounterMetricFamily, "fds_decisions", "Decisions made, by action.",
                      ["action"], self._decision_counts())  # fmt: skip

        with self._rules_lock:  # (see drain_rule_counts)
            missing = dict(self._missing)
            errors = dict(self._errors)
            rs = self._ruleset_source() if self._ruleset_source is not None else None
            if rs is not None:  # counts not yet drained into the two dicts above
                for rule, n in getattr(rs, "missing_counts", {}).items():
                    missing[rule] = missing.get(rule, 0) + n
                for rule, n in getattr(rs, "error_counts", {}).items():
                    errors[rule] = errors.get(rule, 0) + n
        hits = {rule: dict(by_state) for rule, by_state in dict(self._rule_hits).items()}
        # every rule deciding now at 0 until it counts (a rare rule's series appeared at its
        # first hit, which increase() and rate() then missed; a Pushgateway push had no series
        # for a rule the run never hit: "no data" rather than 0)
        # (and the rules of a reload the next event applies: see RulesWatcher.coming)
        for r in (*getattr(rs, "evaluated", ()), *getattr(rs, "coming", ())):  # (not paused)
            hits.setdefault(r.id, {}).setdefault(r.spec.state, 0)
            missing.setdefault(r.id, 0)
            errors.setdefault(r.id, 0)
        yield _family(
            CounterMetricFamily, "fds_rule_hits", "Rule hits, by rule and state.",
            ["rule", "state"],
            {(rule, state): n for rule, by_state in hits.items() for state, n in by_state.items()},
        )  # fmt: skip
        yield _family(
            CounterMetricFamily, "fds_rule_missing_inputs",
            "Rule evaluations skipped because a name the rule uses was missing.", ["rule"],
            missing,
        )  # fmt: skip
        yield _family(
            CounterMetricFamily, "fds_rule_errors",
            "Rule evaluations that raised (an active rule's transaction is a dead letter).",
            ["rule"], errors,
        )  # fmt: skip

        h = HistogramMetricFamily(
            "fds_stage_duration_seconds",
            f"Time spent in each stage (sampled: 1 event in {self.stage_sample_every}).",
            labels=["stage"],
        )
        for stage, hist in dict(self._stages).items():
            buckets, total, _ = hist.snapshot()
            h.add_metric([stage], buckets, total)
        yield h

        buckets, total, _ = self._latency().snapshot()
        yield HistogramMetricFamily(
            "fds_decision_latency_seconds",
            "Time inside the engine per decision (features to policy).",
            buckets=buckets,
            sum_value=total,
        )

        entities = dict(self._entities)
        plan = self._features_source() if self._features_source is not None else None
        sizes = getattr(plan, "state_sizes", None)  # (a stage of another kind may hold none:
        if sizes is not None:  # the engine watches any, and a scrape failed, a CI run)
            entities.update(sizes())
        yield _family(
            GaugeMetricFamily, "fds_state_entities",
            "Entities held in window state, by entity kind.", ["entity"], entities,
        )  # fmt: skip
        capped = getattr(plan, "evictions_by_cap", None)
        if capped is not None:
            yield _family(
                CounterMetricFamily, "fds_state_evicted_by_cap",
                "Entities evicted from window state before their longest window ended, the "
                "oldest idle first, because their type held more than its max_entities: by "
                "this process while deciding, from 0 at its start (a restore's catch-up not "
                "counted).", ["entity"],
                capped(decided=True),  # (this process's: see the plan)
            )  # fmt: skip
            yield _family(  # (fds_state_entities could not be drawn against it: a QA)
                GaugeMetricFamily, "fds_state_max_entities",
                "The rules file's max_entities of each entity type with one.", ["entity"],
                getattr(plan, "max_entities", {}),
            )  # fmt: skip
        compiled = getattr(plan, "compiled", None)  # (a plan of another kind may not say)
        if compiled is not None:
            yield GaugeMetricFamily(
                "fds_features_compiled",
                "1 while the features run as their compiled kernel; 0 while interpreted (the "
                "kernel building, its build failed, or FDS_FEATURE_KERNEL=off).",
                value=float(compiled),
            )

        if self.decides:  # (a model in shadow looked healthy: info 1, degraded 0, a QA pass)
            yield GaugeMetricFamily(  # (1 while the breaker had demoted the model, or the
                "fds_model_acting",  # guard bypassed it: the dashboard said it acted, a QA)
                "1 while a model version is served and its score acts on the decisions (its "
                "maturity gate open, not demoted by the breaker, not bypassed in degraded "
                "mode); 0 while it scores in shadow, is demoted or bypassed, or none is served.",
                value=float(
                    self._model_acting
                    and self._info_model is not None
                    and not self._bypassed
                    and ("model", MODEL) not in self._info_demoted
                ),
            )
        for name, doc, labels, values in (
            ("fds_model_info", "The model version scoring now (value 1; acting or in shadow: "
             "fds_model_acting).",
             ["version", "spec"], [self._info_model] if self._info_model else []),
            ("fds_ruleset_info", "The ruleset deciding now (value 1).",
             ["version"], [(self._info_ruleset,)] if self._info_ruleset else []),
            ("fds_guardrail_demoted",
             "1 for each rule or model in shadow by the breaker now (restored ones included).",
             ["kind", "target"], self._info_demoted),
        ):  # fmt: skip
            yield _family(GaugeMetricFamily, name, doc, labels, dict.fromkeys(values, 1))

        g = GaugeMetricFamily(
            "fds_broker_reachable",
            "1 while the Kafka broker answers this instance, 0 while its calls fail.",
        )
        if self._broker is not None:
            g.add_metric([], self._broker)
        yield g

        g = GaugeMetricFamily("fds_ready", "1 while /readyz answers 200 (the instance decides).")
        health = self._health
        if health is not None and health.ready is not None:
            g.add_metric([], 1.0 if health.readiness()[0] == 200 else 0.0)
        yield g

        lag = self._event_lag
        # A gauge, not a histogram: live lag is seconds to minutes while a replay of history
        # shows days, beyond any useful bucket set; the alert watches its growth (deriv()).
        g = GaugeMetricFamily(
            "fds_event_lag_seconds", "Decision time minus event time of the last decided event."
        )
        if lag is not None:
            g.add_metric([], lag)
        yield g

    def _decision_counts(self) -> dict[str, int]:
        return {a: sum(c) for a, c in dict(self._by_action).items()}

    def _latency(self) -> _Hist:
        """The decision latency histogram: the per-action bucket lists added up."""
        h = _Hist(LATENCY_BUCKETS)
        h.sum = self._lat_sum
        for counts in dict(self._by_action).values():
            for i, c in enumerate(list(counts)):  # one atomic copy per list under the GIL
                h.counts[i] += c
        return h

    def exposition(self) -> bytes:
        """The text that ``/metrics`` serves now."""
        return generate_latest(self.registry)

    def summary(self) -> dict[str, Any]:
        """Counts and latency quantiles for printing at the end of a replay.

        Returns
        -------
        dict
            ``events`` (total consumed), ``consumed`` by source, ``decisions`` by action,
            ``rule_hits`` by rule then state, ``failed`` by stage, ``dlq`` by reason,
            ``latency_ms`` (p50/p95/p99 estimated from the histogram buckets as Prometheus
            does, the exact mean and max) and ``stage_ms`` (p50/p99/mean by stage). Quantiles
            below the first bucket (0.1 ms) read as 0.05 ms; the means are exact.
        """
        rule_hits = {rule: dict(by_state) for rule, by_state in dict(self._rule_hits).items()}
        lat = self._latency()
        n_dec = sum(lat.counts)

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 4)

        return {
            "events": sum(self._consumed.values()),
            "consumed": dict(self._consumed),
            "decisions": self._decision_counts(),
            "rule_hits": rule_hits,
            "failed": _by_label(self.registry, "fds_events_failed_total", "stage"),
            "dlq": _by_label(self.registry, "fds_dlq_messages_total", "reason"),
            "latency_ms": {
                "p50": ms(_at_most(lat.quantile(0.5), self._lat_max)),
                "p95": ms(_at_most(lat.quantile(0.95), self._lat_max)),
                "p99": ms(_at_most(lat.quantile(0.99), self._lat_max)),
                "mean": ms(lat.sum / n_dec) if n_dec else None,
                "max": ms(self._lat_max) if n_dec else None,
            },
            "stage_ms": {
                stage: {
                    "p50": ms(h.quantile(0.5)),
                    "p99": ms(h.quantile(0.99)),
                    "mean": ms(h.sum / max(1, sum(h.counts))),  # exact, below 0.1 ms too
                }
                for stage, h in dict(self._stages).items()
            },
        }


def _by_label(registry: CollectorRegistry, sample_name: str, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == sample_name and s.value:  # (the series at 0 from the start: none)
                out[s.labels[label]] = int(s.value)
    return out


class NullMetrics(Metrics):
    """Same interface, nothing recorded: metrics switched off.

    It still owns an (empty) registry, so code that serves or summarises metrics keeps working.

    >>> m = NullMetrics()
    >>> m.decision("approve", 0.001)
    >>> m.summary()["events"]
    0
    """

    enabled = False

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_sample_every = 1
        self._consumed = {}
        self._by_action = {}
        self._lat_sum = 0.0
        self._lat_max = 0.0
        self._rule_hits = {}
        self._missing = {}
        self._errors = {}
        self._stages = {}
        self._event_lag = None
        self._ruleset_source = None
        self._entities = {}
        self._features_source = None
        self._health = None

    def watch_ruleset(self, current: Callable[[], Any]) -> None:
        pass

    def watch_features(self, current: Callable[[], Any]) -> None:
        pass

    def watch_health(self, health: Health) -> None:
        pass

    def event_consumed(self, source: str) -> None:
        pass

    def events_consumed(self, source: str, n: int) -> None:
        pass

    def decision(self, action: str, latency_s: float, event_lag_s: float | None = None) -> None:
        pass

    def rule_hit(self, rule: str, state: str) -> None:
        pass

    def rule_missing_input(self, rule: str, n: int = 1) -> None:
        pass

    def rule_error(self, rule: str, n: int = 1) -> None:
        pass

    def drain_rule_counts(self, drain: Callable[[], Any]) -> None:
        drain()

    def sample_stages(self) -> bool:
        return False

    def stage_time(self, stage: str, seconds: float) -> None:
        pass

    def failed(self, stage: str) -> None:
        pass

    def dlq(self, reason: str) -> None:
        pass

    def dead_letter(self, stage: str) -> None:
        pass

    def late_event(self, outcome: str) -> None:
        pass

    def consumer_lag(self, partition: int | str, n: int) -> None:
        pass

    def forget_partition(self, partition: int | str) -> None:
        pass

    def rebalance(self) -> None:
        pass

    def commit_time(self, seconds: float) -> None:
        pass

    def checkpoints(self, ok: int, failed: int) -> None:
        pass

    def broker_reachable(self, up: bool) -> None:
        pass

    def model_info(self, version: str, spec: str) -> None:
        pass

    def model_swap(self, result: str) -> None:
        pass

    def model_acting(self, on: bool) -> None:
        pass

    def model_publish(self, result: str) -> None:
        pass

    def labels_learned(self, n: int = 1) -> None:
        pass

    def feature_labels(self, n: int) -> None:
        pass

    def labels_unjoined(self, n: int) -> None:
        pass

    def learn_errors(self, n: int) -> None:
        pass

    def labels_waiting(self, n: int) -> None:
        pass

    def model_precision(self, model: str, window: str, value: float | None) -> None:
        pass

    def drift(self) -> None:
        pass

    def ruleset_info(self, version: str) -> None:
        pass

    def ruleset_reload(self, result: str) -> None:
        pass

    def ruleset_file_ok(self, ok: bool) -> None:
        pass

    def state_entities(self, entity: str, n: int) -> None:
        pass

    def demoted(self, kind: str, target: str) -> None:
        pass

    def demoted_now(self, demoted: Iterable[tuple[str, str]]) -> None:
        pass

    def degraded(self, on: bool) -> None:
        pass

    def model_fallback(self, reason: str) -> None:
        pass

    def collect(self) -> Iterator[Any]:
        return iter(())

    def summary(self) -> dict[str, Any]:
        return {
            "events": 0,
            "consumed": {},
            "decisions": {},
            "rule_hits": {},
            "failed": {},
            "dlq": {},
            "latency_ms": {},
            "stage_ms": {},
        }


def _at_most(v: float | None, top: float) -> float | None:
    """A quantile estimated within its bucket, capped at the exact max (interpolated past it,
    a p99 above the max read as a contradiction)."""
    return None if v is None else min(v, top)


def make_metrics(enabled: bool = True, *, decides: bool = True) -> Metrics:
    """A recording :class:`Metrics` when ``enabled``, else a :class:`NullMetrics`;
    ``decides=False`` for a process that decides nothing (``fds train``).

    >>> make_metrics(False).enabled
    False
    """
    return Metrics(decides=decides) if enabled else NullMetrics()


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`stop` shuts it down and frees the port."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    metrics: Metrics,
    host: str = "127.0.0.1",
    port: int = 9108,
    *,
    health: Health | None = None,
    named: tuple[str, str] = ("--metrics-host", "--metrics-port"),
) -> MetricsServer:
    """Serve ``metrics`` on ``http://host:port/metrics`` from a daemon thread, and
    ``/healthz`` and ``/readyz`` from ``health`` (:mod:`fds.health`) when given.

    Parameters
    ----------
    metrics
        What to serve (its own registry only).
    host
        Address to bind; ``0.0.0.0`` to be scraped from other machines.
    port
        TCP port; ``0`` picks a free one (read it back from ``.port``). 9108 is the default
        because it is unassigned in Prometheus' port allocation list.
    health
        The service's health checks; ``None``: those paths answer 404.
    named
        Where the host and port were given, as a refusal tells to fix them (a flag, an
        ``FDS_*`` variable, a key of a settings file).

    Examples
    --------
    >>> import urllib.request
    >>> m = Metrics()
    >>> m.decision("approve", 0.001)
    >>> with serve(m, port=0) as srv:
    ...     body = urllib.request.urlopen(srv.url, timeout=5).read()
    >>> b'fds_decisions_total{action="approve"} 1.0' in body
    True
    """
    # the served process's own start time, CPU and memory (process_*): a crash loop of
    # restarts each under a minute was no alert, FdsDown never firing (a QA pass); FdsRestarting
    with contextlib.suppress(ValueError):  # (served before: registered once)
        ProcessCollector(registry=metrics.registry)
    app = health_app(make_wsgi_app(metrics.registry), health)
    try:
        # As prometheus_client's start_http_server does it, with our app: its address family
        # (IPv6 too), a thread per request, no request log.
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server_class = type("_Server", (_BoundedServer,), {"address_family": family})
        server: Any = make_server(
            str(addr[0]), port, app, server_class, handler_class=_QuietHandler
        )
    except (socket.gaierror, OSError) as e:  # (told as a port problem: a review, a QA pass)
        if not isinstance(e, socket.gaierror) and e.errno != errno.EADDRNOTAVAIL:
            raise _port_problem(host, port, e, named[1]) from e
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {e.strerror or e}; give an address of this "
            f"machine ({named[0]}, e.g. 127.0.0.1 or 0.0.0.0)"
        ) from e
    except OverflowError as e:  # not a port number
        raise _port_problem(host, port, e, named[1]) from e
    thread = threading.Thread(target=server.serve_forever, name="fds-metrics", daemon=True)
    thread.start()
    return MetricsServer(host=host, port=server.server_port, _server=server, _thread=thread)


#: Seconds a client of /metrics and the health checks has to send its request: each open
#: connection holds a thread and a descriptor, and one left idle or half-sent (a peer gone
#: without a word) held them for good (100 such: 100 threads, a QA pass).
CLIENT_TIMEOUT_S = 10.0


#: Connections served at once (a client that trickles its request a byte at a time keeps its
#: thread past CLIENT_TIMEOUT_S, which bounds each read: a review). A new one past them takes
#: the place of the oldest that has not sent its request yet; when every one is being
#: answered, it is closed at once.
MAX_CLIENTS = 32
#: How long a new connection waits for the slot of the one it cut.
EVICT_WAIT_S = 1.0


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection, at most :data:`MAX_CLIENTS` of them; idle ones give way."""

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.unread: dict[int, _QuietHandler] = {}  # by arrival: no request read yet
        self.unread_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # full: the oldest connection that has sent no request makes room (32 idle ones
            # held every slot, reconnecting once cut, and the health checks failed for as long
            # as they came back: Kubernetes restarted a healthy pod, a QA pass)
            with self.unread_lock:
                oldest = next(iter(self.unread.values()), None)
            if oldest is not None:
                oldest.cut()
            if oldest is None or not self._slots.acquire(timeout=EVICT_WAIT_S):
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per request (a probe every few seconds); a client that has not been
    served within :data:`CLIENT_TIMEOUT_S` is dropped, without a word: one sending nothing, and
    one trickling its request a byte at a time (the timeout bounds each read: 32 of them
    held every slot, and the health checks failed for as long, a QA pass)."""

    timeout = CLIENT_TIMEOUT_S

    def handle(self) -> None:
        cut = self._cut_timer = threading.Timer(self.timeout, self.cut)
        cut.daemon = True
        cut.start()
        self._unread(True)
        try:
            super().handle()
        except OSError:  # (timed out or reset: the server printed its traceback on stderr)
            self.close_connection = True
        finally:
            cut.cancel()
            self._unread(False)

    def parse_request(self) -> bool:
        """The request read: its answer is not cut (a slow scraper of a large /metrics, a
        render slowed by the decision loop: a review)."""
        parsed = bool(super().parse_request())  # (its headers read: a trickle is cut there)
        self._cut_timer.cancel()
        self._unread(False)
        return parsed

    def _unread(self, waiting: bool) -> None:
        """Mark this connection as one that may give way to a new one (no request read)."""
        server = self.server
        if isinstance(server, _BoundedServer):
            with server.unread_lock:
                if waiting:
                    server.unread[id(self)] = self
                else:
                    server.unread.pop(id(self), None)

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _port_problem(host: str, port: int, e: BaseException, named: str) -> ConfigError:
    """A port in use, not ours to bind, or not a port number (``named``: where it was given)."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ConfigError(
        f"cannot serve metrics on {host}:{port}: {reason}; choose another port "
        f"({named}, 0-65535) or stop what is using it"
    )


def check_metrics_port(value: int | str) -> int:
    """``value`` as a metrics port 0-65535, or -1 (off), else a ``ValueError`` saying so; for
    a flag and a setting alike (another negative number turned metrics off without a word: a
    review).

    >>> check_metrics_port("9108"), check_metrics_port(-1)
    (9108, -1)
    """
    try:
        port = int(value) if isinstance(value, str) else value
    except ValueError:
        port = None
    if type(port) is not int:  # (not 9108.5 read as 9108, nor true as 1)
        raise ValueError(f"invalid port {value!r}: give a whole number")
    if not -1 <= port <= 65535:
        raise ValueError(f"a port is 0-65535 (0: any free port), or -1: off; got {port}")
    return port


def check_metrics_host(text: str) -> str:
    """``text`` if it is an address of this machine, checked by binding it, else a
    ``ValueError`` saying so (a name of no interface was refused only after a model or
    checkpoint had loaded: a QA pass)."""
    try:
        infos = socket.getaddrinfo(text, 0, type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.bind(addr)
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(
            f"{text!r} is no address of this machine ({reason}); give one, e.g. 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every interface)"
        ) from None
    return text


_metrics_port = arg_type(check_metrics_port)
_metrics_host = arg_type(check_metrics_host)

#: ``--metrics-host``'s default: this machine only.
METRICS_HOST = "127.0.0.1"


def add_metrics_arguments(parser: Any, default_port: int, *, settings: bool = False) -> None:
    """``--metrics-port`` and ``--metrics-host``, the same for every long-running command.

    ``settings``: the command also reads them from its settings (``FDS_METRICS_PORT``, a
    ``--config`` file's ``metrics_port``; ``fds run``, ``fds train``): the flags default to
    ``None`` (not given), and the command applies ``default_port`` and :data:`METRICS_HOST`
    when the settings give none either. ``--metrics-host`` defaults to ``None`` always: the
    command applies :data:`METRICS_HOST` (a replay's `--metrics-host 127.0.0.1` without a port
    was not refused as any other address was, a QA pass)."""

    def also(name: str) -> str:
        return f"; env FDS_{name.upper()} or --config's {name}" if settings else ""

    parser.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=None if settings else default_port,
        help=f"serve Prometheus /metrics on this port (default {default_port}; 0: any free "
        f"port; -1: off{also('metrics_port')})",
    )
    parser.add_argument(
        "--metrics-host",
        type=_metrics_host,
        default=None,  # (not given, METRICS_HOST then: one given as 127.0.0.1 is told apart)
        help="address to serve /metrics on (default 127.0.0.1: this machine only; 0.0.0.0 to "
        f"be scraped from other machines{also('metrics_host')})",
    )


#: What a failed push raises: no answer (``urllib.error.URLError``, an ``OSError``), or one
#: that is no HTTP (a proxy's, another service on that port: ``BadStatusLine``, a review).
PUSH_ERRORS = (OSError, http.client.HTTPException)


def _refused(e: Exception) -> bool:
    """Whether a push failed on the gateway's refusal of what was pushed (HTTP 400)."""
    return getattr(e, "code", None) == 400


#: The most a :class:`Pusher`'s stop waits for the gateway (its last pushes included).
STOP_WITHIN_S = 6.0

#: The gauge a :class:`Pusher` keeps for its job: when a run of it last ended well.
LAST_SUCCESS = "fds_last_success_timestamp_seconds"

#: The gauge a :class:`Pusher` pushes: 1 while its run goes on, 0 in its last push (another
#: run of the job starting meanwhile is warned that they replace each other's metrics).
PUSHING = "fds_push_running"

#: How often a :class:`Pusher` pushes while its job runs (Prometheus' default scrape interval
#: is 15 s: a Pushgateway scraped that often shows a replay's progress, not only its end).
PUSH_EVERY_S = 10.0


class Pusher:
    """Pushes ``metrics`` to a Prometheus Pushgateway, for a job that ends before a scrape
    would find it (``fds replay``): once at :meth:`start` (an unreachable gateway is a
    :class:`ConfigError` before any work), every ``every_s`` seconds from a daemon thread,
    and a last time at :meth:`stop`, so that Prometheus keeps the final counts after the
    process is gone.

    Each push replaces the metrics of the group ``job`` (a Pushgateway ``PUT``): the next run
    of the same job replaces this one's, and the gateway's own ``push_time_seconds{job}``
    says when it last reported. A run that failed or was stopped reports too, so
    :data:`LAST_SUCCESS` says when a run last ended well (:meth:`stop` with ``succeeded``):
    read from the gateway at :meth:`start` and pushed again with every push until then (a
    failed nightly run looked like a fresh good one: a QA pass).

    >>> Pusher(Metrics(), "127.0.0.1:1", "fds_replay").url
    'http://127.0.0.1:1'
    """

    def __init__(
        self, metrics: Metrics, url: str, job: str, *, every_s: float = PUSH_EVERY_S,
        timeout_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.metrics = metrics
        self.url = pushgateway_url(url)
        self.job = job
        self.every_s = every_s
        self.timeout_s = timeout_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_success: float | None = None  # (Unix time)
        self._api = f"{self.url}/api/v1/metrics"
        self._own = _LastSuccess(self)  # (unregistered at the end: a Pusher of the same
        metrics.registry.register(self._own)  # metrics may follow, their gauges one each)

    def _pushed(self) -> dict[str, float] | Exception:
        """The job's gauges the gateway holds (its JSON API: :data:`LAST_SUCCESS`,
        :data:`PUSHING`, ``push_time_seconds``, those it has), or why the API could not be
        read."""
        try:
            with urllib.request.urlopen(self._api, timeout=self.timeout_s) as r:
                groups = json.load(r)["data"]
            for g in groups:
                if g["labels"].get("job") == self.job and not g["labels"].get("instance"):
                    return {
                        name: float(g[name]["metrics"][0]["value"])
                        for name in (LAST_SUCCESS, PUSHING, "push_time_seconds")
                        if name in g
                    }
        except (*PUSH_ERRORS, ValueError, KeyError, IndexError, TypeError) as e:
            return e
        return {}

    def push(self, timeout_s: float | None = None) -> None:
        """One push now (waiting ``timeout_s``, else :attr:`timeout_s`, for the gateway); raises
        one of :data:`PUSH_ERRORS` when it fails."""
        push_to_gateway(
            self.url, job=self.job, registry=self.metrics.registry,
            timeout=self.timeout_s if timeout_s is None else timeout_s,
        )  # fmt: skip

    def _problem(self, e: Exception) -> str:
        reason = getattr(e, "reason", None) or e
        if _refused(e):  # (the gateway refused what was pushed: its own words, which said
            said = b""  # only "Bad Request" with the advice to start it, a QA pass)
            with contextlib.suppress(Exception):
                said = e.read()[:500]  # type: ignore[attr-defined]
            words = said.decode("utf-8", "replace").strip()
            return (
                f"the Pushgateway at {self.url} refused the metrics of job {self.job!r}: "
                f"{reason}{f' ({words})' if words else ''}; a metric of the same name pushed by "
                "another job with another type or help? (the gateway's page lists them)"
            )
        hint = (  # (something answered over HTTP, and not as a Pushgateway's push API does)
            "; is it a Pushgateway (its push API answers on /metrics/job/...)?"
            if getattr(e, "code", None) is not None
            else ""
        )
        return f"cannot push metrics to the Pushgateway at {self.url}: {reason}{hint}"

    def start(self) -> Pusher:
        read = self._pushed()
        if isinstance(read, dict):
            self.last_success = read.get(LAST_SUCCESS)
            ago = time.time() - read.get("push_time_seconds", 0.0)
            if read.get(PUSHING) and ago < 3 * self.every_s:  # (two replays of one job
                log.warning(  # replaced each other's metrics every 10 s unsaid: a QA pass)
                    "another run pushes job %r to the Pushgateway now (its last push %.0f s "
                    "ago): each push replaces the other's metrics; give each its own --push-job",
                    self.job, max(ago, 0.0),
                )  # fmt: skip
        try:
            self.push()
        except PUSH_ERRORS as e:
            self.metrics.registry.unregister(self._own)  # (another may follow: a review)
            fix = "" if _refused(e) else "; start it, or give its address with --pushgateway"
            raise ConfigError(f"{self._problem(e)}{fix} (or run without --pushgateway)") from None
        if isinstance(read, Exception):  # (said once the gateway took a push: a gateway down
            log.warning(  # had it said before the error that matters, a review; silent before,
                "the Pushgateway's API %s could not be read (%s): when job %r last ended well "
                "is unknown to this run, and its pushes carry no %s until it ends well (an alert "
                "on its absence may fire meanwhile)",
                self._api,
                describe(read),
                self.job,
                LAST_SUCCESS,
            )  # fmt: skip  (the job's metrics then replaced without it: a QA pass)
        self._thread = threading.Thread(target=self._loop, name="fds-pusher", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        failing = False
        while not self._stopping.wait(self.every_s):
            try:
                self.push()
            except Exception as e:  # (any: the thread must not die, pushes stopping unsaid)
                if not failing:  # (once per outage, not every 10 s)
                    log.warning("%s; retrying every %g s", self._problem(e), self.every_s)
                failing = True
            else:
                if failing:
                    log.info("pushing metrics to %s again", self.url)
                failing = False

    def stop(
        self, attempts: int = 3, *, succeeded: bool = False, within_s: float = STOP_WITHIN_S
    ) -> bool:
        """Stop the periodic pushes and push the final counts (``attempts`` tries, a second
        apart), with :data:`LAST_SUCCESS` now when the job ``succeeded``, all within
        ``within_s`` (a gateway that accepts and never answers held a stopped replay's exit
        17 s, against SIGTERM's 10: a QA pass); ``False``, and a warning, when none got
        through."""
        end = time.monotonic() + within_s
        self._stopping.set()
        if self._thread is not None:  # (a push under way: ended by its own timeout)
            self._thread.join(timeout=min(self.timeout_s, within_s / 2))
            self._thread = None
        if succeeded:
            self.last_success = time.time()
        try:
            return self._last_push(attempts, end)
        finally:
            with contextlib.suppress(KeyError):  # (stopped twice)
                self.metrics.registry.unregister(self._own)

    def _last_push(self, attempts: int, end: float) -> bool:
        for attempt in range(attempts):
            try:
                self.push(max(min(self.timeout_s, end - time.monotonic()), 0.1))
                return True
            except PUSH_ERRORS as e:
                if attempt == attempts - 1 or time.monotonic() + 1.0 >= end:
                    log.warning(
                        "%s: the gateway holds the last push that got through, if it kept it",
                        self._problem(e),
                    )
                    break
                time.sleep(1.0)  # (not the stop event: it is set, a review)
        return False


class _LastSuccess(Collector):
    """:data:`LAST_SUCCESS` of a :class:`Pusher`'s job, once known, and :data:`PUSHING`."""

    def __init__(self, pusher: Pusher) -> None:
        self.pusher = pusher

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            PUSHING, "1 while the run pushing this job goes on, 0 in its last push.",
            value=0.0 if self.pusher._stopping.is_set() else 1.0,
        )  # fmt: skip
        if self.pusher.last_success is not None:
            yield GaugeMetricFamily(
                LAST_SUCCESS, "When a run of this pushed job last ended well (exit 0), Unix time.",
                value=self.pusher.last_success,
            )  # fmt: skip


def pushgateway_url(text: str) -> str:
    """argparse type of ``--pushgateway``: ``host:port`` or ``http(s)://host:port[/path]``.

    >>> pushgateway_url("pgw.example:9091")
    'http://pgw.example:9091'
    >>> pushgateway_url("a b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: invalid Pushgateway address 'a b': give host:port or ...
    >>> pushgateway_url("ftp://x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: invalid Pushgateway address 'ftp://x': give host:port or ...
    """
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # (a port that is no number raises)
    except ValueError:
        ok = False
    if not ok or parts.query or parts.fragment or any(c.isspace() for c in text):
        # (a space passed, refused at the push as a control character: a QA pass)
        raise argparse.ArgumentTypeError(
            f"invalid Pushgateway address {text!r}: give host:port or http(s)://host:port, "
            "e.g. 127.0.0.1:9091"
        )
    return url.rstrip("/")
