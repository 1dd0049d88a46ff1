import csv
import errno
import gzip
import io
import json
from typing import Any

import orjson
import pytest

import fds.streams.files as files
from fds.errors import ConfigError, FdsError
from fds.schema import dead_letter, dumps_line, loads_record
from fds.streams.files import (
    JSONL_PROBE,
    ColumnMapping,
    JsonlSink,
    infer_format,
    load_mapping,
    read_records,
)

MAPPING = """\
format: csv
fields:
  tx_id: TRANSACTION_ID
  ts: TX_DATETIME
  card_id: CUSTOMER_ID
  merchant_id: TERMINAL_ID
  amount: TX_AMOUNT
timezone: Asia/Seoul
label:
  column: TX_FRAUD
  delay: 7d
"""
CSV = """\
TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,SECTOR
1,2026-01-01 09:00:00,17,301,12.50,0,food
2,2026-01-01 09:05:00,17,302,990.00,1,
"""


def test_mapping_renames_and_keeps_unmapped_columns(tmp_path):
    (tmp_path / "m.yaml").write_text(MAPPING)
    (tmp_path / "h.csv").write_text(CSV)
    m = load_mapping(tmp_path / "m.yaml")
    assert m.label is not None and m.label.delay == 7 * 86400
    recs = list(read_records(tmp_path / "h.csv", mapping=m))
    assert [r[0] for r in recs] == [2, 3]  # positions are file line numbers
    first = recs[0][1]
    assert first == {
        "tx_id": "1",
        "ts": "2026-01-01 09:00:00",
        "card_id": "17",
        "merchant_id": "301",
        "amount": "12.50",
        "TX_FRAUD": "0",
        "SECTOR": "food",
    }
    assert "SECTOR" not in recs[1][1]  # empty cell = missing


def test_a_mapping_leaves_out_its_top_level_x_keys_and_takes_a_same_named_column(tmp_path):
    """A QA pass: `x-` keys (merge-key anchors, as a rules file takes them) were refused in a
    mapping; and a column named like a field the mapping does not name (`currency`) is that
    field, as the README says (a mapping names the columns whose names differ)."""
    (tmp_path / "m.yaml").write_text("x-ids: &ids {tx_id: ID, card_id: C}\n"
                                     "fields: {<<: *ids, ts: T, amount: A}\n")  # fmt: skip
    (tmp_path / "f.csv").write_text(
        "ID,T,C,A,currency,SECTOR\ni1,2026-01-01T00:00:00Z,k,10,EUR,x\n"
    )
    m = load_mapping(tmp_path / "m.yaml")
    (rec,) = [r[1] for r in read_records(tmp_path / "f.csv", mapping=m)]
    assert rec == {"tx_id": "i1", "ts": "2026-01-01T00:00:00Z", "card_id": "k", "amount": "10",
                   "currency": "EUR", "SECTOR": "x"}  # fmt: skip


def test_mapping_unknown_column_names_file_and_columns(tmp_path):
    (tmp_path / "m.yaml").write_text(MAPPING.replace("TX_AMOUNT", "AMOUNT_EUR"))
    (tmp_path / "h.csv").write_text(CSV)
    with pytest.raises(ConfigError, match=r"\['AMOUNT_EUR'\].*its columns are"):
        list(read_records(tmp_path / "h.csv", mapping=load_mapping(tmp_path / "m.yaml")))


def test_a_mapping_written_without_fields_is_told_where_its_columns_go(tmp_path):
    """A QA pass: `tx_id: Id` at the top was told the keys a mapping has, not `fields:`."""
    (tmp_path / "m.yaml").write_text("tx_id: Id\namount: Amt\n")
    with pytest.raises(
        ConfigError,
        match=r"m.yaml:1: tx_id: unknown key: tx_id is a field of "
        r"fds: name the file's columns under `fields:`",
    ):
        load_mapping(tmp_path / "m.yaml")
    (tmp_path / "n.yaml").write_text("fields: {tx_id: Id}\ncolumns: x\n")  # (as before)
    with pytest.raises(ConfigError, match=r"columns: unknown key: a mapping has"):
        load_mapping(tmp_path / "n.yaml")


