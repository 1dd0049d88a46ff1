"""A mapping reads files as banks export them: another field separator, a decimal comma with
grouped thousands, day-first times (``delimiter:``, ``decimal:``, ``thousands:``, ``ts_format:``).
Without them such a file was refused ("convert it") or every row was a dead letter."""

from pathlib import Path

import orjson
import pytest

from fds.errors import ConfigError
from fds.streams.files import ColumnMapping, check_transaction_columns, load_mapping, read_records

GERMAN = """\
delimiter: ";"
decimal: ","
thousands: "."
ts_format: "%d.%m.%Y %H:%M:%S"
timezone: Europe/Berlin
fields:
  tx_id: Referenz
  ts: Buchungsdatum
  card_id: Karte
  merchant_id: Haendler
  amount: Betrag
label: {column: Betrug, delay: 1d}
"""
ROWS = """\
Buchungsdatum;Karte;Haendler;Betrag;Gebuehr;Referenz;Betrug;Notiz
01.03.2026 08:04:13;1.234;M1;1.234,56;2,50;R1;0;"Miete; März"
01.03.2026 09:14:00;1.234;M2;-12,00;0,5;R2;1;1.5
"""


def mapping(tmp_path, text=GERMAN):
    (tmp_path / "m.yaml").write_text(text)
    return load_mapping(tmp_path / "m.yaml")


def test_a_german_export_is_read_as_its_mapping_says(tmp_path):
    (tmp_path / "b.csv").write_text(ROWS)
    recs = list(read_records(tmp_path / "b.csv", mapping=mapping(tmp_path)))
    assert [r[0] for r in recs] == [2, 3]
    first, second = recs[0][1], recs[1][1]
    assert first == {
        "tx_id": "R1",
        "ts": "2026-03-01T08:04:13",  # naive: read in the mapping's timezone as any such time
        "card_id": "1.234",  # a name, never a number
        "merchant_id": "M1",
        "amount": "1234.56",
        "Gebuehr": "2.50",  # an unmapped column written as a number: read as one
        "Betrug": "0",
        "Notiz": "Miete; März",  # a quoted separator is text
    }
    assert recs[0][2]["Betrag"] == "1.234,56"  # the row as read, for the dead letters
    assert second["amount"] == "-12.00" and second["Gebuehr"] == "0.5"
    assert second["Notiz"] == "1.5"  # not a number as this file writes them: as it is


def test_a_german_export_replays_with_its_amounts_times_and_labels(tmp_path, capsys):
    from fds.cli import main

    (tmp_path / "b.csv").write_text(ROWS.replace("-12,00", "12,00"))
    mapping(tmp_path)
    (tmp_path / "r.yaml").write_text(  # the default rules and one on an unmapped column
        (Path(__file__).parents[2] / "rules" / "default.yaml")
        .read_text()
        .replace(
            "rules:\n",
            "rules:\n  - {id: fee, when: 'extra.Gebuehr > 2', action: review, score: 0.6, "
            "reason: fee}\n",
            1,
        )
    )
    out = tmp_path / "d.jsonl"
    argv = ["replay", str(tmp_path / "b.csv"), "--mapping", str(tmp_path / "m.yaml")]
    argv += ["--rules", str(tmp_path / "r.yaml")]
    assert main([*argv, "--model", "none", "--no-progress", "--out", str(out)]) == 0
    decisions = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [d["tx_id"] for d in decisions] == ["R1", "R2"]
    assert [[h["id"] for h in d["rule_hits"]] for d in decisions] == [["fee"], []]  # 2,50 > 2
    assert decisions[0]["ts"] == "2026-03-01T07:04:13.000+00:00"  # 08:04:13 in Berlin (CET)
    assert decisions[0]["features"]["card_spend_today"] == 1234.56
    assert decisions[1]["features"]["card_spend_today"] == 1246.56
    assert not (tmp_path / "d.dlq.jsonl").exists()  # no dead letter
    assert "known frauds" in capsys.readouterr().out


