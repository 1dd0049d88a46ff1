"""YAML as the project reads its own files (mappings, model specs, settings): PyYAML's safe
loader, refusing a key written twice in one mapping (PyYAML keeps the last one without a word:
``tx_id: TID`` then ``tx_id: SHOP`` silently mapped every id to a shop). Rules files have a
loader of their own with the same check (:mod:`fds.rules.ruleset`).

>>> load("a: 1\\nb: {c: 2}\\n")
{'a': 1, 'b': {'c': 2}}
>>> load("l2: 1e-4\\nlr: 5E-2\\nid: '1e3'\\n", exponents=True)
{'l2': 0.0001, 'lr': 0.05, 'id': '1e3'}
>>> load("version: 3e45071\\n")
{'version': '3e45071'}
>>> load("a: 1\\nb: 2\\na: 3\\n")
Traceback (most recent call last):
...
yaml.constructor.ConstructorError: while constructing a mapping
  in "<unicode string>", line 1, column 1:
    a: 1
    ^
duplicate key 'a': remove one of them
  in "<unicode string>", line 3, column 1:
    a: 3
    ^
"""

from __future__ import annotations

import logging
import os
import re
import select
import stat
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from fds.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "check_printable",
    "decode",
    "exponent_hint",
    "fields_at",
    "kind_of",
    "load",
    "other_file",
    "read_bytes",
    "read_text",
]

_MERGE = "tag:yaml.org,2002:merge"
_BOOL, _STR = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:str"
#: Nodes a document's aliases may add once expanded (a 600-byte model spec of anchors nested
#: ten deep passed, and publishing it expanded 10^10 values: a QA pass).
MAX_NODES = 100_000


class _Strict(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Each mapping's own keys, checked before merge keys bring others in: PyYAML flattens
        # a mapping merged into another in place, so its merged keys are not its own (a check
        # after that refused `{<<: *base, a: 2}` merged further: a review).
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: set[Any] = set()
            for knode, _ in node.value:
                if knode.tag == _MERGE:  # (<<: *defaults: its keys may be overridden)
                    continue
                if knode.tag == _BOOL and isinstance(knode, yaml.ScalarNode) and not knode.style:
                    # a key `on:`, `yes:`, `no:` is that word, not YAML 1.1's true/false: no
                    # file of fds has a key that is one (a model spec's `on: amount` was said
                    # as "no parameter True", a typo `yes:` as "unknown key True" with no
                    # line: a QA pass)
                    knode.tag = _STR
                key = self.construct_object(knode, deep=True)
                try:
                    again = key in seen
                except TypeError:  # unhashable: the constructor says so
                    break
                if again:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r}: remove one of them", knode.start_mark,
                    )  # fmt: skip
                seen.add(key)
        super().flatten_mapping(node)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as e:  # (2018-13-45: said with no line, a QA pass)
            raise yaml.constructor.ConstructorError(
                None, None,
                f"{node.value} reads as a date that does not exist ({e}): fix it, or quote it",
                node.start_mark,
            ) from None  # fmt: skip


_Strict.add_constructor("tag:yaml.org,2002:timestamp", _Strict.construct_yaml_timestamp)


#: A number with an exponent (`1e-4`, `5e-2`, `1E5`), as YAML 1.2 reads it: PyYAML (YAML
#: 1.1) reads one without a decimal point and a signed exponent as text.
_EXPONENT = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+")


class _Numbers(_Strict):
    """:class:`_Strict` reading :data:`_EXPONENT` as a number, for model specs (`l2: 1e-4`
    failed inside River, a QA pass), whose values are numbers far more often than texts shaped
    like one. Not for the others: a rules `version: 3e45071` (a git hash) or a settings
    `group: 1e3` would become numbers (a review)."""


_Numbers.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(f"^{_EXPONENT.pattern}$"), list("-+0123456789.")
)


def kind_of(value: Any) -> str:
    """What YAML made of an unquoted scalar, for an error message that says to quote it.

    >>> kind_of(False), kind_of(42)
    ('a boolean (False)', 'the number 42')
    """
    if value is None:
        return "a null (NULL, ~)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    return f"the number {value}" if isinstance(value, int | float) else f"a {type(value).__name__}"


#: A key each kind of the project's YAML files has and no other kind takes, what the kind is
#: and the option that takes it.
_FILE_KINDS = (
    ("pipeline", "a model spec", "--model"),
    ("fields", "a column mapping", "--mapping"),
    ("rules", "a rules file", "--rules"),
)
#: Keys that make a file the kind its option takes, whatever else it holds (a rules file with
#: `fields:` for `features:` is told that key is unknown, not that it is a mapping: a review).
_OWN_KEYS = {
    "--model": ("pipeline", "name"),
    "--mapping": ("fields",),
    "--rules": ("version", "rules", "features", "policy"),
}


