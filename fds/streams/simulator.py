"""The built-in card-payment stream generator: realistic, drifting, deterministic, fast.

It writes what a payment platform would see: transactions (the wire contract of DESIGN.md) and,
separately and late, fraud labels (customer reports after 1-3 days, chargebacks after 7-60
days). Only frauds are labelled, as in real life; a transaction nobody complains about is legit.

The world
---------
* **Cards** have a home country, a spending profile (lognormal amounts, a daily rate, active
  hours), one or two devices (used for online payments) and a handful of habitual merchants.
  Some travel abroad for a few days and some replace their phone: legitimate behaviour that
  makes naive "new country" / "new device" rules raise false alarms. A few are night-owl gamers.
* **Merchants** have an MCC (ISO 18245 code, as a string), a country, a channel (``pos`` or
  ``online``), a popularity and, for ``pos``, a location.
* ``country`` of a transaction is the merchant's country for ``pos`` and the country of the
  buyer's IP for ``online`` (what an FDS geolocates). Amounts are in KRW, the platform's
  settlement currency.

Fraud scenarios (the ``Simulation.scenarios`` map tells which one produced each fraud)
--------------------------------------------------------------------------------------
``card_testing``
    A burst of tiny online payments from a new device, then one or two large ones.
``account_takeover``
    A new device behind a foreign IP buys for 8-30x the card's usual amount.
``compromised_merchant``
    A POS merchant is skimmed for ten days; cards used there are counterfeited over the
    following weeks (large in-store purchases, some abroad).
``drift_ring``
    From ``drift_day`` on, fraudsters switch to what amount/country rules miss: domestic IPs,
    moderate amounts, night hours, 4-10 distinct merchants over one to four hours, all at a set
    of weakly protected digital-goods / gift-card / money-transfer merchants, on phones the ring
    rotates (each serves about three victims). The older scenarios drop to a third of their
    rate. Windowed features see it (card counts in 1h, distinct merchants in 24h, hour of day,
    device seen before, device distinct cards, merchant fraud rate), so an adaptive model can
    recover.

Example
-------
>>> sim = simulate(days=4, cards=5_000, merchants=300, seed=1, drift_day=2)
>>> tx = sim.transactions[0]
>>> sorted(k for k in ("tx_id", "ts", "card_id", "amount") if k in tx)
['amount', 'card_id', 'ts', 'tx_id']
>>> all(a["ts"] <= b["ts"] for a, b in zip(sim.transactions, sim.transactions[1:]))
True
>>> {lab["is_fraud"] for lab in sim.labels}
{True}
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fds.errors import ConfigError
from fds.timeutil import get_zone, parse_ts

__all__ = [
    "MIN_MERCHANTS", "SCENARIOS", "Simulation", "check_out", "labels_beside", "labels_path",
    "simulate", "summarize", "write",
]  # fmt: skip

Progress = Callable[[str], None]

# Index 0 is legitimate; the others name the fraud scenarios (see the module docstring).
SCENARIOS = ("legit", "card_testing", "account_takeover", "compromised_merchant", "drift_ring")
_CT, _ATO, _COMP, _RING = 1, 2, 3, 4
_SOURCES = ("", "customer", "chargeback")

_DAY = 86400.0
# Countries, with the share of merchants located there and the share of cards issued there.
# KR dominates (a Korean platform: the home market, index 0, "domestic"); the others host
# travel and cross-border spending.
_COUNTRIES = ("KR", "JP", "US", "CN", "TH", "VN", "SG", "FR", "GB")
_MERCHANT_SHARE = np.array([0.84, 0.04, 0.04, 0.02, 0.015, 0.015, 0.01, 0.01, 0.01])
_CARD_SHARE = np.array([0.92, 0.03, 0.02, 0.02, 0.0, 0.0, 0.01, 0.0, 0.0])
# Where travellers go (KR-resident tourism mix, roughly).
_TRAVEL_SHARE = np.array([0.05, 0.30, 0.15, 0.10, 0.12, 0.12, 0.06, 0.05, 0.05])
# Rough city centres and spread (degrees) for POS merchant coordinates.
_GEO = np.array(
    [
        [37.55, 126.98, 0.6],
        [35.68, 139.69, 1.0],
        [40.71, -74.0, 4.0],
        [31.23, 121.47, 2.0],
        [13.75, 100.5, 0.8],
        [10.82, 106.63, 0.8],
        [1.35, 103.82, 0.05],
        [48.86, 2.35, 1.0],
        [51.51, -0.13, 1.0],
    ]
)
# First octets of the fictitious IP ranges of each country (disjoint, so an IP has one country).
_IP_OCTETS = (
    (1, 14, 27, 39, 58, 59, 61, 110, 112, 114, 118, 121, 175, 180, 211, 218, 220, 222),
    (126, 133, 153),
    (3, 8, 24, 64, 66, 72, 98),
    (36, 42, 101, 117, 123),
    (49, 171, 184),
    (113, 115, 116),
    (103, 165),
    (2, 90, 176),
    (25, 51, 86),
)

# MCC table: code, share among merchants, online probability, log amount factor vs the card's
# median. Values are plausible orders of magnitude (a bus ride is ~1/15 of a median purchase,
# electronics ~8x), not calibrated to any real portfolio.
_MCC = (
    ("5411", 0.16, 0.15, 0.3),  # grocery
    ("5812", 0.16, 0.0, 0.2),  # restaurants
    ("5814", 0.10, 0.10, -0.8),  # fast food
    ("5541", 0.05, 0.0, 0.8),  # fuel
    ("5912", 0.05, 0.05, -0.4),  # pharmacy
    ("5311", 0.04, 0.2, 1.2),  # department store
    ("5732", 0.03, 0.4, 2.0),  # electronics
    ("5999", 0.08, 0.3, 0.0),  # misc retail
    ("4111", 0.03, 0.0, -2.7),  # transit
    ("4121", 0.04, 0.3, -0.6),  # taxi
    ("5815", 0.04, 1.0, -1.0),  # digital goods
    ("5816", 0.03, 1.0, -0.6),  # games
    ("4829", 0.02, 0.8, 1.3),  # money transfer
    ("6051", 0.01, 0.9, 1.0),  # quasi-cash / crypto
    ("5947", 0.02, 0.7, 0.5),  # gift cards
    ("5944", 0.02, 0.2, 2.3),  # jewelry
    ("5691", 0.08, 0.3, 1.0),  # clothing
    ("4511", 0.02, 0.7, 2.6),  # airlines
    ("7011", 0.04, 0.5, 2.0),  # hotels
)
_MCC_CODES = tuple(m[0] for m in _MCC)
_MCC_SHARE = np.array([m[1] for m in _MCC]) / sum(m[1] for m in _MCC)
_MCC_ONLINE = np.array([m[2] for m in _MCC])
_MCC_LOGAMT = np.array([m[3] for m in _MCC])


def _mccs(*codes: str) -> np.ndarray:
    return np.array([_MCC_CODES.index(c) for c in codes])


_RING_MCCS = _mccs("5815", "5816", "4829", "6051", "5947")
_SMALL_MCCS = _mccs("5815", "5816", "5999", "5947")
_BIG_MCCS = _mccs("5732", "5944", "5947", "5311")
_COUNTERFEIT_MCCS = _mccs("5732", "5311", "5944", "5541", "5999", "5691")
_GAME_MCCS = _mccs("5815", "5816")
# Merchants every run must have so that each scenario has somewhere to happen, even with few
# merchants: (mcc, online) for the home market, then for each foreign country.
_FORCED_HOME = (
    [(m, 1) for m in ("5815", "5815", "5816", "5816", "4829", "6051", "5947", "5947")]
    + [(m, 1) for m in ("5732", "5732", "5944", "5311")]
    + [(m, 0) for m in ("5732", "5311", "5541", "5944", "5411", "5812")]
)
_FORCED_ABROAD = [("5812", 0), ("5411", 0), ("5311", 0), ("5732", 0), ("5999", 1)]

# Incident rates per day per 20,000 cards (the default portfolio), scaled with the portfolio:
# about 0.35% of transactions are fraud before the drift and 0.6% after it at 20,000 cards. A
# merchant compromise defrauds a share of its cards, capped, so it does not scale with the
# portfolio: at 10,000 cards (the precision benchmark's) 0.22-0.31% before the drift, by seed.
_PER_CARDS = 20_000
_CT_PER_DAY = 4.0
_ATO_PER_DAY = 8.0
_RING_PER_DAY = 12.0
# A merchant compromise every this many days; each lasts 10 days and defrauds a share of the
# cards that used the merchant meanwhile (capped, as banks reissue cards of large breaches).
_COMP_EVERY_DAYS = 5.0
_COMP_WINDOW_DAYS = 10
_COMP_VICTIM_SHARE = 0.35
_COMP_MAX_VICTIMS = 60
# After the drift the old scenarios run at this share of their rate (fraudsters moved on).
_OLD_AFTER_DRIFT = 1 / 3
# Share of fraud incidents that a customer reports within 1-3 days; the rest are chargebacks.
_CUSTOMER_SHARE = 0.55
# Legitimate behaviour: mean transactions per card per day, share of habitual purchases,
# probability per 30 days of a trip abroad and of replacing the device, share of night gamers.
_MEAN_RATE = 1.0
_HABIT_SHARE = 0.75
_HABITS = 8
_TRIP_PER_30D = 0.04
_NEWDEV_PER_30D = 0.06
_GAMER_SHARE = 0.05
# Share of three-card households sharing a tablet (legitimate multi-card devices).
_HOUSEHOLD_SHARE = 0.05
# Victims per ring phone before the ring drops it.
_RING_VICTIMS_PER_DEVICE = 3
MIN_MERCHANTS = 100  # below this the forced merchants would crowd out the ordinary ones


@dataclass(frozen=True)
class Simulation:
    """A simulated stream: transactions and fraud labels, each sorted by ``ts``.

    Attributes
    ----------
    transactions : list of dict
        Wire-contract transactions (DESIGN.md), sorted by event time.
    labels : list of dict
        ``{tx_id, ts, is_fraud: True, source}``, sorted by the time the label became known
        (which may be after the last transaction).
    scenarios : dict
        ``tx_id -> scenario name`` for every fraudulent transaction (ground truth, not written).
    start, end : float
        Epoch seconds bounding the transactions.
    drift_ts : float or None
        When the drift began.
    """

    transactions: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    scenarios: dict[str, str] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0
    drift_ts: float | None = None


@dataclass
class _Events:
    """Columns of generated events before sorting (one row per transaction)."""

    ts: np.ndarray
    card: np.ndarray
    merchant: np.ndarray
    amount: np.ndarray
    device: np.ndarray  # -1 for pos
    ip: np.ndarray  # -1 for pos
    scenario: np.ndarray
    label_ts: np.ndarray  # nan when legit
    source: np.ndarray  # index into _SOURCES

    @staticmethod
    def concat(parts: Iterable[_Events]) -> _Events:
        ps = list(parts)
        return _Events(
            **{f.name: np.concatenate([getattr(p, f.name) for p in ps]) for f in fields(_Events)}
        )


class _Pool:
    """Weighted sampling from a set of indices (merchants of one kind)."""

    def __init__(self, idx: np.ndarray, weight: np.ndarray, what: str) -> None:
        if len(idx) == 0:
            raise ConfigError(f"the simulated world has no {what}: use more merchants")
        self.idx = idx
        self.cum = np.cumsum(weight[idx])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random(n) * self.cum[-1]
        return self.idx[np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.idx) - 1)]


class _World:
    """Cards, merchants, devices and IPs; the tables that events index into."""

    def __init__(self, rng: np.random.Generator, cards: int, merchants: int, days: int) -> None:
        self.days = days
        nc = len(_COUNTRIES)
        # Merchants, grouped by country (KR first); forced ones first in each group.
        forced = [
            (c, _MCC_CODES.index(m), o)
            for c in range(nc)
            for m, o in (_FORCED_HOME if c == 0 else _FORCED_ABROAD)
        ]
        n_per = np.maximum(np.round(_MERCHANT_SHARE * merchants).astype(int), 0)
        n_forced = np.bincount([f[0] for f in forced], minlength=nc)
        n_per = np.maximum(n_per, n_forced + 1)
        n_per[0] = max(merchants - n_per[1:].sum(), n_forced[0] + 1)
        m_country = np.repeat(np.arange(nc), n_per)
        m_mcc = rng.choice(len(_MCC), size=len(m_country), p=_MCC_SHARE)
        m_online = rng.random(len(m_country)) < _MCC_ONLINE[m_mcc]
        starts = np.concatenate([[0], np.cumsum(n_per)[:-1]])
        slot = starts.copy()
        for c, mcc, online in forced:
            m_mcc[slot[c]] = mcc
            m_online[slot[c]] = bool(online)
            slot[c] += 1
        self.m_country = m_country
        self.m_mcc = m_mcc
        self.m_online = m_online
        self.m_logamt = _MCC_LOGAMT[m_mcc] + rng.normal(0.0, 0.25, len(m_country))
        pop = rng.lognormal(0.0, 1.2, len(m_country))
        self.m_pop = pop
        geo = _GEO[m_country]
        self.m_lat = np.round(geo[:, 0] + rng.normal(0, 1, len(geo)) * geo[:, 2], 4)
        self.m_lon = np.round(geo[:, 1] + rng.normal(0, 1, len(geo)) * geo[:, 2], 4)
        allm = np.arange(len(m_country))
        self.by_country = [_Pool(allm[m_country == c], pop, f"{c} merchants") for c in range(nc)]
        home_online = (m_country == 0) & m_online
        self.small = _Pool(allm[home_online & np.isin(m_mcc, _SMALL_MCCS)], pop, "small online")
        self.big = _Pool(allm[home_online & np.isin(m_mcc, _BIG_MCCS)], pop, "big online")
        self.games = _Pool(allm[home_online & np.isin(m_mcc, _GAME_MCCS)], pop, "game merchants")
        cf = ~m_online & np.isin(m_mcc, _COUNTERFEIT_MCCS)
        self.counterfeit_home = _Pool(allm[cf & (m_country == 0)], pop, "home POS shops")
        self.counterfeit_abroad = _Pool(allm[cf & (m_country > 0)], pop, "foreign POS shops")
        ring_all = allm[home_online & np.isin(m_mcc, _RING_MCCS)]
        # The ring works the less popular half of them (small shops with weak checks), where its
        # payments stand out: the merchant's fraud rate becomes a signal.
        by_pop = ring_all[np.argsort(pop[ring_all], kind="stable")]
        self.ring = by_pop[: max(len(by_pop) // 2, min(3, len(by_pop)))]
        self.pos_home = allm[~m_online & (m_country == 0)]

        # Cards.
        self.n = cards
        self.home = rng.choice(nc, size=cards, p=_CARD_SHARE / _CARD_SHARE.sum())
        self.mu = rng.normal(np.log(22_000.0), 0.45, cards)
        self.sigma = rng.uniform(0.45, 0.85, cards)
        self.rate = np.clip(rng.gamma(2.0, _MEAN_RATE / 2.0, cards), 0.05, 8.0)
        gamer = rng.random(cards) < _GAMER_SHARE
        self.hour_c = np.where(gamer, 23.5, np.clip(rng.normal(14.5, 3.0, cards), 8, 21))
        self.hour_s = np.where(gamer, 2.0, rng.uniform(2.0, 4.0, cards))
        self.n_dev = 1 + (rng.random(cards) < 0.4)
        cust = np.arange(cards)
        shared = (rng.random(cards) < 0.12) & (cust > 0)
        self.customer = np.where(shared, cust - 1, cust)
        self.habits = np.empty((cards, _HABITS), dtype=np.int64)
        for c in range(nc):
            sel = np.flatnonzero(self.home == c)
            self.habits[sel] = (
                self.by_country[c].sample(rng, len(sel) * _HABITS).reshape(-1, _HABITS)
            )
        g = np.flatnonzero(gamer & (self.home == 0))
        self.habits[g, : _HABITS // 2] = self.games.sample(rng, len(g) * (_HABITS // 2)).reshape(
            -1, _HABITS // 2
        )
        # Trips abroad (one at most) and a device replacement (one at most), as day ranges.
        trip = rng.random(cards) < _TRIP_PER_30D * days / 30
        self.trip_start = np.where(trip, rng.integers(0, max(days, 1), cards), -1)
        self.trip_end = self.trip_start + rng.integers(3, 11, cards)
        dest = rng.choice(nc, size=cards, p=_TRAVEL_SHARE)
        dest = np.where(dest == self.home, (dest + 1 + rng.integers(0, nc - 1, cards)) % nc, dest)
        self.trip_dest = dest
        newdev = rng.random(cards) < _NEWDEV_PER_30D * days / 30
        self.newdev_day = np.where(newdev, rng.integers(1, max(days, 2), cards), days + 1)

        # Devices 0..2*cards-1 are the cards' own (slot 0/1), then replacements, then fraud.
        self.n_devices = 2 * cards
        own = np.arange(2 * cards).reshape(cards, 2)
        # Legitimate sharing, so that "device used by several cards" is not proof of fraud:
        # a customer's second card lives on the same phone, and some households (groups of
        # three cards) share a tablet.
        own[1:, 0] = np.where(shared[1:], own[:-1, 0], own[1:, 0])
        group = np.arange(cards) // 3
        household = (rng.random(group[-1] + 1) < _HOUSEHOLD_SHARE)[group]
        own[:, 1] = np.where(household, 2 * (3 * group) + 1, own[:, 1])
        self.n_dev = np.where(household, 2, self.n_dev)
        self.own_dev = own
        self.newdev = self.new_devices(cards)
        # IPs: one per own device, in the card's home country; later ones are appended.
        self._ip_int: list[np.ndarray] = []
        self._ip_country: list[np.ndarray] = []
        self.n_ips = 0
        self.dev_ip = self.new_ips(rng, np.repeat(self.home, 2))
        self.newdev_ip = self.new_ips(rng, self.home)

    def new_devices(self, n: int) -> np.ndarray:
        out = np.arange(self.n_devices, self.n_devices + n)
        self.n_devices += n
        return out

    def new_ips(self, rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
        n = len(country)
        first = np.empty(n, dtype=np.int64)
        for c, octets in enumerate(_IP_OCTETS):
            sel = country == c
            first[sel] = rng.choice(np.array(octets), size=int(sel.sum()))
        rest = rng.integers(0, 1 << 24, n)
        self._ip_int.append((first << 24) | rest)
        self._ip_country.append(np.asarray(country, dtype=np.int64))
        out = np.arange(self.n_ips, self.n_ips + n)
        self.n_ips += n
        return out

    def ip_tables(self) -> tuple[list[str], np.ndarray]:
        ints = np.concatenate(self._ip_int) if self._ip_int else np.zeros(0, np.int64)
        ctry = np.concatenate(self._ip_country) if self._ip_country else np.zeros(0, np.int64)
        a, b, c, d = (ints >> 24) & 255, (ints >> 16) & 255, (ints >> 8) & 255, ints & 255
        strs = [
            f"{w}.{x}.{y}.{z}"
            for w, x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), d.tolist(), strict=True)
        ]
        return strs, ctry


class _Clock:
    """Local calendar days of the simulation: event times from (day, local hour)."""

    def __init__(self, start: float, days: int, tz_name: str) -> None:
        self.tz = get_zone(tz_name)
        local = datetime.fromtimestamp(start, self.tz)
        self.first = local.date()
        if days > (date.max - self.first).days:
            raise ConfigError(
                f"{days} days from {self.first} run past the year 9999: use fewer days"
            )
        # Midnights of each local day (DST-aware).
        self.midnight = np.array([self._wall(d) for d in range(days + 1)])
        if self.midnight[0] != start:
            raise ConfigError(
                f"start is {local:%Y-%m-%d %H:%M} in {tz_name}, not a local midnight: give a "
                f"midnight without offset, e.g. '{self.first}T00:00:00', to read it in {tz_name}"
            )
        # Days that are not 24 h long (DST changes): their hours need the zone's rules.
        self.dst_days = np.flatnonzero(np.diff(self.midnight) != _DAY).tolist()
        self.start = start
        self.end = float(self.midnight[-1])
        self.days = days

    def _wall(self, day: int, hour: float = 0.0) -> float:
        """Epoch seconds of wall-clock ``hour`` on local ``day``; a time the fall-back of DST
        repeats is either pass, by a low bit of ``hour`` (about half each, deterministic; on
        fold 0 alone the second pass was nearly empty, a QA pass)."""
        midnight = datetime.combine(self.first + timedelta(days=day), time(), self.tz)
        wall = midnight + timedelta(hours=hour)
        later = wall.replace(fold=1)
        if wall.timestamp() < later.timestamp():  # (repeated; a spring-forward gap: fold 0,
            return (later if int(hour * 2**36) & 1 else wall).timestamp()  # as before)
        return wall.timestamp()

    def at(self, day: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """Epoch seconds of local ``hour`` (float, wrapped into 0-24) on simulation ``day``."""
        day = np.clip(day, 0, self.days)
        hour = np.mod(hour, 24.0)
        ts = self.midnight[day] + hour * 3600.0
        # On a DST day, midnight + hours is off by the change: ask the zone (a few days a year).
        for d in self.dst_days:
            rows = np.flatnonzero(day == d)
            ts[rows] = [self._wall(d, h) for h in hour[rows].tolist()]
        return np.round(ts, 3)


def _rngs(seed: int, n: int) -> list[np.random.Generator]:
    # One independent stream per component: changing one scenario does not reshuffle the others.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _legit(rng: np.random.Generator, w: _World, clock: _Clock) -> _Events:
    days = clock.days
    counts = rng.poisson(w.rate * days)
    card = np.repeat(np.arange(w.n), counts)
    n = len(card)
    # Weekends are ~15% busier.
    wd0 = datetime.fromtimestamp(clock.start, clock.tz).weekday()
    dayw = np.where(((np.arange(days) + wd0) % 7) >= 5, 1.15, 1.0)
    day = np.minimum(np.searchsorted(np.cumsum(dayw) / dayw.sum(), rng.random(n)), days - 1)
    hour = w.hour_c[card] + w.hour_s[card] * rng.standard_normal(n)
    anyhour = rng.random(n) < 0.03
    hour[anyhour] = rng.uniform(0, 24, int(anyhour.sum()))
    ts = clock.at(day, hour)

    merchant = np.empty(n, dtype=np.int64)
    habit = rng.random(n) < _HABIT_SHARE
    # Habitual merchants: the first ones are favourites (geometric preference).
    col = np.minimum(rng.geometric(0.35, n) - 1, _HABITS - 1)
    merchant[habit] = w.habits[card[habit], col[habit]]
    # Elsewhere, and travel: popularity-weighted merchants of the country the card is in.
    on_trip = (day >= w.trip_start[card]) & (day < w.trip_end[card]) & (w.trip_start[card] >= 0)
    trip_local = on_trip & (rng.random(n) < 0.85)
    where = np.where(trip_local, w.trip_dest[card], w.home[card])
    other = ~habit | trip_local
    for c in range(len(_COUNTRIES)):
        sel = other & (where == c)
        merchant[sel] = w.by_country[c].sample(rng, int(sel.sum()))

    amount = np.exp(
        w.mu[card] + w.m_logamt[merchant] + w.sigma[card] * rng.standard_normal(n) + 0.4 * on_trip
    )
    online = w.m_online[merchant]
    slot = (rng.random(n) < 0.3) & (w.n_dev[card] == 2)
    device = w.own_dev[card, slot.astype(np.int64)]
    replaced = (~slot) & (day >= w.newdev_day[card])
    ip = np.where(replaced, w.newdev_ip[card], w.dev_ip[device])
    device = np.where(replaced, w.newdev[card], device)
    # Online while travelling: a foreign IP (hotel wifi, roaming), so the country is foreign.
    abroad_online = online & on_trip
    ip[abroad_online] = w.new_ips(rng, w.trip_dest[card[abroad_online]])
    device = np.where(online, device, -1)
    ip = np.where(online, ip, -1)
    return _Events(
        ts=ts,
        card=card,
        merchant=merchant,
        amount=amount,
        device=device,
        ip=ip,
        scenario=np.zeros(n, np.int8),
        label_ts=np.full(n, np.nan),
        source=np.zeros(n, np.int8),
    )


def _incident_days(
    rng: np.random.Generator, per_day: float, days: int, drift: int | None, after: float
) -> np.ndarray:
    """Start day of each incident of a scenario whose daily rate becomes ``after`` x at drift."""
    rate = np.full(days, per_day)
    if drift is not None:
        rate[drift:] *= after
    return np.repeat(np.arange(days), rng.poisson(rate))


def _labels(
    rng: np.random.Generator, inc: np.ndarray, ts: np.ndarray, n_inc: int
) -> tuple[np.ndarray, np.ndarray]:
    """Label time and source for fraud rows ``ts`` belonging to incidents ``inc`` (0..n_inc-1).

    A customer reports the whole incident 1-3 days after its last payment; a chargeback comes
    per payment, 7-60 days later (most within a month).
    """
    customer = rng.random(n_inc) < _CUSTOMER_SHARE
    last = np.full(n_inc, -np.inf)
    np.maximum.at(last, inc, ts)
    short = last[inc] + rng.uniform(1.0, 3.0, n_inc)[inc] * _DAY
    base = 7.0 + rng.gamma(2.0, 7.0, n_inc)
    long_days = np.clip(base[inc] + rng.uniform(0.0, 1.0, len(ts)), 7.0, 60.0)
    long = ts + long_days * _DAY
    cust = customer[inc]
    return np.round(np.where(cust, short, long), 3), np.where(cust, 1, 2).astype(np.int8)


def _expand(
    rng: np.random.Generator, lo: int, hi: int, n_inc: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row incident index and position within the incident, for lo..hi rows per incident."""
    k = rng.integers(lo, hi + 1, n_inc)
    inc = np.repeat(np.arange(n_inc), k)
    pos = np.arange(len(inc)) - np.repeat(np.cumsum(k) - k, k)
    return inc, pos


