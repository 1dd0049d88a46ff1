"""``fds run`` on Kafka: a consumer-group service that decides transactions (its settings:
:mod:`fds.streams.settings`; what it shares with ``fds train``: :mod:`fds.streams.service`;
``fds produce``: :mod:`fds.streams.produce`).

The loop (one thread, batched)::

    poll(max_records) -> parse + validate each record (failure: a dead letter with headers)
                      -> per-partition buffers, released in event-time order across partitions
                         (:mod:`fds.streams.align`)
                      -> engine.decide each released record; send the decisions 500 at a
                         time (SEND_EVERY) while the rest of the batch is decided
                      -> commit   (the order below is the whole delivery guarantee)

Commit order, at-least-once (default):
  1. the batch's decisions and dead letters are handed to the producer, which sends them at
     once (no linger), while the loop goes on to poll and decide the next batch;
  2. when every send of a batch is acknowledged, ``consumer.commit_async(offsets)`` moves the
     input offsets past it, batches in order, at most once per ``commit_interval_ms`` (the
     offsets acknowledged meanwhile go in the next one). At most ``max_unacked_batches`` wait
     for their acknowledgements; beyond that the loop waits for the oldest ones' (not for a
     flush, and with no blocking commit); before a checkpoint, a freeze of the heap
     (:mod:`fds.gcpolicy`), when the input goes idle and at a stop it waits for all of them
     (``flush()``) and commits synchronously; on a revocation it waits for all of them and
     queues the commit (``commit_async``: the listener runs on the client's thread).
  A crash before 2 replays those batches: duplicates, never losses. Overlapping the broker's
  round trips with the next batch's decisions is what keeps the produce-to-decision latency
  near the client's own floor (``max_unacked_batches: 0`` restores flush-and-commit per batch).

Commit order, exactly-once (``--exactly-once``):
  1. ``begin_transaction()`` before the first send of the batch;
  2. decisions and dead letters are sent inside the transaction;
  3. ``send_offsets_to_transaction(offsets, consumer.group_metadata())``;
  4. ``commit_transaction()``: outputs and input offsets become visible atomically
     (readers use ``isolation_level='read_committed'``). Any failure aborts and the process
     exits non-zero; a restart resumes from the last committed transaction.

State (``--state-dir``; windows, alert budget, rate breaker: ``Engine.state_dict()``):
  3. after a synchronous commit of everything decided (at most every ``checkpoint_every_s``,
     and at a clean stop and on partition revocation), the state is written with the input
     positions it covers
     (:mod:`fds.streams.checkpoint`: temp file, fsync, rename, fsync of the directory).
     Positions advance only after a commit, so a checkpoint never runs ahead of the committed
     offsets; it may lag them by up to ``checkpoint_every_s`` of input.
  On start the checkpoint is loaded into the engine. After each assignment, before anything
  is decided, the state is brought up to the group's committed offsets with a separate reader
  (:mod:`fds.streams.rebuild`; the input topic is the state's changelog): a checkpoint that
  follows every assigned partition gets the gap up to the committed offsets folded on top
  ("catch-up"); otherwise (no checkpoint, a partition moved here from another instance, or
  taken back after a while) the state starts empty and every assigned partition is folded
  from the feature horizon ("rebuild"), unless ``rebuild_state`` is off. Both fold the
  partitions merged in event time, state only (no output, no commit), so an uncommitted batch
  replayed after a crash is decided on the same state as the first time (identical duplicates,
  identical features). A partition ahead in event time of one with records still to decide is
  folded only that far; the loop folds the rest of it (below its committed offset, no output)
  merged with what it decides (``_refold``). Limit: the state is one file per instance;
  entities that span partitions (merchant, device) are counted over the partitions the
  instance holds.

Backpressure: at most ``max_unacked_batches + 1`` batches of decisions (each at most
``max_poll_records``) await acknowledgement; beyond that the loop waits for the oldest before
it polls on. A partition buffers at most ``2 * max_poll_records`` records (the rest is fetched
again later); a slow broker slows the poll loop instead of growing a queue.

Shutdown: SIGTERM/SIGINT stop polling, the current batch is finished and committed, the
consumer leaves the group, and the process exits (well within 10 s).

Broker outage: commits and flushes are retried with exponential backoff; when the broker has not
been reachable for ``broker_timeout_s`` the service exits with code 1 and says why.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import pickle
import signal
import socket
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaProducer
from kafka.errors import (
    CommitFailedError,
    CoordinatorNotAvailableError,
    FencedInstanceIdError,
    GroupIdNotFoundError,
    InvalidTransactionTimeoutError,
    KafkaError,
    KafkaTimeoutError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from fds.cli import file_or_none, registry_folder
from fds.errors import ConfigError, FdsError, StageError, describe
from fds.features.kernel import Compiler
from fds.gcpolicy import Freezer
from fds.health import Beating, Health, stale_after
from fds.logs import LineBudget, say
from fds.metrics import NullMetrics, add_metrics_arguments, make_metrics
from fds.models.registry import KEY_ENV
from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES, build_engine
from fds.schema import (
    NaiveWatch,
    check_not_ahead,
    dumps,
    loads_record,
    parse_transaction,
    produced_bad,
)
from fds.streams.align import Aligner, fetched_to
from fds.streams.checkpoint import (
    Checkpointer,
    default_state_dir,
    parse_checkpoint,
)
from fds.streams.delivery import (
    _REFUSED,
    DECIDED_MARK,
    GROUP_HEADER,
    WAIT_LOG_S,
    _Delivery,
    _producer_fenced,
    _Unacked,
)
from fds.streams.kafka_kit import (
    ClientErrors,
    Consumer,
    Stopped,
    UnreadableRecords,
    close_producer,
)
from fds.streams.label_feed import LabelFeed, reads_labels
from fds.streams.produce import produce_file, register_produce
from fds.streams.rebuild import (
    STAGES_TAIL_S,
    horizon_seconds,
    last_times,
    read_merged,
    start_offsets,
)
from fds.streams.service import (
    PROGRESS_EVERY_S,
    BrokerUnavailable,
    BrokerWatch,
    FencedWatch,
    IdleTimer,
    add_max_idle_argument,
    dead_letter_message,
    no_topic,
    on_stop_signals,
    partitions_of,
    positioned,
    probe,
    say_if_slow,
    topics_of,
    unreachable,
)
from fds.streams.settings import (
    KafkaSettings,
    add_settings_flags,
    flag_of,
    load_settings,
    settings_from,
    topic_arg,
)
from fds.streams.state_keeping import (
    INDEX_LOOK_S,
    LEFT_KEY,
    _left_offsets,
    _StateKeeping,
    _without_model,
)

# (re-exported: tests import it from here, as before it moved)
from fds.streams.state_keeping import keep_aside as keep_aside
from fds.streams.state_topic import FETCH_BYTES as STATE_FETCH_BYTES
from fds.streams.state_topic import StateTopic, ident_of, manifest_newer, manifest_offsets
from fds.timeutil import wait as wakeful_wait

if TYPE_CHECKING:  # (River: imported when an engine is built, not to build the command line)
    from fds.engine import Engine

# (KafkaSettings, load_settings, BrokerUnavailable and the produce names are re-exported: the
# names scripts imported from here before they had modules of their own)
__all__ = [
    "BrokerUnavailable",
    "KafkaSettings",
    "RunStats",
    "Runner",
    "build_run_engine",
    "close_engine",
    "load_settings",
    "main",
    "produce_file",
    "register_produce",
    "register_run",
    "with_tx",
]

log = logging.getLogger(__name__)

# Consumer lag is a gauge for dashboards: once a second is plenty and costs nothing per event.
LAG_EVERY_S = 1.0
# What closing the clients may take once the broker is known not to answer.
GONE_CLOSE_S = 0.5
# A restore (catch-up or rebuild) polls the group consumer this often, so that a rebalance the
# group starts meanwhile does not wait for the restore to end (Runner._keep_alive).
KEEPALIVE_S = 0.5
# Decisions of a batch are handed to the producer this many at a time (see Runner._process).
SEND_EVERY = 500
# Output fields that depend on the wall clock, not on input and state: a replayed duplicate
# differs only in these (tests compare decisions with them removed).
WALL_CLOCK_FIELDS = ("decided_at", "latency_ms")
#: Dead letters logged one by one per DLQ_SAID_WINDOW_S; the rest are counted and said in one
#: line (a stream of bad records wrote a line each, ~15 GB of log a day at 1,000 a second: a
#: QA pass). All are in the dead-letter topic and fds_dlq_messages_total.
DLQ_SAID_PER_WINDOW = 10
DLQ_SAID_WINDOW_S = 60.0


def _until_stopped(records: Iterator[Any], mark: bool = False) -> Iterator[Any]:
    """``records`` until a stop cuts them short (:class:`Stopped`), then, with ``mark``, one
    ``None``: a caller that checks the stop flag for each record sees it there (and does not
    take what it read for the whole)."""
    try:
        yield from records
    except Stopped:
        if mark:
            yield None


#: Records read past a partition's committed offset for the event time of its next one to decide
#: (Runner._next_times: the first may be a dead letter).
PEEK_RECORDS = 16
#: How long a restore's lag report waits for the partitions' ends (Runner._report_restoring).
ENDS_TIMEOUT_MS = 300
#: How often the lag report reads the partitions' ends (a request; the high watermarks of the
#: fetches are read each second, and are enough while every partition is fetched often).
ENDS_EVERY_S = 10.0
# How long a restart waits to read those decisions before it decides their records again.
FIND_TIMEOUT_S = 10.0
# A restore's read that got nothing for this long asks the broker (Runner._stalled), within
# STALL_PROBE_S, and again after as long.
STALL_S = 3.0
STALL_PROBE_S = 1.0


def _decided_id(msg: Any, groups: Sequence[bytes], others: Counter[bytes]) -> dict[str, Any] | None:
    """A decision record's ``tx_id``, partition and offset (as :func:`read_merged` takes a
    record: a constant time keeps each partition's order), when one of ``groups`` made it (its
    :data:`GROUP_HEADER`; none: a release before the header, taken as before); another
    group's is counted in ``others``.

    >>> from types import SimpleNamespace as Msg
    >>> mine, others, d = [b"eu"], Counter(), b'{"tx_id": "t1"}'
    >>> _decided_id(Msg(value=d, partition=0, offset=7, headers=[("fds-group", b"eu")]), mine,
    ...             others)
    {'ts': 0.0, 'tx_id': 't1', 'p': 0, 'o': 7}
    >>> _decided_id(Msg(value=d, partition=0, offset=8, headers=[("fds-group", b"us")]), mine,
    ...             others), others
    (None, Counter({b'us': 1}))
    >>> _decided_id(Msg(value=d, partition=0, offset=9, headers=[]), mine, others)["tx_id"]
    't1'
    >>> _decided_id(Msg(value=d, partition=0, offset=10, headers=[("fds-group", None)]), mine,
    ...             others), others[b""]
    (None, 1)
    """
    for name, value in msg.headers or ():
        if name == GROUP_HEADER and value not in groups:
            others[value or b""] += 1  # (a null value, another tool's: "" in the warning)
            return None
    try:
        tx_id = loads_record(msg.value)["tx_id"]
    except Exception:  # not a decision (written by another tool): nothing to find in it
        return None
    return {"ts": 0.0, "tx_id": tx_id, "p": msg.partition, "o": msg.offset}


def with_tx(decision: dict[str, Any], tx: Mapping[str, Any]) -> dict[str, Any]:
    """Add the optional ``tx`` object of the decisions topic: the transaction's numeric fields
    the model reads besides the features (``ts`` as epoch seconds, ``amount``), so that
    ``fds train`` can rebuild the model input from the decision alone.

    >>> with_tx({"tx_id": "t1"}, {"tx_id": "t1", "ts": 1767225600.0, "amount": 5.0})
    {'tx_id': 't1', 'tx': {'ts': 1767225600.0, 'amount': 5.0}}
    """
    decision["tx"] = {"ts": tx["ts"], "amount": tx["amount"]}
    return decision


@dataclass(frozen=True, slots=True)
class _Bad:
    """A record that failed ``stage`` (parse, validate): it goes to the dead letters."""

    stage: str
    error: BaseException


def _event_time(msg: Any, ahead_s: float = 0.0) -> tuple[float, Any]:
    """``(event time, transaction)`` of a record; ``(-inf, _Bad)`` for a bad one (dead-lettered
    at once, ahead of the merge).

    ``ahead_s`` > 0: an event time more than ``ahead_s`` after the record's own timestamp (when
    it was produced) is a validation error. Such a time is a clock or data error, and folded in
    it would move every window's watermark ahead, so that the following events all came late.
    The record's timestamp, not this machine's clock: a rebuild judges a record as it was
    judged when first decided."""
    if getattr(msg, "headers", None) and (refused := produced_bad(msg, None)) is not None:
        # a row `fds produce` read and its mapping refused (a ts not in its ts_format), sent
        # as JSON that may read as a record
        return -math.inf, _Bad("parse", refused)
    stage = "parse"
    try:
        obj = loads_record(msg.value)
        stage = "validate"
        tx = parse_transaction(obj)
        check_not_ahead(tx["ts"], msg, ahead_s)
        if _NAIVE_WATCH.left:
            _NAIVE_WATCH(obj, msg)
    except Exception as exc:
        # a row `fds produce` could not read: the reader's reason (it was "not valid JSON"; a
        # row reading as JSON, `5`, failed validation)
        said = produced_bad(msg, exc)
        return -math.inf, _Bad("parse" if said is not exc else stage, said or exc)
    return tx["ts"], tx


# The first records of a process are watched for a ``ts`` text without an offset (read as UTC
# over Kafka: a producer's local times were decided hours off without a word, a QA pass).
_NAIVE_WATCH = NaiveWatch("transaction")


@dataclass(slots=True)
class RunStats:
    """Counters of one run (also logged at exit)."""

    consumed: int = 0
    decided: int = 0
    dead_letters: int = 0
    batches: int = 0
    commits: int = 0
    caught_up: int = 0  # records re-folded into state without output (after a restore)
    found_decided: int = 0  # of those, past the committed offsets: decided before a restart
    checkpoints: int = 0
    keyed_otherwise: int = 0  # input records not keyed by their card_id
    dlq_by_stage: dict[str, int] = field(default_factory=dict)


class Runner(_StateKeeping, _Delivery):
    """Consume transactions, decide them with ``engine``, produce decisions and dead letters.

    Parameters
    ----------
    settings
        Topics, group, delivery mode, timeouts and client options.
    engine
        The same :class:`fds.engine.Engine` that file replay uses.
    consumer_factory, producer_factory
        Build the kafka-python clients from a config dict (injectable for tests).
    admin_factory
        Builds the admin client that reads the group's committed topics at the start (see
        ``_check_one_input``); ``None``: kafka-python's, unless ``consumer_factory`` is given
        (in-memory clients without an admin: not checked).
    checkpointer
        Where the engine state is checkpointed and restored from (``None``: no state kept
        across restarts).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        engine: Engine,
        *,
        consumer_factory: Callable[..., Any] | None = None,
        producer_factory: Callable[..., Any] | None = None,
        checkpointer: Checkpointer | None = None,
        admin_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.s = settings
        self.checkpointer = checkpointer
        self.state_topic: StateTopic | None = None
        if settings.state_topic and checkpointer is not None:
            if not settings.group_instance_id:
                raise ConfigError(
                    f"a state topic ({settings.named('state_topic')}) needs an instance id "
                    f"({settings.named('group_instance_id')}): the instance's snapshot is found "
                    "by its group and instance id (keep the id when the instance moves)"
                )
            self.state_topic = StateTopic(
                settings.state_topic, ident_of(settings.group, settings.group_instance_id),
                slot_file=checkpointer.dir / "state-topic.slot",
            )  # fmt: skip
            if self.state_topic.key is None:  # (as the models feed says it: a security review
                log.warning(  # ran code in fds run through a forged snapshot, not a word)
                    "state topic without %s: its snapshots are checked by sha256 only "
                    "(corruption, not forgery), and a restore unpickles them: whoever can write "
                    "to %r can run code in this process; set the key, or restrict writes to "
                    "the topic with ACLs",
                    KEY_ENV, settings.state_topic,
                )  # fmt: skip
        self._state_producer: Any = None
        self._index_producer: Any = None  # (the state topic index's copies: StateTopic)
        self._index_at = 0.0  # (monotonic) when the index may be looked for next
        self._index_wait = INDEX_LOOK_S  # ... after it is found and copies fail again
        self._index_probe: threading.Thread | None = None  # looking for it
        self._index_found = False  # (set by the probe)
        self._published = 0  # checkpointer.saves already published to the state topic
        # Input partition -> offset of the first record NOT folded into the engine state.
        # Advanced only after a commit, so it never runs ahead of the committed offsets.
        self._positions: dict[int, int] = {}
        # Input partitions just assigned: the state is brought up to their committed offsets
        # before their first batch is decided (fds.streams.rebuild).
        self._unresolved: set[int] = set()
        self._rebalances = 0  # listener calls so far: a restore that sees one starts again
        # Input partition -> its committed offset, for partitions whose restore stopped short
        # of it (they were ahead in event time of one still to decide): records below it are
        # folded without output as the loop decides the others, _positions following them.
        self._refold: dict[Any, int] = {}
        # At-least-once, after an assignment: input partition -> (its end offset then, the
        # decisions already out for its records past the committed offset, in order: (tx_id,
        # offset) on the decisions partition of its number; _find_decided). The record whose
        # tx_id is the next one is folded, not decided again: no duplicate of a decision out.
        self._found: dict[Any, tuple[int, deque[tuple[str, int]]]] = {}
        # Decisions partition -> the offset after its last acknowledged decision (DECIDED_MARK)
        self._out_next: dict[int, int] = {}
        # Input partition -> (an offset committed, the DECIDED_MARK it was committed with):
        # checkpointed where the offset is the one the state covers (MARKS_KEY)
        self._pos_marks: dict[int, tuple[int, int]] = {}
        self._out_headers = [(GROUP_HEADER, settings.group.encode())]  # (each decision's)
        self._restoring = False  # folding a restore: the state is ahead of _positions
        # Partitions were revoked or lost and no assignment has come since: a join is under
        # way, and consumer.assignment() still names the old partitions (eager protocol).
        self._joining = False
        self._lag_shown: set[int] = set()  # partitions whose lag series is exported
        self._heartbeat_fenced = FencedWatch(None)  # (set by _loop)
        # A partition the state has not followed (no checkpoint yet, or it moved here from
        # another instance) gets the state rebuilt from the input, all partitions merged in
        # event time, from the feature horizon up to the group's committed offsets.
        self._rebuild = checkpointer is not None and settings.rebuild_state
        # Partitions the state no longer follows but whose events its windows may still hold
        # (revoked, moved away) -> (the feature watermark then, the offset the state covered);
        # None: not known (a state kept after a failure). A partition that moves here is
        # rebuilt alone, from the first offset the state lacks, and merged (_moved_alone).
        self._left: dict[int, tuple[float, int]] | None = {}
        self._input_id: str | None = None  # the input topic's id on the broker (_topic_id)
        self._alone_refused = False  # said why: the next restore rebuilds every partition
        self._emptied = False  # the state was emptied to take partitions over (_moved_alone)
        self._ends_at = -math.inf  # _report_restoring reads the partitions' ends from then
        self._lag_ends_at = -math.inf  # ... and _report from then
        self._ends: dict[Any, int] = {}  # the ends _report read last
        self._fresh_state = pickle.dumps(engine.state_dict()) if checkpointer else b""
        self._live = False  # the state has decided input since it was restored
        # The state holds decisions past _positions (not all committed synchronously yet): an
        # eviction then leaves it untrusted (rebuilt at the next assignment); else it is kept.
        self._ahead = False
        self._saved: dict[int, int] = {}  # the positions of the last checkpoint written
        self._ck_seen = (0, 0)  # the checkpointer's (saves, failures) already counted
        self._broker_up: bool | None = None  # as fds_broker_reachable says it
        self._stall_probe_at = 0.0  # a stalled restore asks the broker again then (monotonic)
        # A commit refused after an eviction: kafka-python notices at its next heartbeat, and
        # until it has rejoined every batch would be refused again (six in a row in a chaos
        # run). Nothing is decided until a rebalance or a session timeout since then.
        self._evicted: tuple[float, int] | None = None  # (when, rebalances then)
        self._unpositioned: tuple[float, bool] | None = None  # (since when, said)
        # partitions lost while the state held decisions past the last commit (_Revoke): back
        # to the checkpoint at the loop's next pass
        self._lost_ahead = False
        self._closing = False  # run() is closing the clients: the listener leaves state alone
        self._broker_gone = False  # the run ends because Kafka did not answer
        self._stop_by: float | None = None  # monotonic deadline of a stop's work
        self._ckpt_at = -math.inf  # the first commit writes the first checkpoint
        self.engine = engine
        self.stats = RunStats()
        self._stop = False
        self._consumer_factory = consumer_factory or Consumer
        self._producer_factory = producer_factory or KafkaProducer
        self._admin_factory = admin_factory or (KafkaAdminClient if not consumer_factory else None)
        self.consumer: Any = None
        self.producer: Any = None
        # Metrics go to the engine's Metrics (fds.metrics) when it has one, else nowhere.
        self.metrics: Any = engine.metrics if engine.metrics is not None else NullMetrics()
        self.metrics.events_consumed("kafka", 0)  # the series at 0 from the start: increase()
        # saw the first poll's batch as a new series, not as consumed (a QA pass)
        self._lag_at = 0.0
        self._decided: dict[Any, int] = {}  # partition -> offset after the last record decided
        self._copartitioned: bool | None = None  # (None: not checked yet)
        self._n_out = 0  # the output topic's partitions, when co-partitioned
        self._pending: list[Any] = []  # send futures of the batch being decided
        # dead letters logged in the current window, its end, and those counted only
        self._dlq_lines = LineBudget(self._say_dead_letters, DLQ_SAID_PER_WINDOW, DLQ_SAID_WINDOW_S)
        # the bad labels dead-lettered with that batch (queued again if its transaction aborts)
        self._bad_labels: list[tuple[Any, BaseException]] = []
        self._handed: Any = None  # the checkpoint's LabelFeed.handed, until the feed is made
        # At-least-once: batches sent but not all acknowledged yet, oldest first; offsets of
        # acknowledged batches not committed synchronously yet (async commits may fail).
        self._pipelined = not settings.exactly_once and settings.max_unacked_batches > 0
        self._unacked: deque[_Unacked] = deque()
        self._committable: dict[Any, Any] = {}
        self._to_commit: dict[Any, Any] = {}  # of those, not yet committed asynchronously
        self._commit_at = -math.inf  # the next asynchronous commit: not before then
        self._freezer = Freezer()  # long-lived state out of the GC's passes (fds.gcpolicy)
        self.aligner: Aligner | None = None  # made with the consumer
        self.labels: LabelFeed | None = None  # --labels-topic, made with the consumer
        self._labels_due = True  # re-read the labels topic (start; state caught up or rebuilt)
        self._labels_retry_at = -math.inf  # after a failed re-read: not before then
        self._input_ms = -math.inf  # record timestamp of the newest input decided
        # Fault injection for the crash tests (RELIABILITY.md tests 1-2): SIGKILL this process
        # after batch N's outputs are sent and acknowledged but before its offsets (or its
        # transaction) are committed: the window where at-least-once must replay the batch and
        # exactly-once must abort it. Unset in production.
        self._kill_after_flush = int(os.environ.get("FDS_FAULT_KILL_AFTER_FLUSH", "0"))
        # ... and slow every record a restore folds down by this many seconds (a long rebuild
        # in a short test). Unset in production.
        self._fold_delay = float(os.environ.get("FDS_FAULT_FOLD_DELAY_S", "0"))
        # /healthz and /readyz (fds.health): the loop beats once per poll, a restore about
        # once a second, a wait for the broker at each step; readiness() is read at a request.
        self.health = Health(stale_after_s=stale_after(settings.broker_timeout_s),
                             ready=self.readiness)  # fmt: skip
        self.metrics.watch_health(self.health)  # fds_ready
        # Why the instance does not decide, while it is busy with something the flags above do
        # not say (starting, restoring the state of the partitions assigned); None: they say.
        self._busy: str | None = (
            f"starting: connecting to Kafka at {settings.bootstrap}, loading the state"
        )
        self._n_assigned = 0  # input partitions of the last assignment

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish the current batch, commit and return (signal-safe); the
        stop's deadline (``shutdown_timeout_s``) runs from now."""
        self._stop = True
        self._time_left()

    def readiness(self) -> tuple[bool, str]:
        """What ``/readyz`` answers: ``(True, ...)`` while the instance decides its partitions
        (none, when the group has more members than partitions: a standby, ready as a Kafka
        Streams instance without tasks is RUNNING), else ``(False, why)``. Called from the HTTP
        server's thread: it reads the loop's flags, each once, and changes nothing."""
        if self._stop:
            return False, "draining after a stop: finishing the batch, committing, leaving"
        busy = self._busy
        gone = f"waiting for the broker: Kafka at {self.s.bootstrap} does not answer"
        if busy is not None:  # (an outage during a restore is said too: a QA pass)
            return False, f"{gone} ({busy})" if self._broker_up is False else busy
        if not self._broker_up:
            return False, gone
        if self._joining or not self._rebalances:
            return False, f"joining the group {self.s.group!r}"
        if self._evicted is not None:
            return False, "rejoining the group after an eviction"
        if self._unresolved:
            return False, "restoring the state of the partitions assigned"
        n = self._n_assigned
        if not n:
            return True, "no partition assigned (more instances than partitions): standing by"
        return True, f"deciding {n} partition{'s' if n > 1 else ''}"

    def _connect(self) -> None:
        s = self.s
        common = s.client_config()
        timeout_ms = s.timeout_ms
        consumer_cfg = s.reader_config(
            s.group,
            group_instance_id=s.group_instance_id,
            auto_offset_reset=s.auto_offset_reset,
            max_poll_records=s.max_poll_records,
            fetch_min_bytes=s.fetch_min_bytes,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            **s.liveness(),
        )
        producer_cfg: dict[str, Any] = {
            **common,
            "acks": "all",
            # Pipelined at-least-once: no linger, a decision leaves as soon as the sender
            # thread gets the interpreter. Otherwise every batch ends with flush() (or
            # commit_transaction), which sends at once; a long linger then keeps the sender
            # thread from draining half-built batches mid-loop, where each wakeup costs the
            # decision loop a GIL hand-off.
            "linger_ms": 0 if self._pipelined else 100,
            # Large batches: kafka-python wakes its sender thread per new batch, and each wakeup
            # costs a GIL hand-off; 1 MiB holds a whole poll batch of decisions per partition.
            "batch_size": 1 << 20,
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
            "compression_type": s.compression_type,
        }
        if s.exactly_once:
            # One per instance: a second instance with the same id fences the first.
            producer_cfg["transactional_id"] = self._transactional_id
            producer_cfg["transaction_timeout_ms"] = s.transaction_timeout_ms
            if not s.transactional_id and not s.group_instance_id:
                log.warning(  # (the settings named as given: `exactly_once: 1` in a file was
                    # said as --exactly-once, a QA pass)
                    "%s without %s or %s: every such instance uses transactional id \"%s\" and "
                    "fences the others; give each instance its own %s", s.named("exactly_once"),
                    s.named("group_instance_id"), s.named("transactional_id"),
                    producer_cfg["transactional_id"], s.named("group_instance_id"),
                )  # fmt: skip
        # not reached yet: an outage at the start showed no sample at all (a QA pass)
        self._broker_state(False)
        t0 = time.monotonic()
        waiting = say_if_slow(lambda: log.warning(  # (a start against a broker down said
            "no answer from Kafka yet: waiting up to %.0f s (--broker-timeout) "  # nothing
            'bootstrap="%s"', s.broker_timeout_s, s.bootstrap,  # for its timeout: a QA pass)
        ))  # fmt: skip
        try:
            # kafka-python bootstraps in the constructors: an unreachable broker fails here.
            with waiting as said, ClientErrors() as errors:
                n, stop = len(common["bootstrap_servers"]), lambda: self._stop
                self.consumer = errors.connect(
                    lambda: self._consumer_factory(**consumer_cfg), n, stop
                )
                self.producer = errors.connect(
                    lambda: self._producer_factory(**producer_cfg), n, stop
                )
                errors.connect(lambda: self.consumer.bootstrap(timeout_ms=timeout_ms), n, stop)
        except (KafkaError, OSError) as exc:
            raise unreachable(s, exc, errors) from exc
        if said.is_set():  # (the wait said: its end too)
            log.warning('Kafka answers after a wait seconds="%.0f"', time.monotonic() - t0)
        self._broker_state(True)
        if s.exactly_once:
            try:
                self.producer.init_transactions()
            except KafkaError as exc:  # (kafka-python 3.0 wraps the broker's error in a
                # KafkaError naming it: was exit 1 with that text, a QA pass)
                named = InvalidTransactionTimeoutError.__name__ in str(exc)
                if not isinstance(exc, InvalidTransactionTimeoutError) and not named:
                    raise
                refused = InvalidTransactionTimeoutError()
                raise self._refused(refused, "the transactional producer") from exc
        self._find_state_index()  # (before the restore: a snapshot is looked up there first)
        try:  # (once: not in a restore after a rebalance)
            self._input_id = self._topic_id()
        except (KafkaError, OSError) as exc:  # (the check is skipped: said)
            log.warning("the input topic's id could not be read (%s): a checkpoint of an "
                        "earlier topic of its name is not told apart", describe(exc))  # fmt: skip
        self._restore()
        self.aligner = Aligner(
            self.consumer, self._event_time, max_wait_s=s.align_wait_s,
            max_buffer=2 * s.max_poll_records,
            # a partition that is behind holds the others back through a broker outage (the
            # loop keeps polling): for as long as fds waits for the broker at all
            max_hold_s=s.broker_timeout_s,
            # one read to its end, while the next record would leave it further behind than
            # an event may come late and still be folded in (a file produced into a running
            # fds run: see the aligner)
            skew_s=getattr(self.engine.features, "grace", None),
        )  # fmt: skip
        self.consumer.subscribe([s.input_topic], listener=_Revoke(self))
        if s.labels_topic:
            self._connect_labels(s.labels_topic, timeout_ms)
        self._model_without_labels()
        topics = [
            ("input", s.input_topic, s.fix("input_topic")),
            ("output", s.output_topic, s.fix("output_topic")),
            ("dead-letter", s.dlq_topic, s.fix("dlq_topic")),
        ]
        if self.state_topic is not None:
            topics.append(("state", self.state_topic.topic, s.fix("state_topic")))
        for what, topic, fix in topics:
            if not partitions_of(self.consumer, topic):
                known = topics_of(self.consumer)
                raise no_topic(topic, s.bootstrap, fix, known, f"{what} topic")
        self._check_copartitioned()
        self._check_one_input()
        log.info(
            'consuming topic="%s" group="%s" exactly_once="%s" co_partitioned="%s" '
            'labels_topic="%s"',
            s.input_topic, s.group, s.exactly_once, self._copartitioned,
            s.labels_topic if self.labels is not None else "off",
        )  # fmt: skip
        self._broker_state(True)

    def _check_one_input(self) -> None:
        """Warn when the group has committed offsets of topics besides its input topic: one
        group given two input topics (restarted with another one, or another process of it
        reading another) went on without a word (a QA pass), though its decisions partitions
        then have two writers, whose marks and found decisions mix, and its state follows one
        topic. A warning, not a refusal: a group moved to a new input topic keeps the old
        topic's offsets until they expire. Not checked when the group's offsets cannot be
        listed (an ACL without Describe on the group: said at INFO)."""
        s = self.s
        if self._admin_factory is None:
            return
        try:
            admin = self._admin_factory(**s.client_config(), bootstrap_timeout_ms=s.timeout_ms)
            try:
                committed = admin.list_group_offsets({s.group: None}).get(s.group) or {}
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            # no coordinator (a group the broker has not seen, an offsets topic still being
            # made) or no such group: nothing to say at INFO, an error's name at every first
            # start read as a fault (a README walk); an outage is said by the calls that need it
            new = isinstance(exc, (CoordinatorNotAvailableError, GroupIdNotFoundError))
            log.log(logging.DEBUG if new else logging.INFO,
                    "which topics group %r has committed offsets of was not checked: %s",
                    s.group, describe(exc))  # fmt: skip
            return
        if others := sorted({tp.topic for tp in committed} - {s.input_topic}):
            log.warning(
                'group="%s" reads input topic "%s", and has committed offsets of %s too: a '
                "group reads one input topic (two share its decisions partitions, and a restart "
                "mixes their decisions). Another deployment reading %s: give each its own "
                "%s (and state dir). This group moved to \"%s\" for good: delete its offsets "
                "of the old topic (kafka-consumer-groups.sh --delete-offsets --group %s "
                "--topic %s), or let them expire",
                s.group, s.input_topic, ", ".join(map(repr, others)), " or ".join(others),
                s.named("group"), s.input_topic, s.group, others[0],
            )  # fmt: skip

    def _check_copartitioned(self) -> None:
        """Co-partitioned output: decisions of input partition p go to output partition p, the
        same place the default partitioner puts their card_id key when the counts are equal,
        without hashing every key again (murmur2 in pure Python is ~15 us per record). Checked
        again at every assignment: partitions added to the input while fds run ran made it
        send to an output partition that does not exist (a traceback: a QA pass)."""
        n_in = self.consumer.partitions_for_topic(self.s.input_topic)
        n_out = self.producer.partitions_for(self.s.output_topic)
        was = self._copartitioned
        self._copartitioned = bool(n_in) and bool(n_out) and len(n_in) == len(n_out)
        self._n_out = len(n_out or ())
        if n_in and n_out and not self._copartitioned and was is not False:  # (said once a
            # change: it was an INFO line's co_partitioned="False" alone, and a kill -9 then
            # wrote 5,000 duplicates where a topic of the input's count gave none, a QA pass)
            log.warning(
                'decisions topic="%s" has %d partitions, the input topic="%s" %d: the decisions '
                "of one input partition are spread over several, so after a crash those already "
                "written are not found again (decided again: duplicates); give the decisions "
                "topic the input's partition count (`fds kafka topics` makes them so)",
                self.s.output_topic, len(n_out), self.s.input_topic, len(n_in),
            )  # fmt: skip

    def _connect_labels(self, topic: str, timeout_ms: int) -> None:
        plan = self.engine.features
        # (read for a model stage too: without a label-aware feature, the flag given, contests
        # and the gate were switched off, said as "no --labels-topic": a QA pass)
        if plan is None or not (reads_labels(plan) or hasattr(self.engine.model, "on_label")):
            log.warning(
                'labels topic="%s" not read: %s', topic,
                "no feature plan reads them (--rules none)" if plan is None
                else "no feature is label-aware (fraud_count, fraud_rate) and no model stage",
            )  # fmt: skip
            return
        reader = self._reader(**self.s.reader_config(bootstrap_timeout_ms=timeout_ms))
        # The model stage judges its maturity gate and champion/challenger contests on them.
        self.labels = LabelFeed(
            reader, topic, plan, getattr(self.engine.model, "on_label", None),
            fix=f"{self.s.fix('labels_topic')} (or drop it)", ahead_s=self.s.max_event_ahead_s,
        )  # fmt: skip
        self.labels.skip_handed(self._handed)  # (restored before the feed was made)

    def _model_without_labels(self) -> None:
        """No label feed: tell the model stage (see ModelServer.without_labels)."""
        without_labels = getattr(self.engine.model, "without_labels", None)
        if self.labels is None and without_labels is not None:
            without_labels("with --rules none" if self.s.labels_topic else "no --labels-topic")

    def _read_to_end(self) -> bool:
        """Has every assigned input partition been read to its end (its high watermark, known
        once a fetch of it was answered)? An empty poll alone says nothing: after a start or a
        restore the group join uses up the first poll's time, and labels applied as if the
        input were idle then found the backlog's transactions unknown and were lost
        (unmatched) for good."""
        c = self.consumer
        assigned = c.assignment()
        if not assigned:
            return False
        for tp in assigned:
            hw = c.highwater(tp)
            if hw is None or fetched_to(c, tp, 0) < hw:
                return False
        return True

    def _apply_labels(self, idle: bool) -> None:
        """Apply the labels that arrived, up to where the input has been decided."""
        feed = self.labels
        if feed is None or self._unresolved:
            return
        input_ms = math.inf if idle else self._input_ms
        now = time.monotonic()
        try:
            if self._labels_due:
                if now < self._labels_retry_at:
                    return  # the topic could not be read: decisions go on without labels
                # a retry waits less long: each one holds the decisions back meanwhile
                timeout = (
                    self.s.broker_timeout_s if self._labels_retry_at < 0 else LABELS_RETRY_WAIT_S
                )
                feed.rewind(input_ms, timeout_s=timeout, stopping=lambda: self._stop)
                self._labels_due = False
                self._labels_retry_at = -math.inf
            feed.poll(input_ms)
            if feed.changed:  # (a label read again after a restore changes nothing)
                self.metrics.feature_labels(feed.changed)
                feed.changed = 0
        except (KafkaError, OSError, UnreadableRecords) as exc:  # decisions go on; labels are
            when = "at the next batch"  # tried again later
            if isinstance(exc, UnreadableRecords):  # (it stopped fds run, at every restart: a
                self._labels_due = True  # review) re-read from the horizon: a seek, not a poll
                # of the batch kafka-python keeps first in line (it would loop for ever)
            if self._labels_due:  # (not every batch: a re-read waits for the topic each time)
                self._labels_retry_at = now + LABELS_RETRY_S
                when = f"in {LABELS_RETRY_S:.0f} s"
            log.warning("labels topic: %s: %s (tried again %s)", type(exc).__name__, exc, when)

    def _event_time(self, msg: Any) -> tuple[float, Any]:
        return _event_time(msg, self.s.max_event_ahead_s)

    def _parsed(self, msg: Any) -> Mapping[str, Any] | None:
        """The valid transaction a record holds, or ``None`` (it was dead-lettered)."""
        tx = self._event_time(msg)[1]
        return None if tx.__class__ is _Bad else tx

    def _abandon(self) -> None:
        """The state may hold decisions past the committed offsets: commit nothing more and
        never take it for them (no checkpoint; the next assignment rebuilds it)."""
        self._unacked.clear()
        self._committable, self._to_commit = {}, {}
        self._positions.clear()
        self._left = None  # (which partitions it holds events of: no longer known)

    def _time_left(self) -> float:
        """Seconds left before the stop's deadline (``shutdown_timeout_s`` from the stop)."""
        if self._stop_by is None:
            self._stop_by = time.monotonic() + self.s.shutdown_timeout_s
        return max(0.1, self._stop_by - time.monotonic())

    def close(self) -> None:
        """Leave the group and close the clients, within the stop's deadline (at most
        GONE_CLOSE_S when the broker is known not to answer: nothing sent would be
        acknowledged, and the stop took 8.7 s of the 10 promised under load: a review)."""

        def left() -> float:
            t = self._time_left()
            return min(t, GONE_CLOSE_S) if self._broker_gone else t

        if self.labels is not None:
            self.labels.close()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close(autocommit=False, timeout_ms=int(left() * 500))
        if self.producer is not None:
            close_producer(self.producer, left() * 0.7)
        if self._state_producer is not None:
            close_producer(self._state_producer, left())
        if self._index_producer is not None:  # (its copies are not waited for long)
            close_producer(self._index_producer, min(left(), 1.0))

    def run(self, *, max_idle_s: float | None = None) -> RunStats:
        """Run until :meth:`stop` (or ``max_idle_s`` without input, for tests and benchmarks);
        a stall of the loop is logged (:meth:`Health.watching`)."""
        with self.health.watching():
            return self._run(max_idle_s)

    def _run(self, max_idle_s: float | None) -> RunStats:
        try:
            if self.checkpointer is not None:
                self.checkpointer.lock()
            try:
                self._connect()
            except Stopped as exc:  # (a SIGTERM waited out the broker timeout: a QA pass)
                log.info("%s", exc)
                return self.stats
            self._loop(max_idle_s)
            self._busy = "stopping: committing and leaving the group"  # (--max-idle, a stop)
            # One deadline for everything a stop does (shutdown_timeout_s < the 10 s promise),
            # from the signal, or from now when the loop ended for another reason.
            self._time_left()
            # The loop ends between batches: commit everything decided, then the state.
            self._settle(wait=True)
            self.checkpoint(force=True)
            for _ in range(2):  # the snapshot being sent, if any; then the final checkpoint
                self._publish_state(whole=True)
                if self._state_producer is not None:
                    with contextlib.suppress(KafkaError):
                        self._state_producer.flush(timeout=self._time_left() / 2)
        except BaseException as exc:
            # A failed send, commit or batch: nothing more is committed or checkpointed
            # (kafka-python's close() calls the revocation listener); the restart replays from
            # the last commit.
            self._broker_gone = isinstance(exc, BrokerUnavailable)
            self._abandon()
            if self.checkpointer is not None:  # a background write must not outlive us and
                self.checkpointer.cancel()  # land over a newer checkpoint after a restart
            raise
        finally:
            self._closing = True  # committed and checkpointed above, or must not be
            self.close()
            if self.checkpointer is not None:
                self.checkpointer.unlock()
                self._count_checkpoints()
            self._dlq_lines.flush()
            log.info(
                'stopped consumed="%d" decided="%d" dead_letters="%d" commits="%d"',
                self.stats.consumed, self.stats.decided, self.stats.dead_letters,
                self.stats.commits,
            )  # fmt: skip
        return self.stats

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self, max_idle_s: float | None) -> None:
        # What is alive now (libraries, model, restored state) and the state that grows later
        # are frozen out of the collector's full passes (60-400 ms pauses on the decision path
        # at 5,000 cards, seconds at a million): at the start and every FREEZE_EVERY events.
        fenced = FencedWatch(self.s.group_instance_id)
        kafka_log = logging.getLogger("kafka")
        kafka_log.addHandler(fenced)
        self._heartbeat_fenced = fenced
        try:
            with self._freezer:
                self._poll_loop(max_idle_s)
        finally:
            kafka_log.removeHandler(fenced)

    def _poll_loop(self, max_idle_s: float | None) -> None:
        s = self.s
        consumer = self.consumer
        aligner = self.aligner
        assert aligner is not None
        broker = BrokerWatch(self._probe, s.broker_timeout_s, lambda: (
            f"Kafka at {s.bootstrap} unreachable for {s.broker_timeout_s:.0f} s; exiting so a "
            f"supervisor can restart fds (offsets are committed up to {self._committed_up_to})"
        ))  # fmt: skip
        no_input = IdleTimer(max_idle_s, self._offsets_wait_s())
        health = self.health
        self._busy = None  # connected, the checkpoint loaded: the flags say the rest
        while not self._stop:
            idle_over = False
            try:
                batch = consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.max_poll_records)
            except FencedInstanceIdError as exc:  # polling again would fence the other one
                raise self._fenced("poll") from exc  # (they took turns, both deciding: a review)
            except _REFUSED as exc:  # the broker answers, and no retry changes its answer (it
                raise self._refused(exc) from exc  # was retried every 0.5 s for good: a QA)
            except UnreadableRecords as exc:  # (the side inputs read it again; the input stops)
                raise UnreadableRecords(
                    f"{exc}: fds run stops rather than skip it (its transactions would be "
                    "decided by no one); restore the partition, or move the group past the "
                    "batch with fds stopped (kafka-consumer-groups.sh --reset-offsets "
                    "--to-offset N --topic TOPIC:PARTITION --execute)"
                ) from exc
            except KafkaError as exc:  # counted against broker_timeout_s like a silent broker
                log.warning("poll failed: %s: %s", type(exc).__name__, exc)
                self._broker_state(False)
                time.sleep(0.5)  # back off instead of spinning while the broker is away
                batch = {}
            now = health.beat = time.monotonic()  # (the one store per pass: /healthz)
            if self._heartbeat_fenced.seen:  # before deciding what that poll fetched
                raise self._fenced("heartbeat")
            if batch:
                no_input.since = now
                broker.answered(now)
                aligner.add(batch)
                self._broker_state(True)  # (records came: it answers; the gauge stayed 0
                # after an outage, a review)
            if self._lost_ahead:
                self._back_after_loss()
            if self._evicted is not None and self._awaiting_rejoin(now):
                continue  # polls drive the rejoin; what they fetch waits in the aligner
            if self._unresolved:  # assigned in that poll: bring the state up to date first
                self._restore_assigned()
                # (the restore's wait is no idle time, and the clock read before it is stale:
                # a 15-s wait for a killed exactly-once instance's offsets ended a --max-idle
                # run as it returned, having decided nothing: a CI run)
                no_input.worked(now, after := time.monotonic())
                now = after
                if self._stop:  # a stop may have cut the restore short: decide nothing more
                    return
                if self._unresolved:  # a rebalance cut it short: again, before any decision
                    continue
            ready = aligner.take(s.max_poll_records, consumer.assignment())
            if self.labels is not None:
                idle = not ready and not batch and not len(aligner) and self._read_to_end()
                self._apply_labels(idle=idle)
            if ready:
                self._process(ready)
                # (deciding is no idle time, its waits for the broker neither: a batch held
                # 54 s for its acknowledgements after an outage ended a --max-idle run at the
                # next pass, the backlog undecided, a review)
                no_input.worked(now, time.monotonic())
                continue
            if self.labels is not None and self.labels.bad:
                # a bad label read while the input is idle: its dead letter is sent now (in a
                # batch of its own: a transaction under exactly-once), not with the next input
                self._process([])
                no_input.worked(now, after := time.monotonic())
                now = after
            if self._refold:  # (read past transaction markers only)
                self._refolds_done()
            # records held for a partition that is behind (up to --align-wait, or up to
            # --broker-timeout with nothing fetched): the batches decided before them are
            # committed on time all the same (they waited for the next batch decided)
            held = len(aligner) and (self._unacked or self._to_commit)
            if held and not self._settle_or_rejoin(wait=False):
                continue
            no_input.worked(now, after := time.monotonic())  # (that commit's wait, if any)
            now = after
            if batch:
                continue
            self._say_unpositioned(now)
            if not len(aligner):  # (else held back until a partition that is behind is fetched)
                idle_commit = self._unacked or self._committable  # idle: commit the decided
                if idle_commit and self._settle_or_rejoin(wait=True):
                    self.checkpoint()
                elif (
                    not idle_commit and self._live and not self._ahead
                    and self._positions != self._saved
                ):  # fmt: skip
                    self.checkpoint()  # one not due at that commit: once it is (not after a
                    # restore that decided nothing: it sent the whole state again, a review)
                # and to the state topic: an instance gone quiet had not checkpointed or not
                # published what it last decided, so its replacement rebuilt it all (a QA pass)
                self._publish_state()
                if time.perf_counter() - self._lag_at > LAG_EVERY_S:  # idle partitions' too
                    self._lag_at = time.perf_counter()
                    self._report()
                # a lull: the cycles kafka-python had alive at the freezes are collected
                # (fds.gcpolicy), in at most half the session timeout (heartbeats stay in time)
                self._freezer.idle(now - no_input.since, self.s.session_timeout_ms / 2000)
                # (a commit, checkpoint, publish or collection above may take seconds)
                no_input.worked(now, after := time.monotonic())
                idle_over = no_input.over(consumer, after)
            # Idle, or records held for a partition that is behind while nothing is fetched:
            # the broker may be gone (held records had skipped this: the aligner now holds them
            # through an outage, and fds run exited after twice the broker timeout)
            if broker.idle_ended(now, idle_over):
                return

    def _say_unpositioned(self, now: float) -> None:
        """Once per wait: assigned partitions without a position for WAIT_LOG_S (nothing was
        said while a taker waited a minute for a killed exactly-once instance's offsets)."""
        if positioned(self.consumer):
            self._unpositioned = None
        elif self._unpositioned is None:
            self._unpositioned = (now, False)
        elif not self._unpositioned[1] and now - self._unpositioned[0] > WAIT_LOG_S:
            self._unpositioned = (self._unpositioned[0], True)
            log.warning(
                "waiting for the committed offsets of the assigned partitions (a transaction a "
                "stopped instance left open holds them until the broker aborts it: "
                "transaction_timeout_ms; else the group coordinator is slow to answer)"
            )

    def _awaiting_rejoin(self, now: float) -> bool:
        """After a refused commit, until the group is rejoined (a rebalance was seen) or a
        session timeout has passed (a member the broker still knows)."""
        assert self._evicted is not None
        since, rebalances = self._evicted
        if self._rebalances == rebalances and now - since < self.s.session_timeout_ms / 1000:
            return True
        self._evicted = None
        return False

    def _probe(self, timeout_s: float) -> str | None:
        why = probe(self.consumer, self.s.input_topic, timeout_s)
        self._broker_state(why is None)
        return why

    def _process(self, batch: list[tuple[Any, Any, Any]]) -> None:
        """Decide ``batch`` (``(partition, record, parsed)`` in event-time order), send the
        decisions and dead letters, commit."""
        try:
            self._decide_batch(batch)
        except KafkaError as exc:  # (a send after a fence: kafka-python's "Cannot perform
            if self.s.exactly_once and _producer_fenced(exc):  # send ..." was all it said,
                raise self._taken("send") from exc  # a QA pass)
            if isinstance(exc, KafkaTimeoutError):  # a send that found no topic's metadata
                # for max_block_ms (a decisions topic deleted under fds run: a bare
                # "Failed to update metadata", no topic named, a QA pass)
                raise BrokerUnavailable(
                    f"a send of decisions failed ({describe(exc)}): do the topics fds run "
                    f"writes ({self._written}) exist, and is Kafka at {self.s.bootstrap} up? "
                    f"Offsets are committed up to {self._committed_up_to}; a restart goes on "
                    "from there"
                ) from exc
            raise

    def _decide_batch(self, batch: list[tuple[Any, Any, Any]]) -> None:
        s = self.s
        send = self.producer.send
        decide = self.engine.decide
        out_topic = s.output_topic
        headers = self._out_headers
        eos = s.exactly_once
        if eos:
            self.producer.begin_transaction()
            began = time.monotonic()
        nxt: dict[Any, int] = {}  # partition -> next offset, once this batch is committed
        pending = self._pending = []  # send futures: checked before the offsets move on
        self._bad_labels = []
        if self.labels is not None and self.labels.bad:  # sent with this batch (and its
            self._bad_labels = self.labels.take_bad()  # transaction): never outside one
            for msg, exc in self._bad_labels:
                self._dead_letter(msg, "label", exc)
        # Decisions are sent SEND_EVERY at a time: alternating engine and client code per
        # record took ~1.5x the CPU per record (cache locality; measured on a loaded machine),
        # while sending a whole batch at its end held a backlog's first decisions back until
        # its last was made.
        out: list[tuple[bytes, bytes, int | None]] = []
        last: dict[Any, Any] = {}  # decisions partition -> its last send of this batch
        copart, n_out = self._copartitioned, self._n_out
        found = self._found
        decided = 0
        refold = self._refold
        refolded: dict[Any, int] = {}  # partition -> its committed offset, folded below it
        folds = 0
        early = not refold  # (the fold empties refold as it goes)
        if early:  # counted before they are decided, as the decisions are one by one
            self.metrics.events_consumed("kafka", len(batch))  # (it trailed them: a QA pass)
        feed = self.labels
        due = feed.due if feed is not None else math.inf  # labels wait for this event time
        # labels waiting for their transaction (replaced between batches only)
        held_for, early_for = (feed.waiting, feed.early) if feed is not None else ({}, {})
        plan = self.engine.features
        tag = getattr(plan, "provenance", False)  # each event's input partition, recorded
        for tp, msg, tx in batch:
            if tag:
                plan.part = tp.partition  # type: ignore[union-attr]
            if len(out) >= SEND_EVERY:
                decided += len(out)
                for value, key, part in out:
                    last[part] = f = send(
                        out_topic, value=value, key=key, partition=part, headers=headers
                    )
                    pending.append(f)
                out.clear()
            if feed is not None and tx.__class__ is not _Bad and tx["ts"] > due:
                due = feed.release(tx["ts"])
            if refold and tp in refold:
                if msg.offset < refold[tp]:  # decided before: state only, offsets stay
                    refolded[tp] = refold[tp]
                    folds += 1
                    if tx.__class__ is not _Bad:
                        self._fold(tx)
                        if feed is not None and (
                            tx["tx_id"] in held_for or tx["tx_id"] in early_for
                        ):
                            feed.reached(tx["tx_id"])  # its labels count from then on
                            due = feed.due
                    # committed already: a checkpoint may say the state covers it
                    self._positions[tp.partition] = msg.offset + 1
                    continue
                del refold[tp]
            nxt[tp] = msg.offset + 1
            if tx.__class__ is _Bad:
                self._dead_letter(msg, tx.stage, tx.error)
                continue
            if found and tp in found:
                end, todo = found[tp]
                if msg.offset >= end:  # past what was there at the restart
                    del found[tp]
                elif tx["tx_id"] == todo[0][0]:  # its decision is out: state only
                    todo.popleft()
                    if not todo:
                        del found[tp]
                    self._fold(tx)
                    self.stats.found_decided += 1
                    if feed is not None and (tx["tx_id"] in held_for or tx["tx_id"] in early_for):
                        feed.reached(tx["tx_id"])
                        due = feed.due
                    continue
                # (else a record with no decision out, one a stage failed on: decided now)
            stage = "engine"
            try:
                decision = decide(tx)
                stage = "serialise"
                value = dumps(with_tx(decision, tx))
            except StageError as exc:
                self._dead_letter(msg, exc.stage, exc.cause if exc.cause else exc)
                continue
            except Exception as exc:  # any bug: never silently dropped
                self._dead_letter(msg, stage, exc)
                continue
            # keyed by card_id (the contract: the input's own key was kept, a QA pass), on the
            # input's partition number (one writer per decisions partition, in the order it
            # decided: hashing a key of another input placed them elsewhere, a review); by the
            # key where the output lacks that partition (metadata not yet refreshed)
            key = tx["card_id"].encode()
            if msg.key != key:
                self._keyed_otherwise(msg)
            out.append((value, key, tp.partition if copart and tp.partition < n_out else None))
            if feed is not None and (tx["tx_id"] in held_for or tx["tx_id"] in early_for):
                feed.reached(tx["tx_id"])  # its labels count from then on, in this batch too
                due = feed.due  # (outside the try: a label's failure is no decision's)
        if self.labels is not None and batch:  # how far the input has been decided (labels
            self._input_ms = max(self._input_ms, max(m.timestamp for _, m, _ in batch))  # wait)
        n = len(batch)
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in nxt.items()}
        for value, key, part in out:
            last[part] = f = send(out_topic, value=value, key=key, partition=part, headers=headers)
            pending.append(f)
        if refolded:
            n -= folds
            self._refolds_done()
            if eos:  # their committed offsets again: no transaction is ever empty
                offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in refolded.items()} | offsets
        self.stats.decided += decided + len(out)
        self.stats.consumed += n
        self.stats.batches += 1
        if not early:  # (what a fold read is no input consumed again)
            self.metrics.events_consumed("kafka", n)
        if batch:  # (a batch of a bad label's dead letter alone moved no input: a review)
            self._live = True  # the state moved on since it was restored
            self._ahead = True
        if not eos:
            # a partition still folding what was found: its commits name the first found
            # decision not folded yet, so that a restart or a takeover finds it again
            pins = {tp.partition: todo[0][1] for tp, (_, todo) in found.items()}
            bad = [m for m, _ in self._bad_labels]
            self._unacked.append(_Unacked(self.stats.batches, pending, offsets, last, pins, bad))
            # Backpressure waits for the oldest batches only: a flush and a blocking commit
            # (8-28 ms each on the benchmark) taken whenever three small batches of a light
            # load were in flight decided that load's p99.
            drain = not self._pipelined or self._checkpoint_due() or self._freezer.due(n)
            over = len(self._unacked) - s.max_unacked_batches
            if not drain and over > 0:
                for b in list(self._unacked)[:over]:
                    self._await(b)
            if self._settle_or_rejoin(wait=drain) and drain:
                self.checkpoint()
        else:
            t_commit = time.perf_counter()
            if offsets:
                try:
                    self._retrying(
                        "send_offsets_to_transaction",
                        lambda: self.producer.send_offsets_to_transaction(
                            offsets, self.consumer.group_metadata()
                        ),
                    )
                except CommitFailedError as exc:
                    self._abort_and_rewind(batch, exc)
                    return
            if self.stats.batches == self._kill_after_flush:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: an open transaction
            self._retrying(
                "commit_transaction", self.producer.commit_transaction, progress=self._acks
            )
            if (
                offsets
                and time.monotonic() - began > s.transaction_timeout_ms / 2000
                and not self._offsets_landed(offsets)
            ):
                self._rewind_batch(batch, "the transaction the broker aborted on its timeout")
                return
            self.stats.commits += 1
            self.metrics.commit_time(time.perf_counter() - t_commit)
            if self._bad_labels and self.labels is not None:  # (their dead letters in it)
                self.labels.confirm([m for m, _ in self._bad_labels])
            # Committed: the state now covers exactly the input up to these offsets.
            self._positions.update({tp.partition: o for tp, o in nxt.items()})
            self._ahead = False
            self.checkpoint()
        self._freezer.tick(n)  # due only right after a drain: no send in flight
        self._publish_state()
        now = time.perf_counter()
        self._decided.update(nxt)
        if now - self._lag_at > LAG_EVERY_S:
            self._lag_at = now
            self._report()

    def _stalled(self, idle_s: float) -> None:
        """A restore's read (``read_merged``) that got nothing for ``STALL_S`` asks the broker,
        so that ``fds_broker_reachable`` and /readyz say an outage during a restore (they said
        1 and "restoring the state" until the broker timeout ended the run: a QA pass); a read
        that moves again says it is back."""
        if not idle_s:
            if self._broker_up is False:
                self._broker_state(True)
            return
        now = time.monotonic()
        if idle_s >= STALL_S and now >= self._stall_probe_at:
            self._stall_probe_at = now + STALL_S
            why = self._probe(STALL_PROBE_S)
            if why is not None:  # (the probe said it itself before)
                log.warning("no answer from Kafka while restoring the state (nothing read "
                            "for %.0f s): %s", idle_s, why)  # fmt: skip

    def _broker_state(self, up: bool) -> None:
        """``fds_broker_reachable``, set when it changes."""
        if up is not self._broker_up:
            self._broker_up = up
            self.metrics.broker_reachable(up)

    def _refolds_done(self) -> None:
        """Note the partitions whose records below their committed offset are all folded
        (nothing of them buffered, and read up to it): the state covers them up to it."""
        aligner = self.aligner
        for tp, c in list(self._refold.items()):
            if (aligner is None or aligner.first(tp) is None) and fetched_to(
                self.consumer, tp, 0
            ) >= c:
                del self._refold[tp]
                self._positions[tp.partition] = c

    def _fold(self, tx: Mapping[str, Any]) -> None:
        self.stats.caught_up += 1
        with contextlib.suppress(Exception):  # it was dead-lettered when first decided
            self.engine.fold(tx)
        if self._fold_delay:
            time.sleep(self._fold_delay)

    def _on_assigned(self, assigned: Any) -> None:
        """Note the new assignment; the state is brought up to date before its first batch
        (the group consumer itself starts at the committed offsets)."""
        mine = {tp.partition for tp in assigned if tp.topic == self.s.input_topic}
        self._unresolved = set(mine)  # (before the flags /readyz reads as "joined")
        self._n_assigned = len(mine)
        self._rebalances += 1
        self._joining = False
        for p in self._lag_shown - mine:  # a series of a partition owned no more
            self.metrics.forget_partition(p)
        self._lag_shown &= mine
        # (a partition kept is caught up from where its fold stands, not rebuilt: see
        # _bring_up_to_date; the restore before the next batch says what is left to fold)
        self._refold = {tp: c for tp, c in self._refold.items() if tp.partition in mine}
        # Eager assignment (kafka-python's default): ``assigned`` is the whole new assignment.
        self._follow_only(mine)

    def _follow_only(self, partitions: set[int]) -> None:
        """Forget the positions of partitions not in ``partitions``: the state no longer
        follows them, so no checkpoint may claim one (a restart would catch such a partition
        up from an old position, on top of a state that went on without it)."""
        wm = getattr(self.engine.features, "watermark", -math.inf)
        for p in [p for p in self._positions if p not in partitions]:
            if self._left is not None:
                self._left[p] = (wm, self._positions[p])
            del self._positions[p]

    def _restore_assigned(self) -> None:
        """Bring the state up to the committed offsets of the assigned partitions, before the
        first batch after an assignment is decided."""
        parts = self._unresolved
        if not parts:
            return
        # (busy before the partitions leave _unresolved: /readyz never says ready between)
        self._busy = f"restoring the state of partitions {sorted(parts)}"
        self._unresolved = set()
        try:
            if self._copartitioned:
                self._check_copartitioned()
            self._restore_partitions([TopicPartition(self.s.input_topic, p) for p in sorted(parts)])
        finally:
            self._busy = None
        self._share_budget(len(parts))

    def _share_budget(self, assigned: int) -> None:
        """Tell the policy the share of the input's partitions this instance decides now (with
        ``alert_budget_scope: group`` its alert budget is that share of the group's: a lost
        instance's share moves with its partitions, and the group reviews what its analysts
        can handle whatever the number of instances)."""
        policy: Any = self.engine.policy
        if getattr(policy, "budget", None) is None or policy.budget_scope != "group":
            return
        try:  # (the subscribed topic's metadata is at hand: no request, normally)
            total = len(self.consumer.partitions_for_topic(self.s.input_topic) or ())
        except KafkaError as exc:  # the share stays as it was until the next assignment
            log.warning("alert budget share not updated: %s", describe(exc))
            return
        if not total:
            return
        policy.share(assigned / total)
        log.info(
            'alert budget of the group: this instance holds %d of %d partitions, its share '
            'budget_per_day="%d"', assigned, total, policy.budget.budget,
        )  # fmt: skip

    def _restore_partitions(self, tps: list[Any]) -> None:
        """:meth:`_restore_assigned` for the partitions ``tps``."""
        if self.checkpointer is not None:
            covered = self._bring_up_to_date(tps)
            if self._unresolved or self._stop:
                return
            # The group consumer goes on from what the state covers (the committed offsets, or
            # where a fold stopped: _refold). kafka-python keeps the position of a partition
            # that stays assigned across a rebalance, or that a refused commit rewound
            # (_rewind_batch, _settle_or_rejoin), and it may be behind the committed offset
            # (a partition being folded) or past it (an asynchronous commit at a revocation
            # that did not land): records decided twice, or neither decided nor folded.
            self._resume_from(covered)
        else:  # (as _bring_up_to_date does: a QA pass found no word without a state dir; the
            # wait for a killed exactly-once instance's transaction, in a silent call here,
            # ended a --max-idle run as idle. Errors go on, as they do there: swallowed, a
            # rename's failed takeover was followed by the start commit, for good: a review)
            committed = self._committed_offsets(tps)
            new = [tp for tp, o in committed.items() if o is None]
            what = "the partitions assigned (a rename, no state dir)"
            adopted = self._adopt_commits(new, what)
            self._resume_from(adopted)
            new = [tp for tp in new if tp not in adopted]
            if new and self.s.auto_offset_reset == "earliest":
                self._say_decided_from_start(new)
        if not self.s.exactly_once and not self._joining:  # (a restore a revocation cut short:
            self._find_decided(tps)  # the partitions are restored again once assigned)

    def _find_decided(self, tps: list[Any]) -> None:
        """At-least-once: find the decisions already out for records past the committed
        offsets of ``tps`` (made before a crash, or by an instance that held the partition
        before and stopped without committing them), so that those records are folded into
        the state rather than decided again (``_found``). Where they start is the commit's
        metadata (DECIDED_MARK): a commit made otherwise (an offset reset by an operator's
        tool, an earlier release) finds nothing, and its records are decided again."""
        self._found = {}
        ms = self.s.timeout_ms
        committed = self._retrying(
            "reading the committed offsets",
            lambda: {tp: self.consumer.committed(tp, metadata=True, timeout_ms=ms) for tp in tps},
        )
        self._commit_start([tp for tp, om in committed.items() if om is None])
        if not self._copartitioned:  # (decisions placed by key: nothing to look up)
            return
        starts: dict[Any, int] = {}  # decisions partition -> where the records past start
        for tp, om in committed.items():
            meta = getattr(om, "metadata", None) or ""
            at = meta.removeprefix(DECIDED_MARK)
            if at != meta and at.isdigit():
                starts[TopicPartition(self.s.output_topic, tp.partition)] = int(at)
        if not starts:  # (no commit of ours: nothing to look up, no reader made)
            return
        outs = [TopicPartition(self.s.output_topic, tp.partition) for tp in tps]
        # (a mark below the log start after retention: read from the start, not the end)
        reader = self._reader(**self.s.reader_config(auto_offset_reset="earliest"))
        by_part: dict[int, deque[tuple[str, int]]] = {}
        # (a renamed group's: the old group's decisions past the marks it took over are its own)
        mine = [g.encode() for g in (self.s.group, self.s.adopt_state_of) if g]
        others: Counter[bytes] = Counter()
        try:
            ends = reader.end_offsets(outs + tps)
            self._out_next.update({o.partition: ends[o] for o in outs})
            ranges = {o: (a, ends[o]) for o, a in starts.items() if a < ends[o]}
            wait = min(self.s.broker_timeout_s, FIND_TIMEOUT_S)
            merged = read_merged(reader, ranges, lambda m: _decided_id(m, mine, others),
                                 timeout_s=wait, stop=lambda: self._stop)  # fmt: skip
            for d in _until_stopped(merged):
                by_part.setdefault(d["p"], deque()).append((d["tx_id"], d["o"]))
        except (KafkaError, FdsError) as exc:  # (a Write-only ACL, a broker that stalls, ...)
            log.warning(
                'reading the decisions topic "%s" failed: %s; the records past the committed '
                "offsets are decided again (duplicates of what was out); fds run needs Read "
                "on it to avoid that", self.s.output_topic, describe(exc),
            )  # fmt: skip
            return
        finally:
            with contextlib.suppress(Exception):
                reader.close()
        self._found = {tp: (ends[tp], by_part[p]) for tp in tps if (p := tp.partition) in by_part}
        if others:
            log.warning(
                'the decisions topic "%s" holds decisions of other groups past this group\'s '
                "committed offsets (%s): not taken as this group's; a decisions topic belongs "
                "to one group: give each group its own %s",
                self.s.output_topic, ", ".join(f"{n} of group {g.decode(errors='replace')!r}"
                                               for g, n in others.items()),
                self.s.named("output_topic"),
            )  # fmt: skip
        if self._found:
            log.info(
                "decisions made before a stop, past the committed offsets, found (their "
                'records are folded, not decided again) records="%d" partitions="%s"',
                sum(len(q) for _, q in self._found.values()), sorted(by_part),
            )  # fmt: skip

    def _commit_start(self, tps: list[Any]) -> None:
        """At-least-once: commit where partitions ``tps`` with no committed offset (a new
        group's) start, with the decisions topic's end as their mark (DECIDED_MARK). A stop
        before the first batch's commit landed found no mark: its decisions were made again
        (duplicates differing in decided_at, a CI run), and with ``auto_offset_reset: latest``
        the records that came meanwhile were never decided."""
        if not tps:
            return
        ms = self.s.timeout_ms
        try:
            starts = {tp: self._next_offset(tp, ms) for tp in tps}
            if unknown := sorted(tp.partition for tp, at in starts.items() if at is None):
                raise FdsError(f"no position of partitions {unknown} within {ms} ms")
            marks: dict[int, int] = {}
            if self._copartitioned:
                outs = [TopicPartition(self.s.output_topic, tp.partition) for tp in tps]
                ends = self._retrying(
                    "reading the log ends", lambda: self.consumer.end_offsets(outs, timeout_ms=ms)
                )
                marks = {o.partition: end for o, end in ends.items()}
            offsets = {
                tp: OffsetAndMetadata(at, f"{DECIDED_MARK}{marks.get(tp.partition, '')}", -1)
                for tp, at in starts.items()
            }
            self._retrying("commit", lambda: self.consumer.commit(offsets, timeout_ms=ms))
        except (KafkaError, FdsError) as exc:
            log.warning(
                "where partitions %s start was not committed: %s; unless a rebalance moved "
                "them (their next owner commits it), a stop before their first commit decides "
                "their first records again",
                sorted(tp.partition for tp in tps), describe(exc),
            )  # fmt: skip
            return
        # (the marks where the next commits start from: a first batch with no decision for a
        # partition, all dead letters, committed it without one: a review)
        self._out_next.update(marks)
        self._positions.update({tp.partition: at for tp, at in starts.items()})
        self._pos_marks.update({tp.partition: (at, marks[tp.partition]) for tp, at in
                                starts.items() if tp.partition in marks})  # fmt: skip
        # the state covers them: checkpointed at once (a restart before the first checkpoint
        # found them committed and not covered, and rebuilt the whole feature horizon: a QA)
        self.checkpoint(force=True)

    def _offsets_wait_s(self) -> float:
        """How long committed offsets are waited for (exactly-once: a killed instance's open
        transaction holds them until the broker aborts it)."""
        if self.s.exactly_once:
            return max(self.s.broker_timeout_s, self.s.transaction_timeout_ms / 1000 + WAIT_LOG_S)
        return self.s.broker_timeout_s

    def _complete_ahead(self, committed: dict[Any, int | None]) -> dict[Any, int | None]:
        """At-least-once: commit where the state stands the partitions it covers past their
        committed offsets. The commit a revocation queues is asynchronous (the listener may
        not block) and the checkpoint after it assumes it lands; killed before it did, or
        refused by a coordinator that moved, the checkpoint was ahead, and the restart rebuilt
        every partition from the feature horizon (a review). Every record it covers was
        decided and acknowledged before that commit was queued, so it is committed now, with
        its DECIDED_MARK where known. Only over a commit of fds's own (its mark, with or without
        a number): offsets
        an operator reset lower are left to the rebuild that decides from them."""
        pos = self._positions
        ahead = [tp for tp, c in committed.items()
                 if c is not None and c < pos.get(tp.partition, c)]  # fmt: skip
        if not ahead:
            return committed
        ms = self.s.timeout_ms
        metas = self._retrying(
            "reading the committed offsets",
            lambda: {tp: self.consumer.committed(tp, metadata=True, timeout_ms=ms) for tp in ahead},
        )
        known = self._pos_marks if self._copartitioned else {}
        offsets = {}
        for tp, om in metas.items():
            if om is None or not (om.metadata or "").startswith(DECIDED_MARK):
                continue
            at, mark = pos[tp.partition], known.get(tp.partition)
            meta = f"{DECIDED_MARK}{mark[1] if mark is not None and mark[0] == at else ''}"
            offsets[tp] = OffsetAndMetadata(at, meta, -1)
        if not offsets:
            return committed
        log.warning(
            "the state covers partitions %s past their committed offsets %s (the commit queued "
            "at a revocation did not land before a stop): their records were decided and "
            "acknowledged, committed now where the state stands %s",
            sorted(tp.partition for tp in offsets),
            {tp.partition: committed[tp] for tp in sorted(offsets)},
            {tp.partition: om.offset for tp, om in sorted(offsets.items())},
        )  # fmt: skip
        self._retrying("commit", lambda: self.consumer.commit(offsets, timeout_ms=ms))
        return {**committed, **{tp: om.offset for tp, om in offsets.items()}}

    def _committed_offsets(self, tps: list[Any]) -> dict[Any, int | None]:
        """The group's committed offsets of ``tps``, waited for and logged while they do not
        come. Exactly-once: a transaction a killed instance left open holds its offsets back
        until the broker aborts it (transaction_timeout_ms): waited for, not given up on."""
        wait_s = self._offsets_wait_s()
        timeout_ms = int(wait_s * 1000)  # kafka-python: no limit by default
        return self._retrying(
            "reading the committed offsets"
            + (
                " (a transaction a stopped instance left open holds them until the broker aborts "
                "it: transaction_timeout_ms)"
                if self.s.exactly_once
                else ""
            ),
            lambda: {tp: self.consumer.committed(tp, timeout_ms=timeout_ms) for tp in tps},
            wait_s,
            held=self.s.exactly_once,
        )

    def _adopt_commits(self, tps: list[Any], what: str) -> dict[Any, int]:
        """A rename (``adopt_state_of``): partitions ``tps``, with no committed offset of this
        group, go on from the old group's commits, committed as this group's with their marks
        (from auto_offset_reset, the whole log was decided again, or skipped: a review; and
        without a state dir the flag was not read at all: a QA pass). Returns the offsets
        taken over."""
        adopted = self._adopted_offsets(tps) if tps and self.s.adopt_state_of else {}
        if not adopted:
            return {}
        ms = self.s.timeout_ms
        self._retrying("commit", lambda: self.consumer.commit(adopted, timeout_ms=ms))
        log.info(
            'group="%s" takes over the committed offsets of group="%s" %s of %s',
            self.s.group, self.s.adopt_state_of,
            {tp.partition: om.offset for tp, om in sorted(adopted.items())}, what,
        )  # fmt: skip
        return {tp: om.offset for tp, om in adopted.items()}

    def _adopted_offsets(self, tps: list[Any]) -> dict[Any, Any]:
        """The offsets (with their metadata) the group named by ``adopt_state_of`` committed
        for ``tps`` (``{}``: none adopted, or it has none). The renamed group has none of its
        own: from the offsets its state covers alone, it decided again what the old group
        decided after its last checkpoint."""
        old = self.s.adopt_state_of
        if not old:
            return {}
        reader = self._reader(**self.s.reader_config(old))  # (its offsets read, never joined)
        ms = self.s.timeout_ms
        try:
            got = self._retrying(
                f"reading the committed offsets of group {old!r}",
                lambda: {tp: reader.committed(tp, metadata=True, timeout_ms=ms) for tp in tps},
            )
        finally:
            with contextlib.suppress(Exception):
                reader.close()
        return {tp: om for tp, om in got.items() if om is not None}

    def _bring_up_to_date(self, tps: list[Any]) -> dict[Any, int | None]:
        """Fold what the group decided below its committed offsets into the state (state only,
        no output), so that deciding resumes exactly where the group left off. Returns the
        offset the state covers of each partition: the committed one, or, for a partition
        ahead in event time of one still to decide, where its fold stopped (the rest is
        folded as the loop decides: ``_refold``).

        * the state follows every partition up to its committed offset: nothing to do;
        * a restart from a checkpoint behind the committed offsets: fold each partition's gap
          on top of the checkpoint ("catch-up"), all partitions merged in event time;
        * a partition the state has not followed (no checkpoint, moved here from another
          instance, or taken back after a while): start from an empty state and fold every
          assigned partition from the feature horizon ("rebuild"), merged in event time.
        """
        committed = self._committed_offsets(tps)
        pos = self._positions
        # A partition the state follows but the group has no offset for (the group deleted,
        # its offsets expired after offsets.retention.minutes): resumed from where the state
        # stands, so nothing is decided twice or skipped (taken as it was, every record of the
        # log was decided again on a state that held it: features counted twice; from the
        # consumer's auto_offset_reset, the whole retained log would be decided again or
        # folded without a decision: a review).
        gone = {tp: pos[tp.partition] for tp, c in committed.items()
                if c is None and tp.partition in pos}  # fmt: skip
        if gone:
            starts = self._retrying(
                "reading the log starts", lambda: self.consumer.beginning_offsets(list(gone))
            )
            gone = {tp: max(o, starts[tp]) for tp, o in gone.items()}  # (retention passed it)
            # A rename: the adopted group's commits, which the state may lag (folded on top,
            # as at a restart), with their marks (its decisions past them are found).
            marks = {tp: om for tp, om in self._adopted_offsets(list(gone)).items()
                     if om.offset >= gone[tp]}  # fmt: skip
            gone.update((tp, om.offset) for tp, om in marks.items())
            if marks:
                log.info(
                    'group="%s" takes over the committed offsets of group="%s" %s (a rename)',
                    self.s.group, self.s.adopt_state_of,
                    {tp.partition: o for tp, o in sorted(gone.items())},
                )  # fmt: skip
            # The state's own offsets are committed with the mark where the decisions past
            # them start, as its checkpoint has it: at-least-once, those made since (before a
            # crash) are then found and their records folded, not decided again.
            known = self._pos_marks if self._copartitioned else {}
            ours = {
                tp: OffsetAndMetadata(o, f"{DECIDED_MARK}{known[tp.partition][1]}", -1)
                for tp, o in gone.items()
                if tp not in marks and known.get(tp.partition, (None,))[0] == o
            }
            if len(marks) < len(gone):
                found = not self.s.exactly_once and len(ours) == len(gone) - len(marks)
                log.warning(
                    "no committed offset for partitions %s (the group was deleted or its "
                    "offsets expired): resumed from the offsets the state covers %s, committed "
                    "for the group; %s; to decide the topic again from its start, start with "
                    "an empty --state-dir and no --state-topic (its snapshot would be restored)",
                    sorted(tp.partition for tp in gone if tp not in marks),
                    {tp.partition: o for tp, o in gone.items() if tp not in marks},
                    "the decisions made past them since the checkpoint are looked for on the "
                    "decisions topic, and their records folded, not decided again" if found else
                    "the records decided past them since the checkpoint are decided again "
                    "(duplicates of those decisions)",
                )  # fmt: skip
            marks.update(ours)
            # Committed at once: a partition that stays idle and moves to another instance
            # would start there at auto_offset_reset, the whole log decided again (a review).
            self._retrying(
                "commit",
                lambda: self.consumer.commit(
                    {
                        tp: marks.get(tp) or OffsetAndMetadata(o, DECIDED_MARK, -1)
                        for tp, o in gone.items()
                    },
                    timeout_ms=self.s.timeout_ms,
                ),
            )
            committed = {**committed, **gone}
        if not self.s.exactly_once:
            committed = self._complete_ahead(committed)
        new = [tp for tp, c in committed.items() if c is None and tp.partition not in pos]
        # a rename: partitions another instance of the old group held (its state is not here:
        # rebuilt, as a partition moved here is)
        what = "partitions its state does not follow (a rename; rebuilt as moved here)"
        adopted = self._adopt_commits(new, what)
        committed = {**committed, **adopted}
        new = [tp for tp in new if tp not in adopted]
        if new and self.s.auto_offset_reset == "earliest":
            self._say_decided_from_start(new)
        behind = {
            tp: c for tp, c in committed.items() if c is not None and c != pos.get(tp.partition)
        }
        if not behind:
            return committed
        # The state follows each partition behind up to its position: a catch-up from there
        # is exact unless the state decided input since its restore (it may then lack what
        # another instance decided meanwhile), but for a partition it was still folding up to
        # that same committed offset (_refold, held since)
        own = self._refold
        restart = all(
            tp.partition in pos and pos[tp.partition] <= c and (not self._live or own.get(tp) == c)
            for tp, c in behind.items()
        )
        if not restart and not self._rebuild:  # such partitions start from the state as it is
            pos.update({tp.partition: c for tp, c in behind.items()})
            self._refold = {}
            return committed
        alone = None if restart else self._moved_alone(behind)
        scratch: Any = None  # the plan the moved partitions are rebuilt into (alone)
        plan: Any = self.engine.features  # what fold_features folds into (alone: scratch)
        fold = self._fold
        nexts: dict[Any, float] = {}  # alone: event time of each partition's next record
        taken: dict[Any, int] = {}  # alone: the partitions taken over from snapshots
        cuts: list[tuple[Any, dict[Any, int]]] = []  # alone: their state, per instance
        donor: tuple[str, dict[str, Any], float] | None = None  # alone: whose state to adopt
        at: dict[str, Any] = {}  # partition and offset of the record folded (read_merged)
        tail: dict[Any, int] = {}  # a rebuild: where the records for the whole engine start

        def fold_features(tx: Mapping[str, Any]) -> None:  # into ``plan``: features only
            self.stats.caught_up += 1
            with contextlib.suppress(Exception):  # (dead-lettered when first decided)
                plan.folding = True  # (what its cap evicts is no decision of this instance)
                try:
                    plan.compute(tx)
                finally:
                    plan.folding = False
            if self._fold_delay:
                time.sleep(self._fold_delay)

        def fold_rebuild(tx: Mapping[str, Any]) -> None:
            if at["offset"] < tail[at["tp"]]:
                fold_features(tx)
            else:
                self._fold(tx)

        t0 = time.monotonic()
        reader = self._reader(  # (read_committed, as the input is read)
            **self.s.reader_config(auto_offset_reset="earliest")  # never skip to the end
        )  # (kafka-python's default: "latest")
        try:
            begin = self._retrying("reading the log starts", lambda: reader.beginning_offsets(tps))
            end = self._retrying("reading the log ends", lambda: reader.end_offsets(tps))
            # Partitions with records still to decide: the fold stops at the event time of the
            # one furthest behind (fds.streams.rebuild). An EOS partition whose last record is
            # followed by a transaction marker counts too: the rest is then folded as it goes.
            # (a partition without a committed offset under auto_offset_reset: latest has
            # none: its records are not decided, and their times made it look far behind, a
            # review)
            earliest = self.s.auto_offset_reset == "earliest"
            hold = [tp for tp in tps if end[tp] > max(committed[tp] or 0, begin[tp])
                    and (earliest or committed[tp] is not None)]  # fmt: skip
            if alone is not None:  # (peeked before the moved partitions' horizon is read)
                nexts = self._next_times(hold, committed, begin, end)
                if self._merged_late({tp: t for tp, t in nexts.items() if tp in alone}, None):
                    alone = None
            if alone is not None:
                scratch, moving = plan.fresh(), alone
                # (counted back from the earliest of the moved partitions' last decisions and
                # the state's event time, not from now: see start_offsets)
                wm = plan.watermark if math.isfinite(plan.watermark) else math.inf
                last_s = min(self._decided_at({tp: behind[tp] for tp in moving}), wm)
                starts = self._retrying(
                    "locating the feature horizon",
                    lambda: start_offsets(reader, moving, horizon_seconds(self.engine),
                                          "the state rebuild", at_s=last_s),
                )  # fmt: skip
                # (a snapshot of a partition held here before is taken from its horizon on:
                # this instance's entries of it are dropped, not folded on from where it left)
                cuts, donor = self._take_over(
                    scratch, alone, {tp: (starts[tp], behind[tp]) for tp in alone}, nexts
                )
                taken = {tp: o for _, covered in cuts for tp, o in covered.items()}
                moved = {tp: (max(starts[tp], o), behind[tp]) for tp, o in alone.items()}
                moved.update((tp, (o, behind[tp])) for tp, o in taken.items())
                ahead = max((cut for cut, _ in cuts), key=lambda c: c.watermark, default=None)
                if ahead is not None and self._merged_late(nexts, ahead):  # (a fold can only
                    alone = None  # move event time on: every partition rebuilt, without them)
                elif not taken and not pos:  # an empty state that no snapshot fills: rebuilt
                    alone = None  # whole, its last days through the whole engine (below)
            if restart:
                what = "catch-up"
                ranges = {tp: (max(pos[tp.partition], begin[tp]), c) for tp, c in behind.items()}
                for tp in behind:
                    if pos[tp.partition] < begin[tp]:
                        log.warning(
                            "catch-up: %d records of %s[%d] are past the topic's retention; "
                            "the state lacks them", begin[tp] - pos[tp.partition], tp.topic,
                            tp.partition,
                        )  # fmt: skip
            elif alone is not None:
                # (every one taken over: only the records since their snapshots are folded)
                what = "rebuild of the partitions moved here" if len(taken) < len(moved) else (
                    "catch-up of the partitions taken over"
                )  # fmt: skip
                ranges = moved
                fold, hold = fold_features, []  # (each folded whole: _merge_moved checks)
                # The partitions no snapshot gave are folded into ``scratch`` from their
                # horizon (or from where they were left), each instance's cut on its own, in
                # its own event time; the cuts are merged into ``scratch`` after (below).
                jobs = [(scratch, {tp: r for tp, r in moved.items() if tp not in taken})]
                jobs += [(cut, {tp: moved[tp] for tp in covered}) for cut, covered in cuts]
            else:
                what = "rebuild"
                self._left = {}
                # (the model's gate and contests are not built from the input: they stay as
                # they are, as in _restart_restore; with the start's, an open gate closed; nor
                # are the versions served and the demotions: kept, a QA pass)
                fresh = {**pickle.loads(self._fresh_state), **self.engine.history()}
                self.engine.load_state_dict(_without_model(fresh))
                pos.clear()
                horizon = horizon_seconds(self.engine)
                last_s = self._decided_at(committed)  # (see start_offsets: not from now)
                starts = self._retrying(
                    "locating the feature horizon",
                    lambda: start_offsets(reader, tps, horizon, "the state rebuild", at_s=last_s),
                )
                ranges = {tp: (starts[tp], c) for tp, c in committed.items() if c is not None}
                if plan is not None and horizon > STAGES_TAIL_S:
                    tail = self._retrying(
                        "locating the rebuild's tail",
                        lambda: start_offsets(reader, tps, STAGES_TAIL_S, at_s=last_s),
                    )
                    fold = fold_rebuild
            if alone is None:
                jobs = [(plan, ranges)]
            reached: dict[Any, int] = {}
            folded = self.stats.caught_up
            rebalances = self._rebalances
            answer_at = time.monotonic() + KEEPALIVE_S
            self._restoring = True
            lag_at = 0.0
            # (a rebuild of 200,000 records said nothing until its end, and its metrics did not
            # move: an operator could not see it go, a QA pass)
            todo = sum(max(0, c - a) for a, c in ranges.values())
            self._busy = (
                f"restoring the state ({what}): partitions {sorted(tp.partition for tp in ranges)}"
            )
            log.info(
                '%s started (state only, no output) partitions="%s" records="%d"',
                what, sorted(tp.partition for tp in ranges), todo,
            )  # fmt: skip
            said_at = time.monotonic() + PROGRESS_EVERY_S
            i = -1
            for plan, job in jobs:  # (``plan``: what fold_features folds into)
                tag = getattr(plan, "provenance", False)
                merged = read_merged(
                    reader, job, self._parsed, timeout_s=self.s.broker_timeout_s, hold=hold,
                    reached=reached, positions=at, stop=lambda: self._stop,
                    stalled=self._stalled,
                )  # fmt: skip
                for tx in _until_stopped(merged, mark=True):
                    i += 1
                    if self._stop:  # SIGTERM mid-way: the state is partial, none of it kept
                        pos.clear()
                        log.info("%s interrupted by a stop; the next start does it again", what)
                        return committed
                    if tag:  # (the scratch plan's, or the engine's: both are set)
                        plan.part = self.engine.features.part = at["tp"].partition  # type: ignore[union-attr]
                    fold(tx)
                    if not i & 255 and time.monotonic() >= lag_at:
                        self.health.beat = time.monotonic()  # a restore that advances is live
                        lag_at = self.health.beat + LAG_EVERY_S
                        self._report_restoring(reader, committed, end)
                        if lag_at >= said_at:
                            said_at = lag_at + PROGRESS_EVERY_S
                            log.info(
                                '%s progress records="%d" of="%d" done="%.0f%%"',
                                what, i + 1, todo, 100.0 * (i + 1) / max(todo, 1),
                            )  # fmt: skip
                    if self._rebuild and not i & 255 and time.monotonic() >= answer_at:
                        self._keep_alive()
                        answer_at = time.monotonic() + KEEPALIVE_S
                        if self._rebalances != rebalances:
                            self._restart_restore(f"{what} interrupted by a rebalance")
                            return committed
        finally:
            self._restoring = False
            with contextlib.suppress(Exception):
                reader.close()
        if alone is not None:
            for cut, _ in cuts:  # (each folded on its own, to its partitions' committed offsets)
                scratch.absorb(cut)
            if not self._merge_moved(scratch, alone, nexts, taken):
                return self._bring_up_to_date(tps)  # (now a rebuild of every partition)
            if donor is not None and not pos:  # an empty state (a scale-out, a new id)
                self._adopt(*donor, own_gate=self._emptied)
        pos.update({tp.partition: c for tp, c in committed.items() if c is not None})
        # What the fold left (past the event time of a partition behind) is folded as the loop
        # decides, merged with it in event time (_process); the state covers up to where it
        # stopped, and the group consumer goes back there.
        refold = {tp: c for tp, (_, c) in ranges.items() if reached[tp] < c}
        pos.update({tp.partition: reached[tp] for tp in refold})
        parts, records = sorted(tp.partition for tp in alone or tps), self.stats.caught_up - folded
        seconds = round(time.monotonic() - t0, 1)
        log.info(  # (the pairs unquoted in the text, which scripts read: bench_failover, chaos;
            # fields too, for JSON logs, where they were none: a QA pass)
            "%s partitions=%s records=%d seconds=%.1f (state only, no output) ranges=%s%s",
            what, parts, records, seconds,
            {tp.partition: r for tp, r in sorted(ranges.items())},
            f"; folded as the partitions behind are decided: "
            f"{ {tp.partition: (reached[tp], c) for tp, c in sorted(refold.items())} }"
            if refold else "",
            extra={"partitions": parts, "records": records, "seconds": seconds},
        )  # fmt: skip
        self.checkpoint(force=True)
        self._refold = refold
        resume = {tp: reached[tp] for tp in refold}
        self._live = False  # a restore is not input decided: a repeat assignment may catch up
        self._ahead = False
        self._labels_due = True  # labels applied before may be missing from the folded state
        self._input_ms = -math.inf  # what is decided next may be older: its labels wait for it
        return {**committed, **resume}

    def _moved_alone(self, behind: Mapping[Any, int]) -> dict[Any, int] | None:
        """The partitions of ``behind`` to rebuild alone and merge into the state, which goes
        on holding the others, each with the first offset the state lacks (0 for a partition
        it never held; where it stopped following it otherwise: ``_left``), or ``None`` (the
        reason logged): rebuild the state of every partition. Alone when every partition behind
        moved here and the state follows others; the events it folds are then none the state
        holds, and :meth:`fds.features.FeaturePlan.absorb` is exact."""
        plan, pos, left = self.engine.features, self._positions, self._left
        refused, self._alone_refused = self._alone_refused, False
        self._emptied = False
        if not pos and left != {} and not self._refold and self.state_topic is not None and (
            getattr(plan, "provenance", False)
        ):  # fmt: skip
            # A state that follows no partition (a restart under the same id, its checkpoint
            # of partitions others hold now): emptied, it takes the assigned ones over from
            # their snapshots as a new instance does (it was rebuilt whole, from the horizon,
            # without a word: a QA pass)
            log.info(
                "the state follows none of the partitions assigned (its events are of those "
                "other instances decide now): emptied, to take them over from snapshots"
            )
            empty_plan: Any = plan
            empty_plan.load_state_dict(empty_plan.fresh().state_dict())
            self._left = left = {}
            self._emptied = True  # (its own model gate stays: _adopt)
        # An empty state (a new instance, a scale-out) tries snapshots too (_take_over); none:
        # rebuilt whole, as a state that follows no partition is.
        empty = (
            left == {} and not self._refold and self.state_topic is not None
            and getattr(plan, "watermark", 0) == -math.inf
        )  # fmt: skip
        if (not pos and not empty) or refused or not hasattr(plan, "absorb"):
            return None
        moved = sorted(tp.partition for tp in behind if tp.partition not in pos)
        if left is None or any(not isinstance(v, tuple) for v in left.values()):
            why = "which partitions' events its windows hold is not known (a state kept after "
            why += "a failure, or a checkpoint of an earlier release)"
        elif self._refold:
            why = f"partitions {sorted(tp.partition for tp in self._refold)} are still folded"
        elif len(moved) < len(behind):
            why = f"partitions {sorted(set(pos) & {tp.partition for tp in behind})} it "
            why += "follows are not at their committed offsets either"
        elif back := [
            tp.partition for tp, c in behind.items() if left.get(tp.partition, (0, 0))[1] > c
        ]:
            why = f"partitions {back} were committed below where this instance left them "
            why += "(offsets reset)"
        else:
            return {  # (aged out or not: what is below the left offset was folded here)
                tp: got[1] if (got := left.get(tp.partition)) is not None else 0
                for tp in sorted(behind, key=lambda tp: tp.partition)
            }
        log.info(  # ("moved here []": none moved, the state's own behind or ahead, a review)
            "%s: %s; the state of every partition is rebuilt",
            f"partitions moved here {moved} are not rebuilt alone" if moved else "not caught up",
            why,
        )  # fmt: skip
        return None

    def _reader(self, **config: Any) -> Any:
        """A consumer for a read beside the group's (the state topic, the decisions, the input
        for a rebuild): each of its polls is a beat of /healthz (a long fetch of a large
        snapshot or a scan of the state topic is progress, not a stuck loop: a review)."""
        return Beating(self._consumer_factory(**config), self.health)

    def _state_reader(self) -> Any:
        """A reader of the state topic (large fetches: its records are snapshot chunks)."""
        return self._reader(**self.s.reader_config(max_partition_fetch_bytes=STATE_FETCH_BYTES))

    def _take_over(
        self,
        scratch: Any,
        alone: Mapping[Any, int],
        ranges: Mapping[Any, tuple[int, int]],
        nexts: Mapping[Any, float],
    ) -> tuple[list[tuple[Any, dict[Any, int]]], tuple[str, dict[str, Any], float] | None]:
        """Take the state of the partitions moved here from the snapshots other instances of
        the group published to the state topic: for each, the newest snapshot holding it
        furthest along within its ``ranges`` (past the feature horizon's start, not past its
        committed offset), its feature state cut to the entries of the partitions taken from
        it (:meth:`fds.features.FeaturePlan.split`: with a state topic the feature state
        records each event's input partition). Returns, per instance taken from, that cut (a
        plan like the empty ``scratch``) and the offset it covers of each of its partitions,
        folded from there instead of from the horizon; a partition none is returned for is
        rebuilt as before (the reason logged). Also returns the instance that gave the most
        partitions (the first by name on a tie) with the rest of its snapshot's engine state
        (alert budget, breaker, model gate and contests: :meth:`_adopt`) and the share of its
        partitions taken, or ``None``.

        Partition by partition: a partition no snapshot holds (its owner published none since
        it got it) or whose snapshot cannot be fetched, verified or used is left out, and
        rebuilt from the input as before. Each cut is folded on its own, in its own event
        time (the snapshots of several instances were taken at different ones: two died at
        once, a third instance joins two), then merged. A partition held here before
        (``alone`` above 0) may be taken over: this instance's own entries of it are then
        dropped before the merge (_merge_moved). A snapshot written after its instance left a
        partition (a rebalance moved it away) holds that partition's events up to where it
        left it (its manifest's ``left``): taken at that offset only when it is the committed
        one and the snapshot's event time is not more than the grace period past the next
        records to decide here (``nexts``: partition -> event time)."""
        st = self.state_topic
        if st is None or not alone or not getattr(scratch, "provenance", False):
            return [], None

        make = self._state_reader

        def nothing(why: str, parts: list[int] | None = None, level: int = logging.INFO) -> Any:
            log.log(
                level, "partitions moved here %s are not taken over from snapshots on the state "
                "topic: %s; they are rebuilt from the input",
                sorted(tp.partition for tp in alone) if parts is None else parts, why,
            )  # fmt: skip
            return [], None

        def usable(offsets: Mapping[int, int], left: Mapping[int, int]) -> dict[Any, int]:
            """The partitions of ``alone`` a snapshot holds within their ranges, with the
            offset it holds each to: those it follows (``offsets``) and those it left
            (``left``), the latter only at their committed offset (folded on from where it left
            one, the records another instance decided since would be late against its event
            time, which went on: not folded, a review)."""
            out = {}
            for p, o in {**left, **offsets}.items():
                tp = TopicPartition(self.s.input_topic, p)
                a, c = ranges.get(tp, (0, -1))
                if a < o <= c and (p in offsets or o == c):
                    out[tp] = o
            return out

        def pick(manifests: Mapping[str, Mapping[str, Any]]) -> dict[Any, tuple[int, str]]:
            """Partition -> (offset, instance): the snapshot holding it furthest along."""
            best: dict[Any, tuple[int, str]] = {}
            for ident, m in manifests.items():
                # (a key with another "/": of an earlier release, whose ids held one, and
                # whose group cannot be told; ident_of keys have one)
                if (
                    ident == st.ident
                    or ident.count("/") != 1
                    or m.get("topic") != self.s.input_topic
                ):
                    continue
                held = usable(manifest_offsets(m), manifest_offsets(m, "left"))
                for tp, o in held.items():
                    if o > best.get(tp, (-1,))[0]:
                        best[tp] = (o, ident)
            return best

        def lacking(best: Mapping[Any, Any]) -> list[int]:
            # (a partition with no record in its horizon up to its committed offset needs none)
            return sorted(
                tp.partition for tp, (a, c) in ranges.items() if a < c and tp not in best
            )  # fmt: skip

        # The index first (the manifests alone), then the whole state topic when the index is
        # not there or holds no snapshot of some partition (an instance of an earlier release
        # sends none to it; a copy was lost): each instance's newest manifest of the two.
        manifests: dict[str, dict[str, Any]] = {}
        source: dict[str, str] = {}  # instance -> the topic its manifest was read from
        whole: dict[str, dict[str, Any]] | None = None  # the state topic's, once scanned

        def scan(index: str | None) -> dict[str, dict[str, Any]] | None:
            """Note the manifests of the index (``None``: of the state topic) in
            ``manifests``, each instance's newest; what was read (``None``: nothing)."""
            try:
                found = StateTopic.scan(
                    st.topic, make, ident_of(self.s.group, ""), timeout_s=self.s.broker_timeout_s,
                    index=index,
                )  # fmt: skip
            except (KafkaError, UnreadableRecords) as exc:
                log.warning('state topic%s cannot be read: %s topic="%s"', " index" if index
                            else "", describe(exc), index or st.topic)  # fmt: skip
                return None
            for ident, m in (found or {}).items():
                if ident not in manifests or manifest_newer(m, manifests[ident]):
                    manifests[ident] = m
                    source[ident] = index or st.topic
            return found

        best: dict[Any, tuple[int, str]] = {}
        if st.index:
            scan(st.index)
            best = pick(manifests)
        if not st.index or lacking(best):
            whole = scan(None)
            if whole is None and not manifests:
                why = "the topic could not be read (logged above)"
                return nothing(why, level=logging.WARNING)
            best = pick(manifests)
        if none := lacking(best):
            nothing(
                "no snapshot of another instance holds them past the start of their feature "
                "horizon and within their committed offsets (one its instance had left: at "
                "them)", none,
            )  # fmt: skip
        scanned = not st.index or whole is not None  # (the state topic read: no retry)

        def fetch(ident: str) -> bytes | None:
            return StateTopic(st.topic, ident, key=st.key).fetch_foreign(
                make, manifest=manifests[ident], timeout_s=self.s.broker_timeout_s
            )

        cuts = []  # (a cut: the state of its partitions, the offsets it covers of each)
        donor: tuple[str, dict[str, Any], float] | None = None  # (gave the most partitions)
        best_parts: list[int] = []
        for ident in sorted({i for _, i in best.values()}):
            tps = sorted((tp for tp in best if best[tp][1] == ident), key=lambda tp: tp.partition)
            parts = [tp.partition for tp in tps]
            t0 = time.monotonic()
            try:
                data = fetch(ident)
                if data is None and source[ident] != st.topic and not scanned:
                    # the index's copy names a snapshot gone since (copies of newer manifests
                    # lost): the state topic's newest manifest of that instance, if it still
                    # holds these partitions within their ranges
                    old = manifests[ident]
                    scan(None)
                    scanned = True
                    m = manifests[ident]
                    held = usable(manifest_offsets(m), manifest_offsets(m, "left"))
                    if m is not old and all(tp in held for tp in tps):
                        data = fetch(ident)
                if data is None:
                    raise ConfigError("it is gone, or it did not verify (logged above)")
                got = parse_checkpoint(data, where=f"{st.topic}:{ident}")
                self._check_topic_id("it", got.state)
                held = usable(got.offsets, _left_offsets(got.state.get(LEFT_KEY)) or {})
                if any(tp not in held for tp in tps):
                    raise ConfigError(f"its offsets {got.offsets} are not its manifest's")
                was_left = [p for p in parts if p not in got.offsets]  # (it had moved them)
                size = len(data)
                features = got.state["features"]
                rest = {k: v for k, v in got.state.items() if k not in ("features", LEFT_KEY)}
                followed = set(got.offsets)
                del data, got  # (the snapshot's bytes, whole and pickled: not held meanwhile)
                other = scratch.fresh()
                other.load_state_dict(features)
                del features
                # A partition it left is not taken when its event time went on past the
                # records to decide here (they would be late on it: every partition rebuilt)
                first = min(nexts.values(), default=math.inf)
                if was_left and first < other.watermark - other.grace:
                    nothing(
                        f'the snapshot of instance="{ident}", which had left them, went on '
                        "to an event time more than the grace period past the records to "
                        "decide here", was_left,
                    )  # fmt: skip
                    tps = [tp for tp in tps if tp.partition not in was_left]
                    parts, was_left = [tp.partition for tp in tps], []
                    if not parts:
                        del other
                        continue
                covered = {tp: held[tp] for tp in tps}
                share = len(parts) / len(followed | set(parts))
                cut = other.split(parts)
                del other
                if cut.label_ttl != scratch.label_ttl:  # (absorb would refuse it)
                    raise ConfigError(
                        f"it keeps labels for a label_ttl of {cut.label_ttl:.0f} s, this "
                        f"instance for {scratch.label_ttl:.0f} s"
                    )
            except Exception as exc:  # (verified, yet unusable: other declarations, a bug)
                nothing(
                    f'the snapshot of instance="{ident}" cannot be used ({describe(exc)})', parts,
                    logging.WARNING,
                )  # fmt: skip
                continue
            log.info(
                'partitions %s taken over from the snapshot of instance="%s" offsets="%s" '
                'bytes="%d" seconds="%.1f" manifest_from="%s"%s', parts, ident,
                {tp.partition: o for tp, o in covered.items()}, size, time.monotonic() - t0,
                source[ident], f' left_there="{was_left}"' if was_left else "",  # (its text
                # whole in msg: scripts read "snapshot of instance=", bench_failover and chaos)
            )  # fmt: skip
            cuts.append((cut, covered))
            if donor is None or len(parts) > len(best_parts):
                donor, best_parts = (ident, rest, share), parts
        return cuts, donor

    def _decided_at(self, until: Mapping[Any, int | None]) -> float:
        """The record time (epoch seconds) of the earliest of the last records decided before
        ``until`` of each partition (``inf``: none), read with readers of their own, closed
        after (the rebuild's reader, paused with records in flight, may be parked by
        kafka-python: see _next_times)."""

        def find() -> dict[Any, int]:
            config = self.s.reader_config(auto_offset_reset="earliest")
            return last_times(lambda: self._reader(**config), until, self.s.broker_timeout_s)

        times = self._retrying("finding the last records decided", find)
        return min(times.values(), default=math.inf) / 1000.0

    def _next_times(
        self,
        tps: list[Any],
        committed: Mapping[Any, int | None],
        begin: Mapping[Any, int],
        end: Mapping[Any, int],
    ) -> dict[Any, float]:
        """The event time of the next record to decide of each of ``tps`` (the first valid one
        of the next PEEK_RECORDS: it may be a dead letter), read with a reader of its own (the
        rebuild's, reused, read nothing more after it in a chaos run)."""
        ranges = {
            tp: (c := max(committed[tp] or 0, begin[tp]), min(c + PEEK_RECORDS, end[tp]))
            for tp in tps
        }  # fmt: skip
        if not ranges:
            return {}
        at: dict[str, Any] = {}
        first: dict[Any, tuple[int, float]] = {}  # partition -> (offset, event time)
        peek = self._reader(**self.s.reader_config(auto_offset_reset="earliest"))
        try:
            merged = read_merged(peek, ranges, self._parsed, timeout_s=self.s.broker_timeout_s,
                                 positions=at, stop=lambda: self._stop,
                                 stalled=self._stalled)  # fmt: skip
            for tx in _until_stopped(merged):
                if at["tp"] not in first or at["offset"] < first[at["tp"]][0]:
                    first[at["tp"]] = (at["offset"], tx["ts"])
        finally:
            with contextlib.suppress(Exception):
                peek.close()
        return {tp: t for tp, (_, t) in first.items()}

    def _merged_late(self, nexts: Mapping[Any, float], scratch: Any) -> bool:
        """Would a partition whose next record to decide is at ``nexts`` be decided late on the
        state merged with ``scratch`` (``None``: on the state as it is)? Then the state of every
        partition is rebuilt instead, folded in event time (the partitions ahead held back)."""
        plan = self.engine.features
        wm = plan.watermark if scratch is None else max(plan.watermark, scratch.watermark)  # type: ignore[union-attr]
        late = sorted(tp.partition for tp, t in nexts.items() if t < wm - plan.grace)  # type: ignore[union-attr]
        if late:
            log.info(
                "partitions %s have records to decide more than the grace period behind the "
                "event time of the state%s: the state of every partition is rebuilt instead "
                "(in event time), the partitions ahead held back", late,
                " merged with the partitions moved here" if scratch is not None else "",
            )  # fmt: skip
        return bool(late)

    def _merge_moved(
        self,
        scratch: Any,
        alone: Mapping[Any, int],
        nexts: Mapping[Any, float],
        taken: Mapping[Any, int],
    ) -> bool:
        """Merge the state rebuilt for the partitions moved here into the engine's, unless a
        partition's next record to decide (moved or not: ``nexts``) would then be decided late
        (the moved ones were decided far ahead): False, and every partition is rebuilt. A
        partition ``taken`` over from a snapshot that was held here before has its entries
        here dropped first (the snapshot's hold all its events)."""
        plan: Any = self.engine.features
        if self._merged_late(nexts, scratch):
            self._alone_refused = True  # (the recursion: said why already)
            return False
        if held := [tp.partition for tp in taken if alone[tp]]:
            plan.split(held)  # (returned: what this instance held of them, dropped)
        plan.absorb(scratch)
        for tp in alone:
            self._left.pop(tp.partition, None)  # type: ignore[union-attr]
        return True

    def _adopt(
        self, ident: str, state: Mapping[str, Any], share: float, *, own_gate: bool = False
    ) -> None:
        """An empty state filled from snapshots: take the rest of the engine's state from the
        instance that gave the most partitions (``share`` of its own): the alert budget's
        recent scores, scaled to that share (else it starts cold: the review floor for an
        hour; unscaled, a threshold set for all of that instance's traffic), the rate breaker
        and its demotions (else a rule demoted there fires here again) and the model's maturity
        gate and contests (else the model is in shadow here until ``gate.window`` fraud labels
        are judged anew: days). ``own_gate``: a state emptied because it followed none of the
        partitions assigned keeps its own gate and contests (they judged this instance's
        model on its decisions; taken, a review saw the model go back to shadow)."""
        self.engine.load_state_dict(_without_model(dict(state)) if own_gate else state,
                                    features=False)  # fmt: skip
        budget = getattr(self.engine.policy, "budget", None)
        if budget is not None and share < 1:
            budget.scale(share)
        if not own_gate:
            self._model_without_labels()  # (the donor's gate may have been judged with labels)
        log.info(
            'the alert budget, the rate breaker%s are taken from the snapshot of instance="%s" '
            "(%s; the budget's scores scaled to the %.0f%% of its partitions taken)",
            "" if own_gate else " and the model gate", ident,
            "this instance's state followed none of its partitions: its own model gate kept"
            if own_gate else "this instance started with an empty state", 100 * share,
        )  # fmt: skip

    def _keep_alive(self) -> None:
        """Poll the group consumer once in the middle of a long restore. A rebalance the group
        starts meanwhile waits for every member to poll; without this, every other instance
        would decide nothing until the restore ends (kafka-python stops fetching during any
        rebalance, cooperative ones included). What the poll fetches waits in the aligner."""
        try:
            batch = self.consumer.poll(timeout_ms=0, max_records=self.s.max_poll_records)
        except KafkaError as exc:  # the restore's own reads notice a broker that is gone
            log.warning("poll during a restore failed: %s: %s", type(exc).__name__, exc)
            return
        if batch and self.aligner is not None:
            self.aligner.add(batch)

    def _restart_restore(self, why: str) -> None:
        """The state cannot be trusted (a rebalance interrupted a restore, or a transaction it
        folded was aborted): drop it (back to the checkpoint, or empty), and restore again for
        the partitions assigned now, before any is decided."""
        # the model's gate and contests are not built from the input: they stay as they are
        # (an older checkpoint could reopen a probation confirmed since)
        self._busy = f"restoring the state again: {why}"  # (/readyz said ready meanwhile)
        try:
            self.engine.load_state_dict(_without_model(pickle.loads(self._fresh_state)))
            self._positions.clear()
            self._left = {}
            self._refold = {}
            self._restore(model=False)
        finally:
            self._busy = None
        if self._joining:
            # The group's answer has not come: restoring the old partitions meanwhile kept
            # this member from polling, so it never finished joining (a leader asked the
            # group to rebalance again at every keep-alive poll, a follower was evicted: a
            # chaos run saw 49 rebalances in 106 s). The loop polls until the assignment.
            assigned: set[int] = set()
        else:
            assigned = {
                tp.partition for tp in self.consumer.assignment()
                if tp.topic == self.s.input_topic
            }  # fmt: skip
            self._follow_only(assigned)
        self._live = self._ahead = False
        self._labels_due = True
        # the records decided since the checkpoint are decided again: labels produced before
        # the newest of them wait for their transaction (else: unmatched, lost for good)
        self._input_ms = -math.inf
        self._unresolved |= assigned
        log.info("%s; restoring the state again for partitions %s", why,
                 sorted(self._unresolved) if not self._joining else "assigned next")  # fmt: skip

    def _report(self) -> None:
        """About once a second: the lag of every assigned partition (records not decided yet),
        idle ones included, the checkpoints written or failed since, and the engine's
        slow-moving figures (entities held, rules skipped for a missing input or an error:
        :meth:`fds.engine.Engine.report`), and the dead letters not said one by one in a minute
        past (a burst, then none: they waited for the next or the stop, a review)."""
        if self._dlq_lines.unsaid:
            self._dlq_lines.tick(time.monotonic())
        if self.checkpointer is not None:
            now = self._count_checkpoints()
            seen, self._ck_seen = self._ck_seen, now
            self.metrics.checkpoints(now[0] - seen[0], now[1] - seen[1])
            if now[1] > seen[1]:  # a write failed: what it held is not saved (an idle instance
                self._saved = {}  # tries again when due, not only once its input moves)
        # (not while the group is joined: kafka-python still names the partitions revoked,
        # whose series then came back, stood still, and doubled a sum by partition: a QA pass)
        assigned = () if self._joining else self.consumer.assignment()
        if assigned and time.monotonic() >= self._lag_ends_at:
            # the ends read now and then: a partition fetched rarely (a slow consumer) has an
            # old high watermark, and its lag read ~10x low for minutes (a QA pass)
            self._lag_ends_at = time.monotonic() + ENDS_EVERY_S
            # (any error: kafka-python 3.0 raises a KeyError for a partition without a leader
            # among others with one, during an election: a review; the fetches' marks serve)
            with contextlib.suppress(Exception):
                ends = self.consumer.end_offsets(list(assigned), timeout_ms=ENDS_TIMEOUT_MS)
                self._ends = {tp: ends[tp] for tp in assigned if tp in ends}
        for tp in assigned:
            hw = self.consumer.highwater(tp)  # from the last fetch response: no request
            end = self._ends.get(tp)
            if end is not None and (hw is None or end > hw):
                hw = end
            # nothing decided here yet: from the committed offset the state follows
            decided = self._decided.get(tp, self._positions.get(tp.partition))
            if tp in self._refold and decided is not None:  # what it folds was decided before
                decided = max(decided, self._refold[tp])
            if decided is None and hw is not None:
                # no commit either (a partition never written, or not yet decided): from the
                # first record buffered, else where the consumer reads next (it had no series:
                # a QA pass)
                first = self.aligner.first(tp) if self.aligner is not None else None
                decided = first if first is not None else fetched_to(self.consumer, tp, 0)
            if hw is not None and decided is not None:
                self._lag_of(tp.partition, max(0, hw - decided))
        self.engine.report()

    def _lag_of(self, partition: int, n: int) -> None:
        """Export the lag of ``partition``, noted as shown (a new assignment drops the others)."""
        self.metrics.consumer_lag(partition, n)
        self._lag_shown.add(partition)

    def _say_decided_from_start(self, tps: list[Any]) -> None:
        """Partitions with no committed offset and no state: the group starts them at the
        earliest offset, every record they hold decided and sent (a group renamed decided the
        whole topic again with only an INFO line about the checkpoint, a QA pass)."""
        begin = self._retrying(
            "reading the log starts", lambda: self.consumer.beginning_offsets(tps)
        )
        end = self._retrying("reading the log ends", lambda: self.consumer.end_offsets(tps))
        n = sum(end[tp] - begin[tp] for tp in tps)
        if n:
            log.warning(
                "no committed offset for partitions %s of group %s (a new group, or renamed): "
                "their %d records are decided from the earliest offset and their decisions "
                "sent (again, if another group decided them); to start at their end instead, "
                "set auto_offset_reset: latest; a renamed group goes on from the old group's "
                "offsets with %s OLD_GROUP (and from its state with the old state dir)",
                sorted(tp.partition for tp in tps), self.s.group, n, flag_of("adopt_state_of"),
            )  # fmt: skip

    def _report_restoring(
        self, reader: Any, committed: Mapping[Any, int | None], end: Mapping[Any, int]
    ) -> None:
        """During a restore (a rebuild can take minutes), the lag of the assigned partitions:
        everything from their committed offsets is still to decide (no series before). Their
        ends are read again each time (the ends at the restore's start, or the high watermark
        of a partition read to its end and paused, stood still while new input came: a QA
        pass); ``end``, those at the start, when the broker does not answer."""
        now: Mapping[Any, int] = end
        if time.monotonic() >= self._ends_at:
            try:  # (kafka-python waits request_timeout_ms, 30 s, by default: a stop waited)
                now = reader.end_offsets(list(committed), timeout_ms=ENDS_TIMEOUT_MS)
            except KafkaError:
                self._ends_at = time.monotonic() + LAG_EVERY_S * 10  # (not each second)
        for tp, c in committed.items():
            hw = now.get(tp, end.get(tp))
            if hw is not None and c is not None:
                self._lag_of(tp.partition, max(0, hw - c))

    def _keyed_otherwise(self, msg: Any) -> None:
        """An input record not keyed by its card_id: counted, and said once (the default
        partitioner then spreads a card over partitions, so over instances: each holds part
        of its windows)."""
        self.stats.keyed_otherwise += 1
        if self.stats.keyed_otherwise == 1:
            log.warning(
                'input records are not keyed by card_id (first at partition="%s[%d]" offset='
                '"%d"): a card whose transactions go to several partitions has its windows '
                "split over the instances that read them; key them by card_id (fds produce "
                "does)", msg.topic, msg.partition, msg.offset,
            )  # fmt: skip

    def _dead_letter(self, msg: Any, stage: str, exc: BaseException) -> None:
        key, value, headers = dead_letter_message(msg, stage, exc)
        self._pending.append(
            self.producer.send(self.s.dlq_topic, value=value, key=key, headers=headers)
        )
        self.stats.dead_letters += 1
        self.metrics.dead_letter(stage)
        self.stats.dlq_by_stage[stage] = self.stats.dlq_by_stage.get(stage, 0) + 1
        if self._dlq_lines.take(stage, time.monotonic()):
            log.warning(  # (its reason quotes the record's values: not in the logs, which
                # hold none, see fds.logs; it is in the dead letter, as the line says)
                'dead letter stage="%s" error="%s" partition="%s[%d]" offset="%d" '
                'reason_in="%s"',
                stage, type(exc).__name__, msg.topic, msg.partition, msg.offset, self.s.dlq_topic,
            )  # fmt: skip

    def _say_dead_letters(self, unsaid: dict[str, int]) -> None:
        """One line for the dead letters not logged one by one (see DLQ_SAID_PER_WINDOW)."""
        log.warning(  # (the pairs last: fields of their own, a QA pass)
            "more dead letters, not logged one by one (at most %d a minute are; each is in "
            'the dead-letter topic, with its reason) count="%d" by_stage="%s" topic="%s"',
            DLQ_SAID_PER_WINDOW, sum(unsaid.values()),
            ",".join(f"{k}:{v}" for k, v in sorted(unsaid.items())), self.s.dlq_topic,
        )  # fmt: skip


