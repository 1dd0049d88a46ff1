"""LabelFeed with an in-memory consumer (the Kafka side is in tests/integration)."""

from __future__ import annotations

import math
import time
from collections import namedtuple

import orjson
import pytest
from kafka.structs import OffsetAndTimestamp

from fds.errors import ConfigError
from fds.features import FeaturePlan
from fds.rules.ruleset import FeatureSpec
from fds.streams.label_feed import EARLY_WAIT_S, RACE_S, LabelFeed, reads_labels

Rec = namedtuple("Rec", "topic partition offset timestamp value")
# Record timestamps (ms) in these tests are offsets from now: the feed reads the labels topic
# from the label horizon (the plan's label TTL before now) on.
NOW_MS = int(time.time() * 1000)


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

    def position(self, tp):
        return self.pos

    def end_offsets(self, tps):
        return dict.fromkeys(tps, len(self.records))

    def offsets_for_times(self, times):  # the first record at or after each time, as Kafka
        return {
            tp: next(
                (OffsetAndTimestamp(r.offset, r.timestamp, -1) for r in self.records
                 if r.timestamp >= ms),
                None,
            )
            for tp, ms in times.items()
        }  # fmt: skip

    def seek(self, tp, offset):
        self.pos = offset

    def poll(self, timeout_ms=0, max_records=None):
        out = self.records[self.pos :][:max_records]
        self.pos += len(out)
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
        else orjson.dumps({"tx_id": tx_id, "ts": 1_767_225_500.0, "is_fraud": True})
    )
    return Rec("labels", 0, i, NOW_MS + ms, body)


def tx(tx_id: str, ts: float) -> dict:
    return {"tx_id": tx_id, "ts": ts, "merchant_id": "m", "card_id": tx_id}


def test_a_label_waits_for_its_transaction_while_the_input_is_behind():
    p = plan()
    p.compute(tx("a", 1_767_225_600.0))
    c = FakeConsumer([label(0, "a", 5_000), label(1, "x", 6_000, b"{oops"), label(2, "z", 7_000)])
    feed = LabelFeed(c, "labels", p)
    # "a" was decided: applied at once; "z" not yet, and the input is behind its label: waits
    assert feed.rewind(input_ms=NOW_MS + 4_000) == 1
    assert feed.poll(input_ms=NOW_MS + 4_000) == 0
    ((msg, exc),) = feed.take_bad()  # for the next batch's DLQ
    assert msg.offset == 1
    assert type(exc) is ValueError and str(exc).startswith("not valid JSON")  # as replay says
    assert p.compute(tx("b", 1_767_225_660.0))["m_frauds"] == 1
    p.compute(tx("z", 1_767_225_670.0))  # z's transaction comes through the input later
    assert feed.poll(input_ms=NOW_MS + 4_500) == 1
    assert p.compute(tx("c", 1_767_225_680.0))["m_frauds"] == 2
    # re-read (after a state rebuild): applying again changes nothing
    assert feed.rewind(input_ms=math.inf) == 2
    assert p.compute(tx("d", 1_767_225_690.0))["m_frauds"] == 2
    assert feed.take_bad() == []  # dead-lettered once, not again at every rewind


def test_a_restarted_feed_does_not_dead_letter_what_its_checkpoint_says_was_handed(caplog):
    """A QA pass: every restart dead-lettered every bad label of the topic's retention again.
    A checkpoint keeps where those whose dead letters the broker took end (one taken and not
    yet acknowledged is sent again: a review); a topic made again begins anew."""
    records = [label(0, "x", 1_000, b"{oops"), label(1, "y", 2_000, b"{no"),
               label(2, "z", 3_000, b"{nor")]  # fmt: skip
    feed = LabelFeed(FakeConsumer(records[:2]), "labels", plan())
    feed.rewind(input_ms=math.inf)
    taken = feed.take_bad()
    assert [m.offset for m, _ in taken] == [0, 1]
    assert feed.handed() == {"topic": "labels", "next": {}}  # on their way
    feed.confirm([m for m, _ in taken])  # their batch acknowledged
    feed.consumer.records = records
    feed.rewind(input_ms=math.inf)  # offset 2 taken, its dead letter not acknowledged yet
    assert [m.offset for m, _ in feed.take_bad()] == [2]
    handed = feed.handed()
    assert handed == {"topic": "labels", "next": {0: 2}}
    again = LabelFeed(FakeConsumer(records), "labels", plan())  # the restart
    again.skip_handed(handed)
    again.rewind(input_ms=math.inf)
    assert [m.offset for m, _ in again.take_bad()] == [2]
    assert again.handed() == handed  # (kept into its own checkpoints)
    other = LabelFeed(FakeConsumer(records), "other-labels", plan())  # another topic's: all
    other.skip_handed(handed)
    other.rewind(input_ms=math.inf)
    assert len(other.take_bad()) == 3
    remade = LabelFeed(FakeConsumer(records[:1]), "labels", plan())  # made again: 1 record
    remade.skip_handed(handed)
    with caplog.at_level("WARNING", logger="fds.streams.label_feed"):
        remade.rewind(input_ms=math.inf)
    assert [m.offset for m, _ in remade.take_bad()] == [0] and "made again" in caplog.text


