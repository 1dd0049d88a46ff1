"""`fds run --labels-topic`: labels reach the label-aware features of a running scorer."""

from __future__ import annotations

import itertools
import signal
import time

import orjson
import pytest
from kafka import KafkaProducer

from fds.pipeline import DEFAULT_RULES
from fds.streams.checkpoint import FILE_NAME
from tests.integration.test_kafka_run import T0, read_all, spawn_run, wait_until

pytestmark = pytest.mark.integration

FEATURE = "merchant_fraud_count_28d"  # a label-aware feature of rules/default.yaml


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_a_label_on_the_labels_topic_reaches_the_merchant_features_of_fds_run(
    kafka_bootstrap, topics, unique_name, mode
):
    """... and a bad label is dead-lettered (under exactly-once inside a transaction: a send
    outside one is refused)."""
    stages = ("--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir", "none")
    eos = ("--exactly-once",) if mode == "exactly-once" else ()
    p = spawn_run(
        kafka_bootstrap, topics, unique_name("g"), "--labels-topic", topics["labels"], *eos,
        stages=stages,
    )  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    seq = itertools.count()

    def send_tx(merchant: str) -> str:
        i = next(seq)
        tx = {"tx_id": f"tx{i:05d}", "ts": T0 + 60.0 * i, "card_id": f"c{i}",
              "merchant_id": merchant, "amount": 100.0}  # fmt: skip
        producer.send(topics["transactions"], key=tx["card_id"].encode(), value=orjson.dumps(tx))
        producer.flush()
        return tx["tx_id"]

    def decisions() -> dict[str, dict]:
        out = {}
        for r in read_all(kafka_bootstrap, topics["decisions"]):
            d = orjson.loads(r.value)
            out[d["tx_id"]] = d
        return out

    try:
        fraud = send_tx("m1")
        before_label = send_tx("m1")
        wait_until(lambda: before_label in decisions(), 60, "the first decisions")
        label = {"tx_id": fraud, "ts": T0 + 90.0, "is_fraud": True}  # between tx 1 and 2
        producer.send(topics["labels"], value=b"{not json")  # a bad label: dead-lettered
        producer.send(topics["labels"], key=fraud.encode(), value=orjson.dumps(label))
        producer.flush()

        # Later transactions of the merchant see the label once fds run has applied it.
        later: list[str] = []

        def counted() -> bool:
            later.append(send_tx("m1"))
            got = decisions()
            return any(got.get(t, {}).get("features", {}).get(FEATURE) == 1 for t in later)

        wait_until(counted, 60, f"a later decision with {FEATURE} = 1")
        got = decisions()
        assert got[before_label]["features"][FEATURE] == 0  # decided before the label: no leak
        other = send_tx("m2")
        wait_until(lambda: other in decisions(), 30, "a decision for another merchant")
        assert decisions()[other]["features"][FEATURE] == 0  # attributed to m1 only

        dead = read_all(kafka_bootstrap, topics["dead_letters"], committed_only=bool(eos))
        headers = [dict(r.headers) for r in dead]
        assert any(h.get("stage") == b"label" for h in headers), headers
        assert any(h.get("source_topic") == topics["labels"].encode() for h in headers)
    finally:
        producer.close()
        p.kill()
        p.wait(10)


