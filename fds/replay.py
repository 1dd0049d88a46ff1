"""File replay: a historical file through the same engine, as fast as possible or paced.

``open_stream`` reads and validates the file lazily (bad records become dead letters; labels
come from a label column with a delay or from a separate labels file) and puts it in event-time
order through a bounded reorder buffer, so memory stays bounded however large the file;
``load`` does the same but materialises everything (backtests, benchmarks). ``run`` feeds
transactions and labels to the engine in event-time order: a label is learned only once its
own timestamp has passed, exactly as it would be in production.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import tzinfo
from pathlib import Path
from typing import Any, Protocol

import orjson

from fds.engine import Engine
from fds.errors import ConfigError, FdsError, RuleError, StageError, ValidationError, also
from fds.features.plan import read_field
from fds.gcpolicy import TICK_EVERY, Freezer
from fds.logs import json_logs, redact
from fds.metrics import LATENCY_BUCKETS
from fds.progress import progress_bar
from fds.schema import dead_letter, parse_label, parse_transaction
from fds.streams.files import (
    ColumnMapping,
    DamagedFile,
    FileCut,
    count_rows,
    read_records,
)
from fds.timeutil import EPOCH_2000, FileClock, format_ts, get_zone, naive_text, span
from fds.timeutil import sleep as wakeful_sleep

__all__ = ["ReplayInput", "ReplaySummary", "load", "run", "watch_fields"]

# Progress-bar updates are batched: a tqdm update per event would cost more than a decision.
_PROGRESS_EVERY = 2048
DEAD_BATCH = 1_000  # dead letters the reader collects before the replay writes them
# Records held to put a slightly disordered file back in event-time order: ~100 MB of dicts,
# enough for exports merged from several shards; disorder beyond it is counted, not hidden.
REORDER_BUFFER = 100_000
#: The first records of a file read without a timezone whose ts is looked at for a time
#: without its UTC offset (said once: read as UTC).
NAIVE_LOOK = 10_000
#: Records read this far behind the reorder buffer are said at once (not only in the summary).
LATE_SAID = 10_000
#: A paced replay that falls this many seconds behind its pace says so (once, and in the summary).
BEHIND_SAY_S = 5.0
#: A paced replay that waits longer than this for its next event says so.
LONG_WAIT_S = 60.0

log = logging.getLogger("fds.replay")


_READ_STAGES = ("parse", "validate")


class Sink(Protocol):
    def write(self, record: Any) -> None: ...


@dataclass
class ReplayInput:
    """A validated stream ready to run.

    ``transactions`` is a list (materialised) or a lazy iterator (``open_stream``) in event-time
    order; ``labels`` are learned at their own ``ts``. While a lazy stream is read,
    ``dead_letters`` collects bad records, ``pending_labels`` the labels of a label column,
    ``truth`` the tx_ids known to be fraud and ``reordered`` how many records came out of order.
    """

    transactions: Iterable[dict[str, Any]]
    labels: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    reordered: int = 0
    total: int | None = None  # transactions, when known (progress bar)
    count: Callable[[], int | None] | None = None  # or a count of the file's rows (a pass)
    damaged: str | None = None  # the fault of a file whose compressed data is corrupt
    cut: str | None = None  # the fault that ended a file before its end (cut short, ...)
    labels_cut: str | None = None  # the same for the labels file
    truth: set[str] = field(default_factory=set)
    # of ``truth``, the tx_ids of records the reader dead-lettered (their fraud labels were
    # "of no transaction", sending the user after the ids: a QA pass), and how many records
    # it could not parse at all (not JSON: their ids unknown)
    dead_truth: set[str] = field(default_factory=set)
    unparsed: int = 0
    pending_labels: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0  # out of order by more than the reorder buffer could fix
    second_pass: int = 0  # local times read as the second pass of a repeated DST hour
    labelled: int = 0  # records that held the mapping's label column (any value)
    # id(transaction) -> its line in the file, while it waits to be decided (a lazy stream):
    # the position of a dead letter for a stage failure (None: not kept, e.g. ``load``)
    lines: dict[int, int] | None = field(default_factory=dict)
    # called by the reader once DEAD_BATCH dead letters are collected (the replay writes and
    # forgets them: a file of bad rows is read with bounded memory)
    on_dead: Callable[[], None] | None = None
    # how to sort the file by time, said when it is far out of order (fds replay sets it)
    sort_hint: str = ""
    labels_seconds: float = 0.0  # spent reading the labels file

    def __post_init__(self) -> None:
        if isinstance(self.transactions, list) and self.total is None:
            self.total = len(self.transactions)
        self.truth |= known_frauds(self.labels)


def known_frauds(labels: Iterable[dict[str, Any]]) -> set[str]:
    """The tx_ids whose last label in event time says fraud (a later ``false`` withdraws it)."""
    last = {lab["tx_id"]: lab["is_fraud"] for lab in sorted(labels, key=_ts)}
    return {tx_id for tx_id, fraud in last.items() if fraud}


class LabelSchedule:
    """When a replay learns each label: strictly after the decisions at its own ``ts`` (a label
    column without delay is learned after its own transaction), and never before its own
    transaction: a label dated before it (a chargeback dated to the day, 00:00) waits for it
    and is learned right after it is decided, as ``fds run`` applies it (it was learned before
    the transaction existed, matched nothing, and was lost without a word: a QA pass).

    The hot path reads :attr:`next_ts` and :attr:`labelled` itself and calls :meth:`due` and
    :meth:`after` only when they say so.
    """

    def __init__(self, labels: Iterable[dict[str, Any]] = ()) -> None:
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        self.labelled: set[str] = set()  # the tx_ids of every label added
        self._reached: set[str] = set()  # labelled transactions decided so far
        self._waiting: dict[str, list[dict[str, Any]]] = {}  # labels before their transaction
        self.early = 0  # labels learned right after their transaction (dated before it)
        self.next_ts = math.inf  # the time of the next label due
        for lab in labels:
            self.add(lab)

    def add(self, label: dict[str, Any]) -> None:
        heapq.heappush(self._heap, (label["ts"], next(self._seq), label))
        self.labelled.add(label["tx_id"])
        self.next_ts = self._heap[0][0]

    def due(self, ts: float) -> list[dict[str, Any]]:
        """The labels to learn before a transaction at ``ts`` is decided."""
        heap, out = self._heap, []
        while heap and heap[0][0] < ts:
            label = heapq.heappop(heap)[2]
            if label["tx_id"] in self._reached:
                out.append(label)
            else:
                self._waiting.setdefault(label["tx_id"], []).append(label)
        self.next_ts = heap[0][0] if heap else math.inf
        return out

    def after(self, tx_id: str) -> list[dict[str, Any]]:
        """Transaction ``tx_id`` (one of :attr:`labelled`) was decided: its labels that waited
        for it, to learn now."""
        self._reached.add(tx_id)
        early = self._waiting.pop(tx_id, [])
        self.early += len(early)
        return early

    @property
    def left(self) -> int:
        """Labels not due yet (at the end: dated at or after the last transaction)."""
        return len(self._heap)

    def never_came(self) -> list[dict[str, Any]]:
        """At the end: the labels whose transaction never came (learned as unmatched)."""
        rest = [lab for labels in self._waiting.values() for lab in labels]
        self._waiting.clear()
        return rest


class Alerts:
    """Alerts, precision and recall of a run's ``actions``, ``frauds`` (known frauds among the
    transactions decided) and ``alerted_frauds`` (of them, reviewed or declined): the replay
    summary's and the backtest's."""

    actions: Counter[str]
    frauds: int | None
    alerted_frauds: int | None

    @property
    def alerts(self) -> int:
        """Transactions sent to review or declined."""
        return self.actions["review"] + self.actions["decline"]

    @property
    def precision(self) -> float | None:
        """Known frauds among alerts (None without labels, frauds or alerts: "0.0%" where no
        fraud was known read as a judgement of the rules, a QA pass)."""
        if self.alerted_frauds is None or not self.alerts or not self.frauds:
            return None
        return self.alerted_frauds / self.alerts

    @property
    def recall(self) -> float | None:
        """Alerted share of the known frauds (None without labels)."""
        if self.alerted_frauds is None or not self.frauds:
            return None
        return self.alerted_frauds / self.frauds


@dataclass
class ReplaySummary(Alerts):
    transactions: int = 0
    decided: int = 0
    dead_letters: int = 0
    # of which labels (a label column's bad value, whose transaction is still decided, or a
    # bad record of the labels file): transactions = decided + dead_letters - label_dead_letters
    label_dead_letters: int = 0
    labels_read: int = 0  # labels handed to the engine, each at its own ts
    labels_after_end: int = 0  # labels dated at or after the last transaction: never due
    # of them, dated before their own transaction: learned right after it was decided
    early_labels: int = 0
    # the ruleset versions that decided, in order (more than one: the file was reloaded)
    ruleset_versions: list[str] = field(default_factory=list)
    labels_learned: int | None = None  # of them, learned by the model (None: not counted)
    # seconds spent learning the labels read, in process (a model slow to learn made a replay
    # crawl at 71 tx/s behind a decision latency p99 of 0.2 ms: a QA pass)
    learn_seconds: float = 0.0
    # examples the model raised on while learning (not learned), and the last such error
    learn_errors: int = 0
    learn_error: str | None = None
    actions: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # seconds reading a labels file, before the replay's own (not in ``seconds``: the wall
    # time said 331 s of a 362-s run with 4.5M labels, a QA pass)
    labels_file_seconds: float = 0.0
    reordered: int = 0
    # of them, out of order by more than the reorder buffer holds: decided after later records
    # (the text warning said it, the JSON summary did not: a QA pass)
    beyond_reorder_buffer: int = 0
    second_pass: int = 0  # local times read as the second pass of a repeated DST hour
    frauds: int | None = None  # known frauds among decided transactions (when labels exist)
    fraud_labels: int = 0  # distinct transactions labelled fraud (decided or not)
    # of those, transactions read but dead-lettered (not decided), by the reader (a value it
    # could not parse) or by a stage of the engine
    dead_frauds: int = 0
    # fraud labels whose tx_id was read (decided or dead-lettered): counted by id, a tx_id read
    # twice once (a repeated id hid a label of no transaction: a QA pass)
    matched_labels: int = 0
    unparsed: int = 0  # records that could not be parsed at all (not JSON: their ids unknown)
    # transactions dead-lettered by a rule that raised (per rule id: the rules before it ran
    # on them), and by a stage after the rules (every rule ran on them)
    dead_by_rule: Counter[str] = field(default_factory=Counter)
    dead_after_rules: int = 0
    alerted_frauds: int | None = None
    late: int = 0
    # entities evicted before their windows ended by the rules' max_entities, per type
    evicted_by_cap: dict[str, int] = field(default_factory=dict)
    demoted: list[str] = field(default_factory=list)  # by the rate breaker, still demoted
    demotions: int = 0  # by the rate breaker during the run, lifted since or not
    # hot reloads of the rules file refused, and why the file on disk at the end is, if it is
    rules_rejected: int = 0
    rules_error: str | None = None
    interrupted: bool = False  # stopped by Ctrl-C: the figures cover what was decided
    # paced: the most seconds a transaction was decided after its time at the pace asked (the
    # engine slower than --speed: said nowhere, a QA pass)
    behind_pace: float = 0.0
    # the most frequent reason a transaction was dead-lettered: "stage: error" (first line)
    top_reason: str | None = None
    last_ts: float | None = None  # the event time of the last transaction read
    # transactions decided dated before 2000, and the first of them (tx_id, ts): among later
    # ones, a spreadsheet's date serial (46023.5) or seconds from another origin among dates,
    # decided in 1970 with only an out-of-order note (a QA pass)
    dated_before_2000: int = 0
    first_before_2000: dict[str, Any] | None = None  # {tx_id, ts}

    @property
    def throughput(self) -> float:
        return self.decided / self.seconds if self.seconds > 0 else 0.0

    @property
    def unmatched_frauds(self) -> int:
        """Fraud labels whose ``tx_id`` no transaction read has (a different spelling of the
        ids, or labels of another file); those of dead-lettered transactions are apart."""
        if self.frauds is None:
            return 0
        return self.fraud_labels - self.matched_labels

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain values (the JSON form of :meth:`rows`): every field, and the
        derived ``throughput``, ``precision``, ``recall`` and ``unmatched_frauds``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["actions"] = {a: self.actions[a] for a in ("approve", "review", "decline")}
        out["dead_by_rule"] = dict(self.dead_by_rule)
        out["alerts"] = self.alerts
        for k in ("throughput", "precision", "recall", "unmatched_frauds"):
            out[k] = getattr(self, k)
        return out

    def _capped(self) -> str:
        return ", ".join(f"{n:,} {ent}" for ent, n in self.evicted_by_cap.items() if n)

    def _share(self) -> str:
        """:attr:`learn_seconds` as a share of the wall time."""
        return f"{self.learn_seconds / self.seconds:.0%} of the wall time" if self.seconds else "-"

    def _unmatched(self) -> str:
        """:attr:`unmatched_frauds`, and the records whose ids could not be read: some of
        those labels may be theirs."""
        n = f"{self.unmatched_frauds:,}"
        return f"{n} (or of the {self.unparsed:,} unparsed record(s))" if self.unparsed else n

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (name, value) rows, for a table."""
        pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
        rows = [("transactions", f"{self.transactions:,}"), ("decided", f"{self.decided:,}")]
        rows += [(f"  {a}", f"{self.actions[a]:,}") for a in ("approve", "review", "decline")]
        rows += [
            ("dead letters", f"{self.dead_letters:,}"),
            ("  of transactions", f"{self.dead_letters - self.label_dead_letters:,}"),
            ("  of labels", f"{self.label_dead_letters:,}"),
            *([("  most often (transactions)", self.top_reason)] if self.top_reason else []),
            ("labels read", f"{self.labels_read:,}"),
            *(  # (read next to "known frauds", which counts them: a QA pass found it puzzling)
                [
                    (
                        # (not a part of "labels read": a row of its own, "not read" under
                        # "labels read" puzzled a README walk)
                        "labels after the last transaction",
                        f"{self.labels_after_end:,} (not applied)",
                    )
                ]
                if self.labels_after_end and not self.interrupted
                else []
            ),
            *(
                [("  dated before their transaction", f"{self.early_labels:,} (learned after it)")]
                if self.early_labels
                else []
            ),
            *(
                [("  learned by the model", f"{self.labels_learned:,}")]
                if self.labels_learned is not None
                else []
            ),
            *(
                [("  time learning them", f"{self.learn_seconds:.2f} s ({self._share()})")]
                if self.labels_read
                else []
            ),
            *(
                [("  the model raised on (not learned)", f"{self.learn_errors:,}")]
                if self.learn_errors
                else []
            ),
            ("late events", f"{self.late:,}"),
            *(  # (said nowhere in a replay: a QA pass)
                [("evicted by max_entities", self._capped())]
                if any(self.evicted_by_cap.values())
                else []
            ),
            ("reordered records", f"{self.reordered:,}"),
            *(
                [("  beyond the reorder buffer", f"{self.beyond_reorder_buffer:,}")]
                if self.beyond_reorder_buffer
                else []
            ),
            ("throughput", f"{self.throughput:,.0f} tx/s"),
            (
                "wall time",
                f"{self.seconds:.2f} s" if self.seconds >= 0.1 else f"{self.seconds * 1000:.1f} ms",
            ),
            *(
                [("  reading the labels file first", f"{self.labels_file_seconds:.2f} s")]
                if self.labels_file_seconds >= 0.01
                else []
            ),
            *(
                [("behind the pace", f"up to {span(self.behind_pace)} (slower than --speed)")]
                if self.behind_pace >= BEHIND_SAY_S
                else []
            ),
        ]
        if self.demoted:
            rows.append(("demoted to shadow", ", ".join(self.demoted)))
        if self.demotions > len(self.demoted):  # (a demotion lifted by an edit left no
            rows.append(("rate-breaker demotions", f"{self.demotions:,} (lifted since: "  # trace)
                         f"{self.demotions - len(self.demoted):,})"))  # fmt: skip
        if len(self.ruleset_versions) > 1:  # (each decision names its own)
            rows.append(("rules reloaded", " -> ".join(self.ruleset_versions)))
        if self.rules_rejected:  # (only the versions taken were said: a QA pass)
            rows.append(("rules files rejected", f"{self.rules_rejected:,}" + (
                f" (the file as last checked: {self.rules_error})" if self.rules_error else ""
            )))  # fmt: skip
        if self.interrupted:
            rows.insert(0, ("interrupted", "yes (Ctrl-C or SIGTERM): figures so far"))
        if self.frauds is not None:
            rows += [
                ("known frauds", f"{self.frauds:,}"),
                *(
                    [("  fraud labels of no transaction", self._unmatched())]
                    if self.unmatched_frauds and not self.interrupted  # (some not reached yet)
                    else []
                ),
                *(  # (they were "of no transaction", sending the user after the ids: a QA pass)
                    [("  fraud labels of dead letters", f"{self.dead_frauds:,}")]
                    if self.dead_frauds
                    else []
                ),
                ("precision (alerts)", pct(self.precision)),
                ("recall (alerts)", pct(self.recall)),
            ]
        return rows