def _fraud_events(
    rng: np.random.Generator,
    w: _World,
    scenario: int,
    inc: np.ndarray,
    ts: np.ndarray,
    card: np.ndarray,
    merchant: np.ndarray,
    amount: np.ndarray,
    device: np.ndarray,
    ip: np.ndarray,
    n_inc: int,
) -> _Events:
    label_ts, source = _labels(rng, inc, ts, n_inc)
    online = w.m_online[merchant]
    return _Events(
        ts=ts,
        card=card,
        merchant=merchant,
        amount=amount,
        device=np.where(online, device, -1),
        ip=np.where(online, ip, -1),
        scenario=np.full(len(ts), scenario, np.int8),
        label_ts=label_ts,
        source=source,
    )


def _card_testing(rng: np.random.Generator, w: _World, clock: _Clock, drift: int | None) -> _Events:
    scale = w.n / _PER_CARDS
    day = _incident_days(rng, _CT_PER_DAY * scale, clock.days, drift, _OLD_AFTER_DRIFT)
    n_inc = len(day)
    victim = rng.integers(0, w.n, n_inc)
    t0 = clock.at(day, rng.uniform(0, 24, n_inc))
    dev = w.new_devices(n_inc)
    # Bots test from abroad (60%) or through domestic proxies.
    ipc = np.where(rng.random(n_inc) < 0.6, rng.integers(1, len(_COUNTRIES), n_inc), 0)
    ipi = w.new_ips(rng, ipc)
    inc, pos = _expand(rng, 4, 14, n_inc)
    n = len(inc)
    k = np.bincount(inc, minlength=n_inc)
    last = pos == (k[inc] - 1)
    big = last | ((pos == k[inc] - 2) & (rng.random(n) < 0.4))
    small_m = w.small.sample(rng, n_inc)
    merchant = np.where(big, w.big.sample(rng, n), small_m[inc])
    gap = np.where(big, rng.uniform(600, 10_800, n), rng.uniform(10, 120, n))
    ts = np.round(t0[inc] + _cumsum_by(inc, gap, n_inc), 3)
    amount = np.where(big, rng.uniform(500_000, 3_000_000, n), rng.integers(1, 30, n) * 100.0)
    return _fraud_events(
        rng, w, _CT, inc, ts, victim[inc], merchant, amount, dev[inc], ipi[inc], n_inc
    )