def test_a_time_that_does_not_fit_ts_format_is_a_dead_letter_that_names_it(tmp_path, capsys):
    from fds.cli import main

    bad = "31.02.2026 09:14:00;C;M;1,00;0;R3;0;x\n01.03.2026 10:00;C;M;1,00;0;R4;0;x\n"
    (tmp_path / "b.csv").write_text(ROWS + bad)
    recs = list(read_records(tmp_path / "b.csv", mapping=mapping(tmp_path)))
    assert [type(r[1]).__name__ for r in recs] == ["dict", "dict", "ValueError", "ValueError"]
    assert str(recs[2][1]) == (
        "ts: '31.02.2026 09:14:00' does not fit the mapping's ts_format '%d.%m.%Y %H:%M:%S' "
        "(day is out of range for month)"
    )
    assert "does not match format" in str(recs[3][1]) and recs[3][2]["Referenz"] == "R4"
    # every row so: the replay says to check the layout, not to convert the file
    (tmp_path / "c.csv").write_text(ROWS.splitlines()[0] + "\n" + bad)
    argv = ["replay", str(tmp_path / "c.csv"), "--mapping", str(tmp_path / "m.yaml")]
    assert main([*argv, "--model", "none", "--no-progress", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "check the mapping's ts_format against the file's times" in err
    assert "convert the file" not in err


def test_a_number_where_a_ts_format_time_is_due_is_a_dead_letter():
    """A QA pass: an Excel date serial 46082,35 fitted no layout, read as epoch seconds and was
    decided in January 1970 without a word."""
    m = ColumnMapping(ts_format="%d.%m.%Y %H:%M", decimal=",")
    with pytest.raises(ValueError, match=r"ts: '46082\.35' does not fit the mapping's ts_format"):
        m.apply({"ts": "46082,35"})


def test_ts_format_keeps_times_it_need_not_read_and_reads_offsets(tmp_path):
    m = ColumnMapping(ts_format="%d/%m/%Y %H:%M%z")
    assert m.apply({"ts": "01/03/2026 08:04+0100"})["ts"] == "2026-03-01T08:04:00+01:00"
    # a labels file's ISO times, epoch numbers: read as without the layout
    assert m.apply({"ts": "2026-03-01T08:04:00Z"})["ts"] == "2026-03-01T08:04:00Z"
    assert m.apply({"ts": 1772352240})["ts"] == 1772352240
    assert m.for_labels().ts_format == m.ts_format


NOT = None  # the amount is a dead letter naming the notation


@pytest.mark.parametrize(
    ("decimal", "thousands", "text", "as_extra", "as_amount"),
    [
        (",", None, "29,78", "29.78", "29.78"),
        (",", None, "1.234,56", "1.234,56", NOT),  # grouping not declared
        (".", ",", "1,234,567.5", "1234567.5", "1234567.5"),
        (".", "'", "1'234.50", "1234.50", "1234.50"),  # Swiss
        (",", " ", "1\u202f234,5", "1234.5", "1234.5"),  # French: a narrow no-break space
        # elsewhere than a measure, only a number with a decimal part: a phone number, a
        # version, an order number stay as written
        (",", " ", "030 123 456", "030 123 456", NOT),
        (",", " ", "1 234 567", "1 234 567", "1234567"),
        (",", ".", "2.100", "2.100", "2100"),
        (",", ".", "0.125", "0.125", NOT),  # a leading zero starts no group
        (",", ".", "12.34", "12.34", NOT),  # a dot-decimal number, not this file's
        (",", ".", "+7", "+7", "+7"),
        (",", ".", "12,00-", "12,00-", NOT),
        (",", ".", "EUR 12,00", "EUR 12,00", NOT),
        (",", ".", "2026-03-01", "2026-03-01", NOT),
    ],
)
def test_numbers_are_read_as_the_file_writes_them(decimal, thousands, text, as_extra, as_amount):
    m = ColumnMapping(decimal=decimal, thousands=thousands)
    assert m.apply({"fee": text, "card_id": "1.234,5"}) == {"fee": as_extra, "card_id": "1.234,5"}
    if as_amount is NOT:
        with pytest.raises(ValueError, match=r"amount: .* is no number as the mapping's decimal"):
            m.apply({"amount": text})
    else:
        assert m.apply({"amount": text}) == {"amount": as_amount}


def test_seconds_after_ts_origin_are_read_in_the_files_notation():
    """A review: with ``ts_origin``, a grouped ``86.400`` (thousands: '.') was 86.4 s while the
    row's ``1.000`` amount was 1000 (only a text with the decimal mark was read so)."""
    m = ColumnMapping(decimal=",", thousands=".", ts_origin="2017-12-01")
    origin = m.ts_origin
    out = m.apply({"ts": "86.400", "amount": "1.000"})
    assert (out["ts"] - origin, out["amount"]) == (86400.0, "1000")
    assert m.apply({"ts": "1.086.400,5"})["ts"] - origin == 1086400.5
    assert m.apply({"ts": "86400"})["ts"] - origin == 86400.0
    assert m.apply({"ts": "2026-03-01T08:04:00Z"})["ts"] == "2026-03-01T08:04:00Z"  # (a label's)


def test_an_amount_in_another_notation_is_a_dead_letter_that_says_which(tmp_path):
    (tmp_path / "w.csv").write_text(ROWS.replace("1.234,56", "12.34"))
    recs = list(read_records(tmp_path / "w.csv", mapping=mapping(tmp_path)))
    assert str(recs[0][1]) == (
        "amount: '12.34' is no number as the mapping's decimal: ',', thousands: '.' write them "
        "(e.g. -1.234,56: a sign before the digits, no currency, no other separator)"
    )
    assert recs[0][2]["Betrag"] == "12.34" and isinstance(recs[1][1], dict)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('delimiter: ";;"', "one character that separates the fields"),
        ('delimiter: " "', "one character that separates the fields"),
        ('decimal: ";"', "decimal"),
        ('thousands: "."', "'.' is also the decimal mark"),
        ('ts_format: "%Q"', "not a strptime layout"),
        ('ts_format: "%H:%M"', "the layout must give the date"),
        ('ts_format: "%m/%Y"', "the layout must give the date"),  # (no day: every row the 1st)
        ('ts_format: "%d.%m.%Y %I:%M"', "an hour of %I needs %p"),
        ('ts_format: "dd.MM.yyyy HH:mm"', "in strptime's % codes"),
        ('ts_format: "%d.%m.%Y %H:%M %Z"', "give offsets with %z"),
        ("defaults: {amount: 5}", "'amount' is a field every transaction gives of its own"),
        ("defaults: {chanel: pos}", "did you mean 'channel'"),
        ("defaults: {channel: yes}", "YAML reads it as a boolean"),
        ("defaults: {lat: 95}", "lat: a number from -90 to 90, got 95"),
    ],
)
def test_a_wrong_option_names_the_mapping_line(tmp_path, line, error):
    (tmp_path / "m.yaml").write_text(f"timezone: UTC\n{line}\n")
    with pytest.raises(ConfigError, match=error) as e:
        load_mapping(tmp_path / "m.yaml")
    assert f"{tmp_path / 'm.yaml'}:2" in str(e.value)


@pytest.mark.parametrize("written", ["tab", "'\\t'", '"\\t"'])
def test_a_tab_separated_file(tmp_path, written):
    m = mapping(tmp_path, f"delimiter: {written}\n")
    (tmp_path / "t.csv").write_text("tx_id\tts\tcard_id\tamount\na\t2026-01-01\tc\t5\n")
    [(_n, rec, _raw)] = read_records(tmp_path / "t.csv", mapping=m)
    assert rec == {"tx_id": "a", "ts": "2026-01-01", "card_id": "c", "amount": "5"}


