"""Structured logging: ``key="value"`` lines (or JSON) with partition/offset/tx context.

Every fds log line is one record with a message and context fields::

    ts="2026-11-22T01:40:00.123Z" level="warning" logger="fds.engine" msg="rule demoted"
    rule="decline_all" rate="0.97"

(one line in the output, wrapped here).

Personal data never reaches a log line. fds logs tx ids, partitions, offsets, rule ids, model
versions, stages and error classes; it never logs card numbers, card ids, customer ids, device
ids, IPs, coordinates or raw records. Two nets catch mistakes:

* a context key in :data:`SENSITIVE_KEYS` is written as ``"<redacted>"``;
* any run of 13-19 digits (optionally split by spaces or dashes) that passes the Luhn check,
  i.e. the shape of a card number, in a message or value is masked, keeping the last four
  digits: ``************1111``.

Examples
--------
>>> import io, logging
>>> buf = io.StringIO()
>>> log = configure_logging("INFO", fmt="kv", stream=buf, logger_name="fds.doctest")
>>> log_event(log, "dead letter", stage="parse", partition="tx[3]", offset=1200,
...           card_id="c-17", error="card 4111 1111 1111 1111 rejected")
>>> line = buf.getvalue()
>>> 'msg="dead letter" stage="parse" partition="tx[3]" offset="1200"' in line
True
>>> 'card_id="<redacted>"' in line, "4111 1111" in line, "************1111" in line
(True, False, True)
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import orjson

__all__ = [
    "SENSITIVE_KEYS",
    "JsonFormatter",
    "KeyValueFormatter",
    "configure_logging",
    "log_event",
    "redact",
    "say",
]

#: Context keys whose values are personal data (or may carry it): never written to logs.
SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "card_id",
        "card",
        "card_number",
        "pan",
        "customer_id",
        "device_id",
        "ip",
        "lat",
        "lon",
        "raw",
        "record",
        "email",
        "phone",
        "name",
    }
)

#: A card number: 13 to 19 digits (ISO/IEC 7812 lengths), possibly grouped by spaces/dashes.
_PAN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")

#: Attribute of a LogRecord holding the context dict that log_event passes.
_CTX = "fds_ctx"

#: Standard LogRecord attributes: anything else in record.__dict__ came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    _CTX,
}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    if not _luhn_ok(digits):  # card numbers carry a Luhn check digit; epoch-ms stamps rarely do
        return m.group(0)
    return "*" * (len(digits) - 4) + digits[-4:]


def redact(text: str) -> str:
    """Mask anything shaped like a card number, keeping its last four digits.

    A run of 13-19 digits (spaces or dashes allowed between them) that passes the Luhn check is
    masked; other numbers (offsets, epoch-ms timestamps that fail Luhn) are left alone.

    >>> redact("pan=5500-0000-0000-0004 amount=12.5 tx=1234567 ts=1732240000001")
    'pan=************0004 amount=12.5 tx=1234567 ts=1732240000001'
    """
    return _PAN.sub(_mask, text)


# A message that ends in ``key="value"`` pairs (how fds's log calls write their context):
# the text before them, and the pairs. Values are written as they are (no escapes), so a value
# holds no quote; a longer message is left whole (the pattern backtracks on long ones).
_TRAILING_PAIRS = re.compile(r'^(.*?)((?:\s+\w+="[^"]*")+)\s*$', re.DOTALL)
_PAIR = re.compile(r'(\w+)="([^"]*)"')
_SPLIT_MAX = 2000
_FIELDS = ("ts", "level", "logger", "msg")  # every line's own fields
_PLAIN = "_fds_plain"  # a record attribute: its message is a sentence, not context (say)


def _split(message: str) -> tuple[str, dict[str, str]]:
    """``message`` as its text and the ``key="value"`` pairs it ends with, so that each is a
    field of its own (in JSON they were one ``msg`` string, and ``kv`` quoted them again: a
    QA pass).

    >>> _split('dead letter stage="parse" offset="12"')
    ('dead letter', {'stage': 'parse', 'offset': '12'})
    >>> _split('state topic="t" publish failed: x')  # (pairs inside the text: left as is)
    ('state topic="t" publish failed: x', {})
    >>> _split(r'rules reloaded path="C:\\new\\r.yml"')[1]  # (no escapes: as written)
    {'path': 'C:\\\\new\\\\r.yml'}
    """
    if len(message) > _SPLIT_MAX:
        return message, {}
    m = _TRAILING_PAIRS.match(message)
    if m is None or not m.group(1).strip():
        return message, {}
    return m.group(1).strip(), dict(_PAIR.findall(m.group(2)))


#: A %-format spec of a log template (``%%`` included, which takes no argument).
_SPEC = re.compile(r"%[#0\- +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")


def _split_record(record: logging.LogRecord) -> tuple[str, dict[str, str]]:
    """The record's text and the ``key="value"`` pairs of its template, each part formatted
    with its own arguments: a value that holds ``" key="x`` stays that value (split after
    formatting, an announced ``path`` forged a ``partition`` field in JSON logs: a security
    review). Pairs the template ends with leave the text; pairs inside it are fields too, the
    text kept whole (``state dir="..." was deleted; recreated``: they stayed inside ``msg``
    in JSON logs, a QA pass). A message without arguments is split as it reads (:func:`_split`);
    one with arguments but no pairs in its template has none (a value cannot forge one)."""
    msg, args = record.msg, record.args
    if isinstance(msg, str) and isinstance(args, tuple) and len(msg) <= _SPLIT_MAX:
        pieces = _PAIR.split(msg)  # text, key, value, text, key, value, ..., text
        texts, keys = pieces[0::3], pieces[1::3]
        parts = [p for i, p in enumerate(pieces) if i % 3 != 1]  # (text, value, text, ...)
        counts = [sum(x != "%%" for x in _SPEC.findall(p)) for p in parts]
        if keys and sum(counts) == len(args) and "*" not in msg:
            done, i = [], 0
            for part, n in zip(parts, counts, strict=True):
                done.append(part % args[i : i + n] if args else part)
                i += n
            twice = {k for k in keys if keys.count(k) > 1}  # (group="new" ... of group="old":
            pairs = {k: v for k, v in zip(keys, done[1::2], strict=True) if k not in twice}
            # the last won, the line filed under the wrong group: a review; the msg has both)
            if done[0].strip() and not "".join(texts[1:]).strip():  # (its pairs last)
                return done[0].strip(), pairs
            return record.getMessage(), pairs
    if args:  # (pairs only from a template, never from the text its arguments made: a value
        return record.getMessage(), {}  # 'x partition="99"' forged a field, a review)
    return _split(record.getMessage())


def _fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """A record's message text and its context: the pairs its message ends with (not for
    :func:`say`'s sentences), then the ``extra`` fields; a key named like a line's own field
    gets a ``_`` (a drift line's ``ts="..."`` took the place of the line's time in ``kv``: a
    review)."""
    pairs: dict[str, str] = {}
    if getattr(record, _PLAIN, False):
        text = record.getMessage()
    else:
        text, pairs = _split_record(record)
    context = {f"{k}_" if k in _FIELDS else k: v for k, v in {**pairs, **_context(record)}.items()}
    return text, context


def _context(record: logging.LogRecord) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for k, v in record.__dict__.items():  # fields given with logger.info(..., extra={...})
        if k not in _STANDARD and not k.startswith("_"):
            ctx[k] = v
    ctx.update(getattr(record, _CTX, None) or {})
    return ctx


def _safe(key: str, value: Any) -> str:
    if key in SENSITIVE_KEYS:
        return "<redacted>"
    return redact(value if isinstance(value, str) else str(value))


def _iso(created: float) -> str:
    ms = int((created - int(created)) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts="..." level="info" logger="..." msg="..." key="value" ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        text, context = _fields(record)
        parts = [
            f'ts="{_iso(record.created)}"',
            f'level="{record.levelname.lower()}"',
            f'logger="{record.name}"',
            f"msg={_quote(redact(text))}",
        ]
        parts.extend(f"{k}={_quote(_safe(k, v))}" for k, v in context.items())
        if record.exc_info:
            parts.append(f"exc={_quote(redact(self.formatException(record.exc_info)))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same fields as :class:`KeyValueFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        text, context = _fields(record)
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(text),
        }
        for k, v in context.items():
            if isinstance(v, bool | int | float) and k not in SENSITIVE_KEYS:
                out[k] = v
            else:
                out[k] = _safe(k, v)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        # (JSON escapes the C0 controls; the C1 ones and U+2028/9 went out raw: a review)
        return _C1.sub(lambda m: f"\\u{ord(m[0]):04x}", orjson.dumps(out).decode())


#: What a quoted value may not hold as it is: a control character (a carriage return, an ANSI
#: escape: a transaction id made a terminal rewrite the line before it, a QA pass) or a line
#: separator a log collector splits at (U+0085, U+2028, U+2029).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_C1 = re.compile(r"[\x7f-\x9f\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    c = m[0]
    return "\\n" if c == "\n" else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def _quote(s: str) -> str:
    """``"s"`` with ``\\`` and ``"`` escaped, and every control character (``\\n``, ``\\x1b``).

    >>> print(_quote('a"b\\n\\r\\x1b[31m\\u2028'))
    "a\\"b\\n\\x0d\\x1b[31m\\u2028"
    """
    return '"' + _CONTROL.sub(_escape, s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def json_logs() -> bool:
    """Are the ``fds`` logs JSON lines (``--log-format json``)? Then a command's results are
    JSON too, so a log shipper or a script reads every line."""
    return any(
        getattr(h, "_fds_handler", False) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger("fds").handlers
    )


def say(text: str, level: int = logging.ERROR) -> None:
    """A command's own last word (its error, its summary line): a plain stderr line, or, where
    logs are JSON, a log record like every other line (a JSON log shipper dropped the one line
    an operator needs most: a QA pass)."""
    log = logging.getLogger("fds")
    if json_logs():
        record = log.makeRecord(log.name, level, "(fds)", 0, text, (), None)
        setattr(record, _PLAIN, True)  # (a sentence: no pairs taken out of it)
        log.handle(record)  # (whatever the logger's level: -q hid the summary, a review)
    else:
        # (a full log disk, 2>/dev/full: the line is lost, as a log handler drops its record,
        # not the service: fds run exited 1 at its start without a word, a QA pass)
        with contextlib.suppress(OSError):  # (a card number masked as in a log line: a QA
            print(redact(text), file=sys.stderr)  # pass saw one in a replay's error line)


def configure_logging(
    level: str | int = "INFO",
    *,
    fmt: str = "kv",
    stream: TextIO | None = None,
    logger_name: str = "fds",
) -> logging.Logger:
    """Send the ``fds`` loggers to ``stream`` (stderr) as key="value" (``kv``) or ``json`` lines.

    Idempotent: calling it again replaces the handler it installed before.

    Parameters
    ----------
    level
        ``DEBUG``, ``INFO``, ``WARNING``, ... or a number.
    fmt
        ``kv`` or ``json``.
    stream
        Where to write; ``sys.stderr`` when omitted.
    logger_name
        Root of the loggers to configure.

    Returns
    -------
    logging.Logger
        The configured logger.
    """
    if fmt not in ("kv", "json"):
        raise ValueError(f"log format must be 'kv' or 'json', got {fmt!r}")
    logger = logging.getLogger(logger_name)
    for h in list(logger.handlers):
        if getattr(h, "_fds_handler", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(KeyValueFormatter() if fmt == "kv" else JsonFormatter())
    handler._fds_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    logger.propagate = False
    return logger


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **ctx: Any) -> None:
    """Log ``msg`` with context fields (``partition=``, ``offset=``, ``tx_id=``, ``rule=``...).

    Cheap when the level is disabled. Sensitive keys are redacted by the formatter, so passing
    one by mistake is safe, but do not: see the module docstring.

    >>> import io
    >>> buf = io.StringIO()
    >>> log = configure_logging(fmt="json", stream=buf, logger_name="fds.doctest2")
    >>> log_event(log, "model swapped", version="v8", result="ok")
    >>> import json; rec = json.loads(buf.getvalue())
    >>> rec["msg"], rec["version"], rec["level"]
    ('model swapped', 'v8', 'info')
    """
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={_CTX: ctx}, stacklevel=2)


@contextlib.contextmanager
def loggers_at(levels: dict[str, int]) -> Iterator[None]:
    """The loggers named in ``levels`` at those levels for the block, set back after it (a
    quieted logger left behind hid later lines: a CI run)."""
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


class LineBudget:
    """Lines about bad records logged one by one, at most ``per_window`` a ``window_s``; the
    rest counted by kind and handed to ``summary`` (one line) once the window has passed, or at
    :meth:`flush` (a stream of bad records at 1,000 a second, a line each, wrote ~15 GB of
    log a day: a QA pass; fds train logged each bad label so: a later one).

    >>> said = []
    >>> budget = LineBudget(said.append, per_window=2, window_s=60.0)
    >>> [budget.take("parse", now=0.0) for _ in range(4)]
    [True, True, False, False]
    >>> budget.tick(61.0); said
    [{'parse': 2}]
    """

    def __init__(
        self, summary: Callable[[dict[str, int]], None], per_window: int, window_s: float
    ) -> None:
        self.summary, self.per_window, self.window_s = summary, per_window, window_s
        self._said, self._end = 0, 0.0
        self.unsaid: dict[str, int] = {}  # kind -> lines not logged in this window

    def take(self, kind: str, now: float | None = None) -> bool:
        """May one more line about ``kind`` be logged? Else it is counted."""
        self.tick(time.monotonic() if now is None else now)
        if self._said < self.per_window:
            self._said += 1
            return True
        self.unsaid[kind] = self.unsaid.get(kind, 0) + 1
        return False

    def tick(self, now: float) -> None:
        """Past the window's end: say what was counted, and begin a new window."""
        if now >= self._end:
            self.flush()
            self._end, self._said = now + self.window_s, 0

    def flush(self) -> None:
        """Say what was counted (at a stop)."""
        if self.unsaid:
            unsaid, self.unsaid = self.unsaid, {}
            self.summary(unsaid)
