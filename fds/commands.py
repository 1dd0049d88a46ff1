"""``fds replay`` and ``fds demo``: the user's doors onto the engine."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fds.cli import (
    at_least,
    drift_day,
    file_or_none,
    file_path,
    folder,
    labels_not_input,
    positive_int,
    same_file,
    seed,
    unwritable,
)
from fds.errors import ConfigError
from fds.features.kernel import Compiler
from fds.logs import loggers_at, say
from fds.metrics import (
    METRICS_HOST,
    PUSH_EVERY_S,
    Metrics,
    Pusher,
    add_metrics_arguments,
    pushgateway_url,
    serve,
)
from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES, build_engine
from fds.streams.files import (
    ColumnMapping,
    JsonlSink,
    beside,
    check_label_columns,
    check_transaction_columns,
    csv_header,
    file_error,
    gzipped,
    infer_format,
    jq_command,
    load_mapping,
    separator_name,
)
from fds.timeutil import EPOCH_2000, format_ts, span

if TYPE_CHECKING:
    from fds.replay import ReplaySummary

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="run a historical file (CSV, JSON Lines, Parquet; gzip) through the engine",
        description="Replay a historical file through the same code path as the Kafka service.",
    )
    p.add_argument(
        "file",
        type=file_path("transactions file"),
        help="transactions file: .csv, .jsonl (.json, .ndjson), optionally .gz; .parquet (with "
        "pyarrow)",
    )
    p.add_argument(
        "--mapping", type=file_path("column mapping file"),
        help="YAML column mapping for foreign column names",
    )  # fmt: skip
    p.add_argument(
        "--labels", type=file_path("labels file"),
        help="labels file (JSONL/CSV: tx_id, ts, is_fraud)",
    )  # fmt: skip
    p.add_argument(
        "--rules",
        type=file_or_none("rules file"),
        default=DEFAULT_RULES,
        help="rules YAML, or 'none' (default: the shipped rules/default.yaml)",
    )
    p.add_argument(
        "--model",
        type=file_or_none("model spec"),
        default=DEFAULT_MODEL,
        help="model spec YAML, or 'none' (default: the shipped models/default.yaml)",
    )
    p.add_argument(
        "--out",
        type=file_path("decisions file"),  # ('' was "cannot write --out .": a QA pass)
        default=Path("decisions.jsonl"),
        help="decisions JSONL (default: decisions.jsonl; .gz to compress)",
    )
    p.add_argument(
        "--dlq",
        type=file_path("dead-letter file"),
        help="dead letters JSONL (default: beside --out, decisions.jsonl -> decisions.dlq.jsonl)",
    )
    p.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="pace by event time, e.g. 60 = one hour of data per minute "
        "(default: as fast as possible)",
    )
    add_metrics_arguments(p, -1)
    p.add_argument(
        "--pushgateway",
        type=pushgateway_url,
        metavar="URL",
        help="push the metrics to this Prometheus Pushgateway (host:port) every "
        f"{PUSH_EVERY_S:.0f} s and at the end, so Prometheus keeps the final counts",
    )
    p.add_argument(
        "--push-job",
        type=_push_job,
        default=None,
        metavar="NAME",
        help="the Pushgateway job the metrics are pushed as (default fds_replay; a run "
        "replaces the last run's metrics of its job)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_replay)

    d = sub.add_parser(
        "demo",
        help="the embedded default: a simulated drifting stream through the whole engine",
        description="Simulate a card-payment stream with a scheduled fraud drift, run it through "
        "features, rules and the adaptive model in-process, and print the precision of rules "
        "alone vs rules + adaptive model at the same daily alert budget. No Kafka needed.",
    )
    d.add_argument(  # (1-6 passed the flag, then "need --days >= 7": a QA pass)
        "--days", type=at_least(7), default=45, help="days to simulate, 7 or more (default 45)"
    )
    d.add_argument("--cards", type=positive_int, default=5_000, help="cards (default 5,000)")
    d.add_argument(
        "--drift-day", type=_demo_drift_day, default=None,
        help="day the fraud pattern changes (default 21; the middle of a stream of <= 21 days)",
    )  # fmt: skip
    d.add_argument("--seed", type=seed, default=7, help="random seed of the simulator")
    d.add_argument(
        "--rules",
        type=file_path("rules file"),
        default=DEFAULT_RULES.with_name("pre-drift.yaml"),
        help="the rules-alone baseline (default rules/pre-drift.yaml: the rules a team had "
        "before the drift; rules/default.yaml was tuned knowing the drift pattern)",
    )
    d.add_argument(
        "--out-dir",
        type=folder,
        default=Path("demo-out"),
        help="where the report and plots go (default demo-out/)",
    )
    d.set_defaults(func=_demo)


def _demo_drift_day(text: str) -> int:
    """argparse type of the demo's ``--drift-day``: a whole day (the demo shows a drift, so
    ``none`` is said as such: it was `invalid int value`, a QA pass)."""
    day = drift_day(text, "leave it out for day 21")
    if day is None:
        raise argparse.ArgumentTypeError(
            "the demo shows a drift: give its day (>= 2), or leave it out for day 21; "
            "`fds bench precision --drift-day none` runs a stream without one"
        )
    return day


def _demo(args: argparse.Namespace) -> int:
    import logging

    from fds.bench import run_precision, shown_path, unwritable_dir, warmup_before

    if args.drift_day is None:  # (a fixed 21 refused `--days 20` the user never gave it)
        args.drift_day = 21 if args.days > 21 else args.days // 2
    if not 2 <= args.drift_day < args.days:  # (the values: a QA pass)
        say(f"fds demo: error: need 2 <= --drift-day < --days (got --days {args.days}, "
            f"--drift-day {args.drift_day})")  # fmt: skip
        return 2
    if not Path(args.rules).is_file():  # (said without the flag's name: a QA pass)
        what = "a folder" if Path(args.rules).is_dir() else "no such file"
        say(f"fds demo: error: --rules {args.rules}: {what} (the rules-alone baseline)")
        return 2
    try:  # (read before the stream is made: a broken file was "no known fraud", a QA pass)
        from fds.rules.ruleset import load_ruleset

        load_ruleset(args.rules, log_notes=False)
    except ConfigError as e:
        say(f"fds demo: error: --rules: {e}")
        return 2
    why = unwritable_dir(args.out_dir)  # (before the run, not after it: a QA pass)
    if why:
        say(f"fds demo: error: --out-dir {str(args.out_dir)!r}: cannot write there ({why}): "
            "name a folder you can write to")  # fmt: skip
        return 2
    # (after the checks: a refused demo left the process's fds logger at WARNING, a CI run)
    # the progress bar and the table tell the story; -v shows every swap. A model's automatic
    # rollback is a swap too (two warnings before the table looked like a failure to a README
    # walk): counted in the line under the table. The bar's progress lines stay, when stderr
    # is no terminal (71 s of silence: a QA pass).
    levels = {} if args.verbose else {"fds": logging.WARNING, "fds.models": logging.ERROR}
    if not args.verbose and not args.quiet:
        levels["fds.progress"] = logging.INFO
    with loggers_at(levels):
        res = run_precision(
            days=args.days,
            cards=args.cards,
            seed=args.seed,
            drift_day=args.drift_day,
            warmup_days=warmup_before(args.drift_day),
            rules=str(args.rules),
            out_dir=args.out_dir,
            name="demo",
            command=f"fds demo --days {args.days} --cards {args.cards} "
            f"--drift-day {args.drift_day} --seed {args.seed} --rules {shown_path(args.rules)}",
            longer_warmup="give a later --drift-day (the warm-up is the days before it, up to 14)",
            compiler=Compiler.from_env(),
        )
    say(f"report and plots: {args.out_dir}/", logging.INFO)
    return 0 if res is not None else 1


def _own_stream(path: Path | None) -> str | None:
    """``standard output`` / ``standard error`` when ``path`` is this process's, else None
    (/dev/null is none: nothing written there is lost)."""
    if path is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        here = os.stat(path)
        if os.path.samestat(here, os.stat(os.devnull)):
            return None
        for fd, name in ((1, "standard output"), (2, "standard error")):
            if os.path.samestat(os.fstat(fd), here):
                return name
    return None


def dlq_path_for(out: Path) -> Path:
    """``decisions.jsonl`` -> ``decisions.dlq.jsonl`` (beside ``--out``), the suffix in any
    case (``D.JSONL`` was ``D.JSONL.dlq.jsonl``: a QA pass).

    >>> [dlq_path_for(Path(n)).name for n in ("d.jsonl", "D.JSONL", "d.json", "d.jsonl.gz", "d")]
    ['d.dlq.jsonl', 'D.dlq.JSONL', 'd.dlq.json', 'd.dlq.jsonl.gz', 'd.dlq.jsonl']
    """
    name = out.name
    for suffix in (".jsonl.gz", ".jsonl", ".json"):
        if name.lower().endswith(suffix):
            cut = len(name) - len(suffix)
            return out.with_name(name[:cut] + ".dlq" + name[cut:])
    return out.with_name(name + ".dlq.jsonl")


def _speed(text: str) -> float:
    """argparse type of ``--speed``: a number (its range is checked by the command)."""
    try:
        return float(text)
    except ValueError:  # (argparse's own "invalid float value" gave no advice: a QA pass)
        raise argparse.ArgumentTypeError(
            f"invalid speed {text!r}: give a number > 0, e.g. --speed 60 (an hour of data a minute)"
        ) from None


def _say_labels_beside(file: Path) -> None:
    """A replay without labels of a file whose labels lie beside it (as `fds simulate` writes
    them): said, with the flag to give (it learned nothing and measured no precision without a
    word: a README walk)."""
    from fds.streams.simulator import labels_path

    beside = labels_path(file)
    if beside != file and beside.is_file():
        say(
            f"fds replay: note: {beside} is beside the input; give --labels {beside} to learn "
            "from its labels and measure precision",
            logging.INFO,
        )


def _push_job(text: str) -> str:
    """argparse type of ``--push-job``: a name, not empty, nor ``.`` or ``..`` (a path step
    the URL resolves: the Pushgateway was blamed for its redirect, a QA pass)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give the job a name, e.g. --push-job nightly_replay")
    if text.strip() in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a step of a URL path, not a job name: give a name, e.g. "
            "--push-job nightly_replay"
        )
    return text


