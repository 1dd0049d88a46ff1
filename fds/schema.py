"""The wire contracts: Transaction, Label, Decision and dead letters (see DESIGN.md).

Records are validated at the edge with pydantic and then travel through the engine as plain
dicts (fast to read, cheap to serialise). Timestamps become epoch seconds (float) on the way in.

>>> tx = parse_transaction({"tx_id": "t1", "ts": "2026-01-01T09:00:00+09:00",
...                         "card_id": "c1", "amount": "12.5", "shoe_size": 44})
>>> tx["ts"], tx["amount"], tx["extra"]
(1767225600.0, 12.5, {'shoe_size': 44})
>>> parse_transaction({"tx_id": "t2", "ts": 1, "card_id": "c1", "amount": -3})
Traceback (most recent call last):
...
fds.errors.ValidationError: amount: Input should be greater than 0 (got -3)
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import reprlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Annotated, Any, Literal, NotRequired

import orjson
import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    field_validator,
)
from typing_extensions import TypedDict

from fds.errors import ValidationError
from fds.timeutil import format_ts, naive_text, parse_ts

__all__ = [
    "DEGREES",
    "TX_FIELDS",
    "TX_REQUIRED",
    "Decision",
    "Label",
    "RuleHit",
    "Transaction",
    "dead_letter",
    "dumps",
    "dumps_line",
    "loads",
    "loads_record",
    "parse_label",
    "parse_transaction",
    "produced_bad",
    "read_fields",
]

Action = Literal["approve", "review", "decline"]


#: The longest id (a transaction's, a card's, a merchant's...) or short code (country,
#: currency...) taken: each is a key of the feature state, held for its windows (200 ids of
#: 1 MB took a replay to 1.5 GB: a QA pass).
ID_MAX = 1024
_Text = Annotated[str, Field(max_length=ID_MAX)]
#: The largest latitude and longitude in degrees, either sign: a transaction's ``lat`` and
#: ``lon``, and a mapping's ``defaults:`` for them (one place: they were written in both).
DEGREES = {"lat": 90, "lon": 180}


class Transaction(TypedDict):
    """One payment or transfer (input). Unknown top-level keys are moved into ``extra``.

    A TypedDict rather than a model: validation returns a plain dict, which is what the
    engine passes around (measured ~40% faster than building a model instance per record).
    """

    __pydantic_config__ = ConfigDict(extra="allow", coerce_numbers_to_str=True)  # type: ignore[misc]

    tx_id: Annotated[_Text, Field(min_length=1)]
    ts: Annotated[
        StrictFloat | StrictInt | StrictStr | datetime,
        Field(description="ISO 8601 with offset, or epoch seconds / milliseconds (a datetime "
              "from a Parquet timestamp column)"),
    ]  # fmt: skip
    card_id: Annotated[_Text, Field(min_length=1)]
    # (at most 1e18: past any payment, and 1e308 broke the windows' sums: a QA pass)
    amount: Annotated[float, Field(gt=0, le=1e18, allow_inf_nan=False)]
    currency: NotRequired[_Text | None]
    merchant_id: NotRequired[_Text | None]
    mcc: NotRequired[_Text | None]
    country: NotRequired[_Text | None]
    channel: NotRequired[_Text | None]
    device_id: NotRequired[_Text | None]
    ip: NotRequired[_Text | None]
    customer_id: NotRequired[_Text | None]
    # (finite: "NaN" was "less than or equal to 90", a QA pass)
    lat: NotRequired[
        Annotated[float | None, Field(ge=-DEGREES["lat"], le=DEGREES["lat"], allow_inf_nan=False)]
    ]
    lon: NotRequired[
        Annotated[float | None, Field(ge=-DEGREES["lon"], le=DEGREES["lon"], allow_inf_nan=False)]
    ]
    extra: NotRequired[dict[str, Any]]


#: The words a flag column writes for true and false (a label's, a rule's ``extra.vip``).
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "off"})
FRAUD_WORDS = TRUE_WORDS | {"1", "fraud"}
LEGIT_WORDS = FALSE_WORDS | {"0", "legit", "legitimate"}


def fraud_flag(v: Any, *, empty_is_legit: bool = False) -> bool:
    """A label's value: fraud or not (``ValueError`` when it says neither). A number or
    numeric text equal to 0 or 1 (``1.0``: a float column written by pandas) counts.

    >>> fraud_flag("Fraud"), fraud_flag("1.0"), fraud_flag(0), fraud_flag("", empty_is_legit=True)
    (True, True, False, False)
    >>> fraud_flag("on"), fraud_flag("OFF")  # (pydantic's booleans, as the contract had them)
    (True, False)
    """
    if v is True or v is False:
        return v
    if isinstance(v, int | float) and v in (0, 1):
        return v == 1
    text = str(v).strip().lower()
    if text in FRAUD_WORDS or text in LEGIT_WORDS or (empty_is_legit and not text):
        return text in FRAUD_WORDS
    with contextlib.suppress(ValueError):
        if (x := float(text)) in (0.0, 1.0):
            return x == 1.0
    raise ValueError(
        f"label value {v!r} is neither fraud ({', '.join(sorted(FRAUD_WORDS))}) nor legitimate "
        f"({', '.join(sorted(LEGIT_WORDS))}{', empty' if empty_is_legit else ''})"
    )


class Label(BaseModel):
    """Fraud feedback for a transaction; arrives late."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    tx_id: str = Field(min_length=1, max_length=ID_MAX)
    ts: float | str | datetime = Field(description="when the label became known")
    is_fraud: bool
    source: str | None = Field(
        default=None, max_length=ID_MAX, description="chargeback | analyst | customer"
    )

    @field_validator("is_fraud", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> bool:
        return fraud_flag(v)  # the words a label column takes too (and "1.0")


class RuleHit(BaseModel):
    id: str
    action: Action
    score: float
    reason: str
    state: Literal["active", "shadow"] = "active"


class Decision(BaseModel):
    """One decision per transaction (output)."""

    tx_id: str
    ts: str = Field(description="the transaction's event time, ISO 8601 UTC")
    decided_at: str = Field(description="wall-clock time of the decision, ISO 8601 UTC")
    action: Action
    score: float = Field(ge=0, le=1)
    model_score: float | None
    rule_hits: list[RuleHit]
    model_version: str | None
    ruleset_version: str | None
    latency_ms: float
    features: dict[str, Any]
    flags: list[str] = Field(default_factory=list, description="e.g. 'late', 'degraded'")


#: Top-level transaction fields of the contract (everything else goes to ``extra``).
TX_FIELDS: frozenset[str] = frozenset(Transaction.__annotations__)
#: ... and those every transaction must have (``__required_keys__`` cannot tell: with postponed
#: annotations, Python 3.11 does not see ``NotRequired``).
TX_REQUIRED: frozenset[str] = frozenset(
    k
    for k, v in Transaction.__annotations__.items()
    if not getattr(v, "__forward_arg__", str(v)).startswith("NotRequired")
)
_TX = TypeAdapter(Transaction)
_validate_tx = _TX.validator.validate_python  # the core validator: skips a wrapper layer

loads = orjson.loads


#: The header `fds produce` gives a file's row it could not read (sent as its own text, so
#: that fds run dead-letters it): the reader's reason, which fds run's dead letter keeps.
UNREADABLE = "unreadable"
#: ... and of a row it read that the mapping refused (sent as JSON of the row as read).
REFUSED = "fds-refused"


def produced_bad(msg: Any, failed: BaseException | None) -> BaseException | None:
    """Why a record is bad: the reason `fds produce` gave it (:data:`REFUSED`: always bad;
    :data:`UNREADABLE`: when it fails to parse, ``failed``), else ``failed``. (A chargeback
    row it could not read was dead-lettered as "not valid JSON", its reason lost: a QA pass.)"""
    headers = dict(getattr(msg, "headers", None) or ())
    said = headers.get(REFUSED) or (headers.get(UNREADABLE) if failed is not None else None)
    if said is None:
        return failed
    return ValueError(said[:1000].decode("utf-8", "replace"))


def not_json(raw: bytes | str, e: Exception) -> str:
    """Why ``raw`` (valid UTF-8) is not JSON: orjson's ``e``, or, for a record Python's
    ``json.dumps`` wrote with a float that is none, which value to write instead (orjson named
    a column, a reason of its own for each record: a review).

    >>> not_json('{"lat": NaN}', ValueError("unexpected character: line 1 column 9"))
    "not valid JSON: NaN is no JSON value (Python's json.dumps writes NaN and Infinity for a float that is none): write null for no value"
    """  # noqa: E501
    constants: list[str] = []
    with contextlib.suppress(ValueError, RecursionError):
        json.loads(raw, parse_constant=constants.append)
    if constants:
        return (
            f"not valid JSON: {constants[0]} is no JSON value (Python's json.dumps writes NaN "
            "and Infinity for a float that is none): write null for no value"
        )
    return f"not valid JSON: {e}"


def loads_record(raw: bytes | str | None) -> Any:
    """:func:`loads` for a record from outside (a Kafka message): what is not JSON is a
    ``ValueError("not valid JSON: ...")``, as fds replay names a line of a file."""
    if raw is None:  # (it said "Input must be bytes, ...": a QA pass)
        raise ValueError("the record has no value (a tombstone): a transaction is a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if isinstance(raw, str):
            raise ValueError(not_json(raw, e)) from None
        if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as files are read
            return loads_record(raw[3:])
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:  # (orjson said "surrogates not allowed" at char 0)
            raise ValueError(
                f"not valid JSON: byte 0x{raw[bad.start]:02x} at position {bad.start} is not UTF-8"
            ) from None
        raise ValueError(not_json(raw, e)) from None


def _as_json(o: Any) -> Any:
    """What JSON cannot hold natively, as a file's own values come (a Parquet decimal or binary
    column in a dead letter's ``raw`` crashed the replay): a decimal as its text, bytes as
    UTF-8 text with every byte that is not UTF-8 escaped as ``\\xNN`` (as :func:`dead_letter`
    keeps a raw record's bytes: nothing is lost), a duration as its seconds, an Arrow
    interval as its fields (a Parquet duration column crashed the replay: a QA pass)."""
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, bytes | bytearray | memoryview):
        return bytes(o).decode("utf-8", "backslashreplace")
    if isinstance(o, timedelta):
        return o.total_seconds()
    if isinstance(o, tuple):  # a tuple's subclass: pyarrow's MonthDayNano, a namedtuple
        if hasattr(o, "nanoseconds"):
            return {k: getattr(o, k) for k in ("months", "days", "nanoseconds")}
        return o._asdict() if hasattr(o, "_asdict") else list(o)
    raise TypeError(f"Type is not JSON serializable: {type(o).__name__}")


def dumps(obj: Any) -> bytes:
    """Serialise a record as compact JSON (UTF-8, no trailing newline)."""
    return orjson.dumps(obj, default=_as_json, option=orjson.OPT_SERIALIZE_NUMPY)


def dumps_line(obj: Any) -> bytes:
    """Serialise a record as one JSON line (with its newline: no copy to append it)."""
    return orjson.dumps(
        obj, default=_as_json, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    )


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 200, 200
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 10


def _short(value: Any, n: int = 100) -> str:
    """``repr(value)``, cut to ``n`` characters (a reason quoted a 1 MB id whole).

    >>> _short("x" * 500, 10)
    "'xxxxxxxx... (500 characters)"
    """
    text = _REPR.repr(value)  # (bounded in depth and length: repr() of a list nested 1,000
    # deep raised RecursionError, a traceback in fds replay, a review)
    if len(text) <= n:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[: n - 1]}...{size}"