def open_stream(
    path: str | Path,
    *,
    mapping: ColumnMapping | None = None,
    labels_path: str | Path | None = None,
    tz: tzinfo | None = None,
    reorder_buffer: int | None = None,
) -> ReplayInput:
    """A lazy, validated, event-time-ordered stream of a historical file (and its labels);
    ``reorder_buffer``: records held back to sort (default :data:`REORDER_BUFFER`)."""
    if labels_path is not None and mapping is not None and mapping.label is not None:
        raise ConfigError(  # (both were learned: each fraud twice, at the earlier time: a review)
            f"the mapping's label column ({mapping.label.column!r}) and the labels file "
            f"{labels_path} both give labels: use one of them"
        )
    zone = tz or get_zone(mapping.timezone if mapping else "UTC")
    labels: list[dict[str, Any]] = []
    dlq: list[dict[str, Any]] = []
    fault: dict[str, Any] | None = None  # (what ended the labels file, if it was cut short)
    started = time.perf_counter()
    if labels_path is not None:
        # (read with the mapping's zone, missing texts and ts_origin: a labels file in the
        # contract's columns was read from 1970 while its transactions had an origin, a review)
        own = mapping.for_labels() if mapping is not None else None
        for rec in _validated(labels_path, own, zone, parse_label, dlq, None):
            labels.append(rec)
        labels.sort(key=_ts)
        fault = next((d for d in dlq if d["error"] in _CUTS), None)
        if fault is not None and fault["error"] == DamagedFile.__name__:  # (read whole before
            raise ConfigError(  # anything is decided: refused, as a bad file)
                f"{labels_path} is damaged: {fault['reason']}; use a good copy"
            )
        if fault is not None:
            log.warning(
                "%s could not be read to its end: %s; the labels after that are not read",
                labels_path, fault["reason"],
            )  # fmt: skip
    stream = ReplayInput(iter(()), labels, dlq, count=lambda: count_rows(path, mapping))
    stream.labels_seconds = time.perf_counter() - started if labels_path is not None else 0.0
    if fault is not None:
        stream.labels_cut = f"{labels_path}: {fault['reason']}"
    stream.transactions = _ordered(
        _validated(path, mapping, zone, parse_transaction, dlq, stream),
        REORDER_BUFFER if reorder_buffer is None else reorder_buffer,
        stream,
    )
    return stream


