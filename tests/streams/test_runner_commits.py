"""The at-least-once commit discipline of ``fds run`` (fds.streams.kafka.Runner): a batch's input
offsets are committed only once every send of it is acknowledged, batches in order, with at
most ``max_unacked_batches`` awaiting acknowledgement. In-memory producer and consumer that
implement the part of kafka-python's clients the loop uses; the broker-level behaviour (kill -9,
SIGTERM) is tested against the real broker in tests/integration/test_kafka_run.py."""

from __future__ import annotations

import math
import time
from collections import namedtuple
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp, TopicPartition

from fds.engine import Engine
from fds.errors import ConfigError, FdsError
from fds.schema import parse_transaction
from fds.streams.align import Aligner
from fds.streams.checkpoint import Checkpointer
from fds.streams.kafka import KafkaSettings, Runner, _event_time
from tests.streams.test_label_feed import plan as merchant_plan

Record = namedtuple("Record", "topic partition offset timestamp key value")
TP = TopicPartition("transactions", 0)


class Future:
    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None

    def failed(self) -> bool:
        return self.exception is not None

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def get(self, timeout: float | None = None) -> None:
        """Waited for: the broker answers (kafka-python's blocks until it does)."""
        self.waited = True
        self.is_done = True
        if self.exception is not None:
            raise self.exception


class Producer:
    """Sends stay unacknowledged until :meth:`ack` or ``flush``."""

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.flushes = 0

    def send(self, topic: str, **_: Any) -> Future:
        self.futures.append(Future())
        self.futures[-1].value = SimpleNamespace(offset=len(self.futures) - 1)  # RecordMetadata
        return self.futures[-1]

    def ack(self, error: BaseException | None = None) -> None:
        for f in self.futures:
            f.is_done = True
            f.exception = f.exception or error

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        self.ack()

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def close(self, timeout: float | None = None) -> None:
        pass


class Consumer:
    def __init__(self) -> None:
        self.async_commits: list[int] = []
        self.commits: list[int] = []

    def commit_async(self, offsets: dict[Any, Any]) -> None:
        self.async_commits.append(offsets[TP].offset)

    def commit(self, offsets: dict[Any, Any], timeout_ms: int | None = None) -> None:
        self.commits.append(offsets[TP].offset)

    def highwater(self, tp: Any) -> None:
        return None

    def assignment(self) -> set[Any]:
        return {TP}

    def committed(self, tp: Any, timeout_ms: Any = None, metadata: bool = False) -> Any:
        return 0  # (the group committed at the start: nothing to warn about)

    def end_offsets(self, tps: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)  # (the broker answers: an idle loop may end)


def make_runner(**settings: Any) -> Runner:
    runner = Runner(KafkaSettings(**settings), Engine())
    runner.consumer, runner.producer = Consumer(), Producer()
    return runner


def batch(start: int, n: int = 3) -> list[tuple[Any, Any, Any]]:
    out = []
    for i in range(start, start + n):
        tx = parse_transaction(
            {"tx_id": f"t{i}", "ts": 1_700_000_000 + i, "card_id": "c1", "amount": 5.0}
        )
        out.append((TP, Record("transactions", 0, i, (1_700_000_000 + i) * 1000, b"c1", b"{}"), tx))
    return out


def test_offsets_move_only_past_acknowledged_batches_in_order():
    from fds.metrics import Metrics

    r = make_runner(max_unacked_batches=2, commit_interval_ms=0)
    r.metrics = Metrics()
    c, p = r.consumer, r.producer
    r._process(batch(0))
    assert c.async_commits == [] and c.commits == []  # nothing acknowledged yet
    p.ack()
    r._process(batch(3))  # batch 1 acknowledged: committed; batch 2 not yet
    assert c.async_commits == [3]
    r._process(batch(6))
    assert c.async_commits == [3] and p.flushes == 0  # two batches await: within the bound
    r._process(batch(9))  # a third would exceed max_unacked_batches: wait for the oldest only
    oldest, newer = p.futures[3:6], p.futures[6:]
    assert all(getattr(f, "waited", False) for f in oldest)
    assert not any(f.is_done for f in newer)  # still in flight: no flush
    assert p.flushes == 0 and c.commits == [] and c.async_commits == [3, 6]
    assert len(r._unacked) == 2
    p.ack()
    r._settle(wait=True)  # a checkpoint, an idle input or a stop: flush, blocking commit
    assert p.flushes == 1 and c.commits == [12]
    assert r._positions == {0: 12} and not r._unacked
    # the blocking commit is timed (an asynchronous one's answer is read in a later poll)
    assert r.metrics.registry.get_sample_value("fds_commit_duration_seconds_count") == 1


def test_acknowledged_offsets_are_committed_at_most_once_per_commit_interval(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("fds.streams.kafka.time.monotonic", lambda: now[0])
    r = make_runner(max_unacked_batches=5, commit_interval_ms=100)
    c, p = r.consumer, r.producer
    r._process(batch(0))
    p.ack()
    r._process(batch(3))  # batch 1 acknowledged: the first commit goes at once
    assert c.async_commits == [3]
    p.ack()
    r._process(batch(6))  # batch 2 acknowledged within the interval: held
    p.ack()
    now[0] += 0.099
    r._process(batch(9))
    assert c.async_commits == [3]
    now[0] += 0.001
    r._process(batch(12))  # the interval is over: every offset acknowledged since, in one
    assert c.async_commits == [3, 9]
    now[0] += 0.05
    p.ack()
    r._settle(wait=True)  # a drain commits everything at once, whatever the interval
    assert c.commits == [15] and r._positions == {0: 15}


@pytest.mark.parametrize("reset", ["drain", "abandon"])
def test_offsets_held_for_the_commit_interval_are_not_committed_after_a_drain_or_a_reset(
    monkeypatch, reset
):
    """What the interval holds back is committed by a drain, or dropped with the state
    (``_abandon``: an eviction, partitions lost): never sent later, by then perhaps for a
    partition this instance no longer owns."""
    now = [1000.0]
    monkeypatch.setattr("fds.streams.kafka.time.monotonic", lambda: now[0])
    r = make_runner(max_unacked_batches=5, commit_interval_ms=100)
    c, p = r.consumer, r.producer
    named: list[set[int]] = []
    c.commit_async = lambda offsets: named.append({tp.partition for tp in offsets})
    tp1 = TopicPartition("transactions", 1)
    on_p1 = [(tp1, rec._replace(partition=1), tx) for _, rec, tx in batch(100)]
    r._process(batch(0))
    p.ack()
    r._process(batch(3))  # the first commit goes at once: partition 0
    p.ack()
    r._process(on_p1)  # partition 0's batch 3..5 acknowledged: held by the interval
    p.ack()
    r._process(batch(6))  # partition 1's batch acknowledged: held too
    assert named == [{0}] and set(r._to_commit) == {TP, tp1}
    if reset == "drain":
        p.ack()
        r._settle(wait=True)
        assert c.commits == [9]
    else:
        r._abandon()
    now[0] += 1
    for start in (9, 12, 15):
        p.ack()
        r._process(batch(start))
    assert named[1:] and all(parts == {0} for parts in named[1:])


def test_backpressure_waits_through_a_failed_send_and_stops_before_its_offsets():
    r = make_runner(max_unacked_batches=1)
    r._process(batch(0))
    r.producer.futures[1].exception = RuntimeError("record too large")
    with pytest.raises(FdsError, match="input offsets were not committed past it"):
        r._process(batch(3))
    assert r.consumer.async_commits == [] and r.consumer.commits == []


def test_a_failed_send_stops_the_offsets_before_it():
    r = make_runner(max_unacked_batches=2)
    r._process(batch(0))
    r.producer.ack(error=RuntimeError("record too large"))
    with pytest.raises(FdsError, match="input offsets were not committed past it"):
        r._process(batch(3))
    assert r.consumer.async_commits == [] and r.consumer.commits == []


def test_zero_unacked_batches_flushes_and_commits_each_batch():
    r = make_runner(max_unacked_batches=0)
    for start in (0, 3, 6):
        r._process(batch(start))
    assert r.producer.flushes == 3 and r.consumer.commits == [3, 6, 9]
    assert r.consumer.async_commits == []


def test_a_long_batch_is_sent_while_it_is_decided(monkeypatch):
    """A backlog's first decisions leave before its last ones are made."""
    monkeypatch.setattr("fds.streams.kafka.SEND_EVERY", 2)
    r = make_runner()
    decided_at_send: list[int] = []
    decide, send = r.engine.decide, r.producer.send
    count = [0]

    def counting_decide(tx: Any) -> Any:
        count[0] += 1
        return decide(tx)

    def spying_send(topic: str, **kw: Any) -> Future:
        decided_at_send.append(count[0])
        return send(topic, **kw)

    r.engine.decide, r.producer.send = counting_decide, spying_send  # type: ignore[method-assign]
    r._process(batch(0, n=5))
    assert decided_at_send == [2, 2, 4, 4, 5]


def test_a_stop_commits_everything_decided():
    r = make_runner(max_unacked_batches=5)
    for start in (0, 3, 6):
        r._process(batch(start))
    assert r.consumer.commits == []
    r._settle(wait=True)  # what run() does when the loop ends
    assert r.consumer.commits == [9] and r._positions == {0: 9}


class LoopConsumer(Consumer):
    """Enough of KafkaConsumer for ``Runner.run``: one partition, batches polled in turn; like
    kafka-python 3, ``close()`` calls the rebalance listener's revocation."""

    def __init__(self, batches: list[list[Record]]) -> None:
        super().__init__()
        self.batches, self.listener = batches, None

    def bootstrap(self, timeout_ms: int) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assignment(self) -> set[Any]:
        return {TP}

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        return {TP: self.batches.pop(0)} if self.batches else {}

    def close(self, autocommit: bool, timeout_ms: int) -> None:
        self.listener.on_partitions_revoked([TP])


class FailingProducer(Producer):
    """Sends ``first`` to ``last`` (counted from 1) fail, as records the broker refuses; the
    failure is known once a later send was made."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__()
        self.first, self.last = first, last

    def send(self, topic: str, **kw: Any) -> Future:
        f = super().send(topic, **kw)
        if len(self.futures) == self.last + 1:
            for g in self.futures[self.first - 1 : self.last]:
                g.is_done, g.exception = True, RuntimeError("record too large")
        return f


def records(start: int, n: int = 3) -> list[Record]:
    tx = b'{"tx_id": "t%d", "ts": %d, "card_id": "c1", "amount": 5.0}'
    return [
        Record("transactions", 0, i, (1_700_000_000 + i) * 1000, b"c1", tx % (i, 1_700_000_000 + i))
        for i in range(start, start + n)
    ]


def test_after_a_failed_send_closing_commits_and_checkpoints_nothing(tmp_path):
    """kafka-python 3's close() runs the revocation listener: after a failure it must not
    commit the batches decided after the failed one, nor checkpoint a state that holds them."""

    # batch 1 is committed and checkpointed (the first commit always is); batch 2's sends
    # fail, found out after batch 3 was decided and sent
    consumer = LoopConsumer([records(0), records(3), records(6)])
    producer = FailingProducer(4, 6)
    ck = Checkpointer(tmp_path)
    runner = Runner(
        KafkaSettings(
            input_topic="transactions", max_unacked_batches=2, checkpoint_in_background=False
        ),
        Engine(),
        consumer_factory=lambda **_: consumer,
        producer_factory=lambda **_: producer,
        checkpointer=ck,
    )
    with pytest.raises(FdsError, match="not committed past it"):
        runner.run(max_idle_s=1)
    assert consumer.commits == [3] and consumer.async_commits == []
    got = ck.load()
    assert got is not None and got.offsets == {0: 3} and ck.saves == 1


def test_evicted_partitions_are_neither_committed_nor_checkpointed(tmp_path):
    """kafka-python calls on_partitions_lost after an eviction (session expired, fenced):
    a commit would fail, and the state holds decisions past the committed offsets."""
    from fds.streams.kafka import _Revoke

    ck = Checkpointer(tmp_path)
    r = Runner(
        KafkaSettings(max_unacked_batches=5, checkpoint_in_background=False), Engine(),
        checkpointer=ck,
    )  # fmt: skip
    r.consumer, r.producer = Consumer(), Producer()
    r._process(batch(0))  # the first commit is synchronous: positions {0: 3}
    r._process(batch(3))
    r.producer.ack()
    saves = ck.saves
    _Revoke(r).on_partitions_lost([TP])
    assert r.consumer.commits == [3] and r.consumer.async_commits == []
    assert ck.saves == saves and r._positions == {} and not r._unacked


def test_a_stop_ends_broker_retries_at_once():
    """SIGTERM during an outage must not wait out broker_timeout_s of retries."""
    from fds.streams.kafka import BrokerUnavailable

    r = make_runner(broker_timeout_s=60)
    calls = []

    def down() -> None:
        calls.append(1)
        r.stop()  # the signal arrives while the broker is away
        raise KafkaTimeoutError("no broker")

    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="stopping as asked"):
        r._retrying("commit", down)
    assert len(calls) == 1 and time.monotonic() - t0 < 1


def test_a_fenced_instance_stops_at_once_saying_why():
    """Two instances with one --group-instance-id: the fenced one retried its commit for
    broker_timeout_s, then blamed the broker ("is Kafka ... up?") while it was up (a review)."""
    from kafka.errors import FencedInstanceIdError

    r = make_runner(broker_timeout_s=60, group="g", group_instance_id="i0")
    t0 = time.monotonic()
    with pytest.raises(FdsError, match=r"another member joined group 'g' with this "
                       r"--group-instance-id \(i0\).*give each instance its own id"):  # fmt: skip
        r._retrying("commit", lambda: (_ for _ in ()).throw(FencedInstanceIdError("fenced")))
    assert time.monotonic() - t0 < 1

    class Fenced(Consumer):  # (polling again fenced the other instance: they took turns)
        def poll(self, *_: Any, **__: Any) -> dict:
            raise FencedInstanceIdError("fenced")

        def commit_async(self, offsets: Any) -> None:
            raise FencedInstanceIdError("an earlier async commit was fenced")

    eos = make_runner(group="g", group_instance_id="i0", exactly_once=True, transactional_id="t")
    with pytest.raises(FdsError, match=r"another member joined group 'g'"):  # (exactly-once too)
        eos._retrying("send_offsets_to_transaction",
                      lambda: (_ for _ in ()).throw(FencedInstanceIdError("fenced")))  # fmt: skip
    # the transactional id taken by another producer: "restart to resume", as it said, fenced
    # that one in turn (a QA pass)
    from kafka.errors import ProducerFencedError

    for fenced in (ProducerFencedError("fenced"),  # and as kafka-python's next call says it
                   KafkaError("in an error state: [Error 90] ProducerFencedError")):  # fmt: skip
        with pytest.raises(FdsError, match=r"fenced this instance's transactional producer "
                           r"\(t\): another producer took the id.*give each"):  # fmt: skip
            eos._retrying("commit_transaction", lambda e=fenced: (_ for _ in ()).throw(e))
    # ... and in a send, kafka-python's own words were all it said (a QA pass: two
    # deployments' instances whose default ids read alike, fds-eu/1 and fds/eu-1)

    class Taken(Producer):
        def begin_transaction(self) -> None:
            pass

        def send(self, topic: str, **_: Any) -> Future:
            raise KafkaError("Cannot perform send because at least one previous transactional "
                             "or idempotent request has failed with errors.",
                             ProducerFencedError())  # fmt: skip

    eos = make_runner(group="fds-eu", group_instance_id="1", exactly_once=True)
    eos.producer = Taken()
    with pytest.raises(
        FdsError,
        match=r"send: the broker fenced this instance's transactional "
        r"producer \(fds-fds-eu-1\).*fds-eu with 1 and fds with eu-1 are both",
    ):
        eos._process(batch(0))
    # ... or as the state the fence left the transaction in (a QA pass: a raw "IllegalState
    # Error: Cannot call send in state READY" ended the run in 3 trials of 5)
    from kafka.errors import IllegalStateError

    class Reset(Taken):
        def send(self, topic: str, **_: Any) -> Future:
            raise IllegalStateError("Cannot call send in state READY")

    eos.producer = Reset()
    with pytest.raises(FdsError, match=r"send: the broker fenced this instance's transactional"):
        eos._process(batch(0))
    bumping = IllegalStateError("Cannot call send in state BUMPING_PRODUCER_EPOCH")
    with pytest.raises(FdsError, match=r"commit_transaction: the broker fenced"):
        eos._retrying("commit_transaction", lambda: (_ for _ in ()).throw(bumping))
    alo = make_runner(group="g", broker_timeout_s=0.01)  # (at-least-once it is no fence)
    with pytest.raises(FdsError) as e:
        alo._retrying("flush", lambda: (_ for _ in ()).throw(IllegalStateError("closed!")))
    assert "fenced" not in str(e.value)
    r.consumer = Fenced()
    r.aligner = Aligner(r.consumer, r._event_time, max_wait_s=0)
    for call in (lambda: r._poll_loop(max_idle_s=5), lambda: r._commit_async({})):
        with pytest.raises(FdsError, match=r"another member joined group 'g'"):
            call()


class CutOff(LoopConsumer):
    """After its batches the broker is gone until ``back_at`` (monotonic; inf: for good):
    ``end_offsets`` blocks for its whole timeout, then fails, as kafka-python's does (or fails
    after ``refused_s``: a connection refused at once). Once back it answers after ``rtt_s``."""

    def __init__(
        self, batches: list[list[Record]], back_at: float = float("inf"),
        refused_s: float | None = None, rtt_s: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(batches)
        self.back_at, self.refused_s, self.rtt_s = back_at, refused_s, rtt_s
        self.probes: list[tuple[int, bool]] = []  # (timeout_ms, answered)

    def end_offsets(self, tps: list[Any], timeout_ms: int) -> dict[Any, int]:
        timeout_s, now = timeout_ms / 1000, time.monotonic()
        if now < self.back_at:
            time.sleep(min(timeout_s, self.refused_s or timeout_s))
        elif timeout_s >= self.rtt_s:
            time.sleep(self.rtt_s)
            self.probes.append((timeout_ms, True))
            return {tp: 3 for tp in tps}
        else:
            time.sleep(timeout_s)
        self.probes.append((timeout_ms, False))
        raise KafkaTimeoutError(f"Failed to get offsets by timestamps in {timeout_ms} ms")


def cut_off_runner(consumer: CutOff, timeout_s: float) -> Runner:
    return Runner(
        KafkaSettings(input_topic="transactions", broker_timeout_s=timeout_s), Engine(),
        consumer_factory=lambda **_: consumer, producer_factory=lambda **_: Producer(),
    )  # fmt: skip


class Unassigned(CutOff):
    """No partition assigned (more members than partitions); ``topics()`` waits without a
    time limit for a broker that is gone, as kafka-python 3.0's does."""

    def assignment(self) -> set[Any]:
        return set()

    def topics(self) -> set[str]:
        time.sleep(30)
        raise KafkaTimeoutError("no broker")