def test_a_label_for_a_transaction_that_can_no_longer_come_is_not_held():
    p = plan()
    p.compute(tx("q", 1_767_225_600.0))  # (the input's time past the label's)
    feed = LabelFeed(FakeConsumer([label(0, "gone", 5_000)]), "labels", p)
    assert feed.rewind(input_ms=NOW_MS + 4_000) == 0  # the input may still bring "gone": held
    assert feed.poll(input_ms=NOW_MS + 5_000) == 1  # the input passed the label: not held ...
    assert feed.awaits("gone") and p.unmatched_labels == 0  # ... but dated before it? waits
    feed.release(1_767_225_501.0 + EARLY_WAIT_S)  # a day past its date: unmatched
    assert p.unmatched_labels == 1 and not feed.awaits("gone")


def test_with_the_input_idle_a_label_a_few_seconds_ahead_of_its_transaction_waits_for_it(
    monkeypatch,
):
    """A QA pass: a labeller a few seconds ahead of the transactions' producer; `fds run`,
    its input read to the end, took the label's transaction for one that can no longer come
    (unmatched: the merchant's fraud count stayed 0 until a restart read the label again). It
    waits RACE_S from when it was read, on this machine's clock (not the labeller's: a
    review)."""
    clock = [1000.0]
    monkeypatch.setattr("fds.streams.label_feed.time.monotonic", lambda: clock[0])
    p = plan()
    now_ms = int(time.time() * 1000)  # (not NOW_MS: this test may run a minute after it)

    def lab(i: int, tx_id: str, ms: int) -> Rec:
        return label(i, tx_id, 0)._replace(timestamp=ms)

    # the labeller's clock far ahead: its wait is counted on this clock; produced a second ago:
    # waits; produced an hour ago (read again at a start): races nothing, unmatched at once
    records = [lab(0, "x", now_ms + 10**9), lab(1, "y", now_ms - 1000), lab(2, "old", 0)]
    p.compute(tx("w", 1_767_225_510.0))  # (the input's time past the labels')
    feed = LabelFeed(FakeConsumer(records), "labels", p)
    assert feed.rewind(input_ms=math.inf) == 1 and set(feed.waiting) == {"x", "y"}
    assert feed.awaits("old") and p.unmatched_labels == 0  # (dated before it? a day's wait)
    p.compute(tx("x", 1_767_225_400.0))  # its transaction comes, decided by fds run
    assert feed.reached("x") == 1
    feed.release(1_767_225_600.0)  # (the next decision, later than the label)
    assert p.compute(tx("z", 1_767_225_600.0))["m_frauds"] == 1
    clock[0] += RACE_S - 1
    assert feed.poll(input_ms=math.inf) == 0  # "y" still waits
    clock[0] += 2  # past RACE_S: a label whose transaction never came is unmatched (if it
    assert feed.poll(input_ms=math.inf) == 1  # is a day old; else it waits too, as "old")
    assert feed.awaits("y") and feed.awaits("old") and p.unmatched_labels == 0
    feed.release(1_767_225_501.0 + EARLY_WAIT_S)
    assert p.unmatched_labels == 2