def _cumsum_by(inc: np.ndarray, gap: np.ndarray, n_inc: int) -> np.ndarray:
    """Running sum of ``gap`` within each incident (rows grouped by ``inc``, in order)."""
    c = np.cumsum(gap)
    first = np.searchsorted(inc, np.arange(n_inc))
    before = np.where(first > 0, c[np.maximum(first - 1, 0)], 0.0)
    return c - before[inc]


def _account_takeover(
    rng: np.random.Generator, w: _World, clock: _Clock, drift: int | None
) -> _Events:
    scale = w.n / _PER_CARDS
    day = _incident_days(rng, _ATO_PER_DAY * scale, clock.days, drift, _OLD_AFTER_DRIFT)
    n_inc = len(day)
    victim = rng.integers(0, w.n, n_inc)
    t0 = clock.at(day, rng.uniform(0, 24, n_inc))
    dev = w.new_devices(n_inc)
    ipc = (w.home[victim] + rng.integers(1, len(_COUNTRIES), n_inc)) % len(_COUNTRIES)
    ipi = w.new_ips(rng, ipc)
    inc, _ = _expand(rng, 1, 4, n_inc)
    n = len(inc)
    ts = np.round(t0[inc] + _cumsum_by(inc, rng.uniform(120, 5_400, n), n_inc), 3)
    merchant = w.big.sample(rng, n)
    amount = np.exp(w.mu[victim[inc]]) * rng.uniform(8.0, 30.0, n)
    return _fraud_events(
        rng, w, _ATO, inc, ts, victim[inc], merchant, amount, dev[inc], ipi[inc], n_inc
    )


