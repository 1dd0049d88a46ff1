"""The decision policy: score combination, overrides, thresholds, and the daily alert budget."""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from datetime import datetime

import pytest

from fds.policy import AlertBudget, Policy, round_to
from fds.timeutil import get_zone


def hit(action: str, score: float, state: str = "active") -> dict:
    return {
        "id": f"{action}{score}",
        "action": action,
        "score": score,
        "reason": "r",
        "state": state,
    }


@pytest.mark.parametrize(
    ("hits", "model", "expected"),
    [
        ([], None, ("approve", 0.0)),
        ([], 0.3, ("approve", 0.3)),
        ([], 0.95, ("decline", 0.95)),  # the model alone can decline
        ([], 0.6, ("review", 0.6)),
        ([hit("approve", 0.2)], 0.5, ("review", 0.6)),  # noisy-or: 1 - 0.8 * 0.5
        ([hit("approve", 0.2), hit("approve", 0.4)], None, ("approve", 0.4)),  # max of rules
        ([hit("review", 0.1)], 0.1, ("review", 0.19)),  # a review rule forces review
        ([hit("decline", 0.1)], 0.0, ("decline", 0.1)),  # a decline rule overrides the score
        ([hit("review", 0.3), hit("decline", 0.2)], None, ("decline", 0.3)),
        ([hit("decline", 1.0, "shadow")], 0.1, ("approve", 0.1)),  # shadow: no effect
        ([hit("review", 0.8, "shadow"), hit("approve", 0.1)], None, ("approve", 0.1)),
    ],
)
def test_combination_rule(hits: list, model: float | None, expected: tuple) -> None:
    assert Policy(decline_at=0.9, review_at=0.5).decide(hits, model, 0.0) == expected


def test_thresholds_are_inclusive_and_validated() -> None:
    p = Policy(decline_at=0.8, review_at=0.4)
    assert p.decide([], 0.4, 0.0)[0] == "review"
    assert p.decide([], 0.8, 0.0)[0] == "decline"
    with pytest.raises(ValueError):
        Policy(decline_at=0.3, review_at=0.4)


TZ = get_zone("Asia/Seoul")
START = datetime(2026, 1, 1, 0, 0, tzinfo=TZ).timestamp()


def _day_shape(ts: float) -> float:
    # Traffic per local hour: quiet at night, busy in the day (a realistic daily cycle).
    h = datetime.fromtimestamp(ts, TZ).hour
    return 0.2 if h < 6 else 1.0


def _stream(days: int, per_day: int, seed: int, shift_day: int | None = None):
    rng = random.Random(seed)
    t = START
    end = START + days * 86400
    mean_gap = 86400 / per_day
    while t < end:
        t += rng.expovariate(1 / mean_gap) / _day_shape(t) * 0.8
        score = rng.betavariate(1, 12)
        if shift_day is not None and t >= START + shift_day * 86400:
            score = min(1.0, score * 1.8)  # a riskier population: the threshold must move up
        yield t, score


