"""``fds rules check`` and ``fds rules backtest`` end to end (through ``fds.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fds.cli import main
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


def test_check_missing_file_fails(tmp_path: Path, capsys) -> None:
    assert main(["rules", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().out


def test_check_a_folder_checks_its_rules_files(tmp_path: Path, capsys) -> None:
    """`fds rules check rules/` said "no such file"."""
    (tmp_path / "a.yaml").write_text(BASELINE)
    (tmp_path / "b.yml").write_text(BASELINE.replace("expect: hit", "expect: miss"))
    assert main(["rules", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"OK   {tmp_path / 'a.yaml'}" in out and "1 of 2 file(s) OK" in out
    assert main(["rules", "check", str(tmp_path / "a.yaml"), str(tmp_path / "sub")]) == 1
    (tmp_path / "sub").mkdir()
    assert main(["rules", "check", str(tmp_path / "sub")]) == 1
    assert "a folder with no .yaml file" in capsys.readouterr().out


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
    assert f"backtest over {len(sim.transactions)} transactions" in out
    assert "known frauds" in out  # labels found beside the file
    for row in ("alerts (review+decline)", "alerts per day", "precision", "recall"):
        assert row in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["huge"][1] != "-" and lines["foreign_online"][1] == "-"  # baseline lacks it
    assert int(lines["huge"][3]) >= int(lines["huge"][1])  # lower threshold: more hits
    assert "changed action" in out
    assert "read: amount=" in out  # the values the rules read


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
    # an unreadable label value: its transaction is in the backtest (not counted as left out)
    (tmp_path / "m.yaml").write_text(
        "fields: {tx_id: TID, ts: WHEN, card_id: CARD, amount: AMT}\nlabel: {column: F}\n"
    )
    labelled = tmp_path / "l.csv"
    labelled.write_text("TID,WHEN,CARD,AMT,F\nt1,1767225600,c1,10,maybe\nt2,1767225601,c1,10,1\n")
    assert main([*argv, str(labelled), "--mapping", str(tmp_path / "m.yaml")]) == 0
    out = capsys.readouterr().out
    assert "backtest over 2 transactions" in out and "note:" not in out


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


def test_backtest_counts_the_transactions_a_rule_raises_on(tmp_path: Path, capsys) -> None:
    """A candidate rule that raises makes its transactions dead letters in production: the
    backtest lost them from both sides' counts without a word (the replay dead-lettered them)."""
    data = tmp_path / "h.jsonl"
    txs = [
        {"tx_id": f"t{i}", "ts": 1767225600 + i, "card_id": "c", "amount": 100, "extra": e}
        for i, e in enumerate([{"base": 10}, {"base": 0}, {"base": 40}, {}])
    ]
    data.write_text("".join(json.dumps(t) + "\n" for t in txs))
    base, cand = tmp_path / "base.yaml", tmp_path / "cand.yaml"
    base.write_text(BASELINE)
    cand.write_text(
        BASELINE.replace("version: base", "version: cand")
        + "  - {id: ratio, when: amount / extra.base > 3, action: decline, score: 0.9, reason: r}\n"
    )
    argv = ["rules", "backtest", "--candidate", str(cand), "--baseline", str(base), str(data)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "backtest over 4 transactions" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("dead letters"))
    assert row[-2:] == ["0", "1"]  # baseline, candidate
    decline = next(line.split() for line in out.splitlines() if line.startswith("decline"))
    assert decline[-2:] == ["0", "1"]  # t0: 100 / 10 > 3; t2 no; t3 base missing
    assert "candidate rule ratio raised on 1 transaction(s)" in out
    assert "2 transaction(s) changed action" in out  # t0, t1