def other_file(data: Any, flag: str, path: Any) -> None:
    """Refuse ``data``, read from ``path`` for the option ``flag``, when it is another kind of
    the project's files (a model spec given as --rules was told its keys were unknown, `gate`
    a misspelt `grace`: a QA pass)."""
    if not isinstance(data, dict) or any(k in data for k in _OWN_KEYS[flag]):
        return
    wanted = next(what for _, what, takes in _FILE_KINDS if takes == flag)
    for key, what, takes in _FILE_KINDS:
        if takes != flag and key in data:  # (not "what --rules takes": `fds rules check`
            raise ConfigError(  # and backtest have no --rules, a QA pass)
                f"this is {what} (it has {key}:), not {wanted}: give it with {takes} {path}",
                where=str(path),
            )


def exponent_hint(v: Any) -> str:
    """A hint for a number YAML 1.1 read as text: ``1e-3`` (it wants ``1.0e-3``; a QA pass).

    >>> exponent_hint("5e-2")
    ' (YAML reads 5e-2 as text: write it 0.05 or with a decimal point)'
    """
    if isinstance(v, str) and _EXPONENT.fullmatch(v.strip()):
        return f" (YAML reads {v} as text: write it {float(v):g} or with a decimal point)"
    return ""


#: The largest mapping, model spec or settings file read (each is a few KB): `--model
#: /dev/zero` was read until memory ran out (a QA pass).
MAX_TEXT_BYTES = 5_000_000


def read_text(path: Path, what: str) -> str:
    """The text of the project's file ``path`` (a mapping, model spec, settings); what cannot
    be read (a folder, no permission), more than :data:`MAX_TEXT_BYTES` and bytes that are
    not UTF-8 are a :class:`ConfigError` at their place (a folder or a Latin-1 spec was a
    traceback)."""
    data = read_bytes(path, what, limit=MAX_TEXT_BYTES)
    if len(data) > MAX_TEXT_BYTES:
        raise ConfigError(
            f"larger than {MAX_TEXT_BYTES // 1_000_000} MB, more than {what} can be; check the "
            "path",
            where=str(path),
        )
    return decode(data, str(path))


#: How long a pipe given as a file (`<(...)`, a FIFO) may take to start being written.
PIPE_WAIT_S = 30.0
#: ... and after this long without a byte, the wait is said.
PIPE_SAY_AFTER_S = 2.0


def read_bytes(path: str | Path, what: str, *, limit: int | None = None, hint: str = "") -> bytes:
    """The bytes of the file ``path``, read once (a pipe such as ``<(...)`` too), and with a
    ``limit`` no more than ``limit + 1`` of them: the caller refuses a file larger than its
    limit (``/dev/zero`` as a rules file was read until memory ran out, a QA pass). What
    cannot be read is a :class:`ConfigError` naming ``what``, then ``hint``.

    >>> read_bytes("/no/r.yaml", "the rules file")
    Traceback (most recent call last):
    fds.errors.ConfigError: /no/r.yaml: cannot read the rules file: No such file or directory
    """
    try:
        # (non-blocking: a FIFO no one writes to was waited for without end, a QA pass)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):  # a pipe, <(...) too: its writer is given
                waiting = select.poll()  # PIPE_WAIT_S to start (read as empty, a review)
                waiting.register(fd, select.POLLIN)
                first = min(PIPE_SAY_AFTER_S, PIPE_WAIT_S)
                if not waiting.poll(first * 1000):  # (30 s without a word: a QA pass on a
                    log.warning(  # FIFO given as the rules file)
                        'waiting up to %g s for %s: path="%s" is a pipe nothing was written '
                        "to yet", PIPE_WAIT_S, what, path,
                    )  # fmt: skip
                if not waiting.poll((PIPE_WAIT_S - first) * 1000):
                    raise ConfigError(
                        f"nothing was written to this pipe in {PIPE_WAIT_S:g} s, where {what} "
                        f"was to come{hint}",
                        where=str(path),
                    )
            os.set_blocking(fd, True)
            return f.read(-1 if limit is None else limit + 1)
    except OSError as e:
        why = e.strerror or e
        raise ConfigError(f"cannot read {what}: {why}{hint}", where=str(path)) from None


