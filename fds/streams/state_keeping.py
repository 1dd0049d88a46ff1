"""The state of ``fds run``: :class:`_StateKeeping`, a part of
:class:`fds.streams.kafka.Runner` (its base class), keeps the engine state across restarts.

- ``checkpoint``: after a synchronous commit (:mod:`fds.streams.delivery`), the state with
  the input positions it covers goes to the state dir (:mod:`fds.streams.checkpoint`), with
  the runner's own keys (:data:`LEFT_KEY`, :data:`HANDED_KEY`, :data:`TOPIC_ID_KEY`,
  :data:`MARKS_KEY`);
- ``_restore``: at the start, the checkpoint (or, with a state topic, the newer snapshot
  there: ``_fetch_state``) loaded into the engine, checked to be this group's and this input
  topic's (``_check_owner``, ``_check_topic_id``); a bad one set aside (:func:`keep_aside`);
- ``_publish_state``: each checkpoint published to the state topic
  (:mod:`fds.streams.state_topic`), and its index looked for (``_find_state_index``,
  ``_look_for_index``).

Bringing the state restored up to the partitions assigned (catch-up, rebuild, take-over) is
:mod:`fds.streams.handover`'s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka.errors import KafkaError

from fds.errors import ConfigError, FeatureStateMismatch, describe
from fds.models.registry import read_own, write_atomic
from fds.streams.checkpoint import (
    CHECKPOINT_FIX,
    Checkpoint,
    Checkpointer,
    StateDirTaken,
    parse_checkpoint,
)
from fds.streams.kafka_kit import UnreadableRecords, close_producer
from fds.streams.rebuild import horizon_seconds
from fds.streams.settings import flag_of
from fds.streams.state_topic import StateTopic, ident_of, index_of
from fds.timeutil import span

if TYPE_CHECKING:
    from fds.engine import Engine
    from fds.streams.kafka import RunStats
    from fds.streams.label_feed import LabelFeed
    from fds.streams.settings import KafkaSettings

# (the logger of fds run: its lines and their tests name it, wherever the code sits)
log = logging.getLogger("fds.streams.kafka")

# State-topic chunks (512 KB each) sent per batch: a large snapshot is spread over many batches
# instead of blocking one on the producer's 32 MB buffer.
STATE_CHUNKS_PER_BATCH = 8


#: Checkpoint state key of Runner._left (the partitions whose events the state may still hold).
LEFT_KEY = "partitions_left"


#: Checkpoint state key of LabelFeed.handed (the bad labels already dead-lettered).
HANDED_KEY = "bad_labels_handed"


#: Checkpoint state key of the input topic's id on the broker (Runner._topic_id).
TOPIC_ID_KEY = "input_topic_id"


#: Checkpoint state key of Runner._pos_marks: where the decisions past the offsets it covers
#: start on the decisions topic, so that a restart that finds the group's offsets gone (deleted,
#: or expired after offsets.retention.minutes) finds them too, rather than deciding again what
#: was decided since the checkpoint (5,859 duplicates after a kill -9, a review).
MARKS_KEY = "decision_marks"


# The state topic's index, when not used (missing at the start, or a copy to it failed), is
# looked for every INDEX_LOOK_S; once found, should copies fail again, not before a wait that
# doubles each time (from INDEX_LOOK_S up to INDEX_LOOK_MAX_S)
INDEX_LOOK_S = 60.0
INDEX_LOOK_MAX_S = 3600.0


def _left_offsets(left: Any) -> dict[int, int] | None:
    """The offsets of ``Runner._left`` (partition -> (event time, offset) where the state
    stopped following it; ``None``: not known).

    >>> _left_offsets({3: (1.7e9, 120)}), _left_offsets(None), _left_offsets({3: 120})
    ({3: 120}, None, None)
    """
    if not isinstance(left, dict) or not all(isinstance(v, tuple) for v in left.values()):
        return None
    return {p: v[1] for p, v in left.items()}


class _OtherGroupsState(ConfigError):
    """The state to restore is another consumer group's (Runner._check_owner): refused at
    the start, never ignored."""


#: How many files set aside a state dir keeps of one kind (engine.ckpt.bad, .bad.1, .bad.2).
KEEP_ASIDE = 3


def keep_aside(path: Path, to: Path) -> Path:
    """Move ``path`` to ``to``, the one there before to ``to.1`` and so on, :data:`KEEP_ASIDE`
    kept (the next one replaced the last: a QA pass lost a group's checkpoint so); returns
    ``to``."""
    olds = [to, *(to.with_name(f"{to.name}.{i}") for i in range(1, KEEP_ASIDE))]
    try:
        for older, newer in zip(reversed(olds[1:]), reversed(olds[:-1]), strict=True):
            if newer.exists():
                newer.replace(older)
        path.replace(to)
        return to
    except OSError:  # (a folder of one of those names: the start failed, a review)
        stamped = to.with_name(f"{to.name}.{time.time_ns()}")
        path.replace(stamped)
        return stamped


def _horizon_text(engine: Engine) -> str:
    h = horizon_seconds(engine)
    return span(h) if math.isfinite(h) else "the whole log"


def _without_model(state: dict[str, Any]) -> dict[str, Any]:
    """An engine state whose loading leaves the model stage's gate and contests alone."""
    return {**state, "model_gate": None}


class _StateKeeping:
    """Checkpoint, restore and publish the state: a part of :class:`fds.streams.kafka.Runner`."""

    if TYPE_CHECKING:  # (what it uses of the runner: set in Runner.__init__)
        s: KafkaSettings
        engine: Engine
        consumer: Any
        stats: RunStats
        labels: LabelFeed | None
        checkpointer: Checkpointer | None
        state_topic: StateTopic | None
        _ckpt_at: float
        _handed: Any
        _index_at: float
        _index_found: bool
        _index_probe: threading.Thread | None
        _index_producer: Any
        _index_wait: float
        _input_id: str | None
        _left: dict[int, tuple[float, int]] | None
        _pos_marks: dict[int, tuple[int, int]]
        _positions: dict[int, int]
        _producer_factory: Callable[..., Any]
        _published: int
        _restoring: bool
        _saved: dict[int, int]
        _state_producer: Any

        def _reader(self, **config: Any) -> Any: ...
        def _state_reader(self) -> Any: ...
        def _time_left(self) -> float: ...

    def _find_state_index(self) -> None:
        """Send manifests to the state topic's index too when it exists, and look snapshots up
        there first (see _take_over, StateTopic.fetch)."""
        st = self.state_topic
        if st is None:
            return
        index = index_of(st.topic)
        if self.consumer.partitions_for_topic(index):
            st.use_index(index)
        else:
            self._index_at = time.monotonic() + INDEX_LOOK_S
            log.warning(
                'state topic index="%s" does not exist: a takeover of partitions moved here '
                "reads the whole state topic to find the snapshots (every chunk of every "
                "instance's); create it (`fds kafka topics` creates the kit's; compacted, one "
                "partition): fds run looks for it every minute", index,
            )  # fmt: skip

    def _look_for_index(self) -> bool:
        """The state topic's index is not used (missing at the start, or a copy to it failed):
        look for it every minute in a thread of its own (a metadata request may wait for the
        broker), and use it again once found. True when it was just found."""
        st = self.state_topic
        assert st is not None
        if self._index_found:
            self._index_found = False
            st.use_index(index_of(st.topic))
            # a producer of its own again (made at the next publish): one whose sends to the
            # index timed out while it was gone never delivered to it once made again (a QA
            # pass, kafka-python 3.0); the old one is closed off the loop
            old, self._index_producer = self._index_producer, None
            st.index_producer = None
            if old is not None:
                threading.Thread(
                    target=lambda: close_producer(old, 1.0), name="fds-index-close", daemon=True
                ).start()
            # should copies fail again, it is looked for after a wait that doubles each time:
            # an index that exists yet refuses them (an ACL without Write) is not tried every
            # minute for good
            self._index_at = time.monotonic() + self._index_wait
            self._index_wait = min(2 * self._index_wait, INDEX_LOOK_MAX_S)
            log.info('state topic index="%s" found: manifests are copied to it', st.index)
            return True
        probe = self._index_probe
        if (probe is not None and probe.is_alive()) or time.monotonic() < self._index_at:
            return False
        self._index_at = time.monotonic() + INDEX_LOOK_S
        index = index_of(st.topic)

        def look() -> None:
            with contextlib.suppress(Exception):  # (not there, or the broker away: later)
                reader = self._reader(**self.s.reader_config())
                try:
                    self._index_found = bool(reader.partitions_for_topic(index))
                finally:
                    reader.close()

        self._index_probe = threading.Thread(target=look, name="fds-state-index", daemon=True)
        self._index_probe.start()
        return False

    def _checkpoint_due(self) -> bool:
        ck = self.checkpointer
        return (
            ck is not None
            and time.monotonic() - self._ckpt_at >= self.s.checkpoint_every_s
            and not ck.busy()  # the previous background write is still running
        )

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the engine state with the input positions it covers (only between batches,
        after a synchronous commit of all of them: the state then covers exactly
        ``_positions``)."""
        ck = self.checkpointer
        if ck is None or not self._positions or self._restoring:
            return False
        if not force and not self._checkpoint_due():
            return False
        self._ckpt_at = time.monotonic()
        topic, offsets, group = self.s.input_topic, dict(self._positions), self.s.group
        # (the partitions left, in its manifest: a taker may take them from this snapshot)
        left = _left_offsets(self._left)
        try:
            if force or not self.s.checkpoint_in_background:
                ck.save(self._state(), topic=topic, offsets=offsets, left=left, group=group)
            else:
                ck.save_background(
                    self._state, topic=topic, offsets=offsets, left=left, group=group
                )
        except OSError as exc:  # a full disk must not stop decisions; a restart re-folds more
            log.warning('checkpoint failed path="%s" error="%s"; %s', ck.path, exc, CHECKPOINT_FIX)
            ck.failed()  # (fds_checkpoints_total{result="failed"})
            return False
        except StateDirTaken as exc:  # (decisions go on; the other instance keeps its file)
            log.error("checkpoint refused: %s", exc)
            ck.failed()
            return False
        self._saved = offsets  # (stats.checkpoints: counted once written, _count_checkpoints)
        return True

    def _count_checkpoints(self) -> tuple[int, int]:
        """The checkpointer's (saves, failures), a background write that ended reaped first;
        ``stats.checkpoints`` is the saves: it counted each write started, failed or not (a
        QA pass: ``checkpoints=8`` at the stop, 7 of them failed)."""
        ck = self.checkpointer
        if ck is None:
            return (0, 0)
        ck.busy()  # (reaps a background write that ended: counted in saves or failures)
        now = (ck.saves, ck.failures)  # (read once: the listener's thread may add one)
        self.stats.checkpoints = now[0]
        return now

    def _state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the offsets: the engine's state and ``_left``."""
        state = {**self.engine.state_dict(), LEFT_KEY: self._left}
        pos = self._positions
        state[MARKS_KEY] = {p: m for p, (o, m) in self._pos_marks.items() if pos.get(p) == o}
        if self.labels is not None:
            state[HANDED_KEY] = self.labels.handed()
        if self._input_id is not None:
            state[TOPIC_ID_KEY] = self._input_id
        return state

    def _topic_id(self) -> str | None:
        """The input topic's id on the broker (Kafka's metadata since 2.8; None when it has
        none, or the client is not kafka-python's), read by a group-less reader of its own:
        the group's consumer, made to fetch every topic's metadata before it joined, rejoined
        its group for good while other topics were made and deleted (a CI run)."""
        if not callable(getattr(getattr(self.consumer, "_cluster", None), "topic_id", None)):
            return None
        reader = self._reader(**self.s.reader_config())
        try:
            if not reader.partitions_for_topic(self.s.input_topic):
                return None
            tid = reader._cluster.topic_id(self.s.input_topic)
            return None if tid is None else str(tid)
        finally:
            reader.close()

    def _check_topic_id(self, what: str, state: Mapping[str, Any]) -> None:
        """Refuse a saved state of another topic of the input topic's name: one deleted and
        made again, or of another cluster (a kit broker wiped by `fds kafka down --wipe`). Its
        offsets were taken on the new topic, and the records before them were never decided
        (0 of 3,000, a QA pass), or, past its end, every record was decided on the other
        stream's features, flagged late."""
        was = state.get(TOPIC_ID_KEY)
        if was is not None and self._input_id is not None and was != self._input_id:
            # (what the rebuild cannot give back is kept, as for features that do not fit:
            # the ruleset versions served and the demotions, a review)
            raise FeatureStateMismatch(
                f"{what} is the state of an earlier topic {self.s.input_topic!r} (id {was}); "
                f"the broker's topic of that name is another (id {self._input_id}): it was "
                "deleted and made again, or this is another cluster (a kit broker wiped with "
                "`fds kafka down --wipe`). Its offsets would skip the new topic's records "
                "undecided: the state is made from the new topic instead"
            )

    def _restore(self, *, model: bool = True) -> None:
        """Load the state into the engine: the local checkpoint, else (none, or one that
        cannot be used) the newest snapshot on the state topic, else nothing (the state of
        already-consumed partitions is then rebuilt from the input). Seeks happen on
        assignment. ``model=False``: the model stage's gate and contests stay as they are."""
        ck = self.checkpointer
        if ck is None:
            return
        sources: list[tuple[str, Callable[[], Checkpoint | None]]] = [("checkpoint", ck.load)]
        if self.state_topic is not None:
            sources.append(("state topic snapshot", lambda: self._fetch_state(ck)))
        ignored = kept = False
        for what, load in sources:
            got = None
            try:
                got = load()
                if got is None:
                    continue
                self._check_owner(what, got, ck)
                if got.topic != self.s.input_topic:
                    raise ConfigError(
                        f"{what} is the state of input topic {got.topic!r}, and group "
                        f"{self.s.group!r} reads {self.s.input_topic!r}: a group reads one input "
                        "topic. Moved to the new topic for good: nothing to do, the state is "
                        "made from it. Another deployment still reads the old topic: give this "
                        f"one its own {self.s.named('group')} and state dir",
                        where=str(ck.path),
                    )
                self._check_topic_id(what, got.state)
                self.engine.load_state_dict(got.state if model else _without_model(got.state))
                self._left = got.state.get(LEFT_KEY)
                self._handed = got.state.get(HANDED_KEY)
                marks = got.state.get(MARKS_KEY)  # (none in a release's before 2026-12-07)
                self._pos_marks = {
                    p: (got.offsets[p], m)
                    for p, m in (marks.items() if isinstance(marks, dict) else ())
                    if p in got.offsets and type(m) is int
                }
                if self.labels is not None:
                    self.labels.skip_handed(self._handed)
                if ck.on_disk is not None:  # (its manifest, should it be published, says so)
                    ck.on_disk = ck.on_disk._replace(left=_left_offsets(self._left))
            except _OtherGroupsState:  # (ignored, its offsets would still be taken)
                if what != "checkpoint":  # (the snapshot was written as the checkpoint: gone
                    ck.path.unlink(missing_ok=True)  # again, the state dir as it was)
                raise
            except OSError as exc:  # (only a ConfigError was caught: a full disk stopped fds
                log.warning(  # run at its start, a QA pass)
                    'state dir="%s": %s not restored (%s)', ck.dir, what, describe(exc)
                )
                ignored = True
                continue
            except ConfigError as exc:
                log.warning("%s ignored: %s", what, exc)
                if isinstance(exc, FeatureStateMismatch) and got is not None and not kept:
                    self._keep_history(what, got.state)  # (the newest: the checkpoint first)
                    kept = True
                if ck.path.exists():  # kept for a post-mortem (the topic's: it was left as
                    bad = ".bad" if what == "checkpoint" else ".snapshot.bad"  # the checkpoint)
                    aside = keep_aside(ck.path, ck.path.with_name(ck.path.name + bad))
                    log.warning('%s kept aside as path="%s"', what, aside)
                ignored = True
                if kept:  # the topic's snapshot is of the same declarations: not fetched for
                    break  # nothing ("restored", then "ignored": a QA pass)
                continue
            self._positions = dict(got.offsets)
            log.info(
                'restored %s path="%s" offsets="%s" age_s="%.1f"',
                what, ck.path, self._positions, time.time() - got.written_at,
            )  # fmt: skip
            return
        # (after a checkpoint was ignored, an INFO line that read as routine, though the
        # rebuild may take long: a QA pass; its pair last, a field of its own in JSON logs)
        log.log(
            logging.WARNING if ignored else logging.INFO,
            "no usable checkpoint: the state of the partitions already consumed is rebuilt from "
            'the input (each one\'s feature horizon read again%s)%s path="%s"',
            f", {_horizon_text(self.engine)}" if ignored else "",
            ", unless other instances' snapshots on the state topic hold them (a takeover)"
            if self.state_topic is not None
            else "",
            ck.path,
        )

    def _check_owner(self, what: str, got: Checkpoint, ck: Checkpointer) -> None:
        """Refuse a checkpoint another consumer group wrote, unless this group adopts it
        (``adopt_state_of``: a rename). Its offsets are that group's: a new group given its
        state dir (no committed offsets of its own) resumed from them, and took every record
        before them as decided, though it had decided none (a QA pass, two deployments on one
        cluster). A checkpoint of an earlier release records no group: restored as before."""
        s = self.s
        if got.group is None or got.group in (s.group, s.adopt_state_of):
            if got.group is not None and got.group != s.group:
                log.warning(
                    'adopting the state of group="%s" as group="%s" (%s): it goes on from that '
                    "group's committed offsets; stop every instance of the old group for good",
                    got.group, s.group, s.named("adopt_state_of"),
                )  # fmt: skip
            return
        source = (
            f"state topic {self.state_topic.topic!r} (key {self.state_topic.ident!r})"
            if what != "checkpoint" and self.state_topic is not None
            else str(ck.path)
        )
        adopting = (
            f"; {s.named('adopt_state_of')} names group {s.adopt_state_of!r}, not it"
            if s.adopt_state_of
            else ""
        )
        raise _OtherGroupsState(
            f"the {what} from {source} is the state of consumer group {got.group!r}, and "
            f"this is group {s.group!r}{adopting}: restored, this group would start at the "
            "offsets that state covers, as if it had decided every record before them. Give "
            f"group {s.group!r} its own state dir ({s.named('state_dir')}; the default one "
            "follows the group)"
            + (" and instance id on the state topic" if self.state_topic is not None else "")
            + f"; or, to continue group {got.group!r} under the new name {s.group!r} (a "
            f"rename: stop {got.group!r} first), start with "
            f"{flag_of('adopt_state_of')} {shlex.quote(got.group)}"
        )

    def _keep_history(self, what: str, state: dict[str, Any]) -> None:
        """Of a saved state whose features do not fit (declarations changed while the engine
        was down), keep what the rebuild from the input cannot give back (``Engine.history``):
        the ruleset versions served (a version name is never reused for other rules) and the
        demotions; they went with the features (a QA pass). The features, the alert budget and
        the breaker are rebuilt from the input through the whole engine (the saved budget and
        breaker would count its records twice); the model's gate and contests start anew: they
        judged the model on the features as they were (a review)."""
        kept = {k: state[k] for k in self.engine.history() if k in state}
        self.engine.load_state_dict(_without_model(kept), features=False)
        log.warning(  # (it said "the demotions" kept and "the rate breaker" not: a QA pass)
            "%s: kept the ruleset versions served and the rules and model the rate breaker "
            "demoted; the features, the alert budget, the breaker's counts of recent decisions "
            "and the model gate start from the input", what,
        )  # fmt: skip

    def _fetch_state(self, ck: Checkpointer) -> Checkpoint | None:
        """The newest snapshot on the state topic, written as the local checkpoint and loaded."""
        st = self.state_topic
        assert st is not None
        t0 = time.monotonic()
        try:
            data = st.fetch(self._state_reader, timeout_s=self.s.broker_timeout_s)
        except UnreadableRecords as exc:  # the snapshot is a shortcut: rebuilt without it
            log.warning(
                'state topic="%s": a batch of it cannot be read (%s): the state is rebuilt '
                "from the input; this happens at every restore until its partition is deleted "
                "and made again (a snapshot is written at the next checkpoint)",
                st.topic, exc,
            )  # fmt: skip
            return None
        old, instance = self.s.adopt_state_of, self.s.group_instance_id
        if data is None and old and instance:  # a rename: the old group's snapshot
            data = StateTopic(st.topic, ident_of(old, instance), key=st.key).fetch_foreign(
                self._state_reader, timeout_s=self.s.broker_timeout_s
            )
        if data is None:
            return None
        self._published = ck.saves  # what was just read is on the topic already
        log.info(
            'restored checkpoint from state topic snapshot topic="%s" instance="%s" bytes="%d" '
            'seconds="%.1f"',  # (its pairs last, fields of their own: "state topic" kept whole)
            st.topic, st.ident, len(data), time.monotonic() - t0,
        )  # fmt: skip
        try:
            write_atomic(ck.path, data)
        except OSError as exc:  # a full state disk stopped fds run at its start (a QA pass)
            log.warning(
                'state dir="%s": the snapshot is not written as the checkpoint (%s); it is '
                "restored from memory, and the next checkpoint writes it",
                ck.dir, describe(exc),
            )  # fmt: skip
            ck.on_disk = None  # (nothing on disk that a publish could send)
            return parse_checkpoint(data, where=f"state topic {st.topic!r} (key {st.ident!r})")
        return ck.load()

    def _publish_state(self, *, whole: bool = False) -> None:
        """Send the newest checkpoint to the state topic, a few chunks per call (``whole``: all
        of it now, at a stop); not awaited."""
        st, ck = self.state_topic, self.checkpointer
        if st is None or ck is None:
            return
        found = st.index is None and not whole and self._look_for_index()
        try:
            if self._state_producer is None:  # its own: the decisions' may be transactional
                # max_block_ms: a full buffer or a missing topic must not hold decisions.
                self._state_producer = self._producer_factory(
                    **self.s.client_config(), acks="all", linger_ms=5, batch_size=1 << 20,
                    max_block_ms=1000, bootstrap_timeout_ms=self.s.timeout_ms,
                )  # fmt: skip
            if st.index is not None and self._index_producer is None:
                self._index_producer = st.index_producer = self._producer_factory(
                    **self.s.client_config(), acks="all", linger_ms=5, max_block_ms=1000,
                    bootstrap_timeout_ms=self.s.timeout_ms,
                )  # fmt: skip
            if found:  # (it holds an older copy, or none: the newest manifest now)
                st.copy_to_index(self._state_producer)
            # (busy() first: it reaps a finished background write, which counts it in saves;
            # when idle nothing else asked, so that checkpoint was never published: a QA pass)
            if not st.publishing and not ck.busy() and ck.saves != self._published:
                self._published = ck.saves
                covers = ck.on_disk  # (its manifest says so: another instance takes over)
                # (only what this user wrote: peers unpickle it, signed, as their own state)
                st.start(read_own(ck.path), **(covers._asdict() if covers else {}))
            if whole:  # a stop: the chunks, then (once acknowledged) the manifest, now
                st.step(self._state_producer, chunks=1 << 30, flush_s=self._time_left() / 2)
            else:
                st.step(self._state_producer, chunks=STATE_CHUNKS_PER_BATCH)
        except (KafkaError, OSError, ConfigError) as exc:  # decisions go on; the next one is
            st.abort()  # sent
            log.warning('state topic="%s" publish failed: %s: %s', st.topic,
                        type(exc).__name__, exc)  # fmt: skip
