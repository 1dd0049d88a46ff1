"""Champion/challenger: promotion and rollback decided on labels that arrive meanwhile.

A *contest* pits an incumbent against a candidate on the fraud labels that arrive after it
starts. Each fraud label's transaction is scored by both models on its decision-time input
(models are frozen while serving, so this equals the score they gave, or would have given, at
decision time). A model "catches" a fraud when its score ranks within that model's daily alert
budget: among the top ``k/volume`` share of recent traffic (ties count in expectation, as if
broken at random, so a constant model catches nothing for free). At the same
budget k and over the same frauds, precision@k is proportional to frauds caught, so comparing
``caught`` compares precision at the alert budget without needing legitimate labels (the
simulator, like real life, only labels frauds).

- ``shadow`` contest (challenger vs champion): promote when ``caught(challenger) >=
  caught(champion)`` after ``min_labels`` frauds, else reject.
- ``probation`` contest (new champion vs its predecessor): roll back when the new champion
  catches fewer than its predecessor did, else confirm.

>>> traffic = [i / 100 for i in range(100)]
>>> inc, cand = BudgetRank(traffic, 0.1), BudgetRank(traffic, 0.1)
>>> c = Contest("shadow", "v1", "v2", min_labels=3)
>>> for s_inc, s_cand in [(0.95, 0.97), (0.2, 0.99), (0.1, 0.96)]:
...     c.add(inc.credit(s_inc), cand.credit(s_cand))
>>> c.caught_incumbent, c.caught_candidate, c.verdict()
(1.0, 3.0, 'promote')
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BudgetRank", "Contest"]

Kind = Literal["shadow", "probation"]


class BudgetRank:
    """Where a score would rank in recent traffic, against a top-``alert_share`` budget.

    >>> r = BudgetRank([0.0] * 90 + [0.5] * 10, 0.05)
    >>> r.credit(0.9), r.credit(0.5), r.credit(0.0)
    (1.0, 0.4545, 0.0)
    """

    def __init__(self, scores: list[float], alert_share: float) -> None:
        self.sorted = sorted(scores)
        self.budget = alert_share * len(self.sorted)

    def credit(self, s: float) -> float:
        """Expected share of one alert slot that a transaction scored ``s`` would get (0..1)."""
        hi = bisect.bisect_right(self.sorted, s)
        lo = bisect.bisect_left(self.sorted, s)
        greater = len(self.sorted) - hi
        tied = hi - lo + 1  # the transaction itself joins the tie
        return round(min(1.0, max(0.0, (self.budget - greater) / tied)), 4)


@dataclass
class Contest:
    kind: Kind
    incumbent: str
    candidate: str
    min_labels: int
    n: int = 0
    caught_incumbent: float = 0.0
    caught_candidate: float = 0.0
    # event time it started (NaN: at the next decision); see ModelServer._expire_contests
    started: float = math.nan

    def add(self, credit_incumbent: float, credit_candidate: float) -> None:
        """One fraud label with both models' budget credits (see :class:`BudgetRank`)."""
        self.n += 1
        self.caught_incumbent += credit_incumbent
        self.caught_candidate += credit_candidate

    def verdict(self, *, early: bool = False) -> str | None:
        """``None`` while too few labels, then ``promote``/``reject`` (shadow) or
        ``confirm``/``rollback`` (probation). ``early``: on the labels judged so far (no label:
        ``promote``/``confirm``)."""
        if self.n < self.min_labels and not early:
            return None
        if self.kind == "shadow":
            return "promote" if self.caught_candidate >= self.caught_incumbent else "reject"
        return "rollback" if self.caught_incumbent < self.caught_candidate else "confirm"

    def figures(self) -> dict[str, Any]:
        """The contest's versions and recalls at the budget, named for what they are: a
        probation's incumbent is the version ``on_probation``, its candidate the
        ``predecessor`` a rollback returns to (not a "candidate" of anything)."""
        n = max(self.n, 1)
        shadow = self.kind == "shadow"
        a, b = ("incumbent", "candidate") if shadow else ("on_probation", "predecessor")
        return {
            "labels": self.n,
            f"recall_at_budget_{a}": round(self.caught_incumbent / n, 4),
            f"recall_at_budget_{b}": round(self.caught_candidate / n, 4),
            a: self.incumbent,
            b: self.candidate,
        }
