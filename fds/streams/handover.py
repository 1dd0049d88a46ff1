"""Partition assignment and handover of ``fds run``: :class:`_Handover`, a part of
:class:`fds.streams.kafka.Runner` (its base class), brings the state up to the partitions
assigned before anything of them is decided.

After each assignment (``_on_assigned``, then ``_restore_assigned`` at the loop's next pass):

- where the decisions past the committed offsets already are (``_find_decided``; the commit
  marks of :mod:`fds.streams.delivery`), so that a restart folds those records instead of
  deciding them again; committed offsets completed or adopted (``_commit_start``,
  ``_complete_ahead``, ``_adopt_commits``);
- the state restored (:mod:`fds.streams.state_keeping`) brought up to the group's committed
  offsets (``_bring_up_to_date``): the gap folded on top (catch-up), or, for a partition the
  state did not follow, rebuilt from the feature horizon (:mod:`fds.streams.rebuild`), alone
  and merged when it moved here (``_moved_alone``, ``_merge_moved``), or taken over from
  another instance's snapshot on the state topic (``_take_over``, ``_adopt``);
- meanwhile the group is answered (``_keep_alive``), a silent broker noticed (``_stalled``),
  the progress said (``_report_restoring``); a rebalance during it starts it again
  (``_restart_restore``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from fds.errors import ConfigError, FdsError, describe
from fds.schema import loads_record
from fds.streams.checkpoint import parse_checkpoint
from fds.streams.delivery import DECIDED_MARK, GROUP_HEADER, WAIT_LOG_S
from fds.streams.kafka_kit import Stopped, UnreadableRecords
from fds.streams.rebuild import (
    STAGES_TAIL_S,
    horizon_seconds,
    last_times,
    read_merged,
    start_offsets,
)
from fds.streams.service import PROGRESS_EVERY_S
from fds.streams.settings import flag_of
from fds.streams.state_keeping import LEFT_KEY, _left_offsets, _without_model
from fds.streams.state_topic import FETCH_BYTES as STATE_FETCH_BYTES
from fds.streams.state_topic import (
    StateTopic,
    ident_of,
    manifest_newer,
    manifest_offsets,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from fds.engine import Engine
    from fds.health import Health
    from fds.streams.align import Aligner
    from fds.streams.checkpoint import Checkpointer
    from fds.streams.kafka import RunStats
    from fds.streams.settings import KafkaSettings

# (the logger of fds run: its lines and their tests name it, wherever the code sits)
log = logging.getLogger("fds.streams.kafka")

# Consumer lag is a gauge for dashboards: once a second is plenty and costs nothing per event.
LAG_EVERY_S = 1.0

# A restore (catch-up or rebuild) polls the group consumer this often, so that a rebalance the
# group starts meanwhile does not wait for the restore to end (Runner._keep_alive).
KEEPALIVE_S = 0.5

#: Records read past a partition's committed offset for the event time of its next one to decide
#: (Runner._next_times: the first may be a dead letter).
PEEK_RECORDS = 16

#: How long a restore's lag report waits for the partitions' ends (Runner._report_restoring).
ENDS_TIMEOUT_MS = 300

# How long a restart waits to read the decisions already out past the committed offsets
# (Runner._find_decided) before it decides their records again.
FIND_TIMEOUT_S = 10.0

# A restore's read that got nothing for this long asks the broker (Runner._stalled), within
# STALL_PROBE_S, and again after as long.
STALL_S = 3.0
STALL_PROBE_S = 1.0


def _until_stopped(records: Iterator[Any], mark: bool = False) -> Iterator[Any]:
    """``records`` until a stop cuts them short (:class:`Stopped`), then, with ``mark``, one
    ``None``: a caller that checks the stop flag for each record sees it there (and does not
    take what it read for the whole)."""
    try:
        yield from records
    except Stopped:
        if mark:
            yield None


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


class _Handover:
    """Bring the state up to the partitions assigned: a part of
    :class:`fds.streams.kafka.Runner`."""

    if TYPE_CHECKING:  # (what it uses of the runner: set in Runner.__init__)
        s: KafkaSettings
        engine: Engine
        consumer: Any
        metrics: Any
        stats: RunStats
        health: Health
        aligner: Aligner | None
        checkpointer: Checkpointer | None
        state_topic: StateTopic | None
        _ahead: bool
        _alone_refused: bool
        _broker_up: bool | None
        _busy: str | None
        _consumer_factory: Callable[..., Any]
        _copartitioned: bool | None
        _emptied: bool
        _ends_at: float
        _fold_delay: float
        _found: dict[Any, tuple[int, deque[tuple[str, int]]]]
        _fresh_state: bytes
        _input_ms: float
        _joining: bool
        _labels_due: bool
        _lag_shown: set[int]
        _left: dict[int, tuple[float, int]] | None
        _live: bool
        _n_assigned: int
        _out_next: dict[int, int]
        _pos_marks: dict[int, tuple[int, int]]
        _positions: dict[int, int]
        _rebalances: int
        _rebuild: bool
        _refold: dict[Any, int]
        _restoring: bool
        _stall_probe_at: float
        _stop: bool
        _unresolved: set[int]

        def _broker_state(self, up: bool) -> None: ...
        def _check_copartitioned(self) -> None: ...
        def _check_topic_id(self, what: str, state: Mapping[str, Any]) -> None: ...
        def _fold(self, tx: Mapping[str, Any]) -> None: ...
        def _lag_of(self, partition: int, n: int) -> None: ...
        def _model_without_labels(self) -> None: ...
        def _next_offset(self, tp: Any, timeout_ms: int) -> int | None: ...
        def _parsed(self, msg: Any) -> Mapping[str, Any] | None: ...
        def _probe(self, timeout_s: float) -> str | None: ...
        def _reader(self, **config: Any) -> Any: ...
        def _restore(self, *, model: bool = True) -> None: ...
        def _resume_from(self, offsets: Mapping[Any, int | None]) -> None: ...
        def _retrying(
            self, what: str, fn: Callable[[], Any], timeout_s: float | None = None, *,
            held: bool = False, progress: Callable[[], int] | None = None,
        ) -> Any: ...  # fmt: skip
        def checkpoint(self, *, force: bool = False) -> bool: ...

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
