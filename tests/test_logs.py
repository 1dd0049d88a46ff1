"""fds.logs: key="value" and JSON lines with context, and no personal data in them."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fds.logs import SENSITIVE_KEYS, configure_logging, log_event, redact


def setup(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    return configure_logging("DEBUG", fmt=fmt, stream=out, logger_name=f"fds.test.{fmt}"), out


def test_kv_line_carries_context_in_order_and_escapes_quotes() -> None:
    log, out = setup("kv")
    log_event(log, 'rules file rejected: "when" is empty', where="rules/x.yaml:12", partition=3)
    line = out.getvalue().strip()
    assert "\n" not in line
    assert line.startswith('ts="') and 'level="info" logger="fds.test.kv"' in line
    assert line.endswith(
        'msg="rules file rejected: \\"when\\" is empty" where="rules/x.yaml:12" partition="3"'
    )


def test_kv_line_escapes_every_control_character_of_a_value() -> None:
    """A security review: a transaction id with a carriage return and ANSI escapes, logged as
    it came, made a terminal rewrite the line (a forged "all good" record), and U+2028/U+0085
    split the line in a collector."""
    log, out = setup("kv")
    hostile = "late0\r\x1b[31mFAKE ALERT\x1b[0m\u2028\x85\x00\t"
    log.warning('events later than the grace last_tx_id="%s"', hostile)
    line = out.getvalue().rstrip("\n")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in line)
    assert 'last_tx_id="late0\\x0d\\x1b[31mFAKE ALERT\\x1b[0m\\u2028\\x85\\x00\\x09"' in line


def test_json_line_escapes_the_controls_json_leaves_raw() -> None:
    """A review: orjson escapes the C0 controls but wrote C1 ones (an 8-bit CSI) and U+2028
    raw; the value reads back the same."""
    log, out = setup("json")
    hostile = "a\x85b\u2028c\x9bd\x1be"
    log.warning('late tx_id="%s"', hostile)
    line = out.getvalue().rstrip("\n")
    assert not any(0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" or ord(c) < 32 for c in line)
    assert json.loads(line)["tx_id"] == hostile


def test_json_line_keeps_numbers_and_redacts() -> None:
    log, out = setup("json")
    log_event(
        log,
        "decided",
        level=logging.WARNING,
        offset=1200,
        rate=0.25,
        card_id="c-9",
        ip="10.0.0.1",
        note="pan 4111-1111-1111-1111",
    )
    rec = json.loads(out.getvalue())
    assert rec["level"] == "warning" and rec["msg"] == "decided"
    assert rec["offset"] == 1200 and rec["rate"] == 0.25
    assert rec["card_id"] == "<redacted>" and rec["ip"] == "<redacted>"
    assert rec["note"] == "pan ************1111"


@pytest.mark.parametrize("key", sorted(SENSITIVE_KEYS))
def test_every_sensitive_key_is_redacted(key: str) -> None:
    log, out = setup("kv")
    log_event(log, "x", **{key: "secret-value-123"})
    assert "secret-value-123" not in out.getvalue()
    assert f'{key}="<redacted>"' in out.getvalue()


def test_card_numbers_in_messages_and_tracebacks_are_masked() -> None:
    # 16 digits, and the shortest and longest card numbers (13 and 19 digits, Luhn-valid)
    log, out = setup("kv")
    try:
        raise ValueError("bad card 5500 0000 0000 0004, then 6221 2600 0000 0000 126")
    except ValueError:
        log.exception("stage failed for 4111111111111111 and 4222222222222")
    text = out.getvalue()
    for pan in ("4111111111111111", "5500 0000 0000 0004", "4222222222222", "0000 126"):
        assert pan not in text
    assert "************1111" in text and "************0004" in text
    assert "*********2222" in text and "***************0126" in text


def test_plain_extra_fields_are_context_too() -> None:
    log, out = setup("kv")
    log.info("swap", extra={"version": "v9", "customer_id": "u1"})
    assert 'version="v9"' in out.getvalue() and 'customer_id="<redacted>"' in out.getvalue()


def test_numbers_that_are_not_card_numbers_stay() -> None:
    # epoch milliseconds, offsets, amounts: not Luhn-valid card numbers
    text = "ts=1767225600000 offset=123456789012 amount=1234.56"
    assert redact(text) == text


def test_configure_is_idempotent_and_checks_the_format() -> None:
    out = io.StringIO()
    for _ in range(3):
        log = configure_logging("INFO", stream=out, logger_name="fds.test.idem")
    log_event(log, "once")
    assert out.getvalue().count("once") == 1
    log_event(log, "hidden", level=logging.DEBUG)
    assert "hidden" not in out.getvalue()
    with pytest.raises(ValueError, match="'kv' or 'json'"):
        configure_logging(fmt="xml")


def test_the_context_a_log_call_writes_into_its_message_becomes_fields():
    """Found by a QA pass: `--log-format json` had every line's context inside `msg`
    ('model swap from="v5" to="v6"'): a log shipper could not select on it."""
    import orjson

    out = io.StringIO()
    log = configure_logging("INFO", fmt="json", stream=out, logger_name="fds.test_split")
    log.warning('dead letter stage="%s" error="%s" partition="%s[%d]" offset="%d"',
                "parse", "ValueError", "tx", 3, 12)  # fmt: skip
    log.info('model swap from="%s" to="%s" card_id="%s"', "v5", "v6", "c-17")
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "dead letter"
    assert (first["stage"], first["partition"], first["offset"]) == ("parse", "tx[3]", "12")
    assert second["msg"] == "model swap" and second["to"] == "v6"
    assert second["card_id"] == "<redacted>"  # (a sensitive key, wherever it was written)
    kv = io.StringIO()
    log = configure_logging("INFO", fmt="kv", stream=kv, logger_name="fds.test_split_kv")
    log.info('rules reloaded path="%s" version="%s"', "r.yaml", "v2")
    assert 'msg="rules reloaded" path="r.yaml" version="v2"' in kv.getvalue()


def test_a_command_s_last_word_is_a_log_record_where_logs_are_json(capsys):
    """Found by a QA pass: `fds --log-format json run` ended with a plain stderr line (its
    error), which a JSON log shipper drops."""
    import orjson

    from fds.cli import main

    assert main(["--log-format", "json", "run", "--bootstrap", "nohostport:", "--rules", "none",
                 "--model", "none"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    last = orjson.loads(err[-1])
    assert last["level"] == "error" and last["msg"].startswith("fds run: error:")
    assert main(["run", "--bootstrap", "nohostport:", "--rules", "none", "--model", "none"]) == 2
    assert capsys.readouterr().err.startswith("fds run: error:")  # (kv: the plain line, as ever)
    # the other commands' usage errors too (a review: replay's were plain lines)
    assert main(["--log-format", "json", "replay", "--speed", "0", "x.csv"]) == 2
    last = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert last["msg"].startswith("fds replay: error: --speed must be > 0 and finite (e.g.")
    main(["replay", "--speed", "0", "x.csv"])  # (kv again for the tests after this one)
    capsys.readouterr()


def test_an_argparse_error_is_one_json_record_with_json_logs(capsys):
    """`fds --log-format json replay f.csv --sped 2`: the errors argparse itself finds (an
    unknown option, a bad value) were plain text after a usage block (a QA pass)."""
    import orjson

    from fds.cli import main

    try:
        for argv, msg in (
            (["replay", "f.csv", "--sped", "2"],
             "fds replay: error: unrecognized arguments: --sped 2 (--sped: did you mean --speed?)"),
            (["simulate", "--days", "0", "--out", "s.jsonl"],
             "fds simulate: error: argument --days: must be at least 1, got 0 "
             "(run 'fds simulate --help' for help)"),
        ):  # fmt: skip
            for fmt in (["--log-format", "json"], ["--log-format=json"]):
                with pytest.raises(SystemExit) as e:
                    main([*fmt, *argv])
                assert e.value.code == 2
                (line,) = capsys.readouterr().err.splitlines()
                record = orjson.loads(line)
                assert record["level"] == "error" and record["msg"] == msg
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)


def test_a_command_s_summary_is_kept_under_q_and_a_pair_never_replaces_a_line_field():
    """Found by a review: with `-q --log-format json` the summary (INFO) was dropped, and a
    drift line's `ts="..."` pair took the place of the line's own time in kv."""
    import orjson

    from fds.logs import say

    out = io.StringIO()
    configure_logging("WARNING", fmt="json", stream=out, logger_name="fds")
    say("consumed=10 decided=10", logging.INFO)
    assert orjson.loads(out.getvalue())["msg"] == "consumed=10 decided=10"
    kv = io.StringIO()
    log = configure_logging("INFO", fmt="kv", stream=kv, logger_name="fds")
    log.info('model drift ts="%s"', 5.0)
    line = kv.getvalue()
    assert line.count(" ts=") == 0 and line.startswith('ts="20') and 'ts_="5.0"' in line
    configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect it)


def test_a_value_cannot_forge_fields_of_its_own():
    """A security review: an announcement's `path` holding `" partition="transactions[9]` was
    logged as a `partition` field of its own in JSON logs (the pairs were split after the
    values were formatted into the message)."""
    import orjson

    out = io.StringIO()
    log = configure_logging("INFO", fmt="json", stream=out, logger_name="fds.test_forge")
    forged = 'x" partition="transactions[9]" tx_id="forged'
    log.warning('model unreachable version="%s" path="%s" error="%s"', "v1", forged, "gone")
    log.info("100%% done %s", "now")  # no pairs: the message as logging makes it
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "model unreachable" and first["path"] == forged
    assert "partition" not in first and "tx_id" not in first and first["error"] == "gone"
    assert second["msg"] == "100% done now"


def test_replay_with_json_logs_prints_its_summary_as_json_and_every_notice_as_a_record(
    tmp_path, capsys
):
    """`fds --log-format json replay` printed its summary as a table and its notices (where the
    decisions are, warnings) as plain lines: a script or log shipper could read neither."""
    import orjson

    from fds.cli import main

    tx = tmp_path / "tx.jsonl"
    tx.write_text(
        "".join(
            orjson.dumps(
                {"tx_id": f"t{i}", "ts": 1767225600.0 + i, "card_id": "c1", "amount": 10.0 + i}
            ).decode()
            + "\n"
            for i in (2, 1, 3)  # one out of order: a warning
        )
    )
    out = tmp_path / "d.jsonl"
    try:
        argv = ["replay", str(tx), "--out", str(out), "--no-progress", "--model", "none"]
        assert main(["--log-format", "json", *argv]) == 0
        got = capsys.readouterr()
        (line,) = got.out.splitlines()
        summary = orjson.loads(line)
        assert summary["title"] == f"replay of {tx}"
        assert summary["transactions"] == summary["decided"] == 3 and summary["reordered"] == 1
        assert sum(summary["actions"].values()) == 3 and summary["precision"] is None
        assert set(summary["latency_ms"]) >= {"p50", "p95", "p99"}
        records = [orjson.loads(x) for x in got.err.splitlines()]
        levels = {r["msg"].split(":")[0]: r["level"] for r in records}
        assert levels == {"fds replay": "warning", "decisions": "info"}
        # kv logs: the table and plain lines, as before
        assert main(argv) == 0
        got = capsys.readouterr()
        assert "replay of" in got.out and "decided" in got.out and not got.out.startswith("{")
        assert got.err.startswith("fds replay: input not in time order: 1 record was")
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])  # (the default's too: a QA pass)
def test_replay_refuses_a_metrics_host_without_a_metrics_port(tmp_path, capsys, host):
    """A QA pass: `fds replay f.jsonl --metrics-host 0.0.0.0` served nothing without a word
    (metrics are off in a replay unless --metrics-port is given)."""
    from fds.cli import main

    assert main(["replay", str(tmp_path / "f.jsonl"), "--metrics-host", host]) == 2
    assert "--metrics-host needs --metrics-port N" in capsys.readouterr().err


def test_a_full_log_disk_does_not_stop_a_command(tmp_path):
    """A QA pass: `fds run 2>/dev/full` (a full log disk) exited 1 at its start without a
    word, its first plain stderr line raising ENOSPC; a log record is dropped, so is a line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fds.streams.simulator import simulate, write

    data, _ = write(simulate(days=1, cards=100, seed=5, drift_day=None), tmp_path / "tx.jsonl")
    out = tmp_path / "o.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "fds", "replay", str(data), "--model", "none", "--out", str(out)]
    with open("/dev/full", "w") as full:
        p = subprocess.run(cmd, stderr=full, stdout=subprocess.DEVNULL, env=env, timeout=120)
    assert p.returncode == 0
    assert out.read_bytes().count(b"\n") == len(data.read_bytes().splitlines())


