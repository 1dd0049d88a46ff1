"""Hot changes while ``fds run`` decides (RELIABILITY.md test 6), against the real broker."""

from __future__ import annotations

import logging
import re

import orjson
import pytest

from fds.pipeline import DEFAULT_RULES
from fds.streams.kafka import Runner, build_run_engine, close_engine, produce_file
from tests.integration.test_kafka_run import (
    read_all,
    run_in_thread,
    settings_for,
    wait_until,
    write_stream,
)

pytestmark = pytest.mark.integration


def test_broken_rules_file_keeps_last_good_then_takes_the_next_good(
    kafka_bootstrap, topics, unique_name, tmp_path, caplog
):
    rules = tmp_path / "rules.yaml"
    good = DEFAULT_RULES.read_text()
    rules.write_text(good)
    s = settings_for(kafka_bootstrap, topics, unique_name("g"))
    engine = build_run_engine(rules, None)
    v1 = engine.rules.current.version
    engine.rules.poll_seconds = 0.1  # notice the edits quickly
    runner = Runner(s, engine)
    t, errors = run_in_thread(runner)
    try:
        for part in range(3):
            write_stream(tmp_path / f"tx{part}.jsonl", 200, start=part * 200)
        produce_file(tmp_path / "tx0.jsonl", s)
        wait_until(lambda: runner.stats.decided >= 200, 60, "the first decisions")

        # An analyst saves a broken file: line 2 of the rules ("version:") becomes bad YAML.
        with caplog.at_level(logging.ERROR, logger="fds"):
            lines = good.splitlines()
            broken_line = next(i for i, x in enumerate(lines) if x.startswith("rules:")) + 2
            lines[broken_line - 1] = "  - id: [unclosed"
            rules.write_text("\n".join(lines) + "\n")
            wait_until(lambda: engine.rules.counts["rejected"] >= 1, 30, "the rejection")
        produce_file(tmp_path / "tx1.jsonl", s)
        wait_until(lambda: runner.stats.decided >= 400, 60, "decisions after the broken file")
        # The error names file:line, and so does the log line that reports it.
        file_line = re.compile(re.escape(str(rules)) + r":\d+")
        err = str(engine.rules.last_error)
        assert file_line.search(err), err
        assert any(file_line.search(r.getMessage()) for r in caplog.records), caplog.text

        # The next good file (a new version) is picked up.
        rules.write_text(good.replace(v1, v1 + "-fixed", 1))
        wait_until(lambda: engine.rules.counts["ok"] >= 1, 30, "the reload")
        produce_file(tmp_path / "tx2.jsonl", s)
        wait_until(lambda: runner.stats.decided >= 600, 60, "decisions after the fix")
    finally:
        runner.stop()
        t.join(15)
        close_engine(engine)
    assert not errors, errors
    versions = {
        d["tx_id"]: d["ruleset_version"]
        for d in (orjson.loads(r.value) for r in read_all(kafka_bootstrap, topics["decisions"]))
    }
    assert len(versions) == 600 and runner.stats.dead_letters == 0  # not one event failed
    assert {versions[f"tx{i:07d}"] for i in range(400)} == {v1}  # last good kept
    assert {versions[f"tx{i:07d}"] for i in range(400, 600)} == {v1 + "-fixed"}


def test_produce_says_how_far_it_got_as_it_goes(
    kafka_bootstrap, topics, unique_name, tmp_path, caplog, monkeypatch
):
    """A QA pass: `fds produce FILE --rate R` was silent until its end (minutes at a rate)."""
    monkeypatch.setattr("fds.streams.kafka.PROGRESS_EVERY_S", 0.0)
    s = settings_for(kafka_bootstrap, topics, unique_name("g"))
    write_stream(tmp_path / "tx.jsonl", 2100)
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        assert produce_file(tmp_path / "tx.jsonl", s) == 2100
    assert 'producing records="1024"' in caplog.text
    assert 'producing records="2048"' in caplog.text
