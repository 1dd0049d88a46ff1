"""Rules files: the pydantic model, a line-aware YAML loader, and the compiled :class:`Ruleset`.

A rules file (format in DESIGN.md, "Rules file") declares windowed features, rules and the
decision policy. :func:`load_ruleset` validates it, compiles every ``when`` once (names known =
transaction fields, ``extra.NAME``, declared features and the built-ins ``hour``, ``weekday``,
``is_night``, ``is_weekend``) and returns a :class:`Ruleset` whose :meth:`Ruleset.evaluate` is one
generated Python function. Every error names ``file:line:column`` and says what to do.

>>> rs = load_ruleset_text('''
... version: "1"
... features:
...   - {name: card_count_1h, entity: card_id, agg: count, window: 1h}
... rules:
...   - id: burst
...     when: card_count_1h >= 5 and amount < 2
...     action: review
...     score: 0.7
...     reason: Card-testing burst
...     tests:
...       - {given: {card_count_1h: 9, amount: 1}, expect: hit}
... ''')
>>> rs.evaluate({"amount": 1.0, "ts": 0.0}, {"card_count_1h": 6})  # doctest: +NORMALIZE_WHITESPACE
[{'id': 'burst', 'action': 'review', 'score': 0.7, 'reason': 'Card-testing burst',
  'state': 'active'}]
>>> [r.passed for r in rs.run_tests()]
[True]
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import functools
import itertools
import json
import keyword
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fds import yamlio
from fds.errors import ConfigError, ValidationError
from fds.features.spec import (  # one definition of each
    AGGS,
    DEFAULT_GRACE,
    FIELD_AGGS,
    RESERVED,
    as_read,
    entity_problem,
    extra_key,
    grace_seconds,
    reserved,
    window_seconds,
)
from fds.models.vector import MODEL_INPUTS
from fds.policy import SCORE_DECIMALS, round_to
from fds.rules.expr import (
    BOOL,
    BUILTINS,
    CHUNK_RULES,
    NUM,
    RUNTIME_ERRORS,
    STR,
    CompiledExpr,
    EvalPlan,
    ExprError,
    MissingName,
    MissingTally,
    build_evaluator,
    compile_expr,
)
from fds.schema import TX_FIELDS, read_fields
from fds.timeutil import DURATION_PATTERN, get_zone, parse_ts

__all__ = [
    "AGGS",
    "BUILTINS",
    "FeatureSpec",
    "LocalClock",
    "PolicySpec",
    "Rule",
    "RuleTest",
    "RulesFile",
    "Ruleset",
    "TestResult",
    "export_schema",
    "load_ruleset",
    "load_ruleset_text",
]

log = logging.getLogger("fds.rules")

# Night = 00:00-05:59 local: the hours card-fraud studies single out (owners asleep).
NIGHT_END_HOUR = 6
_NUM_TX_FIELDS = frozenset({"amount", "lat", "lon", "ts"})
#: Types of the transaction contract fields as rules see them (``extra`` is read as extra.NAME).
TX_TYPES: dict[str, str] = {
    f: (NUM if f in _NUM_TX_FIELDS else STR) for f in sorted(TX_FIELDS) if f != "extra"
}
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
_RULE_ID = r"^[A-Za-z][A-Za-z0-9_.\-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One declared windowed aggregate (computed by :mod:`fds.features`).

    >>> FeatureSpec(name="c1h", entity="card_id", agg="count", window="1h").window_seconds
    3600.0
    >>> FeatureSpec(name="day", entity="card_id", agg="sum", field="amount",
    ...             window="calendar_day").window_seconds is None
    True
    """

    name: str = Field(pattern=_IDENT, description="name rules and the model use")
    entity: str = Field(description="transaction field the state is kept per, e.g. card_id")
    agg: Literal[
        "count", "sum", "mean", "min", "max", "std", "distinct", "seen", "last_gap",
        "fraud_count", "fraud_rate",
    ]  # fmt: skip
    field: str | None = Field(default=None, description="value field for sum/mean/.../seen")
    window: str = Field(
        description="duration (90s, 10m, 1h, 7d) or calendar_day",
        # (for editors: `1hr` passed the schema, a QA pass; the validator below decides)
        json_schema_extra={"pattern": f"^(calendar_day|{DURATION_PATTERN})$"},
    )

    @field_validator("entity", "field", mode="before")
    @classmethod
    def _extra_as_rules_write_it(cls, v: Any) -> Any:
        """``extra['fee amt']`` (as a rule reads it) is ``extra.fee amt`` (it was refused, a
        QA pass)."""
        return as_read(v)

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: Any) -> Any:
        try:  # (one check with the feature plan's: `.inf` was told as 'infs', an infinite
            window_seconds(v, "window")  # window passed here and failed there, QA passes)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("window: ")) from None
        return f"{v}s" if isinstance(v, int | float) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _field_matches_agg(self) -> FeatureSpec:
        if self.agg in FIELD_AGGS and not self.field:
            raise ValueError(f"agg {self.agg} needs `field` (e.g. field: amount)")
        if self.agg not in FIELD_AGGS and self.field:
            raise ValueError(f"agg {self.agg} does not read a field: remove `field`")
        return self

    @property
    def window_seconds(self) -> float | None:
        """The sliding window length in seconds; None for ``calendar_day``."""
        return window_seconds(self.window, f"feature {self.name!r}")

    # One feature however its window is written: `90s` and `1.5m`, `2w` and `14d` were
    # "feature declarations changed" to a hot reload (a QA pass).
    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.entity, self.agg, self.field, self.window_seconds)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, FeatureSpec) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())


class RuleTest(_Strict):
    """An inline test: the values a rule reads, and whether it must fire."""

    given: dict[str, Any] = Field(description="names the rule reads; extra.NAME or extra: {...}")
    expect: Literal["hit", "miss"]


class Rule(_Strict):
    """One rule: a condition, what it does, why."""

    id: str = Field(pattern=_RULE_ID, description="stable id, reported in decisions")
    when: str = Field(min_length=1, description="condition in the rule expression language")
    action: Literal["approve", "review", "decline"]
    score: float = Field(
        ge=0, le=1, strict=True, allow_inf_nan=False, description="contribution to the final score"
    )
    reason: str = Field(min_length=1, description="reason shown with the decision")
    state: Literal["active", "shadow", "paused"] = "active"
    breaker: bool = Field(
        default=True,
        strict=True,
        description="false: the rate breaker never demotes this rule for its decline or review "
        "rate (a fraud wave it catches); one that raises on many cards is still demoted",
    )
    tests: list[RuleTest] = Field(default_factory=list)


