"""State that survives a crash (issue 6 item 4, RELIABILITY.md "State"), against the real broker.

``fds run`` with the default rules is killed with SIGKILL mid-stream (once in the window
between acknowledged outputs and the offset commit, then twice from outside) and restarted
each time; its decisions must carry the same features as an uninterrupted run.
"""

from __future__ import annotations

import calendar
import re
import signal
import threading
import time
from datetime import datetime
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from fds.pipeline import DEFAULT_MODEL, DEFAULT_RULES
from fds.replay import load as replay_load
from fds.streams.checkpoint import Checkpointer
from fds.streams.kafka import (
    LEFT_KEY,
    KafkaSettings,
    build_run_engine,
    close_engine,
    produce_file,
    with_tx,
)
from fds.streams.state_topic import StateTopic, manifest_offsets
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
    )  # fmt: skip
    # The restarts did restore a checkpoint and re-fold committed input without output.
    restarts = "\n".join(logs[1:])
    assert "restored checkpoint" in restarts, restarts[-3000:]
    assert "catch-up" in restarts, restarts[-3000:]

    eos = mode == "exactly-once"
    first, dups = decisions_by_tx(kafka_bootstrap, topics["decisions"], ids, committed_only=eos)
    # exactly-once: each transaction once among committed decisions; at-least-once: the
    # batches acknowledged and not committed at the kill are folded, not decided again
    assert dups == 0, f"{dups} decisions made twice"
    if not eos:
        assert "not decided again" in logs[1], logs[1][-3000:]

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
    print(f"{mode}: {len(ids)} transactions, 3 x kill -9, no duplicate")


@pytest.mark.parametrize("ending", ["stop", "kill -9 when idle"])
def test_a_replacement_with_an_empty_disk_restores_from_the_state_topic(
    kafka_bootstrap, make_topics, unique_name, tmp_path, ending
):
    """A data-centre loss: the instance's disk is gone; its replacement (same group and
    instance id, an empty state dir) reads the newest snapshot from the state topic instead of
    rebuilding the state from the input, and decides with the features of an uninterrupted
    run. An instance killed after it went quiet had published no snapshot of its idle
    checkpoint: its replacement rebuilt everything (a QA pass)."""
    topics = make_topics(partitions=1)
    ids = write_stream(tmp_path / "tx.jsonl", 6000, cards=300, step=7.0)
    first_half, second_half = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines(keepends=True)
    first_half.write_bytes(b"".join(lines[:3000]))
    second_half.write_bytes(b"".join(lines[3000:]))
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)

    def run(state_dir: str, kill_when_idle: bool = False) -> str:
        stages = (
            "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir",
            str(tmp_path / state_dir), "--state-topic", topics["state_changelog"],
            "--group-instance-id", "i0", "--checkpoint-every", "0.5",
            *(() if kill_when_idle else ("--max-idle", "3")),
        )  # fmt: skip
        p = spawn_run(kafka_bootstrap, topics, group, stages=stages)
        if kill_when_idle:  # every decision out, then quiet: no stop sends a snapshot
            wait_until(lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 3000, 90,
                       "the first half's decisions")  # fmt: skip
            # (not "the state topic unchanged for 3 s": the checkpoint is written at nice 19,
            # which a loaded machine starves for longer; the kill came before the snapshot)
            wait_until(lambda: _published(kafka_bootstrap, topics, f"{group}/i0") == {0: 3000},
                       90, "the idle checkpoint's snapshot on the state topic")  # fmt: skip
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=120)
        assert kill_when_idle or p.returncode == 0, err[-2000:]
        return err

    produce_file(first_half, s)
    run("lost-disk", kill_when_idle=ending != "stop")
    produce_file(second_half, s)
    log = run("new-disk")
    assert "restored checkpoint from state topic" in log, log[-3000:]
    assert "rebuild" not in log and "catch-up" not in log, log[-3000:]  # (all 3,000 in it)

    first, _ = decisions_by_tx(kafka_bootstrap, topics["decisions"], ids)
    _assert_replay_features(first, tmp_path / "tx.jsonl")


def _assert_replay_features(first: dict[str, dict[str, Any]], path: Any) -> None:
    """Each decision in ``first`` (tx_id -> its first decision) has the features of an
    uninterrupted replay of the file ``path`` with the default rules."""
    ref = build_run_engine(DEFAULT_RULES, None)
    try:
        for tx in replay_load(path).transactions:
            want = with_tx(ref.decide(tx), tx)
            assert first[tx["tx_id"]]["features"] == want["features"], tx["tx_id"]
    finally:
        close_engine(ref)


