"""What a restore leaves to fold (partitions ahead in event time of one still to decide, see
fds.streams.rebuild) is folded as ``fds run`` decides. Across rebalances and refused
transactions during that fold, nothing below a committed offset is decided again, no offset
goes backwards, and the state counts every record once. In-memory broker
(tests/streams/fakebroker.py); against the real one: tests/integration/test_kafka_state.py."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pytest
from kafka.errors import CommitFailedError
from kafka.structs import TopicPartition

from fds.engine import Engine
from fds.features import FeaturePlan
from fds.metrics import Metrics
from fds.rules.ruleset import FeatureSpec
from fds.streams.align import Aligner
from fds.streams.checkpoint import Checkpointer
from fds.streams.kafka import KafkaSettings, Runner, _event_time
from tests.streams.fakebroker import TOPIC, Broker, Group, Producer, Reader, Record

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
BASE = time.time() - 5000  # record timestamps within the feature horizon


def logs(n0: int = 40, n1: int = 40) -> dict[int, list[dict[str, Any]]]:
    """One card in both partitions (so its count shows every record the state holds), P1's
    records 5 s after P0's of the same index."""
    return {
        p: [{"tx_id": f"p{p}-{i}", "ts": BASE + 10 * i + 5 * p, "card_id": "c1", "amount": 1.0}
            for i in range(n)]
        for p, n in ((0, n0), (1, n1))
    }  # fmt: skip


def engine(metrics: Any = None) -> Engine:
    spec = FeatureSpec(name="n", entity="card_id", agg="count", window="1d")
    return Engine(features=FeaturePlan([spec]), metrics=metrics)


def runner(
    broker: Broker, tmp_path: Any, producer: type = Producer, eng: Engine | None = None,
    **settings: Any,
) -> Runner:  # fmt: skip
    group = Group(broker)
    return Runner(
        KafkaSettings(checkpoint_in_background=False, align_wait_s=0, **settings),
        eng or engine(),
        consumer_factory=lambda **cfg: group if cfg.get("group_id") else Reader(broker),
        producer_factory=lambda **cfg: producer(broker, **cfg),
        checkpointer=Checkpointer(tmp_path),
    )  # fmt: skip


def decided_below(broker: Broker, committed: dict[str, int]) -> list[str]:
    return [
        d["tx_id"] for d in broker.out
        if int(d["tx_id"].split("-")[1]) < committed[d["tx_id"].split("-")[0]]
    ]  # fmt: skip


def _ten_of_fifteen(tmp_path: Any) -> tuple[dict[str, Any], Broker, dict[Any, list[Any]]]:
    """15 records per partition: the features of an uninterrupted run of them; a broker on
    which a run with the state dir ``tmp_path / "state"`` decided the first 10 of each; the
    5 later ones of each partition, to be added."""
    full = Broker(logs(n0=15, n1=15), committed={})
    full.script = [(1, lambda g: g.rebalance({P0, P1}))]
    runner(full, tmp_path / "uninterrupted").run(max_idle_s=0.3)
    broker = Broker(logs(n0=15, n1=15), committed={})
    later = {tp: records[10:] for tp, records in broker.logs.items()}
    for tp in later:
        del broker.logs[tp][10:]  # the first run sees 10 of each
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    runner(broker, tmp_path / "state").run(max_idle_s=0.3)
    return {d["tx_id"]: d["features"] for d in full.out}, broker, later