_COMMA_NUMBER = re.compile(r"\d,\d")  # a decimal comma or a thousands separator
#: A number with a currency sign or code (or a unit) before or after it: ``$12.50``, ``12 EUR``.
_UNIT = re.compile(r"^\s*(?:[^\d\s.,+-]+\s*[-+]?\d[\d.,]*|[-+]?\d[\d.,]*\s*[^\d\s.,]+)\s*$")


def _notation(value: str) -> str:
    """The mapping options that read ``value``, a number written with a comma (``1,100.0``
    was told the German ``decimal: ','``, which made ``10.0`` a dead letter: a QA pass).

    >>> _notation("1,100.0"), _notation("29,78")
    ("1,234.56: thousands: ','", "1.234,56: decimal: ',' and thousands: '.'")
    """
    v = value.strip()
    if "." in v.rpartition(",")[2]:
        return "1,234.56: thousands: ','"
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+", v):  # 1,100: a thousand and a hundred, or 1.1
        return "1,234 a thousand and more: thousands: ','; 1,5 one and a half: decimal: ','"
    return "1.234,56: decimal: ',' and thousands: '.'"


def _reason(err: pydantic.ValidationError) -> str:
    parts = []
    null = set()  # the fields given as null whose type is a union (``ts``)
    for e in err.errors():
        if len(e["loc"]) > 1 and e.get("input", 0) is None and e["type"] != "missing":
            # each branch of the union said why null was not it (`ts.float: Input should be a
            # valid number ...; ts.int: ...; ts.str: ...`: a QA pass); said once, as missing
            if e["loc"][0] not in null:
                null.add(e["loc"][0])
                parts.append(f"{e['loc'][0]}: missing (null)")
            continue
        loc = ".".join(str(p) for p in e["loc"]) or "record"
        got = "" if e["type"] == "missing" else f" (got {_short(e.get('input'))})"
        value = e.get("input")
        text = value if e["type"] == "float_parsing" and isinstance(value, str) else ""
        if _UNIT.search(text):
            got += (  # (`$12.50` was told it is no number, no more: a README walk)
                "; a number is written without a currency or unit: put the currency in a field "
                "of its own (a column mapped to currency, or extra), or convert them first"
            )
        if _COMMA_NUMBER.search(text):  # (`1.234,56 €`: both said, not one after the other)
            got += (  # (a European CSV: every row a dead letter, the hint silent, a README walk)
                "; numbers are read with a dot for decimals and no grouping (29.78, 1234.5): "
                "say how the file writes them in the --mapping of fds replay or fds produce "
                f"({_notation(text)}), or convert them first"
            )
        parts.append(f"{loc}: {e['msg']}{got}")
    return "; ".join(parts)


