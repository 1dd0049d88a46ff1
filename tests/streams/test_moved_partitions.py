"""Partitions moved here whose next records would be decided late on the state merged with their
rebuild (cases a review reproduced): every partition is rebuilt instead, folded in event time;
a straggler behind a partition's next record to decide does not count."""

from __future__ import annotations

import math
import pickle
import threading
import time
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from fds.streams.kafka import _event_time
from tests.streams.test_runner_commits import (
    TP,
    Group,
    Reader,
    Record,
    rebuilding_runner,
    records,
)

T = 1_700_000_000
TX = b'{"tx_id": "%s", "ts": %d, "card_id": "%s", "amount": 5.0, "merchant_id": "m1"}'


def _rec(p: int, i: int, ts: int, card: str) -> Record:
    return Record(
        "transactions",
        p,
        i,
        ts * 1000,
        card.encode(),
        TX % (f"{p}-{i}".encode(), ts, card.encode()),
    )


def _runner(
    tmp_path: Any, logs: dict[Any, list[Record]], own: dict[int, int], **settings: Any
) -> Any:
    """A runner following ``own`` (partition -> committed offset, decided up to it) over the
    partitions of ``logs``, all committed at 10 (``settings``: see rebuilding_runner)."""

    class Logs(Reader):
        def __init__(self) -> None:
            super().__init__([])
            self.paused: set[Any] = set()

        def pause(self, *tps: Any) -> None:
            self.paused.update(tps)

        def resume(self, *tps: Any) -> None:
            self.paused.difference_update(tps)

        def end_offsets(self, tps: Any, timeout_ms: Any = None) -> dict[Any, int]:
            return {tp: len(logs[tp]) for tp in tps}

        def poll(self, timeout_ms: int = 0, max_records: Any = None) -> dict[Any, Any]:
            live = {tp: at for tp, at in self.pos.items() if tp not in self.paused}
            out = {tp: logs[tp][at : at + 100] for tp, at in live.items() if at < len(logs[tp])}
            self.pos.update({tp: min(at + 100, len(logs[tp])) for tp, at in live.items()})
            return out

    class Assigned(Group):
        def assignment(self) -> set[Any]:
            return set(logs)

    r = rebuilding_runner(tmp_path, Logs(), Assigned(), **settings)
    mine = [
        m for tp, recs in logs.items() if tp.partition in own for m in recs[: own[tp.partition]]
    ]
    _decide(r.engine, mine)
    r._positions = dict(own)
    return r


def _decide(engine: Any, recs: list[Record]) -> list[dict[str, Any]]:
    """The decisions of ``recs`` in event-time order, each event's partition recorded (as
    Runner._process does with provenance)."""
    out = []
    for m in sorted(recs, key=lambda m: m.timestamp):
        engine.features.part = m.partition
        out.append(engine.decide(_event_time(m, math.inf)[1]))
    return out


def _late(r: Any, recs: list[Record]) -> list[bool]:
    return ["late" in d["flags"] for d in _decide(r.engine, recs)]


def _one_behind() -> tuple[list[Any], dict[Any, list[Record]]]:
    """Partitions 0 and 1 (to move here) and 2 (held here, decided to 10); 0 decided 2 h
    ahead of 1, which has 5 records to decide; 2 is idle at 1's time."""
    p = [TopicPartition("transactions", i) for i in range(3)]
    logs = {
        p[0]: [_rec(0, i, T - 9 + i, "c0") for i in range(10)],
        p[1]: [_rec(1, i, T - 7210 + i, "c1") for i in range(10)]
        + [_rec(1, 10 + i, T - 7200 + 60 * (i + 1), "c1") for i in range(5)],
        p[2]: [_rec(2, i, T - 7210 + i, "c2") for i in range(10)],
    }
    return p, logs


def test_a_moved_partition_behind_another_moved_one(tmp_path, caplog):
    """Partitions 0 and 1 move here; 0 was decided 2 h ahead of 1, which has records to
    decide; the own partition 2 is idle at 1's time."""
    p, logs = _one_behind()
    r = _runner(tmp_path, logs, {2: 10})
    with caplog.at_level("INFO"):
        r._bring_up_to_date(p)
    assert "partitions [1] have records to decide" in caplog.text
    assert not any(_late(r, logs[p[1]][10:]))


class _GatedModel:
    """A model stage with a maturity gate (closed when made), scoring every transaction 0.1."""

    version, reads_rules = "v1", False

    def __init__(self) -> None:
        self.acting = False

    def gate_state(self) -> dict[str, Any]:
        return {"acting": self.acting}

    def load_gate_state(self, state: dict[str, Any]) -> None:
        self.acting = state["acting"]

    def score(self, tx: Any, feats: Any) -> tuple[float, str]:
        return 0.1, self.version

    def on_decision(self, tx: Any, decision: Any) -> None:
        pass

    def on_label(self, label: Any) -> None:
        pass


def test_a_rebuild_of_every_partition_keeps_the_model_gate(tmp_path, caplog):
    """The state of every partition is rebuilt (as in the test above) on an instance whose
    model's maturity gate opened since it started: the gate stays open. Before, the rebuild
    loaded the engine state of the start whole, its gate with it: the model went back to
    shadow until a window of fraud labels was judged anew (days), as after a restore that
    starts again it does not (the gate is not built from the input)."""
    p, logs = _one_behind()
    r = _runner(tmp_path, logs, {2: 10})
    r.engine.model = model = _GatedModel()
    r._fresh_state = pickle.dumps(r.engine.state_dict())  # (as made at the start: closed)
    model.acting = True  # opened since, on the labels it judged
    with caplog.at_level("INFO"):
        r._bring_up_to_date(p)
    assert "rebuild partitions=[0, 1, 2]" in caplog.text
    assert model.acting
    # its figures are fields of a JSON log line too (they were inside `msg` alone: a QA pass)
    import orjson

    from fds.logs import JsonFormatter

    (line,) = (r for r in caplog.records if r.getMessage().startswith("rebuild partitions="))
    got = orjson.loads(JsonFormatter().format(line))
    assert got["partitions"] == "[0, 1, 2]" and got["records"] >= 0 and "seconds" in got


