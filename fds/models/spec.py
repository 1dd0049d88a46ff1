"""Model specs: ``models/*.yaml`` turned into River pipelines from a whitelist of modules.

A spec names River estimators by ``module.Class`` with their constructor parameters; nothing
else can be instantiated, so a spec file cannot run arbitrary code. Errors name ``file:line``.

>>> spec = parse_spec('''
... name: demo
... pipeline:
...   - preprocessing.StandardScaler: {}
...   - linear_model.LogisticRegression: {l2: 0.0, optimizer: {optim.SGD: {lr: 0.05}}}
... ''')
>>> spec.name, spec.publish.every_labels
('demo', 500)
>>> type(build_pipeline(spec)).__name__
'Pipeline'
>>> parse_spec("name: x\\npipeline:\\n  - linear_model.LogisticRegresion: {}\\n")
... # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fds.errors.ConfigError: <spec>:3: unknown estimator 'linear_model.LogisticRegresion': did you ...
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib
import inspect
import io
import itertools
import logging
import math
import random
import re
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from fds import shipped, yamlio
from fds.errors import ConfigError, describe
from fds.guardrails import MODEL_BUDGET_S
from fds.timeutil import parse_duration, span

log = logging.getLogger(__name__)
# (file:line, key, value) of the durations without a unit said in this process: a spec is
# parsed by each stage that uses it, said once
_SAID_UNITLESS: set[tuple[str, str, Any]] = set()

__all__ = [
    "ALLOWED_MODULES",
    "GatePolicy",
    "InputsPolicy",
    "LearnPolicy",
    "ModelSpec",
    "PromotePolicy",
    "PublishPolicy",
    "build_pipeline",
    "load_spec",
    "parse_spec",
    "resolve_spec_path",
    "spec_differs",
]

#: River subpackages a spec may draw from: estimators, transformers, optimisers and wrappers.
#: Anything else (``river.stream``, ``river.utils`` ...) is refused: a spec must not do I/O.
ALLOWED_MODULES: frozenset[str] = frozenset(
    {
        "preprocessing",
        "linear_model",
        "tree",
        "forest",
        "ensemble",
        "compose",
        "optim",
        "naive_bayes",
        "feature_extraction",
        "imblearn",
        "neighbors",
        "anomaly",
    }
)

#: The folder of shipped specs, so that ``--model default`` finds ``models/default.yaml``.
SPEC_DIR = shipped.ROOT / "models"

_TOP_KEYS = {
    "name",
    "pipeline",
    "learn",
    "publish",
    "promote",
    "gate",
    "inputs",
    "seed",
    "description",
}


#: The spec's ``seed`` when it sets none: a fixed one, so that a spec without ``seed:`` is as
#: deterministic as one with it (a replay repeats exactly). 42 is the shipped specs' own.
DEFAULT_SEED = 42


@dataclass(frozen=True)
class LearnPolicy:
    legit_sample_rate: float = 0.05
    assume_legit_after: float = 4 * 86400.0
    # Inputs stay joinable this long: past the longest label delay (chargebacks, <= 60 days).
    ttl: float = 62 * 86400.0


@dataclass(frozen=True)
class PublishPolicy:
    every_labels: int = 500
    every_seconds: float = 60.0


@dataclass(frozen=True)
class PromotePolicy:
    shadow_min_labels: int = 300
    alert_budget_per_day: int = 100
    # New versions replace the champion directly until it has learned this many examples.
    warmup_labels: int = 1000
    # A contest (or probation) without a verdict after this long in event time ends as if no
    # label reached the scorer: the challenger serves as published, a probation is confirmed.
    # (In `fds run` the scorer judges a label only with the input of a recent decision.)
    shadow_max_wait: float = 14 * 86400.0
    auto: bool = True


@dataclass(frozen=True)
class GatePolicy:
    """When the model's score may act (enter the policy); until then it serves in shadow.

    The score acts once the champion has learned ``min_frauds`` fraud labels *and*, over the
    last ``window`` fraud labels that arrived, rules + model (the policy's combination) caught
    at least as many within the daily alert budget (``promote.alert_budget_per_day``) as the
    rules alone; once acting, it goes back to shadow only when their recall at the budget
    falls more than ``margin`` below the rules' (hysteresis: a combination level with the
    rules, within a label or two, would otherwise open and close the gate on every fraud
    label). The defaults (0, 0) act at once (no gate).
    """

    min_frauds: int = 0
    window: int = 0
    margin: float = 0.05


@dataclass(frozen=True)
class InputsPolicy:
    """What the model reads besides the features: ``rules`` -- the rules' results.

    ``false``: the features only; the policy adds the rules' score to the model's (noisy-or).
    ``score``: also ``rule_score`` (the rules' combined score); the model weighs the rules, so
    its score is final (stacking). ``true``: also ``rule:<id>`` for every rule (stacking with
    one input per rule). See the README, "What the model sees", for how each ranked.
    """

    rules: bool | str = False

    @property
    def reads_rules(self) -> bool:
        """The model reads the rules' results (so its score is the final score)."""
        return self.rules is not False

    @property
    def per_rule(self) -> bool:
        """The model reads one input per rule (``rule:<id>``)."""
        return self.rules is True


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (frozen). ``steps`` are ``(dotted_name, params, line)``."""

    name: str
    steps: tuple[tuple[str, dict[str, Any], int], ...]
    learn: LearnPolicy = field(default_factory=LearnPolicy)
    publish: PublishPolicy = field(default_factory=PublishPolicy)
    promote: PromotePolicy = field(default_factory=PromotePolicy)
    gate: GatePolicy = field(default_factory=GatePolicy)
    inputs: InputsPolicy = field(default_factory=InputsPolicy)
    seed: int = DEFAULT_SEED
    source: str = "<spec>"
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (for manifests)."""
        return {
            "name": self.name,
            "pipeline": [{n: p} for n, p, _ in self.steps],
            "learn": vars(self.learn),
            "publish": vars(self.publish),
            "promote": vars(self.promote),
            "gate": vars(self.gate),
            "inputs": vars(self.inputs),
            "seed": self.seed,
        }

    def made_otherwise(self, made: Any, *, serving: bool = False) -> str | None:
        """How the spec ``made`` (a registry entry's ``spec``) that made a version differs from
        this one in what a trainer goes on from (name, pipeline) or, ``serving``, also in the
        inputs a scorer would feed it (each ``inputs`` key the entry holds): e.g. ``"'nogate'
        with pipeline [...], not 'tree' with [...]"``; ``None`` when it does not, or does not
        say. (The legit sampling a version's scores undo is its own entry's: see the scorer.)
        """
        return spec_differs(made, orjson.loads(orjson.dumps(self.to_dict())), serving=serving)


def spec_differs(made: Any, now: Mapping[str, Any], *, serving: bool = False) -> str | None:
    """:meth:`ModelSpec.made_otherwise` of two specs as a manifest holds them (``now``: the
    spec a scorer serves with, or the one that made the champion)."""
    if not isinstance(made, dict) or not made or not isinstance(now, Mapping) or not now:
        return None
    keys: list[tuple[str, ...]] = [("name",), ("pipeline",)]
    theirs_inputs = made.get("inputs")
    if serving and isinstance(theirs_inputs, dict):  # (an older entry may not say)
        keys += [("inputs", k) for k in theirs_inputs if k in now.get("inputs", {})]
    for key in keys:
        theirs: Any = made
        ours: Any = now
        for k in key:
            theirs = theirs.get(k) if isinstance(theirs, dict) else None
            ours = ours.get(k) if isinstance(ours, Mapping) else None
        if theirs is not None and ours is not None and theirs != ours:
            return (
                f"{made.get('name')!r} with {'.'.join(key)} {theirs!r}, not "
                f"{now.get('name')!r} with {ours!r}"
            )
    return None


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return v
    return None


def _key_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, _v in node.value:  # (as text: a key YAML reads as a number, `5: 1`, was
            if str(getattr(k, "value", None)) == str(key):  # said without its line, a review)
                return k
    return None


def _where(source: str, node: yaml.Node | None) -> str:
    line = _line(node)
    return f"{source}:{line}" if line else source


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """``default`` -> ``models/default.yaml``; a path is returned as is (must exist)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"model spec {str(p)!r} not found: check the path")
        return p
    cand = SPEC_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    shipped = ", ".join(sorted(x.stem for x in SPEC_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(
        f"model spec {str(name_or_path)!r} not found: give a YAML path or one of: {shipped}"
    )


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """Load and validate a spec by shipped name (``default``, ``tree``, ``forest``) or path."""
    path = resolve_spec_path(name_or_path)
    return parse_spec(yamlio.read_text(path, "a model spec"), source=str(path))


def _estimator_class(dotted: str, where: str) -> type:
    mod, _, cls = dotted.rpartition(".")
    top = mod.split(".")[0]
    # (a submodule of an allowed one too: optim.losses.Log, optim.schedulers.Constant)
    if top not in ALLOWED_MODULES or not cls or any(p.startswith("_") for p in mod.split(".")):
        close = difflib.get_close_matches(top, sorted(ALLOWED_MODULES), n=1)
        hint = f"did you mean {close[0]}? " if close and close[0] != top else ""
        if not mod:  # a bare class name: the module that has it
            homes = [m for m in sorted(ALLOWED_MODULES) if _has_class(m, cls)]
            hint = f"did you mean {homes[0]}.{cls}? " if homes else hint
        raise ConfigError(
            f"unknown estimator {dotted!r}: {hint}write module.Class with module one of "
            f"{', '.join(sorted(ALLOWED_MODULES))} (e.g. linear_model.LogisticRegression)",
            where=where,
        )
    try:
        module = importlib.import_module(f"river.{mod}")
    except ImportError:
        raise ConfigError(
            f"unknown estimator {dotted!r}: river has no module {mod}", where=where
        ) from None
    obj = getattr(module, cls, None)
    # (a class a River module imports from elsewhere is not River's: tree.base.Queue)
    if not inspect.isclass(obj) or cls.startswith("_") or not obj.__module__.startswith("river."):
        names = [n for n in getattr(module, "__all__", []) if inspect.isclass(getattr(module, n))]
        close = difflib.get_close_matches(cls, names, n=1)
        hint = f"did you mean {mod}.{close[0]}? " if close else ""
        raise ConfigError(
            f"unknown estimator {dotted!r}: {hint}river.{mod} has {', '.join(sorted(names))}",
            where=where,
        )
    return obj


def _has_class(module: str, name: str) -> bool:
    """Does ``river.<module>`` have a class ``name`` of River's own?"""
    try:
        obj = getattr(importlib.import_module(f"river.{module}"), name, None)
    except ImportError:
        return False
    return inspect.isclass(obj) and obj.__module__.startswith("river.")


def _is_estimator_ref(value: Any) -> bool:
    """``{module.Class: {params}}``: a nested estimator (one of another module too, refused
    by :func:`_estimator_class` with a hint: `optm.AdaGrad` reached River as a dict)."""
    if not (isinstance(value, dict) and len(value) == 1):
        return False
    ((key, params),) = value.items()
    if not isinstance(params, dict | None):
        return False
    # (a typo such as `optim.adaGrad` or a bare `AdaGrad` is one too, told at its line: it
    # reached River as a dict, "'dict' object has no attribute 'look_ahead'", a QA pass)
    return _estimator_like(key)


def _estimator_like(key: Any) -> bool:
    """Is ``key`` written like an estimator's name: ``module.Class`` or a bare ``Class``?"""
    return isinstance(key, str) and (
        "." in key or re.fullmatch(r"[A-Z][A-Za-z0-9]*", key) is not None
    )


def _misshapen(key: str, value: Any) -> str | None:
    """What is wrong with the shape of ``value`` (a parameter's, or an item of its list) that
    River would take for something else: it raised from inside, "'dict' object has no
    attribute 'look_ahead'" and the like (a QA pass); ``None`` when nothing is."""
    if isinstance(value, dict) and len(value) > 1 and any(map(_estimator_like, value)):
        return (
            f"{key}: a nested estimator is a one-key mapping like {{optim.SGD: {{lr: 0.1}}}}, "
            f"this one has {len(value)} keys ({', '.join(map(str, value))}): keep one"
        )
    ref = isinstance(value, str) and re.fullmatch(r"\s*(\w+(?:\.\w+)+)\s*(\(.*\))?\s*", value)
    if ref and ref[1].split(".")[0] in ALLOWED_MODULES:
        # (`optim.SGD(0.1)`, Python's way: River was given the text, "'str' object has no
        # attribute 'look_ahead'", a QA pass)
        return f"{key}: {value!r} is text: write it as {{{ref[1]}: {_call_params(ref)}}}"
    return None


def _call_params(ref: re.Match[str]) -> str:
    """``{lr: 0.1}`` for the text ``optim.SGD(0.1)`` (the call's literal arguments by their
    names), ``{}`` when it has none or they cannot be read so."""
    if not ref[2]:
        return "{}"
    try:
        call = ast.parse(ref[0].strip(), mode="eval").body
        if not isinstance(call, ast.Call):
            return "{...}"
        bound = inspect.signature(_estimator_class(ref[1], "")).bind(
            *map(ast.literal_eval, call.args),
            **{k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg},
        )
    except (SyntaxError, ValueError, TypeError, ConfigError):  # (not literal, not its parameters)
        return "{...}"
    return _flow(bound.arguments)


def _flow(params: Mapping[str, Any]) -> str:
    """``params`` as a YAML flow mapping: ``{lr: 0.1, l2: null}``."""
    return "{" + ", ".join(f"{k}: {_as_yaml(v)}" for k, v in params.items()) + "}"


def _as_yaml(value: Any) -> str:
    """``value`` as a YAML flow value: JSON's ``null``, ``true``, ``[1, 2]``, not Python's
    ``None``, ``True``, ``(1, 2)``, which YAML reads as text (a review); else its repr."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


#: Parameters of River's estimators that count something (trees of a forest, levels of a tree,
#: examples between split attempts, neighbours, a window): below 1 the model learns nothing and
#: scores every row the same, without a word (`n_models: 0` scored 0.0 on every decision and
#: `max_depth: -3` 0.5, a QA pass). Only these: a check that the built model tells rows apart
#: after learning a few examples also refused sound specs (`leaf_prediction: mc`, an
#: SGTClassifier: one score until their first split).
_COUNTS = frozenset(
    {"n_models", "max_depth", "grace_period", "n_neighbors", "window_size", "n_estimators"}
)
#: Values River takes and that make no model at all (a QA pass: `optim.SGD: {lr: -0.5}`
#: learned backwards and declined 173 customers, none of them a fraud; `l2: -1` alike): a
#: learning rate is positive, a penalty not negative; and an ensemble is at most MAX_MODELS
#: models (100,000 took 36 s and 1.3 GB to build and stalled every decision). The intercept's
#: rate is 0 or more (0: a fixed intercept), a gradient's clip positive (`intercept_lr: -1`
#: passed, and declined 16 legitimate payments for each fraud: a QA pass).
_RATES = frozenset({"lr", "learning_rate"})
_PENALTIES = frozenset({"l1", "l2"})
_AT_LEAST_0 = {"intercept_lr": "the intercept's learning rate (0: a fixed intercept)"}
_ABOVE_0 = {"clip_gradient": "the gradient's clip"}
_ENSEMBLES = frozenset({"n_models", "n_estimators"})
#: The largest ``intercept_init`` taken (a logistic of 37 or more is 1.0 in a float).
MAX_INTERCEPT = 30.0
MAX_MODELS = 1000
_TYPE_WORDS = {bool: "true or false", int: "a number", float: "a number"}


def _badly_valued(key: str, value: Any, default: Any, hint: str = "") -> str | None:
    """What is wrong with ``value`` for a parameter ``key`` whose default is ``default`` and
    type hint ``hint`` (its text): not true/false for a bool one, not a number for a number
    one (River took `with_std: "no"` as true), or a count below 1; ``None`` when nothing is.
    A hint that allows more than the default's type is taken at its word (`int | float | str`:
    SRP's `subspace_size: sqrt`, `int | None` given null: refused before, a review), as a
    nested estimator is not checked (a learning rate may be a schedule)."""
    if _is_estimator_ref(value) or (value is None and default is None):
        return None
    if (
        isinstance(value, dict)
        and value
        and not any(map(_estimator_like, value))
        and "." in hint
        and not re.search("dict|mapping|callable", hint, re.IGNORECASE)
    ):  # (`optimizer: {lr: 0.2}` reached River as a dict: "'dict' object has no attribute
        # 'look_ahead'", said at the step's line: a review)
        return (
            f"{key}: takes an object ({hint}), not the mapping {_flow(value)}: name its "
            f"class, e.g. {{optim.SGD: {_flow(value)}}}"
        )
    number = type(value) in (int, float)
    if key in _COUNTS and number and not (value >= 1 and float(value).is_integer()):
        return f"{key}: must be a whole number of at least 1, got {value!r}"
    if key in _ENSEMBLES and number and value > MAX_MODELS:
        return f"{key}: at most {MAX_MODELS} models (each scores every transaction), got {value!r}"
    if key in _RATES and number and not 0 < value < math.inf:
        return f"{key}: a learning rate must be more than 0, got {value!r}{_exponent(value)}"
    if key in _PENALTIES and number and not 0 <= value < math.inf:
        return f"{key}: a penalty must be 0 or more, got {value!r}{_exponent(value)}"
    if key in _AT_LEAST_0 and number and not 0 <= value < math.inf:
        return f"{key}: {_AT_LEAST_0[key]} must be 0 or more, got {value!r}{_exponent(value)}"
    if key in _ABOVE_0 and number and not 0 < value <= math.inf:
        return f"{key}: {_ABOVE_0[key]} must be more than 0, got {value!r}{_exponent(value)}"
    # (NaN or an infinity for any other number: `intercept_init: .inf` scored every payment
    # 1.0 and declined a third of them, a QA pass; one whose default is infinite may be)
    unbounded = key in _ABOVE_0 or (type(default) is float and math.isinf(default))
    if type(value) is float and (value != value or (math.isinf(value) and not unbounded)):
        return f"{key}: must be a finite number, got {value!r}{_exponent(value)}"
    if key == "intercept_init" and number and not -MAX_INTERCEPT <= value <= 0:
        return (  # (1e6 behind a scaler scored every payment 1.0 and declined a third: a QA
            # pass; 5 scored every one 0.993 until it had learned, a review)
            f"{key}: must be from -{MAX_INTERCEPT:g} to 0 (a fraud is the rarer class: above 0 "
            "every payment scores above even odds before anything is learned, 5 scores 0.993; "
            "below ~-37 the logistic of every score is exactly 0: no transaction ranks above "
            f"another), got {value!r}{_exponent(value)}"
        )
    want = type(default)
    if want not in _TYPE_WORDS or (type(value) is bool if want is bool else number):
        return None
    if isinstance(value, str) and "str" in hint:  # (text allowed: SRP's `subspace_size: sqrt`)
        return None
    if not isinstance(value, str) and any(w in hint for w in ("|", "Optional", "Union")):
        return None  # (`int | None` given null, a Scheduler object: as River takes them)
    shown = str(default).lower() if want is bool else repr(default)
    return f"{key}: must be {_TYPE_WORDS[want]} (default {shown}), got {value!r}{_exponent(value)}"


_exponent = yamlio.exponent_hint

#: The largest initial weight taken (a Constant's value, a Normal's mean; a Normal's spread at
#: most 1, River's default): on the ~30 standardized inputs of the default rules the first
#: scores of weights of 1 are 0 or 1 (Constant 1 declined 19% of a stream's payments, 10 41%,
#: every version of that spec alike, so the rate breaker's demotion was lifted by the next: a
#: QA pass; Constant 0.1 and Normal(0, 1) declined 0.3% and 2%, River's zeros 0.04%).
MAX_INIT_WEIGHT = 0.1
_INIT_LIMITS = {("Constant", "value"): MAX_INIT_WEIGHT, ("Normal", "mu"): MAX_INIT_WEIGHT,
                ("Normal", "sigma"): 1.0}  # fmt: skip


def _heavy_start(cls: type, key: str, value: Any) -> str | None:
    """What is wrong with an initializer's ``key`` of ``value`` (``optim.initializers``):
    initial weights so large that the first scores are all 0 or 1."""
    limit = _INIT_LIMITS.get((cls.__name__, key))
    if limit is None or not cls.__module__.startswith("river.optim") or type(value) not in (
        int, float
    ):  # fmt: skip
        return None
    if abs(value) <= limit:
        return None
    return (
        f"{key}: initial weights must be within ±{limit:g} (larger ones score every payment 0 "
        f"or 1 on standardized inputs until the model has learned: Constant 1 declined 19% of "
        f"a stream's payments), got {value!r}; River's default starts from zeros"
    )


def _check_step(dotted: str, params: Any, source: str, node: yaml.Node | None) -> None:
    where = _where(source, node)
    cls = _estimator_class(dotted, where)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(
            f"parameters of {dotted} must be a mapping like {{name: value}}, got {params!r}",
            where=where,
        )
    sig = inspect.signature(cls)
    accepted = set(sig.parameters)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    pnode = _child(node, dotted)
    for key, value in params.items():
        if key not in accepted and not var_kw:
            raise ConfigError(
                f"{dotted} has no parameter {key!r}; it accepts: {', '.join(sorted(accepted))}",
                where=_where(source, _key_node(pnode, key) or node),
            )
        vnode = _child(pnode, key) or node
        param = sig.parameters.get(key)
        default = param.default if param is not None else None
        hint = str(param.annotation) if param is not None else ""
        wrong = _badly_valued(key, value, default, hint) or _heavy_start(cls, key, value)
        if wrong:
            raise ConfigError(f"{dotted}: {wrong}", where=_where(source, vnode))
        # (a list's items too: ensemble.VotingClassifier: {models: [...]}, each at its line)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            inode = (
                vnode.value[i] if i is not None and isinstance(vnode, yaml.SequenceNode) else vnode
            )
            wrong = _misshapen(key, item)
            if wrong:
                raise ConfigError(f"{dotted}: {wrong}", where=_where(source, inode))
            if _is_estimator_ref(item):
                ((inner, inner_params),) = item.items()
                _check_step(inner, inner_params, source, inode)


def _instantiate(dotted: str, params: dict[str, Any] | None, seeds: Iterator[int]) -> Any:
    """Build ``dotted`` with ``params``, its nested estimators first; an estimator that takes a
    ``seed`` and was given none gets the next of ``seeds`` (River's default, None, draws one
    from the OS: two replays of a spec without seeds decided differently, a QA pass)."""
    cls = _estimator_class(dotted, "<spec>")
    kwargs = {}
    for k, v in (params or {}).items():
        if _is_estimator_ref(v):
            v = _instantiate_ref(v, seeds)
        elif isinstance(v, list):
            v = [_instantiate_ref(x, seeds) if _is_estimator_ref(x) else x for x in v]
        elif k in _COUNTS and type(v) is float:  # `n_models: 3.0` is 3 (checked whole), as
            v = int(v)  # the README says (River's range() refused the float: a README walk)
        kwargs[k] = v
    if "seed" not in kwargs and "seed" in inspect.signature(cls).parameters:
        kwargs["seed"] = next(seeds)
    return cls(**kwargs)


def _instantiate_ref(ref: dict[str, Any], seeds: Iterator[int]) -> Any:
    ((dotted, params),) = ref.items()
    return _instantiate(dotted, params, seeds)


def _policy(cls: type, raw: Any, source: str, node: yaml.Node | None, section: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping", where=_where(source, node))
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        where = _where(source, _key_node(node, k) or node)
        if k not in known:
            raise ConfigError(
                f"unknown key {section}.{k}{_did_you_mean(k, known)}; known: "
                f"{', '.join(sorted(known))}",
                where=where,
            )
        # Values are taken as written, not coerced: "false" was true, 99.9 was 99, true was 1,
        # -5 was a negative duration (a weakened gate or contests turned back on without a
        # word: a review).
        try:
            if k in ("assume_legit_after", "every_seconds", "ttl", "shadow_max_wait"):
                if type(v) is bool:
                    raise ValueError("must be a duration, e.g. 4d or 3600 (seconds)")
                raw, v = v, parse_duration(v)
                said = (where, k, raw)  # (4 meant as days was 4 s, as in a rules window or a
                if type(raw) in (int, float) and 0 < v < math.inf and said not in _SAID_UNITLESS:
                    _SAID_UNITLESS.add(said)  # label delay: a QA pass)
                    log.warning(
                        "%s: %s.%s %s has no unit: read as %s seconds (%s; write 4d, 6h, 90s)",
                        where, section, k, raw, raw, span(v),
                    )  # fmt: skip
                if not v >= 0:
                    raise ValueError("must be a duration of 0 or more, e.g. 4d")
                if k in ("assume_legit_after", "ttl") and v == math.inf:
                    # (.inf: nothing was ever assumed legitimate, the model learned frauds only
                    # and scored everyone 1.0, a QA pass; inputs kept for ever)
                    raise ValueError("must be a finite duration, e.g. 4d")
                if k != "ttl" and v <= 0:  # (every_seconds: 0s published a version per label,
                    # where every_labels: 0 was refused; assume_legit_after: 0 learned each
                    # payment as legitimate at once, frauds first: QA passes)
                    eg = {"shadow_max_wait": "14d", "every_seconds": "6h"}.get(k, "4d")
                    raise ValueError(f"must be a positive duration, e.g. {eg}")
            elif k in (
                "every_labels",
                "shadow_min_labels",
                "alert_budget_per_day",
                "warmup_labels",
                "min_frauds",
                "window",
            ):
                least = 0 if k in ("warmup_labels", "min_frauds", "window") else 1
                if type(v) is not int or v < least:
                    raise ValueError(f"must be a whole number of at least {least}, got {_shown(v)}")
            elif k == "legit_sample_rate":
                if type(v) not in (int, float) or not 0.0 < v <= 1.0:
                    raise ValueError(f"must be a number in (0, 1], got {_shown(v)}{_exponent(v)}")
                v = float(v)
            elif k == "margin":
                if type(v) not in (int, float) or not 0.0 <= v < 1.0:
                    raise ValueError(
                        f"must be a number in [0, 1), e.g. 0.05, got {_shown(v)}{_exponent(v)}"
                    )
                v = float(v)
            elif k == "auto":
                if type(v) is not bool:
                    raise ValueError(f"must be true or false, got {v!r}")
            elif k == "rules" and not (isinstance(v, bool) or v == "score"):
                raise ValueError("must be true, false or score")
        except (TypeError, ValueError, ConfigError) as e:
            raise ConfigError(f"{section}.{k}: {e}", where=where) from None
        kwargs[k] = v
    return cls(**kwargs)


def _shown(v: Any) -> str:
    """A value as YAML wrote it: ``true``, not Python's ``True`` (a QA pass)."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v)


def _learn_policy(raw: Any, source: str, node: yaml.Node | None) -> LearnPolicy:
    """The ``learn`` section; a ``ttl`` shorter than ``assume_legit_after`` is refused (the
    trainer silently kept the inputs for ``assume_legit_after`` instead: a QA pass)."""
    learn: LearnPolicy = _policy(LearnPolicy, raw, source, node, "learn")
    if learn.ttl < learn.assume_legit_after:
        written = isinstance(raw, dict) and "ttl" in raw
        raise ConfigError(
            f"learn.ttl ({span(learn.ttl)}{'' if written else ', the default'}) is shorter than "
            f"learn.assume_legit_after ({span(learn.assume_legit_after)}): an input must be "
            "kept until it is assumed legitimate, and after for late labels (chargebacks): "
            f"set ttl to at least {span(learn.assume_legit_after)}",
            where=_where(source, _key_node(node, "ttl" if written else "assume_legit_after")),
        )
    return learn


def _seed(value: Any, where: str) -> int:
    if type(value) is not int or value < 0:
        raise ConfigError(
            f"seed: must be a whole number of 0 or more, e.g. 42, got {_shown(value)}", where=where
        )
    return value


def parse_spec(text: str, *, source: str = "<spec>") -> ModelSpec:
    """Parse and validate spec YAML (estimators and parameters are checked, not built)."""
    try:
        root = yaml.compose(text)
        data = yamlio.without_own_keys(yamlio.load(text, exponents=True))
    except yaml.YAMLError as e:
        problem, mark = yamlio.explain(e, text)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"not valid YAML: {problem}", where=where) from None
    if not isinstance(data, dict):
        raise ConfigError("a model spec is a mapping with name and pipeline", where=source)
    yamlio.other_file(data, "--model", source)
    for k in data:
        if k not in _TOP_KEYS:
            raise ConfigError(
                f"unknown key {k!r}{_did_you_mean(k, _TOP_KEYS)}; a model spec has: "
                f"{', '.join(sorted(_TOP_KEYS))}",
                where=_where(source, _key_node(root, k)),
            )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(
            "name: a spec needs a name, as text (e.g. name: default)",
            where=_where(source, _key_node(root, "name")) if "name" in data else source,
        )
    pipe = data.get("pipeline")
    pnode = _child(root, "pipeline")
    if not isinstance(pipe, list) or not pipe:
        raise ConfigError(
            "pipeline: a list of steps like '- linear_model.LogisticRegression: {}'",
            where=_where(source, pnode),
        )
    steps = []
    for i, item in enumerate(pipe):
        inode = pnode.value[i] if isinstance(pnode, yaml.SequenceNode) else None
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(
                "each pipeline step is one 'module.Class: {params}' entry",
                where=_where(source, inode),
            )
        ((dotted, params),) = item.items()
        _check_step(str(dotted), params, source, inode)
        steps.append((str(dotted), dict(params or {}), _line(inode) or 0))
    spec = ModelSpec(
        name=name,
        steps=tuple(steps),
        learn=_learn_policy(data.get("learn"), source, _child(root, "learn")),
        publish=_policy(
            PublishPolicy, data.get("publish"), source, _child(root, "publish"), "publish"
        ),
        promote=_policy(
            PromotePolicy, data.get("promote"), source, _child(root, "promote"), "promote"
        ),
        gate=_policy(GatePolicy, data.get("gate"), source, _child(root, "gate"), "gate"),
        inputs=_policy(InputsPolicy, data.get("inputs"), source, _child(root, "inputs"), "inputs"),
        seed=_seed(data.get("seed", DEFAULT_SEED), _where(source, _key_node(root, "seed"))),
        source=source,
        text=text,
    )
    _try_pipeline(spec)
    return spec


