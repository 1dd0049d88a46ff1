"""State and decisions of one consumer group are that group's: two deployments on one cluster
(a QA pass) must not restore each other's checkpoint, count each other's decisions as their
own, or share a state topic key. In-memory broker (tests/streams/fakebroker.py); against the
real one: tests/integration/test_kafka_state.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fds.errors import ConfigError
from fds.streams.checkpoint import Checkpointer
from tests.streams.fakebroker import Broker
from tests.streams.test_refold import P0, P1, logs, runner


def _run(broker: Broker, state: Any, **settings: Any) -> Any:
    broker.polls = 0
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker, state, **settings)
    r.run(max_idle_s=0.3)
    return r


def test_a_checkpoint_records_its_group(tmp_path):
    _run(Broker(logs(n0=5, n1=5), committed={}), tmp_path, group="eu")
    got = Checkpointer(tmp_path).load()
    assert got is not None and (got.group, got.topic) == ("eu", "transactions")


def test_a_checkpoint_of_another_group_is_refused_at_the_start(tmp_path):
    """A new group given another group's state dir resumed from the offsets that state covers:
    it took every record before them as decided and decided none of them."""
    broker = Broker(logs(n0=5, n1=5), committed={})
    _run(broker, tmp_path, group="eu")
    before = (tmp_path / "engine.ckpt").read_bytes()
    out = len(broker.out)
    with pytest.raises(ConfigError) as refused:
        _run(broker, tmp_path, group="us")
    said = str(refused.value)
    assert "state of consumer group 'eu', and this is group 'us'" in said, said
    assert str(tmp_path / "engine.ckpt") in said
    assert "its own state dir (--state-dir" in said and "--adopt-state-of eu" in said, said
    # nothing decided, and the checkpoint left as it was (not put aside as unusable)
    assert len(broker.out) == out and (tmp_path / "engine.ckpt").read_bytes() == before


def test_a_group_adopts_the_state_it_names_and_no_other(tmp_path, caplog):
    broker = Broker(logs(n0=5, n1=5), committed={})
    _run(broker, tmp_path, group="eu")
    with pytest.raises(ConfigError, match="--adopt-state-of names group 'asia', not it"):
        _run(broker, tmp_path, group="us", adopt_state_of="asia")
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        r = _run(broker, tmp_path, group="us", adopt_state_of="eu")
    assert 'adopting the state of group="eu" as group="us"' in caplog.text
    assert "restored checkpoint" in caplog.text
    assert r._positions == {0: 5, 1: 5}
    got = Checkpointer(tmp_path).load()
    assert got is not None and got.group == "us"  # from now on the state is the new group's


def test_a_checkpoint_of_an_earlier_release_without_a_group_still_restores(tmp_path, caplog):
    broker = Broker(logs(n0=5, n1=5), committed={})
    _run(broker, tmp_path, group="eu")
    ck = Checkpointer(tmp_path)
    got = ck.load()
    assert got is not None
    ck.save(got.state, topic=got.topic, offsets=got.offsets)  # as an earlier release wrote it
    assert Checkpointer(tmp_path).load().group is None  # type: ignore[union-attr]
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        r = _run(broker, tmp_path, group="us")
    assert "restored checkpoint" in caplog.text and r._positions == {0: 5, 1: 5}


@pytest.mark.parametrize("made_by", ["this group", "another group", "an earlier release"])
def test_only_this_group_s_decisions_past_the_commit_count_as_made(tmp_path, caplog, made_by):
    """Two groups writing one decisions topic: at a restart, the decisions past the committed
    offsets that another group made were taken as this group's, and their records folded,
    never decided by it (a QA pass). Each decision names its group (header ``fds-group``); a
    decision without one (an earlier release's) counts as before."""
    from collections import Counter

    from tests.streams.test_refold import _crashed_after_deciding_the_later_ones

    expected, broker, _ = _crashed_after_deciding_the_later_ones(tmp_path)
    out = [tp for tp in broker.logs if tp.topic == "decisions"]
    assert all(r.headers == [("fds-group", b"fds")] for tp in out for r in broker.logs[tp])
    header = {"another group": [("fds-group", b"us")], "an earlier release": []}.get(made_by)
    if header is not None:  # what is past the marks (fds:decisions@10): the later decisions
        for tp in out:
            broker.logs[tp] = [r._replace(headers=header) if r.offset >= 10 else r
                               for r in broker.logs[tp]]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        r = _run(broker, tmp_path / "at-crash")
    ids = Counter(d["tx_id"] for d in broker.out)
    assert set(ids) == set(expected)
    if made_by == "another group":
        assert r.stats.found_decided == 0 and sum(ids.values()) == 40  # decided by this one
        assert "holds decisions of other groups past this group's committed offsets (10 of " \
            "group 'us')" in caplog.text  # fmt: skip
    else:
        assert r.stats.found_decided == 10 and sum(ids.values()) == 30


def test_state_topic_keys_of_ids_with_a_slash_name_one_group_and_instance(tmp_path):
    """Group ``a/b``'s instance ``c`` and group ``a``'s instance ``b/c`` published under one
    key, ``a/b/c``: each restored the other's snapshot (a QA pass). Each id is percent-encoded
    in the key, as in the state dir; ids without ``/`` or ``%`` keep their key."""
    from fds.streams.state_topic import StateTopic
    from tests.streams.test_state_topic import Topic

    topic = Topic(n=3)
    mine: dict[str, Any] = {}
    for n, (group, instance) in enumerate((("a/b", "c"), ("a", "b/c"), ("fds", "i0"))):
        r = runner(Broker(logs(), {}), tmp_path / str(n), group=group,
                   group_instance_id=instance, state_topic="state")  # fmt: skip
        data = f"the state of {group}'s {instance}".encode()
        r.state_topic.publish(topic, data, topic="transactions", offsets={0: 1})
        mine[r.state_topic.ident] = data
    assert sorted(mine) == ["a%2Fb/c", "a/b%2Fc", "fds/i0"]
    for ident, data in mine.items():
        assert StateTopic("state", ident).fetch_foreign(topic.reader) == data
    # a takeover in group "a" finds its own instances only
    assert list(StateTopic.scan("state", topic.reader, "a/") or {}) == ["a/b%2Fc"]


def test_a_snapshot_of_another_group_on_the_state_topic_is_refused_and_not_kept(tmp_path):
    """A snapshot under this instance's key written by another group (ids that spelt one key
    before they were encoded): refused, naming the topic and key, and not left in the state
    dir as the checkpoint (each later start refused it again there)."""
    from tests.streams.test_state_topic import Topic

    _run(Broker(logs(n0=5, n1=5), committed={}), tmp_path / "eu", group="eu")
    topic = Topic(n=3)
    r = runner(Broker(logs(), {}), tmp_path / "us", group="us", group_instance_id="i0",
               state_topic="state")  # fmt: skip
    r.state_topic.publish(topic, (tmp_path / "eu" / "engine.ckpt").read_bytes())
    r._state_reader = topic.reader  # type: ignore[method-assign]  # (the topic, in memory)
    with pytest.raises(ConfigError) as refused:
        r._restore()
    said = "snapshot from state topic 'state' (key 'us/i0') is the state of consumer group 'eu'"
    assert said in str(refused.value), refused.value
    assert not (tmp_path / "us" / "engine.ckpt").exists()


def _run_group_eu(broker: Any, tmp_path: Any, admin: Any) -> None:
    """A runner of group ``eu`` over ``broker`` (both partitions assigned at its first poll),
    with ``admin`` as its admin client, run until idle."""
    from fds.streams.kafka import KafkaSettings, Runner
    from tests.streams.fakebroker import Group, Producer, Reader
    from tests.streams.test_refold import engine

    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    group = Group(broker)
    Runner(
        KafkaSettings(checkpoint_in_background=False, align_wait_s=0, group="eu"), engine(),
        consumer_factory=lambda **cfg: group if cfg.get("group_id") else Reader(broker),
        producer_factory=lambda **cfg: Producer(broker, **cfg),
        admin_factory=lambda **cfg: admin(broker, **cfg), checkpointer=Checkpointer(tmp_path),
    ).run(max_idle_s=0.3)  # fmt: skip


def test_a_group_with_offsets_of_another_input_topic_is_warned_about(tmp_path, caplog):
    """One group given two input topics (restarted with another, or another process of it
    reading another) went on without a word (a QA pass): its decisions partitions get two
    writers. The group's committed topics are listed at the start."""
    from kafka.structs import TopicPartition

    from tests.streams.fakebroker import Admin

    broker = Broker(logs(n0=5, n1=5), committed={})
    broker.elsewhere = {TopicPartition("payments", 0): 7}
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        _run_group_eu(broker, tmp_path, Admin)
    said = (
        'group="eu" reads input topic "transactions", and has committed offsets of \'payments\' '
        "too: a group reads one input topic"
    )
    assert said in caplog.text, caplog.text
    assert "give each its own --group" in caplog.text and "--topic payments" in caplog.text
    assert len(broker.out) == 10  # a warning: it decides


@pytest.mark.parametrize("error", ["CoordinatorNotAvailableError", "GroupAuthorizationFailedError"])
def test_a_new_group_s_offsets_that_cannot_be_listed_are_not_said_as_an_error(
    tmp_path, caplog, error
):
    """A README walk: every first start of a group said at INFO "... was not checked:
    CoordinatorNotAvailableError" (a group the broker has not seen has nothing committed);
    an ACL refusing the listing is still said."""
    import kafka.errors

    from tests.streams.fakebroker import Admin

    class Unlisted(Admin):
        def list_group_offsets(self, *a, **kw):
            raise getattr(kafka.errors, error)()

    broker = Broker(logs(n0=2, n1=2), committed={})
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        _run_group_eu(broker, tmp_path, Unlisted)
    said = "which topics group 'eu' has committed offsets of was not checked" in caplog.text
    assert said is (error != "CoordinatorNotAvailableError")
    assert len(broker.out) == 4


def test_a_checkpoint_of_another_input_topic_is_said_to_be_one_and_the_state_rebuilt(
    tmp_path, caplog
):
    broker = Broker(logs(n0=5, n1=5), committed={})
    _run(broker, tmp_path, group="eu")
    ck = Checkpointer(tmp_path)
    got = ck.load()
    assert got is not None
    ck.save(got.state, topic="payments", offsets=got.offsets, group="eu")
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        _run(broker, tmp_path, group="eu")
    assert (
        "checkpoint is the state of input topic 'payments', and group 'eu' reads "
        "'transactions': a group reads one input topic"
    ) in caplog.text, caplog.text
    assert (tmp_path / "engine.ckpt.bad").exists()


def test_a_new_group_stopped_before_its_first_commit_landed_decides_nothing_twice(tmp_path):
    """A new group killed before its first batch's commit (asynchronous) landed: the restart
    found no mark to look for its decisions from, and decided its records again (duplicates
    differing in decided_at: a CI run of the kill -9 test). A new group commits where its
    partitions start, with the decisions topic's end as their mark."""
    broker = Broker(logs(n0=5, n1=5), committed={})
    commit = broker.commit
    broker.commit = lambda offsets: None if broker.commit_log else commit(offsets)  # the first
    _run(broker, tmp_path / "first")  # ... then killed: no later commit landed, no checkpoint
    assert broker.committed == {P0: 0, P1: 0} and len(broker.out) == 10
    assert all(m == "fds:decisions@0" for m in broker.metadata.values())
    broker.commit = commit
    r = _run(broker, tmp_path / "restart")
    assert r.stats.found_decided == 10 and len(broker.out) == 10  # found, not decided again
    assert broker.committed == {P0: 5, P1: 5}


def test_a_new_group_s_start_not_known_in_time_is_said_and_not_committed(
    tmp_path, caplog, monkeypatch
):
    """kafka-python's ``position`` answers None when the reset does not finish in time: that
    start is not committed (an offset None), the run goes on as before the start commits."""
    from fds.streams.kafka import Runner

    monkeypatch.setattr(Runner, "_next_offset", lambda self, tp, timeout_ms: None)
    broker = Broker(logs(n0=5, n1=5), committed={})
    with caplog.at_level(logging.WARNING, logger="fds.streams.kafka"):
        _run(broker, tmp_path)
    assert "where partitions [0, 1] start was not committed: no position of partitions [0, 1]" \
        in caplog.text  # fmt: skip
    assert broker.commit_log[0][1] > 0 and len(broker.out) == 10  # the batches' commits only


def test_a_new_group_killed_before_its_first_checkpoint_does_not_rebuild_at_the_restart(
    tmp_path, caplog
):
    """A QA pass: the start commit left the group's offsets committed and the state dir
    without a checkpoint covering them until the first one was due; a restart then saw
    partitions the state did not follow and rebuilt the whole feature horizon (20,000 records
    for `latest`). The start is checkpointed with its commit."""
    from tests.streams.test_refold import _Crash

    broker = Broker(logs(n0=5, n1=5), committed={})
    commit = broker.commit

    def killed_at_the_second(offsets: dict[Any, Any]) -> None:  # (the first is the start's)
        if broker.commit_log:
            raise _Crash
        commit(offsets)

    broker.commit = killed_at_the_second  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        _run(broker, tmp_path)
    made = len(broker.out)
    assert broker.committed == {P0: 0, P1: 0} and made > 0
    broker.commit = commit  # type: ignore[method-assign]
    caplog.clear()  # (the first run's lines, when an earlier test left the logger at INFO)
    with caplog.at_level(logging.INFO, logger="fds.streams.kafka"):
        r = _run(broker, tmp_path)
    assert "restored checkpoint" in caplog.text and "rebuild" not in caplog.text
    assert r.stats.found_decided == made and len(broker.out) == 10


def test_a_rename_without_a_state_dir_that_cannot_read_the_old_offsets_commits_nothing(
    tmp_path, monkeypatch
):
    """A review: the takeover's failure (the old group's offsets unreadable) was swallowed,
    and the start commit then made the new group start from auto_offset_reset for good. It
    ends the run (exit 1; a restart tries again), nothing committed."""
    from fds.streams.kafka import BrokerUnavailable, Runner

    def unreadable(self: Any, tps: Any) -> Any:
        raise BrokerUnavailable("reading the committed offsets of group 'eu' failed for 1 s")

    monkeypatch.setattr(Runner, "_adopted_offsets", unreadable)
    broker = Broker(logs(n0=5, n1=5), committed={})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker, tmp_path, group="us", adopt_state_of="eu")
    r.checkpointer = None  # (no state dir)
    with pytest.raises(BrokerUnavailable):
        r.run(max_idle_s=0.3)
    assert broker.committed == {} and broker.out == []