def test_an_own_partition_within_the_grace_period_behind(tmp_path, caplog):
    """Own partition 3 has records to decide 4 minutes behind the state (within the 5-minute
    grace: not late); partition 0 moves here, decided 2.5 minutes ahead of the state."""
    p = {i: TopicPartition("transactions", i) for i in (0, 2, 3)}
    logs = {
        p[0]: [_rec(0, i, T + 150 - 9 + i, "c0") for i in range(10)],
        p[2]: [_rec(2, i, T - 9 + i, "c2") for i in range(10)],
        p[3]: [_rec(3, i, T - 250 + i, "c3") for i in range(15)],
    }
    r = _runner(tmp_path, logs, {2: 10, 3: 10})
    with caplog.at_level("INFO"):
        r._bring_up_to_date(list(p.values()))
    assert "partitions [3] have records to decide" in caplog.text
    assert not any(_late(r, logs[p[3]][10:]))


def test_a_straggler_after_the_next_record_is_no_reason_to_rebuild_everything(tmp_path, caplog):
    """One of the records after the next one is a day old (late in any run: an offline
    terminal's upload): the moved partition is still rebuilt alone."""
    recs = records(0, 30)  # 10 committed, 20 to decide
    straggler = b'{"tx_id": "t13", "ts": %d, "card_id": "c1", "amount": 5.0}'
    recs[13] = recs[13]._replace(value=straggler % (T - 86400))
    r = rebuilding_runner(tmp_path, Reader(recs), Group())
    r._positions = {1: 5}
    r.engine.features.compute({"tx_id": "x", "ts": T + 10.0, "card_id": "c9", "amount": 1.0})
    with caplog.at_level("INFO"):
        r._bring_up_to_date([TP])
    assert "rebuild of the partitions moved here" in caplog.text


def test_the_lag_report_during_a_restore_waits_for_the_broker_briefly(tmp_path):
    """Each second of a restore reads the partitions' ends: kafka-python waited its request
    timeout (30 s) for a broker gone, every second, and a stop waited with it (a review)."""
    from kafka.errors import KafkaTimeoutError

    from fds.streams.kafka import ENDS_TIMEOUT_MS

    calls: list[Any] = []

    class Gone(Reader):
        def end_offsets(self, tps: Any, timeout_ms: Any = None) -> dict[Any, int]:
            calls.append(timeout_ms)
            raise KafkaTimeoutError("no answer")

    r = rebuilding_runner(tmp_path, Reader([]), Group())
    for _ in range(3):
        r._report_restoring(Gone([]), {TP: 10}, {TP: 15})
    assert calls == [ENDS_TIMEOUT_MS]  # then the ends read at the start, for a while


def _logs(n: int, every: int) -> tuple[list[Any], dict[Any, list[Record]]]:
    """Partitions 0..n-1 of 20 records, one each ``every`` seconds (the cards of a partition
    its own, merchant m1 shared by all)."""
    p = [TopicPartition("transactions", i) for i in range(n)]
    logs = {
        tp: [_rec(tp.partition, i, T + every * i + tp.partition, f"c{tp.partition}{i % 3}")
             for i in range(20)]
        for tp in p
    }  # fmt: skip
    return p, logs


def _taking_over(
    tmp_path: Any,
    monkeypatch: Any,
    victim_settings: dict[str, Any],
    published: Any = None,
    left: Any = None,
    own: Any = None,
    index: Any = None,
    scans: list[Any] | None = None,
    gone: Any = None,
    prepare: Any = None,
    take: Any = None,
) -> Any:
    """Partitions 0 and 1, 20 records each, committed at 10; this instance ("g/b", with a state
    topic) holds 0 and takes 1 over. Instance "g/a" (``victim_settings``) decided both up to
    5 and published that snapshot; the scan also finds this instance's own manifest and one of
    another input topic, both further along (to be ignored). With ``index`` (manifests), the
    state topic has an index holding those; each scan's index is noted in ``scans``; a
    manifest ``gone(manifest)`` names a snapshot that cannot be fetched any more;
    ``prepare(runner)`` is called on the victim before its snapshot is taken and on this
    instance before it restores; ``take``: the partitions assigned here (both). Returns the
    runner, restored, the logs, and the instances whose snapshot it fetched."""
    from fds.streams import kafka

    p, logs = _logs(2, 2)
    victim = _runner(tmp_path / "a", logs, {}, **victim_settings)
    _decide(victim.engine, [m for tp in p for m in logs[tp][:5]])
    if prepare is not None:
        prepare(victim)
    victim.checkpointer.save(victim._state(), topic="transactions", offsets={0: 5, 1: 5})
    snapshot = victim.checkpointer.path.read_bytes()
    r = _runner(tmp_path / "b", logs, {0: 10} if own is None else own, **TAKER)
    if prepare is not None:
        prepare(r)
    manifests = {
        "g/a": {
            "topic": "transactions",
            "offsets": published or {"0": 5, "1": 5},
            "written_at": 2.0,
        },
        "g/b": {"topic": "transactions", "offsets": {"1": 9}},
        "g/c": {"topic": "payments", "offsets": {"1": 9}},
    }
    fetched: list[str] = []

    def fetch_foreign(
        self: Any, make: Any, *, manifest: Any = None, timeout_s: Any = 0
    ) -> bytes | None:
        if gone is not None and gone(manifest):
            return None
        fetched.append(self.ident)
        return snapshot

    def scan(*_: Any, index: str | None = None, **__: Any) -> Any:
        (scans if scans is not None else []).append(index)
        return manifests if index is None else index_manifests

    index_manifests = index
    if index is not None:
        r.state_topic.index = "state.index"
    monkeypatch.setattr(kafka.StateTopic, "scan", staticmethod(scan))
    monkeypatch.setattr(kafka.StateTopic, "fetch_foreign", fetch_foreign)
    if left is not None:  # given back at those offsets
        r._left = left
        for p_left in left:
            r._positions.pop(p_left, None)
    r._bring_up_to_date(p if take is None else [p[i] for i in take])
    return r, logs, fetched