#: What a built pipeline learns and scores once at load (a spec whose parameters have the wrong
#: types or whose last step does not classify fails here, not at the first label of a run).
_SAMPLE = (({"amount": 120.0, "f": 0.0}, False), ({"amount": 9000.0, "f": 1.0}, True))
#: Rows scored once the sample is learned: its own, and rows beyond it either way (a
#: LogisticRegression with `loss: optim.losses.Squared` scored 0.83 on the last one and passed,
#: then -0.10 in a replay, where every version it learned was refused: a QA pass).
_PROBES = (*(x for x, _ in _SAMPLE), {"amount": 0.0, "f": -1.0}, {"amount": 1e6, "f": 5.0})


def _did_you_mean(key: Any, known: Collection[str]) -> str:
    """``; did you mean X?`` for a key close to a known one (`lern:` was told the list alone,
    where a misspelt estimator was told its likely name: a QA pass), else nothing.

    >>> _did_you_mean("lern", {"learn", "publish"}), _did_you_mean("zzz", {"learn"})
    ('; did you mean learn?', '')
    """
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _try_pipeline(spec: ModelSpec) -> None:
    """Build ``spec``'s pipeline and learn and score two sample rows."""
    *first, (last, _params, last_line) = spec.steps
    for dotted, _, line in first:
        if not hasattr(_estimator_class(dotted, spec.source), "transform_one"):
            raise ConfigError(
                f"{dotted} does not transform (no transform_one): every step but the last must "
                "be a transformer (e.g. preprocessing.StandardScaler), the classifier comes last",
                where=f"{spec.source}:{line}",
            )
    if not hasattr(_estimator_class(last, spec.source), "predict_proba_one"):
        raise ConfigError(
            f"{last} does not classify (no predict_proba_one): the last step of the pipeline "
            "must be a classifier, e.g. linear_model.LogisticRegression",
            where=f"{spec.source}:{last_line}",
        )
    given = [(d, line) for d, params, line in spec.steps if params] or spec.steps[:1]
    steps = ", ".join(f"{d[0]} (line {d[-1]})" for d in given)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # (River prints a value it replaces: see below)
        model = build_pipeline(spec)
    said = printed.getvalue()
    replaced = [ln for ln in said.splitlines() if "will use default" in ln]
    if replaced:  # `split_criterion: ginii`: "Invalid split_criterion option ginii', will use
        # default 'info_gain'" on stdout, twice, and the default used (a QA pass)
        raise ConfigError(
            f"River does not take a value of the parameters of {steps}: {replaced[0]}",
            where=f"{spec.source}:{given[0][-1]}",
        )
    sys.stdout.write(said)  # (anything else, printed meanwhile by whichever thread: as it was)
    try:
        for x, y in _SAMPLE:
            model.learn_one(x, y)
        for x in _PROBES:  # (each scored: a loss of no probability passed on the last, a QA)
            p = model.predict_proba_one(x).get(True, 0.0)
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"a probability of {p!r} on {x}")
        slow = _too_slow(model)
    except NotImplementedError as e:  # (a classifier of River's that scores no probability:
        raise ConfigError(  # ensemble.VotingClassifier; told to check its parameters, a QA)
            f"the pipeline does not implement what fds calls on a sample row ({describe(e)}): "
            f"its steps must learn (learn_one) and the last score a probability "
            f"(predict_proba_one), which {last} may not (ensemble.VotingClassifier does not); "
            "e.g. linear_model.LogisticRegression does",
            where=f"{spec.source}:{last_line}",
        ) from None
    except Exception as e:  # what River raises for a bad parameter value varies
        at = _raising_step(e, model, spec)
        if at is not None and not at[1]:  # (a step of no parameters: the scaler was blamed for
            # a ComplementNB given the scaler's negative outputs, a QA pass)
            dotted, _, line = at
            raise ConfigError(
                f"the pipeline fails on a sample row in {dotted} ({describe(e)}): check that "
                "it takes what the steps before it give (negative numbers, say)",
                where=f"{spec.source}:{line}",
            ) from None
        raise ConfigError(
            f"the pipeline fails on a sample row ({describe(e)}): check the types "
            f"and values of the parameters of {steps}",
            where=f"{spec.source}:{given[0][-1]}",
        ) from None
    if slow is not None:
        width, took = slow
        raise ConfigError(
            f"the pipeline takes {took * 1000:.0f} ms to score a row of {width} inputs, "
            f"{took / MODEL_BUDGET_S:.0f} times the {MODEL_BUDGET_S * 1000:.0f} ms a decision "
            f"gives the model (serving would bypass it as too slow): make the parameters of "
            f"{steps} lighter",
            where=f"{spec.source}:{given[0][-1]}",
        )