def parse_transaction(raw: Any, tz: tzinfo = UTC) -> dict[str, Any]:
    """Validate one raw record (a dict) into a transaction dict with ``ts`` in epoch seconds.

    Raises :class:`fds.errors.ValidationError` with a readable reason.
    """
    if not isinstance(raw, dict):
        raise ValidationError(f"a transaction must be a JSON object, got {type(raw).__name__}")
    try:
        tx: dict[str, Any] = _validate_tx(raw)
    except pydantic.ValidationError as e:
        if "extra" in raw and raw["extra"] is None:  # `"extra": null` is no extra (it was a
            return parse_transaction({k: v for k, v in raw.items() if k != "extra"}, tz)  # dead
            # letter, where a null optional field is missing: a QA pass; read on this path only)
        if any(_blank(raw.get(k)) for k in DEGREES):  # `"lat": ""` is missing, as an empty
            # text field is (the whole transaction was a dead letter: a QA pass)
            return parse_transaction(
                {k: v for k, v in raw.items() if not (k in DEGREES and _blank(v))}, tz
            )
        if raw.get("ts").__class__ is bool:  # (each branch of the ts union said why not)
            raise ValidationError(f"ts: a boolean is not a timestamp (got {raw['ts']!r})") from None
        raise ValidationError(_reason(e)) from None
    if tx["amount"] == 1.0 and raw.get("amount").__class__ is bool:  # lax mode took True as 1
        raise ValidationError("amount: a boolean is not an amount (got True)")
    for k in _DIGITS:  # (a text: lax mode read `10_000` as 10000: a QA pass)
        if (v := raw.get(k)).__class__ is str and "_" in v:
            raise _grouped(k, v)
    g = raw.get
    if float in (g("tx_id").__class__, g("card_id").__class__, g("merchant_id").__class__,
                 g("mcc").__class__, g("device_id").__class__, g("customer_id").__class__,
                 g("ip").__class__, g("country").__class__, g("currency").__class__,
                 g("channel").__class__):  # fmt: skip
        _float_ids(raw, tx, _ID_FIELDS)
    if (tx.get("lat") in _BOOLISH or tx.get("lon") in _BOOLISH) and bool in (
        g("lat").__class__,
        g("lon").__class__,
    ):  # (lax mode took true as 1.0: a QA pass)
        raise ValidationError("lat, lon: a boolean is not a coordinate")
    if not tx.keys() <= TX_FIELDS:  # a subset test allocates nothing: the common case
        unknown = tx.keys() - TX_FIELDS
        # an unknown top-level field joins ``extra``; a value given in ``extra`` itself wins
        tx["extra"] = {**{k: tx.pop(k) for k in unknown}, **tx.get("extra", {})}
    try:
        tx["ts"] = parse_ts(tx["ts"], tz)
    except ValueError as e:
        raise ValidationError(f"ts: {e}") from None
    if "" in tx.values():  # an empty optional text is missing, as an empty CSV cell is (a JSON
        for k in [k for k, v in tx.items() if v == ""]:  # `"device_id": ""` was one device of
            tx[k] = None  # every transaction without one: a QA leftover)
    return tx


