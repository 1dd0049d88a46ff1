"""fds.yamlio: a key written twice is refused; merge keys work as in PyYAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fds import yamlio
from fds.errors import ConfigError
from fds.yamlio import load, read_text


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


def test_an_alias_bomb_is_refused_at_the_innermost_node_past_the_limit() -> None:
    """A QA pass: a 600-byte model spec of anchors nested ten deep (9^10 values) passed its
    check, and publishing it (a JSON dump of the spec) expanded it until memory ran out."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    with pytest.raises(yaml.YAMLError, match=r"more than 100000 YAML nodes[\s\S]*line 6, col"):
        load("\n".join(lines) + "\n")  # (a5: 9^6 x's)
    assert load("\n".join(lines[:5]) + "\n")["a4"][0][0][0][0][0] == "x"  # (9^5: loads)
    assert len(load("[" + "1, " * 110_000 + "]")) == 110_000  # (long, no aliases: as written)


def test_merge_keys_that_would_make_a_huge_mapping_are_refused_unexpanded() -> None:
    """A QA pass (in a rules file): `<<: [*a1, *a1, ...]` over mappings merged in turn made a
    15-KB file 10^8 entries; the model specs, mappings and settings read through here."""
    text = "a0: &a0 {" + ", ".join(f"k{i}: 1" for i in range(50)) + "}\n"
    text += "a1: &a1 {<<: [" + ", ".join(["*a0"] * 1000) + "]}\n"
    text += "a2: {<<: [" + ", ".join(["*a1"] * 200) + "]}\n"
    with pytest.raises(yaml.YAMLError, match=r"more than 100000 YAML nodes[\s\S]*line 2, col"):
        load(text)
    assert load("a: &a {x: 1}\nb: {<<: [*a, *a], y: 2}\n")["b"] == {"x": 1, "y": 2}


@pytest.mark.parametrize(("char", "col"), [("\x07", 30), ("\x00", 30), ("\x7f", 30)])
def test_a_control_character_is_refused_at_its_line_and_column(tmp_path, char, col) -> None:
    """A QA pass: a BEL in a rules file was `YAML error: unacceptable character #x0007:
    control characters are not allowed` and PyYAML's position in characters, over two lines.
    Every YAML file of the project is read through read_text or decode."""
    p = tmp_path / "ctrl.yaml"
    p.write_bytes(f'version: "n"\nrules:\n  - {{id: a, when: "amount > 1{char}"}}\n'.encode())
    code = f"U+{ord(char):04X}"
    with pytest.raises(ConfigError) as e:
        read_text(p, "the file")
    assert str(e.value) == f"{p}:3:{col}: control character {code}: remove it"


