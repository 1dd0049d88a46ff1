"""``fds rules check`` and ``fds rules backtest`` end to end (through ``fds.cli.main``)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fds.cli import main
from fds.errors import ConfigError
from fds.rules import ReloadingRuleset, load_ruleset
from fds.rules.ruleset import MAX_FILE_SIZE
from fds.streams.simulator import simulate, write

ROOT = Path(__file__).resolve().parents[2]

BASELINE = """\
version: base
timezone: Asia/Seoul
rules:
  - id: huge
    when: amount >= 1000000
    action: review
    score: 0.7
    reason: Huge amount
    tests: [{given: {amount: 2000000}, expect: hit}]
"""

CANDIDATE = """\
version: cand
timezone: Asia/Seoul
rules:
  - id: huge
    when: amount >= 500000
    action: review
    score: 0.7
    reason: Huge amount
    tests: [{given: {amount: 600000}, expect: hit}]
  - id: foreign_online
    when: channel == 'online' and country != 'KR' and amount >= 100000
    action: review
    score: 0.6
    reason: Foreign online
    tests: [{given: {channel: online, country: GB, amount: 200000}, expect: hit}]
"""


def test_check_default_file_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "default.yaml" in out and "card_testing_burst" in out


def test_check_says_the_timezone_in_use(tmp_path: Path, capsys) -> None:
    """A QA pass: a file without `timezone:` is read in UTC, said nowhere; an `is_night` test
    written for Seoul failed with "expected hit, got miss" alone."""
    p = tmp_path / "r.yaml"
    p.write_text("version: v\nrules: []\n")
    assert main(["rules", "check", str(p)]) == 0
    assert "0/0 tests passed, timezone UTC" in capsys.readouterr().out
    p.write_text("version: v\ntimezone: Asia/Seoul\nrules: []\n")
    assert main(["rules", "check", str(p)]) == 0
    assert "timezone Asia/Seoul" in capsys.readouterr().out


def test_a_failed_test_says_which_name_it_did_not_give(tmp_path: Path, capsys) -> None:
    """A QA pass: a test giving `hour` to a rule reading `is_night` failed with "expected hit,
    got miss" alone; an extra value's text read as missing is said too."""
    p = tmp_path / "r.yaml"
    p.write_text(
        "version: v\ntimezone: Asia/Seoul\nfeatures:\n"
        "  - {name: n1h, entity: card_id, agg: count, window: 1h}\n"
        "rules:\n"
        "  - {id: night, when: is_night and n1h >= 2, action: review, score: 0.5, reason: r,\n"
        "     tests: [{given: {n1h: 3, hour: 2}, expect: hit}]}\n"
        "  - {id: code, when: extra.code > 3, action: review, score: 0.5, reason: r,\n"
        "     tests: [{given: {extra.code: NA}, expect: hit}]}\n"
    )
    assert main(["rules", "check", str(p)]) == 1
    out = capsys.readouterr().out
    assert (
        "test 1: expected hit, got miss (is_night is not given: the rule does not fire without "
        "it; give it, or a ts)" in out
    )
    assert "test 1: expected hit, got miss (a value the rule reads is missing: 'NA')" in out
    with pytest.raises(ConfigError, match=r"got miss \(is_night is not given"):
        load_ruleset(p, run_tests=True)


def test_check_notes_a_long_list_in_short(tmp_path: Path, capsys) -> None:
    """A QA pass: 5,000 features no rule reads were one line of 5,000 names."""
    p = tmp_path / "many.yaml"
    p.write_text('version: "m"\nfeatures:\n' + "".join(
        f"  - {{name: f{i}, entity: card_id, agg: count, window: 1h}}\n" for i in range(30)
    ) + "rules: []\n")  # fmt: skip
    assert main(["rules", "check", str(p)]) == 0
    out = capsys.readouterr().out
    assert "no rule reads (the model may still use them): f0, f1," in out
    assert "f19 (and 10 more)" in out and "f20" not in out