@pytest.mark.parametrize("restart", ["checkpoint", "rebuild"])
def test_labels_survive_kill9_and_restart_counted_once(
    kafka_bootstrap, topics, unique_name, tmp_path, restart
):
    """After kill -9 the restarted instance reads the labels topic again from the label
    horizon, once its state is back: from the checkpoint (which already holds the label: it
    must not count twice) or rebuilt from the input (without the label: it must count again).
    A bad label is dead-lettered once, not again after a restart from the checkpoint (it was at
    every restart: a QA pass); without one (a new state dir) it is, once more."""
    group = unique_name("g")

    def stages(state: str) -> tuple[str, ...]:
        return (
            "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir", str(tmp_path / state),
            "--checkpoint-every", "0.2",
        )  # fmt: skip

    extra = ("--labels-topic", topics["labels"], "--group-instance-id", "i0")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    seq = itertools.count()

    def send_tx() -> str:
        i = next(seq)
        tx = {"tx_id": f"tx{i:05d}", "ts": T0 + 60.0 * i, "card_id": f"c{i}",
              "merchant_id": "m1", "amount": 100.0}  # fmt: skip
        producer.send(topics["transactions"], key=tx["card_id"].encode(), value=orjson.dumps(tx))
        producer.flush()
        return tx["tx_id"]

    def counts(ids: list[str]) -> list[int]:
        got = {}
        for r in read_all(kafka_bootstrap, topics["decisions"]):
            d = orjson.loads(r.value)
            got[d["tx_id"]] = d["features"][FEATURE]
        return [got[t] for t in ids if t in got]

    try:
        p = spawn_run(kafka_bootstrap, topics, group, *extra, stages=stages("a"))
        fraud = send_tx()
        wait_until(lambda: counts([fraud]) == [0], 60, "the first decision")
        label = {"tx_id": fraud, "ts": T0 + 90.0, "is_fraud": True}  # between tx 1 and 2
        producer.send(topics["labels"], value=b"{not json")  # a bad label: dead-lettered
        producer.send(topics["labels"], key=fraud.encode(), value=orjson.dumps(label))
        producer.flush()
        later: list[str] = []

        def bad_labels() -> int:
            dead = read_all(kafka_bootstrap, topics["dead_letters"])
            return sum(dict(r.headers).get("stage") == b"label" for r in dead)

        def applied() -> bool:
            later.append(send_tx())
            return 1 in counts(later)

        wait_until(applied, 60, "the label applied")
        wait_until(lambda: bad_labels() == 1, 60, "the bad label dead-lettered")
        applied_at = time.time()
        for _ in range(5):  # a few more batches after it: a checkpoint that holds the label
            send_tx()
        if restart == "checkpoint":  # (written by a child at nice 19: on a loaded machine it
            ckpt = tmp_path / "a" / FILE_NAME  # came after the kill, and the restart rebuilt)

            def written_after(t: float) -> bool:
                return ckpt.exists() and ckpt.stat().st_mtime > t

            wait_until(lambda: written_after(applied_at), 60, "a checkpoint after the label")
            first = ckpt.stat().st_mtime  # (one write at a time: the next began after it)
            send_tx()  # (a quiet instance writes no more)
            wait_until(lambda: written_after(first), 60, "a checkpoint begun after the label")
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=10)

        state = "a" if restart == "checkpoint" else "b"  # b: no checkpoint, state rebuilt
        p = spawn_run(kafka_bootstrap, topics, group, *extra, stages=stages(state))
        after = send_tx()
        wait_until(lambda: counts([after]) != [], 60, "a decision after the restart")
        assert counts([after]) == [1], "the label counts once after the restart"
        assert bad_labels() == (1 if restart == "checkpoint" else 2)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert ("restored checkpoint" if restart == "checkpoint" else "rebuild") in err, err[-2000:]
    finally:
        producer.close()


def test_a_labels_batch_that_cannot_be_read_does_not_stop_the_decisions(
    kafka_bootstrap, topics, unique_name, monkeypatch, caplog
):
    """A review: a labels batch the client could not read stopped fds run (exit 1, again at
    every restart), where labels are a side input: decisions go on, labels are tried again."""
    from fds.streams.kafka import Runner, build_run_engine
    from tests.integration.test_kafka_run import settings_for

    lz4 = KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="lz4")
    for i in range(20):  # (one small record is written uncompressed)
        label = {"tx_id": f"tx{i}", "ts": T0 + 1, "is_fraud": True}
        lz4.send(topics["labels"], partition=0, value=orjson.dumps(label))
    lz4.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(5):
        tx = {"tx_id": f"tx{i}", "ts": T0 + 60.0 * i, "card_id": "c", "merchant_id": "m1",
              "amount": 100.0}  # fmt: skip
        producer.send(topics["transactions"], key=b"c", value=orjson.dumps(tx))
    producer.close()
    monkeypatch.setattr("kafka.codec.has_lz4", lambda: False)  # a client without lz4
    s = settings_for(kafka_bootstrap, topics, unique_name("g"), labels_topic=topics["labels"])
    engine = build_run_engine(DEFAULT_RULES, None, settings=s)
    stats = Runner(s, engine).run(max_idle_s=3)
    assert stats.decided == 5
    assert "labels topic: UnreadableRecords" in caplog.text