def _replay(args: argparse.Namespace) -> int:
    pushers: list[Pusher] = []
    code = 1
    try:
        code = _replay_file(args, pushers)
        return code
    finally:  # (the final push, once the exit code is known: a failed run is no success)
        for pusher in pushers:
            pusher.stop(succeeded=code == 0)


def _replay_file(args: argparse.Namespace, pushers: list[Pusher]) -> int:
    from fds import replay as replay_mod  # (the engine: not to build the command line)

    if args.speed is not None and not 0 < args.speed < math.inf:  # (nan too; inf, a QA pass)
        say(
            "fds replay: error: --speed must be > 0 and finite (e.g. --speed 60; without it: "
            "as fast as possible)"
        )
        return 2
    if args.metrics_port < 0 and args.metrics_host is not None:  # (ignored: a QA pass)
        say("fds replay: error: --metrics-host needs --metrics-port N: a replay serves no metrics "
            "without it (0: any free port)")  # fmt: skip
        return 2
    if args.pushgateway is None and args.push_job is not None:
        say("fds replay: error: --push-job needs --pushgateway URL: a replay pushes no metrics "
            "without it")  # fmt: skip
        return 2
    for flag, path in (("input file", args.file), ("--labels file", args.labels)):
        if path is not None and (problem := file_error(path, flag)) is not None:
            say(f"fds replay: error: {problem}")
            return 2
    # (the default dead-letter file is only made when there is a dead letter)
    for flag, path in (("--out", args.out), ("--dlq", args.dlq)):
        problem = unwritable(path) if path is not None else None
        if problem:
            say(
                f"fds replay: error: cannot write {flag} {path}: {problem}; give a path in "
                "a writable directory"
            )
            return 2
    for flag, path in (("--out", args.out), ("--dlq", args.dlq)):
        if (std := _own_stream(path)) is not None:  # (/dev/stdout: the table was written over
            say(  # the first decisions, and `>> log` truncated the log: a review)
                f"fds replay: error: {flag} {path} is this process's {std}, where the summary "
                "and the warnings go too: give it a file"
            )
            return 2
    odd = args.out.is_symlink() or (args.out.exists() and not args.out.is_file())
    if args.dlq is None and odd:
        say(  # (--out /dev/stdout put its dead letters in /dev/stdout.dlq.jsonl: a QA pass)
            f"fds replay: error: --out {args.out} is a link or no regular file: the dead "
            "letters cannot go beside it; give them a file with --dlq FILE"
        )
        return 2
    dlq_path = args.dlq or dlq_path_for(args.out)  # (after: --out . had no name, a traceback)
    for flag, path in (("--out", args.out), ("--dlq", args.dlq)):
        name = str(path or "").lower().removesuffix(".gz")
        if name.endswith((".csv", ".tsv", ".parquet")):  # (a decisions.csv of JSON Lines was
            say(  # read as CSV by whatever opened it next: a QA pass)
                f"fds replay: warning: {flag} {path}: fds writes JSON Lines (one JSON object "
                "a line) whatever the name: name it .jsonl",
                logging.WARNING,
            )
    # Files this run reads: an output over one truncated it (the input while the reader was
    # still in it; the rules or the mapping for the next run).
    reads = [
        (what, Path(x))
        for what, x in (
            ("input file", args.file),
            ("--labels file", args.labels),
            ("--rules file", args.rules),
            ("--mapping file", args.mapping),
            ("--model spec", args.model),
        )
        if x is not None and Path(x).is_file()
    ]
    dlq_flag = "--dlq" if args.dlq else "the dead-letter file beside --out,"
    for flag, path in (("--out", args.out), (dlq_flag, dlq_path)):
        same = next(((what, x) for what, x in reads if same_file(path, x)), None)
        if same is not None:  # (one beside --out was named --dlq, not given: a QA pass)
            fix = "give another path" if args.dlq or flag == "--out" else "give --dlq FILE"
            say(f"fds replay: error: {flag} {path} is the {same[0]} {same[1]}; {fix}")
            return 2
    if same_file(args.out, dlq_path):  # the decisions were written over the dead letters
        say(f"fds replay: error: --dlq {dlq_path} is the --out file; give another path")
        return 2
    labels_not_input(args.labels, args.file)
    mapping = load_mapping(args.mapping) if args.mapping else None
    check_transaction_columns(args.file, mapping)
    check_label_columns(args.labels, mapping)
    if args.labels is None and (mapping is None or mapping.label is None):
        _say_labels_beside(Path(args.file))
    metrics = Metrics()
    engine = build_engine(
        args.rules, args.model, metrics=metrics, watch=True, compiler=Compiler.from_env()
    )
    with contextlib.ExitStack() as stack:
        stack.callback(engine.close)
        stream = replay_mod.open_stream(args.file, mapping=mapping, labels_path=args.labels)
        stream.sort_hint = sort_by_time(args.file, mapping)
        if args.metrics_port >= 0:
            host = args.metrics_host or METRICS_HOST
            server = stack.enter_context(serve(metrics, host, args.metrics_port))
            say(f"serving metrics on {server.url}", logging.INFO)
        if args.pushgateway is not None:
            job = args.push_job or "fds_replay"
            pushers.append(Pusher(metrics, args.pushgateway, job).start())
            say(f"pushing metrics to {args.pushgateway} as job {job}", logging.INFO)
        # Only now, every usage error said (a port in use removed the last run's decisions: a
        # QA pass): a previous run's output would pass for this one's (when nothing is decided
        # or dead-lettered)
        for old in (args.out, dlq_path):
            if old.is_symlink():  # written through (it was deleted: --out /dev/stdout made a
                if old.is_file():  # file of the machine's /dev/stdout as root, a QA pass)
                    old.open("wb").close()
            elif old.is_file():
                old.unlink()
        # (eager: a rerun that decides nothing leaves an empty file, not none: a QA pass)
        sink = stack.enter_context(JsonlSink(args.out, eager=True))
        dlq = stack.enter_context(JsonlSink(dlq_path))
        rules = getattr(engine.rules, "applied", engine.rules)
        unseen = replay_mod.watch_fields(stream, getattr(rules, "features", ()))
        summary = replay_mod.run(
            engine,
            stream,
            sink,
            dlq,
            source=str(args.file),
            speed=args.speed,
            progress=not args.no_progress,
        )
    replay_mod.print_summary(summary, metrics.summary(), title=f"replay of {args.file}")
    if stream.reordered:
        n, beyond = stream.reordered, stream.late
        say(
            f"fds replay: input not in time order: {n:,} "
            + (
                "record was out of order (read after one with a later ts) and was"
                if n == 1
                else "records were out of order (each read after one with a later ts) and were"
            )
            + " replayed sorted by ts"
            + (
                f"; {beyond:,} {'was' if beyond == 1 else 'were'} beyond the reorder buffer "
                f"({replay_mod.REORDER_BUFFER:,} records) and decided after later records"
                + (  # (with no feature, no window: "0 beyond it" misled, a README walk)
                    f", on the window state those left (those within the grace period"
                    f"{_grace(engine)} folded in exactly; {summary.late:,} beyond it: `late "
                    "events` above)"
                    if engine.features is not None
                    else ""
                )
                + ": to decide each in its time, replay the file sorted by time first: "
                + sort_by_time(args.file, mapping)
                if beyond
                else ""
            ),
            logging.WARNING,
        )
    if stream.second_pass:
        # (a file sorted by card, then time: a card's first-pass time that came after another
        # card's later one was read as the second pass, an hour late, 19 decisions of a QA
        # file; which pass it is cannot be told from the time itself)
        unsorted = (
            f"; the file is out of time order too ({stream.reordered:,} records above), so some "
            "of these may be first-pass times read an hour late: give the times their UTC "
            "offset (2026-10-25 02:30:00+02:00) or write them in UTC, or write the file sorted "
            "by time where it is made (a sort of these local times mixes the two passes)"
            if stream.reordered
            else ""
        )
        say(
            f"fds replay: {stream.second_pass:,} local "
            + ("time" if stream.second_pass == 1 else "times")
            + " of an hour a DST change repeats "
            + ("was" if stream.second_pass == 1 else "were")
            + f" read as its second pass (they came after later times in the file){unsorted}",
            logging.WARNING,
        )
    if mapping is not None and mapping.label and not stream.labelled and summary.decided:
        # (a JSON Lines file whose records name it otherwise: 0 labels without a word, where a
        # CSV without the column is refused; a record may leave it out, so not refused: a review)
        say(
            f"fds replay: warning: the mapping's label column ({mapping.label.column!r}) was in "
            f"none of the {summary.decided:,} transactions decided: no labels were read from "
            "them; check its name against the file's (`label: column:` in the --mapping)",
            logging.WARNING,
        )
    say(
        f"decisions: {args.out}" + (f"  dead letters: {dlq_path}" if summary.dead_letters else ""),
        logging.INFO,
    )
    if unmatched := replay_mod.no_fraud_decided(summary):
        say(f"fds replay: warning: {unmatched}", logging.WARNING)
    if summary.last_ts is not None and summary.last_ts < EPOCH_2000:
        # (seconds from the dataset's own reference date, IEEE-CIS's TransactionDT, were
        # replayed as January 1970 without a word: a QA pass)
        fix = (
            "check its ts_origin"
            if mapping is not None and mapping.ts_origin is not None
            else "give it as ts_origin in the --mapping (e.g. ts_origin: 2017-12-01)"
        )
        serial = (  # (a spreadsheet's date serials, 46023.5, were told to be given as
            # ts_origin, which counts seconds: a QA pass)
            "; if they are a spreadsheet's date serials (days since 1899-12-30, e.g. 46023.5), "
            "format the column as a date and time in the spreadsheet before exporting it"
            if 20_000 <= summary.last_ts < 80_000 else ""
        )  # fmt: skip
        say(
            f"fds replay: warning: every transaction is dated before 2000 (the last at "
            f"{format_ts(summary.last_ts)}): if the file's times count seconds from another "
            f"origin than 1970, {fix}{serial}",
            logging.WARNING,
        )
    elif summary.first_before_2000 is not None:  # (some: decided in 1970, a QA pass)
        tx_id, ts = summary.first_before_2000["tx_id"], summary.first_before_2000["ts"]
        n = summary.dated_before_2000
        say(
            f"fds replay: warning: {n:,} transaction{'s' if n != 1 else ''} among later ones "
            f"{'were' if n != 1 else 'was'} dated before 2000 and decided so (the first: "
            f"tx_id {tx_id!r} at {format_ts(ts)}): if the time column mixes a spreadsheet's "
            "date serials (days since 1899-12-30, e.g. 46023.5) or seconds from another "
            "origin with dates, format it as a date and time where the file is made",
            logging.WARNING,
        )
    if summary.learn_errors:  # (a traceback halfway through the replay: a QA pass)
        say(
            f"fds replay: warning: the model raised on {summary.learn_errors:,} example(s) "
            f"while learning ({summary.learn_error}): they were not learned; its estimator "
            "cannot learn this stream as it is: try another in the --model spec",
            logging.WARNING,
        )
    absent = unseen()
    if absent and not summary.interrupted:
        say(f"fds replay: warning: {absent}", logging.WARNING)
    never = _never_evaluated(engine, metrics, summary)
    if never:  # (10 of 14 default rules never fired on a file without channel, mcc or device,
        shown = ", ".join(f"{rid} ({why})" for rid, why in never[:5])  # a QA pass; each with
        more = f" and {len(never) - 5} more" if len(never) > 5 else ""  # what was missing)
        ruleset: Any = getattr(engine.rules, "applied", engine.rules)
        features = {f.name for f in ruleset.features} & set(ruleset.missing_names())
        also = (  # (a feature was told to be mapped as a column: a QA pass)
            f"; a feature without a value ({', '.join(sorted(features)[:3])}) is no column: "
            "its entity's history held none (a card's first payment has no last_gap)"
            if features else ""
        )  # fmt: skip
        missing = {n for _, why in never for n in _MISSING_NAME.findall(why)}
        mapped = [  # (a mistyped column of a JSON Lines file was told to be mapped: a QA)
            f"{field} from {column!r}"
            for field, column in (mapping.fields.items() if mapping is not None else ())
            if field in missing
        ]
        wrong = (
            f"; the --mapping reads {', '.join(mapped[:3])}, a column with a value in no "
            "record: is its name spelt as in the file?"
            if mapped else ""
        )  # fmt: skip
        say(
            f"fds replay: warning: {len(never)} rule(s) were skipped on every transaction, a "
            f"name they read missing from each: {shown}{more}; map the columns they read "
            f"(--mapping) or they never fire{wrong}{also}",
            logging.WARNING,
        )
    label = mapping.label if mapping is not None else None
    if label is not None and summary.label_dead_letters and not summary.interrupted:
        say(  # (2,000 label dead letters, exit 0, without a word: a QA pass)
            f"fds replay: warning: {summary.label_dead_letters:,} value(s) of the label column "
            f"{label.column!r} were neither fraud nor legitimate: their transactions were "
            f"decided, the labels are in {dlq_path} (stage label)",
            logging.WARNING,
        )
    # (every label: none read, none after the end; one bad line of 95 said "every", a QA pass)
    if (
        args.labels is not None
        and summary.label_dead_letters
        and not (summary.labels_read or summary.labels_after_end)
    ):
        say(
            f"fds replay: warning: every label of {args.labels} was a dead letter (their "
            f"reasons are in {dlq_path}): a labels file has the columns tx_id, ts, is_fraud "
            "(or name its own under labels_file: in the --mapping)",
            logging.WARNING,
        )
    elif args.labels is not None and not (
        summary.labels_read or summary.labels_after_end or summary.interrupted
    ):  # (a header alone was read without a word)
        say(f"fds replay: warning: {args.labels} holds no labels", logging.WARNING)
    elif summary.labels_after_end and not (summary.labels_read or summary.interrupted):
        say(  # (learned nothing, published no version, without a word: a QA pass)
            f"fds replay: warning: every label ({summary.labels_after_end:,}) is dated after "
            "the last transaction, so none was learned: a replay learns a label at its own "
            "time (when it became known); replay the transactions up to then too",
            logging.WARNING,
        )
    # A file cut short (a truncated download): an error, exit 1 (a third of a .gz lost was one
    # dead letter and exit 0, then a warning and exit 0: a script took it as replayed whole,
    # QA passes); what came before the cut is decided.
    cut = not summary.interrupted and stream.damaged is None
    if cut and stream.cut is not None:
        say(
            f"fds replay: error: {args.file} could not be read to its end: {stream.cut}; the "
            "records after that are not in the replay (their decisions are not in "
            f"{args.out}): replay a good copy of the file"
        )
    if cut and stream.labels_cut is not None:
        say(
            f"fds replay: error: the labels file {stream.labels_cut} (could not be read to "
            "its end); the labels after that were not learned: replay with a good copy of it"
        )
    cut = cut and (stream.cut or stream.labels_cut) is not None
    if stream.damaged is not None and not summary.interrupted:  # (exit 0 and garbage decided
        say(  # without a word: a QA pass flipped one byte of a .gz)
            f"fds replay: error: {args.file} is damaged: {stream.damaged}; the records read "
            f"before that may be corrupt too (their decisions are in {args.out}): replay a good "
            "copy of the file"
        )
        return 1
    if summary.interrupted:
        say(
            f"fds replay: interrupted after {summary.decided:,} "
            f"decision{'' if summary.decided == 1 else 's'}; the files hold "
            "them (run again to replay the whole file)",
            logging.WARNING,
        )
        return 130
    if not summary.transactions:  # (an empty file printed a table of zeros, exit 0)
        say(f"fds replay: error: {args.file} holds no transactions")
        return 1
    dead = summary.dead_letters - summary.label_dead_letters
    if dead and not summary.decided:
        top = summary.top_reason or ""
        say(
            f"fds replay: error: no transaction could be decided, every one was dead-lettered "
            f"(most often {top}); {_advice(top, args, 'every')}; the dead letters are in "
            f"{dlq_path}"
        )
        return 1
    if dead >= DEAD_SAY * summary.transactions and dead >= 10:  # (49 of 50 rows dead letters
        top = summary.top_reason or ""  # exited 0 without a word: a QA pass)
        say(
            f"fds replay: warning: {dead:,} of {summary.transactions:,} transactions "
            f"({dead / summary.transactions:.0%}) were dead-lettered (most often {top}); "
            f"{_advice(top, args, 'these')}; they are in {dlq_path}",
            logging.WARNING,
        )
    return 1 if cut else 0


