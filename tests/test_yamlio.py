"""fds.yamlio: a key written twice is refused; merge keys work as in PyYAML."""

from __future__ import annotations

import pytest
import yaml

from fds.yamlio import load


def test_a_key_written_twice_is_refused_with_its_line() -> None:
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'a'[\s\S]*line 4, column 3"):
        load("x: 1\ny:\n  a: 1\n  a: 2\n")


def test_merge_keys_may_be_overridden_also_when_merged_again() -> None:
    """A mapping merged into another is flattened in place by PyYAML: checked after that, its
    merged keys looked like its own, and `{<<: *base, a: 2}` merged further was refused (a
    review)."""
    text = "base: &base {a: 1}\ndefaults: {inner: &mid {<<: *base, a: 2}}\ntop: {<<: *mid}\n"
    assert load(text) == {"base": {"a": 1}, "defaults": {"inner": {"a": 2}}, "top": {"a": 2}}
    assert load("b: &b {a: 1, c: 3}\nx: {<<: *b, a: 2}\n")["x"] == {"a": 2, "c": 3}
