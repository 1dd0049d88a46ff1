"""State that survives a crash (issue 6 item 4, RELIABILITY.md "State"), against the real broker.

``fds run`` with the default rules is killed with SIGKILL mid-stream (once in the window
between acknowledged outputs and the offset commit, then twice from outside) and restarted
each time; its decisions must carry the same features as an uninterrupted run.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import orjson
import pytest

from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES
from fds.replay import load as replay_load
from fds.streams.kafka import build_run_engine, close_engine, produce_file, with_tx
from tests.integration.test_kafka_run import (
    _kill_restart_run,
    comparable,
    count_records,
    decisions_by_tx,
    publish_model,
    read_all,
    settings_for,
    spawn_run,
    wait_until,
    write_simulated,
    write_stream,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_kill9_restart_restores_state_features_equal_uninterrupted_run(
    kafka_bootstrap, make_topics, unique_name, tmp_path, mode
):
    # One partition: the uninterrupted reference (a replay of the file) then sees the events
    # in the same order as the service does (see test_end_to_end_decisions_match_replay).
    topics = make_topics(partitions=1)
    ids = write_simulated(tmp_path / "tx.jsonl", days=3, cards=3000)
    publish_model(tmp_path / "registry")
    group = unique_name("g")
    produce_file(tmp_path / "tx.jsonl", settings_for(kafka_bootstrap, topics, group))
    stages = (
        "--rules", str(DEFAULT_RULES), "--model", str(DEFAULT_MODEL),
        "--registry", str(tmp_path / "registry"), "--state-dir", str(tmp_path / "state"),
        "--checkpoint-every", "0.5",
    )  # fmt: skip
    extra = ["--group-instance-id", "i0"]
    if mode == "exactly-once":
        extra += ["--exactly-once", "--transactional-id", group + "-0"]
    logs = _kill_restart_run(
        kafka_bootstrap, topics, group, len(ids), extra, stages=stages,
        env={"FDS_LOG_LEVEL": "INFO"},
    )  # fmt: skip
    # The restarts did restore a checkpoint and re-fold committed input without output.
    restarts = "\n".join(logs[1:])
    assert "restored checkpoint" in restarts, restarts[-3000:]
    assert "catch-up" in restarts, restarts[-3000:]

    eos = mode == "exactly-once"
    first, dups = decisions_by_tx(kafka_bootstrap, topics["decisions"], ids, committed_only=eos)
    if eos:
        assert dups == 0, "exactly-once: each transaction once among committed decisions"
    else:
        assert dups > 0, "the kill between flush and commit must have replayed a batch"

    # The uninterrupted run: the same engine over the same file, never stopped.
    ref = build_run_engine(DEFAULT_RULES, DEFAULT_MODEL, registry=tmp_path / "registry")
    try:
        for tx in replay_load(tmp_path / "tx.jsonl").transactions:
            want = with_tx(ref.decide(tx), tx)
            got = first[tx["tx_id"]]
            assert got["features"] == want["features"], tx["tx_id"]
            assert comparable(got) == comparable(want), tx["tx_id"]
    finally:
        close_engine(ref)
    print(f"{mode}: {len(ids)} transactions, 3 x kill -9, {dups} identical duplicates")


def test_a_replacement_with_an_empty_disk_restores_from_the_state_topic(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """A data-centre loss: the instance's disk is gone; its replacement (same group and
    instance id, an empty state dir) reads the newest snapshot from the state topic instead of
    rebuilding the state from the input, and decides with the features of an uninterrupted
    run."""
    topics = make_topics(partitions=1)
    ids = write_stream(tmp_path / "tx.jsonl", 6000, cards=300, step=7.0)
    first_half, second_half = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines(keepends=True)
    first_half.write_bytes(b"".join(lines[:3000]))
    second_half.write_bytes(b"".join(lines[3000:]))
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)

    def run(state_dir: str) -> str:
        stages = (
            "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir",
            str(tmp_path / state_dir), "--state-topic", topics["state_changelog"],
            "--group-instance-id", "i0", "--checkpoint-every", "0.5", "--max-idle", "3",
        )  # fmt: skip
        p = spawn_run(kafka_bootstrap, topics, group, stages=stages, env={"FDS_LOG_LEVEL": "INFO"})
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        return err

    produce_file(first_half, s)
    run("lost-disk")
    produce_file(second_half, s)
    log = run("new-disk")
    assert "restored checkpoint from state topic" in log, log[-3000:]
    assert "rebuild" not in log, log[-3000:]

    first, _ = decisions_by_tx(kafka_bootstrap, topics["decisions"], ids)
    ref = build_run_engine(DEFAULT_RULES, None)
    try:
        for tx in replay_load(tmp_path / "tx.jsonl").transactions:
            want = with_tx(ref.decide(tx), tx)
            assert first[tx["tx_id"]]["features"] == want["features"], tx["tx_id"]
    finally:
        close_engine(ref)


def test_two_instances_one_killed_survivor_takes_over_nothing_lost(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    """RELIABILITY.md test 8: two `fds run` in one group (6 partitions), one killed with
    SIGKILL: the survivor takes its partitions after the session timeout, rebuilds the state
    from the input, and every tx_id is decided with the card features of an uninterrupted
    run."""
    # 20,000 transactions within 200 s of event time, less than the grace period: however far
    # apart in event time the two instances get, nothing can be late, so every card feature
    # must equal the uninterrupted run's -- unless a moved partition's history is missing.
    ids = write_stream(tmp_path / "tx.jsonl", 20_000, step=0.01)
    group = unique_name("g")
    produce_file(tmp_path / "tx.jsonl", settings_for(kafka_bootstrap, topics, group))
    env = {"FDS_SESSION_TIMEOUT_MS": "6000"}  # the broker's minimum: a quick takeover

    def stages(name: str) -> tuple[str, ...]:
        return (
            "--rules", str(DEFAULT_RULES), "--model", "none",
            "--state-dir", str(tmp_path / name), "--max-poll-records", "100",
        )  # fmt: skip

    # The victim starts alone (it commits on every partition), then the survivor joins and
    # takes its share, rebuilding the state of the partitions it gets from the input.
    victim = spawn_run(kafka_bootstrap, topics, group, stages=stages("a"), env=env)
    wait_until(
        lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 0.1 * len(ids),
        90, "the victim deciding",
    )  # fmt: skip
    survivor = spawn_run(kafka_bootstrap, topics, group, stages=stages("b"), env=env)
    wait_until(
        lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 0.4 * len(ids),
        90, "both deciding",
    )  # fmt: skip
    victim.kill()
    victim.wait(10)
    t_kill = time.monotonic()

    def decided() -> set[str]:
        if count_records(kafka_bootstrap, topics["decisions"]) < len(ids):
            return set()
        return {
            orjson.loads(r.value)["tx_id"] for r in read_all(kafka_bootstrap, topics["decisions"])
        }

    wait_until(lambda: decided() >= set(ids), 120, "every tx_id decided by the survivor")
    takeover_s = time.monotonic() - t_kill
    survivor.send_signal(signal.SIGTERM)
    _, err = survivor.communicate(timeout=30)
    assert survivor.returncode == 0, err[-2000:]

    # The uninterrupted reference: the file replayed in event-time order. Card state lives
    # in the card's partition; each instance decides its partitions merged in event time and
    # the survivor rebuilt the victim's partitions from the input before deciding them, so
    # every decision -- the victim's, the survivor's, duplicates -- has the reference's card
    # features (without the rebuild the moved partitions' history would be missing).
    ref = build_run_engine(DEFAULT_RULES, None)
    try:
        want = {
            tx["tx_id"]: _card(ref.decide(tx)["features"])
            for tx in replay_load(tmp_path / "tx.jsonl").transactions
        }
    finally:
        close_engine(ref)
    seen: set[str] = set()
    dups = 0
    for r in read_all(kafka_bootstrap, topics["decisions"]):
        d = orjson.loads(r.value)
        dups += d["tx_id"] in seen
        seen.add(d["tx_id"])
        assert _card(d["features"]) == want[d["tx_id"]], d["tx_id"]
    assert seen == set(ids)
    assert "rebuild partitions=[0, 1, 2, 3, 4, 5]" in err, err[-3000:]
    print(f"survivor decided everything {takeover_s:.1f} s after the kill; {dups} duplicates")


def _card(features: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in features.items() if k.startswith("card_")}
