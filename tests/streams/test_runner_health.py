"""What ``fds run`` answers on /readyz as it starts, joins, rebuilds, decides and drains, and
how its loop beats for /healthz (fds.health). In-memory broker (tests/streams/fakebroker.py);
against the real one: tests/integration/test_kafka_health.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kafka.errors import KafkaConnectionError

from fds.health import Health
from fds.metrics import Metrics
from fds.streams.kafka import Runner
from tests.streams.fakebroker import Broker, Group, Reader
from tests.streams.test_refold import P0, P1, engine, logs, runner


class SeenReader(Reader):
    """The restore's reader: notes what /readyz and the heartbeat say at each of its polls."""

    def __init__(self, broker: Broker, seen: list[Any]) -> None:
        super().__init__(broker)
        self.seen = seen
        self.r: Runner | None = None

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        assert self.r is not None
        self.seen.append(("restore", self.r.readiness(), self.r.health.beat))
        return super().poll(timeout_ms, max_records)


def seen_runner(broker: Broker, tmp_path: Any, seen: list[Any], **settings: Any) -> Runner:
    group, reader = Group(broker), SeenReader(broker, seen)
    r = runner(broker, tmp_path, eng=engine(Metrics()), **settings)
    r._consumer_factory = lambda **cfg: group if cfg.get("group_id") else reader
    reader.r = r
    return r


def note(r: Runner, seen: list[Any], what: str) -> Any:
    return lambda g: seen.append((what, r.readiness()))


def ready_gauge(r: Runner) -> float | None:
    return r.metrics.registry.get_sample_value("fds_ready")


def test_ready_once_it_decides_not_while_starting_joining_rebuilding_or_draining(tmp_path):
    broker = Broker(logs(n0=40, n1=40), committed={0: 20, 1: 20})  # no checkpoint: a rebuild
    seen: list[Any] = []
    r = seen_runner(broker, tmp_path, seen)
    assert r.readiness() == (
        False,
        "starting: connecting to Kafka at 127.0.0.1:19092, loading the state",
    )

    def stop(g: Group) -> None:
        r.stop()
        seen.append(("stopped", r.readiness()))

    gauge: list[float | None] = []
    broker.script = [
        (1, note(r, seen, "before the assignment")),
        (1, lambda g: gauge.append(ready_gauge(r))),
        (1, lambda g: g.rebalance({P0, P1})),
        (3, note(r, seen, "deciding")),
        (3, lambda g: gauge.append(ready_gauge(r))),
        (6, stop),
    ]
    r.run(max_idle_s=5)
    got = dict((what, ready) for what, ready, *_ in seen)
    assert got["before the assignment"] == (False, "joining the group 'fds'")
    assert got["restore"] == (False, "restoring the state (rebuild): partitions [0, 1]")
    assert got["deciding"] == (True, "deciding 2 partitions")
    assert got["stopped"][0] is False and got["stopped"][1].startswith("draining after a stop")
    assert r.stats.caught_up == 40 and r.stats.decided > 0
    assert gauge == [0.0, 1.0]  # fds_ready, as /readyz says it


def test_a_restore_that_advances_beats_a_stalled_loop_would_not(tmp_path):
    """A long rebuild is progress for /healthz: the fold beats about once a second."""
    broker = Broker(logs(n0=40, n1=40), committed={0: 40, 1: 40})
    seen: list[Any] = []
    r = seen_runner(broker, tmp_path, seen)
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r.run(max_idle_s=0.3)
    beats = [beat for what, _, beat in seen if what == "restore"]
    assert len(beats) > 2 and beats[-1] > beats[0]  # (the loop's own beat came before them)


def test_no_partition_assigned_is_ready_as_a_standby(tmp_path):
    broker = Broker(logs(n0=5, n1=5), committed={})
    seen: list[Any] = []
    r = seen_runner(broker, tmp_path, seen)
    broker.script = [
        (1, lambda g: g.rebalance(set())),
        (3, note(r, seen, "standby")),
        (4, lambda g: r.stop()),  # (--max-idle counts a minute for a member without partitions)
    ]
    r.run()
    assert dict(seen)["standby"] == (
        True, "no partition assigned (more instances than partitions): standing by"
    )  # fmt: skip