def test_a_required_field_neither_mapped_nor_a_column_is_a_config_error(tmp_path):
    """Before, every row was dead-lettered (`card_id: Field required`) and the replay exited 0."""
    (tmp_path / "m.yaml").write_text(MAPPING.replace("  card_id: CUSTOMER_ID\n", ""))
    (tmp_path / "h.csv").write_text(CSV)
    with pytest.raises(ConfigError, match=r"h.csv:1: required engine field\(s\) \['card_id'\]"):
        list(read_records(tmp_path / "h.csv", mapping=load_mapping(tmp_path / "m.yaml")))
    # the same for JSON Lines (its first record's keys)
    row = {"TRANSACTION_ID": 1, "TX_DATETIME": "2026-01-01 09:00:00", "TERMINAL_ID": 3,
           "TX_AMOUNT": 5, "TX_FRAUD": 0}  # fmt: skip
    (tmp_path / "h.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "j.yaml").write_text(
        MAPPING.replace("  card_id: CUSTOMER_ID\n", "").replace("format: csv\n", "")
    )
    with pytest.raises(ConfigError, match=r"required engine field\(s\) \['card_id'\]"):
        list(read_records(tmp_path / "h.jsonl", mapping=load_mapping(tmp_path / "j.yaml")))
    # a column already named like the engine field needs no mapping
    (tmp_path / "h.csv").write_text(CSV.replace("CUSTOMER_ID", "card_id"))
    assert (
        len(list(read_records(tmp_path / "h.csv", mapping=load_mapping(tmp_path / "m.yaml")))) == 2
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fields:\n  tx_id: A\n  shoe: B\n", r"m.yaml:3: fields.shoe: unknown engine field .shoe."),
        # the natural first guess of a label column (a QA pass: told the fields alone)
        ("fields:\n  is_fraud: F\n", r"m.yaml:2: .*mapped as the label.*label: \{column: YOUR_"),
        # a header of numbers, an empty value: "Input should be a valid string" (a QA pass)
        (
            "fields:\n  tx_id: 0\n",
            r"m.yaml:2: fields.tx_id: YAML reads it as the number 0, not a "
            r"column name: write it in quotes exactly as the header has it",
        ),
        ("fields:\n  tx_id: A\n  ts:\n", r"m.yaml:3: fields.ts: name the file's column"),
        (
            "labels_file: {is_fraud: yes}\n",
            r"m.yaml:1: labels_file.is_fraud: YAML reads it as a "
            r"boolean \(True\)",
        ),
        ("fields: {tx_id: A}\ntimezone: Mars/Base\n", r"m.yaml:2: timezone: unknown timezone"),
        (
            "fields: {tx_id: A}\nlabel:\n  column: F\n  delay: soon\n",
            r"m.yaml:4: label.delay: bad duration 'soon'",
        ),
        # (where the bracket left open began, not the line past the end: a QA pass)
        ("fields: [tx_id\n", r"m.yaml:1:9: not valid YAML: .* flow sequence from line 1"),
        ("fields: {}\nformat: xml\n", r"m.yaml:2: format: Input should be 'csv'"),
        # the error for an unknown field listed `extra`, and a column mapped onto it failed
        # every row (a review)
        ("fields:\n  tx_id: A\n  extra: L\n", r"m.yaml:3: fields.extra: 'extra' is not a fi"),
        # a key written twice: the last one won, every tx_id became a shop id (a review)
        (
            "fields:\n  tx_id: A\n  ts: T\n  tx_id: S\n",
            r"m.yaml:4:3: not valid YAML: duplicate key 'tx_id'",
        ),
        # a label column mapped onto a field too: renamed away, every label lost (a review)
        (
            "fields: {tx_id: A, amount: AMT}\nlabel: {column: AMT}\n",
            r"m.yaml:2: label: column 'AMT' is also mapped onto the field 'amount'",
        ),
        # a column name alone: "a valid dictionary or instance of LabelColumn" (a QA pass)
        (
            "fields: {tx_id: A}\nlabel: FRAUD\n",
            r"m.yaml:2: label: give the fraud column as a section: `label: \{column: FRAUD, ",
        ),
        # a list where a section goes: pydantic's "Input should be a valid dictionary" (QA)
        (
            "fields: [tx_id, ts]\n",
            r"m.yaml:1: fields: a section of `key: value` lines under it is expected, not a list",
        ),
        (
            "fields: {tx_id: A}\nlabel: yes\n",
            r"m.yaml:2: label: a section of `key: value` lines .* not true/false",
        ),
    ],
)
def test_bad_mapping_names_file_line_and_problem(tmp_path, text, message):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_mapping(tmp_path / "m.yaml")


def test_jsonl_gzip_and_bad_lines(tmp_path):
    p = tmp_path / "x.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write('{"a": 1}\n\n{not json\n[1]\n')
    recs = list(read_records(p))
    assert recs[0] == (1, {"a": 1}, None)
    assert recs[1][0] == 3 and isinstance(recs[1][1], ValueError) and recs[1][2] == "{not json\n"
    assert recs[2] == (4, [1], None)