def test_a_label_produced_before_its_transaction_waits_until_the_input_reaches_its_time():
    """A QA pass: labels produced before their transactions (a fleet fed the labels first,
    static topics read after) were applied unmatched at once, their record timestamps behind
    the input's: no decision saw them (1,231 of 20,000 decisions otherwise than a replay's). A
    label ahead of the input is applied when the decisions pass its time, as in a replay: its
    transaction, earlier, is decided by then if it is this instance's."""
    p = plan()
    p.compute(tx("w", 1_767_225_000.0))
    early = [label(0, "a", -60_000), label(1, "never", -59_000)]  # produced a minute ago
    feed = LabelFeed(FakeConsumer(early), "labels", p)
    assert feed.rewind(input_ms=NOW_MS) == 2 and feed.due == 1_767_225_500.0  # due at its time
    assert p.unmatched_labels == 0
    p.compute(tx("a", 1_767_225_100.0))  # its transaction comes, decided by fds run
    feed.release(1_767_225_600.0)  # (the next decision, later than the labels at ...500)
    assert p.compute(tx("b", 1_767_225_600.0))["m_frauds"] == 1
    # "never": its transaction has not come; it may still (a label dated before its
    # transaction), for a day of event time (it was unmatched at its time: a QA pass)
    assert p.unmatched_labels == 0 and feed.awaits("never")
    assert feed.due == 1_767_225_500.0 + EARLY_WAIT_S
    feed.release(1_767_225_501.0 + EARLY_WAIT_S)
    assert p.unmatched_labels == 1 and not feed.awaits("never")


def test_a_label_dated_before_its_transaction_counts_right_after_it_as_in_a_replay():
    """A QA pass: a chargeback dated before its transaction (to the day, 00:00), produced
    before it, was due at its time, found no transaction, and was lost: the card's later
    fraud_count was 0 where a replay counts 1."""
    p = plan()
    p.compute(tx("w", 1_767_225_000.0))
    feed = LabelFeed(FakeConsumer([label(0, "a2", -60_000)]), "labels", p)  # ts ...500
    feed.rewind(input_ms=NOW_MS)
    assert feed.release(1_767_225_600.0) == 1_767_225_500.0 + EARLY_WAIT_S  # a2 not decided
    assert feed.awaits("a2") and p.unmatched_labels == 0
    assert p.compute(tx("a2", 1_767_225_600.0))["m_frauds"] == 0  # decided: no leak
    assert feed.reached("a2") == 1  # as fds run calls it: applied right after
    assert p.compute(tx("a3", 1_767_225_700.0))["m_frauds"] == 1
    assert p.unmatched_labels == 0 and not feed.awaits("a2")
    feed.release(1_767_225_501.0 + EARLY_WAIT_S)  # (its expiry finds it applied)
    assert p.unmatched_labels == 0


def test_a_label_dated_before_its_transaction_read_behind_the_decisions_waits_for_it():
    """A review: read with its date already behind the decisions (live, or at a restart's
    re-read) and the input past its record time, it was taken as "its transaction can no
    longer come", unmatched at once, where one due waited; and one waiting was lost at a
    re-read. It waits too, for a day of event time past its own."""
    p = plan()
    p.compute(tx("w", 1_767_225_600.0))  # the decisions are past the label's date (...500)
    c = FakeConsumer([label(0, "a2", -60_000)])  # produced a minute ago: behind the input
    feed = LabelFeed(c, "labels", p)
    feed.rewind(input_ms=NOW_MS)
    assert feed.awaits("a2") and p.unmatched_labels == 0
    assert feed.due == 1_767_225_500.0 + EARLY_WAIT_S  # (its wait ends: it was inf, a review)
    feed.rewind(input_ms=NOW_MS)  # read again (a restore): still waits
    assert feed.awaits("a2") and p.unmatched_labels == 0
    p.compute(tx("a2", 1_767_225_700.0))
    assert feed.reached("a2") == 1
    assert not feed._done  # (no id of a label not held: reused by a new one, it skipped it)
    assert p.compute(tx("a3", 1_767_225_800.0))["m_frauds"] == 1 and p.unmatched_labels == 0
    old = plan()  # a day and more behind the decisions: it can no longer come
    old.compute(tx("w", 1_767_225_501.0 + EARLY_WAIT_S))
    feed = LabelFeed(FakeConsumer([label(0, "a2", -60_000)]), "labels", old)
    feed.rewind(input_ms=NOW_MS)
    assert not feed.awaits("a2") and old.unmatched_labels == 1


def test_only_plans_with_label_aware_features_read_labels():
    assert reads_labels(plan())
    counts = FeaturePlan(
        [FeatureSpec(name="n", entity="card_id", agg="count", window="1h")], timezone="UTC"
    )
    assert not reads_labels(counts)
    assert not reads_labels(None)


def test_a_missing_labels_topic_is_a_clear_error():
    class NoTopic(FakeConsumer):
        def partitions_for_topic(self, topic):
            return None

    feed = LabelFeed(NoTopic([]), "labelz", plan())
    with pytest.raises(ConfigError, match=r"'labelz' does not exist.*fds kafka topics"):
        feed.rewind(input_ms=0)
    # fds run tells where the topic was named (a review: always "drop --labels-topic")
    from fds.engine import Engine
    from fds.streams.kafka import Runner, load_settings

    settings = load_settings(labels_topic="labelz")
    runner = Runner(settings, Engine(features=plan()), consumer_factory=lambda **_: NoTopic([]))
    runner._connect_labels("labelz", 1000)
    assert runner.labels is not None
    with pytest.raises(ConfigError, match=r"or fix --labels-topic \(or drop it\)"):
        runner.labels.rewind(input_ms=0)