@pytest.mark.parametrize("eos", [False, True])
@pytest.mark.parametrize("kept", [{P1}, {P0, P1}])
def test_a_rebalance_during_the_fold_decides_nothing_twice(tmp_path, caplog, eos, kept):
    """P0 was decided to offset 10 (t=100 s), P1 to 30 (t=305 s): the restore folds both to
    t=95 s, and P1's records 10-29 are folded as P0's are decided. A rebalance in the middle
    keeps P1 here (kafka-python keeps its position, below its committed offset): before, the
    restore after it folded P1 to 30 without seeking its consumer there, and P1's records
    21-29 were decided again, counted twice in the state, and their offsets committed
    backwards. Now the restore after it is a catch-up of P1 from where its fold stood."""
    caplog.set_level(logging.INFO, logger="fds.streams.kafka")
    broker = Broker(logs(), committed={0: 10, 1: 30})
    broker.script = [(1, lambda g: g.rebalance({P0, P1})), (6, lambda g: g.rebalance(kept))]
    r = runner(broker, tmp_path, max_unacked_batches=0, max_poll_records=6,
               exactly_once=eos, transactional_id="t" if eos else None)  # fmt: skip
    r.run(max_idle_s=0.3)
    ids = Counter(d["tx_id"] for d in broker.out)
    assert decided_below(broker, {"p0": 10, "p1": 30}) == []
    assert [i for i, n in ids.items() if n > 1] == []
    p1_commits = [o for p, o in broker.commit_log if p == 1]
    assert p1_commits == sorted(p1_commits) and min(p1_commits) >= 30
    assert ids["p1-39"] == 1
    # the restore after the rebalance is a catch-up, not a second rebuild from the horizon
    assert "catch-up partitions=" in caplog.text and caplog.text.count("rebuild partitions") == 1
    if kept == {P0, P1}:  # every record once in the state, as an uninterrupted run
        last = next(d for d in broker.out if d["tx_id"] == "p1-39")
        assert last["features"]["n"] == 80


def test_a_refused_transaction_of_folded_records_decides_none_of_them(tmp_path):
    """Exactly-once: a transaction holding only records being folded (it carries P1's
    committed offset again) is refused, and no rebalance follows: the batch is rewound below
    P1's committed offset, the state goes back to the checkpoint; the catch-up then folds P1
    to 30, and its consumer must be sought there (before: P1's records 13-29 decided again,
    the card's count 69 for an uninterrupted 52)."""
    broker = Broker(logs(n0=12), committed={0: 5, 1: 30})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    refused: list[Any] = []

    class Refusing(Producer):
        def send_offsets_to_transaction(self, offsets: dict[Any, Any], meta: Any) -> None:
            if not refused and set(offsets) == {P1} and broker.committed[P0] == 12:
                refused.append(offsets)
                raise CommitFailedError("evicted (test)")
            super().send_offsets_to_transaction(offsets, meta)

    r = runner(broker, tmp_path, Refusing, max_poll_records=4, exactly_once=True,
               transactional_id="t", session_timeout_ms=1000)  # fmt: skip
    r.run(max_idle_s=1.5)
    assert refused and decided_below(broker, {"p0": 5, "p1": 30}) == []
    p1_commits = [o for p, o in broker.commit_log if p == 1]
    assert p1_commits == sorted(p1_commits)
    last = next(d for d in broker.out if d["tx_id"] == "p1-39")
    assert last["features"]["n"] == 52


def test_the_lag_of_a_partition_being_folded_counts_only_what_is_left_to_decide(tmp_path):
    m = Metrics()
    broker = Broker(logs(), committed={0: 10, 1: 30})
    group = Group(broker)
    group.assigned, group.pos, group.hw = {P0, P1}, {P0: 10, P1: 30}, {P0: 40, P1: 40}
    r = Runner(
        KafkaSettings(checkpoint_in_background=False),
        engine(m),
        consumer_factory=lambda **_: Reader(broker),
        checkpointer=Checkpointer(tmp_path),
    )
    r.consumer, r.producer, r.aligner = group, Producer(broker), Aligner(group, _event_time)
    r._live = True
    r._bring_up_to_date([P0, P1])
    assert r._refold == {P1: 30} and r._positions[1] < 30
    r._report()
    lag = {p: m.registry.get_sample_value("fds_consumer_lag_messages", {"partition": p})
           for p in "01"}  # fmt: skip
    assert lag == {"0": 30.0, "1": 10.0}


def test_batches_are_pipelined_while_a_partition_is_folded(tmp_path):
    """A checkpoint refused for the whole fold left one due, so every at-least-once batch
    was flushed and committed synchronously."""
    from tests.streams.test_runner_commits import TP, batch, make_runner

    counts = []
    for refold in (False, True):
        r = make_runner(max_unacked_batches=5, checkpoint_in_background=False)
        r.checkpointer = Checkpointer(tmp_path / str(refold))
        r._positions = {0: 0, 1: 5}
        if refold:
            r._refold = {TopicPartition(TP.topic, 1): 50}
        for start in range(0, 30, 3):
            r._process(batch(start))
            r.producer.ack()
        counts.append((r.producer.flushes, len(r.consumer.commits)))
    assert counts[0] == counts[1] == (1, 1)


