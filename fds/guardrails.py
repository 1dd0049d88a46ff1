"""Blast-radius guardrails: rate circuit breakers for rules and models, and a model guard.

A fraud engine that silently declines every payment after a bad rule is worse than none. Two
pure-logic guards (no I/O, no clock unless injected) let the engine contain such failures:

* :class:`RuleBreaker` watches every decision's action and the sources that pushed it there
  (rule ids, and :data:`MODEL` for the model). When one source alone makes the decline (or
  review) rate of the current window exceed ``multiple`` times the recent baseline rate of the
  whole engine, it reports a :class:`Trip`: the engine demotes that rule (or newly promoted
  model) to shadow, logs it, counts it (``Metrics.demoted``) and the ``FdsGuardrailDemotion``
  alert fires. The other sources keep deciding.
* :class:`ModelGuard` tells the engine to bypass the model and decide on rules alone
  ("degraded mode") once the model has raised or exceeded its latency budget ``max_failures``
  times among its recent calls, and to try it again after a cool-down.

How :class:`RuleBreaker` judges, precisely
------------------------------------------
Time is cut into tumbling windows of ``window_events`` decisions (or ``window_seconds`` of event
time). Within the current window, for each action ``a`` in ``decline``/``review`` and each
source ``s`` it counts ``hits[s][a]``: decisions whose final action was ``a`` and whose sources
included ``s``. Once the window holds ``n >= min_events`` decisions, a source is tripped as soon
as its rate exceeds the limit by more than chance would explain::

    limit    = multiple * max(baseline[a], min_baseline)
    expected = limit * n
    trip when hits[s][a] > expected + NOISE_Z * sqrt(expected)

The baseline of ``a`` is the engine-wide rate of ``a`` in past windows, folded in with an
exponential moving average when a window closes without a trip (a window with a trip is
anomalous by definition and does not poison the baseline). Before any window has closed, the
baseline is ``initial_baseline`` (what the ruleset's backtest or policy expects), so a rule that
is bad from the very first event is still caught. A source that is only *part* of a normal
decline rate can never trip: its share is at most the engine's rate, about the baseline.

Examples
--------
>>> rb = RuleBreaker(window_events=100, multiple=3.0, min_events=20,
...                  initial_baseline={"decline": 0.01, "review": 0.05})
>>> trips = []
>>> for i in range(100):
...     trips += rb.observe("decline", ("decline_all",))
>>> [(t.source, t.action, t.at_event) for t in trips]
[('decline_all', 'decline', 20)]
>>> rb.demoted
frozenset({'decline_all'})
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import sqrt
from typing import Any, TypeVar

__all__ = [
    "MODEL",
    "MODEL_BUDGET_S",
    "RAISE",
    "ModelGuard",
    "RuleBreaker",
    "Trip",
    "decision_sources",
]

#: The source name the engine uses for the model in :meth:`RuleBreaker.observe`. The ``@`` keeps
#: it from ever colliding with a rule id (rule ids are identifiers).
MODEL = "@model"

#: What the engine observes for a transaction an active rule raised on (a dead letter, no
#: decision): a rule raising on many cards is broken, not its input, and is demoted like a
#: rule declining everybody (2,400 of 6,000 payments were dead letters without it: a QA pass).
RAISE = "raise"

#: Actions whose rate is guarded. Approvals are not: approving too much is what precision
#: metrics and alerts catch, while a decline storm hurts customers within minutes.
GUARDED = ("decline", "review", RAISE)

#: Expected engine-wide rates before any baseline is measured. Card fraud rates are ~0.1-1%, so
#: decline rates of a few tenths of a percent and review rates of a few percent are usual; these
#: deliberately generous values avoid false trips at start-up.
DEFAULT_INITIAL_BASELINE: Mapping[str, float] = {"decline": 0.02, "review": 0.05}

#: Floor under the baseline: with a measured baseline of 0 (no declines for a while) any single
#: decline would be "infinitely" above it. 0.5% x multiple is the least a source must reach.
DEFAULT_MIN_BASELINE = 0.005

#: Hits must exceed the limit by this many Poisson standard deviations: a rule hitting 2 of the
#: first 100 decisions must not trip on a 1.8% limit by chance. The check runs at every guarded
#: decision, so the margin is wide (z=4: ~3e-5 one-sided per check); a real storm passes it
#: within a few dozen decisions.
NOISE_Z = 4.0

#: Distinct entities (cards) a source must have pushed to an action in the window before it may
#: trip, when the engine passes them: a card-testing burst is dozens of payments on one or two
#: cards and must not demote the rule that catches it; a broken rule hits hundreds of cards.
DEFAULT_MIN_ENTITIES = 20

#: Weight of the newest clean window in the baseline average: ~the last 5 windows matter.
BASELINE_ALPHA = 0.2

_NO_TRIPS: tuple[Trip, ...] = ()


@dataclass(frozen=True, slots=True)
class Trip:
    """A source to demote to shadow, and the evidence.

    ``rate`` is the share of the window's decisions that ended in ``action`` with this source
    among the reasons; ``limit`` the threshold it crossed (``multiple x baseline``);
    ``at_event`` the number of decisions the breaker had seen when it tripped.
    """

    source: str
    action: str
    rate: float
    baseline: float
    limit: float
    window_events: int
    at_event: int

    @property
    def kind(self) -> str:
        """``model`` for :data:`MODEL`, else ``rule``."""
        return source_kind(self.source)


def source_kind(source: str) -> str:
    """What a breaker source is: ``model`` for :data:`MODEL`, else ``rule``."""
    return "model" if source == MODEL else "rule"


class RuleBreaker:
    """Decline/review-rate circuit breaker for rules and models.

    Parameters
    ----------
    window_events
        Length of a tumbling window, in decisions. Give this or ``window_seconds``.
    window_seconds
        Length of a tumbling window in event-time seconds (``observe`` then needs ``ts``).
    multiple
        A source trips when its rate exceeds this multiple of the baseline rate.
    min_events
        Decisions a window must hold before anything is judged (avoids tripping on noise).
    initial_baseline
        Rates by action assumed until the first window closes.
    min_baseline
        Floor under the baseline rate.
    min_entities
        Distinct entities a source's hits must span before it may trip, when ``observe`` is
        given ``entity`` (see there).

    Examples
    --------
    A promoted model that doubles declines is within ``multiple=3``; one that declines 10x
    more often is demoted:

    >>> rb = RuleBreaker(window_events=1000, multiple=3.0, min_events=100,
    ...                  initial_baseline={"decline": 0.01})
    >>> trips = []
    >>> for i in range(1000):
    ...     trips += rb.observe("decline" if i % 10 == 0 else "approve",
    ...                         (MODEL,) if i % 10 == 0 else ())
    >>> t = trips[0]
    >>> t.kind, t.action, t.at_event, round(t.rate, 3), t.limit
    ('model', 'decline', 101, 0.109, 0.03)
    """

    def __init__(
        self,
        window_events: int | None = None,
        window_seconds: float | None = None,
        multiple: float = 3.0,
        min_events: int = 200,
        *,
        initial_baseline: Mapping[str, float] | None = None,
        min_baseline: float = DEFAULT_MIN_BASELINE,
        min_entities: int = DEFAULT_MIN_ENTITIES,
    ) -> None:
        if (window_events is None) == (window_seconds is None):
            raise ValueError("give exactly one of window_events or window_seconds")
        if window_events is not None and window_events < 1:
            raise ValueError(f"window_events must be >= 1, got {window_events}")
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        if multiple <= 1:
            raise ValueError(
                f"multiple must be > 1 (a rate above its own baseline), got {multiple}"
            )
        if min_events < 1:
            raise ValueError(f"min_events must be >= 1, got {min_events}")
        if min_entities < 1:
            raise ValueError(f"min_entities must be >= 1, got {min_entities}")
        if window_events is not None and min_events > window_events:
            raise ValueError(
                f"min_events ({min_events}) must be <= window_events ({window_events}), "
                "or no window would ever be judged"
            )
        self.window_events = window_events
        self.window_seconds = window_seconds
        self.multiple = float(multiple)
        self.min_events = min_events
        self.min_baseline = float(min_baseline)
        self.min_entities = min_entities
        base = dict(DEFAULT_INITIAL_BASELINE)
        if initial_baseline:
            base.update(initial_baseline)
        self.baseline: dict[str, float] = {a: float(base.get(a, 0.0)) for a in GUARDED}
        self._demoted: set[str] = set()
        self._seen = 0  # decisions observed in total
        self._start_ts: float | None = None
        self._reset_window()

    # ------------------------------------------------------------------ state
    def _reset_window(self) -> None:
        self._n = 0
        self._tripped_in_window = False
        self._count = dict.fromkeys(GUARDED, 0)
        self._hits: dict[str, dict[str, int]] = {a: {} for a in GUARDED}
        # distinct entities (cards) each source pushed to each action, when observe() gets them
        self._entities: dict[str, dict[str, set[Any]]] = {a: {} for a in GUARDED}

    def _close_window(self) -> None:
        n = self._n
        if n >= self.min_events and not self._tripped_in_window:
            for a in GUARDED:
                self.baseline[a] += BASELINE_ALPHA * (self._count[a] / n - self.baseline[a])
        self._reset_window()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a breaker pickled by a release that guarded fewer actions (an engine checkpoint)
        self.__dict__.update(state)
        for a in GUARDED:
            self.baseline.setdefault(a, 0.0)
            self._count.setdefault(a, 0)
            self._hits.setdefault(a, {})
            self._entities.setdefault(a, {})

    @property
    def demoted(self) -> frozenset[str]:
        """Sources tripped so far and not yet :meth:`reset`."""
        return frozenset(self._demoted)

    def reset(self, source: str) -> None:
        """Watch ``source`` again (a rule reactivated by an analyst, a newly promoted model)."""
        self._demoted.discard(source)
        for a in GUARDED:
            self._hits[a].pop(source, None)
            self._entities[a].pop(source, None)

    # ------------------------------------------------------------------ hot path
    def observe(
        self,
        action: str,
        sources: Iterable[str] = (),
        ts: float | None = None,
        entity: Any = None,
    ) -> tuple[Trip, ...]:
        """Record one decision; return the sources that must be demoted now (usually none).

        Parameters
        ----------
        action
            The final action: ``approve``, ``review`` or ``decline``.
        sources
            What pushed the decision to ``action``: ids of the acting (non-shadow) rules that
            hit, plus :data:`MODEL` when the model's score alone reached the action.
        ts
            Event time in epoch seconds; required with ``window_seconds``.
        entity
            Who the decision is about (the ``card_id``). When given, a source trips only once
            its hits in the window span ``min_entities`` distinct entities: a burst of fraud on
            one card (card testing: dozens of payments in minutes) is what the rule is for,
            while a rule declining everybody hits many cards. Never exported or logged.
        """
        if self.window_seconds is not None:
            if ts is None:
                raise ValueError("observe(ts=...) is required with window_seconds")
            if self._start_ts is None:
                self._start_ts = ts
            elif ts - self._start_ts >= self.window_seconds:
                self._close_window()
                self._start_ts = ts
        elif self._n >= self.window_events:  # type: ignore[operator]
            self._close_window()
        self._n += 1
        self._seen += 1
        count = self._count
        if action not in count:  # approve: nothing to count, nothing to judge
            return _NO_TRIPS
        count[action] += 1
        hits = self._hits[action]
        judge = self._n >= self.min_events
        trips: list[Trip] | None = None
        seen = self._entities[action] if entity is not None else None
        for s in sources:
            h = hits[s] = hits.get(s, 0) + 1
            if seen is not None:
                ents = seen.get(s)
                if ents is None:
                    ents = seen[s] = set()
                ents.add(entity)
                if len(ents) < self.min_entities:
                    continue
            if judge and s not in self._demoted:
                base = max(self.baseline[action], self.min_baseline)
                limit = self.multiple * base
                expected = limit * self._n  # hits a source at exactly the limit would have
                if h > expected + NOISE_Z * sqrt(expected):
                    rate = h / self._n
                    self._demoted.add(s)
                    self._tripped_in_window = True
                    if trips is None:
                        trips = []
                    trips.append(Trip(s, action, rate, base, limit, self._n, self._seen))
        return _NO_TRIPS if trips is None else tuple(trips)


def decision_sources(
    action: str,
    hits: Sequence[Mapping[str, Any]],
    model_score: float | None,
    *,
    decline_at: float,
    review_at: float,
) -> list[str]:
    """What pushed a decision to ``action``, for :meth:`RuleBreaker.observe`.

    The acting (``active``) rule hits whose own action is ``action`` or whose score alone
    reaches the action's threshold, plus :data:`MODEL` when the model's score alone does.
    Approvals have no sources.

    >>> hits = [{"id": "velocity", "action": "review", "score": 0.4, "state": "active"},
    ...         {"id": "new_bin", "action": "decline", "score": 1.0, "state": "shadow"}]
    >>> decision_sources("review", hits, 0.6, decline_at=0.9, review_at=0.5)
    ['velocity', '@model']
    >>> decision_sources("approve", hits, 0.1, decline_at=0.9, review_at=0.5)
    []
    """
    if action == "decline":
        threshold = decline_at
    elif action == "review":
        threshold = review_at
    else:
        return []
    out = [
        h["id"]
        for h in hits
        if h.get("state", "active") == "active"
        and (h["action"] == action or h.get("score", 0.0) >= threshold)
    ]
    if model_score is not None and model_score >= threshold:
        out.append(MODEL)
    return out


_T = TypeVar("_T")


#: The model's latency budget per decision: a decision must stay well inside a payment's
#: ~100 ms authorisation window; River pipelines score in tens of microseconds, so 20 ms means
#: something is wrong (a model spec scoring a sample row five times slower is refused at load).
MODEL_BUDGET_S = 0.020


class ModelGuard:
    """Degraded mode: bypass a failing or slow model, retry it after a cool-down.

    A call *fails* when the model raises or takes longer than ``latency_budget_s``. When
    ``max_failures`` of the last ``window_calls`` calls failed, the guard opens: :meth:`allow`
    answers ``False`` (decide on rules alone) for ``cooldown_s`` seconds. Then one trial call is
    let through ("half-open"): success closes the guard (recovered), failure opens it again.

    A single call that hangs cannot be interrupted from Python without a thread per call; the
    guard bounds the damage to ``max_failures`` slow calls, after which no event waits for the
    model until the cool-down ends.

    Parameters
    ----------
    latency_budget_s
        Longest acceptable model call.
    max_failures
        Failures among the last ``window_calls`` calls that open the guard.
    cooldown_s
        How long to stay degraded before trying the model again.
    window_calls
        How many recent calls are remembered.
    clock
        Monotonic clock in seconds (injectable for tests).

    Examples
    --------
    >>> t = [0.0]
    >>> g = ModelGuard(latency_budget_s=0.005, max_failures=2, cooldown_s=10, clock=lambda: t[0])
    >>> def broken(x):
    ...     raise RuntimeError("model exploded")
    >>> g.call(broken, 1), g.call(broken, 2), g.degraded
    (None, None, True)
    >>> g.call(lambda x: 0.3, 3) is None  # still cooling down: rules decide alone
    True
    >>> t[0] = 11.0
    >>> g.call(lambda x: 0.3, 4), g.degraded
    (0.3, False)
    """

    def __init__(
        self,
        latency_budget_s: float,
        max_failures: int = 5,
        cooldown_s: float = 30.0,
        *,
        window_calls: int = 100,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if latency_budget_s <= 0:
            raise ValueError(f"latency_budget_s must be > 0, got {latency_budget_s}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        if window_calls < max_failures:
            raise ValueError(
                f"window_calls ({window_calls}) must be >= max_failures ({max_failures})"
            )
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.latency_budget_s = float(latency_budget_s)
        self.max_failures = max_failures
        self.cooldown_s = float(cooldown_s)
        self.window_calls = window_calls
        self.clock = clock
        self._ring = [False] * window_calls  # True = that call failed
        self._pos = 0
        self._failures = 0
        self._open_until: float | None = None  # set while degraded
        self._half_open = False
        self.last_error: BaseException | None = None
        #: Transitions so far: ("degraded", reason) / ("recovered", "") in order, for the
        #: engine to log and count; drain it with :meth:`transitions`.
        self._events: list[tuple[str, str]] = []

    @property
    def degraded(self) -> bool:
        """True while rules decide alone."""
        return self._open_until is not None

    def allow(self) -> bool:
        """Whether to call the model for this event."""
        until = self._open_until
        if until is None:
            return True
        if self.clock() >= until:
            self._half_open = True  # one trial call; its outcome decides
            return True
        return False

    def success(self, latency_s: float) -> None:
        """Record a call that returned after ``latency_s`` seconds (over budget = a failure)."""
        if latency_s > self.latency_budget_s:
            self._record(True, "slow")
            return
        if self._half_open:
            self._recover()
        self._record(False, "")

    def failure(self, error: BaseException | None = None) -> None:
        """Record a call that raised ``error``."""
        self.last_error = error
        self._record(True, "error")

    def call(self, fn: Callable[[Any], _T], x: Any) -> _T | None:
        """``fn(x)`` guarded: its result, or ``None`` when bypassed, failed or over budget.

        A result that arrives over budget is still returned (it is already paid for), but
        counts as a failure.
        """
        if not self.allow():
            return None
        clock = self.clock
        t0 = clock()
        try:
            out = fn(x)
        except Exception as e:  # any model failure must degrade, never stop deciding
            self.failure(e)
            return None
        self.success(clock() - t0)
        return out

    def transitions(self) -> list[tuple[str, str]]:
        """State changes since the last call, oldest first.

        Each is ``("degraded", "error")``, ``("degraded", "slow")`` or ``("recovered", "")``.
        """
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------------ internals
    def _record(self, failed: bool, reason: str) -> None:
        ring, pos = self._ring, self._pos
        self._failures += int(failed) - int(ring[pos])
        ring[pos] = failed
        self._pos = (pos + 1) % self.window_calls
        if not failed:
            return
        if self._half_open:  # the trial call failed: back to degraded, full cool-down
            self._half_open = False
            self._open_until = self.clock() + self.cooldown_s
            self._events.append(("degraded", reason))
        elif self._open_until is None and self._failures >= self.max_failures:
            self._open_until = self.clock() + self.cooldown_s
            self._events.append(("degraded", reason))

    def _recover(self) -> None:
        self._half_open = False
        self._open_until = None
        self._ring = [False] * self.window_calls
        self._failures = 0
        self._events.append(("recovered", ""))
