"""``fds simulate``: write a simulated stream (transactions + delayed fraud labels) to files.

A thin layer over :mod:`fds.streams.simulator`; the lead wires :func:`register` into
``fds/cli.py``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from fds.cli import at_least, drift_day, positive_int, seed, unwritable
from fds.errors import ConfigError, FdsError
from fds.logs import json_logs, say
from fds.progress import progress_bar
from fds.streams.simulator import (
    MIN_MERCHANTS,
    Simulation,
    check_out,
    labels_path,
    simulate,
    summarize,
    write,
)
from fds.timeutil import format_ts, get_zone, parse_ts

__all__ = ["register"]


_DAY = 86400.0
# --drift-day default: the middle of the stream (day 30 of the default 60).
_MIDDLE = "middle"


def _drift(text: str) -> int | str | None:
    """``--drift-day``: a day number, ``middle``, or ``none`` for a stream without drift."""
    if text.strip().lower() == _MIDDLE:
        return _MIDDLE
    return drift_day(text, words="'middle', or 'none' for no drift")


def _start(text: str) -> str:
    """argparse type: an ISO 8601 time or epoch seconds (checked here, used as given)."""
    try:
        parse_ts(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"invalid start {text!r}: give a local midnight in ISO 8601, e.g. "
            "2026-01-01T00:00:00 (read in --timezone), or epoch seconds"
        ) from None
    return text


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """argparse type: the text, once ``check`` (which raises ConfigError) accepts it."""

    def parse(text: str) -> str:
        try:
            check(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    return parse


def _id_prefix(text: str) -> str:
    """argparse type of ``--id-prefix``: 1-32 letters, digits, ``-``, ``_``, ``.`` or ``:``,
    not ending in a digit (``t1`` and ``t`` past 10 million ids would both give ``t10000000``:
    a review)."""
    if not re.fullmatch(r"[A-Za-z0-9._:-]{0,31}[A-Za-z._:-]", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1 to 32 letters, digits or - _ . :, not ending in a digit (e.g. s2-)"
        )
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` to the ``fds`` command line."""
    p = subparsers.add_parser(
        "simulate",
        help="write a simulated card-payment stream with fraud, delayed labels and drift",
        description=(
            "Generate a realistic, drifting card-payment stream. Transactions go to --out "
            "(JSON Lines, gzip when the name ends in .gz); fraud labels, with realistic delays, "
            "go beside it as <stem>.labels.jsonl[.gz] (.ndjson and .json keep theirs). Same seed, "
            "same bytes."
        ),
    )
    p.add_argument("--days", type=positive_int, default=60, help="length in days (default 60)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("--cards", type=positive_int, default=20_000, help="cards (default 20000)")
    p.add_argument(
        "--merchants", type=at_least(MIN_MERCHANTS), default=2_000,
        help=f"merchants (default 2000; at least {MIN_MERCHANTS})",
    )  # fmt: skip
    p.add_argument(
        "--drift-day", type=_drift, default=_MIDDLE,
        help="day (0-based) the fraud pattern changes: a number, 'middle' (default: days // 2) "
        "or 'none' for no drift",
    )  # fmt: skip
    p.add_argument(
        "--start", type=_start, default="2026-01-01T00:00:00",
        help="first local midnight, ISO 8601 without offset, read in --timezone "
        "(default 2026-01-01T00:00:00)",
    )  # fmt: skip
    p.add_argument(
        "--timezone", type=_checked(get_zone), default="Asia/Seoul", help="IANA zone of local hours"
    )
    p.add_argument(
        "--out", type=_checked(check_out), required=True,
        help="transactions file (.jsonl or .jsonl.gz); labels go beside it",
    )  # fmt: skip
    p.add_argument(
        "--id-prefix", type=_id_prefix, default="t",
        help="transaction ids are this and a number from 0 (default t: t0000000, ...); give "
        "another to a second stream into the same topics or files (a continuation with a "
        "later --start): tx_ids must be unique",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress and no summary")
    # (as fds replay and fds bench precision: the README names it for all three, a QA pass)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary stays)")
    p.set_defaults(func=_simulate)


# The event times fds takes (timeutil), with a day's margin for local midnights in any zone.
_FIRST = datetime(1900, 1, 2, tzinfo=UTC).timestamp()
_LAST = datetime(9997, 12, 31, tzinfo=UTC).timestamp()


def _simulate(args: argparse.Namespace) -> int:
    quiet: bool = args.quiet
    if args.drift_day == _MIDDLE:
        args.drift_day = args.days // 2
    if args.drift_day is not None and args.drift_day >= args.days:
        raise ConfigError(
            f"--drift-day {args.drift_day} is not inside the {args.days} simulated days: "
            f"use a day below {args.days}, or 'none' for no drift"
        )
    try:  # (a traceback whose message said 1900 was allowed: a QA pass)
        begin = parse_ts(args.start, get_zone(args.timezone))
    except ValueError:  # out of range in --timezone
        begin = -math.inf
    if not (begin >= _FIRST and begin + (args.days + 70) * 86400.0 < _LAST):
        raise ConfigError(
            f"--start {args.start} with --days {args.days}: the simulated days and their labels "
            "(up to 70 days later) must fall between 1900-01-02 and 9997-12-31; give a --start "
            "inside them"
        )
    for out in (Path(args.out), labels_path(args.out)):  # (before the run, not after its
        if (problem := unwritable(out)) is not None:  # 10 s: a QA pass)
            raise ConfigError(f"cannot write {out}: {problem}; give a path in a writable directory")
    t0 = time.perf_counter()
    progress = not (quiet or args.no_progress)

    def stage(msg: str) -> None:  # (progress too: they printed under --no-progress, and as
        if progress:  # plain text among JSON logs, a QA pass)
            say(f"[{time.perf_counter() - t0:6.1f}s] {msg}", logging.INFO)

    sim = simulate(
        days=args.days,
        seed=args.seed,
        cards=args.cards,
        merchants=args.merchants,
        drift_day=args.drift_day,
        start=args.start,
        timezone=args.timezone,
        progress=stage,
        id_prefix=args.id_prefix,
    )
    t_gen = time.perf_counter() - t0
    total = len(sim.transactions) + len(sim.labels)
    try:
        with progress_bar(total, unit="rec", desc="writing", enabled=progress) as bar:
            tx_path, lab_path = write(sim, args.out, on_rows=bar.update)
    except OSError as e:
        said = f"cannot write {args.out} or {labels_path(args.out)}: {e.strerror or e}; "
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # (a failure, exit 1, not a usage error
            raise FdsError(  # telling to check the directory: a QA pass)
                f"{said}nothing was written: free space on its disk (or give another --out), "
                "then run it again"
            ) from e
        raise ConfigError(f"{said}check that the directory is writable") from e
    if not quiet:
        s = {**summarize(sim), "days": args.days}  # (local days: 13.96 across a DST change)
        t_all = time.perf_counter() - t0
        if json_logs():  # one JSON object, as fds replay's summary
            speed = {
                "generated_tx_s": s["transactions"] / t_gen,
                "written_tx_s": s["transactions"] / t_all,
            }
            record = {
                "title": "simulation",
                **s,
                **speed,
                "transactions_file": str(tx_path),
                "labels_file": str(lab_path),
                "drift_from": None if sim.drift_ts is None else format_ts(sim.drift_ts),
            }
            print(orjson.dumps(record).decode(), flush=True)
        else:
            _print_summary(sim, s, t_gen, t_all)
            print(f"transactions: {tx_path}\nlabels:       {lab_path}")
    return 0


def _print_summary(sim: Simulation, s: dict[str, Any], t_gen: float, t_all: float) -> None:
    q = s["delay_days"]
    rows = [
        (
            "transactions",
            f"{s['transactions']:,} over {s['days']:g} days, {s['cards']:,} "
            f"card{'' if s['cards'] == 1 else 's'}",
        ),
        ("frauds", f"{s['frauds']:,} ({100 * s['fraud_rate']:.2f}% of transactions)"),
        *((f"  {k}", f"{v:,}") for k, v in s["scenarios"].items()),
        ("labels", f"{s['labels']:,} (frauds only; unlabelled means legitimate)"),
        (
            "label delay",
            f"p10 {q['p10']} d, median {q['p50']} d, p90 {q['p90']} d"
            if s["labels"]
            else "none (no label)",  # (it said "p10 None d": a QA pass)
        ),
        (
            "  short / long",
            f"{100 * s['short_label_share']:.0f}% within 3.5 d (customer), "
            f"{100 * s['long_label_share']:.0f}% after 7 d (chargeback)",
        ),
        (
            "drift",
            "none"
            if sim.drift_ts is None
            else f"from day {round((sim.drift_ts - sim.start) / _DAY)} ({format_ts(sim.drift_ts)})",
        ),
        (
            "speed",
            f"{s['transactions'] / t_gen:,.0f} tx/s generated, "
            f"{s['transactions'] / t_all:,.0f} tx/s with writing",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
