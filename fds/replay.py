"""File replay: a historical file through the same engine, as fast as possible or paced.

``load`` reads and validates the file (bad records become dead letters, labels come from a
label column with a delay or from a separate labels file), orders it by event time if needed,
and ``run`` feeds transactions and labels to the engine in event-time order: a label is
learned only once its own timestamp has passed, exactly as it would be in production.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Protocol

from fds.engine import Engine
from fds.errors import StageError, ValidationError
from fds.schema import dead_letter, parse_label, parse_transaction
from fds.streams.files import ColumnMapping, read_records
from fds.timeutil import get_zone

__all__ = ["ReplayInput", "ReplaySummary", "load", "run"]

# Progress-bar updates are batched: a tqdm update per event would cost more than a decision.
_PROGRESS_EVERY = 2048
_TRUTHY = frozenset({"1", "true", "t", "yes", "y", "fraud"})


class Sink(Protocol):
    def write(self, record: Any) -> None: ...


@dataclass
class ReplayInput:
    """A validated, time-ordered stream ready to run."""

    transactions: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    reordered: int = 0  # how many records were out of event-time order (then sorted)


@dataclass
class ReplaySummary:
    transactions: int = 0
    decided: int = 0
    dead_letters: int = 0
    labels_learned: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    reordered: int = 0
    frauds: int | None = None  # known frauds among decided transactions (when labels exist)
    alerted_frauds: int | None = None
    late: int = 0

    @property
    def throughput(self) -> float:
        return self.decided / self.seconds if self.seconds > 0 else 0.0

    @property
    def alerts(self) -> int:
        return self.actions["review"] + self.actions["decline"]

    @property
    def precision(self) -> float | None:
        if self.alerted_frauds is None or not self.alerts:
            return None
        return self.alerted_frauds / self.alerts

    @property
    def recall(self) -> float | None:
        if self.alerted_frauds is None or not self.frauds:
            return None
        return self.alerted_frauds / self.frauds

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (name, value) rows, for a table."""
        pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
        rows = [("transactions", f"{self.transactions:,}"), ("decided", f"{self.decided:,}")]
        rows += [(f"  {a}", f"{self.actions[a]:,}") for a in ("approve", "review", "decline")]
        rows += [
            ("dead letters", f"{self.dead_letters:,}"),
            ("labels learned", f"{self.labels_learned:,}"),
            ("late events", f"{self.late:,}"),
            ("reordered records", f"{self.reordered:,}"),
            ("throughput", f"{self.throughput:,.0f} tx/s"),
            ("wall time", f"{self.seconds:.2f} s"),
        ]
        if self.frauds is not None:
            rows += [
                ("known frauds", f"{self.frauds:,}"),
                ("precision (alerts)", pct(self.precision)),
                ("recall (alerts)", pct(self.recall)),
            ]
        return rows


def _is_true(v: Any) -> bool:
    return v is True or (isinstance(v, int | float) and v == 1) or str(v).lower() in _TRUTHY


def load(
    path: str | Path,
    *,
    mapping: ColumnMapping | None = None,
    labels_path: str | Path | None = None,
    tz: tzinfo | None = None,
) -> ReplayInput:
    """Read, validate and order a historical file (and its labels)."""
    zone = tz or get_zone(mapping.timezone if mapping else "UTC")
    source = str(path)
    label_col = mapping.label if mapping else None
    txs: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    dlq: list[dict[str, Any]] = []
    for pos, rec, raw in read_records(path, mapping=mapping):
        if isinstance(rec, Exception):
            dlq.append(dead_letter(stage="parse", error=rec, raw=raw, source=source, position=pos))
            continue
        truth = rec.pop(label_col.column, None) if label_col else None
        try:
            tx = parse_transaction(rec, zone)
        except ValidationError as e:
            dlq.append(dead_letter(stage="validate", error=e, raw=rec, source=source, position=pos))
            continue
        txs.append(tx)
        if label_col and truth is not None and _is_true(truth):
            delay = label_col.delay
            labels.append(
                {"tx_id": tx["tx_id"], "ts": tx["ts"] + delay, "is_fraud": True, "source": "file"}
            )
    if labels_path is not None:
        for pos, rec, raw in read_records(labels_path):
            if isinstance(rec, Exception):
                dlq.append(
                    dead_letter(
                        stage="parse", error=rec, raw=raw, source=str(labels_path), position=pos
                    )
                )
                continue
            try:
                labels.append(parse_label(rec, zone))
            except ValidationError as e:
                dlq.append(
                    dead_letter(
                        stage="validate", error=e, raw=rec, source=str(labels_path), position=pos
                    )
                )
    reordered = _order(txs)
    _order(labels)
    return ReplayInput(txs, labels, dlq, reordered)