#: Rows of these widths are learned and scored, each score timed: what a model costs may grow
#: with its inputs (a degree-6 PolynomialExtender passed on two inputs and took 1.4 s per score
#: on the 24 of production, a QA pass). The widths double up to production's (the default
#: rules give ~30 inputs), so a model that explodes is stopped at a width it still takes a few
#: budgets at. A spec is refused only when two scores of a width take SLOW_MULTIPLE times the
#: model's budget: a busy machine doubles a time (a review: SRP with `subspace_size: sqrt`
#: scores in ~5 ms at 32 inputs on a quiet machine, and 24 ms were seen under load), and a
#: model near its budget is the latency guard's to judge while it serves.
_WIDTHS = (4, 8, 16, 32)
_ROWS_PER_WIDTH = 5
SLOW_MULTIPLE = 5


def _too_slow(model: Any) -> tuple[int, float] | None:
    """The first width (and the faster score's seconds) at which ``model`` scored twice slower
    than SLOW_MULTIPLE times :data:`MODEL_BUDGET_S`, or None: a width passes at its first fast
    score (each row learned first), so a sound model costs one row per width."""
    rng = random.Random(0)
    for width in _WIDTHS:
        slow: list[float] = []
        for i in range(_ROWS_PER_WIDTH):
            x = {f"x{j}": rng.gauss(0.0, 1.0) for j in range(width)}
            model.learn_one(x, i % 2 == 0)
            t = time.perf_counter()
            model.predict_proba_one(x)  # (what the latency guard times)
            took = time.perf_counter() - t
            if took <= SLOW_MULTIPLE * MODEL_BUDGET_S:
                break
            slow.append(took)
            if len(slow) == 2:
                return width, min(slow)
    return None


