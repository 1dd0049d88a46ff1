"""A mapping reads fields nested in a JSON Lines record's objects (or a Parquet struct) by a
dotted name, as payment APIs export them (``card.id``, ``amount.value``): such a file was
refused ("not in the file") and had to be flattened first."""

import orjson
import pytest

from fds.errors import ConfigError
from fds.streams.files import ColumnMapping, check_transaction_columns, read_records

EVENTS = [
    {"id": "t1", "created": "2026-03-01T08:00:00Z", "card": {"id": "c1", "brand": "visa"},
     "amount": {"value": 12.5, "currency": "EUR"}, "risk": {"fraud": False}},
    {"id": "t2", "created": "2026-03-01T09:00:00Z", "card": {"id": "c1", "brand": "visa"},
     "amount": {"value": "NA", "currency": "EUR"}},
    {"id": "t3", "created": "2026-03-01T10:00:00Z", "card": {"id": "c1"},
     "amount": {"value": 30, "currency": "EUR"}, "risk": {"fraud": True}},
]  # fmt: skip
MAPPING = ColumnMapping(
    fields={"tx_id": "id", "ts": "created", "card_id": "card.id", "amount": "amount.value",
            "currency": "amount.currency"},
    label={"column": "risk.fraud", "delay": 0},
    missing=["NA"],
)  # fmt: skip


def write(path, rows):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def test_nested_fields_are_read_by_their_dotted_names(tmp_path):
    recs = list(read_records(write(tmp_path / "e.jsonl", EVENTS), mapping=MAPPING))
    first, second = recs[0][1], recs[1][1]
    assert first == {
        "tx_id": "t1",
        "ts": "2026-03-01T08:00:00Z",
        "card_id": "c1",
        "amount": 12.5,
        "currency": "EUR",
        "card": {"id": "c1", "brand": "visa"},  # the objects stay, in `extra`
        "risk": {"fraud": False},
        "risk.fraud": False,  # the label column, which the reader takes out
        "extra": {"amount": {"value": 12.5, "currency": "EUR"}},  # named like a field it fills
    }
    assert "amount" not in second  # a `missing:` text inside an object is missing too
    assert recs[0][2] == EVENTS[0]  # the record as read, for the dead letters


def test_a_column_named_with_dots_wins_over_a_nested_field():
    m = ColumnMapping(fields={"card_id": "card.id"})
    assert m.apply({"card.id": "flat", "card": {"id": "nested"}})["card_id"] == "flat"
    assert "card_id" not in m.apply({"card": "c1"})  # no object there: no value


def test_a_nested_file_replays_with_its_labels(tmp_path, capsys):
    from fds.cli import main
    from fds.logs import configure_logging

    write(tmp_path / "e.jsonl", EVENTS)
    (tmp_path / "m.yaml").write_text(
        "fields: {tx_id: id, ts: created, card_id: card.id, amount: amount.value}\n"
        "label: {column: risk.fraud, delay: 0s}\nmissing: [NA]\n"
    )
    argv = ["replay", str(tmp_path / "e.jsonl"), "--mapping", str(tmp_path / "m.yaml")]
    argv += ["--model", "none", "--no-progress", "--out", str(tmp_path / "d.jsonl")]
    try:
        assert main(["--log-format", "json", *argv]) == 0
        summary = orjson.loads(capsys.readouterr().out)
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)
    assert (summary["decided"], summary["dead_letters"], summary["frauds"]) == (2, 1, 1)
    decisions = [orjson.loads(x) for x in (tmp_path / "d.jsonl").read_bytes().splitlines()]
    assert [d["features"]["card_amount_avg_30d"] for d in decisions] == [12.5, 21.25]
    dead = orjson.loads((tmp_path / "d.dlq.jsonl").read_bytes())
    assert dead["reason"] == "amount: Field required" and dead["raw"] == EVENTS[1]


def test_a_nested_name_that_is_in_no_record_is_refused_with_how_it_is_read(tmp_path):
    write(tmp_path / "e.jsonl", EVENTS)
    m = ColumnMapping(fields={"tx_id": "id", "ts": "created", "card_id": "card.number",
                              "amount": "amount.value"})  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_transaction_columns(tmp_path / "e.jsonl", m)
    assert "column(s) ['card.number'] named in the mapping are not in the file" in str(e.value)
    assert "a dotted name reads a nested field: 'card.number' is 'number' in the object 'card'" in (
        str(e.value)
    )


def test_a_labels_file_with_nested_fields(tmp_path):
    m = ColumnMapping(labels_file={"tx_id": "payment.id", "ts": "at", "is_fraud": "dispute.fraud"})
    labels = [{"payment": {"id": "t1"}, "at": "2026-03-05T00:00:00Z", "dispute": {"fraud": 1}}]
    [(_n, rec, _raw)] = read_records(write(tmp_path / "l.jsonl", labels), mapping=m.for_labels())
    assert (rec["tx_id"], rec["ts"], rec["is_fraud"]) == ("t1", "2026-03-05T00:00:00Z", 1)


def test_a_parquet_struct_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    row = {"id": "t1", "created": "2026-03-01T08:00:00Z", "card": {"id": "c1"}, "amount": 12.5}
    table = pa.Table.from_pylist([row])
    pq.write_table(table, tmp_path / "e.parquet")
    m = ColumnMapping(fields={"tx_id": "id", "ts": "created", "card_id": "card.id"})
    check_transaction_columns(tmp_path / "e.parquet", m)
    [(_n, rec, _raw)] = read_records(tmp_path / "e.parquet", mapping=m)
    assert rec["card_id"] == "c1" and rec["amount"] == 12.5


def test_a_dotted_name_in_a_csv_must_be_a_column_of_that_name(tmp_path):
    """A review: a CSV with a column `card` passed `card_id: card.id` (a cell holds no object),
    and every row was a dead letter where the mapping used to be refused before the replay."""
    (tmp_path / "c.csv").write_text("id,created,card,amount\nt1,2026-03-01T08:00:00Z,c1,5\n")
    m = ColumnMapping(fields={"tx_id": "id", "ts": "created", "card_id": "card.id"})
    with pytest.raises(ConfigError, match=r"column\(s\) \['card.id'\] named in the mapping"):
        check_transaction_columns(tmp_path / "c.csv", m)
    (tmp_path / "d.csv").write_text("id,created,card.id,amount\nt1,2026-03-01T08:00:00Z,c1,5\n")
    check_transaction_columns(tmp_path / "d.csv", m)  # a column of that name: fine
