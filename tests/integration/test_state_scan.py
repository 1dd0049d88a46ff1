"""A takeover's reads of the state topic (fds.streams.state_topic) against the real broker: two
instances publish their checkpoints, a scan finds both manifests with the input offsets they
cover, and a survivor fetches the other's snapshot byte for byte, verified."""

from __future__ import annotations

import os
import signal
import time
import zlib

import pytest
from kafka import KafkaConsumer, KafkaProducer

from fds.pipeline import DEFAULT_RULES
from fds.streams import kafka_kit
from fds.streams.checkpoint import Checkpointer, parse_checkpoint
from fds.streams.kafka import produce_file
from fds.streams.state_topic import StateTopic, index_of, manifest_offsets, manifest_span
from tests.integration.test_kafka_run import (
    count_records,
    settings_for,
    spawn_run,
    wait_until,
    write_stream,
)

pytestmark = pytest.mark.integration


def test_a_scan_finds_each_instances_manifest_and_a_survivor_fetches_the_others_snapshot(
    kafka_bootstrap, topics, unique_name, tmp_path
):
    state = topics["state_changelog"]
    group = unique_name("g")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    parts = len(producer.partitions_for(state) or ())
    # two instances whose snapshots go to different partitions (the scan reads them all)
    ids = ["i0", next(f"i{n}" for n in range(1, 99) if _part(group, f"i{n}", parts) !=
                      _part(group, "i0", parts))]  # fmt: skip
    published: dict[str, bytes] = {}
    try:
        for n, instance in enumerate(ids):
            ck = Checkpointer(tmp_path / instance)
            # the second one larger than a chunk (512 KB): sent in three
            state_dict = {"features": os.urandom(1_200_000 if n else 1000)}
            ck.save(state_dict, topic="transactions", offsets={n: 10 + n, 5: 3})
            assert ck.on_disk is not None
            st = StateTopic(state, f"{group}/{instance}", slot_file=ck.dir / "slot")
            st.publish(producer, ck.path.read_bytes(), **ck.on_disk._asdict())
            producer.flush(timeout=30)  # (publish does not wait for the manifest)
            assert not st.publishing and st.published == 1
            published[instance] = ck.path.read_bytes()
        StateTopic(state, unique_name("g") + "/i0").publish(producer, b"another group")
    finally:
        producer.close()

    def reader() -> KafkaConsumer:
        return KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)

    found = StateTopic.scan(state, reader, f"{group}/", timeout_s=30)
    assert found is not None and sorted(found) == [f"{group}/{i}" for i in ids]
    for n, instance in enumerate(ids):
        m = found[f"{group}/{instance}"]
        assert m["topic"] == "transactions" and manifest_offsets(m) == {n: 10 + n, 5: 3}

    dead = f"{group}/{ids[1]}"
    other = StateTopic(state, dead)  # the survivor's view of the dead instance: no slot file
    data = other.fetch_foreign(reader, manifest=found[dead], timeout_s=30)
    assert data == published[ids[1]]
    got = parse_checkpoint(data, where=f"state topic {dead}")
    assert got.offsets == manifest_offsets(found[dead])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids)  # nothing written


def _part(group: str, instance: str, parts: int) -> int:
    return zlib.crc32(f"{group}/{instance}".encode()) % parts


def test_the_index_holds_each_instances_newest_manifest_and_its_span_the_chunks(
    kafka_bootstrap, topics, unique_name
):
    """Manifests are copied to the state topic's index: a scan of the index finds what a scan
    of the whole topic finds while reading the manifests alone, and a manifest's ``span``
    names the offsets of its chunks, so that a taker reads those and not the partition."""
    state, index = topics["state_changelog"], topics["state_index"]
    assert index == index_of(state)
    group = unique_name("g")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    snaps = {
        f"{group}/i{n}": [os.urandom(1_100_000 + n) for _ in range(2)] for n in range(2)
    }  # three chunks each, two snapshots each: the second is the newest
    try:
        for ident, datas in snaps.items():
            st = StateTopic(state, ident, index=index)
            for k, data in enumerate(datas):
                st.publish(producer, data, topic="transactions", offsets={0: k + 1})
                producer.flush(timeout=30)
    finally:
        producer.close()
    readers: list[KafkaConsumer] = []

    def reader() -> KafkaConsumer:
        readers.append(KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False))
        return readers[-1]

    found = StateTopic.scan(state, reader, f"{group}/", timeout_s=30, index=index)
    assert found == StateTopic.scan(state, reader, f"{group}/", timeout_s=30)
    assert found is not None and sorted(found) == sorted(snaps)
    for ident, m in found.items():
        assert manifest_offsets(m) == {0: 2}
        span = manifest_span(m)
        assert span is not None and span[1] - span[0] == m["chunks"] - 1 == 2  # (one partition)
        got = StateTopic(state, ident).fetch_foreign(reader, manifest=m, timeout_s=30)
        assert got == snaps[ident][1]
    # (a missing index is no answer: the caller reads the state topic instead)
    assert StateTopic.scan(state, reader, f"{group}/", timeout_s=30, index=state + ".none") is None


def test_an_index_deleted_under_a_running_instance_holds_up_no_snapshot(
    kafka_bootstrap, make_topics, unique_name, tmp_path
):
    """A QA pass deleted the index while `fds run` ran: each checkpoint's copy then waited 1 s
    for the index's metadata on the decision loop, and the copy stuck in the producer made the
    last snapshot's flush fail at the stop (its manifest never sent). Copies go through a
    producer of their own and stop after the first failure: the stop is prompt and the last
    snapshot's manifest lands on the state topic."""
    topics = make_topics(partitions=1)
    write_stream(tmp_path / "tx.jsonl", 2000, cards=100, step=7.0)
    lines = (tmp_path / "tx.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:1000]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[1000:]))
    group = unique_name("g")
    s = settings_for(kafka_bootstrap, topics, group)
    produce_file(tmp_path / "a.jsonl", s)
    stages = (
        "--rules", str(DEFAULT_RULES), "--model", "none", "--state-dir", str(tmp_path / "st"),
        "--state-topic", topics["state_changelog"], "--group-instance-id", "i0",
        "--checkpoint-every", "0.5",
    )  # fmt: skip
    p = spawn_run(kafka_bootstrap, topics, group, stages=stages)
    wait_until(lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 1000, 90, "half")
    wait_until(lambda: count_records(kafka_bootstrap, topics["state_index"]) > 0, 30, "a copy")
    kafka_kit.delete_topics(kafka_bootstrap, [topics["state_index"]])
    produce_file(tmp_path / "b.jsonl", s)
    wait_until(lambda: count_records(kafka_bootstrap, topics["decisions"]) >= 2000, 90, "all")
    time.sleep(2.0)  # (checkpoints, each with a copy to send)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0 and time.monotonic() - t0 < 10, err[-3000:]
    assert "publish failed" not in err, err[-3000:]
    assert err.count("a manifest was not sent to it") <= 1, err[-3000:]  # (then no more)

    def reader() -> KafkaConsumer:
        return KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)

    found = StateTopic.scan(topics["state_changelog"], reader, f"{group}/", timeout_s=30)
    assert found and manifest_offsets(found[f"{group}/i0"]) == {0: 2000}  # the last snapshot
