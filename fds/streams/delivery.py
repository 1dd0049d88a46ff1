"""The delivery of ``fds run``'s decisions: :class:`_Delivery`, a part of
:class:`fds.streams.kafka.Runner` (its base class; :mod:`fds.streams.kafka` has the loop that
decides the batches, and says the commit order this part keeps).

What it does once a batch is decided and handed to the producer:

- settle (:meth:`_Delivery._settle`): wait for the batches' acknowledgements (``_await``,
  ``_flush``), then commit their input offsets, each marked with where its decisions start on
  the decisions topic (``_marked``, :data:`DECIDED_MARK`), asynchronously or, before a
  checkpoint and at a stop, synchronously;
- retry (:meth:`_Delivery._retrying`, ``_waited``): every blocking broker call, retried with
  backoff and waited for in steps until ``broker_timeout_s``, its errors said (``_refused``,
  ``_taken``, ``_fenced``);
- rewind (``_rewind_batch``, ``_abort_and_rewind``, ``_back_to_checkpoint``,
  ``_back_after_loss``, ``_seek_back``, ``_resume_from``): after a refused commit, an aborted
  transaction or lost partitions, back to what was committed.

The state it covers (``checkpoint``) is :mod:`fds.streams.state_keeping`'s; the partitions
assigned are brought up to the committed offsets by :mod:`fds.streams.handover`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    InvalidTransactionTimeoutError,
    KafkaError,
    ProducerFencedError,
    TopicAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata

from fds.errors import ConfigError, FdsError, describe
from fds.streams.kafka_kit import Call
from fds.streams.service import BrokerUnavailable, fenced_error

if TYPE_CHECKING:
    from fds.health import Health
    from fds.streams.align import Aligner
    from fds.streams.checkpoint import Checkpointer
    from fds.streams.kafka import RunStats
    from fds.streams.label_feed import LabelFeed
    from fds.streams.settings import KafkaSettings

# (the logger of fds run: its lines and their tests name it, wherever the code sits)
log = logging.getLogger("fds.streams.kafka")

# A blocking broker call (commit, flush, a transaction's) is waited for in steps of this long,
# and logged every WAIT_LOG_S while the broker does not answer (see Runner._waited).
WAIT_STEP_S = 0.5
WAIT_LOG_S = 5.0
# A wait step that took this much longer than WAIT_STEP_S: the process itself was stopped.
FROZEN_S = 5.0


# At-least-once commits say where the decisions of the records past them start (the commit's
# metadata: this prefix and an offset of the decisions partition of the same number): a
# restart reads what is there and folds those records instead of deciding them again.
DECIDED_MARK = "fds:decisions@"


#: The header of each decision naming the consumer group that made it: a restart takes only
#: its own group's decisions past the mark as made (another group writing the same decisions
#: topic had its decisions taken for this group's, and those records never decided: a QA pass).
GROUP_HEADER = "fds-group"


#: Errors of a poll that no retry changes (each said with its setting, exit 2).
_REFUSED = (
    InvalidSessionTimeoutError,
    InvalidGroupIdError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)


def _producer_fenced(exc: BaseException) -> bool:
    """Is ``exc`` a fenced transactional producer (kafka-python says it with the error, in the
    text of the next call's plain KafkaError, or as the state the fence left its transaction
    in: "Cannot call send in state READY" or "BUMPING_PRODUCER_EPOCH", an IllegalStateError
    that ended a run fenced by another instance of its id in 3 trials of 5: a QA pass)?"""
    return (
        isinstance(exc, ProducerFencedError)
        or "ProducerFencedError" in str(exc)
        or (isinstance(exc, IllegalStateError) and "Cannot call send in state" in str(exc))
    )  # (not every IllegalStateError: "KafkaProducer already closed!" is none, a review)


@dataclass(slots=True)
class _Unacked:
    """A decided batch whose sends are not all acknowledged: its offsets wait for them."""

    number: int
    futures: list[Any]
    offsets: dict[Any, Any]
    last: dict[Any, Any]  # decisions partition -> the send of its last decision in the batch
    # decisions partition -> the offset of its first decision found out and not folded yet
    pins: dict[int, int] = field(default_factory=dict)
    bad_labels: list[Any] = field(default_factory=list)  # dead-lettered in it (their records)

    def acknowledged(self) -> bool:
        f = self.futures
        return not f or (f[-1].is_done and all(x.is_done for x in f))


class _Delivery:
    """Settle, retry and rewind: the delivery part of :class:`fds.streams.kafka.Runner`."""

    if TYPE_CHECKING:  # (what it uses of the runner: set in Runner.__init__)
        s: KafkaSettings
        consumer: Any
        producer: Any
        metrics: Any
        stats: RunStats
        health: Health
        aligner: Aligner | None
        labels: LabelFeed | None
        checkpointer: Checkpointer | None
        _ahead: bool
        _bad_labels: list[tuple[Any, BaseException]]
        _broker_up: bool | None
        _commit_at: float
        _committable: dict[Any, Any]
        _copartitioned: bool | None
        _evicted: tuple[float, int] | None
        _kill_after_flush: int
        _lost_ahead: bool
        _out_next: dict[int, int]
        _pending: list[Any]
        _pos_marks: dict[int, tuple[int, int]]
        _positions: dict[int, int]
        _rebalances: int
        _stop: bool
        _to_commit: dict[Any, Any]
        _unacked: deque[_Unacked]

        def _abandon(self) -> None: ...
        def _broker_state(self, up: bool) -> None: ...
        def _restart_restore(self, why: str) -> None: ...
        def _time_left(self) -> float: ...

    def _settle(self, *, wait: bool, in_listener: bool = False) -> None:
        """Commit the input offsets of the batches whose sends are all acknowledged, oldest
        first (asynchronously). ``wait``: flush first, so that every batch is, and commit
        synchronously; the state then covers exactly ``_positions``.

        ``in_listener``: called from the rebalance listener, which kafka-python 3 runs on the
        consumer's network thread, where a blocking ``commit()`` is refused: the commit is
        queued with ``commit_async`` (sent before the group's JoinGroup, so within the current
        generation) and ``_positions`` assumes it lands. If it does not, the next assignment
        (or a restart) finds the committed offsets behind the positions and commits them
        (:meth:`_complete_ahead`)."""
        unacked = self._unacked
        if wait and unacked:
            self._flush()
        ready: dict[Any, Any] = {}
        while unacked and unacked[0].acknowledged():
            b = unacked.popleft()
            self._check_sent(b.futures)
            if b.bad_labels and self.labels is not None:  # their dead letters were taken
                self.labels.confirm(b.bad_labels)
            if b.number == self._kill_after_flush:  # fault injection (see __init__)
                os.kill(os.getpid(), signal.SIGKILL)
            ready.update(self._marked(b))
        self._committable.update(ready)
        if wait and unacked:
            raise FdsError(
                f"{len(unacked)} batches still unacknowledged after a flush; their offsets were "
                "not committed; restart to resume from the last commit"
            )
        if not wait:
            self._to_commit.update(ready)
            now = time.monotonic()
            if self._to_commit and now >= self._commit_at:
                self._commit_async(self._to_commit)
                self._to_commit = {}
                self._commit_at = now + self.s.commit_interval_ms / 1000
            return
        offsets, self._committable, self._to_commit = self._committable, {}, {}
        if offsets and in_listener:
            self._commit_async(offsets)
        elif offsets:
            t = time.perf_counter()
            self._retrying(
                "commit",
                lambda: self.consumer.commit(offsets, timeout_ms=self.s.timeout_ms),
            )
            self.stats.commits += 1
            self.metrics.commit_time(time.perf_counter() - t)
        self._positions.update({tp.partition: om.offset for tp, om in offsets.items()})
        self._pos_marks.update(
            (tp.partition, (om.offset, int(at)))
            for tp, om in offsets.items()
            if (at := (om.metadata or "").removeprefix(DECIDED_MARK)) != om.metadata
            and at.isdigit()
        )
        self._ahead = False  # (wait: everything decided is committed)

    def _marked(self, b: _Unacked) -> dict[Any, Any]:
        """``b``'s offsets to commit, each saying where the decisions past it start on the
        decisions partition of its number (DECIDED_MARK; the mark alone, no number, where
        unknown: a commit of fds's all the same, :meth:`_complete_ahead`)."""
        if not self._copartitioned:  # (decisions placed by key: nothing to look up; the
            self._out_next.clear()  # commit still said fds's own, for _complete_ahead)
            return {tp: OffsetAndMetadata(om.offset, DECIDED_MARK, -1)
                    for tp, om in b.offsets.items()}  # fmt: skip
        nxt = self._out_next
        for part, fut in b.last.items():
            if part is not None:
                nxt[part] = fut.value.offset + 1
        marks = {**nxt, **b.pins}
        return {
            tp: OffsetAndMetadata(om.offset, f"{DECIDED_MARK}{marks.get(tp.partition, '')}", -1)
            for tp, om in b.offsets.items()
        }  # fmt: skip

    def _await(self, batch: _Unacked) -> None:
        """Wait until every send of ``batch`` is acknowledged or has failed for good (as a flush
        would, but not for the batches sent after it); a failure is its future's, for
        :meth:`_check_sent`."""
        if batch.acknowledged():
            return

        def acknowledged() -> None:
            for fut in batch.futures:
                try:
                    fut.get()
                except Exception:
                    if not fut.failed():
                        raise

        self._retrying("acknowledgement", acknowledged, progress=self._acks)

    def _acks(self) -> int:
        """Sends acknowledged so far among the batches in flight (and the batch being
        decided): a wait for them that sees this grow is waiting on a slow broker, not a
        silent one (a throttled decisions topic, answering, ended fds run as "no answer from
        Kafka" after broker_timeout_s of one batch's wait: a QA pass)."""
        # (succeeded: a send failed, a batch expired in an outage, is no answer: a review)
        return sum(f.succeeded() for b in self._unacked for f in b.futures) + sum(
            f.succeeded() for f in self._pending
        )

    def _commit_async(self, offsets: dict[Any, Any]) -> None:
        # Not timed: kafka-python reads the answer (and runs a callback) only in a later poll,
        # so the time would be the next batch's; and a callback would replace its own, which
        # logs a failed commit.
        try:
            self.consumer.commit_async(offsets)
        except FencedInstanceIdError as exc:  # (an earlier async commit was fenced)
            raise self._fenced("commit") from exc
        self.stats.commits += 1

    @property
    def _transactional_id(self) -> str:
        """One per instance (exactly-once): a second instance with the same id fences the
        first."""
        s = self.s
        return s.transactional_id or f"fds-{s.group}-{s.group_instance_id or '0'}"

    def _taken(self, what: str) -> FdsError:
        """The transactional producer fenced in ``what``: another producer took its id."""
        s = self.s
        default = "" if s.transactional_id else (
            " (the default id, fds-<group>-<group-instance-id>, reads alike for other pairs: "
            "fds-eu with 1 and fds with eu-1 are both fds-fds-eu-1; --transactional-id names "
            "one of its own)"
        )  # fmt: skip
        return FdsError(
            f"{what}: the broker fenced this instance's transactional producer "
            f"({self._transactional_id}): another producer took the id, or a transaction "
            "stayed open past transaction_timeout_ms. If another instance runs with this "
            "--group-instance-id (or --transactional-id), give each instance its own "
            f"(restarting this one fences that one in turn){default}; else restart: it resumes "
            "from the last commit"
        )

    def _refused(self, exc: KafkaError, what: str = "poll") -> ConfigError:
        """What the broker refused for good in ``what``, and the setting to fix."""
        s = self.s
        topics = (
            f"--input-topic {s.input_topic!r}" if what == "poll"
            else f"the topics it reads and writes ({s.input_topic!r}, {s.output_topic!r}, "
            f"{s.dlq_topic!r}, ...)"
        )  # fmt: skip
        why = {
            InvalidSessionTimeoutError: f"session_timeout_ms {s.session_timeout_ms} is outside "
            "the broker's group.min/max.session.timeout.ms (6000-1800000 by default): "
            f"{s.fix('session_timeout_ms')}",
            InvalidGroupIdError: f"group {s.group!r} is not a valid group id: {s.fix('group')}",
            GroupAuthorizationFailedError: f"this client may not use group {s.group!r} (an "
            f"ACL): {s.fix('group')} or the broker's ACLs for this principal",
            TopicAuthorizationFailedError: f"this client may not use {topics} (an ACL): fix "
            "the topic or the broker's ACLs for this principal",
            InvalidTransactionTimeoutError: f"transaction_timeout_ms {s.transaction_timeout_ms}"
            " is above the broker's transaction.max.timeout.ms (900000 by default): lower "
            f"it: {s.fix('transaction_timeout_ms')}",
        }[type(exc)]
        return ConfigError(f"Kafka refused {what}: {type(exc).__name__}: {why}")

    def _fenced(self, what: str) -> FdsError:
        return fenced_error(what, self.s)

    def _settle_or_rejoin(self, *, wait: bool) -> bool:
        """:meth:`_settle`, at-least-once; False when the group refused the commit because this
        instance was evicted (a broker outage or a pause longer than the session timeout):
        what it decided since its last commit is decided again once the next poll rejoins the
        group and restores the state (before, fds run exited though the broker was back)."""
        try:
            self._settle(wait=wait)
        except CommitFailedError as exc:
            log.warning(
                "commit refused (%s): evicted from the group; the batches decided since the "
                "last commit are decided again after the group is rejoined", exc,
            )  # fmt: skip
            self._back_to_checkpoint("a commit refused after an eviction")
            return False
        return True

    def _back_after_loss(self) -> None:
        """After partitions were lost (an eviction kafka-python noticed first: between
        checkpoints the commits are asynchronous, and a refused one is only logged) while the
        state held decisions past the last commit: back to the checkpoint, so the next
        assignment catches the state up instead of rebuilding it from the feature horizon."""
        self._lost_ahead = False
        if self.checkpointer is not None:
            self._restart_restore("partitions lost with decisions past the last commit")

    def _back_to_checkpoint(self, why: str) -> None:
        """After an eviction refused a commit: nothing of the state past it is trusted; it goes
        back to the checkpoint (caught up from it before the next decision, not rebuilt from
        scratch) and nothing is decided until the group is rejoined."""
        self._abandon()
        if self.checkpointer is not None:
            self._restart_restore(why)
        self._evicted = (time.monotonic(), self._rebalances)

    def _seek_back(self, offsets: Mapping[Any, int | None]) -> None:
        """Send the group consumer back to ``offsets``, dropping what the aligner held of those
        partitions first (its forget seeks to what it held). A partition no longer assigned is
        not ours any more."""
        if self.aligner is not None:
            self.aligner.forget(list(offsets))
        for tp, offset in offsets.items():
            if offset is not None:
                with contextlib.suppress(Exception):
                    self.consumer.seek(tp, offset)

    def _resume_from(self, offsets: Mapping[Any, int | None]) -> None:
        """Send the group consumer back to ``offsets`` where it would read anything else next
        (what the aligner holds from there on stays)."""
        moved: dict[Any, int | None] = {}
        for tp, offset in offsets.items():
            try:
                at = self._next_offset(tp, timeout_ms=0)
            except Exception:  # not known yet: sought
                at = None
            if offset is not None and at != offset:
                moved[tp] = offset
        self._seek_back(moved)

    def _next_offset(self, tp: Any, timeout_ms: int) -> int | None:
        """The offset of ``tp``'s next record to decide: the first the aligner holds, else the
        consumer's position (None if not known within ``timeout_ms``; kafka-python's error if
        ``tp`` is not assigned)."""
        at = self.aligner.first(tp) if self.aligner is not None else None
        return self.consumer.position(tp, timeout_ms=timeout_ms) if at is None else at

    def _abort_and_rewind(self, batch: list[tuple[Any, Any, Any]], exc: BaseException) -> None:
        """Exactly-once: the group refused the batch's offsets because this instance was
        evicted (a broker outage or a pause longer than the session timeout; before, fds run
        exited though the broker was back). Abort the transaction (its decisions are never
        read by ``read_committed`` consumers), go back to its first record in every partition,
        put the state back to the last checkpoint and catch it up to the committed offsets
        before the next decision: the batch is decided again, once, after the group is
        rejoined. Without a checkpoint to go back to, exit (a restart resumes from the last
        commit)."""
        self._rewind_batch(
            batch, f"transaction offsets refused ({exc}): evicted from the group", abort=True
        )

    def _offsets_landed(self, offsets: Mapping[Any, Any]) -> bool:
        """Did a transaction's input offsets reach the group? The broker aborts a transaction
        open longer than ``transaction_timeout_ms`` (a broker outage, this process stopped),
        and kafka-python was seen to report its commit all the same once the broker was back:
        a chaos run lost that batch's 50 decisions, the consumer having moved past them."""
        ms = self.s.timeout_ms
        got = self._retrying(
            "verifying the committed offsets",
            lambda: {tp: self.consumer.committed(tp, timeout_ms=ms) for tp in offsets},
        )
        return all((got[tp] or 0) >= om.offset for tp, om in offsets.items())

    def _rewind_batch(
        self, batch: list[tuple[Any, Any, Any]], why: str, *, abort: bool = False
    ) -> None:
        """Decide ``batch`` again (``abort``: its transaction is aborted first): back to its
        first record in every partition, the state back to the last checkpoint and caught up
        before the next decision."""
        if abort:  # its decisions are never read by read_committed consumers
            self._waited(
                "abort_transaction",
                self.producer.abort_transaction,
                time.monotonic() + self.s.broker_timeout_s,
            )
        if self.labels is not None:  # their dead letters were in the aborted transaction
            self.labels.bad[:0] = self._bad_labels  # (a re-read does not queue them again)
            self._bad_labels = []
        if self.checkpointer is None:
            raise FdsError(
                f"{why}: the batch is not committed and there is no state checkpoint to go "
                "back to (--state-dir none); restart to resume from the last commit"
            )
        log.warning(
            "%s: %sits %d records are decided again after the group is rejoined",
            why, "the transaction was aborted and " if abort else "", len(batch),
        )  # fmt: skip
        first: dict[Any, int] = {}
        for tp, msg, _ in batch:
            first.setdefault(tp, msg.offset)
        self._seek_back(first)
        self._back_to_checkpoint(why)

    def _check_sent(self, futures: list[Any]) -> None:
        """A send can fail for good (e.g. a record over the size limit) while flush() returns:
        then the batch's offsets must not be committed."""
        for fut in futures:
            if fut.failed():
                raise FdsError(
                    f"producing a decision or dead letter failed ({fut.exception!r}); input "
                    "offsets were not committed past it; fix the cause and restart"
                )

    def _flush(self) -> None:
        self._retrying(
            "flush", lambda: self.producer.flush(timeout=self.s.broker_timeout_s),
            progress=self._acks,
        )  # fmt: skip

    def _retrying(
        self, what: str, fn: Callable[[], Any], timeout_s: float | None = None, *,
        held: bool = False, progress: Callable[[], int] | None = None,
    ) -> Any:  # fmt: skip
        """Call ``fn`` with exponential backoff until ``timeout_s`` (``broker_timeout_s``);
        then give up loudly. ``held``: a slow answer is the broker holding it back on purpose
        (committed offsets an open transaction holds), not its silence: not said as a broker
        gone (fds_broker_reachable 0 and /readyz "does not answer" while it answered: a QA).
        ``progress``: a count that grows while the broker answers (sends acknowledged): the
        timeout runs from its last growth.

        Under exactly-once a failed transactional call is not retried: the transaction is
        aborted and the error propagates (a restart resumes from the last commit).
        """
        first = time.monotonic()
        timeout = timeout_s or self.s.broker_timeout_s
        deadline = first + timeout
        delay = 0.1  # first backoff; doubles up to 5 s
        seen = progress() if progress is not None else 0
        while True:
            try:
                got = self._waited(what, fn, deadline, since=first, held=held, progress=progress)
                self._broker_state(True)
                return got
            except CommitFailedError:
                raise  # the group rebalanced: the batch will be replayed by the new owner
            except (KafkaError, OSError) as exc:
                if self.s.exactly_once:
                    with contextlib.suppress(Exception):  # (bounded: it waits for the broker)
                        self._waited("abort_transaction", self.producer.abort_transaction,
                                     time.monotonic() + WAIT_LOG_S)  # fmt: skip
                if isinstance(exc, FencedInstanceIdError):  # no retry or restart can help (it
                    raise self._fenced(what) from exc  # was retried, then the broker blamed)
                if isinstance(exc, _REFUSED):  # (a group ACL refused a commit, say)
                    raise self._refused(exc, what) from exc
                # (fenced in a send, kafka-python's next transactional call raises a plain
                # KafkaError naming it: a review)
                if _producer_fenced(exc):  # another instance took the id: a restart, as
                    # said before, fenced that one in turn (a QA pass)
                    raise self._taken(what) from exc
                if self.s.exactly_once:
                    raise FdsError(
                        f"{what} failed under exactly-once ({describe(exc)}); the "
                        "transaction was aborted; restart to resume from the last commit"
                    ) from exc
                if progress is not None and (now := progress()) > seen:  # slow, not silent
                    seen, deadline = now, time.monotonic() + timeout
                if time.monotonic() + delay > deadline:
                    # (a decisions topic deleted under fds run was told as a broker down: a QA)
                    also = f", and do the topics it writes ({self._written}) exist?"
                    raise BrokerUnavailable(
                        f"{what} failed for {self.s.broker_timeout_s:.0f} s "
                        f"({describe(exc)}); is Kafka at {self.s.bootstrap} up"
                        + (also if what == "flush" else "?")
                    ) from exc
                if self._stop:
                    raise BrokerUnavailable(
                        f"{what} failed ({describe(exc)}); stopping as asked "
                        "without it (offsets are committed up to the last acknowledged batch)"
                    ) from exc
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                self._broker_state(False)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def _written(self) -> str:
        """The topics fds run writes, for a message that asks whether they exist."""
        return f"{self.s.output_topic!r} and {self.s.dlq_topic!r}"

    @property
    def _committed_up_to(self) -> str:
        s = self.s
        if s.exactly_once:
            return "the last committed transaction"
        if s.commit_interval_ms and s.max_unacked_batches:
            return (
                f"the acknowledged batches, up to {s.commit_interval_ms} ms behind them "
                "(commit_interval_ms)"
            )
        return "the last acknowledged batch"

    def _waited(
        self, what: str, fn: Callable[[], Any], deadline: float, *, since: float | None = None,
        held: bool = False, progress: Callable[[], int] | None = None,
    ) -> Any:  # fmt: skip
        """``fn()`` run on the broker-call thread and waited for in steps: logged every
        WAIT_LOG_S while the broker does not answer, given up at ``deadline`` and, after a stop,
        at the stop's deadline (BrokerUnavailable). kafka-python's transactional calls wait
        for the broker without any time limit (``fds run --exactly-once`` hung for good when
        the broker went away mid-transaction), and its other calls held a stop for the whole
        ``broker_timeout_s``; the call left behind is abandoned with the process."""
        call = Call(fn)
        logged = stepped = time.monotonic()
        started = logged if since is None else since  # (the first try of a retried call: its
        # log said "5 s of 49 s" 15 s into an outage, a QA pass)
        began = started  # (not moved by progress: the end of a 54-s wait said "0", a review)
        seen = progress() if progress is not None else 0
        said = False  # (a wait said: its end is said too, as BrokerWatch says an outage's)
        while True:
            if call.done.wait(WAIT_STEP_S):
                got = call.result()
                if said:  # (the last line was "... waiting for Kafka", a QA pass)
                    log.warning('Kafka answers again after an outage seconds="%.0f" in="%s"',
                                time.monotonic() - began, what)  # fmt: skip
                    if not held:
                        self._broker_state(True)
                return got
            now = self.health.beat = time.monotonic()  # (live: it ends by the deadline)
            if progress is not None and (got := progress()) > seen:  # slow, not silent: the
                seen, started, logged = got, now, now  # broker answers
                deadline = max(deadline, now + self.s.broker_timeout_s)
                if self._broker_up is False:
                    self._broker_state(True)
            frozen = now - stepped - WAIT_STEP_S
            stepped = now
            if frozen > FROZEN_S:  # this process was stopped (SIGSTOP, a frozen VM), not the
                deadline += frozen  # broker silent: that time is not the broker's (a chaos run)
                started += frozen
                began += frozen
                logged = now
                log.warning("%s: fds run was stopped for %.0f s (not counted as waiting for "
                            "Kafka)", what, frozen)  # fmt: skip
            if self._stop and self._time_left() <= self.s.shutdown_timeout_s / 2:
                raise BrokerUnavailable(
                    f"stopping as asked: {what} still had no answer from Kafka at "
                    f"{self.s.bootstrap} after {now - started:.0f} s (offsets are committed up "
                    f"to {self._committed_up_to}; a restart goes on from there)"
                )
            if now >= deadline:
                raise BrokerUnavailable(
                    f"{what} failed for {self.s.broker_timeout_s:.0f} s (broker_timeout_s): no "
                    f"answer from Kafka at {self.s.bootstrap}; exiting so a supervisor can "
                    f"restart fds (offsets are committed up to {self._committed_up_to})"
                )
            if now - logged >= WAIT_LOG_S:
                logged, said = now, True
                if not held:
                    self._broker_state(False)
                log.warning("%s waiting for Kafka at %s (%.0f s of %.0f s)", what,
                            self.s.bootstrap, now - started, deadline - started)  # fmt: skip
