"""``fds rules check`` and ``fds rules backtest``: a thin layer over :mod:`fds.rules`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from fds.cli import count_or_all, file_path, labels_not_input, same_file, write_output
from fds.errors import ConfigError, FdsError
from fds.rules.reload import deciding
from fds.rules.ruleset import Ruleset, load_ruleset
from fds.shipped import DEFAULT_RULES

__all__ = ["register", "rules_file"]


def register(subparsers: Any) -> None:
    """Add ``rules check`` and ``rules backtest`` to the ``fds`` command line."""
    rules = subparsers.add_parser("rules", help="check and backtest rules files")
    sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")

    check = sub.add_parser(
        "check",
        help="validate, compile and run each rule's inline tests",
        description="Validate rules files, compile every rule and run its inline tests. "
        "Exit code 1 if any file has an error or a failing test.",
    )
    check.add_argument(
        "files",
        nargs="*",
        type=rules_file,
        metavar="FILE",
        help=f"rules files (default: {DEFAULT_RULES.name} of the package)",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    check.set_defaults(func=_check)

    bt = sub.add_parser(
        "backtest",
        help="compare two rulesets on a historical file",
        description="Run a baseline and a candidate ruleset over the same history with the same "
        "features; print per-rule hits, alert volume, precision/recall (when labels exist) and "
        "transactions whose action changed, with the values the rules read.",
    )
    bt.add_argument(
        "file", type=file_path("transactions file"), metavar="FILE",
        help="historical transactions (csv/jsonl)",
    )  # fmt: skip
    bt.add_argument(
        "--candidate",
        required=True,
        type=rules_file,
        metavar="R2",
        help="the rules file you want to ship",
    )
    bt.add_argument(
        "--baseline", required=True, type=rules_file, metavar="R1", help="the rules file in force"
    )
    bt.add_argument(
        "--mapping", type=file_path("column mapping file"), metavar="M",
        help="column mapping for foreign files",
    )  # fmt: skip
    bt.add_argument(
        "--labels",
        type=file_path("labels file"),
        metavar="L",
        help="labels file (default: FILE's .labels.jsonl sibling when present)",
    )
    bt.add_argument(
        "--examples",
        type=count_or_all,
        default=10,
        metavar="N",
        help="changed transactions to show with the values their rules read (a number or 'all')",
    )
    bt.add_argument(
        "--changed-out",
        type=file_path("file for the changed transactions"),
        metavar="FILE",
        help="write every transaction whose action changed to FILE (JSON Lines: tx_id, ts, "
        "fraud, each side's action, score, hits and shadow hits, the values the rules read)",
    )
    # (on by default, as in every long command: --progress stays accepted, a QA pass)
    bt.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True,
        help="a progress bar on stderr when it is a terminal (default; --no-progress: none)",
    )  # fmt: skip
    bt.set_defaults(func=_backtest)


#: argparse type of a rules file's path (not an empty one: ``''``, an unset shell variable, is
#: the current folder, checked as one, a QA pass).
rules_file = file_path("rules file")


def _rules_files(folder: Path) -> Iterator[Path]:
    """The rules files of ``folder``: ``.yaml`` and ``.yml`` in any case, not hidden ones (an
    editor's lock file ``.#a.yaml`` failed the check, and ``A.YML`` was left out: a QA pass)."""
    for p in folder.iterdir():
        if not p.name.startswith(".") and p.suffix.lower() in (".yaml", ".yml"):
            yield p


def _check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    missing = [f for f in args.files or () if not f.exists()]
    if missing:  # a usage error, as for every command (it was a failed check, exit 1)
        raise ConfigError(f"{missing[0]}: no such file: give the path of a rules YAML file")
    files = []
    for f in args.files or [DEFAULT_RULES]:  # a folder: its rules files (it said "no such file")
        found = sorted(_rules_files(f)) if f.is_dir() else [f]
        files += found or [f]
    failed = 0
    for f in files:
        if f.is_dir():  # (another file, a pipe `<(sed ...)`: read as every command reads it)
            print(f"{f}: a folder with no .yaml file: give the path of a rules YAML file", file=out)
            failed += 1
            continue
        try:
            rs = load_ruleset(f, log_notes=False)  # (printed below)
        except ConfigError as e:
            print(f"FAIL {f}\n  {str(e).replace(chr(10), chr(10) + '  ')}", file=out)
            failed += 1
            continue
        failed += _report(rs, out, quiet=args.quiet)
    if len(files) > 1 or failed:
        print(f"{len(files) - failed} of {len(files)} file(s) OK", file=out)
    return 1 if failed else 0


def _report(rs: Ruleset, out: TextIO, *, quiet: bool) -> int:
    results = rs.run_tests()
    by_rule: dict[str, list] = {}
    for t in results:
        by_rule.setdefault(t.rule_id, []).append(t)
    bad = [t for t in results if not t.passed]
    if not quiet or bad:
        print(
            f"{'FAIL' if bad else 'OK  '} {rs.path}  version {rs.version}: "
            f"{len(rs.rules)} rules, {len(rs.features)} features, "
            f"{len(results) - len(bad)}/{len(results)} tests passed, timezone "
            f"{rs.spec.timezone}"  # (a file without one is UTC, said nowhere: a QA pass)
            + "".join(f", max_entities {e} {n:,}" for e, n in rs.spec.max_entities.items()),
            file=out,
        )
    for r in rs.rules:
        ts = by_rule.get(r.id, [])
        nbad = sum(not t.passed for t in ts)
        if quiet and not nbad:
            continue
        status = "FAIL" if nbad else ("ok  " if ts else "none")
        print(f"  {status} {r.id:<32} {r.spec.state:<7} {len(ts) - nbad}/{len(ts)} tests", file=out)
        for t in ts:
            if not t.passed:
                print(f"       {t.where}: test {t.index + 1}: {t.why}", file=out)
    for note in rs.notes:  # (only a log line beside `OK` before: a README walk)
        print(f"  note: {note}", file=out)
    untested = [r.id for r in rs.rules if not r.spec.tests]
    if untested and not quiet:
        print(f"  note: rules without inline tests: {_some(untested)}", file=out)
    unused = rs.unused_features()
    if unused and not quiet:
        print(f"  note: features no rule reads (the model may still use them): {_some(unused)}",
              file=out)  # fmt: skip
    return 1 if bad else 0


def _some(names: list[str], most: int = 20) -> str:
    """``names`` for a note, the first ``most`` of them (5,000 features were one line).

    >>> _some(["a", "b", "c"], 2)
    'a, b (and 1 more)'
    """
    more = f" (and {len(names) - most:,} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


#: The options of ``fds rules backtest`` that name a rules file.
_RULE_OPTIONS = ("candidate", "baseline")


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:.1f}"


