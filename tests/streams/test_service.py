"""Helpers shared by the Kafka services (fds run, fds train)."""

from __future__ import annotations

from kafka.errors import UnknownTopicOrPartitionError

from fds.streams.service import partitions_of


class RefreshFailing:
    """A consumer whose ``partitions_for_topic`` first raises what a metadata refresh in
    flight failed with (kafka-python: the error of the one topic that refresh asked for)."""

    def __init__(self, failed_topic: str, partitions: dict[str, set[int]], times: int = 1) -> None:
        self.failed_topic = failed_topic
        self.partitions = partitions
        self.failures_left = times
        self.calls = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        self.calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise UnknownTopicOrPartitionError(self.failed_topic)
        return self.partitions.get(topic)


def test_the_topic_asked_for_unknown_to_the_broker_has_no_partitions():
    consumer = RefreshFailing("gone", {"gone": {0}})
    assert partitions_of(consumer, "gone") == set()
    assert consumer.calls == 1


def test_another_topics_failed_refresh_is_asked_again():
    consumer = RefreshFailing("gone", {"here": {0, 1}})
    assert partitions_of(consumer, "here") == {0, 1}
    assert consumer.calls == 2


def test_another_topics_refresh_failing_again_and_again_is_asked_again_within_the_patience():
    """The subscription retries its refresh: a review saw three tries run out."""
    consumer = RefreshFailing("gone", {"here": {0, 1}}, times=10)
    assert partitions_of(consumer, "here") == {0, 1}
    assert consumer.calls == 11


def test_another_topics_refresh_failing_past_the_patience_raises_its_error():
    import pytest

    consumer = RefreshFailing("gone", {"here": {0}}, times=10**9)
    with pytest.raises(UnknownTopicOrPartitionError):
        partitions_of(consumer, "here", patience_s=0.05)


def test_fds_produce_says_it_waits_for_a_broker_that_does_not_answer(tmp_path, monkeypatch, caplog):
    """A README walk: a mistyped port waited the whole broker timeout (60 s) without a word."""
    import socket

    import pytest

    from fds.streams.produce import produce_file
    from fds.streams.service import BrokerUnavailable
    from fds.streams.settings import KafkaSettings

    monkeypatch.setattr("fds.streams.service.CONNECT_SAY_AFTER_S", 0.1)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tx = tmp_path / "tx.jsonl"
    tx.write_text('{"tx_id": "t1", "ts": 1767225600, "card_id": "c1", "amount": 5}\n')
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{port}", broker_timeout_s=1.5)
    with caplog.at_level("WARNING"), pytest.raises(BrokerUnavailable, match="cannot reach"):
        produce_file(tx, settings)
    assert "no answer from Kafka yet: waiting up to 2 s (--broker-timeout)" in caplog.text


def test_a_broker_timeout_past_kafkas_32_bit_milliseconds_is_refused_as_a_setting():
    """A QA pass: `fds run --broker-timeout 1e10` was a traceback (OverflowError) from the
    client's wait."""
    import pytest

    from fds.errors import ConfigError
    from fds.streams.settings import load_settings

    assert load_settings(broker_timeout_s=2_147_483).timeout_ms == 2_147_483_000
    with pytest.raises(ConfigError, match=r"setting broker_timeout_s: .* 2147483 \(from --broker"):
        load_settings(broker_timeout_s=1e10)


def test_a_fault_switch_that_is_no_number_is_a_usage_error(monkeypatch):
    """A QA pass: FDS_FAULT_KILL_AFTER_FLUSH=abc was a traceback (ValueError)."""
    import pytest

    from fds.errors import ConfigError
    from fds.streams.kafka import _fault

    monkeypatch.delenv("FDS_FAULT_FOLD_DELAY_S", raising=False)
    assert _fault("FDS_FAULT_FOLD_DELAY_S", float) == 0
    monkeypatch.setenv("FDS_FAULT_KILL_AFTER_FLUSH", "3")
    assert _fault("FDS_FAULT_KILL_AFTER_FLUSH", int) == 3
    monkeypatch.setenv("FDS_FAULT_KILL_AFTER_FLUSH", "abc")
    with pytest.raises(ConfigError, match="FDS_FAULT_KILL_AFTER_FLUSH='abc': a test's fault"):
        _fault("FDS_FAULT_KILL_AFTER_FLUSH", int)
    for bad in ("nan", "inf", "-1"):  # (a traceback at the first sleep: a review)
        monkeypatch.setenv("FDS_FAULT_FOLD_DELAY_S", bad)
        with pytest.raises(ConfigError, match=f"FDS_FAULT_FOLD_DELAY_S='{bad}'"):
            _fault("FDS_FAULT_FOLD_DELAY_S", float)
