"""``fds train``: the trainer service. Decisions + labels from Kafka -> learn -> publish versions.

The loop (one thread, batched)::

    poll(decisions, labels) -> decisions first: keep each decision's model input
                                 (features snapshot + the optional ``tx`` object) by tx_id
                            -> labels: join with the kept input, learn (fds.models.Trainer)
                            -> publish a version when the spec's ``publish`` policy says so
                            -> commit (order below)

Labels are learned in event-time order across the labels partitions (fds.streams.align): a
partition with labels still unread holds the others back (until it is read, or the others were
fetched for ``label_wait_s`` without it, ``max_hold_s`` at most). Labels wait for their
decisions: a label whose event time is ahead of the newest decision consumed (its decision may
still be on its way) holds the labels after it in memory (at most ``2 x max_poll_records`` a
partition; the consumer is sought back to the rest), and they go on when
decisions catch up, or when no decision arrived for ``label_wait_s`` (nothing more to wait for:
the label is then learned or counted unjoined; not while the decisions topic is empty), or after
``label_max_wait_s`` of waiting (a label stamped in the future; logged). Not ``pause``:
kafka-python 3.0 can leave a resumed partition unfetched for good (it parks the records it had
fetched at the pause), and a labels backlog then stopped being read without a word.

Commit order per batch (the trainer's own checkpoint carries the input offsets, so offsets
committed to Kafka are for lag monitoring and a fresh state dir):
  1. ``publish`` when due: artifact + manifest into the registry (atomic, fsync), then the
     announcement on the compacted models topic (key = spec name; value = a manifest pointer
     ``{name, version, sha256, hmac, size, path, artifact_b64}``), flushed; a publish the
     registry refuses (full, read-only, deleted) is logged and counted
     (``fds_model_publishes_total{result="failed"}``), and the batch goes on to 2 and 3: the
     next try, ``PUBLISH_RETRY_S`` later, carries everything learned meanwhile;
  2. one SQLite transaction: the snapshot store's changes and the trainer checkpoint (model,
     counters, input offsets) commit together;
  3. ``consumer.commit(offsets)``.
  On restart the checkpoint is restored and every partition is sought to its offset, so no
  label is learned twice or lost: the snapshots a batch consumed come back with the offsets
  before it. A failed batch is rolled back, not committed. A crash between 1 and 2 publishes
  the same learning again under a new version number.

Scorers (``fds run``) serve the registry champion and poll the registry
(:func:`fds.models.build_model_stage` with ``watch=True``): a version published here reaches
them within the poll period when they share the registry directory. Scorers elsewhere run
``fds run --models-topic models``: :class:`fds.streams.model_feed.ModelFeed` verifies each
announcement and imports it into their own registry, which they poll the same way.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import heapq
import logging
import math
import pickle
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from kafka import ConsumerRebalanceListener, KafkaProducer
from kafka.errors import FencedInstanceIdError, KafkaError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

from fds import gcpolicy
from fds.cli import file_path, registry_folder
from fds.errors import ArtifactError, ConfigError, FdsError, describe
from fds.health import Health, stale_after
from fds.logs import LineBudget, say
from fds.metrics import Metrics, NullMetrics, add_metrics_arguments, make_metrics
from fds.models.registry import (
    DEFAULT_REGISTRY,
    ENTRY_FIELDS,
    Registry,
    passed_over,
    rolled_back_entry,
    rolled_back_in,
    sign_deployment,
    sign_record,
)
from fds.pipeline import DEFAULT_MODEL
from fds.schema import NaiveWatch, label_of, produced_bad
from fds.streams.align import Aligner
from fds.streams.checkpoint import SHARED_FILE, Checkpointer, default_state_dir, hold
from fds.streams.kafka_kit import ClientErrors, Consumer, Stopped, close_producer, flush_within
from fds.streams.label_feed import EARLY_WAIT_S
from fds.streams.model_feed import LIFECYCLE, ModelFeed, announcement_key, lifecycle_key
from fds.streams.service import (
    BrokerWatch,
    FencedWatch,
    IdleTimer,
    add_max_idle_argument,
    dead_letter_message,
    fenced_error,
    no_topic,
    on_stop_signals,
    partitions_of,
    probe,
    topics_of,
    unreachable,
)
from fds.streams.settings import (
    CONNECTION_SETTINGS,
    DEPLOYMENT_FLAGS,
    KafkaSettings,
    add_settings_flags,
    load_settings,
    topic_arg,
    warn_unknown_env,
)
from fds.streams.settings import log as settings_log
from fds.timeutil import format_ts, parse_ts

if TYPE_CHECKING:  # (River: imported when a trainer starts, not to build the command line)
    from fds.models import Publication, Trainer

__all__ = ["TrainService", "TrainStats", "announcement", "lifecycle", "register_train"]


log = logging.getLogger(__name__)

#: Who holds a trainer's state dir, and what to do when another one does.
_HOLDER = (
    "fds train",
    "give each trainer its own --state-dir (the default follows its group)" + SHARED_FILE,
)
#: The file a trainer holds in its registry (one trainer per registry).
TRAINER_LOCK = ".trainer.lock"
#: The first labels are watched for a ``ts`` text without an offset (read as UTC).
_NAIVE = NaiveWatch("label")

# Artifacts up to this size travel inside the announcement (base64); bigger ones are announced
# as a pointer only. Stays under the models topic's 16 MB max.message.bytes with base64's 4/3.
INLINE_MAX_BYTES = 8 << 20
# Wall-clock wait for decisions before a label is joined anyway: decisions normally arrive
# seconds before their label; a stream with no decision for this long has nothing to wait for.
LABEL_WAIT_S = 2.0
# ... and for at most this long (wall clock) while decisions keep coming without it: a label
# stamped in the future (a labelling system's clock or time zone) must not hold its partition.
LABEL_MAX_WAIT_S = 300.0
#: How far behind its newest a decisions partition may still give decisions: an input is
#: assumed legitimate only once every partition is this far past it (fds run's default grace).
DECISIONS_SKEW_S = 300.0
#: Labels fds train keeps waiting for their transaction (_Early); more are learned unjoined at
#: once. Each checkpoint holds them: 20,000 are ~1.1 MB a checkpoint (100,000 were 5.5 MB, 0.13
#: s to pickle, every second: a review).
EARLY_MAX = 20_000
#: SQLite's errors of its storage (a full disk, an I/O error, a read-only or damaged file), not
#: of a record (a ProgrammingError binding a tx_id that is no text is the record's).
_STORAGE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError)


class NotADecision(ValueError):
    """A record of the decisions topic that is no decision (no ``features`` snapshot)."""


#: Bad records logged one by one per BAD_SAID_WINDOW_S (each bad label was a line of its own:
#: a QA pass); the rest counted, said in one line, as fds run says its dead letters.
BAD_SAID_PER_WINDOW = 10
BAD_SAID_WINDOW_S = 60.0
# A failed model announcement is tried again after this long (each try may block on the broker).
ANNOUNCE_RETRY_S = 30.0
# A started trainer announces its lifecycle once it has read the scorers' verdicts, or after this.
JUDGE_CATCH_UP_S = 30.0
# A publish the registry refused (full, read-only) is tried again after this long: each try
# writes a whole artifact, and a full disk would log an error at every batch.
PUBLISH_RETRY_S = 30.0
#: How long a trainer that held every partition waits, at least, for another member of its group
#: to leave: a second fds train started by mistake stops at its first poll and leaves at once;
#: one killed, after the session timeout (three of them are waited, when longer).
SHARE_WAIT_S = 60.0
#: fds train checkpoints (and commits its offsets) at most this often, and at each publish
#: and stop: once a batch wrote 13 times what its store holds (a soak).
CHECKPOINT_EVERY_S = 1.0

# Trainer fields that are wiring or come from the spec file, not learned state (not
# checkpointed: a restart takes them from the current spec, e.g. a new legit_sample_rate).
# (``_good``, a copy of the last good model, neither: after a restart it is the parent's, from
# the registry, and was not to double each checkpoint's size)
_WIRING = (
    "store", "registry", "on_drift", "on_example", "spec", "_rate", "_legit_after", "_ttl",
    "_good",
)  # fmt: skip


def announcement(
    pub: Publication, name: str, registry: Registry | None, decisions_topic: str | None = None
) -> dict[str, Any]:
    """The models-topic value announcing ``pub``: its manifest entry (the registry's
    ``ENTRY_FIELDS``: version, seq, spec, parent, created_at, event_time, labels_learned,
    evaluation, sha256, hmac, size), the model ``name``, the ``decisions_topic`` it learned from
    (scorers writing another one skip it: another deployment's), the artifact's ``path`` in the
    trainer's registry, and the artifact inline (``artifact_b64``) when small enough.
    :class:`fds.streams.model_feed.ModelFeed` imports it into a scorer's registry.

    >>> from fds.models.trainer import Publication
    >>> a = announcement(Publication("v000002", b"xy", {"sha256": "ab", "size": 2}), "m", None)
    >>> a["version"], a["artifact_b64"], a["path"]
    ('v000002', 'eHk=', None)
    """
    entry = pub.entry
    ann = {
        **{k: entry.get(k) for k in ENTRY_FIELDS},
        "name": name,
        "decisions_topic": decisions_topic,
        "version": pub.version,
        "size": entry.get("size", len(pub.data)),
        "path": str(registry.artifact(pub.version).resolve()) if registry else None,
        "artifact_b64": (
            base64.b64encode(pub.data).decode() if len(pub.data) <= INLINE_MAX_BYTES else None
        ),
    }
    key = registry.key if registry else None  # (whose version it is: see sign_deployment)
    ann["deployment_hmac"] = sign_deployment(ann, key) if key else None
    return ann


def lifecycle(
    registry: Registry, name: str, decisions_topic: str, issued: list[Any] | None = None
) -> dict[str, Any] | None:
    """The models-topic value announcing ``registry``'s lifecycle: its ``champion`` and the
    versions it ``rejected`` (a ``fds models promote|rollback`` there, or the scorers' verdicts),
    the models-topic offsets up to which it ``judged`` those verdicts (a scorer whose own is not
    judged yet waits for the next), a ``mark`` (a digest of them: a scorer follows each
    lifecycle once), its number when ``issued`` (:meth:`Registry.issue`: a scorer refuses one
    older than it followed, a replay), signed with the registry's key
    (``lifecycle_hmac``), and the champion's own announcement (a scorer that does not hold it
    imports it from there: compaction may have removed it). ``None`` while the registry has
    neither. Scorers fed by the topic follow it (:meth:`fds.models.Registry.follow`).

    >>> import tempfile
    >>> reg = Registry(tempfile.mkdtemp())
    >>> lifecycle(reg, "m", "decisions") is None
    True
    >>> _ = reg.publish({"w": 1}, spec={"name": "m"}); _ = reg.promote("v000001")
    >>> life = lifecycle(reg, "m", "decisions")
    >>> life["champion"], life["rejected"], life["champion_announcement"]["version"]
    ('v000001', [], 'v000001')
    """
    m = registry.manifest()
    champ = m.get("champion")
    rejected = sorted(v for v, e in m["versions"].items() if e["status"] == "rejected")
    if champ is None and not rejected:
        return None
    body = {"kind": LIFECYCLE, "name": name, "decisions_topic": decisions_topic,
            "champion": champ, "rejected": rejected, "judged": m.get("judged") or {}}  # fmt: skip
    passed = passed_over(m)
    if passed >= 0:  # a champion set by hand there: what it passed over, for scorers started
        body["passed_over"] = passed  # later (they contested it, and could undo the choice)
    # (the verdicts answered, not every record judged: a shadow notice needs no lifecycle,
    # any later one names it judged; announcing one after each doubled them, a review)
    marked = {**body, "judged": m.get("answered", 0)}
    body["mark"] = hashlib.sha256(orjson.dumps(marked, option=orjson.OPT_SORT_KEYS)).hexdigest()
    if issued is not None:
        body["issued"] = issued
    key = registry.key
    ann = None
    if champ is not None:
        from fds.models.trainer import Publication

        data, entry = registry.load_bytes(champ)
        ann = announcement(Publication(champ, data, entry), name, registry, decisions_topic)
    return {**body, "lifecycle_hmac": sign_record(body, key) if key else None,
            "champion_announcement": ann}  # fmt: skip


@dataclass(slots=True)
class TrainStats:
    """Counters of one ``fds train`` run."""

    decisions: int = 0
    labels: int = 0
    bad_records: int = 0
    dead_letters: int = 0  # fds run's, in the decisions topic (--dlq-topic its output topic)
    labels_dead_lettered: int = 0  # bad labels, sent to the dead-letter topic
    published: int = 0
    commits: int = 0
    labels_early: int = 0  # learned after their transaction, dated before it (_Early)


class _Early:
    """fds train's labels dated before their own transaction (a chargeback dated to the day,
    00:00): each is learned right after its transaction, as fds replay learns it, at a place
    in the labels' event-time order: the transaction's time plus DECISIONS_SKEW_S, by when
    every decision before it is read (:attr:`due`, learned before the labels after that
    place; the polls do not change it while the decisions are read ahead of the labels, and
    in a catch-up where the labels lead it is learned once its transaction is read: the
    labels after it did wait for it, for a day when it never came, a review). One whose
    transaction is not read yet waits for it (:attr:`waiting`; ``TrainService._on_decision``
    calls :meth:`reached`) until the decisions are read EARLY_WAIT_S past its own time: then
    it is learned unjoined, as one dated more than that before the transaction it names. (It
    was learned unjoined as soon as the decisions passed its own time: 24 and 157 of 765 fraud
    labels lost in two QA runs.) One dated after its transaction (its decision read late) is
    learned at its own time. At most EARLY_MAX wait; kept in the trainer checkpoint, with the
    offsets past them."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # tx_id -> (seq, label)
        self.n = 0  # labels in waiting
        self._ends: list[tuple[float, int, str]] = []  # (its ts + EARLY_WAIT_S, seq, tx_id)
        self.due: list[tuple[float, int, dict[str, Any]]] = []  # (its place, seq, label)
        self.seq = 0  # (in the labels' order: ties of places go by it)

    def __len__(self) -> int:
        return self.n + len(self.due)

    def place(self, label: dict[str, Any], tx_ts: float, seq: int | None = None) -> bool:
        """``label``'s transaction, of event time ``tx_ts``, is read: queue it at its place;
        ``False`` (not queued) if ``tx_ts`` is more than EARLY_WAIT_S after the label."""
        if tx_ts > label["ts"] + EARLY_WAIT_S:
            return False
        if seq is None:
            self.seq = seq = self.seq + 1
        # dated after it (its decision read late): at its own time, as every such label
        where = label["ts"] if tx_ts <= label["ts"] else tx_ts + DECISIONS_SKEW_S
        heapq.heappush(self.due, (where, seq, label))
        return True

    def park(self, label: dict[str, Any]) -> bool:
        """``label``'s transaction is not read: it waits for it (``False``: EARLY_MAX wait)."""
        if self.n >= EARLY_MAX:
            return False
        self.seq += 1
        self.waiting.setdefault(label["tx_id"], []).append((self.seq, label))
        self.n += 1
        heapq.heappush(self._ends, (label["ts"] + EARLY_WAIT_S, self.seq, label["tx_id"]))
        return True

    def reached(self, tx_id: str, tx_ts: float) -> list[dict[str, Any]]:
        """Transaction ``tx_id`` of event time ``tx_ts`` was read: its waiting labels go to
        their places; returns those dated too far before it (to learn unjoined)."""
        got = self.waiting.pop(tx_id, None)
        if not got:
            return []
        self.n -= len(got)
        if len(self._ends) > 2 * self.n + 1000:  # (the ends of those reached: bounded)
            self._ends = [(x["ts"] + EARLY_WAIT_S, q, t) for t, xs in self.waiting.items()
                          for q, x in xs]  # fmt: skip
            heapq.heapify(self._ends)
        return [label for seq, label in got if not self.place(label, tx_ts, seq)]

    def ended(self, t: float) -> list[dict[str, Any]]:
        """The waiting labels whose wait ends by event time ``t`` (to learn unjoined)."""
        ends, out = self._ends, []
        while ends and ends[0][0] <= t:
            _, seq, tx_id = heapq.heappop(ends)
            mine = self.waiting.get(tx_id)
            if mine is None or not any(q == seq for q, _ in mine):
                continue  # (its transaction came)
            out += [x for q, x in mine if q == seq]
            mine[:] = [(q, x) for q, x in mine if q != seq]
            if not mine:
                del self.waiting[tx_id]
            self.n -= 1
        return out

    def take(self, before: float) -> list[tuple[float, dict[str, Any]]]:
        """The labels due at a place before ``before``, in order, with their places (past
        their own time: dated before their transaction)."""
        due, out = self.due, []
        while due and due[0][0] < before:
            where, _, label = heapq.heappop(due)
            out.append((where, label))
        return out

    def state(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "due": self.due, "seq": self.seq}

    def restore(self, state: dict[str, Any]) -> None:
        self.waiting, self.due, self.seq = state["waiting"], state["due"], state["seq"]
        self.n = sum(len(xs) for xs in self.waiting.values())
        self._ends = [(x["ts"] + EARLY_WAIT_S, q, t) for t, xs in self.waiting.items()
                      for q, x in xs]  # fmt: skip
        heapq.heapify(self._ends)


