"""Edge cases of the CSV and JSON Lines readers found by a differential fuzzer (a QA pass)."""

import pytest

from fds import replay
from fds.errors import ConfigError
from fds.streams.files import read_records

HEAD = "tx_id,ts,card_id,amount,note"


def decided_and_dead(tmp_path, text: str, name: str = "x.csv") -> tuple[list[str], list[int]]:
    p = tmp_path / name
    p.write_bytes(text.encode())
    stream = replay.load(p)
    return [t["tx_id"] for t in stream.transactions], [d["position"] for d in stream.dead_letters]


@pytest.mark.parametrize(
    "row",
    [
        't1,1767225600,c1,10,"first\nt9,1767225601,c9,99,x\nlast",\n',  # a trailing empty cell
        't1, 1767225600, c1, 10, "first\nt9, 1767225601, c9, 99, x\nlast" \n',  # space after "
    ],
)
def test_a_quoted_field_over_several_lines_is_one_field(tmp_path, row):
    """A line inside the field looked like a row of its own: the record was read as a quote
    left open and that line decided as a transaction (t9), a phantom."""
    ids, dead = decided_and_dead(tmp_path, f"{HEAD}\n{row}t2,1767225602,c1,12,ok\n")
    assert ids == ["t1", "t2"] and dead == []


def test_a_quoted_field_may_span_lines_when_unnamed_last_cells_are_left_out(tmp_path):
    text = f'{HEAD},\nt1,1767225600,c1,10,"first\nt9,1767225601,c9,99,x,y\nlast"\n'
    ids, dead = decided_and_dead(tmp_path, text)
    assert ids == ["t1"] and dead == []


def test_a_header_with_a_quote_left_open_is_refused(tmp_path):
    """The rows after it were swallowed into one column name, without a dead letter."""
    p = tmp_path / "x.csv"
    p.write_text(f'{HEAD[:-4]}"note\nt1,1767225600,c1,10,a\nt2,1767225601,c1,10,"x"\n')
    with pytest.raises(ConfigError, match=r"x.csv:1: the header leaves a quote open"):
        list(read_records(p))


def test_line_breaks_inside_a_quoted_field_are_kept_as_written(tmp_path):
    """`\\r\\n` in an Excel cell became `\\n` (the file was read with universal newlines)."""
    p = tmp_path / "x.csv"
    p.write_bytes(f'{HEAD}\r\nt1,1767225600,c1,10,"a\r\nb"\r\n'.encode())
    [(_, rec, _)] = list(read_records(p))
    assert isinstance(rec, dict) and rec["note"] == "a\r\nb"


def test_an_id_too_large_for_an_exact_number_is_a_dead_letter(tmp_path):
    """Two JSON ids past 2^64 were read as one float: two cards decided as one."""
    rows = (
        '{"tx_id": 123456789012345678901, "ts": 1767225600, "card_id": "c", "amount": 5}\n'
        '{"tx_id": "t2", "ts": 1767225601, "card_id": 98765432109876543210, "amount": 5}\n'
        '{"tx_id": 18446744073709551615, "ts": 1767225602, "card_id": "c", "amount": 5}\n'
    )
    ids, dead = decided_and_dead(tmp_path, rows, "x.jsonl")
    assert ids == ["18446744073709551615"] and dead == [1, 2]  # (2^64 - 1 is still exact)


def test_a_header_name_over_two_lines_is_a_name(tmp_path):
    """A review: Excel's `"Notes\n(internal)"` header was refused as a quote left open."""
    ids, dead = decided_and_dead(
        tmp_path, f'{HEAD[:-4]}"Notes\n(internal)"\nt1,1767225600,c1,5,a\n'
    )
    assert ids == ["t1"] and dead == []


def test_a_stray_quote_does_not_swallow_rows_with_excel_s_trailing_cell(tmp_path):
    """A review: with every row ending in an empty cell, no later line looked like a row of
    its own, so a stray quote swallowed the rest of the file (one dead letter, exit 0)."""
    rows = "".join(f"t{i},{1767225600 + i},c{i},5,\n" for i in range(1, 50))
    ids, dead = decided_and_dead(tmp_path, f'tx_id,ts,card_id,amount\nt0,1767225600,"c0,5,\n{rows}')
    assert len(ids) == 49 and dead == [2]