def test_csv_ragged_row_is_an_error_record(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n1,2,3\n")
    recs = list(read_records(p))
    assert recs[0][1] == {"a": "1", "b": "2"}
    assert "expected 2 columns, found 3" in str(recs[1][1])
    assert recs[1][2] == "1,2,3"  # the row, not with csv's "\r\n" (a QA pass)


def test_a_quote_left_open_on_the_last_row_is_said(tmp_path):
    """A README walk: a stray quote on a CSV's last line was "expected 4 columns, found 2",
    where one mid-file is said as an unbalanced quote."""
    p = tmp_path / "x.csv"
    p.write_text('tx_id,ts,card_id,amount\nt1,5,c1,5\nt2,"6,c2,6\n')
    recs = list(read_records(p))
    assert recs[0][1] == {"tx_id": "t1", "ts": "5", "card_id": "c1", "amount": "5"}
    assert str(recs[1][1]) == (
        "expected 4 columns, found 2 (a quote opened in column 2 is not closed: its cell runs "
        "to the end of the row)"
    )


def test_infer_format():
    assert infer_format("a.csv.gz") == "csv"
    assert infer_format("a.ndjson") == "jsonl"
    assert infer_format("a.txt", "csv") == "csv"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        infer_format("a.txt")


@pytest.mark.parametrize("name", ["o.jsonl.gz", "O.JSONL.GZ"])
def test_sink_roundtrip(tmp_path, name):
    with JsonlSink(tmp_path / name) as s:
        s.write({"a": 1})
        s.write({"b": [1, 2]})
    assert (tmp_path / name).read_bytes()[:2] == b"\x1f\x8b"  # (.GZ was written plain)
    assert [r[1] for r in read_records(tmp_path / name)] == [{"a": 1}, {"b": [1, 2]}]


def test_an_upper_case_gz_is_read_as_gzip(tmp_path):
    """A QA pass: a Windows export's EXPORT.CSV.GZ was read as text ("not valid UTF-8, give
    encoding: cp1252"), and `fds produce` sent UP.JSONL.GZ as one record of garbage, exit 0."""
    for name, text in (("EXPORT.CSV.GZ", "tx_id,amount\nt1,5\n"), ("UP.JSONL.GZ", '{"a": 1}\n')):
        with gzip.open(tmp_path / name, "wt") as f:
            f.write(text)
        (rec,) = [r[1] for r in read_records(tmp_path / name)]
        assert rec in ({"tx_id": "t1", "amount": "5"}, {"a": 1})


def test_a_column_named_like_a_field_mapped_from_another_goes_to_extra():
    """`amount: AMT` overwrote the file's own `amount` column: a rule on `extra.amount` never
    fired, and the column was in no decision or dead letter (a review)."""
    m = ColumnMapping(fields={"tx_id": "TID", "amount": "AMT", "merchant_id": "amount"})
    row = {"TID": "t1", "AMT": "10", "amount": "999", "card_id": "AMT"}
    assert m.apply(row) == {"tx_id": "t1", "amount": "10", "merchant_id": "999", "card_id": "AMT"}
    m = ColumnMapping(fields={"tx_id": "TID", "amount": "AMT"})
    assert m.apply({"TID": "t1", "AMT": "10", "amount": "999"}) == {
        "tx_id": "t1", "amount": "10", "extra": {"amount": "999"}
    }  # fmt: skip
    both = {"TID": "t1", "AMT": "10", "amount": "999", "extra": {"amount": 1, "b": 2}}
    assert m.apply(both)["extra"] == {"amount": 1, "b": 2}  # a value of `extra` itself wins
    assert m.apply({"TID": "t1", "AMT": "10", "amount": "9", "extra": "x"})["extra"] == "x"


def test_a_csv_column_named_extra_arrives_in_extra_under_its_name(tmp_path):
    """Text where a transaction's `extra` is an object: every row was a dead letter, and a
    mapping cannot rename it (a review)."""
    from fds.schema import parse_transaction

    p = tmp_path / "x.csv"
    p.write_text("tx_id,ts,card_id,amount,extra\nt1,1767225600,c1,10,hello\n"
                 "t2,1767225601,c1,10,\n")  # fmt: skip
    (_, rec1, raw1), (_, rec2, raw2) = read_records(p)
    assert rec1["extra"] == {"extra": "hello"} and raw1["extra"] == "hello"  # raw: as read
    assert "extra" not in rec2 and raw2 is None
    assert parse_transaction(rec1)["extra"] == {"extra": "hello"}
    m = ColumnMapping(fields={"tx_id": "tx_id", "amount": "amount"})
    (_, mapped, _), _ = read_records(p, mapping=m)
    assert mapped["extra"] == {"extra": "hello"}
    # with a column named like a field the mapping fills from another: both in `extra` (the
    # second was lost when `extra` was text: a QA pass)
    q = tmp_path / "y.csv"
    q.write_text("tx_id,ts,card_id,AMT,amount,extra\nt1,1767225600,c1,10,shadow,hello\n")
    ((_, mapped, _),) = read_records(q, mapping=ColumnMapping(fields={"amount": "AMT"}))
    assert mapped["amount"] == "10" and mapped["extra"] == {"extra": "hello", "amount": "shadow"}
    # its text the mapping calls missing is missing (a review: it was kept once wrapped)
    (_, mapped, _), _ = read_records(p, mapping=ColumnMapping(missing=["hello"]))
    assert "extra" not in mapped
    # a mapping that reads it takes it as it is (a field's source, the label column)
    m = ColumnMapping(fields={"merchant_id": "extra"})
    (_, mapped, _), _ = read_records(p, mapping=m)
    assert mapped["merchant_id"] == "hello" and "extra" not in mapped
    m = ColumnMapping.model_validate({"label": {"column": "extra"}})
    (_, mapped, _), _ = read_records(p, mapping=m)
    assert mapped["extra"] == "hello"  # (the replay takes the label column out of the row)


def test_mapping_without_fields_is_identity():
    assert ColumnMapping().apply({"x": 1}) == {"x": 1}


def test_csv_lines_bom_blank_lines_and_bytes_that_are_not_utf8(tmp_path):
    p = tmp_path / "h.csv"
    p.write_bytes(
        b"\xef\xbb\xbfid,note\n"  # a byte-order mark before the first column's name
        b'1,"two\nlines"\n'  # a quoted field over lines 2-3
        b"\n"  # a blank line: no record
        b"2,caf\xe9\n"  # Latin-1, not UTF-8: that row is a dead letter, the rest goes on
        b"3,ok\n"
    )
    recs = list(read_records(p))
    assert [n for n, _rec, _raw in recs] == [2, 5, 6]  # the line each record starts on
    assert recs[0][1] == {"id": "1", "note": "two\nlines"}
    assert isinstance(recs[1][1], ValueError) and "UTF-8" in str(recs[1][1])
    # the row's own bytes (they were replaced by U+FFFD: a dead letter lost them)
    assert recs[1][2] == b"2,caf\xe9" and recs[2][1] == {"id": "3", "note": "ok"}
    letter = dead_letter(stage="parse", error=recs[1][1], raw=recs[1][2], source="h", position=5)
    assert letter["raw"] == "2,caf\\xe9"  # escaped as fds run escapes a Kafka record's
    # a quote left open on a line that is not UTF-8: its dead letter could not be written
    # (orjson refused the surrogates standing for the bytes: the replay crashed)
    p.write_bytes(b'tx_id,note\nt1,"caf\xe9\nt2,ok\n')
    (n, error, raw), *rest = read_records(p)
    assert "unbalanced quote" in str(error) and raw == b't1,"caf\xe9\n'
    assert dumps_line(dead_letter(stage="parse", error=error, raw=raw, source="h", position=n))
    assert [rec for _n, rec, _raw in rest] == [{"tx_id": "t2", "note": "ok"}]
    j = tmp_path / "x.jsonl"
    j.write_bytes(b'{"id": "caf\xe9"}\n{"id": 1\n')
    assert [raw for _n, _rec, raw in read_records(j)] == [b'{"id": "caf\xe9"}\n', '{"id": 1\n']
    p.write_bytes(b"\xefid\n1\n")
    with pytest.raises(ConfigError, match=r"h\.csv:1: the header is not valid UTF-8"):
        list(read_records(p))


def test_jsonl_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [rec for _n, rec, _raw in read_records(p)] == [{"a": 1}, {"a": 2}]


ROWS = "".join(f"t{i},2026-01-01T00:00:{i:02d}Z,c1,100\n" for i in range(2, 50))  # lines 3-50


@pytest.mark.parametrize(
    ("stray", "after"),
    [
        ('t1,2026-01-01T00:00:00Z,"c1,100\n', ""),  # a middle column, open to the end
        ('t1,2026-01-01T00:00:00Z,c1,"100\n', ""),  # the last column, open to the end
        ('t1,2026-01-01T00:00:00Z,c1,"100\n', 't50,2026-01-01T00:00:50Z,c1,"100"\n'),  # closed
    ],
)
def test_a_stray_quote_is_one_dead_letter_and_the_rows_after_it_are_still_read(
    tmp_path, stray, after
):
    """Before, it swallowed every line up to the next quote: one dead letter for 49 lines, or
    (in the last column) the rows glued into a field, with no dead letter at all."""
    p = tmp_path / "x.csv"
    p.write_text("tx_id,ts,card_id,amount\n" + stray + ROWS + after)
    recs = list(read_records(p))
    last = 51 if after else 50
    n, error, raw = recs[0]
    assert (n, raw) == (2, stray) and isinstance(error, ValueError)
    assert str(error).startswith(f"unbalanced quote from line 2 to {last};")
    assert [n for n, _rec, _raw in recs[1:]] == list(range(3, last + 1))
    assert all(rec["amount"] == "100" and "\n" not in rec["ts"] for _n, rec, _raw in recs[1:])
    # balanced quotes over several lines are one field, even with a line that looks like a row
    p.write_text('tx_id,ts,card_id,amount\nt1,2026-01-01,c1,"1\na,b,c,d\n"\n' + ROWS)
    recs = list(read_records(p))
    assert recs[0] == (
        2,
        {"tx_id": "t1", "ts": "2026-01-01", "card_id": "c1", "amount": "1\na,b,c,d\n"},
        None,
    )
    assert len(recs) == 49 and all(isinstance(rec, dict) for _n, rec, _raw in recs)


@pytest.mark.parametrize("cell", ['"Shop"', '"Shop, Main St"'])
def test_a_stray_quote_before_a_row_that_quotes_its_text_is_one_dead_letter(tmp_path, cell):
    """A review: the quote left open on t2's line took t3's line into t2's last cell (t3 lost,
    no dead letter; or, with a separator in its quoted cells, one dead letter for both): a
    line that quotes its text was never taken for a row of its own."""
    p = tmp_path / "x.csv"
    p.write_text(
        "tx_id,ts,card_id,amount,merchant\n"
        't1,2026-01-01T00:00:00Z,c1,10,"ACME"\n'
        "t2,2026-01-01T00:01:00Z,c1,20,\"Joe's Bar\n"
        f"t3,2026-01-01T00:02:00Z,c1,30,{cell}\n"
        't4,2026-01-01T00:03:00Z,c1,40,"Cafe"\n'
    )
    recs = list(read_records(p))
    assert [n for n, _rec, _raw in recs] == [2, 3, 4, 5]
    assert str(recs[1][1]).startswith("unbalanced quote from line 3 to 4;")
    assert [rec["tx_id"] for _n, rec, _raw in recs if isinstance(rec, dict)] == ["t1", "t3", "t4"]
    assert recs[2][1]["merchant"] == cell.strip('"')


def test_blank_lines_before_the_header_are_skipped(tmp_path):
    """A review: a blank first line was read as a header of no columns ("required engine
    field(s) ... its columns are []"), though blank lines are skipped everywhere else."""
    p = tmp_path / "x.csv"
    p.write_text("\n \r\nsep=;\ntx_id;ts;card_id;amount\nt1;2026-01-01T00:00:00Z;c1;10\n")
    assert list(read_records(p)) == [
        (5, {"tx_id": "t1", "ts": "2026-01-01T00:00:00Z", "card_id": "c1", "amount": "10"}, None)
    ]
    p.write_text("\n\n")
    assert list(read_records(p)) == []


@pytest.fixture
def field_limit():
    """A field limit of 1,000 characters for one test (the reader's is 16 MiB)."""
    before = csv.field_size_limit(1000)
    yield
    csv.field_size_limit(before)


def test_a_stray_quote_that_runs_over_the_field_limit_is_one_dead_letter(tmp_path, field_limit):
    """Before, the runaway field ended the replay with a traceback (`_csv.Error`)."""
    p = tmp_path / "x.csv"
    p.write_text("tx_id,ts,card_id,amount\n" + 't1,2026-01-01,"c1,100\n' + ROWS * 3)
    recs = list(read_records(p))
    assert "unbalanced quote from line 2 to" in str(recs[0][1])
    assert [n for n, _rec, _raw in recs[1:]] == list(range(3, 3 + 48 * 3))
    assert all(isinstance(rec, dict) for _n, rec, _raw in recs[1:])


@pytest.mark.parametrize("cell", ["y" * 2000, '"' + 'y,""' * 500 + '"'])
def test_a_row_with_a_field_over_the_limit_is_a_dead_letter_and_the_rest_is_read(
    tmp_path, field_limit, cell
):
    """A QA pass: a CSV row with a 17 MiB field ended the replay there (exit 0), the rows
    after it not read. Its quotes closed on its line, it is a dead letter of its own."""
    p = tmp_path / "x.csv"
    p.write_text(CSV_TEXT.replace("t9,9,c1,1", f"t9,9,c1,{cell}"))
    recs = list(read_records(p))
    assert len(recs) == 2999
    (bad,) = [(n, rec, raw) for n, rec, raw in recs if isinstance(rec, Exception)]
    assert bad[0] == 10 and "a field of this row is too long: field larger than" in str(bad[1])
    assert bad[2].startswith("t9,9,c1,")
    assert [rec["tx_id"] for _n, rec, _raw in recs if isinstance(rec, dict)][8:10] == ["t10", "t11"]


def test_a_quote_left_open_after_a_literal_quote_is_no_row_of_its_own(tmp_path, field_limit):
    """A review: two quotes on the line (a literal one in an unquoted cell, then one that opens
    a field running over the limit) were taken for closed, and the field's next line was read
    as a row (t77). The file is cut there, as before."""
    p = tmp_path / "x.csv"
    p.write_text(
        CSV_TEXT.split("t9,")[0] + 't9,9,c1,5" screen,"' + "y" * 2000 + "\nt77,77,c7,999,pasted\n"
    )
    recs = list(read_records(p))
    assert "t77" not in [rec.get("tx_id") for _n, rec, _raw in recs if isinstance(rec, dict)]
    assert str(recs[-1][1]).startswith("cannot read the file on from line 10")


def test_a_field_over_128_kib_is_read(tmp_path):
    """Before: `_csv.Error: field larger than field limit (131072)` and a traceback."""
    p = tmp_path / "x.csv"
    p.write_text("id,note\n1," + "y" * 200_000 + "\n2,x\n")
    assert [rec["id"] for _n, rec, _raw in read_records(p)] == ["1", "2"]


CSV_TEXT = "tx_id,ts,card_id,amount\n" + "".join(f"t{i},{i},c1,1\n" for i in range(1, 3000))
JSONL_TEXT = "".join(
    json.dumps({"tx_id": f"t{i}", "ts": i, "card_id": "c1", "amount": 1}) + "\n"
    for i in range(1, 3000)
)


def test_a_json_lines_file_cut_inside_its_last_record_is_cut_short(tmp_path):
    """A README walk: `head -c 20000 x.jsonl > cut.jsonl` was produced whole, exit 0, its cut
    last line sent as a record (a .gz cut so was an error); a last line without a newline that
    is whole JSON is a record (many writers end so)."""
    p = tmp_path / "cut.jsonl"
    p.write_text(JSONL_TEXT[:1000])
    *rows, (n, error, raw) = read_records(p)
    assert isinstance(error, files.FileCut) and n == len(rows) + 1
    assert str(error).startswith(f"the file ends inside the record of line {n}: ")
    assert raw is not None and not raw.endswith("\n")
    whole = JSONL_TEXT.splitlines(keepends=True)
    p.write_text("".join(whole[:5]) + whole[5].rstrip("\n") + "\n" + '{"broken": \n')
    *_, (_n, error, _raw) = read_records(p)  # (a bad line with its newline: a dead letter)
    assert type(error) is ValueError
    p.write_text("".join(whole[:5]).rstrip("\n"))  # (a last record without its newline)
    assert all(isinstance(rec, dict) for _n, rec, _raw in read_records(p))


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        ('t3,3,c1,"1\nmore', "a quote left open (its cell runs to the end of the file)"),
        ("t3,3", "expected 4 columns, found 2"),
    ],
)
def test_a_csv_file_cut_inside_its_last_record_is_cut_short(tmp_path, tail, why):
    """A QA pass: a CSV cut inside a quoted last cell was read whole (its cut cell decided,
    exit 0: 59,090 rows of a bank export gone without a sign), one cut mid-row was a dead
    letter and exit 0, where the same cut of a JSON Lines file is an error; a last row without
    its line break that is whole, its quote closed over two lines too, is a record."""
    p = tmp_path / "cut.csv"
    head = "".join(CSV_TEXT.splitlines(keepends=True)[:3])
    p.write_text(head + tail)
    *rows, (n, error, raw) = read_records(p)
    assert [rec["tx_id"] for _n, rec, _raw in rows] == ["t1", "t2"]
    assert isinstance(error, files.FileCut) and n == 4, error
    assert str(error) == f"the file ends inside the record of line 4: {why}"
    assert raw == tail
    for whole, amount in (
        ('t3,3,c1,"1\nmore"', "1\nmore"),
        ("t3,3,c1,1", "1"),
        ("t3,3,c1,1\r\n", "1"),
        ('t3,3,c1,"1"\t', "1\t"),  # (as a row inside the file reads it: a review)
    ):
        p.write_text(head + whole)
        assert [rec["amount"] for _n, rec, _raw in read_records(p)][-1] == amount


