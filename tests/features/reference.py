"""Brute-force reference for the feature semantics of DESIGN.md (quadratic, obviously right).

Recomputes every aggregate from the full history of accepted transactions, with no state to
get wrong: used to check :class:`fds.features.FeaturePlan` on random streams.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from fds.timeutil import get_zone, parse_duration

LATE = "late"


def _get(tx: dict[str, Any], name: str) -> Any:
    if name.startswith("extra."):
        return (tx.get("extra") or {}).get(name[6:])
    return tx.get(name)


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def reference(specs: list[Any], ops: list[dict[str, Any]], *, timezone: str, grace: float):
    """One result per transaction op: a snapshot dict, or ``LATE`` for beyond-grace events."""
    zone = get_zone(timezone)
    hist: list[dict[str, Any]] = []
    known: set[str] = set()
    fraud: dict[str, bool] = {}
    wm = -math.inf
    results: list[Any] = []
    for op in ops:
        if op["kind"] == "label":
            if op["tx_id"] in known:
                fraud[op["tx_id"]] = op["is_fraud"]
            continue
        tx = op["tx"]
        t = tx["ts"]
        if t < wm - grace:
            results.append(LATE)
            continue
        wm = max(wm, t)
        hist.append(tx)
        known.add(tx["tx_id"])
        day = datetime.fromtimestamp(t, zone).date()
        snap: dict[str, Any] = {}
        for s in specs:
            v = _get(tx, s.entity)
            if v is None:
                snap[s.name] = None
                continue
            if s.window == "calendar_day":

                def inwin(e, t=t, day=day):
                    return e["ts"] <= t and datetime.fromtimestamp(e["ts"], zone).date() == day
            else:
                width = parse_duration(s.window)

                def inwin(e, t=t, width=width):
                    return t - width < e["ts"] <= t

            window = [e for e in hist if _get(e, s.entity) == v and inwin(e)]
            others = [e for e in window if e is not tx]
            agg = s.agg
            if agg == "count":
                snap[s.name] = len(window)
            elif agg == "last_gap":
                snap[s.name] = t - max(e["ts"] for e in others) if others else None
            elif agg in ("fraud_count", "fraud_rate"):
                n = sum(1 for e in window if fraud.get(e["tx_id"], False))
                snap[s.name] = n if agg == "fraud_count" else n / len(window)
            elif agg == "distinct":
                snap[s.name] = len({_get(e, s.field) for e in window} - {None})
            elif agg == "seen":
                mine = _get(tx, s.field)
                seen = {_get(e, s.field) for e in others} - {None}
                snap[s.name] = None if mine is None else mine in seen
            else:
                xs = [_num(_get(e, s.field)) for e in window]
                xs = [x for x in xs if x is not None]
                if agg == "sum":
                    snap[s.name] = sum(xs)
                elif not xs:
                    snap[s.name] = None
                elif agg == "min":
                    snap[s.name] = min(xs)
                elif agg == "max":
                    snap[s.name] = max(xs)
                else:
                    mean = sum(xs) / len(xs)
                    if agg == "mean":
                        snap[s.name] = mean
                    else:
                        snap[s.name] = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        results.append(snap)
    return results