def test_a_quote_left_open_in_a_semicolon_file_is_one_dead_letter(tmp_path):
    """The reader's mending of a runaway quote looks for the file's own separator."""
    text = 'tx_id;ts;card_id;amount\na;2026-01-01;"c;5\nb;2026-01-01;c;6\nd;2026-01-01;c;7\n'
    (tmp_path / "q.csv").write_text(text)
    recs = list(read_records(tmp_path / "q.csv", mapping=mapping(tmp_path, 'delimiter: ";"\n')))
    assert "unbalanced quote from line 2 to 4" in str(recs[0][1])
    assert [r[1]["tx_id"] for r in recs[1:]] == ["b", "d"]


def test_a_file_with_another_separator_than_the_mappings_is_told_which(tmp_path):
    (tmp_path / "c.csv").write_text("tx_id,ts,card_id,amount\na,2026-01-01,c,5\n")
    m = mapping(tmp_path, 'delimiter: ";"\n')
    with pytest.raises(ConfigError, match="separate them with ',': give `delimiter: ','`"):
        check_transaction_columns(tmp_path / "c.csv", m)


def test_the_sort_command_uses_the_files_separator(tmp_path):
    from fds.commands import sort_by_time

    (tmp_path / "b.csv").write_text(ROWS)
    no_layout = GERMAN.replace('ts_format: "%d.%m.%Y %H:%M:%S"\n', "")
    hint = sort_by_time(tmp_path / "b.csv", mapping(tmp_path, no_layout))
    assert "sort -s -t';' -k1,1" in hint and "a quoted field with a semicolon" in hint
    # day-first times do not sort as text: no command that leaves the file out of order
    hint = sort_by_time(tmp_path / "b.csv", mapping(tmp_path))
    assert "sort -s" not in hint and "as the mapping's ts_format '%d.%m.%Y %H:%M:%S'" in hint


def test_a_quoted_line_break_then_spaces_before_the_separator_is_one_row(tmp_path):
    """A cell over three lines whose middle one reads as a row: one row, not a runaway quote."""
    note = '"Main\nSt;2;3;4;5\nEnd" '
    text = f"tx_id;ts;card_id;amount;note\na;2026-01-01;c;5;{note};\nb;2026-01-01;c;6;x\n"
    (tmp_path / "s.csv").write_text(text)
    recs = list(read_records(tmp_path / "s.csv", mapping=mapping(tmp_path, 'delimiter: ";"\n')))
    assert [(r[0], r[1]["tx_id"], r[1].get("note")) for r in recs] == [
        (2, "a", "Main\nSt;2;3;4;5\nEnd"),
        (5, "b", "x"),
    ]


def test_a_labels_file_is_read_with_the_same_options(tmp_path, capsys):
    from fds.cli import main
    from fds.logs import configure_logging

    text = GERMAN.replace("label: {column: Betrug, delay: 1d}\n", "")
    mapping(tmp_path, text + "labels_file: {tx_id: Ref, ts: Datum, is_fraud: Betrug}\n")
    (tmp_path / "b.csv").write_text(ROWS.replace("-12,00", "12,00"))
    (tmp_path / "l.csv").write_text("Ref;Datum;Betrug\nR1;01.03.2026 09:00:00;1,0\n")
    argv = ["replay", str(tmp_path / "b.csv"), "--labels", str(tmp_path / "l.csv")]
    argv += ["--mapping", str(tmp_path / "m.yaml"), "--model", "none", "--no-progress"]
    try:
        assert main(["--log-format", "json", *argv, "--out", str(tmp_path / "d.jsonl")]) == 0
        summary = orjson.loads(capsys.readouterr().out)
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)
    # read between the two transactions (09:00 in Berlin), the fraud flag's 1,0 as 1.0
    assert (summary["labels_read"], summary["fraud_labels"], summary["dead_letters"]) == (1, 1, 0)


def test_defaults_fill_the_fields_a_row_does_not_give(tmp_path):
    m = mapping(tmp_path, "missing: [NA]\ndefaults: {channel: pos, mcc: 5411, lat: 52.5}\n")
    (tmp_path / "d.csv").write_text(
        "tx_id,ts,card_id,amount,channel\na,2026-01-01,c,5,\nb,2026-01-01,c,5,online\n"
        "d,2026-01-01,c,5,NA\n"
    )
    recs = [r[1] for r in read_records(tmp_path / "d.csv", mapping=m)]
    assert [(r["channel"], r["mcc"], r["lat"]) for r in recs] == [
        ("pos", "5411", 52.5),  # an empty cell: the default
        ("online", "5411", 52.5),  # the row's own value wins
        ("pos", "5411", 52.5),  # a `missing:` text is no value
    ]
    assert m.apply({"channel": None})["channel"] == "pos"  # a JSON null too


def test_a_default_place_fills_a_row_without_one_not_half_of_one(tmp_path):
    """A review: lat and lon filled one by one put a row with one of them at half its own
    place and half the default's."""
    m = mapping(tmp_path, "defaults: {lat: 52.5, lon: 13.4}\n")
    (tmp_path / "d.csv").write_text(
        "tx_id,ts,card_id,amount,lat,lon\na,2026-01-01,c,5,,\nb,2026-01-01,c,5,48.1,\n"
    )
    recs = [r[1] for r in read_records(tmp_path / "d.csv", mapping=m)]
    assert (recs[0]["lat"], recs[0]["lon"]) == (52.5, 13.4)
    assert recs[1]["lat"] == "48.1" and recs[1].get("lon") is None