def test_a_group_without_committed_offsets_resumes_from_the_checkpoint(tmp_path, caplog):
    """The group deleted, or its offsets expired: the checkpoint's state was taken as it was
    while the group consumer started at the earliest offsets, so every record was decided
    again on a state that already held it (a review: features counted twice, 5,884 of 5,889
    flagged `late`). It now resumes from the offsets the state covers: nothing decided twice,
    the records after them decided as an uninterrupted run decides them."""
    expected, broker, later = _ten_of_fifteen(tmp_path)
    assert len(broker.out) == 20 and broker.committed == {P0: 10, P1: 10}
    for tp, records in later.items():
        broker.logs[tp] += records
    broker.committed, broker.out, broker.polls = {}, [], 0  # the group is gone
    broker.commit_log.clear()
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        runner(broker, tmp_path / "state").run(max_idle_s=0.3)
    assert "no committed offset for partitions [0, 1]" in caplog.text
    # committed for the group at once (an idle partition moved to another instance would start
    # there at the earliest offset: a review)
    assert sorted(broker.commit_log[:2]) == [(0, 10), (1, 10)]
    again = {d["tx_id"]: d["features"] for d in broker.out}
    assert sorted(again) == sorted(f"p{p}-{i}" for p in (0, 1) for i in range(10, 15))
    assert again == {t: expected[t] for t in again}  # (before: the card's count doubled)
    assert not any(d["flags"] for d in broker.out)


@pytest.mark.parametrize("eos", [False, True])
def test_a_group_without_offsets_finds_what_was_decided_since_the_checkpoint(tmp_path, caplog, eos):
    """A review: killed after its last checkpoint (the commits run ahead of it by up to
    --checkpoint-every), its group's offsets then gone: the restart committed the checkpoint's
    offsets with no mark, found nothing, and decided again every record decided since (5,859
    duplicates). The checkpoint keeps where the decisions past its offsets start: at-least-once,
    they are found and their records folded. Exactly-once decides them again, and says so."""
    _, broker, later = _ten_of_fifteen(tmp_path)
    state = tmp_path / "state"
    older = (state / "engine.ckpt").read_bytes()  # covers 10 of each
    for tp, records in later.items():
        broker.logs[tp] += records
    broker.script = [(broker.polls + 1, lambda g: g.rebalance({P0, P1}))]
    runner(broker, state).run(max_idle_s=0.3)  # decides 10-14, commits 15 ...
    assert broker.committed == {P0: 15, P1: 15} and len(broker.out) == 30
    (state / "engine.ckpt").write_bytes(older)  # ... and is killed before its checkpoint
    broker.committed, broker.polls = {}, 0  # the group is gone
    broker.metadata.clear()
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    for tp, records in Broker(logs(n0=17, n1=17), committed={}).logs.items():
        broker.logs[tp] += records[15:]  # (two more each: decided on every record once)
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        r = runner(broker, state, exactly_once=eos, transactional_id="t" if eos else None)
        r.run(max_idle_s=0.3)
    ids = Counter(d["tx_id"] for d in broker.out)
    again = sorted(i for i, n in ids.items() if n > 1)
    if eos:
        assert again == sorted(f"p{p}-{i}" for p in (0, 1) for i in range(10, 15))
        assert "since the checkpoint are decided again (duplicates" in caplog.text
        return
    assert again == [] and r.stats.found_decided == 10
    assert "looked for on the decisions topic, and their records folded" in caplog.text
    new = {d["tx_id"]: d["features"]["n"] for d in broker.out[30:]}
    assert new == {"p0-15": 31, "p1-15": 32, "p0-16": 33, "p1-16": 34}  # every record once


class OneOut(Producer):
    """A decisions topic of one partition: not co-partitioned with the input (no marks)."""

    def partitions_for(self, topic: str) -> set[int]:
        return {0}


