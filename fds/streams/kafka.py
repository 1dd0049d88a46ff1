"""``fds run`` on Kafka: a consumer-group service that decides transactions (its settings:
:mod:`fds.streams.settings`; what it shares with ``fds train``: :mod:`fds.streams.service`;
``fds produce``: :mod:`fds.streams.produce`).

:class:`Runner` is built of parts, a module each, its base classes: this module has the loop
(poll, decide, send; the lag report, the rebalance listener, ``fds run``'s command line);
:mod:`fds.streams.delivery` settles what the loop sent (acknowledgements, commits, retries,
rewinds); :mod:`fds.streams.state_keeping` checkpoints, restores and publishes the state;
:mod:`fds.streams.handover` brings the state up to the partitions assigned (catch-up,
rebuild, take-over); :mod:`fds.streams.run_engine` builds the engine the loop decides with.

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
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from kafka.structs import OffsetAndMetadata

from fds.cli import file_or_none, registry_folder
from fds.errors import ConfigError, FdsError, StageError, describe
from fds.gcpolicy import Freezer
from fds.health import Beating, Health, stale_after
from fds.logs import LineBudget, say
from fds.metrics import NullMetrics, add_metrics_arguments, make_metrics
from fds.models.registry import KEY_ENV
from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES
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
)
from fds.streams.delivery import (
    _REFUSED,
    GROUP_HEADER,
    WAIT_LOG_S,
    _Delivery,
    _producer_fenced,
    _Unacked,
)
from fds.streams.handover import (
    ENDS_TIMEOUT_MS,
    LAG_EVERY_S,
    _Handover,
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
from fds.streams.run_engine import build_run_engine, close_engine
from fds.streams.service import (
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
    load_settings,
    settings_from,
    topic_arg,
)
from fds.streams.state_keeping import (
    INDEX_LOOK_S,
    _StateKeeping,
)

# (re-exported: tests import them from here, as before they moved)
from fds.streams.state_keeping import LEFT_KEY as LEFT_KEY
from fds.streams.state_keeping import keep_aside as keep_aside
from fds.streams.state_topic import StateTopic, ident_of

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

# What closing the clients may take once the broker is known not to answer.
GONE_CLOSE_S = 0.5
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


#: How often the lag report reads the partitions' ends (a request; the high watermarks of the
#: fetches are read each second, and are enough while every partition is fetched often).
ENDS_EVERY_S = 10.0


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


def _fault(name: str, kind: type[int] | type[float]) -> Any:
    """A fault-injection switch of the crash tests (README, "Testing against the real
    broker"), 0 when unset; a value that is no number is a usage error (a traceback before,
    a QA pass)."""
    text = os.environ.get(name, "").strip() or "0"
    try:
        value = kind(text)
        if not 0 <= value < math.inf:  # (nan, inf, -1: a traceback at the sleep, a review)
            raise ValueError(text)
        return value
    except ValueError:
        raise ConfigError(
            f"{name}={text!r}: a test's fault switch wants a number; unset it (it is no "
            "setting of a deployment)"
        ) from None


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


class Runner(_Handover, _StateKeeping, _Delivery):
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
        self._kill_after_flush = _fault("FDS_FAULT_KILL_AFTER_FLUSH", int)
        # ... and slow every record a restore folds down by this many seconds (a long rebuild
        # in a short test). Unset in production.
        self._fold_delay = _fault("FDS_FAULT_FOLD_DELAY_S", float)
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

    def _reader(self, **config: Any) -> Any:
        """A consumer for a read beside the group's (the state topic, the decisions, the input
        for a rebuild): each of its polls is a beat of /healthz (a long fetch of a large
        snapshot or a scan of the state topic is progress, not a stuck loop: a review)."""
        return Beating(self._consumer_factory(**config), self.health)

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
    p.add_argument(  # (--no-exactly-once: a file's `exactly_once: true` had no flag to undo
        "--exactly-once",  # it for one process, a QA pass)
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transactional output: decisions, dead letters and offsets commit atomically "
        "(--no-exactly-once: at-least-once, whatever the settings file says)",
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