def test_a_labels_file_cut_short_is_warned_about(tmp_path, caplog):
    import gzip

    labels = gzip.compress(b"".join(
        b'{"tx_id": "t%d", "ts": 1767225660, "is_fraud": true}\n' % i for i in range(50)
    ))[:-30]  # fmt: skip
    (tmp_path / "l.jsonl.gz").write_bytes(labels)
    (tmp_path / "x.jsonl").write_text(
        '{"tx_id": "t0", "ts": 1767225600, "card_id": "c", "amount": 5}\n'
    )
    replay.load(tmp_path / "x.jsonl", labels_path=tmp_path / "l.jsonl.gz")
    assert "l.jsonl.gz could not be read to its end" in caplog.text


def test_an_unnamed_column_is_named_past_a_column_the_file_names_so(tmp_path):
    """A column named `column_6` by the file and an unnamed sixth column were refused as a
    name appearing twice; the unnamed one is `column_6_` (its value in `extra`)."""
    p = tmp_path / "x.csv"
    p.write_text(f"{HEAD},,column_6\nt1,1767225600,c1,10,n,a,b\n")
    [(_, rec, _)] = list(read_records(p))
    assert rec["column_6_"] == "a" and rec["column_6"] == "b", rec
    p.write_text(f"{HEAD},column_6,\nt1,1767225600,c1,10,n,a\n")  # Excel's trailing comma
    [(_, rec, _)] = list(read_records(p))
    assert rec["column_6"] == "a" and rec.get("column_7") is None, rec
    # a file's own column_6 is a named column: a row without it is short, not Excel's habit
    ids, dead = decided_and_dead(tmp_path, f"{HEAD},column_6,\nt1,1767225600,c1,10,n\n")
    assert ids == [] and dead == [2]


def test_a_parquet_float_column_s_nan_is_missing(tmp_path):
    """A QA pass: a device_id column of floats with NaN for no device gave the text "nan",
    one device shared by every transaction without one (a shared-device rule fired)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({
        "tx_id": ["t0", "t1", "t2"], "ts": [1767225600.0, 1767225601.0, 1767225602.0],
        "card_id": ["c0", "c1", "c2"], "amount": [5.0, 5.0, 5.0],
        "device_id": [float("nan"), 5.0, float("nan")], "risk": [float("nan"), 1.0, 2.0],
    }), p)  # fmt: skip
    recs = [rec for _, rec, _ in read_records(p)]
    assert ["device_id" in r for r in recs] == [False, True, False]
    assert "risk" not in recs[0] and recs[2]["risk"] == 2.0


def test_parquet_values_reach_extra_as_fds_produce_sends_them(tmp_path):
    """A QA pass: a decimal fee in `extra` made a rule raise in a replay ("not a number:
    Decimal", every transaction a dead letter) and was "2.50" over Kafka; a timestamp and a
    binary column likewise differed."""
    from datetime import datetime
    from decimal import Decimal

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({
        "tx_id": ["t0"], "ts": [1767225600.0], "card_id": ["c0"], "amount": [5.0],
        "fee": pa.array([Decimal("2.50")], pa.decimal128(5, 2)),
        "settled": pa.array([datetime(2026, 1, 1, 9, 30)], pa.timestamp("us")),
        "tag": pa.array([b"a"], pa.binary()),
    }), p)  # fmt: skip
    [(_, rec, _)] = list(read_records(p))
    assert (rec["fee"], rec["settled"], rec["tag"]) == ("2.50", "2026-01-01T09:30:00", "a")
    # nested in a struct or a list, and a ts column of dates, likewise (a review)
    from datetime import date

    from fds.streams.files import ColumnMapping

    pq.write_table(pa.table({
        "tx_id": ["t0"], "day": pa.array([date(2026, 1, 1)], pa.date32()), "card_id": ["c0"],
        "amount": [5.0], "extra": pa.array([{"fee": Decimal("2.50")}],
                                           pa.struct([("fee", pa.decimal128(5, 2))])),
        "fees": pa.array([[Decimal("1.50")]], pa.list_(pa.decimal128(5, 2))),
    }), p)  # fmt: skip
    m = ColumnMapping(fields={"ts": "day"}, timezone="Asia/Seoul")
    [(_, rec, _)] = list(read_records(p, mapping=m))
    assert (rec["extra"], rec["fees"], rec["ts"]) == ({"fee": "2.50"}, ["1.50"], "2026-01-01")


def test_parquet_durations_and_intervals_are_read_as_json_holds_them(tmp_path):
    """A QA pass: a duration column (a pandas Timedelta), even one no mapping names, ended the
    replay with a traceback ("Type is not JSON serializable: datetime.timedelta"): read as its
    seconds; an interval as its fields."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({
        "tx_id": ["t0"], "ts": [1767225600.0], "card_id": ["c0"], "amount": [5.0],
        "wait": pa.array([90_500], pa.duration("ms")),
        "pandas": pa.array([1_500_000_005], pa.duration("ns")),  # (a review: a dead letter)
        "at": pa.array([3_000_000_005], pa.time64("ns")),  # (a review: a dead letter too)
    }), p)  # fmt: skip
    [(_, rec, _)] = list(read_records(p))
    assert rec["wait"] == 90.5 and rec["pandas"] == 1.5 and rec["at"] == "00:00:03"
    from fds.schema import dumps  # (an Arrow interval: no Parquet type, an Arrow column's)

    term = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()).to_pylist()
    assert dumps(term) == b'[{"months":1,"days":2,"nanoseconds":3}]'