TAKER = {"state_topic": "state", "group": "g", "group_instance_id": "b"}


def _decides_as_one_engine(tmp_path: Any, r: Any, logs: dict[Any, list[Record]]) -> None:
    """``r`` decides the records past 10 with every feature of one engine that decided both
    partitions all along."""
    ref = _runner(tmp_path / "ref", logs, {0: 10, 1: 10})
    rest = [m for recs in logs.values() for m in recs[10:]]
    got, want = _decide(r.engine, rest), _decide(ref.engine, rest)
    assert [d["features"] for d in got] == [d["features"] for d in want]


def test_a_moved_partition_is_taken_over_from_another_instances_snapshot(
    tmp_path, caplog, monkeypatch
):
    """Partition 1 is taken from the snapshot of instance a (which held partition 0 too: its
    entries there are not taken) and folded from its offset 5, not from the horizon; every
    feature decided next, the shared merchant's included, is that of one engine that decided
    both partitions."""
    with caplog.at_level("INFO"):
        r, logs, fetched = _taking_over(tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"})
    assert fetched == ["g/a"]
    assert 'partitions [1] taken over from the snapshot of instance="g/a" offsets="{1: 5}"' in (
        caplog.text
    )
    assert "ranges={1: (5, 10)}" in caplog.text
    _decides_as_one_engine(tmp_path, r, logs)


def test_the_index_is_read_first_and_the_state_topic_only_for_what_it_lacks(
    tmp_path, caplog, monkeypatch
):
    """The index names instance a's snapshot: the state topic is not read. An index that
    lacks partition 1 (a's copy of its newest manifest lost, or a of an earlier release) has
    the whole state topic read too, and partition 1 is taken over from what it finds."""
    victim = {**TAKER, "group_instance_id": "a"}
    newest = {"g/a": {"topic": "transactions", "offsets": {"0": 5, "1": 5}, "written_at": 2.0}}
    scans: list[Any] = []
    with caplog.at_level("INFO"):
        r, logs, fetched = _taking_over(
            tmp_path / "whole", monkeypatch, victim, index=newest, scans=scans
        )
    assert scans == ["state.index"] and fetched == ["g/a"]
    assert "ranges={1: (5, 10)}" in caplog.text
    _decides_as_one_engine(tmp_path / "whole", r, logs)
    caplog.clear()
    older = {"g/a": {"topic": "transactions", "offsets": {"0": 3}, "written_at": 1.0}}
    scans.clear()
    with caplog.at_level("INFO"):
        r, logs, fetched = _taking_over(
            tmp_path / "lacking", monkeypatch, victim, index=older, scans=scans
        )
    assert scans == ["state.index", None] and fetched == ["g/a"]
    assert 'partitions [1] taken over from the snapshot of instance="g/a" offsets="{1: 5}"' in (
        caplog.text
    )
    _decides_as_one_engine(tmp_path / "lacking", r, logs)


def test_a_snapshot_the_index_names_that_is_gone_is_fetched_as_the_state_topic_names_it(
    tmp_path, caplog, monkeypatch
):
    """The index's copy of instance a's manifest is older than the state topic's (the copies
    of newer ones lost) and names a snapshot overwritten since: the state topic's newest
    manifest of a is read and its snapshot taken instead of rebuilding partition 1 (a
    review). An older manifest that does not hold the partition is not tried."""
    older = {"g/a": {"topic": "transactions", "offsets": {"0": 4, "1": 4}, "written_at": 1.0}}
    scans: list[Any] = []
    with caplog.at_level("INFO"):
        r, logs, fetched = _taking_over(
            tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, index=older,
            scans=scans, gone=lambda m: m["written_at"] == 1.0,
        )  # fmt: skip
    assert scans == ["state.index", None] and fetched == ["g/a"]
    assert 'offsets="{1: 5}" bytes=' in caplog.text and 'manifest_from="state"' in caplog.text
    _decides_as_one_engine(tmp_path, r, logs)


def test_a_snapshot_that_cannot_be_split_is_not_taken_over(tmp_path, caplog, monkeypatch):
    """A snapshot of an instance without a state topic (its state does not record each event's
    partition): logged, and partition 1 rebuilt from the horizon."""
    with caplog.at_level("INFO"):
        _, _, fetched = _taking_over(tmp_path, monkeypatch, {"group_instance_id": "a"})
    assert fetched == ["g/a"]
    assert 'snapshots on the state topic: the snapshot of instance="g/a" cannot be used (' in (
        caplog.text
    )
    assert "ranges={1: (0, 10)}" in caplog.text


def test_a_partition_no_snapshot_holds_is_rebuilt(tmp_path, caplog, monkeypatch):
    """The newest snapshot of instance a was written before it got partition 1: partition 1
    is rebuilt from its horizon."""
    with caplog.at_level("INFO"):
        _, _, fetched = _taking_over(
            tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, {"0": 5}
        )
    assert fetched == []
    assert "partitions moved here [1] are not taken over" in caplog.text
    assert "no snapshot of another instance holds them" in caplog.text
    assert "ranges={1: (0, 10)}" in caplog.text


@pytest.mark.parametrize("offsets", [{"1": "5.0"}, {"1": None}, [5], {"one": 5}])
def test_a_malformed_manifest_is_no_snapshot(tmp_path, caplog, monkeypatch, offsets):
    """Manifests are not signed: offsets that are no partition-to-offset map (another release,
    a bug, a forgery) name no snapshot, and partition 1 is rebuilt (a review found fds run
    stopped by one, at every restart while it stayed the newest)."""
    with caplog.at_level("INFO"):
        _, _, fetched = _taking_over(
            tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, offsets
        )
    assert fetched == []
    assert "partitions moved here [1] are not taken over" in caplog.text
    assert "no snapshot of another instance holds them" in caplog.text


def test_a_partition_held_here_before_is_taken_over_its_entries_here_dropped(
    tmp_path, caplog, monkeypatch
):
    """Partition 1 was decided here up to offset 3 and given back (a startup's first
    assignment): instance a's snapshot holds it further along, so it is taken from there and
    this instance's own entries of it are dropped (kept, they counted twice); a chaos run
    found every such partition folded from where it was left instead, for ever."""
    with caplog.at_level("INFO"):
        r, logs, fetched = _taking_over(
            tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, left={1: (T, 3)},
            own={0: 10, 1: 3},
        )  # fmt: skip
    assert fetched == ["g/a"]
    assert "partitions [1] taken over from the snapshot" in caplog.text
    assert "ranges={1: (5, 10)}" in caplog.text
    _decides_as_one_engine(tmp_path, r, logs)


def test_an_empty_state_takes_every_partition_over(tmp_path, caplog, monkeypatch):
    """A new instance (a scale-out, a replacement under a new id) gets partitions 0 and 1 with
    an empty state: both are taken from instance a's snapshot, not rebuilt from the horizon,
    and it decides as one engine that decided both partitions all along."""
    with caplog.at_level("INFO"):
        r, logs, fetched = _taking_over(
            tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, own={}
        )
    assert fetched == ["g/a"]
    assert "partitions [0, 1] taken over from the snapshot" in caplog.text
    assert "ranges={0: (5, 10), 1: (5, 10)}" in caplog.text
    _decides_as_one_engine(tmp_path, r, logs)


class _Gate:
    """The model stage's gate interface (``gate_state``/``load_gate_state``) alone."""

    def __init__(self, state: Any = None) -> None:
        self.state, self.loaded = state, []

    def gate_state(self) -> Any:
        return self.state

    def load_gate_state(self, state: Any) -> None:
        self.loaded.append(state)


@pytest.mark.parametrize("empty", [True, False])
def test_an_empty_state_adopts_the_alert_budget_breaker_and_gate_of_its_donor(
    tmp_path, caplog, monkeypatch, empty
):
    """A new instance whose state is filled from instance a's snapshot takes a's alert budget
    (the scores it counted), its demotions and its model gate with it, as a restart of a from
    its own checkpoint would: before, they started cold (the model in shadow until the gate
    judged a window of fraud labels anew: days). An instance that held partitions before
    keeps its own."""
    gate = {"acting": True, "window": [[1.0, 0.0]], "frauds": 150}

    def prepare(r: Any) -> None:
        if r.s.group_instance_id == "a":
            rule = r.engine.rules.applied.rules[0].id
            r.engine.demoted.add(rule)
            r.engine._demoted_as[rule] = r.engine._rule_spec(rule)
        r.engine.model = _Gate(gate if r.s.group_instance_id == "a" else None)

    victim = {**TAKER, "group_instance_id": "a"}
    with caplog.at_level("INFO"):
        r, logs, _ = _taking_over(
            tmp_path, monkeypatch, victim, own={} if empty else None, prepare=prepare
        )
    adopted = 'the model gate are taken from the snapshot of instance="g/a"' in caplog.text
    budget = r.engine.policy.budget._total.sum()
    if empty:
        assert adopted
        assert r.engine.demoted == {r.engine.rules.applied.rules[0].id}
        assert budget == 10  # the scores a counted (it decided 5 records of each partition)
        assert r.engine.model.loaded == [gate]
    else:
        assert not adopted and not r.engine.demoted and r.engine.model.loaded == []
        assert budget == 10  # its own: the 10 records of partition 0 it decided
    r.engine.model = None
    _decides_as_one_engine(tmp_path, r, logs)


def test_an_empty_state_taking_part_of_an_instances_partitions_scales_its_budget(
    tmp_path, caplog, monkeypatch
):
    """The new instance gets partition 1 only of instance a's two: a's budget held the scores
    of both, and is taken scaled to half (unscaled, its threshold was set for twice the
    traffic: too few reviews here for up to a day, a review)."""
    victim = {**TAKER, "group_instance_id": "a"}
    with caplog.at_level("INFO"):
        r, _, _ = _taking_over(tmp_path, monkeypatch, victim, own={}, take=[1])
    assert "scaled to the 50% of its partitions taken" in caplog.text
    assert 2 <= r.engine.policy.budget._total.sum() <= 8  # ~5 of a's 10 (rounded at random)


def test_an_empty_state_partly_filled_from_snapshots_rebuilds_the_rest(
    tmp_path, caplog, monkeypatch
):
    """No snapshot holds partition 1: partition 0 is still taken over from instance a's, and
    partition 1 rebuilt from its horizon on its own, then merged (before, one partition no
    snapshot held sent every moved one back to its horizon: a review); the instance decides
    as one engine that decided both partitions all along."""
    with caplog.at_level("INFO"):
        r, logs, _ = _taking_over(
            tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, {"0": 5}, own={}
        )
    assert "partitions [0] taken over from the snapshot" in caplog.text
    assert "partitions moved here [1] are not taken over" in caplog.text
    assert "ranges={0: (5, 10), 1: (0, 10)}" in caplog.text
    _decides_as_one_engine(tmp_path, r, logs)


def test_an_empty_state_no_snapshot_fills_is_rebuilt_whole(tmp_path, caplog, monkeypatch):
    """No snapshot holds partition 0 or 1: the empty state is rebuilt whole (every partition,
    its last days through the whole engine), as without a state topic."""
    with caplog.at_level("INFO"):
        _taking_over(tmp_path, monkeypatch, {**TAKER, "group_instance_id": "a"}, {"7": 5}, own={})
    assert "rebuild of the partitions moved here" not in caplog.text
    assert "rebuild partitions=[0, 1]" in caplog.text


def test_a_partition_with_nothing_in_its_horizon_needs_no_snapshot(tmp_path, monkeypatch, caplog):
    """Partition 2 is idle (no record within the feature horizon: its range is empty); an empty
    instance taking 0, 1 and 2 still takes 0 and 1 over (a review found the idle one counted
    as holding no snapshot: then, every partition rebuilt)."""
    from kafka.structs import OffsetAndTimestamp

    from fds.streams import kafka

    p = [TopicPartition("transactions", i) for i in range(3)]
    logs = {
        tp: [_rec(tp.partition, i, T + 2 * i + tp.partition, f"c{tp.partition}{i % 3}")
             for i in range(20)]
        for tp in p[:2]
    }  # fmt: skip
    logs[p[2]] = [_rec(2, i, T - 200 * 86400 + i, "c2") for i in range(10)]
    victim = _runner(tmp_path / "a", logs, {}, **{**TAKER, "group_instance_id": "a"})
    _decide(victim.engine, [m for tp in p[:2] for m in logs[tp][:5]])
    victim.checkpointer.save(victim._state(), topic="transactions", offsets={0: 5, 1: 5})
    snapshot = victim.checkpointer.path.read_bytes()
    r = _runner(tmp_path / "b", logs, {}, **TAKER)
    r._consumer_factory().offsets_for_times = lambda times: {
        tp: None if tp.partition == 2 else OffsetAndTimestamp(0, 0, -1) for tp in times
    }
    manifests = {"g/a": {"topic": "transactions", "offsets": {"0": 5, "1": 5}}}
    monkeypatch.setattr(kafka.StateTopic, "scan", staticmethod(lambda *a, **k: manifests))
    monkeypatch.setattr(
        kafka.StateTopic, "fetch_foreign", lambda self, *a, **k: snapshot
    )  # fmt: skip
    with caplog.at_level("INFO"):
        r._bring_up_to_date(p)
    assert "partitions [0, 1] taken over from the snapshot" in caplog.text
    assert "ranges={0: (5, 10), 1: (5, 10), 2: (10, 10)}" in caplog.text


def test_a_takeover_that_would_make_an_own_partition_late_rebuilds_at_once(
    tmp_path, monkeypatch, caplog
):
    """Instance a's snapshot of partition 1 is 2 h ahead of this instance's partition 0, which
    has records to decide: merged, they would be late, so every partition is rebuilt in event
    time, judged before the moved partition is folded (the fold cannot move the event time
    back: it was wasted)."""
    from fds.streams import kafka

    p = [TopicPartition("transactions", i) for i in range(2)]
    logs = {
        p[0]: [_rec(0, i, T - 7200 + i, "c0") for i in range(20)],
        p[1]: [_rec(1, i, T + i, "c1") for i in range(20)],
    }
    victim = _runner(tmp_path / "a", logs, {}, **{**TAKER, "group_instance_id": "a"})
    _decide(victim.engine, logs[p[1]][:5])
    victim.checkpointer.save(victim._state(), topic="transactions", offsets={1: 5})
    snapshot = victim.checkpointer.path.read_bytes()
    r = _runner(tmp_path / "b", logs, {0: 10}, **TAKER)
    manifests = {"g/a": {"topic": "transactions", "offsets": {"1": 5}}}
    monkeypatch.setattr(kafka.StateTopic, "scan", staticmethod(lambda *a, **k: manifests))
    monkeypatch.setattr(kafka.StateTopic, "fetch_foreign", lambda self, *a, **k: snapshot)
    with caplog.at_level("INFO"):
        r._bring_up_to_date(p)
    assert "partitions [1] taken over from the snapshot" in caplog.text
    assert "partitions [0] have records to decide" in caplog.text
    assert "rebuild of the partitions moved here started" not in caplog.text
    assert "rebuild partitions=[0, 1]" in caplog.text
    assert not any(_late(r, logs[p[0]][10:]))


def _published(
    tmp_path: Any, monkeypatch: Any, decided: dict[str, dict[int, int]]
) -> tuple[list[Any], dict[Any, list[Record]]]:
    """Partitions 0..2, a record a minute each (the cards of a partition its own, merchant m1
    shared); instance ``g/<ident>`` decided ``decided[ident]`` (partition -> offset) and
    published that snapshot, found by the state topic's scan. Returns the partitions, logs."""
    from fds.streams import kafka

    p, logs = _logs(3, 60)
    snapshots, manifests = {}, {}
    for ident, upto in decided.items():
        victim = _runner(tmp_path / ident, logs, {}, **{**TAKER, "group_instance_id": ident})
        _decide(victim.engine, [m for tp in p if tp.partition in upto
                                for m in logs[tp][: upto[tp.partition]]])  # fmt: skip
        victim.checkpointer.save(victim._state(), topic="transactions", offsets=upto)
        snapshots[f"g/{ident}"] = victim.checkpointer.path.read_bytes()
        offsets = {str(k): v for k, v in upto.items()}
        manifests[f"g/{ident}"] = {"topic": "transactions", "offsets": offsets}
    monkeypatch.setattr(kafka.StateTopic, "scan", staticmethod(lambda *a, **k: manifests))
    monkeypatch.setattr(
        kafka.StateTopic, "fetch_foreign", lambda self, *a, **k: snapshots[self.ident]
    )  # fmt: skip
    return p, logs


def test_the_engine_state_is_taken_from_the_instance_that_gave_the_most_partitions(
    tmp_path, monkeypatch, caplog
):
    """A new instance takes partition 0 from a and partitions 1 and 2 from b: the alert budget,
    breaker and gate are b's (most partitions), not a's (first by name), its budget whole
    (b held just those two)."""
    p, logs = _published(tmp_path, monkeypatch, {"a": {0: 9}, "b": {1: 9, 2: 9}})
    r = _runner(tmp_path / "c", logs, {}, **{**TAKER, "group_instance_id": "c"})
    with caplog.at_level("INFO"):
        r._bring_up_to_date(p)
    assert 'the model gate are taken from the snapshot of instance="g/b"' in caplog.text
    assert "scaled to the 100% of its partitions taken" in caplog.text
    assert r.engine.policy.budget._total.sum() == 18  # b's: 9 records of each partition


def test_partitions_of_two_instances_decided_to_different_times_are_each_taken_over(
    tmp_path, monkeypatch, caplog
):
    """A new instance gets partitions 1 and 2 (a scale-out beyond two, or two instances died):
    instance a's snapshot holds 1 (and 0, not taken) decided to offset 9, instance b's holds 2
    decided to offset 1, 8 minutes of event time behind a's (more than the grace period). Each
    snapshot's cut is folded on its own from its offsets, then merged: every feature decided
    next is that of one engine that decided partitions 1 and 2 all along. (Folded together,
    b's records were late against a's event time; before, both were rebuilt from the horizon.)
    """
    p, logs = _published(tmp_path, monkeypatch, {"a": {0: 9, 1: 9}, "b": {2: 1}})
    r = _runner(tmp_path / "c", logs, {}, **{**TAKER, "group_instance_id": "c"})
    with caplog.at_level("INFO"):
        r._bring_up_to_date(p[1:])
    assert 'partitions [1] taken over from the snapshot of instance="g/a"' in caplog.text
    assert 'partitions [2] taken over from the snapshot of instance="g/b"' in caplog.text
    assert "ranges={1: (9, 10), 2: (1, 10)}" in caplog.text
    # the rest of the engine's state: of the one that gave the most (the first name on a tie)
    assert 'the model gate are taken from the snapshot of instance="g/a"' in caplog.text
    ref = _runner(tmp_path / "ref", {tp: logs[tp] for tp in p[1:]}, {1: 10, 2: 10})
    rest = [m for tp in p[1:] for m in logs[tp][10:]]
    got, want = _decide(r.engine, rest), _decide(ref.engine, rest)
    assert [d["features"] for d in got] == [d["features"] for d in want]
    assert not any("late" in d["flags"] for d in got)


def _left_by_a(
    tmp_path: Any, monkeypatch: Any, logs: dict[Any, list[Record]], upto: int, then: int
) -> Any:
    """Instance a decided partitions 0 and 1 to ``upto``, a rebalance moved 1 away, a decided 0
    on to ``then`` and wrote (and published) a checkpoint, which follows 0 alone, before
    another instance read the manifests (the scan finds it). Returns a's manifest."""
    from fds.streams import kafka
    from tests.streams.test_state_topic import Topic
    from tests.streams.test_state_topic import _manifest as manifest_of

    p0, p1 = sorted(logs, key=lambda tp: tp.partition)[:2]
    a = _runner(tmp_path / "a", logs, {}, **{**TAKER, "group_instance_id": "a"})
    _decide(a.engine, logs[p0][:upto] + logs[p1][:upto])
    a._positions = {0: upto, 1: upto}
    a._follow_only({0})  # (the rebalance)
    _decide(a.engine, logs[p0][upto:then])
    a._positions = {0: then}
    assert a.checkpoint(force=True)
    topic = Topic()
    kafka.StateTopic("state", "g/a").publish(
        topic, a.checkpointer.path.read_bytes(), **a.checkpointer.on_disk._asdict()
    )  # fmt: skip
    manifest = manifest_of(topic, "g/a")
    monkeypatch.setattr(kafka.StateTopic, "scan", staticmethod(lambda *_, **__: {"g/a": manifest}))
    monkeypatch.setattr(
        kafka.StateTopic, "fetch_foreign", lambda *_, **__: a.checkpointer.path.read_bytes()
    )  # fmt: skip
    return manifest


def _decides_as_one_engine_of(
    tmp_path: Any, r: Any, logs: dict[Any, list[Record]], parts: list[Any]
) -> None:
    """``r`` decides the records of ``parts`` past 10 as one engine that decided them all along."""
    ref = _runner(tmp_path / "ref", {tp: logs[tp] for tp in parts}, dict.fromkeys(
        (tp.partition for tp in parts), 10))  # fmt: skip
    rest = [m for tp in parts for m in logs[tp][10:]]
    got, want = _decide(r.engine, rest), _decide(ref.engine, rest)
    assert [d["features"] for d in got] == [d["features"] for d in want]


def test_a_partition_taken_from_a_snapshot_written_after_its_owner_left_it(
    tmp_path, monkeypatch, caplog
):
    """Instance a left partition 1 at its committed offset 10 and wrote a checkpoint after
    that, which follows 0 alone, before the new instance read the manifests. Its manifest names
    partition 1 as left at 10, so the new instance takes 1 from it and decides as one engine
    that decided 1 all along. (Before, the manifest named partition 0 alone: partition 1 was
    rebuilt from the input's horizon, a race a broker test hit.)"""
    p, logs = _logs(2, 2)
    manifest = _left_by_a(tmp_path, monkeypatch, logs, 10, 15)
    assert (manifest["offsets"], manifest["left"]) == ({"0": 15}, {"1": 10})
    r = _runner(tmp_path / "c", logs, {}, **{**TAKER, "group_instance_id": "c"})
    with caplog.at_level("INFO"):
        r._bring_up_to_date([p[1]])
    assert 'partitions [1] taken over from the snapshot of instance="g/a" offsets="{1: 10}"' in (
        caplog.text
    )
    assert 'left_there="[1]"' in caplog.text
    assert "scaled to the 50% of its partitions taken" in caplog.text  # (a held 0 and 1)
    _decides_as_one_engine_of(tmp_path, r, logs, [p[1]])


def test_a_partition_left_below_its_committed_offset_is_not_taken_from_that_snapshot(
    tmp_path, monkeypatch, caplog
):
    """a left partition 1 at 5; another instance decided it on to the committed 10 and went
    away without publishing; a's event time ran past the grace period beyond 1's records 5..7.
    Folded from 5 on a's cut (a's event time), they were late there and never folded: wrong
    features (a review). Partition 1 is rebuilt from the input instead."""
    p = [TopicPartition("transactions", i) for i in range(2)]
    logs = {
        p[0]: [_rec(0, i, T + 60 * i, f"c0{i % 3}") for i in range(20)],  # to T + 1140
        p[1]: [_rec(1, i, T + 100 * i + 1, f"c1{i % 3}") for i in range(20)],
    }
    assert _left_by_a(tmp_path, monkeypatch, logs, 5, 20)["left"] == {"1": 5}
    r = _runner(tmp_path / "c", logs, {}, **{**TAKER, "group_instance_id": "c"})
    with caplog.at_level("INFO"):
        r._bring_up_to_date([p[1]])
    assert "partitions moved here [1] are not taken over from snapshots" in caplog.text
    assert "ranges={1: (0, 10)}" in caplog.text
    _decides_as_one_engine_of(tmp_path, r, logs, [p[1]])


def test_a_left_partition_is_not_taken_from_a_snapshot_whose_event_time_ran_on(
    tmp_path, monkeypatch, caplog
):
    """a left partition 1 at its committed 10, then decided 15 minutes of event time more on
    partition 0 before its checkpoint; taken from that snapshot, 1's next records (and those
    of partition 2, held here) were late against its event time, and every partition was
    rebuilt (a review). Partition 1 is rebuilt alone instead, 2 kept."""
    p = [TopicPartition("transactions", i) for i in range(3)]
    logs = {tp: [_rec(tp.partition, i, T + 100 * i + tp.partition, f"c{tp.partition}{i % 3}")
                 for i in range(20)] for tp in p}  # fmt: skip
    assert _left_by_a(tmp_path, monkeypatch, logs, 10, 20)["left"] == {"1": 10}
    c = _runner(tmp_path / "c", logs, {2: 10}, **{**TAKER, "group_instance_id": "c"})
    with caplog.at_level("INFO"):
        c._bring_up_to_date([p[1], p[2]])
    assert "which had left them, went on to an event time" in caplog.text
    assert "rebuild of the partitions moved here" in caplog.text
    assert "rebuild partitions=" not in caplog.text  # (not every partition)
    _decides_as_one_engine_of(tmp_path, c, logs, p[1:])


@pytest.mark.parametrize("exists", [True, False])
def test_manifests_go_to_the_index_when_it_exists(tmp_path, caplog, exists):
    """The state topic's index is found at the start (its manifests copied there); without it
    fds run says what a takeover then costs and how to create it."""
    r = _runner(tmp_path, {TopicPartition("transactions", 0): []}, {}, **TAKER)
    r.consumer.partitions_for_topic = lambda topic: {0} if exists else set()
    with caplog.at_level("WARNING"):
        r._find_state_index()
    assert r.state_topic.index == ("state.index" if exists else None)
    said = 'state topic index="state.index" does not exist: a takeover of partitions moved here'
    assert (said in caplog.text) != exists


def test_an_index_missing_at_the_start_is_looked_for_and_used_once_found(tmp_path, caplog):
    """No index at the start (created later, or a copy to it failed since): fds run looks for
    it now and then, off the decision loop, and once found copies its newest manifest there
    and every one after (before: only after a restart; a takeover meanwhile read the whole
    state topic)."""
    from tests.streams.test_state_topic import Topic

    r = _runner(tmp_path, {TopicPartition("transactions", 0): []}, {}, **TAKER)
    r.consumer.partitions_for_topic = lambda topic: set()
    r._find_state_index()
    assert r.state_topic.index is None
    topic = Topic(indexed=False)

    class Metadata:
        def partitions_for_topic(self, name: str) -> set[int]:
            return set(topic.partitions_for(name))

        def close(self) -> None:
            pass

    class Producer:  # the index's (a new one each time it is found, the old one closed)
        closed = 0

        def send(self, *args: Any, **kwargs: Any) -> Any:
            return topic.send(*args, **kwargs)

        def close(self, timeout: float | None = None) -> None:
            Producer.closed += 1

    made: list[Any] = []

    def make(**_: Any) -> Any:  # the state topic's producer first, then the index's
        made.append(topic if not made else Producer())
        return made[-1]

    r._consumer_factory = lambda **_: Metadata()
    r._producer_factory = make
    r.state_topic._last = b'{"slot": "a"}'  # (the newest manifest sent)

    def look() -> float:  # when it is due: looked for, then (next batch) used if found
        r._index_at = 0.0
        t = time.monotonic()
        r._publish_state()
        r._index_probe.join(5)
        r._publish_state()
        return r._index_at - t  # (when it is looked for next)

    assert 59 < look() <= 61 and r.state_topic.index is None  # missing: every minute
    topic.index = []  # created
    with caplog.at_level("INFO"):
        look()
    assert r.state_topic.index == "state.index"
    assert [rec.value for rec in topic.index] == [b'{"slot": "a"}']
    assert 'index="state.index" found: manifests are copied to it' in caplog.text
    # found, should copies fail again: looked for after 1, then 2, 4 ... minutes
    assert r._index_wait == 120.0
    first = r._index_producer
    r.state_topic._index_failed(RuntimeError("deleted"), r.state_topic._index_gen)
    assert r.state_topic.index is None
    look()  # found again (created again): its copies go through a new producer
    assert r.state_topic.index == "state.index" and r._index_producer is not first
    r._index_probe.join(5)
    for t in threading.enumerate():  # (the old one closed off the loop)
        if t.name == "fds-index-close":
            t.join(5)
    assert Producer.closed == 1 and r._index_wait == 240.0


def test_a_group_budget_is_the_share_of_the_partitions_assigned(tmp_path, caplog):
    """``alert_budget_scope: group`` (the default rules' budget, 200 a day): an instance given 1
    of the input's 4 partitions holds a budget of 50; given 3 after a rebalance, 150."""
    logs = {
        TopicPartition("transactions", p): [_rec(p, i, T + i, f"c{p}") for i in range(10)]
        for p in range(4)
    }
    r = _runner(tmp_path, logs, {})
    r.engine.policy.budget_scope = "group"
    r.consumer.partitions_for_topic = lambda topic: set(range(4))
    for parts, want in (({0}, 50), ({0, 1, 3}, 150)):
        r._unresolved = set(parts)
        with caplog.at_level("INFO"):
            r._restore_assigned()
        assert r.engine.policy.budget.budget == want
    assert 'holds 3 of 4 partitions, its share budget_per_day="150"' in caplog.text

    def no_metadata(topic: str) -> set[int]:
        raise KafkaTimeoutError("no metadata")

    r.consumer.partitions_for_topic = no_metadata  # (a broker away: kept, said, no crash)
    r._unresolved = {0}
    r._restore_assigned()
    assert r.engine.policy.budget.budget == 150 and "share not updated" in caplog.text


def test_a_restored_checkpoint_still_says_the_partitions_its_state_left(tmp_path, monkeypatch):
    """A checkpoint loaded at a (re)start, should it be published next, names the partitions
    its state left, as when it was written (its manifest lacked them: a review)."""
    _, logs = _logs(2, 2)
    _left_by_a(tmp_path, monkeypatch, logs, 10, 15)
    again = _runner(tmp_path / "a", logs, {}, **{**TAKER, "group_instance_id": "a"})
    again._restore()
    assert again.checkpointer.on_disk.left == {1: 10}


def test_a_state_that_follows_no_partition_takes_the_assigned_ones_over(
    tmp_path, monkeypatch, caplog
):
    """A QA pass: an instance restarted under its own id, its checkpoint following partition 0
    (another instance's now), was assigned partition 1 and rebuilt it from the input's horizon
    (hours at 90 days), without a word, while instance a's snapshot held it. Its state is
    emptied, and 1 taken over from that snapshot."""
    p, logs = _published(tmp_path, monkeypatch, {"a": {1: 10}})
    c = _runner(tmp_path / "c", logs, {0: 10}, **{**TAKER, "group_instance_id": "c"})
    c._follow_only({1})  # (assigned 1 alone: 0 is left)
    with caplog.at_level("INFO"):
        c._bring_up_to_date([p[1]])
    assert "the state follows none of the partitions assigned" in caplog.text
    assert 'partitions [1] taken over from the snapshot of instance="g/a"' in caplog.text
    assert "rebuild partitions=" not in caplog.text
    _decides_as_one_engine_of(tmp_path, c, logs, [p[1]])


def test_a_gone_index_copy_is_replaced_by_a_newer_manifest_naming_the_partition_left(
    tmp_path, monkeypatch, caplog
):
    """The index's copy of a's manifest names a snapshot gone since; the state topic's newest
    manifest of a names partition 1 as left at its committed offset: taken from it (the retry
    read only the partitions a follows, and 1 was rebuilt: a review)."""
    from fds.streams import kafka

    p, logs = _logs(2, 2)
    manifest = _left_by_a(tmp_path, monkeypatch, logs, 10, 15)
    gone = {"topic": "transactions", "offsets": {"0": 10, "1": 10}, "written_at": 1.0}
    monkeypatch.setattr(
        kafka.StateTopic, "scan",
        staticmethod(lambda *_, index=None, **__: {"g/a": gone if index else manifest}),
    )  # fmt: skip
    fetch = kafka.StateTopic.fetch_foreign
    monkeypatch.setattr(
        kafka.StateTopic, "fetch_foreign",
        lambda self, make, *, manifest=None, **k: None if manifest is gone else fetch(self, make),
    )  # fmt: skip
    r = _runner(tmp_path / "c", logs, {}, **{**TAKER, "group_instance_id": "c"})
    r.state_topic.index = "state.index"
    with caplog.at_level("INFO"):
        r._bring_up_to_date([p[1]])
    assert 'partitions [1] taken over from the snapshot of instance="g/a" offsets="{1: 10}"' in (
        caplog.text
    )
    _decides_as_one_engine_of(tmp_path, r, logs, [p[1]])


def test_a_state_emptied_to_take_partitions_over_keeps_its_own_model_gate(
    tmp_path, caplog, monkeypatch
):
    """A review: an instance whose state followed none of the partitions now assigned (its
    own was given away: it held 0, it gets 1) took the donor's model gate with its budget, and
    its model went back to shadow. It keeps its own gate; the budget and breaker are taken."""

    def prepare(r: Any) -> None:
        mine = r.s.group_instance_id == "b"
        r.engine.model = _Gate({"acting": mine, "who": r.s.group_instance_id})

    victim = {**TAKER, "group_instance_id": "a"}
    with caplog.at_level("INFO"):
        r, _, _ = _taking_over(
            tmp_path, monkeypatch, victim, own={0: 10}, left={0: (T, 10)}, take=[1],
            prepare=prepare,
        )  # fmt: skip
    assert "the state follows none of the partitions assigned" in caplog.text
    assert "its own model gate kept" in caplog.text
    assert r.engine.model.loaded == []
    assert r.engine.policy.budget._total.sum() > 0  # (a's, scaled)


def test_a_partition_without_offset_under_latest_is_not_a_record_to_decide(
    tmp_path, monkeypatch, caplog
):
    """A review: with auto_offset_reset latest, partition 2 (no committed offset: its log is
    not decided) was peeked from its start, an hour behind, so the partition a snapshot's
    instance left was refused and every partition rebuilt. It is no record to decide."""
    p, logs = _logs(2, 2)
    p2 = TopicPartition("transactions", 2)
    logs[p2] = [_rec(2, i, T - 3600 + i, f"c2{i % 3}") for i in range(20)]
    _left_by_a(tmp_path, monkeypatch, logs, 10, 15)
    r = _runner(tmp_path / "c", logs, {}, **{**TAKER, "group_instance_id": "c"},
                auto_offset_reset="latest")  # fmt: skip
    committed = r.consumer.committed
    monkeypatch.setattr(
        r.consumer, "committed", lambda tp, **k: None if tp == p2 else committed(tp, **k)
    )  # fmt: skip
    with caplog.at_level("INFO"):
        r._bring_up_to_date([p[1], p2])
    assert 'partitions [1] taken over from the snapshot of instance="g/a"' in caplog.text
    assert "rebuild partitions=" not in caplog.text