def test_labels_are_read_for_a_model_stage_without_a_label_aware_feature(caplog):
    """A QA pass: `fds run --labels-topic` with rules that count no fraud dropped the labels
    for the model too (contests and the gate off), said as "no --labels-topic"."""
    from fds.engine import Engine
    from fds.streams.kafka import Runner, load_settings

    counts = FeaturePlan(
        [FeatureSpec(name="n", entity="card_id", agg="count", window="1h")], timezone="UTC"
    )

    class Model:
        def on_label(self, label):
            pass

    def runner(model: object) -> Runner:
        r = Runner(load_settings(labels_topic="labels"), Engine(features=counts, model=model),
                   consumer_factory=lambda **_: FakeConsumer([]))  # fmt: skip
        r._connect_labels("labels", 1000)
        return r

    r = runner(Model())
    assert r.labels is not None and r.labels.also is not None
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        assert runner(None).labels is None  # no model stage: nothing reads them
    assert "no feature is label-aware (fraud_count, fraud_rate) and no model stage" in caplog.text


def test_a_rewind_applies_labels_as_it_reads_them(monkeypatch):
    """A long label history is not held whole in memory: past 2 * MAX_HELD it is applied."""
    monkeypatch.setattr("fds.streams.label_feed.MAX_PER_POLL", 3)
    monkeypatch.setattr("fds.streams.label_feed.MAX_HELD", 2)
    p = plan()
    for i in range(10):
        p.compute(tx(f"t{i}", 1_767_225_600.0 + i))
    feed = LabelFeed(FakeConsumer([label(i, f"t{i}", 5_000) for i in range(10)]), "labels", p)
    sizes = []
    apply = feed._apply

    def spying(input_ms: float) -> int:
        sizes.append(len(feed._held))
        return apply(input_ms)

    monkeypatch.setattr(feed, "_apply", spying)
    assert feed.rewind(input_ms=NOW_MS + 4_000) == 10
    assert len(sizes) > 1 and max(sizes) <= 2 * 2 + 3  # applied before the end, bounded


def test_each_applied_label_is_also_handed_to_the_model_stage():
    p = plan()
    p.compute(tx("a", 1_767_225_600.0))
    seen = []
    feed = LabelFeed(FakeConsumer([label(0, "a", 5_000)]), "labels", p, seen.append)
    assert feed.rewind(input_ms=NOW_MS + 4_000) == 1 and [lab["tx_id"] for lab in seen] == ["a"]


def test_a_label_read_again_is_not_counted_again():
    """fds_feature_labels_total counted every label again at each re-read of the topic (after
    a catch-up or a rebalance), though applying it again changes nothing."""
    p = plan()
    p.compute(tx("a", 1_767_225_600.0))
    feed = LabelFeed(FakeConsumer([label(0, "a", 5_000), label(1, "gone", 5_000)]), "labels", p)
    assert feed.rewind(input_ms=NOW_MS + 60_000) == 2 and feed.changed == 1  # "gone": unmatched
    assert feed.rewind(input_ms=NOW_MS + 60_000) == 2 and feed.changed == 1


def test_a_label_waiting_for_a_transaction_folded_as_fds_run_decides_is_applied_at_its_fold():
    """What a restore left to fold is folded between decisions: a label waiting for one of
    those transactions counts from the next decision, as it did the first time (a CI run: the
    decision after a restart had fraud_count 0), and only once."""
    p = plan()
    seen: list[str] = []
    feed = LabelFeed(FakeConsumer([label(0, "z", 5_000)]), "labels", p, seen.append)
    assert feed.rewind(input_ms=-math.inf) == 0  # "z" is not in the state yet: waits
    assert feed.reached("other") == 0
    p.compute(tx("z", 1_767_225_670.0))  # folded
    assert feed.reached("z") == 1
    assert p.compute(tx("after", 1_767_225_680.0))["m_frauds"] == 1
    assert feed.poll(input_ms=math.inf) == 0 and feed.reached("z") == 0  # not applied again
    assert [lab["tx_id"] for lab in seen] == ["z"]