@pytest.mark.parametrize("source", ["input", "snapshot"])
def test_two_instances_one_killed_survivor_takes_over_nothing_lost(
    kafka_bootstrap, topics, unique_name, tmp_path, source
):
    """RELIABILITY.md test 8: two `fds run` in one group (6 partitions), one killed with
    SIGKILL: the survivor takes its partitions within the session timeout, rebuilds the state
    of those partitions alone and merges it into its own, and every tx_id is decided with the
    card features of an uninterrupted run; once merged, with all of them. ``input``: rebuilt
    from the feature horizon of the input; ``snapshot`` (both with a state topic): taken from
    the victim's newest snapshot there, folded from its offsets only (and the survivor, a new
    instance with an empty state, took its first share over from the victim's snapshot too)."""
    # 21,000 transactions within 210 s of event time, less than the grace period: however far
    # apart in event time the two instances get, nothing can be late, so every card feature
    # must equal the uninterrupted run's -- unless a moved partition's history is missing.
    ids = _spanning(tmp_path, 21_000, 3)
    third = len(ids) // 3
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)
    produce_file(tmp_path / "0.jsonl", s)
    session_s = 6.0  # the broker's minimum: a quick takeover
    env = {"FDS_SESSION_TIMEOUT_MS": str(int(session_s * 1000))}

    def stages(name: str) -> tuple[str, ...]:
        return (
            "--rules", str(DEFAULT_RULES), "--model", "none",
            "--state-dir", str(tmp_path / name), "--max-poll-records", "100",
            *(() if source == "input" else (
                "--state-topic", topics["state_changelog"], "--group-instance-id", name,
                "--checkpoint-every", "0.5",
            )),
        )  # fmt: skip

    # The victim starts alone (it commits on every partition), then the survivor joins and
    # takes its share, rebuilding the state of the partitions it gets from the input (its
    # first checkpoint follows them). The second third of the stream comes and is decided;
    # the victim stops (SIGSTOP: on a quiet machine it decided everything before a kill, and
    # the survivor then had nothing left to take over), the last third comes, and the victim
    # is killed with its share of it to decide.
    victim = spawn_run(kafka_bootstrap, topics, group, stages=stages("a"), env=env)
    wait_until(
        lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 0.1 * len(ids),
        90, "the victim deciding",
    )  # fmt: skip
    if source == "snapshot":  # the survivor joins once the victim has published: its share
        wait_until(lambda: _published(kafka_bootstrap, topics, f"{group}/a"), 60,
                   "the victim's first snapshot")  # fmt: skip
    survivor = spawn_run(kafka_bootstrap, topics, group, stages=stages("b"), env=env)
    wait_until(
        lambda: (tmp_path / "b" / "engine.ckpt").exists()
        and count_records(kafka_bootstrap, topics["decisions"]) >= third,
        90, "both deciding the first third",
    )  # fmt: skip
    produce_file(tmp_path / "1.jsonl", s)
    snapshot: dict[int, int] = {}
    if source == "snapshot":  # the victim's snapshot of its share, past the feature horizon
        wait_until(
            lambda: snapshot.update(_published(kafka_bootstrap, topics, f"{group}/a")) or (
                snapshot and min(snapshot.values()) > 0
            ), 60, "the victim's snapshot of its share",
        )  # fmt: skip
    t_kill = time.time()  # wall clock: compared with the survivor's log timestamps
    victim.send_signal(signal.SIGSTOP)  # (the group notices it as a kill: no heartbeat)
    produce_file(tmp_path / "2.jsonl", s)
    victim.kill()
    victim.wait(10)

    def decided() -> set[str]:
        if count_records(kafka_bootstrap, topics["decisions"]) < len(ids):
            return set()
        return {
            orjson.loads(r.value)["tx_id"] for r in read_all(kafka_bootstrap, topics["decisions"])
        }

    wait_until(lambda: decided() >= set(ids), 120, "every tx_id decided by the survivor")
    decided_s = time.time() - t_kill
    survivor.send_signal(signal.SIGTERM)
    _, err = survivor.communicate(timeout=30)
    assert survivor.returncode == 0, err[-2000:]

    # The takeover: the survivor's first assignment after the kill holds all six partitions,
    # and comes within the session timeout (when the broker notices the dead member) plus a
    # margin: the survivor hears of the rebalance at its next heartbeat (a third of the session
    # timeout), commits what it holds and rejoins at its next poll; 8 s covers that on a
    # loaded 2-core machine, and is well short of another session timeout.
    takeovers = [
        (_log_time(line) - t_kill, line)
        for line in err.splitlines()
        if "partitions assigned:" in line and _log_time(line) > t_kill
    ]
    assert takeovers, "no assignment after the kill:\n" + err[-3000:]
    takeover_s, line = takeovers[0]
    assert all(f"{topics['transactions']}[{i}]" in line for i in range(6)), line
    assert takeover_s <= session_s + 8.0, (takeover_s, line)

    # The uninterrupted reference: the file replayed in event-time order. Card state lives
    # in the card's partition; each instance decides its partitions merged in event time and
    # the survivor rebuilt the victim's partitions from the input before deciding them, so
    # every decision -- the victim's, the survivor's, duplicates -- has the reference's card
    # features (without the rebuild the moved partitions' history would be missing).
    full = _replayed(tmp_path / "tx.jsonl")
    # The moved partitions alone were rebuilt after the kill (the survivor's own went on from
    # its state), then merged: from then on every feature -- merchants' and devices' too,
    # which span partitions -- is the uninterrupted run's (sums to rounding: recomputed).
    merged_at, line = _moved_rebuild(err, t_kill)
    rebuilt = set(map(int, re.search(r"partitions=\[([\d, ]+)\]", line)[1].split(", ")))
    held = re.findall(r"partitions assigned: \[([^]]*)\]", err)[-2]  # before the kill's
    assert rebuilt and not rebuilt & set(map(int, re.findall(r"\[(\d)\]'", held))), (line, held)
    ranges = {int(p): int(a) for p, a, _ in re.findall(r"(\d+): \((\d+), (\d+)\)", line)}
    if source == "snapshot":  # folded from the snapshot's offsets, not from the horizon
        joined = [ln for ln in err.splitlines() if "taken over from the snapshot" in ln]
        assert _log_time(joined[0]) < t_kill, err[-4000:]  # (a new instance: a scale-out)
        (took,) = [  # (the newest snapshot: the victim may have published another)
            re.search(r'/a\\?" offsets=\\?"\{([^}]*)\}', ln)
            for ln in err.splitlines()
            if "taken over from the snapshot" in ln and _log_time(ln) > t_kill
        ]
        assert took, err[-4000:]
        assert ranges == {int(p): int(o) for p, o in re.findall(r"(\d+): (\d+)", took[1])}, took[1]
        assert all(ranges[p] >= snapshot[p] > 0 for p in rebuilt), (ranges, snapshot)
    else:
        assert set(ranges.values()) == {0}, line
    assert not [
        ln for ln in err.splitlines() if "rebuild partitions=" in ln and _log_time(ln) > t_kill
    ], err[-3000:]  # (no rebuild of every partition)
    dups = _check_features(kafka_bootstrap, topics, ids, full, merged_at)
    print(
        f"survivor took over {takeover_s:.1f} s and decided everything {decided_s:.1f} s "
        f"after the kill; {dups} duplicates"
    )


