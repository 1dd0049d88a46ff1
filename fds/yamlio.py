"""YAML as the project reads its own files (mappings, model specs, settings): PyYAML's safe
loader, refusing a key written twice in one mapping (PyYAML keeps the last one without a word:
``tx_id: TID`` then ``tx_id: SHOP`` silently mapped every id to a shop). Rules files have a
loader of their own with the same check (:mod:`fds.rules.ruleset`).

>>> load("a: 1\\nb: {c: 2}\\n")
{'a': 1, 'b': {'c': 2}}
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

from typing import Any

import yaml

__all__ = ["fields_at", "load"]

_MERGE = "tag:yaml.org,2002:merge"


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


def load(text: str) -> Any:
    """The YAML document in ``text``; raises :class:`yaml.YAMLError` (marked with the line of
    the problem) on a syntax error or a duplicate key."""
    return yaml.load(text, Loader=_Strict)  # a SafeLoader: builds plain data only


def fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) pydantic model at ``loc`` (list indices skipped): what
    an unknown key of a file could have meant."""
    for k in loc:
        if not isinstance(k, str) or model is None:
            continue
        ann = model.model_fields[k].annotation if k in getattr(model, "model_fields", {}) else None
        model = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if hasattr(a, "model_fields")), None
        )
    return list(getattr(model, "model_fields", {}))
