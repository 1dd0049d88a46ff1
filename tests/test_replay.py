import shutil
import subprocess
import time
from typing import Any

import orjson
import pytest

from fds import replay
from fds.engine import Engine
from fds.streams.files import ColumnMapping, JsonlSink

T0 = 1767225600.0


class ListSink:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def write(self, record: Any) -> None:
        self.items.append(record)


def write_jsonl(path, rows):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def tx(i, ts, **kw):
    return {"tx_id": f"t{i}", "ts": ts, "card_id": "c1", "amount": 10.0 + i, **kw}


def test_a_bad_label_of_a_labels_file_is_a_dead_letter_of_stage_label(tmp_path):
    """A QA pass: a labels file's bad record was `stage: validate` in a replay and `stage:
    label` over Kafka (fds run --labels-topic), one record, two stages for tools to group."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0), tx(1, T0 + 1)])
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"tx_id": "t0", "ts": 1767225700, "is_fraud": "maybe"}\n{broken\n')
    out, dlq = ListSink(), ListSink()
    replay.run(Engine(), replay.load(p, labels_path=labels), out, dlq)
    assert [(d["stage"], d["position"]) for d in dlq.items] == [("label", 1), ("label", 2)]
    assert len(out.items) == 2


def test_out_of_order_input_is_sorted_and_reported(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0 + 5), tx(1, T0 + 1), tx(2, T0 + 3)])
    stream = replay.load(p)
    assert stream.reordered == 2
    assert [t["tx_id"] for t in stream.transactions] == ["t1", "t2", "t0"]


def test_bad_records_go_to_dlq_with_position_and_neighbours_are_decided(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(
        orjson.dumps(tx(0, T0)).decode()
        + "\n{broken\n"
        + orjson.dumps(tx(2, T0 + 1, amount=-1)).decode()
        + "\n"
        + orjson.dumps(tx(3, T0 + 2)).decode()
        + "\n"
    )
    out, dlq = ListSink(), ListSink()
    s = replay.run(Engine(), replay.load(p), out, dlq)
    assert [d["tx_id"] for d in out.items] == ["t0", "t3"]
    assert [(d["stage"], d["position"]) for d in dlq.items] == [("parse", 2), ("validate", 3)]
    assert "greater than 0" in dlq.items[1]["reason"]
    assert s.dead_letters == 2 and s.decided == 2


def test_dead_letters_are_written_and_counted_not_kept(tmp_path):
    """Found by a review: every dead letter stayed in memory until the end (838 MB for a
    600,000-row file in the wrong date format); the summary counts them as they are written."""
    p = tmp_path / "x.jsonl"
    rows = [tx(i, T0 + i, amount=-1) for i in range(2_500)] + [tx(9_999, T0 + 9_999)]
    p.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows) + "{broken\n")
    stream, dlq = replay.open_stream(p), ListSink()
    kept: list[int] = []
    s = replay.run(Engine(), stream, ListSink(), dlq, source=str(p),
                   on_event=lambda i: kept.append(len(stream.dead_letters)))  # fmt: skip
    assert len(dlq.items) == s.dead_letters == 2_501 and s.decided == 1
    assert s.transactions == 2_502 and stream.dead_letters == [] and max(kept) <= 1_000
    assert s.top_reason == (
        "validate: amount: Input should be greater than 0 (got -1) (2,500 records)"
    )


def test_dead_letters_each_of_its_own_reason_show_the_first_once(tmp_path):
    """A QA pass: with no reason twice, "most often" showed one record's reason, then its
    text again with its values, over 7 lines of the table."""
    p = tmp_path / "x.jsonl"
    p.write_text(
        orjson.dumps(tx(0, T0, amount=-1)).decode() + "\n{broken\n"
        + orjson.dumps(tx(2, T0 + 1)).decode() + "\n"
    )  # fmt: skip
    s = replay.run(Engine(), replay.load(p), ListSink(), ListSink(), source=str(p))
    assert s.dead_letters == 2
    assert s.top_reason is not None and s.top_reason.endswith("(each reason differs; the first)")
    assert s.top_reason.count("greater than 0") == 1


def test_a_wrong_ts_format_is_one_reason_for_every_row(tmp_path):
    """A QA pass: the apostrophe of "the mapping's ts_format" was read as a quote, which left
    each row's date in its reason: 1,200 alike rows were 1,200 reasons ("other reasons (201
    records)" past the cap of 1,000)."""
    p = tmp_path / "x.csv"
    rows = [f"t{i},31.12.2025 16:{i // 60 % 60:02d}:{i % 60:02d},c1,m1,9.5" for i in range(1_200)]
    p.write_text("tx_id,ts,card_id,merchant_id,amount\n" + "\n".join(rows) + "\n")
    mapping = ColumnMapping.model_validate({"ts_format": "%Y-%m-%d %H:%M:%S"})
    s = replay.run(Engine(), replay.open_stream(p, mapping=mapping), ListSink(), ListSink(),
                   source=str(p))  # fmt: skip
    assert s.dead_letters == 1_200 and s.decided == 0
    assert s.top_reason is not None and s.top_reason.startswith(
        "parse: ts: '...' does not fit the mapping's ts_format '...' (time data '...' does not "
        "match format '...') (1,200 records; the first: ts: '31.12.2025 16:00:00' does not fit"
    )


def test_dead_letters_of_a_failing_stage_are_written_as_they_come():
    """Found by a review: when every record failed at a stage (a rule raising on all of them),
    the replay skipped its periodic block: the dead letters stayed in memory and the metrics
    (dead letters, events consumed) did not move until the end."""
    from fds.metrics import Metrics

    class Failing:
        def compute(self, t):
            raise ZeroDivisionError("boom")

        def on_label(self, label):
            pass

    rows = [tx(i, T0 + i) for i in range(5_000)]
    dlq, m = ListSink(), Metrics()
    written: list[int] = []
    consumed: list[float] = []

    def watch(i: int) -> None:
        if i == 4_500:
            written.append(len(dlq.items))
            consumed.append(m.registry.get_sample_value(
                "fds_events_consumed_total", {"source": "file"}) or 0.0)  # fmt: skip

    s = replay.run(Engine(features=Failing(), metrics=m), replay.ReplayInput(rows), ListSink(),
                   dlq, on_event=watch)  # fmt: skip
    assert s.dead_letters == 5_000 and written[0] >= 4_000 and consumed[0] >= 4_000