#: The share of a replay's transactions dead-lettered from which it warns (all: an error).
DEAD_SAY = 0.1


def _advice(top: str, args: argparse.Namespace, which: str) -> str:
    """What to do about the dead letters of a replay, most often for reason ``top``, ``which``
    ("every", "these") of its transactions."""
    stage = top.split(":", 1)[0]
    said = next((fix for mark, fix in _FIXES if mark in top), None)
    if said is not None:  # (it said FILE > FILE.jsonl, not the file's name: a QA pass)
        said = said.replace("{jq}", jq_command(Path(args.file), ".[]"))
    dated = "timestamp" in top  # (the columns are right: "map its columns" misled, a QA pass)
    dates = _ts_advice(top) if dated and said is None else ""
    guard = ", e.g. guard a rule that raises: `avg > 0 and amount / avg > 3`"
    check = (
        said
        if said is not None
        else "fds reads JSON Lines (one object per line) and CSV in UTF-8: convert the file"
        if stage == "parse" and which == "every"
        else "those lines could not be read (their positions are in the dead letters): check them"
        if stage == "parse"
        else f"the {stage} stage fails on {which} transaction{'s' * (which != 'every')}: fix it"
        + (guard if stage == "rules" else "")
        if stage != "validate"
        else "check the file against --mapping (fields, timezone)"
        if args.mapping
        else ""
        if dated
        else "map its columns with --mapping"
    )
    return ", and ".join(h for h in (check, dates) if h)