def _truncated_gzip(p, text):
    p.write_bytes(gzip.compress(text.encode())[:-40])


def _as_is(p, text):
    p.write_text(text)


@pytest.mark.parametrize(
    ("name", "text", "damage", "line", "reason"),
    [  # line: where reading stops, None where the gzip block ends
        ("x.csv.gz", CSV_TEXT, _truncated_gzip, None, "Compressed file ended before the end-of"),
        ("x.jsonl.gz", JSONL_TEXT, _truncated_gzip, None, "Compressed file ended before the end"),
        ("x.csv.gz", CSV_TEXT, _as_is, 1, "Not a gzipped file (b'tx')"),
        ("x.csv", CSV_TEXT.replace("t9,", 't9,"' + "y" * 2000), _as_is, 10,
         "field larger than field limit (1000)"),  # (a quote left open that ends it)
    ],
)  # fmt: skip
def test_a_file_that_cannot_be_read_on_ends_in_one_dead_letter(
    tmp_path, field_limit, name, text, damage, line, reason
):
    """Before, a traceback (EOFError, gzip.BadGzipFile, _csv.Error), and the rows read ahead
    were never decided."""
    p = tmp_path / name
    damage(p, text)
    *rows, (n, error, raw) = read_records(p)
    assert n == (line or n) and isinstance(error, ValueError) and raw is None
    assert str(error).startswith(f"cannot read the file on from line {n}: {reason}")
    first = 1 if "jsonl" in name else 2
    assert [m for m, _rec, _raw in rows] == list(range(first, n))  # every line before it
    assert all(isinstance(rec, dict) for _m, rec, _raw in rows) and (rows or line == 1)