def test_simulate_with_json_logs_prints_its_summary_as_json_and_its_stages_as_records(
    tmp_path, capsys
):
    """A QA pass: `fds --log-format json simulate` printed its stage lines as plain text among
    the JSON logs, and its summary as a table."""
    import orjson

    from fds.cli import main

    argv = ["simulate", "--days", "2", "--cards", "200", "--merchants", "100"]
    try:
        assert main(["--log-format", "json", *argv, "--out", str(tmp_path / "s.jsonl")]) == 0
        got = capsys.readouterr()
        (line,) = got.out.splitlines()
        summary = orjson.loads(line)
        assert summary["title"] == "simulation" and summary["days"] == 2
        assert summary["transactions"] == len((tmp_path / "s.jsonl").read_bytes().splitlines())
        assert summary["labels_file"] == str(tmp_path / "s.labels.jsonl")
        records = [orjson.loads(x) for x in got.err.splitlines()]
        assert records and all(r["level"] == "info" for r in records)
        assert any("materialising" in r["msg"] for r in records)
    finally:
        configure_logging("INFO", fmt="kv", logger_name="fds")  # (as the other tests expect)


def test_a_value_cannot_forge_a_field_through_a_template_without_pairs() -> None:
    """A review: `log.warning("poll failed: %s", 'boom partition="99"')` gave the field
    partition="99": pairs are read from templates, never from what their arguments wrote."""
    from fds.logs import _split_record

    record = logging.LogRecord(
        "fds", logging.WARNING, "f", 1, "poll failed: %s", ('boom partition="99"',), None
    )
    assert _split_record(record) == ('poll failed: boom partition="99"', {})