@pytest.mark.parametrize("ours", [True, "unmarked", False])
def test_a_checkpoint_past_the_committed_offsets_is_committed_not_rebuilt(tmp_path, caplog, ours):
    """A review: the commit a revocation queues is asynchronous and the checkpoint after it
    assumes it lands; killed before it did, the restart found the state ahead of the
    committed offsets and rebuilt every partition from the feature horizon (hours for 90
    days). Its records were decided and acknowledged: committed where the state stands, and
    nothing is decided again. Offsets reset lower by an operator (no mark of fds) are not: the
    state is rebuilt and their records decided again, as asked."""
    expected, broker, later = _ten_of_fifteen(tmp_path)
    for tp, records in later.items():
        broker.logs[tp] += records
    broker.committed = {P0: 7, P1: 8}  # the last commit (10, 10) did not land
    # (fds's own: with its mark; without a number where the decisions topic has other
    # partitions than the input, which a verification on the real broker saw rebuilt)
    meta = {True: "fds:decisions@4", "unmarked": "fds:decisions@"}.get(ours)
    broker.metadata = {P0: meta, P1: meta} if meta else {}
    broker.out, broker.polls = [], 0
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    out = OneOut if ours == "unmarked" else Producer
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        runner(broker, tmp_path / "state", producer=out).run(max_idle_s=0.3)
    decided = sorted(d["tx_id"] for d in broker.out)
    if not ours:
        assert "rebuild partitions" in caplog.text
        assert decided == sorted(
            [f"p0-{i}" for i in range(7, 15)] + [f"p1-{i}" for i in range(8, 15)]
        )
    else:
        assert "the state covers partitions [0, 1] past their committed offsets {0: 7, 1: 8}" in (
            caplog.text
        )
        assert "rebuild partitions" not in caplog.text
        assert decided == sorted(f"p{p}-{i}" for p in (0, 1) for i in range(10, 15))
    assert {d["tx_id"]: d["features"] for d in broker.out} == {
        t: expected[t] for t in decided
    }  # every record once in the state
    assert broker.committed == {P0: 15, P1: 15}
    if ours == "unmarked":  # (its own commits say so, as that one did: they said nothing)
        assert set(broker.metadata.values()) == {"fds:decisions@"}


@pytest.mark.parametrize("committed", [{0: 20}, {0: 20, 1: 0}])
def test_a_rebuild_with_a_partition_never_committed_goes_ahead(tmp_path, committed):
    """A QA pass: partitions added to the input (empty, no committed offset) stopped every
    restart that rebuilt the state (`IllegalStateError: Partition is not assigned`: the lag
    report asked the restore's reader for a partition it does not read); a review: also one
    committed at 0 and still empty (an empty range is not read either)."""
    m = Metrics()
    broker = Broker(logs(n0=40, n1=0), committed=committed)
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    group = Group(broker)
    r = Runner(
        KafkaSettings(checkpoint_in_background=False, align_wait_s=0),
        engine(m),
        consumer_factory=lambda **cfg: group if cfg.get("group_id") else Reader(broker),
        producer_factory=lambda **cfg: Producer(broker, **cfg),
        checkpointer=Checkpointer(tmp_path),
    )
    r.run(max_idle_s=0.3)
    assert sorted(d["tx_id"] for d in broker.out) == [f"p0-{i}" for i in range(20, 40)]
    assert [d["features"]["n"] for d in broker.out] == list(range(21, 41))  # rebuilt: 20 held


@pytest.mark.parametrize("state_dir", [True, False])
def test_a_new_group_and_an_ignored_checkpoint_are_warned_about(tmp_path, caplog, state_dir):
    """A QA pass: a renamed group decided the whole topic again (and sent every decision
    again) with only an INFO line about the checkpoint, and a checkpoint that could not be
    used (an upgrade, other features) was followed by an INFO line that read as routine.
    Without a state dir (`--state-dir none`) the new group went without a word (a QA pass)."""
    broker = Broker(logs(n0=5, n1=7), committed={})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    (tmp_path / "engine.ckpt").write_bytes(b"torn")
    (tmp_path / "engine.ckpt.bad").write_bytes(b"older")  # (replaced, lost: a QA pass)
    r = runner(broker, tmp_path)
    if not state_dir:
        r.checkpointer = None
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        r.run(max_idle_s=0.3)
    assert len(broker.out) == 12
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "no committed offset for partitions [0, 1] of group fds (a new group, or renamed): "
        "their 12 records are decided from the earliest offset" in w
        for w in warned
    ), warned
    if state_dir:
        assert any(
            "no usable checkpoint" in w and "feature horizon read again, 24.1 h)" in w
            for w in warned
        ), warned
        assert (tmp_path / "engine.ckpt.bad").read_bytes() == b"torn"
        assert (tmp_path / "engine.ckpt.bad.1").read_bytes() == b"older"
        assert f'checkpoint kept aside as path="{tmp_path / "engine.ckpt.bad"}"' in warned