def test_a_cut_gzip_with_a_quote_left_open_reads_the_rows_the_quote_ran_over(tmp_path):
    """A QA pass: the cut ended the open quote's record, the fault was said at the quote's
    line, and the ~17,900 sound rows it had run over were neither decided nor dead letters."""
    p = tmp_path / "x.csv.gz"
    _truncated_gzip(p, CSV_TEXT.replace("t9,9,", 't9,"9,'))
    *rows, (n, error, _raw) = read_records(p)
    assert str(rows[8][1]).startswith("unbalanced quote from line 10 to ")
    assert "cannot read the file on from line" in str(error) and n > 2900
    assert [m for m, _rec, _raw in rows] == list(range(2, n))  # every line before the cut
    assert all(isinstance(rec, dict) for _m, rec, _raw in rows[9:])


def test_a_jsonl_mapping_checks_required_fields_only_on_the_first_record(tmp_path):
    """Before, a mapped optional column missing from line 1 refused the whole replay (the
    simulator's POS rows have no device_id); and a blank line 1 skipped the check."""
    (tmp_path / "m.yaml").write_text(
        "fields: {tx_id: TID, ts: WHEN, card_id: CARD, amount: AMT, device_id: DEV}\n"
        "label: {column: FRAUD}\n"
    )
    m = load_mapping(tmp_path / "m.yaml")
    p = tmp_path / "x.jsonl"
    first = {"TID": "t1", "WHEN": 1, "CARD": "c1", "AMT": 5}
    p.write_text(f"{json.dumps(first)}\n" + json.dumps({**first, "DEV": "d9", "FRAUD": 1}))
    recs = [rec for _n, rec, _raw in read_records(p, mapping=m)]
    assert recs == [
        {"tx_id": "t1", "ts": 1, "card_id": "c1", "amount": 5},
        {"tx_id": "t1", "ts": 1, "card_id": "c1", "amount": 5, "device_id": "d9", "FRAUD": 1},
    ]
    del first["AMT"]  # a required field's column is still checked, on the first record
    p.write_text(f"\n{json.dumps(first)}\n")
    with pytest.raises(ConfigError, match=r"x\.jsonl:2: column\(s\) \['AMT'\] named in the"):
        list(read_records(p, mapping=m))