def load(
    path: str | Path,
    *,
    mapping: ColumnMapping | None = None,
    labels_path: str | Path | None = None,
    tz: tzinfo | None = None,
) -> ReplayInput:
    """Like :func:`open_stream`, materialised: every record in memory, fully sorted."""
    stream = open_stream(
        path, mapping=mapping, labels_path=labels_path, tz=tz, reorder_buffer=2**62
    )
    stream.lines = None  # a line kept per transaction of the whole file: too much memory
    stream.transactions = list(stream.transactions)
    read_to_end(stream, path)
    stream.total = len(stream.transactions)
    stream.labels = sorted(stream.labels + stream.pending_labels, key=_ts)
    stream.pending_labels = []
    return stream


def read_to_end(stream: ReplayInput, path: str | Path) -> None:
    """Once ``stream`` of the file ``path`` was read: a damaged file is a :class:`ConfigError`
    (backtest and bench went on with exit 0: a review), one cut short a warning."""
    if stream.damaged is not None:
        raise ConfigError(
            f"{path} is damaged: {stream.damaged}; the records read before that may be corrupt "
            "too: use a good copy"
        )
    if stream.cut is not None:
        log.warning(
            "%s could not be read to its end: %s; the records after that are not read",
            path, stream.cut,
        )  # fmt: skip