@pytest.mark.parametrize("release", ["this", "earlier"])
def test_a_checkpoint_a_failing_disk_changed_is_set_aside_and_the_state_rebuilt(
    tmp_path, caplog, release
):
    """A QA pass: 8 bytes flipped in the middle of engine.ckpt stopped fds run at every start
    (an UnpicklingError from the feature state, never caught), and other flips loaded without
    a word. A file of this release carries a checksum; one of an earlier release, without it,
    fails when its feature state is read: both are set aside and the state is rebuilt."""
    import pickle

    broker = Broker(logs(n0=5, n1=7), committed={})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    first = runner(broker, tmp_path)
    first.run(max_idle_s=0.3)  # decided, checkpointed
    held = first.engine.features.state_sizes()
    assert held["card_id"] > 0
    good = runner(broker, tmp_path).checkpointer.load()  # type: ignore[union-attr]
    assert good is not None and good.state["features"] is not None
    if release == "this":
        raw = bytearray((tmp_path / "engine.ckpt").read_bytes())
        mid = len(raw) // 2
        raw[mid : mid + 8] = bytes(b ^ 0x5A for b in raw[mid : mid + 8])
    else:  # no checksum, its feature state damaged
        feats = dict(good.state["features"])
        blob = bytearray(feats["state"])
        blob[len(blob) // 2 :] = b"\xff" * (len(blob) - len(blob) // 2)
        feats["state"] = bytes(blob)
        raw = bytearray(pickle.dumps({
            "format": 1, "topic": good.topic, "offsets": good.offsets, "written_at": 0.0,
            "state": {**good.state, "features": feats}, "group": good.group,
        }))  # fmt: skip
    (tmp_path / "engine.ckpt").write_bytes(raw)
    broker2 = Broker(logs(n0=5, n1=7), committed={0: 5, 1: 7})
    broker2.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker2, tmp_path)
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        r.run(max_idle_s=0.3)  # (it raised, at every start)
    said = "do not match the checksum" if release == "this" else "feature state is unreadable"
    assert said in caplog.text and "no usable checkpoint" in caplog.text, caplog.text
    assert (tmp_path / "engine.ckpt.bad").read_bytes() == raw
    assert r.engine.features.state_sizes() == held  # rebuilt from the input, not left empty


def test_a_rebuild_says_how_much_it_reads_and_how_far_it_got(tmp_path, caplog, monkeypatch):
    """A QA pass: a rebuild of 200,000 records said nothing until its end, and its metrics
    did not move: an operator could not see it go."""
    monkeypatch.setattr("fds.streams.handover.PROGRESS_EVERY_S", 0.0)
    broker = Broker(logs(n0=40, n1=30), committed={0: 20, 1: 10})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        runner(broker, tmp_path).run(max_idle_s=0.3)
    assert 'rebuild started (state only, no output) partitions="[0, 1]" records="30"' in caplog.text
    assert 'rebuild progress records="1" of="30" done="3%"' in caplog.text


def test_a_row_produce_could_not_read_is_dead_lettered_with_the_reader_s_reason() -> None:
    """A QA pass: a CSV row fds produce sent as its own text (a short row) reached the dead
    letters as "not valid JSON"; the reader's reason travels in a header."""
    from tests.streams.fakebroker import Record

    plain = Record(TOPIC, 0, 0, 0, None, b"r1,1767225600", [])
    said = plain._replace(headers=[("unreadable", b"expected 4 columns, found 2")])
    assert "not valid JSON" in str(_event_time(plain)[1].error)
    bad = _event_time(said)[1]
    assert (bad.stage, str(bad.error)) == ("parse", "expected 4 columns, found 2")
    footer = said._replace(value=b"5")  # text that reads as JSON fails validation: the same
    assert str(_event_time(footer)[1].error) == "expected 4 columns, found 2"
    # a mapped row refused by the mapping (its ts not in the ts_format) goes as JSON of the
    # row as read, which may read as a transaction: refused all the same, for its reason
    row = b'{"tx_id": "r2", "ts": 1767225600, "card_id": "c", "amount": 5}'
    layout = said._replace(value=row, headers=[("fds-refused", b"ts: '46082,35' does not fit")])
    assert str(_event_time(layout)[1].error) == "ts: '46082,35' does not fit"
    # ... while a header of that other name on a good record is another producer's (a review)
    assert _event_time(plain._replace(value=row, headers=[("unreadable", b"")]))[0] == 1767225600


