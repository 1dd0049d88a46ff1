"""Feature declarations -> a compiled layout (validated once, at load time).

Any object with the attributes ``name, entity, agg, field, window`` is a declaration
(``fds.rules.ruleset.FeatureSpec`` is the usual one; tests use a small dataclass).

The layout groups declarations by entity: one state per entity value holds one shared event log
(timestamps plus the value columns the group needs) and, per distinct window, a head index
into that log plus what its aggregates need (running sums, min/max candidate lists, value
counters, the known-fraud count). Ten aggregates over one entity and window therefore
share one structure, and two windows of one entity share one log.

>>> from types import SimpleNamespace as S
>>> layout = compile_specs([
...     S(name="c_n_1h", entity="card_id", agg="count", field=None, window="1h"),
...     S(name="c_sum_1h", entity="card_id", agg="sum", field="amount", window="60m"),
... ])
>>> [(g.entity, [w.seconds for w in g.windows]) for g in layout.groups]
[('card_id', [3600.0])]
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from fds.errors import ConfigError
from fds.timeutil import parse_duration, unitless

__all__ = [
    "AGGS",
    "CALENDAR_DAY",
    "DEFAULT_GRACE",
    "FIELD_AGGS",
    "RESERVED",
    "CompiledFeature",
    "Group",
    "Layout",
    "WindowDef",
    "as_read",
    "compile_specs",
    "extra_key",
    "grace_seconds",
    "reserved",
    "window_seconds",
]

AGGS = (
    "count", "sum", "mean", "min", "max", "std", "distinct", "seen", "last_gap",
    "fraud_count", "fraud_rate",
)  # fmt: skip
#: Aggregates that read a value ``field`` of the transaction.
FIELD_AGGS = frozenset({"sum", "mean", "min", "max", "std", "distinct", "seen"})
#: Aggregates over a numeric field (running sums / candidate lists).
NUM_AGGS = frozenset({"sum", "mean", "min", "max", "std"})
#: Aggregates over a categorical field (value counters).
CAT_AGGS = frozenset({"distinct", "seen"})
CALENDAR_DAY = "calendar_day"
# Retention for calendar windows: longer than any local day. A DST fall-back day lasts 25 h,
# but Antarctica/Troll has 26-hour days and Antarctica/Casey had 27-hour ones (25 h trimmed a
# day's first entries while the day still counted them: a review found it); 48 h leaves room
# for any offset change of up to a day.
CALENDAR_DAY_MAX_SECONDS = 48 * 3600.0


@dataclass(slots=True)
class WindowDef:
    """One distinct window of a group: ``seconds`` (sliding) or ``None`` (calendar day)."""

    seconds: float | None
    # (field index, "min"|"max") -> index into the state's candidate lists
    mono: dict[tuple[int, str], int] = field(default_factory=dict)
    # categorical field index -> index into the state's counters
    counters: dict[int, int] = field(default_factory=dict)
    fraud: int = -1  # index into the state's known-fraud counts, -1 if unused
    # numeric field index -> whether its running sum of squares is needed (std), for the
    # fields whose sum/mean/std this window reports
    sums: dict[int, bool] = field(default_factory=dict)

    @property
    def retention(self) -> float:
        return CALENDAR_DAY_MAX_SECONDS if self.seconds is None else self.seconds


@dataclass(slots=True)
class CompiledFeature:
    """One output: ``name`` computed as ``agg`` over window ``win`` (field index ``fi``)."""

    name: str
    agg: str
    win: int
    fi: int = -1  # numeric or categorical field index, -1 if the agg has no field
    slot: int = -1  # candidate list / counter / fraud index for the agg


@dataclass(slots=True)
class Group:
    """All declarations over one entity (``card_id``, ``merchant_id``, ``extra.shop`` ...)."""

    entity: str
    windows: list[WindowDef] = field(default_factory=list)
    num_fields: list[str] = field(default_factory=list)
    num_sums: list[bool] = field(default_factory=list)  # field has a sum/mean/std somewhere
    cat_fields: list[str] = field(default_factory=list)
    features: list[CompiledFeature] = field(default_factory=list)
    n_mono: int = 0
    n_counters: int = 0
    n_fraud: int = 0

    @property
    def longest(self) -> float:
        """Seconds of history the group needs (its longest window)."""
        return max(w.retention for w in self.windows)

    @property
    def has_fraud(self) -> bool:
        return self.n_fraud > 0


@dataclass(slots=True)
class Layout:
    """The compiled declarations: groups in first-declared order and the output names."""

    groups: list[Group]
    names: list[str]

    @property
    def fingerprint(self) -> str:
        """A stable description of the layout; a checkpoint only restores into the same one."""
        parts = []
        for g in self.groups:
            for f in g.features:
                w = g.windows[f.win].seconds
                fld = (
                    g.num_fields[f.fi]
                    if f.agg in NUM_AGGS
                    else (g.cat_fields[f.fi] if f.agg in CAT_AGGS else "")
                )
                parts.append(f"{f.name}={g.entity}:{f.agg}:{fld}:{w}")
        return ";".join(parts)


def window_seconds(window: Any, where: str) -> float | None:
    """A declared window in seconds (``None``: ``calendar_day``); a number is seconds. What is
    no window, or not a finite one of at least 1 ms, is a ConfigError starting with ``where``
    (a window of 400 nines of days passed a check, then every transaction was a dead letter).

    >>> window_seconds("10m", "f"), window_seconds(90, "f"), window_seconds("calendar_day", "f")
    (600.0, 90.0, None)
    """
    written = window
    if isinstance(window, int | float) and not isinstance(window, bool):
        window = f"{window}s"
    if window == CALENDAR_DAY:
        return None
    if not isinstance(window, str):
        raise ConfigError(f"{where}: window must be a duration like 10m or 'calendar_day'")
    try:
        seconds = parse_duration(window)
    except ConfigError:
        seconds = math.nan
    if not MIN_WINDOW_S <= seconds < math.inf:
        hint = unitless(window)  # (`"7"`: a bare 7 is seconds, a QA pass)
        raise ConfigError(
            f"{where}: bad window {written!r}: "
            + (
                hint
                if hint and float(window) >= MIN_WINDOW_S
                else "write a duration of at least 1ms, a number and a unit (90s, 10m, 1.5h, "
                "7d), or calendar_day"
            )
        )
    if seconds > MAX_WINDOW_S:
        raise ConfigError(
            f"{where}: window {written!r} is longer than 3 years (1096d): each entity keeps "
            "every event of its longest window; a typo? write at most 1096d"
        )
    return seconds


#: The shortest window: below it the window's start is its end in a float timestamp of today
#: (`t - 1e-7 == t`), and a transaction of the same time was out of it (a QA pass).
MIN_WINDOW_S = 0.001
#: The longest window, and grace period: each entity keeps its events that long, and nothing
#: idle is ever evicted under a window of 1.9 billion years (passed unsaid: a QA pass).
MAX_WINDOW_S = 1096 * 86400.0
MAX_GRACE_S = 7 * 86400.0


#: How late (behind the largest event time seen) an event may be and still be folded in
#: exactly, when the rules file gives no ``grace``: five minutes covers the clock skew of
#: producers and the interleaving of a topic's partitions, at the cost of keeping five more
#: minutes of log per entity.
DEFAULT_GRACE = "5m"


def grace_seconds(grace: Any) -> float:
    """A grace period in seconds: a duration of 0 or more (``5m``, ``90s``, ``1h``; a number is
    seconds). What is no duration, negative or infinite is a ConfigError that says what to write.

    >>> grace_seconds("5m"), grace_seconds("90s"), grace_seconds(0)
    (300.0, 90.0, 0.0)
    """
    seconds = math.nan
    if isinstance(grace, str | int | float) and not isinstance(grace, bool):
        with contextlib.suppress(ConfigError):  # (said below, with the grace's own words)
            seconds = parse_duration(grace)
    if MAX_GRACE_S < seconds < math.inf:
        raise ConfigError(
            f"bad grace {grace!r}: longer than 7 days (every entity keeps its events for the "
            "grace and its longest window; events later than a week are a replay's, not a "
            "late feed's): write at most 7d, e.g. grace: 10m"
        )
    if not 0 <= seconds < math.inf:
        if grace is None or isinstance(grace, bool):  # (as YAML wrote it: empty, true)
            shown = "empty" if grace is None else str(grace).lower()
        else:
            shown = repr(grace)
        hint = unitless(grace) if isinstance(grace, str) else None
        raise ConfigError(
            f"bad grace {shown}: {hint}"
            if hint
            else f"bad grace {shown}: write a duration of 0 or more, a number and a unit (90s, "
            "5m, 1h), e.g. grace: 10m"
        )
    return seconds


#: Why :func:`reserved` names are refused.
RESERVED = "names starting with '_' are kept for the engine (e.g. _flags): rename it"


def reserved(name: str) -> bool:
    """Is ``name`` kept for the engine (``_flags`` in a snapshot)?"""
    return name.startswith("_")


def entity_problem(entity: str) -> str | None:
    """Why ``entity`` cannot key a feature (one that differs for every transaction: each
    transaction its own entity, kept for the whole window, 378 B each, its count always 1: a
    QA pass), or ``None``."""
    if entity not in ("tx_id", "ts"):
        return None
    return (
        f"entity {entity} differs for every transaction: each would be an entity of its own, "
        "kept for the whole window, its count always 1; key it by what repeats (card_id, "
        "merchant_id, device_id, ip, customer_id, extra.NAME)"
    )


_EXTRA_KEY = re.compile(r"""extra\.(.+)|extra\[(?:'([^']+)'|"([^"]+)")\]""", re.DOTALL)


