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

from datetime import timezone, tzinfo
from typing import Any, Literal

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fds.errors import ValidationError
from fds.timeutil import parse_ts

__all__ = [
    "TX_FIELDS",
    "Decision",
    "Label",
    "RuleHit",
    "Transaction",
    "dead_letter",
    "dumps",
    "loads",
    "parse_label",
    "parse_transaction",
]

Action = Literal["approve", "review", "decline"]


class Transaction(BaseModel):
    """One payment or transfer (input). Unknown top-level keys are moved into ``extra``."""

    model_config = ConfigDict(extra="allow")

    tx_id: str = Field(min_length=1)
    ts: float | str = Field(description="ISO 8601 with offset, or epoch seconds / milliseconds")
    card_id: str = Field(min_length=1)
    amount: float = Field(gt=0, allow_inf_nan=False)
    currency: str | None = None
    merchant_id: str | None = None
    mcc: str | None = None
    country: str | None = None
    channel: str | None = None
    device_id: str | None = None
    ip: str | None = None
    customer_id: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    extra: dict[str, Any] = Field(default_factory=dict)


class Label(BaseModel):
    """Fraud feedback for a transaction; arrives late."""

    tx_id: str = Field(min_length=1)
    ts: float | str = Field(description="when the label became known")
    is_fraud: bool
    source: str | None = Field(default=None, description="chargeback | analyst | customer")


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
TX_FIELDS: frozenset[str] = frozenset(Transaction.model_fields)
_CODE_IDS = ("card_id", "merchant_id", "mcc", "device_id", "customer_id", "tx_id")

loads = orjson.loads


def dumps(obj: Any) -> bytes:
    """Serialise a record as compact JSON (UTF-8, no trailing newline)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _reason(err: pydantic.ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "record"
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        parts.append(f"{loc}: {e['msg']}{got}")
    return "; ".join(parts)


def _coerce_ids(raw: dict[str, Any]) -> dict[str, Any]:
    # Identifier columns often arrive as numbers (CSV exports, simulators); the contract is str.
    for k in _CODE_IDS:
        v = raw.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            raw = {**raw, k: str(v)}
    return raw


def parse_transaction(raw: Any, tz: tzinfo = timezone.utc) -> dict[str, Any]:
    """Validate one raw record (a dict) into a transaction dict with ``ts`` in epoch seconds.

    Raises :class:`fds.errors.ValidationError` with a readable reason.
    """
    if not isinstance(raw, dict):
        raise ValidationError(f"a transaction must be a JSON object, got {type(raw).__name__}")
    try:
        m = Transaction.model_validate(_coerce_ids(raw))
    except pydantic.ValidationError as e:
        raise ValidationError(_reason(e)) from None
    tx = m.__dict__.copy()
    if m.__pydantic_extra__:
        tx["extra"] = {**tx["extra"], **m.__pydantic_extra__}
    try:
        tx["ts"] = parse_ts(tx["ts"], tz)
    except ValueError as e:
        raise ValidationError(f"ts: {e}") from None
    return tx


def parse_label(raw: Any, tz: tzinfo = timezone.utc) -> dict[str, Any]:
    """Validate one raw label record into a dict with ``ts`` in epoch seconds."""
    if not isinstance(raw, dict):
        raise ValidationError(f"a label must be a JSON object, got {type(raw).__name__}")
    try:
        m = Label.model_validate(_coerce_ids(raw))
    except pydantic.ValidationError as e:
        raise ValidationError(_reason(e)) from None
    lab = m.__dict__.copy()
    try:
        lab["ts"] = parse_ts(lab["ts"], tz)
    except ValueError as e:
        raise ValidationError(f"ts: {e}") from None
    return lab


def dead_letter(
    *, stage: str, error: BaseException, raw: Any, source: str, position: Any
) -> dict[str, Any]:
    """A dead-letter record: ``{stage, error, reason, raw, source, position}``.

    ``raw`` is kept as text when it is bytes so that nothing is lost.
    """
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", errors="backslashreplace")
    return {
        "stage": stage,
        "error": type(error).__name__,
        "reason": str(error),
        "raw": raw,
        "source": source,
        "position": position,
    }