#: The fields read as numbers from a text, whose digits may not be grouped with ``_``.
_DIGITS = ("amount", "ts", "lat", "lon")


def _grouped(k: str, v: str) -> ValidationError:
    """A measure or an epoch time written as a text whose digits are grouped with ``_``
    (Python's float() reads ``10_000``; a file's ``1,234.50`` is refused alike, unless the
    mapping's ``thousands:`` says so)."""
    return ValidationError(
        f"{k}: {v[:100]!r} groups its digits with '_': write plain digits (1234.5), or say how "
        "the file writes numbers in the --mapping (decimal:, thousands:)"
    )


#: What a transaction must hold besides the fields :func:`read_fields` is asked about.
_FILLER = {"tx_id": "t", "ts": 0, "card_id": "c", "amount": 1.0}


def read_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each contract field in it (not ``ts``, ``extra``) read as a transaction's
    field is: a numeric id as its text, an amount written as text as a number, an empty text
    as missing (a rule's inline test compared the raw YAML value: ``mcc: 6051`` missed a rule
    on ``mcc in ['6051']`` that every such transaction hit, a QA pass). Raises
    :class:`fds.errors.ValidationError` for a value no transaction can hold.

    >>> read_fields({"mcc": 6051, "amount": "100", "device_id": "", "card_count_1h": 3})
    {'mcc': '6051', 'amount': 100.0, 'device_id': None, 'card_count_1h': 3}
    """
    given = {k: v for k, v in values.items() if k in TX_FIELDS and k not in ("ts", "extra")}
    if not given:
        return dict(values)
    try:
        tx = parse_transaction({**_FILLER, **given})
    except ValidationError as e:
        raise ValidationError(f"no transaction holds it: {e}") from None
    return {**values, **{k: tx[k] for k in given}}


#: The text fields of a transaction an id or code may be given for as a number.
_ID_FIELDS = ("tx_id", "card_id", "merchant_id", "mcc", "device_id", "customer_id", "ip",
              "country", "currency", "channel")  # fmt: skip
_BOOLISH = frozenset((0.0, 1.0))  # (what lax mode makes of false and true)


def _blank(v: Any) -> bool:
    return v.__class__ is str and not v.strip()


#: Past this a float no longer holds every integer: an id read as one may have lost digits.
_EXACT = 2.0**53


def _float_ids(raw: dict[str, Any], out: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Ids and codes given as floats, in ``out`` as the text of their integer when whole:
    pandas writes an integer column with gaps as floats (JSON, Parquet), and ``5411.0`` was
    the text "5411.0", which no rule on ``mcc in ['5411']`` and no label for "7" matched (a
    QA pass). Too large to be exact, or not a number: refused (:func:`_exact_ids`).

    >>> out = {"mcc": "5411.0", "tx_id": "7.5"}
    >>> _float_ids({"mcc": 5411.0, "tx_id": 7.5}, out, ("mcc", "tx_id")); out
    {'mcc': '5411', 'tx_id': '7.5'}
    """
    _exact_ids(raw, keys)
    for k in keys:
        if (v := raw.get(k)).__class__ is float and v.is_integer():
            out[k] = id_text(v)