def _raising_step(e: BaseException, model: Any, spec: ModelSpec) -> tuple[Any, ...] | None:
    """The step of ``spec`` (dotted, params, line) whose code raised ``e`` in ``model`` (the
    deepest frame of a step's own methods), or None."""
    built = list(getattr(model, "steps", {}).values())[-len(spec.steps) :]
    found = None
    tb = e.__traceback__
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        found = next((i for i, step in enumerate(built) if step is me), found)
        tb = tb.tb_next
    return spec.steps[found] if found is not None else None


def build_pipeline(spec: ModelSpec) -> Any:
    """A fresh, untrained River pipeline for ``spec`` (the steps chained with ``|``), behind
    :class:`~fds.models.inputs.WithoutRuleInputs` unless the model reads the rules' results."""
    from river import compose

    from fds.models.inputs import WithoutRuleInputs

    models: list[Any] = [] if spec.inputs.reads_rules else [WithoutRuleInputs()]
    # Each estimator seeded here gets its own seed (spec.seed, then +1, ... in the order they
    # are built): with one seed for all, the models of a VotingClassifier would be the same.
    seeds = itertools.count(spec.seed)
    for dotted, params, line in spec.steps:
        if dotted == "compose.Pipeline" and not params:  # (said as River's IndexError: a QA)
            raise ConfigError(
                "compose.Pipeline here holds no step: the steps under `pipeline:` are chained "
                "into one already, so leave it out",
                where=f"{spec.source}:{line}",
            )
        try:
            models.append(_instantiate(dotted, params, seeds))
        except Exception as e:  # what River raises for bad parameters varies (an
            # AttributeError for `model: null`, an IndexError for an empty Pipeline: a QA pass)
            raise ConfigError(
                f"{dotted} cannot be built with these parameters ({describe(e)}): check their "
                "types and values",
                where=f"{spec.source}:{line}",
            ) from None
    try:
        return compose.Pipeline(*models)
    except Exception as e:  # (an empty compose.Pipeline among the steps: an IndexError)
        raise ConfigError(
            f"the steps cannot be chained into a pipeline ({describe(e)}): check that each "
            "is a River estimator with its parameters",
            where=f"{spec.source}:{spec.steps[0][-1]}",
        ) from None
