"""Generate the per-group hot path: one straight-line Python function per entity group.

The plan is compiled once into source text with every window and aggregate unrolled (no loop
over declarations, no dispatch on the aggregate name, no tuple unpacking per event), then
``exec``-ed in a namespace holding only the helpers it calls. Only numbers and ``repr``-ed
names from validated declarations are interpolated, never rule text.

The generated ``append(st, t, tx, out)`` folds an in-order event (``t`` >= every timestamp in
the entity's log) into the entity state ``st`` and writes the group's features into ``out``.
Its order matters: expire per window, then answer ``seen`` (earlier transactions only), then
add the new entry to counters and min/max candidates, then read the window aggregates.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

__all__ = ["build_append", "build_new_state", "num"]

NAN = math.nan


def num(x: Any) -> float:
    """A numeric field value as float; NaN when missing or not a number."""
    if x is None or x.__class__ is bool:
        return NAN
    try:
        return float(x)
    except (TypeError, ValueError):
        return NAN


def _source(cg: Any) -> str:
    lines: list[str] = []
    a = lines.append
    a("def append(st, t, tx, out):")
    a("    ts = st.ts")
    a("    base = st.base")
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
        a(f"    num{fi} = st.num[{fi}]")
        a(f"    num{fi}.append(x{fi})")
        if cg.sums[fi]:
            sq = cg.squares[fi]
            cnt = cg.counted[fi]
            a(f"    k{fi} = st.shift[{fi}]")
            if cnt:
                a(f"    c0_{fi} = st.c0[{fi}]")
            a(f"    c1_{fi} = st.c1[{fi}]")
            if sq:
                a(f"    c2_{fi} = st.c2[{fi}]")
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
        a(f"    cat{ci} = st.cats[{ci}]")
        a(f"    cat{ci}.append(v{ci})")
    if cg.fraud:
        a("    flags = st.flags")
        a("    flags.append(0)")
        a("    st.txids.append(tx['tx_id'])")
        a("    nf = st.nf")
    if any(w[3] for w in cg.windows):
        a("    mono = st.mono")
    if any(w[4] for w in cg.windows):
        a("    ctrs = st.ctrs")
    a("    heads = st.heads")
    for wi, width, per_entry, mono, ctrs, fslot, feats in cg.windows:
        a(f"    # window {wi}: {'calendar day' if width is None else f'{width:g} s'}")
        a(f"    cut = t - {width!r}" if width is not None else "    cut = _cutoff(t)")
        a(f"    h = heads[{wi}]")
        a("    if ts[h - base] <= cut:")
        if per_entry:
            a("        while ts[h - base] <= cut:")
            a("            p = h - base")
            for slot, ci in ctrs:
                a(f"            v = cat{ci}[p]")
                a("            if v is not None:")
                a(f"                c = ctrs[{slot}]")
                a("                r = c[v] - 1")
                a("                if r:")
                a("                    c[v] = r")
                a("                else:")
                a("                    del c[v]")
            if fslot >= 0:
                a("            if flags[p]:")
                a(f"                nf[{fslot}] -= 1")
            a("            h += 1")
        else:
            a("        h = _bisect_right(ts, cut, h - base) + base")
        a(f"        heads[{wi}] = h")
        for slot, _fi, _mx in mono:
            a(f"        m = mono[{slot}]")
            a("        while m and m[0] < h:")
            a("            del m[0]")
        for agg, name, fi, slot in feats:
            if agg == "seen":
                a(f"    out[{name!r}] = None if v{fi} is None else v{fi} in ctrs[{slot}]")
        for slot, ci in ctrs:
            a(f"    if v{ci} is not None:")
            a(f"        c = ctrs[{slot}]")
            a(f"        c[v{ci}] = c.get(v{ci}, 0) + 1")
        for slot, fi, is_max in mono:
            op = "<=" if is_max else ">="
            a(f"    if x{fi} == x{fi}:")
            a(f"        m = mono[{slot}]")
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
                a(f"    m = mono[{slot}]")
                a("    if m:")
                a(f"        {o} = num{fi}[m[0] - base]")
            elif agg == "distinct":
                a(f"    {o} = len(ctrs[{slot}])")
            elif agg == "fraud_count":
                a(f"    {o} = nf[{slot}]")
            elif agg == "fraud_rate":
                a(f"    {o} = nf[{slot}] / (idx + 1 - h)")
    a("    return ts[0]")
    return "\n".join(lines) + "\n"


def build_append(cg: Any, cutoff: Callable[[float], float]) -> tuple[Callable[..., float], str]:
    """The generated ``append`` for compiled group ``cg`` and its source text.

    ``out`` must come pre-filled with ``None`` (min/max/mean/std over nothing stay ``None``).
    Returns the oldest timestamp still in the log (for the caller's trim check).
    """
    source = _source(cg)
    namespace: dict[str, Any] = {
        "_NEG_INF": -math.inf,
        "_EMPTY": {},
        "_num": num,
        "_intern": sys.intern,
        "_bisect_right": bisect_right,
        "_sqrt": math.sqrt,
        "_cutoff": cutoff,
    }
    exec(compile(source, f"<fds.features append {cg.g.entity}>", "exec"), namespace)
    return namespace["append"], source


def build_new_state(cg: Any, cls: type) -> Callable[[Any, list[float]], Any]:
    """A generated constructor ``new(key, shifts)`` of ``cls`` (a ``__slots__`` class) for
    group ``cg``: the same fields as the generic one, without loops or comprehensions
    (entities are created often: a device idle for a day is evicted and comes back new).
    """
    g = cg.g
    nf = len(g.num_fields)
    nums = ", ".join("_A('d')" for _ in range(nf))
    c0 = ", ".join("_A('d', _Z)" if cg.counted[i] else "None" for i in range(nf))
    c1 = ", ".join("_A('d', _Z)" if g.num_sums[i] else "None" for i in range(nf))
    c2 = ", ".join("_A('d', _Z)" if g.num_squares[i] else "None" for i in range(nf))
    lines = [
        "def new(key, shifts):",
        "    st = _new(_cls)",
        "    st.key = key",
        "    st.base = 0",
        "    st.ts = _A('d')",
        f"    st.num = [{nums}]",
        "    st.shift = shifts",
        f"    st.c0 = [{c0}]",
        f"    st.c1 = [{c1}]",
        f"    st.c2 = [{c2}]",
        f"    st.cats = [{', '.join(['[]'] * len(g.cat_fields))}]",
        f"    st.txids = {'[]' if g.has_fraud else 'None'}",
        f"    st.flags = {'bytearray()' if g.has_fraud else 'None'}",
        f"    st.heads = [{', '.join(['0'] * len(g.windows))}]",
        f"    st.mono = [{', '.join(['[]'] * g.n_mono)}]",
        f"    st.ctrs = [{', '.join(['{}'] * g.n_counters)}]",
        f"    st.nf = [{', '.join(['0'] * g.n_fraud)}]",
        "    return st",
    ]
    namespace: dict[str, Any] = {"_A": array, "_Z": (0.0,), "_new": object.__new__, "_cls": cls}
    exec(compile("\n".join(lines) + "\n", f"<fds.features new {g.entity}>", "exec"), namespace)
    return namespace["new"]