def id_text(v: Any) -> str:
    """The text of id ``v`` as the engine reads it: a whole float as its integer (`fds produce`
    keyed card 42.0 as "42.0", another partition than card 42's, the same card to the
    engine: a QA pass).

    >>> id_text(42.0), id_text(42), id_text("042"), id_text(7.5)
    ('42', '42', '042', '7.5')
    """
    if v.__class__ is float and v.is_integer() and -_EXACT < v < _EXACT:
        return str(int(v))
    return str(v)


def _exact_ids(raw: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse an id that a JSON reader made a float too large to be exact: two ids past 2^64
    written as numbers were read as the same float, one card of two (a QA pass).

    >>> _exact_ids({"tx_id": 123456789012345678901.0}, ("tx_id",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fds.errors.ValidationError: tx_id: 1.2345678901234568e+20 is a number too large ...
    >>> _exact_ids({"tx_id": 1234.0}, ("tx_id",))  # (a float column of ids: exact)
    """
    for k in keys:
        v = raw.get(k)
        if v.__class__ is float and not -_EXACT < v < _EXACT:
            what = "no id" if v - v else "a number too large to be an exact id"  # (nan, inf)
            raise ValidationError(f"{k}: {v!r} is {what}: write ids as text")


def parse_label(raw: Any, tz: tzinfo = UTC) -> dict[str, Any]:
    """Validate one raw label record into a dict with ``ts`` in epoch seconds."""
    if not isinstance(raw, dict):
        raise ValidationError(f"a label must be a JSON object, got {type(raw).__name__}")
    try:
        m = Label.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ValidationError(_reason(e)) from None
    if raw.get("ts").__class__ is bool:  # lax mode took it as 0 or 1: 1970
        raise ValidationError(f"ts: a boolean is not a timestamp (got {raw['ts']!r})")
    lab = m.__dict__.copy()
    if raw.get("tx_id").__class__ is float:
        _float_ids(raw, lab, ("tx_id",))
    try:
        lab["ts"] = parse_ts(lab["ts"], tz)
    except ValueError as e:
        raise ValidationError(f"ts: {e}") from None
    return lab


def _writable(raw: dict[str, Any] | list[Any]) -> Any:
    """``raw`` if its dead letter can be written, else its JSON text: orjson reads a record
    nested 1,024 deep but writes only ~254 levels, and one such record stopped a replay at its
    dead letter (a security review)."""
    try:
        orjson.dumps(raw, default=_as_json)
        return raw
    except TypeError:
        import json

        try:
            return json.dumps(raw, default=str)
        except (RecursionError, ValueError):
            try:
                return repr(raw)[:65536]
            except RecursionError:  # (~1,000 deep: a review)
                return "<a record nested too deep to write; see its source position>"


def dead_letter(
    *, stage: str, error: BaseException, raw: Any, source: str, position: Any
) -> dict[str, Any]:
    """A dead-letter record: ``{stage, error, reason, raw, source, position}``.

    ``raw`` is kept as text when it is bytes so that nothing is lost.
    """
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", errors="backslashreplace")
    elif isinstance(raw, dict | list):
        raw = _writable(raw)
    return {
        "stage": stage,
        "error": type(error).__name__,
        "reason": str(error),
        "raw": raw,
        "source": source,
        "position": position,
    }


def check_not_ahead(ts: float, msg: Any, ahead_s: float) -> None:
    """Raise :class:`ValidationError` when event time ``ts`` is more than ``ahead_s`` (> 0)
    after record ``msg`` was produced (its timestamp): a clock or data error."""
    sent = getattr(msg, "timestamp", None)
    if ahead_s and sent is not None and sent >= 0 and ts > sent / 1000.0 + ahead_s:
        raise ValidationError(
            f"event time {format_ts(ts)} is {ts - sent / 1000.0:,.0f} s after the record was "
            f"produced ({format_ts(sent / 1000.0)}), more than max_event_ahead_s "
            f"({ahead_s:,.0f} s): a clock or data error"
        )


class NaiveWatch:
    """Say once that a record's ``ts`` is text without an offset (read as UTC over Kafka: a
    producer's local times were decided hours off without a word, a QA pass; a label's were
    learned hours off, another). Only the first ``left`` records are watched (a producer that
    joins later is not); called while :attr:`left`."""

    def __init__(self, what: str, left: int = 10_000) -> None:
        self.what, self.left = what, left

    def __call__(self, obj: Any, msg: Any) -> None:
        self.left -= 1
        ts = obj.get("ts") if isinstance(obj, dict) else None
        if ts.__class__ is str and naive_text(ts):
            self.left = 0
            logging.getLogger("fds.streams.kafka").warning(
                'a %s\'s ts has no UTC offset (ts="%s" at partition="%s[%d]" offset="%d"): '
                "read as UTC; the contract's times carry their offset "
                "(2026-03-01T08:04:13+09:00) or are epoch seconds (said once)",
                self.what, ts[:40], msg.topic, msg.partition, msg.offset,
            )  # fmt: skip


def label_of(msg: Any, ahead_s: float, naive: NaiveWatch | None = None) -> dict[str, Any]:
    """The label a Kafka record holds, or the error that makes it a bad label: the reason
    ``fds produce`` gave a row it could not read, no JSON, the contract, or a time stamped more
    than ``ahead_s`` after the record was produced (:func:`check_not_ahead`); ``naive`` is told
    of its ``ts`` (fds run's label feed and fds train read labels alike)."""
    if (refused := produced_bad(msg, None)) is not None:
        raise refused
    obj = loads_record(msg.value)
    label = parse_label(obj)
    check_not_ahead(label["ts"], msg, ahead_s)
    if naive is not None and naive.left:
        naive(obj, msg)
    return label