def test_a_default_fills_the_empty_cells_of_a_mapped_column(tmp_path):
    """A QA pass: a default for a field mapped onto a column was refused, so a bank export's
    channel column with gaps could not be filled (only a column named as the field could)."""
    (tmp_path / "m.yaml").write_text(
        "fields: {tx_id: Id, ts: When, card_id: Card, amount: Amt, channel: Chan}\n"
        "defaults: {channel: pos}\n"
    )
    (tmp_path / "d.csv").write_text(
        "Id,When,Card,Amt,Chan\nt1,2026-03-01T08:00:00Z,c1,10.5,\n"
        "t2,2026-03-01T08:01:00Z,c1,11,online\n"
    )
    m = load_mapping(tmp_path / "m.yaml")
    recs = [r[1] for r in read_records(tmp_path / "d.csv", mapping=m)]
    assert [r["channel"] for r in recs] == ["pos", "online"]


def test_a_default_channel_lets_the_rules_that_read_it_run(tmp_path, capsys):
    from fds.cli import main

    (tmp_path / "b.csv").write_text(ROWS.replace("-12,00", "12,00"))
    mapping(tmp_path, GERMAN + "defaults: {channel: pos, country: DE}\n")
    argv = ["replay", str(tmp_path / "b.csv"), "--mapping", str(tmp_path / "m.yaml")]
    assert main([*argv, "--model", "none", "--no-progress", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "rule(s) were skipped on every transaction" in err  # (device_id: still none)
    assert "channel missing" not in err and "country missing" not in err


def test_a_replay_that_dead_letters_every_row_names_the_option_to_fix(tmp_path, capsys):
    """A QA pass: the advice was "convert the file" when the reason named `encoding:`, and
    named neither `decimal:` nor `thousands:` for a file of decimal commas."""
    from fds.cli import main

    argv = ["--model", "none", "--no-progress", "--out", str(tmp_path / "o.jsonl")]
    (tmp_path / "c.csv").write_text("tx_id;ts;card_id;amount\na;2026-03-01;c;1,5\n")
    (tmp_path / "m.yaml").write_text('delimiter: ";"\n')
    assert (
        main(["replay", str(tmp_path / "c.csv"), "--mapping", str(tmp_path / "m.yaml"), *argv]) == 1
    )
    err = capsys.readouterr().err
    assert "say how the file writes numbers in the --mapping (decimal:, thousands:)" in err
    (tmp_path / "w.csv").write_bytes(
        "tx_id;ts;card_id;amount\na;2026-03-01;café;1\n".encode("cp1252")
    )
    assert (
        main(["replay", str(tmp_path / "w.csv"), "--mapping", str(tmp_path / "m.yaml"), *argv]) == 1
    )
    err = capsys.readouterr().err
    assert "give the file's encoding in the --mapping" in err and "convert the file" not in err


def test_a_labels_file_written_otherwise_says_so_under_labels_options(tmp_path, capsys):
    """A QA pass: a comma-separated chargeback export with dates only, beside a semicolon file
    with times, was read with the transactions file's separator and layout (every label a dead
    letter), and told to give `delimiter: ','`, which would break the transactions file."""
    from fds.cli import main
    from fds.logs import configure_logging

    text = GERMAN.replace("label: {column: Betrug, delay: 1d}\n", "")
    text += "labels_file: {tx_id: Ref, ts: Datum, is_fraud: Betrug}\n"
    (tmp_path / "b.csv").write_text(ROWS.replace("-12,00", "12,00"))
    (tmp_path / "l.csv").write_text("Ref,Datum,Betrug\nR1,01.03.2026,1\n")
    argv = ["replay", str(tmp_path / "b.csv"), "--labels", str(tmp_path / "l.csv")]
    argv += ["--mapping", str(tmp_path / "m.yaml"), "--model", "none", "--no-progress"]
    mapping(tmp_path, text)
    assert main([*argv, "--out", str(tmp_path / "d.jsonl")]) == 2
    assert "give `delimiter: ','` under `labels_options:` in the --mapping" in (
        capsys.readouterr().err
    )
    mapping(tmp_path, text + "labels_options: {delimiter: ',', ts_format: '%d.%m.%Y'}\n")
    try:
        assert main(["--log-format", "json", *argv, "--out", str(tmp_path / "d.jsonl")]) == 0
        summary = orjson.loads(capsys.readouterr().out)
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)
    # known at midnight (Berlin), before both transactions: dated before its transaction
    assert (summary["fraud_labels"], summary["label_dead_letters"]) == (1, 0)
    m = load_mapping(tmp_path / "m.yaml").for_labels()
    assert (m.delimiter, m.ts_format, m.decimal, m.thousands) == (",", "%d.%m.%Y", ",", ".")


def test_labels_options_are_checked_as_a_mappings_own(tmp_path):
    (tmp_path / "m.yaml").write_text("timezone: UTC\nlabels_options:\n  ts_format: '%Q'\n")
    with pytest.raises(ConfigError, match="not a strptime layout") as e:
        load_mapping(tmp_path / "m.yaml")
    assert f"{tmp_path / 'm.yaml'}:3" in str(e.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("labels_options: {decimal: null}", "leave the key out to read it as the transactions"),
        ("labels_options: {delimiter: null}", "one character that separates the fields"),
        (
            "decimal: ','\nlabels_options: {thousands: ','}",
            "the labels file would read ',' as both its decimal mark and its thousands",
        ),
    ],
)
def test_labels_options_refuse_a_null_and_one_sign_for_both(tmp_path, text, error):
    """A review: a null made a traceback (re.escape(None)), and a labels file's thousands equal
    to the transactions file's decimal mark read 1,5 as 15."""
    (tmp_path / "m.yaml").write_text(f"timezone: UTC\n{text}\n")
    with pytest.raises(ConfigError, match=error) as e:
        load_mapping(tmp_path / "m.yaml")
    assert f"{tmp_path / 'm.yaml'}:" in str(e.value)