class PolicySpec(_Strict):
    """Final-score thresholds and the optional daily alert budget (see :mod:`fds.policy`)."""

    # Strict: `true` or "0.5" is a typo, not a number; 0 would review or decline everything.
    decline_at: float = Field(default=0.9, gt=0, le=1, strict=True, allow_inf_nan=False)
    review_at: float = Field(default=0.5, ge=0, le=1, strict=True, allow_inf_nan=False)
    alert_budget_per_day: int | None = Field(default=None, gt=0, strict=True)
    breaker_multiple: float = Field(
        default=3.0,
        gt=1,
        strict=True,
        allow_inf_nan=False,
        description="the rate breaker demotes a rule (or the model) whose decline or review "
        "rate alone exceeds this multiple of the engine's baseline rate",
    )
    alert_budget_scope: Literal["instance", "group"] = Field(
        default="instance",
        description="instance: each engine (each `fds run` of a group) reviews up to the "
        "budget; group: the budget is the whole consumer group's, each instance holding the "
        "share of the input's partitions it is assigned",
    )

    @field_validator("decline_at", "review_at")
    @classmethod
    def _decided_as_written(cls, v: float) -> float:
        if round_to(v, SCORE_DECIMALS) != v:  # (0.8999996 declined at 0.9000001: a QA pass)
            step = 10**SCORE_DECIMALS
            near = (math.floor(v * step) / step, math.ceil(v * step) / step)
            fix = " or ".join(f"{x:.{SCORE_DECIMALS}f}" for x in near if x > 0)  # (0: refused)
            raise ValueError(
                f"{v} has more decimals than the {SCORE_DECIMALS} the final score is rounded "
                f"to before it is compared: write {fix}"
            )
        return v

    @model_validator(mode="after")
    def _ordered(self) -> PolicySpec:
        if self.review_at > self.decline_at:
            raise ValueError("review_at must be <= decline_at")
        if self.review_at == 0:  # (also with a budget: it is the threshold while it warms up)
            raise ValueError(
                "review_at 0 sends every transaction to review (with alert_budget_per_day, "
                "while the budget warms up): give a threshold > 0, e.g. 0.05; a budget raises it"
            )
        return self


#: Characters no version holds: control characters (line breaks, tabs) and Unicode's line and
#: paragraph separators (written escaped, "1\n2", or as a block, `version: |`).
_UNPRINTED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BREAKS = "\n\r\x85\u2028\u2029"


#: The largest max_entities (a trillion: beyond any memory; 2**64 crashed the ruleset's digest,
#: a QA pass).
MAX_CAP = 10**12