def test_a_file_that_never_ends_or_never_comes_is_refused_not_waited_for(
    tmp_path, monkeypatch, caplog
) -> None:
    """A QA pass: `--model /dev/zero` was read until memory ran out, `--model FIFO` with no
    writer waited without end; a pipe with a writer (`<(...)`) is still read."""
    import os
    import subprocess

    from tests.blocking import raised_within

    with pytest.raises(ConfigError, match="larger than 5 MB, more than a model spec can be"):
        read_text(Path("/dev/zero"), "a model spec")
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    monkeypatch.setattr(yamlio, "PIPE_WAIT_S", 0.2)
    said = raised_within(lambda: read_text(fifo, "a model spec"))
    assert isinstance(said, ConfigError) and (
        "nothing was written to this pipe in 0.2 s, where a model spec was to come" in str(said)
    )
    # the wait is said once it lasts (a QA pass: a FIFO as the rules file, 30 s without a word)
    monkeypatch.setattr(yamlio, "PIPE_WAIT_S", 0.4)
    monkeypatch.setattr(yamlio, "PIPE_SAY_AFTER_S", 0.1)
    with caplog.at_level("WARNING", logger="fds.yamlio"):
        assert isinstance(raised_within(lambda: read_text(fifo, "a model spec")), ConfigError)
    assert f'waiting up to 0.4 s for a model spec: path="{fifo}" is a pipe' in caplog.text
    out = subprocess.run(
        ["bash", "-c", "python -c 'import sys; from pathlib import Path; from fds.yamlio import "
         "read_text; print(read_text(Path(sys.argv[1]), \"x\"))' <(sleep 0.2; echo a: 1)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "a: 1\n\n"


def test_a_bracket_left_open_at_the_end_is_said_where_it_opened() -> None:
    """A README walk: `rules: [` ending a file was "line 3: did not find expected node
    content", a line past the file, nothing of the bracket."""
    text = "version: 1\nrules: [\n"
    with pytest.raises(yaml.YAMLError) as e:
        load(text)
    problem, mark = yamlio.explain(e.value, text)
    assert (mark.line + 1, mark.column + 1) == (2, 8)
    assert problem.endswith("the '[' at line 2, column 8 is never closed")
    closed = "a: [1, {b: 2}]\nc: {d: [\n"
    with pytest.raises(yaml.YAMLError) as e:
        load(closed)
    assert yamlio.explain(e.value, closed)[0].endswith(
        "the '[' at line 2, column 8 is never closed"
    )


def test_a_quote_left_open_and_a_line_out_of_its_block_are_said_so() -> None:
    """A README walk: a rule's `reason: "...` without its closing quote was said at the next
    rule's `when: "` seven lines below, with YAML's words only; an `action:` indented as the
    rule's `- id:` said "did not find expected '-' indicator", no word of indentation."""
    rules = 'rules:\n  - id: a\n    reason: "open\n    score: 1\n  - id: b\n    when: "x > 1"\n'
    with pytest.raises(yaml.YAMLError) as e:
        load(rules)
    problem, mark = yamlio.explain(e.value, rules)
    assert (mark.line + 1, mark.column + 1) == (3, 13)
    assert problem.startswith(
        'the " at line 3, column 13 is closed only on line 6: is a quote left open on line 3?'
    )
    single = "a:\n  b: 'open\n  c: 'x'\n"
    with pytest.raises(yaml.YAMLError) as e:
        load(single)
    assert yamlio.explain(e.value, single)[0].startswith("the ' at line 2, column 6")
    indented = "rules:\n  - id: a\n    when: x\n  action: review\n    score: 1\n"
    with pytest.raises(yaml.YAMLError) as e:
        load(indented)
    problem, mark = yamlio.explain(e.value, indented)
    assert mark.line + 1 == 4 and problem.endswith("is line 4 indented as the lines of its block?")
    # a key indented deeper than the key above: more of its value (a README walk: YAML's
    # words alone, at the deeper line, for `decline_at:` one space short)
    for deeper in ("policy:\n decline_at: 0.9\n  review_at: 0.6\n", "a:\n  b: 1\n   c: 2\n"):
        with pytest.raises(yaml.YAMLError) as e:
            load(deeper)
        problem, mark = yamlio.explain(e.value, deeper)
        assert mark.line + 1 == 3 and problem.endswith(
            "line 3 is indented deeper than line 2, so YAML reads it as more of line 2's value: "
            "indent keys of one block alike"
        ), problem
    for inline in ("a: b: c\n", "x:\n  - a: 1\n    b: x: y\n"):  # (no indentation)
        with pytest.raises(yaml.YAMLError) as e:
            load(inline)
        assert yamlio.explain(e.value, inline)[0] == "mapping values are not allowed here"
    # a quote inside a quoted text is no indentation (a review: the hint asked about it)
    for inner in ("a:\n  b: 'this card's history'\n", 'a: "say "hi" now"\n'):
        with pytest.raises(yaml.YAMLError) as e:
            load(inner)
        problem = yamlio.explain(e.value, inner)[0]
        assert problem.endswith("or quote the text with the other quote"), problem
        assert "indented" not in problem


def test_a_settings_file_is_read_as_every_yaml_file_is(tmp_path: Path) -> None:
    """A README walk: `--config <(...)`, `/dev/zero` and a folder were each "settings file not
    found", where a rules file, a spec or a mapping given so is read, or refused for what it
    is."""
    import os

    from fds.streams.kafka import load_settings

    r, w = os.pipe()
    os.write(w, b"group: piped\n")
    os.close(w)
    try:
        assert load_settings(f"/dev/fd/{r}").group == "piped"
    finally:
        os.close(r)
    with pytest.raises(ConfigError, match="larger than 5 MB, more than a settings file can be"):
        load_settings("/dev/zero")
    with pytest.raises(ConfigError, match="cannot read a settings file: Is a directory"):
        load_settings(tmp_path)
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_a_key_that_yaml_1_1_reads_as_true_or_false_is_its_word() -> None:
    """A QA pass: a model spec's `on: amount` (feature_extraction.Agg's parameter) was said as
    "has no parameter True", a typo `yes:` as "unknown key True" with no line; values stay
    YAML's booleans, quoted keys and values their text."""
    from fds.yamlio import load

    got = load("on: 1\nyes: 2\nOff: 3\n'true': 4\nx: yes\nno: [on]\n")
    assert got == {"on": 1, "yes": 2, "Off": 3, "true": 4, "x": True, "no": [True]}