def test_alert_budget_holds_reviews_near_budget_across_midnights() -> None:
    budget = 120
    p = Policy(decline_at=1.0, review_at=0.0, alert_budget_per_day=budget)
    reviews_by_hour: Counter[int] = Counter()
    per_day: Counter[int] = Counter()
    for ts, score in _stream(days=5, per_day=20_000, seed=3):
        action, _ = p.decide([], score, ts)
        if action == "review":
            reviews_by_hour[int((ts - START) // 3600)] += 1
            per_day[int((ts - START) // 86400)] += 1
    # After the first day (warm-up), each calendar day lands near the budget.
    for day in (1, 2, 3, 4):
        assert 0.7 * budget <= per_day[day] <= 1.3 * budget, per_day
    # Sliding 24 h windows starting at any hour (not just at midnight) are near the budget too.
    for start_h in range(24, 4 * 24 + 1, 5):
        n = sum(reviews_by_hour[h] for h in range(start_h, start_h + 24))
        assert 0.7 * budget <= n <= 1.3 * budget, (start_h, n)
    # No gap and no spike at local midnight: the hour after midnight (quiet hours, x0.2 traffic)
    # gets about its share, never a burst from a reset, and never zero on every night.
    day_hours = [reviews_by_hour[d * 24 + h] for d in range(1, 5) for h in range(8, 22)]
    mean_day_hour = sum(day_hours) / len(day_hours)
    after_midnight = [reviews_by_hour[d * 24] for d in range(1, 5)]
    assert max(after_midnight) <= 1.5 * mean_day_hour, (after_midnight, mean_day_hour)
    assert sum(after_midnight) > 0


def test_alert_budget_adapts_when_scores_shift() -> None:
    budget = 100
    p = Policy(decline_at=1.0, review_at=0.0, alert_budget_per_day=budget)
    per_day: Counter[int] = Counter()
    thresholds = {}
    for ts, score in _stream(days=5, per_day=10_000, seed=5, shift_day=2):
        if p.decide([], score, ts)[0] == "review":
            per_day[int((ts - START) // 86400)] += 1
        thresholds[int((ts - START) // 86400)] = p.review_threshold
    assert thresholds[4] > thresholds[1] + 0.05  # the threshold rose with the riskier scores
    assert per_day[2] <= 2.5 * budget  # the shift day overshoots, bounded
    for day in (3, 4):
        assert 0.7 * budget <= per_day[day] <= 1.3 * budget, per_day


def test_review_at_is_a_floor_for_the_budget_threshold() -> None:
    p = Policy(decline_at=0.95, review_at=0.7, alert_budget_per_day=10_000)
    for ts, score in _stream(days=2, per_day=2_000, seed=1):
        p.decide([], score, ts)
    assert p.review_threshold == 0.7  # budget not binding: review_at rules


def test_budget_warms_up_then_expires_old_slots() -> None:
    b = AlertBudget(5, warmup_seconds=3600)
    for i in range(100):
        b.observe(0.9, float(i))  # first 100 s: warm-up, no threshold yet
    assert b.threshold() == 0.0
    for i in range(3000):
        b.observe(0.5 if i % 2 else 0.9, 4000.0 + i)
    b.recompute(7000.0)
    assert b.threshold() > 0.9  # many 0.9 scores: above budget, threshold moves past them
    # Two days later with only low scores, the old high scores have expired.
    for i in range(3000):
        b.observe(0.1, 3 * 86400.0 + i * 20)
    b.recompute(3 * 86400.0 + 60000)
    assert b.threshold() <= 0.11


def test_from_spec() -> None:
    from fds.rules.ruleset import PolicySpec

    p = Policy.from_spec(PolicySpec(decline_at=0.8, review_at=0.3, alert_budget_per_day=50))
    assert (p.decline_at, p.review_at, p.budget.budget) == (0.8, 0.3, 50)  # type: ignore[union-attr]


def test_alert_budget_survives_pickling_exactly():
    """A restored budget (checkpoint) must go on exactly like an uninterrupted one."""
    import pickle
    import random

    from fds.policy import AlertBudget

    rng = random.Random(3)
    events = [(rng.random() ** 3, 3600.0 + i * 37.0) for i in range(20_000)]
    straight, first = AlertBudget(budget=20), AlertBudget(budget=20)
    for score, ts in events:
        straight.observe(score, ts)
    for score, ts in events[:7_000]:
        first.observe(score, ts)
    restored = pickle.loads(pickle.dumps(first))
    got = []
    for score, ts in events[7_000:]:
        restored.observe(score, ts)
        got.append(restored.threshold())
    reference = AlertBudget(budget=20)
    want = []
    for i, (score, ts) in enumerate(events):
        reference.observe(score, ts)
        if i >= 7_000:
            want.append(reference.threshold())
    assert got == want and got[-1] == straight.threshold() > 0
    # the score histograms themselves (a threshold may hide a small difference)
    assert (restored._total == reference._total).all()
    assert (restored._slots == reference._slots).all()


def test_a_model_score_outside_0_1_is_ignored_not_a_crash():
    """NaN made the alert budget raise (the scorer filters it; a custom model stage may not)."""
    from fds.policy import Policy

    p = Policy(alert_budget_per_day=10)
    assert p.decide([], float("nan"), 0.0) == ("approve", 0.0)
    assert p.decide([], 7.0, 1.0) == ("approve", 0.0)


def _reviews_per_hour(events: list[tuple[float, float]]) -> Counter[int]:
    p = Policy(decline_at=1.0, review_at=0.0, alert_budget_per_day=100)
    out: Counter[int] = Counter()
    for score, ts in events:
        if p.decide([], score, ts)[0] == "review":
            out[int((ts - T0) // 3600)] += 1
    return out


T0 = 1767225600.0


def _traffic(days: int, seed: int = 1) -> list[tuple[float, float]]:
    rng = random.Random(seed)  # 10,000 transactions a day
    return [(rng.betavariate(1, 12), T0 + i * 8.64) for i in range(days * 10_000)]


def test_the_budget_holds_after_a_gap_longer_than_its_window() -> None:
    """Found by a review: after two days without traffic a whole day's budget was allowed
    against minutes of history (137 reviews in the first hour, 314 in the day, for 100)."""
    events = _traffic(3)
    events = events[:20_000] + [(s, ts + 2 * 86400) for s, ts in events[20_000:]]
    per_hour = _reviews_per_hour(events)
    after = [per_hour[h] for h in range(96, 120)]
    assert max(after) < 25 and sum(after) < 130


def test_one_transaction_dated_far_ahead_does_not_stop_the_window_sliding() -> None:
    """Found by a review: one record a year ahead moved the budget's clock there; every later
    score then counted in one slot that never expired (350 reviews on a day, then none)."""
    clean = _traffic(5)
    poisoned = [*clean[:25_000], (0.01, clean[25_000][1] + 365 * 86400), *clean[25_000:]]

    def by_day(hours: Counter[int]) -> Counter[int]:
        days: Counter[int] = Counter()
        for h, n in hours.items():
            days[h // 24] += n
        return days

    a, b = by_day(_reviews_per_hour(clean)), by_day(_reviews_per_hour(poisoned))
    assert all(abs(a[d] - b[d]) <= 2 for d in range(1, 5)), (a, b)


def test_a_first_transaction_dated_far_ahead_does_not_turn_the_budget_off() -> None:
    """Found by a review: the first event sets the budget's clock, so one dated a year ahead
    (the first record of a fresh start) put every later score in its slot: the budget stayed in
    warm-up for a year and every score was a review (10,000 a day for a budget of 100)."""

    def by_day(hours: Counter[int]) -> Counter[int]:
        days: Counter[int] = Counter()
        for h, n in hours.items():
            days[h // 24] += n
        return days

    clean = _traffic(4)
    poisoned = [(0.01, clean[0][1] + 365 * 86400), *clean]
    a, b = by_day(_reviews_per_hour(clean)), by_day(_reviews_per_hour(poisoned))
    assert all(abs(a[d] - b[d]) <= 2 for d in range(1, 4)), (a, b)

    # nor two of them at the start (a review: the clock stayed there, the threshold 0 for good)
    poisoned = [(0.01, clean[0][1] + 365 * 86400)] * 2 + clean
    b = by_day(_reviews_per_hour(poisoned))
    assert all(abs(a[d] - b[d]) <= 2 for d in range(1, 4)), (a, b)

    # stale events after a real history do not start it again (a review: two events three days
    # behind wiped two days of history)
    budget = AlertBudget(100)
    for score, ts in _traffic(2):
        budget.observe(score, ts)
    first, threshold = budget._first_ts, budget.threshold()
    for _ in range(2):
        budget.observe(0.5, T0 - 3 * 86400)
    assert budget._first_ts == first and budget.threshold() == threshold


def test_round_to_is_round_bit_for_bit():
    """Random values of each range it serves (scores, latencies), exact decimals, ties and their
    neighbours, and what goes to round() itself: the same float, sign of zero included."""
    rng = random.Random(5)
    xs = [0.0, -0.0, -1e-9, -0.5, 1.0, 5e-324, 1e300, 2.0**20, math.nan, math.inf, -math.inf]
    for _ in range(20_000):
        n = rng.choice((3, 6))
        m = rng.randrange(10**n)
        tie, exact = (m + 0.5) / 10**n, m / 10**n
        xs += [rng.random(), rng.uniform(0.0, 3000.0), 10 ** rng.uniform(-12, 3), tie, exact]
        xs += [math.nextafter(tie, 0.0), math.nextafter(tie, 1.0), math.nextafter(exact, 0.0)]
    bits = lambda v: struct.pack("<d", v)  # noqa: E731
    for x in xs:
        for n in (3, 6):
            assert bits(round_to(x, n)) == bits(round(x, n)), (x, n)
    assert round_to(1, 6) == 1 and type(round_to(1, 6)) is int  # (round keeps an int an int)
    # ndigits outside the table: a negative one indexed it from the end (5e-10 for 0.0), 16
    # raised IndexError (a review found them)
    for x, n in ((5e-10, -1), (1234.5, -2), (0.5, 16), (0.123456789, 20)):
        assert bits(round_to(x, n)) == bits(round(x, n)), (x, n)


def test_a_group_budget_keeps_the_groups_reviews_when_an_instance_is_lost() -> None:
    """``alert_budget_scope: group``: two instances decide half the partitions each, each with
    half the group's budget; one is lost at the start of day 2 and the survivor gets all the
    partitions (share 1): the group's reviews stay near the budget every day, the day of the
    loss included (the survivor's history, of half the traffic, is scaled to the whole)."""
    budget = 120
    a, b = (
        Policy(decline_at=1.0, review_at=0.0, alert_budget_per_day=budget,
               alert_budget_scope="group")
        for _ in range(2)
    )  # fmt: skip
    a.share(0.5)
    b.share(0.5)
    assert (a.budget.budget, b.budget.budget) == (60, 60)  # type: ignore[union-attr]
    per_day: Counter[int] = Counter()
    for i, (ts, score) in enumerate(_stream(days=5, per_day=20_000, seed=3)):
        day = int((ts - START) // 86400)
        if day >= 2 and a.fraction < 1:
            a.share(1.0)  # b is lost: its partitions move to a
        p = b if day < 2 and i % 2 else a
        if p.decide([], score, ts)[0] == "review":
            per_day[day] += 1
    assert a.budget.budget == budget  # type: ignore[union-attr]
    for day in (1, 2, 3, 4):
        assert 0.7 * budget <= per_day[day] <= 1.3 * budget, per_day


def test_an_instance_budget_is_not_shared() -> None:
    p = Policy(alert_budget_per_day=100)
    p.share(0.25)
    assert p.budget.budget == 100  # type: ignore[union-attr]
    g = Policy(alert_budget_per_day=100, alert_budget_scope="group")
    g.share(0.25)
    from fds.rules.ruleset import PolicySpec

    g.configure(PolicySpec(alert_budget_per_day=200, alert_budget_scope="group"))
    assert g.budget.budget == 50  # type: ignore[union-attr]  # (a reload keeps the share)