def test_a_third_instance_takes_partitions_of_two_instances_over_from_their_snapshots(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    """A scale-out beyond two: instances a and c decide 6 partitions (the range assignor gives
    a [0, 1, 2] and c [3, 4, 5]); b joins with an empty state and gets [2, 3], one from each.
    It takes each over from its instance's newest snapshot (two snapshots, at different event
    times: each cut folded on its own, then merged), not from the input's feature horizon;
    every decision has the card features of an uninterrupted replay, and b's state in the end
    those of a plan fed partitions 2 and 3 (merchants and devices span every partition)."""
    ids = _spanning(tmp_path, 20_000, 2)
    half = len(ids) // 2
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)
    rules = tmp_path / "rules.yaml"  # the default rules, their budget the group's
    budget = "  alert_budget_per_day: 200"
    rules.write_text(
        DEFAULT_RULES.read_text().replace(budget, budget + "\n  alert_budget_scope: group")
    )

    logs: dict[str, list[str]] = {}
    readers = []

    def start(name: str) -> Any:  # (its log read as it comes)
        p = spawn_run(
            kafka_bootstrap, topics, group, "--group-instance-id", name, stages=(
                "--rules", str(rules), "--model", "none", "--state-dir",
                str(tmp_path / name), "--max-poll-records", "100",
                # (often: a's or c's checkpoint after the rebalance, which follows partition 2
                # or 3 no more, is then often published before b reads the manifests; b takes
                # them over from it all the same, as left there: its manifest says so)
                "--checkpoint-every", "0.5", "--state-topic", topics["state_changelog"],
            ),
        )  # fmt: skip
        logs[name] = lines = []
        readers.append(threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, ""))))
        readers[-1].start()
        return p

    def assigned(name: str, parts: list[str]) -> bool:  # its newest assignment
        got = [ln for ln in logs[name] if "partitions assigned: [" in ln]
        return bool(got) and re.findall(r"\[(\d+)\]'", got[-1]) == parts

    # Both hold their share before any input: a's snapshots never hold partition 3 (had a
    # decided the first half alone, both instances' snapshots held it at one offset).
    a, c = start("a"), start("c")
    wait_until(
        lambda: assigned("a", ["0", "1", "2"]) and assigned("c", ["3", "4", "5"]), 60,
        "a and c sharing the partitions",
    )  # fmt: skip
    produce_file(tmp_path / "0.jsonl", s)

    def covered(ident: str, parts: tuple[int, ...]) -> bool:  # its snapshot holds them
        offsets = _published(kafka_bootstrap, topics, f"{group}/{ident}")
        return all(offsets.get(p, 0) > 0 for p in parts)

    wait_until(
        lambda: count_records(kafka_bootstrap, topics["decisions"]) >= half
        and covered("a", (2,)) and covered("c", (3,)),
        120, "a and c deciding the first half, each snapshot holding its share",
    )  # fmt: skip
    t_join = time.time()
    b = start("b")
    wait_until(lambda: assigned("b", ["2", "3"]), 60, "b assigned")
    produce_file(tmp_path / "1.jsonl", s)

    def decided() -> set[str]:
        if count_records(kafka_bootstrap, topics["decisions"]) < len(ids):
            return set()
        return {
            orjson.loads(r.value)["tx_id"] for r in read_all(kafka_bootstrap, topics["decisions"])
        }

    wait_until(lambda: decided() >= set(ids), 120, "every tx_id decided")
    for p in (a, b, c):
        p.send_signal(signal.SIGTERM)
    for p in (a, b, c):
        p.wait(30)
    for r in readers:
        r.join(10)
    for name, p in (("a", a), ("b", b), ("c", c)):
        assert p.returncode == 0, "".join(logs[name])[-3000:]
    err = "".join(logs["b"])
    (first, *_) = [ln for ln in logs["b"] if "partitions assigned: ['" in ln]
    assert re.findall(r"\[(\d+)\]'", first) == ["2", "3"], first
    for part, ident in ((2, "a"), (3, "c")):
        assert re.search(
            rf'partitions \[{part}\] taken over from the snapshot of instance=\\?"{group}/{ident}'
            rf'.*manifest_from=\\?"{re.escape(topics["state_index"])}',  # (not every chunk read)
            err,
        ), err[-4000:]
    # (how often a snapshot written after the rebalance was taken: "left_there")
    print(*(ln for ln in logs["b"] if "taken over from the snapshot" in ln), sep="")
    _, line = _moved_rebuild(err, t_join)
    assert "partitions=[2, 3]" in line, line
    assert "rebuild partitions=" not in err, err[-4000:]  # (no rebuild of every partition)
    # b's state was empty: its alert budget and breaker are a's (one partition each: the first)
    assert re.search(rf'gate are taken from the snapshot of instance=\\?"{group}/a\\?"', err), err
    # ... a's budget, scaled to b's share of the group's: 2 of 6 partitions, 200 / 3
    assert re.search(r'holds 2 of 6 partitions.*budget_per_day=\\?"67\\?"', err), err
    # Card features are the whole replay's in every decision (a card lives in one partition).
    # Merchants and devices span partitions: what b decides live depends on the order its two
    # partitions' records arrive in (the aligner does not hold a caught-up partition back for
    # an idle one), so b's state is checked instead: once every record is decided it holds the
    # events of partitions 2 and 3 of both halves, as a plan fed only those does; a probe
    # payment on every merchant and device after the last event reads the same features from
    # both (a cut missing or counting twice the events of the first half shows there).
    full = _replayed(tmp_path / "tx.jsonl")
    seen = set()
    for r in read_all(kafka_bootstrap, topics["decisions"]):
        d = orjson.loads(r.value)
        seen.add(d["tx_id"])
        assert _card(d["features"]) == _card(full[d["tx_id"]]), d["tx_id"]
    assert seen == set(ids)
    part = {
        orjson.loads(r.value)["tx_id"]: r.partition
        for r in read_all(kafka_bootstrap, topics["transactions"])
    }
    txs = replay_load(tmp_path / "tx.jsonl").transactions
    engines = [
        build_run_engine(DEFAULT_RULES, None, settings=KafkaSettings(state_topic="s")),
        build_run_engine(DEFAULT_RULES, None),
    ]
    try:
        got, want = (e.features for e in engines)
        checkpoint = Checkpointer(tmp_path / "b").load()
        assert checkpoint is not None
        got.load_state_dict(checkpoint.state["features"])
        for tx in txs:
            if part[tx["tx_id"]] in (2, 3):
                want.compute(tx)
        end = txs[-1]["ts"] + 1.0
        probes = [("merchant_id", f"m{k}") for k in range(37)]
        probes += [("device_id", f"d{k}") for k in range(53)]
        for i, (field, value) in enumerate(probes):
            probe = {"tx_id": f"p{i}", "ts": end, "card_id": "p", "amount": 1.0, field: value}
            a, b = got.compute(probe), want.compute(probe)
            assert a.keys() == b.keys() and all(
                a[k] == b[k] or a[k] == pytest.approx(b[k], rel=1e-9) for k in a
            ), (value, {k: (a[k], b[k]) for k in a if a[k] != b[k]})
    finally:
        for e in engines:
            close_engine(e)


