"""LabelFeed with an in-memory consumer (the Kafka side is in tests/integration)."""

from __future__ import annotations

import math
from collections import namedtuple

import orjson

from fds.features import FeaturePlan
from fds.rules.ruleset import FeatureSpec
from fds.streams.label_feed import LabelFeed, reads_labels

Rec = namedtuple("Rec", "topic partition offset timestamp value")


class FakeConsumer:
    """The calls LabelFeed makes, over one partition's list of records."""

    def __init__(self, records: list[Rec]) -> None:
        self.records = records
        self.pos = 0
        self.assigned: list = []

    def partitions_for_topic(self, topic):
        return {0}

    def assign(self, tps):
        self.assigned = list(tps)

    def beginning_offsets(self, tps):
        return dict.fromkeys(tps, 0)

    def end_offsets(self, tps):
        return dict.fromkeys(tps, len(self.records))

    def offsets_for_times(self, times):
        return dict.fromkeys(times)  # no record that recent: start_offsets seeks to the end

    def seek(self, tp, offset):
        self.pos = 0  # whatever the offset, the fake re-reads every record

    def poll(self, timeout_ms=0, max_records=None):
        out = self.records[self.pos :]
        self.pos = len(self.records)
        return {self.assigned[0]: out} if out else {}


def plan() -> FeaturePlan:
    return FeaturePlan(
        [FeatureSpec(name="m_frauds", entity="merchant_id", agg="fraud_count", window="7d")],
        timezone="UTC",
    )


def label(i: int, tx_id: str, ms: int, value: bytes | None = None) -> Rec:
    body = (
        value
        if value is not None
        else orjson.dumps({"tx_id": tx_id, "ts": 1_767_225_700.0, "is_fraud": True})
    )
    return Rec("labels", 0, i, ms, body)


def test_labels_wait_for_the_input_and_bad_ones_are_dead_lettered():
    p = plan()
    p.compute({"tx_id": "a", "ts": 1_767_225_600.0, "merchant_id": "m", "card_id": "c"})
    dead = []
    c = FakeConsumer([label(0, "a", 5_000), label(1, "x", 6_000, b"{oops")])
    feed = LabelFeed(c, "labels", p, lambda msg, stage, exc: dead.append((msg.offset, stage)))
    feed.rewind()
    assert feed.poll(input_ms=4_999) == 0  # produced after the newest input decided: held
    tx = {"tx_id": "b", "ts": 1_767_225_660.0, "merchant_id": "m", "card_id": "d"}
    assert p.compute(tx)["m_frauds"] == 0
    assert feed.poll(input_ms=5_000) == 1
    assert dead == [(1, "label")]
    assert p.compute({**tx, "tx_id": "b2", "ts": 1_767_225_661.0})["m_frauds"] == 1
    feed.rewind()  # re-read (after a state rebuild): applying again changes nothing
    assert feed.poll(input_ms=math.inf) == 1
    assert p.compute({**tx, "tx_id": "b3", "ts": 1_767_225_662.0})["m_frauds"] == 1


def test_only_plans_with_label_aware_features_read_labels():
    assert reads_labels(plan())
    counts = FeaturePlan(
        [FeatureSpec(name="n", entity="card_id", agg="count", window="1h")], timezone="UTC"
    )
    assert not reads_labels(counts)
    assert not reads_labels(None)