@pytest.mark.parametrize("kind", [CutOff, Unassigned])
def test_a_broker_gone_while_idle_exits_after_the_timeout_not_a_probe_later(kind):
    """The idle loop's probe waited 3 s and a failure was judged by the clock before it: with
    a 5 s timeout fds run exited after 10.5 s (the integration test saw 5.2-10.5 s). With no
    partition assigned the probe was ``topics()``, which has no time limit."""
    from fds.streams.kafka import BrokerUnavailable

    consumer = kind([records(0)])
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable for 1 s"):
        cut_off_runner(consumer, timeout_s=1.0).run()
    assert 1.0 <= time.monotonic() - t0 < 2.5, consumer.probes  # (6.3 s before)


def test_max_idle_ends_an_idle_run_not_one_cut_off_from_the_broker():
    """Found by a QA pass: an outage counted as idle time, so --max-idle exited 0 before the
    broker timeout said the broker was gone (a backlog it could not serve left unsaid)."""
    from fds.streams.kafka import BrokerUnavailable

    consumer = CutOff([records(0)], refused_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable for 2 s"):
        cut_off_runner(consumer, timeout_s=2.0).run(max_idle_s=0.3)
    assert time.monotonic() - t0 >= 2.0
    assert not any(ok for _, ok in consumer.probes)  # (none answered)
    answering = CutOff([records(0)], back_at=0.0)  # idle, the broker there: ends at the limit
    t0 = time.monotonic()
    assert cut_off_runner(answering, timeout_s=30).run(max_idle_s=0.3).decided == 3
    assert time.monotonic() - t0 < 5 and answering.probes


def test_a_broker_back_just_before_the_timeout_is_ridden_out():
    """The probe is cut to what the timeout has left, but never below PROBE_MIN_S: a broker
    back 0.2 s before the timeout and answering in 0.3 s is not taken for gone."""
    consumer = CutOff([records(0)], back_at=time.monotonic() + 1.8, refused_s=0.05, rtt_s=0.3)
    stats = cut_off_runner(consumer, timeout_s=2.0).run(max_idle_s=3)
    assert stats.decided == 3
    answered = [ms for ms, ok in consumer.probes if ok]
    assert answered and answered[0] < 1000, consumer.probes  # one with little left answered


class Reader:
    """The rebuild/catch-up reader: ``recs`` of partition 0 from ``log_start``, in polls of
    ``per_poll`` records; ``on_poll`` runs before each poll."""

    def __init__(self, recs: list[Record], log_start: int = 0, per_poll: int = 100,
                 on_poll: Any = None) -> None:  # fmt: skip
        self.recs, self.log_start, self.per_poll = recs, log_start, per_poll
        self.on_poll = on_poll or (lambda: None)

    def assign(self, tps):
        self.pos = {tp: 0 for tp in tps}

    def assignment(self):
        return set(getattr(self, "pos", ()))

    def beginning_offsets(self, tps):
        return dict.fromkeys(tps, self.log_start)

    def seek(self, tp, offset):
        assert offset >= self.log_start, "read below the log start"
        self.pos[tp] = offset

    def position(self, tp):
        return self.pos[tp]

    def pause(self, *tps):
        pass

    def resume(self, *tps):
        pass

    def offsets_for_times(self, times):  # every record is within the feature horizon
        return {tp: OffsetAndTimestamp(self.log_start, 0, -1) for tp in times}

    def end_offsets(self, tps, timeout_ms=None):
        return dict.fromkeys(tps, len(self.recs))

    def highwater(self, tp):
        return len(self.recs)

    def poll(self, timeout_ms=0):
        self.on_poll()
        n = len(self.recs)
        out = {tp: self.recs[at : at + self.per_poll] for tp, at in self.pos.items() if at < n}
        self.pos = {tp: min(at + self.per_poll, n) for tp, at in self.pos.items()}
        return out

    def close(self):
        pass


def holds(offset: int) -> Callable[..., Any]:
    """A consumer's ``committed``: the group holds ``offset`` (no mark) for every partition."""
    return lambda tp, metadata=False, timeout_ms=None: (
        OffsetAndMetadata(offset, "", -1) if metadata else offset
    )


class Group(Consumer):
    committed = staticmethod(holds(10))


def catching_up_runner(reader: Reader, checkpoints: list[bool]) -> Runner:
    """A runner whose checkpoint covers offset 2 while the group committed 10."""

    r = Runner(
        KafkaSettings(checkpoint_in_background=False), Engine(),
        consumer_factory=lambda **_: reader, checkpointer=None,
    )  # fmt: skip
    r.checkpointer = Checkpointer.__new__(Checkpointer)  # only its presence matters here
    r.checkpoint = lambda force=False: checkpoints.append(force) or True  # type: ignore[method-assign]
    r.consumer, r._positions = Group(), {0: 2}
    return r


def test_records_folded_by_a_catch_up_are_not_counted_again_in_the_rule_metrics():
    """Folding decides each record again for its state: the rules' skip counts were exported
    with the next report, so every restart or rebuild inflated them (here 8 times over)."""
    from fds.metrics import Metrics
    from fds.rules.ruleset import load_ruleset_text

    rules = load_ruleset_text(
        "version: v\nrules:\n"
        "  - {id: r, when: extra.x > 1, action: review, score: 0.5, reason: r}\n"
    )
    r = catching_up_runner(Reader(records(0, 10)), [])
    r.engine = Engine(rules=rules, metrics=Metrics())
    r.engine.decide(parse_transaction({"tx_id": "d", "ts": 1.7e9, "card_id": "c", "amount": 1}))
    r._bring_up_to_date([TP])  # folds records 2-9: extra.x missing in each
    assert r.stats.caught_up == 8
    r.engine.report()
    text = r.engine.metrics.exposition()
    assert b'fds_rule_missing_inputs_total{rule="r"} 1.0' in text  # the decision, not the folds


def test_a_catch_up_starts_at_the_log_start_when_retention_passed_the_checkpoint(caplog):
    """The checkpoint covers offset 2, retention has deleted up to 5, the group committed 10:
    records 5-9 are folded (and the gap is logged), not records from the end of the log."""
    r = catching_up_runner(Reader(records(0, 10), log_start=5), [])
    with caplog.at_level("WARNING"):
        r._bring_up_to_date([TP])
    assert r.stats.caught_up == 5 and r._positions == {0: 10}
    assert "3 records of transactions[0] are past the topic's retention" in caplog.text


def test_the_lag_of_the_partitions_a_restore_catches_up_is_reported_meanwhile():
    """A rebuild of 8.7 s (minutes to hours on real retention) had no lag series at all while
    3,000 records waited (a QA pass)."""
    from fds.metrics import Metrics

    r = catching_up_runner(Reader(records(0, 15)), [])
    r.metrics = Metrics()
    r._bring_up_to_date([TP])
    lag = r.metrics.registry.get_sample_value("fds_consumer_lag_messages", {"partition": "0"})
    assert lag == 5  # 15 in the log, 10 committed: the 5 after them wait for the restore


def test_the_lag_reported_during_a_restore_follows_new_input():
    """The ends read when the restore began (or a paused partition's high watermark) stood
    still: a rebuild of 10 s reported a lag of 218 throughout while new input came, then 721
    decisions went out in the next second (a QA pass); real rebuilds last hours."""
    from fds.metrics import Metrics

    class Growing(Reader):
        def end_offsets(self, tps, timeout_ms=None):
            self.calls = getattr(self, "calls", 0) + 1
            return dict.fromkeys(tps, len(self.recs) + 100 * self.calls)  # input keeps coming

    r = catching_up_runner(Growing(records(0, 15)), [])
    r.metrics = Metrics()
    r._report_restoring(r._consumer_factory(), {TP: 10}, {TP: 15})
    r._report_restoring(r._consumer_factory(), {TP: 10}, {TP: 15})
    lag = r.metrics.registry.get_sample_value("fds_consumer_lag_messages", {"partition": "0"})
    assert lag == 215 - 10  # the second report's end


def test_a_stop_during_a_catch_up_keeps_nothing_of_the_partial_state():
    """SIGTERM mid-way: the positions are dropped (the next start does it again), no
    checkpoint is written, and the loop decides nothing after the interrupted restore."""
    checkpoints: list[bool] = []
    polls = [0]

    def stop_after_first_poll() -> None:
        polls[0] += 1
        if polls[0] == 2:
            r.stop()

    r = catching_up_runner(Reader(records(0, 10), per_poll=3, on_poll=stop_after_first_poll),
                           checkpoints)  # fmt: skip
    r._bring_up_to_date([TP])
    assert 0 < r.stats.caught_up < 8 and r._positions == {} and checkpoints == []

    class Polling(Group):
        def poll(self, timeout_ms=0, max_records=None):
            return {TP: [rec for _tp, rec, _tx in batch(10)]}

    r._stop = False
    r.consumer, r._positions, r._unresolved = Polling(), {0: 2}, {0}
    r.aligner = Aligner(r.consumer, _event_time)
    r._process = lambda b: pytest.fail("decided a batch after an interrupted restore")  # type: ignore[method-assign]
    polls[0] = 0
    r._poll_loop(max_idle_s=None)  # returns: stopped during the restore
    assert checkpoints == []


def test_lag_is_reported_for_every_assigned_partition_idle_ones_included():
    class Lagging(Consumer):
        def __init__(self) -> None:
            super().__init__()
            self.hw = {TP: 10, TopicPartition("transactions", 1): 7,
                       TopicPartition("transactions", 2): 4}  # fmt: skip

        def highwater(self, tp: Any) -> int:
            return self.hw[tp]

        def assignment(self) -> set[Any]:
            return set(self.hw)

        def position(self, tp: Any, timeout_ms: int | None = None) -> int:
            return 1  # partition 2: no commit, nothing decided; the consumer reads from 1

    from fds.metrics import Metrics

    r = make_runner()
    r.consumer, r.metrics = Lagging(), Metrics()
    reports = []
    r.engine.report = lambda: reports.append(1)  # type: ignore[method-assign]
    r._positions = {1: 5}  # nothing decided on partition 1 yet: lag from its committed offset
    r._process(batch(0))  # partition 0 only: 3 decided of 10
    lag = {
        p: r.metrics.registry.get_sample_value("fds_consumer_lag_messages", {"partition": p})
        for p in ("0", "1", "2")
    }
    assert lag == {"0": 7, "1": 2, "2": 3}  # (partition 2 had no series: a QA pass)
    # the engine's figures (entities held, rules skipped) are exported by `fds run` too
    assert reports == [1]

    # A QA pass: during a join kafka-python still names the partitions revoked; their series,
    # removed at the revocation, came back, stood still, and doubled a sum by partition.
    from fds.streams.kafka import _Revoke

    revoke = _Revoke(r)
    revoke.on_partitions_revoked(set(r.consumer.hw))
    r._report()  # (joining: the consumer's assignment is the old one)
    assert r.metrics.registry.get_sample_value(
        "fds_consumer_lag_messages", {"partition": "1"}
    ) is None  # fmt: skip
    r._lag_shown.add(2)  # (a series left from before, however it came)
    # the ends are read now and then: a partition fetched rarely has an old high watermark
    # (its lag read ~10x low for minutes: a QA pass)
    revoke.on_partitions_assigned(set(r.consumer.hw))
    r.consumer.end_offsets = lambda tps, timeout_ms=None: {tp: 100 for tp in tps}  # type: ignore[attr-defined]
    r._lag_ends_at = -math.inf
    r._report()
    assert r.metrics.registry.get_sample_value(
        "fds_consumer_lag_messages", {"partition": "1"}
    ) == 100 - 5  # fmt: skip
    revoke.on_partitions_revoked(set(r.consumer.hw))
    r._lag_shown.add(2)
    revoke.on_partitions_assigned({TP})
    assert r._lag_shown == set() and r.metrics.registry.get_sample_value(
        "fds_consumer_lag_messages", {"partition": "2"}
    ) is None  # fmt: skip


def test_a_catch_up_is_not_counted_as_decisions():
    """Folding what the group decided before a restart is state only: before, every folded
    record counted in fds_decisions_total, its latency and its event lag (days)."""
    from fds.metrics import Metrics

    m = Metrics()
    engine = Engine(metrics=m)
    engine.fold(parse_transaction({"tx_id": "a", "ts": 1, "card_id": "c", "amount": 5.0}))
    total = sum(
        m.registry.get_sample_value("fds_decisions_total", {"action": a}) or 0
        for a in ("approve", "review", "decline")
    )
    assert total == 0 and engine.metrics is m


def closing_runner(**settings: Any) -> tuple[Runner, dict[str, float]]:
    """A runner (connected already) whose clients note the timeout their close() was given."""
    r = make_runner(**settings)
    closes: dict[str, float] = {}

    class Closing(Consumer):
        def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
            closes["consumer"] = (timeout_ms or 0) / 1000

    class ClosingProducer(Producer):
        def close(self, timeout: float | None = None) -> None:
            closes["producer"] = timeout or 0.0

    r.consumer, r.producer = Closing(), ClosingProducer()
    r._connect = lambda: None  # type: ignore[method-assign]
    return r, closes


def test_a_stop_shares_one_deadline_between_its_final_commit_checkpoint_and_close():
    """What the final checkpoint took is not given again to the clients' close: the whole
    stop stays within shutdown_timeout_s (the 10 s SIGTERM promise)."""
    r, closes = closing_runner(shutdown_timeout_s=2.0)
    r._loop = lambda max_idle_s: None  # type: ignore[method-assign]
    r.checkpoint = lambda force=False: time.sleep(1.5) or True  # type: ignore[method-assign]
    r.run()
    # 2.0 s in all, 1.5 s of them taken by the checkpoint: at most 0.5 s left for each close
    assert 0 < closes["consumer"] <= 0.5 and 0 < closes["producer"] <= 0.5


def test_a_transaction_stamped_far_after_its_record_was_produced_is_a_dead_letter():
    """One transaction stamped in 2099 moved every window's watermark there: each later one
    came 'late'. It is judged against the record's own timestamp, not this machine's clock,
    so a rebuild judges it the same way."""
    from fds.streams.kafka import _Bad, _event_time

    produced = 1_700_000_000
    body = b'{"tx_id": "t", "ts": %d, "card_id": "c1", "amount": 5.0}'
    ok = Record("transactions", 0, 0, produced * 1000, b"c1", body % (produced + 3000))
    far = Record("transactions", 0, 1, produced * 1000, b"c1", body % (produced + 4000))
    assert _event_time(ok, 3600.0)[0] == produced + 3000
    bad = _event_time(far, 3600.0)[1]
    assert bad.__class__ is _Bad and bad.stage == "validate"
    assert "after the record was produced" in str(bad.error)
    assert _event_time(far, 0.0)[0] == produced + 4000  # 0: no check
    runner = make_runner(max_event_ahead_s=3600)
    assert runner._parsed(far) is None and runner._parsed(ok) is not None
    # by default as far as the default grace period (a QA pass: one record 30 minutes ahead
    # left every later transaction of every card late, out of the windows, for 30 minutes)
    ahead = Record("transactions", 0, 2, produced * 1000, b"c1", body % (produced + 1800))
    within = Record("transactions", 0, 3, produced * 1000, b"c1", body % (produced + 300))
    runner = make_runner()
    assert runner._parsed(ahead) is None and runner._parsed(within) is not None


def rebuilding_runner(tmp_path: Any, reader: Reader, consumer: Any, **settings: Any) -> Runner:
    """A runner with the default features, no checkpoint yet, that must rebuild partition 0
    (the group committed 10) with ``reader``; ``consumer`` is its group consumer; ``settings``
    override the defaults."""
    from fds.pipeline import DEFAULT_RULES
    from fds.streams.kafka import build_run_engine

    s = KafkaSettings(checkpoint_in_background=False, **settings)
    r = Runner(
        s, build_run_engine(DEFAULT_RULES, None, settings=s),
        consumer_factory=lambda **_: reader, checkpointer=Checkpointer(tmp_path / "state"),
    )  # fmt: skip
    r.consumer = consumer
    r.aligner = Aligner(consumer, _event_time)
    r._live = True  # deciding already: a partition that moved here is rebuilt
    return r


def test_a_rebuild_answers_a_rebalance_and_starts_again_for_the_new_assignment(
    tmp_path, monkeypatch
):
    """A long restore polls the group now and then (Runner._keep_alive): a rebalance that starts
    meanwhile does not wait for the restore to end (every other instance would decide nothing
    until then). When the poll revokes and reassigns partitions, the partial state is dropped,
    nothing of it is checkpointed, and the restore starts again before anything is decided."""
    from fds.streams import handover, kafka

    monkeypatch.setattr(handover, "KEEPALIVE_S", 0.0)  # answer at the first chance

    class Rebalancing(Group):
        polls = 0

        def poll(self, timeout_ms=0, max_records=None):
            Rebalancing.polls += 1
            if Rebalancing.polls == 1:  # the group rebalances while this member rebuilds
                listener = kafka._Revoke(r)
                listener.on_partitions_revoked({TP})
                listener.on_partitions_assigned({TP})
            return {TP: records(10, 2)}  # fetched meanwhile: waits in the aligner

        def assignment(self):
            return {TP}

    r = rebuilding_runner(tmp_path, Reader(records(0, 10), per_poll=1), Rebalancing())
    r._bring_up_to_date([TP])
    assert Rebalancing.polls == 1 and r.stats.caught_up == 1  # interrupted after one fold
    assert r._positions == {} and r._unresolved == {0}
    assert r.engine.features.state_sizes()["card_id"] == 0  # the partial state is gone
    assert not r.checkpointer.path.exists()  # nothing partial was checkpointed
    assert len(r.aligner) == 2

    r._bring_up_to_date([TP])  # again, for the assignment the group settled on
    assert r._positions == {0: 10} and r.stats.caught_up == 1 + 10
    assert r.engine.features.state_sizes()["card_id"] == 1
    assert r.checkpointer.path.exists()


def test_a_rebuild_cut_short_by_a_join_waits_for_the_assignment_not_the_old_partitions(
    tmp_path, monkeypatch
):
    """The keep-alive poll revoked the partitions and the join was not answered yet: the
    restore started again at once for the partitions consumer.assignment() still named, and
    its keep-alive polls never let the join finish (a leader asked for a new rebalance at each
    of them, a follower was evicted: 49 rebalances in 106 s in a chaos run)."""
    from fds.streams import handover, kafka

    monkeypatch.setattr(handover, "KEEPALIVE_S", 0.0)

    class Joining(Group):
        polls = 0

        def poll(self, timeout_ms=0, max_records=None):
            Joining.polls += 1
            if Joining.polls == 1:  # the keep-alive poll: a rebalance starts, no answer yet
                kafka._Revoke(r).on_partitions_revoked({TP})
            if Joining.polls == 2:  # the loop's next poll: the group's answer
                kafka._Revoke(r).on_partitions_assigned({TP})
            return {}

        def assignment(self):
            return {TP}  # the eager protocol still names the revoked partitions

    r = rebuilding_runner(tmp_path, Reader(records(0, 10), per_poll=1), Joining())
    r._bring_up_to_date([TP])
    assert Joining.polls == 1 and r._unresolved == set() and r._joining
    assert r.engine.features.state_sizes()["card_id"] == 0  # the partial state is gone
    r.consumer.poll()
    assert r._unresolved == {0} and not r._joining  # restored for what the group assigned


def test_a_rebuild_that_no_rebalance_interrupts_polls_and_finishes(tmp_path, monkeypatch):
    from fds.streams import handover

    monkeypatch.setattr(handover, "KEEPALIVE_S", 0.0)

    class Quiet(Group):
        polls = 0

        def poll(self, timeout_ms=0, max_records=None):
            Quiet.polls += 1
            return {}

    r = rebuilding_runner(tmp_path, Reader(records(0, 10), per_poll=1), Quiet())
    r._bring_up_to_date([TP])
    assert Quiet.polls >= 1 and r._positions == {0: 10} and r.stats.caught_up == 10


def test_a_rebalance_during_a_restore_decides_nothing_before_the_next_restore(
    tmp_path, monkeypatch
):
    """The loop went on to decide what the keep-alive poll had buffered, on the state of the
    interrupted restore (the checkpoint's, or an empty one)."""
    from fds.streams import handover, kafka

    monkeypatch.setattr(handover, "KEEPALIVE_S", 0.0)

    class Rebalancing(Group):
        polls = 0

        def poll(self, timeout_ms=0, max_records=None):
            Rebalancing.polls += 1
            if Rebalancing.polls == 2:  # the keep-alive poll of the first restore
                listener = kafka._Revoke(r)
                listener.on_partitions_revoked({TP})
                listener.on_partitions_assigned({TP})
                return {TP: records(10, 2)}
            return {}

        def assignment(self):
            return {TP}

    r = rebuilding_runner(tmp_path, Reader(records(0, 10), per_poll=1), Rebalancing())
    r._unresolved = {0}
    decided_at: list[dict[int, int]] = []

    def process(batch: Any) -> None:
        decided_at.append(dict(r._positions))
        r.stop()

    r._process = process  # type: ignore[method-assign]
    r._poll_loop(max_idle_s=None)
    assert decided_at == [{0: 10}]  # only after the second, complete restore


def test_an_assignment_forgets_the_positions_of_partitions_that_moved_away():
    """A checkpoint kept the position of a partition revoked long before; a restart then
    caught it up from there on top of a state that had gone on without it (late events)."""
    from fds.streams import kafka

    r = make_runner()
    r._positions = {0: 5, 1: 7}
    kafka._Revoke(r).on_partitions_assigned({TP})
    assert r._positions == {0: 5} and r._unresolved == {0}


class Hanging(Producer):
    """A broker gone mid-transaction: kafka-python's transactional calls wait for its answer
    with no time limit."""

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        import threading

        threading.Event().wait()  # forever

    def abort_transaction(self) -> None:
        import threading

        threading.Event().wait()


class GroupConsumer(Consumer):
    def group_metadata(self) -> None:
        return None


def test_a_broker_gone_mid_transaction_is_a_clear_exit_not_a_hang(caplog, monkeypatch):
    """Found by a chaos run: `fds run --exactly-once` hung for good in
    send_offsets_to_transaction when the broker died mid-transaction."""
    from fds.streams.kafka import BrokerUnavailable

    monkeypatch.setattr("fds.streams.delivery.WAIT_LOG_S", 0.5)
    r = make_runner(exactly_once=True, broker_timeout_s=1.5)
    r.consumer, r.producer = GroupConsumer(), Hanging()
    t = time.monotonic()
    failed = r"send_offsets_to_transaction failed for \d s \(broker_timeout_s\): no answer"
    with (
        caplog.at_level("WARNING", logger="fds.streams.kafka"),
        pytest.raises(BrokerUnavailable, match=failed),
    ):
        r._process(batch(0))
    assert time.monotonic() - t < 4.0
    assert "send_offsets_to_transaction waiting for Kafka" in caplog.text  # said meanwhile


def test_a_run_ended_by_a_silent_broker_closes_its_clients_at_once():
    """A stop that gave up on the broker then gave the clients' close the rest of the deadline
    (4 s of 8), though nothing would be acknowledged: 8.7 s from SIGTERM to exit under load in
    a review, for the 10 s promise."""
    from fds.streams.kafka import GONE_CLOSE_S, BrokerUnavailable

    r, closes = closing_runner(shutdown_timeout_s=8.0)

    def gone(max_idle_s: Any) -> None:
        raise BrokerUnavailable("stopping as asked: flush still had no answer")

    r._loop = gone  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailable):
        r.run()
    assert 0 < closes["consumer"] <= GONE_CLOSE_S and 0 < closes["producer"] <= GONE_CLOSE_S


