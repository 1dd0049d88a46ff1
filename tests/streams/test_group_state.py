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