def _order(records: list[dict[str, Any]]) -> int:
    """Sort by ``ts`` in place (stable) if needed; return how many were out of order."""
    out_of_order, last = 0, float("-inf")
    for r in records:
        if r["ts"] < last:
            out_of_order += 1
        else:
            last = r["ts"]
    if out_of_order:
        records.sort(key=lambda r: r["ts"])
    return out_of_order


def run(
    engine: Engine,
    stream: ReplayInput,
    sink: Sink,
    dlq: Sink,
    *,
    source: str = "file",
    speed: float | None = None,
    progress: bool = False,
    on_event: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Decide every transaction of ``stream`` in event-time order, learning labels on time.

    ``speed`` paces by event time (2.0 = twice real time); ``None`` is as fast as possible.
    ``on_event(i)`` is called between events (hot reload checks, tests).
    """
    s = ReplaySummary(transactions=len(stream.transactions), reordered=stream.reordered)
    for d in stream.dead_letters:
        dlq.write(d)
        if engine.metrics is not None:
            engine.metrics.dlq(d["stage"])
    s.dead_letters = len(stream.dead_letters)
    labels: Sequence[dict[str, Any]] = stream.labels
    frauds = {lab["tx_id"] for lab in labels if lab["is_fraud"]} if labels else None
    alerted_frauds = total_frauds = 0
    bar = _progress(len(stream.transactions), progress)
    li, nl = 0, len(labels)
    t0 = time.perf_counter()
    first_ts = stream.transactions[0]["ts"] if stream.transactions else 0.0
    actions = s.actions
    metrics = engine.metrics
    counted = 0  # events already reported to metrics
    source_kind = "file"
    for i, tx in enumerate(stream.transactions):
        ts = tx["ts"]
        while li < nl and labels[li]["ts"] <= ts:
            engine.learn(labels[li])
            li += 1
        if speed:
            ahead = (ts - first_ts) / speed - (time.perf_counter() - t0)
            if ahead > 0:
                sleep(ahead)
        if on_event is not None:
            on_event(i)
        try:
            d = engine.decide(tx)
        except StageError as e:
            dlq.write(dead_letter(stage=e.stage, error=e.cause, raw=tx, source=source, position=i))
            s.dead_letters += 1
            if metrics is not None:
                metrics.failed(e.stage)
                metrics.dlq(e.stage)
            continue
        sink.write(d)
        action = d["action"]
        actions[action] += 1
        if d["flags"]:
            s.late += "late" in d["flags"]
        if frauds is not None and tx["tx_id"] in frauds:
            total_frauds += 1
            alerted_frauds += action != "approve"
        if not i % _PROGRESS_EVERY:
            if bar is not None:
                bar.update(i - bar.n)
            if metrics is not None:
                metrics.events_consumed(source_kind, i - counted)
                counted = i
                engine.report()
    s.seconds = time.perf_counter() - t0
    if metrics is not None:
        metrics.events_consumed(source_kind, len(stream.transactions) - counted)
        engine.report()
    s.labels_learned = li
    s.decided = sum(actions.values())
    if frauds is not None:
        s.frauds, s.alerted_frauds = total_frauds, alerted_frauds
    if bar is not None:
        bar.update(len(stream.transactions) - bar.n)
        bar.close()
    return s


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tx", unit_scale=True, mininterval=0.5, desc="replay")


def print_summary(
    summary: ReplaySummary, metrics: dict[str, Any] | None = None, title: str = "replay summary"
) -> None:
    """Print the end-of-replay table (with latency percentiles from ``Metrics.summary()``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.rows():
        table.add_row(k, v)
    lat = (metrics or {}).get("latency_ms") or {}
    for q in ("p50", "p95", "p99"):
        if lat.get(q) is not None:
            table.add_row(f"decision latency {q}", f"{lat[q]:.3f} ms")
    Console(stderr=True).print(table)


def iter_decisions(path: str | Path) -> Iterable[dict[str, Any]]:
    """Read a decisions JSONL file back (tests, backtests)."""
    for _, rec, _ in read_records(path, fmt="jsonl"):
        if isinstance(rec, dict):
            yield rec