#: A reason that names a mapping option, and what to do when every record is dead-lettered
#: for it (the advice was "convert the file" for an encoding the reason named, and named
#: neither decimal: nor thousands: for a decimal comma: a QA pass).
_DAY_TIME = re.compile(
    r"timestamp '(\d{1,2})([/.-])(\d{1,2})\2(\d{4})(?:([ T])\d{1,2}:\d{2}(:\d{2})?(\.\d+)?)?'"
)
#: ... and one with the year first (`2026/01/05 08:04:13`: year-first with dashes is ISO 8601).
_YEAR_FIRST = re.compile(
    r"timestamp '\d{4}([/.])\d{1,2}\1\d{1,2}(?:([ T])\d{1,2}:\d{2}(:\d{2})?(\.\d+)?)?'"
)


def _time_codes(t: str | None, secs: str | None, frac: str | None) -> str:
    """The layout of a time after a date (``t``: what separates them; none: a date alone)."""
    if not t:
        return ""
    return f"{t}%H:%M" + (":%S" if secs else "") + (".%f" if frac else "")


def _ts_advice(reason: str) -> str:
    """What to give for the times of a file whose every ``ts`` was refused: the layout of the
    first one refused, as far as it tells (the same day-first layout was advised to every
    file: one with seconds, or month-first, then failed again, a QA pass).

    >>> _ts_advice("ts: timestamp '12/25/2026 08:04:13' is neither ...")[54:]
    "ts_format: '%m/%d/%Y %H:%M:%S' (12/25/2026 08:04:13)"
    >>> _ts_advice("ts: timestamp '2026/01/05 08:04' is neither ...")[54:]
    "ts_format: '%Y/%m/%d %H:%M' (2026/01/05 08:04)"
    >>> _ts_advice("ts: timestamp '13.03.2026' is neither ...")[54:]
    "ts_format: '%d.%m.%Y' (13.03.2026)"

    (A date alone or the year first was advised the day-first layout with a time, which fits
    neither: a review.)
    """
    either = ""
    if (m := _YEAR_FIRST.search(reason)) is not None:
        sep, t, secs, frac = m.groups()
        layout = f"%Y{sep}%m{sep}%d" + _time_codes(t, secs, frac)
    elif (m := _DAY_TIME.search(reason)) is not None:
        a, sep, b, _, t, secs, frac = m.groups()
        # the codes of the first and second numbers: month-first where the second is past 12
        one, two = ("%m", "%d") if int(b) > 12 else ("%d", "%m")
        layout = f"{one}{sep}{two}{sep}%Y" + _time_codes(t, secs, frac)
        if int(a) <= 12 and int(b) <= 12:
            either = f"; or '{two}{sep}{one}{sep}%Y...' if the month comes first"
    else:
        return (
            "give timestamps as ISO 8601 or epoch seconds, or give the layout of others "
            "(day-first 01/03/2026 08:04) in the --mapping: ts_format: '%d/%m/%Y %H:%M'"
        )
    value = m.group(0).removeprefix("timestamp '").removesuffix("'")
    return (
        "give the layout of the file's times in the --mapping: "
        f"ts_format: '{layout}' ({value}{either})"
    )