def extra_key(key: str) -> str | None:
    """The extra name ``key`` names as a rule reads it (``extra.vip``, ``extra['risk-score']``:
    that form was refused in a test's ``given``, a review), else None.

    >>> extra_key("extra['risk-score']"), extra_key("extra.vip"), extra_key("amount")
    ('risk-score', 'vip', None)
    """
    m = _EXTRA_KEY.fullmatch(key)
    return None if m is None else next(g for g in m.groups() if g is not None)


def as_read(v: Any) -> Any:
    """An ``entity`` or ``field`` written as a rule reads it, ``extra['fee amt']``, as the plan
    reads it, ``extra.fee amt``; anything else as it is.

    >>> as_read("extra['fee amt']"), as_read("extra.vip"), as_read("amount"), as_read(None)
    ('extra.fee amt', 'extra.vip', 'amount', None)
    """
    name = extra_key(v) if isinstance(v, str) else None
    return v if name is None else f"extra.{name}"


def _as_read(spec: Any) -> Any:
    """``spec`` with its ``entity`` and ``field`` :func:`as_read` (a declaration other than
    the rules file's read ``extra['x']`` as a top-level field of that name, always missing: a
    QA pass)."""
    names = {a: as_read(getattr(spec, a, None)) for a in ("entity", "field")}
    if all(names[a] == getattr(spec, a, None) for a in names):
        return spec
    fields = {k: getattr(spec, k, None) for k in ("name", "entity", "agg", "field", "window")}
    return SimpleNamespace(**(fields | names))