@pytest.mark.parametrize("reset_by_a_tool", [False, True])
def test_decisions_out_before_a_crash_are_not_made_again(tmp_path, reset_by_a_tool):
    """At-least-once: a crash after decisions were acknowledged and before their offsets were
    committed made a restart decide those records again, duplicates that differ in
    `decided_at` and `latency_ms` (a contract audit: the promise is byte-identical ones). A
    restart now reads the decisions past the commit's mark and folds their records instead.
    An offset committed otherwise (an operator resetting the group with Kafka's tools) carries
    no mark: everything past it is decided again, as asked."""
    expected, broker, _ = _crashed_after_deciding_the_later_ones(tmp_path)
    if reset_by_a_tool:
        broker.metadata = dict.fromkeys(broker.metadata, "")
    broker.polls = 0
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker, tmp_path / "at-crash")
    r.run(max_idle_s=0.3)
    ids = Counter(d["tx_id"] for d in broker.out)
    assert broker.committed == {P0: 15, P1: 15}
    if reset_by_a_tool:
        assert r.stats.found_decided == 0 and sum(ids.values()) == 40
    else:
        assert r.stats.found_decided == 10 and sum(ids.values()) == 30
    assert set(ids) == set(expected)  # every record decided, none lost
    # and the state counted each record once: the decisions made again match a replay's
    assert all(d["features"] == expected[d["tx_id"]] for d in broker.out)


def _crashed_after_deciding_the_later_ones(
    tmp_path: Any,
) -> tuple[dict[str, Any], Broker, dict[Any, list]]:
    """The features of an uninterrupted run; the broker after a run decided the 5 later
    records of each partition and died before committing them (offsets and marks as before
    that run), and the state dir ``at-crash`` of the checkpoint then; the later records."""
    import shutil

    expected, broker, later = _ten_of_fifteen(tmp_path)
    assert broker.committed == {P0: 10, P1: 10}
    assert all(m.startswith("fds:decisions@") for m in broker.metadata.values())
    at_crash = dict(broker.committed), dict(broker.metadata)
    shutil.copytree(tmp_path / "state", tmp_path / "at-crash")
    for tp, records in later.items():
        broker.logs[tp] += records
    broker.polls = 0
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    runner(broker, tmp_path / "state").run(max_idle_s=0.3)  # decides the 10 later ones ...
    assert len(broker.out) == 30
    broker.committed, broker.metadata = at_crash  # ... but dies before committing them
    broker.polls = 0
    return expected, broker, later


class _Crash(BaseException):
    pass


@pytest.mark.parametrize("interruption", ["rebalance", "crash"])
def test_a_fold_of_found_decisions_interrupted_keeps_the_rest_found(tmp_path, interruption):
    """A review: while a restart folded the decisions it found, its commits named the
    decisions partition's end, past those not folded yet; a rebalance (another instance
    joining) or a crash then made them again. The commits now name the first one left."""
    import shutil

    _, broker, _ = _crashed_after_deciding_the_later_ones(tmp_path)
    shutil.copytree(tmp_path / "at-crash", tmp_path / "at-crash-2")
    if interruption == "rebalance":
        broker.script = [(1, lambda g: g.rebalance({P0, P1})), (2, lambda g: g.rebalance({P0, P1}))]
        runner(broker, tmp_path / "at-crash", max_poll_records=2).run(max_idle_s=0.3)
    else:
        commit = broker.commit

        def crash_after_the_first(offsets: dict[Any, Any]) -> None:
            commit(offsets)
            broker.commit = commit
            raise _Crash

        broker.commit = crash_after_the_first  # type: ignore[method-assign]
        broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
        with pytest.raises(_Crash):
            runner(broker, tmp_path / "at-crash", max_poll_records=2).run(max_idle_s=0.3)
        assert broker.committed != {P0: 15, P1: 15}  # cut short mid-fold
        broker.polls = 0
        broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
        runner(broker, tmp_path / "at-crash-2").run(max_idle_s=0.3)
    ids = Counter(d["tx_id"] for d in broker.out)
    assert [t for t, n in ids.items() if n > 1] == [] and len(ids) == 30
    assert broker.committed == {P0: 15, P1: 15}