def _ts(r: dict[str, Any]) -> float:
    return float(r["ts"])


#: The dead letters' ``error`` of a file that could not be read to its end.
_CUTS = frozenset({FileCut.__name__, DamagedFile.__name__})


def _validated(
    path: str | Path,
    mapping: ColumnMapping | None,
    zone: tzinfo,
    parse: Callable[[Any, tzinfo], dict[str, Any]],
    dlq: list[dict[str, Any]],
    stream: ReplayInput | None,
) -> Iterator[dict[str, Any]]:
    """Parsed, validated records of a file; bad ones appended to ``dlq`` with their line.

    A mapping's label column becomes a label event ``delay`` after each fraud, queued on
    ``stream.pending_labels`` (the replay learns it when its time comes).
    """
    source = str(path)
    label = mapping.label if mapping is not None else None
    clock = FileClock(zone)  # (a DST change's repeated hour)
    # a labels file's bad record: `stage: label`, as fds run's over Kafka (it was `validate`
    # here and `label` there, for one record: a QA pass)
    parsing, validating = ("label", "label") if parse is parse_label else ("parse", "validate")
    # the first records' times, without a zone given, are looked at for one with no offset
    # (read as UTC without a word: a bank's Seoul times were 9 hours off, a QA pass; fds run
    # says so of a Kafka record, schema.NaiveWatch)
    naive = 0 if mapping is not None and "timezone" in mapping.model_fields_set else NAIVE_LOOK
    for pos, rec, raw in read_records(path, mapping=mapping):
        if len(dlq) >= DEAD_BATCH and stream is not None and stream.on_dead is not None:
            stream.on_dead()
        if isinstance(rec, Exception):
            stage = "parse" if isinstance(rec, FileCut) else parsing
            dlq.append(dead_letter(stage=stage, error=rec, raw=raw, source=source, position=pos))
            if isinstance(rec, FileCut) and stream is not None:
                if isinstance(rec, DamagedFile):
                    stream.damaged = str(rec)
                else:
                    stream.cut = str(rec)
            elif stream is not None:
                tx_id = None
                if mapping is not None and isinstance(raw, dict):  # (a value the mapping's
                    # notation could not read: its fraud left the summary too, a QA pass)
                    tx_id = mapping.column_value(raw, mapping.fields.get("tx_id", "tx_id"))
                    truth = (
                        mapping.label_flag(mapping.column_value(raw, label.column))
                        if label is not None else None
                    )  # fmt: skip
                    _dead_fraud(stream, tx_id, label, truth)
                if type(tx_id) not in (str, int):  # (an id known is no unparsed record: its
                    stream.unparsed += 1  # label was said twice, a review)
            continue
        truth = rec.pop(label.column, None) if label and isinstance(rec, dict) else None
        try:
            out = parse(rec, zone)
        except ValidationError as e:  # (its label put back: a review found it lost)
            row = _as_read(raw, rec, label, truth)
            dlq.append(dead_letter(stage=validating, error=e, raw=row, source=source, position=pos))
            if stream is not None and isinstance(rec, dict):
                _dead_fraud(stream, rec.get("tx_id"), label, truth)
            continue
        if naive and isinstance(rec, dict):
            naive -= 1
            if rec.get("ts").__class__ is str and naive_text(rec["ts"]):
                naive = 0
                log.warning(
                    "%s: a ts without its UTC offset, %r at position %s, is read as UTC; if "
                    "the file's times are local, give their zone in the --mapping file "
                    "(timezone: Asia/Seoul) (said once)",
                    source, rec["ts"][:40], pos,
                )  # fmt: skip
        if isinstance(rec, dict):
            # a local time of the hour a DST change repeats: its second pass where the file
            # says so (read alone, it is the first: a review found both passes of a fall-back
            # hour read as the first, the windows wrong; a labels file's too, learned an hour
            # before they were known: a QA pass)
            t = clock(rec.get("ts"), out["ts"])
            if t != out["ts"]:
                out["ts"] = t
                if stream is not None:
                    stream.second_pass += 1
        if stream is not None and stream.lines is not None:
            stream.lines[id(out)] = pos
        if truth is None or label is None or stream is None:
            yield out
            continue
        stream.labelled += 1
        try:
            fraud = label.is_fraud(truth)
        except ValueError as e:
            row = _as_read(raw, rec, label, truth)
            dlq.append(dead_letter(stage="label", error=e, raw=row, source=source, position=pos))
            fraud = False
        if fraud:
            stream.truth.add(out["tx_id"])
            stream.pending_labels.append(
                {
                    "tx_id": out["tx_id"],
                    "ts": out["ts"] + label.delay,
                    "is_fraud": True,
                    "source": "file",
                }
            )
        yield out