def _compromised_merchant(
    rng: np.random.Generator, w: _World, clock: _Clock, drift: int | None, legit: _Events
) -> _Events:
    days = clock.days
    scale = w.n / _PER_CARDS
    rate = np.full(days, scale / _COMP_EVERY_DAYS)
    if drift is not None:
        rate[drift:] *= _OLD_AFTER_DRIFT
    starts = np.repeat(np.arange(days), rng.poisson(rate))
    # Breached merchants: popular-ish domestic POS (where many cards pass).
    pos = w.pos_home
    cand = pos[np.argsort(-w.m_pop[pos])][: max(len(pos) // 3, 1)]
    breached = rng.choice(cand, size=len(starts))
    vict_card: list[np.ndarray] = []
    vict_time: list[np.ndarray] = []
    lo_ts = clock.midnight[np.minimum(starts, days)]
    hi_ts = clock.midnight[np.minimum(starts + _COMP_WINDOW_DAYS, days)]
    order = np.argsort(legit.merchant, kind="stable")
    sorted_m = legit.merchant[order]
    for m, lo, hi in zip(breached.tolist(), lo_ts.tolist(), hi_ts.tolist(), strict=True):
        a, b = np.searchsorted(sorted_m, [m, m + 1])
        rows = order[a:b]
        rows = rows[(legit.ts[rows] >= lo) & (legit.ts[rows] < hi)]
        cards, first = np.unique(legit.card[rows], return_index=True)
        keep = rng.random(len(cards)) < _COMP_VICTIM_SHARE
        cards, first = cards[keep][:_COMP_MAX_VICTIMS], first[keep][:_COMP_MAX_VICTIMS]
        vict_card.append(cards)
        vict_time.append(legit.ts[rows][first])
    victim = np.concatenate(vict_card) if vict_card else np.zeros(0, np.int64)
    seen = np.concatenate(vict_time) if vict_time else np.zeros(0)
    n_inc = len(victim)
    # Counterfeits are used 2-30 days after the card was read, in shop hours.
    when = seen + rng.uniform(2.0, 30.0, n_inc) * _DAY
    day = np.searchsorted(clock.midnight, when, side="right") - 1
    t0 = clock.at(day, rng.uniform(10.0, 21.0, n_inc))
    inc, _ = _expand(rng, 1, 3, n_inc)
    n = len(inc)
    ts = np.round(t0[inc] + _cumsum_by(inc, rng.uniform(600, 7_200, n), n_inc), 3)
    abroad = rng.random(n_inc) < 0.25
    merchant = np.where(
        abroad[inc], w.counterfeit_abroad.sample(rng, n), w.counterfeit_home.sample(rng, n)
    )
    amount = np.exp(w.mu[victim[inc]]) * rng.uniform(3.0, 10.0, n)
    minus = np.full(n, -1)
    return _fraud_events(rng, w, _COMP, inc, ts, victim[inc], merchant, amount, minus, minus, n_inc)


def _drift_ring(rng: np.random.Generator, w: _World, clock: _Clock, drift: int | None) -> _Events:
    if drift is None or drift >= clock.days:
        return _empty()
    scale = w.n / _PER_CARDS
    rate = np.zeros(clock.days)
    # The ring ramps up over three days, then works at full speed.
    ramp = np.minimum((np.arange(clock.days) - drift + 1) / 3.0, 1.0)
    rate[drift:] = _RING_PER_DAY * scale * ramp[drift:]
    day = np.repeat(np.arange(clock.days), rng.poisson(rate))
    n_inc = len(day)
    # Domestic victims only: the ring buys stolen KR credentials.
    home_cards = np.flatnonzero(w.home == 0)
    victim = home_cards[rng.integers(0, len(home_cards), n_inc)]
    t0 = clock.at(day, rng.uniform(0.5, 4.5, n_inc))
    # Ring phones behind domestic proxy IPs, rotated: each serves a few victims over a few
    # days, then is dropped (incidents come in time order, so neighbours share a phone).
    pool = max(1, -(-n_inc // _RING_VICTIMS_PER_DEVICE))
    ring_dev = w.new_devices(pool)
    ring_ip = w.new_ips(rng, np.zeros(pool, np.int64))
    pick = np.clip(
        np.arange(n_inc) // _RING_VICTIMS_PER_DEVICE + rng.integers(-1, 2, n_inc), 0, pool - 1
    )
    inc, pos = _expand(rng, 4, 10, n_inc)
    n = len(inc)
    ts = np.round(
        t0[inc] + _cumsum_by(inc, np.where(pos == 0, 0.0, rng.uniform(300, 2_400, n)), n_inc), 3
    )
    # Distinct merchants within an incident: a random permutation of the ring's merchants.
    ring = w.ring
    perm = np.argsort(rng.random((n_inc, len(ring))), axis=1)
    merchant = ring[perm[inc, np.minimum(pos, len(ring) - 1)]]
    # Moderate amounts: around twice the card's median, never a spike.
    amount = np.exp(w.mu[victim[inc]]) * rng.uniform(0.8, 2.5, n)
    return _fraud_events(
        rng,
        w,
        _RING,
        inc,
        ts,
        victim[inc],
        merchant,
        amount,
        ring_dev[pick][inc],
        ring_ip[pick][inc],
        n_inc,
    )


def _empty() -> _Events:
    z = np.zeros(0)
    zi = np.zeros(0, np.int64)
    return _Events(z, zi, zi, z, zi, zi, np.zeros(0, np.int8), z, np.zeros(0, np.int8))


def simulate(
    *,
    days: int = 60,
    seed: int = 0,
    cards: int = 20_000,
    merchants: int = 2_000,
    drift_day: int | None = 30,
    start: str = "2026-01-01T00:00:00",
    timezone: str = "Asia/Seoul",
    progress: Progress | None = None,
    id_prefix: str = "t",
) -> Simulation:
    """Simulate a card-payment stream with fraud, delayed labels and a scheduled drift.

    Parameters
    ----------
    days : int
        Length of the stream in local calendar days.
    seed : int
        Same seed, same arguments: identical output.
    cards, merchants : int
        Portfolio size (about ``cards`` transactions a day).
    drift_day : int or None
        Day (0-based) from which the fraud ring replaces the older scenarios; None: no drift.
    start : str
        First local midnight in ``timezone``: ISO 8601 without offset (read in ``timezone``),
        with one, or epoch seconds. Anything but a local midnight raises ConfigError.
    timezone : str
        IANA zone whose local hours drive activity (day/night).
    progress : callable, optional
        Called with a short message at each stage.
    id_prefix : str
        Transaction ids are this and a number from 0 (``t0000000``): a second stream into the
        same topics (a continuation with a later ``start``) needs another, ids being unique
        (one not ending in a digit: ``t1`` and ``t`` past 10 million ids meet).

    Returns
    -------
    Simulation

    Examples
    --------
    >>> sim = simulate(days=2, cards=300, merchants=150, seed=7, drift_day=None)
    >>> len(sim.transactions) > 300, len({t["tx_id"] for t in sim.transactions}) == len(
    ...     sim.transactions)
    (True, True)
    """
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    if cards < 1:
        raise ConfigError(f"cards must be at least 1, got {cards}")
    if merchants < MIN_MERCHANTS:
        raise ConfigError(f"merchants must be at least {MIN_MERCHANTS}, got {merchants}")
    if drift_day is not None and drift_day < 0:
        raise ConfigError(f"drift_day must be >= 0 (or None for no drift), got {drift_day}")
    say = progress or (lambda _msg: None)
    t_start = parse_ts(start, get_zone(timezone))
    clock = _Clock(t_start, days, timezone)
    r_world, r_legit, r_ct, r_ato, r_comp, r_ring = _rngs(seed, 6)
    say("building cards and merchants")
    w = _World(r_world, cards, merchants, days)
    say("generating legitimate payments")
    legit = _legit(r_legit, w, clock)
    say("generating fraud scenarios")
    frauds = [
        _card_testing(r_ct, w, clock, drift_day),
        _account_takeover(r_ato, w, clock, drift_day),
        _compromised_merchant(r_comp, w, clock, drift_day, legit),
        _drift_ring(r_ring, w, clock, drift_day),
    ]
    ev = _Events.concat([legit, *frauds])
    keep = (ev.ts >= clock.start) & (ev.ts < clock.end)
    order = np.flatnonzero(keep)[np.argsort(ev.ts[keep], kind="stable")]
    say(f"materialising {len(order):,} transactions")
    drift_ts = (
        float(clock.midnight[drift_day]) if drift_day is not None and drift_day < days else None
    )
    return _materialise(w, ev, order, clock, drift_ts, id_prefix)


def _materialise(
    w: _World,
    ev: _Events,
    order: np.ndarray,
    clock: _Clock,
    drift_ts: float | None,
    id_prefix: str,
) -> Simulation:
    n = len(order)
    tx_ids = _ids(id_prefix, n)
    card = ev.card[order]
    merchant = ev.merchant[order]
    ip_strs, ip_country = w.ip_tables()
    countries = np.array(_COUNTRIES, dtype=object)
    ip = ev.ip[order]
    online = ip >= 0
    ctry_idx = np.where(online, ip_country[np.maximum(ip, 0)], w.m_country[merchant])

    card_s = np.array([f"c{i:07d}" for i in range(w.n)], dtype=object)[card].tolist()
    cust_s = np.array([f"u{i:07d}" for i in range(w.n)], dtype=object)[w.customer[card]].tolist()
    nm = len(w.m_country)
    merch_s = np.array([f"m{i:05d}" for i in range(nm)], dtype=object)[merchant].tolist()
    mcc_s = np.array(_MCC_CODES, dtype=object)[w.m_mcc[merchant]].tolist()
    ctry_s = countries[ctry_idx].tolist()
    amount = np.maximum(np.round(ev.amount[order], -1), 100).astype(np.int64).tolist()
    ts = ev.ts[order].tolist()
    dev = ev.device[order]
    dev_s = np.array([f"d{i:07d}" for i in range(w.n_devices)], dtype=object)
    dev_a = dev_s[np.maximum(dev, 0)]
    dev_a[~online] = None
    ip_a = np.array(ip_strs, dtype=object)[np.maximum(ip, 0)]
    ip_a[~online] = None
    dev_l, ip_l = dev_a.tolist(), ip_a.tolist()
    lat_l = w.m_lat[merchant].tolist()
    lon_l = w.m_lon[merchant].tolist()

    # One comprehension (not a loop with append): the hottest part of the simulator.
    txs: list[dict[str, Any]] = [
        {
            "tx_id": i,
            "ts": t,
            "card_id": c,
            "customer_id": u,
            "amount": a,
            "currency": "KRW",
            "merchant_id": m,
            "mcc": k,
            "country": co,
            "channel": "pos",
            "lat": la,
            "lon": lo,
        }
        if d is None
        else {
            "tx_id": i,
            "ts": t,
            "card_id": c,
            "customer_id": u,
            "amount": a,
            "currency": "KRW",
            "merchant_id": m,
            "mcc": k,
            "country": co,
            "channel": "online",
            "device_id": d,
            "ip": p,
        }
        for i, t, c, u, a, m, k, co, d, p, la, lo in zip(
            tx_ids,
            ts,
            card_s,
            cust_s,
            amount,
            merch_s,
            mcc_s,
            ctry_s,
            dev_l,
            ip_l,
            lat_l,
            lon_l,
            strict=True,
        )
    ]

    fraud_rows = np.flatnonzero(ev.scenario[order] > 0)
    lts = ev.label_ts[order][fraud_rows]
    lorder = fraud_rows[np.argsort(lts, kind="stable")]
    src = ev.source[order]
    scen = ev.scenario[order]
    labels = [
        {"tx_id": tx_ids[r], "ts": t, "is_fraud": True, "source": _SOURCES[s]}
        for r, t, s in zip(
            lorder.tolist(), ev.label_ts[order][lorder].tolist(), src[lorder].tolist(), strict=True
        )
    ]
    scenarios = {
        tx_ids[r]: SCENARIOS[s]
        for r, s in zip(fraud_rows.tolist(), scen[fraud_rows].tolist(), strict=True)
    }
    return Simulation(txs, labels, scenarios, clock.start, clock.end, drift_ts)


def _ids(prefix: str, n: int) -> list[str]:
    """``prefix`` + zero-padded numbers 0..n-1 (at least 7 digits), built from 4-digit blocks:
    string concatenation is about three times faster than formatting each number.

    >>> _ids("t", 3)
    ['t0000000', 't0000001', 't0000002']
    """
    width = max(len(str(max(n - 1, 0))), 7)
    low = [f"{j:04d}" for j in range(10_000)]
    out: list[str] = []
    for hi in range(0, (n + 9_999) // 10_000):
        head = f"{prefix}{hi:0{width - 4}d}"
        out.extend([head + x for x in low])
    del out[n:]
    return out


# Names the file readers (fds.streams.files) read as JSON Lines, each optionally ``.gz``.
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def check_out(out_path: str | Path) -> Path:
    """``out_path`` as a Path, if its name says JSON Lines (what :func:`write` writes).

    >>> check_out("data/sim.jsonl.gz").name
    'sim.jsonl.gz'
    >>> check_out("sim.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fds.errors.ConfigError: cannot write sim.csv: the simulator writes JSON Lines, so name it ...
    >>> check_out("sim.labels.jsonl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fds.errors.ConfigError: cannot write sim.labels.jsonl: a name ending in .labels... is where ...
    """
    p = Path(out_path)
    name = p.name.removesuffix(".gz")
    if not name.endswith(_JSONL_SUFFIXES):
        raise ConfigError(
            f"cannot write {p}: the simulator writes JSON Lines, so name it .jsonl or .jsonl.gz"
        )
    if name.removesuffix(Path(name).suffix).endswith(".labels"):  # (it overwrote the labels
        raise ConfigError(  # of an earlier run with transactions, a review found)
            f"cannot write {p}: a name ending in .labels{Path(name).suffix} is where the labels "
            "of another file's transactions go; name the transactions file otherwise"
        )
    return p


def labels_path(out_path: str | Path) -> Path:
    """Where :func:`write` puts the labels for transactions written to ``out_path``.

    >>> str(labels_path("data/sim.jsonl")), str(labels_path("sim.jsonl.gz"))
    ('data/sim.labels.jsonl', 'sim.labels.jsonl.gz')
    >>> str(labels_path("sim.ndjson"))  # (not sim.jsonl's labels: a QA pass)
    'sim.labels.ndjson'
    """
    p = Path(out_path)
    gz = p.name.endswith(".gz")
    stem, own = p.name[:-3] if gz else p.name, ".jsonl"
    for suffix in _JSONL_SUFFIXES:
        if stem.endswith(suffix):  # its own suffix (sim.ndjson's labels overwrote sim.jsonl's,
            stem, own = stem[: -len(suffix)], suffix  # and a replay of one took the other
            break  # stream's labels without a word: a QA pass)
    return p.with_name(stem + ".labels" + own + (".gz" if gz else ""))


def labels_beside(path: str | Path) -> Path | None:
    """The labels file :func:`write` put beside transactions ``path``, if there is one; for a
    ``.ndjson``/``.json`` file an earlier release wrote, its ``.labels.jsonl`` when no
    ``.jsonl`` file of the same stem owns that name (a review: such a pair lost its labels)."""
    guess = labels_path(path)
    if guess.is_file():
        return guess
    p = Path(path)
    gz = ".gz" if p.name.endswith(".gz") else ""
    name = p.name.removesuffix(gz)
    for suffix in (".ndjson", ".json"):
        stem = name.removesuffix(suffix)
        if stem != name:
            legacy = p.with_name(f"{stem}.labels.jsonl{gz}")
            owner = p.with_name(f"{stem}.jsonl{gz}")
            return legacy if legacy.is_file() and not owner.exists() else None
    return None


# gzip level 1: about 3x faster than level 6 on this JSON, for files ~25% larger.
_GZIP_LEVEL = 1
# Records per orjson batch written at once: large enough to amortise the write call.
_CHUNK = 50_000


def _write_jsonl(
    rows: list[dict[str, Any]], path: Path, on_rows: Callable[[int], None] | None
) -> None:
    dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        # mtime=0 and no file name in the header: the same stream gives byte-identical files.
        f: io.BufferedIOBase | gzip.GzipFile = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL)
            if path.name.endswith(".gz")
            else raw
        )
        try:
            for i in range(0, len(rows), _CHUNK):
                chunk = rows[i : i + _CHUNK]
                f.write(b"".join([dumps(r, option=opt) for r in chunk]))
                if on_rows:
                    on_rows(len(chunk))
        finally:
            if f is not raw:
                f.close()


def write(
    sim: Simulation, out_path: str | Path, on_rows: Callable[[int], None] | None = None
) -> tuple[Path, Path]:
    """Write transactions to ``out_path`` and labels beside it (see :func:`labels_path`).

    JSON Lines, gzip-compressed when the name ends in ``.gz``; returns both paths.
    ``on_rows(n)`` is called after each batch of ``n`` records (for a progress bar). An
    interrupted write leaves the previous files as they were.

    >>> import tempfile, os
    >>> sim = simulate(days=1, cards=100, merchants=120, seed=3)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     tx, lab = write(sim, os.path.join(d, "s.jsonl"))
    ...     sum(1 for _ in open(tx)) == len(sim.transactions), lab.name
    (True, 's.labels.jsonl')
    """
    out = check_out(out_path)
    lab = labels_path(out)
    # A link is written through: the file it names is replaced (the link was, its file left
    # with the old stream: a QA pass).
    to_tx, to_lab = (p.resolve() if p.is_symlink() else p for p in (out, lab))
    # Temporary names in the same directory (ending like the real ones, for the .gz test).
    tmp_tx, tmp_lab = (p.with_name(f".tmp{os.getpid()}.{p.name}") for p in (to_tx, to_lab))
    try:
        _write_jsonl(sim.transactions, tmp_tx, on_rows)
        _write_jsonl(sim.labels, tmp_lab, on_rows)
        # Order matters: tx ids repeat across runs, so old labels must never sit beside new
        # transactions. Remove them first; an interruption between these steps leaves
        # transactions without labels, not mislabelled ones.
        to_lab.unlink(missing_ok=True)
        os.replace(tmp_tx, to_tx)
        os.replace(tmp_lab, to_lab)
    finally:
        tmp_tx.unlink(missing_ok=True)
        tmp_lab.unlink(missing_ok=True)
    return out, lab


def summarize(sim: Simulation) -> dict[str, Any]:
    """Counts, fraud rate, per-scenario counts and label-delay quantiles (days).

    >>> s = summarize(simulate(days=2, cards=200, merchants=120, seed=2))
    >>> sorted(s)[:4]
    ['cards', 'days', 'delay_days', 'fraud_rate']
    """
    tx_ts = {t["tx_id"]: t["ts"] for t in sim.transactions if t["tx_id"] in sim.scenarios}
    delays = np.array([(lab["ts"] - tx_ts[lab["tx_id"]]) / _DAY for lab in sim.labels])
    n = len(sim.transactions)
    per: dict[str, int] = {}
    for s in sim.scenarios.values():
        per[s] = per.get(s, 0) + 1
    q = {
        f"p{p}": round(float(np.percentile(delays, p)), 2) if len(delays) else None
        for p in (10, 50, 90)
    }
    return {
        "transactions": n,
        "frauds": len(sim.scenarios),
        "fraud_rate": len(sim.scenarios) / n if n else 0.0,
        "labels": len(sim.labels),
        "cards": len({t["card_id"] for t in sim.transactions}),
        "days": round((sim.end - sim.start) / _DAY, 2),
        "scenarios": dict(sorted(per.items())),
        "delay_days": q,
        "short_label_share": float((delays <= 3.5).mean()) if len(delays) else 0.0,
        "long_label_share": float((delays >= 7.0).mean()) if len(delays) else 0.0,
    }