def test_not_ready_while_the_broker_does_not_answer_then_ready_again(tmp_path):
    broker = Broker(logs(n0=30, n1=30), committed={0: 0, 1: 0})
    seen: list[Any] = []
    r = seen_runner(broker, tmp_path, seen)

    def outage(g: Group) -> None:
        raise KafkaConnectionError("broker gone")

    broker.script = [
        (1, lambda g: g.rebalance({P0, P1})),
        (3, outage),
        (4, note(r, seen, "outage")),
        (6, note(r, seen, "back")),
    ]
    r.run(max_idle_s=0.3)
    got = dict(seen)
    assert got["outage"] == (
        False, "waiting for the broker: Kafka at 127.0.0.1:19092 does not answer"
    )  # fmt: skip
    assert got["back"] == (True, "deciding 2 partitions")


class CountingHealth(Health):
    """Counts the stores into ``beat`` (a plain attribute in production)."""

    stores = 0

    @property  # type: ignore[override]
    def beat(self) -> float:
        return self._beat

    @beat.setter
    def beat(self, value: float) -> None:
        self._beat = value
        self.stores += 1


def test_the_loop_beats_once_per_poll_not_per_record(tmp_path):
    broker = Broker(logs(n0=200, n1=200), committed={0: 0, 1: 0})
    r = runner(broker, tmp_path)
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r.health = h = CountingHealth(stale_after_s=120, ready=r.readiness)
    h.stores = 0
    r.run(max_idle_s=0.3)
    assert r.stats.decided == 400
    assert 0 < h.stores <= broker.polls + 1  # (+1: a restore's fold beats at its start)


def test_every_read_beside_the_group_beats(tmp_path):
    """A review: a fetch of a large snapshot from the state topic (or a scan of it, the
    decisions read back after a crash) polled its own reader for longer than the liveness bound
    without a beat, and /healthz would have called a normal takeover stuck."""
    broker = Broker(logs(n0=4, n1=4), committed={})
    clock = [100.0]
    r = runner(broker, tmp_path, eng=engine(Metrics()))
    r.health = Health(stale_after_s=1, clock=lambda: clock[0])
    r._consumer_factory = lambda **cfg: Reader(broker)
    for reader in (r._state_reader(), r._reader(auto_offset_reset="earliest")):
        clock[0] += 5.0
        assert r.health.liveness()[0] == 503  # no beat for 5 s
        reader.poll(timeout_ms=0)
        assert r.health.liveness()[0] == 200 and r.health.beat == clock[0]