def test_a_jsonl_file_that_is_not_utf8_is_told_to_be_converted(tmp_path, capsys):
    """A review: its reason names encodings, and the closing advice became "give the file's
    encoding in the --mapping", which JSON Lines does not use."""
    from fds.cli import main

    (tmp_path / "l.jsonl").write_bytes('{"tx_id": "café"}\n'.encode("latin-1"))
    argv = ["replay", str(tmp_path / "l.jsonl"), "--model", "none", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "convert the file" in err and "give the file's encoding" not in err


def test_a_tsv_file_is_read_with_tabs(tmp_path, capsys):
    """A QA pass: `.tsv` was refused as of no known format, even with `delimiter: tab`."""
    from fds.cli import main

    (tmp_path / "t.tsv").write_text("tx_id\tts\tcard_id\tamount\na\t2026-01-01T00:00:00Z\tc\t5\n")
    [(_n, rec, _raw)] = read_records(tmp_path / "t.tsv")
    assert rec == {"tx_id": "a", "ts": "2026-01-01T00:00:00Z", "card_id": "c", "amount": "5"}
    argv = ["replay", str(tmp_path / "t.tsv"), "--model", "none", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "o.jsonl")]) == 0
    m = mapping(tmp_path, "delimiter: '|'\n")  # a mapping's own separator wins
    (tmp_path / "p.tsv").write_text("tx_id|ts|card_id|amount\na|2026-01-01|c|5\n")
    assert next(read_records(tmp_path / "p.tsv", mapping=m))[1]["card_id"] == "c"


def excel(sep, rows=("a,2026-03-01T08:00:00Z,c,5", "b,2026-03-01T09:00:00Z,c,6")):
    """A CSV file as Excel exports it: its separator named on a first line (``sep=;``)."""
    header = ["tx_id,ts,card_id,amount", *rows]
    return f"sep={sep}\r\n" + "".join(r.replace(",", sep) + "\r\n" for r in header)


@pytest.mark.parametrize("sep", [";", ",", "\t", "|"])
def test_excels_sep_line_gives_the_separator_and_is_no_row(tmp_path, sep):
    """It was read as the header: one column `sep=;`, the file refused (or, with the
    delimiter its hint gave, every row a dead letter)."""
    from fds.streams.files import count_rows, csv_header

    (tmp_path / "x.csv").write_text(excel(sep), newline="")
    recs = list(read_records(tmp_path / "x.csv"))
    assert [(n, r["tx_id"], r["amount"]) for n, r, _raw in recs] == [(3, "a", "5"), (4, "b", "6")]
    assert csv_header(tmp_path / "x.csv") == (["tx_id", "ts", "card_id", "amount"], sep, 2)
    assert count_rows(tmp_path / "x.csv") == 2
    # after a byte order mark too, kept by an explicit `encoding: utf-8`; the mapping's own
    # delimiter: when it is the line's
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbf" + excel(sep).encode())
    m = mapping(tmp_path, f"encoding: utf-8\ndelimiter: {sep!r}\n".replace("'\\t'", "tab"))
    assert [r[1]["card_id"] for r in read_records(tmp_path / "b.csv", mapping=m)] == ["c", "c"]


def test_a_sep_line_the_mapping_contradicts_is_refused_naming_both(tmp_path, capsys):
    from fds.cli import main

    (tmp_path / "x.csv").write_text(excel(";"))
    m = mapping(tmp_path, "timezone: UTC\ndelimiter: ','\n")
    with pytest.raises(ConfigError) as e:
        check_transaction_columns(tmp_path / "x.csv", m)
    assert str(e.value) == (
        f"{tmp_path / 'x.csv'}:1: its first line 'sep=;' says the fields are separated by a "
        f"semicolon, but the mapping says `delimiter: ','` ({tmp_path / 'm.yaml'}:2): drop "
        "`delimiter:` from the mapping (the line tells the separator), or the line from the file"
    )
    argv = ["--mapping", str(tmp_path / "m.yaml")]
    produce = ["produce", str(tmp_path / "x.csv"), *argv, "--bootstrap", "127.0.0.1:1"]
    assert main(produce) == 2  # before connecting
    assert "says `delimiter: ','`" in capsys.readouterr().err
    # a --labels file's: the line of labels_options' delimiter
    (tmp_path / "t.csv").write_text(ROWS)
    labels = "labels_file: {tx_id: Ref}\nlabels_options: {delimiter: tab}\n"
    mapping(tmp_path, GERMAN.replace("label: {column: Betrug, delay: 1d}\n", labels))
    (tmp_path / "l.csv").write_text("sep=;\nRef;ts;is_fraud\nR1;01.03.2026 09:00:00;1\n")
    replay = ["replay", str(tmp_path / "t.csv"), "--labels", str(tmp_path / "l.csv"), *argv]
    assert main([*replay, "--model", "none", "--out", str(tmp_path / "d.jsonl")]) == 2
    assert f"`delimiter: tab` ({tmp_path / 'm.yaml'}:13)" in capsys.readouterr().err