def test_a_stop_while_the_broker_does_not_answer_ends_within_its_deadline():
    """Found by a chaos run: SIGTERM while blocked in a commit or flush waited the whole
    broker_timeout_s (52-55 s) instead of the promised 10 s."""
    import threading

    from fds.streams.kafka import BrokerUnavailable

    r = make_runner(broker_timeout_s=60, shutdown_timeout_s=2)
    r.consumer.commit = lambda offsets, timeout_ms=None: threading.Event().wait()
    threading.Timer(0.5, r.stop).start()  # SIGTERM half a second into the commit
    t = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="stopping as asked: commit still had no answer"):
        r._retrying("commit", lambda: r.consumer.commit({}, timeout_ms=60_000))
    assert time.monotonic() - t < 2.5


def test_a_commit_refused_after_an_eviction_is_not_an_exit(caplog):
    """Found by a chaos run: after a ~30 s broker restart fds run exited with CommitFailedError
    (UnknownMemberId), the broker being back; at-least-once it rejoins and decides the
    uncommitted batches again."""
    from kafka.errors import CommitFailedError

    r = make_runner(max_unacked_batches=0)
    r._positions = {0: 0}

    def refused(offsets: Any, timeout_ms: int | None = None) -> None:
        raise CommitFailedError("UnknownMemberIdError")

    r.consumer.commit = refused
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        r._process(batch(0))  # no exception
    assert "evicted from the group" in caplog.text
    assert r._positions == {} and not r._unacked and not r._committable  # state not trusted