def test_a_key_twice_in_a_template_is_no_field() -> None:
    """A review: `group="new" takes over ... of group="old"` gave the field group="old" (the
    last won), filing the line under the wrong group: both stay in the text, neither a field."""
    from fds.logs import _split_record

    record = logging.LogRecord(
        "fds", logging.INFO, "f", 1, 'group="%s" takes over the offsets of group="%s" at="%s"',
        ("new", "old", "x"), None,
    )  # fmt: skip
    assert _split_record(record) == (
        'group="new" takes over the offsets of group="old" at="x"',
        {"at": "x"},
    )


def test_every_pair_of_a_log_template_is_a_field_of_its_own() -> None:
    """A QA pass: lines with text after their pairs (`no usable checkpoint path="..." : ...`,
    `state dir="..." was deleted; recreated`, a rejected rules reload ...) kept the pairs
    inside `msg` in JSON logs: every `key="..."` pair of every template of fds's log calls
    (read by ast, formatted with arguments of the kinds it asks for) is a field."""
    import ast
    from pathlib import Path

    from fds.logs import _PAIR, _SPEC, _split_record

    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    sample = {"d": 1, "i": 1, "x": 1, "c": 1, "e": 1.5, "f": 1.5, "g": 1.5}
    bad, seen = [], 0
    for path in sorted(Path("fds").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, args = node.func.attr, node.args
            at = 1 if name == "log" else 0 if name in levels else None
            if at is None or len(args) <= at or not isinstance(args[at], ast.Constant):
                continue
            template = args[at].value
            if not isinstance(template, str) or not _PAIR.search(template) or "*" in template:
                continue
            seen += 1
            values = tuple(sample.get(x[-1].lower(), "v") for x in _SPEC.findall(template)
                           if x != "%%")  # fmt: skip
            record = logging.LogRecord("fds", logging.INFO, str(path), 1, template, values, None)
            _text, fields = _split_record(record)
            keys = [k for k, _ in _PAIR.findall(template)]
            if set(fields) != {k for k in keys if keys.count(k) == 1}:
                bad.append(f"{path}:{node.lineno}: {template[:80]!r} -> {fields}")
    assert seen > 100, seen  # (the walk finds fds's log calls)
    assert not bad, "\n".join(bad)