def test_a_parquet_date_past_the_year_9999_is_one_dead_letter(tmp_path):
    """A QA pass: one timestamp past the year 9999, in any column, made the whole batch's
    conversion raise: the replay ended there, the rest of the file neither decided nor
    dead-lettered. Its row is a dead letter naming the column and value; the others are read."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    import fds.streams.files as files

    n = 7
    other = [0] * n
    other[4] = 300_000_000_000  # seconds: the year ~11,500
    p = tmp_path / "far.parquet"
    pq.write_table(pa.table({
        "tx_id": [f"t{i}" for i in range(n)],
        "ts": pa.array([1767225600 + i for i in range(n)], pa.timestamp("s", tz="UTC")),
        "card_id": ["c0"] * n, "amount": [5.0] * n,
        "other": pa.array(other, pa.timestamp("s")),
        "day": pa.array([0] * (n - 1) + [2**31 - 1], pa.date32()),
    }), p)  # fmt: skip
    files.PARQUET_BATCH, batch = 3, files.PARQUET_BATCH  # several batches
    try:
        got = list(read_records(p))
    finally:
        files.PARQUET_BATCH = batch
    assert [n for n, _, _ in got] == list(range(1, n + 1))
    bad = {n: (rec, raw) for n, rec, raw in got if isinstance(rec, Exception)}
    assert sorted(bad) == [5, 7]
    rec, raw = bad[5]
    assert "other: the timestamp" in str(rec) and "years 1-9999" in str(rec)
    assert raw["tx_id"] == "t4" and raw["other"].startswith("300000000000")
    assert "day: the date32[day] value 2147483647" in str(bad[7][0])


def test_a_csv_line_of_spaces_alone_is_skipped_as_in_json_lines(tmp_path):
    """A QA pass: a CSV line of spaces or a tab was a dead letter ("expected 4 columns, found
    1") where JSON Lines skips it; a one-column file keeps it (a value of spaces)."""
    p = tmp_path / "ws.csv"
    p.write_text("tx_id,ts,card_id,amount\nt1,1767225600,c1,5\n   \n\t\nt2,1767225601,c1,6\n")
    assert [pos for pos, rec, _ in read_records(p) if isinstance(rec, Exception)] == []
    assert [rec["tx_id"] for _, rec, _ in read_records(p)] == ["t1", "t2"]
    one = tmp_path / "one.csv"
    one.write_text("tx_id\na\n   \nb\n")
    assert len(list(read_records(one))) == 3