def test_an_outage_during_a_restore_is_said_on_readyz_and_by_the_gauge(tmp_path, monkeypatch):
    """A QA pass: a broker gone while a restore read the input's history left
    fds_broker_reachable at 1 and /readyz at "restoring the state" until the broker timeout
    ended the run: a restore's read that gets nothing for STALL_S asks the broker."""
    import pytest

    from fds.errors import FdsError
    from fds.streams import handover

    monkeypatch.setattr(handover, "STALL_S", 0.05)
    broker = Broker(logs(n0=40, n1=40), committed={0: 20, 1: 20})  # no checkpoint: a rebuild
    seen: list[Any] = []
    r = seen_runner(broker, tmp_path, seen, broker_timeout_s=1)
    reader, group = r._consumer_factory(), r._consumer_factory(group_id="g")
    polls = [0]
    gone = super(SeenReader, reader).poll

    def poll(timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        seen.append(("restore", r.readiness(), reader_gauge()))
        polls[0] += "(rebuild)" in (r._busy or "")  # (its reads, not the horizon's lookup)
        return gone(timeout_ms, max_records) if polls[0] < 3 else {}  # then the broker is gone

    def unreachable(tps: Any, timeout_ms: int | None = None) -> Any:
        if polls[0] >= 3:
            raise KafkaConnectionError("broker gone")
        return Group.end_offsets(group, tps, timeout_ms)

    def reader_gauge() -> float | None:
        return r.metrics.registry.get_sample_value("fds_broker_reachable")

    reader.poll, group.end_offsets = poll, unreachable  # type: ignore[method-assign]
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    with pytest.raises(FdsError, match="no input could be read"):
        r.run(max_idle_s=5)
    last = seen[-1]
    assert last[1] == (False, "waiting for the broker: Kafka at 127.0.0.1:19092 does not answer "
                       "(restoring the state (rebuild): partitions [0, 1])")  # fmt: skip
    assert last[2] == 0.0


def test_offsets_an_open_transaction_holds_back_are_no_broker_outage(tmp_path, monkeypatch):
    """A QA pass: an exactly-once instance taking over waited for the offsets a killed one's
    open transaction held, and /readyz said the broker "does not answer" (and the gauge 0)
    while it answered: such a wait is not said as the broker's silence."""
    import time

    from fds.streams import delivery

    monkeypatch.setattr(delivery, "WAIT_LOG_S", 0.01)
    monkeypatch.setattr(delivery, "WAIT_STEP_S", 0.01)
    r = runner(Broker(logs(n0=1, n1=1), committed={}), tmp_path, eng=engine(Metrics()))
    slow = lambda: time.sleep(0.1) or 1  # noqa: E731
    assert r._waited("reading the committed offsets", slow, time.monotonic() + 5, held=True)
    assert r._broker_up is None
    states: list[bool] = []
    said = r._broker_state
    r._broker_state = lambda up: states.append(up) or said(up)  # type: ignore[method-assign]
    assert r._waited("commit", slow, time.monotonic() + 5)
    # said silent while it waited, and answering once it did (it stayed 0: a QA pass)
    assert states[0] is False and states[-1] is True and r._broker_up is True


def test_a_wait_said_on_the_log_says_its_end(tmp_path, monkeypatch, caplog):
    """A QA pass: after "acknowledgement waiting for Kafka ... (25 s of 60 s)" the broker came
    back and deciding resumed, and no line said so (the idle loop's outage says its end)."""
    import time

    from fds.streams import delivery

    monkeypatch.setattr(delivery, "WAIT_LOG_S", 0.01)
    monkeypatch.setattr(delivery, "WAIT_STEP_S", 0.01)
    r = runner(Broker(logs(n0=1, n1=1), committed={}), tmp_path, eng=engine(Metrics()))
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        assert r._waited("acknowledgement", lambda: time.sleep(0.1) or 1, time.monotonic() + 5)
        assert r._waited("commit", lambda: 1, time.monotonic() + 5)  # (no wait: nothing said)
    said = [m for m in caplog.messages if "answers again" in m]
    assert len(said) == 1 and 'in="acknowledgement"' in said[0], caplog.messages
    # the whole wait, not since the last acknowledgement that came (a review: "seconds="0""
    # after 54 s, the first acknowledgement both the progress and the end)
    caplog.clear()
    acked = iter([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        assert r._waited("acknowledgement", lambda: time.sleep(0.15) or 1,
                         time.monotonic() + 5, since=time.monotonic() - 30,
                         progress=lambda: next(acked, 1))  # fmt: skip
    said = [m for m in caplog.messages if "answers again" in m]
    assert said == ['Kafka answers again after an outage seconds="30" in="acknowledgement"'], said


def test_a_member_the_heartbeat_found_fenced_stops_before_deciding_more(tmp_path):
    """A README walk: a second instance started with this one's --group-instance-id fenced it;
    kafka-python's heartbeat thread logged it and stopped beating, and the loop decided on (14
    duplicate decisions) until its next commit."""
    import logging

    import pytest

    from fds.errors import FdsError

    broker = Broker(logs(n0=40, n1=40), committed={0: 0, 1: 0})
    r = runner(broker, tmp_path, group="g", group_instance_id="i1")
    heartbeat = logging.getLogger("kafka.coordinator.heartbeat")

    def fenced(g: Group) -> None:
        heartbeat.error("Heartbeat thread caught fenced group_instance_id %s error", "i1")

    def other(g: Group) -> None:  # (another instance's, in the same process: not this one)
        heartbeat.error("Heartbeat thread caught fenced group_instance_id %s error", "i9")

    broker.script = [(1, lambda g: g.rebalance({P0, P1})), (3, other), (5, fenced)]
    with pytest.raises(FdsError, match=r"heartbeat: another member joined group 'g'"):
        r.run(max_idle_s=5)
    decided = len(broker.out)
    assert 0 < decided < 80  # stopped with records left: it did not decide on
    assert broker.polls <= 6


def test_a_start_that_waits_for_the_broker_says_so_and_when_it_answers(
    tmp_path, caplog, monkeypatch
):
    """A QA pass: `fds run` started against a broker down said nothing for 32 s (only /readyz
    said it waited)."""
    import time

    monkeypatch.setattr("fds.streams.service.CONNECT_SAY_AFTER_S", 0.1)
    broker = Broker(logs(n0=4, n1=4), committed={0: 0, 1: 0})
    broker.script = [(1, lambda g: g.rebalance({P0, P1}))]
    r = runner(broker, tmp_path)
    make = r._consumer_factory

    def slow(**cfg: Any) -> Any:  # (the bootstrap waits for a broker that comes up later)
        time.sleep(0.5)
        return make(**cfg)

    r._consumer_factory = slow
    with caplog.at_level("INFO", logger="fds.streams.kafka"):
        r.run(max_idle_s=0.3)
    said = [m.getMessage() for m in caplog.records]
    waits = [m for m in said if m.startswith("no answer from Kafka yet")]
    assert waits == [
        "no answer from Kafka yet: waiting up to 60 s (--broker-timeout) "
        'bootstrap="127.0.0.1:19092"'
    ], said
    assert any(m.startswith('Kafka answers after a wait seconds="') for m in said), said
    assert len(broker.out) == 8  # (then decided as ever)


def test_the_broker_answering_again_after_an_outage_is_said_once(caplog, monkeypatch):
    """A QA pass: warnings every few seconds during an outage ended in silence."""
    import fds.streams.service as service
    from fds.streams.service import BrokerWatch

    clock, answers = [100.0], ["KafkaTimeoutError: no answer"]
    monkeypatch.setattr(service, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    watch = BrokerWatch(lambda _t: answers[0], 60.0, lambda: "gone")
    with caplog.at_level("INFO", logger="fds.streams.kafka"):
        clock[0] += 12.0
        assert watch.idle_ended(clock[0], False) is False  # (said: no answer for 12 s)
        answers[0] = None
        clock[0] += 8.0
        watch.idle_ended(clock[0], False)
        watch.answered(clock[0] + 1)  # (records too: said once)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith("no answer from Kafka for 12 s"), said
    assert said[1] == 'Kafka answers again after an outage seconds="20"', said


def test_an_unanswered_probe_says_how_long_and_for_how_long_more(caplog, monkeypatch):
    """A chaos run: `broker probe failed: KafkaTimeoutError: KafkaTimeoutError: ...` every
    3 s, without how long it had waited or how long was left, then an exit."""
    import pytest

    import fds.streams.service as service
    from fds.streams.service import BrokerUnavailable, BrokerWatch

    clock = [100.0]
    # (the module's own clock: time.monotonic itself is every thread's)
    monkeypatch.setattr(service, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    watch = BrokerWatch(lambda _t: "KafkaTimeoutError: no answer", 60.0, lambda: "gone")
    clock[0] += 12.0
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        assert watch.idle_ended(clock[0], False) is False
    assert "no answer from Kafka for 12 s of 60 s (--broker-timeout), then exit: " in caplog.text
    assert caplog.text.count("KafkaTimeoutError") == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):  # (a probe every 3 s: said
        for _ in range(10):  # every 15 s, not at each, 40 lines in a 2-minute outage: a QA)
            clock[0] += 3.0
            watch.idle_ended(clock[0], False)
    said = [r.getMessage()[:30] for r in caplog.records]
    assert said == ["no answer from Kafka for 27 s ", "no answer from Kafka for 42 s "], said
    clock[0] += 20.0
    with pytest.raises(BrokerUnavailable, match="gone"):
        watch.idle_ended(clock[0], False)