def test_a_partition_taken_back_is_rebuilt_from_where_it_was_left(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    """Partitions move back and forth (a rolling restart): the survivor takes the victim's
    partitions, gives some back when the victim returns with its state dir, and takes them
    again at its second kill. The second time they are rebuilt from the offsets the survivor
    covered when it gave them back (its windows still hold their events before: read again,
    they counted twice), not from the feature horizon, and not by a rebuild of every
    partition; every decision has the card features of an uninterrupted replay, and every
    decision after that merge all of its features."""
    ids = _spanning(tmp_path, 24_000, 3)
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)
    env = {"FDS_SESSION_TIMEOUT_MS": "6000"}  # (the broker's minimum: quick takeovers)

    def start(name: str) -> Any:
        return spawn_run(
            kafka_bootstrap, topics, group, "--group-instance-id", name, env=env, stages=(
                "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir",
                str(tmp_path / name), "--max-poll-records", "100", "--checkpoint-every", "0.5",
            ),
        )  # fmt: skip

    def decided(n: int) -> None:
        wait_until(lambda: count_records(kafka_bootstrap, topics["decisions"]) >= n, 120,
                   f"{n} decisions")  # fmt: skip

    def left() -> dict[int, Any]:  # the partitions the survivor gave back, from its checkpoint
        got = Checkpointer(tmp_path / "b").load()
        return (got.state.get(LEFT_KEY) or {}) if got is not None else {}

    produce_file(tmp_path / "0.jsonl", s)
    victim = start("a")
    decided(800)
    survivor = start("b")
    wait_until(lambda: (tmp_path / "b" / "engine.ckpt").exists(), 90, "the survivor's state")
    decided(8000)
    produce_file(tmp_path / "1.jsonl", s)
    victim.kill()  # first kill: the survivor takes everything
    victim.wait(10)
    decided(16_000)
    victim = start("a")  # back with its state dir: it takes its share again
    wait_until(lambda: left(), 90, "the survivor to give partitions back")
    given_back = left()
    t_kill = time.time()
    victim.send_signal(signal.SIGSTOP)  # (stopped first: its share of the last third is left
    produce_file(tmp_path / "2.jsonl", s)  # to the survivor, however fast the machine)
    victim.kill()  # second kill: the survivor takes them back
    victim.wait(10)
    decided(24_000)
    survivor.send_signal(signal.SIGTERM)
    _, err = survivor.communicate(timeout=30)
    assert survivor.returncode == 0, err[-2000:]

    merged_at, line = _moved_rebuild(err, t_kill)
    ranges = {int(p): (int(a), int(b)) for p, a, b in re.findall(r"(\d+): \((\d+), (\d+)\)", line)}
    assert set(ranges) == set(given_back), (line, given_back)
    for p, (start_at, _) in ranges.items():
        assert start_at == given_back[p][1] > 0, (line, given_back)  # from where it was left
    assert not [
        ln for ln in err.splitlines() if "rebuild partitions=" in ln and _log_time(ln) > t_kill
    ], err[-4000:]

    full = _replayed(tmp_path / "tx.jsonl")
    _check_features(kafka_bootstrap, topics, ids, full, merged_at)