class _Revoke(ConsumerRebalanceListener):
    """Rebalance listener: nothing is pending between batches, so revocation only checkpoints
    the state; assignment seeks back to where the state stops (catch-up)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Commit everything decided (at-least-once: batches may await acknowledgement), then
        # flush the state with its positions.
        runner = self.runner
        try:
            # closing: run() has committed and checkpointed, or must not (after a failure)
            if not runner._closing:
                if not runner.s.exactly_once:
                    runner._settle(wait=True, in_listener=True)
                runner.checkpoint(force=True)
        except Exception as exc:  # the new owner replays the uncommitted batches
            log.warning("commit on revocation failed: %s: %s", type(exc).__name__, exc)
            runner._abandon()
        self._forget(revoked)
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        # Evicted (session expired, fenced): a commit would fail, so none is attempted, nor a
        # checkpoint; the new owners replay the uncommitted batches. A state that holds
        # nothing past the last commit (or was put back to the checkpoint) is kept: the next
        # assignment catches it up instead of rebuilding it from the feature horizon; one that
        # holds more goes back to the checkpoint (the loop's next pass) and is caught up too.
        log.warning(
            "partitions lost (evicted from the group): %s",
            sorted(f"{tp.topic}[{tp.partition}]" for tp in lost),
        )
        if self.runner._ahead:
            self.runner._abandon()
            self.runner._lost_ahead = True  # (not restored here, on the client's thread)
        self._forget(lost)

    def _forget(self, tps: Any) -> None:
        runner = self.runner
        runner._rebalances += 1
        runner._joining = True
        for tp in tps:
            runner._unresolved.discard(tp.partition)
            runner._decided.pop(tp, None)  # taken back later: its lag starts from the commit
            runner.metrics.forget_partition(tp.partition)
            runner._lag_shown.discard(tp.partition)
        if runner.aligner is not None:  # not decided yet: the new owner reads them again
            runner.aligner.forget(tps)
        runner.metrics.rebalance()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        )
        self.runner._on_assigned(assigned)


# -- the engine of fds run ----------------------------------------------------------------------

# A labels topic that could not be read is tried again this much later, waiting at most
# LABELS_RETRY_WAIT_S for it (the decisions wait meanwhile; before, every batch waited the whole
# broker timeout for it).
LABELS_RETRY_S = 60.0
LABELS_RETRY_WAIT_S = 5.0

# Registry polling period of the scorer: a version published by `fds train` serves within ~1 s.
MODEL_POLL_S = 1.0
# How long `fds run` waits at start for the models topic's history (its newest versions).
FEED_WAIT_S = 30.0
# The models-topic feed of each engine build_run_engine made (close_engine stops it).
_FEEDS: weakref.WeakKeyDictionary[Engine, Any] = weakref.WeakKeyDictionary()


def build_run_engine(
    rules: str | Path | None,
    model: str | Path | None,
    *,
    metrics: Any = None,
    registry: str | Path | None = None,
    poll_seconds: float = MODEL_POLL_S,
    models_topic: str | None = None,
    settings: KafkaSettings | None = None,
    keep_rules: Path | None = None,
) -> Engine:
    """The engine of ``fds run``: rules reloaded on change, and a model that serves the
    registry's champion and polls the registry for versions published by ``fds train``.
    ``keep_rules``: a copy of the last good rules is kept there (the state dir's
    :data:`KEPT_RULES`), which decides when the rules file does not load at a restart.

    ``models_topic``: also import the versions announced there into that registry
    (:class:`fds.streams.model_feed.ModelFeed`, connecting with ``settings``), for a scorer
    that does not share the trainer's registry directory. :func:`close_engine` stops it.
    With ``settings.state_topic`` the feature state records each event's input partition, so
    that another instance can take partitions over from its snapshot (Runner._take_over)."""
    # (named where it was given: --models-topic, FDS_MODELS_TOPIC, models_topic in the file)
    named = (settings or KafkaSettings()).named("models_topic")
    if models_topic and settings is not None:
        roles = ("input_topic", "output_topic", "dlq_topic", "labels_topic", "state_topic")
        role = next((r for r in roles if getattr(settings, r) == models_topic), None)
        if role is not None:  # (announcements read as input, or written over: a QA pass)
            raise ConfigError(
                f"{named} and {role} are both {models_topic!r}: give each its own topic "
                f"({settings.fix(role)} or {settings.fix('models_topic')})"
            )
    engine = build_engine(
        rules,
        model,
        metrics=metrics,
        watch=True,
        model_watch=True,
        model_fed=bool(models_topic),  # (said empty before the feed read the topic: a QA)
        registry=registry,
        poll_seconds=poll_seconds,
        # with a state topic, its snapshots can hand partitions over (Runner._take_over)
        provenance=settings is not None and bool(settings.state_topic),
        keep_rules=keep_rules,
        compiler=Compiler.from_env(),
    )
    server: Any = engine.model  # a ModelServer in watch mode
    if models_topic and server is None and named != "--models-topic":
        # (a deployment's shared file, read by every scorer: one with --model none refused
        # to start for a models topic it has no use of, a review; the flag is still refused)
        log.info("%s %s not read: no model (--model none)", named, models_topic)
        models_topic = None
    if models_topic:
        if server is None:
            close_engine(engine)
            raise ConfigError(
                f"a models topic ({named}: {models_topic}) needs a model: pass --model SPEC, "
                f"or drop {named} (--models-topic none turns a setting off)"
            )
        from fds.streams.model_feed import ModelFeed  # imports this module

        s = settings or KafkaSettings()
        feed = ModelFeed(
            s, server.registry, name=server.spec.name, topic=models_topic, metrics=metrics,
            decisions_topic=settings.output_topic if settings is not None else None,
            by=f"{s.group}/{s.group_instance_id or socket.gethostname()}",
        )  # fmt: skip
        # its contests' verdicts go to the trainer, whose registry's lifecycle every scorer
        # follows: one champion for the fleet (each judged alone: a QA pass)
        own = server.on_event

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if own is not None:
                own(kind, info)
            feed.on_event(kind, info)

        server.on_event = on_event
        feed.start()
        _FEEDS[engine] = feed
        # Serve the newest version announced so far from the first decision: without the
        # wait, a new scorer decided its first batches with rules alone while it imported it.
        wait = min(FEED_WAIT_S, (settings or KafkaSettings()).broker_timeout_s)
        if not wakeful_wait(feed.caught_up, wait):
            log.warning("models topic %s not read to its end within %.0f s: decisions start "
                        "without its versions", models_topic, wait)  # fmt: skip
        else:  # (none yet, or the lifecycle followed in the catch-up replaced it)
            try:
                server.load_champion_if_changed()
            except Exception as exc:  # the registry watch retries it, as for any version
                log.warning("serving the imported version failed: %s: %s",
                            type(exc).__name__, exc)  # fmt: skip
        server.say_if_empty()  # (only now: the feed may have filled the registry)
    return engine


def close_engine(engine: Engine) -> None:
    """Stop the engine's background threads (models feed, rules watcher, registry poller)."""
    feed = _FEEDS.pop(engine, None)
    if feed is not None:
        feed.close()
    with contextlib.suppress(Exception):
        engine.close()


