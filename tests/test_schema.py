import re
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from fds.errors import ValidationError
from fds.schema import Decision, dead_letter, parse_label, parse_transaction

BASE = {"tx_id": "t1", "card_id": "c1", "amount": 10.0}
EPOCH = 1767225600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    "ts",
    [
        EPOCH,
        int(EPOCH),
        int(EPOCH * 1000),
        str(EPOCH),
        str(int(EPOCH * 1000)),
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T09:00:00+09:00",
        "2025-12-31T19:00:00-05:00",
        "2026-01-01T00:00:00.000Z",
    ],
)
def test_every_timestamp_form(ts):
    assert parse_transaction({**BASE, "ts": ts})["ts"] == EPOCH


def test_naive_timestamp_takes_configured_zone():
    tx = parse_transaction({**BASE, "ts": "2026-01-01T09:00:00"}, ZoneInfo("Asia/Seoul"))
    assert tx["ts"] == EPOCH
    assert parse_transaction({**BASE, "ts": "2026-01-01 00:00:00"}, UTC)["ts"] == EPOCH


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"ts": EPOCH, "card_id": "c", "amount": 1}, "tx_id: Field required"),
        ({**BASE, "ts": "yesterday"}, "neither ISO 8601 nor epoch"),
        ({**BASE, "ts": EPOCH, "amount": 0}, "amount: Input should be greater than 0"),
        ({**BASE, "ts": EPOCH, "amount": "ten"}, "amount: Input should be a valid number"),
        # a European CSV's decimal comma, or thousands separators: said how to read them
        ({**BASE, "ts": EPOCH, "amount": "29,78"}, r"decimal: .,. and thousands: .\.."),
        ({**BASE, "ts": EPOCH, "lat": "1,234.5"}, "with a dot for decimals and no grouping"),
        ({**BASE, "ts": EPOCH, "lat": 123}, "lat: Input should be less than or equal to 90"),
        ({**BASE, "ts": True}, "ts"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_records_raise_readable_reason(record, reason):
    with pytest.raises(ValidationError, match=reason):
        parse_transaction(record)


def test_unknown_keys_go_to_extra_and_ids_become_strings():
    tx = parse_transaction(
        {**BASE, "ts": EPOCH, "card_id": 42, "loyalty": "gold", "extra": {"a": 1}}
    )
    assert tx["card_id"] == "42"
    assert tx["extra"] == {"a": 1, "loyalty": "gold"}
    assert "loyalty" not in tx


def test_input_not_mutated():
    raw = {**BASE, "ts": "2026-01-01T00:00:00Z", "x": 1}
    before = dict(raw)
    parse_transaction(raw)
    assert raw == before


def test_label():
    lab = parse_label({"tx_id": 7, "ts": "2026-01-02T00:00:00Z", "is_fraud": "true"})
    assert lab == {"tx_id": "7", "ts": EPOCH + 86400, "is_fraud": True, "source": None}
    with pytest.raises(ValidationError, match="is_fraud"):
        parse_label({"tx_id": "t", "ts": EPOCH})


def test_dead_letter_keeps_raw_bytes_as_text():
    d = dead_letter(stage="parse", error=ValueError("bad"), raw=b"{oops", source="f", position=3)
    assert d == {
        "stage": "parse",
        "error": "ValueError",
        "reason": "bad",
        "raw": "{oops",
        "source": "f",
        "position": 3,
    }


def test_engine_decision_matches_decision_contract():
    from fds.engine import Engine

    d = Engine().decide(parse_transaction({**BASE, "ts": EPOCH}))
    assert Decision.model_validate(d).action == "approve"
    assert d["ts"] == "2026-01-01T00:00:00.000+00:00"


def test_booleans_are_neither_amounts_nor_timestamps():
    """Pydantic's lax mode read True as 1: an amount of 1.0, a label stamped 1970."""
    with pytest.raises(ValidationError, match="amount: a boolean"):
        parse_transaction({"tx_id": "a", "ts": 1.7e9, "card_id": "c", "amount": True})
    with pytest.raises(ValidationError, match="ts: a boolean"):
        parse_label({"tx_id": "a", "ts": True, "is_fraud": True})
    with pytest.raises(ValidationError, match=r"^ts: a boolean is not a timestamp \(got True\)$"):
        parse_transaction({"tx_id": "a", "ts": True, "card_id": "c", "amount": 1.0})
    assert parse_transaction({**BASE, "ts": EPOCH, "amount": 1})["amount"] == 1.0


def test_a_null_timestamp_is_said_missing_not_once_per_branch_of_its_type():
    """A QA pass: `"ts": null` gave `ts.float: Input should be a valid number (got None);
    ts.int: ...; ts.str: ...; ts.datetime: ...`; the other reasons stay as they were."""
    with pytest.raises(ValidationError, match=r"^ts: missing \(null\)$"):
        parse_transaction({**BASE, "ts": None})
    with pytest.raises(ValidationError, match=r"^ts: missing \(null\)$"):
        parse_label({"tx_id": "a", "ts": None, "is_fraud": True})
    with pytest.raises(ValidationError) as e:
        parse_transaction({**BASE, "ts": None, "card_id": None})
    assert str(e.value) == "ts: missing (null); card_id: Input should be a valid string (got None)"
    with pytest.raises(ValidationError, match=r"^ts: Field required$"):  # (as an empty cell)
        parse_transaction({k: v for k, v in BASE.items() if k != "ts"})


def test_a_value_given_in_extra_wins_over_an_unknown_top_level_field():
    tx = parse_transaction({**BASE, "ts": EPOCH, "shoe": 1, "extra": {"shoe": 2}})
    assert tx["extra"] == {"shoe": 2}


def test_a_dead_letter_of_a_record_nested_too_deep_to_write_keeps_its_text():
    """A security review: orjson reads a record nested 1,024 deep but writes ~254 levels, so
    the dead letter of one (a bad amount) stopped `fds replay` with a traceback."""
    import orjson

    from fds.schema import dead_letter, dumps_line

    deep: dict = {"x": 1}
    for _ in range(300):
        deep = {"a": deep}
    d = dead_letter(stage="validate", error=ValueError("amount"), raw={"deep": deep}, source="f",
                    position=1)  # fmt: skip
    assert orjson.loads(orjson.loads(dumps_line(d))["raw"]) == {"deep": deep}  # nothing lost
    for _ in range(700):  # ~1,000 deep, as orjson still reads: a review found repr failing
        deep = {"a": deep}
    d = dead_letter(stage="validate", error=ValueError("amount"), raw={"deep": deep}, source="f",
                    position=1)  # fmt: skip
    assert "nested too deep" in orjson.loads(dumps_line(d))["raw"]
    flat = dead_letter(stage="validate", error=ValueError("x"), raw={"a": 1}, source="f",
                       position=1)  # fmt: skip
    assert flat["raw"] == {"a": 1}  # as before


def test_an_extra_of_null_is_no_extra() -> None:
    """A QA pass: `"extra": null` made the record a dead letter, where a null optional field
    is missing."""
    raw = {"tx_id": "t", "ts": 1767225600, "card_id": "c", "amount": 5, "extra": None}
    assert "extra" not in parse_transaction(raw)
    assert parse_transaction({**raw, "shop": "s"})["extra"] == {"shop": "s"}
    with pytest.raises(ValidationError, match="amount"):
        parse_transaction({**raw, "amount": -5})


def test_an_empty_optional_text_is_missing_as_an_empty_csv_cell_is():
    """A QA leftover: JSON `"device_id": ""` was an entity, one device shared by every
    transaction without one (a CSV's empty cell was missing already)."""
    tx = parse_transaction(
        {"tx_id": "t", "ts": 0, "card_id": "c", "amount": 1, "device_id": "", "ip": "10.0.0.1",
         "merchant_id": "", "note": ""}
    )  # fmt: skip
    assert (tx["device_id"], tx["merchant_id"], tx["ip"]) == (None, None, "10.0.0.1")
    assert tx["extra"] == {"note": ""}  # (extra values keep their own reading in rules)


def test_a_kafka_value_that_is_no_json_says_exactly_why():
    """Found by a QA pass: a tombstone said "Input must be bytes, ..."; bytes that are not
    UTF-8 were placed at char 0 without the byte; a UTF-8 byte order mark, skipped in files,
    made a dead letter over Kafka."""
    from fds.schema import loads_record

    assert loads_record(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    for raw, says in (
        (None, "no value (a tombstone)"),
        (b'{"tx_id": "caf\xe9"}', "byte 0xe9 at position 14 is not UTF-8"),
        (b"{bad", "not valid JSON: unexpected character"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            loads_record(raw)


@pytest.mark.parametrize("field", ["amount", "lat", "lon", "ts"])
def test_digits_grouped_with_underscores_are_refused(field):
    """A QA pass: float() reads `10_000` (Python's grouping) as 10000, while a file's
    `1,234.50` is refused unless the mapping says `thousands:` (with a number amount too: a
    review)."""
    raw = {"tx_id": "t", "ts": 1767225600, "card_id": "c", "amount": 12, field: "1_0"}
    with pytest.raises(ValidationError, match=rf"^{field}: '1_0' groups its digits with '_'"):
        parse_transaction(raw)
    assert parse_transaction({**raw, field: "10"})[field] == 10.0


def test_an_amount_past_any_payment_is_refused():
    """A QA pass: 1e308 was accepted and broke the card's window sums for 30 days."""
    tx = {"tx_id": "t", "ts": 0, "card_id": "c"}
    assert parse_transaction({**tx, "amount": 1e18})["amount"] == 1e18
    with pytest.raises(ValidationError, match="amount: Input should be less than or equal"):
        parse_transaction({**tx, "amount": 1e308})


def test_an_id_longer_than_any_real_one_is_refused_and_quoted_short():
    """A QA pass: a 400 KB card_id was taken (each id a key of the feature state: 200 ids of
    1 MB took a replay to 1.5 GB), and a reason quoted a bad value whole."""
    from fds.schema import ID_MAX

    tx = {"tx_id": "t", "ts": 0, "card_id": "c", "amount": 1}
    assert parse_transaction({**tx, "device_id": "d" * ID_MAX})["device_id"] == "d" * ID_MAX
    for field in ("tx_id", "card_id", "merchant_id", "device_id", "ip", "customer_id"):
        with pytest.raises(ValidationError, match=f"{field}: String should have at most") as e:
            parse_transaction({**tx, field: "x" * 400_000})
        assert len(str(e.value)) < 300


def test_a_bad_value_nested_deep_is_quoted_without_a_traceback():
    """A review: repr() of a list nested 1,000 deep in a reason raised RecursionError, and
    fds replay stopped with a traceback."""
    deep: list = []
    cur = deep
    for _ in range(1000):
        cur.append([])
        cur = cur[0]
    with pytest.raises(ValidationError, match=r"amount: Input should be a valid number"):
        parse_transaction({"tx_id": "t", "ts": 0, "card_id": "c", "amount": deep})
    with pytest.raises(ValidationError, match="tx_id: String should have at most"):
        parse_label({"tx_id": "x" * 2000, "ts": 0, "is_fraud": True})
    with pytest.raises(ValidationError, match="country: String should have at most"):
        parse_transaction(
            {"tx_id": "t", "ts": 0, "card_id": "c", "amount": 1, "country": "K" * 2000}
        )


def test_an_empty_coordinate_is_missing_as_an_empty_text_is():
    """A QA pass: `"lat": ""` made the whole transaction a dead letter (the contract: an
    optional field that is null or empty text is missing)."""
    raw = {**BASE, "ts": EPOCH, "lat": "", "lon": " ", "note": ""}
    tx = parse_transaction(raw)
    assert "lat" not in tx and "lon" not in tx and tx["extra"] == {"note": ""}
    assert parse_transaction({**raw, "lon": "127.5"})["lon"] == 127.5
    with pytest.raises(ValidationError, match="lat: Input should be a finite number"):
        parse_transaction({**raw, "lat": "NaN"})  # (it said "less than or equal to 90")
    for flag in (True, False):  # (taken as 1.0 and 0.0, where amount and ts refuse them)
        with pytest.raises(ValidationError, match="a boolean is not a coordinate"):
            parse_transaction({**raw, "lon": flag})
    assert parse_transaction({**raw, "lat": 1, "lon": 0.0})["lat"] == 1.0


def test_a_whole_number_id_written_as_a_float_is_its_integer_text():
    """A QA pass: pandas writes an integer column with gaps as floats; `"mcc": 5411.0` was the
    text "5411.0" (a rule on mcc in ['5411'] missed it, silently) and `"tx_id": 7.0` was a
    transaction no label for "7" joined."""
    tx = parse_transaction(
        {**BASE, "ts": EPOCH, "tx_id": 7.0, "card_id": 42.0, "mcc": 5411.0, "merchant_id": 1.5}
    )
    assert (tx["tx_id"], tx["card_id"], tx["mcc"], tx["merchant_id"]) == ("7", "42", "5411", "1.5")
    assert parse_label({"tx_id": 7.0, "ts": EPOCH, "is_fraud": True})["tx_id"] == "7"
    with pytest.raises(ValidationError, match="device_id: inf is no id"):
        parse_transaction({**BASE, "ts": EPOCH, "device_id": float("inf")})


@pytest.mark.parametrize(
    ("amount", "told"),
    [("1,100.0", "thousands: ','"), ("29,78", "decimal: ','"), ("1,100", "1,5 one and a half")],
)
def test_a_number_with_a_comma_is_told_the_notation_it_is_written_in(amount, told) -> None:
    """A QA pass: `1,100.0` was told the German notation (`decimal: ','`), which made every
    `10.0` of the file a dead letter."""
    tx = {"tx_id": "t", "ts": 1767225600, "card_id": "c", "amount": amount}
    with pytest.raises(ValidationError) as e:
        parse_transaction(tx)
    assert told in str(e.value)
    assert ("decimal: ','" in str(e.value)) is (amount != "1,100.0")


@pytest.mark.parametrize(
    ("amount", "told"),
    [("$12.50", True), ("12.50 EUR", True), ("€12", True), ("KRW 1,000", True), ("abc", False),
     ("1.2.3", False)],
)  # fmt: skip
def test_a_number_with_a_currency_is_told_to_drop_it(amount, told) -> None:
    """A README walk: `$12.50` was told it is no number, with no word of the sign."""
    tx = {"tx_id": "t", "ts": 1767225600, "card_id": "c", "amount": amount}
    with pytest.raises(ValidationError) as e:
        parse_transaction(tx)
    hint = "a number is written without a currency or unit: put the currency in a field"
    assert (hint in str(e.value)) is told, str(e.value)
