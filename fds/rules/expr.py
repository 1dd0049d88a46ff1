"""The rule expression language: a whitelisted subset of Python expressions, compiled once.

A rule's ``when`` is parsed with :func:`ast.parse` (``mode="eval"``) and every node is checked
against a whitelist; anything else (attribute access other than ``extra.NAME``, subscripts,
calls of anything but a few math functions, lambdas, comprehensions, f-strings, ``**``, the
walrus, ...) is a load error that points at line and column. Names must be known: transaction
fields, ``extra.NAME``, declared features and the built-ins ``hour``, ``weekday``,
``is_night``, ``is_weekend``. Simple types are checked (a text field compared with a number is
an error).

The checked tree is then turned into Python source that only ever mentions generated local
names (``n_amount``, ``x_vip`` for ``extra.vip``), literal constants written with ``repr`` and a
handful of helper functions, and compiled with an empty ``__builtins__``. A ruleset compiles
all its rules into ONE function (see :func:`build_evaluator`), so evaluating 100 rules costs one
Python call plus the comparisons themselves.

At run time a name that is missing (absent or ``None``, an ``extra`` value NaN, or text that is
no number where one is used) makes the rule not fire and is counted; an arithmetic error
(division by zero, ``log(0)``) or a type error is counted too, and an active rule's makes the
transaction a dead letter (:class:`fds.errors.RuleError`).

>>> e = compile_expr("amount > 3 * avg and country not in ['KR', 'JP']",
...                  {"amount": NUM, "avg": NUM, "country": STR})
>>> e.evaluate({"amount": 500, "avg": 100, "country": "US"})
True
>>> e.evaluate({"amount": 500, "country": "US"})
Traceback (most recent call last):
...
fds.rules.expr.MissingName: avg
>>> compile_expr("().__class__", {})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fds.rules.expr.ExprError: 1:4: attribute access is not allowed (only extra.NAME): ...
"""

from __future__ import annotations

import ast
import difflib
import io
import itertools
import keyword
import math
import operator
import re
import sys
import tokenize
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fds.errors import ConfigError, RuleError
from fds.features.codegen import finite
from fds.schema import FALSE_WORDS, TRUE_WORDS

__all__ = [
    "ANY",
    "BOOL",
    "BUILTINS",
    "FUNCTIONS",
    "NUM",
    "STR",
    "CompiledExpr",
    "ExprError",
    "MissingName",
    "MissingTally",
    "build_evaluator",
    "compile_expr",
    "condition_key",
]


def condition_key(when: str) -> str:
    """A condition as what it decides, its layout aside (``(a >  5)`` is ``a > 5``): its
    syntax tree written back (unparsed: ``ast.dump``'s text changed with Python 3.13)."""
    return ast.unparse(ast.parse("(" + when + "\n)", mode="eval"))


#: Value types known at load time. ``any`` is what ``extra.NAME`` holds (checked at run time).
NUM, STR, BOOL, ANY = "num", "str", "bool", "any"
#: Built-in names, computed from the transaction's ``ts`` in the ruleset timezone, in the order
#: of the clock's tuple (``ruleset.LocalClock``).
BUILTINS: dict[str, str] = {"hour": NUM, "weekday": NUM, "is_night": BOOL, "is_weekend": BOOL}
#: Text or a number, known at load time (``country or amount``): neither a condition (it fires
#: on any non-empty value) nor an operand of arithmetic (text would be multiplied or
#: %-formatted: ``(country or amount) * 10**12`` built a terabyte string).
MIXED = "text or number"


def _join(types: set[str], op: str) -> str:
    """The type of ``a and b`` / ``a or b`` / ``a if c else b`` (``op``: and, or, if) from its
    operands' types: one type if they agree; :data:`MIXED` if text meets a number; a number for
    ``or`` of numbers and true/false values (``is_night or amount`` fires on any amount);
    otherwise unknown (guards such as ``country and country != "KR"`` or ``n and n > 3``, and
    ``x > 5 if is_night else 0``, stay valid conditions).

    >>> _join({STR, NUM}, "and"), _join({BOOL, NUM}, "or"), _join({BOOL, NUM}, "and")
    ('text or number', 'num', 'any')
    >>> _join({STR, BOOL}, "and"), _join({MIXED, BOOL}, "if")
    ('any', 'text or number')
    """
    if len(types) == 1:
        return next(iter(types))
    if MIXED in types or {STR, NUM} <= types:
        return MIXED
    return NUM if op == "or" and types <= {NUM, BOOL} else ANY


# Limits that keep a hostile or mistaken rule from costing time or memory at load or run time.
MAX_SOURCE_CHARS = 2000  # a realistic rule is < 200 chars; 10x headroom
MAX_DEPTH = 40  # AST nesting depth; Python's own parser recurses, so bound it well below that
MAX_LITERAL_CHARS = 200  # long string literals have no place in a condition
MAX_ABS_NUMBER = 1e18  # larger than any amount; blocks 1e999 (inf) and huge int arithmetic
MAX_IN_ITEMS = 1000  # `x in [...]` lists: long lists belong in a feature or a lookup, not a rule