def test_a_transaction_sent_twice_past_the_commit_is_decided_twice(tmp_path):
    """A review: the decisions found were matched by tx_id alone, so a producer's retry of a
    transaction (its tx_id again, a later offset) was folded as if decided: its decision
    never made. Found decisions now match the partition's records in order."""
    import orjson

    _, broker, later = _crashed_after_deciding_the_later_ones(tmp_path)
    retry = orjson.loads(later[P0][2].value)  # p0-12, sent again after p0-14
    log0 = broker.logs[P0]
    log0.append(Record(P0.topic, 0, len(log0), int(retry["ts"] * 1000) + 60_000, b"c1",
                       orjson.dumps({**retry, "ts": retry["ts"] + 60}), []))  # fmt: skip
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker, tmp_path / "at-crash")
    r.run(max_idle_s=0.3)
    assert r.stats.found_decided == 10
    assert Counter(d["tx_id"] for d in broker.out)["p0-12"] == 2


def test_a_checkpoint_of_other_features_keeps_the_rest_of_the_engine_state(tmp_path, caplog):
    """A QA pass: a restart after the features were edited dropped the whole checkpoint, the
    served ruleset versions (a version name could then name other rules), the demotions and
    the model gate with the feature state; they are kept, the features rebuilt."""
    first = Broker(logs(n0=5, n1=5), committed={})
    first.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(first, tmp_path)
    r.engine.demoted = {"too_eager"}
    r.run(max_idle_s=0.3)
    broker = Broker(logs(n0=8, n1=8), committed={0: 5, 1: 5})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    spec = FeatureSpec(name="n", entity="card_id", agg="count", window="2d")  # was 1d
    r = runner(broker, tmp_path, eng=Engine(features=FeaturePlan([spec])))
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        r.run(max_idle_s=0.3)
    assert "checkpoint ignored: feature state was saved with other feature declarations" in (
        caplog.text
    )
    assert (
        "checkpoint: kept the ruleset versions served and the rules and model the rate "
        "breaker demoted; the features, the alert budget, the breaker's counts" in caplog.text
    )
    assert r.engine.demoted == {"too_eager"}
    # the features rebuilt from the input: each new record counts every one before it
    assert sorted(d["features"]["n"] for d in broker.out) == list(range(11, 17))


def test_of_two_sources_whose_features_do_not_fit_the_newer_checkpoint_s_history_is_kept(
    tmp_path, caplog
):
    """A review: with a state topic, a feature edit makes the local checkpoint and the
    topic's (older) snapshot both unfit; the snapshot's demotions replaced the checkpoint's.
    A QA pass: that snapshot (of the same declarations) was fetched, "restored", then
    "ignored": it is not fetched at all."""
    first = Broker(logs(n0=5, n1=5), committed={})
    first.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(first, tmp_path)
    r.engine.demoted = {"too_eager"}
    r.run(max_idle_s=0.3)
    snapshot = Checkpointer(tmp_path).load()
    assert snapshot is not None
    snapshot.state["demoted"] = set()  # an older snapshot: before the demotion
    spec = FeatureSpec(name="n", entity="card_id", agg="count", window="2d")
    r = runner(Broker(logs(), committed={}), tmp_path, eng=Engine(features=FeaturePlan([spec])))
    r.state_topic = object()  # (only to list the topic's snapshot as a source)
    fetched: list[Any] = []
    r._fetch_state = lambda ck: fetched.append(ck) or snapshot  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        r._restore()
    assert r.engine.demoted == {"too_eager"} and fetched == []
    assert caplog.text.count("kept the ruleset versions served") == 1


def test_files_set_aside_keep_three_and_a_folder_in_the_way_stops_nothing(tmp_path):
    """A review: a folder named as one of the files set aside made the rotation raise, and
    the start with it."""
    from fds.streams.kafka import keep_aside

    ck, bad = tmp_path / "engine.ckpt", tmp_path / "engine.ckpt.bad"
    for i in range(4):
        ck.write_text(str(i))
        assert keep_aside(ck, bad) == bad
    assert [(tmp_path / f"engine.ckpt.bad{s}").read_text() for s in ("", ".1", ".2")] == [
        "3", "2", "1"
    ]  # fmt: skip
    (tmp_path / "engine.ckpt.bad.2").unlink()
    (tmp_path / "engine.ckpt.bad.2").mkdir()
    ck.write_text("4")
    kept = keep_aside(ck, bad)
    assert kept.read_text() == "4" and not ck.exists()