class Recorder:
    """A feature stage that records the order of events it sees (tx and labels)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.seen: list[str] = []
        self.fail_on = fail_on

    def compute(self, t):
        if t["tx_id"] == self.fail_on:
            raise ZeroDivisionError("boom")
        self.seen.append(t["tx_id"])
        return {}

    def on_label(self, label):
        self.seen.append("L:" + label["tx_id"])


def test_labels_learned_only_after_their_delay(tmp_path):
    rows = [tx(i, T0 + i * 3600, FRAUD=int(i == 0)) for i in range(4)]
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    mapping = ColumnMapping.model_validate({"label": {"column": "FRAUD", "delay": "2h"}})
    rec = Recorder()
    s = replay.run(Engine(features=rec), replay.load(p, mapping=mapping), ListSink(), ListSink())
    # the label of t0 becomes known at T0+2h: learned after t2 (same instant: a decision does
    # not see a label stamped at its own instant), before t3
    assert rec.seen == ["t0", "t1", "t2", "L:t0", "t3"]
    assert s.labels_read == 1 and s.frauds == 1 and s.alerted_frauds == 0
    assert s.recall == 0.0


def test_ids_written_with_spaces_are_the_same_entities(tmp_path):
    (tmp_path / "a.csv").write_text(
        'tx_id, ts, card_id, amount, shop\nt1, 1767225600, c1, 5, "Main St, 5"\n'
        "t2, 1767225660,c1 , 7,  \n"
    )
    (tmp_path / "l.csv").write_text("tx_id,ts,is_fraud\n t1 ,1767225630,1\n")
    s = replay.load(tmp_path / "a.csv", labels_path=tmp_path / "l.csv")
    assert [t["card_id"] for t in s.transactions] == ["c1", "c1"]
    assert s.transactions[0]["extra"] == {"shop": "Main St, 5"} and not s.dead_letters
    assert "shop" not in s.transactions[1].get("extra", {})  # a cell of spaces: missing
    out = ListSink()
    summary = replay.run(Engine(), s, out, ListSink())
    assert summary.frauds == 1 and summary.unmatched_frauds == 0


def test_a_label_column_without_delay_is_learned_after_its_own_transaction(tmp_path):
    # two transactions at one instant, the second a fraud; the file is read ahead of deciding
    rows = [tx(0, T0, FRAUD=0), tx(1, T0, FRAUD=1), tx(2, T0 + 1, FRAUD=0)]
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    mapping = ColumnMapping.model_validate({"label": {"column": "FRAUD"}})
    rec = Recorder()
    replay.run(Engine(features=rec), replay.load(p, mapping=mapping), ListSink(), ListSink())
    assert rec.seen == ["t0", "t1", "L:t1", "t2"]


def test_a_row_that_fails_validation_keeps_its_label_in_the_dead_letter(tmp_path):
    """Found by a review: the label column was taken off the row before it was validated, so
    the dead letter of a row with a bad date lost its fraud label for good."""
    rows = [tx(0, T0, FRAUD=1), {**tx(1, T0 + 1, FRAUD=1), "ts": "01/01/2026 00:01:00"}]
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    mapping = ColumnMapping.model_validate({"label": {"column": "FRAUD"}})
    dlq = ListSink()
    replay.run(Engine(), replay.load(p, mapping=mapping), ListSink(), dlq)
    (dead,) = dlq.items
    assert dead["stage"] == "validate" and dead["raw"]["FRAUD"] == 1


def test_a_dead_letter_of_a_mapped_file_has_the_file_s_own_columns(tmp_path):
    """Found by a review: its raw was the row renamed to engine fields (tx_id, ts, ...), not
    the columns the user has to find and fix (Id, When, ...)."""
    p = tmp_path / "x.csv"
    p.write_text("Id,When,Card,Amt,F\na,2026-01-01T00:00:00,c,5,1\nb,01/01/2026,c,5,1\n"
                 "c,2026-01-01T00:01:00,c,5,maybe\n")  # fmt: skip
    mapping = ColumnMapping.model_validate(
        {
            "fields": {"tx_id": "Id", "ts": "When", "card_id": "Card", "amount": "Amt"},
            "label": {"column": "F"},
        }
    )
    dlq = ListSink()
    replay.run(Engine(), replay.load(p, mapping=mapping), ListSink(), dlq)
    dead, label = dlq.items
    assert dead["raw"] == {"Id": "b", "When": "01/01/2026", "Card": "c", "Amt": "5", "F": "1"}
    # a label's dead letter too (it had the engine's names)
    assert (label["stage"], label["raw"]) == (
        "label", {"Id": "c", "When": "2026-01-01T00:01:00", "Card": "c", "Amt": "5", "F": "maybe"}
    )  # fmt: skip


def test_an_unreadable_label_value_is_a_dead_letter_and_its_transaction_is_decided(tmp_path):
    """Before, "maybe" or 2 silently meant legitimate."""
    rows = [tx(0, T0, FRAUD="yes"), tx(1, T0 + 1, FRAUD="maybe"), tx(2, T0 + 2, FRAUD=2),
            tx(3, T0 + 3, FRAUD="No"), tx(4, T0 + 4, FRAUD=True)]  # fmt: skip
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    mapping = ColumnMapping.model_validate({"label": {"column": "FRAUD"}})
    out, dlq = ListSink(), ListSink()
    stream = replay.load(p, mapping=mapping)
    s = replay.run(Engine(), stream, out, dlq)
    assert s.decided == 5 and stream.truth == {"t0", "t4"}
    assert [(d["stage"], d["position"], d["raw"]["FRAUD"]) for d in dlq.items] == [
        ("label", 2, "maybe"), ("label", 3, 2)
    ]  # fmt: skip
    assert "neither fraud" in dlq.items[0]["reason"]
    # the summary adds up: transactions = decided + the transactions' dead letters
    assert (s.transactions, s.dead_letters, s.label_dead_letters) == (5, 2, 2)
    assert ("  of transactions", "0") in s.rows() and ("  of labels", "2") in s.rows()


def test_a_label_dated_before_its_transaction_is_learned_right_after_it(tmp_path):
    """Found by a QA pass: a chargeback dated to the day (00:00, before its transaction) was
    learned before the transaction existed, matched nothing, and was lost without a word."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + 3600 * (i + 1)) for i in range(3)])
    lp = write_jsonl(tmp_path / "l.jsonl", [
        {"tx_id": "t1", "ts": T0, "is_fraud": True},  # dated before t1 (and t0)
        {"tx_id": "t0", "ts": T0 + 3600 * 1.5, "is_fraud": True},  # on time
        {"tx_id": "nope", "ts": T0 + 1, "is_fraud": True},  # of no transaction
    ])  # fmt: skip
    rec = Recorder()
    s = replay.run(Engine(features=rec), replay.load(p, labels_path=lp), ListSink(), ListSink())
    assert rec.seen == ["t0", "L:t0", "t1", "L:t1", "t2", "L:nope"]
    assert s.labels_read == 3 and s.early_labels == 1
    assert ("  dated before their transaction", "1 (learned after it)") in s.rows()