def test_a_sep_line_file_is_replayed_backtested_and_its_labels_read(tmp_path, capsys):
    """Everywhere a file is read: the transactions and a --labels file, as the labels found
    by `fds produce` (its first record), and the sort command for a file out of order."""
    from fds.cli import main
    from fds.commands import sort_by_time
    from fds.streams.produce import _labels_file

    (tmp_path / "x.csv").write_text(excel(";"))
    (tmp_path / "l.csv").write_text("sep=|\ntx_id|ts|is_fraud\nb|2026-03-01T10:00:00Z|1\n")
    assert _labels_file(tmp_path / "l.csv", None)
    argv = [str(tmp_path / "x.csv"), "--labels", str(tmp_path / "l.csv")]
    replay = ["replay", *argv, "--model", "none", "--no-progress", "--out", str(tmp_path / "d")]
    assert main(["--log-format", "json", *replay]) == 0
    summary = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["decided"], summary["fraud_labels"], summary["dead_letters"]) == (2, 1, 0)
    rules = str(Path(__file__).parents[2] / "rules" / "default.yaml")
    backtest = ["rules", "backtest", "--candidate", rules, "--baseline", rules, *argv]
    assert main(backtest) == 0
    assert "backtest over 2 transactions" in capsys.readouterr().out
    hint = sort_by_time(tmp_path / "x.csv", None)  # the sep= line kept first with the header
    sort = f"(head -n 2 {tmp_path / 'x.csv'} && tail -n +3 {tmp_path / 'x.csv'} | sort -s -t';'"
    assert sort in hint


def test_decimal_commas_in_a_records_own_extra_object_are_read_as_numbers(tmp_path):
    """The rules read them as extra.NAME, as an unmapped column's (`extra.fee > 2` was false
    for a JSON `"extra": {"fee": "2,50"}`, true for a column `fee`): the same rule for both;
    the names aside, and objects deeper, which no rule or feature reads, as written."""
    m = mapping(tmp_path, "decimal: ','\nthousands: '.'\nfields: {amount: Betrag}\n")
    extra = {"fee": "2,50", "card_id": "1,5", "n": "1.000", "deep": {"x": "1,5"}}
    record = {"tx_id": "t", "ts": "2026-03-01", "card_id": "c", "Betrag": "12,5", "extra": extra}
    (tmp_path / "x.jsonl").write_bytes(orjson.dumps({**record, "obj": {"y": "3,5"}}))
    [(_n, rec, _raw)] = read_records(tmp_path / "x.jsonl", mapping=m)
    assert rec["amount"] == "12.5" and rec["obj"] == {"y": "3,5"}
    assert rec["extra"] == {"fee": "2.50", "card_id": "1,5", "n": "1.000", "deep": {"x": "1,5"}}
    assert extra["fee"] == "2,50"  # the record as read (a dead letter's raw) is untouched
    # a column named like a field another one fills goes to extra: read as the other columns
    (tmp_path / "x.csv").write_text("tx_id;ts;card_id;Betrag;amount\nt;2026-03-01;c;5;2,50\n")
    m = mapping(tmp_path, "delimiter: ';'\ndecimal: ','\nfields: {amount: Betrag}\n")
    [(_n, rec, _raw)] = read_records(tmp_path / "x.csv", mapping=m)
    assert rec["extra"] == {"amount": "2.50"}


def test_a_defaults_coordinate_range_is_the_schemas(tmp_path, monkeypatch):
    """One range for a transaction's lat/lon and a mapping's default of them (it was written
    in both places)."""
    from fds import schema

    monkeypatch.setitem(schema.DEGREES, "lat", 45)
    with pytest.raises(ConfigError, match="lat: a number from -45 to 45, got 50"):
        mapping(tmp_path, "defaults: {lat: 50}\n")


def test_one_table_names_the_separators(tmp_path, monkeypatch):
    """The sort advice's prose and a mapping hint's YAML value name a separator from one
    table (each had its own)."""
    from fds.commands import sort_by_time
    from fds.streams import files

    monkeypatch.setitem(files._SEPARATOR_NAMES, "|", "pipe")
    (tmp_path / "p.csv").write_text("tx_id|ts|card_id|amount\na|2026-01-01|c|5\n")
    hint = sort_by_time(tmp_path / "p.csv", mapping(tmp_path, "delimiter: '|'\n"))
    assert "a quoted field with a pipe or a line break" in hint
    assert files.separator_name("|", as_yaml=True) == "'|'"  # a mapping reads no such name
    assert files.separator_name("\t", as_yaml=True) == "tab"


def replay_summary(argv, capsys):
    """``fds --log-format json replay ARGV``'s summary, and its exit code."""
    from fds.cli import main
    from fds.logs import configure_logging

    try:
        code = main(["--log-format", "json", "replay", *argv, "--model", "none", "--no-progress"])
        return code, orjson.loads(capsys.readouterr().out)
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)


def test_label_values_read_a_files_own_fraud_words(tmp_path, capsys):
    """A German export's fraud column says ja/nein: without `label_values:` every label was a
    dead letter (the transactions decided, nothing known to be fraud)."""
    rows = ROWS.replace(";0;", ";nein;").replace(";1;", ";Ja ;").replace("-12,00", "12,00")
    (tmp_path / "b.csv").write_text(rows)
    argv = [str(tmp_path / "b.csv"), "--mapping", str(tmp_path / "m.yaml")]
    mapping(tmp_path)
    code, before = replay_summary([*argv, "--out", str(tmp_path / "a.jsonl")], capsys)
    assert (code, before["label_dead_letters"], before["frauds"]) == (0, 2, None)  # none known
    dead = (tmp_path / "a.dlq.jsonl").read_text()
    assert "label value 'nein' is neither fraud" in dead and "`label_values:" in dead
    mapping(tmp_path, GERMAN + "label_values: {fraud: [ja], legit: [NEIN]}\n")
    code, after = replay_summary([*argv, "--out", str(tmp_path / "b.jsonl")], capsys)
    assert (code, after["label_dead_letters"], after["frauds"], after["decided"]) == (0, 0, 1, 2)
    assert not (tmp_path / "b.dlq.jsonl").exists()


