"""Hot reload: good -> broken -> good, under a running replay and with the watcher thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fds.engine import Engine
from fds.errors import ConfigError
from fds.metrics import Metrics
from fds.policy import Policy
from fds.replay import ReplayInput, run
from fds.rules.reload import ReloadingRuleset


def rules(version: str, threshold: int, *, broken: bool = False) -> str:
    when = f"amount > {threshold}" if not broken else f"amount > {threshold} and nope"
    return (
        f'version: "{version}"\n'
        "rules:\n"
        f"  - id: big\n    when: {when}\n    action: review\n    score: 0.7\n    reason: Big\n"
        f"    tests: [{{given: {{amount: {threshold + 1}}}, expect: hit}}]\n"
    )


def write(path: Path, text: str) -> None:
    # Atomic replace, as editors and deploy tools do; bump mtime so that a same-size rewrite
    # within the filesystem's timestamp resolution is still noticed.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    st = path.stat() if path.exists() else None
    os.replace(tmp, path)
    if st is not None:
        ns = max(st.st_mtime_ns + 1_000_000, time.time_ns())
        os.utime(path, ns=(ns, ns))


def write_in_two(p: Path, rs: ReloadingRuleset, part: str, whole: str, ms: int) -> None:
    """Write ``whole`` into ``p`` in place (the same inode) in two parts, a pause after
    ``part``, which ``rs`` reads and takes meanwhile; the mtime is moved ``ms`` ms ahead after
    each part (a rewrite within the filesystem's timestamp resolution is a change too)."""
    with open(p, "w") as f:
        f.write(part)
    os.utime(p, ns=(time.time_ns() + ms * 10**6,) * 2)
    assert rs.check_now() == "ok", rs.last_error
    with open(p, "a") as f:
        f.write(whole[len(part) :])
    os.utime(p, ns=(time.time_ns() + (ms + 1) * 10**6,) * 2)


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_broken_file_at_start_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(rules("1", 100, broken=True))
    with pytest.raises(ConfigError, match=r"r.yaml:4:\d+: rule big: unknown name 'nope'"):
        ReloadingRuleset(p, start=False, settle_seconds=0)


def test_failing_inline_test_is_rejected_like_a_syntax_error(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(rules("1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("2", 100).replace("expect: hit", "expect: miss"))
    assert rs.check_now() == "rejected"
    assert rs.version == "1"
    assert "inline test 1 failed" in str(rs.last_error)
    write(p, rules("3", 100))  # fixed: the error is gone with it (it is reported until then)
    assert rs.check_now() == "ok" and rs.current.version == "3"
    assert rs.last_error is None


def test_a_value_yaml_cannot_build_is_rejected_and_the_last_good_rules_stay(tmp_path: Path):
    """It raised out of check_now before: no rejection counted, and no retry of the file."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("2", 100).replace('version: "2"', "version: 2026-13-45"))
    assert rs.check_now() == "rejected" and rs.version == "1"
    assert "r.yaml:1:10: bad value '2026-13-45'" in str(rs.last_error)
    assert rs.counts["rejected"] == 1


def test_hot_reload_under_a_running_replay(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    results: list[tuple[str, object]] = []
    metrics = Metrics()
    rs = ReloadingRuleset(
        p,
        start=False,
        settle_seconds=0,
        on_result=lambda r, new, err: results.append((r, err)),
        metrics=metrics,
    )
    txs = [
        {"tx_id": f"t{i}", "ts": float(i), "card_id": "c", "amount": 150.0, "extra": {}}
        for i in range(300)
    ]

    def on_event(i: int) -> None:  # between two events, as the watcher thread would
        if i == 100:
            write(p, rules("v2", 100, broken=True))
        elif i == 200:
            write(p, rules("v3", 200))
        if i % 10 == 0:
            rs.check_now()

    engine = Engine(rules=rs, policy=Policy())
    sink, dlq = ListSink(), ListSink()
    summary = run(engine, ReplayInput(txs, []), sink, dlq, on_event=on_event)
    assert summary.decided == 300 and not dlq.records  # no event failed
    versions = [d["ruleset_version"] for d in sink.records]
    assert versions == ["v1"] * 200 + ["v3"] * 100  # broken v2 never served
    assert ("rules reloaded", "v1 -> v3") in summary.rows()  # (a QA pass: it said nothing)
    # the rejected reload too (a QA pass: only the versions taken were said)
    assert ("rules files rejected", "1") in summary.rows()
    # v1 fires on 150 > 100; v3 (> 200) does not: each event decided by one whole ruleset.
    assert {d["action"] for d in sink.records[:200]} == {"review"}
    assert {d["action"] for d in sink.records[200:]} == {"approve"}
    assert rs.counts["ok"] == 1 and rs.counts["rejected"] == 1
    assert [r for r, _ in results] == ["rejected", "ok"]
    assert "r.yaml:4:" in str(results[0][1]) and "nope" in str(results[0][1])
    text = metrics.exposition()
    assert b'fds_ruleset_reloads_total{result="rejected"} 1.0' in text
    assert b'fds_ruleset_reloads_total{result="ok"} 1.0' in text
    assert b'fds_ruleset_info{version="v3"} 1.0' in text
    assert b'version="v1"' not in text


def test_a_replay_ending_on_a_rejected_file_says_why_as_last_checked(tmp_path: Path) -> None:
    """A QA pass: the summary said "the file now" of the watcher's last look, which an edit in
    the replay's last second had already fixed on disk."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    txs = [
        {"tx_id": f"t{i}", "ts": float(i), "card_id": "c", "amount": 150.0, "extra": {}}
        for i in range(20)
    ]

    def on_event(i: int) -> None:
        if i == 10:
            write(p, rules("v2", 100, broken=True))
            rs.check_now()

    summary = run(Engine(rules=rs, policy=Policy()), ReplayInput(txs, []), ListSink(),
                  ListSink(), on_event=on_event)  # fmt: skip
    (row,) = [v for k, v in summary.rows() if k == "rules files rejected"]
    assert row.startswith("1 (the file as last checked: ") and "r.yaml:" in row


def test_watcher_thread_swaps_while_events_flow(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []
    with ReloadingRuleset(p, poll_seconds=0.01) as rs:

        def traffic() -> None:
            tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 150.0, "extra": {}}
            try:
                while not stop.is_set():
                    hits = rs.evaluate(tx, {})
                    v = rs.version
                    # A hit must come from the ruleset named by `version`: v1 fires, v3 does not.
                    assert (v == "v1") == bool(hits), (v, hits)
                    if not seen or seen[-1] != v:
                        seen.append(v)
            except BaseException as e:  # surfaced below
                errors.append(e)

        t = threading.Thread(target=traffic)
        t.start()
        try:
            write(p, rules("v2", 100, broken=True))
            wait_for(lambda: rs.counts["rejected"] == 1)
            assert rs.current.version == "v1"
            write(p, rules("v3", 200))
            wait_for(lambda: rs.current.version == "v3")
            wait_for(lambda: seen[-1] == "v3")
        finally:
            stop.set()
            t.join()
    assert not errors, errors
    assert seen == ["v1", "v3"]


def test_unchanged_and_deleted_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    assert rs.check_now() == "unchanged"
    os.utime(p)  # touched, same bytes: hash says unchanged
    write(p, rules("v1", 100))
    assert rs.check_now() == "unchanged"
    p.unlink()
    assert rs.check_now() == "rejected"
    assert rs.current.version == "v1"
    # rejected once, not at every look (a deleted file was logged and counted each second)
    assert rs.check_now() == "unchanged" and rs.counts["rejected"] == 1
    write(p, rules("v2", 100))  # back, changed
    assert rs.check_now() == "ok" and rs.current.version == "v2"


def test_a_file_deleted_then_restored_as_it_was_is_said_back(tmp_path: Path, caplog) -> None:
    """A QA pass: a deleted rules file restored unchanged said nothing, and its error stood."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    p.unlink()
    assert rs.check_now() == "rejected"
    assert "restore the file" in str(rs.last_error)
    p.write_text(rules("v1", 100))
    with caplog.at_level("INFO", logger="fds"):
        assert rs.check_now() == "unchanged"
    assert rs.last_error is None and rs.current.version == "v1"
    assert 'rules file readable again, unchanged path="' in caplog.text
    assert rs.counts["rejected"] == 1
    # a rejected file deleted and put back as it was is still rejected (a review)
    write(p, rules("v2", 100, broken=True))
    assert rs.check_now() == "rejected"
    p.unlink()
    assert rs.check_now() == "rejected"
    write(p, rules("v2", 100, broken=True))
    caplog.clear()
    assert rs.check_now() == "unchanged"
    assert rs.last_error is not None and "readable again" not in caplog.text


def test_policy_follows_the_reloaded_file_and_features_cannot_change(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100) + "policy: {review_at: 0.5, decline_at: 0.9}\n")
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 150.0, "extra": {}}
    engine = Engine(rules=rs, policy=rs.policy)
    assert engine.decide(tx)["action"] == "review"  # score 0.7 >= 0.5 and a review rule
    write(
        p,
        rules("v2", 100).replace("action: review", "action: approve")
        + "policy: {review_at: 0.8, decline_at: 0.95, alert_budget_per_day: 10}\n",
    )
    assert rs.check_now() == "ok"
    d = engine.decide(tx)
    assert (d["ruleset_version"], d["action"]) == ("v2", "approve")  # 0.7 < new review_at 0.8
    assert rs.policy.review_at == 0.8 and rs.policy.budget is not None
    write(p, rules("v3", 100) + "features: [{name: c, entity: card_id, agg: count, window: 1h}]\n")
    assert rs.check_now() == "rejected"
    assert "feature declarations changed (c)" in str(rs.last_error)
    assert str(rs.last_error).startswith(f"{p}:9:")  # the declaration's own line
    assert engine.decide(tx)["ruleset_version"] == "v2"
    write(p, rules("v4", 100) + "timezone: America/New_York\n")  # calendar days start elsewhere
    assert rs.check_now() == "rejected"
    assert "timezone changed (UTC -> America/New_York)" in str(rs.last_error)
    assert str(rs.last_error).startswith(f"{p}:9:11: ")
    assert engine.decide(tx)["ruleset_version"] == "v2"
    # a rule whose test holds only in the old zone: the zone is what is told (a QA pass: it
    # said "inline test 1 failed")
    night = (
        "  - {id: night, when: hour < 6, action: review, score: 0.5, reason: n,\n"
        "     tests: [{given: {ts: 0}, expect: hit}]}\n"
    )
    write(p, rules("v5", 100) + night + "timezone: Asia/Seoul\n")
    assert rs.check_now() == "rejected"
    assert "timezone changed (UTC -> Asia/Seoul)" in str(rs.last_error)
    write(p, rules("v6", 100) + "timezone: Etc/UTC\n")  # the same zone by another name (a QA
    assert rs.check_now() == "ok"  # pass: refused, "restart the engine")


def test_a_reload_that_changes_the_grace_period_is_refused_as_a_timezone_change(tmp_path: Path):
    """The feature state folds late events in with the grace it was built with (and its log is
    trimmed to it): another one is applied by a restart, told at the line of `grace`."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v1", 100) + "grace: 300s\n")  # the default, written otherwise: no change
    assert rs.check_now() == "ok"
    write(p, rules("v2", 100) + "grace: 10m\n")
    assert rs.check_now() == "rejected"
    assert str(rs.last_error) == (
        f"{p}:9:8: grace changed (300s -> 10m): the feature state folds late events in with "
        "the old one, and its checkpoints are bound to it; restart the engine to apply it"
    )
    assert rs.current.version == "v1"


def test_the_digest_of_what_decides_is_unchanged_for_a_file_without_grace() -> None:
    """Checkpoints keep a digest per version served; a restart compares the file's with it.
    The digest of a file without `grace` (and with the default, however written) is the one
    of the release before the key existed, so an upgrade is not told "other rules"."""
    from fds.rules.reload import deciding
    from fds.rules.ruleset import load_ruleset_text

    text = (
        'version: "v1"\nfeatures: [{name: n, entity: card_id, agg: count, window: 1h}]\n'
        "rules:\n  - {id: big, when: amount > 100, action: review, score: 0.7, reason: Big}\n"
    )
    before = "95eab6582db0e07d4313307e5edd515cd85e9ac8f70b3bd1e2402852ece3de91"
    for grace in ("", "grace: 5m\n", "grace: 300s\n"):
        assert deciding(load_ruleset_text(text + grace, "r.yaml")) == before
    assert deciding(load_ruleset_text(text + "grace: 10m\n", "r.yaml")) != before


def test_the_model_reads_the_rule_results_of_the_ruleset_that_produced_them(tmp_path: Path):
    """A reload landing between the rules and the model of one event: the model's per-rule
    inputs are those of the ruleset that produced the hits, not of the new one."""

    class PerRule:  # a model stage that reads one input per rule
        reads_rules = reads_rule_ids = True

        def score(self, tx, feats):
            self.seen = sorted(k for k in feats if k.startswith("rule:"))
            return 0.1, "v1"

        def on_decision(self, tx, decision):
            pass

    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v2", 100).replace("id: big", "id: huge"))
    evaluate = rs.evaluate

    def evaluate_then_reload(tx, features=None):
        hits = evaluate(tx, features)
        assert rs.check_now() == "ok"  # the watcher thread swaps right after the rules ran
        return hits

    rs.evaluate = evaluate_then_reload  # type: ignore[method-assign]
    model = PerRule()
    tx = {"tx_id": "t", "ts": 0.0, "card_id": "c", "amount": 150.0}
    d = Engine(rules=rs, model=model).decide(tx)
    assert [h["id"] for h in d["rule_hits"]] == ["big"] and model.seen == ["rule:big"]


def test_a_file_written_to_while_it_is_read_is_read_again_later(tmp_path: Path, monkeypatch):
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v2", 100))
    read = rs._read

    def read_then_append(*a, **kw):  # an editor saving in place, still writing
        got = read(*a, **kw)
        with p.open("a") as f:
            f.write("# more to come\n")
        return got

    rs._read = read_then_append  # type: ignore[method-assign]
    assert rs.check_now() == "unchanged" and rs.current.version == "v1"
    rs._read = read  # type: ignore[method-assign]
    assert rs.check_now() == "ok" and rs.current.version == "v2"


_SKIP = "  - {id: vip, when: extra.vip == 1, action: review, score: 0.5, reason: VIP}\n"


def skipping_engine(tmp_path: Path, decided: int) -> tuple[ReloadingRuleset, Metrics, Engine]:
    """An engine whose rule `vip` skips every transaction (extra.vip missing), having decided
    ``decided`` of them with ruleset v1, and v2 just reloaded (swapped in at the next one)."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100) + _SKIP)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    m = Metrics()
    engine = Engine(rules=rs, policy=rs.policy, metrics=m)
    for i in range(decided):
        engine.decide(
            {"tx_id": f"a{i}", "ts": float(i), "card_id": "c", "amount": 1.0, "extra": {}}
        )
    write(p, rules("v2", 100) + _SKIP)
    assert rs.check_now() == "ok"
    return rs, m, engine


def test_skips_counted_before_a_reload_are_exported_after_it(tmp_path: Path) -> None:
    """report() drained the new ruleset only: the skips the replaced one had counted were lost."""
    _rs, m, engine = skipping_engine(tmp_path, 5)
    engine.decide(
        {"tx_id": "b", "ts": 9.0, "card_id": "c", "amount": 1.0, "extra": {}}
    )  # counted by v2
    engine.report()
    get = m.registry.get_sample_value
    assert get("fds_rule_missing_inputs_total", {"rule": "vip"}) == 6


def test_a_scrape_right_after_a_reload_counts_the_replaced_rulesets_skips(tmp_path: Path) -> None:
    """A QA pass: before a report() drained them, a scrape saw only the new ruleset's skips: a
    counter went down by a reload's (Prometheus counted it all again as a reset)."""
    _rs, m, engine = skipping_engine(tmp_path, 5)
    get = m.registry.get_sample_value
    assert get("fds_rule_missing_inputs_total", {"rule": "vip"}) == 5
    engine.decide(
        {"tx_id": "b", "ts": 9.0, "card_id": "c", "amount": 1.0, "extra": {}}
    )  # v2 swapped in
    assert get("fds_rule_missing_inputs_total", {"rule": "vip"}) == 6
    engine.report()
    assert get("fds_rule_missing_inputs_total", {"rule": "vip"}) == 6


def test_a_record_folded_right_after_a_reload_counts_no_skip(tmp_path: Path) -> None:
    """A fold (a restore catching up on records decided before) counts nothing; when a reload
    landed just before it, the new ruleset, swapped in by the folded record, counted its skips."""
    rs, m, engine = skipping_engine(tmp_path, 1)
    engine.fold(
        {"tx_id": "b", "ts": 2.0, "card_id": "c", "amount": 1.0, "extra": {}}
    )  # v2 swapped in here
    assert rs.applied.version == "v2"
    engine.decide({"tx_id": "c", "ts": 3.0, "card_id": "c", "amount": 1.0, "extra": {}})  # counted
    engine.report()
    get = m.registry.get_sample_value
    assert get("fds_rule_missing_inputs_total", {"rule": "vip"}) == 2


def test_changed_rules_under_the_same_version_are_rejected(tmp_path: Path) -> None:
    """Decisions record the ruleset that made them; a threshold edited under the same version
    was accepted without a word, so one ruleset_version named two rulesets (a review)."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v1", 200))
    assert rs.check_now() == "rejected"
    assert "the version did not ('v1': rule big changed)" in str(rs.last_error)
    assert str(rs.last_error).startswith(f"{p}:1:")
    assert rs.current.rules[0].spec.when == "amount > 100"  # the last good ones stay
    write(p, "# a comment only\n" + rules("v1", 100))  # the same rules: no new version needed
    assert rs.check_now() == "ok"
    more_tests = rules("v1", 100).replace("expect: hit}]", "expect: hit}, {given: {amount: 5}, "
                                           "expect: miss}]")  # fmt: skip
    write(p, more_tests)  # an inline test added: no new version needed either
    assert rs.check_now() == "ok" and len(rs.current.rules[0].spec.tests) == 2
    write(p, rules("v2", 200))
    assert rs.check_now() == "ok" and rs.current.version == "v2"
    # back to v1 with other rules than v1 had (a QA pass: only the version in force was checked)
    write(p, rules("v1", 300))
    assert rs.check_now() == "rejected" and rs.current.version == "v2"
    assert "('v1', which named other rules earlier)" in str(rs.last_error)
    write(p, rules("v1", 100))  # v1 as it was: a rollback
    assert rs.check_now() == "ok" and rs.current.version == "v1"


def test_a_file_read_while_written_in_place_is_taken_whole_under_its_version(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """A QA pass: a file written in place in two parts, a pause between, was served from its
    first part (a valid rules file: fewer rules, no policy) under the new version, and the
    whole file was then refused for good (the rules changed, the version did not). The whole
    file of the same inode, read within MID_WRITE_S, now decides; later, or another file
    (a rename), the version must change as before."""
    import fds.rules.reload as reload_mod

    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    whole = rules("v2", 100) + (
        "  - id: huge\n    when: amount > 900\n    action: decline\n    score: 0.9\n"
        "    reason: Huge\npolicy:\n  review_at: 0.6\n"
    )  # fmt: skip
    part = rules("v2", 100)  # (a valid rules file: fewer rules, no policy)
    write_in_two(p, rs, part, whole, 1)  # (the part took: one rule, no policy)
    with caplog.at_level("WARNING", logger="fds.rules"):
        assert rs.check_now() == "ok" and len(rs.current.rules) == 2
    assert "was read while being written" in caplog.text and rs.current.version == "v2"
    # an edit that adds a rule at the end (no section the file lacked), even at once: a new
    # version needed, as for any change (a review)
    text = p.read_text()
    with open(p, "w") as f:
        f.write(text.replace("policy:", "  - id: odd\n    when: amount == 7\n    action: "
                             "review\n    score: 0.5\n    reason: Odd\npolicy:"))  # fmt: skip
    os.utime(p, ns=(time.time_ns() + 2 * 10**6,) * 2)
    assert rs.check_now() == "rejected" and len(rs.current.rules) == 2
    assert "the version did not ('v2': rule odd changed)" in str(rs.last_error)
    # a rule added at the end of a file whose whole text (newline, sections) was in force, in
    # place and at once: an edit, not a writer caught mid-way (a review: taken under v3)
    with open(p, "w") as f:
        f.write(rules("v3", 100))
    os.utime(p, ns=(time.time_ns() + 3 * 10**6,) * 2)
    assert rs.check_now() == "ok"
    with open(p, "a") as f:
        f.write("  - id: odd\n    when: amount == 7\n    action: review\n    score: 0.5\n"
                "    reason: Odd\n")  # fmt: skip
    os.utime(p, ns=(time.time_ns() + 4 * 10**6,) * 2)
    assert rs.check_now() == "rejected" and len(rs.current.rules) == 1
    # and the part of a file caught mid-way, completed later than MID_WRITE_S: refused too
    monkeypatch.setattr(reload_mod, "MID_WRITE_S", 0.0)
    write_in_two(p, rs, part.replace("v2", "v4"), whole.replace("v2", "v4"), 5)
    assert rs.check_now() == "rejected" and rs.current.version == "v4"


def test_an_edit_of_the_last_line_of_a_file_without_a_final_line_break_needs_a_version(
    tmp_path: Path,
) -> None:
    """A review: a whole file saved without a final line break (an editor's default) was taken
    for a part cut inside a line, so a save within MID_WRITE_S that only lengthened its last
    line (review_at 0.5 -> 0.55, amount > 100 -> > 1000) decided under the same version. A
    part cut by a writer's buffer (a whole number of KiB) is still taken whole."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    text = rules("v2", 100) + "policy:\n  review_at: 0.5"
    write_in_two(p, rs, text, text + "5", 1)  # (the whole file, then its edit: in place)
    assert rs.check_now() == "rejected" and rs.current.policy.review_at == 0.5
    assert "the rules changed but the version did not ('v2'" in str(rs.last_error)
    # a part of 2 KiB, cut inside a line (a comment pads it to the block)
    head = rules("v3", 100) + "policy:\n  review_at: 0.5"
    pad = "# " + "x" * (2048 - len(head.encode()) - 3) + "\n"
    part = pad + head
    assert len(part.encode()) == 2048
    write_in_two(p, rs, part, part + "5", 3)
    assert rs.check_now() == "ok", rs.last_error
    assert rs.current.version == "v3" and rs.current.policy.review_at == 0.55


@pytest.mark.parametrize("cut", ["    state: shadow\n", "  alert_budget_per_day: 200\n"])
def test_a_file_cut_at_a_line_end_inside_its_last_entry_is_taken_whole(
    tmp_path: Path, cut: str
) -> None:
    """A QA pass: a file written in place stalled at a line end inside its last rule (its
    `state: shadow` to come) or inside a last `policy:` section (its budget to come): the
    part, with every section, decided under the new version (the rule active, no budget),
    and the whole file was then refused for good. What follows the part goes on with its
    last entry (indented deeper than it): the whole file now decides."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    whole = rules("v2", 100) + (
        "  - id: small\n    when: amount >= 10\n    action: decline\n    score: 1.0\n"
        "    reason: Small\n    state: shadow\n"
    )  # fmt: skip
    if "budget" in cut:  # (the policy last, cut inside it)
        whole += "policy:\n  decline_at: 0.9\n  alert_budget_per_day: 200\n"
    write_in_two(p, rs, whole[: whole.rindex(cut)], whole, 1)
    assert rs.check_now() == "ok", rs.last_error
    assert rs.current.rules[-1].spec.state == "shadow"
    if "budget" in cut:
        assert rs.current.policy.alert_budget_per_day == 200


def test_a_rules_file_that_does_not_load_at_start_decides_with_the_copy_kept(
    tmp_path: Path, caplog
) -> None:
    """A QA pass: a rules file rejected by a hot reload, still on disk, refused the next
    start (an instance rescheduled decided nothing). With a copy kept (fds run: in its
    state dir) the last good rules decide, an error line and fds_ruleset_last_reload_successful
    0 say so, and the file is loaded once it is fixed. Without a copy: refused, as before."""
    p, keep = tmp_path / "r.yaml", tmp_path / "state" / "rules.last-good.yaml"
    p.write_text(rules("v1", 100))
    m = Metrics()
    ok = lambda: m.registry.get_sample_value("fds_ruleset_last_reload_successful")  # noqa: E731
    rs = ReloadingRuleset(p, start=False, settle_seconds=0, keep=keep, metrics=m)
    assert not keep.exists()  # (kept at the watcher's first look: fds run holds its lock then)
    assert rs.check_now() == "unchanged" and keep.read_text() == rules("v1", 100) and ok() == 1
    write(p, rules("v2", 200))
    assert rs.check_now() == "ok" and keep.read_text() == rules("v2", 200)
    write(p, "version: v3\nrules: [oops]\n")
    assert rs.check_now() == "rejected" and ok() == 0
    rs.close()
    # the restart
    with pytest.raises(ConfigError, match="rules"):
        ReloadingRuleset(p, start=False, settle_seconds=0)
    m = Metrics()
    with caplog.at_level("ERROR", logger="fds.rules"):
        again = ReloadingRuleset(p, start=False, settle_seconds=0, keep=keep, metrics=m)
    assert again.current.version == "v2" and again.last_error is not None and ok() == 0
    assert f"rules file {p} cannot be used" in caplog.text and str(keep) in caplog.text
    assert m.registry.get_sample_value("fds_ruleset_reloads_total", {"result": "rejected"}) == 1
    # not for a missing file (a mistyped --rules), nor for another file than the copy's (a
    # review: both started on the old copy)
    with pytest.raises(ConfigError):
        ReloadingRuleset(tmp_path / "typo.yaml", start=False, keep=keep)
    other = tmp_path / "other.yaml"
    other.write_text("version: v9\nrules: [oops]\n")
    with pytest.raises(ConfigError):
        ReloadingRuleset(other, start=False, keep=keep)
    assert again.check_now() == "unchanged"  # said once
    write(p, rules("v3", 300))
    assert again.check_now() == "ok" and again.current.version == "v3" and ok() == 1
    assert keep.read_text() == rules("v3", 300)


def test_a_copy_that_cannot_be_kept_says_what_a_restart_decides_with(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    """A QA pass (a full disk): "cannot keep a copy ...: a restart with a rules file that does
    not load will not start", and the restart decided with the older copy kept before."""
    import errno

    import fds.models.registry as registry

    p, keep = tmp_path / "r.yaml", tmp_path / "state" / "rules.last-good.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0, keep=keep)
    assert rs.check_now() == "unchanged" and keep.read_text() == rules("v1", 100)

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry, "write_atomic", full)
    write(p, rules("v2", 200))
    with caplog.at_level("WARNING", logger="fds.rules"):
        assert rs.check_now() == "ok" and rs.current.version == "v2"
    assert "does not load decides with the older rules of the copy kept there at " in caplog.text
    keep.unlink()
    write(p, rules("v3", 300))
    with caplog.at_level("WARNING", logger="fds.rules"):
        assert rs.check_now() == "ok"
    assert "a rules file that does not load will not start" in caplog.text
    rs.close()
    # the copy written, the name of its file not, and none kept before: no start from it (a
    # review: it said "decides with them")
    fresh = tmp_path / "fresh" / "rules.last-good.yaml"
    monkeypatch.undo()
    real = registry.write_atomic

    def source_full(path: Any, *a: Any) -> None:
        if str(path).endswith(".source"):
            full()
        real(path, *a)

    monkeypatch.setattr(registry, "write_atomic", source_full)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fds.rules"):
        ReloadingRuleset(p, start=False, settle_seconds=0, keep=fresh).check_now()
    assert fresh.is_file() and "a rules file that does not load will not start" in caplog.text


def test_an_edit_of_layout_alone_needs_no_new_version(tmp_path: Path) -> None:
    """A QA pass: spaces or parentheses in a condition, or the features in another order,
    under the same version were refused as "the rules changed but the version did not"."""
    p = tmp_path / "r.yaml"
    a = "  - {name: a, entity: card_id, agg: count, window: 1h}\n"
    b = "  - {name: b, entity: card_id, agg: count, window: 2h}\n"
    p.write_text(rules("v1", 100) + "features:\n" + a + b)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    for when in ("amount >  100", "(amount > 100)", "amount > 100\n      "):
        write(p, rules("v1", 100).replace("amount > 100", when) + "features:\n" + b + a)
        assert rs.check_now() == "ok", rs.last_error
    write(p, rules("v1", 100).replace("amount > 100", "100 < amount") + "features:\n" + a + b)
    assert rs.check_now() == "rejected"  # another condition, if an equivalent one


def test_the_served_digests_are_kept_where_an_earlier_release_does_not_read_them(tmp_path, caplog):
    """An upgrade QA pass: an earlier release read this release's digests (under its key
    "rulesets") as its own kind, so after a downgrade unchanged files were "other rules"."""
    import logging

    p = tmp_path / "r.yaml"
    write(p, rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    state = Engine(rules=rs).state_dict()
    assert "rulesets" not in state and "v1" in state["served_rulesets_2"]
    # earlier releases' digests: of the condition's text, of the windows as written
    old = {**state, "rulesets": {"v1": "f" * 64}, "served_rulesets": {"v1": "e" * 64}}
    del old["served_rulesets_2"]
    again = ReloadingRuleset(p, start=False, settle_seconds=0)
    with caplog.at_level(logging.ERROR, logger="fds.rules.reload"):
        Engine(rules=again).load_state_dict(old)
    assert "names other rules" not in caplog.text


def test_features_in_another_order_are_the_same_features(tmp_path: Path) -> None:
    """A reload that only reordered the declarations was rejected with "changed ()"."""
    p = tmp_path / "r.yaml"
    a = "  - {name: a, entity: card_id, agg: count, window: 1h}\n"
    b = "  - {name: b, entity: card_id, agg: count, window: 2h}\n"
    p.write_text(rules("v1", 100) + "features:\n" + a + b)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v2", 100) + "features:\n" + b + a)
    assert rs.check_now() == "ok"
    write(p, rules("v2", 100) + "features:\n" + b.replace("2h", "120m") + a)
    assert rs.check_now() == "ok"  # one window written otherwise (was "changed": a QA pass),
    # under the same version: the same rules (they were other rules: a review)
    write(p, rules("v4", 100) + "features:\n" + b + a.replace("1h", "3h"))
    assert rs.check_now() == "rejected"
    assert "feature declarations changed (a)" in str(rs.last_error)
    assert str(rs.last_error).startswith(f"{p}:11:5: ")  # a, second in the new file


# rule big declines every transaction: the rate breaker demotes it within 300 decisions
BIG = ('version: "1"\nrules:\n  - {id: big, when: "amount > 1", action: decline, '
       "score: 0.95, reason: Big}\n  - {id: other, when: \"amount > 5000\", action: review, "
       "score: 0.6, reason: Other}\npolicy: {decline_at: 0.9, review_at: 0.5}\n")  # fmt: skip


def breaking(rules: ReloadingRuleset) -> Engine:
    """An engine whose rate breaker demotes BIG's rule big."""
    from fds.guardrails import RuleBreaker

    return Engine(rules=rules, policy=rules.policy, breaker=RuleBreaker(
        window_events=500, multiple=3.0, min_events=50,
        initial_baseline={"decline": 0.01, "review": 0.05}))  # fmt: skip


def big_tx(i: int, amount: float = 50.0) -> dict:
    return {"tx_id": f"t{i}", "ts": float(i), "card_id": f"c{i % 500}", "amount": amount}


def big_demoted(tmp_path: Path) -> tuple[Path, ReloadingRuleset, Engine]:
    """BIG's file, its reloading ruleset, and an engine whose breaker demoted its rule big."""
    p = tmp_path / "r.yaml"
    p.write_text(BIG)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    e = breaking(rs)
    for i in range(300):
        e.decide(big_tx(i))
    assert e.demoted == {"big"}
    return p, rs, e


def test_a_demoted_rule_is_back_in_force_once_its_definition_is_edited(tmp_path: Path) -> None:
    """Nothing lifted a rate-breaker demotion: an analyst's fix (a reload), a restart with the
    fixed file, a new model version all left the rule or the model in shadow for good."""
    import pickle

    p = tmp_path / "r.yaml"
    bad = BIG
    p.write_text(bad)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    engine, tx = breaking, big_tx
    e = engine(rs)
    for i in range(300):
        e.decide(tx(i))
    assert e.demoted == {"big"}
    write(p, bad.replace('"1"', '"2"').replace("amount > 5000", "amount > 6000"))  # not big
    assert rs.check_now() == "ok"
    assert e.decide(tx(300))["action"] == "approve" and e.demoted == {"big"}
    state = pickle.dumps(e.state_dict())
    fixed = bad.replace('"1"', '"3"').replace('"amount > 1"', '"amount > 100000"')
    write(p, fixed)
    assert rs.check_now() == "ok"
    d = e.decide(tx(301, 200_000.0))
    assert d["action"] == "decline" and e.demoted == set()  # the fix acts at once
    # a restart with the file fixed while the engine was down: lifted as well ...
    restarted = engine(ReloadingRuleset(p, start=False, settle_seconds=0))
    restarted.load_state_dict(pickle.loads(state))
    assert restarted.decide(tx(302, 200_000.0))["action"] == "decline"
    # ... and with the file as it was: still in shadow
    write(p, bad.replace('"1"', '"2"').replace("amount > 5000", "amount > 6000"))
    same = engine(ReloadingRuleset(p, start=False, settle_seconds=0))
    same.load_state_dict(pickle.loads(state))
    assert same.decide(tx(303))["action"] == "approve" and same.demoted == {"big"}


def test_a_demoted_rule_taken_out_of_the_rules_is_not_said_back_in_force(tmp_path, caplog):
    """A QA pass: a rule the rate breaker had demoted, then removed from the file, was logged
    "back in force after a demotion ... its definition changed"."""
    p, rs, e = big_demoted(tmp_path)
    write(p, 'version: "2"\nrules:\n' + BIG.split("\n", 3)[3])  # big taken out
    assert rs.check_now() == "ok"
    caplog.clear()
    e.decide(big_tx(300))
    assert e.demoted == set()
    assert 'demotion forgotten target="big" why="taken out of the rules"' in caplog.text
    assert "back in force" not in caplog.text


def test_a_restart_forgets_at_once_the_demotion_of_a_rule_taken_out(tmp_path, caplog):
    """A QA pass: a checkpoint holding the demotion of a rule no longer in the file kept it
    exported (fds_guardrail_demoted 1, its alert firing) until the first transaction."""
    import pickle

    p, _rs, e = big_demoted(tmp_path)
    state = pickle.dumps(e.state_dict())
    write(p, 'version: "2"\nrules:\n' + BIG.split("\n", 3)[3])  # big taken out meanwhile
    m = Metrics()
    restarted = breaking(ReloadingRuleset(p, start=False, settle_seconds=0))
    restarted.metrics = m
    caplog.clear()
    restarted.load_state_dict(pickle.loads(state))
    assert restarted.demoted == set()
    assert 'demotion forgotten target="big" why="taken out of the rules"' in caplog.text
    restarted.report()
    assert (
        m.registry.get_sample_value("fds_guardrail_demoted", {"kind": "rule", "target": "big"})
        is None
    )


def test_a_demoted_rule_stays_in_shadow_through_an_edit_of_its_tests_or_layout(tmp_path, caplog):
    """A QA pass: a test added to a demoted rule, or its condition laid out otherwise, was taken
    for a new definition and put the rule back in force, under the same version (which such an
    edit keeps: nothing that decides changed)."""
    p, rs, e = big_demoted(tmp_path)
    edited = BIG.replace('when: "amount > 1",', 'when: "(amount  >  1)", tests: [{given: '
                         "{amount: 2}, expect: hit}],")  # fmt: skip
    write(p, edited)
    assert rs.check_now() == "ok" and rs.current.version == "1"
    caplog.clear()
    assert e.decide(big_tx(300))["action"] == "approve"
    assert e.demoted == {"big"} and "back in force" not in caplog.text


def test_a_file_saved_in_place_is_read_once_it_stops_changing(tmp_path: Path) -> None:
    """A file written in place was read as soon as its stat changed: a prefix of a rules file is
    often a valid rules file (here the policy without its budget's last digits), and it was
    swapped in until the next poll."""
    p = tmp_path / "r.yaml"
    text = rules("v1", 100) + "policy: {review_at: 0.5, alert_budget_per_day: 200}\n"
    p.write_text(text)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0.05)
    full = text.replace("v1", "v2")
    with p.open("r+") as f:  # the writer's first write(), then the rest
        f.truncate(0)
        f.write(full[: full.index("200") + 1])
        f.flush()
        assert rs.check_now() == "unchanged"  # changed just now: wait for it to settle
        time.sleep(0.06)
        f.write(full[full.index("200") + 1 :])
    assert rs.check_now() == "unchanged"  # changed again: the wait starts again
    time.sleep(0.06)
    assert rs.check_now() == "ok"
    assert rs.current.version == "v2" and rs.current.policy.alert_budget_per_day == 200


def test_a_replacement_with_the_old_size_and_mtime_is_noticed(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -t`` and ``tar x`` keep the mtime: a new file of the same size was
    taken for the old one for good."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    new = tmp_path / "new.yaml"
    new.write_text(rules("v2", 100))
    st = p.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, p)
    assert rs.check_now() == "ok" and rs.current.version == "v2"


def test_a_file_that_is_not_utf8_is_rejected_once_at_its_line(tmp_path: Path) -> None:
    """It was rejected again at every poll (an error line and a count each second) and named no
    line."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    metrics = Metrics()
    rs = ReloadingRuleset(p, start=False, settle_seconds=0, metrics=metrics)
    write(p, rules("v2", 100).replace("Big", "Caf\xe9"))
    p.write_bytes(p.read_text().encode("latin-1"))
    assert [rs.check_now() for _ in range(3)] == ["rejected", "unchanged", "unchanged"]
    assert str(rs.last_error).startswith(f"{p}:7:16: byte 0xe9 is not UTF-8")
    assert b'fds_ruleset_reloads_total{result="rejected"} 1.0' in metrics.exposition()
    write(p, rules("v3", 100))
    assert rs.check_now() == "ok" and rs.current.version == "v3"


def test_metrics_can_watch_a_reloading_ruleset(tmp_path: Path) -> None:
    """README: `m.watch_ruleset(lambda: engine.rules)`; with the ReloadingRuleset fds run uses
    it exported nothing (it had no missing_counts)."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    m = Metrics()
    m.watch_ruleset(lambda: rs)
    rs.evaluate({"tx_id": "t", "ts": 0.0, "extra": {}})  # no amount: the rule's name is missing
    assert m.registry.get_sample_value("fds_rule_missing_inputs_total", {"rule": "big"}) == 1.0


def test_a_file_made_readable_again_is_read(tmp_path: Path) -> None:
    """Rejected once while it could not be read, a file then made readable by a chmod (same
    size, mtime and inode) was never read again (a review)."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v2", 100))
    read = rs._read

    def denied() -> Any:
        raise ConfigError("cannot read the rules file: Permission denied", where=str(p))

    rs._read = denied  # type: ignore[method-assign]
    assert rs.check_now() == "rejected"
    assert rs.check_now() == "unchanged"  # said once
    rs._read = read  # type: ignore[method-assign]
    os.chmod(p, 0o644)  # the fix: ctime moves, nothing else
    assert rs.check_now() == "ok" and rs.current.version == "v2"


def test_versions_served_before_a_restart_keep_their_rules(tmp_path: Path, caplog) -> None:
    """A QA pass: the check that a version comes back only with its own rules held within one
    run; the engine's checkpoint did not keep what each version decided with, so after a
    restart a version could name other rules without a word."""
    import logging
    import pickle

    p = tmp_path / "r.yaml"
    write(p, rules("v1", 100))
    first = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("v2", 200))
    assert first.check_now() == "ok"
    state = pickle.loads(pickle.dumps(Engine(rules=first).state_dict()))  # the checkpoint
    write(p, rules("v2", 300))  # edited while down, same version
    again = ReloadingRuleset(p, start=False, settle_seconds=0)
    with caplog.at_level(logging.ERROR, logger="fds.rules.reload"):
        Engine(rules=again).load_state_dict(state)
    assert 'version="v2" names other rules than the same version did before the restart' in (
        caplog.text
    )
    write(p, rules("v1", 150))  # v1, served before the restart, with other rules
    assert again.check_now() == "rejected"
    assert "which named other rules earlier" in str(again.last_error)
    write(p, rules("v1", 100))  # v1 as it was: a rollback
    assert again.check_now() == "ok"


def test_a_reload_frees_the_file_s_yaml_tree_at_once_and_loads_with_the_collector_paused(
    tmp_path: Path, monkeypatch
) -> None:
    """The collector's passes over a large file's YAML tree (alive during the load; kept after
    it by a reference cycle until a pass) held the deciding thread 0.5-0.7 s at a reload of
    8,000 rules (benchmarks/results/rules.md): the tree is freed by reference counting as the
    load ends, and the reload loads with the collector paused."""
    import gc

    import yaml

    from fds.rules import reload as reload_module
    from fds.rules.ruleset import load_yaml_with_marks

    text = "rules:\n" + "".join(f"  - {{id: r{i}, when: amount > {i}}}\n" for i in range(50))
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        load_yaml_with_marks(text, "r.yaml")
        left = [o for o in gc.get_objects() if isinstance(o, yaml.Node | yaml.Mark)]
    finally:
        if enabled:
            gc.enable()
    assert left == []
    seen = []
    real = reload_module.load_ruleset_text
    monkeypatch.setattr(
        reload_module,
        "load_ruleset_text",
        lambda *a, **k: (seen.append(gc.isenabled()), real(*a, **k))[1],
    )
    p = tmp_path / "r.yaml"
    p.write_text(rules("1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, rules("2", 100))
    assert rs.check_now() == "ok" and rs.current.version == "2"
    assert seen[-1] is False and gc.isenabled() is enabled  # (the reload; not the start)


def test_a_rejected_file_s_yaml_tree_is_not_kept_with_its_error(tmp_path: Path) -> None:
    """A review: the error kept until the next good file (``last_error``) held the frames it
    was raised through, and with them the rejected file's whole YAML tree."""
    import gc

    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(rules("1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(
        p, rules("2", 100) + "".join(f"x-note{i}: [a, b, c]\n" for i in range(200)) + "version: 3\n"
    )
    assert rs.check_now() == "rejected" and "duplicate key 'version'" in str(rs.last_error)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, yaml.Node)]