class ExprError(ConfigError):
    """A rule expression is invalid; ``line``/``col`` (1-based) point into the expression."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        self.line, self.col, self.detail = line, col, message
        super().__init__(message, where=f"{line}:{col}")


class MissingName(Exception):
    """Internal signal: a name the expression reads is absent or None for this transaction."""


#: Text that stands for a missing value in data files (pandas' default ``na_values``, compared
#: stripped and lower-cased): compared with a number, such text is missing, not a value that
#: differs (``extra.code != 7`` does not fire on ``"NA"``, as it does not on a null).
NA_TEXT = frozenset(
    s.lower()
    for s in (
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
        "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    )
)  # fmt: skip


def _num(x: Any) -> Any:
    """An ``extra.*`` value used as a number (arithmetic, or ordered against a number): a
    finite number; text that reads as a finite number is that number (a CSV file's columns are
    text); other text, an infinite number and true/false are missing (:class:`MissingName`: the
    rule does not fire), as the features read them ("NA", "nan", "high", ``1e999`` in JSON); a
    list or a mapping is an error (it must not be multiplied: ``extra.s * 10**9`` would build a
    gigabyte string).

    >>> _num(7), _num("7.5")
    (7, 7.5)
    >>> _num("NA")
    Traceback (most recent call last):
    fds.rules.expr.MissingName: NA
    >>> _num(float("inf"))
    Traceback (most recent call last):
    fds.rules.expr.MissingName: inf
    >>> _num([1])
    Traceback (most recent call last):
    TypeError: not a number: list
    """
    if type(x) is int or (type(x) is float and x - x == 0.0):
        return x
    if type(x) is str:  # (exactly: a 17-digit id's text, read as a float, was ordered as its
        v = _read(x)  # neighbours, a review; beyond a float's range missing, as before)
        if v is not None and abs(v) <= _FLOAT_MAX:
            return v
        raise MissingName(x)
    if type(x) is bool or type(x) is float:
        raise MissingName(str(x))
    raise TypeError(f"not a number: {type(x).__name__}")


def _coerce(x: Any) -> Any:
    """An ``extra.*`` value compared for equality with a number: text that reads as a finite
    number is that number (``"7" == 7`` holds); text that stands for a missing value
    (:data:`NA_TEXT`) and an infinite number are missing; anything else is left as it is
    (``"high" != 7`` holds).

    >>> _coerce("7"), _coerce("7.5"), _coerce("high"), _coerce(True)
    (7, 7.5, 'high', True)
    >>> _coerce("12345678901234567") == 12345678901234568  # (exactly: a review)
    False
    >>> _coerce("N/A")
    Traceback (most recent call last):
    fds.rules.expr.MissingName: N/A
    """
    if type(x) is str:
        v = _read(x)
        if v is not None:
            return v
        if x.strip().lower() in NA_TEXT:
            raise MissingName(x)
    elif type(x) is float and x - x:  # infinite (a NaN is missing when read)
        raise MissingName(str(x))
    return x


def _flag(x: Any) -> Any:
    """An ``extra.*`` value compared for equality with true/false: text as a CSV file writes a
    flag is that flag (``"yes" == true`` holds, as a condition reads it: :func:`_truth`; the
    text of a CSV cell never equalled ``True``, so a rule ``extra.vip == True`` fired on the
    JSON Lines file and never on the same data as CSV: a QA pass); otherwise as
    :func:`_coerce` (``"1"`` is 1, which Python takes as equal to ``True``; other text stays
    text, equal to neither).

    >>> _flag("TRUE"), _flag(" no "), _flag("1"), _flag("gold"), _flag(True)
    (True, False, 1, 'gold', True)
    """
    if type(x) is str and (flag := _word(x)) is not None:
        return flag
    return _coerce(x)


def _word(x: str) -> bool | None:
    """The flag text ``x`` writes (``"Yes"``: True, ``" off "``: False), or ``None``."""
    low = x.strip().lower()
    return (low in TRUE_WORDS) if low in TRUE_WORDS or low in FALSE_WORDS else None


def _order(x: Any, y: Any, op: Callable[[Any, Any], bool]) -> bool:
    """``op(x, y)`` for an ordering (``<`` ...) of an ``extra.*`` value against another one or
    text: as numbers where both read as one, as text where both are text; missing when one is
    a number and the other text that is no number (``5 <= "high"`` raised, a dead letter).

    Text that stands for a missing value is text here, as any other (a country field's
    "NA", Namibia, made the rule's transactions missing); a list or a mapping is an error
    whichever side it is on.

    >>> import operator
    >>> _order("10", 9, operator.gt), _order("apple", "banana", operator.lt)
    (True, True)
    >>> _order("NA", "Z", operator.lt)
    True
    >>> _order(5, "high", operator.le)
    Traceback (most recent call last):
    fds.rules.expr.MissingName: high
    """
    if type(x) is str:  # text that reads as a finite number: that number (exactly: _read)
        x = v if (v := _read(x)) is not None else x
    if type(y) is str:
        y = v if (v := _read(y)) is not None else y
    if type(x) is str and type(y) is str:
        return op(x, y)
    if type(y) in (list, dict):  # (the same error as the left side's: it depended on which)
        _num(y)
    return op(_num(x), _num(y))


def _same(x: Any, y: Any) -> bool:
    """``x == y`` for two ``extra.*`` values: a number and text that reads as that number are
    equal (a JSON ``7`` and a CSV's ``"7"`` were unequal, yet each ``<=`` and ``>=`` the other:
    a QA pass), read exactly (an integer's text as an integer: ids of 20 digits, as floats,
    were equal to their neighbours, a review); two texts compare as text (``"02134"`` is no
    ``"2134"``).

    >>> _same(7, "7"), _same("7", 7.0), _same("7.0", "7")
    (True, True, False)
    >>> _same(12345678901234567891, "12345678901234567890")
    False
    """
    if type(x) is str and type(y) in (int, float):
        x, y = y, x
    if type(x) in (int, float) and type(y) is str:
        v = _read(y)
        return v is not None and x == v
    return bool(x == y)


_INTEGER = re.compile(r"[-+]?\d+")
_FLOAT_MAX = sys.float_info.max


def _read(text: str) -> int | float | None:
    """The number ``text`` reads as, exactly: an integer's text as that integer (20-digit ids
    read as floats were equal to, and ordered as, their neighbours: a review), other text as
    :func:`finite` reads it; None where it reads as no finite number.

    >>> _read("12345678901234567891"), _read(" 7.5 "), _read("high")
    (12345678901234567891, 7.5, None)
    """
    t = text.strip()
    if _INTEGER.fullmatch(t):
        try:
            return int(t)
        except ValueError:  # (over Python's 4,300 digits: no number here, a review)
            return None
    v = finite(text)
    return v if v == v else None


def _truth(x: Any) -> bool:
    """An ``extra.*`` value tested for truth (a condition, ``not``, ``and``/``or`` in one):
    text as a CSV file writes a flag (the words a label takes), ``"0"``, ``"false"``,
    ``"no"``, ``"off"`` ... false and ``"1"``, ``"true"``, ``"yes"``, ``"on"`` ... true, any
    case (non-empty text was true: a rule on ``extra.vip`` fired on ``"0"``), text that stands
    for a missing value missing (``""`` too); other values as Python tests them.

    >>> _truth("0"), _truth("FALSE"), _truth(" 1 "), _truth("No"), _truth("gold"), _truth([])
    (False, False, True, False, True, False)
    """
    if type(x) is str:
        v = finite(x)
        if v == v:
            return v != 0
        if (flag := _word(x)) is not None:
            return flag
        if x.strip().lower() in NA_TEXT:
            raise MissingName(x)
    return bool(x)


def _isin(x: Any, items: frozenset[Any]) -> bool:
    """``x in items`` for an ``extra.*`` value and a list with numbers: as written, or as the
    number its text reads as (``"7" in [7, "007"]`` and ``"007" in [7, "007"]`` both hold);
    missing (:func:`_coerce`) when it is in the list neither way and stands for a missing value
    (``"NA" not in [1, 2]`` does not fire)."""
    if type(x) is list or type(x) is dict:  # in no list of literals (and not hashable)
        return False
    return x in items or _coerce(x) in items


def _isin_flag(x: Any, items: frozenset[Any]) -> bool:
    """``x in items`` for an ``extra.*`` value and a list with true/false: its text read as a
    flag as ``==`` reads it (:func:`_flag`: ``"yes" in [True]`` holds)."""
    if type(x) is list or type(x) is dict:
        return False
    return x in items or _flag(x) in items


def _isin_text(x: Any, items: frozenset[Any]) -> bool:
    """``x in items`` for an ``extra.*`` value and a list of text: a list or a mapping is in
    none (it raised TypeError: unhashable, where a list with a number said no)."""
    return type(x) is not list and type(x) is not dict and x in items


def _len(x: Any) -> int:
    """The length of an ``extra.*`` value: of a number, its text as JSON writes it (a JSON
    ``1234`` raised, a dead letter on every transaction of a rule backtested on a CSV file,
    where the cell is the text ``"1234"``: a QA pass); true/false and an infinite number are
    missing, as :func:`_num` reads them.

    >>> _len("1234"), _len(1234), _len(12.5), _len([1, 2])
    (4, 4, 4, 2)
    """
    if type(x) is str or type(x) is list or type(x) is dict:
        return len(x)
    if type(x) is int or type(x) is float:
        return len(repr(_num(x)))
    raise MissingName(str(x))


def _log(x: Any) -> float:
    return math.log(x)


#: Whitelisted functions: name -> (implementation, min args, max args, argument type, result).
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int, str, str]] = {
    "abs": (abs, 1, 1, NUM, NUM),
    "min": (min, 2, 8, NUM, NUM),
    "max": (max, 2, 8, NUM, NUM),
    "round": (round, 1, 2, NUM, NUM),
    "log": (_log, 1, 1, NUM, NUM),
    "log10": (math.log10, 1, 1, NUM, NUM),
    "sqrt": (math.sqrt, 1, 1, NUM, NUM),
    "len": (_len, 1, 1, STR, NUM),
}

#: Exceptions a rule may raise on a transaction's values: counted per rule; an active rule's
#: makes the transaction a dead letter (:class:`fds.errors.RuleError`), a shadow rule's is only
#: counted (it has no effect).
RUNTIME_ERRORS = (ArithmeticError, TypeError, ValueError)

_CMP = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
#: Operators refused, as written, and what was likely meant (`&`, `|` and `^` were named
#: BitAnd, BitOr, BitXor: a QA pass).
_BIN_REFUSED: dict[type, tuple[str, str]] = {
    ast.BitAnd: ("&", " (write `and`)"),
    ast.BitOr: ("|", " (write `or`)"),
    ast.BitXor: ("^", " (a power: write x * x, a root sqrt(x))"),
    ast.Pow: ("**", " (a power: write x * x, a root sqrt(x))"),
    ast.FloorDiv: ("//", " (a whole division: compare x / y instead)"),
    ast.LShift: ("<<", ""),
    ast.RShift: (">>", ""),
    ast.MatMult: ("@", ""),
}
_BIN = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%"}
_FORBIDDEN_HINT = {
    ast.Attribute: "attribute access is not allowed (only extra.NAME)",
    ast.Subscript: "indexing ([...]) is not allowed (only extra['NAME'], for a column whose "
    "name is not a word)",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Slice: "slices are not allowed",
}
_const_ids = itertools.count()
#: Generated source that is a name or a number: read twice at no cost.
_SIMPLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|-?[0-9][0-9.e+-]*")


def local_name(name: str) -> str:
    """The Python identifier generated code uses for a rule name (``extra.x`` -> ``x_x``; an
    extra name that is no identifier, ``extra['risk-score']``, by its hex: ``h_7269...``).

    >>> local_name("amount"), local_name("extra.vip"), local_name("extra.a-b")
    ('n_amount', 'x_vip', 'h_612d62')
    """
    if not name.startswith("extra."):
        return "n_" + name
    key = name[6:]  # (ASCII: Python folds `ﬁ` into `fi`, two keys one local: a review)
    return "x_" + key if key.isidentifier() and key.isascii() else "h_" + key.encode().hex()


@dataclass(frozen=True)
class CompiledExpr:
    """A checked expression: generated Python ``code`` over local names, ready to combine.

    ``names`` are the rule-level names it reads (``amount``, ``extra.vip``); ``consts`` the
    helper objects its code refers to (frozensets for ``in``, whitelisted functions).
    """

    source: str
    code: str
    names: tuple[str, ...]
    type: str
    consts: Mapping[str, Any] = field(repr=False)
    _fn: Callable[[Mapping[str, Any]], Any] = field(repr=False, compare=False)

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """Evaluate over one flat mapping (``extra.x`` read from ``values['extra']['x']``).

        Raises :class:`MissingName` when a name is absent or None.
        """
        return self._fn(values)


def _column(lines: list[str], line: int, byte_offset: int) -> int:
    """The 1-based character column in the expression of an ``ast`` offset (UTF-8 bytes into
    the parsed text, whose first line starts with an added ``(``)."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return max(1, _chars(text, byte_offset) + 1 - (line == 1))


def _chars(text: str, byte_offset: int) -> int:
    """The characters of ``text`` before an ``ast`` offset (UTF-8 bytes)."""
    return len(text.encode("utf-8")[:byte_offset].decode("utf-8", "ignore"))


class _Checker:
    def __init__(self, known: Mapping[str, str], allow_extra: bool, lines: list[str]) -> None:
        self.known = known
        self.allow_extra = allow_extra
        self.lines = lines  # the parsed text, for error columns
        self.names: dict[str, None] = {}  # insertion-ordered set
        self.consts: dict[str, Any] = {}

    def fail(self, node: ast.AST, msg: str) -> ExprError:
        line = getattr(node, "lineno", 1)
        return ExprError(msg, line, _column(self.lines, line, getattr(node, "col_offset", 0)))

    def const(self, obj: Any) -> str:
        key = f"_k{next(_const_ids)}"
        self.consts[key] = obj
        return key

    # Each visit returns (python source, type). ``cond``: the node's value is used only for its
    # truth (a condition, `not`, an `if` test, `and`/`or` in one): an extra value is then
    # tested as :func:`_truth` reads it.
    def visit(self, node: ast.AST, depth: int, cond: bool = False) -> tuple[str, str]:
        if depth > MAX_DEPTH:
            raise self.fail(  # (a flat `a + b + ... ` of 45 terms said "nested": a QA pass)
                node,
                f"expression nested deeper than {MAX_DEPTH} levels (each operator of a chain "
                "such as a + b + c counts as one): simplify it, or group terms in parentheses",
            )
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node, node.id)
        if (  # extra['risk-score']: a column whose name is no word (a QA pass: no way to read it)
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "extra"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and node.slice.value
        ):
            if not self.allow_extra:
                raise self.fail(node, "extra['NAME'] is not available here")
            if not node.slice.value.isprintable():  # (a lone surrogate was a traceback)
                raise self.fail(node, "an extra name is printable text")
            src, t = self.name(node, "extra." + node.slice.value)
            return (f"_truth({src})", BOOL) if cond else (src, t)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "extra":
                if not self.allow_extra:
                    raise self.fail(node, "extra.NAME is not available here")
                if node.attr.startswith("_"):
                    raise self.fail(  # (a column named so, Mongo's _id, had no way in: a review)
                        node, f"extra.NAME may not start with '_': write extra[{node.attr!r}]"
                    )
                src, t = self.name(node, "extra." + node.attr)
                return (f"_truth({src})", BOOL) if cond else (src, t)
            err = self.fail(
                node,
                "attribute access is not allowed (only extra.NAME): "
                "write a field, feature or extra.NAME",
            )
            if node.end_col_offset is not None and node.end_lineno == node.lineno:
                end = _column(self.lines, node.lineno, node.end_col_offset)
                col = end - len(node.attr)
                err = ExprError(err.detail, node.lineno, col)
            raise err
        if isinstance(node, ast.BoolOp):
            op = " and " if isinstance(node.op, ast.And) else " or "
            if cond:
                self.no_text_literal(node.values)
            parts = [self.visit(v, d, cond) for v in node.values]
            types = {t for _, t in parts}
            return "(" + op.join(p for p, _ in parts) + ")", _join(types, op.strip())
        if isinstance(node, ast.UnaryOp):
            src, t = self.visit(node.operand, d, isinstance(node.op, ast.Not))
            if isinstance(node.op, ast.Not):
                return f"(not {src})", BOOL
            if isinstance(node.op, ast.USub | ast.UAdd):
                self.need_num(node.operand, t, "a sign (+/-)")
                sign = "-" if isinstance(node.op, ast.USub) else "+"
                return f"({sign}{self.guard(src, t)})", NUM
            raise self.fail(node, "operator ~ is not allowed")
        if isinstance(node, ast.BinOp):
            sym = _BIN.get(type(node.op))
            if sym is None:
                what, hint = _BIN_REFUSED.get(type(node.op), (type(node.op).__name__, ""))
                raise self.fail(
                    node,
                    f"operator {what} is not allowed{hint}: use + - * / % and sqrt(), log()",
                )
            (ls, lt), (rs, rt) = self.visit(node.left, d), self.visit(node.right, d)
            self.need_num(node.left, lt, f"operator {sym}")
            self.need_num(node.right, rt, f"operator {sym}")
            src = f"({self.guard(ls, lt)} {sym} {self.guard(rs, rt)})"
            if sym in "/%" and _constant(node.right) and self.value(node.right, rs) == 0:
                raise self.fail(node.right, f"the divisor of {sym} is always 0: it fails "
                                "whenever it is evaluated")  # fmt: skip
            self.value(node, src)
            return src, NUM
        if isinstance(node, ast.Compare):
            return self.compare(node, d)
        if isinstance(node, ast.IfExp):
            if cond:
                self.no_text_literal([node.body, node.orelse])
            (ts, _), (bs, bt), (os_, ot) = (
                self.visit(node.test, d, True),
                self.visit(node.body, d, cond),
                self.visit(node.orelse, d, cond),
            )
            if cond:  # (`n if is_night else amount > 5` read as `n if is_night else (amount >
                # 5)`: it fired on every night's transaction, a QA pass; `x > 5 if c else 0`,
                # a branch written as a constant, stays valid)
                self.no_value_branch([(node.body, bt), (node.orelse, ot)])
            return f"({bs} if {ts} else {os_})", _join({bt, ot}, "if")
        if isinstance(node, ast.Call):
            return self.call(node, d)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            separated = isinstance(node, ast.Tuple) and any(  # (1,000,000: a QA pass)
                re.search(r"\d,\d{3}(?!\d)", line) for line in self.lines
            )
            raise self.fail(node, "a list is only allowed on the right of `in` / `not in`" + (
                " (write a number without thousands separators: 1000000)" if separated else ""
            ))  # fmt: skip
        hint = _FORBIDDEN_HINT.get(type(node), f"{type(node).__name__} is not allowed")
        raise self.fail(node, hint)

    def constant(self, node: ast.Constant) -> tuple[str, str]:
        v = node.value
        if v is None:  # `x == None` never holds, `x > None` raises on every transaction
            raise self.fail(
                node,
                "None is not a value a rule sees: a rule whose names are missing does not fire",
            )
        if isinstance(v, bool):
            return repr(v), BOOL
        if isinstance(v, int | float):
            # (the bound first: isfinite of an int past a float's range raised OverflowError,
            # a traceback, a review; comparing it with a float does not)
            if abs(v) > MAX_ABS_NUMBER or not math.isfinite(v):
                raise self.fail(node, f"number out of range (|x| <= {MAX_ABS_NUMBER:g})")
            return repr(v), NUM
        if isinstance(v, str):
            if len(v) > MAX_LITERAL_CHARS:
                raise self.fail(node, f"string literal longer than {MAX_LITERAL_CHARS} chars")
            return repr(v), STR
        raise self.fail(node, f"{type(v).__name__} literals are not allowed")

    def name(self, node: ast.AST, name: str) -> tuple[str, str]:
        if name.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: {name}")
        if name.startswith("extra."):
            t = ANY
        elif name in self.known:
            t = self.known[name]
        else:
            if name in FUNCTIONS:
                raise self.fail(node, f"{name} is a function: call it, e.g. {name}(x)")
            close = difflib.get_close_matches(name, list(self.known), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            dash = self._dashed(node, name)
            if dash:  # (`extra.risk-score` reads as extra.risk - score: a QA pass)
                hint = f" (the column {dash!r}? write extra[{dash!r}])"
            quote = "" if close or dash else f"; a text value is quoted: '{name}'"
            if re.search(r"_\d+[smhd]$|_today$", name):  # (told to quote it: a QA pass)
                quote = "; a feature a rule reads is declared under features: (entity, agg, window)"
            if name.lower() in ("true", "false", "null", "none") and name not in ("True", "False"):
                # (`x == false` was told to quote it, which compares text with a bool: a review)
                word = {"true": "True", "false": "False"}.get(name.lower())
                quote = (  # (a text column's 'false' is quoted: not told to write False)
                    f"; write {word} (capitalised) to compare with a true/false value (or test "
                    f"it alone: `x`, `not x`), '{name}' (quoted) with a text"
                    if word
                    else "; a missing value cannot be tested in a rule (a rule reading a missing "
                    "name is skipped)"
                )
            if name in ("model_score", "score", "model_version") and not dash:  # (a column
                # `extra.risk-score` was told the model's score is not a rule's: a README walk)
                quote = (
                    "; the model scores after the rules, so a rule cannot read its score: the "
                    "policy combines both (decline_at, review_at)"
                )
            raise self.fail(
                node,
                f"unknown name {name!r}{hint}: use a transaction field, extra.NAME, a declared "
                f"feature or hour/weekday/is_night/is_weekend{quote}",
            )
        self.names[name] = None
        return local_name(name), t

    def _dashed(self, node: ast.AST, name: str) -> str | None:
        """The column ``extra.risk-score`` when ``name`` is its ``score`` (Python reads
        ``extra.risk - score``): a dash right after an ``extra.`` name before this very node
        (anywhere in the expression, it named a column for a bare ``score`` elsewhere: a
        review)."""
        line = getattr(node, "lineno", 1)
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        col = _chars(text, getattr(node, "col_offset", 0))
        before = re.search(r"extra\.([\w-]*\w)-$", text[:col])
        if before is None or text[col : col + len(name)] != name:
            return None
        after = re.match(r"(?:-\w+)*", text[col + len(name) :])
        return f"{before[1]}-{name}{after[0] if after else ''}"

    def no_text_literal(self, nodes: list[ast.expr]) -> None:
        """Refuse a text written as a part of a condition (of ``or``/``and``, a branch of
        ``if``): always true, so ``country == 'KR' or 'JP'`` fired on every transaction (a
        review; ``''`` is always false: refused too)."""
        for v in nodes:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                raise self.fail(
                    v, f"{v.value!r} here is always {'true' if v.value else 'false'} (a text "
                    "is no condition): compare it, e.g. country in ['KR', 'JP']",
                )  # fmt: skip

    def no_value_branch(self, branches: list[tuple[ast.expr, str]]) -> None:
        """Refuse a branch of ``if ... else`` in a condition that is a number or text (but the
        constant 0): true for any value but 0 or empty, whatever the threshold meant."""
        for v, t in branches:
            try:  # (a literal: `-0` was refused as a number computed, a review)
                value, literal = ast.literal_eval(v), True
            except (ValueError, TypeError):
                value, literal = None, False
            if literal and t == NUM and value != 0:
                raise self.fail(v, f"{value!r} here is always true (a number is no "
                                "condition): write True, or compare something")  # fmt: skip
            if t in (NUM, STR, MIXED) and not literal:
                kind = {NUM: "a number", STR: "text", MIXED: "text or a number"}[t]
                raise self.fail(
                    v, f"this branch of `if ... else` gives {kind}, not true/false: in a "
                    "condition it holds for any value but 0 or empty (`a if c else b > 5` "
                    "reads as `a if c else (b > 5)`): compare it, e.g. (a if c else b) > 5",
                )  # fmt: skip

    def need_num(self, node: ast.AST, t: str, what: str) -> None:
        if t == STR:
            raise self.fail(node, f"{what} needs a number, this is text")
        if t == MIXED:
            raise self.fail(node, f"{what} needs a number, this may be text (it joins text "
                            "and a number with and/or/if)")  # fmt: skip

    @staticmethod
    def guard(src: str, t: str) -> str:
        return f"_num({src})" if t == ANY else src

    def compare(self, node: ast.Compare, d: int) -> tuple[str, str]:
        """A comparison. A chain ``a < b < c`` whose operands need no conversion is Python's
        own (the middle one computed once); else ``(a < b) and (b < c)``, each with the
        conversions of its own operator (the middle operand kept the first one's: a dead
        letter where ``0 != extra.s < 10`` meets "high", ``True < 7`` fired)."""
        left_src, left_t = self.visit(node.left, d)
        parts = []
        chain = [left_src]
        converted = False
        last = len(node.ops) - 1
        for j, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
            sym = _CMP.get(type(op))
            if sym is None and isinstance(op, ast.Is | ast.IsNot):  # (it was "Is comparison
                # is not allowed: use == !=", and `== None` was refused next: a README walk)
                raise self.fail(
                    node,
                    f"`{'is' if isinstance(op, ast.Is) else 'is not'}` is not allowed: a missing "
                    "value cannot be tested in a rule (a rule whose names are missing does not "
                    "fire); compare values with == or !=",
                )
            if sym is None:
                raise self.fail(node, f"{type(op).__name__} comparison is not allowed: use == !=")
            if sym in ("in", "not in"):
                if len(node.ops) > 1:  # `x in [..] == y` compares the list with y
                    raise self.fail(
                        node, f"`{sym}` in a chain of comparisons: join them with `and`"
                    )
                src, rt = self.literal_list(right, left_t)
                if left_t == ANY:  # extra.code in [1, 2] reads "1"; a list value is in none
                    neg = "not " if sym == "not in" else ""
                    isin = {"numbers": "_isin", "flags": "_isin_flag"}.get(rt, "_isin_text")
                    return f"({neg}{isin}({left_src}, {src}))", BOOL
                return f"({left_src} {sym} {src})", BOOL
            src, rt = self.visit(right, d)
            if {left_t, rt} in ({STR, NUM}, {STR, BOOL}):
                raise self.fail(right, f"compares text with a number ({left_t} {sym} {rt})")
            if MIXED in (left_t, rt) and sym not in ("==", "!="):
                raise self.fail(  # raises whenever one side is text and the other a number
                    right, f"orders what may be text against what may be a number ({sym})"
                )
            # The middle operand of `(a < b) and (b < c)` is computed once, into a local: written
            # out twice, a chain nested in it doubled at each level (a QA pass: a 386-character
            # condition made 51 MB of code, 65 s and 8.8 GB to compile, 17 ms per transaction).
            once = later = src
            if j < last and not _SIMPLE.fullmatch(src):
                later = f"_c{next(_const_ids)}"
                once = f"({later} := {src})"
            ls, rs = left_src, once
            if sym in ("==", "!=") and left_t == rt == ANY:  # two extra values: as ordered
                part = f"({'not ' if sym == '!=' else ''}_same({ls}, {rs}))"
                converted = True
            elif sym in ("==", "!="):  # an extra value against a number: its text read as one
                if left_t == ANY and rt in (NUM, BOOL):  # (or as a flag: see _flag)
                    ls = f"{'_coerce' if rt == NUM else '_flag'}({ls})"
                if rt == ANY and left_t in (NUM, BOOL):
                    rs = f"{'_coerce' if left_t == NUM else '_flag'}({rs})"
                part = f"({ls} {sym} {rs})"
            elif {left_t, rt} == {ANY, NUM}:
                # ordered against a number: text that is no number is missing, not an error
                ls, rs = self.guard(ls, left_t), self.guard(rs, rt)
                part = f"({ls} {sym} {rs})"
            elif {left_t, rt} == {ANY, BOOL}:  # true/false ordered: missing, as in arithmetic
                part = f"(_num({ls}) {sym} _num({rs}))"  # (a raw str > bool: a dead letter)
                converted = True
            elif ANY in (left_t, rt) and {left_t, rt} <= {ANY, STR}:  # two extra values, or
                part = f"_order({ls}, {rs}, {self.const(_ORDER[sym])})"  # one and text
                converted = True
            else:
                part = f"({ls} {sym} {rs})"
            converted = converted or (ls, rs) != (left_src, once)
            parts.append(part)
            chain += [sym, src]
            left_src, left_t = later, rt
        if len(parts) == 1:
            return parts[0], BOOL
        if not converted:
            return "(" + " ".join(chain) + ")", BOOL
        return "(" + " and ".join(parts) + ")", BOOL

    def literal_list(self, node: ast.AST, left_t: str) -> tuple[str, str]:
        if not isinstance(node, ast.List | ast.Tuple | ast.Set):
            raise self.fail(node, "`in` needs a literal list on its right, e.g. x in ['a', 'b']")
        if len(node.elts) > MAX_IN_ITEMS:
            raise self.fail(node, f"list longer than {MAX_IN_ITEMS} items")
        items: list[Any] = []
        for elt in node.elts:
            if isinstance(elt, ast.Constant):
                _, t = self.constant(elt)
                value = elt.value
            elif (  # a negative number such as [-1, 2]
                isinstance(elt, ast.UnaryOp)
                and isinstance(elt.op, ast.USub)
                and isinstance(elt.operand, ast.Constant)
                and isinstance(elt.operand.value, int | float)
                and not isinstance(elt.operand.value, bool)
            ):
                _, t = self.constant(elt.operand)
                value = -elt.operand.value  # (its type was not checked: `country in [-1]`)
            else:
                raise self.fail(elt, "list items after `in` must be literals (numbers, text)")
            if {left_t, t} in ({STR, NUM}, {STR, BOOL}):
                quoted = repr(f"{value:g}" if isinstance(value, float) else str(value))
                fix = f": write it as text, {quoted}" if left_t == STR and t == NUM else ""
                raise self.fail(
                    elt, f"list item type {t} never equals the {left_t} on the left{fix}"
                )
            items.append(value)
        flags = any(type(v) is bool for v in items)
        numbers = any(type(v) in (int, float) for v in items)
        return self.const(frozenset(items)), "flags" if flags else "numbers" if numbers else "list"

    def call(self, node: ast.Call, d: int) -> tuple[str, str]:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else "a method"
            raise self.fail(
                node,
                f"calling {what} is not allowed: the functions are {', '.join(FUNCTIONS)}",
            )
        name = node.func.id
        fn, lo, hi, arg_t, res_t = FUNCTIONS[name]
        if node.keywords:
            raise self.fail(node, f"{name}() takes no keyword arguments")
        if not lo <= len(node.args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.fail(node, f"{name}() takes {want} arguments, got {len(node.args)}")
        args = []
        for a in node.args:
            src, t = self.visit(a, d)
            if arg_t == NUM:
                self.need_num(a, t, f"{name}()")
                src = self.guard(src, t)
            elif t in (NUM, BOOL):
                raise self.fail(a, f"{name}() needs text, this is a number")
            args.append(src)
        if name == "round" and len(node.args) == 2:
            nd = node.args[1]
            if not (isinstance(nd, ast.Constant) and type(nd.value) is int and 0 <= nd.value <= 12):
                raise self.fail(nd, "round(x, n): n must be a whole number from 0 to 12")
        src = f"{self.const(fn)}({', '.join(args)})"
        self.value(node, src)
        return src, res_t

    def value(self, node: ast.AST, src: str) -> Any:
        """The value of ``node`` (its ``src``) when it reads no name, else ``None``; a constant
        part that raises fails whenever it is evaluated and is refused (``log(-1)``, ``1 / 0``:
        `fds rules check` passed them, and every transaction was a dead letter, a QA pass)."""
        if not _constant(node):
            return None
        helpers = (_num, _coerce, _flag, _isin, _isin_flag, _isin_text, _order, _same, _truth)
        ns = _namespace({**self.consts, **{h.__name__: h for h in helpers}})
        try:
            return eval(src, ns)  # safe: only whitelisted AST became code, no name read
        except RUNTIME_ERRORS as e:
            raise self.fail(
                node, f"this fails whenever it is evaluated ({type(e).__name__}: {e})"
            ) from None


def _constant(node: ast.AST) -> bool:
    """Does ``node`` read no field, feature or extra value (only literals and functions)?"""
    called = {id(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
    return not any(
        isinstance(n, ast.Name | ast.Attribute | ast.Subscript) and id(n) not in called
        for n in ast.walk(node)
    )


_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _check_tokens(source: str, comments: bool | Callable[[str, int, int], bool]) -> None:
    """Refuse what the added parentheses of :func:`parse_expr` would hide: a bracket closed
    that was never opened (``amount > 3) or (amount < 1`` loaded), one never closed (Python
    told it at the added parenthesis, 1:1) and a ``#`` comment that ``comments`` does not
    allow (``True``: any; a function of its text, line and column: those it says were
    written so, see the ruleset; a
    folded condition's next lines joined the comment: the rest of the condition was dropped
    without a word). Other errors are the parser's. The source is read
    as parsed, in parentheses: its indentation is then no token."""
    opened: list[tuple[str, int, int]] = []
    last = source.count("\n") + 2  # the line of the added ")"
    name, at, end = "", (1, 1), (0, 0)  # the name read so far, where it starts, the last end
    text: str | None = None  # the text just read, when the token before this one was one
    try:
        for tok in tokenize.generate_tokens(io.StringIO("(" + source + "\n)").readline):
            line, col = tok.start
            col -= line == 1  # the added "("
            if tok.type == tokenize.STRING and text is not None:
                # (Python joins them: `mcc in ['6051' '4829']` held '60514829', a review)
                raise ExprError(
                    f"two texts side by side, {text} {tok.string}, are read as one: a comma "
                    "missing between them?",
                    line,
                    col + 1,
                )
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                text = tok.string if tok.type == tokenize.STRING else None
            if tok.type == tokenize.COMMENT and not (
                comments is True or (callable(comments) and comments(tok.string, line, col + 1))
            ):
                raise ExprError(
                    "'#' starts a comment that runs to the end of the condition's line, and "
                    "YAML joined the next lines of the file onto it: write the comment in YAML "
                    "after the value, or the condition as a | block",
                    line,
                    col + 1,
                )
            # A name, with the characters the tokenizer splits off it (`cafe` + a combining
            # accent is NAME, ERRORTOKEN to it, one name `café` to the parser: a review)
            if tok.type in (tokenize.NAME, tokenize.ERRORTOKEN) and name and tok.start == end:
                name += tok.string
            elif tok.type == tokenize.NAME:
                name, at = tok.string, (line, col + 1)
            else:
                name = ""
            end = tok.end
            read = unicodedata.normalize("NFKC", name)
            if read != name:  # (`ａmount` read amount, `extra.ﬁeld` the key field)
                raise ExprError(
                    f"{name!r} is read by Python as {read!r} (its characters are folded): "
                    f"write {read!r} if that is meant, or extra[{name!r}] for a column of that "
                    "name",
                    *at,
                )
            if tok.type == tokenize.OP and tok.string in "([{":
                opened.append((tok.string, line, col + 1))
            elif tok.type == tokenize.OP and tok.string in ")]}":
                bracket, at_line, at_col = opened.pop()
                if line < last and not opened:  # (it closed the added "(")
                    raise ExprError(f"syntax error: unmatched {tok.string!r}", line, col + 1)
                if _PAIRS[bracket] != tok.string and line < last:
                    raise ExprError(
                        f"syntax error: {tok.string!r} does not close {bracket!r}", line, col + 1
                    )
                if line == last and at_col > 0:  # the added ")" closed one of the source's
                    raise ExprError(f"syntax error: {bracket!r} was never closed", at_line, at_col)
    except (tokenize.TokenError, SyntaxError, IndexError):  # the parser's to say
        pass


def _syntax_error(e: SyntaxError, source: str) -> ExprError:
    """``e`` of the wrapped ``source`` at its place in ``source``: an error on the added
    closing line is at the end of the expression (it pointed at the next key of the file);
    a column in characters (the tokenizer's are bytes: parsed again with the non-ASCII
    characters replaced, when that gives the same error)."""
    line, col = e.lineno or 1, e.offset or 1
    if any(ord(c) > 127 for c in source):
        ascii_only = "".join(c if ord(c) < 128 else "x" for c in source)
        try:
            ast.parse("(" + ascii_only + "\n)", mode="eval")
        except SyntaxError as a:
            if a.msg == e.msg and a.lineno == e.lineno:
                col = a.offset or col
    lines, where = source.split("\n"), ""
    if line > len(lines):  # on the added ")": the expression ended too early (after its last
        lines = source.rstrip().split("\n")  # line that is not blank)
        line, where = len(lines), " at the end of the condition"
        col = len(lines[-1].rstrip()) + 1 + (line == 1)
    # (text values and comments aside, covered to their length: a habit is said where it is,
    # where `amount > 10 AND x` was said at the condition's start, `&&` at its place: a README
    # walk; a text left open is blanked to its line's end: a review)
    # (a text as a value, "_"s: `x == 'a'` has its value, `x ==` none)
    bare = re.sub(
        r"'[^'\n]*'?|\"[^\"\n]*\"?|#[^\n]*",
        lambda m: ("_" if m[0][0] in "'\"" else " ") * len(m[0]),
        source,
    )
    found = next(((h, m) for pattern, h in _HABITS if (m := re.search(pattern, bare))), None)
    hint = found[0].format(*found[1].groups()) if found is not None else ""
    if found is not None and not where:
        at = found[1].start()
        line = bare.count("\n", 0, at) + 1
        col = at - bare.rfind("\n", 0, at) + (line == 1)
    elif "forgot a comma" in e.msg and (pair := _side_by_side(source)) is not None:
        # (`amount > 5 amount < 7` was told of a comma, which joins nothing here but a list's
        # items, at the condition's start: a README walk)
        line, col, listed = pair
        col += 1 + (line == 1)  # (1-based, and the wrapping "(" of the first line)
        hint = (
            " (a comma is missing between the list's items)"
            if listed
            else " (two conditions side by side: join them with 'and' or 'or')"
        )
    # (Python's own advice is no option here: its ':=', its comma; said as above)
    msg = re.split(r"\. (?:Maybe you meant|Perhaps you forgot)", e.msg)[0]
    return ExprError(f"syntax error{where}: {msg}{hint}", line, max(1, col - (line == 1)))


#: Tokens that end a value (a name, a number, a text, a closing bracket) and that begin one,
#: for :func:`_side_by_side`; words of the language that join values are neither.
_JOINING = frozenset({"and", "or", "not", "in", "is", "if", "else"})


def _side_by_side(source: str) -> tuple[int, int, bool] | None:
    """Where the first of two values written side by side begins its second (line, column
    from 0), and whether they are items of a list; ``None`` when no such pair is found."""
    depth: list[str] = []  # the brackets open
    last: tokenize.TokenInfo | None = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                continue
            word = tok.type == tokenize.NAME and tok.string not in _JOINING
            begins = word or tok.type in (tokenize.NUMBER, tokenize.STRING) or tok.string == "("
            if begins and last is not None:
                ends = last.type in (tokenize.NUMBER, tokenize.STRING) or last.string in ")]"
                if ends or (last.type == tokenize.NAME and last.string not in _JOINING):
                    return tok.start[0], tok.start[1], bool(depth) and depth[-1] == "["
            if tok.string in "([":
                depth.append(tok.string)
            elif tok.string in ")]" and depth:
                depth.pop()
            last = tok
    except (tokenize.TokenError, SyntaxError):
        return None
    return None


# Other languages' habits that are syntax errors here, and what to write instead
_HABITS = (
    (
        rf"\bextra\.({'|'.join(keyword.kwlist)})\b",
        " (a column named as a word of the language: write extra['{0}'])",
    ),
    (r"=<|=>", " (write <= or >=)"),
    # (pasted from a document or a chat: said as an invalid character alone, a QA pass)
    (r"≥", " (write >=)"),
    (r"≤", " (write <=)"),
    (r"≠", " (write !=)"),
    (r"([‘’“”])", " (write texts in straight quotes, 'KR', not {0})"),
    (r";\s*$", " (no ';' at the end: a condition is one expression)"),
    (r"&&|\|\|", " (write 'and' / 'or' for && / ||)"),
    (r"(?<![=<>!])=(?![=<>])", " (compare with ==; a single = assigns nothing here)"),
    (r"!(?!=)", " (write 'not' for !)"),
    (r"\b(AND|OR|NOT|And|Or|Not)\b", " (write and / or / not in lower case: {0} is a name)"),
    (r"\bbetween\b", " (write a range as 1 <= amount <= 5)"),
    (r"\b(and|or)\s+(and|or)\b", " ('{0} {1}': one word too many, or a condition left out)"),
    (r"\b(and|or)\s*$", " (a condition is missing after the last '{0}')"),
    (
        r"(\*\*|//|[<>=!]=|[<>+*/%-])\s*(?:\b(?:and|or)\b|[)\],]|$|[<>=!]=|[<>])",
        " (a value is missing after '{0}')",
    ),
)


def parse_expr(
    source: str,
    known: Mapping[str, str],
    *,
    allow_extra: bool = True,
    want_bool: bool = True,
    comments: bool | Callable[[str, int, int], bool] = False,
) -> tuple[str, str, tuple[str, ...], dict[str, Any]]:
    """Check ``source``; return (python code, type, names read, helper constants). A ``#``
    comment is refused unless ``comments`` (see :func:`_check_tokens`)."""
    if not isinstance(source, str):
        raise ExprError(f"an expression must be text, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise ExprError(f"expression longer than {MAX_SOURCE_CHARS} characters: split the rule")
    if not source.strip():
        raise ExprError("empty expression: write a condition such as amount > 1000")
    _check_tokens(source, comments)
    # Wrapped in parentheses so that an expression may span lines (YAML block scalars); the
    # column on line 1 is shifted back by the added "(".
    wrapped = "(" + source + "\n)"
    try:
        tree = ast.parse(wrapped, mode="eval")
    except SyntaxError as e:
        raise _syntax_error(e, source) from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise ExprError(f"cannot parse ({type(e).__name__}): simplify the expression") from None
    lines = wrapped.split("\n")
    checker = _Checker(known, allow_extra, lines)
    try:
        code, typ = checker.visit(tree.body, 0, want_bool)
    except RecursionError:
        raise ExprError("expression too deeply nested: simplify it") from None
    if want_bool and typ in (NUM, STR, MIXED):
        kind = {NUM: "a number", STR: "text", MIXED: "text or a number"}[typ]
        raise ExprError(
            f"a rule condition must be true/false, this gives {kind}: compare it, e.g. x > 0",
            tree.body.lineno,
            _column(lines, tree.body.lineno, tree.body.col_offset),
        )
    consts = dict(checker.consts)
    if "_num(" in code:
        consts["_num"] = _num
    if "_coerce(" in code:
        consts["_coerce"] = _coerce
    for helper in (_flag, _isin, _isin_flag, _isin_text, _order, _same, _truth):
        if f"{helper.__name__}(" in code:
            consts[helper.__name__] = helper
    return code, typ, tuple(checker.names), consts


def _namespace(consts: Mapping[str, Any]) -> dict[str, Any]:
    # An empty __builtins__: generated code can only reach what is put here.
    return {"__builtins__": {}, "_Missing": MissingName, **consts}


def compile_expr(
    source: str,
    known: Mapping[str, str],
    *,
    allow_extra: bool = True,
    want_bool: bool = True,
    comments: bool | Callable[[str, int, int], bool] = False,
) -> CompiledExpr:
    """Check and compile one expression.

    Parameters
    ----------
    source
        The expression text.
    known
        Names it may read, with their type (:data:`NUM`, :data:`STR`, :data:`BOOL`, :data:`ANY`).
    allow_extra
        Whether ``extra.NAME`` is allowed.
    want_bool
        Reject expressions whose type is certainly a number or text (a rule needs a condition).
    comments
        Whether ``#`` comments may end its lines, or a function of a comment's text, line
        and column (1-based) that says whether it may (YAML folds the lines of most styles
        into one: a comment then swallowed the rest of the condition).

    >>> compile_expr("abs(a - b) < 2", {"a": NUM, "b": NUM}).evaluate({"a": 1, "b": 2.5})
    True
    """
    code, typ, names, consts = parse_expr(
        source, known, allow_extra=allow_extra, want_bool=want_bool, comments=comments
    )
    lines = ["def _f(v):"]
    if any(n.startswith("extra.") for n in names):
        lines.append("    _e = v.get('extra') or {}")
    for n in names:
        src = f"_e.get({n[6:]!r})" if n.startswith("extra.") else f"v.get({n!r})"
        lines += [f"    {local_name(n)} = {src}", f"    if {_missing(n, local_name(n))}:"]
        lines.append(f"        raise _Missing({n!r})")
    lines.append(f"    return {code}")
    ns = _namespace(consts)
    exec(compile("\n".join(lines), "<rule>", "exec"), ns)  # safe: only whitelisted AST becomes code
    return CompiledExpr(source, code, names, typ, consts, ns["_f"])


def _missing(name: str, local: str) -> str:
    """The test that ``name`` (read into ``local``) is missing: absent or null, and for a value
    of ``extra`` also NaN (a Parquet file's empty float cell; the schema checks the rest)."""
    if name.startswith("extra."):
        return f"{local} is None or {local} != {local}"
    return f"{local} is None"


@dataclass(frozen=True)
class EvalPlan:
    """What :func:`build_evaluator` needs per rule: its expression and its hit record."""

    expr: CompiledExpr
    hit: Mapping[str, Any]


#: Rules compiled together into one function (see :func:`build_evaluator`): ~10 ms of
#: compile() each, which holds the interpreter lock; a ruleset of up to this many is one
#: function (no call per chunk).
CHUNK_RULES = 100

#: Sets of names missing together that :class:`MissingTally` keeps apart before it folds them
#: into counts per name: rules reading a few optional fields make a few dozen sets.
MAX_MASKS = 1024


class MissingTally:
    """Which names were missing, counted by :func:`build_evaluator`'s function: per set of
    names missing together (a bit mask), the transactions it was missing on. Nothing is done
    for a transaction missing none; reports read :meth:`per_name`.

    >>> tally = MissingTally()
    >>> fn = build_evaluator(
    ...     [EvalPlan(compile_expr("amount > n", {"amount": NUM, "n": NUM}), {"id": "r"})],
    ...     {"amount"}, None, tally,
    ... )[0]
    >>> _ = fn({"amount": 1.0}, {}), fn({}, {}), fn({"amount": 1.0}, {"n": 0})
    >>> tally.per_name()
    {'amount': 1, 'n': 2}
    """

    def __init__(self) -> None:
        self.bits: dict[str, int] = {}
        self.masks: dict[int, int] = {}
        self.folded: dict[str, int] = {}  # per name, the counts of the sets folded so far

    def fold(self) -> None:
        """Move the counts per set into counts per name and empty the sets (called when
        :data:`MAX_MASKS` sets are held: one per combination of names missing together grew
        without end, 8 MB per 100,000 transactions of rules reading 32 fields that came and
        went, a QA pass)."""
        names = list(self.bits)  # (bit i is name i)
        folded = self.folded
        for mask, count in self.masks.items():
            while mask:
                low = mask & -mask
                name = names[low.bit_length() - 1]
                folded[name] = folded.get(name, 0) + count
                mask ^= low
        self.masks.clear()

    def per_name(self) -> dict[str, int]:
        """Name -> transactions it was missing on (names never missing left out). On the
        deciding thread (or with it stopped): a fold meanwhile changes the sets."""
        out = {}
        for name, bit in self.bits.items():
            n = self.folded.get(name, 0)
            n += sum(count for mask, count in self.masks.items() if mask & bit)
            if n:
                out[name] = n
        return out


def build_evaluator(
    plans: Sequence[EvalPlan],
    tx_names: Iterable[str],
    clock: Callable[[float], tuple[int, int, bool, bool]] | None,
    tally: MissingTally | None = None,
) -> tuple[
    Callable[..., list[dict[str, Any]]],
    list[int],
    list[int],
    str,
]:
    """Combine compiled rules into ONE function ``evaluate(tx, features, quiet=()) -> hits``.

    Names in ``tx_names`` (and ``extra.*``) are read from ``tx``, built-ins are computed from
    ``tx['ts']`` with ``clock`` (unless ``features`` supplies them, as inline tests do), all
    other names come from ``features``. Returns the function, the per-rule counters of
    missing-name non-fires and of run-time errors (lists updated in place), and the source. A
    rule whose names are missing does not fire; an active rule that raises (``RUNTIME_ERRORS``)
    raises :class:`fds.errors.RuleError`, a shadow rule's error is only counted, and so is that
    of an active rule named in ``quiet`` (demoted to shadow by the guardrails). ``tally``
    counts which names were missing (for reports).
    """
    tx_names = set(tx_names)
    builtins = tuple(BUILTINS)
    used: dict[str, None] = {}
    for p in plans:
        used.update(dict.fromkeys(p.expr.names))
    ns: dict[str, Any] = {"_clock": clock, "_NOCAL": (None, None, None, None)}
    lines = ["def _evaluate(t, f, _q=_NOQ):", "    _hits = []", "    _f = f.get", "    _t = t.get"]
    if any(n.startswith("extra.") for n in used):
        lines.append("    _e = _t('extra') or _EMPTY")
        ns["_EMPTY"] = {}
    if any(n in builtins for n in used):
        # The clock's cache is read inline (a dict lookup, no call) and called only on a miss.
        # A float key finds the int key of equal value: hash(3.0) == hash(3).
        lines.append("    _ts = _t('ts')")
        if clock is not None and hasattr(clock, "cache") and hasattr(clock, "bucket"):
            ns["_calget"] = clock.cache.get
            lines += [
                "    if _ts is None:",
                "        _cal = _NOCAL",
                "    else:",
                f"        _cal = _calget(_ts // {float(clock.bucket)!r})",
                "        if _cal is None:",
                "            _cal = _clock(_ts)",
            ]
        else:
            lines.append("    _cal = _NOCAL if _ts is None or _clock is None else _clock(_ts)")
    # Each name read gets a bit in `_m`, set when it is missing: a rule then checks all its
    # names with one `&` instead of one `is None` test per name.
    bit = {n: 1 << i for i, n in enumerate(used)}
    lines.append("    _m = 0")
    for n in used:
        ln = local_name(n)
        if n.startswith("extra."):
            lines.append(f"    {ln} = _e.get({n[6:]!r})")
        elif n in builtins:
            lines.append(f"    {ln} = _f({n!r}, _cal[{builtins.index(n)}])")
        elif n in tx_names:
            lines.append(f"    {ln} = _t({n!r})")
        else:
            lines.append(f"    {ln} = _f({n!r})")
        lines.append(f"    if {_missing(n, ln)}:")
        lines.append(f"        _m |= {bit[n]}")
    if tally is not None and used:
        tally.bits = bit
        ns.update(_MASKS=tally.masks, _FOLD=tally.fold, _len=len)
        lines += [
            "    if _m:",
            "        _n = _MASKS.get(_m)",
            "        if _n is not None:",
            "            _MASKS[_m] = _n + 1",
            "        else:",
            f"            if _len(_MASKS) >= {MAX_MASKS}:",
            "                _FOLD()",
            "            _MASKS[_m] = 1",
        ]
    missing = [0] * len(plans)
    errors = [0] * len(plans)
    ns.update(
        _MISS=missing,
        _ERR=errors,
        _RUNTIME_ERRORS=RUNTIME_ERRORS,
        _copy=dict,
        _RuleError=RuleError,
        _NOQ=frozenset(),
    )
    blocks: list[list[str]] = []  # per rule, its lines in a function's body
    for i, p in enumerate(plans):
        ns.update(p.expr.consts)
        ns[f"_H{i}"] = p.hit
        block = [f"    # rule {i}: {p.hit.get('id')}"]
        blocks.append(block)
        mask = sum(bit[n] for n in p.expr.names)
        indent = "    "
        if mask:
            block += [f"    if _m & {mask}:", f"        _MISS[{i}] += 1", "    else:"]
            indent = "        "
        block += [
            f"{indent}try:",
            f"{indent}    if {p.expr.code}:",
            f"{indent}        _hits.append(_copy(_H{i}))",
            f"{indent}except _Missing:",  # (text that is no number, used as one)
            f"{indent}    _MISS[{i}] += 1",
            f"{indent}except _RUNTIME_ERRORS as e:",
            f"{indent}    _ERR[{i}] += 1",
        ]
        if p.hit.get("state") == "active":
            rid = p.hit.get("id")  # (one the guardrails demoted to shadow: counted only)
            block.append(f"{indent}    if {rid!r} not in _q:")
            block.append(f"{indent}        raise _RuleError({rid!r}, e) from e")
    # Up to CHUNK_RULES rules are evaluated in the one function; more are split into functions
    # of CHUNK_RULES rules each, called in turn with the values they read, and compiled one by
    # one: compile() holds the interpreter lock, and one function of 8,000 rules held the
    # deciding thread for 0.9 s at each reload (a QA pass).
    starts = range(0, len(plans), CHUNK_RULES)
    sources = []
    for k, c in enumerate(starts if len(starts) > 1 else ()):
        part = range(c, min(c + CHUNK_RULES, len(plans)))
        reads = dict.fromkeys(n for i in part for n in plans[i].expr.names)
        params = ", ".join(["_hits", "_q", "_m", *map(local_name, reads)])
        lines.append(f"    _C{k}({params})")
        sources.append(
            "\n".join([f"def _C{k}({params}):", *(ln for i in part for ln in blocks[i])])
        )
    if len(starts) == 1:
        lines += [ln for b in blocks for ln in b]
    lines.append("    return _hits")
    sources.insert(0, "\n".join(lines))
    full_ns = _namespace(ns)
    for source in sources:  # safe: only whitelisted AST becomes code
        exec(compile(source, "<ruleset>", "exec"), full_ns)
    return full_ns["_evaluate"], missing, errors, "\n\n".join(sources)
