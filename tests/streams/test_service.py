"""Helpers shared by the Kafka services (fds run, fds train)."""

from __future__ import annotations

from kafka.errors import UnknownTopicOrPartitionError

from fds.streams.service import partitions_of


class RefreshFailing:
    """A consumer whose ``partitions_for_topic`` first raises what a metadata refresh in
    flight failed with (kafka-python: the error of the one topic that refresh asked for)."""

    def __init__(self, failed_topic: str, partitions: dict[str, set[int]]) -> None:
        self.failed_topic: str | None = failed_topic
        self.partitions = partitions
        self.calls = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        self.calls += 1
        if self.failed_topic is not None:
            failed, self.failed_topic = self.failed_topic, None
            raise UnknownTopicOrPartitionError(failed)
        return self.partitions.get(topic)


def test_the_topic_asked_for_unknown_to_the_broker_has_no_partitions():
    consumer = RefreshFailing("gone", {"gone": {0}})
    assert partitions_of(consumer, "gone") == set()
    assert consumer.calls == 1


def test_another_topics_failed_refresh_is_asked_again():
    consumer = RefreshFailing("gone", {"here": {0, 1}})
    assert partitions_of(consumer, "here") == {0, 1}
    assert consumer.calls == 2