class RulesFile(_Strict):
    """The whole rules file."""

    version: str = Field(description="recorded in every decision, e.g. 2026-11-22.1")
    timezone: str = Field(default="UTC", description="IANA zone for hour/weekday/calendar_day")
    grace: str = Field(
        default=DEFAULT_GRACE,
        description="how late (behind the latest event time seen) an event may be and still be "
        "folded into its windows exactly; a later one is decided on the state held and flagged "
        "late (a duration: 90s, 5m, 1h; 0: any event behind the latest is late)",
        json_schema_extra=lambda schema: _duration_or_seconds(schema),
    )
    max_entities: dict[str, Annotated[int, Field(strict=True, gt=0, le=MAX_CAP)]] = Field(
        default_factory=dict,
        description="the most entities of each entity type (a features' entity: card_id, ...) "
        "the window state holds; past it the entities idle longest are evicted before their "
        "windows end (default: no cap, each held until its longest window is over)",
    )
    features: list[FeatureSpec] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    policy: PolicySpec = Field(default_factory=PolicySpec)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        if isinstance(v, float):  # 1.10 would be recorded as "1.1"
            raise ValueError(f"a version written as a number ({v!r}) may not be recorded as "
                             'written: quote it (version: "...")')  # fmt: skip
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, date):  # YAML reads 2026-11-22 as a date
            raise ValueError(f'a version written as a date ({v}) is read as a date: quote it '
                             f'(version: "{v}")')  # fmt: skip
        if isinstance(v, str) and not v.strip():
            raise ValueError('the version is empty: give one, e.g. version: "2026-11-30.1"')
        bad = _UNPRINTED.search(v) if isinstance(v, str) else None
        if bad is not None:  # (it goes into every decision and a metric label: a QA pass)
            what = "a line break" if bad.group() in _BREAKS else "a control character"
            raise ValueError(
                f"the version holds {what} (U+{ord(bad.group()):04X}): write it on one line "
                'of printable characters, e.g. version: "2026-11-30.1"'
            )
        if isinstance(v, str) and (not v.isprintable() or v != v.strip()):
            # (an invisible one, "v1\u200b" or "v1 ", passed the guard against other rules
            # under a version served: it looked like v1 in logs and labels, a QA pass)
            hidden = next((c for c in v if not c.isprintable()), None)
            what = "a space at an end"
            if hidden:
                what = f"an invisible character (U+{ord(hidden):04X})"
            raise ValueError(
                f"the version holds {what}: write it of visible characters, e.g. "
                'version: "2026-11-30.1"'
            )
        return v

    @field_validator("grace", mode="before")
    @classmethod
    def _grace(cls, v: Any) -> Any:
        try:  # (one check with the feature plan's)
            grace_seconds(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return f"{v}s" if isinstance(v, int | float) else v  # (a bool was refused above)

    @property
    def grace_seconds(self) -> float:
        """The grace period in seconds (``5m``: 300.0)."""
        return grace_seconds(self.grace)


def _duration_or_seconds(schema: dict[str, Any]) -> None:
    """In the JSON Schema: a duration, or a number of seconds, as fds reads ``grace`` (the
    schema said text only: an editor flagged ``grace: 0``, which fds takes, a QA pass)."""
    del schema["type"]
    schema["anyOf"] = [
        {"type": "string", "pattern": f"^{DURATION_PATTERN}$"},
        {"type": "number", "minimum": 0},
    ]


def export_schema(path: str | Path | None = None) -> str:
    """The JSON Schema of rules files (for editors); written to ``path`` when given.

    >>> '"rules"' in export_schema()
    True
    """
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(RulesFile.model_json_schema())
    schema["title"] = "fds rules file"
    # top-level x-... keys are the file's own (anchors for merge keys), ignored by fds
    schema["patternProperties"] = {"^x-": {}}
    _first_paragraphs(schema)
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def _first_paragraphs(node: Any) -> None:
    # Docstrings become schema descriptions; editors need their first paragraph, not doctests.
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                node[k] = v.split("\n\n")[0].strip()
            else:
                _first_paragraphs(v)
    elif isinstance(node, list):
        for v in node:
            _first_paragraphs(v)


# ---------------------------------------------------------------- YAML with positions

Mark = tuple[int, int, str | None]  # 1-based line, 1-based column, scalar style
# A 100-rule file is ~40 KB and ~3,000 nodes; these bound hostile or broken files.
MAX_FILE_SIZE = 5_000_000  # bytes of a rules file (characters of a text given as such)
#: Different names the evaluated rules of one file may read: each is read for every
#: transaction, and one missing sets its bit in a mask as wide as the names (14,000 names
#: failed to compile, 9,000 took 3.3 ms per transaction: a QA pass); a large ruleset reads a
#: few hundred.
MAX_NAMES = 1000
#: Rules of one file: each is evaluated for every transaction. 40,000 trivial ones (3.3 MB, in
#: the size bound) took ~2 min of CPU to load and 15-27 ms a transaction once in force, a
#: service of 100 tx/s fell behind (a QA pass); the benchmarks reload up to 8,000 (98 ms).
MAX_RULES = 10_000
MAX_NESTING = 50  # YAML levels; a rules file has about five
#: Path suffix under which the position of a mapping KEY is recorded (the value's is the path).
KEY = "\0key"


if hasattr(yaml, "CSafeLoader"):

    class _SteppedLoader(yaml.composer.Composer, yaml.CSafeLoader):
        """libyaml's events, PyYAML's composer: composing the nodes in one call to libyaml held
        the interpreter lock, so a reload of a 1-MB rules file held the deciding thread for
        0.45 s (a QA pass); event by event it lets go of it (composing takes 40 % longer, a
        whole load ~11 %)."""

        def __init__(self, stream: str) -> None:
            yaml.CSafeLoader.__init__(self, stream)
            yaml.composer.Composer.__init__(self)


def _yaml_loader() -> type:
    return _SteppedLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader


_COLLECTION_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def load_yaml_with_marks(text: str, filename: str) -> tuple[Any, dict[tuple[Any, ...], Mark]]:
    """Parse YAML and record the position of every node by its path (``('rules', 3, 'when')``).

    >>> data, marks = load_yaml_with_marks("a:\\n  - {b: 1}\\n", "f.yaml")
    >>> data, marks[("a", 0, "b")], marks[("a", 0, "b", KEY)]
    ({'a': [{'b': 1}]}, (2, 9, None), (2, 6, None))
    """
    _check_size(len(text), filename)
    loader = _yaml_loader()(text)
    marks: dict[tuple[Any, ...], Mark] = {}
    merged_of: dict[int, int] = {}  # mapping node -> how many of its entries were merged in

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> Any:
        # (aliases that would expand the file, "billion laughs", were refused before the walk)
        if len(path) > 4 * MAX_NESTING:  # aliases nest what _check_nesting saw; walk recurses
            raise ConfigError(
                f"nested deeper than {4 * MAX_NESTING} levels (aliases expanded): simplify",
                where=_where(filename, node),
            )
        m = node.start_mark
        style = getattr(node, "style", None) or None  # the C loader says "" for plain
        marks[path] = (m.line + 1, m.column + 1, style)
        plain = _COLLECTION_TAGS.get(type(node))
        if plain is not None and node.tag != plain:  # (ignored: a scalar's was refused)
            raise ConfigError(
                f"bad value tagged {node.tag}: a list or a mapping takes no tag here; remove it",
                where=_where(filename, node),
            )
        if isinstance(node, yaml.MappingNode):
            merged = merged_of.get(id(node))
            if merged is None:  # (an alias walks a node again: flattened once)
                own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
                try:  # YAML merge keys (<<: *defaults) as PyYAML reads them: merged first
                    loader.flatten_mapping(node)
                except yaml.MarkedYAMLError as e:
                    raise ConfigError(
                        f"bad merge key: {e.problem}", where=_where(filename, node)
                    ) from None
                merged = merged_of[id(node)] = len(node.value) - own  # (own keys override)
            out: dict[Any, Any] = {}
            seen: set[Any] = set()  # the mapping's own keys
            for i, (knode, vnode) in enumerate(node.value):
                key = construct(knode)
                if not isinstance(key, str | int | float | bool) or key is None:
                    raise ConfigError("mapping keys must be text", where=_where(filename, knode))
                if i >= merged and key in seen:
                    raise ConfigError(
                        f"duplicate key {key!r}: remove one of them", where=_where(filename, knode)
                    )
                if i >= merged:
                    seen.add(key)
                km = knode.start_mark
                marks[(*path, key, KEY)] = (km.line + 1, km.column + 1, None)
                out[key] = walk(vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(v, (*path, i)) for i, v in enumerate(node.value)]
        value = construct(node)
        if path == ("version",) and type(value) in (int, float) and str(value) != node.value:
            # YAML 1.1 reads 0105 as 69, 1:30 as 90, 0x1F as 31, 1.10 as 1.1
            raise ConfigError(
                f"version {node.value} would be recorded as {value!r}: quote it "
                f'(version: "{node.value}")',
                where=_where(filename, node),
            )
        return value

    def construct(node: yaml.Node) -> Any:
        """A scalar's value; a value YAML cannot build (``2026-13-45`` read as a date,
        ``!!float abc``, an unknown tag) is a ConfigError at its place."""
        try:
            return loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            problem = getattr(e, "problem", None) or str(e)
            text = node.value if isinstance(node, yaml.ScalarNode) else ""
            raise ConfigError(
                f"bad value {text!r}: {problem} (quote it to keep it as text)"
                if text
                else f"bad value tagged {node.tag}: {problem}",
                where=_where(filename, node),
            ) from None

    try:
        try:
            _check_nesting(text, filename)
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            problem, mark = yamlio.explain(e, text)
            where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
            raise ConfigError(f"YAML syntax error: {problem}", where=where) from None
        except yaml.reader.ReaderError:  # (a text not read from a file: decode checks those)
            yamlio.check_printable(text, filename)
            raise
        except yaml.YAMLError as e:
            raise ConfigError(f"YAML error: {e}", where=filename) from None
        if node is None:
            return None, {(): (1, 1, None)}
        bomb = yamlio.past_limit(node)  # (before merge keys copy anything)
        if bomb is not None:
            raise ConfigError(
                f"aliases (*name) expand to more than {yamlio.MAX_NODES} YAML nodes: simplify "
                "the file",
                where=_where(filename, bomb),
            )
        return walk(node, ()), marks
    finally:
        # (walk calls itself: a reference cycle through its closure that held the loader,
        # which keeps every node construct_object built from: the whole tree, 950,000 objects
        # for 8,000 rules, waited for the collector, whose pass over them held every thread
        # 0.4 s after a reload)
        loader.dispose()
        walk = construct = None  # type: ignore[assignment]  # (the cycle's cells emptied)


def read_rules_file(path: str | Path, flag: str = "") -> bytes:
    """The bytes of the rules file ``path``, as every command reads one: once (a pipe,
    ``<(sed ...)``, too: `fds rules check` refused it, a QA pass) and never more than
    :data:`MAX_FILE_SIZE` + 1 bytes (``/dev/zero`` was read until memory ran out). ``flag``
    (``--rules``) is the option that gave the path, said when it cannot be read."""
    hint = f"; check the path{f' ({flag})' if flag else ''}"
    data = yamlio.read_bytes(path, "the rules file", limit=MAX_FILE_SIZE, hint=hint)
    _check_size(len(data), str(path))
    return data


def _check_size(size: int, filename: str) -> None:
    if size > MAX_FILE_SIZE:
        raise ConfigError(  # (it said `split it`: --rules takes one file, a QA pass)
            f"file larger than {MAX_FILE_SIZE // 1_000_000} MB, the limit of a rules file: "
            "remove retired rules (paused ones too) and long comments",
            where=filename,
        )


def _check_nesting(text: str, filename: str) -> None:
    """Refuse collections nested deeper than MAX_NESTING before they are composed into nodes:
    YAML's composer recurses (libyaml's crashed the process at ~100,000 levels), its event
    parser does not."""
    depth = 0
    loader = _yaml_loader()(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    m = event.start_mark
                    raise ConfigError(
                        f"nested deeper than {MAX_NESTING} levels: a rules file is a few "
                        "levels deep",
                        where=f"{filename}:{m.line + 1}:{m.column + 1}" if m else filename,
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _where(filename: str, node: yaml.Node) -> str:
    return f"{filename}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _mark_for(marks: Mapping[tuple[Any, ...], Mark], loc: tuple[Any, ...]) -> Mark:
    # The deepest recorded ancestor (a missing key has no node: point at its parent).
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return (1, 1, None)


_RULE_LIST = pydantic.TypeAdapter(list[Rule])


def _validate(data: Mapping[str, Any]) -> tuple[RulesFile | None, list[Any]]:
    """The :class:`RulesFile` of ``data``, or None and pydantic's errors. The rules are validated
    CHUNK_RULES at a time: one call into pydantic holds the interpreter lock, and a reload of
    8,000 rules held the deciding thread for 0.3 s in it (a QA pass)."""
    rules = data.get("rules")
    errors: list[Any] = []
    if isinstance(rules, list) and len(rules) > CHUNK_RULES:
        done: list[Rule] = []
        for c in range(0, len(rules), CHUNK_RULES):
            try:
                done += _RULE_LIST.validate_python(rules[c : c + CHUNK_RULES])
            except pydantic.ValidationError as e:
                errors += [{**err, "loc": ("rules", c + int(err["loc"][0]), *err["loc"][1:])}
                           for err in e.errors()]  # fmt: skip
        data = {**data, "rules": done}
    try:
        spec = RulesFile.model_validate(data)
        return (None if errors else spec), errors
    except pydantic.ValidationError as e:  # in the file's order of fields, as in one call
        order = list(RulesFile.model_fields)
        at = {k: i for i, k in enumerate(order)}
        both = [*e.errors(), *errors]
        return None, sorted(
            both, key=lambda err: at.get(err["loc"][0] if err["loc"] else "", len(order))
        )


def _pydantic_error(
    errors: list[Any], filename: str, marks: Mapping, data: Mapping[str, Any]
) -> ConfigError:
    """Every error of validating a rules file (``data``), each at its line and column (an
    unknown key with the closest known one, as a mapping's: ``acton`` was only "check its
    spelling"), a rule's by its id."""
    lines = []
    first_where = None
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        # Literal/union branches add their own loc parts; keep those that exist in the file.
        if err["type"] == "extra_forbidden" and (*loc, KEY) in marks:
            loc = (*loc, KEY)
        line, col, _ = _mark_for(marks, loc)
        where = f"{filename}:{line}:{col}"
        first_where = first_where or where
        field = ".".join(str(p) for p in loc if p != KEY) or "file"
        if (item := _item_name(data, loc)) is not None:
            rest = ".".join(str(p) for p in loc[2:] if p != KEY)
            field = item + (f": {rest}" if rest else "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(
                str(loc[-2] if loc[-1] == KEY else loc[-1]),
                yamlio.fields_at(RulesFile, tuple(p for p in loc if p != KEY)[:-1]),
                n=1,
            )
            hint = f"did you mean {close[0]!r}? " if close else "check its spelling "
            msg = f"unknown key: {hint}(see rules/schema.json)"
        elif loc and loc[0] == "max_entities" and len(loc) > 1 and loc[-1] != KEY:
            # (pydantic's "Input should be greater than 0" / "a valid integer" for 0 or 1e6: a
            # QA pass)
            v = err.get("input")
            msg = f"a whole number from 1 to {MAX_CAP:,} is needed, not {v!r}"
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                n = float(v)  # (1e6 and 1.0e6 are text to YAML 1.1, 1.0e+6 a float)
                if n.is_integer() and 1 <= n <= MAX_CAP and not isinstance(v, bool):
                    msg += f": write {int(n)}"
        elif err["type"] == "missing":
            msg = "missing: add it"
        elif err["type"] in ("model_type", "list_type", "dict_type") and err.get("input") is None:
            # (an empty `policy:` was "a valid dictionary or instance of PolicySpec", a QA pass)
            what = "a list (e.g. [])" if err["type"] == "list_type" else "its keys"
            msg = f"empty: give {what}, or leave the key out"
        elif err["type"] in ("float_parsing", "float_type") and isinstance(err.get("input"), str):
            msg += yamlio.exponent_hint(err["input"])  # (`decline_at: 5e-2`: text to YAML 1.1)
        elif err["type"] == "string_type" and err.get("input") is None:
            msg = "empty: give a text"
        elif err["type"] in ("string_type", "literal_error") and isinstance(
            err.get("input"), bool | int | float | list | dict | None
        ):  # (`state: off`, `reason: 42`, `when: [a > 1]`: "Input should be a valid string")
            kind = yamlio.kind_of(err.get("input"))
            msg += f" (YAML reads it as {kind}{': quote it' if 'string' in err['type'] else ''})"
        elif err["type"] == "literal_error" and isinstance(v := err.get("input"), str):
            allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            if v.lower() != v and v.lower() in allowed:  # (`Decline`: a QA pass)
                msg += f" (in lower case: {v.lower()!r})"
        lines.append(f"{where}: {field}: {msg}")
    return ConfigError(
        "\n".join(lines) if len(lines) > 1 else lines[0].split(": ", 1)[1],
        where=None if len(lines) > 1 else first_where,
    )


#: What names an item of a list of the file: its kind and key.
_ITEM_NAMES = {"rules": ("rule", "id"), "features": ("feature", "name")}


def _item_name(data: Mapping[str, Any], loc: tuple[Any, ...]) -> str | None:
    """``rule ID`` / ``feature NAME`` of the item ``loc`` is in (``("rules", 10, "action")``:
    read as the tenth rule, a README walk; ``features.0``, a QA pass), when it has one."""
    kind = _ITEM_NAMES.get(loc[0]) if loc and isinstance(loc[0], str) else None
    items = data.get(loc[0]) if kind is not None else None
    if kind is None or len(loc) < 2 or type(loc[1]) is not int or not isinstance(items, list):
        return None
    item = items[loc[1]] if loc[1] < len(items) else None
    name = item.get(kind[1]) if isinstance(item, dict) else getattr(item, kind[1], None)
    return f"{kind[0]} {name}" if isinstance(name, str) and name.strip() else None


# ---------------------------------------------------------------- built-in clock


class LocalClock:
    """Hour, weekday, is_night and is_weekend of an epoch timestamp in one timezone.

    Cached per 15-minute UTC bucket: today's UTC offsets and DST changes are multiples of 15
    minutes, so a bucket holds one local hour, and events out of order cost no more than
    ordered ones. A bucket whose ends fall in two local hours (historical offsets such as
    Monrovia's -0:44:30, St. John's changes at 00:01) is not cached: its times are read one
    by one (they were read as the bucket's start: a QA pass).

    >>> from fds.timeutil import get_zone
    >>> LocalClock(get_zone("Asia/Seoul"))(1767225600.0)  # 2026-01-01 09:00 KST, a Thursday
    (9, 3, False, False)
    """

    bucket = 900  # seconds; see the class docstring
    _MAX_ENTRIES = 100_000  # ~3 years of buckets; bounded memory for long runs

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        #: ``int(ts // bucket) -> (hour, weekday, is_night, is_weekend)``; generated rule code
        #: reads it inline and calls the clock only on a miss.
        self.cache: dict[int, tuple[int, int, bool, bool]] = {}

    def __call__(self, ts: float) -> tuple[int, int, bool, bool]:
        key = int(ts // self.bucket)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        start = key * self.bucket
        dt = datetime.fromtimestamp(start, self.tz)
        last = datetime.fromtimestamp(start + self.bucket - 1, self.tz)
        if (last.hour, last.date()) != (dt.hour, dt.date()):  # not cached (see above)
            dt = datetime.fromtimestamp(math.floor(ts), self.tz)
            wd = dt.weekday()
            return (dt.hour, wd, dt.hour < NIGHT_END_HOUR, wd >= 5)
        wd = dt.weekday()
        out = (dt.hour, wd, dt.hour < NIGHT_END_HOUR, wd >= 5)
        if len(self.cache) >= self._MAX_ENTRIES:
            self.cache.clear()  # in place: generated code holds this dict's .get
        self.cache[key] = out
        return out


# ---------------------------------------------------------------- the compiled ruleset


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its compiled condition and where it sits in the file."""

    spec: Rule
    expr: CompiledExpr
    where: str

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True)
class TestResult:
    """Outcome of one inline test."""

    rule_id: str
    index: int
    expect: str
    got: str
    where: str
    error: str | None = None
    #: Why the rule did not fire where a name it reads was missing (said with a failure).
    missing: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.expect == self.got

    @property
    def why(self) -> str:
        """What a failed test is told."""
        if self.error is not None:
            return self.error
        said = f"expected {self.expect}, got {self.got}"
        return said if self.missing is None else f"{said} ({self.missing})"


class Ruleset:
    """A validated, compiled rules file: ``evaluate(tx, features) -> hits`` is one function.

    Attributes
    ----------
    version, spec, path, tz, rules (all, including paused), features, policy
    missing_counts, error_counts
        Per rule id: times it did not fire because a name was missing / times it raised
        (division by zero, log of 0; an active rule's transaction is then a dead letter).
    """

    def __init__(
        self,
        spec: RulesFile,
        rules: list[CompiledRule],
        path: str,
        test_where: Mapping[tuple[str, int], str] | None = None,
        marks: Mapping[tuple[Any, ...], Mark] | None = None,
    ) -> None:
        self.spec = spec
        self.notes: list[str] = []  # what loading it warned about (a window without a unit)
        self._test_where = dict(test_where or {})
        # (what where() is asked: top-level keys and the features by index; all of them, a
        # tuple path and a position per node, were 400,000 tuples for 8,000 rules)
        self._marks = {k: v for k, v in (marks or {}).items() if len(k) <= 2}
        self.version: str = spec.version
        self.path = path
        self.tz = get_zone(spec.timezone)
        self.clock = LocalClock(self.tz)
        self.rules = tuple(rules)
        self.features = tuple(spec.features)
        self.policy = spec.policy
        self.evaluated = tuple(r for r in rules if r.spec.state != "paused")
        plans = [
            EvalPlan(
                r.expr,
                {
                    "id": r.id,
                    "action": r.spec.action,
                    "score": r.spec.score,
                    "reason": r.spec.reason,
                    "state": r.spec.state,
                },
            )
            for r in self.evaluated
        ]
        self._tally = MissingTally()
        fn, self._missing, self._errors, self.code = build_evaluator(
            plans, TX_TYPES, self.clock, self._tally
        )
        self._fn = fn

    #: ``evaluate`` takes ``quiet`` (the engine passes the rules its guardrails demoted).
    takes_quiet = True

    def evaluate(
        self,
        tx: Mapping[str, Any],
        features: Mapping[str, Any] | None = None,
        quiet: Collection[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Hits ``[{id, action, score, reason, state}]`` of active and shadow rules, in file order.

        ``tx`` is a validated transaction (``ts`` in epoch seconds, ``extra`` a dict);
        ``features`` its feature snapshot. A rule whose names are missing does not fire; an
        active rule that raises raises :class:`fds.errors.RuleError`, unless it is in ``quiet``
        (demoted to shadow: it has no effect, so its error is only counted).
        """
        return self._fn(tx, features if features is not None else _EMPTY, quiet)

    def where(self, *loc: Any) -> str:
        """``file:line:column`` of the value at ``loc`` in the file (``"features", 2``), or of
        its nearest ancestor written there."""
        line, col, _ = _mark_for(self._marks, loc)
        return f"{self.path}:{line}:{col}"

    @property
    def missing_counts(self) -> dict[str, int]:
        return {r.id: n for r, n in zip(self.evaluated, self._missing, strict=True)}

    @property
    def error_counts(self) -> dict[str, int]:
        return {r.id: n for r, n in zip(self.evaluated, self._errors, strict=True)}

    def drain_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Missing-name and run-time-error non-fires per rule since the last call, then reset.

        For periodic metric export (``fds_rule_missing_inputs_total``,
        ``fds_rule_errors_total``); call it on the deciding thread so that no increment is lost.
        """
        out = []
        for counts in (self._missing, self._errors):
            out.append({r.id: n for r, n in zip(self.evaluated, counts, strict=True) if n})
            counts[:] = [0] * len(counts)
        return out[0], out[1]

    def hold_counts(self) -> Callable[[], None]:
        """Note the skip counts; the function returned puts them back (a fold decides again a
        record counted when it was first decided)."""
        missing, errors = self._missing[:], self._errors[:]
        # the evaluator's tally of missing names counts into a scratch dict meanwhile (a copy
        # of the tally for each record folded slowed a catch-up the longer a run had gone on)
        names = self._fn.__globals__
        masks = names.get("_MASKS")
        if masks is not None:
            names["_MASKS"] = {}

        def restore() -> None:
            self._missing[:], self._errors[:] = missing, errors
            if masks is not None:
                names["_MASKS"] = masks

        return restore

    def names_read(self) -> dict[str, tuple[str, ...]]:
        """Per rule id, the names its condition reads (for reports)."""
        return {r.id: r.expr.names for r in self.rules}

    def missing_names(self) -> dict[str, int]:
        """Per name a rule reads: the transactions evaluated since this ruleset was built that
        it was missing on (names never missing left out)."""
        return self._tally.per_name()

    def why_skipped(
        self, rule_id: str, missing: Mapping[str, int] | None = None, skipped: int = 0
    ) -> str:
        """For reports: the names rule ``rule_id`` reads that were missing, each with the
        transactions it was missing on (``missing``, default :meth:`missing_names`), e.g.
        ``device_id missing on 1,000``; every name it reads when none was (a text that is no
        number, used as one, skips a rule too: said when the rule was ``skipped`` on more
        transactions than any name was missing on, 995 against 249 in a QA pass)."""
        names = self.names_read().get(rule_id, ())
        counts = self.missing_names() if missing is None else missing
        found = [f"{n} missing on {counts[n]:,}" for n in names if counts.get(n)]
        if not found:
            return f"reads {', '.join(names)}"
        if skipped > max(counts.get(n, 0) for n in names):
            found.append("a text that is no number used as one on the others")
        return ", ".join(found)

    def unused_features(self) -> list[str]:
        """Declared features no rule reads (they may still feed the model)."""
        used = {n for r in self.rules for n in r.expr.names}
        return [f.name for f in self.features if f.name not in used]

    def run_tests(self) -> list[TestResult]:
        """Run every rule's inline tests (paused rules included)."""
        out = []
        for r in self.rules:
            for i, t in enumerate(r.spec.tests):
                where = self._test_where.get((r.id, i), r.where)
                try:
                    values = self._test_values(t.given)
                    got = "hit" if r.expr.evaluate(values) else "miss"
                    out.append(TestResult(r.id, i, t.expect, got, where))
                except ValidationError as e:
                    out.append(TestResult(r.id, i, t.expect, "miss", where, f"given {e}"))
                except MissingName as e:
                    out.append(TestResult(r.id, i, t.expect, "miss", where,
                                          missing=_missing_said(e, r.expr.names)))  # fmt: skip
                except RUNTIME_ERRORS as e:
                    out.append(TestResult(r.id, i, t.expect, "miss", where, f"{e}"))
        return out

    def _test_values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """A test's ``given`` as the engine reads a transaction: its contract fields as the
        schema reads them, ``extra.NAME`` keys into ``extra``, built-ins from ``ts``."""
        values = read_fields(given)
        extra = dict(values.get("extra") or {})
        for k in list(values):
            name = extra_key(k)
            if name is not None:
                extra[name] = values.pop(k)
        values["extra"] = extra
        for f in self.features:  # (a feature's given value was not checked: `n: "5"` raised
            _check_given(f"the feature {f.name}", feature_type(f), values.get(f.name))  # in
        for name, want in BUILTINS.items():  # the rule, `seen: "false"` held; a built-in's,
            _check_given(f"the built-in {name}", want, values.get(name))  # a QA pass)
        ts = values.get("ts")
        if isinstance(ts, date) and not isinstance(ts, datetime):  # (bare 2026-01-02: a QA pass)
            raise ValueError(
                f"ts: {ts} written bare is a date, no time: quote a time, e.g. "
                f'ts: "{ts.isoformat()[:10]}T03:10:00+09:00"'
            )
        if ts is not None:
            ts = values["ts"] = parse_ts(ts, self.tz)
            cal = self.clock(ts)
            for i, name in enumerate(BUILTINS):
                values.setdefault(name, cal[i])
        return values


def _missing_said(e: MissingName, names: Collection[str]) -> str:
    """Why a rule test's rule did not fire, a name it reads missing (``expected hit, got
    miss`` alone did not say: a QA pass gave ``hour`` to a rule reading ``is_night``).

    >>> _missing_said(MissingName("is_night"), ["is_night", "n"])
    'is_night is not given: the rule does not fire without it; give it, or a ts'
    >>> _missing_said(MissingName("NA"), ["extra.x"])
    "a value the rule reads is missing: 'NA'"
    """
    name = e.args[0] if e.args else ""
    if name not in names:  # (an extra value's text that stands for a missing one)
        return f"a value the rule reads is missing: {name!r}"
    ts = ", or a ts" if name in BUILTINS else ""
    return f"{name} is not given: the rule does not fire without it; give it{ts}"


_EMPTY: Mapping[str, Any] = {}
#: What a rule test's value is, in its error (``n: '5' is text``).
_KINDS = {NUM: "a number", BOOL: "true/false", STR: "text"}


def _check_given(what: str, want: str, value: Any) -> None:
    """Refuse a rule test's value for a feature or a built-in (``what``, of type ``want``)
    that it never takes: a number for a count, sum, mean, hour, ..., true/false for seen,
    is_night, ... (a null is missing, as a name left out).

    >>> _check_given("the feature n", NUM, "5")
    Traceback (most recent call last):
    fds.errors.ValidationError: n: '5' is text, the feature n is a number
    """
    if value is None:
        return
    got = (
        BOOL if isinstance(value, bool)
        else NUM if isinstance(value, int | float)
        else STR if isinstance(value, str)
        else f"a {type(value).__name__}"
    )  # fmt: skip
    if got != want:
        name = what.rpartition(" ")[2]
        raise ValidationError(
            f"{name}: {value!r} is {_KINDS.get(got, got)}, {what} is {_KINDS[want]}"
        )


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", " ": " ", "_": "\xa0", "N": "\x85",
            "L": "\u2028", "P": "\u2029", "0": "\0", "a": "\a", "b": "\b", "e": "\x1b",
            "f": "\f", "v": "\v"}  # fmt: skip
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _dq_escape(text: str, i: int) -> tuple[int, int]:
    """The escape at ``text[i]`` (a backslash) in a double-quoted YAML scalar: its length in
    the file and how many non-blank characters of the value it gives (0 or 1)."""
    c = text[i + 1 : i + 2]
    if c == "\n":  # a line continuation: nothing in the value
        return 2, 0
    if c in _HEX_ESCAPES:
        size = _HEX_ESCAPES[c]
        try:
            value = chr(int(text[i + 2 : i + 2 + size], 16))
        except ValueError:
            return 2, 1
        return 2 + size, 0 if value.isspace() else 1
    return 2, 0 if _ESCAPES.get(c, c).isspace() else 1


def _comments(text: str, mark: Mark, source: str) -> bool | Callable[[str, int, int], bool]:
    """Which ``#`` comments the condition ``source`` written at ``mark`` of the file ``text``
    may hold: any in a ``|`` block (it keeps its lines); else those that end on the line of
    the file they start on (YAML joined no other line onto them: a folded condition's next
    lines were swallowed by one, where a one-line condition's, a ``>`` block's more-indented
    line's or one before a quoted ``\n`` end where they are written). Both ends are found as
    an error's place is (:func:`_expr_where`: escapes and styles included)."""
    if mark[2] == "|":
        return True

    def written(comment: str, line: int, col: int) -> bool:  # (only for a comment: rare)
        last = col + len(comment.rstrip()) - 1
        start, end = (
            _expr_where("", text, mark, source, ExprError("", line, c)).split(":")[1]
            for c in (col, last)
        )
        return start == end

    return written


# A node's anchor and tag, before its value: `&big amount > 1`, `!!str "..."`.
_PROPERTIES = re.compile(r"(?:[&!]\S*\s+(?:#[^\n]*\n\s*)*)+")  # (a comment after them too)


@functools.lru_cache(maxsize=2)
def _line_starts(text: str) -> list[int]:
    """Where each line of ``text`` starts: found once per file (a split of the whole file for
    each comment and each error made a load quadratic: 8,000 commented rules took 42 s to
    load, a QA pass)."""
    return list(itertools.accumulate((len(s) + 1 for s in text.split("\n")), initial=0))


def _expr_where(filename: str, text: str, mark: Mark, source: str, e: ExprError) -> str:
    """``file:line:col`` in the rules file of the error ``e`` at ``e.line:e.col`` of the
    expression ``source``, whatever the YAML style it was written in (plain or quoted, over
    several lines, block ``|`` or folded ``>``): YAML changes only blanks (folding, indentation)
    and escapes, so the error is the n-th non-blank character of the scalar in the file as in
    the expression."""
    line, col, style = mark
    at = sum(len(s) + 1 for s in source.split("\n")[: e.line - 1]) + e.col - 1
    n = sum(1 for ch in source[:at] if not ch.isspace())
    past_end = n > 0 and not source[at:].strip()  # (it pointed at the file's next key)
    n -= past_end  # then: the expression's last character, and one past it
    i = _line_starts(text)[line - 1] + col - 1
    props = _PROPERTIES.match(text, i)  # (the node starts at its anchor or tag: positions
    i = props.end() if props else i  # were that much too early, a QA pass)
    if style in ("|", ">"):  # the block's header line (indicators, a comment)
        i = text.find("\n", i) + 1 or len(text)
    elif style in ('"', "'"):
        i += 1
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        step, chars = 1, 1
        if style == '"' and ch == "\\":  # an escape: \" \n \x41 \u00e9, or a line break
            step, chars = _dq_escape(text, i)
        elif style == "'" and text[i : i + 2] == "''":
            step = 2
        if chars and n == 0:
            i += step * past_end
            break
        i += step
        n -= chars
    i = min(i, len(text))
    at_line = bisect.bisect_right(_line_starts(text), i)  # (1-based)
    return f"{filename}:{at_line}:{i - text.rfind(chr(10), 0, i)}"


def feature_type(f: FeatureSpec) -> str:
    """The type of the feature ``f`` to rules: true/false for seen, a number for the others."""
    return BOOL if f.agg == "seen" else NUM


def known_names(spec: RulesFile) -> dict[str, str]:
    """Names a rule of ``spec`` may read, with their types."""
    known = dict(TX_TYPES)
    known.update(BUILTINS)
    for f in spec.features:
        known[f.name] = feature_type(f)
    return known


# (any name: `extra.risk-score`, `extra.payé` were refused, though rules read them: a QA pass)
_FEATURE_FIELD = re.compile(r"^extra\.[^\x00-\x1f\x7f]+$")  # (no NUL: run could not compile it)


def _check_semantics(spec: RulesFile, filename: str, marks: Mapping) -> None:
    def fail(msg: str, loc: tuple[Any, ...]) -> ConfigError:
        line, col, _ = _mark_for(marks, loc)
        return ConfigError(msg, where=f"{filename}:{line}:{col}")

    try:
        get_zone(spec.timezone)
    except ConfigError as e:
        raise fail(str(e), ("timezone",)) from None
    taken = set(TX_TYPES) | set(BUILTINS) | {"extra"}
    seen: set[str] = set()
    for i, f in enumerate(spec.features):
        if f.name in taken:
            raise fail(
                f"feature name {f.name!r} is taken by a built-in name: rename it",
                ("features", i, "name"),
            )
        if f.name in MODEL_INPUTS:  # (overwritten in the decision's snapshot: a QA pass)
            raise fail(
                f"feature name {f.name!r} is taken by an input the engine gives the model "
                f"({', '.join(sorted(MODEL_INPUTS - {'amount'}))}): rename it",
                ("features", i, "name"),
            )
        if reserved(f.name):  # (`_f` passed the check, then stopped the replay: a QA pass)
            raise fail(f"feature name {f.name!r}: {RESERVED}", ("features", i, "name"))
        if keyword.iskeyword(f.name):  # (a rule `True > 0` read the constant: a QA pass)
            raise fail(
                f"feature name {f.name!r} is a word of the expression language, which no rule "
                "could read as a name: rename it",
                ("features", i, "name"),
            )
        if f.name in seen:
            raise fail(f"duplicate feature {f.name!r}: rename or remove one", ("features", i))
        seen.add(f.name)
        for key in ("entity", "field"):
            v = getattr(f, key)
            if v is not None and v not in TX_TYPES and not _FEATURE_FIELD.match(v):
                # (an entity was offered ts and tx_id, which it refuses; `Card_ID` was told no
                # likely name: a QA pass)
                names = sorted(n for n in TX_TYPES if key == "field" or not entity_problem(n))
                close = difflib.get_close_matches(v.lower(), names, n=1)
                raise fail(
                    f"{key} {v!r} is not a transaction field"
                    + (f": did you mean {close[0]}?" if close else "")
                    + f" (use one of {', '.join(names)} or extra.NAME)",
                    ("features", i, key),
                )
        if why := entity_problem(f.entity):
            raise fail(why, ("features", i, "entity"))
        if f.agg in ("sum", "mean", "min", "max", "std") and TX_TYPES.get(f.field or "") == STR:
            raise fail(
                f"agg {f.agg} needs a numeric field, {f.field} is text", ("features", i, "field")
            )
    entities = {f.entity for f in spec.features}
    for ent in spec.max_entities:
        if ent not in entities:
            raise fail(
                f"max_entities names {ent!r}, the entity of no feature: name one of "
                f"{', '.join(sorted(entities)) or '(no features declared)'}",
                ("max_entities", ent),
            )
    ids: set[str] = set()
    for i, r in enumerate(spec.rules):
        if r.id in ids:
            raise fail(f"duplicate rule id {r.id!r}: ids must be unique", ("rules", i, "id"))
        ids.add(r.id)


def load_ruleset_text(
    text: str, filename: str = "<rules>", *, run_tests: bool = False, log_notes: bool = True
) -> Ruleset:
    """Validate and compile a rules file given as text (see :func:`load_ruleset`)."""
    data, marks = load_yaml_with_marks(text, filename)
    if not isinstance(data, dict):
        empty = "the file is empty (or only comments): " if data is None else ""
        raise ConfigError(  # (an empty one was told what a rules file is, not that it was
            f"{empty}a rules file is a mapping with version, features, rules, policy",  # empty:
            where=f"{filename}:1:1",  # a QA pass on a file cut to 0 bytes)
        )
    yamlio.other_file(data, "--rules", filename)
    # (an anchor could only sit on a real rule, every other key being refused: a QA pass)
    data = yamlio.without_own_keys(data)
    spec, invalid = _validate(data)
    if spec is None:
        raise _pydantic_error(invalid, filename, marks, data)
    _check_semantics(spec, filename, marks)
    notes = []  # said at load, and by `fds rules check` in its report
    grace = data.get("grace")
    if type(grace) in (int, float) and grace:  # (as a window's: 300 is read as seconds)
        line, col, _ = _mark_for(marks, ("grace",))
        notes.append(
            f"{filename}:{line}:{col}: grace {grace} has no unit: read as {grace} seconds "
            "(write 5m, 90s, 1h)"
        )
    for i, f in enumerate(data.get("features") or []):  # (7 meant as days: 7 s, a QA pass)
        window = f.get("window")
        if type(window) in (int, float):
            line, col, _ = _mark_for(marks, ("features", i, "window"))
            notes.append(
                f"{filename}:{line}:{col}: window {window} has no unit: read as {window} "
                "seconds (write 7d, 12h, 90s)"
            )
    if log_notes:  # (`fds rules check` prints them: said twice, a QA pass)
        for note in notes:
            log.warning("%s", note)
    known = known_names(spec)
    compiled = []
    errors: list[str] = []  # every rule's error at once: an analyst fixes them in one pass
    test_where: dict[tuple[str, int], str] = {}
    read: dict[str, None] = {}  # the names the evaluated rules read (see MAX_NAMES)
    if len(spec.rules) > MAX_RULES:
        line, col, _ = _mark_for(marks, ("rules",))
        raise ConfigError(
            f"{len(spec.rules):,} rules: at most {MAX_RULES:,} (each is evaluated for every "
            "transaction); remove rules, or merge alike ones (`x in [...]` lists)",
            where=f"{filename}:{line}:{col}",
        )
    for i, r in enumerate(spec.rules):
        mark = _mark_for(marks, ("rules", i, "when"))
        try:
            expr = compile_expr(r.when, known, comments=_comments(text, mark, r.when))
        except ExprError as e:
            where = _expr_where(filename, text, mark, r.when, e)
            errors.append(f"{where}: rule {r.id}: {e.detail}")
            continue
        line, col, _ = _mark_for(marks, ("rules", i))
        if r.state != "paused" and len(read) <= MAX_NAMES:
            read.update(dict.fromkeys(expr.names))
            if len(read) > MAX_NAMES:
                errors.append(
                    f"{filename}:{mark[0]}:{mark[1]}: rule {r.id}: the rules read more than "
                    f"{MAX_NAMES} different names (fields, features, extra values) with this "
                    "one: each is read for every transaction; pause or remove rules, or read "
                    "fewer extra values"
                )
        compiled.append(CompiledRule(r, expr, f"{filename}:{line}:{col}"))
        for j, t in enumerate(r.tests):
            tl, tc, _ = _mark_for(marks, ("rules", i, "tests", j))
            test_where[(r.id, j)] = f"{filename}:{tl}:{tc}"
            for k in t.given:
                if k not in known and extra_key(k) is None and k != "extra":
                    gl, gc, _ = _mark_for(marks, ("rules", i, "tests", j, "given", k, KEY))
                    errors.append(
                        f"{filename}:{gl}:{gc}: rule {r.id}: test gives unknown name {k!r}: "
                        "use the names the rule reads"
                    )
    if len(errors) == 1:
        where, msg = errors[0].split(": ", 1)
        raise ConfigError(msg, where=where)
    if errors:
        raise ConfigError(f"{len(errors)} errors:\n" + "\n".join(errors))
    rs = Ruleset(spec, compiled, filename, test_where, marks)
    rs.notes = notes
    if run_tests:
        check_tests(rs)
    return rs


def check_tests(rs: Ruleset) -> None:
    """Raise :class:`ConfigError` at the first failing inline test of ``rs``."""
    failed = [res for res in rs.run_tests() if not res.passed]
    if failed:
        first = failed[0]
        raise ConfigError(
            f"rule {first.rule_id}: inline test {first.index + 1} failed: {first.why} "
            f"({len(failed)} failing test(s); run `fds rules check`)",
            where=first.where,
        )


def load_ruleset(path: str | Path, *, run_tests: bool = False, log_notes: bool = True) -> Ruleset:
    """Load, validate and compile a rules file; with ``run_tests`` its inline tests must pass;
    what it notes (``Ruleset.notes``) is logged as warnings unless ``log_notes`` is false.

    Raises :class:`fds.errors.ConfigError` naming ``file:line:column`` and the fix.
    """
    p = Path(path)
    text = yamlio.decode(read_rules_file(p), str(p))
    return load_ruleset_text(text, str(p), run_tests=run_tests, log_notes=log_notes)