def test_label_values_read_a_labels_files_is_fraud_too(tmp_path, capsys):
    text = GERMAN.replace("label: {column: Betrug, delay: 1d}\n", "")
    text += "labels_file: {tx_id: Ref, ts: Datum, is_fraud: Betrug}\n"
    mapping(tmp_path, text + "label_values: {fraud: [Betrug], legit: [kein Betrug]}\n")
    (tmp_path / "b.csv").write_text(ROWS.replace("-12,00", "12,00"))
    (tmp_path / "l.csv").write_text(
        "Ref;Datum;Betrug\nR1;01.03.2026 09:00:00;kein Betrug\nR2;01.03.2026 09:00:00;betrug\n"
    )
    argv = [str(tmp_path / "b.csv"), "--labels", str(tmp_path / "l.csv")]
    argv += ["--mapping", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "d.jsonl")]
    code, summary = replay_summary(argv, capsys)
    assert (code, summary["labels_read"], summary["fraud_labels"]) == (0, 2, 1)
    assert summary["dead_letters"] == 0


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("label_values: {fraud: [Legit]}", "'Legit' cannot be a fraud value: already read the"),
        ("label_values: {legit: [1.0]}", "1.0 cannot be a legit value: already read the other"),
        ("label_values: {fraud: ['00']}", "'00' cannot be a fraud value: already read the other"),
        ("label_values: {legit: ['1']}", "'1' cannot be a legit value: already read the other"),
        ("label_values: {fraud: [ja], legit: [JA]}", r"\['ja'\] given both as fraud and as legit"),
        ("label_values: {fraud: [yes]}", "YAML reads it as a boolean"),
        ("label_values: {fraud: []}", "a list of texts"),
        ("label_values: {fraud: ['  ']}", "cannot be a fraud value: empty"),
        ("label_values: {fruad: [ja]}", "fruad"),
    ],
)
def test_label_values_refused_at_their_line(tmp_path, line, error):
    (tmp_path / "m.yaml").write_text(f"timezone: UTC\n{line}\n")
    with pytest.raises(ConfigError, match=error) as e:
        load_mapping(tmp_path / "m.yaml")
    assert f"{tmp_path / 'm.yaml'}:2" in str(e.value)


def test_label_values_read_numbers_as_their_text(tmp_path):
    """A review: `fraud: [2]` was taken, but a JSON Lines label column's number 2 was never
    looked up (only texts were): every label a dead letter, told to give label_values:."""
    m = mapping(tmp_path, "label: {column: s}\nlabel_values: {fraud: [2], legit: ['3']}\n")
    rows = [{"s": 2}, {"s": 3.0}, {"s": "2"}, {"s": 1}, {"s": True}, {"s": 4}]
    assert [m.apply(r)["s"] for r in rows] == [True, False, True, 1, True, 4]


def test_a_label_column_and_a_labels_file_of_other_columns_say_the_conflict(tmp_path, capsys):
    """A review: the labels file's missing columns were said, not that both give labels."""
    from fds.cli import main

    mapping(tmp_path)
    (tmp_path / "b.csv").write_text(ROWS)
    (tmp_path / "l.csv").write_text("Ref,Datum\nR1,01.03.2026\n")
    argv = [str(tmp_path / "b.csv"), "--mapping", str(tmp_path / "m.yaml")]
    argv += ["--labels", str(tmp_path / "l.csv")]
    assert main(["replay", *argv, "--model", "none", "--out", str(tmp_path / "d.jsonl")]) == 2
    assert "both give labels: use one of them" in capsys.readouterr().err
    rules = str(Path(__file__).parents[2] / "rules" / "default.yaml")
    assert main(["rules", "backtest", "--candidate", rules, "--baseline", rules, *argv]) == 2
    assert "both give labels: use one of them" in capsys.readouterr().err


def test_a_bom_read_in_another_encoding_or_a_column_of_another_case_is_said(tmp_path):
    """A QA pass: a UTF-8 file with a byte order mark read with `encoding: latin-1` was refused
    with its column 'ï»¿Referenz' and no word why; a mapped `zeit` for the file's `Zeit`, with
    no "did you mean"."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"\xef\xbb\xbfReferenz;Zeit;Karte;Betrag\nr1;2026-01-01T00:00:00Z;c1;5\n")
    mapping = ColumnMapping.model_validate({
        "delimiter": ";", "encoding": "latin-1",
        "fields": {"tx_id": "Referenz", "ts": "zeit", "card_id": "Karte", "amount": "Betrag"},
    })  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_transaction_columns(p, mapping)
    assert "(the file starts with a UTF-8 byte order mark, read as 'ï»¿' in the mapping's " \
        "encoding: leave `encoding:` out, UTF-8 is the default)" in str(e.value)  # fmt: skip
    assert "(names differ in case only: 'zeit' -> 'Zeit')" in str(e.value)


def test_a_utf8_file_read_in_a_one_byte_encoding_is_said(tmp_path, caplog):
    """A README walk: a cp1252 export saved as UTF-8 since, its mapping unchanged, was read
    with every non-ASCII text garbled (`Gebühr` as `GebÃ¼hr`) without a word of the cause."""
    text = "Referenz;Zeit;Karte;Betrag;Gebühr\nr1;2026-01-01T00:00:00Z;c1;5;1\n"
    mapping = ColumnMapping.model_validate({
        "delimiter": ";", "encoding": "cp1252",
        "fields": {"tx_id": "Referenz", "ts": "Zeit", "card_id": "Karte", "amount": "Betrag"},
    })  # fmt: skip
    p = tmp_path / "x.csv"
    for encoding, said in (("cp1252", False), ("utf-8", True)):
        p.write_bytes(text.encode(encoding))
        caplog.clear()
        check_transaction_columns(p, mapping)
        assert ("its header reads as UTF-8 ('Gebühr'), not as the mapping's `encoding: "
                "cp1252` ('GebÃ¼hr')" in caplog.text) is said, caplog.text  # fmt: skip


def test_a_dos_end_of_file_mark_is_no_record(tmp_path):
    """A QA pass: a DOS export's last byte, Ctrl-Z (0x1A), on a line of its own was a
    transaction, dead-lettered ("expected 4 columns, found 1")."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"tx_id,ts,card_id,amount\r\nt1,1767225600,c1,5\r\n\x1a")
    assert [rec for _, rec, _ in read_records(p)] == [
        {"tx_id": "t1", "ts": "1767225600", "card_id": "c1", "amount": "5"}
    ]
    # JSON Lines too (the file "ended inside the record of line 2", exit 1: a QA pass), the
    # mark alone on its line, right after the last record, or on a line ended as any other
    one = {"tx_id": "t1", "ts": 1767225600, "card_id": "c1", "amount": 5}
    for end in (b"\n\x1a", b"\x1a", b"\n\x1a\n", b"\r\n\x1a"):
        j = tmp_path / "x.jsonl"
        j.write_bytes(orjson.dumps(one) + end)
        assert [rec for _, rec, _ in read_records(j)] == [one], end