def _dead_fraud(stream: ReplayInput, tx_id: Any, label: Any, truth: Any) -> None:
    """Count a dead-lettered transaction among the known frauds when a labels file, or its own
    label column (``truth``), says it is one (the frauds of rows dead-lettered left the
    summary without a word: a QA pass)."""
    if type(tx_id) not in (str, int):
        return
    if truth is not None and label is not None and _fraud(label, truth):
        stream.truth.add(str(tx_id))
    if str(tx_id) in stream.truth:
        stream.dead_truth.add(str(tx_id))


def _fraud(label: Any, value: Any) -> bool:
    """Does a label column's ``value`` say fraud? (No when it is no label: a dead-lettered
    row's own reason is said, not that of its label too.)"""
    try:
        return bool(label.is_fraud(value))
    except ValueError:
        return False


def _as_read(raw: Any, rec: dict[str, Any], label: Any, truth: Any) -> dict[str, Any]:
    """A mapped file's record as read, for its dead letter: the file's own column names (not
    the engine's), with the label column the reader took out of it."""
    row = raw if isinstance(raw, dict) else rec
    if truth is not None and label is not None and label.column not in row:
        row = {**row, label.column: truth}
    return row


def _say_unordered(stream: ReplayInput, size: int) -> None:
    log.warning(
        "input not in time order: %s records so far came more than the reorder buffer (%s "
        "records) after later ones; each is decided on the window state the later ones left "
        "(beyond the grace period: flagged late, not folded in). To decide each in its time, "
        "stop (Ctrl-C) and replay the file sorted by time%s",
        f"{stream.late:,}", f"{size:,}", f": {stream.sort_hint}" if stream.sort_hint else "",
    )  # fmt: skip


def _ordered(
    txs: Iterator[dict[str, Any]], size: int, stream: ReplayInput
) -> Iterator[dict[str, Any]]:
    """Event-time order through a reorder buffer of ``size`` records.

    While the input is in order the buffer is a FIFO (cheap); from the first record that is
    out of order on, it is a heap keyed by ``(ts, arrival)``.
    """
    fifo: deque[tuple[float, int, dict[str, Any]]] = deque()
    heap: list[tuple[float, int, dict[str, Any]]] | None = None
    newest = last_out = float("-inf")
    push, pop = heapq.heappush, heapq.heappop
    for seq, tx in enumerate(txs):
        ts = tx["ts"]
        if ts < newest:
            stream.reordered += 1
            if heap is None:
                heap = list(fifo)  # sorted already: a valid heap
                fifo.clear()
        else:
            newest = ts
        if heap is None:
            fifo.append((ts, seq, tx))
            if len(fifo) > size:
                out_ts, _, out = fifo.popleft()
                last_out = out_ts
                yield out
            continue
        push(heap, (ts, seq, tx))
        if len(heap) > size:
            out_ts, _, out = pop(heap)
            if out_ts < last_out:
                stream.late += 1  # disordered by more than the buffer holds
                if stream.late == LATE_SAID:  # (said at the end only, after hours of a
                    _say_unordered(stream, size)  # file sorted by card: a QA pass)
            else:
                last_out = out_ts
            yield out
    for item in fifo:
        yield item[2]
    while heap:
        yield pop(heap)[2]


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
    sleep: Callable[[float], None] = wakeful_sleep,
    clock: Callable[[], float] = time.perf_counter,
) -> ReplaySummary:
    """Decide every transaction of ``stream`` in event-time order, learning labels on time.

    ``speed`` paces by event time (2.0 = twice real time); ``None`` is as fast as possible.
    ``on_event(i)`` is called between events (hot reload checks, tests); ``sleep`` and
    ``clock`` are the pacing's (tests give their own).
    """
    if not isinstance(stream, ReplayInput):  # (an AttributeError from deep inside: a QA pass)
        raise TypeError(f"stream: {type(stream).__name__}; give fds.load_replay(path)'s")
    for name, out in (("sink", sink), ("dlq", dlq)):
        if not callable(getattr(out, "write", None)):
            raise TypeError(
                f"{name}: {type(out).__name__} has no write(record) method; give e.g. "
                "fds.streams.files.JsonlSink(path), or an object whose write keeps each record"
            )
    total = stream.total if stream.total is not None or stream.count is None else stream.count
    with progress_bar(total, unit="tx", desc="replay", enabled=progress) as bar:
        s = _run(engine, stream, sink, dlq, bar, source, speed, on_event, sleep, clock)
        bar.update(s.transactions - bar.n)  # (records read: decided or dead letters)
        if not s.interrupted:  # (the rows were counted: a record may span lines)
            bar.total = s.transactions
            bar.refresh()
    return s