def test_fraud_labels_of_records_the_reader_dead_lettered_are_said_as_such(tmp_path):
    """A QA pass: the fraud label of a record that failed validation was counted "of no
    transaction", the ids to be checked; that of a line that is no JSON (its id unknown) may
    be its own."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(
        orjson.dumps(tx(0, T0)) + b"\n"
        + orjson.dumps(tx(1, T0 + 1, amount="abc")) + b"\n"  # fails validation
        + b'{"tx_id": "t2", "ts": \n'  # no JSON
        + orjson.dumps(tx(3, T0 + 3)) + b"\n"
    )  # fmt: skip
    lp = write_jsonl(tmp_path / "l.jsonl", [
        {"tx_id": t, "ts": T0 + 2, "is_fraud": True} for t in ("t0", "t1", "t2")
    ])  # fmt: skip
    stream = replay.open_stream(p, labels_path=lp)
    s = replay.run(Engine(), stream, ListSink(), ListSink())
    assert (s.frauds, s.dead_frauds, s.unmatched_frauds, s.unparsed) == (1, 1, 1, 1)
    rows = dict(s.rows())
    assert rows["  fraud labels of dead letters"] == "1"
    assert rows["  fraud labels of no transaction"] == "1 (or of the 1 unparsed record(s))"


def test_a_row_the_mapping_refused_is_no_unparsed_record(tmp_path):
    """A review: a row whose amount did not fit the mapping's notation (its id known, its
    label counted "of dead letters") was counted unparsed too, so the summary's hint said a
    label of no transaction might be its."""
    p = tmp_path / "x.csv"
    p.write_text(f"tx_id,ts,card_id,amount\nt1,{T0},c,10\nt2,{T0 + 1},c,1.5\n")
    lp = write_jsonl(tmp_path / "l.jsonl", [
        {"tx_id": t, "ts": T0 + 2, "is_fraud": True} for t in ("t2", "t9")
    ])  # fmt: skip
    mapping = ColumnMapping.model_validate({"decimal": ","})
    stream = replay.open_stream(p, labels_path=lp, mapping=mapping)
    s = replay.run(Engine(), stream, ListSink(), ListSink())
    assert (s.dead_frauds, s.unmatched_frauds, s.unparsed) == (1, 1, 0)
    assert dict(s.rows())["  fraud labels of no transaction"] == "1"


def test_fraud_labels_of_a_label_column_on_dead_lettered_rows_are_counted(tmp_path):
    """A QA pass: with the fraud flag a label column of the file, the frauds of rows that
    failed validation ("1,200.00") left the summary without a word (known frauds 1, no
    `fraud labels of dead letters`), where a --labels file said them."""
    p = tmp_path / "x.csv"
    p.write_text(
        'id,t,c,a,fraud\nT1,2026-03-01 08:00:00,C1,10,1\nT2,2026-03-01 08:01:00,C1,"1,200.00",1\n'
        'T3,2026-03-01 08:02:00,C2,"2,500.00",yes\nT4,2026-03-01 08:03:00,C3,-1,0\n'
        "T5,2026-03-01 08:04:00,C3,x,maybe\nT6,2026-03-05 08:03:00,C3,10,0\n"
    )
    mapping = ColumnMapping.model_validate({
        "fields": {"tx_id": "id", "ts": "t", "card_id": "c", "amount": "a"},
        "label": {"column": "fraud", "delay": "1h"},
    })  # fmt: skip
    s = replay.run(Engine(), replay.open_stream(p, mapping=mapping), ListSink(), ListSink())
    assert (s.frauds, s.fraud_labels, s.dead_frauds, s.unmatched_frauds) == (1, 3, 2, 0)
    assert dict(s.rows())["  fraud labels of dead letters"] == "2"
    assert s.as_dict()["dead_frauds"] == 2


@pytest.mark.parametrize("labels", ["column", "words", "file"])
def test_fraud_labels_of_rows_the_mappings_notation_could_not_read_are_counted(tmp_path, labels):
    """A QA pass: a row whose amount the mapping's decimal comma could not read ("abc") or
    whose time its ts_format could not is dead-lettered by the reader, before validation:
    its fraud (a label column) left the summary (`fraud labels of dead letters` 1 of 2), and
    a --labels file's was said "of no transaction", though the dead letter names its id. (A
    later QA pass: so too with the file's own words, `label_values: {fraud: [ja]}`.)"""
    p = tmp_path / "x.csv"
    yes, no = ("ja", "nein") if labels == "words" else ("1", "0")
    p.write_text(
        f"ref;zeit;karte;betrag;label\na1;2026-03-01 08:00:00;c1;12,5;{no}\n"
        f"a2;2026-03-01 08:01:00;c1;abc;{yes}\na3;2026-03-01 08:02:00;c1;-3;{yes}\n"
        f"a4;2026-03-01 08:03:00;c1;5;{yes}\na5;01.03.2026;c1;5;{yes}\n"
    )
    words = {"label_values": {"fraud": ["ja"], "legit": ["nein"]}} if labels == "words" else {}
    mapping = ColumnMapping.model_validate({
        "delimiter": ";", "decimal": ",", "ts_format": "%Y-%m-%d %H:%M:%S",
        "fields": {"tx_id": "ref", "ts": "zeit", "card_id": "karte", "amount": "betrag"},
        **({"label": {"column": "label", "delay": "0s"}} if labels != "file" else {}), **words,
    })  # fmt: skip
    lp = None
    if labels == "file":
        lp = write_jsonl(tmp_path / "l.jsonl", [
            {"tx_id": t, "ts": T0 + 2, "is_fraud": True} for t in ("a2", "a3", "a4", "a5")
        ])  # fmt: skip
    stream = replay.open_stream(p, mapping=mapping, labels_path=lp)
    s = replay.run(Engine(), stream, ListSink(), ListSink())
    assert (s.dead_frauds, s.unmatched_frauds) == (3, 0)
    assert dict(s.rows())["  fraud labels of dead letters"] == "3"


def test_a_repeated_tx_id_does_not_hide_a_label_of_no_transaction(tmp_path):
    """A QA pass: the unmatched count was labels minus frauds decided, so d1 decided twice
    cancelled the label of no transaction."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(1, T0), tx(1, T0 + 1), tx(2, T0 + 2)])
    lp = write_jsonl(tmp_path / "l.jsonl", [
        {"tx_id": t, "ts": T0 + 5, "is_fraud": True} for t in ("t1", "ghost")
    ])  # fmt: skip
    s = replay.run(Engine(), replay.open_stream(p, labels_path=lp), ListSink(), ListSink())
    assert (s.frauds, s.fraud_labels, s.unmatched_frauds) == (2, 2, 1)
    assert dict(s.rows())["  fraud labels of no transaction"] == "1"


def test_a_label_column_and_a_labels_file_together_are_refused(tmp_path):
    """Both were learned: each fraud twice, at the earlier of its two times (a review)."""
    from fds.errors import ConfigError

    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0, FRAUD=1)])
    lp = write_jsonl(tmp_path / "l.jsonl", [{"tx_id": "t0", "ts": T0 + 5, "is_fraud": True}])
    mapping = ColumnMapping.model_validate({"label": {"column": "FRAUD"}})
    with pytest.raises(ConfigError, match=r"label column \('FRAUD'\) and the labels file"):
        replay.open_stream(p, mapping=mapping, labels_path=lp)


def test_labels_file(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0), tx(1, T0 + 10)])
    lp = write_jsonl(tmp_path / "l.jsonl", [{"tx_id": "t0", "ts": T0 + 5, "is_fraud": True}])
    rec = Recorder()
    replay.run(Engine(features=rec), replay.load(p, labels_path=lp), ListSink(), ListSink())
    assert rec.seen == ["t0", "L:t0", "t1"]


def test_a_fraud_label_withdrawn_later_is_no_known_fraud_in_the_summary(tmp_path):
    """A later `is_fraud: false` withdraws a label (the model unlearns it), yet the summary
    counted the transaction among the known frauds, judging precision and recall by it."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(3)])
    lp = write_jsonl(tmp_path / "l.jsonl", [  # the withdrawal first in the file, later in time
        {"tx_id": "t1", "ts": T0 + 60, "is_fraud": False},
        {"tx_id": "t1", "ts": T0 + 30, "is_fraud": True},
        {"tx_id": "t2", "ts": T0 + 30, "is_fraud": True},
    ])  # fmt: skip
    for stream in (replay.load(p, labels_path=lp), replay.open_stream(p, labels_path=lp)):
        s = replay.run(Engine(), stream, ListSink(), ListSink())
        assert (s.frauds, s.fraud_labels) == (1, 1)