def test_json_lines_ended_by_carriage_returns_alone_are_told_how_to_convert(tmp_path):
    """A QA pass: a JSON Lines file of a classic Mac (CR alone) was read as one line, "the
    file ends inside the record of line 1"."""
    p = tmp_path / "mac.jsonl"
    p.write_bytes(b'{"tx_id": "t1", "ts": 1}\r{"tx_id": "t2", "ts": 2}\r')
    with pytest.raises(ConfigError, match=r"carriage return alone .* tr '\\r' '\\n' < "):
        check_transaction_columns(p)
    import gzip

    gz = tmp_path / "mac.jsonl.gz"  # (tr on the gzip bytes wrote garbage: a review)
    gz.write_bytes(gzip.compress(p.read_bytes()))
    with pytest.raises(ConfigError, match=r"e\.g\. gzip -dc \S+mac\.jsonl\.gz \| tr '\\r' "):
        check_transaction_columns(gz)


def test_numbers_names_columns_whose_whole_numbers_are_grouped(tmp_path):
    """A QA pass: an unmapped `Menge` of `1.000` (one thousand as the file writes it) stayed
    text, and `extra.Menge > 500` read it as 1.0; `numbers: [Menge]` reads it in the file's
    notation, as the amount, in a CSV column and in a JSON record's extra object alike, and a
    value that does not fit it is a dead letter saying so."""
    m = mapping(tmp_path, GERMAN + "numbers: [Menge]\n")
    head = "Buchungsdatum;Karte;Haendler;Betrag;Referenz;Betrug;Menge\n"
    rows = [f"01.03.2026 08:0{i}:00;c;M;1,00;R{i};0;{v}\n" for i, v in enumerate(
        ("1.000", "2,50", "1.500,00", "999", "12.34"))]  # fmt: skip
    (tmp_path / "b.csv").write_text(head + "".join(rows))
    got = [r[1] for r in read_records(tmp_path / "b.csv", mapping=m)]
    assert [g["Menge"] for g in got[:4]] == ["1000", "2.50", "1500.00", "999"]
    assert isinstance(got[4], ValueError) and "Menge: '12.34' is no number as" in str(got[4])
    (tmp_path / "plain").mkdir()
    assert not mapping(tmp_path / "plain").numbers  # (as before without it: text)
    j = {"Referenz": "R9", "Buchungsdatum": "01.03.2026 08:09:00", "Karte": "c", "Betrag": "1,00",
         "Betrug": "0", "extra": {"Menge": "2.000"}}  # fmt: skip
    (tmp_path / "b.jsonl").write_text(orjson.dumps(j).decode() + "\n")
    ((_, rec, _),) = read_records(tmp_path / "b.jsonl", mapping=m)
    assert rec["extra"]["Menge"] == "2000"
    with pytest.raises(ConfigError, match="a list of column names"):
        mapping(tmp_path, GERMAN + "numbers: [1]\n")


def test_numbers_is_checked_in_a_file_of_plain_numbers_and_names_columns_of_the_file(tmp_path):
    """A QA pass: without `decimal:` or `thousands:`, `numbers: [NOTE]` let 'x' through (no
    dead letter), and a column of `numbers:` that the file has not was said nothing."""
    m = tmp_path / "m.yaml"
    m.write_text("numbers: [Menge]\n")
    p = tmp_path / "p.csv"
    p.write_text(
        "tx_id,ts,card_id,amount,Menge\n"
        "t1,1767225600,c,5,\nt2,1767225601,c,5,x\nt3,1767225602,c,5,-2.5\n"
        "t4,1767225603,c,5,NA\nt5,1767225604,c,5,1e-3\nt6,1767225605,c,5,.5\n"
    )
    got = [r[1] for r in read_records(p, mapping=load_mapping(m))]
    assert "Menge" not in got[0] and got[2]["Menge"] == "-2.5"  # (an empty cell: no value)
    assert isinstance(got[1], ValueError) and "Menge: 'x' is no number (nor" in str(got[1])
    assert [g["Menge"] for g in got[3:]] == ["NA", "1e-3", ".5"]  # (as the rules read them:
    # missing, numbers; the amount's own reading, not a stricter one: a review)
    j = tmp_path / "p.jsonl"  # (a JSON record's extra object too; a number as it is)
    j.write_text(
        '{"tx_id": "t1", "ts": 1, "card_id": "c", "amount": 1, "extra": {"Menge": "1,5"}}\n'
        '{"tx_id": "t2", "ts": 2, "card_id": "c", "amount": 1, "Menge": 7}\n'
    )
    got = [r[1] for r in read_records(j, mapping=load_mapping(m))]
    assert isinstance(got[0], ValueError) and got[1]["Menge"] == 7
    m.write_text("numbers: [NOPE]\n")
    with pytest.raises(ConfigError, match=r"column\(s\) \['NOPE'\] named in the mapping are not"):
        check_transaction_columns(p, load_mapping(m))
