"""The labels topic, read by `fds run` into the feature state (``fds run --labels-topic``).

Label-aware aggregates (``fraud_count``, ``fraud_rate`` per merchant, device, ...) count the
fraud labels known at the moment of each decision. `fds train` consumes the labels for the
model; the scorers need them too, for their features. Every instance reads *every* partition
of the labels topic without a consumer group (a merchant's transactions are spread over all
input partitions, so each instance needs all labels), and applies each label to its feature
state between two batches (``FeaturePlan.on_label``: attributed to the labelled transaction's
entity values at its own event time; a label for a transaction this instance never decided is
counted as unmatched and changes nothing).

A label whose transaction this instance has not decided yet waits while the input has not
caught up with it (the label's record timestamp, when it was produced, is ahead of the newest
input record decided; with the input idle, for :data:`RACE_S` after it was read, on this
machine's clock, if it was produced lately): after a restart, a backlog of transactions and one
of labels are read side by side, and a label is applied once its transaction is decided, not
dropped as unmatched before; and a labeller a few seconds ahead of the transactions' producer
finds its transaction (applied at once to an idle input, such a label was unmatched until a
restart read it again: a QA pass). Other labels are applied at once, before the next batch is
decided. At most ``MAX_HELD`` labels wait.

A label counts only for decisions of transactions later in event time than the label itself
(its ``ts``, when it became known), as in a replay: one whose transaction is decided, or one
ahead of the input whose transaction is not (it comes before the label's time, if it is this
instance's: labels produced before their transactions were unmatched at once, a QA pass), and
whose time the input has not reached yet (a backlog read after a restart or an outage, labels
of days later already on the topic) waits in :attr:`due` until ``fds run`` is about to decide
(or fold) a transaction later than it (:meth:`release`). Before, it was applied at once, so the
decisions of the backlog saw frauds labelled days after them, and the same input gave other
decisions with other poll sizes (a review).

Applying a label is idempotent (a label already counted as it says changes nothing), so the
feed keeps no offsets of its own: on start, and again after the state was caught up or rebuilt
from the input, it reads the labels topic from the label horizon (records produced within the
feature plan's label TTL: older labels can only be for transactions the state has forgotten).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from fds.errors import ConfigError
from fds.schema import NaiveWatch, label_of, produced_bad
from fds.streams.rebuild import start_offsets

__all__ = ["LabelFeed", "reads_labels"]

log = logging.getLogger(__name__)
#: The first labels are watched for a ``ts`` text without an offset (read as UTC).
_NAIVE = NaiveWatch("label")

#: Label records fetched per call of :meth:`LabelFeed.poll` (the rest waits for the next one).
MAX_PER_POLL = 2000
#: Labels that wait for their transaction; beyond it, more are applied at once (unmatched).
MAX_HELD = 100_000
#: With the input idle, a label read less than this long ago (this machine's monotonic clock:
#: not the labeller's, which may be ahead or behind) waits for its transaction: the two are
#: produced by different systems, the label may come first by a few seconds.
RACE_S = 10.0
#: ... if it was produced (its record timestamp) at most RACE_S + this long before this
#: machine's clock: a label read by the re-read of the topic at a start, produced long ago,
#: races nothing (100,000 of them were held, the newest applied unmatched at once, and every
#: loop pass scanned them: a review); the allowance is for the two machines' clocks.
CLOCKS_APART_S = 60.0
#: A label due whose transaction is not decided yet waits for it (a chargeback dated to the
#: day, 00:00, before its transaction) until the decisions are this far past the label's time
#: (event time); then it is unmatched (another instance's transaction, or none).
EARLY_WAIT_S = 86400.0


def reads_labels(plan: Any) -> bool:
    """Does ``plan`` have label-aware aggregates (``fraud_count``, ``fraud_rate``)?"""
    groups = getattr(getattr(plan, "layout", None), "groups", ())
    return any(getattr(g, "has_fraud", False) for g in groups)


class LabelFeed:
    """Applies the labels topic to ``plan`` (a :class:`~fds.features.FeaturePlan`).

    Parameters
    ----------
    consumer
        A group-less KafkaConsumer (``assign``/``seek``/``poll``) for the labels topic.
    topic
        The labels topic.
    plan
        The feature plan whose label-aware aggregates the labels update.

    A label that cannot be parsed waits in :attr:`bad` as ``(record, error)`` until the
    caller dead-letters it with its next batch (inside that batch's transaction under
    exactly-once); a rewind does not queue a bad label again.
    """

    def __init__(
        self, consumer: Any, topic: str, plan: Any, also: Callable[[Any], None] | None = None,
        fix: str = "drop --labels-topic", ahead_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.consumer = consumer
        # a label stamped more than this after it was produced is a bad label (0: no check),
        # as in fds train (one in 2099 waited, unapplied and unsaid, for ever: a QA pass)
        self.ahead_s = ahead_s
        self.topic = topic
        self.fix = fix  # what a missing topic is told to do (where the topic was named)
        self.plan = plan
        self.also = also  # also given each label applied (the model stage: gate and contests)
        self.bad: list[tuple[Any, BaseException]] = []
        # labels that changed the features since last read (not a re-read one: the metric)
        self.changed = 0
        self._bad_next: dict[int, int] = {}  # partition -> offset after the last bad one queued
        # partition -> offset after the last bad one whose dead letter the broker took
        self._confirmed: dict[int, int] = {}
        self._tps: list[Any] = []
        # (record ms, label, when it was read: time.monotonic())
        self._held: deque[tuple[int, dict[str, Any], float]] = deque()
        #: Labels waiting for their transaction, by tx_id; those it reached: their id() in _done
        self.waiting: dict[str, list[dict[str, Any]]] = {}
        self._done: set[int] = set()
        # labels ahead of the decisions' event time: (ts, arrival, label), earliest first
        self._later: list[tuple[float, int, dict[str, Any]]] = []
        #: Labels dated before their transaction, which is not decided yet, by tx_id: they
        #: wait for it (:meth:`reached`) up to EARLY_WAIT_S of event time past their own; by
        #: their time, for that (some reached already: skipped then); how many wait.
        self.early: dict[str, list[dict[str, Any]]] = {}
        self._early_heap: list[tuple[float, int, dict[str, Any]]] = []
        self._early_n = 0
        self._seq = itertools.count()
        #: The event time of the earliest label waiting for the decisions to pass it (inf: none).
        self.due = math.inf

    def rewind(
        self, input_ms: float, timeout_s: float = 60.0, stopping: Callable[[], bool] = bool
    ) -> int:
        """(Re)read the labels topic from the label horizon up to its current end: on start,
        and after the state was caught up or rebuilt (labels applied before may be missing
        from it, or found no match). Labels are applied at the end, and whenever more than
        ``2 * MAX_HELD`` are held (``input_ms`` as in :meth:`poll`: bounded memory); returns,
        with how many were applied or made due (:attr:`due`), once every label there is read,
        so the next batch is decided with them. ``timeout_s``: how long without progress
        before giving up; ``stopping()`` true (a SIGTERM): return at once, the rest unread."""
        c = self.consumer
        if not self._tps:
            parts = c.partitions_for_topic(self.topic)
            if not parts:
                raise ConfigError(
                    f"labels topic {self.topic!r} does not exist: create it (`fds kafka topics`) "
                    f"or {self.fix}"
                )
            self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            c.assign(self._tps)
        self._held.clear()
        self.waiting.clear()
        self._done.clear()
        self.early.clear()  # (read again below)
        self._early_heap.clear()
        self._early_n = 0
        self._later.clear()  # (read again below)
        self.due = math.inf
        ttl = float(self.plan.label_ttl)
        # (counted back from the state's event time: from now, a state rebuilt after an
        # outage longer than the ttl found none of its labels, as a rebuild read no input, a
        # QA pass)
        since = start_offsets(c, self._tps, ttl, "the label re-read", at_s=self.plan.watermark)
        for tp, offset in since.items():
            c.seek(tp, offset)
        end = c.end_offsets(self._tps)
        for tp in self._tps:  # (a topic made again: its offsets begin at 0 again, a review)
            if self._bad_next.get(tp.partition, 0) > end[tp]:
                log.warning(
                    'labels topic="%s" partition %d ends at %d, before the bad labels already '
                    "dead-lettered (%d): made again? its bad labels are dead-lettered anew",
                    self.topic, tp.partition, end[tp], self._bad_next[tp.partition],
                )  # fmt: skip
                self._bad_next[tp.partition] = self._confirmed[tp.partition] = 0
        deadline = time.monotonic() + timeout_s
        n = 0
        while any(c.position(tp) < end[tp] for tp in self._tps):
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(
                    f"labels topic {self.topic!r}: no progress reading it for {timeout_s} s"
                )
            if stopping():
                return n
            if self._fetch(timeout_ms=100):
                deadline = time.monotonic() + timeout_s
            if len(self._held) > 2 * MAX_HELD:  # memory bound; each label scanned ~twice
                n += self._apply(input_ms)
        return n + self._apply(input_ms)

    def _fetch(self, timeout_ms: int) -> int:
        """Read what has arrived into the labels held; returns how many records."""
        held = self._held
        got = 0
        now = time.monotonic()
        for records in self.consumer.poll(timeout_ms=timeout_ms, max_records=MAX_PER_POLL).values():
            got += len(records)
            for msg in records:
                try:
                    label = label_of(msg, self.ahead_s, _NAIVE)
                except Exception as exc:  # a bad label is dead-lettered, never dropped
                    if msg.offset >= self._bad_next.get(msg.partition, 0):
                        self.bad.append((msg, produced_bad(msg, exc) or exc))
                        self._bad_next[msg.partition] = msg.offset + 1
                    continue
                held.append((msg.timestamp, label, now))
        return got

    def poll(self, input_ms: float) -> int:
        """Apply the labels that have arrived (no wait); a label whose transaction is unknown
        waits while it was produced after ``input_ms`` (the newest input record decided;
        ``inf`` when the input is idle: then it waits :data:`RACE_S` from when it was read).
        Returns how many were applied or made due."""
        if not self._tps:
            return 0
        self._fetch(timeout_ms=0)
        return self._apply(input_ms)

    def reached(self, tx_id: str) -> int:
        """Transaction ``tx_id`` was just decided, or folded into the state (what a restore left
        to fold, as ``fds run`` decides): the labels that waited for it count from the next
        transaction after their own time (:meth:`release`), inside the batch too (found by a
        review: between batches only, so one input gave other decisions with other poll
        sizes). ``fds run`` calls it for a transaction in :attr:`waiting` or :attr:`early`
        only."""
        held = self.waiting.pop(tx_id, None) if self.waiting else None
        early = self.early.pop(tx_id, None) if self.early else None
        n = 0
        for label in held or ():
            self._when_due(label)
            self._done.add(id(label))  # (still held, so alive: skipped there)
            n += 1
        if early:  # (dated before it: applied now, right after it; not held, so no id kept:
            self._early_n -= len(early)  # one freed and reused by a new label skipped it,
            for label in early:  # a review)
                self._when_due(label)
                n += 1
        return n

    def awaits(self, tx_id: str) -> bool:
        """Do labels wait for transaction ``tx_id`` (:meth:`reached` to be called)? (fds run
        looks the two up itself, per event.)"""
        return tx_id in self.waiting or tx_id in self.early

    def release(self, t: float) -> float:
        """A transaction of event time ``t`` is about to be decided or folded: apply the labels
        that waited for the decisions to pass them (``ts < t``, as a replay learns them), and
        return the new :attr:`due`."""
        later, early, knows = self._later, self._early_heap, self.plan.knows
        while early and early[0][0] + EARLY_WAIT_S < t:
            self._unmatched(heapq.heappop(early)[2])
        while later and later[0][0] < t:
            label = heapq.heappop(later)[2]
            if knows(label["tx_id"]):
                self._one(label)
            else:  # dated before its transaction (it was applied unmatched, lost: a QA pass
                self._park(label)  # of labels produced before their transactions; a replay
        return self._next_due()  # learns it right after it)

    def _park(self, label: dict[str, Any]) -> None:
        """``label``'s transaction is not decided: it waits for it (see :attr:`early`), unless
        MAX_HELD wait already (then it is unmatched at once, as before)."""
        if self._early_n >= MAX_HELD:
            self._one(label)
            return
        self.early.setdefault(label["tx_id"], []).append(label)
        self._early_n += 1
        heap = self._early_heap
        heapq.heappush(heap, (label["ts"], next(self._seq), label))
        if len(heap) > 2 * MAX_HELD:  # (those reached meanwhile, dropped: bounded)
            heap[:] = [(x["ts"], next(self._seq), x) for xs in self.early.values() for x in xs]
            heapq.heapify(heap)
        self._next_due()  # (its wait's end: parked by a poll, it never ended, a review)

    def _next_due(self) -> float:
        """:attr:`due`: the earliest label waiting for the decisions to pass its time, or an
        early one's wait for its transaction ending."""
        later, early = self._later, self._early_heap
        self.due = min(later[0][0] if later else math.inf,
                       early[0][0] + EARLY_WAIT_S if early else math.inf)  # fmt: skip
        return self.due

    def _unmatched(self, label: dict[str, Any]) -> None:
        """``label`` waited :data:`EARLY_WAIT_S` for its transaction (if it still waits):
        applied unmatched."""
        tx_id = label["tx_id"]
        mine = self.early.get(tx_id)
        if mine is None or not any(x is label for x in mine):
            return  # (its transaction came)
        mine[:] = [x for x in mine if x is not label]
        if not mine:
            del self.early[tx_id]
        self._early_n -= 1
        self._one(label)

    def _when_due(self, label: dict[str, Any]) -> None:
        """Apply ``label`` now if the decisions are past its time, else when they pass it."""
        t = label["ts"]
        if t < self.plan.watermark:
            self._one(label)
            return
        later = self._later
        heapq.heappush(later, (t, next(self._seq), label))
        if len(later) > MAX_HELD:  # memory bound: the earliest is applied ahead of its time
            self._one(heapq.heappop(later)[2])
        self._next_due()

    def _one(self, label: dict[str, Any]) -> None:
        self.changed += bool(self.plan.on_label(label))
        if self.also is not None:
            self.also(label)

    def _apply(self, input_ms: float) -> int:
        held = self._held
        if not held:
            return 0
        wm = self.plan.watermark
        knows = self.plan.knows
        kept: deque[tuple[int, dict[str, Any], float]] = deque()
        by_id: dict[str, list[dict[str, Any]]] = {}
        done = self._done
        room = MAX_HELD
        n = 0
        idle = input_ms == math.inf
        read_since = time.monotonic() - RACE_S  # (idle: a label read after it waits ...)
        made_since = (time.time() - RACE_S - CLOCKS_APART_S) * 1000.0  # (... if produced since)
        for ms, label, read_at in held:
            if done and id(label) in done:
                continue  # applied when its transaction was folded
            tx_id = label["tx_id"]
            known = knows(tx_id)
            behind = read_at > read_since and ms > made_since if idle else ms > input_ms
            if behind and room > 0 and not known:
                kept.append((ms, label, read_at))
                by_id.setdefault(tx_id, []).append(label)
                room -= 1
                continue
            if known or label["ts"] > wm:  # applied once the decisions pass its time: ahead
                # of the input, its transaction (earlier) is decided by then if it is this
                # instance's (labels produced before their transactions were applied unmatched
                # at once, and no decision saw them: a QA pass of a fleet fed the labels first;
                # held with the others, an idle instance's were scanned at each pass: a review)
                self._when_due(label)
            elif label["ts"] + EARLY_WAIT_S > wm:  # its transaction may still come (dated
                self._park(label)  # before it): it waits, as one due (a review)
            else:  # its transaction can no longer come: unmatched
                self._one(label)
            n += 1
        self._held, self.waiting, self._done = kept, by_id, set()
        return n

    def take_bad(self) -> list[tuple[Any, BaseException]]:
        """The bad labels queued since the last call (see the class docstring)."""
        bad, self.bad = self.bad, []
        return bad

    def confirm(self, msgs: list[Any]) -> None:
        """The dead letters of bad labels ``msgs`` (taken by :meth:`take_bad`) were taken by
        the broker (their batch acknowledged, or its transaction committed)."""
        done = self._confirmed
        for msg in msgs:
            done[msg.partition] = max(done.get(msg.partition, 0), msg.offset + 1)

    def handed(self) -> dict[str, Any]:
        """Where the bad labels dead-lettered end, per partition: after the last one whose
        dead letter the broker took (:meth:`confirm`; not one still on its way, a review). A
        checkpoint keeps it, so a restart's re-read does not dead-letter them again (every
        restart did: a label dead-lettered anew at each rolling update for its topic's
        retention, and the dead-letter alert fired, a QA pass)."""
        return {"topic": self.topic, "next": dict(self._confirmed)}

    def skip_handed(self, handed: Any) -> None:
        """Dead-letter no bad label before ``handed`` (:meth:`handed` of a checkpoint) again;
        one of another labels topic is ignored."""
        if isinstance(handed, dict) and handed.get("topic") == self.topic:
            for p, offset in handed["next"].items():
                self._bad_next[p] = max(self._bad_next.get(p, 0), offset)
                self._confirmed[p] = max(self._confirmed.get(p, 0), offset)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()
