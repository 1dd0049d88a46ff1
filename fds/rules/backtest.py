"""Backtest: what a rule change would do, on history, before it ships.

Both rulesets run over the same stream through the same replay loop
(:func:`fds.replay.run`: labels are learned only once their own time has passed) with ONE
feature stage computing the union of both rulesets' features, so differences come from the
rules alone (and from a feature the candidate declares otherwise, computed for each side).
Each side has its own :class:`fds.policy.Policy` (from its file). No model runs: the
comparison is rules against rules.

>>> from fds.rules.ruleset import load_ruleset_text
>>> from fds.replay import ReplayInput
>>> base = load_ruleset_text('version: b\\nrules: []\\n')
>>> cand = load_ruleset_text('''
... version: c
... rules:
...   - {id: big, when: amount > 100, action: review, score: 0.7, reason: Big}
... ''')
>>> txs = [{"tx_id": f"t{i}", "ts": float(i), "card_id": "c", "amount": a, "extra": {}}
...        for i, a in enumerate([5.0, 500.0])]
>>> labels = [{"tx_id": "t1", "ts": 9.0, "is_fraud": True}]
>>> r = backtest(cand, base, ReplayInput(txs, labels), features=_NoFeatures())
>>> r.baseline.alerts, r.candidate.alerts, r.candidate.precision, len(r.changed)
(0, 1, 1.0, 1)
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fds.engine import Engine, FeatureStage
from fds.errors import ConfigError, RuleError
from fds.features.plan import read_field
from fds.features.spec import DEFAULT_GRACE
from fds.policy import Policy
from fds.replay import Alerts, ReplayInput, run, watch_fields
from fds.rules.ruleset import BUILTINS, FeatureSpec, Ruleset
from fds.timeutil import same_zone

__all__ = ["DEAD_LETTER", "BacktestResult", "SideResult", "backtest", "feature_stage_for"]

#: A side's action for a transaction one of its active rules raised on (in production: a dead
#: letter, not a decision).
DEAD_LETTER = "dead letter"


@dataclass
class SideResult(Alerts):
    """One ruleset's outcome over the stream."""

    version: str
    actions: Counter[str] = field(default_factory=Counter)
    rule_hits: Counter[str] = field(default_factory=Counter)
    rule_fraud_hits: Counter[str] = field(default_factory=Counter)
    #: Per rule id: transactions it raised on (each one a dead letter, ``actions[DEAD_LETTER]``).
    rule_errors: Counter[str] = field(default_factory=Counter)
    #: Per shadow rule id: transactions it raised on (counted only; active, each would be a
    #: dead letter: they were not shown, so a rule was promoted blind, a QA pass).
    shadow_errors: Counter[str] = field(default_factory=Counter)
    #: Per rule id: transactions it was skipped on because a name it reads was missing (an
    #: empty cell is missing: a rule on ``extra.x == ''`` never fires, a QA pass).
    rule_missing: Counter[str] = field(default_factory=Counter)
    #: Per name a rule reads: transactions it was missing on (what ``rule_missing`` skipped on).
    names_missing: Counter[str] = field(default_factory=Counter)
    alerted_frauds: int = 0
    frauds: int | None = None
    days: float = 0.0

    @property
    def alerts_per_day(self) -> float:
        return self.alerts / self.days if self.days else float(self.alerts)


@dataclass
class BacktestResult:
    baseline: SideResult
    candidate: SideResult
    transactions: int
    changed_count: int = 0
    changed: list[dict[str, Any]] = field(default_factory=list)
    rule_ids: list[str] = field(default_factory=list)
    #: The features that read a field none of the first transactions had, said as
    #: ``fds replay`` says it (:func:`fds.replay.watch_fields`), or "".
    unseen_fields: str = ""
    #: The run's :class:`fds.replay.ReplaySummary` (interrupted, late, labels of no transaction)
    summary: Any = None
    #: The longest stretch of days with no transaction inside the span, and the day it
    #: begins (epoch seconds), when it is long enough to make the span misleading; else None
    gap: tuple[float, float] | None = None