#: The copy of the last good rules in fds run's state dir: a rules file rejected by a hot
#: reload, still on disk at the next restart, refused it (a QA pass); this copy decides then.
KEPT_RULES = "rules.last-good.yaml"


# -- CLI ---------------------------------------------------------------------------------------

#: fds run's /metrics port when none is given: unassigned in Prometheus' port allocation list
#: (fds train's is the next one).
RUN_METRICS_PORT = 9108


def register_run(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fds run``."""
    p = subparsers.add_parser("run", help="the streaming service: decide transactions from Kafka")
    add_settings_flags(p)
    p.add_argument(
        "--exactly-once",
        action="store_true",
        default=None,
        help="transactional output: decisions, dead letters and offsets commit atomically",
    )
    p.add_argument(
        "--foreground-checkpoints", dest="checkpoint_in_background", action="store_const",
        const=False, default=None,
        help="pickle periodic state checkpoints on the decision loop instead of in a forked "
        "child (no fork, no transient extra memory; a pause per checkpoint; env "
        "FDS_CHECKPOINT_IN_BACKGROUND=false)",
    )  # fmt: skip
    p.add_argument(
        "--rules", type=file_or_none("rules file"), default=DEFAULT_RULES,
        help="rules YAML, or 'none' (default: the shipped rules/default.yaml); reloaded when "
        "it changes",
    )  # fmt: skip
    p.add_argument(
        "--model", type=file_or_none("model spec"), default=DEFAULT_MODEL,
        help="model spec YAML, or 'none' (default: the shipped models/default.yaml)",
    )  # fmt: skip
    p.add_argument(
        "--registry", type=registry_folder, default=None,
        help="model registry dir to serve from (env FDS_REGISTRY or --config's registry; "
        "default: models/registry); `fds train` publishes there",
    )  # fmt: skip
    p.add_argument(
        "--models-topic", type=topic_arg, default=None, metavar="TOPIC",
        help="also import the versions `fds train` announces on TOPIC (e.g. models) into "
        "--registry: for a scorer that does not share the trainer's registry directory "
        "(env FDS_MODELS_TOPIC or --config's models_topic; default and 'none': off; set "
        "FDS_MODEL_KEY as on the trainer)",
    )  # fmt: skip
    p.add_argument(
        "--labels-topic", default=None, metavar="TOPIC",
        help="read fraud labels from TOPIC (e.g. labels) into the label-aware features "
        "(fraud_count, fraud_rate); every instance reads every partition (default: off, "
        "env FDS_LABELS_TOPIC)",
    )  # fmt: skip
    add_metrics_arguments(p, RUN_METRICS_PORT, settings=True)
    add_max_idle_argument(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    checkpointer = None
    try:
        settings = settings_from(
            args, exactly_once=args.exactly_once, labels_topic=args.labels_topic,
            checkpoint_in_background=args.checkpoint_in_background,
        )  # fmt: skip
        metrics = make_metrics(settings.serves_metrics(RUN_METRICS_PORT))
        if (settings.state_dir or "").lower() != "none":
            state_dir = settings.state_dir or default_state_dir(
                settings.group, settings.group_instance_id
            )
            checkpointer = Checkpointer(state_dir)
        elif settings.state_topic:  # (it switched the state topic off without a word: a QA)
            raise ConfigError(
                f"a state topic ({settings.named('state_topic')}) publishes the state dir's "
                f"checkpoints, and state dir none ({settings.named('state_dir')}) writes none: "
                "drop one of them"
            )
        # The same builder as `fds replay` for features, rules and policy: one code path.
        models_topic = settings.models_topic_for(None)
        engine = build_run_engine(
            args.rules, args.model, metrics=metrics, registry=settings.registry,
            models_topic=models_topic, settings=settings,
            keep_rules=checkpointer.dir / KEPT_RULES if checkpointer is not None else None,
        )  # fmt: skip
        model: Any = engine.model
        if model is not None:  # (as fds train names its own: given by a flag, FDS_* or a file)
            log.info('serving model version="%s" registry="%s" models_topic="%s"',
                     model.version or "none yet", model.registry.path.absolute(),
                     models_topic or "none")  # fmt: skip
        runner = Runner(settings, engine, checkpointer=checkpointer)
        server = settings.serve_metrics(metrics, RUN_METRICS_PORT, runner.health)
    except ConfigError as exc:
        if checkpointer is not None:
            checkpointer.unmake()
        say(f"fds run: error: {exc}")
        return 2
    if server is not None:  # (whatever -q: --metrics-port 0 left it unknown, a QA pass)
        say(f"serving metrics on {server.url}", logging.INFO)
    on_stop_signals(runner.stop)
    failed: tuple[str, int] | None = None
    try:
        stats = runner.run(max_idle_s=args.max_idle)
    except ConfigError as exc:  # found at connect: a missing topic, a foreign checkpoint
        failed = f"fds run: error: {exc}", 2
    except (FdsError, KafkaError) as exc:
        failed = f"fds run: failed: {describe(exc)}", 1
    finally:
        close_engine(engine)
        if server is not None:
            server.stop()
    if failed is not None:  # the last line (closing the engine says its late events: they
        say(failed[0])  # came after it, and a supervisor showed them as the cause, a QA pass)
        if checkpointer is not None:  # (a missing topic left both behind: a QA pass)
            checkpointer.unmake(KEPT_RULES, KEPT_RULES + ".source")
        if model is not None:
            model.registry.unmake()
        return failed[1]
    say(
        f"consumed={stats.consumed} decided={stats.decided} dead_letters={stats.dead_letters} "
        f"commits={stats.commits} caught_up={stats.caught_up} checkpoints={stats.checkpoints}",
        logging.INFO,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fds.streams.kafka run|produce ...``: the same as ``fds run|produce ...``."""
    from fds.cli import main as fds_main

    return fds_main(argv)


if __name__ == "__main__":
    sys.exit(main())
