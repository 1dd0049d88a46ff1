"""Generate the hot path: one straight-line Python function for all entity groups.

The plan is compiled once into source text with every window and aggregate unrolled (no loop
over declarations, no dispatch on the aggregate name, no tuple unpacking per event), then
``exec``-ed in a namespace holding only the helpers it calls. Only numbers and ``repr``-ed
names from validated declarations are interpolated, never rule text.

Each entity's state is one flat list (:func:`assign_slots`). A group's body (:func:`_body`)
folds an in-order event (``t`` >= every timestamp in the entity's log) into the state ``st``
and assigns the group's features to locals. Its order matters, per window: expire (a window
whose every earlier entry left is emptied in O(1)) and add the new value to the running sums,
answer ``seen`` (earlier transactions only) from a counter, or the window's column while it is
short (:func:`tally`), or for a ``seen``-only window longer than its field's column from the
column and the field's last-seen table (:func:`_last_seen`, :func:`_fold`), before the new
entry is counted,
add it to the min/max candidates, then read the window aggregates. Every path assigns every
feature (``None`` where it has none), and each state part a window uses is read from ``st``
once (counters, candidates; sums held in locals while entries leave). :func:`build_fused`
inlines every group's body into one ``run(tx, t, wm) -> snapshot`` (what the plan calls per
event; its source is kept on the plan as ``source`` for inspection). With provenance
(``cg.prov``) the event's input partition is read once (``_PROV.part``), logged by every group
and handed to the ``tx_id`` store with the transaction; without, the code does not mention it.
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable
from operator import itemgetter
from typing import Any

from fds.features.shards import Shards, shard_of

__all__ = [
    "KEY", "LARGE", "SMALL", "TS", "assign_slots", "build_fused", "build_new_state", "cat",
    "finite", "num", "tally",
]  # fmt: skip

NAN = math.nan
_TIME = itemgetter(1)  # (of a (value, time) item of a last-seen table)
# Fixed positions in every flat entity state (see assign_slots).
KEY, TS = 0, 1
# A column kept shorter than the log is cut once more than this many of its values (and a
# 16th of it) are past the horizon no window reads behind (a call every few events, not each).
_CUT_SLACK = 8

#: A window's value counter (``distinct``, ``seen``) is a dict of counts only while the window
#: holds more than ``LARGE`` entries, and until it holds fewer than ``SMALL``; otherwise it is
#: the number of distinct values in it (0 where only ``seen`` reads it), kept by scanning the
#: window's column (a few dozen pointers, compared by identity first). The two counters of the
#: default set's card were two dicts, 380 of its 2,061 bytes at simulator rates
#: (benchmarks/results/features.md).
LARGE = 64
SMALL = 32


def tally(vals: list[Any], distinct: bool = True) -> dict[Any, int] | int:
    """A window's value counter for the categorical values ``vals`` it holds (``None``:
    missing, not counted): a dict of counts when there are more than :data:`LARGE`, else the
    number of distinct values (0 where no ``distinct`` reads it).

    >>> tally(["a", "b", "a", None]), tally(["a"] * 65)
    (2, {'a': 65})
    """
    if len(vals) > LARGE:
        c: dict[Any, int] = {}
        for v in vals:
            if v is not None:
                c[v] = c.get(v, 0) + 1
        return c
    if not distinct:
        return 0
    return len(set(vals)) - (None in vals)


#: A numeric field value of this magnitude or more is missing: its square overflowed the
#: running sums (two amounts of 1e308 made a card's mean and spend None for 30 days and its
#: later payments dead letters, "intermediate overflow in fsum": a QA pass).
BIG = 1e100


def finite(x: Any) -> float:
    """A value as a finite float, as a rule reads a number (a CSV file's text included); NaN
    (missing) when absent, not a number, true/false or not finite.

    >>> finite("12.5"), finite(None), finite(True), finite("1e999"), finite(10**400)
    (12.5, nan, nan, nan, nan)
    >>> finite("1e200")  # (features refuse it, see num; a rule reads it as JSON's 1e200)
    1e+200
    >>> finite("1_000")  # (Python's syntax, no number in a file: read as 1000, a QA pass)
    nan
    """
    if x is None or x.__class__ is bool or (x.__class__ is str and "_" in x):
        return NAN
    try:
        x = float(x)
    except (TypeError, ValueError, OverflowError):
        return NAN
    return x if x - x == 0.0 else NAN


def num(x: Any) -> float:
    """A numeric field value as float: :func:`finite`, and NaN (missing) too from magnitude
    :data:`BIG` on (an infinite value would turn every running sum of its window into NaN for
    good; a square of one of BIG's overflows them).

    >>> num("12.5"), num(None), num(True), num("1e999"), num(10**400), num(1e308)
    (12.5, nan, nan, nan, nan, nan)
    """
    x = finite(x)
    return x if -BIG < x < BIG else NAN


def cat(v: Any) -> Any:
    """A categorical or entity value as the state holds it: strings interned (the many copies
    of a country become one object in the logs; a value that is a group's entity is logged as
    that group's state key instead, :func:`_order`); ``None`` and NaN missing
    (``None``: NaN is not equal to itself, so a counter could not find it again after a
    restore); other hashable values as they are; an unhashable one (a list or an object in
    ``extra``) as its canonical JSON text.

    >>> cat(None), cat(float("nan")), cat(7), cat(["b", "a"]), cat({"y": 1, "x": 2})
    (None, None, 7, '["b", "a"]', '{"x": 2, "y": 1}')
    """
    if v.__class__ is str:
        return sys.intern(v)
    if v is None or v != v:
        return None
    try:
        hash(v)
    except TypeError:
        return sys.intern(json.dumps(v, sort_keys=True, default=str))
    return v


def _var(k: str, sub: str | None) -> str:
    """The local that :func:`_reads` binds to transaction field ``k`` (``extra.sub``) as an
    entity or categorical value (:func:`cat`); ``"n" + _var(...)`` holds it as a number."""
    if sub is None:  # a field name that is no identifier (``card-id``) is spelt in hex
        return f"f_{k}" if k.isidentifier() and k.isascii() else f"h_{k.encode().hex()}"
    return f"e_{len(sub)}_{sub.encode().hex()}"


def counted_entities(cgs: Any) -> dict[tuple[str, str | None], int]:
    """The categorical fields that are a group's entity, and that group's index: their values
    are logged as its state keys (:func:`_order`)."""
    entity = {(cg.ent, cg.ent_sub): gi for gi, cg in enumerate(cgs)}
    return {f: p for f, p in entity.items() if any(f in cg.cats for cg in cgs)}


def _order(cgs: Any) -> tuple[list[int], dict[tuple[str, str | None], int], set[int]]:
    """The order ``run`` folds the groups in, the categorical fields that are a group's entity
    (field -> that group), and those groups whose state is looked up before the others.

    Such a field (the card's merchants, the device's cards) takes that group's state key as
    its value (``st[0]``: one object per entity, held by the state already) rather than an
    interned copy (:func:`cat`): the interpreter's table of interned strings would hold every
    such value, and it grows in one call (at a million cards, 80-200 ms for one decision:
    ``benchmarks/results/state_resize.md``). That group is folded first where the
    declarations allow it, its key read as it finds the state; where two groups count each
    other's entity (the card its devices, the device its cards), the later one's state is
    looked up before the first is folded (``early``): its key when it has one, else the value
    as read, which becomes its key as it is folded."""
    counted = counted_entities(cgs)
    needs = [{counted[f] for f in cg.cats if counted.get(f, gi) != gi} for gi, cg in enumerate(cgs)]
    order: list[int] = []
    left = list(range(len(cgs)))
    while left:  # (first the first group whose providers went before; in a cycle, the first)
        gi = next((g for g in left if needs[g].issubset(order)), left[0])
        order.append(gi)
        left.remove(gi)
    at = {gi: i for i, gi in enumerate(order)}
    early = {
        p
        for f, p in counted.items()
        if any(at[gi] < at[p] for gi, cg in enumerate(cgs) if f in cg.cats)
    }
    return order, counted, early


def _reads(cgs: Any, keyed: Collection[tuple[str, str | None]]) -> list[str]:
    """Statements reading every field the groups use once, into locals named by :func:`_var`:
    numbers as :func:`num` (a float that is finite costs a subtraction), entity and
    categorical values as :func:`cat` (a string costs nothing more as an entity, an intern
    call as a categorical value; a categorical field in ``keyed`` is read as an entity, and
    replaced by its group's state key before any group counts it: :func:`_order`). No
    conversion can fail halfway through a state update."""
    fields: dict[tuple[str, str | None], set[str]] = {}  # field -> its roles
    for cg in cgs:
        fields.setdefault((cg.ent, cg.ent_sub), set()).add("entity")
        for key in cg.nums:
            fields.setdefault(key, set()).add("num")
        for key in cg.cats:
            fields.setdefault(key, set()).add("entity" if key in keyed else "cat")
    lines = []
    if any(sub is not None for _k, sub in fields):
        lines.append("extra = tx.get('extra') or _EMPTY")
    for (k, sub), roles in fields.items():
        var = _var(k, sub)
        lines.append(f"{var} = tx.get({k!r})" if sub is None else f"{var} = extra.get({sub!r})")
        if "num" in roles:
            lines += [
                f"n{var} = {var}",
                f"if n{var}.__class__ is not float or not -{BIG!r} < n{var} < {BIG!r}:",
                f"    n{var} = _num(n{var})",
            ]
        if "cat" in roles:
            lines += [
                f"if {var}.__class__ is str:",
                f"    {var} = _intern({var})",
                f"elif {var} is not None:",
                f"    {var} = _cat({var})",
            ]
        elif "entity" in roles:
            lines += [f"if {var}.__class__ is not str and {var} is not None:",
                      f"    {var} = _cat({var})"]  # fmt: skip
    return lines


def _at(typed: bool) -> Callable[[str, str], str]:
    """How the generated code reads item ``i`` of an array of doubles ``a``: ``a[i]``, or in
    a typed kernel (:func:`_declarations`) ``_double_at(a, i)``, which reads the array's
    memory (no float object made per read) after one bounds check (IndexError, as ``a[i]``
    raises past the end; a negative index, which ``a[i]`` counts from the end, too: only a
    damaged state holds one): see :func:`fds.features.kernel.module_source`."""
    if typed:
        return lambda a, i: f"_double_at({a}, {i})"
    return lambda a, i: f"{a}[{i}]"


def _body(cg: Any, var: dict[str, str], typed: bool = False) -> list[str]:
    """The statements folding an in-order event into ``st`` (see the module docstring),
    indented by 4 as if in a function body; ``t`` and ``T`` the event time (as given, and as
    a number: :func:`_fused`), ``ts``, ``idx`` and ``prev`` the log
    (``st[1]``), its length and its newest time (``-inf`` if empty), ``part``
    the event's input partition (read only with provenance). Feature ``name`` is assigned to
    the local ``var[name]``. ``typed``: the statements of a typed kernel (:func:`_at`)."""
    lines: list[str] = []
    a = lines.append
    at = _at(typed)
    a("    ts.append(t)")
    squared = {fi for sums in cg.i_sum for fi, _s1, s2, _n in sums if s2 >= 0}
    moments = [  # (window, field, agg, name) of every sum/mean/std: computed again if rebased
        (wi, fi, agg, name) for wi, *_w, feats, _lasts in cg.windows
        for agg, name, fi, _slot in feats if agg in ("sum", "mean", "std")
    ]  # fmt: skip
    summed = sorted({fi for _wi, fi, _agg, _name in moments})
    for fi in summed:
        a(f"    rb{fi} = 0")
    # the event's values: the locals _reads bound (numbers as n<var>), never assigned here
    xv = [f"n{_var(k, sub)}" for k, sub in cg.nums]
    cv = [_var(k, sub) for k, sub in cg.cats]
    # a numeric column kept shorter than the log is read at log position h as num[h - no]
    nof = {fi: f" - no{fi}" if cg.i_noff[fi] >= 0 else "" for fi in range(len(cg.nums))}
    for fi in range(len(cg.nums)):
        a(f"    num{fi} = st[{cg.i_num[fi]}]")
        if cg.i_noff[fi] >= 0:
            a(f"    no{fi} = st[{cg.i_noff[fi]}]")
        a(f"    num{fi}.append({xv[fi]})")
        if cg.sums[fi]:  # the new value's deviation from the entity's shift (0 when missing)
            a(f"    k{fi} = st[{cg.i_shift[fi]}]")
            a(f"    kk{fi} = k{fi} * k{fi}")
            a(f"    if {xv[fi]} == {xv[fi]}:")
            a(f"        d{fi} = {xv[fi]} - k{fi}")
            if fi in squared:
                a(f"        dd{fi} = d{fi} * d{fi}")
            a(f"        o{fi} = 1")
            if fi in summed:  # a value far below the shift: deviations round it away
                a(f"        if kk{fi} > {_DRIFT2!r} * {xv[fi]} * {xv[fi]}:")
                a(f"            rb{fi} = -1")
            a("    else:")
            a(f"        d{fi} = 0.0")
            if fi in squared:
                a(f"        dd{fi} = 0.0")
            a(f"        o{fi} = 0")
    for ci in range(len(cg.cats)):
        a(f"    cat{ci} = st[{cg.i_cat[ci]}]")
        if cg.i_coff[ci] >= 0:
            a(f"    co{ci} = st[{cg.i_coff[ci]}]")
        a(f"    cat{ci}.append({cv[ci]})")
    if cg.fraud:
        a(f"    flags = st[{cg.i_flags}]")
        a("    flags.append(0)")
    if cg.i_part >= 0:
        a(f"    st[{cg.i_part}].append(part)")
    for wi, width, per_entry, mono, ctrs, fslot, feats, lasts in cg.windows:
        sums = cg.i_sum[wi]
        a(f"    # window {wi}: {'calendar day' if width is None else f'{width:g} s'}")
        if width is not None:
            a(f"    cut = T - {width!r}")
        else:  # the clock's cached day (start, end, cutoff); a call only on a new day
            a("    lo, hi, cut = _DAY")
            a("    if not lo <= T < hi:")
            a("        cut = _cutoff(t)")
        a(f"    h = st[{cg.i_head[wi]}]")
        # the window's counters (c<slot>) and min/max candidates (mn<slot>), read once
        for slot, _ci in ctrs:
            a(f"    c{slot} = st[{cg.i_ctr[slot]}]")
        for slot, _fi, _mx in mono:
            a(f"    mn{slot} = st[{cg.i_mono[slot]}]")
        add = _adds(sums)  # (each path of the head's test ends adding the new value)
        # every earlier entry left the window: empty it in O(1) (sums back to exact zeros,
        # the new value added to them: 0.0 + d, as if stored and read back)
        a("    if prev <= cut:")
        a("        if h < idx:")
        a(f"            h = st[{cg.i_head[wi]}] = idx")
        for slot, _ci in ctrs:
            a(f"            c{slot} = 0")
        if fslot >= 0:
            a(f"            st[{cg.i_nf[fslot]}] = 0")
        for fi, i1, i2, i_n in sums:
            a(f"            s{fi} = st[{i1}] = 0.0 + d{fi}")
            if i2 >= 0:
                a(f"            q{fi} = st[{i2}] = 0.0 + dd{fi}")
            a(f"            m{fi} = st[{i_n}] = o{fi}")
        for slot, _fi, _mx in mono:
            a(f"            del mn{slot}[:]")
        if sums:
            a("        else:")
            lines += ["        " + line for line in add]
        a(f"    elif {at('ts', 'h')} <= cut:")
        if per_entry:
            if sums:  # (the sums and count as locals while entries leave: S, Q, N)
                a("        lost = 0")
            for fi, i1, i2, i_n in sums:
                a(f"        S{fi} = st[{i1}]")
                if i2 >= 0:
                    a(f"        Q{fi} = st[{i2}]")
                a(f"        N{fi} = st[{i_n}]")
            a(f"        while {at('ts', 'h')} <= cut:")
            for slot, ci in ctrs:
                off = f" - co{ci}" if cg.i_coff[ci] >= 0 else ""
                a(f"            v = cat{ci}[h{off}]")
                only = "" if cg.distinct[slot] else f" and c{slot}.__class__ is dict"
                a(f"            if v is not None{only}:")
                ind = "            "
                if cg.distinct[slot]:  # (a number: one less if no later entry holds it)
                    a(f"                if c{slot}.__class__ is dict:")
                    ind += "    "
                a(f"{ind}    r = c{slot}[v] - 1")
                a(f"{ind}    if r:")
                a(f"{ind}        c{slot}[v] = r")
                a(f"{ind}    else:")
                a(f"{ind}        del c{slot}[v]")
                if cg.distinct[slot]:
                    a(f"                elif v not in cat{ci}[h + 1{off} : idx{off}]:")
                    a(f"                    c{slot} -= 1")
            if fslot >= 0:
                a("            if flags[h]:")
                a(f"                st[{cg.i_nf[fslot]}] -= 1")
            for fi, _i1, i2, _n in sums:
                a(f"            x = {at(f'num{fi}', f'h{nof[fi]}')}")
                a("            if x == x:")
                a(f"                d = x - k{fi}")
                a(f"                S{fi} = S{fi} - d")
                a("                dd = d * d")
                if i2 >= 0:  # (squares: no slack of the shift's size, see _DRIFT)
                    a(f"                Q{fi} = Q{fi} - dd")
                    a(f"                if not dd <= {_DRIFT!r} * Q{fi}:")
                else:
                    a(f"                if not dd <= {_DRIFT2!r} * S{fi} * S{fi} + kk{fi}:")
                a("                    lost = 1")
                a(f"                N{fi} -= 1")
            a("            h += 1")
            for fi, i1, i2, i_n in sums:
                a(f"        st[{i1}] = S{fi}")
                if i2 >= 0:
                    a(f"        st[{i2}] = Q{fi}")
                a(f"        st[{i_n}] = N{fi}")
        else:
            a("        h = _bisect_right(ts, cut, h)")
        a(f"        st[{cg.i_head[wi]}] = h")
        if per_entry and sums:  # sums recomputed exactly: see _exact
            a("        if lost:")
            for fi, i1, i2, i_n in sums:
                o = nof[fi]
                a(f"            _exact(num{fi}, k{fi}, h{o}, idx{o}, st, {i1}, {i2}, {i_n})")
        for slot, _fi, _mx in mono:
            a(f"        while mn{slot} and mn{slot}[0] < h:")
            a(f"            del mn{slot}[0]")
        lines += ["    " + line for line in add]
        if sums:
            a("    else:")
            lines += ["    " + line for line in add]
        # ``seen`` answers from the counter (or the column) before the new entry is counted
        for slot, ci in ctrs:
            lines += _enter(cg, slot, ci, cv[ci], feats, var)
        for slot, ci in lasts:
            lines += _last_seen(cg, slot, ci, cv[ci], feats, var, typed)
        for slot, fi, is_max in mono:
            op = "<=" if is_max else ">="
            a(f"    if {xv[fi]} == {xv[fi]}:")
            last = at(f"num{fi}", f"mn{slot}[-1]{nof[fi]}")
            a(f"        while mn{slot} and {last} {op} {xv[fi]}:")
            a(f"            mn{slot}.pop()")
            a(f"        mn{slot}.append(idx)")
        # every feature is assigned on this path (None where it has no value)
        for agg, name, fi, slot in feats:
            o = var[name]
            if agg == "count":
                a(f"    {o} = idx + 1 - h")
            elif agg == "last_gap":
                a(f"    {o} = T - prev if prev > cut else None")
            elif agg == "sum":
                a(f"    {o} = s{fi} + k{fi} * m{fi} if m{fi} else 0.0")  # none: exactly 0
            elif agg == "mean":
                a(f"    {o} = k{fi} + s{fi} / m{fi} if m{fi} else None")
            elif agg == "std":  # one value: exactly 0
                a(f"    if m{fi} > 1:")
                a(f"        var = (q{fi} - s{fi} * s{fi} / m{fi}) / m{fi}")
                a(f"        {o} = _sqrt(var) if var > 0.0 else _std(var)")
                # (not over a new value far below the shift: moved to this window's mean,
                # the shift stayed far above that value, and a shorter window's sum rounded
                # 12.34 to 12.3125 after a 1e18: a QA pass)
                a(f"        if var * {_DRIFT!r} < q{fi} / m{fi} and rb{fi} >= 0:")
                a(f"            rb{fi} = {cg.i_head[wi]}")
                a("    else:")
                a(f"        {o} = 0.0 if m{fi} else None")
            elif agg in ("min", "max"):
                a(f"    {o} = {at(f'num{fi}', f'mn{slot}[0]{nof[fi]}')} if mn{slot} else None")
            elif agg == "distinct":
                a(f"    {o} = len(c{slot}) if c{slot}.__class__ is dict else c{slot}")
            elif agg == "fraud_count":
                a(f"    {o} = st[{cg.i_nf[slot]}]")
            elif agg == "fraud_rate":
                a(f"    {o} = st[{cg.i_nf[slot]}] / (idx + 1 - h)")
            else:
                assert agg == "seen", agg  # (answered above, with its counter)
    for fi in summed:  # rebased: the field's sums and what is read from them, again
        sums = tuple(
            (cg.i_head[wi], *ss[1:]) for wi, per in enumerate(cg.i_sum) for ss in per
            if ss[0] == fi
        )  # fmt: skip
        a(f"    if rb{fi}:")
        no = f"no{fi}" if cg.i_noff[fi] >= 0 else "0"
        a(f"        k{fi} = _rebase(st, num{fi}, {no}, {cg.i_shift[fi]}, rb{fi}, {sums!r})")
        for wi, f2, agg, name in moments:
            if f2 != fi:
                continue
            ((_fi, i1, i2, i_n),) = (x for x in cg.i_sum[wi] if x[0] == fi)
            y = var[name]
            a(f"        mm = st[{i_n}]")
            if agg == "sum":
                a(f"        {y} = st[{i1}] + k{fi} * mm if mm else 0.0")
            elif agg == "mean":
                a(f"        {y} = k{fi} + st[{i1}] / mm if mm else None")
            else:
                a(f"        {y} = _std((st[{i2}] - st[{i1}] * st[{i1}] / mm) / mm) if mm else None")
    # Columns kept shorter than the log: cut once every window has advanced (a window later
    # in this body may still expire values the cut would drop), when more than _CUT_SLACK
    # values and a 16th of the column are past the horizon (the value that far in is: one
    # read; a review found a test of the window's head cutting a value or two at every event
    # of an entity with more than _CUT_SLACK events in the grace period, each cut a copy of
    # the whole column: O(column) per event), so a cut's copy is paid over as many events.
    # A column with a last-seen table folds the values it cuts into it (_fold).
    cuts = [(f"cat{ci}", f"co{ci}", i_off, cg.cat_keep[ci]) for ci, i_off in enumerate(cg.i_coff)]
    cuts += [(f"num{fi}", f"no{fi}", i_off, cg.num_keep[fi]) for fi, i_off in enumerate(cg.i_noff)]
    folds = [_fold_args(cg, ci) for ci in range(len(cg.cats))]
    for j, (col, off, i_off, keep) in enumerate(cuts):
        if i_off >= 0:
            lag = cg.keep - cg.longest + keep  # grace + that window
            a(f"    cp = {off} + {_CUT_SLACK} + (len({col}) >> 4)")
            a(f"    if cp <= idx and {at('ts', 'cp')} <= wm - {lag!r}:")
            if j < len(folds) and folds[j]:  # (the typed kernel's own: fds.features.kernel)
                args = f"ts, {col}, st, {i_off}, wm - {lag!r}{folds[j]}"
                a(f"        _fold_at({args}, _fold)" if typed else f"        _fold({args})")
            else:
                a(f"        _cut_column(ts, {col}, st, {i_off}, wm - {lag!r})")
    return [line[4:] for line in lines]


def _fold_args(cg: Any, ci: int) -> str:
    """The arguments of :func:`_fold` after the horizon for categorical field ``ci`` (its
    table's slot); empty for a field without a last-seen table."""
    if cg.i_last[ci] < 0:
        return ""
    return f", {cg.i_last[ci]}"


def _last_seen(
    cg: Any, slot: int, ci: int, v: str, feats: Any, var: dict[str, str], typed: bool
) -> list[str]:
    """The statements answering ``seen`` of counter ``slot`` (a window longer than the
    column of field ``ci``: no counter), indented by 4: the value is in the window's part of
    the column, or in the field's last-seen table at a time inside the window (``cut``)."""
    seen = " = ".join(var[n] for agg, n, _fi, s in feats if agg == "seen" and s == slot)
    y, co, i = seen.split(" = ")[0], f"co{ci}", cg.i_last[ci]
    pre = "_" if typed else ""  # (the typed kernel's own: fds.features.kernel)
    return [
        f"    if {v} is not None:",
        f"        {seen} = {pre}seen_in(cat{ci}, {v}, h - {co}, idx - {co})",
        f"        if not {y}:",
        f"            lv = st[{i}]",
        "            if lv.__class__ is dict:",
        f"                u = lv.get({v})",
        f"                {seen} = u is not None and u > cut",
        "            elif lv is not None:",
        f"                {seen} = {pre}seen_since(lv, st[{i + 1}], {v}, cut)",
        "    else:",
        f"        {seen} = None",
    ]


def _enter(cg: Any, slot: int, ci: int, v: str, feats: Any, var: dict[str, str]) -> list[str]:
    """The statements counting the new value ``v`` of categorical field ``ci`` in counter
    ``slot`` (:func:`tally`), indented by 4: ``seen`` answered first (from the dict, or by
    scanning the window's column), then the counter switched to a dict of counts when the
    window holds more than ``LARGE`` entries, or back to a number under ``SMALL``."""
    seen = " = ".join(var[n] for agg, n, _fi, s in feats if agg == "seen" and s == slot)
    off = f" - co{ci}" if cg.i_coff[ci] >= 0 else ""
    c, n = f"c{slot}", "idx + 1 - h"
    small = f"len({c})" if cg.distinct[slot] else "0"
    lines = [f"if {c}.__class__ is dict:", f"    if {v} is not None:"]
    if seen:  # (its count read once: whether it is there, and what to add 1 to)
        lines += [
            f"        n = {c}.get({v})",
            "        if n is None:",
            f"            {seen} = False",
            f"            {c}[{v}] = 1",
            "        else:",
            f"            {seen} = True",
            f"            {c}[{v}] = n + 1",
            "    else:",
            f"        {seen} = None",
        ]
    else:
        lines.append(f"        {c}[{v}] = {c}.get({v}, 0) + 1")
    lines += [f"    if {n} < {SMALL}:", f"        {c} = st[{cg.i_ctr[slot]}] = {small}"]
    lines += ["else:", f"    if {v} is not None:"]
    if seen:
        lines.append(f"        {seen} = {v} in cat{ci}[h{off} : idx{off}]")
    if cg.distinct[slot]:
        new = f"not {seen.split(' = ')[0]}" if seen else f"{v} not in cat{ci}[h{off} : idx{off}]"
        lines += [f"        if {new}:", f"            {c} += 1"]
    if seen:
        lines += ["    else:", f"        {seen} = None"]
    lines += [
        f"    if {n} > {LARGE}:",
        f"        {c} = _tally(cat{ci}[h{off} :])",
        f"    st[{cg.i_ctr[slot]}] = {c}",
    ]
    return ["    " + line for line in lines]


def _adds(sums: Any) -> list[str]:
    """The statements adding the new value to a window's sums (``sums``: (field, sum, squares,
    count) slots), indented by 4; ``s``/``q``/``m`` + field: the window's sums and count."""
    lines = []
    for fi, i1, i2, i_n in sums:
        lines.append(f"    s{fi} = st[{i1}] = st[{i1}] + d{fi}")
        if i2 >= 0:
            lines.append(f"    q{fi} = st[{i2}] = st[{i2}] + dd{fi}")
        lines.append(f"    m{fi} = st[{i_n}] = st[{i_n}] + o{fi}")
    return lines


def assign_slots(cg: Any) -> None:
    """Lay out one entity's state as one flat list and record each part's index on ``cg``.

    ``[key, ts, <per numeric field: values, shift (if summed)>, <per categorical field: values,
    offset (if kept shorter than the log before last-seen tables)>, <known-fraud flags (fraud
    groups)>, <input partitions (with provenance: ``cg.prov``)>, <per window: head>, <per
    window and summed field: running sum, sum of squares (std), present-value count>, <per
    min/max slot: candidates>, <per counter slot: a number or a dict (:func:`tally`; 0 for a
    seen-only window read from a last-seen table)>, <per fraud slot: count>, <per numeric field
    kept shorter than the log: offset>, <per categorical field kept shorter only since
    last-seen tables: offset>, <per categorical field with a last-seen table: the table
    (:func:`set_table`; ``None`` until a value is folded in)>]``. One list instead of an
    object holding a dozen small lists: far fewer containers for the cyclic garbage collector to
    visit (columns of numbers and min/max candidates are arrays, and a dict of strings and ints,
    like a counter, is not tracked by it either). Indices that a group does not need are -1.
    Heads and min/max candidates are positions in the log (trimming shifts them down, so for a
    quiet entity they stay small ints, which CPython shares). A categorical column is kept only
    as long as the longest window counting it (``cg.cat_keep``): its offset is the log position
    of its first value (the merchant ids of a card's 24-hour ``distinct`` are not kept for its
    30-day windows; a ``seen``-only window longer than every ``distinct`` window of its field
    does not count: the values the column cuts go to the field's last-seen table, the newest
    time of each, :func:`_fold`); a numeric column likewise, as long as the longest window
    summing it or keeping its min/max (``cg.num_keep``: a merchant's amounts of a 7-day mean
    are not kept for its 28-day fraud rate). Running sums are over deviations from the shift
    (the entity's first value) of the values inside the window: added when an entry enters,
    subtracted when it leaves, set to exact zeros when the window empties and recomputed from
    the log after an out-of-order insert. (Prefix-sum arrays, the previous design, cost two
    floats per logged entry; these cost a few floats per entity.)
    """
    g = cg.g
    i = TS + 1
    cg.i_num, cg.i_shift = [], []
    for fi in range(len(g.num_fields)):
        cg.i_num.append(i)
        cg.i_shift.append(i + 1 if g.num_sums[fi] else -1)
        i += 2 if g.num_sums[fi] else 1
    cg.i_cat, cg.i_coff = [], []
    for ci in range(len(g.cat_fields)):  # (offsets of columns kept shorter before last-seen
        cg.i_cat.append(i)  # tables: here; those shorter only since, below)
        cg.i_coff.append(i + 1 if cg.cat_keep_before[ci] < g.longest else -1)
        i += 1 + (cg.i_coff[ci] >= 0)
    cg.i_flags = i if g.has_fraud else -1
    i += 1 if g.has_fraud else 0
    cg.i_part = i if cg.prov else -1
    i += 1 if cg.prov else 0
    # (a numeric column's offset, when kept shorter than the log, is placed last, below)
    cg.i_noff = [-1] * len(g.num_fields)
    cg.i_head = list(range(i, i + len(g.windows)))
    i += len(g.windows)
    cg.i_sum = []
    for w in g.windows:
        sums = []
        for fi, squares in w.sums.items():
            i2 = i + 1 if squares else -1
            i_n = i + 1 + squares
            sums.append((fi, i, i2, i_n))
            i += 2 + squares
        cg.i_sum.append(tuple(sums))
    cg.i_mono = list(range(i, i + g.n_mono))
    i += g.n_mono
    cg.i_ctr = list(range(i, i + g.n_counters))
    i += g.n_counters
    cg.i_nf = list(range(i, i + g.n_fraud))
    i += g.n_fraud
    # last, so that a state of before them takes them by appending ``cg.appended`` (numeric
    # offsets since formats 8/9; offsets of the columns shorter since last-seen tables and the
    # tables, None until a value is folded in, since 10/11)
    first = i
    for fi in range(len(g.num_fields)):
        if cg.num_keep[fi] < g.longest:
            cg.i_noff[fi] = i
            i += 1
    for ci in range(len(g.cat_fields)):
        if cg.i_coff[ci] < 0 and cg.cat_keep[ci] < g.longest:
            cg.i_coff[ci] = i
            i += 1
    # per categorical field with a last-seen table: its two slots (set_table), or -1
    cg.i_last = [-1] * len(g.cat_fields)
    for ci in range(len(g.cat_fields)):
        if cg.seen_keep[ci]:
            cg.i_last[ci] = i
            i += 2
    cg.size = i
    cg.appended = [0] * (min([*(x for x in cg.i_last if x >= 0), i]) - first)
    cg.appended += [None] * (i - first - len(cg.appended))
    # the columns as long as the log, timestamps first; those kept shorter: (column, offset
    # slot or -1 for a column never cut, how long it is kept)
    longs = (i for fi, i in enumerate(cg.i_num) if cg.i_noff[fi] < 0)
    cg.i_log = (TS, *longs, *(x for x in (cg.i_flags, cg.i_part) if x >= 0))
    cg.i_short = (
        *zip(cg.i_cat, cg.i_coff, cg.cat_keep, strict=True),
        *((cg.i_num[fi], i, cg.num_keep[fi]) for fi, i in enumerate(cg.i_noff) if i >= 0),
    )


def build_fused(
    cgs: Any, names: Any, states: list[Shards], helpers: dict[str, Any]
) -> tuple[Callable[..., dict[str, Any]], str, dict[str, Any], str]:
    """One generated ``run(tx, t, wm) -> snapshot`` folding ``tx`` into every group, inlined.

    Fields are read once (:func:`_reads`). Per group: read the entity value (missing: skip,
    features stay ``None``), find or create the state in its shard (``states``: each group's
    :class:`~fds.features.shards.Shards`), take the rare path for an event older
    than the entity's newest (``_reorder``), else run the group's :func:`_body` inline and
    trim the log when its oldest entry is ``trim_lag`` behind the watermark. Features are
    locals, returned as one dict in declaration order (``names``). A transaction with fraud
    groups is handed to ``_remember(tx_id, t, keys)`` (the ``tx_id`` store; with provenance
    ``_remember(tx_id, t, keys, part)``): ``keys`` is the fraud group's state key, or a tuple
    of them (``None`` where absent) with several fraud groups. ``helpers`` supplies
    ``_reorder(gi, st, t, tx, out)``, ``_trim(gi, st, horizon)``, ``_remember``, ``_cutoff``,
    ``_DAY`` (the day clock's cache) and, with provenance, ``_PROV`` (an object whose ``part``
    is the event's input partition); each ``cg.new_state`` (:func:`build_new_state`) creates a
    state. Returns ``run``, its source, the namespace it reads, and the source of the same
    ``run`` typed for Cython (:func:`_declarations`: what :mod:`fds.features.kernel` compiles
    and binds to that namespace).
    """
    ns: dict[str, Any] = {}
    for gi, cg in enumerate(cgs):
        ns[f"_S{gi}"] = states[gi].parts
        ns[f"_new{gi}"] = cg.new_state
    source = _fused(cgs, names, typed=False)
    namespace = {**_namespace(), **ns, **helpers}
    exec(compile(source, "<fds.features run>", "exec"), namespace)
    run = namespace.pop("run")  # (popped: in its own globals, a cycle)
    return run, source, namespace, _fused(cgs, names, typed=True)


def _fused(cgs: Any, names: Any, typed: bool) -> str:
    """The source of :func:`build_fused`'s ``run`` (``typed``: for Cython)."""
    var = {name: f"y{i}" for i, name in enumerate(names)}
    fraud = [gi for gi, cg in enumerate(cgs) if cg.fraud]
    at = _at(typed)
    shard = "_shard_of" if typed else "shard_of"  # (the typed kernel's own: fds.features.kernel)
    lines = ["def run(tx, t, double wm):" if typed else "def run(tx, t, wm):"]
    a = lines.append
    if typed:
        lines += ["    " + line for line in _declarations(cgs)]
    # ``T``: the event time in arithmetic (a C double in a typed kernel); ``t``, the object
    # itself, where it is stored or handed on (no float made from the C double for each)
    a("    T = t")
    if len(fraud) > 1:
        a(f"    {' = '.join(f'kf{gi}' for gi in fraud)} = None")
    for gi in range(len(cgs)):  # (locals: a typed kernel's are lists, _declarations)
        a(f"    states{gi} = _S{gi}")
    order, counted, early = _order(cgs)
    lines += ["    " + line for line in _reads(cgs, counted)]
    if fraud:  # read before any state changes (a missing tx_id fails here)
        a("    tx_id = tx['tx_id']")
    part = ", part" if any(cg.prov for cg in cgs) else ""  # (handed to _remember too)
    if part:
        a("    part = _PROV.part")
    for gi in sorted(early):  # (keys that groups folded before theirs count: _order)
        ev = _var(cgs[gi].ent, cgs[gi].ent_sub)
        a(f"    if {ev} is not None:")
        a(f"        st = states{gi}[{shard}({ev})].get({ev})")
        a("        if st is not None:")
        a(f"            {ev} = st[0]")
    for gi in order:
        cg = cgs[gi]
        a(f"    # ---- group {gi}: {cg.g.entity}")
        ev = _var(cg.ent, cg.ent_sub)
        a(f"    if {ev} is not None:")
        a(f"        sh = states{gi}[{shard}({ev})]")  # (its shard: fds.features.shards)
        a(f"        st = sh.get({ev})")
        a("        if st is None:")
        a(f"            st = sh[{ev}] = _new{gi}({ev}, tx)")
        if (cg.ent, cg.ent_sub) in counted and gi not in early:
            a(f"        {ev} = st[0]")  # (the value other groups count: _order)
        a("        ts = st[1]")
        a("        idx = len(ts)")
        a(f"        prev = {at('ts', 'idx - 1')} if idx else _NEG_INF")
        a("        if T < prev:")
        a("            r = {}")
        a(f"            _reorder({gi}, st, t, tx, r)")
        for name in cg.names:
            a(f"            {var[name]} = r.get({name!r})")
        a("        else:")
        lines += ["            " + line for line in _body(cg, var, typed)]
        a(f"            if {at('ts', '0')} <= wm - {cg.trim_lag!r}:")
        a(f"                _trim({gi}, st, wm - {cg.log_keep!r})")
        if cg.fraud and len(fraud) == 1:
            a(f"        _remember(tx_id, t, st[0]{part})")
        elif cg.fraud:
            a(f"        kf{gi} = st[0]")
        a("    else:")  # no entity value: the group's features are None
        a(f"        {' = '.join(var[name] for name in cg.names)} = None")
    if len(fraud) > 1:
        a(f"    _remember(tx_id, t, ({', '.join(f'kf{gi}' for gi in fraud)},){part})")
    a(f"    return {{{', '.join(f'{name!r}: {v}' for name, v in var.items())}}}")
    return "\n".join(lines) + "\n"


def _declarations(cgs: Any) -> list[str]:
    """The C types of a typed kernel's locals (Cython): times (``T``, not ``t``: see
    :func:`_fused`), deviations and running sums as doubles, positions and counts as
    ``Py_ssize_t``, the log's timestamps and numeric columns as arrays (read by :func:`_at`),
    states and categorical columns as lists (a counter is a number or a dict: :func:`tally`,
    an object). Each is a float or an int on
    every path of the generated code (a sum read from the state and written back comes back
    the same float), so the kernel computes what the interpreted ``run`` does, operation for
    operation, in IEEE doubles (``tests/features/test_kernel.py`` holds the two to the last
    bit); the event time is a float in both (``FeaturePlan.compute`` reads any other as a
    transaction's ``ts``, or refuses it). The rest (the transaction, entity
    values, features that may be ``None``) stays Python objects."""
    n_num = max((len(cg.nums) for cg in cgs), default=0)
    n_cat = max((len(cg.cats) for cg in cgs), default=0)
    doubles = ["T", "prev", "cut", "lo", "hi", "x", "d", "dd", "var"]
    doubles += [
        f"{p}{fi}" for fi in range(n_num) for p in ("k", "kk", "d", "dd", "S", "Q", "s", "q")
    ]
    ints = ["idx", "h", "lost", "cp"]
    ints += [f"{p}{fi}" for fi in range(n_num) for p in ("m", "N", "o", "rb", "no")]
    ints += [f"co{ci}" for ci in range(n_cat)]
    arrays = ["ts"] + [f"num{fi}" for fi in range(n_num)]
    lists = ["st", *(f"cat{ci}" for ci in range(n_cat)), *(f"states{gi}" for gi in range(len(cgs)))]
    dicts = ["sh"]
    return [
        f"cdef double {', '.join(doubles)}",
        f"cdef Py_ssize_t {', '.join(ints)}",
        f"cdef array.array {', '.join(arrays)}",
        f"cdef list {', '.join(lists)}",
        f"cdef dict {', '.join(dicts)}",
    ]


def _cut_column(ts: Any, col: list[Any], st: list[Any], i_off: int, horizon: float) -> None:
    """Drop the values of a categorical column logged at or before ``horizon`` (no accepted
    event can count them any more) and record the new offset in ``st[i_off]``."""
    o = st[i_off]
    k = bisect_right(ts, horizon, o)
    if k > o:
        del col[: k - o]
        st[i_off] = k


def _fold(ts: Any, col: list[Any], st: list[Any], i_off: int, horizon: float, i_last: int) -> None:
    """:func:`_cut_column` for a column with a last-seen table (slots ``i_last``,
    :func:`set_table`): each value cut is recorded there with its time (the newest per
    value), so that ``seen`` over a window longer than the column still finds it. (Entries
    out of every window are dropped by the log's trim, :func:`prune`: not here, each cut.)"""
    o = st[i_off]
    k = bisect_right(ts, horizon, o)
    if k <= o:
        return
    newest = dict(zip(col[: k - o], ts[o:k], strict=True))  # (a dict keeps the last)
    newest.pop(None, None)
    del col[: k - o]
    st[i_off] = k
    table = st[i_last]
    if table.__class__ is dict:  # (the newer time: an absorbed table may hold newer ones)
        for v, t in newest.items():
            if t > table.get(v, -math.inf):
                table[v] = t
        return
    if table is None:
        table, times = st[i_last], st[i_last + 1] = [], array("d")
    else:
        times = st[i_last + 1]
    for v, t in sorted(newest.items(), key=_TIME):
        if v in table:
            j = table.index(v)
            if times[j] >= t:
                continue
            del table[j], times[j]
        j = bisect_right(times, t)  # (the end, but after an absorb)
        table.insert(j, v)
        times.insert(j, t)
    if len(table) > LARGE:
        set_table(st, i_last, dict(zip(table, times, strict=True)))


def set_table(st: list[Any], i_last: int, newest: dict[Any, float]) -> None:
    """Store the last-seen table of value -> newest time ``newest`` in slots ``i_last`` and
    ``i_last + 1``: up to ``LARGE`` entries a list of values and an array of their times in
    time order (the newest last: :func:`seen_since` reads it from the end, :func:`prune` cuts
    its start), over that the dict itself (a lookup instead of a scan: a merchant's ``seen``
    of card ids); ``None`` when empty. Below ``SMALL`` entries a dict becomes lists again."""
    if not newest:
        st[i_last] = st[i_last + 1] = None
    elif len(newest) > LARGE or (st[i_last].__class__ is dict and len(newest) >= SMALL):
        st[i_last], st[i_last + 1] = newest, None
    else:
        items = sorted(newest.items(), key=_TIME)
        st[i_last] = [v for v, _t in items]
        st[i_last + 1] = array("d", [t for _v, t in items])


def table_items(st: list[Any], i_last: int) -> Iterable[tuple[Any, float]]:
    """The (value, newest time) entries of the last-seen table at slots ``i_last``."""
    table = st[i_last]
    if table is None:
        return ()
    return table.items() if table.__class__ is dict else zip(table, st[i_last + 1], strict=True)


def prune(st: list[Any], i_last: int, dead: float) -> None:
    """Drop the entries of the last-seen table at slots ``i_last`` logged at or before
    ``dead``."""
    table = st[i_last]
    if table.__class__ is dict:
        set_table(st, i_last, {v: t for v, t in table.items() if t > dead})
    elif table is not None:
        k = bisect_right(st[i_last + 1], dead)
        if k == len(table):
            st[i_last] = st[i_last + 1] = None
        elif k:
            del table[:k], st[i_last + 1][:k]


def seen_in(a: list[Any], v: Any, lo: int, hi: int) -> bool:
    """Whether ``a[lo:hi]`` holds ``v`` (``lo`` below 0 read as 0): what the typed kernel's
    ``_seen_in`` does without a copy (:mod:`fds.features.kernel`)."""
    return v in a[max(lo, 0) : hi]


def seen_since(vals: list[Any], times: Any, v: Any, cut: float) -> bool:
    """Whether a last-seen table's lists (in time order) hold value ``v`` at a time after
    ``cut``, read from the newest entry back to the first at or before ``cut``: what the
    typed kernel's ``_seen_since`` does (:mod:`fds.features.kernel`)."""
    j = len(times) - bisect_right(times, cut)  # (entries after cut: the last j)
    return j > 0 and v in vals[-j:]


# Running sums subtract what leaves a window, so a value far larger than the rest leaves its
# rounding behind (a 1e17 amount passing through a card of single-digit amounts left its sum off by
# 7, and 1e160 overflowed its squares into NaN: a review found it). A leave that takes a sum of
# squares down by more than this factor (its square root for a plain sum, and then only a leave
# larger than the shift itself: below) has the window's sums recomputed exactly (_exact): at most 20
# of the 52 bits are lost before that. The shift moves (_rebase, every window of the field
# recomputed) when a std's variance is this much below the second moment about the shift (a
# merchant's first amount 2e9, then amounts around 10,000, gave 25.7 for 29.6): to that window's
# value closest to its mean; or when a new value is this much below the shift (a first value of 1e17
# rounded a later 12.34 to 16): to that value. All are rare: amounts of one magnitude never trigger
# them. A plain sum's test spares leaves no larger than the shift (a sum of deviations is near 0
# whenever values straddle the shift: each leave would recompute it); a sum of squares is near 0
# only when the values left are all near the shift, so any leave that takes it down by the factor
# recomputes it (1.5 and 1.5 left after a 999.99 had a std of 4e-6, not 0: a QA pass). The new shift
# is the window's value closest to its mean, not the mean: whole amounts keep whole deviations, so
# sums of whole amounts stay exact (a std's move of the shift to a mean of 651,820.2 made a 1-hour
# sum of whole amounts 3259099.9999999995: a QA pass), and a value within one standard deviation of
# the mean always exists.
_DRIFT = float(2**20)
_DRIFT2 = _DRIFT * _DRIFT


def _exact(col: Any, k: float, h: int, end: int, st: list[Any], i1: int, i2: int, i_n: int) -> None:
    """Recompute one window's running sums from the log: deviations from the shift ``k`` of
    ``col[h:end]``, missing values skipped, summed exactly (``math.fsum``)."""
    ds = [x - k for x in col[h:end] if x == x]
    st[i1] = math.fsum(ds)
    if i2 >= 0:
        st[i2] = math.fsum([d * d for d in ds])
    st[i_n] = len(ds)


def _rebase(st: list[Any], col: Any, off: int, i_shift: int, i_head: int, sums: Any) -> float:
    """Move a numeric field's shift to the value closest to the mean of the window whose head
    is ``st[i_head]`` (``i_head`` -1: to the newest value), recompute every window's sums of
    that field (``sums``: (head, sum, squares, count) slots) exactly, and return the shift
    (``col``: the field's column, its first value at log position ``off``)."""
    if i_head < 0:
        k = col[-1]
    else:
        vals = [x for x in col[st[i_head] - off :] if x == x]
        if not vals:
            return st[i_shift]
        mean = math.fsum(vals) / len(vals)
        k = min(vals, key=lambda x: abs(x - mean))  # (see _DRIFT)
    st[i_shift] = k
    for head, i1, i2, i_n in sums:
        _exact(col, k, st[head] - off, len(col), st, i1, i2, i_n)
    return k


def _std(var: float) -> float:
    """The standard deviation for a computed variance: 0 for rounding below zero, infinite
    when the squares overflowed (a value beyond ~1e154 in the window)."""
    if var > 0.0:
        return math.sqrt(var)
    return 0.0 if var == var else math.inf


def _namespace() -> dict[str, Any]:
    return {
        "_NEG_INF": -math.inf,
        "_exact": _exact,
        "_rebase": _rebase,
        "_std": _std,
        "_sqrt": math.sqrt,
        "_EMPTY": {},
        "_num": num,
        "_intern": sys.intern,
        "_cat": cat,
        "_bisect_right": bisect_right,
        "_cut_column": _cut_column,
        "_fold": _fold,
        "seen_in": seen_in,
        "seen_since": seen_since,
        "shard_of": shard_of,
        "_tally": tally,
    }


def build_new_state(cg: Any) -> Callable[[Any, Any], list[Any]]:
    """A generated constructor ``new(key, tx)`` of the flat state list of group ``cg``
    (see :func:`assign_slots`) for an entity first seen with transaction ``tx``: no loops or
    comprehensions (entities are created often: a device idle for a day is evicted and comes
    back new).

    The shift of each summed field is the entity's first value (0 when missing): sums of
    deviations from it stay small, which keeps ``std`` exact enough when values are large and
    close together.
    """
    g = cg.g
    lines = ["def new(key, tx):"]
    parts = ["key", "_A('d')"]
    for fi, (k, sub) in enumerate(cg.nums):
        parts.append("_A('d')")
        if g.num_sums[fi]:
            src = f"tx.get({k!r})" if sub is None else f"(tx.get('extra') or _EMPTY).get({sub!r})"
            lines.append(f"    k{fi} = {src}")
            lines.append(f"    if k{fi}.__class__ is not float or not -{BIG!r} < k{fi} < {BIG!r}:")
            lines.append(f"        k{fi} = _num(k{fi})")
            lines.append(f"    if k{fi} != k{fi}:")
            lines.append(f"        k{fi} = 0.0")
            parts.append(f"k{fi}")
    for ci in range(len(cg.cats)):  # (an offset of a column shorter since last-seen: below)
        parts += ["[]"] + ["0"] * (cg.cat_keep_before[ci] < g.longest)
    if g.has_fraud:
        parts.append("bytearray()")
    if cg.prov:
        parts.append("_A('H')")
    parts += ["0"] * len(g.windows)
    for sums in cg.i_sum:
        for _fi, _i1, i2, _n in sums:
            parts += ["0.0"] + ["0.0"] * (i2 >= 0) + ["0"]
    parts += ["_A('q')"] * g.n_mono
    parts += ["0"] * g.n_counters
    parts += ["0"] * g.n_fraud
    parts += map(repr, cg.appended)
    assert len(parts) == cg.size
    lines.append(f"    return [{', '.join(parts)}]")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"_A": array, "_num": num, "_EMPTY": {}}
    exec(compile(source, f"<fds.features new {g.entity}>", "exec"), namespace)
    return namespace.pop("new")  # (popped: as run above)