def test_a_rules_file_replaced_by_a_pipe_is_refused_at_once(tmp_path: Path) -> None:
    """A QA pass: a FIFO put in place of the watched file was read as a pipe given at the start
    is: its writer waited for 30 s, the watcher with it, and the good file put back after it
    was seen 49 s late."""
    import time

    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    p.unlink()
    os.mkfifo(p)
    t0 = time.monotonic()
    assert rs.check_now() == "rejected" and time.monotonic() - t0 < 5
    assert "the rules file is now a pipe" in str(rs.last_error)
    p.unlink()
    write(p, rules("v2", 100))
    assert rs.check_now() == "ok" and rs.current.version == "v2"


def test_a_rules_file_given_as_a_pipe_is_read_once_not_watched(tmp_path: Path) -> None:
    """A review: `--rules <(...)` loaded, then its write had moved the pipe's mtime and the
    watcher refused it as "now a pipe"."""
    import threading

    p = tmp_path / "r.fifo"
    os.mkfifo(p)
    writer = threading.Thread(target=lambda: p.write_text(rules("v1", 100)))
    writer.start()
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    writer.join()
    assert rs.current.version == "v1"
    assert rs.check_now() == "unchanged" and rs.last_error is None


def test_a_reloaded_file_s_new_rules_are_exported_before_the_next_event(tmp_path: Path) -> None:
    """A QA pass: the new rules of a reload had no series until the next event applied it,
    and then appeared at their count: increase() over them was 0 after 3 hits."""
    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    m = Metrics()
    m.watch_ruleset(lambda: rs)
    write(p, rules("v2", 200).replace("id: big", "id: bigger"))
    assert rs.check_now() == "ok"
    got = m.registry.get_sample_value("fds_rule_hits_total", {"rule": "bigger", "state": "active"})
    assert got == 0.0