def test_check_reports_failures_with_file_line(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASELINE)
    bad_test = tmp_path / "bad_test.yaml"
    bad_test.write_text(BASELINE.replace("expect: hit", "expect: miss"))
    bad_expr = tmp_path / "bad_expr.yaml"
    bad_expr.write_text(BASELINE.replace("amount >= 1000000", "amount >= 1000000 and open('x')"))
    code = main(["rules", "check", str(good), str(bad_test), str(bad_expr)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"OK   {good}" in out
    assert f"{bad_test}:9:13: test 1: expected miss, got hit" in out
    assert f"{bad_expr}:5:33: rule huge: calling open is not allowed" in out
    assert "1 of 3 file(s) OK" in out


def test_check_missing_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    """It was a failed check, exit 1, where every other command says `error:`, exit 2."""
    assert main(["rules", "check", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"fds rules check: error: {tmp_path / 'nope.yaml'}: no such file: give the path" in err


def test_check_a_folder_checks_its_rules_files(tmp_path: Path, capsys) -> None:
    """`fds rules check rules/` said "no such file"."""
    (tmp_path / "a.yaml").write_text(BASELINE)
    (tmp_path / "b.yml").write_text(BASELINE.replace("expect: hit", "expect: miss"))
    assert main(["rules", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"OK   {tmp_path / 'a.yaml'}" in out and "1 of 2 file(s) OK" in out
    assert main(["rules", "check", str(tmp_path / "a.yaml"), str(tmp_path / "sub")]) == 2
    (tmp_path / "sub").mkdir()
    assert main(["rules", "check", str(tmp_path / "sub")]) == 1
    assert "a folder with no .yaml file" in capsys.readouterr().out
    # hidden files (an editor's lock link) are no rules files; a suffix in capitals is one
    (tmp_path / "sub" / ".#a.yaml").symlink_to("user@host.1234")
    (tmp_path / "sub" / "C.YML").write_text(BASELINE)
    assert main(["rules", "check", str(tmp_path / "sub")]) == 0
    out = capsys.readouterr().out
    assert "C.YML" in out and ".#a.yaml" not in out


def test_backtest_end_to_end(tmp_path: Path, capsys) -> None:
    sim = simulate(days=4, cards=1500, merchants=200, seed=11, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(CANDIDATE)
    code = main(
        [
            "rules",
            "backtest",
            "--candidate",
            str(cand),
            "--baseline",
            str(base),
            str(data),
            "--examples",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"backtest over {len(sim.transactions):,} transactions" in out
    assert "known frauds" in out  # labels found beside the file
    for row in ("alerts (review+decline)", "alerts per day", "precision", "recall"):
        assert row in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["huge"][1] != "-" and lines["foreign_online"][1] == "-"  # baseline lacks it
    assert int(lines["huge"][3]) >= int(lines["huge"][1])  # lower threshold: more hits
    assert "changed action" in out
    assert "read: amount=" in out  # the values the rules read


def test_backtest_columns_are_as_wide_as_their_values(tmp_path: Path, capsys) -> None:
    """A QA pass: the shipped files' versions (22 characters) ran into one another."""
    sim = simulate(days=1, cards=200, merchants=100, seed=3, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE.replace("version: base", 'version: "2026-11-29.1-baseline-x"'))
    cand.write_text(CANDIDATE.replace("version: cand", 'version: "2026-11-29.1-pre-drift"'))
    args = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(args) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("version"))
    assert row.split() == ["version", "2026-11-29.1-baseline-x", "2026-11-29.1-pre-drift"]


def test_backtest_notes_a_candidate_of_other_rules_under_the_baselines_version(
    tmp_path: Path, capsys
) -> None:
    """A QA pass: both columns named one version without a word, where a hot reload refuses
    such a file; the same rules laid out otherwise are no note."""
    sim = simulate(days=1, cards=200, merchants=100, seed=3, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    args = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    for text, noted in ((CANDIDATE.replace("version: cand", "version: base"), True),
                        (BASELINE + "# a comment\n", False)):  # fmt: skip
        cand.write_text(text)
        assert main(args) == 0
        out = capsys.readouterr().out
        assert ("note: the candidate decides otherwise than the baseline under the same "
                "version ('base'): decisions record the version" in out) is noted, out  # fmt: skip


def test_backtest_usage_errors(tmp_path: Path, capsys) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(BASELINE)
    assert (
        main(
            [
                "rules",
                "backtest",
                "--candidate",
                str(base),
                "--baseline",
                str(base),
                str(tmp_path / "missing.jsonl"),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    argv = ["rules", "backtest", "--candidate", str(tmp_path), "--baseline", str(base)]
    assert main([*argv, str(base)]) == 2  # a folder was "no such file" (a QA pass)
    assert f"--candidate {tmp_path}: a folder: give a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(["rules", "backtest", str(tmp_path / "x.jsonl")])  # --candidate missing
    assert ei.value.code == 2


def test_backtest_says_which_records_it_left_out(tmp_path: Path, capsys) -> None:
    """Rows that could not be read or validated were left out without a word (alerts and recall
    over a subset), and a file without the required columns said only "no valid transactions"
    (a review)."""
    base = tmp_path / "base.yaml"
    base.write_text(BASELINE)
    good = '{"tx_id": "t%d", "ts": 1767225600, "card_id": "c1", "amount": 10}\n'
    data = tmp_path / "h.jsonl"
    bad = '{"tx_id": "x", "ts": "noon"}\nnot json\n'
    data.write_text("".join(good % i for i in range(3)) + bad)
    argv = ["rules", "backtest", "--candidate", str(base), "--baseline", str(base)]
    assert main([*argv, str(data)]) == 0
    out = capsys.readouterr().out
    assert "backtest over 3 transactions" in out
    assert "note: 2 record(s) of the files could not be read or validated" in out
    foreign = tmp_path / "f.csv"
    foreign.write_text("TID,WHEN,CARD,AMT\nt1,1767225600,c1,10\n")
    assert main([*argv, str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "required engine field(s) ['amount', 'card_id', 'ts', 'tx_id']" in err
    # an unreadable label value: its transaction is in the backtest, its label is left out
    (tmp_path / "m.yaml").write_text(
        "fields: {tx_id: TID, ts: WHEN, card_id: CARD, amount: AMT}\nlabel: {column: F}\n"
    )
    labelled = tmp_path / "l.csv"
    labelled.write_text("TID,WHEN,CARD,AMT,F\nt1,1767225600,c1,10,maybe\nt2,1767225601,c1,10,1\n")
    assert main([*argv, str(labelled), "--mapping", str(tmp_path / "m.yaml")]) == 0
    out = capsys.readouterr().out
    assert "backtest over 2 transactions" in out and "could not be read or validated" not in out
    assert "note: 1 label(s) could not be read and were left out" in out


def test_backtest_refuses_rulesets_in_two_timezones(tmp_path: Path, capsys) -> None:
    """One feature stage serves both sides: the baseline's calendar days were computed in the
    candidate's zone before, so its figures were wrong."""
    sim = simulate(days=2, cards=300, merchants=100, seed=3, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(CANDIDATE.replace("timezone: Asia/Seoul", "timezone: UTC"))
    code = main(["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)])
    assert code == 2 and "differs from the baseline's Asia/Seoul" in capsys.readouterr().err
    # another name of the baseline's zone is the zone: compared
    cand.write_text(CANDIDATE.replace("timezone: Asia/Seoul", "timezone: ROK"))
    code = main(["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)])
    assert code == 0, capsys.readouterr().err


def test_backtest_refuses_rulesets_with_two_grace_periods(tmp_path: Path, capsys) -> None:
    """One feature stage serves both sides, so late events are told apart once: with another
    grace the candidate's side would not be what it decides in production."""
    data = tmp_path / "h.jsonl"
    data.write_text(
        "".join(
            json.dumps({"tx_id": f"t{i}", "ts": 1767225600 + 60 * i, "card_id": "c", "amount": 9})
            + "\n"
            for i in range(3)
        )
    )
    feature = "features: [{name: n, entity: card_id, agg: count, window: 1h}]\n"
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE + feature)
    cand.write_text(CANDIDATE + feature + "grace: 10m\n")
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(argv) == 2
    assert "the candidate's grace 10m differs from the baseline's 5m" in capsys.readouterr().err
    cand.write_text(CANDIDATE + feature + "grace: 300s\n")  # the default, written otherwise
    assert main(argv) == 0


def test_backtest_computes_the_features_with_the_files_grace() -> None:
    from fds.replay import ReplayInput
    from fds.rules.backtest import backtest
    from fds.rules.ruleset import load_ruleset_text

    text = (
        'version: "{v}"\ngrace: 10m\n'
        "features: [{{name: n, entity: card_id, agg: count, window: 1h}}]\n"
        "rules: [{{id: fourth, when: n >= {k}, action: review, score: 0.7, reason: r}}]\n"
    )
    cand = load_ruleset_text(text.format(v="c", k=4), "c.yaml")
    base = load_ruleset_text(text.format(v="b", k=5), "b.yaml")
    t0 = 1767225600
    txs = [  # the third 7 minutes behind the second: folded in with 10m, late with 5m
        {"tx_id": f"t{i}", "ts": float(t0 + dt), "card_id": "c", "amount": 1.0, "extra": {}}
        for i, dt in enumerate([0, 600, 180, 700])
    ]
    result = backtest(cand, base, ReplayInput(transactions=txs))
    assert (result.candidate.alerts, result.baseline.alerts) == (1, 0)  # t3 counts 4


def _backtest_a_rule(tmp_path: Path, extras: list[dict[str, Any]], rule: str) -> list[str]:
    """The argv of a backtest of BASELINE plus ``rule`` against BASELINE, over one card's
    transactions t0, t1, ... (amount 100) with these ``extra`` values."""
    data = tmp_path / "h.jsonl"
    txs = [
        {"tx_id": f"t{i}", "ts": 1767225600 + i, "card_id": "c", "amount": 100, "extra": e}
        for i, e in enumerate(extras)
    ]
    data.write_text("".join(json.dumps(t) + "\n" for t in txs))
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(BASELINE.replace("version: base", "version: cand") + f"  - {rule}\n")
    return ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]


def test_backtest_counts_the_transactions_a_rule_raises_on(tmp_path: Path, capsys) -> None:
    """A candidate rule that raises makes its transactions dead letters in production: the
    backtest lost them from both sides' counts without a word (the replay dead-lettered them)."""
    argv = _backtest_a_rule(
        tmp_path, [{"base": 10}, {"base": 0}, {"base": 40}, {}],
        "{id: ratio, when: amount / extra.base > 3, action: decline, score: 0.9, reason: r}",
    )  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "backtest over 4 transactions" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("dead letters"))
    assert row[-2:] == ["0", "1"]  # baseline, candidate
    decline = next(line.split() for line in out.splitlines() if line.startswith("decline"))
    assert decline[-2:] == ["0", "1"]  # t0: 100 / 10 > 3; t2 no; t3 base missing
    assert "candidate rule ratio raised on 1 transaction(s)" in out
    assert "2 transaction(s) changed action" in out  # t0, t1
    # a fraud it raised on is a dead letter, not caught (precision 200%: a QA pass)
    labels = tmp_path / "l.csv"
    labels.write_text("tx_id,ts,is_fraud\nt0,1767312000,1\nt1,1767312000,1\n")
    assert main([*argv, "--labels", str(labels)]) == 0
    rows = {line[:24].strip(): line.split()[-2:] for line in capsys.readouterr().out.splitlines()}
    assert rows["precision"] == ["-", "100.0%"] and rows["recall"] == ["0.0%", "50.0%"], rows


def test_backtest_counts_what_a_shadow_rule_raises_on(tmp_path: Path, capsys) -> None:
    """A shadow rule that raised was invisible in a backtest (a QA pass): promoted, it would
    have made those transactions dead letters."""
    argv = _backtest_a_rule(
        tmp_path, [{"k": 1}, {"k": 1}, {"k": 3}, {}],
        "{id: ratio, when: amount / (extra.k - 1) > 10, action: decline, score: 0.9, reason: r,"
        " state: shadow}",
    )  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "candidate shadow rule ratio raised on 2 transaction(s)" in out, out
    assert "made active, each would be a dead letter" in out
    # shadow: no effect on the decisions (no dead-letter row)
    assert not any(line.startswith("dead letters") for line in out.splitlines()), out


def _history(tmp_path: Path, n: int = 60) -> Path:
    """``n`` transactions of one card a minute apart, amounts 10, 20, ..., every 4th without
    ``extra.addr`` (as a CSV's empty cell)."""
    data = tmp_path / "h.jsonl"
    rows = [
        {"tx_id": f"t{i}", "ts": 1767225600 + 60 * i, "card_id": "c", "amount": 10 * (i + 1)}
        | ({} if i % 4 == 0 else {"addr": "x"})
        for i in range(n)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _rules(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"version: {name}\ntimezone: UTC\n" + body)
    return p


def test_backtest_examples_says_how_many_it_shows_and_writes_them_all(tmp_path, capsys) -> None:
    """A QA pass: `--examples 50` showed 20 of 83 changed transactions without a word (a cap),
    `--examples -1` showed all but one, and there was no way to get the whole list."""
    data = _history(tmp_path)
    base = _rules(tmp_path, "b", "rules: []\n")
    cand = _rules(
        tmp_path,
        "c",
        "rules:\n  - {id: big, when: amount > 0, action: review, score: 1, reason: r}\n",
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main([*argv, "--examples", "50"]) == 0
    out = capsys.readouterr().out
    assert "60 transaction(s) changed action; 50 shown (--examples N or all" in out
    assert out.count("approve [] -> decline ['big']") == 50
    assert main([*argv, "--examples", "all"]) == 0
    out = capsys.readouterr().out
    assert "60 transaction(s) changed action\n" in out and out.count("-> decline") == 60
    with pytest.raises(SystemExit) as ei:
        main([*argv, "--examples", "-1"])
    assert ei.value.code == 2 and "whole number >= 0 or 'all'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:  # (it said "give a whole number": a README walk)
        main([*argv, "--examples", "abc"])
    assert ei.value.code == 2 and "invalid number 'abc': give a number or 'all'" in (
        capsys.readouterr().err
    )
    listed = tmp_path / "changed.jsonl"
    assert main([*argv, "--examples", "0", "--changed-out", str(listed)]) == 0
    assert "wrote 60 changed transaction(s)" in capsys.readouterr().out
    rows = [json.loads(line) for line in listed.read_text().splitlines()]
    assert [r["tx_id"] for r in rows] == [f"t{i}" for i in range(60)]
    assert rows[0]["candidate"] == {
        "action": "decline", "score": 1.0, "hits": ["big"], "shadow_hits": []
    }  # fmt: skip
    assert rows[0]["values"] == {"amount": 10}
    gz = tmp_path / "changed.jsonl.gz"  # (gzip, as `replay --out` writes one: it was text)
    assert main([*argv, "--examples", "0", "--changed-out", str(gz)]) == 0
    capsys.readouterr()
    import gzip

    assert gzip.decompress(gz.read_bytes()) == listed.read_bytes()
    assert main([*argv, "--changed-out", str(data)]) == 2  # never over an input
    assert "a file this backtest reads" in capsys.readouterr().err


def test_backtest_marks_shadow_rules_and_rules_skipped_for_missing_inputs(tmp_path, capsys):
    """A QA pass: a shadow rule's hits read like an acting rule's, and a rule on an empty cell
    (`extra.addr == ''`: an empty cell is missing) passed its test and never fired without a
    word."""
    data = _history(tmp_path, 8)
    base = _rules(tmp_path, "b", "rules: []\n")
    cand = _rules(
        tmp_path,
        "c",
        "rules:\n"
        "  - {id: big, when: amount > 40, action: review, score: 1, reason: r}\n"
        "  - {id: watch, when: amount > 0, action: decline, score: 1, reason: r, state: shadow}\n"
        "  - id: no_addr\n    when: \"extra.addr == '' and amount > 0\"\n"
        "    action: decline\n    score: 1\n"
        "    reason: r\n    tests: [{given: {extra.addr: '', amount: 1}, expect: hit}]\n"
        "  - {id: quick, when: gap < 0, action: review, score: 1, reason: r}\n"
        "features:\n  - {name: gap, entity: card_id, agg: last_gap, window: 1h}\n",
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main([*argv, "--examples", "all"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["watch"].split()[3:5] == ["8", "shadow"]
    assert lines["big"].split()[3] == "4"
    assert "(shadow: evaluated and counted, never acts on the decision)" in out
    assert (
        "candidate rule no_addr was skipped on 2 of 8 transaction(s): a name it reads was "
        "missing (extra.addr missing on 2; an empty cell or text, or null, is missing)"
    ) in out
    assert (  # (a feature with no value there is no bad data: a README walk)
        "candidate rule quick was skipped on 1 of 8 transaction(s): a name it reads was "
        "missing (gap missing on 1; a feature has no value where its entity's history holds "
        "none: no device on a payment in a shop, no last gap at a card's first payment)"
    ) in out
    assert "approve [] -> decline ['big'] shadow ['watch']" in out


def test_backtest_compares_a_changed_window(tmp_path, capsys) -> None:
    """A QA pass: a feature whose window the candidate changes was refused ("declared
    differently: rename one", and every rule reading it); each side now reads its own."""
    data = _history(tmp_path, 10)
    rule = "rules:\n  - {id: burst, when: n >= 4, action: review, score: 1, reason: r}\n"
    base = _rules(
        tmp_path, "b", "features:\n  - {name: n, entity: card_id, agg: count, window: 5m}\n" + rule
    )
    cand = _rules(
        tmp_path, "c", "features:\n  - {name: n, entity: card_id, agg: count, window: 3m}\n" + rule
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main([*argv, "--examples", "all"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # one a minute: a 5-minute window holds 5 from the 5th on, a 3-minute one 3 (never 4)
    assert lines["burst"][1] == "7" and lines["burst"][3] == "0"
    assert "7 transaction(s) changed action" in out
    assert "read: n=4, n__candidate=3" in out


def test_backtest_keeps_a_feature_named_as_the_candidate_s_own_version(tmp_path, capsys) -> None:
    """A QA pass: a feature the candidate declares otherwise is computed under
    `<name>__candidate`; a feature of the files named so was overwritten by it, and the
    baseline's figures were wrong (0 reviews where a replay of it has some)."""
    data = _history(tmp_path, 10)
    feats = (
        "features:\n  - {{name: n, entity: card_id, agg: count, window: {w}}}\n"
        "  - {{name: n__candidate, entity: card_id, agg: sum, field: amount, window: 1h}}\n"
        "rules:\n  - {{id: spend, when: n__candidate > 15, action: review, score: 1, reason: r}}\n"
    )
    base, cand = (
        _rules(tmp_path, "b", feats.format(w="5m")),
        _rules(tmp_path, "c", feats.format(w="3m")),
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert main(["replay", str(data), "--rules", str(base), "--model", "none", "--out",
                 str(tmp_path / "d.jsonl")]) == 0  # fmt: skip
    decisions = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    hits = sum(any(h["id"] == "spend" for h in d["rule_hits"]) for d in decisions)
    assert hits > 0 and lines["spend"][1] == lines["spend"][3] == str(hits)


def test_backtest_names_features_reading_a_field_no_transaction_has(tmp_path, capsys) -> None:
    """A QA pass: `fds replay` said so, the backtest of the same rules did not (a mistyped
    extra.adr was empty on every transaction, its rule never fired)."""
    data = _history(tmp_path, 10)
    base = _rules(tmp_path, "b", "rules: []\n")
    cand = _rules(
        tmp_path,
        "c",
        "features:\n"
        "  - {name: adrs, entity: card_id, agg: distinct, field: extra.adr, window: 1h}\n"
        "  - {name: addrs, entity: card_id, agg: distinct, field: extra.addr, window: 1h}\n"
        "rules:\n  - {id: r, when: adrs > 1, action: review, score: 1, reason: r}\n",
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(argv) == 0
    assert (
        "warning: 1 feature(s) read a field none of the first 10 transactions had: adrs "
        "(extra.adr); their values stay empty"
    ) in capsys.readouterr().out
    # a feature the candidate declares otherwise is named as the user wrote it, once (a QA
    # pass: "adrs__candidate")
    base = _rules(tmp_path, "b", "features:\n"
                  "  - {name: adrs, entity: card_id, agg: distinct, field: extra.adr, window: 2h}\n"
                  "rules: []\n")  # fmt: skip
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 feature(s) read a field none of the first 10 transactions had: adrs (extra.adr)" \
        in out and "__candidate (" not in out, out  # fmt: skip


def test_backtest_refuses_a_labels_file_without_one_label(tmp_path, capsys) -> None:
    """A QA pass: a chargeback file with its own column names gave "no labels" and precision
    "-" without a word why, and its rows were counted as transactions left out."""
    data = _history(tmp_path, 4)
    base = _rules(tmp_path, "b", "rules: []\n")
    foreign = tmp_path / "cb.csv"
    foreign.write_text("TransactionID,chargeback_date,isFraud\nt1,1767312000,1\nt2,1767312000,1\n")
    argv = ["rules", "backtest", "--candidate", str(base), "--baseline", str(base), str(data)]
    assert main([*argv, "--labels", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert f"{foreign}:1: required engine field(s) ['is_fraud', 'ts', 'tx_id'] are neither" in err
    assert "map them under `labels_file:` of a --mapping" in err  # (before anything is read)
    bad = tmp_path / "bad.csv"  # the columns, and no value a label
    bad.write_text("tx_id,ts,is_fraud\nt1,1767312000,maybe\n")
    assert main([*argv, "--labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--labels {bad}: none of its 1 record(s) is a label" in err
    assert "tx_id, ts (when the label became known) and is_fraud" in err
    # ... or mapped: the mapping names the labels file's own columns
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "labels_file: {tx_id: TransactionID, ts: chargeback_date, is_fraud: isFraud}\n"
    )
    assert main([*argv, "--labels", str(foreign), "--mapping", str(mapping)]) == 0
    assert "2 known frauds" in capsys.readouterr().out
    mapping.write_text("labels_file: {tx_id: TID, ts: chargeback_date, is_fraud: isFraud}\n")
    assert main([*argv, "--labels", str(foreign), "--mapping", str(mapping)]) == 2
    assert "column(s) ['TID'] named in the mapping are not in the file" in capsys.readouterr().err
    mapping.write_text("labels_file: {tx_id: TransactionID, ts: chargeback_date}\n")
    assert main([*argv, "--labels", str(foreign), "--mapping", str(mapping)]) == 2
    assert (
        "['is_fraud'] are neither mapped nor columns of the file: map them under `labels_file:`"
        in capsys.readouterr().err
    )
    mixed = tmp_path / "l.csv"
    mixed.write_text("tx_id,ts,is_fraud\nt1,1767312000,1\nt2,soon,1\n")
    assert main([*argv, "--labels", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "1 known frauds" in out and "could not be read or validated" not in out
    assert "note: 1 label(s) could not be read and were left out" in out


def test_changed_out_never_overwrites_the_labels_beside_the_file(tmp_path, capsys) -> None:
    """A review: the labels file found beside the input (not given with --labels) was written
    over by --changed-out (10 KB of labels left empty), and a folder that does not exist gave
    a traceback after the whole backtest."""
    sim = simulate(days=1, cards=300, merchants=100, seed=3, drift_day=None)
    data, labels = write(sim, tmp_path / "tx.jsonl")
    base = _rules(tmp_path, "b", "rules: []\n")
    argv = ["rules", "backtest", "--candidate", str(base), "--baseline", str(base), str(data)]
    before = labels.read_bytes()
    assert main([*argv, "--changed-out", str(labels)]) == 2
    assert "a file this backtest reads" in capsys.readouterr().err
    assert labels.read_bytes() == before
    assert main([*argv, "--changed-out", str(tmp_path / "no" / "x.jsonl")]) == 2
    assert f"no folder {tmp_path / 'no'}" in capsys.readouterr().err
    (tmp_path / "hard.jsonl").hardlink_to(data)  # (written over: a QA pass)
    assert main([*argv, "--changed-out", str(tmp_path / "hard.jsonl")]) == 2
    assert "a file this backtest reads" in capsys.readouterr().err


def _precision(tmp_path, capsys, labels: str) -> list[str]:
    """The precision row of a backtest of one always-alerting rule over 4 transactions of
    ``_history``, with the labels file ``labels`` (its text)."""
    data = _history(tmp_path, 4)
    base = _rules(tmp_path, "b", "rules:\n  - {id: a, when: amount > 0, action: review, "
                  "score: 0.5, reason: r}\n")  # fmt: skip
    path = tmp_path / "l.csv"
    path.write_text("tx_id,ts,is_fraud\n" + labels)
    argv = ["rules", "backtest", "--candidate", str(base), "--baseline", str(base), str(data)]
    assert main([*argv, "--labels", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("prec"))
    return row.split()[1:]


def test_precision_without_a_known_fraud_is_not_zero(tmp_path, capsys) -> None:
    """A QA pass: labels that name no fraud gave precision 0.0% on both sides (replay: n/a)."""
    assert _precision(tmp_path, capsys, "t1,1767312000,0\n") == ["-", "-"]


def test_a_withdrawn_fraud_label_is_no_fraud_as_in_a_replay(tmp_path, capsys) -> None:
    """A QA pass: a fraud label withdrawn by a later ``false`` still counted as a known fraud
    in the backtest (129 frauds, replay 128), so their precision and recall disagreed."""
    labels = "t1,1767312000,1\nt2,1767312000,1\nt1,1767398400,0\n"
    assert _precision(tmp_path, capsys, labels) == ["25.0%", "25.0%"]  # t2 alone of 4 alerts


def test_the_rules_never_evaluated_are_read_from_one_collection_of_the_metrics() -> None:
    """A QA pass: with 2,000 rules, fds replay took minutes after its last decision to name
    the rules skipped on every transaction (the whole registry collected once per rule)."""
    from types import SimpleNamespace

    from fds.commands import _never_evaluated
    from fds.metrics import Metrics
    from fds.replay import ReplaySummary
    from fds.rules.ruleset import load_ruleset_text

    class CountedMetrics(Metrics):
        collections = 0

        def collect(self):  # type: ignore[no-untyped-def]
            self.collections += 1
            yield from super().collect()

    rules = "".join(
        f"  - {{id: r{i}, when: {'channel' if i % 2 else 'country'} == 'x', action: review, "
        "score: 0.5, reason: x}\n"
        for i in range(40)
    )
    rs = load_ruleset_text("version: v\nrules:\n" + rules)
    rs.evaluate({"ts": 0.0, "amount": 1.0, "country": "KR", "extra": {}})  # no channel
    metrics = CountedMetrics()
    metrics.watch_ruleset(lambda: rs)
    before = metrics.collections
    never = _never_evaluated(SimpleNamespace(rules=rs), metrics, ReplaySummary(decided=1))
    assert never == [(f"r{i}", "channel missing on 1") for i in range(1, 40, 2)]
    assert metrics.collections - before == 1


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["check", ""], "FILE"),
        (["backtest", "h.jsonl", "--candidate", "", "--baseline", "r.yaml"], "--candidate"),
        (["backtest", "h.jsonl", "--candidate", "r.yaml", "--baseline", ""], "--baseline"),
    ],
)
def test_an_empty_rules_path_is_a_usage_error(argv: list[str], flag: str, capsys) -> None:
    """A QA pass: `fds rules check ''` (an unset shell variable) checked the current folder
    and could pass; `--candidate ''` was "--candidate .: a folder"."""
    with pytest.raises(SystemExit) as e:
        main(["rules", *argv])
    assert e.value.code == 2
    assert f"argument {flag}: empty path: give a rules file" in capsys.readouterr().err


@contextlib.contextmanager
def piped(data: bytes, times: int = 1) -> Iterator[tuple[str, list[int]]]:
    """A pipe's path (``/dev/fd/N``, as ``<(cat FILE)`` gives a command) and the count of the
    bytes written into it: ``data`` ``times`` over, or until its reader is gone."""
    r, w = os.pipe()
    written = [0]

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), os.fdopen(w, "wb", buffering=0) as f:
            for _ in range(times):
                written[0] += f.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        yield f"/dev/fd/{r}", written
    finally:
        os.close(r)  # the writer's next write breaks the pipe
        writer.join(5)


@pytest.mark.parametrize("loader", [load_ruleset, partial(ReloadingRuleset, start=False)])
def test_a_rules_file_is_never_read_past_its_size_limit(loader: Any) -> None:
    """A QA pass: `fds replay --rules /dev/zero` read until memory ran out (a MemoryError)."""
    with piped(b"#" * 65536, times=4 * MAX_FILE_SIZE // 65536) as (path, written):
        with pytest.raises(ConfigError, match="file larger than 5 MB"):
            loader(path)
        assert written[0] <= MAX_FILE_SIZE + 2 * 65536  # (one chunk and one pipe buffer on)


def test_every_command_reads_a_rules_file_from_a_pipe(tmp_path: Path, capsys) -> None:
    """A QA pass: `fds rules check <(cat rules/default.yaml)` was "not a regular file" and a
    backtest's `--candidate <(sed ...)` "no such file", while fds replay took it."""
    with piped(BASELINE.encode()) as (path, _):
        assert main(["rules", "check", path]) == 0
    assert f"OK   {path}  version base" in capsys.readouterr().out
    data, _labels = write(simulate(days=1, cards=50, merchants=100, seed=1), tmp_path / "h.jsonl")
    base = tmp_path / "base.yaml"
    base.write_text(BASELINE)
    with piped(CANDIDATE.encode()) as (path, _):
        argv = ["rules", "backtest", "--candidate", path, "--baseline", str(base), str(data)]
        assert main(argv) == 0, capsys.readouterr()
    assert "version                               base            cand" in capsys.readouterr().out


def test_backtest_shows_its_progress_unless_told_not_to(tmp_path: Path, monkeypatch, capsys):
    """A long backtest said nothing until its end unless given --progress, where every other
    long command shows it by default (--no-progress: a QA pass). Without a terminal the bar is
    a line every LOG_EVERY_S; --progress is still accepted."""
    import fds.progress

    sim = simulate(days=1, cards=200, merchants=100, seed=3, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    (base := tmp_path / "base.yaml").write_text(BASELINE)
    monkeypatch.setattr(fds.progress, "LOG_EVERY_S", 0.0)
    argv = ["rules", "backtest", "--candidate", str(base), "--baseline", str(base), str(data)]
    for extra, shown in (([], True), (["--progress"], True), (["--no-progress"], False)):
        assert main([*argv, *extra]) == 0
        err = capsys.readouterr().err
        assert ('msg="progress" task="replay"' in err) is shown, (extra, err)


def test_backtest_shows_the_values_read_at_ten_digits(tmp_path, capsys) -> None:
    """A README walk: a mean was shown as 99.50999999999999; --changed-out keeps it exact."""
    data = tmp_path / "h.jsonl"
    rows = [{"tx_id": f"t{i}", "ts": 1767225600 + 60 * i, "card_id": "c", "amount": a}
            for i, a in enumerate((0.1, 0.2, 0.4))]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    feature = "features:\n  - {name: s, entity: card_id, agg: sum, field: amount, window: 1h}\n"
    base = _rules(tmp_path, "b", feature + "rules: []\n")
    cand = _rules(
        tmp_path, "c",
        feature + "rules:\n  - {id: big, when: s > 0.25, action: review, score: 1, reason: r}\n",
    )  # fmt: skip
    out_file = tmp_path / "changed.jsonl"
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main([*argv, "--changed-out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "read: s≈0.3\n" in out and "read: s≈0.7\n" in out  # 0.1 + 0.2, then + 0.4
    exact = [json.loads(line)["values"]["s"] for line in out_file.read_text().splitlines()]
    assert exact == [0.1 + 0.2, 0.1 + 0.2 + 0.4]


def test_the_backtest_header_groups_thousands(tmp_path, capsys) -> None:
    """A QA pass: "backtest over 4517927 transactions ..., 19703 known frauds", where the
    rest of its report groups thousands."""
    data = _history(tmp_path, 1_200)
    rules = _rules(tmp_path, "b", "rules: []\n")
    argv = ["rules", "backtest", "--candidate", str(rules), "--baseline", str(rules), str(data)]
    assert main(argv) == 0
    assert "backtest over 1,200 transactions" in capsys.readouterr().out


def test_a_backtest_reads_the_file_as_it_decides(tmp_path, monkeypatch, capsys) -> None:
    """A QA pass: 6.4 GB for 4.5 million rows: the backtest read the whole file and sorted it
    before deciding. It streams it now, as a replay does: at each decision at most the reorder
    buffer's records are read ahead (measured: 1,000,829 rows, 1.47 GB -> 488 MB, the report
    the same)."""
    import fds.replay as replay
    import fds.rules.backtest as bt

    monkeypatch.setattr(replay, "REORDER_BUFFER", 5)
    read, ahead = [0], []
    ordered, write = replay._ordered, bt._Collector.write

    def counted(txs, size, stream):
        def each():
            for tx in txs:
                read[0] += 1
                yield tx

        return ordered(each(), size, stream)

    def noted(self, decision):
        ahead.append(read[0] - (self.cand.actions.total() + 1))
        write(self, decision)

    monkeypatch.setattr(replay, "_ordered", counted)
    monkeypatch.setattr(bt._Collector, "write", noted)
    data = _history(tmp_path, 200)
    rules = _rules(tmp_path, "b", "rules: []\n")
    argv = ["rules", "backtest", "--candidate", str(rules), "--baseline", str(rules), str(data)]
    assert main(argv) == 0
    assert "backtest over 200 transactions" in capsys.readouterr().out
    assert len(ahead) == 200 and max(ahead) <= 6, max(ahead)


def test_backtest_says_what_its_figures_do_not_show(tmp_path: Path, capsys) -> None:
    """A review: labels of no transaction showed every rule's precision as 0.0% without a
    word, the labels file found beside the data was never named, and one date mistyped a year
    ahead made the 4 days 368 (the alerts per day a tenth of theirs), all without a word; a
    file of no valid transaction exited 2 where a replay exits 1."""
    sim = simulate(days=4, cards=1500, merchants=200, seed=11, drift_day=None)
    data, labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(CANDIDATE)
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base)]
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(labels.read_text().replace('"tx_id":"', '"tx_id":"X'))
    assert main([*argv, str(data), "--labels", str(wrong)]) == 0
    out = capsys.readouterr().out
    assert f"0 known frauds (labels: {wrong})" in out
    assert "warning: none of the " in out and "transactions labelled fraud was decided" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["huge"][2] == "-" and "0.0%" not in rows["huge"], rows["huge"]
    assert main([*argv, str(data)]) == 0  # (the labels beside it: named)
    assert f"known frauds (labels: {labels})" in capsys.readouterr().out
    lines = data.read_text().splitlines()
    typo = json.loads(lines[10])
    typo["ts"] += 365 * 86400  # one date mistyped a year ahead
    (tmp_path / "typo.jsonl").write_text("\n".join([*lines[:10], *lines[11:], json.dumps(typo)]))
    assert main([*argv, str(tmp_path / "typo.jsonl"), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "warning: no transaction for 3" in out and "a mistyped date?" in out, out
    (tmp_path / "empty.jsonl").write_text("")
    assert main([*argv, str(tmp_path / "empty.jsonl")]) == 1
    assert "no valid transactions" in capsys.readouterr().err


def test_an_interrupted_backtest_says_so_and_writes_no_changed_list(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """A review: a backtest stopped by Ctrl-C (or SIGTERM: a nightly job's timeout) printed a
    full-looking report, exit 0, and wrote --changed-out, over part of the file."""
    from fds.rules import backtest as backtest_module

    sim = simulate(days=2, cards=500, merchants=100, seed=5, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(CANDIDATE)
    through = backtest_module._Span.through

    def stop_halfway(self: Any, txs: Any) -> Any:  # Ctrl-C halfway through the file
        for i, tx in enumerate(through(self, txs)):
            if i == len(sim.transactions) // 2:
                raise KeyboardInterrupt
            yield tx

    monkeypatch.setattr(backtest_module._Span, "through", stop_halfway)
    changed = tmp_path / "changed.jsonl"
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main([*argv, "--changed-out", str(changed)]) == 130
    out = capsys.readouterr().out
    assert "note: interrupted (Ctrl-C or SIGTERM): the figures cover the transactions" in out
    assert f"{changed} not written: interrupted" in out and not changed.exists()


def test_a_changed_transaction_shows_each_side_s_names_for_its_own_hits(tmp_path, capsys):
    """A review: a rule rewritten in the candidate to read other names showed, for the
    baseline's hit, the names the candidate's version reads, which read like its reason."""
    sim = simulate(days=2, cards=500, merchants=100, seed=5, drift_day=None)
    data, _labels = write(sim, tmp_path / "hist.jsonl")
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(
        BASELINE.replace("version: base", "version: cand")
        .replace("when: amount >= 1000000", "when: amount >= 1000000 and channel == 'never'")
        .replace("{amount: 2000000}", "{amount: 2000000, channel: never}")
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "review ['huge'] -> approve []" in out, out
    reads = [line for line in out.splitlines() if line.strip().startswith("read:")]
    assert reads and all("channel=" not in line for line in reads), reads