def decode(data: bytes, filename: str) -> str:
    """A file's bytes as text; bytes that are not UTF-8, and characters YAML does not allow
    (:func:`check_printable`), are an error at their line.

    >>> decode(b"version: '1'\\nrules: [caf\\xe9]\\n", "r.yaml")
    Traceback (most recent call last):
    fds.errors.ConfigError: r.yaml:2:12: byte 0xe9 is not UTF-8: save the file as UTF-8
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start]
        raise ConfigError(
            f"byte 0x{bad:02x} is not UTF-8: save the file as UTF-8",
            where=f"{filename}:{line}:{col}",
        ) from None
    check_printable(text, filename)
    return text


def check_printable(text: str, filename: str) -> None:
    """Refuse the first character YAML does not allow (a control character: NUL, BEL, ...)
    at its line and column (PyYAML said ``unacceptable character #x0007`` at a position
    counted in characters, with its internals over two lines: a QA pass).

    >>> check_printable('version: "1"\\nreason: "a\\x00b"\\n', "r.yaml")
    Traceback (most recent call last):
    fds.errors.ConfigError: r.yaml:2:11: control character U+0000: remove it
    """
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)  # (the characters PyYAML refuses)
    if bad is not None:
        i = bad.start()
        c = bad.group()
        what = "control character" if unicodedata.category(c) == "Cc" else "character"
        raise ConfigError(
            f"{what} U+{ord(c):04X}: remove it",
            where=f"{filename}:{text.count(chr(10), 0, i) + 1}:{i - text.rfind(chr(10), 0, i)}",
        )


def _expanded(node: yaml.Node, limit: int, memo: dict[int, int]) -> int:
    got = memo.get(id(node))
    if got is not None:
        return got
    memo[id(node)] = limit + 1  # (a node inside itself: past any limit)
    total = 1
    for child in _children(node):
        total += _expanded(child, limit, memo)
        if total > limit:
            total = limit + 1
            break
    memo[id(node)] = total
    return total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def past_limit(node: yaml.Node, extra: int = MAX_NODES) -> yaml.Node | None:
    """The innermost node of the document ``node`` that holds more than ``extra`` nodes (or ten
    times those written, if more) beyond those written, with every alias counted where it is
    used (merge keys included), or None.
    PyYAML shares an alias's value, but what walks the data later (a JSON dump, a validation,
    merge keys' flattening) visits it at each use: 600 bytes of anchors nested ten deep are
    10^9 values. (Beyond those written: a long file without aliases is as long as it is.)"""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) not in seen:
            seen.add(id(n))
            stack.extend(_children(n))
    # (ten times what is written too: a default merged into each of 12,000 rules, `<<: *d`,
    # added more than 100,000, a review; a bomb multiplies what it adds at each level)
    limit = len(seen) + max(extra, 10 * len(seen))
    memo: dict[int, int] = {}
    if _expanded(node, limit, memo) <= limit:
        return None
    while True:  # down to where the aliases pile up
        past = [n for n in _children(node) if memo.get(id(n), 0) > limit]
        if not past:
            return node
        node = past[0]


def explain(e: yaml.YAMLError, text: str) -> tuple[str, Any]:
    """A YAML syntax error's problem, said with what YAML was reading and where that began,
    and the mark to report: where that began when the problem is the end of the text (an
    unclosed quote or bracket named a line past the file and dropped where it began: a QA
    pass); a tab named as one.

    >>> try:
    ...     load('a: 1\\nb: "open\\nc: 2\\n')
    ... except yaml.YAMLError as e:
    ...     problem, mark = explain(e, "")
    >>> problem, mark.line + 1
    ('found unexpected end of stream (while scanning a quoted scalar from line 2, column 4)', 2)
    """
    problem = str(getattr(e, "problem", None) or e)
    mark = getattr(e, "problem_mark", None)
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and lines[mark.line][mark.column :][:1] == "\t":
        problem = f"{problem}: a tab: YAML indents with spaces only"
    same = mark is not None and start is not None and (start.line, start.column) == (
        mark.line, mark.column
    )  # fmt: skip
    if context and start is not None and not same:
        problem = f"{problem} ({context} from line {start.line + 1}, column {start.column + 1})"
        if mark is None or mark.line >= len(lines):  # (the end of the text: where it began)
            mark = start
    elif mark is not None and mark.line >= len(lines) and (opened := _open_bracket(text)):
        # (`rules: [` at the end: "line 3: did not find expected node content", one past the
        # file, nothing of the bracket: a README walk)
        char, mark = opened
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        problem = f"{problem}: the {char!r} at {where} is never closed"
        return problem, mark
    if mark is None or mark.line >= len(lines):
        return problem, mark
    if problem.startswith("mapping values are not allowed") and (deeper := _deeper(lines, mark)):
        return f"{problem}: {deeper}", mark
    if not _BLOCK.search(problem):
        return problem, mark
    quoted = _quote_ending_on(text, mark.line)
    if quoted is not None:  # (a quote left open runs on to the next quote, lines below, where
        # the error was said with no word of the quote: a README walk)
        char, start = quoted
        problem = (
            f"the {char} at line {start.line + 1}, column {start.column + 1} is closed only on "
            f"line {mark.line + 1}: is a quote left open on line {start.line + 1}? ({problem})"
        )
        return problem, start
    before = lines[mark.line][: mark.column].rstrip()
    if before[-1:] in ("'", '"'):  # (`'this card's history'`: the text ended at its inner quote,
        return (  # and the hint below asked about an indentation that was right: a review)
            f"{problem}: a quote inside a quoted text ends it: write it twice inside '...' "
            "('card''s'), as \\\" inside \"...\", or quote the text with the other quote"
        ), mark
    if before.strip():  # (the problem is inside the line, not its indentation)
        return problem, mark
    return f"{problem}: is line {mark.line + 1} indented as the lines of its block?", mark


def _deeper(lines: list[str], mark: Any) -> str | None:
    """Why a key's ``:`` on line ``mark`` is refused when the line is indented deeper than the
    key and value above it: YAML reads it as more of that value (`decline_at: 0.9` indented one
    space less than the next key was said at the next line with no word of either: a README
    walk); ``None`` otherwise."""
    line = lines[mark.line]
    above = next((i for i in range(mark.line - 1, -1, -1) if lines[i].strip()), None)
    key = line[: mark.column].strip()
    if above is None or not key or ":" in key:  # (the line's first key only)
        return None
    indent = len(line) - len(line.lstrip(" "))
    prev = lines[above]
    if indent <= len(prev) - len(prev.lstrip(" ")) or not re.search(r":\s+\S", prev):
        return None
    return (
        f"line {mark.line + 1} is indented deeper than line {above + 1}, so YAML reads it as "
        f"more of line {above + 1}'s value: indent keys of one block alike"
    )


#: Syntax errors of a block's layout: the text's indentation, or a quote left open before it.
_BLOCK = re.compile(r"expected key|expected '-' indicator|expected <block end>")


def _quote_ending_on(text: str, line: int) -> tuple[str, Any] | None:
    """The quote character and start mark of a quoted text over several lines that ends on
    ``line`` (0-based), or None."""
    found = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if (
                isinstance(token, yaml.ScalarToken)
                and token.style in ('"', "'")
                and token.start_mark.line < token.end_mark.line == line
            ):
                found = token.style, token.start_mark
    except yaml.YAMLError:
        pass
    return found


def _open_bracket(text: str) -> tuple[str, Any] | None:
    """The innermost ``[`` or ``{`` left open when ``text`` ends, and its mark, or None."""
    opened: list[tuple[str, Any]] = []
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.FlowSequenceStartToken | yaml.FlowMappingStartToken):
                opened.append(("[" if isinstance(token, yaml.FlowSequenceStartToken) else "{",
                               token.start_mark))  # fmt: skip
            elif opened and isinstance(token, yaml.FlowSequenceEndToken | yaml.FlowMappingEndToken):
                opened.pop()
    except yaml.YAMLError:
        pass
    return opened[-1] if opened else None


def load(text: str, *, exponents: bool = False) -> Any:
    """The YAML document in ``text``; raises :class:`yaml.YAMLError` (marked with the line of
    the problem) on a syntax error, a duplicate key, or aliases that expand it past
    :data:`MAX_NODES`. ``exponents``: `1e-4` is a number."""
    loader = (_Numbers if exponents else _Strict)(text)  # (SafeLoaders)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        bomb = past_limit(node)
        if bomb is not None:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"its aliases (*name) expand to more than {MAX_NODES} YAML nodes: simplify "
                "the file", bomb.start_mark,
            )  # fmt: skip
        return loader.construct_document(node)
    finally:
        loader.dispose()


def without_own_keys(data: Any) -> Any:
    """A document's top-level keys ``x-...`` left out: the file's own, ignored (as
    docker-compose does), a place for the anchors of merge keys (``x-defaults: &d {...}`` then
    ``<<: *d``), in rules files, model specs, mappings and settings files alike (a spec or a
    mapping refused them as unknown keys: a QA pass).

    >>> without_own_keys({"x-base": {"a": 1}, "name": "m", 3: "x"})
    {'name': 'm', 3: 'x'}
    """
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}


def fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) pydantic model at ``loc`` (list indices skipped): what
    an unknown key of a file could have meant."""
    for k in loc:
        if not isinstance(k, str) or model is None:
            continue
        fields = getattr(model, "model_fields", {})
        if k not in fields:  # a key of a mapping of models (``topics: {t: ...}``): its model
            continue
        ann = fields[k].annotation
        model = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if hasattr(a, "model_fields")), None
        )
    return list(getattr(model, "model_fields", {}))