class TxProducer(Producer):
    """A transactional producer whose offsets the group refuses once ``refuse`` is set (this
    instance was evicted: kafka-python raises CommitFailedError, an abortable error)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse, self.commits, self.aborts = False, 0, 0

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        from kafka.errors import CommitFailedError

        if self.refuse:
            raise CommitFailedError("IllegalGenerationError")

    def commit_transaction(self) -> None:
        self.commits += 1

    def abort_transaction(self) -> None:
        self.aborts += 1


class SeekingConsumer(GroupConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.seeks: list[tuple[Any, int]] = []

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_an_eviction_under_exactly_once_aborts_rewinds_and_goes_on(tmp_path, caplog):
    """Left by the chaos runs: under --exactly-once a transaction whose offsets the group
    refused after an eviction made fds run exit though the broker was back. It now aborts the
    transaction, goes back to its first record, and puts the state back to the checkpoint
    (caught up to the committed offsets before the next decision): nothing of the aborted
    transaction stays in the state, so deciding it again gives the same decisions."""
    from fds.features import FeaturePlan

    spec = type("S", (), dict(name="n", entity="card_id", agg="count", field=None, window="1d"))
    ck = Checkpointer(tmp_path)
    r = Runner(
        KafkaSettings(exactly_once=True, checkpoint_in_background=False),
        Engine(features=FeaturePlan([spec])),
        checkpointer=ck,
    )
    r.consumer, r.producer = SeekingConsumer(), TxProducer()
    r._process(batch(0))  # committed and checkpointed at offset 3
    assert r.producer.commits == 1 and r._positions == {0: 3}
    r.aligner = Aligner(r.consumer, r._event_time)
    r.aligner.add({TP: records(6)})  # fetched after the batch below, not decided yet
    r.producer.refuse = True
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        r._process(batch(3))  # no exception
    assert "transaction was aborted" in caplog.text
    assert len(caplog.records) == 1  # one line per eviction (it was two)
    assert r.producer.aborts == 1 and r.producer.commits == 1
    assert r.consumer.seeks[-1] == (TP, 3)  # back to the aborted transaction's first record
    assert not len(r.aligner)  # (what it held is fetched again)
    assert r._positions == {0: 3} and r._unresolved == {0}  # caught up before the next batch
    assert len(r.engine.features.states[0]["c1"][1]) == 3  # the aborted 3 are not in the state


def test_an_eviction_under_exactly_once_without_a_checkpoint_is_a_clear_exit():
    r = make_runner(exactly_once=True)
    r.consumer, r.producer = SeekingConsumer(), TxProducer()
    r.producer.refuse = True
    with pytest.raises(FdsError, match="no state checkpoint to go back to"):
        r._process(batch(0))


def test_a_commit_the_broker_aborted_on_its_timeout_is_decided_again(tmp_path, caplog):
    """A chaos run lost a batch under --exactly-once: the broker was down longer than the
    transaction timeout, so it aborted the open transaction when it came back, and
    kafka-python reported its commit all the same; the consumer had moved past the batch, so
    its 50 transactions were never decided again. A commit that took longer than half the
    timeout now checks the committed offsets."""
    from fds.features import FeaturePlan

    class SlowTxProducer(TxProducer):
        slow = 0.0

        def commit_transaction(self) -> None:
            time.sleep(self.slow)  # the outage
            super().commit_transaction()

    class Committed(SeekingConsumer):
        group = 0

        def committed(self, tp: Any, timeout_ms: Any = None) -> int:
            return self.group  # what the group holds (the aborted transaction's: not there)

    spec = type("S", (), dict(name="n", entity="card_id", agg="count", field=None, window="1d"))
    r = Runner(
        KafkaSettings(exactly_once=True, checkpoint_in_background=False,
                      transaction_timeout_ms=1000),
        Engine(features=FeaturePlan([spec])), checkpointer=Checkpointer(tmp_path),
    )  # fmt: skip
    r.consumer, r.producer = Committed(), SlowTxProducer()
    r._process(batch(0))  # quick: not checked
    assert r._positions == {0: 3} and r.stats.commits == 1
    r.consumer.group = 3
    r.producer.slow = 0.6  # > half the timeout
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        r._process(batch(3))
    assert "aborted on its timeout" in caplog.text and r.stats.commits == 1
    assert r.consumer.seeks[-1] == (TP, 3)  # decided again from its first record
    assert r._positions == {0: 3} and r._unresolved == {0}
    assert len(r.engine.features.states[0]["c1"][1]) == 3  # not in the state
    r.consumer.group = 9
    r._process(batch(3))  # slow, and landed: committed
    assert r.stats.commits == 2 and r._positions == {0: 6}


class Scripted(Consumer):
    """Polls that return ``polls`` one after the other, then nothing; the high watermark is
    ``highwater``, or (``None``) what was read so far: the input read to its end."""

    def __init__(self, polls: list[dict], highwater: int | None = None) -> None:
        super().__init__()
        self.polls, self.hw, self.read = polls, highwater, 0

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        got = self.polls.pop(0) if self.polls else {}
        self.read += sum(len(v) for v in got.values())
        return got

    def highwater(self, tp: Any) -> int:
        return self.read if self.hw is None else self.hw

    def position(self, tp: Any, timeout_ms: int | None = None) -> int:
        return self.read

    def seek(self, tp: Any, offset: int) -> None:
        pass


def test_labels_for_the_input_backlog_wait_for_it_after_a_restart():
    """Found by a review: the first poll after a start returns nothing (the group join uses up
    its time), which looked like an idle input, so every label was applied at once: a label
    whose transaction was still in the unread backlog was counted unmatched and lost."""
    import orjson

    from fds.features import FeaturePlan
    from fds.rules.ruleset import FeatureSpec
    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import NOW_MS, FakeConsumer, label

    def tx(i: int, ts: float) -> bytes:
        return orjson.dumps(
            {"tx_id": f"t{i}", "ts": ts, "card_id": f"c{i}", "merchant_id": "m", "amount": 5.0}
        )

    backlog = [
        Record("transactions", 0, 0, NOW_MS - 1000, b"c0", tx(0, 1_767_225_600.0)),
        Record("transactions", 0, 1, NOW_MS - 500, b"c1", tx(1, 1_767_225_660.0)),
    ]

    spec = FeatureSpec(name="m_frauds", entity="merchant_id", agg="fraud_count", window="7d")
    plan = FeaturePlan([spec], timezone="UTC")
    r = Runner(KafkaSettings(max_unacked_batches=0, align_wait_s=0), Engine(features=plan))
    # poll 1: the group join, nothing; poll 2: the backlog; then nothing
    r.consumer, r.producer = Scripted([{}, {TP: backlog}], highwater=len(backlog)), Producer()
    r.aligner = Aligner(r.consumer, r._event_time, max_wait_s=0)
    # t0's fraud label was produced while fds run was down, after t0
    r.labels = LabelFeed(FakeConsumer([label(0, "t0", -800)]), "labels", plan)
    r._poll_loop(max_idle_s=0.3)
    assert plan.unmatched_labels == 0
    later = {"tx_id": "t9", "ts": 1_767_225_700.0, "merchant_id": "m", "card_id": "c9"}
    assert plan.compute(later)["m_frauds"] == 1


def test_with_the_input_idle_a_label_produced_just_before_its_transaction_waits_for_it():
    """A QA pass: a labeller a few seconds ahead of the transactions' producer. fds run, its
    input read to the end, applied the label at once: its transaction unknown, it was counted
    unmatched, and the merchant's later decisions did not count the fraud until a restart."""
    import orjson

    from fds.features import FeaturePlan
    from fds.rules.ruleset import FeatureSpec
    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import FakeConsumer, Rec

    now_ms = int(time.time() * 1000)

    def tx(i: int, ts: float) -> Record:
        v = {"tx_id": f"t{i}", "ts": ts, "card_id": f"c{i}", "merchant_id": "m", "amount": 5.0}
        ms = now_ms - 2000 if i == 0 else now_ms + i  # (t0, then the label, then t1 and t2)
        return Record("transactions", 0, i, ms, f"c{i}".encode(), orjson.dumps(v))

    spec = FeatureSpec(name="m_frauds", entity="merchant_id", agg="fraud_count", window="7d")
    plan = FeaturePlan([spec], timezone="UTC")
    r = Runner(KafkaSettings(max_unacked_batches=0, align_wait_s=0), Engine(features=plan))
    # poll 1: t0; poll 2: nothing (read to its end: idle; the label is read then); poll 3: t1
    # (the label's) and t2, later than the label; then nothing
    t0 = 1_767_225_600.0
    polls: list[dict] = [{TP: [tx(0, t0)]}, {}, {TP: [tx(1, t0 + 60), tx(2, t0 + 99)]}]
    r.consumer, r.producer = Scripted(polls), Producer()
    r.aligner = Aligner(r.consumer, r._event_time, max_wait_s=0)
    body = orjson.dumps({"tx_id": "t1", "ts": 1_767_225_690.0, "is_fraud": True})
    r.labels = LabelFeed(FakeConsumer([Rec("labels", 0, 0, now_ms - 1000, body)]), "labels", plan)
    r._poll_loop(max_idle_s=0.3)
    assert plan.unmatched_labels == 0
    later = {"tx_id": "t9", "ts": 1_767_225_800.0, "merchant_id": "m", "card_id": "c9"}
    assert plan.compute(later)["m_frauds"] == 1


def _evictable(tmp_path: Any, **settings: Any) -> Runner:
    """A runner with a one-count feature plan and a checkpoint at offset 3 (batch 0 decided
    and committed)."""
    from fds.features import FeaturePlan

    spec = type("S", (), dict(name="n", entity="card_id", agg="count", field=None, window="1d"))
    r = Runner(
        KafkaSettings(checkpoint_in_background=False, max_unacked_batches=0, **settings),
        Engine(features=FeaturePlan([spec])),
        checkpointer=Checkpointer(tmp_path),
    )
    r.consumer, r.producer = SeekingConsumer(), TxProducer()
    r._process(batch(0))
    assert r._positions == {0: 3} and r.checkpointer.saves == 1
    return r


@pytest.mark.parametrize("eos", [False, True], ids=["at-least-once", "exactly-once"])
def test_after_a_refused_commit_nothing_is_decided_until_the_group_is_rejoined(tmp_path, eos):
    """Found by a chaos run (fds run paused 20 s, the broker up): after the refused commit the
    next batch was decided and refused again, six times in 3 s, until kafka-python's heartbeat
    noticed the eviction; then the state was rebuilt from the feature horizon although it had
    been put back to the checkpoint. Now the state goes back to the checkpoint, nothing is
    decided until a rebalance (or a session timeout), and the eviction keeps the checkpoint's
    positions, so the next assignment catches up from them."""
    from kafka.errors import CommitFailedError

    from fds.streams.kafka import _Revoke

    r = _evictable(tmp_path, exactly_once=eos, session_timeout_ms=60_000)
    if eos:
        r.producer.refuse = True
    else:

        def refused(offsets: Any, timeout_ms: int | None = None) -> None:
            raise CommitFailedError("UnknownMemberIdError")

        r.consumer.commit = refused
    r._process(batch(3))
    assert len(r.engine.features.states[0]["c1"][1]) == 3  # back to the checkpoint
    assert r._positions == {0: 3} and r._unresolved == {0}
    assert r._awaiting_rejoin(time.monotonic())  # the loop decides nothing meanwhile
    _Revoke(r).on_partitions_lost([TP])  # kafka-python noticed the eviction
    assert not r._awaiting_rejoin(time.monotonic())
    assert r._positions == {0: 3}  # kept: the next assignment catches up, no rebuild


