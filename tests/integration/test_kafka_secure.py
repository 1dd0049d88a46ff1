"""The client security settings against a real secured broker: the kit's SASL_SSL listener
(SCRAM-SHA-512 over TLS, a CA of its own, hostname checked), as production clusters run.

``fds kafka topics``, ``fds produce`` and ``fds run --exactly-once`` are run as a user runs them
(flags, and the password in FDS_SASL_PLAIN_PASSWORD); a wrong password, a wrong CA and a
PLAINTEXT client on the TLS port each exit with an error that says which (before, all three
read "cannot reach Kafka ... check that the broker is up").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from fds.streams import kafka_kit
from fds.streams.kafka import KafkaSettings
from tests.integration.conftest import free_ports
from tests.integration.test_kafka_run import REPO, write_stream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_kit.Secure]:
    ddir = tmp_path_factory.mktemp("kafka-secure")
    port, controller_port, secure_port = free_ports(3)
    kafka_kit.up(port, controller_port, ddir, secure_port=secure_port)
    try:
        sec = kafka_kit.secure_listener(ddir)
        assert sec is not None
        yield sec
    finally:
        kafka_kit.down(ddir, wipe=True)


def flags(sec: kafka_kit.Secure, **override: str) -> tuple[list[str], dict[str, str]]:
    """The CLI flags and environment a user gives to reach the secured listener."""
    c = {**sec.client_settings(), **override}
    argv = [
        "--bootstrap", c["bootstrap"], "--security-protocol", c["security_protocol"],
        "--sasl-mechanism", c["sasl_mechanism"], "--sasl-username", c["sasl_plain_username"],
        "--ssl-cafile", c["ssl_cafile"],
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FDS_SASL_PLAIN_PASSWORD": c["sasl_plain_password"],
    }
    return argv, env


def fds(*argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fds", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def committed_decisions(sec: kafka_kit.Secure, topic: str) -> list[dict]:
    s = KafkaSettings(**sec.client_settings())
    c = KafkaConsumer(**s.client_config(), isolation_level="read_committed")
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        out: list[dict] = []
        for recs in c.poll(timeout_ms=1000).values():
            out.extend(orjson.loads(r.value) for r in recs)
        while True:  # to the end of what is committed now
            got = c.poll(timeout_ms=500)
            if not got:
                return out
            for recs in got.values():
                out.extend(orjson.loads(r.value) for r in recs)
    finally:
        c.close()


def test_topics_produce_and_run_exactly_once_over_sasl_ssl(secure, unique_name, tmp_path):
    argv, env = flags(secure)
    prefix = unique_name("t") + "."
    p = fds("kafka", "topics", *argv, "--prefix", prefix, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    topics = dict(line.split("\t") for line in p.stdout.splitlines())
    ids = write_stream(tmp_path / "tx.jsonl", 300)
    p = fds("produce", str(tmp_path / "tx.jsonl"), *argv, "--input-topic", topics["transactions"],
            env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "produced 300 records" in p.stderr

    run = subprocess.Popen(
        [sys.executable, "-m", "fds", "run", *argv, "--exactly-once",
         "--input-topic", topics["transactions"], "--output-topic", topics["decisions"],
         "--dlq-topic", topics["dead_letters"], "--group", unique_name("g"),
         "--state-dir", str(tmp_path / "state"), "--metrics-port", "-1"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        got: list[dict] = []
        while len(got) < len(ids):
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"{len(got)} of {len(ids)} decisions in 90 s"
            time.sleep(0.5)  # polling interval for an external condition
            got = committed_decisions(secure, topics["decisions"])
    finally:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
    assert run.returncode == 0, err[-3000:]
    assert sorted(d["tx_id"] for d in got) == ids  # each exactly once, over SASL_SSL
    assert all(d["features"]["card_count_30d"] >= 1 for d in got)  # the default rules ran


@pytest.mark.parametrize(
    ("override", "says", "final"),
    [
        # (the broker's refusal, or the connection it drops: either names the login; the
        # refusal itself reaches the client only now and then, so the wait is not asserted)
        ({"sasl_plain_password": "not-the-password"}, "check --sasl-username, the password", False),
        ({"ssl_cafile": "broker.pem"}, "the TLS handshake failed", True),  # not the CA: the leaf
        ({"security_protocol": "PLAINTEXT"}, "a TLS or SASL port spoken to in PLAINTEXT", True),
        # (the plain port spoken to in SASL_SSL: it waited out the broker timeout, a QA pass)
        ({"bootstrap": "plain"}, "the broker ended the TLS handshake at once", True),
    ],
    ids=["password", "ca", "plaintext", "tls-to-plain"],
)
def test_a_refused_client_is_told_why_not_that_the_broker_is_down(
    secure, unique_name, tmp_path, override, says, final
):
    if override.get("ssl_cafile"):
        override = {"ssl_cafile": str(secure.cafile.with_name(override["ssl_cafile"]))}
    port = secure.port
    if override.get("bootstrap"):  # the kit's PLAINTEXT port
        port = kafka_kit.read_kit(secure.keystore.parent.parent)["port"]
        override = {"bootstrap": f"127.0.0.1:{port}"}
    argv, env = flags(secure, **override)
    # An untrusted certificate or a TLS port answering PLAINTEXT is final: named at once, not
    # after the broker timeout (kafka-python retries until then). Otherwise: what it saw (in
    # 8 s a loaded run's TLS handshakes got no further than the version check: "cannot reach")
    wait = ["--broker-timeout", "600" if final else "15"]
    p = fds("run", *argv, *wait, "--group", unique_name("g"), "--rules", "none",
            "--model", "none", "--state-dir", "none", "--metrics-port", "-1", env=env,
            timeout=120)  # fmt: skip
    assert p.returncode == 1 and says in p.stderr, p.stderr[-2000:]
    assert "that the broker is up" not in p.stderr
    if final:
        assert f"Kafka at 127.0.0.1:{port} refused the client" in p.stderr, p.stderr[-2000:]
    if "sasl_plain_password" in override:  # the other doors say the same (one case is enough)
        write_stream(tmp_path / "tx.jsonl", 1)
        p = fds("produce", str(tmp_path / "tx.jsonl"), *argv, *wait, env=env)
        assert p.returncode == 1 and says in p.stderr, p.stderr[-2000:]
        p = fds("kafka", "topics", *argv, *wait, "--prefix", unique_name("t") + ".", env=env)
        assert p.returncode == 1 and says in p.stderr, p.stderr[-2000:]


def test_the_secrets_are_readable_by_their_owner_only(secure):
    ddir = secure.keystore.parent.parent
    for path in (ddir / "server.properties", ddir / "secure.json"):  # key store / SCRAM password
        assert path.stat().st_mode & 0o077 == 0, path
    assert secure.password not in (ddir / "server.properties").read_text()


def test_up_with_only_the_data_dir_takes_its_secure_port_too(secure):
    """A QA pass: `fds kafka up --data-dir D` (the README's way to restart D's broker on its
    own ports) was refused for a dir formatted with a secured listener: "add --secure-port"."""
    ddir = secure.keystore.parent.parent
    bootstrap = kafka_kit.up(data_dir=ddir)  # (running: found, not started again)
    assert kafka_kit.read_kit(ddir)["port"] == int(bootstrap.rpartition(":")[2])
    assert kafka_kit.secure_listener(ddir).port == secure.port