def test_a_jsonl_record_without_a_required_column_is_decided_when_a_later_one_fits(
    tmp_path, monkeypatch
):
    """Before, a first record that lacked a mapped required key stopped the replay with a
    mapping error, though the mapping fitted every other record: it is now one dead letter.
    A mapping that fits none of the first JSONL_PROBE records is still an error."""
    m = ColumnMapping(fields={"tx_id": "TID", "ts": "WHEN", "card_id": "CARD", "amount": "AMT"})
    p = tmp_path / "x.jsonl"
    good = {"TID": "t1", "WHEN": 1, "CARD": "c1", "AMT": 5}
    bad = {"TID": "t0", "WHEN": 1, "CARD": "c1"}
    p.write_text(f"{json.dumps(bad)}\nnot json\n{json.dumps(good)}\n{json.dumps(bad)}\n")
    out = list(read_records(p, mapping=m))
    assert [n for n, _rec, _raw in out] == [1, 2, 3, 4]  # in file order, nothing lost
    assert out[0][1] == {"tx_id": "t0", "ts": 1, "card_id": "c1"}  # (fails validation later)
    assert isinstance(out[1][1], ValueError)
    assert out[2][1] == {"tx_id": "t1", "ts": 1, "card_id": "c1", "amount": 5}
    # at most JSONL_PROBE records are held: with no object among them nothing is judged (a
    # pretty-printed JSON array, each line invalid, was held whole: 93 MB for 200,000 lines)
    p.write_text("not json\n" * JSONL_PROBE + f"{json.dumps(bad)}\n{json.dumps(good)}\n")
    out = read_records(p, mapping=m)
    assert next(out)[0] == 1 and sum(1 for _ in out) == JSONL_PROBE + 1
    read: list[Any] = []
    real = files._jsonl_records
    monkeypatch.setattr(files, "_jsonl_records", lambda q: (read.append(r) or r for r in real(q)))
    p.write_text("not json\n" * (3 * JSONL_PROBE))
    next(read_records(p, mapping=m))
    assert len(read) == JSONL_PROBE  # held before the first is handed on
    p.write_text(f"{json.dumps(bad)}\n" * JSONL_PROBE + f"{json.dumps(good)}\n")
    with pytest.raises(
        ConfigError,
        match=rf"x\.jsonl:1: column\(s\) \['AMT'\] .* nor has any record up to line {JSONL_PROBE}$",
    ):
        list(read_records(p, mapping=m))


def test_duplicate_csv_column_names_are_a_config_error(tmp_path):
    """Before, the last of the columns with one name silently won."""
    p = tmp_path / "x.csv"
    p.write_text("tx_id,amount,ts,card_id,amount,tx_id\nt1,5,1,c1,6,t2\n")
    with pytest.raises(
        ConfigError, match=r"x\.csv:1: column name\(s\) \['amount', 'tx_id'\] appear more than once"
    ):
        list(read_records(p))


def test_a_label_delay_without_a_unit_is_warned_about(tmp_path, caplog):
    """`delay: 7` is 7 seconds (a number of seconds, as everywhere): likely meant as 7d."""
    m = tmp_path / "m.yaml"
    m.write_text("fields: {tx_id: A}\nlabel:\n  column: F\n  delay: 7\n")
    assert load_mapping(m).label.delay == 7.0
    assert f"{m}:4: label.delay 7 has no unit: read as 7 seconds" in caplog.text
    caplog.clear()
    m.write_text("fields: {tx_id: A}\nlabel: {column: F, delay: 7}\n")  # (no delay: line)
    load_mapping(m)
    assert f"{m}:2: label.delay 7 has no unit" in caplog.text
    caplog.clear()
    m.write_text("fields: {tx_id: A}\nlabel: {column: F, delay: 7d}\n")
    assert load_mapping(m).label.delay == 7 * 86400.0 and not caplog.text


def test_a_label_column_without_a_delay_is_warned_about(tmp_path, caplog):
    """A QA pass: without `delay:` each label was learned right after its transaction (0 s),
    the model judged far better than in production, without a word."""
    m = tmp_path / "m.yaml"
    m.write_text("fields: {tx_id: A}\nlabel:\n  column: F\n")
    assert load_mapping(m).label.delay == 0.0
    assert f"{m}:2: label has no delay: each label is learned right after its transaction" in (
        caplog.text
    )
    caplog.clear()
    m.write_text("fields: {tx_id: A}\nlabel: {column: F, delay: 0s}\n")  # meant: no warning
    assert load_mapping(m).label.delay == 0.0 and not caplog.text