def test_a_label_counts_only_for_transactions_after_its_own_time():
    """A backlog read with labels of days later already on the topic: the decisions of the
    backlog saw those frauds (a review: a merchant's fraud_count 2 one day before its labels,
    and other decisions with other poll sizes). A label waits until the decisions pass its
    time, as a replay learns it."""
    p = plan()
    p.compute(tx("a", 1_767_225_600.0))  # the fraud; its label is known a day later
    body = orjson.dumps({"tx_id": "a", "ts": 1_767_225_600.0 + 86400, "is_fraud": True})
    feed = LabelFeed(FakeConsumer([label(0, "a", 5_000, body)]), "labels", p)
    assert feed.rewind(input_ms=math.inf) == 1
    assert feed.due == 1_767_225_600.0 + 86400
    assert p.compute(tx("b", 1_767_229_200.0))["m_frauds"] == 0  # an hour later: not yet
    assert feed.release(1_767_225_600.0 + 86400) == feed.due  # not strictly later: waits
    assert p.compute(tx("c", 1_767_225_600.0 + 86400))["m_frauds"] == 0
    assert feed.release(1_767_225_601.0 + 86400) == math.inf  # (what fds run calls first)
    assert p.compute(tx("d", 1_767_225_601.0 + 86400))["m_frauds"] == 1
    assert feed.changed == 1


def test_a_label_stamped_far_after_it_was_produced_is_a_bad_label():
    """A QA pass: a label dated 2099 waited, unapplied and unsaid, for ever in fds run (fds
    train refused it as a clock or data error, max_event_ahead_s)."""
    p = plan()
    p.compute(tx("a", 1_767_225_600.0))
    future = orjson.dumps({"tx_id": "a", "ts": 4_070_908_800.0, "is_fraud": True})  # 2099
    c = FakeConsumer([label(0, "a", 5_000, future), label(1, "a", 6_000)])
    feed = LabelFeed(c, "labels", p, ahead_s=3600.0)
    assert feed.rewind(input_ms=math.inf) == 1  # the good one
    ((msg, exc),) = feed.take_bad()
    assert msg.offset == 0 and "more than max_event_ahead_s (3,600 s)" in str(exc)
    assert p.compute(tx("b", 1_767_225_660.0))["m_frauds"] == 1


def test_a_label_row_fds_produce_could_not_read_keeps_its_reason():
    """A QA pass: chargeback rows `fds produce` could not read or convert (a time not in the
    mapping's ts_format, a short row) were dead-lettered by fds run as "not valid JSON" or
    "Field required", the reason `fds produce` sent with them lost."""
    p = plan()
    bad = label(0, "a", 0, b"a;2026-13-99")
    refused = label(1, "b", 0, b'{"tx_id": "b"}')
    Hdr = namedtuple("Hdr", "topic partition offset timestamp value headers")
    records = [
        Hdr(*bad, [("unreadable", b"expected 3 columns, found 2")]),
        Hdr(*refused, [("fds-refused", b"ts: '99.99.2026' does not fit the mapping's ts_format")]),
    ]
    feed = LabelFeed(FakeConsumer(records), "labels", p)
    feed.rewind(input_ms=NOW_MS)
    assert [str(exc) for _, exc in feed.take_bad()] == [
        "expected 3 columns, found 2",
        "ts: '99.99.2026' does not fit the mapping's ts_format",
    ]


def test_a_label_s_ts_without_an_offset_is_said_once(monkeypatch, caplog):
    """A QA pass: a label stamped `2026-11-20 10:06:00` was read as UTC without a word (a
    transaction's is said): a labeller's local times learned hours off. fds run's label feed
    and fds train read labels through one function."""
    from fds.schema import NaiveWatch, label_of
    from fds.streams import label_feed

    monkeypatch.setattr(label_feed, "_NAIVE", NaiveWatch("label"))
    p = plan()
    p.compute(tx("a", 1_767_225_600.0))
    naive = orjson.dumps({"tx_id": "a", "ts": "2026-01-01 00:00:10", "is_fraud": True})
    c = FakeConsumer(
        [label(0, "a", 5_000), label(1, "a", 6_000, naive), label(2, "a", 7_000, naive)]
    )
    LabelFeed(c, "labels", p).rewind(input_ms=math.inf)
    assert caplog.text.count("a label's ts has no UTC offset") == 1
    assert 'ts="2026-01-01 00:00:10" at partition="labels[0]" offset="1"' in caplog.text
    watch = NaiveWatch("label")
    assert label_of(label(3, "a", 8_000, naive), math.inf, watch)["ts"] == 1_767_225_610.0
    assert watch.left == 0  # (fds train's: said once too)