def test_a_ruleset_whose_digest_fails_is_rejected_before_the_swap(tmp_path: Path, monkeypatch):
    """A QA pass: a cap of 2**64 made the digest raise after the swap: the new rules decided
    while the watcher logged an error, the reload uncounted and the metrics stale."""
    import fds.rules.reload as reload_mod

    p = tmp_path / "r.yaml"
    p.write_text(rules("v1", 100))
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    real = reload_mod.deciding

    def failing(ruleset: Any) -> str:
        if ruleset.version == "v2":
            raise TypeError("Integer exceeds 64-bit range")
        return real(ruleset)

    monkeypatch.setattr(reload_mod, "deciding", failing)
    write(p, rules("v2", 200))
    assert rs.check_now() == "rejected"
    assert rs.current.version == "v1" and "Integer exceeds 64-bit range" in str(rs.last_error)


def test_a_same_version_edit_is_told_what_changed(tmp_path: Path) -> None:
    """A QA pass: an edit of the cap alone under the same version was refused as "the rules
    changed", at the version's line, naming nothing."""
    p = tmp_path / "r.yaml"
    base = rules("v1", 100) + "features: [{name: n, entity: card_id, agg: count, window: 1h}]\n"
    p.write_text(base)
    rs = ReloadingRuleset(p, start=False, settle_seconds=0)
    write(p, base + "max_entities: {card_id: 500}\n")
    assert rs.check_now() == "rejected"
    assert "the rules changed but the version did not ('v1': max_entities changed)" in str(
        rs.last_error
    )
    write(p, base.replace("amount > 100", "amount > 99") + "policy: {review_at: 0.4}\n")
    assert rs.check_now() == "rejected"
    assert "('v1': policy, rule big changed)" in str(rs.last_error)