def test_a_label_is_applied_in_a_batch_right_before_the_first_transaction_after_it():
    """A label counts for the transactions after its own time, within a batch too: the same
    input gave other decisions with other poll sizes (a review)."""
    import orjson

    from fds.features import FeaturePlan
    from fds.rules.ruleset import FeatureSpec
    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import FakeConsumer, label

    spec = FeatureSpec(name="m_frauds", entity="merchant_id", agg="fraud_count", window="7d")
    plan = FeaturePlan([spec], timezone="UTC")
    sent: list[int] = []

    class Keeping(Producer):
        def send(self, topic: str, value: bytes = b"", **kw: Any) -> Future:
            sent.append(orjson.loads(value)["features"]["m_frauds"])
            return super().send(topic, **kw)

    r = Runner(KafkaSettings(max_unacked_batches=0), Engine(features=plan))
    r.consumer, r.producer = Consumer(), Keeping()
    t0 = 1_767_225_600.0
    plan.compute({"tx_id": "f", "ts": t0, "merchant_id": "m", "card_id": "c"})  # the fraud
    body = orjson.dumps({"tx_id": "f", "ts": t0 + 30, "is_fraud": True})  # known 30 s later
    r.labels = LabelFeed(FakeConsumer([label(0, "f", -800, body)]), "labels", plan)
    r.labels.rewind(input_ms=math.inf)
    b = [
        (TP, Record("transactions", 0, i, int(ts * 1000), b"c", b"{}"),
         parse_transaction({"tx_id": f"t{i}", "ts": ts, "card_id": "c", "merchant_id": "m",
                            "amount": 1}))
        for i, ts in enumerate(t0 + 10 * k for k in range(1, 6))  # 10, 20, 30, 40, 50 s
    ]  # fmt: skip
    r._process(b)
    assert sent == [0, 0, 0, 1, 1]  # (before: 1 from the first one on)
    # a label for a transaction of the batch itself (after a restart: not decided yet when the
    # topic was read) counts from the first transaction after its time, not from the next batch
    body = orjson.dumps({"tx_id": "t6", "ts": t0 + 65, "is_fraud": True})
    r.labels = LabelFeed(FakeConsumer([label(0, "t6", -800, body)]), "labels", plan)
    r.labels.rewind(input_ms=-math.inf)
    assert "t6" in r.labels.waiting
    sent.clear()
    r._process([
        (TP, Record("transactions", 0, i, int(ts * 1000), b"c", b"{}"),
         parse_transaction({"tx_id": f"t{i}", "ts": ts, "card_id": "c", "merchant_id": "m",
                            "amount": 1}))
        for i, ts in ((6, t0 + 60), (7, t0 + 70), (8, t0 + 80))
    ])  # fmt: skip
    assert sent == [1, 2, 2]  # (before: 1, 1, 1)