def _validate(spec: Any, i: int, seen: set[str]) -> None:
    for attr in ("name", "entity", "agg", "field", "window"):
        if not hasattr(spec, attr):
            raise ConfigError(f"feature #{i + 1}: missing attribute {attr!r}")
    where = f"feature {spec.name!r}"
    if not isinstance(spec.name, str) or not spec.name:
        raise ConfigError(f"feature #{i + 1}: name must be a non-empty string")
    if spec.name in seen:
        raise ConfigError(f"{where}: declared twice; give each feature a unique name")
    if reserved(spec.name):
        raise ConfigError(f"{where}: {RESERVED}")
    seen.add(spec.name)
    if not isinstance(spec.entity, str) or not spec.entity:
        raise ConfigError(f"{where}: entity must be a transaction field such as card_id")
    if why := entity_problem(spec.entity):
        raise ConfigError(f"{where}: {why}")
    if spec.agg not in AGGS:
        raise ConfigError(f"{where}: unknown agg {spec.agg!r}; use one of {', '.join(AGGS)}")
    if spec.agg in FIELD_AGGS and not spec.field:
        raise ConfigError(f"{where}: agg {spec.agg!r} needs a field, e.g. field: amount")
    if spec.field is not None and not isinstance(spec.field, str):
        raise ConfigError(f"{where}: field must be a transaction field name")


def compile_specs(specs: Sequence[Any]) -> Layout:
    """Validate declarations and lay out the shared state (see the module docstring).

    Raises :class:`fds.errors.ConfigError` naming the feature and the fix.
    """
    groups: dict[str, Group] = {}
    names: list[str] = []
    seen: set[str] = set()
    for i, spec in enumerate(map(_as_read, specs)):
        _validate(spec, i, seen)
        seconds = window_seconds(spec.window, f"feature {spec.name!r}")
        g = groups.get(spec.entity)
        if g is None:
            g = groups[spec.entity] = Group(entity=spec.entity)
        wi = next((k for k, w in enumerate(g.windows) if w.seconds == seconds), -1)
        if wi < 0:
            wi = len(g.windows)
            g.windows.append(WindowDef(seconds=seconds))
        win = g.windows[wi]
        agg = spec.agg
        feat = CompiledFeature(name=spec.name, agg=agg, win=wi)
        if agg in NUM_AGGS:
            if spec.field not in g.num_fields:
                g.num_fields.append(spec.field)
                g.num_sums.append(False)
            feat.fi = g.num_fields.index(spec.field)
            if agg in ("sum", "mean", "std"):
                g.num_sums[feat.fi] = True
                win.sums[feat.fi] = win.sums.get(feat.fi, False) or agg == "std"
            if agg in ("min", "max"):
                key = (feat.fi, agg)
                if key not in win.mono:
                    win.mono[key] = g.n_mono
                    g.n_mono += 1
                feat.slot = win.mono[key]
        elif agg in CAT_AGGS:
            if spec.field not in g.cat_fields:
                g.cat_fields.append(spec.field)
            feat.fi = g.cat_fields.index(spec.field)
            if feat.fi not in win.counters:
                win.counters[feat.fi] = g.n_counters
                g.n_counters += 1
            feat.slot = win.counters[feat.fi]
        elif agg in ("fraud_count", "fraud_rate"):
            if win.fraud < 0:
                win.fraud = g.n_fraud
                g.n_fraud += 1
            feat.slot = win.fraud
        g.features.append(feat)
        names.append(spec.name)
    return Layout(groups=list(groups.values()), names=names)
