"""The decision policy: rule hits + model score -> final score and action.

The rule (documented in the README, "Rules"):

1. Only **active** hits count; shadow hits are reported in the decision and ignored here.
2. ``rule_score`` = the highest score among active hits (0 when none).
3. ``final = combine(rule_score, model_score) = 1 - (1 - rule_score) * (1 - model_score)``
   (noisy-or: two signals of risk; either alone can push the score up, neither can pull it
   down). A model that reads the rules' results (a *stacking* spec, ``inputs.rules`` ``score``
   or ``true``) has already weighed them, so its score is final: ``final = model_score``.
   Without an acting model score (no model, a model still in shadow behind its maturity gate,
   or a bypassed one), ``final = rule_score``.
4. Action: any active ``decline`` hit -> **decline** (rules override the score); else
   ``final >= decline_at`` -> decline; else an active ``review`` hit or
   ``final >= review_threshold`` -> **review**; else approve. (``approve`` rules only contribute
   their score.)
5. ``review_threshold`` is ``review_at``, or with ``alert_budget_per_day`` the larger of
   ``review_at`` and the score above which ``budget`` transactions fell in the last 24 hours of
   event time (a sliding window of score histograms, see :class:`AlertBudget`): reviews stay near
   the budget, and because the window slides there is no reset, gap or spike at local midnight.

>>> p = Policy(decline_at=0.9, review_at=0.5)
>>> p.decide([{"id": "r", "action": "review", "score": 0.4, "state": "active"}], 0.5, 0.0)
('review', 0.7)
>>> p.decide([{"id": "s", "action": "decline", "score": 1.0, "state": "shadow"}], 0.1, 0.0)
('approve', 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SCORE_DECIMALS", "AlertBudget", "Policy", "combine", "round_to", "rule_score"]

#: The final score is rounded to this many decimals (stable JSON) before it meets the
#: thresholds, which may have no more (fds.rules.ruleset.PolicySpec).
SCORE_DECIMALS = 6

_DIGITS = 16
_SCALE = tuple(10.0**n for n in range(_DIGITS))  # exact powers of ten
# round_to's fast path: below this, x * 10**n + 0.5 is within 2**-33 of its exact value ...
_FAST_BELOW = 2.0**20
# ... so its floor is the exact rounding unless its fraction is this close to a whole number
# (a tie, or next to one: there round() decides)
_TIE_MARGIN = 1e-6


def round_to(x: float, ndigits: int) -> float:
    """``round(x, ndigits)``: the same float, in a third of the time for a positive ``x``
    (two per decision: its score and its latency).

    ``round`` formats ``x`` as decimal text and parses it back. Here ``x * 10**ndigits + 0.5``
    is floored instead: the result is the same integer away from a tie (the margins above), and
    the division makes the float nearest to it over ``10**ndigits``, as the parse does. Zero,
    negatives, non-floats, ``ndigits`` outside 0-15, values beyond the fast range and near-ties
    go to ``round`` itself.

    >>> round_to(0.7345678, 6), round_to(12.0625, 3), round_to(0.0, 6), round_to(-1e-9, 6)
    (0.734568, 12.062, 0.0, -0.0)
    """
    if type(x) is float:
        if x > 0.0 and 0 <= ndigits < _DIGITS:
            s = _SCALE[ndigits]
            r = x * s + 0.5
            frac = r % 1.0
            if r < _FAST_BELOW and _TIE_MARGIN < frac < 1.0 - _TIE_MARGIN:
                return (r - frac) / s  # (r - frac: exactly the floor of r)
        elif x == 0.0:
            return x  # as round() returns it, -0.0 included
    return round(x, ndigits)


def rule_score(hits: Sequence[Mapping[str, Any]]) -> float:
    """The rules' score: the highest score among **active** hits (0 when none).

    >>> rule_score([{"score": 0.4, "state": "active"}, {"score": 0.9, "state": "shadow"}])
    0.4
    """
    best = 0.0
    for h in hits:
        if h.get("state", "active") == "active" and h["score"] > best:
            best = h["score"]
    return best


def combine(rule_score: float, model_score: float, stacked: bool = False) -> float:
    """The final score from the rules' score and an acting model's score: noisy-or, or the
    model's score alone when the model reads the rules' results (``stacked``: counting the rules
    again would weigh them twice).

    The model's maturity gate judges this combination against the rules alone.

    >>> round(combine(0.5, 0.4), 6), combine(0.5, 0.4, stacked=True)
    (0.7, 0.4)
    """
    if stacked:
        return model_score
    return 1.0 - (1.0 - rule_score) * (1.0 - model_score)


class AlertBudget:
    """An adaptive review threshold holding score-driven reviews near ``budget`` per 24 hours.

    Scores are counted in ``bins`` equal bins of [0, 1] per time slot of ``slot_seconds``; a ring
    of slots covers the last ``window_seconds`` of event time. The threshold is the lowest bin
    edge above which at most ``budget`` scores fell in the window (scaled to 24 h while the
    window is still filling). A burst guard also caps the last ``burst_seconds`` at
    ``burst_factor`` times the budget's average rate, so that a sudden rise of scores is caught
    within hours rather than a day. It is recomputed when a slot rotates and every ``refresh``
    events.

    >>> b = AlertBudget(budget=10)
    >>> for i in range(1024):  # one day of scores spread evenly over 0 .. 1
    ...     b.observe((i * 389 % 1024) / 1024, 84.375 * i)  # 389: a permutation of 0..1023
    >>> b.recompute(86400.0)
    >>> b.threshold()  # exactly 10 of the 1024 scores are >= 0.99
    0.99
    """

    def __init__(
        self,
        budget: int,
        *,
        window_seconds: float = 86400.0,  # "per day", as a sliding day
        slot_seconds: float = 900.0,  # 15 min slots: window edge error <= 1/96 of a day
        bins: int = 1000,  # score resolution 0.001; finer buys nothing with 0.001-spaced ties
        warmup_seconds: float = 3600.0,  # adapt only after an hour of history (noisy before)
        refresh: int = 256,  # events between recomputations: threshold scan ~ bins/2 ops
        burst_seconds: float = 7200.0,  # the recent window of the burst guard (2 h)
        burst_factor: float = 2.0,  # allowed recent rate vs the budget's average rate
    ) -> None:
        if budget <= 0:
            raise ValueError("budget must be > 0")
        self.budget = budget
        self.window = window_seconds
        self.slot_seconds = slot_seconds
        self.nslots = round(window_seconds / slot_seconds)
        self.bins = bins
        self.warmup = warmup_seconds
        self.refresh = refresh
        self.burst_slots = max(1, round(burst_seconds / slot_seconds))
        self.burst_allowed = burst_factor * budget * burst_seconds / window_seconds
        # numpy: a threshold scan is a cumsum + a binary search instead of a Python loop over
        # bins x slots (measured ~0.5 ms per recomputation before, ~20 us now)
        self._slots = np.zeros((self.nslots, bins), dtype=np.int64)
        self._slot_ids = [-1] * self.nslots
        self._total = np.zeros(bins, dtype=np.int64)
        self._first_ts: float | None = None
        self._slot_end = -math.inf  # end of the current slot: the next event past it rotates
        # The current slot's histogram and the window's, as memoryviews of those arrays: counting
        # a score is then two increments of a Python int (numpy's scalar path takes twice as long).
        self._cur = self._slots[0].data
        self._tot = self._total.data
        self._now_slot = -1
        self._since = 0
        self._threshold = 0.0
        self._leaping = False  # one event came more than a window ahead (see observe)
        self._behind = False  # one event came more than a window behind (see observe)
        self._far_behind = -math.inf  # events before this are more than a window behind
        self._warm_threshold = 0.0  # the threshold while warming up (after a gap: the last)
        # the share of its consumer group's partitions whose scores the history counts
        # (None: not known, a budget of scope instance; see Policy.share)
        self.fraction: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_cur", "_tot")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The memoryviews do not pickle: made again from the arrays after loading (a budget
        # pickled before them kept `_cur` as an array, a detached copy of its slot: replaced).
        self._leaping = self._behind = False  # (a budget pickled before it had these)
        self._warm_threshold = 0.0
        self.fraction = None
        self.__dict__.update(state)
        if "_far_behind" not in state:
            self._far_behind = self._behind_from(self._now_slot)
        self._cur = self._slots[max(self._now_slot, 0) % self.nslots].data
        self._tot = self._total.data

    def observe(self, score: float, ts: float) -> None:
        """Count one final score at event time ``ts`` (late events count in the current slot).

        An event more than a window ahead of the budget's clock moves it only when the next
        one does too (a real gap in traffic): a single record dated a year ahead would have
        put every later event in one slot that never leaves the window. Likewise two events in
        a row more than a window behind a clock with less than a warm-up of history start it
        again at their time: the first events set the clock, and one dated a year ahead had set
        it there for good (stale events after a real history leave it alone).
        """
        if ts < self._slot_end:
            if ts < self._far_behind:
                first = self._first_ts if self._first_ts is not None else -math.inf
                if self._behind and self._slot_end - first <= self.warmup:  # (young history)
                    self._restart()  # the clock was the outlier: this event starts it again
                else:
                    self._behind = True  # counted where the clock is; the next event decides
            elif self._leaping or self._behind:
                self._leaping = self._behind = False  # the one ahead (behind) was an outlier
        if ts >= self._slot_end:
            self._behind = False
            if self._first_ts is None:
                self._first_ts = ts
            slot = int(ts // self.slot_seconds)
            if self._now_slot >= 0 and slot - self._now_slot > self.nslots and not self._leaping:
                self._leaping = True  # counted where the clock is; the next event decides
            else:
                self._leaping = False
                self._advance(slot)
        bins = self.bins
        b = int(score * bins)
        if b >= bins:
            b = bins - 1
        elif b < 0:
            b = 0
        self._cur[b] += 1
        self._tot[b] += 1
        self._since += 1
        if self._since >= self.refresh:
            self.recompute(ts)

    def _advance(self, slot: int) -> None:
        # Expire every ring position whose slot left the window; O(bins) per expired slot.
        if self._now_slot >= 0 and slot - self._now_slot >= self.nslots:
            # nothing in the window any more: the history (and its warm-up, which keeps the
            # threshold from before the gap) starts again, or a whole day's budget would be
            # allowed against minutes of history after the gap
            self._first_ts = slot * self.slot_seconds
            self._warm_threshold = self._threshold
        for s in range(max(self._now_slot + 1, slot - self.nslots + 1), slot + 1):
            idx = s % self.nslots
            if self._slot_ids[idx] != -1:
                old = self._slots[idx]
                self._total -= old
                old[:] = 0
            self._slot_ids[idx] = s
        self._now_slot = slot
        self._slot_end = (slot + 1) * self.slot_seconds
        self._far_behind = self._behind_from(slot)
        self._cur = self._slots[slot % self.nslots].data
        self.recompute(slot * self.slot_seconds)

    def _behind_from(self, slot: int) -> float:
        return (slot - self.nslots) * self.slot_seconds if slot >= 0 else -math.inf

    def _restart(self) -> None:
        """Forget the score history and the clock (the threshold stays, as after a gap)."""
        self._warm_threshold = self._threshold
        self._slots[:] = 0
        self._total[:] = 0
        self._slot_ids = [-1] * self.nslots
        self._now_slot = -1
        self._first_ts = None
        self._slot_end = self._far_behind = -math.inf
        self._leaping = self._behind = False

    def scale(self, share: float) -> None:
        """Scale the score history by ``share`` (> 0): the history of another instance, taken
        by one that took over ``share`` of its traffic, as its own (or of this one, whose
        share of the group's changed: :meth:`Policy.share`). Each bin's count is rounded at
        random, up with the probability of its fraction (a seeded draw: the expected counts
        are kept where most bins hold 0 or 1), and :attr:`fraction` with it when known. The
        threshold follows.

        >>> b = AlertBudget(budget=10)
        >>> for i in range(1024):  # the docstring's day of scores above
        ...     b.observe((i * 389 % 1024) / 1024, 84.375 * i)
        >>> b.scale(0.5)
        >>> b.recompute(86400.0)
        >>> int(b._total.sum()), b.threshold()  # ~half the scores: the 10 reviews reach lower
        (499, 0.984)
        """
        scaled = self._slots * share
        scaled += np.random.default_rng(0).random(scaled.shape)
        self._slots[:] = np.floor(scaled).astype(np.int64)
        self._total[:] = self._slots.sum(axis=0)
        if self.fraction:
            self.fraction *= share
        if self._first_ts is not None:
            self.recompute(self._now_slot * self.slot_seconds)

    def set_budget(self, budget: int) -> None:
        """Change the daily budget; the score history is kept, the threshold follows at once."""
        if budget <= 0:
            raise ValueError("budget must be > 0")
        self.burst_allowed *= budget / self.budget
        self.budget = budget
        if self._first_ts is not None:
            self.recompute(self._now_slot * self.slot_seconds)

    def recompute(self, now: float) -> None:
        """Recompute the threshold from the window as of event time ``now``."""
        self._since = 0
        span = now - (self._first_ts if self._first_ts is not None else now)
        if span < self.warmup:
            self._threshold = self._warm_threshold
            return
        scale = self.window / min(span, self.window)  # extrapolate while the window fills
        allowed = self.budget / scale
        self._threshold = max(self._edge(self._total, allowed), self._burst_edge(span))

    def _edge(self, hist: np.ndarray, allowed: float) -> float:
        # The lowest bin edge with at most `allowed` scores above it: from the top, the first
        # bin where the running count exceeds `allowed` (its upper edge is the threshold).
        above = np.cumsum(hist[::-1])
        j = int(np.searchsorted(above, allowed, side="right"))
        return 0.0 if j >= self.bins else (self.bins - j) / self.bins

    def _burst_edge(self, span: float) -> float:
        # Burst guard: the 24 h window reacts to a sudden rise of scores only slowly, so also cap
        # the last `burst_slots` slots at `burst_factor` times the budget's average rate.
        if span < self.burst_slots * self.slot_seconds:
            return 0.0
        recent = [
            s % self.nslots
            for s in range(self._now_slot - self.burst_slots + 1, self._now_slot + 1)
            if self._slot_ids[s % self.nslots] == s
        ]
        return self._edge(self._slots[recent].sum(axis=0), self.burst_allowed)

    def threshold(self) -> float:
        """The current budget threshold (0 while warming up or when under budget)."""
        return self._threshold


class Policy:
    """Combines rule hits and the model score; see the module docstring for the rule.

    Implements the engine's ``PolicyStage``: ``decide(hits, model_score, ts) -> (action, score)``.
    """

    def __init__(
        self,
        *,
        decline_at: float = 0.9,
        review_at: float = 0.5,
        alert_budget_per_day: int | None = None,
        alert_budget_scope: str = "instance",
    ) -> None:
        if not 0 <= review_at <= decline_at <= 1:
            raise ValueError("need 0 <= review_at <= decline_at <= 1")
        self.decline_at = decline_at
        self.review_at = review_at
        self.budget_per_day = alert_budget_per_day
        self.budget_scope = alert_budget_scope
        self.fraction = 1.0  # of the group's input partitions this engine decides (share)
        self.budget = AlertBudget(alert_budget_per_day) if alert_budget_per_day else None

    @classmethod
    def from_spec(cls, spec: Any) -> Policy:
        """From a rules file's ``policy`` section (:class:`fds.rules.ruleset.PolicySpec`)."""
        return cls(
            decline_at=spec.decline_at,
            review_at=spec.review_at,
            alert_budget_per_day=spec.alert_budget_per_day,
            alert_budget_scope=getattr(spec, "alert_budget_scope", "instance"),
        )

    def _daily(self) -> int | None:
        """The budget this engine holds: the configured one, or with scope ``group`` its
        share (at least 1)."""
        per_day = self.budget_per_day
        if not per_day or self.budget_scope != "group":
            return per_day
        return max(1, round(per_day * self.fraction))

    def configure(self, spec: Any) -> None:
        """Apply new thresholds (a hot-reloaded rules file) keeping the budget's history.

        Call it on the deciding thread, between two events.
        """
        if not 0 <= spec.review_at <= spec.decline_at <= 1:
            raise ValueError("need 0 <= review_at <= decline_at <= 1")
        self.decline_at, self.review_at = spec.decline_at, spec.review_at
        self.budget_per_day = spec.alert_budget_per_day
        self.budget_scope = getattr(spec, "alert_budget_scope", "instance")
        budget = self._daily()
        if not budget:
            self.budget = None
        elif self.budget is None:
            self.budget = AlertBudget(budget)
        elif budget != self.budget.budget:
            self.budget.set_budget(budget)

    def share(self, fraction: float) -> None:
        """This engine now decides ``fraction`` of its consumer group's input partitions
        (``fds run``, at each assignment). With scope ``group`` its budget becomes that share
        of the configured one, and the score history, kept for another share, is scaled to
        this one (the traffic of the partitions gained or lost is taken to look like the
        rest), so the threshold is right at once. With scope ``instance``: noted only.

        >>> p = Policy(alert_budget_per_day=100, alert_budget_scope="group")
        >>> p.share(0.25)
        >>> p.budget.budget
        25
        """
        self.fraction = fraction
        b = self.budget
        if b is None or self.budget_scope != "group" or fraction <= 0:
            return
        if b.fraction and b.fraction != fraction:
            b.scale(fraction / b.fraction)
        b.fraction = fraction  # (unknown before: the history taken as of this share)
        daily = self._daily()
        if daily is not None and daily != b.budget:
            b.set_budget(daily)

    @property
    def review_threshold(self) -> float:
        """The review threshold in force now."""
        if self.budget is None:
            return self.review_at
        return max(self.review_at, self.budget.threshold())

    def decide(
        self,
        hits: Sequence[Mapping[str, Any]],
        model_score: float | None,
        ts: float,
        stacked: bool = False,
    ) -> tuple[str, float]:
        """``(action, final score)`` for one transaction at event time ``ts`` (``stacked``: the
        model read the rules' results, see :func:`combine`)."""
        forced = None
        for h in hits:
            if h.get("state", "active") != "active":
                continue
            a = h["action"]
            if a == "decline":
                forced = "decline"
            elif a == "review" and forced is None:
                forced = "review"
        rules = rule_score(hits)
        if model_score is not None and not 0.0 <= model_score <= 1.0:  # NaN too: rules alone
            model_score = None
        final = rules if model_score is None else combine(rules, model_score, stacked)
        final = round_to(final, SCORE_DECIMALS)  # stable JSON (thresholds have no more)
        threshold = self.review_at
        budget = self.budget
        if budget is not None:
            if budget._threshold > threshold:
                threshold = budget._threshold
            budget.observe(final, ts)
        if forced == "decline" or final >= self.decline_at:
            return "decline", final
        if forced == "review" or final >= threshold:
            return "review", final
        return "approve", final