_FIXES = (
    ("ts_format", "check the mapping's ts_format against the file's times"),
    # (the CSV reason's words: a JSON Lines reason names encodings too, and a --mapping's
    # encoding: is not used for JSON Lines, which is UTF-8: a review)
    (
        "give it in the --mapping: encoding:",
        "give the file's encoding in the --mapping (encoding: cp1252, latin-1, ...)",
    ),
    ("decimal:", "say how the file writes numbers in the --mapping (decimal:, thousands:)"),
    # (a one-line JSON array was told to map its columns, which no mapping can: a QA pass)
    (
        "must be a JSON object, got list",
        "the file holds JSON arrays: fds reads JSON Lines, one object per line: convert it, "
        "e.g. {jq}",
    ),
)


def _grace(engine: Any) -> str:
    """`` (5.0 min, the rules file's grace:)``: the grace period of ``engine``'s features."""
    grace = getattr(engine.features, "grace", None)
    return "" if grace is None else f" ({span(grace)}, the rules file's `grace:`)"


def sort_by_time(path: Path, mapping: ColumnMapping | None) -> str:
    """How to sort the file ``path`` by its time column (the ``mapping``'s ``ts:`` one): a
    command for a CSV with a header (``sort`` by the column's place) or JSON Lines (``jq``).

    >>> print(sort_by_time(Path("a b.jsonl"), None))
    by its field 'ts', e.g. jq -c -s 'sort_by(.["ts"]) | .[]' 'a b.jsonl' > 'a b.sorted.jsonl'
    """
    column = mapping.fields.get("ts", "ts") if mapping is not None else "ts"
    mapped = " (the mapping's ts)" if mapping is not None and "ts" in mapping.fields else ""
    try:
        fmt = infer_format(path, mapping.format if mapping is not None else None)
    except ConfigError:
        fmt = None
    gz = gzipped(path)
    out = shlex.quote(str(beside(path, "sorted")))
    src = shlex.quote(str(path))
    read = f"zcat {src} | " if gz else ""  # (a .gz is sorted into a plain file)
    if mapping is not None and mapping.ts_format:  # (sorted as text, 01.03.2026 came before
        head = ", its header line kept first," if fmt == "csv" else ""  # (02.01.2026: the
        return (  # command given left the file out of order, a QA pass)
            f"by its column {column!r}{mapped}{head} with a tool that reads its times as the "
            f"mapping's ts_format {mapping.ts_format!r} does (as text they do not sort in time "
            "order)"
        )
    if fmt == "csv":
        with contextlib.suppress(ConfigError, OSError):
            header = csv_header(path, mapping)
            if header is not None and column in header.columns:
                k = header.columns.index(column) + 1
                n, sep = header.line, header.separator  # (n: 2 after Excel's sep= line, kept first)
                head, tail = (
                    (f"{read}head -n {n}", f"{read}tail -n +{n + 1}")
                    if gz
                    else (f"head -n {n} {src}", f"tail -n +{n + 1} {src}")
                )
                t = "$'\\t'" if sep == "\t" else shlex.quote(sep)
                return (
                    f"by its column {column!r}{mapped}, field {k} of a row, e.g. ({head} && "
                    f"{tail} | sort -s -t{t} -k{k},{k}) > {out} (-k{k},{k}n for epoch numbers; "
                    "ISO times written alike sort as text; a quoted field with a "
                    f"{separator_name(sep)} or a line break in it needs a CSV tool)"
                )
        return f"by its column {column!r}{mapped}, its header line kept first"
    if fmt == "jsonl":
        jq = "jq -c -s " + shlex.quote(f"sort_by(.[{orjson.dumps(column).decode()}]) | .[]")
        cmd = f"{read}{jq} > {out}" if gz else f"{jq} {src} > {out}"
        return f"by its field {column!r}{mapped}, e.g. {cmd}"
    return (
        f"by its column {column!r}{mapped} (e.g. pandas: df.sort_values({column!r}, kind='stable'))"
    )


