"""Historical files: CSV / JSONL (optionally gzip) readers, column mappings, sinks.

A foreign file is read through a :class:`ColumnMapping` (``--mapping FILE``, see DESIGN.md):
engine field -> source column; unmapped columns land in ``extra``; an optional label column
becomes a label event that the engine only learns ``delay`` after the transaction.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import difflib
import functools
import gzip
import io
import itertools
import logging
import os
import re
import shlex
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from pathlib import Path
from typing import IO, Annotated, Any, Literal, NamedTuple, cast

import orjson
import pydantic
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fds import yamlio
from fds.errors import ConfigError, FdsError, also, describe
from fds.features.codegen import finite
from fds.rules.expr import NA_TEXT
from fds.schema import DEGREES, TX_FIELDS, TX_REQUIRED, dumps, dumps_line, fraud_flag, not_json
from fds.timeutil import MS_THRESHOLD, get_zone, parse_duration, parse_ts

log = logging.getLogger(__name__)

__all__ = [
    "ColumnMapping",
    "JsonlSink",
    "Record",
    "infer_format",
    "load_mapping",
    "open_text",
    "read_records",
]

Format = Literal["csv", "jsonl", "parquet"]
# A raw record: (position = 1-based line number, parsed dict or the error it raised, raw text;
# bytes when some are not UTF-8)
#: ``(line, record | error, raw)``: ``raw`` is an unreadable record's own text, or the row as
#: read (the file's own column names) when a mapping renamed it, else None.
Record = tuple[int, "dict[str, Any] | Exception", "str | bytes | dict[str, Any] | None"]


class LabelColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    delay: float = Field(default=0.0, description="seconds; written as 7d, 12h, ...")

    @staticmethod
    def is_fraud(v: Any) -> bool:
        """A label column's value: fraud or not (empty: legitimate); ValueError when it says
        neither."""
        try:
            return fraud_flag(v, empty_is_legit=True)
        except ValueError as e:
            raise ValueError(
                f"{e}; the transaction is decided, its label is not learned (the file's own "
                "words go under `label_values: {fraud: [...], legit: [...]}` in the --mapping)"
            ) from None

    @field_validator("delay", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        try:
            return parse_duration(v)
        except ConfigError as e:  # reported by pydantic with its place in the file
            raise ValueError(str(e)) from None


def _label_word(v: Any) -> str | None:
    """A fraud flag's value as ``label_values:`` compares it: a text trimmed in lower case, a
    number as its text (``2.0`` as ``2``: a JSON or Parquet column's), else None.

    >>> _label_word(" Ja "), _label_word(2.0), _label_word(3), _label_word(True)
    ('ja', '2', '3', None)
    """
    if v.__class__ is str:
        return cast(str, v).strip().lower()
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else None


class LabelValues(BaseModel):
    """The texts a file's fraud flag writes beyond the standard words (``ja``/``nein``,
    ``Betrug``, ``chargeback``): compared trimmed and in lower case."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fraud: frozenset[str] = frozenset()
    legit: frozenset[str] = frozenset()

    @field_validator("fraud", "legit", mode="before")
    @classmethod
    def _words(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            v = [v]  # (one word)
        if not isinstance(v, list | tuple | set | frozenset) or not v:
            raise ValueError("a list of texts, e.g. [ja, betrug]")
        words = set()
        for w in v:
            if isinstance(w, bool) or w is None:  # (YAML reads ja/nein as text, yes/no not)
                raise ValueError(
                    f"YAML reads it as {yamlio.kind_of(w)}: leave it out (true/false, yes/no, "
                    "on/off and 1/0 are read already)"
                )
            word = _label_word(w)
            try:  # (the standard reading: words, and 0/1 written as numbers: 1.0, "00")
                read = fraud_flag(word) if word else None
            except ValueError:
                read = None
            if not word or read is (info.field_name != "fraud"):
                said = "empty" if not word else "already read the other way"
                raise ValueError(f"{w!r} cannot be a {info.field_name} value: {said}")
            words.add(cast(str, word))
        return frozenset(words)

    @model_validator(mode="after")
    def _apart(self) -> LabelValues:
        both = self.fraud & self.legit
        if both:
            raise ValueError(f"{sorted(both)} given both as fraud and as legit")
        return self

    @functools.cached_property
    def flags(self) -> dict[str, bool]:
        """Each word and the flag it stands for."""
        return {w: True for w in self.fraud} | {w: False for w in self.legit}


def _engine_field(name: str) -> str:
    if name == "extra" or name.startswith("extra."):  # (suggested once: it failed every row)
        raise ValueError(
            f"{name!r} is not a field to map onto: a column no field names arrives in "
            "`extra` under its own name (extra.COLUMN in rules and features); leave it unmapped"
        )
    if name in ("is_fraud", "label", "fraud"):  # (the natural first guess of a label column
        raise ValueError(  # was told the engine's fields alone: a QA pass)
            f"{name!r} is no field of a transaction: a fraud column is mapped as the label, at "
            "the top of the mapping: `label: {column: YOUR_COLUMN, delay: 7d}`"
        )
    if name not in _MAPPABLE:
        close = difflib.get_close_matches(name, _MAPPABLE, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown engine field {name!r}; {hint}map onto one of {_MAPPABLE}")
    return name


_MAPPABLE = sorted(f for f in TX_FIELDS if f != "extra")


#: A key under ``fields:`` (its error names the key, so its line is found).
EngineField = Annotated[str, AfterValidator(_engine_field)]


def _default_field(name: str) -> str:
    if name in TX_REQUIRED:
        raise ValueError(
            f"{name!r} is a field every transaction gives of its own: map it under `fields:`"
        )
    return _engine_field(name)


#: A key under ``defaults:``: an optional field.
DefaultField = Annotated[str, AfterValidator(_default_field)]


def _column_name(value: Any) -> Any:
    """A column's name is a text: YAML made ``0`` a number and an empty value a null, and
    the error said only "a valid string" (a QA pass)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("name the file's column, e.g. tx_id: TransactionID")
    if not isinstance(value, str):  # (its example is no value YAML made: 010 is 8)
        raise ValueError(
            f"YAML reads it as {yamlio.kind_of(value)}, not a column name: write it in quotes "
            "exactly as the header has it, e.g. tx_id: '0'"
        )
    return value


#: A column name under ``fields:`` or ``labels_file:``.
ColumnName = Annotated[str, BeforeValidator(_column_name)]


#: A labels file's fields (the Label contract) and those it needs.
LabelField = Literal["tx_id", "ts", "is_fraud", "source"]
LABEL_REQUIRED: frozenset[str] = frozenset({"tx_id", "ts", "is_fraud"})


class ReadOptions(BaseModel):
    """How a file writes its values: its encoding, field separator, numbers and times (a
    mapping's, and its ``--labels`` file's where they differ: :class:`LabelsOptions`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: A CSV file's text encoding (``cp1252``, as Excel on Windows writes it); UTF-8 (a byte
    #: order mark skipped) when omitted. JSON Lines is UTF-8 by definition.
    encoding: str | None = None
    #: A CSV file's field separator: ``;`` (European exports), a tab (``"\t"`` or ``tab``), ``|``;
    #: a comma when omitted.
    delimiter: str = ","
    #: How the file writes numbers (``1.234,56``: ``decimal: ","``, ``thousands: "."``): a text
    #: value written so is read with a dot and no grouping, the fields that are names (ids,
    #: codes) aside. ``thousands: " "`` takes no-break spaces too (French exports).
    decimal: Literal[".", ","] = "."
    thousands: Literal[".", ",", " ", "'", "’"] | None = None
    #: The layout of a ``ts`` text that none of the forms read without it fits, as ``strptime``
    #: writes it (``%d/%m/%Y %H:%M:%S``); read in ``timezone`` unless it has ``%z``.
    ts_format: str | None = None
    _delimiter_at: str | None = PrivateAttr(default=None)  # where the file says `delimiter:`

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                info = codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown encoding {v!r}: e.g. cp1252, latin-1, utf-16") from None
            if not info._is_text_encoding:  # (rot13, base64: a traceback, a QA pass)
                raise ValueError(f"{v!r} is no text encoding: e.g. cp1252, latin-1, utf-16")
        return v

    @field_validator("delimiter", mode="before")
    @classmethod
    def _delimiter(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in ("tab", "\\t"):
            return "\t"  # (YAML's '\t' in single quotes is a backslash and a t)
        if not isinstance(v, str) or not _separates(v):
            raise ValueError(
                "one character that separates the fields, e.g. ';', '|' or tab (a quote, a "
                "space, a letter or a digit cannot be one)"
            )
        return v

    @field_validator("thousands")
    @classmethod
    def _grouping(cls, v: str | None, info: ValidationInfo) -> str | None:
        decimal = info.data.get("decimal", ".")  # (None: a labels file's, as the other's)
        if v is not None and v == decimal:
            raise ValueError(
                f"{v!r} is also the decimal mark: one of them is the other sign "
                "(1.234,56 is `decimal: ','` with `thousands: '.'`)"
            )
        return v

    @field_validator("ts_format")
    @classmethod
    def _ts_format(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "%" not in v:  # (Java's dd.MM.yyyy was told "must give the date": a QA pass)
            raise ValueError(
                "write the layout in strptime's % codes: e.g. '%d.%m.%Y %H:%M:%S' for "
                "dd.MM.yyyy HH:mm:ss"
            )
        if "%Z" in v:  # (it reads UTC, GMT and this machine's zone names only, and drops them:
            raise ValueError(  # "08:04 UTC" was read in the timezone, an hour off: a QA pass)
                "%Z reads only a few zone names and does not apply them: give offsets with %z "
                "(+0100, +01:00), or leave the name out of the layout and set `timezone:`"
            )
        sample = dt.datetime(2026, 3, 17, 15, 4, 13, 250000, tzinfo=dt.UTC)
        try:
            back = dt.datetime.strptime(sample.strftime(v), v)
        except ValueError as e:
            raise ValueError(f"not a strptime layout ({e}): e.g. '%d/%m/%Y %H:%M:%S'") from None
        if back.date() != sample.date():  # (a layout without the year, month or day)
            raise ValueError(
                "the layout must give the date (a day, a month and a year: %d, %m or %b, %Y or "
                "%y), e.g. '%d/%m/%Y %H:%M'"
            )
        if "%I" in v and back.hour != sample.hour:  # (3 PM read as 03:00)
            raise ValueError("an hour of %I needs %p (AM/PM) in the layout, or write %H (0-23)")
        return v


class LabelsOptions(ReadOptions):
    """A ``--labels`` file's :class:`ReadOptions` where they differ from the transactions
    file's (``labels_options:``; a key left out is the transactions file's)."""

    delimiter: str | None = None  # type: ignore[assignment]
    decimal: Literal[".", ","] | None = None  # type: ignore[assignment]

    @field_validator("decimal", mode="before")
    @classmethod
    def _decimal_given(cls, v: Any) -> Any:
        if v is None:  # (re.escape(None) raised: a review; left out, it is the other file's)
            raise ValueError("'.' or ','; leave the key out to read it as the transactions file")
        return v


class ColumnMapping(ReadOptions):
    """How a foreign file's columns map onto the transaction contract."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Format | None = None
    fields: dict[EngineField, ColumnName] = Field(default_factory=dict)
    timezone: str = "UTC"
    label: LabelColumn | None = None
    #: Texts read as a missing value, as an empty cell is (``[NaN, NA, "null"]``): a device
    #: ``NaN`` was one device of every transaction without one (617 cards, a QA pass).
    missing: frozenset[str] = frozenset()
    #: Numeric timestamps count seconds from this instant, not from 1970 (IEEE-CIS's
    #: ``TransactionDT``: seconds from a reference date); epoch seconds once mapped.
    ts_origin: float | None = None
    #: A separate ``--labels`` file's own column names (``is_fraud: isFraud``): a chargeback
    #: file with its own names was dead-lettered whole (a QA pass).
    labels_file: dict[LabelField, ColumnName] = Field(default_factory=dict)
    #: How that file writes its values where it differs from this one (a comma-separated
    #: chargeback export beside a semicolon one, its dates without a time: a QA pass).
    labels_options: LabelsOptions | None = None
    #: Words a label column (and a ``--labels`` file's ``is_fraud``) writes for fraud and for
    #: legitimate beyond the standard ones (``ja``/``nein``: every label a dead letter).
    label_values: LabelValues | None = None
    #: Columns that hold numbers (unmapped ones, which rules read as ``extra.NAME``), read in
    #: the file's notation as the amount is, whole numbers with group marks too: ``1.000`` is
    #: 1000 under ``thousands: "."`` (such text stays as written otherwise, and a rule reading
    #: it as a number read 1.0: a QA pass); one that does not fit the notation is a dead letter.
    numbers: frozenset[ColumnName] = frozenset()

    @field_validator("numbers", mode="before")
    @classmethod
    def _number_columns(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list | set | frozenset | tuple) or not all(
            isinstance(x, str) and x for x in v
        ):
            raise ValueError("a list of column names, e.g. [Menge, Gebuehr]")
        return v

    @field_validator("labels_options")
    @classmethod
    def _labels_notation(cls, v: LabelsOptions | None, info: ValidationInfo) -> Any:
        if v is not None:  # (one sign for both, as the two files' options meet: a review)
            decimal = v.decimal if "decimal" in v.model_fields_set else info.data.get("decimal")
            thousands = (
                v.thousands if "thousands" in v.model_fields_set else info.data.get("thousands")
            )
            if thousands is not None and thousands == decimal:
                raise ValueError(
                    f"the labels file would read {thousands!r} as both its decimal mark and its "
                    "thousands: give both under labels_options (e.g. decimal: '.', thousands: ',')"
                )
        return v

    #: Values of optional fields for the rows that give none (``channel: pos`` for a
    #: card-present export that has no such column): a row's own value wins.
    defaults: dict[DefaultField, str | float] = Field(default_factory=dict)
    # what check_columns requires, and where the mapping names it (a labels file's: for_labels)
    _required: frozenset[str] = PrivateAttr(default=TX_REQUIRED)
    _section: str = PrivateAttr(default="fields")
    _format_at: str | None = PrivateAttr(default=None)  # where the file says `format:`

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            get_zone(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("defaults", mode="before")
    @classmethod
    def _defaults(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # (pydantic says it is no mapping)
        out = {}
        for field, value in v.items():
            if isinstance(value, bool) or value is None or isinstance(value, list | dict):
                raise ValueError(
                    f"{field}: YAML reads it as {yamlio.kind_of(value)}: give a text or a number "
                    f"(in quotes when YAML would read it otherwise, e.g. {field}: 'yes')"
                )
            bound = DEGREES.get(field)
            number = isinstance(value, int | float)
            if bound is not None and not (number and -bound <= value <= bound):
                raise ValueError(f"{field}: a number from -{bound} to {bound}, got {value!r}")
            out[field] = value if bound is not None else str(value)  # (mcc: 5411 is a text)
        return out

    @property
    def csv_encoding(self) -> str:
        """How a CSV file is decoded: ``encoding``, or UTF-8 with its byte order mark skipped."""
        return self.encoding or "utf-8-sig"

    @field_validator("missing", mode="before")
    @classmethod
    def _missing_texts(cls, v: Any) -> Any:
        if isinstance(v, str) or v is None or type(v) in (int, float, bool):
            v = [v]  # (an unquoted NULL alone: the generic "a list" message, a QA pass)
        if not isinstance(v, list | set | frozenset | tuple):
            raise ValueError("a list of texts read as missing, e.g. [NaN, NA, '-999']")
        odd = next((x for x in v if not isinstance(x, str)), "")
        if odd != "":  # (NULL, ~, 1.50, 0x10 and no were read as other texts or refused
            raise ValueError(  # obscurely: a review)
                f"YAML reads one of them as {yamlio.kind_of(odd)}, not a text: write each one in "
                "quotes as it appears in a cell, e.g. ['NULL', '-999', 'no']"
            )
        return v

    @field_validator("ts_origin", mode="before")
    @classmethod
    def _origin(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        if type(v) is dt.date:  # (YAML's unquoted 2017-12-01)
            v = dt.datetime.combine(v, dt.time())
        if not isinstance(v, str | dt.datetime):
            raise ValueError("a date and time, e.g. 2017-12-01 or 2017-12-01T00:00:00+09:00")
        try:
            return parse_ts(v, get_zone(info.data.get("timezone", "UTC")))
        except (ValueError, ConfigError) as e:
            raise ValueError(f"not a date and time ({e}): e.g. 2017-12-01T00:00:00Z") from None

    @field_validator("label", mode="before")
    @classmethod
    def _label_section(cls, v: Any) -> Any:
        if isinstance(v, str):  # (told "a valid dictionary or instance of LabelColumn": a QA)
            raise ValueError(
                f"give the fraud column as a section: `label: {{column: {v}, delay: 30d}}` "
                "(delay: how long after a transaction its label becomes known)"
            )
        return v

    @field_validator("label")
    @classmethod
    def _label_not_mapped(cls, v: LabelColumn | None, info: ValidationInfo) -> LabelColumn | None:
        fields = info.data.get("fields", {})  # (validated before: declared before)
        field = next((f for f, c in fields.items() if v is not None and c == v.column), None)
        if v is not None and field is not None:  # apply() renames it: every label was lost
            raise ValueError(
                f"column {v.column!r} is also mapped onto the field {field!r}: a label needs a "
                "column of its own"
            )
        return v

    def check_columns(
        self,
        columns: list[str],
        where: str,
        *,
        first_record: dict[str, Any] | None = None,
        objects: Collection[str] = (),
        file: Path | None = None,
    ) -> None:
        """Raise :class:`ConfigError` when a mapped column is not in the file, or a required
        field is neither mapped nor a column. A dotted name (``card.id``) that is no column
        needs its first part to be one of the ``objects`` (a Parquet file's struct columns; a
        CSV has none: a cell holds no object).

        ``first_record``: ``columns`` are the keys of this JSON Lines record, which may lack an
        optional field or the label: only required fields are checked, a dotted name in the
        record's nested objects; ``file``: the file it is read from (named in a hint).
        """
        wanted = [c for f, c in self.fields.items() if first_record is None or f in self._required]
        if self.label and first_record is None:
            wanted.append(self.label.column)
        if first_record is None:  # (a column of `numbers:` that is none was said nothing: a QA;
            wanted += sorted(self.numbers - set(wanted))  # a JSON record may lack it, or hold
            # it in its extra object)
        # one column whose name holds the others: another separator than the mapping's
        seps = [c for c in (",", ";", "\t", "|") if c != self.delimiter]
        sep = next((c for c in seps if len(columns) == 1 and c in columns[0]), None)
        hint = (
            f" (one column: the file seems to separate them with {sep!r}: give "
            f"`delimiter: {separator_name(sep, as_yaml=True)}` "
            + ("under `labels_options:` " if self._section == "labels_file" else "")
            + "in the --mapping)"
            if sep
            else ""
        )
        held = _records_key(first_record) if first_record is not None else None
        # A wrapper with more than its list (`{"transactions": [...], "count": 2}` lost its jq
        # hint: a review), not a transaction of its own with a list field, none of whose
        # columns it holds (its jq would have made the items the records: a QA pass).
        named = {*wanted, *(f for f in self._required if f not in self.fields)}
        if held is not None and not named & set(columns):
            path = (
                f".{held}[]" if _JQ_NAME.fullmatch(held) else f".[{orjson.dumps(held).decode()}][]"
            )
            hint += (
                f" (its field {held!r} holds a list of records: if they are the transactions, "
                "make them one a line, e.g. "
                + (jq_command(Path(file), path) if file else f"jq -c '{path}' FILE > FILE.jsonl")
                + ")"
            )
        missing = [c for c in wanted if c not in columns and not _nested(c, objects, first_record)]
        if missing:
            # (said as "not in the file" alone: a QA pass)
            if columns and str(columns[0]).startswith("\u00ef\u00bb\u00bf"):
                hint += (
                    " (the file starts with a UTF-8 byte order mark, read as 'ï»¿' in the "
                    "mapping's encoding: leave `encoding:` out, UTF-8 is the default)"
                )
            cased = {str(c).casefold(): c for c in columns}
            near = [f"{m!r} -> {cased[m.casefold()]!r}" for m in missing if m.casefold() in cased]
            if near:
                hint += f" (names differ in case only: {', '.join(near)})"
            dots = next((c for c in missing if "." in c), None)
            if dots is not None:  # (a nested path: said how it is read)
                first, _, rest = dots.partition(".")
                hint += (
                    f" (a dotted name reads a nested field: {dots!r} is {rest!r} in the object "
                    f"{first!r})"
                )
            raise ConfigError(
                f"column(s) {missing} named in the mapping are not in the file; "
                f"its columns are {columns}{hint}",
                where=where,
            )
        unmapped = sorted(f for f in self._required if f not in self.fields and f not in columns)
        if unmapped:
            raise ConfigError(
                f"required engine field(s) {unmapped} are neither mapped nor columns of the "
                f"file: map them under `{self._section}:` of a --mapping file (e.g. "
                f"`{unmapped[0]}: YOUR_COLUMN`); its columns are {columns}{hint}",
                where=where,
            )

    def for_labels(self) -> ColumnMapping:
        """The mapping of a separate labels file: its ``labels_file`` columns, read in this
        mapping's timezone, with its ``missing`` texts and ``ts_origin``."""
        own = self.labels_options
        # (the options given only: fields_set tells a delimiter given from the default one)
        read = {
            k: getattr(self, k) for k in ReadOptions.model_fields.keys() & self.model_fields_set
        }
        read |= {k: getattr(own, k) for k in own.model_fields_set} if own is not None else {}
        m = ColumnMapping.model_construct(
            fields=dict(self.labels_file), timezone=self.timezone, missing=self.missing,
            ts_origin=self.ts_origin, label_values=self.label_values, **read,
        )  # fmt: skip
        m._required, m._section = LABEL_REQUIRED, "labels_file"
        given = own if own is not None and "delimiter" in own.model_fields_set else self
        m._delimiter_at = given._delimiter_at
        return m

    def apply(self, row: dict[str, Any]) -> dict[str, Any]:
        """Rename one raw row to engine fields; other columns stay (they go to ``extra``), also
        a column named like a field that the mapping fills from another column (``amount``
        when ``amount: AMT``): it goes to ``extra`` under its name (it was overwritten)."""
        if self.missing:
            gone = self.missing
            row = {k: v for k, v in row.items() if v.__class__ is not str or v not in gone}
        if self.fields:
            sources, shadowed, paths = self._plan
            out = {k: v for k, v in row.items() if k not in sources}
            for field in shadowed:
                extra = out.get("extra", {})
                if field in out and isinstance(extra, dict):  # (else a dead letter, raw as read)
                    out["extra"] = {field: out.pop(field), **extra}  # `extra`'s own value wins
            for field, col in self.fields.items():
                if col in row:
                    out[field] = row[col]
                elif field in paths and (v := self._dig(row, paths[field])) is not None:
                    out[field] = v
        else:
            out = row
        if not self._more:
            return out
        if self.defaults:
            fill = {k: v for k, v in self.defaults.items() if out.get(k) is None}
            if ("lat" in fill) != ("lon" in fill) and {"lat", "lon"} <= self.defaults.keys():
                fill.pop("lat", None)  # a place is both or neither: half the row's own and
                fill.pop("lon", None)  # half a default is nowhere (a review)
            out = {**out, **fill}
        nested = self._label_path  # (a dotted label column that is no column: a nested field)
        if nested is not None and nested[0] not in row:
            v = self._dig(row, nested[1])
            out = out if v is None else {**out, nested[0]: v}  # (the reader takes it out)
        if self.label_values is not None:
            out = self._label_words(out)
        if self._number is not None:
            out = self._numbers(out)
        elif self.numbers:  # (plain numbers: ``numbers:`` was not checked at all, a QA pass)
            own = out.get("extra")
            own = own if isinstance(own, dict) else {}
            for k in self.numbers:  # (as the rules read it: a finite number, or missing)
                v = own[k] if k in own else out.get(k)
                if isinstance(v, str) and finite(v) != finite(v):
                    if v.strip().lower() in NA_TEXT:
                        continue
                    raise ValueError(f"{k}: {v[:100]!r} is no number (nor a missing value's text)")
        if self.ts_format is not None and (ts := out.get("ts")).__class__ is str:
            out = {**out, "ts": self._layout(ts)}
        if self.ts_origin is not None and "ts" in out:
            out = {**out, "ts": _from_origin(out["ts"], self.ts_origin)}
        return out

    def record(self, n: int, row: dict[str, Any], raw: dict[str, Any] | None = None) -> Record:
        """Row ``n`` of the file as the readers yield it: mapped, or the error that makes it a
        dead letter (a ``ts`` that does not fit ``ts_format``), with the row as read (``raw``,
        ``row`` when not given)."""
        try:
            return n, self.apply(row), row if raw is None else raw
        except ValueError as e:
            return n, e, row if raw is None else raw

    def _numbers(self, out: dict[str, Any]) -> dict[str, Any]:
        """``out`` with its numbers read as the file writes them: the amount, ``lat`` and
        ``lon`` (a text that does not fit the notation is a ``ValueError``: a dot-decimal
        ``12.34`` under ``decimal: ","`` was read as 12.34, ``0.125`` as 125, a QA pass); any
        other value but the names only when it has a decimal part (``2,50``: a version
        ``2.100``, a phone number ``030 123 456`` or an order number ``1.234.567`` stay as
        written), the values of its ``extra`` object too (the rules read them as the others,
        ``extra.NAME``; not those of objects deeper, which no rule nor feature reads); and the
        columns of ``numbers`` as the measures."""
        fits, plain, _mark = cast(_Notation, self._number)
        read = self._decimals(out)
        if self.ts_origin is not None and (ts := out.get("ts")).__class__ is str and fits(ts):
            read["ts"] = plain(ts)  # seconds after ts_origin, grouped as the file groups (only
            # a text with a decimal mark was read so: `86.400` was 86.4 s, a review)
        if (extra := out.get("extra")).__class__ is dict:  # (a JSON record's own, or a column
            read["extra"] = self._decimals(extra)  # named like a field another one fills)
        own = extra if isinstance(extra, dict) else {}  # (a JSON record's extra object)
        # (as written, not as _decimals read it: the measures' own test)
        for k, src, dst in (
            *((k, out, read) for k in _MEASURES),
            *((k, own, read["extra"]) if k in own else (k, out, read) for k in self.numbers),
        ):
            v = src.get(k)
            if v.__class__ is str:
                if not fits(v):
                    raise ValueError(f"{k}: {v[:100]!r} {self._notation}")
                dst[k] = plain(v)
        return read

    def _decimals(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``values`` with each text written as a number with a decimal part (in the
        file's notation) read so, the names' aside."""
        fits, plain, mark = cast(_Notation, self._number)
        read = dict(values)
        for k, v in values.items():  # (the cheapest test first: most values have no mark)
            if v.__class__ is str and mark in v and k not in _NAMES and fits(v):
                read[k] = plain(v)
        return read

    @functools.cached_property
    def _number(self) -> _Notation | None:
        """How the file writes numbers: whether a text is one written so, that text with a dot
        and no grouping (``"1.234,56"`` -> ``"1234.56"``), and the decimal mark; None when the
        file writes them as the engine reads them."""
        if self.decimal == "." and self.thousands is None:
            return None
        group = "[ \u00a0\u202f]" if self.thousands == " " else re.escape(self.thousands or "")
        # (a leading zero starts no group: 0.125 is no thousand, 01.067 no number, a QA pass)
        whole = rf"[1-9]\d{{0,2}}(?:{group}\d{{3}})+|\d+" if group else r"\d+"
        fits = re.compile(rf"[+-]?(?:{whole})(?:{re.escape(self.decimal)}\d+)?").fullmatch
        ungroup = re.compile(group).sub if group else None
        comma = self.decimal == ","

        def plain(v: str) -> str:
            if ungroup is not None:
                v = ungroup("", v)
            return v.replace(",", ".") if comma else v

        return fits, plain, self.decimal

    @functools.cached_property
    def _notation(self) -> str:
        """What a measure's text that is no number as the file writes them is told."""
        t, d = self.thousands, self.decimal
        example = f"-1{t}234{d}56" if t else f"-1234{d}56"
        grouping = f", thousands: {t!r}" if t else " and no thousands:"
        return (
            f"is no number as the mapping's decimal: {d!r}{grouping} write them (e.g. "
            f"{example}: a sign before the digits, no currency, no other separator)"
        )

    def _layout(self, ts: str) -> str:
        """A ``ts`` text in the ``ts_format`` layout as ISO 8601 (naive unless it has ``%z``:
        read in the timezone, as any such time); one that does not fit is a ``ValueError``
        unless it is a time read without the layout (a labels file's ISO times)."""
        layout = cast(str, self.ts_format)
        try:
            return dt.datetime.strptime(ts.strip(), layout).isoformat()
        except ValueError as e:
            misfit = ValueError(
                f"ts: {ts[:100]!r} does not fit the mapping's ts_format {layout!r} ({e})"
            )
        try:
            float(ts)  # (a number is no time of another form here: an Excel date serial
        except ValueError:  # 46082,35 was decided in 1970, a QA pass)
            try:
                parse_ts(ts)
                return ts
            except ValueError:
                pass
        raise misfit

    def column_value(self, row: dict[str, Any], column: str) -> Any:
        """The value of ``column`` in ``row`` as read: a column, or a dotted path into its
        nested objects (``meta.id``); None when there is none."""
        if column in row or "." not in column:
            return row.get(column)
        return self._dig(row, tuple(column.split(".")))

    def _dig(self, row: dict[str, Any], path: tuple[str, ...]) -> Any:
        """The value at ``path`` in ``row``'s nested objects; None when there is none or it is
        one of the ``missing`` texts."""
        v = _at(row, path)
        return None if v is _ABSENT or (v.__class__ is str and v in self.missing) else v

    @functools.cached_property
    def _more(self) -> bool:
        """Has a row more to do once renamed (defaults, a nested label, numbers, times)?"""
        return bool(
            self.defaults or self._label_path or self._number or self.ts_format
            or self.ts_origin is not None or self.label_values or self.numbers
        )  # fmt: skip

    def _label_words(self, out: dict[str, Any]) -> dict[str, Any]:
        """``out`` with its fraud flag (the label column, a labels file's ``is_fraud``) read
        as True/False when it is one of ``label_values:``'s words."""
        label = self.label
        col = "is_fraud" if self._section == "labels_file" else label and label.column
        if not col or col not in out:
            return out
        flag = self.label_flag(out[col])
        return out if flag is out[col] else {**out, col: flag}

    def label_flag(self, v: Any) -> Any:
        """A fraud flag's value ``v`` read as True/False when it is one of ``label_values:``'s
        words, else as it is (a row dead-lettered before its words were read counted no
        fraud: a QA pass)."""
        word = _label_word(v) if self.label_values is not None else None
        flag = None if word is None else cast(LabelValues, self.label_values).flags.get(word)
        return v if flag is None else flag

    @functools.cached_property
    def _label_path(self) -> tuple[str, tuple[str, ...]] | None:
        """A dotted label column (``fraud.flag``) and its path, None for any other."""
        label = self.label
        if label is None or "." not in label.column:
            return None
        return label.column, tuple(label.column.split("."))

    @functools.cached_property
    def _plan(self) -> tuple[frozenset[str], tuple[str, ...], dict[str, tuple[str, ...]]]:
        """The mapped columns; the fields filled from a column of another name that is not
        itself mapped (a column named like one of them would be overwritten); the dotted
        names' paths, read when a record has no column of that name (``card.id``)."""
        sources = frozenset(self.fields.values())
        shadowed = tuple(f for f, c in self.fields.items() if f != c and f not in sources)
        paths = {f: tuple(c.split(".")) for f, c in self.fields.items() if "." in c}
        return sources, shadowed, paths


def _nested(name: str, objects: Collection[str], record: dict[str, Any] | None) -> bool:
    """Is dotted ``name`` a field nested in an object: in ``record``'s objects when given, else
    its first part one of the ``objects`` (a Parquet file's struct columns)?

    >>> _nested("card.id", ["card"], None), _nested("card.id", ["card"], {"card": {"no": 1}})
    (True, False)
    """
    if "." not in name:
        return False
    if record is None:
        return name.partition(".")[0] in objects
    return _at(record, tuple(name.split("."))) is not _ABSENT


_ABSENT = object()


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``obj``'s nested objects (dicts); ``_ABSENT`` when none."""
    for key in path:
        if obj.__class__ is not dict or key not in obj:
            return _ABSENT
        obj = obj[key]
    return obj


#: The fields whose values are measures, read as the mapping's numbers (``decimal:``), and
#: those whose values are names (ids, codes), never read as numbers.
_MEASURES = frozenset({"amount", "lat", "lon"})
_NAMES = (TX_FIELDS | {"source"}) - _MEASURES - {"ts", "extra"}
#: How a file writes numbers (ColumnMapping._number).
_Notation = tuple[Callable[[str], Any], Callable[[str], str], str]


#: The separators with a name of their own in prose; of them, ``tab`` is one in a mapping too
#: (:class:`ReadOptions` reads it).
_SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


def separator_name(sep: str, *, as_yaml: bool = False) -> str:
    """How field separator ``sep`` is named in a message: in prose (``comma``, ``semicolon``,
    ``tab``, ``'|'``), or with ``as_yaml`` as a mapping's value (``';'``, ``tab``).

    >>> separator_name(";"), separator_name(";", as_yaml=True), separator_name("|")
    ('semicolon', "';'", "'|'")
    >>> separator_name("\\t"), separator_name("\\t", as_yaml=True)
    ('tab', 'tab')
    """
    name = _SEPARATOR_NAMES.get(sep)
    return repr(sep) if name is None or (as_yaml and name != "tab") else name


def _from_origin(value: Any, origin: float) -> Any:
    """A number of seconds after ``origin`` as epoch seconds; anything else as it is (a dead
    letter when it is no timestamp). A sum past the year 5000 is no time either: as a number
    it would be read as milliseconds (``200000000000`` after 2018 was 1976, a QA pass)."""
    if type(value) in (int, float) or isinstance(value, str):
        try:
            t = origin + float(value)
        except ValueError:
            return value
        return t if abs(t) < MS_THRESHOLD else f"{value} seconds after ts_origin: past year 5000"
    return value


def load_mapping(path: str | os.PathLike[str]) -> ColumnMapping:
    """Load a mapping YAML; errors name the file, line and what to fix."""
    p = Path(path)
    if p.is_dir():  # (it said "not found": a QA pass)
        raise ConfigError(f"the mapping {p} is a folder: give its YAML file")
    if not p.exists():  # (read once, as a rules file: a pipe, `<(...)`, will do: a QA pass)
        raise ConfigError(f"mapping file not found: {p}")
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError("a mapping file is a YAML mapping with 'fields:'", where=str(p))
    yamlio.other_file(data, "--mapping", p)
    try:
        mapping = ColumnMapping.model_validate(data)
    except pydantic.ValidationError as e:
        raise invalid(p, e, ColumnMapping, "a mapping") from None
    except ConfigError as e:
        raise ConfigError(str(e), where=str(p)) from None
    label = data.get("label") or {}
    delay = label.get("delay") if isinstance(label, dict) else None
    if type(delay) in (int, float) and delay:  # a unit forgotten? (7 meant as 7 days)
        line = _line_at(p, ["label", "delay"])
        log.warning(
            "%s: label.delay %s has no unit: read as %s seconds (write 7d, 12h, 90s)",
            f"{p}:{line}" if line else p, delay, delay,
        )  # fmt: skip
    elif mapping.label is not None and "delay" not in mapping.label.model_fields_set:
        # (each label learned right after its transaction: the model looked far better
        # offline than it can in production, without a word: a QA pass)
        line = _line_at(p, ["label"])
        log.warning(
            "%s: label has no delay: each label is learned right after its transaction, "
            "sooner than a chargeback comes in production; give the delay your labels have "
            "(label: {column: %s, delay: 30d}), or delay: 0s to mean it",
            f"{p}:{line}" if line else p, mapping.label.column,
        )  # fmt: skip
    for options, keys in ((mapping, ()), (mapping.labels_options, ("labels_options",))):
        if options is not None and "delimiter" in options.model_fields_set:  # (a file's sep=
            options._delimiter_at = _key_at(p, [*keys, "delimiter"])  # line may contradict it)
    if mapping.format is not None:  # (a conflict with the file's name is found later)
        mapping._format_at = _key_at(p, ["format"])
    return mapping


def read_yaml(p: Path, what: str = "a mapping") -> Any:
    """The YAML document of file ``p``; a syntax error or a key written twice names its line
    and column. Its top-level keys ``x-...`` are left out (:func:`fds.yamlio.without_own_keys`)."""
    text = yamlio.read_text(p, what)
    try:
        return yamlio.without_own_keys(yamlio.load(text))
    except yaml.YAMLError as e:
        problem, mark = yamlio.explain(e, text)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"not valid YAML: {problem}", where=where) from None


def invalid(p: Path, e: pydantic.ValidationError, model: Any, what: str) -> ConfigError:
    """The first error of validating file ``p`` against ``model``, at the line of the key it
    names (an unknown key, at any depth, with the closest known one: ``colum`` under
    ``label:`` used to be reported as the missing ``column``)."""
    errs = e.errors()
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    keys = [str(k) for k in err["loc"] if isinstance(k, str)]
    line = _line_at(p, keys)
    loc = ".".join(str(x) for x in err["loc"] if x != "[key]")  # (a dict key's error)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("dict_type", "model_type", "model_attributes_type"):  # (pydantic's words
        got = type(err.get("input")).__name__  # were all a QA pass got for `fields: [a, b]`)
        got = {"list": "a list", "str": "a text", "NoneType": "nothing", "bool": "true/false",
               "int": "a number", "float": "a number"}.get(got, f"a {got}")  # fmt: skip
        msg = f"a section of `key: value` lines under it is expected, not {got}"
    if err["type"] == "extra_forbidden":
        known = yamlio.fields_at(model, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        has = f"{what} has" if len(err["loc"]) == 1 else "here:"
        msg = f"unknown key: {'did you mean ' + repr(close[0]) + '? ' if close else ''}" + (
            f"{has} {', '.join(known)}"
        )
        key = err["loc"][-1]
        if len(err["loc"]) == 1 and key in _MAPPABLE and "fields" in known:  # (a flat mapping
            msg = (  # was told the keys a mapping has, not where its columns go: a QA pass)
                f"unknown key: {key} is a field of fds: name the file's columns under "
                f"`fields:` (fields: {{{key}: YOUR_COLUMN, ...}})"
            )
    return ConfigError(f"{loc}: {msg}", where=f"{p}:{line}" if line else str(p))


def _key_at(p: Path, keys: Sequence[str]) -> str:
    """``file:line`` of the deepest of ``keys`` in the YAML file ``p`` (``file:?`` unknown)."""
    return f"{p}:{_line_at(p, keys) or '?'}"


def _line_at(p: Path, keys: Sequence[str]) -> int | None:
    """The line of the deepest of ``keys`` (a path: ``["labels_file", "amount"]``) found in
    the YAML file ``p`` (the first line that started with the last key named a same-named key
    of another section: a QA pass)."""
    try:
        node = yaml.compose(p.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        found = next(((k, v) for k, v in node.value if k.value == key), None)
        if found is None:
            break
        line, node = found[0].start_mark.line + 1, found[1]
    return line


#: What a workbook (or a zip archive) is told to do (renamed .csv, it was told "not valid UTF-8,
#: give encoding: cp1252", advice that led nowhere: a QA pass).
_EXPORT_CSV = (
    'fds reads no workbook; save it as CSV (in Excel: File > Save As > "CSV UTF-8"), then '
    "give that file"
)


#: Compressions fds does not unpack, by their first bytes and their files' ending: the command
#: that unpacks each (renamed .csv, or named .csv.bz2, such a file was told "not valid UTF-8" or
#: "cannot tell the format", advice that led nowhere: a review).
_OTHER_PACKING = {
    b"BZh": ("bzip2", ".bz2", "bunzip2 -c"),
    b"\xfd7zX": ("xz", ".xz", "xz -dc"),  # (of "\xfd7zXZ\0": the 4 bytes read)
    b"\x28\xb5\x2f\xfd": ("zstd", ".zst", "zstd -dc"),
}


def _packed(path: str | os.PathLike[str], kind: str, ending: str, unpack: str) -> ConfigError:
    """The error of a file packed with ``kind`` (its files end in ``ending``), which ``unpack``
    writes out unpacked.

    >>> print(_packed("/d/x.csv.bz2", "bzip2", ".bz2", "bunzip2 -c"))
    /d/x.csv.bz2 is bzip2-compressed: fds unpacks gzip (.gz) only: unpack it first (bunzip2 -c /d/x.csv.bz2 > /d/x.csv), or compress the unpacked file with gzip
    """  # noqa: E501
    p = Path(path)
    out = p.with_suffix("") if p.suffix.lower() == ending else p.with_stem(f"{p.stem}.unpacked")
    return ConfigError(
        f"{path} is {kind}-compressed: fds unpacks gzip (.gz) only: unpack it first ({unpack} "
        f"{shlex.quote(str(path))} > {shlex.quote(str(out))}), or compress the unpacked file "
        "with gzip"
    )


def infer_format(path: str | os.PathLike[str], declared: str | None = None) -> str:
    """``csv`` / ``jsonl`` / ``parquet`` from the declared format or the file name."""
    if declared:
        return declared
    name = str(path).lower().removesuffix(".gz")
    for kind, ending, unpack in _OTHER_PACKING.values():
        if name.endswith(ending):
            raise _packed(path, kind, ending, unpack)
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "csv"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
    ):
        if name.endswith(ext):
            return fmt
    if name.endswith((".xlsx", ".xls", ".xlsm", ".ods")):
        raise ConfigError(f"{path} is a spreadsheet workbook: {_EXPORT_CSV}")
    raise ConfigError(
        f"cannot tell the format of {path}: name it .csv, .tsv, .jsonl or .parquet (optionally "
        ".gz) or set 'format:' in a --mapping file"
    )


def separator(path: str | os.PathLike[str], mapping: ColumnMapping | None) -> str:
    """The field separator of CSV file ``path``: the ``mapping``'s ``delimiter:``, else a tab
    for a ``.tsv`` file (it was refused as of no known format), else a comma.

    >>> separator("a.tsv.gz", None), separator("a.csv", ColumnMapping(delimiter=";"))
    ('\\t', ';')
    """
    if mapping is not None and mapping.delimiter != ",":
        return mapping.delimiter
    return "\t" if str(path).lower().removesuffix(".gz").endswith(".tsv") else ","


def _separates(c: str) -> bool:
    """Can character ``c`` separate a CSV file's fields (a quote, a line break, a space, a
    letter or a digit cannot)?"""
    return len(c) == 1 and c not in '"\r\n ' and not c.isalnum()


#: The first line of an Excel CSV export, before the header: the file's separator (``sep=;``;
#: Excel reads the file with it whatever the system's list separator). A byte order mark
#: before it stays in the text when the mapping's ``encoding: utf-8`` reads it.
_SEP_LINE = re.compile("\ufeff?sep=(.)(?:\r\n|\r|\n)?")


def _declared(line: str) -> str | None:
    """The separator that ``line`` declares when it is Excel's ``sep=`` line, else None.

    >>> _declared("sep=;\\r\\n"), _declared("sep=\\t\\n"), _declared("sep=a"), _declared("sep;ts")
    (';', '\\t', None, None)
    """
    own = _SEP_LINE.fullmatch(line)
    return own[1] if own is not None and _separates(own[1]) else None


class CsvHead(NamedTuple):
    """A CSV file's header as the reader reads it: its column names, the field separator, and
    the header's last line (2 after Excel's ``sep=`` line; 2 for a header with a quoted line
    break: ``head -n 1`` kept half of it, a review)."""

    columns: list[str]
    separator: str
    line: int


def _csv_start(
    p: Path, lines: _Lines, mapping: ColumnMapping | None
) -> tuple[str, Iterator[list[str]], list[str] | None]:
    """How CSV file ``p`` is read from its ``lines``: its field separator, a reader of its
    rows, and its first row (the header; ``lines.first`` is its line). Excel's ``sep=`` first
    line gives the separator and is no row; refused when the mapping's ``delimiter:`` says
    another (read with it, the file was one column, or every row a dead letter). Blank lines
    before the header are no part of it (as everywhere in the file: a blank first line was
    read as a header of no columns, and the file refused for it, a review)."""
    first = next(lines, "")
    while first and not first.strip(" \t\r\n\ufeff"):
        lines.record.clear()
        first = next(lines, "")
    own = _declared(first)
    if own is None:
        lines.read_again([first] if first else [])
        sep = separator(p, mapping)
    else:
        lines.record.clear()
        sep = own
        if (
            mapping is not None
            and "delimiter" in mapping.model_fields_set
            and own != (given := mapping.delimiter)
        ):
            at = f" ({mapping._delimiter_at})" if mapping._delimiter_at else ""
            line = first.rstrip("\r\n").lstrip("\ufeff")
            raise ConfigError(
                f"its first line {line!r} says the fields are separated by a "
                f"{separator_name(own)}, but the mapping says `delimiter: "
                f"{separator_name(given, as_yaml=True)}`{at}: drop `delimiter:` from the "
                "mapping (the line tells the separator), or the line from the file",
                where=f"{p}:1",
            )
    reader = csv.reader(lines, skipinitialspace=True, delimiter=sep)
    return sep, reader, _first_row(p, reader, lines, sep)


# Characters that stand for bytes that were not UTF-8 (errors="surrogateescape").
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _text_or_bytes(raw: str) -> str | bytes:
    """A dead letter's raw text, or its bytes when some are not UTF-8 (read with
    surrogateescape): :func:`fds.schema.dead_letter` escapes them (``\\xe9``), nothing is lost."""
    return raw.encode("utf-8", "surrogateescape") if _UNDECODABLE.search(raw) else raw


# The longest CSV field, in characters. The csv module's default (128 KiB) refuses a JSON blob
# that some exports keep in a column; the limit still bounds the memory that a quote left open
# takes before it is found (see _runaway). Process-wide: the csv module has no other setting.
_FIELD_LIMIT = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))

# What stops a file from being read on: a truncated or damaged gzip, a field over the limit.
_FAULTS = (EOFError, gzip.BadGzipFile, zlib.error, csv.Error, UnicodeError)
#: Parquet rows converted to dicts at a time (the file is read a batch at a time).
PARQUET_BATCH = 65_536


class FileCut(ValueError):
    """A file that cannot be read to its end (cut short, a field over the limit, bytes its
    encoding cannot read): the records before the fault are sound, the rest is not read."""


class DamagedFile(FileCut):
    """A file whose compressed data is corrupt (a CRC that does not match, a bad deflate
    block): what was read before the fault may be garbage too, unlike a truncated file's."""


def _fault(line: int, e: Exception) -> Record:
    """The dead letter that ends a file at ``line``: the records before it are still decided."""
    damaged = isinstance(e, zlib.error) or (
        isinstance(e, gzip.BadGzipFile) and ("CRC" in str(e) or "length" in str(e))
    )
    kind = DamagedFile if damaged else FileCut
    return line, kind(f"cannot read the file on from line {line}: {e}"), None


def gzipped(path: str | os.PathLike[str]) -> bool:
    """Is ``path`` named as a gzip file (``.gz``, any case: a Windows export's ``.CSV.GZ`` was
    read as text, and `fds produce` sent it as one record of garbage, a QA pass)?

    >>> gzipped("EXPORT.CSV.GZ"), gzipped("a.jsonl.gz"), gzipped("a.gzip")
    (True, True, False)
    """
    return os.fspath(path).lower().endswith(".gz")


def open_text(
    path: str | os.PathLike[str], mode: str = "rt", *, encoding: str = "utf-8",
    errors: str | None = None, newline: str | None = None,
) -> IO[Any]:  # fmt: skip
    """Open a text file, transparently gunzipping/gzipping ``*.gz``."""
    enc = None if "b" in mode else encoding
    err = None if "b" in mode else errors
    nl = None if "b" in mode else newline
    if gzipped(path):
        return cast(IO[Any], gzip.open(path, mode, encoding=enc, errors=err, newline=nl))
    return open(path, mode, encoding=enc, errors=err, newline=nl)


def check_transaction_columns(
    path: str | os.PathLike[str], mapping: ColumnMapping | None = None
) -> None:
    """Check, before anything is decided or written, that ``path`` holds transactions as
    ``mapping`` (``None``: none, the file's own names) reads them: a CSV's header, a JSON Lines
    file's first ``JSONL_PROBE`` objects, a Parquet file's schema must have the mapped columns
    and the required fields (every record would be a dead letter otherwise; a replay had
    removed the previous run's output by the time a mapped column was found missing: a QA
    pass). The other header checks of the readers are made here too (a column named twice, a
    header that is not UTF-8, a file that is not Parquet). A :class:`ConfigError` says what is
    wrong and how to fix it. A mapping's ``format:`` that the file's name
    contradicts is refused too (a Parquet file read as CSV was told to save it as UTF-8)."""
    p = Path(path)
    if not p.is_file():
        return  # (a missing file is reported where it is read)
    m = mapping if mapping is not None else ColumnMapping()
    try:
        named = infer_format(p)
    except ConfigError:
        named = None
    if m.format is not None and named is not None and named != m.format:
        at = f" ({m._format_at})" if m._format_at else ""
        raise ConfigError(
            f"the mapping says `format: {m.format}`{at} but {p} is named like a {named} file: "
            "drop `format:` from the mapping (the file name tells the format) or rename the file"
        )
    fmt = m.format or named
    _check_content(p, fmt, declared=m.format is not None)
    if fmt == "jsonl":  # as a mapping's columns are looked for (it read every record before)
        records = _jsonl_records(p)
        try:
            _probe(records, m, p)
        finally:
            records.close()
    elif fmt == "parquet":
        _parquet_open(p, m)[0].close()
    elif fmt == "csv":
        head = csv_header(p, m)
        if head is not None:
            _utf8_read_as(p, m, head.columns)


def _utf8_read_as(p: Path, m: ColumnMapping, columns: Sequence[Any]) -> None:
    """Warn when the header of a file the mapping reads in a one-byte encoding reads as UTF-8:
    a file saved as UTF-8 since, its mapping unchanged (`Gebühr` read as `GebÃ¼hr` with
    `encoding: cp1252`: every such text of it garbled, and the warning named the rule's column
    missing, a README walk)."""
    if not m.encoding or _utf8(m.encoding):
        return
    odd = [str(c) for c in columns if not str(c).isascii()]
    for column in odd:
        try:
            meant = column.encode(m.encoding, "surrogateescape").decode("utf-8")
        except (UnicodeError, LookupError):
            return  # (a byte no UTF-8 has: the file is in its encoding)
        if meant != column:
            log.warning(
                "%s: its header reads as UTF-8 (%r), not as the mapping's `encoding: %s` "
                "(%r): the file is likely saved as UTF-8; leave `encoding:` out of the "
                "mapping (UTF-8 is the default), or each of its texts beyond ASCII is garbled",
                p, meant, m.encoding, column,
            )  # fmt: skip
            return


def _check_content(p: Path, fmt: str | None, declared: bool) -> None:
    """Refuse a file whose first bytes say it is other than its name says: gzip not named
    ``.gz``, Parquet not read as Parquet (both were told "not valid UTF-8, give its encoding",
    advice that led nowhere; a gzip JSON Lines file was read as 2 records: a QA pass)."""
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # (said where it is read)
    if head[:2] == b"\x1f\x8b" and not gzipped(p):
        raise ConfigError(
            f"{p} is gzip-compressed (its first bytes are gzip's) but its name does not end in "
            f".gz: rename it to {p.name}.gz (fds unpacks a .gz file as it reads it)"
        )
    for magic, (kind, ending, unpack) in _OTHER_PACKING.items():
        if head.startswith(magic):
            raise _packed(p, kind, ending, unpack)
    if head == b"PK\x03\x04":
        raise ConfigError(
            f"{p} is a zip archive (its first bytes are zip's), an Excel workbook say: "
            f"{_EXPORT_CSV} (or unzip it)"
        )
    if head == b"PAR1" and fmt != "parquet":
        raise ConfigError(
            f"{p} is a Parquet file (its first bytes are Parquet's) but is read as "
            f"{fmt or 'no known format'}: rename it to {p.stem}.parquet"
            + (" and drop `format:` from the mapping" if declared else "")
        )
    lines = _first_lines(p, 2) if fmt in ("jsonl", "csv") else []
    named = _named_as(p, "jsonl" if fmt == "csv" else "csv")
    fix = f"rename it to {named}" + (" and drop `format:` from the mapping" if declared else "")
    if fmt == "csv" and lines and lines[0][:1] in (b"{", b"["):
        try:
            doc = orjson.loads(lines[0])
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict | list):  # (a QA pass: "required engine field(s) ... map
            raise ConfigError(  # them", the columns listed as '{"tx_id":"t0000000"')
                f"{p} holds JSON (its first line is a JSON "
                f"{'object' if isinstance(doc, dict) else 'array'}) but is read as CSV by its "
                f"name: {fix}"
            )
    if fmt == "jsonl" and len(lines) == 2 and (sep := _csv_like(lines)) is not None:
        raise ConfigError(  # (a QA pass: every row a dead letter, "convert the file")
            f"{p} looks like CSV (its first two lines hold no JSON and as many {sep!r} each) "
            f"but is read as JSON Lines by its name: {fix}"
        )
    first = lines[0] if fmt == "jsonl" and lines else None
    if first is not None and re.search(rb"\}\s*\r\s*\{", first):  # (a QA pass: "cut")
        tr = _convert(p, "tr '\\r' '\\n'", named=False)
        raise ConfigError(
            f"{p} ends its lines with a carriage return alone (a classic Mac file), not a "
            f"newline: convert it, e.g. {tr}"
        )
    lead = first[:1] if first else b""
    one_line = _json_records(first) if lead in (b"[", b"{") and first is not None else None
    if first in (b"[", b"{") or one_line:
        # (each of its lines was a dead letter, then "the file ends inside a record": read
        # as a truncated download, a QA pass; an array on one line, all dead letters, exit 1)
        what = (
            f"{'an array' if lead == b'[' else 'an object holding a list'} of records on "
            "one line" if one_line
            else "one JSON document written over several lines (an array of records, "
            "pretty-printed)" if first == b"["
            else "one JSON document written over several lines (pretty-printed)"
        )  # fmt: skip
        jq = one_line or (".[]" if lead != b"{" else _records_path(p))
        raise ConfigError(
            f"{p} is {what}, not JSON Lines (one record a line): convert it, e.g. "
            + jq_command(p, jq)
        )


def jq_command(p: Path, path: str) -> str:
    """The shell command that writes the records at jq ``path`` of ``p`` one a line, into a
    file beside it."""
    return _convert(p, f"jq -c '{path}'")


def _convert(p: Path, command: str, named: bool = True) -> str:
    """The shell command that converts ``p`` into JSON Lines beside it with ``command`` (given
    the file's name when ``named``, else reading its standard input); a gzip file unpacked
    first (neither jq nor tr reads gzip: a review), the paths quoted for the shell."""
    gz = gzipped(p)
    stem = Path(p.stem).stem if gz else p.stem
    out = p.with_name(f"{stem}.jsonl")
    to = shlex.quote(str(out if out != p else p.with_name(f"{stem}.lines.jsonl")))
    src = shlex.quote(str(p))
    if gz:
        return f"gzip -dc {src} | {command} > {to}"
    return f"{command} {src} > {to}" if named else f"{command} < {src} > {to}"


def _json_records(line: bytes) -> str | None:
    """The jq path of the records when ``line`` is a JSON array of records (objects), ``.[]``,
    or an object of nothing but a list of them, ``.KEY[]`` (``{"transactions": [...]}``);
    else ``None``. (An array of other values, ``[1, 2, 3]``, is a bad record of a JSON Lines
    file, dead-lettered with its content; so is a record that holds a list of objects among
    its fields, ``"items": [{...}]``, whatever its fields are named: a review.)"""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        key = _records_key(doc) if len(doc) == 1 else None
        return f".{key}[]" if key is not None and _JQ_NAME.fullmatch(key) else None
    return ".[]" if _records(doc) else None


def _records(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _records_key(doc: Any) -> str | None:
    """The key of the one list of records that the JSON object ``doc`` holds, if it has one."""
    lists = [k for k, v in (doc.items() if isinstance(doc, dict) else ()) if _records(v)]
    return lists[0] if len(lists) == 1 else None


#: A key jq reads as ``.KEY``.
_JQ_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The largest pretty-printed JSON document read whole to find where its records are.
_DOC_READ = 64 * 2**20


def _records_path(p: Path) -> str:
    """The jq path of the records of the pretty-printed JSON object in ``p``: ``.KEY[]``
    when one of its keys holds a list of objects (``{"transactions": [...]}``: told `.`, one
    record of them all, a QA pass), else ``.`` (the object is a record)."""
    try:
        if p.stat().st_size <= _DOC_READ:
            with open_text(p, "rb") as f:
                key = _records_key(orjson.loads(f.read()))
            if key is not None and _JQ_NAME.fullmatch(key):
                return f".{key}[]"
    except (OSError, orjson.JSONDecodeError, *_FAULTS):
        pass
    return "."


def _first_lines(p: Path, n: int) -> list[bytes]:
    """The first ``n`` lines of ``p`` that are not blank (among its first 1,000), stripped (a
    BOM too); fewer where it has fewer or is unreadable (said where it is read)."""
    got: list[bytes] = []
    try:
        with open_text(p, "rb") as f:
            for line in itertools.islice(f, 1000):
                if line := line.removeprefix(codecs.BOM_UTF8).strip():
                    got.append(bytes(line))
                    if len(got) == n:
                        break
    except (OSError, *_FAULTS):
        pass
    return got


def _csv_like(lines: list[bytes]) -> str | None:
    """The separator of a CSV file whose first lines these are: neither holds JSON (a record
    or an array) and both hold as many of one separator, at least one; else None.

    >>> _csv_like([b"id;ts;amount", b"t1;2026-01-01;1,5"]), _csv_like([b'{"a": 1}', b"x,y"])
    (';', None)
    """
    if any(line[:1] in (b"{", b"[") for line in lines):
        return None
    for sep in (",", ";", "\t", "|"):
        k = lines[0].count(sep.encode())
        if k and all(line.count(sep.encode()) == k for line in lines[1:]):
            return sep
    return None


def _named_as(p: Path, fmt: str) -> str:
    """``p``'s name with the extension of ``fmt`` (a ``.gz`` kept).

    >>> _named_as(Path("x/sim.csv.gz"), "jsonl"), _named_as(Path("bank.jsonl"), "csv")
    ('sim.jsonl.gz', 'bank.csv')
    """
    gz = gzipped(p)
    base = Path(p.name[:-3] if gz else p.name)
    return f"{base.stem}.{fmt}" + (p.name[-3:] if gz else "")


def check_label_columns(
    path: str | os.PathLike[str] | None, mapping: ColumnMapping | None = None
) -> None:
    """:func:`check_transaction_columns` for a ``--labels`` file, read with the ``mapping``'s
    ``labels_file:`` names and ``labels_options:`` (a file of other columns made every label a
    dead letter, and the replay still exited 0: a QA pass). Nothing to check without a file,
    or when the mapping's label column gives the labels (both given: the reader refuses it)."""
    if path is not None and not (mapping is not None and mapping.label):
        check_transaction_columns(path, (mapping or ColumnMapping()).for_labels())


def labels_for(
    file: str | Path, mapping: ColumnMapping | None, given: str | Path | None
) -> Path | None:
    """The labels file read with transactions ``file``: ``given``, else the one the simulator
    wrote beside it (``fds simulate``), unless the mapping's label column gives the labels."""
    if given is not None or (mapping is not None and mapping.label):
        return None if given is None else Path(given)
    from fds.streams.simulator import labels_beside

    return labels_beside(file)


def csv_header(
    path: str | os.PathLike[str], mapping: ColumnMapping | None = None
) -> CsvHead | None:
    """A CSV file's header as the reader reads it (a column without a name as ``column_N``),
    checked as :func:`check_transaction_columns` says; ``None`` for an empty file or one that
    cannot be read (not gzip, say: reading it ends in one dead letter)."""
    p = Path(path)
    m = mapping if mapping is not None else ColumnMapping()
    try:  # (opened as the reader opens it)
        with open_text(p, encoding=m.csv_encoding, errors="surrogateescape", newline="") as f:
            lines = _Lines(f)
            sep, _reader, row = _csv_start(p, lines, m)
    except UnicodeError as e:  # (utf-16 without a byte order mark: a traceback, a QA pass)
        raise ConfigError(
            f"cannot read the file as {m.csv_encoding}: {e}; check `encoding:` in the --mapping",
            where=str(p),
        ) from None
    except _FAULTS:
        return None
    columns = _csv_header(p, row, m, lines.first)
    return None if columns is None else CsvHead(columns, sep, lines.line)


def count_rows(path: str | os.PathLike[str], mapping: ColumnMapping | None = None) -> int | None:
    """The records of a file for a progress bar, by a fast pass over it: a Parquet file's row
    count, a CSV or JSON Lines file's lines (a CSV's header and ``sep=`` line not counted; a
    quoted line break counts one more); ``None`` for a gzip file (a pass would decompress it
    all) or an error.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "t.csv")
    ...     _ = open(p, "w").write("tx_id,ts\\na,1\\nb,2")
    ...     count_rows(p)
    2
    """
    p = Path(path)
    try:
        fmt = infer_format(p, mapping.format if mapping else None)
        if fmt == "parquet":
            return int(_parquet_open(p, None)[0].metadata.num_rows)
        if gzipped(p):
            return None
        lines = last = 0
        with open(p, "rb") as f:
            head = 0  # the header line, and Excel's sep= line before it
            if fmt == "csv":
                head = 1 + (_declared(f.readline(16).decode(errors="replace")) is not None)
                f.seek(0)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1]
        lines += last not in (0, 10)  # (a last line without its line break)
    except (OSError, ConfigError):
        return None
    return max(0, lines - head)


#: Why a path that exists is not read as a file, and what to do (the pipe of ``<(...)`` or
#: /dev/stdin was said "not found": a QA pass). The readers read a file more than once (its
#: columns checked, its lines counted for the progress bar, then read).
PIPE = (
    "is a pipe or a device, not a file: fds reads it more than once (its columns checked, "
    "then read): write it to a file first, e.g. `cat ... > records.jsonl`"
)


def file_error(path: str | os.PathLike[str], what: str) -> str | None:
    """Why ``path`` cannot be read as the regular file ``what`` names (``None``: it can).

    >>> file_error("/nonexistent.csv", "input file")
    'input file not found: /nonexistent.csv'
    >>> file_error("/", "input file")
    'input file / is a folder: give a file in it'
    """
    p = Path(path)
    if p.is_file():
        return None
    if not p.exists():
        return f"{what} not found: {p}"
    return f"{what} {p} " + ("is a folder: give a file in it" if p.is_dir() else PIPE)


def read_records(
    path: str | os.PathLike[str], fmt: str | None = None, mapping: ColumnMapping | None = None
) -> Iterator[Record]:
    """Yield ``(line, record | error, raw text)`` for each record of a CSV or JSONL file.

    A line that is not valid JSON yields the error instead of a dict (it becomes a dead
    letter); empty CSV cells are treated as missing.
    """
    p = Path(path)
    if (problem := file_error(p, "input file")) is not None:
        raise ConfigError(problem)
    fmt = infer_format(p, fmt or (mapping.format if mapping else None))
    if fmt == "parquet":
        yield from _read_parquet(p, mapping)
    elif fmt == "csv":
        yield from _read_csv(p, mapping)
    else:
        yield from _read_jsonl(p, mapping)


#: JSON Lines records looked at (held in memory) for one whose keys the mapping's required
#: columns are in: a mapping that fits none of the objects among them is wrong (a
#: :class:`ConfigError`, nothing decided); records before the first that fits are decided
#: (dead letters when they lack a field).
JSONL_PROBE = 1000


def _read_jsonl(p: Path, mapping: ColumnMapping | None) -> Iterator[Record]:
    if mapping is not None and mapping.encoding and not _utf8(mapping.encoding):
        # Not applied: JSON Lines is UTF-8 by definition (RFC 8259), and what fds produce
        # sends from it to Kafka is read as UTF-8 there (a Latin-1 file replayed as such
        # would be refused by fds run); so said, once a file (it was silently unused: a QA)
        log.warning(
            "%s: the mapping's `encoding: %s` is not used for JSON Lines, which is read as "
            "UTF-8 (it is a CSV's, a --labels CSV's too): convert the file if it is not UTF-8, "
            "e.g. %s",
            p, mapping.encoding, _to_utf8(p, mapping.encoding),
        )  # fmt: skip
    records = _jsonl_records(p)
    if mapping is None:
        yield from records
        return
    for n, r, raw in itertools.chain(_probe(records, mapping, p), records):
        yield mapping.record(n, r) if isinstance(r, dict) else (n, r, raw)


def _probe(records: Iterator[Record], mapping: ColumnMapping, p: Path) -> list[Record]:
    """The first records of a JSON Lines file (at most ``JSONL_PROBE``), up to the first
    object whose keys hold the mapping's required columns; a :class:`ConfigError` when there
    were objects among them and none did (with none, there is nothing to judge: the records
    are decided, dead letters when they lack a field)."""
    held: list[Record] = []
    wrong: ConfigError | None = None
    for rec in records:
        held.append(rec)
        n, r, _raw = rec
        if isinstance(r, dict):
            try:
                mapping.check_columns(list(r), where=f"{p}:{n}", first_record=r, file=p)
                return held
            except ConfigError as e:
                wrong = wrong or e
        if len(held) >= JSONL_PROBE:
            break
    if wrong is not None:
        more = f"; nor has any record up to line {held[-1][0]}" if len(held) > 1 else ""
        raise ConfigError(f"{wrong}{more}")
    return held


def _utf8(encoding: str) -> bool:
    """Is ``encoding`` a name of UTF-8 (``utf8``, ``UTF-8``, ``utf-8-sig``)?"""
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def beside(p: Path, tag: str) -> Path:
    """Where a command that rewrites file ``p`` writes it: ``tag`` before its extension, a
    ``.gz`` dropped (the rewrite is plain).

    >>> str(beside(Path("d/a.csv.gz"), "sorted")), str(beside(Path("a"), "utf8"))
    ('d/a.sorted.csv', 'a.utf8')
    """
    name = p.name[:-3] if gzipped(p) else p.name
    stem, dot, ext = name.rpartition(".")
    return p.with_name(f"{stem}.{tag}.{ext}" if dot else f"{name}.{tag}")


def _to_utf8(p: Path, encoding: str = "latin1") -> str:
    """A command that writes JSON Lines file ``p`` (in ``encoding``) as UTF-8 beside it."""
    out = shlex.quote(str(beside(p, "utf8")))
    src = shlex.quote(str(p))
    iconv = f"iconv -f {shlex.quote(encoding)} -t utf-8"
    return f"zcat {src} | {iconv} > {out}" if gzipped(p) else f"{iconv} {src} > {out}"


def _not_utf8(p: Path) -> str:
    """The reason of a JSON Lines line that is not UTF-8 (the same for each: counted alike)."""
    return (
        "not UTF-8 (raw shows the bytes that are not as \\xNN): a JSON Lines file is read as "
        f"UTF-8; convert it, e.g. {_to_utf8(p)} (latin1, or the file's own encoding: cp1252 "
        "from Windows)"
    )


def _jsonl_records(p: Path) -> Generator[Record, None, None]:
    not_utf8 = ""  # the reason of a line that is not UTF-8, made once
    with open_text(p, "rb") as f:
        n = 0
        try:
            for n, line in enumerate(f, 1):
                if n == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)  # written by some Windows tools
                if not line.endswith(b"\n"):  # (the last line: DOS's end-of-file mark, Ctrl-Z,
                    line = line.rstrip(b"\x1a")  # after its record made it "cut": a QA pass)
                if line.strip() in (b"", b"\x1a"):  # (a blank line; a Ctrl-Z line, as in a CSV)
                    continue
                try:
                    yield n, orjson.loads(line), None
                except orjson.JSONDecodeError as e:
                    try:
                        raw: str | bytes = line.decode()
                    except UnicodeDecodeError:  # (dead_letter escapes what is not UTF-8)
                        # (orjson's "str is not valid UTF-8: surrogates not allowed" said
                        # neither that nor what to do: a QA pass)
                        yield n, ValueError(not_utf8 or (not_utf8 := _not_utf8(p))), line
                        continue
                    if not line.endswith(b"\n"):  # the last line, cut inside its record: the
                        # file was cut short (a truncated download sent it on, exit 0: a README
                        # walk; a .gz cut so was an error already)
                        yield n, FileCut(f"the file ends inside the record of line {n}: {e}"), raw
                        continue
                    yield n, ValueError(not_json(raw, e)), raw
        except _FAULTS as e:
            yield _fault(n + 1, e)


class _Lines:
    """A text file's lines for :func:`csv.reader`, numbered, keeping those of the record
    being read so that a record found to be a runaway quote can be read again as rows."""

    __slots__ = ("_again", "_file", "line", "record")

    def __init__(self, f: Iterator[str]) -> None:
        self._file = f
        self._again: list[str] = []  # lines to hand out again, the next one last
        self.line = 0  # the number of the last line handed out
        self.record: list[str] = []  # the lines handed out since it was last cleared

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._again.pop() if self._again else next(self._file)
        self.line += 1
        self.record.append(line)
        return line

    @property
    def first(self) -> int:
        """The number of the first line of the record being read."""
        return self.line - len(self.record) + 1

    def read_again(self, lines: list[str]) -> None:
        """Hand out ``lines`` again, as the next ones; clear the record."""
        self._again.extend(reversed(lines))
        self.line -= len(lines)
        self.record.clear()

    def fail_after_again(self, e: Exception) -> None:
        """Raise ``e`` (the file cannot be read on) once the lines read again are handed out."""

        def fail() -> str:
            raise e

        self._file = iter(fail, None)


def _fits(row: list[str], width: int, named: int) -> bool:
    """Whether ``row`` is a row of the header's ``width``, or one the reader mends: empty
    cells past the last column (Excel writes them), or the cells of the unnamed last columns
    (those after the ``named`` first) left out."""
    n = len(row)
    return n == width or (n > width and not "".join(row[width:]).strip(" ")) or named <= n < width


@functools.cache
def _spaces_after_quote(sep: str) -> re.Pattern[str]:
    """Spaces between a closing quote and the next separator (or the line's end): a
    hand-written CSV's `"Main St" , 5`, which the strict re-read below would take for a quote
    left open."""
    return re.compile(rf'" +(?={re.escape(sep)}|\r?\n|\r|$)')


def _runaway(
    record: list[str], row: list[str] | None, width: int, named: int, sep: str = ","
) -> bool:
    """Whether a record over several lines is a quote left open that ran over whole rows.

    It is when it is not a well-formed row (:func:`_fits`; ``row`` is None when it ran over
    the field limit) and a line after its first is a row of its own: ``width`` fields, read
    alone, with its quotes closed on it (a row quoting its text cells, as most exports do:
    the quote left open on the line before swallowed it into its cell, a row lost without a
    dead letter, a review).
    """
    if row is not None and _fits(row, width, named) and _one_record(record, sep):
        return False  # a quoted field over several lines (a valid trailing cell or a space
        # after its quote read as a quote left open, a phantom row decided: a QA pass)
    # (a row of its own as the reader mends it: Excel's trailing empty cell made every later
    # row look like none, and the quote swallowed the rest of the file, a review)
    return any(_own_row(s, width, named, sep) for s in record[1:])


def _own_row(line: str, width: int, named: int, sep: str) -> bool:
    """Whether ``line`` read alone is a row of the header's ``width`` (:func:`_fits`) whose
    quotes close on it.

    >>> _own_row('t3,5,"Shop"\\n', 3, 3, ","), _own_row('t3,"5,x",c\\n', 3, 3, ",")
    (True, True)
    >>> _own_row('Bar"\\n', 3, 3, ","), _own_row('t3,5,"open\\n', 3, 3, ",")
    (False, False)
    """
    if '"' not in line:
        return _fits(line.rstrip("\r\n").split(sep), width, named)
    tidy = _spaces_after_quote(sep).sub('"', line)
    try:
        rows = list(csv.reader([tidy], strict=True, skipinitialspace=True, delimiter=sep))
    except csv.Error:
        return False
    return len(rows) == 1 and _fits(rows[0], width, named)


def _open_quote_hint(row: list[str], width: int, sep: str) -> str:
    """Why a row may have too few columns: a cell holding the separator is a quote that ran
    to the end of the row (a stray quote on a file's last line was only "expected 9 columns,
    found 2": a README walk).

    >>> _open_quote_hint(["t9", "2026-01-01,5,c1"], 5, ",")
    ' (a quote opened in column 2 is not closed: its cell runs to the end of the row)'
    >>> _open_quote_hint(["t9", "a"], 5, ",")
    ''
    """
    if len(row) < width:
        for i, cell in enumerate(row):
            if sep in cell or "\n" in cell:
                return (
                    f" (a quote opened in column {i + 1} is not closed: its cell runs to the "
                    "end of the row)"
                )
    return ""


def _quotes_closed(line: str, sep: str = ",") -> bool:
    """Whether every quoted field of ``line`` closes on it, as the reader reads quotes: one
    opens a field only at its start (after spaces), ``""`` inside is a quote, and what follows
    the closing quote up to the next separator ``sep`` belongs to the field. (A count of
    quotes took a literal quote in an unquoted cell and an open one for closed: a review.)

    >>> _quotes_closed('t1,5" screen,"a ""b"" c",x'), _quotes_closed('t1,5" screen,"open')
    (True, False)
    """
    s, i = line.rstrip("\r\n"), 0
    while True:
        while s.startswith(" ", i):
            i += 1
        if s.startswith('"', i):
            j = i + 1
            while (k := s.find('"', j)) >= 0 and s.startswith('"', k + 1):
                j = k + 2  # (an escaped quote)
            if k < 0:
                return False
            i = k + 1
        c = s.find(sep, i)
        if c < 0:
            return True
        i = c + 1


def _one_record(record: list[str], sep: str = ",") -> bool:
    """Whether ``record``'s lines read strictly as one CSV record: every quote closed before a
    separator or the end of a line (spaces between them aside), not by the end of the file or
    by a quote that opens a later field."""
    tidy = [_spaces_after_quote(sep).sub('"', s) for s in record]
    try:
        next(csv.reader(tidy, strict=True, skipinitialspace=True, delimiter=sep))
    except csv.Error:
        return False
    return True


def _cut_in(record: list[str], row: list[str], width: int, named: int, sep: str) -> str:
    """Why the file's last record, whose ``record`` lines end with no line break, was cut
    short: a quote left open (its cell read to the end of the file) or too few columns; ``""``
    for a whole one.

    >>> _cut_in(['t2,5,"b\\n', "more"], ["t2", "5", "b\\nmore"], 3, 3, ",")
    'a quote left open (its cell runs to the end of the file)'
    >>> _cut_in(["t3,2026-05"], ["t3", "2026-05"], 3, 3, ","), _cut_in(["t3,5,c"], [], 3, 3, ",")
    ('expected 3 columns, found 2', '')
    """
    if row and row != ["\x1a"]:
        if not _fits(row, width, named):
            return f"expected {width} columns, found {len(row)}"
        if not _quotes_closed("".join(record), sep):  # (as leniently as a row in the file:
            # `"Main St"\t` was refused strictly, a review)
            return "a quote left open (its cell runs to the end of the file)"
    return ""


def _read_csv(p: Path, mapping: ColumnMapping | None) -> Iterator[Record]:
    # utf-8-sig: a byte-order mark is not part of the first column's name; surrogateescape:
    # a byte that is not UTF-8 makes its row a dead letter, not the end of the replay.
    enc = mapping.csv_encoding if mapping is not None else "utf-8-sig"
    # newline="": a quoted field's line breaks as written (`\r\n` in an Excel cell became `\n`)
    with open_text(p, "rt", encoding=enc, errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        try:
            yield from _csv_records(p, lines, mapping)
        except _FAULTS as e:
            yield _fault(lines.first, e)


def _first_row(p: Path, reader: Any, lines: _Lines, sep: str = ",") -> list[str] | None:
    """A CSV file's first row, its header; refused when a quote left open in it ran on over
    the rows (they were swallowed into one column name, without a dead letter: a QA pass; a
    balanced name over two lines, Excel's `"Notes\n(internal)"`, is a name)."""
    row = next(reader, None)
    if len(lines.record) > 1 and not _one_record(lines.record, sep):
        raise ConfigError(
            f"the header leaves a quote open (it runs on to line {lines.line}): close it",
            where=f"{p}:{lines.first}",
        )
    return row


def _csv_header(
    p: Path, row: list[str] | None, mapping: ColumnMapping | None, line: int
) -> list[str] | None:
    """A CSV file's column names from its first ``row``, on ``line`` (``None``: an empty
    file), checked: UTF-8, no name twice, the ``mapping``'s columns there."""
    if row is None:
        return None
    where = f"{p}:{line}"
    header = [c.strip(" ") for c in row]  # (as a cell's: spaces only)
    if header:  # (an explicit `encoding: utf-8` keeps a byte order mark: utf-8-sig does not)
        header[0] = header[0].lstrip("\ufeff")
    if _UNDECODABLE.search("".join(header)):
        bom16 = header[0][:2] in ("\udcff\udcfe", "\udcfe\udcff")  # UTF-16's byte order mark
        raise ConfigError(
            "the header is not valid UTF-8: save the file as UTF-8, or give its encoding in the "
            "--mapping ("
            + ("it starts as UTF-16 does: encoding: utf-16" if bom16 else "e.g. encoding: cp1252")
            + ")",
            where=where,
        )
    # a column without a name is named by its position (Excel's trailing commas were refused as
    # "'' appears more than once; rename them", a QA pass; pandas writes its index unnamed), a
    # name the file gives another column taken further (column_3_; it was "appears twice")
    given = set(header)
    for i, c in enumerate(header):
        if not c:
            name = f"column_{i + 1}"
            while name in given:
                name += "_"
            header[i] = name
            given.add(name)
    twice = sorted(c for c, n in Counter(header).items() if n > 1)  # (header.count per
    # column: 100,000 columns took 194 s before the first row, a QA pass)
    if twice:
        raise ConfigError(f"column name(s) {twice} appear more than once; rename them", where=where)
    if mapping is not None:
        mapping.check_columns(header, where=where)
    return header


def _csv_records(p: Path, lines: _Lines, mapping: ColumnMapping | None) -> Iterator[Record]:
    # skipinitialspace: `t1, "Main St, 5", c1` as written by hand is three fields; the spaces
    # around a column name are not part of it (ids lose theirs in the schema)
    sep, reader, first = _csv_start(p, lines, mapping)
    header = _csv_header(p, first, mapping, lines.first)
    if first is None or header is None:
        return
    width = len(header)
    # the columns up to the last one with a name of its own (the rest: Excel's trailing commas)
    named = next((i for i in range(width, 0, -1) if first[i - 1].strip(" \ufeff")), 0)
    # A column named `extra`: text, where a transaction's `extra` is an object; it arrives in
    # `extra` under its own name, as any other column (every row was a dead letter, and a
    # mapping cannot rename it: a review)
    own_extra = "extra" in header
    label_column = mapping.label.column if mapping is not None and mapping.label else None
    undecodable = (  # (120 of 200 rows of an Excel export were dead letters with no hint)
        f"not valid {mapping.encoding}"
        if mapping is not None and mapping.encoding
        else "not valid UTF-8 (another encoding? give it in the --mapping: encoding: cp1252)"
    )
    record = lines.record  # the lines of the record just read
    record.clear()
    while True:  # the for loop ends at the end of the file, or breaks for a quote left open
        try:
            for row in reader:
                n = lines.line - len(record) + 1  # lines.first, inlined: this is the hot path
                if len(record) > 1 and _runaway(record, row, width, named, sep):
                    break
                cut = record[-1][-1] not in "\r\n" and _cut_in(record, row, width, named, sep)
                text = "".join(record) if cut else ""
                record.clear()
                if not row or row == ["\x1a"]:  # a blank line; DOS's end-of-file mark (Ctrl-Z,
                    continue  # 0x1A) on a line of its own: a dead letter before, a QA pass
                if width > 1 and len(row) == 1 and not row[0].strip():  # spaces alone, skipped
                    continue  # as in JSON Lines (a dead letter here: a QA pass)
                if cut:  # (decided as it was, or a dead letter, exit 0: a QA pass)
                    why = FileCut(f"the file ends inside the record of line {n}: {cut}")
                    yield n, why, _text_or_bytes(text)
                    continue
                error = None
                if _UNDECODABLE.search("".join(row)):
                    error = ValueError(undecodable)
                elif len(row) != width:
                    if not _fits(row, width, named):
                        error = ValueError(f"expected {width} columns, found {len(row)}"
                                           + _open_quote_hint(row, width, sep))  # fmt: skip
                    elif len(row) > width:
                        del row[width:]  # empty cells past the last column (Excel writes them)
                    else:  # the cells of unnamed last columns left out
                        row += [""] * (width - len(row))
                if error is not None:
                    raw = io.StringIO()
                    csv.writer(raw, delimiter=sep, lineterminator="").writerow(row)  # (no \r\n)
                    yield n, error, _text_or_bytes(raw.getvalue())
                    continue
                # (the spaces around a cell are no part of it: " c1" was a card of its own, a
                # QA pass; a quoted field's line breaks are)
                rec = {k: v for k, c in zip(header, row, strict=True) if (v := c.strip(" "))}
                if own_extra and "extra" in rec:
                    own: dict[str, Any] = rec
                    if label_column != "extra" and not (
                        mapping is not None
                        and ("extra" in mapping.fields.values() or rec["extra"] in mapping.missing)
                    ):  # (not when a mapping reads it or it is missing) in `extra` before the
                        own = {**rec, "extra": {"extra": rec["extra"]}}  # mapping moves a
                        # column there too
                    yield mapping.record(n, own, rec) if mapping is not None else (n, own, rec)
                    continue
                yield mapping.record(n, rec) if mapping is not None else (n, rec, None)
            else:
                return
        except csv.Error as e:  # a field over _FIELD_LIMIT: a quote left open, or else a fault
            if len(record) == 1 and "field limit" in str(e) and _quotes_closed(record[0], sep):
                # a row of one line over the limit (its quotes closed there): its dead letter,
                # and the rows after it are read on (they were not read at all: a QA pass)
                yield lines.first, ValueError(f"a field of this row is too long: {e}"), (
                    _text_or_bytes(record[0])
                )  # fmt: skip
                record.clear()
                continue
            if not _runaway(record, None, width, named, sep):
                raise
        except _FAULTS as e:  # the file ends in a fault inside a quote left open: the rows it
            # ran over are read again before the fault is said (the fault was said at the
            # quote's line, ~17,900 sound rows of a cut .gz after it neither decided nor dead
            # letters, a QA pass)
            if len(record) < 2 or not _runaway(record, None, width, named, sep):
                raise
            lines.fail_after_again(e)
        n, m = lines.first, lines.line
        reason = (
            f"unbalanced quote from line {n} to {m}; "
            f"the lines after line {n} are read again as rows"
        )
        yield n, ValueError(reason), _text_or_bytes(record[0])
        lines.read_again(record[1:])


def _parquet_open(p: Path, mapping: ColumnMapping | None) -> tuple[Any, Any]:
    """A Parquet file and its batches, checked: readable, the ``mapping``'s columns there."""
    try:
        import pyarrow.parquet as pq  # optional: only parquet users need it
    except ImportError:
        raise ConfigError(
            "reading parquet needs pyarrow: pip install 'fds[parquet]' (or pip install pyarrow)"
        ) from None
    import pyarrow as pa

    try:  # read a batch at a time (a whole table as dicts: ~800 MB for 1M rows of 15 MB)
        f = pq.ParquetFile(p)
        batches = f.iter_batches(batch_size=PARQUET_BATCH)
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(f"{p} is not a readable parquet file: {e}") from None
    if mapping is not None:
        try:
            structs = [x.name for x in f.schema_arrow if pa.types.is_struct(x.type)]
            mapping.check_columns(f.schema_arrow.names, where=str(p), objects=structs)
        except ConfigError:
            f.close()
            raise
    return f, batches


def _as_sent(v: Any) -> Any:
    """A Parquet value as it reaches the rules from a file and from Kafka alike: as `fds
    produce` sends it, JSON (a decimal fee in `extra` made a rule raise in a replay, "not a
    number: Decimal", and was "2.50" over Kafka; nested in a struct or a list too); a type
    JSON has no form for, as its text (a duration column crashed the replay: a QA pass)."""
    try:
        return orjson.loads(dumps(v))
    except TypeError:
        return str(v)


def _as_sent_columns(schema: Any, ts_col: str) -> frozenset[str]:
    """The columns of an Arrow ``schema`` whose values :func:`_as_sent` converts: all except
    text, numbers, booleans and the timestamp column read as ``ts`` (its naive datetimes are
    read in the mapping's zone; a date column there is converted to text, which both paths
    read in the zone)."""
    import pyarrow as pa

    plain = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer,
             pa.types.is_floating, pa.types.is_boolean, pa.types.is_null)  # fmt: skip
    return frozenset(
        f.name for f in schema
        if not any(is_(f.type) for is_ in plain)
        and not (f.name == ts_col and pa.types.is_timestamp(f.type))
    )  # fmt: skip


def _read_parquet(p: Path, mapping: ColumnMapping | None) -> Iterator[Record]:
    import pyarrow as pa

    f, batches = _parquet_open(p, mapping)
    ts_col = (mapping.fields.get("ts") if mapping is not None else None) or "ts"
    convert = _as_sent_columns(f.schema_arrow, ts_col)
    n = 0
    with contextlib.closing(f):
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:
                raise ConfigError(f"{p}: cannot read the rows after row {n}: {e}") from None
            if batch is None:
                return
            rows, bad = _pylist(_microseconds(batch))
            for i, rec in enumerate(rows):
                n += 1
                # a float column's NaN is its missing value, as a null (a device_id of NaN
                # was the text "nan": one device shared by every row without one, a QA pass)
                rec = {k: v for k, v in rec.items() if v is not None and v == v}
                for k in convert & rec.keys() if convert else ():
                    rec[k] = _as_sent(rec[k])
                if bad and i in bad:
                    column, text, why = bad[i]
                    yield n, ValueError(why), {**rec, column: text}
                else:
                    yield mapping.record(n, rec) if mapping is not None else (n, rec, None)


def _pylist(batch: Any) -> tuple[list[dict[str, Any]], dict[int, tuple[str, str, str]]]:
    """The rows of an Arrow ``batch`` as dicts, and the rows holding a value Python cannot
    hold (a timestamp or date past the year 9999: ``{row: (column, the value as its stored
    number, why)}``, that value ``None`` in its row). Such a value made ``to_pylist`` raise
    for the whole batch: the replay ended there, the rest of the file neither decided nor
    dead-lettered (a QA pass); now its row is a dead letter and its neighbours are decided."""
    import pyarrow as pa

    try:
        return batch.to_pylist(), {}
    except (OverflowError, ValueError):
        pass
    names, cols = batch.schema.names, []
    bad: dict[int, tuple[str, str, str]] = {}
    for name, col in zip(names, batch.columns, strict=True):
        try:
            cols.append(col.to_pylist())
            continue
        except (OverflowError, ValueError):
            pass
        values = []
        t = col.type
        dated = pa.types.is_timestamp(t) or pa.types.is_date(t)
        for i in range(len(col)):
            try:
                values.append(col[i].as_py())
            except (OverflowError, ValueError) as e:
                values.append(None)
                stored = _stored_number(col.slice(i, 1))
                why = f"{e}: past the years 1-9999" if dated else str(e)
                text = f"{name}: the {t} value {stored} has no Python value ({why})"
                bad.setdefault(i, (name, f"{stored} ({t})", text))
        cols.append(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)], bad


def _stored_number(cell: Any) -> Any:
    """The number an Arrow temporal ``cell`` (an array of one) stores (its ticks or days)."""
    import pyarrow as pa

    try:
        return cell.view(pa.int64() if cell.type.bit_width == 64 else pa.int32())[0].as_py()
    except (pa.ArrowException, ValueError):  # (not a fixed-width type)
        return "?"


def _microseconds(batch: Any) -> Any:
    """``batch`` with nanosecond timestamps, times and durations cut to microseconds (what
    a ``datetime``, a ``time`` and a ``timedelta`` hold: a sub-microsecond value made
    ``to_pylist`` raise without pandas; a pandas Timedelta column is ``duration[ns]``, a
    review)."""
    import pyarrow as pa

    def micro(t: Any) -> Any:
        if getattr(t, "unit", None) != "ns":
            return None
        if pa.types.is_timestamp(t):
            return pa.timestamp("us", t.tz)
        if pa.types.is_time64(t):  # (a time of day: a review)
            return pa.time64("us")
        return pa.duration("us") if pa.types.is_duration(t) else None

    if not any(micro(t) for t in batch.schema.types):
        return batch
    cols = [c if (to := micro(c.type)) is None else c.cast(to, safe=False) for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


class JsonlSink:
    """Append records as JSON lines to a file (gzip when ``*.gz``), opened on first write, or at
    once with ``eager`` (an empty file when nothing is written)."""

    def __init__(self, path: str | os.PathLike[str], *, eager: bool = False) -> None:
        self.path = Path(path)
        self.count = 0
        self._f: IO[bytes] | None = None
        self._failed: FdsError | None = None  # (a write refused: the file is not opened again)
        if eager:
            self._open()

    def _open(self) -> IO[bytes]:
        if self._failed is not None:  # (opened again, "wb" emptied what it held before the
            raise self._failed  # failure: a replay's dead letters past a full disk, a QA pass)
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open_text(self.path, "wb")
        return self._f

    def write(self, record: Any) -> None:
        try:
            self._open().write(dumps_line(record))
        except OSError as e:
            raise self._cut(e) from None
        self.count += 1

    def flush(self) -> None:
        if self._f is not None:
            try:
                self._f.flush()
            except OSError as e:
                raise self._cut(e) from None

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError as e:
                raise self._cut(e) from None
            self._f = None

    def _cut(self, e: OSError) -> FdsError:
        """The error of a write the system refused (a full disk), the file cut back to its
        last whole line (a torn last line failed every JSON reader of it: a QA pass)."""
        f, self._f = self._f, None
        if f is not None:
            with contextlib.suppress(OSError):  # (what it still buffers cannot be written)
                f.close()
        kept = "its end may be cut" if self.path.is_file() else "not all were written"
        if self.path.is_file() and not gzipped(self.path):
            with contextlib.suppress(OSError), open(self.path, "r+b") as g:
                size = g.seek(0, os.SEEK_END)
                end = size
                while end > 0:  # (the last newline, read back in chunks)
                    start = max(0, end - (1 << 16))
                    g.seek(start)
                    i = g.read(end - start).rfind(b"\n")
                    if i >= 0:
                        end = start + i + 1
                        break
                    end = start
                g.truncate(end)
                g.seek(0)
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: g.read(1 << 20), b""))
                kept = f"it holds {lines:,} whole line(s) (a line cut short removed)"
        self._failed = FdsError(
            f"cannot write {self.path}: {describe(e)}; {self.count:,} record(s) were given to it "
            f"and {kept}: free space (or give another path) and run it again"
        )
        return self._failed

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        except FdsError as then:  # (said with the failure that ended the block, if one did)
            raise also(exc, then) from None