def test_a_mapping_names_the_texts_that_mean_missing(tmp_path):
    """A QA pass: a `DeviceInfo` of `NaN` was one device shared by every transaction without
    one (617 cards in `device_cards_7d`), and a mapping could not say that `NaN` is no value."""
    (tmp_path / "m.yaml").write_text(MAPPING + "missing: [NaN, 'null', '-999']\n")
    (tmp_path / "h.csv").write_text(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,SECTOR\n"
        "1,2026-01-01 09:00:00,17,NaN,12.50,0,null\n"
        "2,2026-01-01 09:05:00,17,-999,990.00,1,NaN \n"
        "3,2026-01-01 09:06:00,17,nan,5.00,0,-999.0\n"
    )
    m = load_mapping(tmp_path / "m.yaml")
    assert m.missing == {"NaN", "null", "-999"}
    recs = [r for _, r, _ in read_records(tmp_path / "h.csv", mapping=m)]
    assert "merchant_id" not in recs[0] and "SECTOR" not in recs[0]
    assert "merchant_id" not in recs[1] and "SECTOR" not in recs[1]  # (the space: stripped)
    assert recs[2]["merchant_id"] == "nan" and recs[2]["SECTOR"] == "-999.0"  # as written only
    (tmp_path / "j.jsonl").write_text(
        '{"TRANSACTION_ID": "1", "TX_DATETIME": 1, "CUSTOMER_ID": "c", "TX_AMOUNT": 1, '
        '"TERMINAL_ID": "NaN", "TX_FRAUD": 0}\n'
    )
    jm = ColumnMapping.model_validate({**m.model_dump(), "format": "jsonl"})
    (rec,) = [r for _, r, _ in read_records(tmp_path / "j.jsonl", mapping=jm)]
    assert "merchant_id" not in rec
    (tmp_path / "bad.yaml").write_text(MAPPING + "missing: {NaN: 1}\n")
    with pytest.raises(ConfigError, match="a list of texts read as missing"):
        load_mapping(tmp_path / "bad.yaml")
    # what YAML reads as no text (NULL, ~, 1.50, no) is refused: it matched nothing (a review),
    # a single one too (a QA pass), and a date that does not exist is no traceback
    (tmp_path / "bad.yaml").write_text(MAPPING + "missing: NULL\n")
    with pytest.raises(ConfigError, match=r"as a null \(NULL, ~\), not a text"):
        load_mapping(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text(MAPPING + "ts_origin: 2018-13-45\n")
    line = MAPPING.count("\n") + 1  # (at its line: it named the file alone, a QA pass)
    with pytest.raises(
        ConfigError, match=rf"bad.yaml:{line}:12: .*2018-13-45 reads as a date that does not exist"
    ):
        load_mapping(tmp_path / "bad.yaml")
    for odd in ("NULL", "~", "1.50", "no", "-999"):
        (tmp_path / "bad.yaml").write_text(MAPPING + f"missing: [NaN, {odd}]\n")
        with pytest.raises(ConfigError, match="not a text: write each one in quotes"):
            load_mapping(tmp_path / "bad.yaml")


def test_nan_and_infinity_in_a_jsonl_record_are_said_with_the_fix(tmp_path):
    """A review: Python's json.dumps writes NaN and Infinity for floats that are none; the dead
    letters said orjson's `unexpected character ... column 64`, a reason of its own for each
    record (the summary: "each reason differs"). A Kafka record is told the same."""
    p = tmp_path / "w.jsonl"
    p.write_text('{"tx_id": "t1", "lat": NaN}\n{"tx_id": "t22", "risk": -Infinity}\n{"x": }\n')
    reasons = [str(rec) for _n, rec, _raw in read_records(p)]
    fix = "(Python's json.dumps writes NaN and Infinity for a float that is none): write null"
    assert reasons[0] == f"not valid JSON: NaN is no JSON value {fix} for no value"
    assert reasons[1] == f"not valid JSON: -Infinity is no JSON value {fix} for no value"
    assert reasons[2].startswith("not valid JSON: ") and "NaN" not in reasons[2]
    with pytest.raises(ValueError, match="NaN is no JSON value"):
        loads_record(b'{"amount": NaN}')


def test_a_jsonl_file_that_is_not_utf8_is_said_so_with_the_fix(tmp_path, caplog):
    """A QA pass: each line of a Latin-1 JSON Lines file was a dead letter `not valid JSON:
    str is not valid UTF-8: surrogates not allowed`, and a mapping's `encoding: latin-1` was
    silently unused there (it is a CSV's: JSON Lines is UTF-8)."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"tx_id": "t1", "note": "Caf\xe9"}\n{"tx_id": 2\n')
    (_, bad, raw), (_, broken, _) = read_records(p)
    assert str(bad).startswith("not UTF-8 (raw shows the bytes that are not as \\xNN)")
    assert f"convert it, e.g. iconv -f latin1 -t utf-8 {p} > {tmp_path}/x.utf8.jsonl" in str(bad)
    assert raw == b'{"tx_id": "t1", "note": "Caf\xe9"}\n'
    assert str(broken).startswith("not valid JSON:")  # (UTF-8, no JSON: as before)
    mapping = ColumnMapping.model_validate({"encoding": "latin-1"})
    with caplog.at_level("WARNING", logger="fds.streams.files"):
        list(read_records(p, mapping=mapping))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "the mapping's `encoding: latin-1` is not used for JSON" in said[0]
    assert f"iconv -f latin-1 -t utf-8 {p} >" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="fds.streams.files"):  # (UTF-8 by another name)
        list(read_records(p, mapping=ColumnMapping.model_validate({"encoding": "utf8"})))
    assert not caplog.records


class _FillingDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: a write past it is refused (ENOSPC)."""

    def __init__(self, path, room: int) -> None:
        self._f, self._room = open(path, "wb"), room  # noqa: SIM115

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = min(len(b), self._room)
        self._f.write(bytes(b[:n]))
        self._f.flush()
        self._room -= n
        if n < len(b):
            raise OSError(errno.ENOSPC, "No space left on device")
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


@pytest.mark.parametrize("room", [0, 5_000, 50_000])
def test_a_full_disk_cuts_the_output_back_to_whole_lines_and_says_so(tmp_path, monkeypatch, room):
    """A QA pass (`fds replay --out` on a full tmpfs): `failed: OSError: [Errno 28] No space
    left on device`, no path, no count, and the decisions file ended in a torn line that every
    JSON reader refused."""
    out = tmp_path / "d.jsonl"
    monkeypatch.setattr(
        files, "open_text", lambda p, mode: io.BufferedWriter(_FillingDisk(p, room))
    )
    with pytest.raises(FdsError) as e, JsonlSink(out) as sink:
        for i in range(2_000):
            sink.write({"tx_id": f"t{i}", "action": "approve", "pad": "x" * 20})
    lines = out.read_bytes().splitlines()
    assert all(orjson.loads(line)["tx_id"] for line in lines)  # every line whole
    assert f"cannot write {out}: OSError: [Errno 28] No space left on device" in str(e.value)
    assert f"it holds {len(lines):,} whole line(s)" in str(e.value)
    assert len(lines) < 2_000 and out.stat().st_size <= room


def test_a_full_disk_under_the_dead_letters_keeps_what_they_hold(tmp_path, monkeypatch, capsys):
    """A QA pass (`fds replay --dlq` on a full tmpfs, 6,559 dead letters): the replay's last
    drain opened the file again ("wb") after the failure and emptied it of its 2,561 whole
    lines (1,000 left, of the lines 6,001 on); with the decisions file on the same disk only
    the dead letters' failure was said, not the decisions file's."""
    from fds.cli import main

    src = tmp_path / "bad.jsonl"
    rows = [
        {"tx_id": f"t{i}", "ts": 1767225600 + i, "card_id": f"c{i % 7}",
         "amount": "x" * 300 if i % 3 == 0 else 10.0}
        for i in range(9_000)
    ]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = files.open_text
    room = {"dlq.jsonl": 1_500_000, "d.jsonl": 10**9}

    def full(p, mode):
        if "w" in mode and p.name in room:
            return io.BufferedWriter(_FillingDisk(p, room[p.name]))
        return real(p, mode)

    monkeypatch.setattr(files, "open_text", full)
    argv = ["replay", str(src), "--model", "none", "--no-progress", "--out",
            str(tmp_path / "d.jsonl"), "--dlq", str(tmp_path / "dlq.jsonl")]  # fmt: skip
    assert main(argv) == 1
    said = capsys.readouterr().err
    kept = (tmp_path / "dlq.jsonl").read_bytes().splitlines()
    assert 2_000 < len(kept) < 3_000 and f"it holds {len(kept):,} whole line(s)" in said
    assert [orjson.loads(x)["position"] for x in kept[:2]] == [1, 4]  # (from the start)
    assert "; and cannot write" not in said


def test_two_outputs_on_one_full_disk_are_both_said(tmp_path, monkeypatch):
    """A QA pass: the decisions file failed first, then the dead letters' at its close, and
    only the second failure was said (the user never learnt that d.jsonl was cut)."""
    import contextlib

    monkeypatch.setattr(
        files, "open_text", lambda p, mode: io.BufferedWriter(_FillingDisk(p, 3_000))
    )
    with pytest.raises(FdsError) as e, contextlib.ExitStack() as stack:
        out = stack.enter_context(JsonlSink(tmp_path / "d.jsonl"))
        dlq = stack.enter_context(JsonlSink(tmp_path / "dlq.jsonl"))
        dlq.write({"stage": "parse", "pad": "x" * 4_000})  # (buffered: fails at its close)
        for i in range(100):
            out.write({"tx_id": f"t{i}", "pad": "x" * 100})
    said = str(e.value)
    assert said.startswith(f"cannot write {tmp_path / 'd.jsonl'}: OSError: [Errno 28]")
    assert f"; and cannot write {tmp_path / 'dlq.jsonl'}: OSError: [Errno 28]" in said


class _SharedDisk(_FillingDisk):
    """Files on one disk with ``room[0]`` bytes left between them, written through at once."""

    def __init__(self, path, room: list[int]) -> None:
        super().__init__(path, room[0])
        self._shared = room

    def write(self, b) -> int:
        self._room = self._shared[0]
        try:
            return super().write(b)
        finally:
            self._shared[0] = self._room


def test_a_replay_whose_outputs_fill_one_disk_says_both(tmp_path, monkeypatch, capsys):
    """A QA pass: the decisions file filled the disk, then the dead letters' last drain failed
    too, and only that second failure was said."""
    from fds.cli import main

    src, rules = tmp_path / "tx.jsonl", tmp_path / "r.yaml"
    rows = [
        {"tx_id": f"t{i}", "ts": 1767225600 + i, "card_id": "c", "amount": 10.0 + 10 * (i % 2)}
        for i in range(20)
    ]  # (amount 10: the rule divides by zero, a dead letter of the rules stage)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rules.write_text(
        "version: z\nrules:\n  - {id: r, when: 'amount / (amount - 10) > 1', action: review, "
        "score: 1, reason: x}\n"
    )
    room, real = [2_500], files.open_text

    def on_disk(p, mode="rt", **kw):
        return io.BufferedWriter(_SharedDisk(p, room), 1) if "w" in mode else real(p, mode, **kw)

    monkeypatch.setattr(files, "open_text", on_disk)
    out, dlq = tmp_path / "d.jsonl", tmp_path / "dlq.jsonl"
    argv = ["replay", str(src), "--rules", str(rules), "--model", "none", "--no-progress",
            "--out", str(out), "--dlq", str(dlq)]  # fmt: skip
    assert main(argv) == 1
    said = capsys.readouterr().err
    assert f"cannot write {out}" in said and f"; and cannot write {dlq}" in said, said