def _spanning(tmp_path: Any, n: int, chunks: int) -> list[str]:
    """``n`` transactions 0.01 s apart (n / 100 s of event time, within the grace period:
    however far apart instances get, nothing is late) into tx.jsonl, merchants and devices
    spanning partitions (counted by every instance holding one), and cut in ``chunks`` equal
    files 0.jsonl, 1.jsonl, ...; returns their tx_ids."""
    ids = write_stream(tmp_path / "tx.jsonl", n, step=0.01)
    lines = [
        orjson.dumps({**orjson.loads(line), "merchant_id": f"m{i % 37}", "device_id": f"d{i % 53}"})
        for i, line in enumerate((tmp_path / "tx.jsonl").read_bytes().splitlines())
    ]  # fmt: skip
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    size = n // chunks
    for k in range(chunks):
        part = lines[k * size : (k + 1) * size if k < chunks - 1 else n]
        (tmp_path / f"{k}.jsonl").write_bytes(b"\n".join(part) + b"\n")
    return ids


def _published(bootstrap: str, topics: dict[str, str], ident: str) -> dict[int, int]:
    """The input offsets the newest snapshot ``ident`` published to the state topic covers."""
    make = lambda: KafkaConsumer(bootstrap_servers=bootstrap)  # noqa: E731
    got = StateTopic.scan(topics["state_changelog"], make, ident, timeout_s=30) or {}
    return manifest_offsets(got.get(ident) or {})


def _replayed(path: Any) -> dict[str, Any]:
    """tx_id -> the features an uninterrupted replay of ``path`` gives it (the default rules)."""
    ref = build_run_engine(DEFAULT_RULES, None)
    try:
        return {tx["tx_id"]: ref.decide(tx)["features"] for tx in replay_load(path).transactions}
    finally:
        close_engine(ref)


def _moved_rebuild(err: str, since: float) -> tuple[float, str]:
    """The time and line of the one rebuild of moved partitions an instance logged since then
    (a catch-up when every one was taken over from snapshots)."""
    said = ("rebuild of the partitions moved here partitions=",
            "catch-up of the partitions taken over partitions=")  # fmt: skip
    found = [
        (_log_time(line), line) for line in err.splitlines()
        if any(s in line for s in said) and _log_time(line) > since
    ]  # fmt: skip
    assert len(found) == 1, err[-4000:]
    return found[0]


def _check_features(
    bootstrap: str, topics: dict[str, str], ids: list[str], full: dict[str, Any], merged_at: float
) -> int:
    """Every decision out has the card features of an uninterrupted replay (``full``), and
    every one decided after ``merged_at`` all of them (sums to rounding: recomputed when
    merged); every tx_id decided. Returns the duplicates."""
    seen: set[str] = set()
    dups = after = 0
    for r in read_all(bootstrap, topics["decisions"]):
        d = orjson.loads(r.value)
        dups += d["tx_id"] in seen
        seen.add(d["tx_id"])
        assert _card(d["features"]) == _card(full[d["tx_id"]]), d["tx_id"]
        if _decided_time(d) > merged_at:
            after += 1
            for name, v in full[d["tx_id"]].items():
                got = d["features"][name]
                assert got == v or got == pytest.approx(v, rel=1e-9), (d["tx_id"], name)
    assert seen == set(ids) and after > 0
    return dups


def _log_time(line: str) -> float:
    """The wall-clock time of a key="value" log line (its ``ts="...Z"``, UTC to the ms)."""
    m = re.match(r'ts="([^".]+)\.(\d{3})Z"', line)
    assert m, line
    return calendar.timegm(time.strptime(m[1], "%Y-%m-%dT%H:%M:%S")) + int(m[2]) / 1000


def _decided_time(decision: dict[str, Any]) -> float:
    """A decision's ``decided_at`` (UTC, ISO 8601) as epoch seconds."""
    return datetime.fromisoformat(decision["decided_at"].replace("Z", "+00:00")).timestamp()


def _card(features: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in features.items() if k.startswith("card_")}