#: The names in a rule's reasons for skips (``channel missing on 50, ts missing on 2``).
_MISSING_NAME = re.compile(r"(?:^|, )(\S+) missing on ")


#: An interrupted replay says which rules were skipped on every transaction only after this
#: many were decided (a card's first payments have no history yet).
_NEVER_AFTER = 1000


def _never_evaluated(
    engine: Any, metrics: Metrics, summary: ReplaySummary
) -> list[tuple[str, str]]:
    """The rules skipped for a missing input on every transaction that ran them, each with the
    names that were missing (``fds_rule_missing_inputs_total`` counts the skips). A rule ran on
    the decided transactions, those a stage after the rules dead-lettered, and those a rule
    after it raised on (counting the decided ones only, a rule before one that raised was said
    skipped on every transaction though it hit others: a QA pass)."""
    ruleset = getattr(engine.rules, "applied", engine.rules)
    if ruleset is None or not summary.decided:
        return []
    if summary.interrupted and summary.decided < _NEVER_AFTER:  # (Ctrl-C after 2 decisions:
        return []  # a rule "skipped on every transaction" for a card's first, a QA pass)
    # The counters read in one collection of the registry: get_sample_value collects all of
    # it at each call (minutes after the last decision with 2,000 rules: a QA pass).
    skips = {
        s.labels["rule"]: s.value
        for family in metrics.registry.collect()
        if family.name == "fds_rule_missing_inputs"
        for s in family.samples
        if s.name == "fds_rule_missing_inputs_total"
    }
    ran = summary.decided + summary.dead_after_rules + sum(summary.dead_by_rule.values())
    never = []
    for r in ruleset.evaluated:  # (in order: the rules after one that raised did not run)
        if skips.get(r.id, 0) >= ran:
            never.append((r.id, ruleset.why_skipped(r.id)))
        ran -= summary.dead_by_rule.get(r.id, 0)
    return never