def test_a_dead_letter_too_large_to_send_keeps_the_start_of_its_raw():
    """A 250 KB record of bytes that are not UTF-8 became a 1.25 MB dead letter once escaped,
    which the broker refused: fds run stopped at it, at every restart (a review)."""
    import orjson

    from fds.streams.service import DLQ_MAX_BYTES, DLQ_RAW_KEPT

    sent: list[tuple[bytes, list]] = []

    class Keeping(Producer):
        def send(self, topic: str, value: bytes = b"", headers: Any = None, **kw: Any) -> Future:
            sent.append((value, headers))
            return super().send(topic, **kw)

    r = make_runner()
    r.producer = Keeping()
    r._pending = []
    for value in (b"\xff" * 250_000, b"short \xff"):
        r._dead_letter(Record("transactions", 0, 7, 0, b"k", value), "parse", ValueError("bad"))
    (big, big_headers), (small, _) = sent
    assert len(big) < DLQ_MAX_BYTES
    dead = orjson.loads(big)
    assert dead["raw"] == "\\xff" * (DLQ_RAW_KEPT // 4)
    assert (dead["raw_truncated"], dead["raw_bytes"], dead["position"]) == (
        True, 250_000, {"partition": 0, "offset": 7}
    )  # fmt: skip
    assert ("raw_truncated", b"true") in big_headers
    small_dead = orjson.loads(small)
    assert small_dead["raw"] == "short \\xff" and "raw_truncated" not in small_dead


def test_a_dead_letter_keeps_the_start_of_a_huge_reason_and_key():
    """Found by a QA pass: a reason quoting a 480,000-backslash amount made a 2 MB dead letter
    even with its raw cut, and a 1 MB key (the broker had taken it) did not fit again with
    the body: the broker refused both and fds run stopped at them, every restart."""
    import orjson

    from fds.streams.service import DLQ_KEY_KEPT, DLQ_MAX_BYTES, DLQ_REASON_KEPT

    sent: list[tuple[bytes, bytes, list]] = []

    class Keeping(Producer):
        def send(self, topic: str, value: bytes = b"", key: Any = None, headers: Any = None,
                 **kw: Any) -> Future:  # fmt: skip
            sent.append((value, key, headers))
            return super().send(topic, **kw)

    r = make_runner()
    r.producer = Keeping()
    r._pending = []
    huge = ValueError("amount: not a number: " + "\\" * 480_000)
    r._dead_letter(Record("transactions", 0, 7, 0, b"k" * 10**6, b"x" * 960_000), "validate", huge)
    value, key, headers = sent[0]
    assert len(value) < DLQ_MAX_BYTES and key == b"k" * DLQ_KEY_KEPT
    assert len(orjson.loads(value)["reason"]) == DLQ_REASON_KEPT
    assert ("key_truncated", b"true") in headers and ("raw_truncated", b"true") in headers


def test_partitions_lost_past_the_last_commit_go_back_to_the_checkpoint(tmp_path):
    """Found by a review: between checkpoints the commits are asynchronous, so after an
    eviction under load kafka-python noticed it first (partitions lost) while the state held
    decisions past the last commit, and the state was rebuilt from the feature horizon. Now it
    goes back to the checkpoint at the loop's next pass, and the next assignment catches up."""
    from fds.features import FeaturePlan
    from fds.streams.kafka import _Revoke

    spec = type("S", (), dict(name="n", entity="card_id", agg="count", field=None, window="1d"))
    r = Runner(
        KafkaSettings(checkpoint_in_background=False, max_unacked_batches=2),
        Engine(features=FeaturePlan([spec])),
        checkpointer=Checkpointer(tmp_path),
    )
    r.consumer, r.producer = SeekingConsumer(), Producer()
    r._process(batch(0))
    r._settle(wait=True)
    assert r.checkpoint(force=True) and r._positions == {0: 3}
    r._process(batch(3))  # decided, awaiting the broker: nothing committed past offset 3
    assert r._ahead and len(r.engine.features.states[0]["c1"][1]) == 6
    _Revoke(r).on_partitions_lost([TP])
    assert r._positions == {} and r._lost_ahead  # (before: a rebuild from the horizon next)
    r._back_after_loss()  # what the loop does after the poll that ran the listener
    assert len(r.engine.features.states[0]["c1"][1]) == 3  # back to the checkpoint
    assert r._positions == {0: 3} and not r._ahead  # the next assignment catches up from it
    assert not r._lost_ahead


def test_a_labels_topic_that_cannot_be_read_does_not_hold_every_batch(caplog, monkeypatch):
    """Found by a review: after a failed re-read of the labels topic every batch tried again
    and waited the whole broker timeout for it (one batch per broker_timeout_s)."""
    from fds.features import FeaturePlan
    from fds.rules.ruleset import FeatureSpec
    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import FakeConsumer, label

    class Stuck(FakeConsumer):  # its partition's leader is away: fetches return nothing
        def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
            time.sleep(timeout_ms / 1000)
            return {}

    spec = FeatureSpec(name="m", entity="merchant_id", agg="fraud_count", window="7d")
    plan = FeaturePlan([spec], timezone="UTC")
    r = Runner(KafkaSettings(broker_timeout_s=1), Engine(features=plan))
    r.labels = LabelFeed(Stuck([label(0, "t0", -800)]), "labels", plan)
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        r._apply_labels(idle=False)  # waits the broker timeout once, then gives up
    assert "tried again in 60 s" in caplog.text
    t = time.monotonic()
    for _ in range(3):  # the next batches are not held
        r._apply_labels(idle=False)
    assert time.monotonic() - t < 0.5
    monkeypatch.setattr("fds.streams.kafka.LABELS_RETRY_WAIT_S", 0.2)
    r._labels_retry_at = 0.0  # a minute later: tried again, waiting less long
    t = time.monotonic()
    r._apply_labels(idle=False)
    assert time.monotonic() - t < 0.9 and r._labels_due


def test_time_the_process_was_stopped_is_not_counted_against_the_broker(monkeypatch, caplog):
    """Found by a chaos run: fds run stopped (SIGSTOP) for 20 s while a transactional call
    waited logged "waiting for Kafka (20 s of 60 s)" with the broker up; a longer stop would
    have been taken for a broker outage and ended the run."""
    import threading

    real = time.monotonic
    jump = {"by": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: real() + jump["by"])
    r = make_runner(broker_timeout_s=10)
    answered = threading.Event()

    def call() -> str:
        answered.wait(0.2)
        jump["by"] = 100.0  # the process is stopped for 100 s while the call waits ...
        answered.wait(1.2)  # ... and the broker answers a second after it goes on
        return "ok"

    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        assert r._waited("send_offsets_to_transaction", call, time.monotonic() + 10) == "ok"
    assert "fds run was stopped for" in caplog.text


def test_a_label_of_an_aborted_transaction_waits_for_it_to_be_decided_again(tmp_path):
    """Found by a review: after an aborted transaction the state went back to the checkpoint
    but the input's newest time did not, so the labels re-read found the aborted records'
    transactions unknown and counted their labels unmatched, lost for good."""
    import orjson

    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import FakeConsumer, Rec

    t0 = int(time.time()) - 100

    def merchant_batch(start: int) -> list[tuple[Any, Any, Any]]:
        out = []
        for i in range(start, start + 3):
            tx = parse_transaction(
                {"tx_id": f"t{i}", "ts": t0 + i, "card_id": "c1", "merchant_id": "m",
                 "amount": 5.0}
            )  # fmt: skip
            out.append((TP, Record("transactions", 0, i, (t0 + i) * 1000, b"c1", b"{}"), tx))
        return out

    plan = merchant_plan()
    r = eos_runner(tmp_path, plan)
    # t4's label was produced half a second after t4, before t5 (the batch's newest record)
    body = orjson.dumps({"tx_id": "t4", "ts": t0 + 4, "is_fraud": True})
    r.labels = LabelFeed(FakeConsumer([Rec("labels", 0, 0, (t0 + 4) * 1000 + 500, body)]),
                         "labels", plan)  # fmt: skip
    r._labels_due = False
    r._process(merchant_batch(0))
    r.producer.refuse = True
    r._process(merchant_batch(3))  # refused: aborted, the state back to the checkpoint
    r.consumer.committed = holds(3)  # what the group holds
    r._restore_assigned()  # the loop: the state caught up to it, then the labels re-read
    r._apply_labels(idle=False)  # ... before t3..t5 are decided again
    r.producer.refuse = False
    r._process(merchant_batch(3))  # decided again
    r._apply_labels(idle=False)
    later = {"tx_id": "t9", "ts": t0 + 9, "merchant_id": "m", "card_id": "c9"}
    assert plan.unmatched_labels == 0 and plan.compute(later)["m_frauds"] == 1


def test_at_least_once_the_consumer_goes_back_to_the_commit_after_a_refused_one(tmp_path):
    """Found by a review: after a refused commit the state went back to the checkpoint and was
    caught up to the committed offsets, but the consumer was not sought back; a rejoin that
    keeps the positions (a rebalance in progress, or none within the session timeout) left the
    records between neither decided again nor folded."""
    from kafka.errors import CommitFailedError

    r = _evictable(tmp_path)
    r.aligner = Aligner(r.consumer, r._event_time)

    def refused(offsets: Any, timeout_ms: int | None = None) -> None:
        raise CommitFailedError("RebalanceInProgressError")

    r.consumer.commit = refused
    r.consumer.committed = holds(3)  # what the group holds
    r._process(batch(3))
    r.aligner.add({TP: records(6)})  # fetched meanwhile
    r._restore_assigned()  # the loop, before the next batch
    assert r.consumer.seeks[-1] == (TP, 3) and not len(r.aligner)


def test_a_new_owner_waits_out_the_transaction_a_killed_instance_left_open():
    """A killed instance's open transaction holds its partitions' committed offsets back until
    the broker aborts it (transaction_timeout_ms, kafka-python's 60 s): the new owner read them
    for broker_timeout_s only, as long, and was seen 3 s short of exiting (a chaos review)."""
    seen: dict[str, Any] = {}

    class Held(GroupConsumer):
        def committed(self, tp: Any, timeout_ms: Any = None) -> int:
            seen["timeout_ms"] = timeout_ms
            return 0

    r = Runner(KafkaSettings(exactly_once=True, broker_timeout_s=20), Engine())
    r.consumer = Held()
    r._bring_up_to_date([TP])
    assert seen["timeout_ms"] == (60 + 5) * 1000  # the transaction timeout and a margin
    r = Runner(KafkaSettings(broker_timeout_s=20), Engine())  # at-least-once: no transaction
    r.consumer = Held()
    r._bring_up_to_date([TP])
    assert seen["timeout_ms"] == 20_000


@pytest.mark.parametrize("eos", [False, True])
def test_records_a_restore_left_to_fold_are_folded_with_no_output_and_no_commit(tmp_path, eos):
    """After a restore that stopped folding a partition ahead in event time (see
    fds.streams.rebuild), its records below the committed offset are folded as the loop meets
    them: no decision, no offset committed backwards; the positions a checkpoint claims follow
    the fold."""
    r = make_runner(max_unacked_batches=0, exactly_once=eos, transactional_id="t" if eos else None)
    r.checkpointer = Checkpointer(tmp_path)
    sent_offsets: list[dict[Any, Any]] = []
    r.producer.begin_transaction = lambda: None
    r.producer.send_offsets_to_transaction = lambda offsets, _: sent_offsets.append(offsets)
    r.producer.commit_transaction = lambda: None
    r.consumer.group_metadata = lambda: "g"
    folded: list[Any] = []
    r.engine.fold = folded.append  # type: ignore[method-assign]
    r._refold, r._positions = {TP: 5}, {0: 2}  # the fold stopped at 2; committed: 5
    r._process(batch(2))  # offsets 2-4: decided before
    assert [tx["tx_id"] for tx in folded] == ["t2", "t3", "t4"]
    assert r.producer.futures == [] and r.consumer.commits == [] and r.stats.decided == 0
    assert r._positions == {0: 5} and r._refold == {TP: 5}
    assert r.checkpoint(force=True) and r.checkpointer.load().offsets == {0: 5}
    if eos:  # the transaction carries the committed offset again, never an empty one
        assert [o[TP].offset for o in sent_offsets] == [5]
    r._process(batch(5))  # past the committed offset: decided
    assert len(r.producer.futures) == 3 and r.stats.decided == 3 and not r._refold
    if eos:
        assert [o[TP].offset for o in sent_offsets] == [5, 8]
    else:
        assert r.consumer.commits == [8]
    assert r._positions == {0: 8} and r.checkpoint(force=True)


def eos_runner(tmp_path: Any, plan: Any) -> Runner:
    """An exactly-once runner over ``plan`` with a checkpoint to go back to."""
    r = Runner(
        KafkaSettings(exactly_once=True, checkpoint_in_background=False),
        Engine(features=plan),
        checkpointer=Checkpointer(tmp_path),
    )
    r.consumer, r.producer = SeekingConsumer(), TxProducer()
    return r


def bad_label() -> Record:
    return Record("labels", 0, 0, int(time.time() * 1000) - 800, None, b"{not json")


def test_a_bad_label_read_while_the_input_is_idle_is_dead_lettered_then():
    """Left by a QA pass: its dead letter waited for the next transaction, hours on a quiet
    input, and was lost if fds run stopped first."""
    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import FakeConsumer

    class Idle(Consumer):
        def poll(self, timeout_ms: int, max_records: int) -> dict:
            return {}

    plan = merchant_plan()
    r = Runner(KafkaSettings(align_wait_s=0), Engine(features=plan))
    r.consumer, r.producer = Idle(), Producer()
    r.aligner = Aligner(r.consumer, r._event_time, max_wait_s=0)
    r.labels = LabelFeed(FakeConsumer([bad_label()]), "labels", plan)
    r._labels_due = False  # (read from the topic's start below, as a poll would)
    r.labels.rewind(input_ms=math.inf)
    r._poll_loop(max_idle_s=0.2)
    assert r.stats.dlq_by_stage == {"label": 1}
    assert r.producer.flushes and all(f.is_done for f in r.producer.futures)  # sent, not held


def test_a_bad_label_s_dead_letter_in_an_aborted_transaction_is_sent_again(tmp_path):
    """Exactly-once: a bad label's dead letter goes in a batch's transaction; when the group
    refused that batch's offsets, the transaction was aborted and the dead letter lost (the
    labels re-read does not queue a bad label again)."""
    from fds.streams.label_feed import LabelFeed
    from tests.streams.test_label_feed import FakeConsumer

    plan = merchant_plan()
    r = eos_runner(tmp_path, plan)
    r._process(batch(0))  # a checkpoint to go back to
    r.labels = LabelFeed(FakeConsumer([bad_label()]), "labels", plan)
    r.labels.rewind(input_ms=math.inf)
    r.producer.refuse = True
    r._process(batch(3))  # aborted, its dead letter with it
    r.labels.rewind(input_ms=math.inf)  # the re-read after the rewind
    assert len(r.labels.bad) == 1
    r.producer.refuse = False
    r._process(batch(3))
    assert r.stats.dlq_by_stage == {"label": 2} and not r.labels.bad  # sent once more, committed


def test_max_idle_counts_from_the_first_partitions_not_the_group_join():
    """Left by a QA pass: `--max-idle 1` with a group join of 1.5 s exited before reading the
    backlog the join was about to hand it."""
    from fds.streams.kafka import IdleTimer

    class Joining(Consumer):
        joined = False

        def assignment(self) -> set[Any]:
            return {TP} if self.joined else set()

    timer, c, t0 = IdleTimer(1.0), Joining(), time.monotonic()
    assert not timer.over(c, t0 + 5)  # 5 s joining: not idle
    c.joined = True
    assert not timer.over(c, t0 + 5.9)
    assert timer.over(c, t0 + 6.1)  # idle from the assignment on
    c.joined = False  # partitions taken away later: idle time still
    assert timer.over(c, t0 + 7)
    assert not IdleTimer(None).over(c, t0 + 1e9)
    never = IdleTimer(1.0)  # a member given no partition: ends after the join's grace
    assert not never.over(c, t0 + IdleTimer.JOIN_GRACE_S - 1)
    assert never.over(c, t0 + IdleTimer.JOIN_GRACE_S + 1.5)


def test_max_idle_does_not_count_a_wait_for_the_committed_offsets():
    """A partition without a position (its committed offset held by a transaction a killed
    exactly-once instance left open) is no idle time: such a wait ended a --max-idle run
    with nothing decided (benchmarks/exp_eos_takeover.py)."""
    from types import SimpleNamespace

    from fds.streams.kafka import IdleTimer, positioned

    class Waiting(Consumer):
        known = False

        def __init__(self) -> None:
            super().__init__()
            self._subscription = SimpleNamespace(has_all_fetch_positions=lambda: self.known)

        def assignment(self) -> set[Any]:
            return {TP}

    timer, c, t0 = IdleTimer(1.0), Waiting(), time.monotonic()
    assert not positioned(c) and positioned(Consumer())  # (a fake that does not say: True)
    assert not timer.over(c, t0 + 30)  # 30 s waiting for offsets: not idle
    c.known = True
    assert not timer.over(c, t0 + 30.9)
    assert timer.over(c, t0 + 31.1)  # idle from the positions on
    # for wait_s at most: a partition that never gets a position ends an idle run after all
    bounded, c.known = IdleTimer(1.0, wait_s=60.0), False
    assert not bounded.over(c, t0 + 1) and not bounded.over(c, t0 + 60)
    assert bounded.over(c, t0 + 61.5)


@pytest.mark.parametrize("slow", ["restore", "publish"])
def test_max_idle_does_not_count_a_restore_or_a_slow_idle_pass(slow):
    """Found by CI: a taker waited 15 s in its restore for a killed exactly-once instance's
    offsets, and its idle clock went on from the time read before that wait: once the
    positions came, the run ended as idle (`--max-idle 3`), having decided nothing. Alike for
    any slow step of an idle pass (a checkpoint, a publish of the state) while it waits."""

    class Assigning(Consumer):
        polls = 0

        def __init__(self) -> None:
            super().__init__()  # positions once polled after the restore (as kafka-python)
            self._subscription = SimpleNamespace(has_all_fetch_positions=lambda: self.polls > 1)

        def poll(self, timeout_ms: int, max_records: int) -> dict:
            self.polls += 1
            if self.polls == 1 and slow == "restore":
                r._unresolved = {0}  # (as the assignment callback does)
            if self.polls == 4:
                return {TP: [rec for _tp, rec, _tx in batch(0)]}
            return {}

    def slow_step() -> None:
        if r.consumer.polls == 1:
            time.sleep(0.5)  # (the wait for the committed offsets, a slow write)
        r._unresolved = set()

    r = make_runner(state_dir="none", align_wait_s=0)
    r.consumer = Assigning()
    r.aligner = Aligner(r.consumer, _event_time, max_wait_s=0)
    setattr(r, "_restore_assigned" if slow == "restore" else "_publish_state", slow_step)
    r._poll_loop(max_idle_s=0.3)
    assert r.stats.consumed == 3  # read (dead letters: the fake's records are "{}")


def test_max_idle_reads_the_records_that_came_during_a_slow_idle_pass():
    """A review: with positions, a slow idle pass (a checkpoint, a publish of the state, a
    collection) was counted as idle time, and the run ended before the records that came
    meanwhile were polled."""

    class Feeding(Consumer):
        polls = 0

        def poll(self, timeout_ms: int, max_records: int) -> dict:
            self.polls += 1
            if self.polls <= 3:  # traffic for 0.75 s
                time.sleep(0.25)
                return {TP: [rec for _tp, rec, _tx in batch(3 * (self.polls - 1))]}
            if self.polls == 5:  # came while pass 4 was slow
                return {TP: [rec for _tp, rec, _tx in batch(9)]}
            return {}

    def slow_publish() -> None:
        if r.consumer.polls == 4:
            time.sleep(0.8)  # a slow checkpoint, publish of the state or collection in a lull

    r = make_runner(state_dir="none", align_wait_s=0)
    r.consumer = Feeding()
    r.aligner = Aligner(r.consumer, _event_time, max_wait_s=0)
    r._publish_state = slow_publish  # type: ignore[method-assign]
    r._poll_loop(max_idle_s=0.5)
    assert r.stats.consumed == 12


def test_max_idle_does_not_count_a_batch_that_waited_for_the_broker():
    """A review: a batch held 54 s for its acknowledgements after a broker outage, and the
    next pass found more than --max-idle "without input": the run ended, exit 0, with the
    backlog the broker held undecided."""

    class Feeding(Consumer):
        polls = 0

        def poll(self, timeout_ms: int, max_records: int) -> dict:
            self.polls += 1
            if self.polls in (1, 3):  # the backlog, in two polls
                return {TP: [rec for _tp, rec, _tx in batch(3 * (self.polls // 2))]}
            return {}

    r = make_runner(state_dir="none", align_wait_s=0)
    r.consumer = Feeding()
    r.aligner = Aligner(r.consumer, _event_time, max_wait_s=0)
    process = r._process

    def slow_process(ready: Any) -> None:  # the first batch's acknowledgements, after an outage
        process(ready)
        if r.consumer.polls == 1:
            time.sleep(0.8)

    r._process = slow_process  # type: ignore[method-assign]
    r._poll_loop(max_idle_s=0.5)
    assert r.stats.consumed == 6


def test_work_is_no_idle_time_and_keeps_the_idle_time_before_it():
    """A review: a restore reset the idle window (every rebalance restarted --max-idle for
    the members that stayed); the work alone is taken out of it."""
    from fds.streams.kafka import IdleTimer

    timer, c, t0 = IdleTimer(1.0), Consumer(), time.monotonic()
    assert not timer.over(c, t0 + 0.6)  # idle 0.6 s
    timer.worked(t0 + 0.6, t0 + 10.6)  # 10 s of work
    assert not timer.over(c, t0 + 10.9)  # idle 0.9 s
    assert timer.over(c, t0 + 11.1)  # idle 1.1 s: the 0.6 s before the work count


def test_partitions_added_to_the_input_end_the_co_partitioned_output():
    """Found by a QA pass: with 2 input and 2 output partitions decisions went to the input's
    partition; after the input grew to 3, a record of partition 2 was sent to an output
    partition that does not exist (a traceback)."""

    class Growing(Consumer):
        parts: frozenset[int] = frozenset({0, 1})

        def partitions_for_topic(self, topic: str) -> frozenset[int]:
            return self.parts

    class TwoOut(Producer):
        def partitions_for(self, topic: str) -> set[int]:
            return {0, 1}

    r = make_runner(state_dir="none")
    r.consumer, r.producer = Growing(), TwoOut()
    r._check_copartitioned()
    assert r._copartitioned
    r.consumer.parts = frozenset({0, 1, 2})
    r._on_assigned({TopicPartition("transactions", 2)})
    r._restore_assigned()  # before the assignment's first batch
    assert not r._copartitioned  # keyed by card again: the default partitioner's place
    # and a partition the output lacks while the metadata says otherwise: by its key too
    r._copartitioned, r._n_out = True, 2
    sent: list[Any] = []
    r.producer.send = lambda topic, **kw: sent.append(kw.get("partition")) or Future()
    r._process([*batch(0), (TopicPartition("transactions", 2), *batch(9, 1)[0][1:])])
    assert sent == [0, 0, 0, None]


def test_a_retried_call_logs_its_wait_from_its_first_try(monkeypatch, caplog):
    """Found by a QA pass: 15 s into an outage the log read "(5 s of 49 s)": each retry
    counted from itself, against what was left of the deadline."""
    monkeypatch.setattr("fds.streams.delivery.WAIT_STEP_S", 0.05)
    monkeypatch.setattr("fds.streams.delivery.WAIT_LOG_S", 0.2)
    r = make_runner(broker_timeout_s=60)
    tries: list[float] = []

    def flaky() -> str:
        tries.append(time.monotonic())
        if len(tries) == 1:
            time.sleep(1.2)  # the first try: no answer, then a failure
            raise KafkaTimeoutError("no answer")
        time.sleep(0.5)  # the second: answered at last
        return "ok"

    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        assert r._retrying("flush", flaky) == "ok"
    waits = [m for m in caplog.messages if "flush waiting for Kafka" in m]
    # the second try's lines count from the first (1.3 s before it), against the whole 60 s
    assert waits and all(m.endswith(" of 60 s)") for m in waits), waits
    assert int(waits[-1].rsplit("(", 1)[1].split()[0]) >= 1, waits


def test_a_flush_given_up_asks_whether_the_topics_it_writes_exist(monkeypatch):
    """Found by a QA pass: the decisions topic deleted under fds run was reported as "is Kafka
    up?", the topic not named."""
    from fds.streams.kafka import BrokerUnavailable

    r = make_runner(broker_timeout_s=0.3)

    def never() -> None:
        raise KafkaTimeoutError("Failed to update metadata after 0.3 secs")

    with pytest.raises(BrokerUnavailable, match=r"is Kafka at .* up, and do the topics it writes "
                       r"\('decisions' and 'dead-letters'\) exist\?"):  # fmt: skip
        r._retrying("flush", never)


def test_an_instance_that_decided_nothing_since_its_restore_writes_no_checkpoint(tmp_path):
    """Found by a review: the idle checkpoint (written when the last one was not due at the
    commit) also fired right after a restore that decided nothing: the whole state written and
    sent to the state topic again at every restart."""

    class Idle(Consumer):
        def poll(self, timeout_ms: int, max_records: int) -> dict:
            return {}

    r = Runner(KafkaSettings(align_wait_s=0, checkpoint_in_background=False), Engine(),
               checkpointer=Checkpointer(tmp_path))  # fmt: skip
    r.consumer, r.producer = Idle(), Producer()
    r.aligner = Aligner(r.consumer, r._event_time, max_wait_s=0)
    r._positions = {0: 3}  # what the restore covers
    r._poll_loop(max_idle_s=0.2)
    assert r.checkpointer.saves == 0
    r._live = True  # decided since, and its last checkpoint was not due at its commit
    r._poll_loop(max_idle_s=0.2)
    assert r.checkpointer.saves == 1 and r._saved == {0: 3}


def test_checkpoint_failures_and_broker_reachability_are_metrics(tmp_path):
    """Found by a QA pass: a checkpoint failing every 5 s (a full disk) and a broker gone
    showed only as log lines: nothing to alert on before the instance gave up."""
    from fds.metrics import Metrics

    class Gone(Consumer):
        def end_offsets(self, tps: Any, timeout_ms: int | None = None) -> dict:
            raise KafkaTimeoutError("no answer")

    r = Runner(KafkaSettings(checkpoint_in_background=False), Engine(),
               checkpointer=Checkpointer(tmp_path))  # fmt: skip
    r.consumer, r.producer, r.metrics = Gone(), Producer(), Metrics()
    value = r.metrics.registry.get_sample_value
    r._process(batch(0))  # a checkpoint written
    (tmp_path / "engine.ckpt").unlink()
    (tmp_path / "engine.ckpt").mkdir()  # the next cannot be written
    r._ckpt_at = 0.0
    r._process(batch(3))
    r._report()
    assert value("fds_checkpoints_total", {"result": "ok"}) == 1
    assert value("fds_checkpoints_total", {"result": "failed"}) == 1
    assert r._probe(0.1) == "KafkaTimeoutError: no answer"  # (why it did not answer)
    assert value("fds_broker_reachable") == 0
    # records polled again: it answers (the gauge stayed 0 while traffic flowed: a review)
    r.consumer = LoopConsumer([records(6)])
    r.aligner = Aligner(r.consumer, r._event_time, max_wait_s=0)
    r._poll_loop(max_idle_s=0.2)
    assert value("fds_broker_reachable") == 1
    # a refusal in another call than a poll names that call, not the input topic alone
    from kafka.errors import TopicAuthorizationFailedError

    with pytest.raises(ConfigError, match=r"Kafka refused flush: .*the topics it reads and wri"):
        r._retrying("flush", lambda: (_ for _ in ()).throw(TopicAuthorizationFailedError()))


def test_a_batch_is_counted_consumed_before_it_is_decided_and_a_failed_write_is_retried(
    tmp_path,
):
    """Found by QA passes: mid-batch fds_events_consumed_total trailed fds_decisions_total
    (counted after the whole batch); a background checkpoint that failed while idle was not
    written again until input came."""
    from fds.metrics import Metrics

    r = make_runner()
    r.metrics = Metrics()
    seen: list[float] = []
    decide = r.engine.decide

    def watching(tx: Any) -> Any:
        seen.append(r.metrics.registry.get_sample_value(
            "fds_events_consumed_total", {"source": "kafka"}))  # fmt: skip
        return decide(tx)

    r.engine.decide = watching  # type: ignore[method-assign]
    r._process(batch(0))
    assert seen == [3, 3, 3]
    r.checkpointer = Checkpointer(tmp_path)
    r._saved = {0: 3}
    r.checkpointer.failures += 1  # the background write of those positions failed
    r._report()
    assert r._saved == {}  # written again when due


def test_a_ts_without_an_offset_over_kafka_is_said_once(monkeypatch, caplog):
    """Found by a QA pass: a producer's local times without an offset were read as UTC, every
    decision hours off, without a word."""
    from fds.schema import NaiveWatch
    from fds.streams import kafka as k

    monkeypatch.setattr(k, "_NAIVE_WATCH", NaiveWatch("transaction"))
    times = ("2026-03-01T08:04:13+09:00", "2026-03-01T08:04:13Z", 1772319853, "1772319853",
             "2026-03-01 08:04:13", "2026-03-01T09:00:00")  # fmt: skip
    for i, ts in enumerate(times):
        value = orjson.dumps({"tx_id": f"t{i}", "ts": ts, "card_id": "c", "amount": 1})
        assert k._event_time(Record("transactions", 0, i, 0, b"c", value))[0] > 0
    assert caplog.text.count("has no UTC offset") == 1
    assert 'ts="2026-03-01 08:04:13" at partition="transactions[0]" offset="4"' in caplog.text
    monkeypatch.setattr(k, "_NAIVE_WATCH", NaiveWatch("transaction"))  # (a date alone too)
    value = orjson.dumps({"tx_id": "d", "ts": "2026-03-01", "card_id": "c", "amount": 1})
    k._event_time(Record("transactions", 0, 9, 0, b"c", value))
    assert caplog.text.count("has no UTC offset") == 2


def test_a_state_snapshot_that_cannot_be_read_leaves_the_state_to_a_rebuild(tmp_path, caplog):
    """A review: an unreadable batch on the state topic stopped fds run at its start; the
    snapshot is a shortcut, and the state is rebuilt from the input without it."""
    from types import SimpleNamespace

    from fds.streams.kafka_kit import UnreadableRecords

    def fetch(*_: Any, **__: Any) -> bytes:
        raise UnreadableRecords("a record batch of state[0] at offset 3 fails its checksum")

    r = make_runner()
    r.state_topic = SimpleNamespace(fetch=fetch, topic="state", ident="g/a")  # type: ignore[assignment]
    assert r._fetch_state(Checkpointer(tmp_path / "ck")) is None
    assert 'state topic="state": a batch of it cannot be read' in caplog.text
    assert "the state is rebuilt from the input" in caplog.text


def test_a_state_snapshot_is_restored_from_memory_when_the_state_disk_is_full(
    tmp_path, caplog, monkeypatch
):
    """A QA pass: with --state-topic, a full state disk at a restart made fds run exit 1 (the
    snapshot fetched was written as the checkpoint, and its slot file, before it was loaded).
    It is restored from memory, with a warning naming the state dir and the error; the next
    checkpoint fails as a full disk fails at runtime, and decisions go on."""
    import errno
    import os

    from tests.streams.fakebroker import Broker
    from tests.streams.test_group_state import _run
    from tests.streams.test_refold import P0, P1, logs, runner
    from tests.streams.test_state_topic import Topic

    _run(Broker(logs(n0=5, n1=5), committed={}), tmp_path / "before")
    topic = Topic(n=3)
    broker = Broker(logs(n0=8, n1=8), committed={0: 5, 1: 5})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker, tmp_path / "state", group_instance_id="i0", state_topic="state")
    r.state_topic.publish(topic, (tmp_path / "before" / "engine.ckpt").read_bytes())
    r._state_reader = topic.reader  # type: ignore[method-assign]  # (the topic, in memory)

    def full(*_: Any, **__: Any) -> None:  # the rename of write_atomic: the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    r.run(max_idle_s=0.3)
    later = [f"p{p}-{i}" for p in (0, 1) for i in (5, 6, 7)]
    assert sorted(d["tx_id"] for d in broker.out) == later
    assert r.stats.caught_up == 0  # (restored: nothing rebuilt from the input)
    said = caplog.text
    assert (
        f'state dir="{tmp_path / "state"}": the snapshot is not written as the checkpoint '
        "(OSError: [Errno 28] No space left on device: "
        f"'{tmp_path / 'state' / 'engine.ckpt'}'); it is restored from memory" in said
    )
    assert 'slot file="' in said and "not written" in said
    assert not (tmp_path / "state" / "engine.ckpt").exists()


def test_a_checkpoint_that_cannot_be_read_leaves_the_state_to_a_rebuild(tmp_path, caplog):
    """Only an unusable checkpoint (a ConfigError) was caught at the start: one the OS cannot
    read (here a directory where the file goes) stopped fds run. Warned, naming the state dir
    and the error, and the state is rebuilt from the input."""
    from tests.streams.fakebroker import Broker
    from tests.streams.test_group_state import _run
    from tests.streams.test_refold import logs

    (tmp_path / "engine.ckpt").mkdir(parents=True)
    broker = Broker(logs(n0=5, n1=5), committed={0: 3, 1: 3})
    r = _run(broker, tmp_path)
    assert f'state dir="{tmp_path}": checkpoint not restored (IsADirectoryError: ' in caplog.text
    assert r.stats.caught_up == 6 and len(broker.out) == 4  # rebuilt, then decided


def test_a_checkpoint_into_a_state_dir_another_instance_took_is_refused_loudly(tmp_path, caplog):
    """The state dir deleted, then taken by a second instance: the checkpoint is refused with
    an error line and counted as failed; decisions go on (no exception out of the loop)."""
    import logging
    import shutil

    from tests.streams.fakebroker import Broker
    from tests.streams.test_refold import logs, runner

    r = runner(Broker(logs(), {}), tmp_path / "state")
    ck = r.checkpointer
    assert ck is not None
    ck.lock()
    shutil.rmtree(ck.dir)
    other = Checkpointer(ck.dir)
    other.lock()
    r._positions = {0: 1}
    assert r.checkpoint(force=True) is False
    assert ck.failures == 1 and r.stats.checkpoints == 0
    refused = [x for x in caplog.records if x.levelno == logging.ERROR]
    assert refused and "checkpoint refused: " in refused[0].getMessage()
    assert not (ck.dir / "engine.ckpt").exists()
    other.unlock()
    ck.unlock()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="background writes")
def test_the_checkpoints_counted_at_the_stop_are_those_written(tmp_path, monkeypatch):
    """A QA pass: the stop summary said checkpoints=8 where 7 of them had failed (a background
    write was counted when started). Counted once written: with every write failing, none."""
    import errno
    import os

    from tests.streams.fakebroker import Broker, Group, Producer, Reader
    from tests.streams.test_refold import P0, P1, engine, logs

    def full(_: int) -> None:  # every write's fsync, the forked writers' too
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Reaped(Checkpointer):  # each background write waited for: counted before the stop
        started = 0

        def save_background(self, *args: Any, **kwargs: Any) -> bool:
            self.started += super().save_background(*args, **kwargs)
            return self.wait()

    monkeypatch.setattr(os, "fsync", full)
    broker = Broker(logs(n0=20, n1=20), committed={})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    group = Group(broker)
    ck = Reaped(tmp_path)
    r = Runner(
        KafkaSettings(checkpoint_every_s=0, align_wait_s=0), engine(),
        consumer_factory=lambda **cfg: group if cfg.get("group_id") else Reader(broker),
        producer_factory=lambda **cfg: Producer(broker, **cfg), checkpointer=ck,
    )  # fmt: skip
    stats = r.run(max_idle_s=0.3)
    # (besides the background writes, two in the foreground: at the new group's start
    # commit and at the stop)
    assert len(broker.out) == 40 and ck.started >= 1 and ck.failures == ck.started + 2
    assert stats.checkpoints == ck.saves == 0


def test_a_partition_moved_here_is_rebuilt_alone_from_what_the_state_lacks(tmp_path, caplog):
    """The state follows partition 1; partition 0 moves here: it alone is rebuilt from the
    input and merged in (the state of partition 1 stays), from where this instance stopped
    following it when it had it before (its events up to there are still in the windows: read
    again, they counted twice). Not when what the state holds is not known, nor when the
    group's offset is below where this instance left it: then every partition is rebuilt."""
    from fds.streams import kafka

    r = rebuilding_runner(tmp_path, Reader(records(0, 10)), Group())
    for msg in records(0, 4):  # decided here before partition 0 moved away at offset 4
        r.engine.decide(kafka._event_time(msg)[1])
    r._positions = {0: 4, 1: 5}
    kafka._Revoke(r).on_partitions_assigned({TopicPartition("transactions", 1)})
    assert r._left == {0: (1_700_000_003.0, 4)}
    r._bring_up_to_date([TP])  # taken back: records 4..9 folded, 0..3 were kept
    assert r.stats.caught_up == 6
    assert r._positions == {0: 10, 1: 5} and r._left == {}
    assert r.checkpointer.load().state[kafka.LEFT_KEY] == {}
    tx = {"tx_id": "z", "ts": 1_700_000_010.0, "card_id": "c1", "amount": 5.0}
    assert r.engine.features.compute(tx)["card_count_1h"] == 11  # the 10 once each, and itself

    behind = {TP: 10}
    del r._positions[0]
    with caplog.at_level("INFO"):
        r._left = {0: (r.engine.features.watermark - 60.0, 12)}  # committed below it: reset
        assert r._moved_alone(behind) is None
        assert "were committed below where this instance left them" in caplog.text
        r._left = None  # (a state kept after a failure)
        assert r._moved_alone(behind) is None
        assert "is not known" in caplog.text
    r._left = {0: (r.engine.features.watermark - 91 * 86400, 4)}  # left long ago: aged out
    assert r._moved_alone(behind) == {TP: 4}  # (still in the logs, if out of every window)
    r._left = {}  # never here
    assert r._moved_alone(behind) == {TP: 0}
    r._left, r._positions = {}, {}  # (following nothing: a rebuild of all)
    assert r._moved_alone(behind) is None


def test_a_quiet_input_lets_the_freezer_compact_within_half_the_session_timeout(monkeypatch):
    """The cycles kafka-python had alive at a freeze are collected only by a full pass: the
    loop offers one to the freezer while its input is quiet (fds.gcpolicy.Freezer.idle), with
    half the session timeout as the longest pause (heartbeats stay in time)."""
    from fds.gcpolicy import Freezer

    calls: list[tuple[float, float]] = []
    monkeypatch.setattr(Freezer, "idle", lambda self, q, m=math.inf: calls.append((q, m)))
    consumer = CutOff([records(0)], back_at=0.0, refused_s=0.0, rtt_s=0.0)
    stats = cut_off_runner(consumer, timeout_s=5.0).run(max_idle_s=0.5)
    assert stats.decided == 3
    assert calls and {m for _, m in calls} == {5.0}  # (session_timeout_ms 10,000)
    assert max(q for q, _ in calls) >= 0.4  # quiet for as long as the input was


@pytest.mark.parametrize("first", ["valid", "a dead letter"])
def test_a_moved_partition_far_behind_the_state_gets_every_partition_rebuilt(
    tmp_path, caplog, first
):
    """Partition 0 moved here is to be decided at event times far behind the state's (its
    previous owner fell behind on a backlog): rebuilt alone and merged, its records would be
    decided late, so the state of every partition is rebuilt instead, folded in event time.
    Told by its next records to decide (the first may be a dead letter), before its horizon
    is read."""
    recs = records(0, 12)  # 10 committed, 2 to decide
    if first == "a dead letter":
        recs[10] = recs[10]._replace(value=b"not json")
    r = rebuilding_runner(tmp_path, Reader(recs), Group())
    r._positions = {1: 5}
    r.engine.features.compute(
        {"tx_id": "x", "ts": 1_700_000_000.0 + 86400, "card_id": "c9", "amount": 1.0}
    )  # partition 1 decided a day later
    with caplog.at_level("INFO"):
        r._bring_up_to_date([TP])
    assert "partitions [0] have records to decide more than the grace period" in caplog.text
    assert r.stats.caught_up == 10  # its horizon read once
    assert r._positions == {0: 10} and r._left == {}  # rebuilt: the state of partition 0 only
    assert r.engine.features.state_sizes()["card_id"] == 1


def test_partitions_moved_here_far_ahead_of_the_state_get_every_partition_rebuilt(tmp_path, caplog):
    """The reverse (a review): partition 0 moved here was decided two hours ahead of partition
    1, which this instance follows and which has records to decide. Merged, the watermark would
    jump two hours and partition 1's records would all be decided late; every partition is
    rebuilt instead, folded in event time (partition 0 held back where partition 1 stands)."""

    t0 = 1_700_000_000
    p1 = TopicPartition("transactions", 1)
    tx = b'{"tx_id": "%s", "ts": %d, "card_id": "%s", "amount": 5.0}'

    def rec(tp: Any, i: int, ts: int, card: str) -> Record:
        return Record("transactions", tp.partition, i, ts * 1000, card.encode(),
                      tx % (f"{tp.partition}-{i}".encode(), ts, card.encode()))  # fmt: skip

    logs = {
        TP: [rec(TP, i, t0 - 9 + i, "c0") for i in range(10)],
        p1: [rec(p1, i, t0 - 7210 + i, "c1") for i in range(10)]
        + [rec(p1, 10 + i, t0 - 7200 + 60 * (i + 1), "c1") for i in range(5)],
    }

    class Two(Reader):
        def __init__(self) -> None:
            super().__init__([])

        def end_offsets(self, tps, timeout_ms=None):
            return {tp: len(logs[tp]) for tp in tps}

        def poll(self, timeout_ms=0):
            out = {tp: logs[tp][at : at + 100] for tp, at in self.pos.items() if at < len(logs[tp])}
            self.pos = {tp: min(at + 100, len(logs[tp])) for tp, at in self.pos.items()}
            return out

    class Both(Group):
        def assignment(self):
            return {TP, p1}

    r = rebuilding_runner(tmp_path, Two(), Both())
    for m in logs[p1][:10]:
        r.engine.decide(_event_time(m, math.inf)[1])
    r._positions = {1: 10}
    with caplog.at_level("INFO"):
        covered = r._bring_up_to_date([TP, p1])
    assert "partitions [1] have records to decide" in caplog.text
    assert "merged with the partitions moved here" in caplog.text
    assert covered == {TP: 0, p1: 10}  # partition 0 folded as partition 1 is decided
    for m in logs[p1][10:]:
        assert "late" not in r.engine.decide(_event_time(m, math.inf)[1])["flags"]


def test_a_rebuild_folds_older_records_through_the_features_alone(tmp_path, monkeypatch):
    """Only the last STAGES_TAIL_S of a rebuild's records (by record timestamp) go through the
    whole engine (the alert budget, breaker and the scorer's day counts depend on no more);
    the older ones through the feature plan alone, about five times faster. The features are
    the same either way."""
    from fds.streams import handover

    now_ms = int(time.time() * 1000)
    recs = [r._replace(timestamp=now_ms - 30 * 86400_000) for r in records(0, 6)]
    recs += [r._replace(timestamp=now_ms) for r in records(6, 4)]

    class Timed(Reader):
        def offsets_for_times(self, times):
            return {
                tp: OffsetAndTimestamp(next(r.offset for r in recs if r.timestamp >= t), t, -1)
                for tp, t in times.items()
            }

    r = rebuilding_runner(tmp_path, Timed(recs), Group())
    folded: list[str] = []
    fold = r.engine.fold
    monkeypatch.setattr(r.engine, "fold", lambda tx: (folded.append(tx["tx_id"]), fold(tx)))
    monkeypatch.setattr(handover, "horizon_seconds", lambda engine: 90 * 86400.0)
    r._bring_up_to_date([TP])
    assert folded == ["t6", "t7", "t8", "t9"] and r.stats.caught_up == 10
    assert r.engine.features.state_sizes()["card_id"] == 1
    snapshot = r.engine.features.compute(
        {"tx_id": "t10", "ts": 1_700_000_010.0, "card_id": "c1", "amount": 5.0}
    )
    assert snapshot["card_count_1h"] == 11  # every record folded into the windows


def test_a_connect_asks_a_heartbeat_below_the_session_timeout_and_says_the_broker_unreached():
    """A QA pass: --session-timeout 1000 (accepted) asked a heartbeat of 1000 ms, refused by
    the client and told as a broker out of reach; fds_broker_reachable had no sample while
    the broker was not reached at the start."""
    from kafka.errors import KafkaTimeoutError

    from fds.metrics import Metrics
    from fds.streams.kafka import BrokerUnavailable

    asked: dict[str, Any] = {}

    def unreachable(**cfg: Any) -> Any:
        asked.update(cfg)
        raise KafkaTimeoutError("no broker")

    r = Runner(KafkaSettings(session_timeout_ms=1000, broker_timeout_s=1), Engine(),
               consumer_factory=unreachable)  # fmt: skip
    r.metrics = Metrics()
    with pytest.raises(BrokerUnavailable):
        r._connect()
    assert asked["heartbeat_interval_ms"] < asked["session_timeout_ms"] == 1000
    assert r.metrics.registry.get_sample_value("fds_broker_reachable") == 0


def test_dead_letters_past_ten_a_minute_are_said_in_one_line(caplog, monkeypatch):
    """A QA pass: each dead letter was a warning line of its own, ~177 B each: a stream of bad
    records at 1,000 a second wrote ~15 GB of log a day. Ten a minute are said one by one, the
    rest counted by stage in one line, at the next window or at the stop."""
    from fds.streams import kafka as kafka_module

    clock = [1000.0]
    monkeypatch.setattr(kafka_module.time, "monotonic", lambda: clock[0])
    runner = make_runner()
    bad = [Record("transactions", 0, i, 0, b"k", b"{not json") for i in range(25)]
    with caplog.at_level("WARNING", logger="fds"):
        for i, rec in enumerate(bad):
            runner._dead_letter(rec, "parse" if i % 2 else "validate", ValueError("bad"))
        assert caplog.text.count("dead letter stage=") == 10
        assert "more dead letters" not in caplog.text
        clock[0] += kafka_module.DLQ_SAID_WINDOW_S - 1
        runner._report()  # (about once a second: within the minute, nothing yet)
        assert "more dead letters" not in caplog.text
        clock[0] += 1  # the minute past: the rest said, with no dead letter after them
        runner._report()
        assert "more dead letters" in caplog.text
        runner._dead_letter(bad[0], "parse", ValueError("bad"))  # (a new window: said)
    said = [r.getMessage() for r in caplog.records if "more dead letters" in r.getMessage()]
    assert len(said) == 1 and 'count="15" by_stage="parse:7,validate:8"' in said[0]
    assert caplog.text.count("dead letter stage=") == 11
    assert runner.stats.dead_letters == 26 and len(runner.producer.futures) == 26
    # each line says where its reason is (a README walk); not the reason itself, which quotes
    # the record's values (the logs hold none: a review)
    assert caplog.text.count('reason_in="dead-letters"') == 11
    assert "bad" not in caplog.text.replace("dead letter", "")


def test_a_slow_broker_that_keeps_acknowledging_is_waited_for_not_given_up():
    """A QA pass: a decisions topic throttled by a quota (acknowledging, slowly) ended fds
    run after broker_timeout_s of one batch's wait as "no answer from Kafka" (exit 1, then a
    restart loop writing duplicates). The timeout runs from the last acknowledgement; a
    broker that stops answering is still given up after it."""
    import threading

    from fds.streams.kafka import BrokerUnavailable, _Unacked

    class Slow(Future):
        def __init__(self) -> None:
            super().__init__()
            self.acked = threading.Event()

        def get(self, timeout: float | None = None) -> None:
            self.acked.wait()
            self.is_done = True

    for answers in (8, 2):  # 8 x 0.4 s = 3.2 s, past the 1.5 s timeout; then silent
        r = make_runner(broker_timeout_s=1.5)
        futures = [Slow() for _ in range(8)]
        r._unacked.append(_Unacked(1, futures, {}, {}))  # type: ignore[arg-type]

        def broker(futures: list[Slow] = futures, answers: int = answers) -> None:
            for f in futures[:answers]:
                time.sleep(0.4)
                f.is_done = True
                f.acked.set()

        threading.Thread(target=broker, daemon=True).start()
        t0 = time.monotonic()
        if answers == 8:
            r._await(r._unacked[0])
            assert all(f.is_done for f in futures) and time.monotonic() - t0 > 3.0
        else:
            with pytest.raises(BrokerUnavailable, match="acknowledgement failed for 2 s"):
                r._await(r._unacked[0])
            assert time.monotonic() - t0 < 4.0  # (0.8 s of answers, then the timeout)
        for f in futures:
            f.acked.set()


def test_a_send_that_finds_no_topic_says_which_topics_to_check():
    """A QA pass: the decisions topic deleted under fds run, kafka-python's send waited for its
    metadata and raised; fds run ended on a bare "KafkaTimeoutError: Failed to update
    metadata after 20.0 secs.", naming no topic."""
    from fds.streams.kafka import BrokerUnavailable

    r = make_runner(output_topic="h.decisions")

    def send(topic: str, **_: Any) -> Future:
        raise KafkaTimeoutError("Failed to update metadata after 20.0 secs.")

    r.producer.send = send  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailable, match=r"do the topics fds run writes \('h.decisions'"):
        r._process(batch(0))


def test_a_decisions_topic_of_another_partition_count_is_warned_about_once(caplog):
    """A QA pass: a decisions topic of 3 partitions for an input of 6 was said only as an INFO
    line's co_partitioned="False"; a kill -9 and a restart then wrote 5,000 duplicates (the
    decisions written are looked for in the input partition's number)."""
    r = make_runner()
    r.consumer.partitions_for_topic = lambda topic: set(range(6))  # type: ignore[attr-defined]
    r.producer.partitions_for = lambda topic: {0, 1, 2}  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        r._check_copartitioned()
        r._check_copartitioned()  # (at every assignment: said once)
    assert caplog.text.count('has 3 partitions, the input topic="transactions" 6') == 1
    assert "give the decisions topic the input's partition count" in caplog.text


def test_offsets_acknowledged_while_the_aligner_holds_records_are_committed_on_time():
    """The acknowledged offsets went out with the next batch decided only: while the aligner
    held records for a partition that is behind (up to --broker-timeout when nothing is
    fetched), nothing was committed, and a crash decided all of it again."""
    tp1 = TopicPartition("transactions", 1)
    held: list[tuple[int, dict[int, int]]] = []  # (records held, offsets) per async commit

    class Behind(Consumer):
        polls = 0

        def assignment(self) -> set[Any]:
            return {TP, tp1}

        def highwater(self, tp: Any) -> int | None:
            return 10 if tp == tp1 else None  # partition 1 has more to fetch

        def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
            self.polls += 1
            if self.polls == 1:
                tx = b'{"tx_id": "u0", "ts": %d, "card_id": "c2", "amount": 5.0}' % (T + 1)
                return {TP: records(0), tp1: [Record("transactions", 1, 0, T + 1, b"c2", tx)]}
            r.producer.ack()  # the broker acknowledges what was sent
            r._stop = self.polls >= 5
            return {}

        def commit_async(self, offsets: dict[Any, Any]) -> None:
            held.append((len(r.aligner), {tp.partition: o.offset for tp, o in offsets.items()}))

    T = 1_700_000_000
    r = make_runner(state_dir="none", commit_interval_ms=0)
    r.consumer = Behind()
    r.aligner = Aligner(r.consumer, _event_time, max_wait_s=60)
    r._poll_loop(max_idle_s=None)
    # t0, t1 and u0 decided; t2 (after u0 in event time) held for partition 1's next records
    assert r.stats.decided == 3 and len(r.aligner) == 1
    assert held == [(1, {0: 2, 1: 1})]


def test_a_freeze_the_collector_s_counts_make_due_is_drained_for_first(monkeypatch):
    """The early freeze (fds.gcpolicy.Freezer's ``young``) follows the collector's counts:
    fds run asks before a batch's tick, and drains its sends first (a flush and a blocking
    commit), so that no future in flight is frozen."""
    import gc

    from fds.gcpolicy import Freezer

    r = make_runner(max_unacked_batches=5, commit_interval_ms=0)
    r._freezer = Freezer(young=3)
    freezes: list[tuple[int, int]] = []  # (flushes, blocking commits) at each freeze
    monkeypatch.setattr(r._freezer, "freeze", lambda: freezes.append(
        (r.producer.flushes, len(r.consumer.commits))))  # fmt: skip
    counts = [(0, 0, 0)]
    monkeypatch.setattr(gc, "get_count", lambda: counts[0])
    r._process(batch(0))
    assert freezes == [] and r.producer.flushes == 0
    counts[0] = (0, 0, 3)  # the collector's own full pass is near
    r._process(batch(3))
    assert freezes == [(1, 1)] and r.consumer.commits == [6] and not r._unacked