def test_a_rebalance_during_a_rebuild_does_not_stop_the_other_instances(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    """A member rebuilding state answers a rebalance within a second (Runner._keep_alive)
    instead of holding the whole group until its rebuild ends: while B rebuilds (slowed down
    to ~20 s), C joins, and A and C decide new input before B's rebuild is over. B's rebuild
    then starts again for its new assignment; nothing is lost and every card feature equals
    an uninterrupted run's."""
    ids = write_stream(tmp_path / "tx.jsonl", 20_000, step=0.01)
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)
    produce_file(tmp_path / "tx.jsonl", s)

    def stages(name: str) -> tuple[str, ...]:
        return (
            "--rules", str(DEFAULT_RULES), "--model", "none",
            "--state-dir", str(tmp_path / name), "--max-poll-records", "100",
        )  # fmt: skip

    a = spawn_run(kafka_bootstrap, topics, group, stages=stages("a"))
    wait_until(
        lambda: count_records(kafka_bootstrap, topics["decisions"]) >= len(ids), 90,
        "A deciding the whole backlog",
    )  # fmt: skip
    # B joins, gets half the partitions and rebuilds their state from the input, slowly.
    b = spawn_run(
        kafka_bootstrap, topics, group, stages=stages("b"),
        env={"FDS_FAULT_FOLD_DELAY_S": "0.002"},
    )  # fmt: skip
    b_log: list[str] = []
    reader = threading.Thread(target=lambda: b_log.extend(iter(b.stderr.readline, "")))
    reader.start()
    wait_until(lambda: any("partitions assigned" in line for line in b_log), 60, "B assigned")
    t_join = time.monotonic()
    c = spawn_run(kafka_bootstrap, topics, group, stages=stages("c"))
    new = write_stream(tmp_path / "more.jsonl", 600, start=len(ids), step=0.01)
    produce_file(tmp_path / "more.jsonl", s)

    def new_decided() -> int:
        recs = read_all(kafka_bootstrap, topics["decisions"])
        return len({orjson.loads(r.value)["tx_id"] for r in recs} & set(new))

    wait_until(lambda: new_decided() >= len(new) // 3, 60, "A and C deciding new input")
    waited = time.monotonic() - t_join
    rebuilt = [line for line in b_log if "rebuild partitions=" in line]
    assert not rebuilt, f"B finished rebuilding before the others decided anything: {rebuilt}"
    wait_until(lambda: new_decided() == len(new), 120, "B deciding its share after its rebuild")
    for p in (a, b, c):
        p.send_signal(signal.SIGTERM)
    for p in (a, c):
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err[-8000:]
    b.wait(30)
    reader.join(10)
    assert b.returncode == 0, "".join(b_log)[-2000:]
    assert any("rebuild interrupted by a rebalance" in line for line in b_log), "".join(b_log)

    ref = build_run_engine(DEFAULT_RULES, None)
    try:
        want = {
            tx["tx_id"]: _card(ref.decide(tx)["features"])
            for path in ("tx.jsonl", "more.jsonl")
            for tx in replay_load(tmp_path / path).transactions
        }
    finally:
        close_engine(ref)
    seen = set()
    for r in read_all(kafka_bootstrap, topics["decisions"]):
        d = orjson.loads(r.value)
        seen.add(d["tx_id"])
        assert _card(d["features"]) == want[d["tx_id"]], d["tx_id"]
    assert seen == set(ids) | set(new)
    print(f"new input decided {waited:.1f} s after C joined, while B was still rebuilding")


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_partitions_decided_to_different_event_times_resume_with_no_late_decision(
    kafka_bootstrap, make_topics, unique_name, tmp_path, mode
):
    """A handover during a backlog: the group decided partition 0 to day 2.2 of the stream but
    partition 1 only to day 0.8 (two instances far apart in event time). A new instance
    rebuilds the state from the input and decides the rest of both: it folds partition 0 only
    up to where partition 1 stands and the rest of it as it decides partition 1, so no
    decision is late and every one has the features of an uninterrupted run (before, the fold
    ended at day 2.2 and partition 1's records were decided late, outside every window)."""
    topics = make_topics(partitions=2)
    write_simulated(tmp_path / "tx.jsonl", days=3, cards=1500)
    group = unique_name("g")
    produce_file(tmp_path / "tx.jsonl", settings_for(kafka_bootstrap, topics, group))
    txs = replay_load(tmp_path / "tx.jsonl").transactions
    t0, span = txs[0]["ts"], txs[-1]["ts"] - txs[0]["ts"]
    cut = {0: t0 + 0.73 * span, 1: t0 + 0.27 * span}
    todo, commit = set(), {}
    for r in read_all(kafka_bootstrap, topics["transactions"]):
        tx = orjson.loads(r.value)
        tp = TopicPartition(r.topic, r.partition)
        if tx["ts"] >= cut[r.partition]:
            todo.add(tx["tx_id"])
            commit[tp] = min(commit.get(tp, r.offset), r.offset)
    group_consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        group_consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in commit.items()})
    finally:
        group_consumer.close()

    extra = ["--exactly-once", "--transactional-id", group + "-0"] if mode == "exactly-once" else []
    stages = (
        "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir", str(tmp_path / "s"),
        "--max-idle", "3",
    )  # fmt: skip
    p = spawn_run(kafka_bootstrap, topics, group, *extra, stages=stages)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "folded as the partitions behind are decided: {0:" in err, err[-3000:]

    first, _ = decisions_by_tx(
        kafka_bootstrap, topics["decisions"], sorted(todo), committed_only=mode == "exactly-once"
    )
    ref = build_run_engine(DEFAULT_RULES, None)
    try:
        want = {tx["tx_id"]: ref.decide(tx) for tx in txs}
    finally:
        close_engine(ref)
    late = [i for i, d in first.items() if "late" in d["flags"]]
    assert not late, f"{len(late)} of {len(first)} decided late"
    for tx_id, d in first.items():
        assert d["features"] == want[tx_id]["features"], tx_id
    print(f"{mode}: {len(first)} decided after a handover 1.3 days apart, none late")


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return c.committed(TopicPartition(topic, 0))
    finally:
        c.close()


