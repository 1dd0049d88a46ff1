"""The serving side: champion scoring, shadow challengers, verified hot-swap.

:class:`ModelServer` implements the engine's ``ModelStage``:

- ``score(tx, features)`` is pure inference: the champion's ``predict_proba_one`` on the vector
  of :func:`fds.models.vector.to_vector`, returning ``(score, version)``. A challenger, if any,
  is scored beside it in shadow; its score is kept (by tx_id, bounded) and never acted on.
- A new version is verified (sha256/HMAC before unpickling) and canary-scored on recent inputs
  (every score finite and in [0, 1]) *off the hot path*; the hot path only swaps a reference at
  the start of the next event. A failing artifact is rejected (``stats["swaps_rejected"]``)
  and the current model stays. A verified scaled logistic regression is folded into one pass
  at that point (:func:`fds.models.fused.serving`), so it scores without River's per-step dicts.
- Promotion and rollback follow :mod:`fds.models.champion`.
- The maturity gate (the spec's ``gate``): until the champion has learned ``min_frauds`` fraud
  labels and, over the last ``window`` fraud labels, rules + model (the policy's combination,
  :func:`fds.policy.combine`) caught at least as many within the alert budget as the rules'
  score alone (``rule_score`` in the input), the model's score is logged but does not act
  (:attr:`ModelServer.acting` is false; the engine then decides on rules alone and flags the
  decision ``model_shadow``). It goes back to shadow while the combination catches fewer.

Two ways to get new versions:

``inline`` (replay, demo, tests)
    A :class:`~fds.models.trainer.Trainer` runs in-process on the labels the engine feeds
    (``engine.learn``), publishing per the spec; everything happens between events in event
    time, so a replay is deterministic.
``watch`` (the streaming service)
    :meth:`start_watch` polls the registry manifest in a background thread (``fds train`` is
    a separate process publishing there); load + verify + canary run on that thread and the
    result is handed to the hot path, which swaps it in between two events. Promotions and
    rollbacks are written back to the registry.

>>> from fds.models.spec import load_spec
>>> srv = ModelServer(load_spec("default"))
>>> srv.score({"tx_id": "t1", "ts": 0.0, "amount": 5.0}, {})
(None, None)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from fds.errors import ArtifactError, ConfigError, describe
from fds.models.champion import BudgetRank, Contest
from fds.models.fused import serving
from fds.models.registry import (
    CANARY_SIZE,
    WARM_UP,
    Registry,
    canary,
    learned,
    load_verified,
    passed_over,
    seq_of,
)
from fds.models.registry import fraud_probability as _p
from fds.models.spec import ModelSpec
from fds.models.trainer import Publication, Trainer, event_time
from fds.models.vector import RULE_SCORE, to_vector
from fds.policy import combine
from fds.timeutil import format_ts

__all__ = ["ModelServer", "build_model_stage", "canary"]

log = logging.getLogger("fds.models")

#: Recent inputs kept for canary scoring and budget thresholds: enough for a stable top-0.5%
#: quantile (~20 points above it), small enough to score in a few ms with a linear model.
RECENT_SIZE = 4096
# A version that failed to load for a reason of this machine (key, files, libraries) is tried
# again after this long (watch mode).
LOCAL_RETRY_S = 60.0
#: Decision-time inputs kept per tx_id for the contests and the gate (watch mode, with a labels
#: topic): a count, not a time, so at 1M decisions a day only labels within ~5 h of their
#: decision are judged (README, "Models over Kafka"); bounded memory (~1 KB per input).
KEEP_SIZE = 200_000
#: Registry writes of the scorer's own verdicts (watch mode) that fail are retried this often.
RECORD_RETRIES = (1.0, 5.0, 30.0)
#: A verdict not written after RECORD_RETRIES is tried every 30 s, said every Nth try, for
#: up to RECORD_GIVE_UP_S (the watcher waits for it meanwhile: no new version is followed).
RECORD_SAY_EVERY = 20
RECORD_GIVE_UP_S = 600.0
#: How long closing the scorer waits for its queued verdicts to be written.
WRITES_CLOSE_S = 3.0
#: Every RANK_STRIDE-th recent input ranks contest scores: 2,048 points keep ~10 above a top-0.5%
#: budget while halving the cost of a refresh (two models x the points, on the label path).
RANK_STRIDE = 2
#: Fraud labels between refreshes of the budget thresholds during a contest.
THRESHOLD_REFRESH = 20
#: How long a model may score recent inputs again on the label path at a refresh (seconds, as
#: estimated from RESCORE_PROBE of them); longer goes to a worker thread in watch mode (see
#: ModelServer._rank): 2,048 scorings take ~5 ms with the default spec, ~160 ms with a forest.
RESCORE_INLINE_S = 0.002
RESCORE_PROBE = 8
_DAY = 86400.0
#: Days of decision counts kept: the alert share divides the daily budget by the mean count of
#: the 7 days with decisions before the one under way, the eighth (older days are never read).
DAYS_COUNTED = 8
#: Contest verdicts kept in ModelServer.history (newest last): a benchmark run reads all of its
#: own (tens); a service, one or a few a day, keeps years of them without growing for good.
HISTORY_SIZE = 1000
#: Model events logged as warnings (the rest, the model's normal life, as INFO lines).
_WARN = frozenset({"swap_rejected", "rollback"})
#: Versions whose parents a scorer keeps (the lines a rollback rejects), the oldest forgotten.
PARENTS_KEPT = 256


def _pacer(every_s: float = 0.001) -> Callable[[], None]:
    """A ``pause`` for long work on a worker thread: releases the GIL once ``every_s`` of work
    went by. (After each item instead, a worker behind a busy decision loop waited the
    interpreter's switch interval, 5 ms, to get it back for every item.)"""
    last = time.perf_counter()

    def pause() -> None:
        nonlocal last
        if time.perf_counter() - last >= every_s:
            time.sleep(0.0001)  # (sleep(0) may take the GIL straight back: a real wait)
            last = time.perf_counter()

    return pause


#: A verdict's two versions as fds_model_precision names them: the one serving after it
#: ("champion") and the other ("challenger"), by their keys in the verdict.
_VERDICT_SIDES = {
    "promote": ("candidate", "incumbent"),
    "reject": ("incumbent", "candidate"),
    "confirm": ("on_probation", "predecessor"),
    "rollback": ("predecessor", "on_probation"),
}


class _Raised(Exception):
    """A model of a contest raised while judging a label: ``which`` is 0 (the incumbent) or 1."""

    def __init__(self, which: int, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.which = which


def _waited(wait: float, c: Contest) -> str:
    return f"no verdict within {wait / _DAY:g} d ({c.n} of {c.min_labels} fraud labels judged)"


_UNSCORED: tuple[str | None, float, str | None, float] = (None, math.nan, None, math.nan)


def _scores(
    model: Any,
    version: str | None,
    recent: list[dict[str, float]],
    scored: list[tuple[str | None, float, str | None, float]],
    pause: Callable[[], None] | None = None,
    pre: Mapping[int, float] | None = None,
) -> list[float]:
    """Raw scores of ``model`` (version ``version``) for ``recent`` inputs: the ones it gave on
    the decision path (as champion, or as challenger in shadow: ``scored``) or before it was
    installed (``pre``: by input id, see :meth:`ModelServer._prescore`) are reused, the others
    computed now (``pause`` between two: a worker thread yields the interpreter)."""
    out = []
    for x, (v1, s1, v2, s2) in zip(recent, scored, strict=True):
        if v1 == version:
            out.append(s1)
        elif v2 == version:
            out.append(s2)
        elif pre is not None and id(x) in pre:
            out.append(pre[id(x)])
        else:
            if pause is not None:
                pause()
            out.append(_p(model, x))
    return out


def _champions(m: Mapping[str, Any]) -> list[str]:
    """The versions a starting scorer may serve, in order: the champion, then the earlier
    champions of the history, newest first, except rejected ones; when none was chosen yet,
    the versions newest first, except rejected ones (a scorer without labels, whose registry
    never has a champion, started with the rules alone when the newest was bad or another
    spec's: a QA pass)."""
    versions: Mapping[str, Any] = m["versions"]
    first = m.get("champion")
    history = [v for h in reversed(m.get("history", [])) for v in (h["to"], h["from"])]
    if first is None:
        history += [e["version"] for e in sorted(versions.values(), key=lambda e: -e["seq"])]
    out: list[str] = []
    for v in [first, *history]:
        if not isinstance(v, str) or v not in versions or v in out:
            continue
        if v == first or versions[v]["status"] != "rejected":
            out.append(v)
    return out


def _unsampled(s: float, rate: float) -> float:
    """Score ``s`` of a learner that saw legit transactions at ``rate``, as a probability."""
    if rate < 1.0:
        return s * rate / (s * rate + (1.0 - s)) if s < 1.0 else 1.0
    return s


#: A version the watcher prepared (see ``ModelServer._pending``).
Pending = tuple[str, str, Any, dict[str, Any], int, Any, tuple[int, int], tuple[Any, Any]]


_FRESH = ("published", "shadow")  # a version to offer (shadow: another scorer's challenger)


def _superseded(m: Mapping[str, Any], role: str, version: str) -> bool:
    """Was a version newer than ``version``, prepared as the newest (``role``), published in
    manifest ``m`` since? The newest is then prepared: without an event to serve it, a version
    prepared held every newer one back (a CI run: v1 prepared as the traffic paused, v2
    published meanwhile, and a scorer took v2 only after the next event had served v1)."""
    if role not in ("challenger", "newest"):  # (a choice by hand, a stand-in: served first)
        return False
    seq = (m["versions"].get(version) or {}).get("seq", math.inf)
    return any(e["seq"] > seq and e["status"] in _FRESH for e in m["versions"].values())


def _view(m: Mapping[str, Any], version: str) -> tuple[Any, Any]:
    """What a version prepared to serve depends on in manifest ``m``: the champion and the
    version's status."""
    return m.get("champion"), (m["versions"].get(version) or {}).get("status")


class ModelServer:
    """Serving model stage (see the module docstring).

    Parameters
    ----------
    spec
        The model spec (promotion policy; the pipeline for an inline trainer).
    registry
        Where versions live; required for ``watch`` mode, optional inline (then every
        published version is also written there).
    learn
        Run a trainer in-process on ``on_label`` (inline mode). ``False`` for a scorer that
        only serves what the registry offers (watch mode).
    auto_promote
        Promote/roll back automatically by contests; ``False``: the newest version is
        promoted as soon as it passes its canary (the "adaptive, no guard" variant).
    on_event
        Optional ``callback(kind, info)`` for metrics/logs: ``swap``, ``swap_rejected``,
        ``promote``, ``reject``, ``rollback``, ``confirm``, ``drift``, ``gate`` (the
        maturity gate opened or closed: ``info["acting"]``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        registry: Registry | None = None,
        learn: bool = True,
        trainer: Trainer | None = None,
        auto_promote: bool | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        metrics: Any = None,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self._rate = spec.learn.legit_sample_rate
        #: the engine gives the model one input per rule only when it reads them (stacking)
        self.reads_rules = spec.inputs.reads_rules  # its score is final (stacking)
        self.reads_rule_ids = spec.inputs.per_rule  # one input per rule
        self.registry = registry
        self.trainer = trainer or (Trainer(spec, registry=registry) if learn else None)
        self.auto_promote = spec.promote.auto if auto_promote is None else auto_promote
        self.on_event = on_event
        self.champion: Any = None
        self.version: str | None = None
        self.challenger: Any = None
        self.challenger_version: str | None = None
        self.predecessor: Any = None  # kept during probation, for rollback
        self.predecessor_version: str | None = None
        self._predecessor_rate = spec.learn.legit_sample_rate  # the legit rate it learned at
        self._predecessor_frauds = 0  # ... and its own count of frauds learned (the gate's)
        self.contest: Contest | None = None  # shadow: challenger vs champion
        self.probation: Contest | None = None  # last promoted champion vs its predecessor
        self._prob_ranks: tuple[BudgetRank, BudgetRank] | None = None
        self._champion_labels = 0
        self._challenger_entry: dict[str, Any] = {}
        self._queued: tuple[str, Any, dict[str, Any]] | None = None  # newest verified version
        # prepared by the watcher thread: (role, version, model, its manifest entry, the swaps
        # counted when it was prepared, its scores of the recent inputs then, the registry's
        # stamp it was prepared from, and the champion and the version's status there: one
        # tuple, so that the hot path never reads one version with another's stamp)
        self._pending: Pending | None = None
        self._pending_lock = threading.Lock()  # its changes by the watcher and the hot path
        # version -> (the recent inputs it scored before it served, their scores by input id):
        # a new champion's or challenger's first ranking of recent traffic reuses them instead
        # of scoring 2,048 inputs on the label path (a review measured 160-320 ms with forest)
        self._prescored: dict[str, tuple[list[dict[str, float]], dict[int, float]]] = {}
        self._swaps = 0  # champion swaps so far: a version prepared before one is stale
        self._ranks: tuple[BudgetRank, BudgetRank] | None = None
        # maturity gate: (model credit, rules credit) on the last `gate.window` fraud labels
        gate = spec.gate
        self._acting = False
        self.acting = not (gate.min_frauds or gate.window)
        self._gate_frauds = 0  # most fraud labels learned by any champion so far
        self._gate: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=max(gate.window, 1)
        )
        self._gate_ranks: tuple[str | None, BudgetRank, BudgetRank] | None = None
        self._gate_n = 0  # fraud labels judged (threshold refreshes)
        self._recent: collections.deque[dict[str, float]] = collections.deque(maxlen=RECENT_SIZE)
        self._canary_seed: list[dict[str, float]] = []  # the last run's, from the checkpoint
        # ... and the raw scores given to each on the decision path, aligned with it:
        # (champion version, its score, challenger version, its score in shadow)
        self._recent_scored: collections.deque[tuple[str | None, float, str | None, float]] = (
            collections.deque(maxlen=RECENT_SIZE)
        )
        self._scored: tuple[str | None, float, str | None, float] = _UNSCORED  # the last one
        # decisions per day (a dict: counting in a Counter took 2.5x as long)
        self._day_counts: dict[int, int] = {}
        self._last: tuple[str, dict[str, float]] | None = None
        self._inputs: collections.OrderedDict[str, dict[str, float]] = collections.OrderedDict()
        self.history: list[dict[str, Any]] = []  # contest verdicts, the newest HISTORY_SIZE
        # fds_model_precision{window="contest"} as last exported, by model (kept in the state:
        # a restart had no series until the next verdict, days away, a QA pass)
        self._contest_precision: dict[str, Any] = {}  # (and the version served with them)
        self.stats: collections.Counter[str] = collections.Counter()
        self._watch: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # the watcher looks now (a verdict the registry refused)
        self._pointer: str | None = None  # the registry champion pointer last seen or written
        self._offered = -1  # seq of the newest version taken from the registry (watch mode)
        # the versions the registry rejects, as the watcher last read them: one rejected by
        # hand, or learned from a version rolled back, is not promoted (a contest of it ends)
        self._rejected: frozenset[str] = frozenset()
        # ... and the lines this scorer rolled back, known before the registry's write lands
        # (a label in between promoted a version learned from the rolled-back one: 111
        # decisions scored by it, a QA pass), by the parents of the versions offered here and
        # of the registry's (the watcher offers the newest only: a review). The decision thread
        # writes _rolled_back, the watcher _rejected and _manifest_parents (one assignment).
        self._rolled_back: frozenset[str] = frozenset()
        self._parents: dict[str, str | None] = {}
        self._manifest_parents: dict[str, str | None] = {}
        # in memory (a replay): the artifacts of the versions a rollback may return to, for the
        # trainer to learn on from (see _trainer_follows)
        self._kept: dict[str, Publication] = {}
        self._rewound = False  # the registry's newest version is older than one seen here
        # serving in the stead of a registry champion that failed to load here (watch mode):
        # nothing is contested or written to the registry meanwhile
        self._standing_in = False
        self._labels_here = True  # fraud labels reach on_label (see without_labels)
        self._retry_at: dict[str, float] = {}  # version that failed to load -> when to retry
        # version that failed for good -> its file then (stat): a file restored is tried again
        self._bad_file: dict[str, tuple[int, int, int] | None] = {}
        self._saved_contest: dict[str, Any] | None = None  # restored, until its challenger
        self._now = -math.inf  # event time of the newest decision
        self._gate_at = math.nan  # ... of the gate's last judged fraud label
        self._gate_starved = False  # no label judged for shadow_max_wait: opens on the count
        self._day = -1  # ... and its day (contests are checked for their wait once a day)
        # watch mode: the scorer's own verdicts, written to the registry in order (see _record)
        self._writes: queue.Queue[tuple[str, Callable[[Registry], Any]] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        # watch mode: ranks being computed off the decision thread, by model version
        self._reranks: dict[tuple[int, str | None], tuple[Any, Future[BudgetRank]]] = {}
        self._ranker: ThreadPoolExecutor | None = None
        self._give_up = threading.Event()  # set when closing cannot wait for the writes
        self._foreign_seen: set[str] = set()  # versions of another spec, said once
        if self.trainer is not None:
            self.trainer.on_example = self._evaluate
            self.trainer.on_drift = lambda now: self._emit("drift", {"event_time": format_ts(now)})

    # -- hot path --------------------------------------------------------------------------
    def score(
        self, tx: Mapping[str, Any], features: Mapping[str, Any]
    ) -> tuple[float | None, str | None]:
        """Champion score and version (``(None, None)`` before the first version)."""
        if self._pending is not None:
            self.install_pending()
        x = to_vector(tx, features)
        self._last = (tx["tx_id"], x)
        self._scored = _UNSCORED
        champ = self.champion
        if champ is None:
            return None, None
        raw = _p(champ, x)
        scored = raw
        if not 0.0 <= raw <= 1.0:
            # NaN or far out: never a decline (the model guard falls back to the rules); a
            # rounding overshoot is clipped
            if not -1e-9 <= raw <= 1.0 + 1e-9:
                raise ValueError(f"model {self.version} scored {raw!r}, not a probability")
            raw = min(max(raw, 0.0), 1.0)
        s = self._probability(raw)
        shadow, shadow_version = math.nan, None
        if self.challenger is not None and (
            self.challenger_version in self._rejected
            or self.challenger_version in self._rolled_back
        ):
            self._end_rejected()  # (its line rolled back: ended at once, not at a label judged
            # here, which a scorer may not see for hours while newer versions wait: a QA pass)
        if self.challenger is not None:
            try:  # in shadow: scored on live traffic so that a failing one is dropped early
                shadow, shadow_version = _p(self.challenger, x), self.challenger_version
            except Exception as e:  # a challenger never breaks serving
                self._drop_challenger(
                    "reject", f"shadow scoring raised {describe(e)}", local=True
                )  # (maybe this machine's libraries: the registry is not told)
            else:
                if not -1e-9 <= shadow <= 1.0 + 1e-9:  # NaN or far out: the version's fault
                    self._drop_challenger(  # (it had been ranked, and promoted: a review)
                        "reject", f"shadow score {shadow!r} is not a probability in [0, 1]"
                    )
                    shadow, shadow_version = math.nan, None
        # kept with the input: a contest re-ranking recent traffic reuses them (see _scores)
        self._scored = (self.version, scored, shadow_version, shadow)
        return s, self.version

    def _rate_of(self, entry: Mapping[str, Any]) -> float:
        """The legit sampling rate a version learned at: its entry's spec says (a trainer
        restarted with another rate publishes versions of it; a scorer undid its own spec's
        rate, or refused them), else this scorer's spec."""
        learn = (entry.get("spec") or {}).get("learn") or {}
        rate = learn.get("legit_sample_rate") if isinstance(learn, dict) else None
        if isinstance(rate, int | float) and not isinstance(rate, bool) and 0.0 < rate <= 1.0:
            return float(rate)
        return self.spec.learn.legit_sample_rate

    def _probability(self, s: float) -> float:
        """Undo the legit sampling: the learner saw legit transactions at ``rate``, so its odds
        of fraud are 1/rate too high. Ranking is unchanged; the score becomes a probability
        that the policy can combine with the rules' score."""
        return _unsampled(s, self._rate)

    def on_decision(self, tx: Mapping[str, Any], decision: Mapping[str, Any]) -> None:
        """Keep the decision-time input for the trainer and the recent-traffic sample."""
        last = self._last
        tx_id = tx["tx_id"]
        if last is not None and last[0] == tx_id:
            x = last[1]
            self._recent_scored.append(self._scored)
        else:
            x = to_vector(tx, decision.get("features") or {})
            self._recent_scored.append(_UNSCORED)
        self._recent.append(x)
        ts = tx["ts"]
        day = int(ts // _DAY)
        counts = self._day_counts
        counts[day] = counts.get(day, 0) + 1
        if ts > self._now:
            self._now = ts
            if day != self._day:  # contests that waited too long: checked once a day
                self._day = day
                self._expire_contests(ts)
                if len(counts) > DAYS_COUNTED:  # (a late decision may have brought one back)
                    for old in sorted(counts)[:-DAYS_COUNTED]:
                        del counts[old]
        if self.trainer is not None:
            self.trainer.on_decision(tx, decision, x=x)
            # its publish policy in event time, as fds train checks it after each batch (a
            # replay published at labels only: with sparse labels far fewer versions than in
            # production, the first after 1,600 examples assumed legitimate, a QA pass)
            pub = self.trainer.maybe_publish()
            if pub is not None:
                self.offer(pub)
        elif self._labels_here:  # (no label would ever take them)
            keep = self._inputs
            keep[tx_id] = x
            if len(keep) > KEEP_SIZE:
                keep.popitem(last=False)

    def on_label(self, label: Mapping[str, Any]) -> None:
        """Learn (inline), judge contests, and take up newly published versions."""
        if self.trainer is None:  # (a legit label keeps the input: a chargeback after it is
            if label["is_fraud"]:  # judged, as inline, where it was lost here: a review)
                x = self._inputs.pop(label["tx_id"], None)
                if x is not None:
                    self._evaluate(x, True)
            return
        # Event time first: what it assumes legitimate (unlabelled for long) is learned there,
        # and is no label learned (fds_labels_learned_total counted it: more labels learned
        # than read, a review)
        self.trainer.advance(event_time(label["ts"]))
        learned = self.trainer.stats["labels_learned"]
        self.trainer.on_label(label)
        if self.metrics is not None and self.trainer.stats["labels_learned"] > learned:
            self.metrics.labels_learned(self.trainer.stats["labels_learned"] - learned)
        pub = self.trainer.maybe_publish()
        if pub is not None:
            self.offer(pub)

    # -- versions --------------------------------------------------------------------------
    def offer(self, pub: Publication) -> bool:
        """Verify and canary a published version, then make it champion or challenger."""
        try:
            model = serving(
                load_verified(
                    pub.data,
                    sha256=pub.entry["sha256"],
                    signature=pub.entry.get("hmac"),
                    key=self.registry.key if self.registry is not None else None,
                )
            )
            canary(model, self._canary_inputs())
        except ArtifactError as e:
            self.stats["swaps_rejected"] += 1
            self._emit("swap_rejected", {"version": pub.version, "error": str(e)})
            return False
        self._take(pub.version, model, pub.entry)
        if self.trainer is not None and self.trainer.registry is None:
            self._kept[pub.version] = pub
            live = self._live() | {self._queued[0] if self._queued is not None else None}
            self._kept = {v: p for v, p in self._kept.items() if v in live}
        return True

    def _take(self, version: str, model: Any, entry: dict[str, Any]) -> None:
        self._parents[version] = entry.get("parent")
        if len(self._parents) > PARENTS_KEPT:
            del self._parents[next(iter(self._parents))]
        if (
            self._rolled_back
            and self.champion is not None
            and self.auto_promote
            and self._rolled_back & self._line_of(version)
        ):  # (prepared by the watcher before the rollback's write landed: a review)
            self._roll_back({version})
            log.info("model %s not contested: learned from a version rolled back", version)
            return
        if self.champion is None or not self.auto_promote:
            why = "first version" if self.champion is None else "newest"
            self._set_champion(version, model, why, entry)
            return
        if self._champion_labels < self.spec.promote.warmup_labels:
            # A champion that has learned next to nothing is no yardstick: a contest between two
            # near-empty models is noise and would only slow the start down.
            self._set_champion(version, model, WARM_UP, entry)
            # a contest of an older version (the champion set back by hand to one under its
            # warm-up) ends: it held every newer version queued until its verdict (a QA pass)
            if self._ends_older_contest(version):
                self.challenger = self.challenger_version = self.contest = None
                self._queued = None  # (older than this one: offered in order)
            return
        if self.contest is None:
            self._start_shadow(version, model, entry)
        else:
            self._queued = (version, model, entry)  # the newest waits; older queued ones drop

    def _ends_older_contest(self, version: str) -> bool:
        """Is the challenger contested older than ``version``, the champion now (said)? (A QA
        pass: a fleet moved on to a newer champion, and the old contest, gone on against it,
        expired with no label judged and promoted the older version.)"""
        older = self.challenger_version is not None and (
            seq_of(self.challenger_version) < seq_of(version)
        )
        if older:
            log.info("model contest of %s ended: the champion %s is newer",
                     self.challenger_version, version)  # fmt: skip
        return older

    def _start_shadow(self, version: str, model: Any, entry: dict[str, Any]) -> None:
        if self.registry is not None:  # kept by retention until its verdict
            self._record(f"shadow {version}", lambda reg: reg.mark_shadow(version))
        self.challenger, self.challenger_version = model, version
        self._challenger_entry = entry
        self.contest = Contest(
            "shadow", self.version or "", version, self.spec.promote.shadow_min_labels,
            started=self._now,
        )  # fmt: skip
        saved, self._saved_contest = self._saved_contest, None
        if saved and (saved["incumbent"], saved["candidate"]) == (self.version, version):
            self.contest = Contest(**saved)  # the same contest, before a restart
        elif saved:  # (dropped without a word: a soak)
            log.info(
                'the contest of "%s" against "%s" (%s of %s fraud labels judged before the '
                'restart) is not resumed: "%s", newer, is contested against "%s" instead',
                saved["candidate"], saved["incumbent"], saved.get("n", 0),
                saved.get("min_labels"), version, self.version,
            )  # fmt: skip
        self._ranks = None
        # (a fleet's trainer keeps the version until the verdict: see ModelFeed.on_event)
        self._emit("shadow", {"candidate": version, "incumbent": self.version})

    def _set_champion(
        self,
        version: str,
        model: Any,
        why: str,
        entry: Mapping[str, Any] | None = None,
        *,
        reject_old: bool = False,
        record: bool = True,
    ) -> None:
        """Serve ``version``; ``record``: also make it the registry's champion (not for a
        version the registry chose, or one standing in for a champion not loaded here)."""
        old = self.version
        self.champion, self.version = model, version  # the swap: one reference, between events
        self._swaps += 1
        counted = entry is not None  # (a rollback's predecessor comes without its entry)
        entry = entry or {}
        self._rate = self._rate_of(entry)
        self._champion_labels, frauds = learned(entry)
        # the champion's own count (the most of any champion so far kept a version promoted
        # by hand with 5 frauds learned acting, where 1,400 had been served: a QA pass)
        self._gate_frauds = frauds if counted else self._gate_frauds
        if not self._labels_here or not self.spec.gate.window:  # (min_frauds alone: judged
            self._gate_by_count()  # at the swap, not at the next fraud label, a QA pass)
        elif self._gate_frauds < self.spec.gate.min_frauds:
            self._set_acting(False)
        self.stats["swaps"] += 1
        self._emit("swap", {"from": old, "to": version, "why": why})
        if self.registry is not None and record:
            self._pointer = version  # our own change: the watcher must not "discover" it
            # a rollback rejects the version that lost its probation (never returned to)
            # (not a version rejected meanwhile, nor over a champion other than the one judged
            # against: the trainer's registry's, followed through the models topic; the watcher
            # then serves the registry's champion again)
            self._record(f"promote {version}", lambda reg: reg.promote(
                version, reason=why, reject_current=reject_old, unless_rejected=True,
                over=old))  # fmt: skip

    def _record(self, what: str, change: Callable[[Registry], Any]) -> None:
        """Write a verdict to the registry. Inline it is synchronous, so a replay is
        reproducible. In watch mode (file I/O + fsync: never on the hot path) the writes go in
        order through one writer thread, each retried a few times (a lock held by `fds train`,
        a full disk); the watcher reads no manifest while one is pending, or it would take the
        champion pointer our promotion is about to replace for a change made by hand."""
        reg = self.registry
        assert reg is not None
        if self._watch is None:
            with contextlib.suppress(Exception):  # bookkeeping: serving goes on
                self._write(reg, what, change, retries=())
            return
        self._writes.put((what, change))
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="fds-model-record",
                                            daemon=True)  # fmt: skip
            self._writer.start()

    def _write_loop(self) -> None:
        reg = self.registry
        assert reg is not None
        refused = False
        while True:
            item = self._writes.get()
            if item is None:  # closing: everything queued before is written
                self._writes.task_done()
                return
            with contextlib.suppress(Exception):
                refused = self._write(reg, item[0], item[1], retries=RECORD_RETRIES) or refused
            self._writes.task_done()
            if refused and not self._writing():  # what it serves may be no longer the
                refused = False  # registry's: the watcher looks now, not at its next poll (a
                self._wake.set()  # QA pass: served 1.4 s), once the verdicts queued are written

    def _write(self, reg: Registry, what: str, change: Callable[[Registry], Any],
               retries: tuple[float, ...]) -> bool:  # fmt: skip
        """Make ``change``; whether the registry refused it. With ``retries`` (watch mode) a
        failure is tried again after each wait, then every last wait until it is written, the
        scorer closes, or RECORD_GIVE_UP_S passed: a verdict given up after 36 s was undone by
        the watcher, which took
        the registry's old champion for a change made by hand, and nothing counted it (a QA
        pass: a promotion lost to a registry briefly read-only). Counted once per verdict
        (``fds_model_swaps_total{result="unrecorded"}``), logged at each try of the first
        ones, then every RECORD_SAY_EVERY."""
        tries, since = 0, time.monotonic()
        while True:
            try:
                change(reg)
            except ConfigError as e:  # refused (a version rejected meanwhile): not retried
                log.warning('registry update refused change="%s": %s', what, e)
                return True
            except Exception as e:
                wait = retries[min(tries, len(retries) - 1)] if retries else None
                tries += 1
                if wait is None or tries <= len(retries) or tries % RECORD_SAY_EVERY == 0:
                    log.warning(
                        'registry update failed%s change="%s" error="%s"',
                        "" if wait is None else f"; retrying in {wait:g} s (try {tries}; it "
                        "stands meanwhile, and the registry's champion is not followed)", what, e,
                    )  # fmt: skip
                if tries == len(retries) and self.metrics is not None:
                    self.metrics.model_swap("unrecorded")
                if wait is not None and time.monotonic() - since > RECORD_GIVE_UP_S:
                    log.error(  # (the watcher, waiting for it, followed no new version: a review)
                        'registry update given up change="%s" after %.0f s: %s; the registry '
                        "is followed again (its champion served, this verdict undone): make it "
                        "writable for this scorer", what, time.monotonic() - since, e,
                    )  # fmt: skip
                    raise
                if wait is None or self._give_up.wait(wait):
                    raise
                continue
            # what it rejected is known now, not at the watcher's next poll (a rollback rejects
            # the line learned from the version: a contest ending in between promoted one,
            # which the registry refused; a replay never polls); a failed read: at that poll
            with contextlib.suppress(Exception):
                self._see_rejected(reg.manifest())
            return False

    def _see_rejected(self, m: Mapping[str, Any]) -> None:
        """The versions manifest ``m`` rejects: no contest of theirs ends in a promotion."""
        self._rejected = frozenset(v for v, e in m["versions"].items() if e["status"] == "rejected")
        self._manifest_parents = {
            **(m.get("parents") or {}), **{v: e.get("parent") for v, e in m["versions"].items()}
        }  # fmt: skip

    def _roll_back(self, versions: set[str]) -> None:
        """``versions`` are of a line rolled back here: none is contested (kept, not pruned
        when the registry rejects them: a watcher's stale read could then undo both, a
        review; the newest PARENTS_KEPT)."""
        kept = self._rolled_back | versions
        if len(kept) > PARENTS_KEPT:
            kept = frozenset(sorted(kept, key=seq_of)[-PARENTS_KEPT:])
        self._rolled_back = kept

    def _is_rejected(self, version: str | None) -> bool:
        """Is ``version`` rejected, in the registry or by a rollback here (its line)?"""
        return version in self._rejected or version in self._rolled_back

    def _line_of(self, version: str) -> set[str]:
        """``version`` and the versions it learned on from (its ancestors), by the parents of
        the versions offered here and of the registry's: a rollback of any of them rejects it,
        as the registry does (:func:`fds.models.registry.line_of`)."""
        parents = self._manifest_parents | self._parents
        line: set[str] = set()
        v: str | None = version
        while v is not None and v not in line:
            line.add(v)
            v = parents.get(v)
        return line

    def _writing(self) -> bool:
        """Is a verdict of ours still on its way to the registry (watch mode)?"""
        return self._writes.unfinished_tasks > 0

    def _drop_challenger(
        self,
        verdict: str,
        why: str,
        figures: dict[str, Any] | None = None,
        *,
        local: bool = False,
    ) -> None:
        self.stats[verdict] += 1
        lost = self.challenger_version
        self._emit(verdict, {"version": lost, "why": why, **(figures or {})})
        if self.registry is not None and lost is not None and not local:
            # not offered again, even after a restart
            self._record(f"reject {lost}", lambda reg: reg.reject(lost, why))
        self.challenger = self.challenger_version = None
        self.contest = None
        self._next_queued()

    def _next_queued(self) -> None:
        if self._queued is not None and self.contest is None:
            version, model, entry = self._queued
            self._queued = None
            if self._is_rejected(version):
                log.info("model %s not contested: rejected in the registry", version)
                return
            # contested, or a warm-up swap when the champion is under its warm-up (it was
            # contested against such a champion: a QA pass)
            self._take(version, model, entry)

    def _alert_share(self) -> float:
        days = sorted(self._day_counts)[-DAYS_COUNTED:-1] or sorted(self._day_counts)[-1:]
        per_day = sum(self._day_counts[d] for d in days) / max(len(days), 1)
        return min(1.0, self.spec.promote.alert_budget_per_day / max(per_day, 1.0))

    def _rank(
        self, model: Any, version: str | None, old: BudgetRank | None = None,
        contest: Any = None, finish: Callable[[list[Any], list[float]], list[float]] | None = None,
    ) -> BudgetRank:  # fmt: skip
        """``model``'s scores of recent traffic, ranked at the alert budget.

        In watch mode (``fds run``), with ranks ``old`` to go on with, a model whose scoring of
        recent inputs again (a predecessor on probation) would take longer than
        RESCORE_INLINE_S does so on a worker thread that hands the interpreter back after each
        millisecond of work (``_pacer``), and ``old`` serves until it is done (the label that
        finds it done takes it): 2,048 forest scorings took ~160 ms, a gap in decisions, every
        THRESHOLD_REFRESH fraud labels. Replays stay inline: their verdicts must not depend on
        thread timing. A job belongs to its ``contest`` (or the maturity gate's window): another
        one (after a promotion, say) starts its own. ``finish`` turns the inputs and their
        scores into what is ranked (the gate's: combined with the rules' score).
        """
        inline = old is None or self._watch is None
        key = (id(contest), version)  # (each entry holds its contest: the id is not reused)
        entry = None if inline else self._reranks.get(key)
        if entry is not None:  # (called for a refresh, or because a job was pending)
            job = entry[1]
            if not job.done() and old is not None:  # (not inline: old is set)
                return old
            del self._reranks[key]
            return job.result()  # (a model that raised raises here, on the label path)
        recent = list(self._recent)[::RANK_STRIDE]
        scored = list(self._recent_scored)[::RANK_STRIDE]
        share = self._alert_share()
        pre = self._pre(version)

        def ranked(pace: Callable[[], None] | None = None) -> BudgetRank:
            got = _scores(model, version, recent, scored, pace, pre)
            return BudgetRank(got if finish is None else finish(recent, got), share)

        if old is None or inline:
            return ranked()
        todo = [x for x, (v1, _, v2, _) in zip(recent, scored, strict=True)
                if version not in (v1, v2)]  # fmt: skip
        probe = todo[:RESCORE_PROBE]  # a few scorings tell what all of them would cost
        t = time.perf_counter()
        for x in probe:
            _p(model, x)
        if (time.perf_counter() - t) / max(len(probe), 1) * len(todo) <= RESCORE_INLINE_S:
            return ranked()
        held = {(id(c), v) for c in (self.probation, self.contest) if c is not None
                for v in (self.version, c.candidate, c.incumbent)}  # fmt: skip
        held.add((id(self._gate), self.version))
        for k in [k for k in self._reranks if k not in held]:
            self._reranks.pop(k)[1].cancel()  # (of a contest that ended)
        if self._ranker is None:
            self._ranker = ThreadPoolExecutor(1, thread_name_prefix="fds-model-rank")
        self._reranks[key] = (contest, self._ranker.submit(lambda: ranked(_pacer())))
        return old

    def _judge_gate(self, x: dict[str, float]) -> None:
        """One fraud label for the maturity gate: rules + champion (the policy's combination)
        vs the rules alone, each ranked in recent traffic at the alert budget."""
        gate, champ = self.spec.gate, self.champion
        if not (gate.min_frauds or gate.window) or champ is None:
            return
        rate, reads = self._rate, self.reads_rules

        def final(r: dict[str, float], raw: float) -> float:
            return combine(r.get(RULE_SCORE, 0.0), _unsampled(raw, rate), reads)

        def finals(rs: list[dict[str, float]], raws: list[float]) -> list[float]:
            return [final(r, s) for r, s in zip(rs, raws, strict=True)]

        ranks = self._gate_ranks
        self._gate_n += 1
        if (
            ranks is None or ranks[0] != self.version or self._gate_n % THRESHOLD_REFRESH == 0
            or (id(self._gate), self.version) in self._reranks
        ):  # fmt: skip
            # (in fds run off the decision thread when slow, as a contest's: after a rollback
            # the restored champion's 2,048 scorings were a 36 ms pause, a QA pass)
            old = None if ranks is None else ranks[1]
            share = self._alert_share()
            ranks = self._gate_ranks = (
                self.version,
                self._rank(champ, self.version, old, self._gate, finals),
                BudgetRank([r.get(RULE_SCORE, 0.0) for r in list(self._recent)[::RANK_STRIDE]],
                           share),
            )  # fmt: skip
        win = self._gate
        win.append(
            (ranks[1].credit(final(x, _p(champ, x))), ranks[2].credit(x.get(RULE_SCORE, 0.0)))
        )
        self._gate_at = self._now
        self._set_acting(self._gate_verdict(), labels=len(win), **self._gate_recall())

    def _gate_recall(self) -> dict[str, float]:
        """The gate window's recall at the budget: with the model, and of the rules alone."""
        win, n = self._gate, max(len(self._gate), 1)
        return {
            "recall_at_budget_with_model": round(sum(m for m, _ in win) / n, 4),
            "recall_at_budget_rules": round(sum(r for _, r in win) / n, 4),
        }

    def _export_gate(self, info: Mapping[str, Any]) -> None:
        """``fds_model_precision{window="gate"}`` from a gate's figures (a gate opened on the
        trainer's count, without labels, has none)."""
        if self.metrics is not None and "recall_at_budget_rules" in info:
            self.metrics.model_precision("champion", "gate", info["recall_at_budget_with_model"])
            self.metrics.model_precision("rules", "gate", info["recall_at_budget_rules"])

    def _gate_verdict(self) -> bool:
        """Whether the maturity gate is open by what it holds: no gate, or enough frauds
        learned and a full window where rules + model caught at least what the rules did, or,
        while open, no less than ``gate.margin`` of the window below it (a window not full yet
        keeps it as it is when labels are starved, see _expire_contests; otherwise closed)."""
        gate, win = self.spec.gate, self._gate
        if not (gate.min_frauds or gate.window):
            return True
        if not gate.window:  # min_frauds alone (it judged the last fraud label: a QA pass)
            judged = True
        elif len(win) >= gate.window:
            model_caught = sum(m for m, _ in win)
            rules_caught = sum(r for _, r in win)
            if self.acting:  # hysteresis: closes only when clearly behind (the spec's margin)
                rules_caught -= gate.margin * len(win)
            judged = model_caught >= rules_caught
        else:
            judged = self._gate_starved
        return self._gate_frauds >= gate.min_frauds and judged

    @property
    def acting(self) -> bool:
        """Does the model's score act on the decisions (the maturity gate open)?"""
        return self._acting

    @acting.setter
    def acting(self, on: bool) -> None:
        self._acting = on
        if self.metrics is not None:  # (fds_model_acting)
            self.metrics.model_acting(on)

    def _set_acting(self, acting: bool, **info: Any) -> None:
        """Open or close the maturity gate (an event and a counter when it changes)."""
        if acting != self.acting:
            self.acting = acting
            self.stats["gate_open" if acting else "gate_closed"] += 1
            self._emit(
                "gate",
                {
                    "acting": acting, "version": self.version,
                    "frauds_learned": self._gate_frauds, **info,
                },
            )  # fmt: skip

    def without_labels(self, why: str = "no --labels-topic") -> None:
        """No fraud label reaches this scorer (``fds run`` without ``--labels-topic``, or
        ``why`` else): a contest or the gate's window could never be judged, so versions are
        served as the registry publishes them (the canary still checks each) and the maturity
        gate opens on the trainer's count of fraud labels learned (``gate.min_frauds``)
        alone."""
        if self.auto_promote or self.spec.gate.window:
            log.warning(
                "no labels reach the scorer (%s): new versions are served without a "
                "champion/challenger contest and the maturity gate counts only the fraud "
                "labels the trainer learned", why,
            )  # fmt: skip
        self.auto_promote = False
        self._labels_here = False
        self._inputs.clear()
        self._gate_by_count()

    def _gate_by_count(self) -> None:
        self._set_acting(self._gate_frauds >= self.spec.gate.min_frauds)

    def gate_state(self) -> dict[str, Any]:
        """The maturity gate's and the contests' state, for the engine's checkpoint: a
        restarted scorer must not put a proven model back in shadow until `window` more frauds
        are labelled, nor forget that its champion is on probation (no rollback would be
        possible any more) or how far a challenger's contest got."""
        gate = self.spec.gate
        return {
            "acting": self.acting, "window": list(self._gate), "frauds": self._gate_frauds,
            "version": self.version,  # (whose count and verdict they are)
            "starved": self._gate_starved, "gate": [gate.min_frauds, gate.window],
            "probation": dataclasses.asdict(self.probation) if self.probation else None,
            "predecessor": self.predecessor_version,
            "contest": dataclasses.asdict(self.contest) if self.contest else None,
            "canary": self._canary_inputs(),
            "spec": orjson.loads(orjson.dumps(self.spec.to_dict())),  # (as a manifest holds it)
            "days": {str(d): n for d, n in self._day_counts.items()},  # (the alert share's)
            "precision": dict(self._contest_precision),
        }  # fmt: skip

    def load_gate_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`gate_state` returned. A probation resumes when the champion
        served is still the one on trial and its predecessor loads from the registry (verified);
        a challenger's contest resumes when the watcher offers that challenger again. A state
        of a model made otherwise (another spec name, pipeline or inputs: a restart with
        another ``--model``, a snapshot of an instance serving another) is not taken: what it
        judged was another model."""
        # the decisions counted per day, whatever the model (the alert share: after a restart
        # the day under way alone divided the budget, a share 80 times too large that opened
        # the gate on a tie, a review)
        for day, n in (state.get("days") or {}).items():
            self._day_counts[int(day)] = max(self._day_counts.get(int(day), 0), int(n))
        other = self.spec.made_otherwise(state.get("spec"), serving=True)
        if other is not None:
            log.info("the maturity gate and contests of the state are not taken: they judged "
                     "%s", other)  # fmt: skip
            return
        if isinstance(saved_version := state.get("version"), str):
            self._serve_saved(saved_version)
        self._gate.clear()
        self._gate.extend(tuple(c) for c in state["window"])
        gate = self.spec.gate
        if self._gate and (gate.min_frauds or gate.window):  # (a restart had no series until
            self._export_gate(self._gate_recall())  # the next label: a QA pass)
        # another champion served now (set by hand while it was down): its own count, and a
        # verdict judged anew (the state's was carried over to it, a QA pass); none served
        # yet, or a release before the version was kept: as then
        same = self.version is None or state.get("version", self.version) == self.version
        if same:
            self._gate_frauds = max(self._gate_frauds, int(state["frauds"]))
            figures = dict(state.get("precision") or {})
            if figures.pop("version", None) == self.version and figures:  # (the verdict's,
                self._set_contest(figures)  # of the champion served now)
        self._gate_starved = bool(state.get("starved", False))
        saved = state.get("gate")  # (None: a release before it was kept)
        changed = saved is not None and list(saved) != [gate.min_frauds, gate.window]
        if changed or not same or not (gate.min_frauds or gate.window):
            # the spec's gate changed while it was down: judged anew on what it holds (a gate
            # removed kept the model in shadow until the next label, a QA pass)
            self.acting = self._gate_verdict()
        else:
            self.acting = bool(state["acting"])
        self._canary_seed = [dict(x) for x in state.get("canary") or () if x]
        if state.get("contest"):  # (a fresh state, as a rebuild loads, has none to resume)
            self._saved_contest = state["contest"]
        prob, pred = state.get("probation"), state.get("predecessor")
        if not prob or not pred or prob["incumbent"] != self.version or self.registry is None:
            return
        try:
            self.predecessor = serving(self.registry.load(pred))
            self._predecessor_rate = self._rate_of(self.registry.entry(pred))
            self._predecessor_frauds = learned(self.registry.entry(pred))[1]
        except Exception as e:  # unverifiable, or deleted by retention since: no probation
            log.warning("probation of %s not resumed: predecessor %s: %s", self.version, pred, e)
            return
        self.predecessor_version = pred
        self.probation = Contest(**prob)
        self._prob_ranks = None

    def _evaluate(self, x: dict[str, float], y: bool) -> None:
        """A labelled input (before the trainer learns it): feed the running contests.

        Two can run at once: the probation of the last promoted champion (against its
        predecessor) and the shadow contest of the next challenger (against the champion).
        """
        self._end_rejected()
        if not y:
            return
        try:  # a model that raises is the model guard's business on the decision path
            self._judge_gate(x)
        except Exception as e:
            log.warning("maturity gate: the champion raised %s: %s; label skipped",
                        type(e).__name__, e)  # fmt: skip
        p = self.probation
        if p is not None:
            try:
                self._prob_ranks, credits = self._credits(
                    self._prob_ranks, (self.champion, self.predecessor),
                    (self.version, self.predecessor_version), x, p,
                )  # fmt: skip
            except _Raised as e:  # the champion: this label is skipped (see _credits)
                if e.which == 1:  # the predecessor: no verdict possible, the champion stays
                    self.probation = self.predecessor = self.predecessor_version = None
                    self._emit("probation_ended", {"why": f"the predecessor raised {e}"})
            else:
                p.add(*credits)
                verdict = p.verdict()
                if verdict is not None:
                    self._judge_probation(verdict)
        c = self.contest
        if c is not None:
            try:
                self._ranks, credits = self._credits(
                    self._ranks, (self.champion, self.challenger),
                    (self.version, self.challenger_version), x, c,
                )  # fmt: skip
            except _Raised as e:
                if e.which == 1:  # as on the decision path: the challenger goes
                    self._drop_challenger("reject", f"shadow scoring raised {e}", local=True)
            else:
                c.add(*credits)
                verdict = c.verdict()
                if verdict is not None:
                    self._judge_shadow(verdict)

    def _credits(
        self, ranks: tuple[BudgetRank, BudgetRank] | None, models: tuple[Any, Any],
        versions: tuple[str | None, str | None], x: dict[str, float], contest: Contest,
    ) -> tuple[tuple[BudgetRank, BudgetRank], tuple[float, float]]:  # fmt: skip
        """Budget credits of ``models`` (incumbent, candidate) for the labelled input ``x``, with
        their ranks on recent traffic (refreshed every THRESHOLD_REFRESH labels). A model that
        raises is named by :class:`_Raised` (0 or 1); the champion raising is logged here and
        left to the model guard, which sees it on the decision path."""
        refresh = ranks is None or contest.n % THRESHOLD_REFRESH == 0
        out = []
        for i, model in enumerate(models):
            try:
                if refresh or ranks is None or (id(contest), versions[i]) in self._reranks:
                    old = None if ranks is None else ranks[i]
                    r = self._rank(model, versions[i], old, contest)
                else:
                    r = ranks[i]
                out.append((r, r.credit(_p(model, x))))
            except Exception as e:
                if model is self.champion:
                    log.warning("contest: the champion raised %s: %s; label skipped",
                                type(e).__name__, e)  # fmt: skip
                raise _Raised(i, e) from e
        return (out[0][0], out[1][0]), (out[0][1], out[1][1])

    def _expire_contests(self, now: float) -> None:
        """End a contest or probation that has waited ``promote.shadow_max_wait`` of event time
        without a verdict, on the fraud labels judged so far (none: as if no label reached
        this scorer, the challenger serves as published, the champion on probation is
        confirmed). In `fds run` a label is judged only with the input of one of the last
        KEEP_SIZE decisions: at a large volume a label days late finds none, and the model
        would otherwise stop being updated."""
        wait = self.spec.promote.shadow_max_wait
        if not math.isfinite(self._gate_at) or self.champion is None:
            self._gate_at = now  # (no champion: nothing for the gate to judge yet)
        if (
            self.spec.gate.window
            and not self._gate_starved
            and now - self._gate_at >= wait
            and len(self._gate) < self.spec.gate.window
        ):  # the gate's window cannot fill: it opens on the trainer's count, as without labels
            self._gate_starved = True
            log.warning("maturity gate: no fraud label judged for %g d; it now opens on the "
                        "trainer's count of frauds learned alone", wait / _DAY)  # fmt: skip
            self._gate_by_count()
        for c in (self.probation, self.contest):
            if c is not None and not math.isfinite(c.started):
                c.started = now  # (restored from before the field existed, or no event yet)
        # decided on the labels judged so far: none, as without labels (promote / confirm)
        p = self.probation
        if p is not None and now - p.started >= wait:
            self.stats["expired"] += 1
            self._judge_probation(p.verdict(early=True) or "confirm", why=_waited(wait, p))
        c = self.contest  # (read after the probation's verdict: a rollback there ended the
        # contest of its line, which was then judged anyway, an AssertionError: a QA pass)
        if c is not None and now - c.started >= wait:
            self.stats["expired"] += 1
            verdict = c.verdict(early=True) or "promote"
            self._judge_shadow(verdict, why=f"expired: {_waited(wait, c)}")

    def _end_rejected(self) -> bool:
        """End the contest of a challenger rejected meanwhile (its line rolled back, by hand or
        by a lost probation), so that the next version, learned from the restored champion,
        starts its own at once rather than after the doomed one's verdict. On the decision
        thread: at a rollback here, and at the next label after the registry said so."""
        c = self.contest
        if c is None or not self._is_rejected(c.candidate):
            return False
        self._drop_challenger("reject", "rejected in the registry meanwhile", local=True)
        return True

    def _judge_shadow(self, verdict: str, why: str | None = None) -> None:
        """``why``: an expiry's (a contest judged on its labels so far); a verdict on the
        labels wanted says its own."""
        c = self.contest
        assert c is not None
        if self._end_rejected():  # meanwhile (a rollback by hand of the version it learned
            return  # from: promoted 12 s later, a QA pass)
        info = c.figures()
        self._keep_verdict(verdict, info)
        if verdict == "reject":  # (an expiry's said why too: it was "precision below
            # champion" alone, with 16 of 500 labels, a QA pass)
            lost = "precision below champion"
            self._drop_challenger("reject", f"{why}; {lost}" if why else lost, info)
            return
        why = why or "promoted: precision >= champion"
        info["why"] = why  # (the event's, not the history's: its entries have no why)
        self.stats["promote"] += 1
        self.predecessor, self.predecessor_version = self.champion, self.version
        self._predecessor_rate = self._rate  # (a rollback undid the spec's rate: a review)
        self._predecessor_frauds = self._gate_frauds
        self._set_champion(c.candidate, self.challenger, why, self._challenger_entry)
        self.challenger = self.challenger_version = None
        self.contest = None
        # a new probation replaces an unfinished one: the newest promotion is the one on trial
        self.probation = Contest(
            "probation", c.candidate, c.incumbent, c.min_labels, started=self._now
        )
        self._prob_ranks = None
        self._emit("promote", info)
        self._next_queued()

    def _keep_verdict(self, verdict: str, info: dict[str, Any]) -> None:
        history = self.history
        history.append({"verdict": verdict, **info})
        del history[:-HISTORY_SIZE]  # the newest HISTORY_SIZE

    def _contest_against(self, incumbent: str) -> None:
        """A running shadow contest starts over against a new champion (its wait goes on)."""
        c = self.contest
        if c is not None:
            self.contest = Contest(
                "shadow", incumbent, c.candidate, c.min_labels, started=c.started
            )
            self._ranks = None

    def _judge_probation(self, verdict: str, why: str | None = None) -> None:
        p = self.probation
        assert p is not None
        info = p.figures()
        if why:
            info["why"] = why
        self._keep_verdict(verdict, info)
        self.probation = None
        self.stats[verdict] += 1
        if verdict == "rollback":
            # judged at its own count of frauds learned by the maturity gate (it kept the one
            # rolled back's, and a predecessor that had never passed the gate acted: a review)
            own = {"evaluation": {"frauds_learned": self._predecessor_frauds}}
            self._set_champion(
                self.predecessor_version or "", self.predecessor, "rollback: worse than before",
                own, reject_old=True,
            )  # fmt: skip
            self._rate = self._predecessor_rate  # the rate it learned at, as when it served
            self._champion_labels = self.spec.promote.warmup_labels  # a proven model
            self._contest_against(self.version or "")  # the restored champion
            if self.trainer is not None:
                self._trainer_follows(p.incumbent)
            self._emit("rollback", info)
            back = p.incumbent
            queued = self._queued[0] if self._queued is not None else None
            self._roll_back({back} | {
                v for v in (self.challenger_version, queued)
                if v is not None and back in self._line_of(v)
            })  # fmt: skip
            self._end_rejected()
        else:
            self._emit("confirm", info)
        self.predecessor = self.predecessor_version = None

    def _trainer_follows(self, back: str) -> None:
        """The in-process trainer goes on from the champion a rollback of ``back`` restored,
        as ``fds train`` does (:meth:`Trainer.follow_rollback`): in a replay its next version
        carried back what was rolled back, and one in its shadow contest could win it."""
        t = self.trainer
        assert t is not None
        if t.registry is not None:  # (the rollback is written there: inline, synchronous)
            t.follow_rollback()
            return
        line, pub = t.line_from(back), self._kept.get(self.version or "")
        if not line or pub is None:
            return
        t.go_on_from(pub.version, load_verified(pub.data, sha256=pub.entry["sha256"]), pub.entry)
        self._roll_back(set(line))  # (its contest ends, a queued one is dropped)
        log.warning(
            'version "%s" was rolled back: learning goes on from "%s" (%d versions dropped)',
            back, pub.version, len(line),
        )  # fmt: skip

    def _emit(self, kind: str, info: dict[str, Any]) -> None:
        # a version refused or rolled back is a warning: `fds -q` shows it (a rejected rules
        # file is an error line; a rejected model was an INFO line only: a QA report)
        level = logging.WARNING if kind in _WARN else logging.INFO
        # (a value that is none is left out: the first swap was `from="None"`, a QA pass); the
        # pairs in the template, so that JSON logs give them as fields (one string argument
        # kept them inside `msg`: a QA pass)
        said = {k: v for k, v in info.items() if v is not None}
        log.log(level, "model %s" + "".join(f' {k}="%s"' for k in said), kind, *said.values())
        m = self.metrics
        if m is not None:
            if kind == "swap":
                m.model_swap("ok")
                m.model_info(str(info["to"]), self.spec.name)
            elif kind == "swap_rejected":
                m.model_swap("rejected")
            elif kind == "drift":
                m.drift()
            elif kind == "gate":
                self._export_gate(info)
        if (sides := _VERDICT_SIDES.get(kind)) and f"recall_at_budget_{sides[0]}" in info:
            self._export_contest(kind, sides, info)
        if self.on_event is not None:
            self.on_event(kind, info)

    def _export_contest(self, kind: str, sides: tuple[str, str], info: Mapping[str, Any]) -> None:
        """``fds_model_precision{window="contest"}`` of a verdict, kept for the state. A
        challenger dropped because shadow scoring raised has no figures; a verdict that judged
        no label has none either (its 0.0 dropped the panel and paged FdsModelPrecisionDrop, a
        QA pass), and when it changed the version served, the last figures were another
        model's: removed (a review). "champion": the version serving after the verdict (after
        a promotion it was the replaced one's figure, under the one serving: a QA pass)."""
        if info.get("labels") != 0:
            models = zip(("champion", "challenger"), sides, strict=True)
            self._set_contest({m: info[f"recall_at_budget_{side}"] for m, side in models})
        elif kind in ("promote", "rollback"):
            self._set_contest({"champion": None, "challenger": None})

    def _set_contest(self, figures: Mapping[str, float | None]) -> None:
        """Export the contest's ``figures`` by model (``None``: removed) and keep them, with
        the version served, for the state."""
        kept = {m: f for m, f in figures.items() if f is not None}
        self._contest_precision = {"version": self.version, **kept} if kept else {}
        if self.metrics is not None:
            for model, figure in figures.items():
                self.metrics.model_precision(model, "contest", figure)

    # -- watch mode (the streaming service) ------------------------------------------------
    def say_if_empty(self) -> None:
        """Warn when the registry holds no version to serve (watch mode)."""
        reg = self.registry
        if reg is not None and self.champion is None and not reg.versions():
            # (absolute: an fds train started in another folder publishes a relative
            # --registry elsewhere, a README walk)
            where = reg.path.absolute()
            log.warning("no model version in registry %s yet: decisions use the rules alone "
                        "until one is there (published by fds train --registry %s sharing it, "
                        "or imported from the models topic with --models-topic); check "
                        "--registry if one was", where, where)  # fmt: skip

    def load_champion(self) -> str | None:
        """Serve the registry's champion now (startup); ``None`` when none can be served yet.

        A champion that fails its verification or canary is refused as in :meth:`poll`
        (retried later for a cause of this machine, else rejected) and the scorer falls back to
        the registry's earlier champions, newest first (a corrupt file must not keep a scorer
        from starting: "keep the last good one"), and to the rules alone when none loads; the
        watcher serves the champion once it can be loaded.
        """
        reg = self.registry
        assert reg is not None
        m = reg.manifest()
        self._pointer = m.get("champion")
        self._standing_in = False  # (unless it stands in below: a second load, see above)
        self._newest_served = False  # (served as the newest, no champion chosen: below)
        self._offered = max(self._offered, passed_over(m))
        for v in _champions(m):
            if self._foreign(v, m["versions"][v]):
                continue
            try:
                model = self._checked(v)
            except ArtifactError as e:
                self._refuse(v, e)
                continue
            if self._pointer is None:  # none chosen yet: the newest version (not an error)
                log.info("model %s served: the newest version (no champion chosen yet)", v)
                self._pointer = v
                self._newest_served = True
            elif v != self._pointer:  # (the pointer stays the registry's: a change of it
                # by hand is one, also while a stand-in serves; a failure here is retried)
                log.error("model %s served instead of the registry's champion %s, which "
                          "could not be loaded or was made by another spec", v,
                          self._pointer)  # fmt: skip
                self._standing_in = self._failed_here(self._pointer)
            self._serve_at_start(v, model, m["versions"].get(v) or {})
            return v
        if self._pointer is not None:
            log.error("no model version of %s could be loaded: deciding with the rules alone "
                      "until one can", reg.path)  # fmt: skip
            self._pointer = None
        return None

    def _checked(self, v: str, pause: Callable[[], None] | None = None) -> Any:
        """Version ``v`` of the registry, loaded, verified and through its canary (raises
        ArtifactError)."""
        assert self.registry is not None
        model = serving(self.registry.load(v))
        canary(model, self._canary_inputs(), pause=pause)
        return model

    def _serve_at_start(self, v: str, model: Any, entry: Mapping[str, Any]) -> None:
        """Serve version ``v`` (loaded and checked) as a start does."""
        self.champion, self.version = model, v
        if self.metrics is not None:  # served from the start, not only after a swap
            self.metrics.model_info(v, self.spec.name)
        self._rate = self._rate_of(entry)
        # a restart keeps the contest: a trained champion is no warm-up model
        self._champion_labels, self._gate_frauds = learned(entry)
        if not self._labels_here:
            self._gate_by_count()

    def _serve_saved(self, v: str) -> bool:
        """Serve ``v``, the version the state says was served, in place of the newest one a
        start took while no champion is chosen yet: the newest was then a challenger in its
        contest, and served unjudged after the restart (a QA pass); it is offered again and
        its contest resumed. ``False`` when ``v`` cannot be served (then as started)."""
        reg = self.registry
        if reg is None or not self._newest_served or v == self.version:
            return False
        m = reg.manifest()
        entry = m["versions"].get(v)
        if m.get("champion") is not None or entry is None or entry["status"] == "rejected":
            return False
        if self._foreign(v, entry):
            return False
        try:
            model = self._checked(v)
        except ArtifactError as e:
            log.warning("model %s served before the restart could not be loaded: %s", v, e)
            return False
        log.info("model %s served: the version served before the restart (no champion chosen "
                 "yet; %s, newer, is contested against it)", v, self.version)  # fmt: skip
        self._serve_at_start(v, model, entry)
        self._pointer, self._newest_served = v, False
        self._offered = min(self._offered, int(entry["seq"]))  # (the newer ones: offered)
        return True

    def load_champion_if_changed(self) -> str | None:
        """Serve the registry's champion unless it is the one served (startup, once a models
        feed has caught up): a scorer restarted after the trainer's lifecycle replaced its
        champion (a rollback while it was down) served the rolled-back version until the
        watcher's first look, 2-5 s into its first batches (a QA pass of a fleet)."""
        reg = self.registry
        assert reg is not None
        champ = reg.manifest().get("champion")
        if self.champion is not None and champ == self._pointer:  # (a stand-in serving: the
            return self.version  # champion it stands in for was refused once, not again)
        return self.load_champion()

    def poll(self) -> str | None:
        """One registry check (the watcher thread calls this): prepare a newer version.

        Loads, verifies and canaries off the hot path; the hot path installs it between two
        events. Returns the version prepared, if any.
        """
        assert self.registry is not None
        swaps = self._swaps  # a promotion of ours after this: the manifest read is stale
        if self._writing():  # the manifest may not show our own verdict yet
            return None
        stamp = self.registry.stamp()  # (before the read: a change during it shows)
        m = self.registry.manifest()
        self._see_rejected(m)
        champ = m.get("champion")
        role, target = None, None
        versions = m["versions"]
        now = time.monotonic()
        self._prune_retries(champ, versions)
        if champ and champ == self.version and champ != self._pointer and swaps == self._swaps:
            self._pointer = champ  # seen: the registry now names what we serve (a scorer
            # without labels serving the newest version, promoted by hand later: a later change
            # of the pointer, back to the old champion say, is again one by hand)
        if (
            champ
            and (champ != self._pointer or self._retrying(champ))
            and champ != self.version
            and now >= self._retry_at.get(champ, 0.0)
        ):
            # promoted or rolled back by someone else (fds models promote|rollback), or a
            # champion that failed to load here, tried again
            role, target = "champion", champ
        else:  # (a champion that cannot be loaded here does not hold newer versions back)
            newest = max(versions.values(), key=lambda e: e["seq"], default=None)
            # by seq ("v1000000" sorts before "v999999" as a string); a version offered before
            # (a challenger rejected in shadow) is not offered again
            # (the ids of a registry deleted since still count: its new numbering repeats them)
            known = [
                versions.get(v, {}).get("seq", seq_of(v))
                for v in (self.version, self.challenger_version)
            ]
            newest_known = max([self._offered, *known])
            self._check_rewound(newest, newest_known)
            # the newest that may be offered: a version rejected (its canary failed) numbered
            # past the trainer's (a record forged or of another registry, imported from the
            # models topic) held every later version back, for good (a QA pass)
            fresh = (e for e in versions.values() if e["status"] in _FRESH)
            latest = max(fresh, key=lambda e: e["seq"], default=None)
            if latest and latest["seq"] > newest_known:
                role = "challenger" if self.auto_promote else "newest"
                if champ and champ != self.version and self._failed_here(champ):
                    # The registry's champion failed to load here (retried, or bad for good:
                    # a corrupt file): what is served stands in for it. A warm-up or a
                    # contest against the stand-in changed the shared champion for a failure
                    # of this machine (a QA pass), or was refused by the registry, while the
                    # scorer served its winner anyway (a later QA pass): the newer version is
                    # served as the stand-in, written nowhere.
                    role = f"stand-in for {champ}, not loaded here"
                target = latest["version"]
        if target is None or now < self._retry_at.get(target, 0.0):
            return None
        if self._foreign(target, versions[target]):
            self._retry_at[target] = math.inf  # never ours: not read again
            return None
        try:
            # (paced as the other watcher work: sleep(0) after each input often took the GIL
            # straight back, and a decision then waited the 5-ms switch interval: a swap's gap
            # was 5.9 ms in model.md)
            model = self._checked(target, pause=_pacer())
        except ArtifactError as e:
            self._refuse(target, e)
            return None
        pre = self._prescore(model) if self._labels_here else None
        self._retry_at.pop(target, None)
        if swaps != self._swaps:  # (the decision thread promoted meanwhile: a review found
            return None  # its champion's old pointer taken for a change by hand, undone)
        entry = versions.get(target) or {}
        with self._pending_lock:
            self._pending = (role or "challenger", target, model, entry, swaps, pre, stamp,
                             _view(m, target))  # fmt: skip
        return target

    def _recheck_pending(self) -> None:
        """The watcher's look while a version prepared waits for an event: a newer version
        published since is prepared in its stead (see :func:`_superseded`); one that cannot be
        (another spec's, a failing artifact) leaves the prepared one in place."""
        if self._still_pending() and not self._writing():
            self.poll()  # (it replaces the prepared version only once the newer one is ready)

    def _still_pending(self) -> bool:
        """A version prepared and not served yet (no event came since) stays good when the
        manifest changed but not its champion nor the version's status: the hot path's check
        of the stamp then passes (a fleet's imports changed the manifest every 1-3 s, each
        change dropped the version prepared, and a swap waited 11 s: a QA pass). Returns
        whether it stays good while a newer version was published since."""
        reg, pending = self.registry, self._pending
        assert reg is not None
        stamp = reg.stamp()
        if pending is None or stamp == pending[6]:
            return False
        m = reg.manifest()
        good = _view(m, pending[1]) == pending[7]
        with self._pending_lock:
            if self._pending is pending:  # (else taken meanwhile by the hot path)
                # still good: served at the next event; else gone (rolled back, say): the next
                # poll prepares anew
                self._pending = (*pending[:6], stamp, pending[7]) if good else None
        return good and _superseded(m, pending[0], pending[1])

    def _check_rewound(self, latest: Mapping[str, Any] | None, newest_known: int) -> None:
        """Say once, and count (``fds_model_swaps_total{result="registry_rewound"}``), a
        registry whose newest version is older than one served or offered here: deleted and
        begun again, its versions were ignored without a word (a QA pass), and a restarted
        scorer served other models under the ids this one served."""
        if latest is None or latest["seq"] >= newest_known:
            self._rewound = False
            return
        if self._rewound:  # said once, until the registry numbers past what was seen here
            return
        self._rewound = True
        assert self.registry is not None
        log.warning(
            "model registry %s went backwards: its newest version is %s, older than %s seen "
            "here (deleted or replaced, its numbering begun again); its versions are not "
            "served: restore the registry, or restart fds run to serve the new one",
            self.registry.path, latest["version"], self.version,
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.model_swap("registry_rewound")

    def _canary_inputs(self) -> list[dict[str, float]]:
        """The inputs a version must score cleanly: the last CANARY_SIZE decided, topped up
        after a restart with those the checkpoint kept (``gate_state``), and an empty input
        when there is none (before, no input passed any model: a review served one that
        scored NaN on everything, each decision then falling back to the rules)."""
        xs = list(self._recent)[-CANARY_SIZE:]
        if len(xs) < CANARY_SIZE:
            xs = (self._canary_seed + xs)[-CANARY_SIZE:]
        return xs or [{}]

    def _prescore(self, model: Any) -> tuple[list[dict[str, float]], dict[int, float]] | None:
        """``model``'s scores of the recent inputs, on the watcher thread (handing the
        interpreter back between two); the inputs are kept with them, so that no id is reused
        while the scores are. ``None`` when one raises (the label path then scores them)."""
        xs, pause = list(self._recent), _pacer()
        try:
            scores = {}
            for x in xs:
                pause()
                scores[id(x)] = _p(model, x)
        except Exception:
            return None
        return xs, scores

    def _live(self) -> set[str | None]:
        """The versions that may still be ranked or returned to: served, in shadow, and the
        predecessor of one on probation."""
        return {self.version, self.challenger_version, self.predecessor_version}

    def _pre(self, version: str | None) -> dict[int, float] | None:
        """The scores ``version`` gave before it served (see :meth:`_prescore`); the cache
        keeps only the versions that may still be ranked."""
        live = self._live()
        for v in [v for v in self._prescored if v not in live]:
            del self._prescored[v]
        got = self._prescored.get(version or "")
        return None if got is None else got[1]

    def _foreign(self, version: str, entry: Mapping[str, Any]) -> bool:
        """Was ``version`` made by another spec than this scorer's (another model or inputs)?
        It is then not served, and said once (a scorer of spec `tree` served a version of
        `nogate` without a word, with its own spec's inputs: a QA pass). The registry is not
        told: the version is good for its own spec's scorers."""
        other = self.spec.made_otherwise(entry.get("spec"), serving=True)
        if other is not None and version not in self._foreign_seen:
            self._foreign_seen.add(version)
            log.error(
                "model %s of %s not served: it was made by spec %s; serve it with the spec "
                "its trainer ran (--model), or give this spec its own --registry",
                version, self.registry.path if self.registry else "?", other,
            )  # fmt: skip
        return other is not None

    def _refuse(self, version: str, e: ArtifactError) -> None:
        """A version that failed to load or its canary: counted, reported, and tried again
        after LOCAL_RETRY_S when the cause is this machine's, else rejected for every scorer."""
        assert self.registry is not None
        self.stats["swaps_rejected"] += 1
        self._emit("swap_rejected", {"version": version, "error": str(e)})
        if e.local:  # this machine's key, files or libraries: not the version's fault
            self._retry_at[version] = time.monotonic() + LOCAL_RETRY_S
        else:  # verifiably bad for every scorer (a champion stays the pointer: see reject)
            self._retry_at[version] = math.inf
            self._bad_file[version] = self._file_of(version)
            # (broken: no trainer learns on from it; a corrupt file's model may be sound)
            self.registry.reject(version, str(e), broken=e.bad_model)

    def _file_of(self, version: str) -> tuple[int, int, int] | None:
        """What marks a version's artifact file (change time, size, inode: a copy that keeps
        the old modification time changes it too): ``None`` when missing."""
        assert self.registry is not None
        try:
            st = self.registry.artifact(version).stat()
        except OSError:
            return None
        return (st.st_ctime_ns, st.st_size, st.st_ino)

    def _bad_files(self) -> tuple[tuple[int, int, int] | None, ...]:
        """The marks of the files of the versions that failed for good (the watcher looks
        again when one changes: a champion's file restored was never tried again)."""
        return tuple(self._file_of(v) for v in list(self._bad_file))  # (another thread may
        # add one meanwhile: the watcher died of "dictionary changed size", a review)

    def _prune_retries(self, champ: str | None, versions: Mapping[str, Any]) -> None:
        """Forget deferred retries of versions that can no longer be chosen: gone from the
        manifest, or superseded (no newer than what is served or was offered, and not the
        champion pointer). Otherwise the watcher would re-read the manifest every poll."""
        seq = max(self._offered, versions.get(self.version or "", {}).get("seq", -1))
        for v, mark in list(self._bad_file.items()):
            if v not in versions or self._file_of(v) != mark:  # gone, or its file replaced
                del self._bad_file[v]
                if self._retry_at.get(v) == math.inf:
                    # its file replaced: tried again now (a champion refused as the scorer
                    # started was never served once restored: its pointer was seen, a QA pass);
                    # pruned below unless it can still be chosen
                    self._retry_at[v] = 0.0
                    if v not in versions:
                        del self._retry_at[v]
        for v, at in list(self._retry_at.items()):
            entry = versions.get(v)
            if entry is None or (math.isfinite(at) and v != champ and entry["seq"] <= seq):
                del self._retry_at[v]

    def _failed_here(self, version: str | None) -> bool:
        """Did ``version`` fail to load here (for a cause of this machine, or for good)?"""
        return version is not None and version in self._retry_at

    def _retrying(self, version: str | None) -> bool:
        """Did ``version`` fail to load here for a cause of this machine (tried again)?"""
        return version is not None and math.isfinite(self._retry_at.get(version, math.inf))

    def _retry_pending(self) -> bool:
        """Is a version that failed to load for a local reason due to be tried again?"""
        return any(math.isfinite(t) for t in self._retry_at.values())

    def install_pending(self) -> None:
        """Serve the version the watcher prepared, if any (between two events)."""
        pending = self._pending
        if pending is None:
            return
        role, version, model, entry, swaps, pre, stamp, view = pending
        if self.registry is not None and self.registry.stamp() != stamp:
            # prepared from a manifest changed since (promoted, then rolled back while no
            # event came: the next events served the version rejected, a fleet's test): left
            # until the watcher checks it against the manifest as it is now (_still_pending:
            # served at the next event, or dropped and prepared anew); one stat per event.
            # (Taken out and put back, it overwrote a newer version the watcher prepared
            # during the stat: a review.)
            return
        with self._pending_lock:
            if self._pending is not pending:  # replaced by the watcher during the stat
                return
            self._pending = None
        # taken: the watcher offers nothing older again (set here, not when prepared: a
        # version dropped above was never prepared again, a review), and a champion the
        # registry names is no change by hand (not the newest version served without labels)
        self._offered = max(self._offered, entry.get("seq", -1))
        if version == view[0]:
            self._pointer = version
        if version == self.version:  # served already (loaded at start while it was prepared)
            return
        if role == "champion" and swaps != self._swaps:  # a change by hand read from a
            self._pointer = self.version  # manifest before our own promotion: stale (the
            return  # watcher reads the registry again once our verdict is written)
        if pre is not None:
            self._prescored[version] = pre
        if role != "challenger" or self.champion is None:
            stand_in = role.startswith("stand-in")
            if self._standing_in and not stand_in:  # the champion loads at last: the newer
                self._offered = entry.get("seq", -1)  # versions served meanwhile are contested
            self._standing_in = stand_in
            dropped = version == self.challenger_version  # promoted by hand in its contest
            dropped = self._ends_older_contest(version) or dropped
            if dropped or stand_in:  # (a contest against a stand-in would be written for all)
                self.challenger = self.challenger_version = self.contest = None
                if self._queued is not None and seq_of(self._queued[0]) <= seq_of(version):
                    self._queued = None  # (the newest waiting: contested next, if newer; the
                    # one promoted by hand was contested against itself, a QA pass)
                if stand_in:
                    self._queued = None
            # set by hand (or the first): no probation of the champion it replaces applies,
            # and a running contest goes on against this one
            self.probation = self.predecessor = self.predecessor_version = None
            self._prob_ranks = None
            self._contest_against(version)
            why = role if stand_in else "registry"
            self._set_champion(version, model, why, entry, record=False)
            self._end_rejected()  # (a challenger rejected meanwhile is no warm-up: a review)
            if (
                self.contest is not None
                and self.auto_promote
                and self._champion_labels < self.spec.promote.warmup_labels
            ):  # a champion set under its warm-up: the newer challenger replaces it, as a
                # version published after it does (its contest went on, and the fleet served
                # the hand's champion under its warm-up for good: a QA pass)
                self._set_champion(
                    self.contest.candidate, self.challenger, WARM_UP, self._challenger_entry
                )
                self.challenger = self.challenger_version = self.contest = None
                dropped = True
            if dropped:
                self._next_queued()
        else:
            self._take(version, model, entry)
        self._pre(None)  # (the scores of versions no longer served or contested go)

    def start_watch(self, every: float = 1.0) -> None:
        """Poll the registry every ``every`` seconds on a daemon thread."""

        reg = self.registry
        assert reg is not None

        def loop() -> None:
            seen = None
            said = None  # the failure logged last: each is logged once, not at every poll
            had = reg.stamp() != (0, 0)  # a manifest when last looked at
            while not self._stop.is_set():
                self._wake.wait(every)
                self._wake.clear()
                if self._stop.is_set():
                    return
                if self._pending is not None or self._writing():
                    with contextlib.suppress(Exception):
                        self._recheck_pending()
                    continue  # the hot path has not taken the last one yet, or see _record
                stamp = None
                try:
                    # one stat() (and one per artifact that failed for good); the manifest is
                    # read only when it changed
                    stamp = (reg.stamp(), self._bad_files())
                    if stamp == seen:
                        continue
                    if had and stamp[0] == (0, 0):  # (it said nothing: a QA pass)
                        log.warning(
                            "model registry %s: manifest.json is gone; still serving %s",
                            reg.path, self.version,
                        )  # fmt: skip
                    had = stamp[0] != (0, 0)
                    swaps = self._swaps
                    self.poll()
                    # a deferred retry (see poll), or a read made stale by a swap of ours (its
                    # verdict may never change the manifest), looks again without a change
                    again = self._retry_pending() or swaps != self._swaps
                    seen = stamp if not again else None
                    if said is not None:
                        log.info("model registry %s readable again", reg.path)
                    said = None
                except Exception as e:
                    # (a file that cannot be used: its stamp, so that a restore with the old
                    # one's mtime, `cp -p`, is a change; it was taken for the file read before
                    # the failure, said nothing, and the same failure again was not said
                    # either: a QA pass. A passing failure to read, EMFILE, an NFS hiccup:
                    # read again at the next poll, or that change was missed: a review)
                    if isinstance(e, ConfigError):
                        seen = stamp
                    if str(e) != said:  # (an invalid manifest was logged every second)
                        log.warning('model registry poll failed error="%s"', e)
                        said = str(e)
                        if self.metrics is not None:  # (counted nowhere, no alert: a QA
                            self.metrics.model_swap("poll_failed")  # pass; once per error)

        self._watch = threading.Thread(target=loop, name="fds-model-watch", daemon=True)
        self._watch.start()

    def stop_watch(self) -> None:
        """Stop the watcher, then let the verdicts queued so far reach the registry (for at
        most WRITES_CLOSE_S: a verdict lost here would undo a promotion after a restart)."""
        self._stop.set()
        self._wake.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
        if self._ranker is not None:
            self._ranker.shutdown(wait=False, cancel_futures=True)
        writer = self._writer
        if writer is not None and writer.is_alive():
            self._writes.put(None)
            writer.join(timeout=WRITES_CLOSE_S)
            if writer.is_alive():
                self._give_up.set()
                log.warning("model verdicts not written to the registry before closing: %d",
                            self._writes.unfinished_tasks - 1)  # fmt: skip

    close = stop_watch  # the engine closes its stages on shutdown


def build_model_stage(
    spec: str | Path | ModelSpec,
    *,
    registry: str | Path | Registry | None = None,
    watch: bool = False,
    poll_seconds: float = 1.0,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    metrics: Any = None,
    fed: bool = False,
) -> ModelServer:
    """The model stage for :class:`fds.engine.Engine`, the one way the doors build it.

    ``watch=False`` (replay, demo, bench): an in-process trainer learns from ``engine.learn``
    labels, deterministic. ``watch=True`` (``fds run``): serve the registry's champion and
    poll the registry every ``poll_seconds`` for new versions (``fds train`` publishes them);
    ``fed``: a models topic fills the registry, an empty one is said after it caught up
    (:meth:`ModelServer.say_if_empty`), not before.

    >>> stage = build_model_stage("default")
    >>> stage.trainer is not None
    True
    """
    from fds.models.spec import load_spec

    mspec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    reg = registry if isinstance(registry, Registry) or registry is None else Registry(registry)
    if not watch:
        return ModelServer(mspec, registry=reg, on_event=on_event, metrics=metrics)
    if reg is None:
        from fds.models.registry import DEFAULT_REGISTRY

        reg = Registry(DEFAULT_REGISTRY)
    srv = ModelServer(mspec, registry=reg, learn=False, on_event=on_event, metrics=metrics)
    srv.load_champion()
    if not fed:
        srv.say_if_empty()
    srv.start_watch(every=poll_seconds)
    return srv