class TrainService:
    """Consume decisions and labels, learn with a :class:`fds.models.Trainer`, publish.

    Parameters
    ----------
    settings
        Connection, group (``--group``, default ``<group>-train``) and timeouts.
    spec
        Model spec path or name.
    registry
        Where versions are published (the scorers' registry).
    state_dir
        Holds the SQLite snapshot store and the trainer checkpoint.
    decisions_topic, labels_topic, models_topic
        Topic names (``models_topic=None``: no announcements).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        spec: str | Path = DEFAULT_MODEL,
        registry: str | Path = DEFAULT_REGISTRY,
        state_dir: str | Path,
        decisions_topic: str = "decisions",
        labels_topic: str = "labels",
        models_topic: str | None = "models",
        metrics: Any = None,
        label_wait_s: float = LABEL_WAIT_S,
        label_max_wait_s: float = LABEL_MAX_WAIT_S,
        health: Health | None = None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        from fds.models import Registry, SqliteStore, load_spec

        self.s = settings
        self.spec = load_spec(spec)
        self.registry = Registry(registry)
        self.ckpt = Checkpointer(state_dir)
        # another trainer's dir is refused before its checkpoint is restored here (it said
        # "restored trainer checkpoint" first: a QA pass); held from run() on
        self.ckpt.lock(*_HOLDER)
        self.ckpt.unlock()
        self.store_path = self.ckpt.dir / "snapshots.sqlite"
        self.store = SqliteStore(self.store_path)
        self.topics = (decisions_topic, labels_topic)
        self.models_topic = models_topic
        self.metrics: Any = metrics if metrics is not None else NullMetrics()
        # /healthz (fds.health): the loop beats once per poll
        self.health = health or Health(stale_after_s=stale_after(settings.broker_timeout_s))
        self.label_wait_s = label_wait_s
        self.label_max_wait_s = label_max_wait_s
        # checkpoints (and offset commits) at most this often, and at a publish and a stop
        self.checkpoint_every_s = checkpoint_every_s
        self._dirty = False  # learned since the last checkpoint
        self._due = False  # a checkpoint is due at once (partitions revoked)
        self._committed_at = -math.inf
        self._offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._restored: dict[tuple[str, int], int] = {}
        self._early = _Early()  # labels dated before their transaction (offsets past them)
        self.trainer = self._make_trainer()  # restores the three above from a checkpoint
        self.trainer.labels_to = -math.inf  # no label read yet (set after each pass)
        self.trainer.on_drift = self._drifted  # detected while learning
        self.stats = TrainStats()
        self._bad_lines = LineBudget(self._say_bad, BAD_SAID_PER_WINDOW, BAD_SAID_WINDOW_S)
        self._not_decisions_said = False
        self._newest: dict[int, float] = {}  # decisions partition -> newest event time read
        self._arrived: dict[int, float] = {}  # decisions partition -> when it last gave one
        self._unannounced: Publication | None = None  # published, its announcement failed
        self._announce_at = 0.0  # monotonic time of the next announcement attempt
        # the registry's lifecycle announced (_send_lifecycle): its stamp, mark, next attempt
        self._life_stamp: tuple[int, int] | None = None
        self._life_mark: str | None = None
        self._life_at = 0.0
        self._judge: ModelFeed | None = None  # reads the scorers' verdicts (run)
        self._judge_until = 0.0  # ... its catch-up awaited until then (monotonic)
        # ... of the next publish after one failed (tried again when due, input or none);
        # None: none failed
        self._publish_at: float | None = None
        self._follow_stamp: tuple[int, int] | None = None  # the registry checked for rollbacks
        self._last_decision = self._started = time.monotonic()
        # The polled labels not learned yet, learned in event-time order across the labels
        # partitions (fds.streams.align): a backlog read partition by partition moved the event
        # time to the newest label of one, and the decisions the others' labels joined expired
        # first (15-30 % of the fraud labels unjoined, a QA pass). One waits for its decision
        # at the head; the buffers are bounded (2 polls a partition, the rest fetched again).
        self._labels = Aligner(None, self._label_key, max_wait_s=label_wait_s)
        self._waiting: dict[Any, tuple[int, float]] = {}  # partition -> (offset, since when)
        self._revoked: list[Any] = []  # by the rebalance listener (the client's I/O thread)
        self._shared: str | None = None  # ... when another trainer shares the group
        self._shared_at: float | None = None  # since when (monotonic)
        self._had_all = False  # held every partition once (see _Seek): another's mistake waits
        self._stop = False
        self._stop_by: float | None = None  # the stop's deadline (monotonic), once stopping
        self._dead: list[Any] = []  # the sends of the dead letters of this batch's labels
        self._no_dlq = False  # the dead-letter topic is missing: bad labels logged only
        self.consumer: Any = None
        self.producer: Any = None

    # -- state -------------------------------------------------------------------------------

    def _drifted(self, now: float) -> None:
        """Counted and said, as a scorer learning inline says it (the trainer only counted
        it: a QA pass)."""
        self.metrics.drift()
        log.info('model drift event_time="%s"', format_ts(now))  # (as the scorer's line)

    def _make_trainer(self) -> Trainer:
        from fds.models import Trainer

        raw = self.store.checkpoint()
        if raw is not None:
            try:
                state = pickle.loads(raw)  # written by this service into its own state dir
            except gcpolicy.DAMAGED as exc:  # (a traceback at every start: as fds run's, a QA)
                raise ConfigError(
                    f"the trainer checkpoint is unreadable ({describe(exc)}): a damaged disk? "
                    "Restore the state dir from a backup, or move it aside to start again from "
                    "the registry's newest version (labels learned since it was published are "
                    "learned again only if still on the labels topic)",
                    where=str(self.store_path),
                ) from exc
        else:  # a state dir of a release that kept the checkpoint in its own file
            got = self.ckpt.load()
            state = got.state if got is not None else {}
        if state.get("spec") == self.spec.name:
            now = self.spec.to_dict()
            for key in ("pipeline", "inputs"):  # (inputs: an earlier checkpoint has none; a
                # model learned with the rules' score went on as reading none: a review)
                if state.get(key, now[key]) != now[key]:
                    raise ConfigError(
                        f"the trainer checkpoint was made with other {key} of spec "
                        f"{self.spec.name!r} ({state[key]}, now {now[key]}); a model with new "
                        f"{key} is a new model: give it a new --state-dir and registry, or "
                        f"restore the spec's {key}",
                        where=str(self.ckpt.dir),
                    )
            trainer = Trainer(self.spec, store=self.store, registry=self.registry)
            # (an older release's checkpoint also holds fields now taken from the spec file)
            learned = {k: v for k, v in state["trainer"].items() if k not in _WIRING}
            # (counts an earlier release did not keep start at 0: it restored stats without
            # learn_errors, a KeyError at the first estimator failure)
            learned["stats"] = stats = {**trainer.stats, **learned.get("stats", {})}
            if "_classes" not in learned:  # (a checkpoint before classes were kept: its counts)
                both = 0 < stats["frauds_learned"] < stats["labels_learned"]
                learned["_classes"] = {True, False} if both else set()
            trainer.__dict__.update(learned)
            self._check_parent(trainer.parent)
            self._restored = dict(state["offsets"])
            self._offsets = dict(self._restored)
            if "early" in state:  # (a checkpoint of an earlier release has none)
                self._early.restore(state["early"])
            log.info(
                'restored trainer checkpoint labels_learned="%d" parent="%s"',
                trainer.stats["labels_learned"], trainer.parent,
            )  # fmt: skip
            return trainer
        latest = self._start_version()
        if latest is not None:  # it goes on learning from the newest version: the same model?
            # (its inputs too: a trainer of `inputs.rules: false` went on from versions that
            # read the rules' score, and published them as reading none: a QA pass)
            other = self.spec.made_otherwise(self.registry.entry(latest).get("spec"), serving=True)
            if other is not None:
                raise ConfigError(
                    f"the registry's version {latest}, which a trainer goes on from, was made "
                    f"by spec {other}: a new pipeline needs its own --registry (and state dir)",
                    where=str(self.registry.path),
                )
        model = None
        if latest:
            try:
                model = self.registry.load(latest)
            except ArtifactError as exc:  # (exit 1 with no advice, the champion fine: a QA pass)
                latest, model = self._champion_instead(latest, exc)
        log.info('starting trainer from version="%s"', latest or "a fresh pipeline")
        trainer = Trainer(
            self.spec, store=self.store, registry=self.registry, model=model, parent=latest
        )
        if latest:
            trainer.count_from(self.registry.entry(latest))
        return trainer

    def _champion_instead(self, latest: str, exc: ArtifactError) -> tuple[str, Any]:
        """The champion and its model, for a newest version that cannot be loaded; a
        ConfigError saying what to do when there is none or it cannot be loaded either."""
        champ = self.registry.manifest().get("champion")
        try:
            if not champ or champ == latest:
                raise exc
            other = self.spec.made_otherwise(self.registry.entry(champ).get("spec"), serving=True)
            if other is not None:  # (as the newest version's is checked)
                raise ConfigError(
                    f"the registry's champion {champ}, which a trainer goes on from, was made "
                    f"by spec {other}: a new pipeline needs its own --registry (and state dir)",
                    where=str(self.registry.path),
                )
            model = self.registry.load(champ)
        except ArtifactError as again:
            raise ConfigError(
                f"the registry's version {latest}, which a trainer without a checkpoint goes "
                f"on from, cannot be loaded ({exc})"
                + (f", nor its champion {champ} ({again})" if again is not exc else "")
                + ": restore its file, or give the trainer a new --registry",
                where=str(self.registry.path),
            ) from exc
        log.warning(
            'the newest version "%s" cannot be loaded (%s): the trainer goes on from the '
            'champion "%s"', latest, exc, champ,
        )  # fmt: skip
        return champ, model

    def _start_version(self) -> str | None:
        """The version a trainer without a checkpoint goes on learning from: the registry's
        newest. In a copy of a scorer's registry (README: losing the trainer's machine), a
        version the trainer's registry rejected came through a lifecycle, which does not say
        whether it lost a contest (its line goes on) or was rolled back (never gone on from):
        when the newest one's line since the champion holds such a version, or one rolled back
        here (in a trainer's own registry too: its first publish went back to the champion),
        the champion (:func:`rolled_back_in`). A contest lost here is a contest lost: its line
        goes on. A version retention removed is known by what it kept of it (rolled_back)."""
        m = self.registry.manifest()
        latest, champ = self.registry.latest(), m.get("champion")
        back = rolled_back_in(m, latest, followed=True) if latest and champ else None
        if back is None:
            return latest
        entry = rolled_back_entry(m, back)  # (one retention removed: a KeyError, a review)
        why = entry.get("rejected_because") or "rolled back"
        why = f"as broken: {why}" if entry.get("broken") else (
            f"{why}; a scorer's registry cannot tell a rollback in the trainer's from a lost "
            "contest"
        )  # fmt: skip
        log.warning(
            'the line of the newest version "%s" holds "%s", rejected (%s): the trainer goes '
            'on from the champion "%s"', latest, back, why, champ,
        )  # fmt: skip
        return str(champ)

    def _check_parent(self, parent: str | None) -> None:
        """Refuse a checkpoint that goes on from a version the registry does not hold (the
        registry deleted by a cleanup job, or another --registry): the trainer recreated an
        empty one and published its learning as v000001 again, which a running scorer ignored
        (older than what it served) and a restarted one served, the same ids now naming other
        models (a QA pass). Numbering on after the parent would not help: the champion, the
        history and the verdicts are gone with the manifest, and a --registry typo would be
        served as a new registry; whoever deleted it must choose."""
        if parent is None or parent in self.registry.manifest()["versions"]:
            return
        newest = self.registry.latest()
        holds = f"its newest version is {newest}" if newest else "it is empty"
        raise ConfigError(
            f"the trainer checkpoint goes on from model version {parent}, which the registry "
            f"{self.registry.path} does not hold ({holds}: deleted, or another --registry?); "
            f"restore the registry (its manifest.json and {parent}.pkl), or start the trainer "
            "with a new --state-dir to begin again",
            where=str(self.ckpt.dir),
        )

    def _save_state(self) -> None:
        """Commit the snapshot store's changes and the checkpoint (model, counters, offsets)
        in one SQLite transaction."""
        t = self.trainer
        learned = {k: v for k, v in t.__dict__.items() if k not in _WIRING}
        spec = self.spec.to_dict()
        state = {
            "spec": self.spec.name, "pipeline": spec["pipeline"], "inputs": spec["inputs"],
            "trainer": learned, "offsets": dict(self._offsets), "early": self._early.state(),
        }  # fmt: skip
        try:
            self.store.put_checkpoint(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
            self.store.flush()
        except sqlite3.Error as exc:  # (two chained tracebacks, no path: a QA pass)
            raise self._store_failed(exc, "the trainer checkpoint") from exc

    def _store_failed(self, exc: Exception, what: str) -> FdsError:
        """The error that stops fds train when its store cannot write ``what`` (counted as a
        failed checkpoint: the state dir's)."""
        self.metrics.checkpoints(0, 1)
        return FdsError(
            f"cannot write {what} in {self.ckpt.dir} ({exc}): free space on its disk (a full "
            "disk) or check it, then restart fds train: it goes on from its last checkpoint"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Finish the current batch, commit and return (signal-safe), within
        ``shutdown_timeout_s`` of now."""
        self._stop = True
        if self._stop_by is None:
            self._stop_by = time.monotonic() + self.s.shutdown_timeout_s

    def _bounded(self, seconds: float) -> float:
        """``seconds`` to wait for the broker, or less once stopping: a share of the stop's
        deadline (a commit or an announcement in the loop waited 30-60 s through an outage
        after a SIGTERM: a review)."""
        return min(seconds, self._time_left() * 0.3) if self._stop else seconds

    @property
    def _share_wait_s(self) -> float:
        """How long another member of the group may hold a share (see :data:`SHARE_WAIT_S`)."""
        return max(SHARE_WAIT_S, 3 * self.s.session_timeout_ms / 1000)

    def _time_left(self) -> float:
        """Seconds left before the stop's deadline (from now when the loop ended otherwise):
        a SIGTERM during an outage waited 28 s for the clients' own timeouts (a review)."""
        if self._stop_by is None:
            self._stop_by = time.monotonic() + self.s.shutdown_timeout_s
        return max(0.1, self._stop_by - time.monotonic())

    def _reader_config(self) -> dict[str, Any]:
        """The group member's config: static membership with ``--group-instance-id`` (it was
        accepted and not used), and fds run's session timeout (kafka-python's 45 s: a
        restart after kill -9 waited for it without a word, a QA pass)."""
        s = self.s
        return s.reader_config(
            s.group, group_instance_id=s.group_instance_id, auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records, **s.liveness(),
        )  # fmt: skip

    def _connect(self) -> None:
        s = self.s
        timeout_ms = s.timeout_ms
        try:
            with ClientErrors() as errors:
                stop = lambda: self._stop  # noqa: E731  (a SIGTERM: heard while connecting)
                self.consumer = errors.connect(
                    lambda: Consumer(**self._reader_config()), s.n_servers, stop
                )
                # (the dead letters of bad labels, and the announcements of versions)
                self.producer = errors.connect(lambda: KafkaProducer(
                    **s.client_config(), acks="all", bootstrap_timeout_ms=timeout_ms,
                    max_request_size=16 << 20, max_block_ms=min(timeout_ms, 10_000),
                ), s.n_servers, stop)  # fmt: skip
        except (KafkaError, OSError) as exc:
            raise unreachable(s, exc, errors) from exc
        self.consumer.subscribe(list(self.topics), listener=_Seek(self))
        # Topic metadata after subscribing and before the first poll joins the group: joined
        # without it, the group rebalances again as soon as the metadata arrives, and that
        # second join was seen to stall for good in kafka-python 3.0.12 when the poll timed
        # out during SyncGroup (the trainer then never got its partitions).
        # (a missing models topic too: each version's announcement failed, and the last one
        # was never announced: a review)
        named = [*zip(self.topics, ("--decisions-topic", "--labels-topic"), strict=True)]
        self._no_dlq = not partitions_of(self.consumer, self.s.dlq_topic)
        if self._no_dlq:  # (not required: a deployment that never gave the trainer one was
            # refused at the upgrade, a review)
            log.warning(
                'dead-letter topic="%s" does not exist: a bad label is logged and counted only '
                "(create it and restart fds train, or name another with %s)", self.s.dlq_topic,
                self.s.named("dlq_topic"),
            )  # fmt: skip
        if self.producer is not None and self.models_topic:
            named.append((self.models_topic, self.s.named("models_topic")))
        for topic, flag in named:
            if not partitions_of(self.consumer, topic):
                known = topics_of(self.consumer)
                raise no_topic(topic, self.s.bootstrap, f"fix {flag}", known)

    def run(self, *, max_idle_s: float | None = None) -> TrainStats:
        """Run until :meth:`stop` (or ``max_idle_s`` without input), holding the state dir (two
        trainers of two deployments given one ran side by side, and one restored the other's
        model: a QA pass)."""
        self.ckpt.lock(*_HOLDER)
        try:  # and its registry: two trainers publishing into one interleaved their versions,
            # and the scorers served the newest, the other deployment's (a QA pass)
            reg = self.s.named("registry")  # (--registry, FDS_REGISTRY, registry in the file)
            with hold(
                self.registry.path / TRAINER_LOCK, "the registry", "fds train",
                f"give each trainer (each deployment, each model) its own {reg}", reg,
            ), self.health.watching():  # fmt: skip
                return self._run(max_idle_s)
        finally:
            self.ckpt.unlock()

    def unmake(self) -> None:
        """Remove the state dir and registry this made if it stopped before reading anything
        (a missing topic, a broker not there: both were left behind, a QA pass)."""
        st = self.stats
        if any(
            (
                st.decisions,
                st.labels,
                st.dead_letters,
                st.bad_records,
                st.published,
                st.labels_dead_lettered,
            )
        ):
            return
        if self._early or self.store.checkpoint() is not None:  # (its checkpoint is a row of
            return  # the database, not the state dir's file: a review)
        self.store.close()
        db = self.store_path.name
        self.ckpt.unmake(db, f"{db}-wal", f"{db}-shm", f"{db}-journal")
        self.registry.unmake(TRAINER_LOCK)

    def _run(self, max_idle_s: float | None) -> TrainStats:
        log.info(
            'training group="%s" decisions_topic="%s" labels_topic="%s" models_topic="%s" '
            'registry="%s" state_dir="%s"', self.s.group, *self.topics,
            self.models_topic or "none", self.registry.path.absolute(), self.ckpt.dir.absolute(),
        )  # fmt: skip
        try:
            self._connect()
        except Stopped as exc:  # (a SIGTERM waited out the broker timeout: a QA pass)
            log.info("%s", exc)
            if self.producer is not None:
                close_producer(self.producer, 0)
            return self.stats
        if self.trainer.parent is not None:  # what it learns on from, before its next version
            self.metrics.model_info(self.trainer.parent, self.spec.name)
        judge = None
        if self.producer is not None and self.models_topic:  # the scorers' verdicts
            self._judge_until = time.monotonic() + JUDGE_CATCH_UP_S
            judge = self._judge = ModelFeed(
                self.s, self.registry, name=self.spec.name, topic=self.models_topic,
                decisions_topic=self.topics[0], judge=True,
            )  # fmt: skip
            judge.start()
        no_input = IdleTimer(max_idle_s, self.s.broker_timeout_s)
        s = self.s
        # (an outage was idle time for --max-idle, exit 0, and a silent wait for good without)
        asked = functools.partial(probe, self.consumer, self.topics[0])
        broker = BrokerWatch(asked, s.broker_timeout_s, lambda: (
            f"Kafka at {s.bootstrap} unreachable for {s.broker_timeout_s:.0f} s; exiting so a "
            "supervisor can restart fds train (it goes on from its last checkpoint)"
        ))  # fmt: skip
        health = self.health
        # a static member (--group-instance-id) another trainer took the id of: kafka-python's
        # heartbeat thread only logs it (see fds run's)
        fenced = FencedWatch(s.group_instance_id)
        said_held = False  # (idle, but labels wait: said once per wait)
        kafka_log = logging.getLogger("kafka")
        kafka_log.addHandler(fenced)
        try:
            while not self._stop:
                try:
                    batch = self.consumer.poll(timeout_ms=100, max_records=s.max_poll_records)
                except FencedInstanceIdError as exc:
                    raise fenced_error("poll", s) from exc
                if fenced.seen:
                    raise fenced_error("heartbeat", s)
                now = health.beat = time.monotonic()
                if self._shared is not None:
                    if not self._had_all or now - (self._shared_at or now) > self._share_wait_s:
                        raise FdsError(self._shared)
                    continue  # (what it polled meanwhile is read again: _Seek at the next one)
                if batch:
                    no_input.since = now
                    broker.answered(now)
                held = len(self._labels) > 0
                self._follow_rollback()
                # (held labels may go on by now; those dated before their transaction do not
                # hold an exit; a failed publish is tried again with no input too: it waited
                # for the next label, and scorers for their version, a QA pass)
                retry = self._publish_at is not None and now >= self._publish_at
                if batch or held or self._early or retry:
                    self._process(batch)
                self._commit_if_due()  # (what an idle pass left to checkpoint)
                self._send_lifecycle()  # (a promote or rollback there: one stat when none)
                self._bad_lines.tick(now)  # (a burst's count, said within its minute: a review)
                # the broker asked while labels wait for their decisions too (they may wait
                # minutes: an outage then went unsaid, a review); the pass's work is no idle
                # time (a slow one was, while positions were waited for)
                no_input.worked(now, after := time.monotonic())
                idle = not batch and no_input.over(self.consumer, after)
                waiting = len(self._labels)  # (after the pass, which may have learned them)
                if idle and waiting and not said_held:  # (it ran on past --max-idle without a
                    said_held = True  # word: tx_ids used again by a second stream, a QA pass)
                    log.info(
                        "no input for --max-idle, but %d label(s) wait for their "
                        "transactions' decisions (each up to %.0f s: decisions still to come, "
                        "or tx_ids this trainer saw before, a stream using them again); it ends "
                        "once none waits", waiting, self.label_max_wait_s,
                    )  # fmt: skip
                said_held = said_held and waiting > 0
                if not batch and broker.idle_ended(now, idle and not held):
                    break
            self._commit_if_due(force=True)  # (a stop: everything learned is checkpointed)
        except BaseException:
            self.store.rollback()  # a half-done batch: the restart redoes it from the offsets
            raise
        finally:
            kafka_log.removeHandler(fenced)
            self._bad_lines.flush()
            left = self._time_left
            if judge is not None:
                judge.close()
            with contextlib.suppress(Exception):
                self.consumer.close(autocommit=False, timeout_ms=int(left() * 300))
            if self.producer is not None:
                if self._unannounced is not None:  # a last try: it would be lost with us
                    self._announce_at = 0.0
                    with contextlib.suppress(Exception):
                        # (its send waits for the topic's metadata up to max_block_ms: 10 s)
                        self.producer.config["max_block_ms"] = int(left() * 300)
                        self._send_announcement(timeout_s=left() * 0.6)
                    if self._unannounced is not None:
                        log.error(
                            'version="%s" was published in the registry but not announced on '
                            'topic="%s": scorers reading that topic get it with the next version',
                            self._unannounced.version, self.models_topic,
                        )  # fmt: skip
                close_producer(self.producer, max(left() - 1.0, 0.0))  # (its join: 1 s)
        return self.stats

    # -- the loop ----------------------------------------------------------------------------

    def _process(self, batch: Any) -> None:
        """One poll's records (and the labels held), the examples the model raised on while
        learning them counted (a log line of the first and every 1,000th alone: a QA pass)."""
        errors = self.trainer.stats["learn_errors"]
        try:
            self._process_batch(batch)
        finally:
            self.metrics.learn_errors(self.trainer.stats["learn_errors"] - errors)

    def _process_batch(self, batch: Any) -> None:
        decisions_topic = self.topics[0]
        labels = self._aligned()
        while self._revoked:  # their new owner reads them from the committed offsets; one
            tp = self._revoked.pop()  # taken back at once was sought to its first label not
            self._waiting.pop(tp, None)  # learned (_Seek), and this poll may hold it from there:
            labels.forget([tp], seek=False)  # (a seek here read them twice: a review)
        # Decisions first: a label in the same batch then finds its snapshot.
        moved = False
        for tp, records in batch.items():
            if tp.topic == decisions_topic and records:
                for msg in records:
                    self._on_decision(msg)
                self._offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
                moved = True
        self.trainer.decisions_read_to(self._decisions_to())
        labels.add({tp: records for tp, records in batch.items() if tp.topic != decisions_topic})
        moved = self._learn_held() > 0 or moved  # (or every held label still waits)
        # (decisions read days ahead of the labels in a catch-up: none is assumed legitimate
        # before the labels of its time are read, a QA pass)
        mine = [tp for tp in self.consumer.assignment() if tp.topic == self.topics[1]]
        if mine:
            self.trainer.labels_read_to(labels.read_to(mine))
        pub = self._publish()
        if pub is not None:
            self._announce(pub)
        else:
            self._send_announcement()  # one that failed before, if any
        self._dirty = self._dirty or moved or pub is not None
        self._commit_if_due(force=pub is not None)

    def _commit_if_due(self, force: bool = False) -> None:
        """Checkpoint what was learned once ``checkpoint_every_s`` has passed since the last
        checkpoint, or now with ``force`` (a version published: its parent is checkpointed
        with it). One per batch, 66 a second at 500 tx/s, wrote 13 times what the store
        holds (a soak: 11.6 KB a decision); a restart redoes what came after the last one,
        the model and its offsets being checkpointed together."""
        if self._dirty and (
            force or self._due or time.monotonic() - self._committed_at >= self.checkpoint_every_s
        ):
            self._commit()

    def _follow_rollback(self) -> None:
        """Go on learning from the champion as soon as the registry says this trainer's line
        was rolled back (a scorer's lost probation judged, or by hand), before anything more
        is learned on it: checked only when the next version was due, it learned on the
        rolled-back line until then and dropped it all, and the good version came a publish
        interval late (a QA pass; a review: after the batch it had just learned). One stat
        per pass; a registry that cannot be read is said by the next publish."""
        try:
            stamp = self.registry.stamp()
            if stamp == self._follow_stamp:
                return
            self.trainer.follow_rollback()
        except (ConfigError, OSError):
            return  # (looked at again at the next pass)
        self._follow_stamp = stamp

    def _publish(self) -> Publication | None:
        """A new version when the policy says so. One the registry cannot take (full,
        read-only, deleted: the trainer died of it, a QA pass) is logged and counted; learning
        and checkpoints go on, and it is tried again after ``PUBLISH_RETRY_S``, carrying all
        learned meanwhile."""
        t = self.trainer
        if self._publish_at is not None and time.monotonic() < self._publish_at:
            return None
        try:
            if t.due(t.now):  # a rollback since the last version: go on from the champion
                t.follow_rollback()
                # (a registry deleted and made again meanwhile: its next version would take
                # an id that named another model, as at a restart; a review)
                self._check_parent(t.parent)
            broken = t.stats["broken"]
            pub = t.maybe_publish()
            if t.stats["broken"] > broken:
                self.metrics.model_publish("broken")
        except ConfigError as exc:
            self.metrics.model_publish("failed")
            self._publish_at = time.monotonic() + PUBLISH_RETRY_S
            log.error("not published: %s (learning goes on, checked again in %.0f s)", exc,
                      PUBLISH_RETRY_S)  # fmt: skip
            return None
        except OSError as exc:
            self.metrics.model_publish("failed")
            self._publish_at = time.monotonic() + PUBLISH_RETRY_S
            log.error(
                'publishing into registry="%s" failed (%s); learning goes on, tried again in '
                "%.0f s: free space in it or make it writable", self.registry.path,
                describe(exc), PUBLISH_RETRY_S,
            )  # fmt: skip
            return None
        self._publish_at = None
        if pub is not None:
            self.metrics.model_publish("ok")
        return pub

    def _on_decision(self, msg: Any) -> None:
        if any(k == "stage" for k, _ in getattr(msg, "headers", None) or ()):  # fds run's
            self.stats.dead_letters += 1  # dead letter: a decisions topic may hold them (each
            return  # was a warning of a bad record: a QA pass)
        try:
            d = orjson.loads(msg.value)
            if not isinstance(d, dict) or "features" not in d:
                raise NotADecision(  # (transactions were learned from, amount 0, and the
                    # version served, acting: a QA pass gave the transactions topic)
                    "not a decision (no features: a transaction?): --decisions-topic is the "
                    "topic fds run writes its decisions to"
                )
            tx = d.get("tx") or {}
            ts = tx.get("ts")
            ts = float(ts) if isinstance(ts, int | float) else parse_ts(d["ts"])
            fields = {"tx_id": d["tx_id"], "ts": ts, "amount": tx.get("amount", 0.0)}
            self.trainer.on_decision(fields, d)
        except Exception as exc:
            if type(exc) in _STORAGE_ERRORS:  # the store's disk, not the record: it stops
                # here (taken as a bad decision, its input was lost to its label while the
                # next checkpoint, the disk freed, went on; a tx_id that is no text, a
                # ProgrammingError, is the record's: a review)
                raise self._store_failed(exc, "a decision's input") from exc
            self._bad(msg, exc)
            return
        if self._early.n and fields["tx_id"] in self._early.waiting:
            for label in self._early.reached(fields["tx_id"], ts):
                self._learn(label, join=False)
        self.stats.decisions += 1
        self._last_decision = self._arrived[msg.partition] = time.monotonic()
        if ts > self._newest.get(msg.partition, -math.inf):
            self._newest[msg.partition] = ts

    def _bad(self, msg: Any, exc: Exception) -> None:
        # Logged and counted; a bad label is dead-lettered too (_dead_letter): decisions are
        # fds run's own output, whose dead letters it wrote itself.
        self.stats.bad_records += 1
        if isinstance(exc, NotADecision) and not self._not_decisions_said:
            self._not_decisions_said = True  # (said once, beyond the rate of bad records)
            log.error(
                'topic="%s" holds records that are not decisions (partition="%s[%d]" '
                'offset="%d": no features snapshot): no model learns from them; give '
                "--decisions-topic the topic fds run writes its decisions to",
                msg.topic, msg.topic, msg.partition, msg.offset,
            )  # fmt: skip
        if self._bad_lines.take(msg.topic):
            log.warning(
                'skipped bad record partition="%s[%d]" offset="%d" error="%s: %s"',
                msg.topic, msg.partition, msg.offset, type(exc).__name__, exc,
            )  # fmt: skip

    def _say_bad(self, unsaid: dict[str, int]) -> None:
        """One line for the bad records not logged one by one (see BAD_SAID_PER_WINDOW)."""
        log.warning(
            "more bad records, not logged one by one (at most %d a minute are; a bad label "
            'is in the dead-letter topic, with its reason) count="%d" by_topic="%s"',
            BAD_SAID_PER_WINDOW, sum(unsaid.values()),
            ",".join(f"{k}:{v}" for k, v in sorted(unsaid.items())),
        )  # fmt: skip

    def _dead_letter(self, msg: Any, exc: Exception) -> None:
        """A bad label to the dead-letter topic (`stage: label`, as fds run --labels-topic
        writes it: it was logged only, and lost to whoever reads the dead letters when no fds
        run reads the labels, a QA pass); acknowledged before the batch is committed."""
        if self._no_dlq:  # (its send waited 10 s for the topic's metadata and raised: the
            return  # trainer exited at each start on that label, for good, a QA pass)
        key, value, headers = dead_letter_message(msg, "label", exc)
        assert self.producer is not None
        try:
            sent = self.producer.send(self.s.dlq_topic, value=value, key=key, headers=headers)
        except KafkaError as err:  # (the topic deleted since: no metadata)
            log.error(
                'dead letter of a bad label not written to topic="%s" (%s): the label stays in '
                "its topic, logged above; no more are sent until fds train restarts",
                self.s.dlq_topic, describe(err),
            )  # fmt: skip
            self._no_dlq = True
            return
        self._dead.append(sent)
        self.stats.labels_dead_lettered += 1

    def _dead_letters_acknowledged(self) -> None:
        """Wait for this batch's dead letters (up to the broker timeout) before the checkpoint
        moves past their labels. One the broker did not take (no such topic, no permission)
        is said and counted in the closing line (``labels_dead_lettered`` less): training goes
        on, the label itself stays in its topic (exiting on it, a restart met it again, and the
        trainer stopped learning for good: a review)."""
        if not self._dead:
            return
        assert self.producer is not None
        with contextlib.suppress(KafkaError):
            flush_within(self.producer, self.s.broker_timeout_s, cap=self._bounded)
        for fut in self._dead:
            try:
                fut.get(timeout=0)
                self.metrics.dlq("label")  # (as fds run counts one; it had no such series)
            except KafkaError as exc:
                self.stats.labels_dead_lettered -= 1
                log.error(
                    'dead letter of a bad label not written to topic="%s" (%s): the label '
                    "stays in its topic, logged above", self.s.dlq_topic, describe(exc),
                )  # fmt: skip
        self._dead.clear()

    def _decisions_cover(self, ts: float) -> bool:
        """Have the decisions up to event time ``ts`` been read? Not while ``ts`` is past the
        newest decision read, nor while a decisions partition with unread records (a lagging
        one, e.g. in a catch-up) has not reached ``ts``."""
        if ts > max(self._newest.values(), default=-math.inf):
            return False
        topic = self.topics[0]
        quiet_since = time.monotonic() - self.label_wait_s
        for tp in self.consumer.assignment():
            if tp.topic != topic or self._newest.get(tp.partition, -math.inf) >= ts:
                continue
            # behind ts: covered once read to its end and quiet for label_wait_s (read to its
            # end alone, a partition a slower scorer was still writing, catching up a backlog,
            # was taken as covered, and 112 of 497 fraud labels were learned before their
            # decisions came: unjoined, lost for good, a QA pass of a fleet)
            if self._arrived.get(tp.partition, -math.inf) > quiet_since:
                return False
            if not self._read_to_end(tp):
                return False
        return True

    def _decisions_to(self, quiet_s: float | None = None) -> float:
        """The event time before which every assigned decisions partition has been read: the
        least of their newest, less DECISIONS_SKEW_S (a partition's decisions come in the
        order they were made, a late event's within the grace period behind: a review); one
        read to its end and quiet for label_wait_s does not hold the others (``inf`` when all
        are), nor one that gave nothing for label_max_wait_s (since this trainer started: a
        partition that cannot be fetched held every assumption back, and the store's expiry
        then dropped inputs unlearned, a review). ``quiet_s``: quiet for that long instead."""
        topic, out = self.topics[0], math.inf
        now = time.monotonic()
        quiet = self.label_wait_s if quiet_s is None else quiet_s
        for tp in self.consumer.assignment():
            if tp.topic != topic:
                continue
            arrived = self._arrived.get(tp.partition, self._started)
            if arrived <= now - quiet and self._read_to_end(tp):
                continue
            if arrived <= now - self.label_max_wait_s:
                continue
            out = min(out, self._newest.get(tp.partition, -math.inf) - DECISIONS_SKEW_S)
        return out

    def _read_to_end(self, tp: Any) -> bool:
        """Is ``tp`` read to its end? (the position skips transaction markers, which the last
        data record's offset does not; both are local, from the last fetch)"""
        hw = self.consumer.highwater(tp)
        try:
            position = self.consumer.position(tp, timeout_ms=0)
        except KafkaError:
            position = None
        return hw is not None and position is not None and position >= hw

    def _decisions_idle(self, quiet_s: float) -> bool:
        """No decision for ``quiet_s``, and every decisions partition assigned and read to
        its end: nothing more to wait for. (Quiet alone was idle while the group was joined
        after a restart, or a backlog still unread: labels were learned before their
        decisions, unjoined, and moved the event time days ahead, so the next decisions were
        assumed legitimate at once: a QA pass.)"""
        if time.monotonic() - self._last_decision <= quiet_s:
            return False
        mine = [tp for tp in self.consumer.assignment() if tp.topic == self.topics[0]]
        if not mine or not all(self._read_to_end(tp) for tp in mine):
            return False
        # an empty decisions topic: no scorer decided anything yet (fds train started first):
        # the labels wait for their decisions, up to label_max_wait_s each (a QA pass: they were
        # learned unjoined, lost for good, and moved the event time days ahead)
        return any(self.consumer.highwater(tp) for tp in mine)

    def _aligned(self) -> Aligner:
        """The labels' aligner, bound to the consumer, 2 polls of labels a partition."""
        labels = self._labels
        labels.consumer, labels.max_buffer = self.consumer, 2 * self.s.max_poll_records
        return labels

    def _label_key(self, msg: Any) -> tuple[float, Any]:
        """A label's event time and the label (for the aligner), or the error that makes it a
        bad record (released at once). A label stamped far ahead would move the trainer's
        event time there: every snapshot assumed legitimate at once, then expired."""
        try:  # (fds produce's reason too, as fds run's label feed says it)
            label = label_of(msg, self.s.max_event_ahead_s, _NAIVE)
        except Exception as exc:
            return -math.inf, produced_bad(msg, exc) or exc
        return label["ts"], label

    def _learn_held(self) -> int:
        """Learn the held labels in event-time order, up to the first that must wait for its
        decision (it and those after it are put back), with those dated before their
        transaction at their places; returns how many records were consumed (learned or
        bad) and labels learned."""
        labels = self._aligned()
        mine = [tp for tp in self.consumer.assignment() if tp.topic == self.topics[1]]
        try:
            n = self._learn_aligned(labels, mine)
            return n + self._learn_due(labels.read_to(mine), tail=True)
        finally:
            self.metrics.labels_waiting(len(labels) + len(self._early))

    def _learn_aligned(self, labels: Aligner, mine: list[Any]) -> int:
        """:meth:`_learn_held`'s labels of the aligner."""
        n = size = 0
        # (one first: while it waits, a poll's worth was taken and put back each pass)
        while got := labels.take(size or 1, mine):
            size = self.s.max_poll_records
            for i, (tp, msg, label) in enumerate(got):
                if isinstance(label, Exception):
                    self._bad(msg, label)
                    self._dead_letter(msg, label)
                elif not self._may_learn(tp, msg.offset, label):
                    for tp, msg, label in reversed(got[i:]):  # (each partition's order)
                        t = -math.inf if isinstance(label, Exception) else label["ts"]
                        labels.put_back(tp, t, msg, label)
                    return n
                else:
                    n += self._learn_due(label["ts"])
                    self._take(label)
                self._offsets[(tp.topic, tp.partition)] = msg.offset + 1
                n += 1
        return n

    def _take(self, label: dict[str, Any]) -> None:
        """Learn ``label`` (every label before it is): at once, or at its place if dated
        before its transaction (:class:`_Early`)."""
        t = self.trainer
        ts = label["ts"]
        if ts > t.labels_to:  # every label before it is learned: what it leaves unlabelled
            # for assume_legit_after is assumed legitimate before it, in event time, whatever
            # the polls (assumed when a poll's decisions moved the clock, between other
            # labels in another run: the models differed, a QA pass)
            t.labels_read_to(ts)
        got = t.store.get(label["tx_id"])
        if got is not None and got[0] > ts:  # dated before its transaction
            t.advance(ts)
            if not self._early.place(label, got[0]):
                self._learn(label, join=False)
        elif got is not None or t.store.settled(label["tx_id"]) is not None:
            self._learn(label)
        elif self._early.park(label):  # (its transaction may come yet)
            t.advance(ts)
        else:
            self._learn(label)

    def _learn_due(self, before: float, tail: bool = False) -> int:
        """Learn the labels dated before their transaction whose place is before ``before``;
        at the ``tail`` of a pass only as far as the decisions are read for it (a label
        learned after the labels' loop is not forced through), and the waits that ended
        (learned unjoined). Returns how many were learned."""
        early, t = self._early, self.trainer
        if not early:
            return 0
        n = 0
        if tail:
            ended = self._decisions_to(self.label_max_wait_s)
            if self._decisions_idle(self.label_max_wait_s):
                ended = math.inf
            for label in early.ended(ended):
                self._learn(label)
                n += 1
            before = min(before, self._decisions_to() + t.spec.learn.assume_legit_after)
        for where, label in early.take(before):
            if where > t.labels_to:
                t.labels_read_to(where)
            self._learn(label)
            self.stats.labels_early += where > label["ts"]  # (dated before its transaction)
            n += 1
        return n

    def _learn(self, label: dict[str, Any], join: bool = True) -> None:
        """Learn one label, counted in the metrics."""
        t = self.trainer
        learned = t.stats["labels_learned"] - t.stats["assumed_legit"]
        unjoined = t.stats["labels_unjoined"]
        t.on_label(label, join=join)
        self.metrics.labels_unjoined(t.stats["labels_unjoined"] - unjoined)
        self.stats.labels += 1
        # delayed labels only: the examples assumed legitimate that the label's event time
        # let through are in the registry's labels_learned, not here
        self.metrics.labels_learned(t.stats["labels_learned"] - t.stats["assumed_legit"] - learned)

    def _may_learn(self, tp: Any, offset: int, label: dict[str, Any]) -> bool:
        """May ``label`` at ``offset`` of ``tp`` be learned now: the decisions are read up to
        its time, or none comes any more, or it has waited ``label_max_wait_s``; or its own
        decision is read and the decisions are read up to what it lets be assumed legitimate
        (``assume_legit_after`` before it: what it learns, and in which order, then does not
        depend on the polls). A decisions partition written on but behind in event time (a
        delayed source) held every label ``label_max_wait_s``, one after the other (a review:
        20 chargebacks of decisions read a day before, 2 learned in 10 minutes)."""
        ts = label["ts"]
        # A label whose decision is not read yet waits through a pause of the scorers (a
        # restart, a stop of 2.4 s): taken as "no decision comes any more" after label_wait_s,
        # labels produced ahead of their transactions (a history, the quick start) were
        # learned unjoined, lost for good, and moved the event time weeks ahead, past the TTL
        # of every decision read after: nothing was learned or published again (a QA pass).
        # Only decisions quiet for label_max_wait_s are the end of them.
        # (a label whose decision a copy of it learned from is as one whose decision is read:
        # it waited as one ahead of its transaction, 300 s, every label behind it too, when a
        # labeller sent its labels again, a QA pass)
        store = self.trainer.store
        stored = store.get(label["tx_id"]) is not None or store.settled(label["tx_id"]) is not None
        # Every input it lets be assumed legitimate is read, by the bound the assumptions
        # themselves take (_decisions_to): each partition's newest less DECISIONS_SKEW_S. (Its
        # own test, each partition's newest alone, let a label within those 5 minutes be
        # learned before the assumptions due before it, in one run and not another: a QA pass.)
        read = self._decisions_to() >= ts - self.trainer.spec.learn.assume_legit_after
        if self._decisions_idle(self.label_wait_s if stored else self.label_max_wait_s) or (
            read and (stored or self._decisions_cover(ts))
        ):
            self._waiting.pop(tp, None)
            return True
        now = time.monotonic()
        w = self._waiting.get(tp)
        if w is None or w[0] != offset:
            self._waiting[tp] = (offset, now)
            return False
        if now - w[1] <= self.label_max_wait_s:
            return False
        log.warning(  # e.g. a label stamped in the future
            'label at offset %d of "%s[%d]" (ts=%s) waited %.0f s for its decision; '
            "learned without waiting more", offset, tp.topic, tp.partition,
            format_ts(ts), now - w[1],
        )  # fmt: skip
        del self._waiting[tp]
        return True

    def _announce(self, pub: Publication) -> None:
        self.stats.published += 1
        self.metrics.model_info(pub.version, self.spec.name)
        log.info(
            'published version="%s" labels_learned="%d"',
            pub.version, pub.entry.get("labels_learned", 0),
        )  # fmt: skip
        if self.producer is None or not self.models_topic:
            return
        self._unannounced = pub
        self._send_announcement()

    def _send_announcement(self, timeout_s: float | None = None) -> None:
        """Announce the newest published version not announced yet (a failed announcement is
        retried after ``ANNOUNCE_RETRY_S``, at the end of a batch; a newer version supersedes
        it). One too large for the topic (``max.message.bytes``) goes again without the
        artifact inline: scorers then read it from the registry path. Each send is waited for
        ``timeout_s`` at most (``None``: ``broker_timeout_s``)."""
        pub = self._unannounced
        if pub is None or self.producer is None or not self.models_topic:
            return
        if time.monotonic() < self._announce_at:  # after a failure: not at every batch
            return
        value = announcement(pub, self.spec.name, self.registry, self.topics[0])
        key = announcement_key(self.spec.name, self.topics[0])
        try:
            self._send_or_point(key, value, value, timeout_s)
        except KafkaError as exc:
            log.error(
                'announcing version="%s" on topic="%s" failed (%s: %s); retried in %.0f s '
                "(scorers sharing the registry directory have it already)",
                pub.version, self.models_topic, type(exc).__name__, exc, ANNOUNCE_RETRY_S,
            )  # fmt: skip
            self._announce_at = time.monotonic() + ANNOUNCE_RETRY_S
            return
        self._unannounced = None

    def _send_or_point(
        self, key: bytes, value: dict[str, Any], ann: dict[str, Any], timeout_s: float | None
    ) -> None:
        """Send ``value`` holding announcement ``ann`` (itself, or a lifecycle's champion's);
        too large for the topic, again with ``ann`` as a pointer only."""
        try:
            self._send_and_wait(key, value, timeout_s)
        except MessageSizeTooLargeError:
            if ann["artifact_b64"] is None:
                raise
            log.warning(
                'version="%s" too large to announce inline; announced as a pointer to '
                'path="%s"', ann["version"], ann["path"],
            )  # fmt: skip
            ann["artifact_b64"] = None
            self._send_and_wait(key, value, timeout_s)

    def _send_lifecycle(self) -> None:
        """Announce the registry's lifecycle when it changed (``fds models promote|rollback``
        on the trainer's registry), so that scorers fed by the models topic follow it (they
        kept serving a version rolled back here: a QA pass). Checked by the registry's stamp
        (one stat); a failed send is tried again after ``ANNOUNCE_RETRY_S``."""
        if self.producer is None or not self.models_topic or time.monotonic() < self._life_at:
            return
        judge = self._judge
        if judge and not judge.caught_up.is_set() and time.monotonic() < self._judge_until:
            return  # (the verdicts sent while it was down first, for JUDGE_CATCH_UP_S at most:
            # a lifecycle without them put their scorers back on the old champion until the next)
        stamp = self.registry.stamp()
        if judge and judge.replayed.is_set():  # (an old one sent again: ours anew, see
            judge.replayed.clear()  # ModelFeed._note_replay)
            self._life_stamp = self._life_mark = None
        if stamp == self._life_stamp:
            return
        name, decisions = self.spec.name, self.topics[0]
        try:
            value = lifecycle(self.registry, name, decisions)
            if value is not None and value["mark"] != self._life_mark:
                value = lifecycle(self.registry, name, decisions, self.registry.issue()) or value
                ann = value["champion_announcement"]
                key = lifecycle_key(name, decisions)
                self._send_or_point(key, value, ann or {"artifact_b64": None}, None)
                log.info(
                    'announced the registry\'s lifecycle champion="%s" rejected="%s" topic="%s"',
                    value["champion"], ",".join(value["rejected"]), self.models_topic,
                )  # fmt: skip
                self._life_mark = value["mark"]
        except (KafkaError, ConfigError, ArtifactError, OSError) as exc:
            log.error(
                'announcing the registry\'s lifecycle on topic="%s" failed (%s); retried in '
                "%.0f s", self.models_topic, describe(exc), ANNOUNCE_RETRY_S,
            )  # fmt: skip
            self._life_at = time.monotonic() + ANNOUNCE_RETRY_S
            return
        self._life_stamp = stamp

    def _send_and_wait(self, key: bytes, value: dict[str, Any], timeout_s: float | None) -> None:
        assert self.producer is not None and self.models_topic
        fut = self.producer.send(self.models_topic, key=key, value=orjson.dumps(value))
        if timeout_s is None:  # (a stop meanwhile shortens the wait: handled as it comes)
            flush_within(self.producer, self.s.broker_timeout_s, cap=self._bounded)
        else:
            flush_within(self.producer, timeout_s)
        fut.get(timeout=0)  # raises the send's error (or a timeout if it is still pending)

    def _commit(self) -> None:
        self._dead_letters_acknowledged()
        self._save_state()
        self._dirty, self._due, self._committed_at = False, False, time.monotonic()
        self.metrics.checkpoints(1, 0)  # (it stayed at 0 on the trainer: a soak run)
        offsets = {
            _tp(topic, part): OffsetAndMetadata(off, "", -1)
            for (topic, part), off in self._offsets.items()
        }
        try:
            self.consumer.commit(
                offsets, timeout_ms=int(self._bounded(self.s.timeout_ms / 1000) * 1000)
            )
        except KafkaError as exc:  # the checkpoint holds the truth; Kafka's copy can lag
            log.warning("offset commit failed (the checkpoint has them): %s", exc)
        self.stats.commits += 1


def _tp(topic: str, partition: int) -> Any:
    from kafka.structs import TopicPartition

    return TopicPartition(topic, partition)


class _Seek(ConsumerRebalanceListener):
    """On assignment, seek to the checkpoint's offsets (local seeks only: IO thread)."""

    def __init__(self, svc: TrainService) -> None:
        self.svc = svc

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.svc._revoked.extend(revoked)  # dropped by the loop, which owns the held labels
        self.svc._due = True  # (their offsets checkpointed at the next pass, not a second on)

    def on_partitions_assigned(self, assigned: Any) -> None:
        svc = self.svc
        shared = None
        for topic in svc.topics:  # one trainer per model: a share of the topics loses labels
            every = svc.consumer.partitions_for_topic(topic) or set()
            held = {tp.partition for tp in assigned if tp.topic == topic}
            if held != set(every):
                shared = (
                    f"this trainer was given {len(held)} of the {len(every)} partitions of "
                    f"{topic!r}: another member of group {svc.s.group!r} holds the rest, and a "
                    "label whose decision it reads would never be learned here. Another fds "
                    "train: run one per model (stop the other, or give it its own --group, "
                    "registry and state dir). An fds run of that group (a scorer's group given "
                    "to the trainer, which told of another fds train: a QA pass): give the "
                    "trainer a group of its own (by default the scorers' group, -train added)"
                )
        # A trainer that held every partition waits for the other member to leave (a second
        # fds train started by mistake stops at its first share), learning nothing meanwhile:
        # both stopped, and a supervisor restarting both kept them flapping (a QA pass).
        if shared is None and svc._shared is not None:
            log.warning("every partition is this trainer's again: it learns on")
        elif shared is not None and svc._had_all and svc._shared is None:
            log.warning(
                "another member joined group %r: waiting up to %.0f s for it to leave, "
                "learning nothing meanwhile (then it stops: %s)", svc.s.group,
                svc._share_wait_s, shared,
            )  # fmt: skip
        svc._had_all = svc._had_all or shared is None
        svc._shared = shared
        svc._shared_at = (svc._shared_at or time.monotonic()) if shared is not None else None
        for tp in assigned:  # (one kept across the rebalance, with labels held: from the first
            off = svc._labels.first(tp)  # of them; kafka-python kept its position past them)
            if off is None:
                off = svc._offsets.get((tp.topic, tp.partition))
            if off is not None:
                svc.consumer.seek(tp, off)


# -- CLI ---------------------------------------------------------------------------------------


#: The settings flags ``fds train`` takes (the others are ``fds run``'s), besides those it
#: defines itself (DEPLOYMENT_FLAGS: registry, models topic, metrics port and host).
TRAIN_SETTINGS = (
    *CONNECTION_SETTINGS, "group", "group_instance_id", "max_poll_records", "max_event_ahead_s",
    "state_dir", "dlq_topic", "session_timeout_ms",
)  # fmt: skip

#: fds train's /metrics port when none is given: the one after fds run's, so that a trainer
#: and a scorer on one host both serve by default.
TRAIN_METRICS_PORT = 9109
#: fds train's models topic when none is given (the kit's, streams/topics.yaml).
TRAIN_MODELS_TOPIC = "models"


_GROUP_HELP = (
    "the trainer's consumer group (default: the group FDS_GROUP or --config gives, with -train: "
    "fds-train; apart from fds run's)"
)


_STATE_HELP = (
    "the decisions its labels wait for and its checkpoint (env FDS_STATE_DIR; default "
    "~/.cache/fds/state/<its group>)"
)


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fds train``."""
    p = subparsers.add_parser(
        "train", help="the trainer service: decisions + labels from Kafka -> model versions"
    )
    add_settings_flags(p, TRAIN_SETTINGS, {"group": _GROUP_HELP, "state_dir": _STATE_HELP})
    p.add_argument(  # (--model as fds run and fds replay name it)
        "--spec",
        "--model",
        type=file_path("model spec file"),
        default=DEFAULT_MODEL,
        help="model spec YAML",
    )
    p.add_argument(
        "--registry", type=registry_folder, default=None,
        help="publish versions here (the registry `fds run` serves from; env FDS_REGISTRY or "
        f"--config's registry; default: {DEFAULT_REGISTRY})",
    )  # fmt: skip
    p.add_argument(
        "--decisions-topic", type=topic_arg, default=None,
        help="where fds run writes its decisions (default: the settings' output_topic, "
        "FDS_OUTPUT_TOPIC or --config's: decisions)",
    )  # fmt: skip
    p.add_argument(
        "--labels-topic", type=topic_arg, default=None,
        help="the fraud labels to learn from (default: the settings' labels_topic, "
        "FDS_LABELS_TOPIC or --config's, else labels)",
    )  # fmt: skip
    p.add_argument(
        "--models-topic", type=topic_arg, default=None,
        help=f"announce versions here ('none': do not; env FDS_MODELS_TOPIC or --config's "
        f"models_topic; default: {TRAIN_MODELS_TOPIC})",
    )  # fmt: skip
    add_metrics_arguments(p, TRAIN_METRICS_PORT, settings=True)
    add_max_idle_argument(p)
    p.set_defaults(func=_cmd_train)


def train_settings(args: argparse.Namespace) -> KafkaSettings:
    """``fds train``'s settings: its flags over env over ``--config``; its group ``--group``,
    else the group the settings give with ``-train`` (``fds-train``): apart from fds run's,
    and one per deployment (``FDS_GROUP``/``group:`` were ignored, so a second deployment's
    trainer on the cluster was refused as another one in ``fds-train``: a QA pass)."""
    dests = (*TRAIN_SETTINGS, *DEPLOYMENT_FLAGS.values())
    flags = {dest: getattr(args, dest, None) for dest in dests}
    if flags["group"] is not None:
        return load_settings(args.config, **flags)
    warn_unknown_env()  # (before the quiet load, which would mark them said: a review)
    said = settings_log  # (its warnings once: the load below says them; they were said
    said.disabled, was = True, said.disabled  # twice, a QA pass)
    try:
        base = load_settings(args.config, **flags)
    finally:
        said.disabled = was
    s = load_settings(args.config, **{**flags, "group": f"{base.group}-train"})
    s._origins = {**s._origins, "group": f"{base._origins['group']}, with -train"}  # (no flag)
    return s


def trainer_topics(
    args: argparse.Namespace, settings: KafkaSettings
) -> tuple[str, str, str | None]:
    """The decisions, labels and models topics of ``fds train``: its flags, else the
    deployment's own as its fds run reads and writes them (``output_topic``, ``labels_topic``:
    the trainer of a --config with prefixed topics learned from the unprefixed ones, a QA
    pass; the settings' ``models_topic``); ``None`` for a models topic ``none``."""
    models = settings.models_topic_for(TRAIN_MODELS_TOPIC)
    decisions = args.decisions_topic or settings.output_topic
    labels = args.labels_topic or settings.labels_topic or "labels"
    named = [("--decisions-topic", decisions), ("--labels-topic", labels),
             (settings.named("models_topic"), models)]  # fmt: skip
    for i, (a, topic) in enumerate(named):  # (one topic for two: it learned nothing, or read
        # its own announcements back as bad records, without a word: QA passes)
        b = next((b for b, other in named[i + 1 :] if other == topic), None)
        if b is not None:
            raise ConfigError(f"{a} and {b} are both {topic!r}: give each its own topic")
    return decisions, labels, models


def _state_dir(settings: KafkaSettings) -> str | Path:
    """The trainer's state dir: the settings', else the default of its group; ``none`` is
    refused (it was made as a folder named none: the trainer keeps its decisions there)."""
    if (settings.state_dir or "").lower() == "none":
        raise ConfigError(
            f"fds train needs a state dir, for the decisions its labels wait for and its "
            f"checkpoint: state dir none ({settings.named('state_dir')}) is fds run's only; "
            "give a path, or leave it out for the default (~/.cache/fds/state/<its group>)"
        )
    return settings.state_dir or default_state_dir(settings.group)


def trainer_metrics(enabled: bool) -> Metrics:
    """The trainer's metrics: its own series, none of a scorer's (they stayed at 0 there)."""
    return make_metrics(enabled, decides=False)


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        settings = train_settings(args)
        decisions, labels, models = trainer_topics(args, settings)
        metrics = trainer_metrics(settings.serves_metrics(TRAIN_METRICS_PORT))
        # before the trainer loads or makes anything (a port in use was refused after its state
        # dir and registry had been made: a QA pass); loading counts as progress for /healthz
        # for stale_after() from here, as for fds run
        health = Health(stale_after_s=stale_after(settings.broker_timeout_s))
        server = settings.serve_metrics(metrics, TRAIN_METRICS_PORT, health)
        try:
            svc = TrainService(
                settings,
                spec=args.spec,
                registry=settings.registry or DEFAULT_REGISTRY,
                state_dir=_state_dir(settings),
                decisions_topic=decisions,
                labels_topic=labels,
                models_topic=models,
                metrics=metrics,
                health=health,
            )
        except BaseException:
            if server is not None:
                server.stop()
            raise
    except ConfigError as exc:
        say(f"fds train: error: {exc}")
        return 2
    if server is not None:  # (as fds run says it, whatever -q: --metrics-port 0 left it
        say(f"serving metrics on {server.url}", logging.INFO)  # unknown, QA passes)
    on_stop_signals(svc.stop)
    try:
        stats = svc.run(max_idle_s=args.max_idle)
    except ConfigError as exc:
        say(f"fds train: error: {exc}")
        svc.unmake()
        return 2
    except (FdsError, KafkaError) as exc:
        say(f"fds train: failed: {describe(exc)}")
        svc.unmake()
        return 1
    finally:
        if server is not None:
            server.stop()
    say(  # (unjoined: since the state dir began, as fds_labels_unjoined_total; it was only
        # in the metrics, and a run that lost 15 % of its labels said nothing: a QA pass)
        f"decisions={stats.decisions} labels={stats.labels} published={stats.published} "
        f"bad_records={stats.bad_records} dead_letters={stats.dead_letters} "
        f"labels_dead_lettered={stats.labels_dead_lettered} "
        f"labels_unjoined_total={svc.trainer.stats['labels_unjoined']} "
        f"learn_errors={svc.trainer.stats['learn_errors']} "
        # (dated before their transaction: learned after it, or waiting for it, checkpointed)
        f"labels_early={stats.labels_early} labels_awaiting_transaction={len(svc._early)}",
        logging.INFO,
    )
    return 0