def test_stage_failure_is_a_dead_letter_naming_the_stage(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0), tx(1, T0 + 1), tx(2, T0 + 2)])
    out, dlq = ListSink(), ListSink()
    replay.run(Engine(features=Recorder(fail_on="t1")), replay.load(p), out, dlq)
    assert [d["tx_id"] for d in out.items] == ["t0", "t2"]
    assert dlq.items[0]["stage"] == "features" and dlq.items[0]["error"] == "ZeroDivisionError"
    assert dlq.items[0]["raw"]["tx_id"] == "t1"


def test_a_stage_failure_dead_letter_names_the_line_of_the_record(tmp_path):
    """DESIGN.md: position = line number for files. It was the record's place in event-time
    order (0-based): here 1, while t2 is on line 5 (a blank line, a bad line, reordered)."""
    p = tmp_path / "x.jsonl"
    rows = [tx(0, T0), tx(1, T0 + 9), tx(2, T0 + 1)]
    lines = [orjson.dumps(rows[0]).decode(), "", "{bad", orjson.dumps(rows[1]).decode(),
             orjson.dumps(rows[2]).decode()]  # fmt: skip
    p.write_text("\n".join(lines) + "\n")
    out, dlq = ListSink(), ListSink()
    replay.run(Engine(features=Recorder(fail_on="t2")), replay.open_stream(p), out, dlq)
    assert [(d["stage"], d["position"]) for d in dlq.items] == [("parse", 3), ("features", 5)]


def test_speed_paces_by_event_time(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + 60 * i) for i in range(4)])
    slept: list[float] = []
    replay.run(Engine(), replay.load(p), ListSink(), ListSink(), speed=60.0, sleep=slept.append)
    # 60x real time: one event-minute is one wall second; we are never ahead of the schedule
    assert len(slept) == 3
    assert slept == pytest.approx([1.0, 2.0, 3.0], abs=0.2)


def test_a_long_wait_of_a_paced_replay_is_said(tmp_path, caplog):
    """Found by a QA pass: one date mistyped ten years ahead made `--speed 100` sleep 36 days
    without a word."""
    far = T0 + 86400 * 3650
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0), tx(1, T0 + 60), tx(2, far), tx(3, far + 1e5)])
    slept: list[float] = []
    with caplog.at_level("WARNING", logger="fds.replay"):
        replay.run(Engine(), replay.load(p), ListSink(), ListSink(), speed=100.0,
                   sleep=slept.append)  # fmt: skip
    assert len(caplog.records) == 1  # (not for the minute ahead; once a run)
    assert "transaction t2 at 2035-12-30T00:00:00.000+00:00 is 3650.0 days of event time" in (
        caplog.text
    )
    assert "waiting 36.5 days at --speed 100 (Ctrl-C stops; later waits are not logged)" in (
        caplog.text
    )


def test_a_paced_replay_behind_its_pace_says_so(tmp_path, caplog):
    """A QA pass: `--speed 1000000` asked 0.5 s and took 5.1 s, and nothing said the pace was
    not held. Here each decision takes 2 s of the clock where the pace gives one."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + 60 * i) for i in range(10)])
    now = [0.0]

    def on_event(i: int) -> None:  # (the engine as slow as 2 s a decision)
        now[0] += 2.0

    with caplog.at_level("WARNING", logger="fds.replay"):
        s = replay.run(Engine(), replay.load(p), ListSink(), ListSink(), speed=60.0,
                       sleep=lambda d: now.__setitem__(0, now[0] + d), clock=lambda: now[0],
                       on_event=on_event)  # fmt: skip
    assert s.behind_pace == pytest.approx(9 * 2.0 - 9 * 1.0)
    assert caplog.text.count("behind the pace at --speed 60") == 1  # (once a run)
    assert ("behind the pace", "up to 9 s (slower than --speed)") in s.rows()
    assert s.as_dict()["behind_pace"] == s.behind_pace


def test_a_paced_replay_reports_its_metrics_every_second(tmp_path):
    """A scrape of a paced replay saw 87 decisions and `fds_events_consumed_total` 0: the
    metrics moved every 2,048 events only (a QA pass)."""
    from fds.metrics import Metrics

    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + 3 * i) for i in range(8)])
    metrics, seen, now = Metrics(), {}, [0.0]
    consumed = metrics.registry.get_sample_value

    def sleep(s: float) -> None:  # the pacing's clock moves by what it sleeps
        now[0] += s

    replay.run(Engine(metrics=metrics), replay.load(p), ListSink(), ListSink(), speed=10.0,
               sleep=sleep, clock=lambda: now[0],
               on_event=lambda i: seen.setdefault(i, consumed("fds_events_consumed_total",
                                                              {"source": "file"})))  # fmt: skip
    # each event counted as read: never behind the decisions (a scrape of a QA pass saw 4,096
    # consumed and 4,768 decided when they were counted once a second)
    assert [seen[i] or 0 for i in range(8)] == list(range(8))


def test_an_unpaced_replay_counts_each_event_consumed_as_it_is_read(tmp_path):
    """A QA pass scraped 385,024 consumed and 386,068 decided from a replay without --speed:
    consumption was counted every 2,048 events."""
    from fds.metrics import Metrics

    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + 3 * i) for i in range(3000)])
    metrics, seen = Metrics(), {}
    consumed = metrics.registry.get_sample_value
    replay.run(Engine(metrics=metrics), replay.load(p), ListSink(), ListSink(),
               on_event=lambda i: seen.setdefault(i, consumed("fds_events_consumed_total",
                                                              {"source": "file"})))  # fmt: skip
    assert [seen[i] or 0 for i in range(0, 3000, 500)] == list(range(0, 3000, 500))


def test_speed_paces_from_the_first_event_not_from_the_start(tmp_path):
    """Before, the clock started before the reorder buffer had filled (100,000 records read
    first): the events of that time were decided at once, unpaced."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + 60 * i) for i in range(4)])
    stream = replay.load(p)
    events = stream.transactions

    def slow_start():
        time.sleep(1.5)  # reading and sorting before the first event
        yield from events

    stream.transactions = slow_start()
    slept: list[float] = []
    replay.run(Engine(), stream, ListSink(), ListSink(), speed=60.0, sleep=slept.append)
    assert slept == pytest.approx([1.0, 2.0, 3.0], abs=0.2)


def test_sink_output_is_deterministic_except_wall_clock(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(50)])
    outs = []
    for n in range(2):
        with JsonlSink(tmp_path / f"o{n}.jsonl") as sink:
            replay.run(Engine(clock=lambda: T0), replay.load(p), sink, ListSink())
        outs.append(
            [
                {k: v for k, v in orjson.loads(line).items() if k != "latency_ms"}
                for line in (tmp_path / f"o{n}.jsonl").read_bytes().splitlines()
            ]
        )
    assert outs[0] == outs[1] and len(outs[0]) == 50