def test_a_renamed_group_goes_on_from_the_old_group_s_state_and_offsets(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """Two deployments on one cluster (a QA pass): a new group given another group's state
    dir resumed from the offsets that state covers. It is refused, naming both groups and the
    fix; ``--adopt-state-of OLD`` (a rename) goes on from the old group's committed offsets --
    not the checkpoint's, which lag them: from those, what the old group decided after its
    last checkpoint was decided again -- each transaction decided once, with the features of
    an uninterrupted run."""
    topics = make_topics(partitions=1)
    ids = write_stream(tmp_path / "tx.jsonl", 3000, cards=50, step=7.0)
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines(keepends=True)
    for i in range(3):
        (tmp_path / f"{i}.jsonl").write_bytes(b"".join(lines[1000 * i : 1000 * (i + 1)]))
    old, new = unique_name("old"), unique_name("new")
    s = settings_for(kafka_bootstrap, topics, old)
    state = tmp_path / "state"
    stages = (
        "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir", str(state),
        "--checkpoint-every", "3600", "--max-poll-records", "200",
    )  # fmt: skip
    produce_file(tmp_path / "0.jsonl", s)
    p = spawn_run(kafka_bootstrap, topics, old, stages=stages)
    wait_until(lambda: (state / "engine.ckpt").exists(), 60, "the first checkpoint")
    wait_until(lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 1000, 60, "1,000")
    produce_file(tmp_path / "1.jsonl", s)
    wait_until(
        lambda: _committed(kafka_bootstrap, old, topics["transactions"]) == 2000, 60,
        "the old group's commit of 2,000",
    )  # fmt: skip
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    ck = Checkpointer(state).load()
    assert ck is not None and ck.group == old and ck.offsets[0] < 2000, ck and ck.offsets

    # another group, the same state dir: refused at the start, nothing decided
    p = spawn_run(kafka_bootstrap, topics, new, stages=(*stages, "--max-idle", "3"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2, err[-2000:]
    assert f"state of consumer group {old!r}, and this is group {new!r}" in err, err[-2000:]
    assert f"--adopt-state-of {old}" in err, err[-2000:]
    assert _committed(kafka_bootstrap, new, topics["transactions"]) is None

    produce_file(tmp_path / "2.jsonl", s)
    p = spawn_run(
        kafka_bootstrap, topics, new, "--adopt-state-of", old, stages=(*stages, "--max-idle", "3")
    )
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "takes over the committed offsets of group" in err, err[-3000:]
    assert _committed(kafka_bootstrap, new, topics["transactions"]) == 3000
    first, dups = decisions_by_tx(kafka_bootstrap, topics["decisions"], ids)
    assert dups == 0, f"{dups} decisions made again after the rename"
    _assert_replay_features(first, tmp_path / "tx.jsonl")


def test_groups_whose_ids_spell_one_key_keep_their_snapshots_apart(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """Two deployments on one state topic (a QA pass): group ``G/a``'s instance ``b`` and group
    ``G``'s instance ``a/b`` (the broker takes both ids) published under one key, ``G/a/b``,
    and the second, started on an empty disk, fetched the first's snapshot. Each id is
    percent-encoded in the key: the second finds none of its own and decides its input."""
    t1, t2 = make_topics(partitions=1), make_topics(partitions=1)
    ids = write_stream(tmp_path / "tx.jsonl", 500)
    g = unique_name("g")
    produce_file(tmp_path / "tx.jsonl", settings_for(kafka_bootstrap, t1, g))
    logs = []
    for group, instance, topics in ((f"{g}/a", "b", t1), (g, "a/b", {**t1, "decisions": t2[
            "decisions"], "dead_letters": t2["dead_letters"]})):  # fmt: skip
        stages = (
            "--rules", str(DEFAULT_RULES), "--model", "none", "--max-idle", "3",
            "--state-dir", str(tmp_path / instance.replace("/", "_")),
            "--state-topic", t1["state_changelog"], "--group-instance-id", instance,
        )  # fmt: skip
        p = spawn_run(kafka_bootstrap, topics, group, stages=stages)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        logs.append(err)
    assert "restored checkpoint from state topic" not in logs[1], logs[1][-3000:]
    decisions_by_tx(kafka_bootstrap, t2["decisions"], ids)  # every one decided by the second
    keys = {r.key for r in read_all(kafka_bootstrap, t1["state_changelog"])}
    assert {f"{g}%2Fa/b".encode(), f"{g}/a%2Fb".encode()} <= keys


def test_a_renamed_group_on_a_new_disk_goes_on_from_the_old_group_s_offsets(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """A review: ``--adopt-state-of`` took over the old group's offsets only for the
    partitions this instance's checkpoint covered; another partition (one another instance
    of the old group held, or every one on a new disk) started at auto_offset_reset, its
    whole log decided again. Now each goes on from the old group's commit, its state rebuilt
    as a partition moved here is: nothing decided twice, the features of a replay."""
    topics = make_topics(partitions=2)
    ids = write_stream(tmp_path / "tx.jsonl", 1200, cards=40, step=7.0)
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "0.jsonl").write_bytes(b"".join(lines[:600]))
    (tmp_path / "1.jsonl").write_bytes(b"".join(lines[600:]))
    old, new = unique_name("old"), unique_name("new")
    s = settings_for(kafka_bootstrap, topics, old)
    stages = ("--rules", str(DEFAULT_RULES), "--model", "none", "--max-idle", "3")
    produce_file(tmp_path / "0.jsonl", s)
    p = spawn_run(kafka_bootstrap, topics, old,
                  stages=(*stages, "--state-dir", str(tmp_path / "a")))  # fmt: skip
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    produce_file(tmp_path / "1.jsonl", s)
    p = spawn_run(kafka_bootstrap, topics, new, "--adopt-state-of", old,
                  stages=(*stages, "--state-dir", str(tmp_path / "b")))  # fmt: skip
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    first, dups = decisions_by_tx(kafka_bootstrap, topics["decisions"], ids)
    assert dups == 0, f"{dups} decisions made again after the rename"
    assert "of partitions its state does not follow (a rename" in err, err[-3000:]
    _assert_replay_features(first, tmp_path / "tx.jsonl")


def test_a_rebuild_counts_its_horizon_back_from_the_last_record_decided(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """A QA pass: the rebuild's horizon was counted back from now, so a topic whose records
    carry their event time (a backfill, a mirror) of a day ago, or an outage longer than the
    horizon, rebuilt nothing: the next decisions counted on empty windows (n_2m 1, not 12)."""
    from kafka import KafkaProducer

    topics = make_topics(partitions=1)
    rules = tmp_path / "short.yaml"
    rules.write_text(
        "version: 1\ngrace: 10s\n"
        "features:\n  - {name: n_2m, entity: card_id, agg: count, window: 2m}\n"
        "rules:\n  - {id: busy, when: n_2m > 100, action: review, score: 0.5, reason: busy}\n"
    )
    t0 = time.time() - 86_400  # a day ago, records stamped with it
    txs = [{"tx_id": f"k{i}", "ts": t0 + 10 * i, "card_id": "c1", "amount": 5.0 + i}
           for i in range(40)]  # fmt: skip
    (tmp_path / "tx.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in txs))
    group = unique_name("g")

    def produce(part: list[dict[str, Any]]) -> None:
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for t in part:
            p.send(topics["transactions"], key=b"c1", value=orjson.dumps(t),
                   timestamp_ms=int(t["ts"] * 1000))  # fmt: skip
        p.flush()
        p.close()

    def run(state_dir: str) -> str:
        stages = ("--rules", str(rules), "--model", "none", "--state-dir",
                  str(tmp_path / state_dir), "--max-idle", "3")  # fmt: skip
        p = spawn_run(kafka_bootstrap, topics, group, stages=stages)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        return err

    produce(txs[:20])
    run("lost-disk")
    produce(txs[20:])
    log = run("new-disk")  # no checkpoint: the state is rebuilt from the input
    assert "rebuild" in log, log[-3000:]
    first, dups = decisions_by_tx(kafka_bootstrap, topics["decisions"], [t["tx_id"] for t in txs])
    assert dups == 0
    assert first["k20"]["features"]["n_2m"] == 12  # k9 .. k20 (2 minutes back, inclusive)
    ref = build_run_engine(rules, None)
    try:
        for tx in replay_load(tmp_path / "tx.jsonl").transactions:
            assert first[tx["tx_id"]]["features"] == ref.decide(tx)["features"], tx["tx_id"]
    finally:
        close_engine(ref)


def test_a_checkpoint_of_an_input_topic_made_again_is_not_taken_for_the_new_one(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """A QA pass: after `fds kafka down --wipe` (or an input topic deleted and made again) the
    state dir's checkpoint was restored on the new topic: its offsets skipped the new records
    (consumed=0 decided=0). The checkpoint names the input topic's id; another topic of that
    name is said, the checkpoint set aside, and every new record decided."""
    from fds.streams import kafka_kit

    topics = make_topics(partitions=1)
    group, state = unique_name("g"), tmp_path / "state"
    s = settings_for(kafka_bootstrap, topics, group)
    stages = ("--model", "none", "--state-dir", str(state), "--max-idle", "3")
    write_stream(tmp_path / "a.jsonl", 500)
    produce_file(tmp_path / "a.jsonl", s)
    p = spawn_run(kafka_bootstrap, topics, group, stages=stages)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "decided=500 " in err, err[-2000:]
    assert Checkpointer(state).load().offsets == {0: 500}  # type: ignore[union-attr]

    source = topics["transactions"]
    kafka_kit.delete_topics(kafka_bootstrap, [source])
    spec = kafka_kit.load_topic_specs()["transactions"]
    prefix = source.removesuffix(spec.get("name", "transactions"))

    def remade() -> bool:
        try:
            made = kafka_kit.create_topics(
                kafka_bootstrap, {"transactions": {**spec, "partitions": 1}}, prefix=prefix
            )
        except Exception:  # (the deletion still running)
            return False
        return made["transactions"] == source

    wait_until(remade, 60, "the input topic made again")
    ids = write_stream(tmp_path / "b.jsonl", 500, start=500)  # (as many: the offsets fit)
    produce_file(tmp_path / "b.jsonl", s)
    p = spawn_run(kafka_bootstrap, topics, group, stages=stages)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "decided=500 " in err, err[-3000:]
    assert f"checkpoint is the state of an earlier topic {source!r}" in err, err[-3000:]
    first = {
        d["tx_id"]
        for d in (orjson.loads(r.value) for r in read_all(kafka_bootstrap, topics["decisions"]))
    }
    assert set(ids) <= first
