"""`fds run --labels-topic`: labels reach the label-aware features of a running scorer."""

from __future__ import annotations

import itertools

import orjson
import pytest
from kafka import KafkaProducer

from fds.pipeline import DEFAULT_RULES
from tests.integration.test_kafka_run import T0, read_all, spawn_run, wait_until

pytestmark = pytest.mark.integration

FEATURE = "merchant_fraud_count_28d"  # a label-aware feature of rules/default.yaml


def test_a_label_on_the_labels_topic_reaches_the_merchant_features_of_fds_run(
    kafka_bootstrap, topics, unique_name
):
    stages = ("--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir", "none")
    p = spawn_run(
        kafka_bootstrap, topics, unique_name("g"), "--labels-topic", topics["labels"],
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
        label = {"tx_id": fraud, "ts": T0 + 86400.0, "is_fraud": True}
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

        dead = [r for r in read_all(kafka_bootstrap, topics["dead_letters"])]
        headers = [dict(r.headers) for r in dead]
        assert any(h.get("stage") == b"label" for h in headers), headers
        assert any(h.get("source_topic") == topics["labels"].encode() for h in headers)
    finally:
        producer.close()
        p.kill()
        p.wait(10)