def test_streaming_reorder_buffer_is_bounded_and_counts_what_it_cannot_fix(tmp_path):
    # t3 arrives 1 record late (fixable with a buffer of 2); t0 arrives 4 records late (not)
    order = [1, 2, 4, 3, 5, 0, 6]
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in order])
    stream = replay.open_stream(p, reorder_buffer=2)
    out = [t["tx_id"] for t in stream.transactions]
    assert out == ["t1", "t2", "t3", "t0", "t4", "t5", "t6"]  # t0 is emitted as soon as seen
    assert stream.reordered == 2 and stream.late == 1


def test_cli_says_when_input_was_reordered(tmp_path, capsys):
    from fds.cli import main

    p = write_jsonl(tmp_path / "x.jsonl", [tx(1, T0 + 1), tx(0, T0)])
    assert (
        main(
            [
                "replay",
                str(p),
                "--rules",
                "none",
                "--model",
                "none",
                "--no-progress",
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 0
    )
    assert "input not in time order: 1 record was out of order" in capsys.readouterr().err
    decided = [orjson.loads(x)["tx_id"] for x in (tmp_path / "o.jsonl").read_bytes().split()]
    assert decided == ["t0", "t1"]


def test_cli_tells_records_beyond_the_reorder_buffer_from_late_ones(tmp_path, capsys, monkeypatch):
    """Found by a QA pass: "2 were beyond the reorder buffer and decided late" when one of them
    was within the grace period (folded in, not flagged) and the summary said 1 late event."""
    from fds.cli import main

    monkeypatch.setattr(replay, "REORDER_BUFFER", 2)
    rows = [tx(i, T0 + 3600 + i) for i in range(5)] + [tx(8, T0 + 3600 - 60), tx(9, T0)]
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    out = tmp_path / "o.jsonl"
    args = ["replay", str(p), "--model", "none", "--no-progress"]  # (the features tell late)
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 were beyond the reorder buffer (2 records) and decided after later records" in err
    assert "1 beyond it" in err
    flags = {d["tx_id"]: d["flags"] for d in map(orjson.loads, out.read_bytes().splitlines())}
    assert flags["t9"] == ["late"] and flags["t8"] == []
    # without a feature there is no window to be late for: no grace, no "0 beyond it" (a
    # README walk)
    assert main([*args, "--rules", "none", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "decided after later records: to decide each in its time, replay" in err
    assert "grace" not in err


def test_a_file_far_out_of_time_order_is_said_while_it_is_replayed(tmp_path, capsys, monkeypatch):
    """A QA pass: a file of 3 million rows sorted by card, then time, was decided 85% late
    for 4 minutes, and what to do came only in the summary at the end."""
    from fds.cli import main

    monkeypatch.setattr(replay, "REORDER_BUFFER", 3)
    monkeypatch.setattr(replay, "LATE_SAID", 4)
    rows = [tx(10 * c + i, T0 + 600 * i, card_id=f"c{c}") for c in range(4) for i in range(6)]
    p = write_jsonl(tmp_path / "by_card.jsonl", rows)
    argv = ["replay", str(p), "--model", "none", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "so far came" in ln]
    assert len(said) == 1 and (
        "input not in time order: 4 records so far came more than the reorder buffer (3 "
        "records) after later ones;" in said[0]
    )
    assert f"> {tmp_path}/by_card.sorted.jsonl" in said[0]  # (how to sort it)


def test_records_beyond_the_reorder_buffer_are_told_how_to_sort_the_file(
    tmp_path, capsys, monkeypatch
):
    """A QA pass: "1 were beyond the reorder buffer", with no word of what to do about it (sort
    the file by time: by the mapping's ts column), and the JSON summary left the count out."""
    from fds.cli import main
    from fds.logs import configure_logging

    monkeypatch.setattr(replay, "REORDER_BUFFER", 2)
    p, m = tmp_path / "x.csv", tmp_path / "m.yaml"
    rows = [(f"t{i}", T0 + 3600 + i) for i in range(5)] + [("t9", T0)]
    p.write_text("ID,card,WHEN,amount\n" + "".join(f"{t},c1,{ts:.0f},10\n" for t, ts in rows))
    m.write_text("fields: {tx_id: ID, ts: WHEN, card_id: card, amount: amount}\n")
    out = tmp_path / "o.jsonl"
    argv = ["replay", str(p), "--mapping", str(m), "--model", "none", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    got = capsys.readouterr()
    assert "1 record was out of order (read after one with a later ts) and was replayed" in got.err
    assert (
        "; 1 was beyond the reorder buffer (2 records) and decided after later records" in got.err
    )
    sort = f"(head -n 1 {p} && tail -n +2 {p} | sort -s -t, -k3,3) > {tmp_path}/x.sorted.csv"
    assert (
        "replay the file sorted by time first: by its column 'WHEN' (the mapping's ts)" in got.err
    )
    assert sort in got.err and "-k3,3n for epoch numbers" in got.err
    assert "  beyond the reorder buffer " in got.out
    try:
        assert main(["--log-format", "json", *argv, "--out", str(out)]) == 0
        summary = orjson.loads(capsys.readouterr().out)
        assert (summary["reordered"], summary["beyond_reorder_buffer"]) == (1, 1)
        assert summary["second_pass"] == 0
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)
    (sorted_csv := tmp_path / "x.sorted.csv").write_text(  # the command's output, replayed
        "ID,card,WHEN,amount\n"
        + "".join(f"{t},c1,{ts:.0f},10\n" for t, ts in sorted(rows, key=lambda r: r[1]))
    )
    assert main(["replay", str(sorted_csv), "--mapping", str(m), "--model", "none",
                 "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    assert "time order" not in capsys.readouterr().err
    j = write_jsonl(tmp_path / "y.jsonl", [tx(i, T0 + 3600 + i) for i in range(5)] + [tx(9, T0)])
    assert main(["replay", str(j), "--model", "none", "--no-progress", "--out", str(out)]) == 0
    jq = f"jq -c -s 'sort_by(.[\"ts\"]) | .[]' {j} > {tmp_path}/y.sorted.jsonl"
    assert f"first: by its field 'ts', e.g. {jq}" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="runs the advised shell command")
def test_the_sort_advice_keeps_a_header_with_a_quoted_line_break_whole(
    tmp_path, capsys, monkeypatch
):
    """A review: the advice's ``head -n 1`` kept the first line of a header whose quoted cell
    holds a line break (its other line was sorted into the rows). Run as given, it sorts."""
    from fds.cli import main

    monkeypatch.setattr(replay, "REORDER_BUFFER", 2)
    p, m = tmp_path / "x.csv", tmp_path / "m.yaml"
    head = 'tx_id,card_id,ts,"amount\n(EUR)"\n'
    rows = [(f"t{i}", T0 + 3600 + i) for i in range(5)] + [("t9", T0)]
    p.write_text(head + "".join(f"{t},c1,{ts:.0f},10\n" for t, ts in rows))
    m.write_text('fields: {amount: "amount\\n(EUR)"}\n')
    argv = ["replay", "--mapping", str(m), "--model", "none", "--no-progress"]
    assert main([*argv, str(p), "--out", str(tmp_path / "o.jsonl")]) == 0
    advice = capsys.readouterr().err.split(", e.g. ", 1)[1].split(" (-k3,3n", 1)[0]
    assert advice.startswith(f"(head -n 2 {p} && tail -n +3 {p} | sort"), advice
    subprocess.run(["bash", "-c", advice], check=True)
    assert (tmp_path / "x.sorted.csv").read_text() == head + "".join(
        f"{t},c1,{ts:.0f},10\n" for t, ts in sorted(rows, key=lambda r: r[1])
    )
    assert main([*argv, str(tmp_path / "x.sorted.csv"), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "time order" not in capsys.readouterr().err


def test_a_repeated_dst_hour_in_a_file_out_of_time_order_is_warned_as_a_guess(tmp_path, capsys):
    """A QA pass: a file sorted by card, then time: a card's 02:10 (first pass) read after
    another card's 03:20 was taken for the second pass, an hour late, and the warning said
    nothing of it (the guess holds only for a file in time order)."""
    from fds.cli import main

    p, m = tmp_path / "bycard.csv", tmp_path / "m.yaml"
    times = {"c1": ["01:50", "02:10", "02:40", "03:20"], "c2": ["02:10", "02:40"]}
    rows = [f"{c}{i},2026-10-25 {hm}:00,{c},10\n" for c in times for i, hm in enumerate(times[c])]
    p.write_text("tx_id,ts,card_id,amount\n" + "".join(rows))
    m.write_text("timezone: Europe/Berlin\n")
    argv = ["replay", str(p), "--mapping", str(m), "--model", "none", "--rules", "none"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "o.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "2 local times of an hour a DST change repeats were read as its second pass" in err
    assert (
        "the file is out of time order too (2 records above), so some of these may be "
        "first-pass times read an hour late: give the times their UTC offset" in err
    )
    assert "or write the file sorted by time where it is made" in err
    # in time order, the guess is said as before, without the doubt
    p.write_text("tx_id,ts,card_id,amount\na,2026-10-25 02:40:00,c,1\nb,2026-10-25 02:05:00,c,1\n")
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "o.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "1 local time of an hour a DST change repeats was read as its second pass" in err
    assert "out of time order too" not in err


def test_dead_letters_collected_before_a_failure_are_written(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(5)])

    class FullDisk(ListSink):
        def write(self, record: Any) -> None:
            if len(self.items) == 2:
                raise OSError(28, "No space left on device")
            super().write(record)

    dlq = ListSink()
    with pytest.raises(OSError, match="No space left"):  # at t3, after t1 failed
        replay.run(Engine(features=Recorder(fail_on="t1")), replay.load(p), FullDisk(), dlq)
    assert [(d["stage"], d["raw"]["tx_id"]) for d in dlq.items] == [("features", "t1")]


def test_the_summary_names_the_rules_the_breaker_demoted(tmp_path):
    from fds.guardrails import RuleBreaker
    from fds.policy import Policy
    from tests.test_engine import Rules  # "bad" declines everything

    p = write_jsonl(
        tmp_path / "x.jsonl", [tx(i, T0 + i) | {"card_id": f"c{i}"} for i in range(300)]
    )
    engine = Engine(
        rules=Rules(),
        policy=Policy(decline_at=0.9, review_at=0.5),
        breaker=RuleBreaker(window_events=200, multiple=3.0, min_events=50),
    )
    s = replay.run(engine, replay.load(p), ListSink(), ListSink())
    assert ("demoted to shadow", "bad") in s.rows()


def test_a_signal_between_a_decision_and_its_line_stops_after_both(tmp_path):
    """A QA pass: a SIGTERM between ``engine.decide`` and the sink's write stopped the replay
    with that decision counted in the metrics (and pushed) but not written."""
    import os
    import signal

    from fds.metrics import Metrics

    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(20)])

    class Interrupting(ListSink):
        def write(self, record: Any) -> None:
            if len(self.items) == 5:
                os.kill(os.getpid(), signal.SIGINT)  # (handled before the next line runs)
            super().write(record)

    out, metrics = Interrupting(), Metrics()
    was = signal.signal(signal.SIGINT, signal.default_int_handler)  # (xdist's workers ignore
    try:  # Ctrl-C: an ignored one stays ignored)
        s = replay.run(Engine(metrics=metrics), replay.load(p), out, ListSink())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (given back)
    finally:
        signal.signal(signal.SIGINT, was)
    decided = metrics.registry.get_sample_value("fds_decisions_total", {"action": "approve"})
    assert s.interrupted and s.decided == len(out.items) == decided == 6


def test_ctrl_c_stops_between_events_and_the_summary_covers_what_was_decided(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(20)])
    out = ListSink()

    def interrupt(i: int) -> None:
        if i == 5:
            raise KeyboardInterrupt

    labels = [{"tx_id": "t9", "ts": T0 + 30.0, "is_fraud": True}]  # not reached
    stream = replay.load(p)
    stream.labels, stream.truth = labels, {"t9"}
    s = replay.run(Engine(), stream, out, ListSink(), on_event=interrupt)
    assert s.interrupted and s.decided == len(out.items) == 5
    assert s.rows()[0][0] == "interrupted"
    # the one it was waiting on when Ctrl-C came is not counted read (transactions 6 for 5
    # decided, a review found), nor is a label of one not reached of "no transaction"
    assert s.transactions == 5
    assert "  fraud labels of no transaction" not in dict(s.rows())


def test_dead_letters_are_counted_as_fds_run_counts_them(tmp_path):
    """Same reasons as on Kafka (bad_json, schema), a failed-stage count for each, and an
    unreadable record counts as consumed (before: reasons parse/validate, no failed count,
    consumed short of the records read)."""
    from fds.metrics import Metrics

    p = tmp_path / "x.jsonl"
    p.write_text(
        orjson.dumps(tx(0, T0)).decode() + "\n{broken\n"
        + orjson.dumps(tx(2, T0 + 1, amount=-1)).decode() + "\n"
        + orjson.dumps(tx(3, T0 + 2)).decode() + "\n"
    )  # fmt: skip
    m = Metrics()
    replay.run(Engine(metrics=m), replay.load(p), ListSink(), ListSink(), source=str(p))
    get = m.registry.get_sample_value
    assert get("fds_dlq_messages_total", {"reason": "bad_json"}) == 1
    assert get("fds_dlq_messages_total", {"reason": "schema"}) == 1
    assert get("fds_events_failed_total", {"stage": "parse"}) == 1
    assert get("fds_events_failed_total", {"stage": "validate"}) == 1
    assert get("fds_events_consumed_total", {"source": "file"}) == 4


def _replayed_utc(tmp_path: Any, zone: str, day: str, times: list[str]) -> tuple[list, Any]:
    """The UTC hh:mm of each decision of a CSV of local ``times`` on ``day`` in ``zone``."""
    p = tmp_path / "local.csv"
    rows = "".join(f"t{i},{day} {hm}:00,c,1\n" for i, hm in enumerate(times))
    p.write_text("tx_id,ts,card_id,amount\n" + rows)
    mapping = ColumnMapping.model_validate({"timezone": zone})
    stream, out = replay.open_stream(p, mapping=mapping), ListSink()
    replay.run(Engine(), stream, out, ListSink())
    return [d["ts"][11:16] for d in out.items], stream


def test_the_hour_a_dst_change_repeats_is_read_in_file_order(tmp_path):
    """Found by a review: both passes of the fall-back hour were read as the first (01:10 EST
    as 01:10 EDT), so the file was "reordered" and the 1-hour windows were wrong."""
    times = ["00:50", "01:10", "01:50", "01:10", "01:50", "02:10"]  # EDT, then EST again
    utc, stream = _replayed_utc(tmp_path, "America/New_York", "2026-11-01", times)
    assert utc == ["04:50", "05:10", "05:50", "06:10", "06:50", "07:10"]
    assert stream.second_pass == 2 and stream.reordered == 0


def test_the_hour_a_dst_change_repeats_is_read_in_file_order_in_compact_times_too(tmp_path):
    """A review: `YYYYMMDDHHMMSS` local times of the repeated hour were never its second pass
    (only ISO text was tried): the second pass decided an hour early, out of order."""
    p = tmp_path / "berlin.csv"
    times = ["015000", "021000", "024000", "021000", "024000", "031000"]  # CEST, then CET
    rows = "".join(f"t{i},20261025{hms},c,1\n" for i, hms in enumerate(times))
    p.write_text("tx_id,ts,card_id,amount\n" + rows)
    mapping = ColumnMapping.model_validate({"timezone": "Europe/Berlin"})
    stream, out = replay.open_stream(p, mapping=mapping), ListSink()
    replay.run(Engine(), stream, out, ListSink())
    assert [d["ts"][11:16] for d in out.items] == [
        "23:50", "00:10", "00:40", "01:10", "01:40", "02:10"
    ]  # fmt: skip
    assert stream.second_pass == 2 and stream.reordered == 0


def test_a_record_a_minute_late_in_a_repeated_dst_hour_is_not_its_second_pass(tmp_path):
    """Found by a review: any step back in the repeated hour was taken as the second pass, so
    one record a minute late moved itself and every later record of the hour by an hour."""
    p = tmp_path / "ny.csv"
    times = ["01:38", "01:40", "01:39", "01:45", "01:59", "01:05", "01:20"]  # one jitter
    rows = "".join(f"t{i},2026-11-01 {hm}:00,c,1\n" for i, hm in enumerate(times))
    p.write_text("tx_id,ts,card_id,amount\n" + rows)
    mapping = ColumnMapping.model_validate({"timezone": "America/New_York"})
    stream, out = replay.open_stream(p, mapping=mapping), ListSink()
    replay.run(Engine(), stream, out, ListSink())
    utc = sorted((d["tx_id"], d["ts"][11:16]) for d in out.items)
    assert utc == [("t0", "05:38"), ("t1", "05:40"), ("t2", "05:39"), ("t3", "05:45"),
                   ("t4", "05:59"), ("t5", "06:05"), ("t6", "06:20")]  # fmt: skip
    assert stream.second_pass == 2


def test_a_time_in_the_hour_a_spring_change_skips_is_no_second_pass(tmp_path):
    """Found by a QA pass: 02:30 on Berlin's spring change day after 04:00 in the file was
    read an hour early (00:30 UTC), and said to be "the second pass" of a repeated hour."""
    p = tmp_path / "berlin.csv"
    p.write_text("tx_id,ts,card_id,amount\na,2026-03-29 04:00:00,c,1\nb,2026-03-29 02:30:00,c,1\n")
    mapping = ColumnMapping.model_validate({"timezone": "Europe/Berlin"})
    stream, out = replay.open_stream(p, mapping=mapping), ListSink()
    replay.run(Engine(), stream, out, ListSink())
    assert {d["tx_id"]: d["ts"][11:16] for d in out.items} == {"a": "02:00", "b": "01:30"}
    assert stream.second_pass == 0  # (02:30 read as 03:30 CEST, as when read alone)


def test_a_labels_file_s_repeated_dst_hour_is_read_in_file_order_too(tmp_path):
    """Found by a QA pass: a labels file's times were read alone, so a label of the second
    pass of Havana's repeated midnight hour was dated an hour early: before its transaction,
    counted in the fraud features of a decision taken before the label was known."""
    p, labels = tmp_path / "tx.csv", tmp_path / "labels.csv"
    p.write_text("tx_id,ts,card_id,amount\na,2022-11-06 00:10:00,c,1\n")
    labels.write_text(
        "tx_id,ts,is_fraud\na,2022-11-06 00:59:00,1\nb,2022-11-06 00:25:00,1\n"
        "c,2022-11-06 00:50:00,1\nd,2022-11-06 01:30:00,1\n"
    )
    mapping = ColumnMapping.model_validate({"timezone": "America/Havana"})
    stream = replay.load(p, mapping=mapping, labels_path=labels)
    got = {lab["tx_id"]: (lab["ts"] - 1667707200) / 60 for lab in stream.labels}  # 04:00Z
    assert got == {"a": 59, "b": 85, "c": 110, "d": 150}  # 00:25 and 00:50 of the 2nd pass


def test_a_repeated_half_hour_is_read_in_file_order(tmp_path):
    """Found by a QA pass: Lord Howe repeats 30 minutes (02:00 -> 01:30), so a second pass
    there is always less than the 30-minute step that marked one: 01:32 after 01:58 was read
    30 minutes early and reported as merely out of order."""
    times = ["01:35", "01:50", "01:58", "01:32", "01:45", "02:05"]
    utc, stream = _replayed_utc(tmp_path, "Australia/Lord_Howe", "2022-04-03", times)
    assert utc == ["14:35", "14:50", "14:58", "15:02", "15:15", "15:35"]
    assert stream.second_pass == 2 and stream.reordered == 0


def test_the_summary_tells_labels_read_from_labels_the_model_learned():
    """Found by a review: "labels learned" counted every label read, 137 whether or not any
    matched a transaction, and with no model at all."""
    from fds.metrics import Metrics
    from fds.pipeline import DEFAULT_MODEL, build_engine

    txs = [dict(tx(i, T0 + i * 60), extra={}) for i in range(5)]
    labels = [{"tx_id": "t1", "ts": T0 + 600.0, "is_fraud": True},
              {"tx_id": "nope", "ts": T0 + 600.0, "is_fraud": True}]  # fmt: skip
    engine = build_engine(None, DEFAULT_MODEL, metrics=Metrics())
    s = replay.run(engine, replay.ReplayInput([*txs, dict(tx(9, T0 + 900), extra={})], labels),
                   ListSink(), ListSink())  # fmt: skip
    assert (s.labels_read, s.labels_learned) == (2, 1)
    assert ("  learned by the model", "1") in s.rows()
    # how long they took (a QA pass: a model slow to learn made a replay crawl at 71 tx/s
    # behind a decision latency p99 of 0.2 ms, and nothing said where the time went)
    assert 0 < s.learn_seconds <= s.seconds and s.as_dict()["learn_seconds"] == s.learn_seconds
    assert dict(s.rows())["  time learning them"].endswith("of the wall time)")
    bare = replay.run(Engine(), replay.ReplayInput(txs, labels), ListSink(), ListSink())
    assert bare.labels_learned is None and "  learned by the model" not in dict(bare.rows())
    # a label days later: the transactions assumed legitimate meanwhile (the spec's
    # assume_legit_after) are learned as it moves event time on, and are no label learned
    # (they were counted: more labels learned than read, a review)
    late = [{"tx_id": "t1", "ts": T0 + 30 * 86400.0, "is_fraud": False}]
    engine = build_engine(None, DEFAULT_MODEL, metrics=Metrics())
    txs = [dict(tx(i, T0 + i * 60), extra={}) for i in range(400)]
    s = replay.run(engine, replay.ReplayInput([*txs, dict(tx(999, T0 + 31 * 86400), extra={})],
                                              late), ListSink(), ListSink())  # fmt: skip
    assert s.labels_read == 1 and s.labels_learned <= 1


def test_a_paced_replay_stopped_mid_decision_keeps_its_consumed_count(tmp_path):
    """A paced replay counts each event consumed as it reads it; stopped (Ctrl-C) while one
    was being decided, the final count took that event back (a review of the change)."""
    from fds.metrics import Metrics

    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(6)])
    metrics = Metrics()
    engine = Engine(metrics=metrics)
    real = engine.decide

    def decide(t):
        if t["tx_id"] == "t3":
            raise KeyboardInterrupt
        return real(t)

    engine.decide = decide  # type: ignore[method-assign]
    s = replay.run(engine, replay.load(p), ListSink(), ListSink(), speed=1e9)
    assert s.interrupted
    got = metrics.registry.get_sample_value("fds_events_consumed_total", {"source": "file"})
    assert got == 4  # t0..t3 read, t3 not decided


def test_a_long_paced_wait_names_the_transaction_the_pace_started_at(tmp_path, caplog):
    """A QA pass: one stray record dated 1999 made `--speed 3600` wait 2.8 days, and the
    warning named the next, valid record, not the one that set the pace."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, 946684800.0), tx(1, T0), tx(2, T0 + 1)])

    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt  # (stopped at the long wait)

    with caplog.at_level("WARNING", logger="fds"):
        s = replay.run(Engine(), replay.load(p), ListSink(), ListSink(), speed=3600, sleep=sleep)
    assert s.interrupted
    said = [r.getMessage() for r in caplog.records if "paced replay" in r.getMessage()]
    assert len(said) == 1 and "transaction t1 at" in said[0]
    assert "first transaction decided, t0 at 2000-01-01T00:00:00.000+00:00" in said[0]


def test_the_fraud_of_an_unreadable_row_is_found_through_a_nested_tx_id(tmp_path):
    """A review: the tx_id of a row the mapping's notation could not read was looked up as a
    top-level column, so a nested one (`tx_id: meta.id`) found none and its fraud left the
    summary."""
    p = tmp_path / "x.jsonl"
    rows = [
        {"meta": {"id": "a1"}, "t": "2026-03-01T08:00:00Z", "c": "c1", "amt": "12,5", "f": 0},
        {"meta": {"id": "a2"}, "t": "2026-03-01T08:01:00Z", "c": "c1", "amt": "abc", "f": 1},
    ]
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    mapping = ColumnMapping.model_validate({
        "decimal": ",", "label": {"column": "f", "delay": "0s"},
        "fields": {"tx_id": "meta.id", "ts": "t", "card_id": "c", "amount": "amt"},
    })  # fmt: skip
    s = replay.run(Engine(), replay.open_stream(p, mapping=mapping), ListSink(), ListSink())
    assert (s.dead_frauds, s.unmatched_frauds) == (1, 0)


def test_the_time_reading_a_labels_file_is_said_apart(tmp_path):
    """A QA pass: with 4.5 million labels the summary's wall time said 331 s of a 362-s run:
    the labels file is read before the replay's clock starts."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0), tx(1, T0 + 1)])
    labels = write_jsonl(tmp_path / "l.jsonl", [{"tx_id": "t0", "ts": T0 + 5, "is_fraud": True}])
    stream = replay.open_stream(p, labels_path=labels)
    assert stream.labels_seconds > 0
    s = replay.run(Engine(), stream, ListSink(), ListSink())
    assert s.labels_file_seconds == stream.labels_seconds
    assert "labels_file_seconds" in s.as_dict()
    assert replay.open_stream(p).labels_seconds == 0.0
    rows = dict(replay.ReplaySummary(labels_file_seconds=30.5).rows())
    assert rows["  reading the labels file first"] == "30.50 s"
    assert "  reading the labels file first" not in dict(replay.ReplaySummary().rows())


def test_times_without_their_offset_read_as_utc_are_said_once(tmp_path, caplog):
    """A QA pass: a bank's naive Seoul times were read as UTC, 9 hours off, without a word in
    a replay (fds run says so of a Kafka record); a mapping that gives the zone is not told."""
    p = tmp_path / "t.csv"
    p.write_text(
        "tx_id,ts,card_id,amount\nt1,1767225600,c1,5\n"
        "t2,2026-05-01T10:00:00,c1,10\nt3,2026-05-01T10:01:00,c1,20\n"
    )
    with caplog.at_level("WARNING", logger="fds.replay"):
        assert len(list(replay.open_stream(p).transactions)) == 3
    said = [r.getMessage() for r in caplog.records if "UTC offset" in r.getMessage()]
    assert said == [
        f"{p}: a ts without its UTC offset, '2026-05-01T10:00:00' at position 3, is read as "
        "UTC; if the file's times are local, give their zone in the --mapping file (timezone: "
        "Asia/Seoul) (said once)"
    ]
    caplog.clear()
    zoned = ColumnMapping(fields={}, timezone="Asia/Seoul")
    with caplog.at_level("WARNING", logger="fds.replay"):
        got = list(replay.open_stream(p, mapping=zoned).transactions)
    assert got[1]["ts"] == 1777597200.0  # 10:00 in Seoul, 01:00 UTC
    p.write_text("tx_id,ts,card_id,amount\nt1,2026-05-01T10:00:00+09:00,c1,5\n")
    with caplog.at_level("WARNING", logger="fds.replay"):
        list(replay.open_stream(p).transactions)
    assert not [r for r in caplog.records if "UTC offset" in r.getMessage()]


def test_a_record_read_late_is_no_slowness_of_a_paced_replay(tmp_path, caplog):
    """A review: a record later than the reorder buffer reorders (decided after later ones)
    made a paced replay with an instant engine warn it was 11 s behind its pace."""
    rows = [tx(i, T0 + 60 * i) for i in range(20)]
    rows.insert(15, tx(99, T0 + 60 * 14 - 840))  # 14 minutes late
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    now = [0.0]
    with caplog.at_level("WARNING", logger="fds.replay"):
        s = replay.run(Engine(), replay.open_stream(p, reorder_buffer=2), ListSink(), ListSink(),
                       speed=60.0, sleep=lambda d: now.__setitem__(0, now[0] + d),
                       clock=lambda: now[0])  # fmt: skip
    assert s.beyond_reorder_buffer == 1
    assert s.behind_pace == 0.0 and "behind the pace" not in caplog.text


def test_a_replay_given_what_it_cannot_use_says_which_argument(tmp_path):
    """A QA pass of the Python API: a list as the sink, or a path as the stream, failed with an
    AttributeError from deep inside the replay loop."""
    p = write_jsonl(tmp_path / "x.jsonl", [tx(0, T0)])
    with pytest.raises(TypeError, match=r"^sink: list has no write\(record\) method; give e\.g\."):
        replay.run(Engine(), replay.load(p), [], ListSink())
    with pytest.raises(TypeError, match=r"^stream: str; give fds\.load_replay\(path\)'s"):
        replay.run(Engine(), str(p), ListSink(), ListSink())
