"""Generate the hot path: one straight-line Python function for all entity groups.

The plan is compiled once into source text with every window and aggregate unrolled (no loop
over declarations, no dispatch on the aggregate name, no tuple unpacking per event), then
``exec``-ed in a namespace holding only the helpers it calls. Only numbers and ``repr``-ed
names from validated declarations are interpolated, never rule text.

Each entity's state is one flat list (:func:`assign_slots`). A group's body (:func:`_body`)
folds an in-order event (``t`` >= every timestamp in the entity's log) into the state ``st``
and writes the group's features into ``out``. Its order matters: expire per window, then answer
``seen`` (earlier transactions only), then add the new entry to counters and min/max
candidates, then read the window aggregates. :func:`build_fused` inlines every group's body
into one ``run(tx, t, out, wm)`` (what the plan calls per event); :func:`build_append` wraps
one group's body as ``append(st, t, tx, out)`` (its source is kept on the compiled group for
inspection).
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

__all__ = [
    "BASE", "KEY", "TS", "assign_slots", "build_append", "build_fused", "build_new_state", "num",
]  # fmt: skip

NAN = math.nan
# Fixed positions in every flat entity state (see assign_slots).
KEY, BASE, TS = 0, 1, 2


def num(x: Any) -> float:
    """A numeric field value as float; NaN when missing or not a number."""
    if x is None or x.__class__ is bool:
        return NAN
    try:
        return float(x)
    except (TypeError, ValueError):
        return NAN


def _source(cg: Any) -> str:
    body = "\n".join("    " + line for line in _body(cg))
    return f"def append(st, t, tx, out):\n{body}\n    return ts[0]\n"


def _body(cg: Any) -> list[str]:
    """The statements folding an in-order event into ``st`` (see the module docstring),
    indented by 4 as if in a function body; they leave the log in ``ts``."""
    lines: list[str] = []
    a = lines.append
    a("    ts = st[2]")
    a("    base = st[1]")
    a("    n = len(ts)")
    a("    prev = ts[-1] if n else _NEG_INF")
    a("    idx = base + n")
    a("    ts.append(t)")
    if any(sub is not None for _k, sub in cg.nums + cg.cats):
        a("    extra = tx.get('extra') or _EMPTY")

    def src(k: str, sub: str | None) -> str:
        return f"tx.get({k!r})" if sub is None else f"extra.get({sub!r})"

    for fi, (k, sub) in enumerate(cg.nums):
        a(f"    x{fi} = {src(k, sub)}")
        a(f"    if x{fi}.__class__ is not float:")
        a(f"        x{fi} = _num(x{fi})")
        a(f"    num{fi} = st[{cg.i_num[fi]}]")
        a(f"    num{fi}.append(x{fi})")
        if cg.sums[fi]:
            sq = cg.squares[fi]
            cnt = cg.counted[fi]
            a(f"    k{fi} = st[{cg.i_shift[fi]}]")
            if cnt:
                a(f"    c0_{fi} = st[{cg.i_c0[fi]}]")
            a(f"    c1_{fi} = st[{cg.i_c1[fi]}]")
            if sq:
                a(f"    c2_{fi} = st[{cg.i_c2[fi]}]")
            a(f"    if x{fi} == x{fi}:")
            a(f"        d = x{fi} - k{fi}")
            if cnt:
                a(f"        c0_{fi}.append(c0_{fi}[-1] + 1.0)")
            a(f"        c1_{fi}.append(c1_{fi}[-1] + d)")
            if sq:
                a(f"        c2_{fi}.append(c2_{fi}[-1] + d * d)")
            a("    else:")
            if cnt:
                a(f"        c0_{fi}.append(c0_{fi}[-1])")
            a(f"        c1_{fi}.append(c1_{fi}[-1])")
            if sq:
                a(f"        c2_{fi}.append(c2_{fi}[-1])")
    for ci, (k, sub) in enumerate(cg.cats):
        a(f"    v{ci} = {src(k, sub)}")
        a(f"    if v{ci}.__class__ is str:")
        a(f"        v{ci} = _intern(v{ci})")
        a(f"    cat{ci} = st[{cg.i_cat[ci]}]")
        a(f"    cat{ci}.append(v{ci})")
    if cg.fraud:
        a(f"    flags = st[{cg.i_flags}]")
        a("    flags.append(0)")
    for wi, width, per_entry, mono, ctrs, fslot, feats in cg.windows:
        a(f"    # window {wi}: {'calendar day' if width is None else f'{width:g} s'}")
        a(f"    cut = t - {width!r}" if width is not None else "    cut = _cutoff(t)")
        a(f"    h = st[{cg.i_head[wi]}]")
        a("    if ts[h - base] <= cut:")
        if per_entry:
            a("        while ts[h - base] <= cut:")
            a("            p = h - base")
            for slot, ci in ctrs:
                a(f"            v = cat{ci}[p]")
                a("            if v is not None:")
                a(f"                c = st[{cg.i_ctr[slot]}]")
                a("                r = c[v] - 1")
                a("                if r:")
                a("                    c[v] = r")
                a("                else:")
                a("                    del c[v]")
            if fslot >= 0:
                a("            if flags[p]:")
                a(f"                st[{cg.i_nf[fslot]}] -= 1")
            a("            h += 1")
        else:
            a("        h = _bisect_right(ts, cut, h - base) + base")
        a(f"        st[{cg.i_head[wi]}] = h")
        for slot, _fi, _mx in mono:
            a(f"        m = st[{cg.i_mono[slot]}]")
            a("        while m and m[0] < h:")
            a("            del m[0]")
        for agg, name, fi, slot in feats:
            if agg == "seen":
                a(f"    out[{name!r}] = None if v{fi} is None else v{fi} in st[{cg.i_ctr[slot]}]")
        for slot, ci in ctrs:
            a(f"    if v{ci} is not None:")
            a(f"        c = st[{cg.i_ctr[slot]}]")
            a(f"        c[v{ci}] = c.get(v{ci}, 0) + 1")
        for slot, fi, is_max in mono:
            op = "<=" if is_max else ">="
            a(f"    if x{fi} == x{fi}:")
            a(f"        m = st[{cg.i_mono[slot]}]")
            a(f"        while m and num{fi}[m[-1] - base] {op} x{fi}:")
            a("            m.pop()")
            a("        m.append(idx)")
        if any(agg in ("sum", "mean", "std") for agg, *_ in feats):
            a("    p0 = h - base")
        for agg, name, fi, slot in feats:
            o = f"out[{name!r}]"
            if agg in ("sum", "mean", "std"):
                # values present in the window (all of them for ``amount``, a required field)
                m = f"(c0_{fi}[-1] - c0_{fi}[p0])" if cg.counted[fi] else "float(idx + 1 - h)"
            if agg == "count":
                a(f"    {o} = idx + 1 - h")
            elif agg == "last_gap":
                a(f"    {o} = t - prev if prev > cut else None")
            elif agg == "sum":
                a(f"    {o} = (c1_{fi}[-1] - c1_{fi}[p0]) + k{fi} * {m}")
            elif agg in ("mean", "std"):
                a(f"    m_ = {m}")
                a("    if m_ > 0.0:")
                if agg == "mean":
                    a(f"        {o} = k{fi} + (c1_{fi}[-1] - c1_{fi}[p0]) / m_")
                else:
                    a(f"        s1 = c1_{fi}[-1] - c1_{fi}[p0]")
                    a(f"        var = (c2_{fi}[-1] - c2_{fi}[p0] - s1 * s1 / m_) / m_")
                    a(f"        {o} = _sqrt(var) if var > 0.0 else 0.0")
            elif agg in ("min", "max"):
                a(f"    m = st[{cg.i_mono[slot]}]")
                a("    if m:")
                a(f"        {o} = num{fi}[m[0] - base]")
            elif agg == "distinct":
                a(f"    {o} = len(st[{cg.i_ctr[slot]}])")
            elif agg == "fraud_count":
                a(f"    {o} = st[{cg.i_nf[slot]}]")
            elif agg == "fraud_rate":
                a(f"    {o} = st[{cg.i_nf[slot]}] / (idx + 1 - h)")
    return [line[4:] for line in lines]


def build_append(cg: Any, cutoff: Callable[[float], float]) -> tuple[Callable[..., float], str]:
    """The generated ``append`` for compiled group ``cg`` and its source text.

    ``out`` must come pre-filled with ``None`` (min/max/mean/std over nothing stay ``None``).
    Returns the oldest timestamp still in the log (for the caller's trim check).
    """
    source = _source(cg)
    namespace = _namespace(cutoff)
    exec(compile(source, f"<fds.features append {cg.g.entity}>", "exec"), namespace)
    return namespace["append"], source


def assign_slots(cg: Any) -> None:
    """Lay out one entity's state as one flat list and record each part's index on ``cg``.

    ``[key, base, ts, <per numeric field: values, shift, c0, c1, c2 (those it needs)>,
    <per categorical field: values>, <known-fraud flags (fraud groups)>, <per window: head>,
    <per min/max slot: candidates>, <per counter slot: dict>, <per fraud slot: count>]``.
    One list instead of an object holding a dozen small lists: ~0.5 KB less per entity and
    far fewer containers for the cyclic garbage collector to visit. Indices that a group
    does not need are -1. ``base`` is the absolute index of ``ts[0]`` (trimming advances it);
    heads and min/max candidates are absolute indices. The prefix arrays (``c0`` present-value
    counts, ``c1`` shifted sums, ``c2`` shifted squares) have one more element than the log:
    ``c[i]`` sums log positions ``< i``, so a window from absolute index ``h`` to the end sums
    ``c[-1] - c[h - base]``.
    """
    g = cg.g
    i = TS + 1
    cg.i_num, cg.i_shift, cg.i_c0, cg.i_c1, cg.i_c2 = [], [], [], [], []
    for fi in range(len(g.num_fields)):
        cg.i_num.append(i)
        i += 1
        for lst, need in (
            (cg.i_shift, g.num_sums[fi]),
            (cg.i_c0, cg.counted[fi]),
            (cg.i_c1, g.num_sums[fi]),
            (cg.i_c2, g.num_squares[fi]),
        ):
            lst.append(i if need else -1)
            i += 1 if need else 0
    cg.i_cat = list(range(i, i + len(g.cat_fields)))
    i += len(g.cat_fields)
    cg.i_flags = i if g.has_fraud else -1
    i += 1 if g.has_fraud else 0
    cg.i_head = list(range(i, i + len(g.windows)))
    i += len(g.windows)
    cg.i_mono = list(range(i, i + g.n_mono))
    i += g.n_mono
    cg.i_ctr = list(range(i, i + g.n_counters))
    i += g.n_counters
    cg.i_nf = list(range(i, i + g.n_fraud))
    i += g.n_fraud
    cg.size = i


def build_fused(
    cgs: Any, states: list[dict[Any, Any]], multi_fraud: bool, helpers: dict[str, Any]
) -> tuple[Callable[..., Any], str]:
    """One generated ``run(tx, t, out, wm)`` folding ``tx`` into every group, inlined.

    Per group: read the entity value (missing: skip, features stay ``None``), find or create
    the state, take the rare path for an event older than the entity's newest (``_reorder``),
    else run the group's :func:`_body` inline and trim the log when its oldest entry is
    ``trim_lag`` behind the watermark. Returns what the ``tx_id`` store keeps for a label:
    the fraud groups' state keys (one, or a list with several fraud groups), else ``None``.
    ``helpers`` supplies ``_reorder(gi, st, t, tx, out)`` and ``_trim(gi, st, horizon)``; each
    ``cg.new_state`` (:func:`build_new_state`) creates a state.
    """
    lines = ["def run(tx, t, out, wm):"]
    a = lines.append
    fraud_any = any(cg.fraud for cg in cgs)
    if fraud_any:
        a("    keys = None")
    ns: dict[str, Any] = {}
    for gi, cg in enumerate(cgs):
        ns[f"_S{gi}"] = states[gi]
        a(f"    # ---- group {gi}: {cg.g.entity}")
        if cg.ent_sub is None:
            a(f"    v = tx.get({cg.ent!r})")
        else:
            a(f"    v = (tx.get('extra') or _EMPTY).get({cg.ent_sub!r})")
        a("    if v is not None:")
        a(f"        st = _S{gi}.get(v)")
        a("        if st is None:")
        ns[f"_new{gi}"] = cg.new_state
        a(f"            st = _S{gi}[v] = _new{gi}(v, tx)")
        a("        ts = st[2]")
        a("        if ts and t < ts[-1]:")
        a(f"            _reorder({gi}, st, t, tx, out)")
        a("        else:")
        for line in _body(cg):
            a("            " + line)
        a(f"            if ts[0] <= wm - {cg.trim_lag!r}:")
        a(f"                _trim({gi}, st, wm - {cg.keep!r})")
        if cg.fraud:
            if not multi_fraud:
                a("        keys = st[0]")
            else:
                a("        if keys is None:")
                a("            keys = [st[0]]")
                a("        else:")
                a("            keys.append(st[0])")
        if cg.fraud and multi_fraud:
            a("    else:")
            a("        if keys is None:")
            a("            keys = [None]")
            a("        else:")
            a("            keys.append(None)")
    a("    return keys" if fraud_any else "    return None")
    source = "\n".join(lines) + "\n"
    namespace = {**_namespace(helpers["_cutoff"]), **ns, **helpers}
    exec(compile(source, "<fds.features run>", "exec"), namespace)
    return namespace["run"], source


def _namespace(cutoff: Callable[[float], float]) -> dict[str, Any]:
    return {
        "_NEG_INF": -math.inf,
        "_EMPTY": {},
        "_num": num,
        "_intern": sys.intern,
        "_bisect_right": bisect_right,
        "_sqrt": math.sqrt,
        "_cutoff": cutoff,
    }


def build_new_state(cg: Any) -> Callable[[Any, Any], list[Any]]:
    """A generated constructor ``new(key, tx)`` of the flat state list of group ``cg``
    (see :func:`assign_slots`) for an entity first seen with transaction ``tx``: no loops or
    comprehensions (entities are created often: a device idle for a day is evicted and comes
    back new).

    The shift of each summed field is the entity's first value (0 when missing): prefix sums
    of deviations from it stay small, which keeps ``std`` exact enough when values are large
    and close together.
    """
    g = cg.g
    lines = ["def new(key, tx):"]
    parts = ["key", "0", "_A('d')"]
    for fi, (k, sub) in enumerate(cg.nums):
        parts.append("_A('d')")
        if g.num_sums[fi]:
            src = f"tx.get({k!r})" if sub is None else f"(tx.get('extra') or _EMPTY).get({sub!r})"
            lines.append(f"    k{fi} = {src}")
            lines.append(f"    if k{fi}.__class__ is not float:")
            lines.append(f"        k{fi} = _num(k{fi})")
            lines.append(f"    if k{fi} != k{fi}:")
            lines.append(f"        k{fi} = 0.0")
            parts.append(f"k{fi}")
        if cg.counted[fi]:
            parts.append("_A('d', _Z)")
        if g.num_sums[fi]:
            parts.append("_A('d', _Z)")
        if g.num_squares[fi]:
            parts.append("_A('d', _Z)")
    parts += ["[]"] * len(g.cat_fields)
    if g.has_fraud:
        parts.append("bytearray()")
    parts += ["0"] * len(g.windows)
    parts += ["[]"] * g.n_mono
    parts += ["{}"] * g.n_counters
    parts += ["0"] * g.n_fraud
    assert len(parts) == cg.size
    lines.append(f"    return [{', '.join(parts)}]")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"_A": array, "_Z": (0.0,), "_num": num, "_EMPTY": {}}
    exec(compile(source, f"<fds.features new {g.entity}>", "exec"), namespace)
    return namespace["new"]