def _run(
    engine: Engine,
    stream: ReplayInput,
    sink: Sink,
    dlq: Sink,
    bar: Any,
    source: str,
    speed: float | None,
    on_event: Callable[[int], None] | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> ReplaySummary:
    s = ReplaySummary()
    metrics = engine.metrics
    counts = getattr(engine.rules, "counts", None)  # (a hot-reloading rule stage's)
    rejected = counts["rejected"] if counts is not None else 0
    demotions = getattr(engine, "demotions", 0)
    if metrics is not None:
        metrics.events_consumed("file", 0)  # (the series at 0 from the start, as fds run's)
    schedule = LabelSchedule(stream.labels)
    labelled = schedule.labelled
    pending = stream.pending_labels
    dead = stream.dead_letters
    lines = stream.lines
    truth = stream.truth
    alerted_frauds = total_frauds = learned = dead_frauds = dead_after_rules = 0
    learning = [0.0]  # seconds the labels took to learn (a slow model's share of the run)

    def learn(lab: Mapping[str, Any]) -> None:
        t = time.perf_counter()
        engine.learn(lab)
        learning[0] += time.perf_counter() - t

    matched: set[str] = set()  # the labelled fraud tx_ids read
    model_learned = _model_learned(engine)
    trainer = getattr(engine.model, "trainer", None)
    learn_errors = trainer.stats["learn_errors"] if trainer is not None else 0
    tally = _DeadTally(source)
    stream.on_dead = lambda: tally.drain(dead, dlq, metrics)
    t0 = time.perf_counter()
    first_ts: float | None = None
    newest_ts = -math.inf  # paced: the latest event time decided
    paced_from = t0
    actions = s.actions
    counted = seen = 0  # events already reported to metrics; events decided or dead-lettered
    version: Any = ""  # the ruleset version of the last decision
    report_at = 0.0  # paced: when the metrics and the bar are brought up to date next

    def up_to_date(i: int) -> None:
        """Dead letters written, the bar (records read: decided or dead letters) and the
        metrics brought up to the ``i`` transactions decided so far."""
        nonlocal report_at
        report_at = clock() + 1.0
        tally.drain(dead, dlq, metrics)
        bar.update(i + tally.unreadable - bar.n)
        if metrics is not None:
            engine.report()

    said_wait = False  # paced: a long wait was logged
    failed: FdsError | None = None
    with Freezer() as freezer, _HeldSignals() as held:
        try:
            for i, tx in enumerate(stream.transactions):
                ts = tx["ts"]
                if pending:
                    for lab in pending:
                        schedule.add(lab)
                    pending.clear()
                if schedule.next_ts < ts:
                    for lab in schedule.due(ts):
                        learn(lab)
                        learned += 1
                if speed:
                    if first_ts is None:  # the clock starts with the first event: after the
                        first_ts, paced_from = ts, clock()  # reorder buffer filled
                        first_id = tx["tx_id"]
                    ahead = (ts - first_ts) / speed - (clock() - paced_from)
                    # (behind: as of the newest event time decided, not of a record read late,
                    # which is no slowness of the engine's: a review)
                    newest_ts = max(newest_ts, ts)
                    behind = (clock() - paced_from) - (newest_ts - first_ts) / speed
                    if behind > s.behind_pace:
                        if s.behind_pace < BEHIND_SAY_S <= behind:  # (once a run)
                            log.warning(
                                "paced replay: %s behind the pace at --speed %g (the engine "
                                "decides slower than that): transactions are decided as fast as "
                                "it can, and the summary says how far behind it fell",
                                span(behind), speed,
                            )  # fmt: skip
                        s.behind_pace = behind
                    if ahead > 0:
                        if ahead > LONG_WAIT_S and not said_wait:  # (a date mistyped years
                            said_wait = True  # ahead waited without a word: a QA pass; once
                            log.warning(  # a run: sparse data at --speed 1, every event)
                                "paced replay: transaction %s at %s is %s of event time ahead "
                                "of where the pace stands (it started at the first transaction "
                                "decided, %s at %s: a mistyped date there shows here); waiting "
                                "%s at --speed %g (Ctrl-C stops; later waits are not logged)",
                                tx["tx_id"], format_ts(ts), span(ahead * speed), first_id,
                                format_ts(first_ts), span(ahead), speed,
                            )  # fmt: skip
                        if ahead > 1.0:  # (what was decided shows during a long wait: the bar
                            up_to_date(i)  # stood still for minutes, a QA pass)
                        sleep(ahead)
                        bar.update(i + tally.unreadable - bar.n)  # paced: moves with events
                if on_event is not None:
                    on_event(i)
                held.holding = True  # (to its end: decided, written and counted, or none)
                if metrics is not None:  # counted consumed as it is read, never behind the
                    metrics.events_consumed("file", i + 1 - counted)  # decisions (a scrape saw
                    counted = i + 1  # 4,096 consumed, 4,768 decided; unpaced too: a QA pass)
                line = lines.pop(id(tx), i) if lines is not None else i
                try:
                    d = engine.decide(tx)
                except StageError as e:
                    dead.append(
                        dead_letter(
                            stage=e.stage, error=e.cause, raw=tx, source=source, position=line
                        )
                    )
                    d = None
                    if tx["tx_id"] in truth:
                        dead_frauds += 1
                        matched.add(tx["tx_id"])
                    if isinstance(e.cause, RuleError):
                        s.dead_by_rule[e.cause.rule] += 1
                    else:
                        dead_after_rules += e.stage not in ("features", "rules")
                else:
                    sink.write(d)
                seen = i + 1  # (not before: a Ctrl-C while it waits leaves it unread)
                if labelled and tx["tx_id"] in labelled:
                    for lab in schedule.after(tx["tx_id"]):
                        learn(lab)
                        learned += 1
                if d is not None:
                    action = d["action"]
                    actions[action] += 1
                    if d["ruleset_version"] != version:
                        version = d["ruleset_version"]
                        s.ruleset_versions.append(str(version))
                    if d["flags"]:
                        s.late += "late" in d["flags"]
                    if tx["ts"] < EPOCH_2000:
                        s.dated_before_2000 += 1
                        if s.first_before_2000 is None:
                            s.first_before_2000 = {"tx_id": tx["tx_id"], "ts": tx["ts"]}
                    if tx["tx_id"] in truth:
                        total_frauds += 1
                        alerted_frauds += action != "approve"
                        matched.add(tx["tx_id"])
                # (also after a stage failure: every record failing one held its dead letters
                # in memory and the metrics still until the end, a review)
                # paced, a second at most between reports too (a scrape of a slow replay saw
                # 87 decisions and 0 events consumed: a QA pass)
                if not i % _PROGRESS_EVERY or (speed and clock() >= report_at):
                    up_to_date(i)
                if not i % TICK_EVERY:  # (in time for the collector's own pass: fds.gcpolicy)
                    freezer.tick(TICK_EVERY)
                held.release()
            for lab in schedule.never_came():  # unmatched, as they were before
                learn(lab)
                learned += 1
        except KeyboardInterrupt:  # Ctrl-C: stop between events, summarise what was decided
            s.interrupted = True
        except FdsError as e:
            failed = e
            raise
        finally:  # what was read before a failure is not lost; a failure of the dead letters'
            try:  # file too is said with the first (both on one full disk: only the dead
                tally.drain(dead, dlq, metrics)  # letters' was said, a QA pass)
            except FdsError as then:
                raise also(failed, then) from None
    s.seconds = time.perf_counter() - t0
    if seen:
        s.last_ts = ts  # (the newest event decided: the file is in time order)
    if metrics is not None:
        metrics.events_consumed("file", max(0, seen - counted))  # (paced: counted as read)
        engine.report()
    s.decided = sum(actions.values())
    s.dead_letters, s.label_dead_letters = tally.total, tally.of_labels
    if tally.reasons:
        reason, n = tally.reasons.most_common(1)[0]
        shown = tally.examples[reason]  # its values, once
        records = f"{n:,} record" + ("s" if n != 1 else "")
        if n == 1 < len(tally.reasons):  # (no reason twice: the first one, said once; it was
            stage = reason.split(":", 1)[0]  # twice over 7 lines, a QA pass)
            s.top_reason = f"{stage}: {shown} (each reason differs; the first)"
        else:
            s.top_reason = (
                f"{reason} ({records}; the first: {shown})"
                if shown not in reason
                else f"{reason} ({records})"
            )
    unreadable = tally.unreadable
    s.transactions = seen + unreadable
    s.reordered, s.beyond_reorder_buffer = stream.reordered, stream.late
    capped = getattr(engine.features, "evictions_by_cap", None)
    s.evicted_by_cap = capped() if capped is not None else {}
    s.second_pass = stream.second_pass
    s.labels_read = learned
    s.labels_file_seconds = stream.labels_seconds
    s.learn_seconds = learning[0]
    s.labels_after_end = schedule.left + len(pending)
    s.early_labels = schedule.early
    if model_learned is not None:  # (labels of no decided transaction are not learned)
        s.labels_learned = int((_model_learned(engine) or 0) - model_learned)
    if trainer is not None:
        s.learn_errors = trainer.stats["learn_errors"] - learn_errors
        s.learn_error = trainer.last_learn_error
    s.demoted = sorted(engine.demoted)
    s.demotions = getattr(engine, "demotions", 0) - demotions
    if counts is not None:
        s.rules_rejected = counts["rejected"] - rejected
        error = getattr(engine.rules, "last_error", None)
        s.rules_error = str(error) if error is not None else None
    s.dead_after_rules = dead_after_rules
    if truth:
        s.frauds, s.alerted_frauds = total_frauds, alerted_frauds
        s.fraud_labels, s.dead_frauds = len(truth), dead_frauds + len(stream.dead_truth)
        s.matched_labels = len(matched | stream.dead_truth)
    s.unparsed = stream.unparsed
    return s


def _model_learned(engine: Any) -> float | None:
    """The labels the engine's model has learned so far (``fds_labels_learned_total``), or
    None without a model or metrics."""
    registry = getattr(engine.metrics, "registry", None)
    if engine.model is None or registry is None:
        return None
    return registry.get_sample_value("fds_labels_learned_total") or 0.0


def of_labels(dead: Mapping[str, Any], source: str) -> bool:
    """Is ``dead`` a label's: of another file than the transactions' ``source`` (a labels
    file), or a label column's value that is no label (its transaction is still decided)?"""
    return dead["stage"] == "label" or dead["source"] != source


def left_out(
    dead: Iterable[Mapping[str, Any]], source: str | Path
) -> tuple[Counter[str], Counter[str]]:
    """The reasons of the records a materialised stream of the transactions file ``source``
    left out, counted: the transactions' and the labels' (:func:`of_labels`)."""
    txs: Counter[str] = Counter()
    labs: Counter[str] = Counter()
    for d in dead:
        (labs if of_labels(d, str(source)) else txs)[reason_of(d)] += 1
    return txs, labs


def no_fraud_decided(summary: ReplaySummary) -> str:
    """The warning for fraud labels none of whose transactions was decided (the labels'
    tx_id spelt otherwise), or "": ``fds replay`` and ``fds rules backtest`` say it."""
    if not summary.fraud_labels or summary.frauds or summary.dead_frauds or summary.interrupted:
        return ""
    return (
        f"none of the {summary.fraud_labels:,} transactions labelled fraud was decided: check "
        "that the labels' tx_id are those of the transactions (case, prefixes, another file)"
    )


def said(counts: Counter[str], what: str) -> str:
    """``"3 record(s) of FILE could not be read (most often R)"`` in a few words, or ""."""
    if not counts:
        return ""
    return f"{counts.total():,} {what} (most often {counts.most_common(1)[0][0]})"


#: How many transactions :func:`watch_fields` looks at: a field none of them has is most likely
#: a mistyped or unmapped column, and watching stops before it costs the run anything.
WATCHED = 1000


def watch_fields(stream: ReplayInput, features: Iterable[Any]) -> Callable[[], str]:
    """Watch the first :data:`WATCHED` transactions of ``stream`` (its iterator is wrapped:
    nothing is done per transaction after them) for the fields ``features`` read, as entity
    or field; the function returned says which features read a field none of them had (a
    typo'd ``extra.riks`` summed to 0.0 on every decision and its rule never fired, without
    a word: a QA pass), or ``""``. ``fds replay`` and ``fds rules backtest`` warn with it.

    >>> s = ReplayInput([{"tx_id": "t", "ts": 0.0, "card_id": "c", "extra": {"risk": 1}}])
    >>> class F: name, entity, field = "risk_1h", "card_id", "extra.riks"
    >>> unseen = watch_fields(s, [F])
    >>> _ = list(s.transactions)
    >>> unseen().split(";")[0]
    '1 feature(s) read a field none of the first 1 transactions had: risk_1h (extra.riks)'
    """
    reads: dict[str, list[str]] = {}
    for f in features:
        for name in (f.entity, f.field):
            if name:
                reads.setdefault(name, []).append(f.name)
    seen: set[str] = set()
    watched = 0

    def watch(txs: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal watched
        for tx in txs:
            watched += 1
            for name in reads.keys() - seen:
                v = read_field(tx, name)
                if v is not None and v == v:  # (NaN: missing)
                    seen.add(name)
            yield tx

    rest = iter(stream.transactions)
    stream.transactions = itertools.chain(watch(itertools.islice(rest, WATCHED)), rest)

    def unseen() -> str:
        absent = list(dict.fromkeys(
            (f, n) for n, fs in reads.items() if n not in seen for f in fs
        ))  # fmt: skip
        if not (watched and absent):
            return ""
        shown = ", ".join(f"{name} ({field})" for name, field in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        return (
            f"{len(absent)} feature(s) read a field none of the first {watched:,} transactions "
            f"had: {shown}{more}; their values stay empty (0 or None): check the names against "
            "the file's columns (or --mapping)"
        )

    return unseen


# A quoted value opens and closes outside a word: the apostrophe of "the mapping's ts_format
# '%Y'" is not a quote (read as one, it left the value outside: 2,000 alike rows counted as
# 2,000 reasons, a QA pass).
# The advice's own values (`decimal: ','`) are no values of the record: kept (read as values,
# the summary said "decimal: '...' and thousands: '...'", a README walk).
_QUOTED = re.compile(
    r"(?P<keep>\b(?:decimal|thousands|delimiter|ts_format|encoding): '[^']*')"
    r"|(?<!\w)'[^']*'(?!\w)"
)
# A JSON parser's position in its record (`line 1 column 9 (char 8)`): one reason, wherever in
# the record (three positions were three reasons, and "most often" named another: a QA pass).
_POSITION = re.compile(r"\bline \d+ column \d+ \(char \d+\)")
_MAX_REASONS = 1_000  # distinct reasons counted apart (dead letters' errors without values)


class _HeldSignals:
    """Ctrl-C and SIGTERM held while one event is decided, written and counted (``holding``),
    then raised at :meth:`release`: one between the decision and its line stopped the replay
    with the decision counted in the metrics and pushed, but not written (a QA pass). Only in
    the main thread (where Python runs signal handlers); a wait for the pace is outside."""

    def __init__(self) -> None:
        self.holding = False
        self._held: tuple[int, Any] | None = None  # the first signal held
        self._was: dict[int, Any] = {}

    def __enter__(self) -> _HeldSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._was[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, was in self._was.items():
            signal.signal(sig, was)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.holding:
            self._held = self._held or (signum, frame)
        else:
            self._forward(signum, frame)

    def _forward(self, signum: int, frame: Any) -> None:
        was = self._was.get(signum)
        if was == signal.SIG_IGN:  # (Ctrl-C of a job started in the background: ignored)
            return
        if callable(was):
            was(signum, frame)  # (Ctrl-C: KeyboardInterrupt; fds's SIGTERM: the same, 143)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # (the default: the signal ends the process, as it would have)
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def release(self) -> None:
        self.holding = False
        held, self._held = self._held, None
        if held is not None:
            self._forward(*held)


def reason_of(dead: Mapping[str, Any]) -> str:
    """A dead letter's reason without its values, to count alike ones together: its stage and
    the first line of its error, quoted values and pydantic's ``[type=..., input_value=...]``
    left out, at most 120 characters.

    >>> reason_of({"stage": "validate", "reason": "ts: timestamp '01/03' is neither ISO 8601"})
    "validate: ts: timestamp '...' is neither ISO 8601"
    >>> reason_of({"stage": "parse", "reason": "ts: '31.12' does not fit the mapping's '%Y'"})
    "parse: ts: '...' does not fit the mapping's '...'"
    >>> reason_of({"stage": "validate", "reason": "got '1,5': write decimal: ',' there"})
    "validate: got '...': write decimal: ',' there"
    >>> reason_of({"stage": "parse", "reason": "not valid JSON: line 1 column 6 (char 5)"})
    'parse: not valid JSON: line ... column ...'
    >>> long = reason_of({"stage": "label", "reason": "ab " * 50 + "fix: do this"})
    >>> long.split(" … ")[1][-30:], len(long) <= len("label: ") + 120
    ('ab ab ab ab ab ab fix: do this', True)
    """
    # (masked before it is cut: a spaced card number across the cut kept 8 digits, a review)
    text = redact(str(dead.get("reason") or dead.get("error", "")))
    reason = text.split("\n")[0].split(" [type=")[0].split(" input_value=")[0]
    reason = _POSITION.sub(
        "line ... column ...", _QUOTED.sub(lambda m: m["keep"] or "'...'", reason)
    )
    if len(reason) > 120:  # (cut mid-word without a mark, it read as garbled: a review; cut at
        # its end, the fix was lost: `label_values:` of a label column's word, a README walk)
        head, tail = reason[:60].rsplit(" ", 1)[0], reason[-57:]
        reason = f"{head} … {tail[tail.find(' ') + 1 :]}"  # (at spaces: whole words)
    return f"{dead['stage']}: {reason}"


class _DeadTally:
    """What the summary says of the dead letters, counted as they are written: they are not
    kept (a file in the wrong date format held ~1 KB per row until its end: 838 MB for
    600,000 rows, a review measured)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.total = self.of_labels = self.unreadable = 0
        self.reasons: Counter[str] = Counter()  # of the transactions' dead letters
        self.examples: dict[str, str] = {}  # reason -> the first one's text, values included

    def drain(self, dead: list[dict[str, Any]], dlq: Sink, metrics: Any) -> None:
        """Write and count the dead letters collected since the last call, and forget them.
        Each is counted as ``fds run`` counts one; an unreadable record of the input also
        counts as consumed (the decided ones are counted as they are decided)."""
        for d in dead:
            dlq.write(d)
            self.total += 1
            mine = d["source"] == self.source
            unreadable = d["stage"] in _READ_STAGES and mine
            self.unreadable += unreadable
            if metrics is not None:
                metrics.dead_letter(d["stage"])
                if unreadable:
                    metrics.events_consumed("file", 1)
            if of_labels(d, self.source):
                self.of_labels += 1
                continue
            reason = reason_of(d)
            if reason not in self.reasons and len(self.reasons) >= _MAX_REASONS:
                reason = "other reasons"
            self.reasons[reason] += 1
            if reason not in self.examples:
                # (a card number quoted in a reason is masked, as in the logs: the summary
                # goes to terminals and CI logs, a QA pass)
                text = redact(str(d.get("reason") or d.get("error", "")))
                first = text.split("\n")[0]  # (its advice kept: at 160 characters the
                self.examples[reason] = (  # fix a decimal comma needs was cut, a QA pass)
                    first if len(first) <= 320 else first[:319] + "…"
                )
        dead.clear()


def print_summary(
    summary: ReplaySummary, metrics: dict[str, Any] | None = None, title: str = "replay summary"
) -> None:
    """Print the end-of-replay table (with latency percentiles from ``Metrics.summary()``) on
    stdout; with JSON logs (``--log-format json``), one JSON object instead (:meth:`as_dict`)."""
    lat = (metrics or {}).get("latency_ms") or {}
    if json_logs():
        out = {"title": title, **summary.as_dict(), "latency_ms": lat or None}
        print(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS).decode(), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, text in summary.rows():
        table.add_row(k, text)
    # The quantiles are estimates within the histogram's buckets (exact ones would hold every
    # latency): said so, with the exact mean and max (a fast run showed p50 0.050, p99 0.100
    # ms, the first bucket's interpolation, and hid a 244-ms worst case: a QA pass).
    first = LATENCY_BUCKETS[0] * 1000
    for q in ("p50", "p95", "p99"):
        if (v := lat.get(q)) is not None:
            shown = f"<= {first:g} ms" if v <= first else f"~ {v:.3f} ms"
            table.add_row(f"decision latency {q} (histogram)", shown)
    for q in ("mean", "max"):
        if (v := lat.get(q)) is not None:
            table.add_row(f"decision latency {q}", f"{v:.3f} ms")
    Console().print(table)  # the result: on stdout, as the other commands print theirs