class _NoFeatures:
    """A feature stage computing nothing (for rulesets that declare no features)."""

    def compute(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def on_label(self, label: Mapping[str, Any]) -> None:
        return None


#: Suffix of the candidate's own version of a feature both rulesets declare differently.
CANDIDATE_SUFFIX = "__candidate"


def _union_features(cand: Ruleset, base: Ruleset) -> tuple[list[FeatureSpec], dict[str, str]]:
    """Both rulesets' feature declarations, computed once each, and the candidate's features
    declared otherwise than the baseline's (a window changed): name -> the name they are
    computed under (they were refused: "rename one", with every rule that reads it)."""
    out = {f.name: f for f in base.features}
    taken = {f.name for f in (*base.features, *cand.features)}
    renamed: dict[str, str] = {}
    for f in cand.features:
        if f.name in out and out[f.name] != f:
            own = f.name + CANDIDATE_SUFFIX
            while own in taken:  # (a feature of that name in either file was overwritten,
                own += "_"  # the baseline's figures wrong: a QA pass)
            taken.add(own)
            renamed[f.name] = own
            f = f.model_copy(update={"name": own})
        out[f.name] = f
    return list(out.values()), renamed


def feature_stage_for(
    specs: list[FeatureSpec], timezone: str, grace: str | float = DEFAULT_GRACE
) -> FeatureStage:
    """The engine's feature stage for these declarations (from :mod:`fds.features`)."""
    if not specs:
        return _NoFeatures()
    from fds.features import FeaturePlan

    return FeaturePlan(specs, timezone=timezone, grace=grace)


class _Both:
    """Rule + policy stages that run both rulesets and remember the per-transaction outcome."""

    def __init__(self, cand: Ruleset, base: Ruleset, renamed: Mapping[str, str]) -> None:
        self.cand, self.base = cand, base
        self.renamed = tuple(renamed.items())
        self.cand_policy = Policy.from_spec(cand.policy)
        self.base_policy = Policy.from_spec(base.policy)
        self.version: str | None = cand.version
        self.last: tuple[Any, ...] = ()

    def evaluate(self, tx: Mapping[str, Any], features: Mapping[str, Any]) -> list[dict]:
        seen = features
        if self.renamed:  # the candidate reads its own version under the declared name
            seen = {**features, **{n: features.get(own) for n, own in self.renamed}}
        ch = _hits(self.cand, tx, seen)
        bh = _hits(self.base, tx, features)
        self.last = (tx, features, ch, bh)
        return ch if isinstance(ch, list) else []

    def decide(
        self, hits: list[dict], model_score: float | None, ts: float, stacked: bool = False
    ) -> tuple[str, float]:
        tx, features, ch, bh = self.last
        ca, cs = _decide(self.cand_policy, ch, ts)
        ba, bs = _decide(self.base_policy, bh, ts)
        self.last = (tx, features, ch, bh, ca, cs, ba, bs)
        return ca, cs


def _hits(rules: Ruleset, tx: Mapping[str, Any], features: Mapping[str, Any]) -> Any:
    """The side's hits, or the :class:`RuleError` that would make ``tx`` a dead letter."""
    try:
        return rules.evaluate(tx, features)
    except RuleError as e:
        return e


def _decide(policy: Policy, hits: Any, ts: float) -> tuple[str, float]:
    return (DEAD_LETTER, 0.0) if isinstance(hits, RuleError) else policy.decide(hits, None, ts)


class _Collector:
    def __init__(self, both: _Both, frauds: set[str] | None, keep: int | None) -> None:
        self.both = both
        self.keep = keep  # changed transactions kept with their values (None: all)
        self.frauds = frauds
        c, b = both.cand, both.base
        self.cand = SideResult(c.version, frauds=0 if frauds is not None else None)
        self.base = SideResult(b.version, frauds=0 if frauds is not None else None)
        self.changed: list[dict[str, Any]] = []
        self.changed_count = 0
        # each side's own: a rule both declare, rewritten, reads other names in each (the
        # baseline's hit shown with the candidate's names, which read like its reason: a review)
        self.names = (c.names_read(), b.names_read())

    def write(self, decision: Mapping[str, Any]) -> None:
        tx, feats, ch, bh, ca, cs, ba, bs = self.both.last
        fraud = self.frauds is not None and tx["tx_id"] in self.frauds
        for side, hits, action in ((self.cand, ch, ca), (self.base, bh, ba)):
            side.actions[action] += 1
            if isinstance(hits, RuleError):
                side.rule_errors[hits.rule] += 1
                hits = ()
            for h in hits:  # (shadow rules' hits too: counted, marked in the report)
                side.rule_hits[h["id"]] += 1
                side.rule_fraud_hits[h["id"]] += fraud
            if fraud:
                side.frauds = (side.frauds or 0) + 1
                side.alerted_frauds += action in ("review", "decline")  # (a dead letter
                # counted as caught: precision 200%, a QA pass)
        if ca != ba:
            self.changed_count += 1
            if self.keep is None or len(self.changed) < self.keep:
                read: dict[str, Any] = {}
                for names, hits in zip(self.names, (ch, bh), strict=True):
                    for rid in _ids(hits):
                        for n in names.get(rid, ()):
                            read[n] = _value(n, tx, feats, self.both.cand.clock)
                for n, own in self.both.renamed:  # both versions of a changed feature
                    if n in read:
                        read[own] = feats.get(own)
                self.changed.append(
                    {
                        "tx_id": tx["tx_id"],
                        "ts": decision["ts"],
                        "fraud": fraud if self.frauds is not None else None,
                        "baseline": _side(ba, bs, bh),
                        "candidate": _side(ca, cs, ch),
                        "values": read,
                    }
                )


def _ids(hits: Any) -> list[str]:
    """The rule ids of a side's hits (of the rule that raised, for a dead letter)."""
    return [hits.rule] if isinstance(hits, RuleError) else [h["id"] for h in hits]


def _side(action: str, score: float, hits: Any) -> dict[str, Any]:
    """A changed transaction's outcome on one side: its acting and its shadow hits apart."""
    shadow = (
        [] if isinstance(hits, RuleError) else [h["id"] for h in hits if h["state"] == "shadow"]
    )
    acting = [i for i in _ids(hits) if i not in shadow]
    return {"action": action, "score": score, "hits": acting, "shadow_hits": shadow}


def _value(name: str, tx: Mapping[str, Any], feats: Mapping[str, Any], clock: Any) -> Any:
    if name.startswith("extra."):
        return read_field(tx, name)
    if name in BUILTINS and name not in feats:
        return clock(tx["ts"])[list(BUILTINS).index(name)]
    return tx[name] if name in tx else feats.get(name)


class _Span:
    """The earliest and latest ``ts`` of the transactions read through :meth:`through`, how
    many, and the days that hold any (the first and last decided: records out of order made
    24.3 days of 25, a review)."""

    def __init__(self) -> None:
        self.first, self.last = math.inf, -math.inf
        self.n = 0
        self.days: set[int] = set()

    def through(self, txs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        days = self.days
        for tx in txs:
            ts = tx["ts"]
            self.first, self.last = min(self.first, ts), max(self.last, ts)
            days.add(int(ts // 86400))
            self.n += 1
            yield tx

    def gap(self) -> tuple[float, float] | None:
        """The longest run of days without a transaction (days, its first day), when it is
        over a week and a quarter of the span: one mistyped date a year ahead made 368.8 days
        of 10, the alerts per day a tenth of theirs, without a word (a review)."""
        days = sorted(self.days)
        if len(days) < 2:
            return None
        d, at = max((b - a - 1, a + 1) for a, b in itertools.pairwise(days))
        return (float(d), at * 86400.0) if d > max(7, (days[-1] - days[0]) / 4) else None


class _Null:
    def write(self, record: Any) -> None:
        return None


class _Kept:
    def __init__(self, into: list[dict[str, Any]]) -> None:
        self.write = into.append


def backtest(
    candidate: Ruleset,
    baseline: Ruleset,
    stream: ReplayInput,
    *,
    features: FeatureStage | None = None,
    progress: bool = False,
    examples: int | None = 20,
    dead: list[dict[str, Any]] | None = None,
) -> BacktestResult:
    """Run both rulesets over ``stream`` with the same features; compare the outcomes.

    ``features`` overrides the feature stage (default: :func:`feature_stage_for` the union of
    both rulesets' declarations, in their timezone and with their grace, each of which must be
    one; a feature the candidate declares otherwise is computed for each side). ``examples``:
    changed transactions kept with the values their rules read (``None``: all of them).
    ``dead``: the records the stream could not read or validate are appended to it.
    """
    specs, renamed = _union_features(candidate, baseline)
    if features is None:
        tz, base_tz = candidate.spec.timezone, baseline.spec.timezone
        if not same_zone(tz, base_tz):  # one feature stage serves both: its calendar days
            # have one zone (another name of it is the same zone)
            raise ConfigError(
                f"the candidate's timezone {tz} differs from the baseline's {base_tz}: calendar "
                "windows and hour/is_night are computed once for both, in one zone; compare a "
                "timezone change with two replays instead (fds replay FILE --rules A, then B)"
            )
        grace, base_grace = candidate.spec.grace, baseline.spec.grace
        # nor two ways of telling late events (5m and 300s are one); without features, no matter
        if specs and candidate.spec.grace_seconds != baseline.spec.grace_seconds:
            raise ConfigError(
                f"the candidate's grace {grace} differs from the baseline's {base_grace}: late "
                "events are told from the others once for both, with one grace; compare a grace "
                "change with two replays instead (fds replay FILE --rules A, then B)"
            )
        features = feature_stage_for(specs, tz, grace)
    else:
        renamed = {}  # (the stage given computes no candidate's own versions)
    both = _Both(candidate, baseline, renamed)
    # (the last word on each, as a replay reads them: a withdrawn fraud counted, a QA pass)
    # (the tx_ids known to be fraud, a label column's filled as its rows are read)
    collector = _Collector(both, stream.truth, examples)
    engine = Engine(features=features, rules=both, policy=both)
    span = _Span()  # (read as the run goes: a second list of every transaction was made for
    stream.transactions = span.through(stream.transactions)  # its span and count alone)
    unseen = watch_fields(stream, (*baseline.features, *candidate.features))  # (as named)
    rulesets = (candidate, baseline)
    before = [
        (Counter(rs.missing_counts), Counter(rs.missing_names()), Counter(rs.error_counts))
        for rs in rulesets
    ]
    sink = _Null() if dead is None else _Kept(dead)
    summary = run(engine, stream, collector, sink, source="backtest", progress=progress)
    sides = (collector.cand, collector.base)
    if not (stream.labels or summary.labels_read or summary.labels_after_end):
        for side in sides:  # (no label at all: precision and recall unknown, not 0)
            side.frauds = None
        for example in collector.changed:
            example["fraud"] = None
    for side, rs, (was, names_was, errors_was) in zip(sides, rulesets, before, strict=True):
        side.rule_missing = Counter(rs.missing_counts) - was
        side.names_missing = Counter(rs.missing_names()) - names_was
        shadow = {r.id for r in rs.rules if r.spec.state == "shadow"}
        errors = Counter(rs.error_counts) - errors_was
        side.shadow_errors = Counter({k: n for k, n in errors.items() if k in shadow})
    collector.cand.days = collector.base.days = (
        (span.last - span.first) / 86400.0 if span.n else 0.0
    )
    ids = [r.id for r in baseline.rules]
    ids += [r.id for r in candidate.rules if r.id not in ids]
    return BacktestResult(
        collector.base,
        collector.cand,
        span.n,
        collector.changed_count,
        collector.changed,
        ids,
        unseen(),
        summary,
        span.gap(),
    )