def _backtest(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from fds.replay import left_out, open_stream, read_to_end, said
    from fds.rules.backtest import DEAD_LETTER as DEAD
    from fds.rules.backtest import backtest
    from fds.streams.files import (
        PIPE,
        check_label_columns,
        check_transaction_columns,
        labels_for,
        load_mapping,
    )

    inputs = ("file", "candidate", "baseline", "mapping", "labels")
    for name in inputs:
        p = getattr(args, name)
        # A rules file is read once, so it may be a pipe (`<(sed ...)` was "no such file": a
        # QA pass); the history and the others are read more than once: files only.
        if p is None or p.is_file() or (name in _RULE_OPTIONS and p.exists() and not p.is_dir()):
            continue
        if p.exists() and not p.is_dir():  # (a pipe: "no such file", a QA pass)
            raise ConfigError(f"{p} {PIPE}" if name == "file" else f"--{name} {p} {PIPE}")
        what = "a folder" if p.is_dir() else "no such file"  # (a folder: "no such file")
        raise ConfigError(
            f"--{name} {p}: {what}: give a file"
            if name != "file"
            else f"{p}: {what}: give a historical transactions file"
        )
    cand = load_ruleset(args.candidate, run_tests=True)
    base = load_ruleset(args.baseline, run_tests=True)
    mapping = load_mapping(args.mapping) if args.mapping else None
    labels = labels_for(args.file, mapping, args.labels)
    if args.changed_out is not None:  # (after the labels beside the file: a review found
        to = args.changed_out  # them written over; a hard link to the input, a QA pass)
        read = [Path(p) for n in inputs if (p := getattr(args, n)) is not None]
        if to.is_dir() or any(same_file(to, p) for p in [*read, *([labels] if labels else [])]):
            raise ConfigError(
                f"--changed-out {args.changed_out}: a file this backtest reads or a folder; "
                "give the path of a new file"
            )
        if not to.resolve().parent.is_dir():  # (a traceback after the whole backtest)
            raise ConfigError(f"--changed-out {to}: no folder {to.resolve().parent}")
    labels_not_input(args.labels, args.file)  # (the backtest took it: a QA pass)
    labels_given = "--labels" if args.labels is not None else "the labels file"
    # (missing columns, another encoding: said as fds replay says it)
    check_transaction_columns(args.file, mapping)
    check_label_columns(labels, mapping)
    # streamed, as a replay is (read whole and sorted first, it held ~1.4 KB a transaction:
    # 6.4 GB for 4.5 million, a QA pass)
    stream = open_stream(args.file, mapping=mapping, labels_path=labels)
    # (a label's dead letter: its transaction is in the backtest, not its label; a labels
    # file's were counted as transactions left out, a QA pass)
    _, of_labels = left_out(stream.dead_letters, args.file)  # (the labels file's, read first)
    # (precision "-" and no word why, a QA pass; a label column makes labels of frauds only)
    if labels is not None and of_labels and not stream.labels:
        raise ConfigError(
            f"{labels_given} {labels}: none of its {of_labels.total()} record(s) is a label (most "
            f"often {of_labels.most_common(1)[0][0]}): a labels file has the columns tx_id, "
            "ts (when the label became known) and is_fraud; name its own under labels_file: "
            "in the --mapping (e.g. labels_file: {tx_id: TransactionID, ts: chargeback_date, "
            "is_fraud: isFraud})"
        )
    keep = None if args.changed_out is not None else args.examples
    dead: list[dict[str, Any]] = []
    r = backtest(cand, base, stream, progress=args.progress, examples=keep, dead=dead)
    read_to_end(stream, args.file)
    reasons, of_labels = left_out(dead, args.file)
    skipped = said(
        reasons, "record(s) of the files could not be read or validated and are not in it"
    ) + ("; `fds replay` writes them out" if reasons else "")
    summary = r.summary
    if not r.transactions and not summary.interrupted:  # (exit 1, as fds replay's: it was 2)
        raise FdsError(f"{args.file}: no valid transactions" + (skipped and f"; {skipped}"))
    b, c = r.baseline, r.candidate
    print(
        f"backtest over {r.transactions:,} transactions ({b.days:.1f} days)"
        + (f", {b.frauds:,} known frauds" if b.frauds is not None else ", no labels")
        + (f" (labels: {labels})" if labels is not None else ""),  # (one beside it: unsaid)
        file=out,
    )
    if summary.interrupted:  # (a full-looking report, exit 0 and --changed-out: a review)
        print(
            "note: interrupted (Ctrl-C or SIGTERM): the figures cover the transactions decided "
            "so far, not the file",
            file=out,
        )
    if skipped:  # (they were left out without a word: alerts and recall over a subset)
        print(f"note: {skipped}", file=out)
    for note in _backtest_warnings(r, args, mapping):
        print(f"warning: {note}", file=out)
    if of_labels:
        left = said(of_labels, "label(s) could not be read and were left out")
        print(f"note: {left}", file=out)
    if r.unseen_fields:  # (said by fds replay only: a QA pass)
        print(f"warning: {r.unseen_fields}", file=out)
    if cand.version == base.version and deciding(cand) != deciding(base):
        print(  # (both columns named one version, without a word: a QA pass)
            f"note: the candidate decides otherwise than the baseline under the same version "
            f"({cand.version!r}): decisions record the version, so give the candidate a new "
            "one (a hot reload refuses a file that changes the rules and not the version)",
            file=out,
        )
    rows = [
        ("version", b.version, c.version),
        ("alerts (review+decline)", str(b.alerts), str(c.alerts)),
        ("alerts per day", _fmt(b.alerts_per_day, False), _fmt(c.alerts_per_day, False)),
        ("review", str(b.actions["review"]), str(c.actions["review"])),
        ("decline", str(b.actions["decline"]), str(c.actions["decline"])),
        *(
            [("dead letters (rule raised)", str(b.actions[DEAD]), str(c.actions[DEAD]))]
            if b.actions[DEAD] or c.actions[DEAD]
            else []
        ),
        ("precision", _fmt(b.precision), _fmt(c.precision)),
        ("recall", _fmt(b.recall), _fmt(c.recall)),
    ]
    # (columns as wide as their longest value and a gap: a 22-character version ran into the
    # other, a QA pass)
    w = max(16, *(len(v) + 2 for _, x, y in rows for v in (x, y)))
    print(f"\n{'':<26}{'baseline':>{w}}{'candidate':>{w}}", file=out)
    for k, x, y in rows:
        print(f"{k:<26}{x:>{w}}{y:>{w}}", file=out)
    idw = max(34, *(len(rid) + 2 for rid in r.rule_ids)) if r.rule_ids else 34
    print(
        f"\n{'rule hits':<{idw}}{'baseline':>16}{'prec':>8}{'candidate':>16}{'prec':>8}", file=out
    )
    states = [{x.id: x.spec.state for x in rs.rules} for rs in (base, cand)]
    for rid in r.rule_ids:
        cells = []
        for side, state in zip((b, c), states, strict=True):
            n = side.rule_hits.get(rid, 0)  # (none known: "-", as the totals; it was 0.0%)
            prec = (side.rule_fraud_hits[rid] / n) if n and side.frauds else None
            st = state.get(rid)
            # (a shadow rule's hits read like an acting rule's: a QA pass)
            shown = str(n) if st == "active" else f"{n} shadow" if st == "shadow" else st or "-"
            cells += [shown, _fmt(prec)]
        print(f"{rid:<{idw}}{cells[0]:>16}{cells[1]:>8}{cells[2]:>16}{cells[3]:>8}", file=out)
    if any(st == "shadow" for s in states for st in s.values()):
        print("(shadow: evaluated and counted, never acts on the decision)", file=out)
    for side, name, rs in ((b, "baseline", base), (c, "candidate", cand)):
        features = {f.name for f in rs.features}
        for rid, n in sorted(side.rule_missing.items()):
            gone = {k for k in rs.names_read().get(rid, ()) if side.names_missing.get(k)}
            print(
                f"{name} rule {rid} was skipped on {n:,} of {r.transactions:,} transaction(s): a "
                f"name it reads was missing ({rs.why_skipped(rid, side.names_missing, n)}; "
                + (  # (a shop payment's device feature read as bad data: a README walk)
                    "a feature has no value where its entity's history holds none: no device "
                    "on a payment in a shop, no last gap at a card's first payment"
                    if gone and gone <= features
                    else "an empty cell or text, or null, is missing"
                )
                + ")",
                file=out,
            )
    for side, name in ((b, "baseline"), (c, "candidate")):
        for rid, n in sorted(side.rule_errors.items()):
            print(
                f"{name} rule {rid} raised on {n:,} transaction(s): in production each is a "
                "dead letter, not a decision (guard it: `avg > 0 and amount / avg > 3`)",
                file=out,
            )
        for rid, n in sorted(side.shadow_errors.items()):
            print(
                f"{name} shadow rule {rid} raised on {n:,} transaction(s): counted only while in "
                "shadow; made active, each would be a dead letter, unless they are so many "
                "that the guardrails demote it (guard it: "
                "`avg > 0 and amount / avg > 3`)",
                file=out,
            )
    listed = r.changed if args.examples is None else r.changed[: args.examples]
    more = (
        f"; {len(listed)} shown (--examples N or all, --changed-out FILE for the list)"
        if len(listed) < r.changed_count
        else ""
    )  # (--examples 50 showed 20 without a word: a QA pass)
    print(f"\n{r.changed_count} transaction(s) changed action{more}", file=out)
    for ex in listed:
        fraud = "" if ex["fraud"] is None else (" FRAUD" if ex["fraud"] else " legit")
        print(
            f"  {ex['tx_id']} {ex['ts']}{fraud}: {_outcome(ex['baseline'])} -> "
            f"{_outcome(ex['candidate'])}",
            file=out,
        )
        vals = ", ".join(_shown(k, v) for k, v in ex["values"].items())
        if vals:
            print(f"      read: {vals}", file=out)
    if args.changed_out is not None and summary.interrupted:
        print(f"{args.changed_out} not written: interrupted", file=out)
    elif args.changed_out is not None:
        from fds.schema import dumps_line

        write_output(args.changed_out, b"".join(dumps_line(ex) for ex in r.changed))
        print(f"wrote {len(r.changed)} changed transaction(s) to {args.changed_out}", file=out)
    return 130 if summary.interrupted else 0


def _backtest_warnings(r: Any, args: argparse.Namespace, mapping: Any) -> Iterator[str]:
    """What a backtest's figures do not show and ``fds replay`` would say of the same file
    (a review: records beyond the reorder buffer decided on stale windows, a mistyped date
    stretching the days, labels of no transaction, all without a word)."""
    from fds.commands import sort_by_time
    from fds.replay import REORDER_BUFFER, no_fraud_decided
    from fds.timeutil import format_ts, span

    s = r.summary
    if s.interrupted:
        return
    if s.beyond_reorder_buffer:
        yield (
            f"{s.beyond_reorder_buffer:,} records were out of time order beyond the reorder "
            f"buffer ({REORDER_BUFFER:,} records) and decided after later ones, on the window "
            f"state those left ({s.late:,} flagged late): to decide each in its time, backtest "
            f"the file sorted by time first: {sort_by_time(args.file, mapping)}"
        )
    if r.gap is not None:
        days, at = r.gap
        yield (
            f"no transaction for {span(days * 86400)} from {format_ts(at)[:10]}: the "
            f"{r.baseline.days:.1f} days (and the alerts per day) span that gap: a gap in the "
            "data, or a mistyped date?"
        )
    if unmatched := no_fraud_decided(s):
        yield unmatched


def _shown(name: str, v: Any) -> str:
    """``name=value`` of a value a rule read; a float at 10 digits (a mean was shown as
    99.50999999999999: a README walk), ``≈`` where that is not the value itself (0.3 for
    0.30000000000000004, which a rule ``> 0.3`` takes: a review); exact in --changed-out."""
    if isinstance(v, float):
        text = f"{v:.10g}"
        return f"{name}{'=' if float(text) == v else '≈'}{text}"
    return f"{name}={v!r}"


def _outcome(side: dict[str, Any]) -> str:
    shadow = f" shadow {side['shadow_hits']}" if side["shadow_hits"] else ""
    return f"{side['action']} {side['hits']}{shadow}"
