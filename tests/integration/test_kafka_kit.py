"""The local broker kit against a real broker: idempotent start, topics as specified."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType

from fds.errors import FdsError
from fds.streams import kafka_kit
from fds.streams.state_topic import index_of

pytestmark = pytest.mark.integration


def test_up_is_idempotent_when_running(kafka_bootstrap: str) -> None:
    if kafka_bootstrap != f"127.0.0.1:{kafka_kit.DEFAULT_PORT}":
        pytest.skip("an external broker is in use (FDS_TEST_BOOTSTRAP)")
    pid = kafka_kit.status().pid
    assert kafka_kit.up() == kafka_bootstrap
    st = kafka_kit.status()
    assert st.running and st.reachable and st.pid == pid  # the same broker: no restart


def test_up_says_when_the_running_broker_has_older_settings(kafka_bootstrap: str, caplog) -> None:
    """fds upgraded while the kit's broker ran (a new setting in the template): `up` finds it
    running and says that a restart applies the new settings."""
    if kafka_bootstrap != f"127.0.0.1:{kafka_kit.DEFAULT_PORT}":
        pytest.skip("an external broker is in use (FDS_TEST_BOOTSTRAP)")
    props = kafka_kit.data_dir_default() / "server.properties"
    current = props.read_bytes()
    caplog.set_level("WARNING", logger="fds.streams.kafka_kit")
    assert kafka_kit.up() == kafka_bootstrap
    assert "runs with settings older" not in caplog.text
    try:
        props.write_bytes(current.replace(b"group.coordinator.append.linger.ms=0\n", b""))
        assert kafka_kit.up() == kafka_bootstrap
    finally:
        props.write_bytes(current)
    assert "runs with settings older than this fds's" in caplog.text
    assert "`fds kafka down && fds kafka up` applies them" in caplog.text


def test_up_refuses_other_ports_for_a_formatted_dir(kafka_bootstrap: str) -> None:
    if kafka_bootstrap != f"127.0.0.1:{kafka_kit.DEFAULT_PORT}":
        pytest.skip("an external broker is in use (FDS_TEST_BOOTSTRAP)")
    with pytest.raises(kafka_kit.ConfigError, match=r"formatted for ports.*; use those") as e:
        kafka_kit.up(port=29092, controller_port=29093)
    # the flags are named, and the wipe it suggests is of this data dir (a bare --wipe wipes the
    # default one, which may be another broker's: a review found it)
    assert f"(--port {kafka_kit.DEFAULT_PORT} --controller-port" in str(e.value)
    assert "`fds kafka down --wipe --data-dir " in str(e.value)
    # only the secured listener differs: the flag is named (the ports read alike before)
    with pytest.raises(kafka_kit.ConfigError, match="; drop --secure-port"):
        kafka_kit.up(secure_port=29094)


def test_down_and_status_refuse_a_port_that_is_not_their_data_dir_s(
    kafka_bootstrap: str, capsys, tmp_path
) -> None:
    """Found by a QA pass: `fds kafka down --port 19592` (another broker's port, its data dir
    not given) stopped the default broker: the one the test suite uses."""
    from fds.cli import main

    if kafka_bootstrap != f"127.0.0.1:{kafka_kit.DEFAULT_PORT}":
        pytest.skip("an external broker is in use (FDS_TEST_BOOTSTRAP)")
    pid = kafka_kit.status().pid
    assert main(["kafka", "down", "--port", "29592"]) == 2
    err = capsys.readouterr().err
    assert f"is a broker on {kafka_kit.DEFAULT_PORT}, not 29592" in err
    assert "give the --data-dir that `fds kafka up --port 29592` used" in err
    # a data dir no broker ever used: nothing to mistake (`down --port P --data-dir NEW` before
    # the first `up` exited 2, a QA pass)
    assert main(["kafka", "down", "--data-dir", str(tmp_path), "--port", "29592"]) == 0
    assert capsys.readouterr().out == (
        f"not running: no broker was ever started with the data dir {tmp_path}\n"
    )
    for port in ([], ["--port", "29592"]):
        assert main(["kafka", "status", "--data-dir", str(tmp_path), *port]) == 1
        assert capsys.readouterr().out == (
            f"stopped: no broker was ever started with the data dir {tmp_path}\n"
        )  # not `pid=None bootstrap=None` (a QA pass)
    st = kafka_kit.status()
    assert st.running and st.pid == pid  # untouched
    assert main(["kafka", "status", "--port", str(kafka_kit.DEFAULT_PORT)]) == 0  # its own


def test_the_kit_broker_answers_an_offset_commit_without_lingering(kafka_bootstrap: str) -> None:
    """fds run commits synchronously before each state checkpoint: the group coordinator's
    append linger (Kafka 4: 5 ms by default) would add itself to that pause."""
    if kafka_bootstrap != f"127.0.0.1:{kafka_kit.DEFAULT_PORT}":
        pytest.skip("an external broker is in use (FDS_TEST_BOOTSTRAP)")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        key = "group.coordinator.append.linger.ms"
        res = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, "1", [key])], config_filter="all"
        )
        assert res["broker"]["1"][key]["value"] == "0", (
            "a kit broker started before this setting: `fds kafka down && fds kafka up`"
        )
    finally:
        admin.close()


def test_topics_created_as_specified_and_idempotent(
    kafka_bootstrap: str, unique_name, caplog
) -> None:
    prefix = unique_name("kit") + "."
    with caplog.at_level("INFO", logger="fds"):
        names = kafka_kit.create_topics(kafka_bootstrap, prefix=prefix)
        assert f'made="{prefix}dead-letters,' in caplog.text and 'already_there=""' in caplog.text
        caplog.clear()
        assert names == kafka_kit.create_topics(kafka_bootstrap, prefix=prefix)  # no error
        assert f'made="" already_there="{prefix}dead-letters,' in caplog.text
    # one topic the broker refuses: said with the topics made beside it (a QA pass: the first
    # failure alone was said)
    bad = {"a": {"name": "a", "partitions": 1, "replication_factor": 1, "configs": {}},
           "b": {"name": "b", "partitions": 1, "replication_factor": 1,
                 "configs": {"retention.ms": "notanumber"}}}  # fmt: skip
    with pytest.raises(FdsError, match=rf"creating topic '{prefix}xb' failed \(Invalid.*; made: "
                       rf"{prefix}xa$"):  # fmt: skip
        kafka_kit.create_topics(kafka_bootstrap, bad, prefix=prefix + "x")
    kafka_kit.delete_topics(kafka_bootstrap, [prefix + "xa"])
    specs = kafka_kit.load_topic_specs()
    assert set(names) == {
        "transactions", "labels", "decisions", "dead_letters", "models", "state_changelog",
        "state_index",
    }  # fmt: skip
    assert names["state_index"] == index_of(names["state_changelog"])  # (fds run finds it so)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(names.values()))}
        for logical, name in names.items():
            assert len(described[name]["partitions"]) == specs[logical]["partitions"], logical
        assert specs["state_changelog"]["partitions"] == specs["transactions"]["partitions"], (
            "the changelog must be co-partitioned with the input"
        )
        res = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, names[n], ["cleanup.policy"])
                for n in ("models", "state_changelog", "state_index", "transactions")
            ]
        )["topic"]
        # A topic left at the broker default (delete) may not list the key at all.
        policy = {
            n: res[names[n]].get("cleanup.policy", {}).get("value", "delete")
            for n in names
            if names[n] in res
        }
        assert policy == {
            "models": "compact", "state_changelog": "compact", "state_index": "compact",
            "transactions": "delete",
        }  # fmt: skip
        kafka_kit.delete_topics(kafka_bootstrap, names.values())
        deadline = time.monotonic() + 30
        while set(names.values()) & set(admin.list_topics()):
            assert time.monotonic() < deadline, "topics not deleted"
            time.sleep(0.2)
    finally:
        admin.close()


def test_topics_that_exist_with_other_settings_are_said(
    kafka_bootstrap: str, unique_name, caplog
) -> None:
    """Found by a QA pass: a models topic that is not compacted (its versions lost to
    retention) and an input topic with other partitions were accepted without a word."""
    from kafka.admin import NewTopic

    prefix = unique_name("kitdiff") + "."
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(prefix + "transactions", 2, 1),
                             NewTopic(prefix + "models", 1, 1)])  # fmt: skip
    finally:
        admin.close()
    with caplog.at_level("WARNING", logger="fds.streams.kafka_kit"):
        names = kafka_kit.create_topics(kafka_bootstrap, prefix=prefix)
    try:
        # (and the broker's default retention, which a filter on modified values hid)
        assert re.search(rf"topic '{re.escape(prefix)}transactions' exists with 2 partitions "
                         r"\(the spec: 6\), retention.ms=\d+ \(the spec: 8640000000\)",
                         caplog.text)  # fmt: skip
        assert f"topic '{prefix}models' exists with cleanup.policy=delete (the spec: compact)" in (
            caplog.text
        )
        assert "decisions" not in caplog.text  # created as specified: nothing to say
    finally:
        kafka_kit.delete_topics(kafka_bootstrap, names.values())


def test_a_second_broker_in_a_relative_data_dir(tmp_path, monkeypatch) -> None:
    """`fds kafka up --data-dir rel`: the broker runs in its data dir, so the kit must hand it
    absolute paths; `down --wipe` stops it and removes the dir. Its log rolls over at
    FDS_KAFKA_LOG_MB (one broker.log grew for as long as the data dir was used), two older
    files kept."""
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FDS_KAFKA_LOG_MB", "0.01")  # (its start logs ~60 KB)
    (tmp_path / "rel-broker").mkdir()  # what the JVM said before, past 1 MB: put aside
    (tmp_path / "rel-broker" / "broker.out").write_bytes(b"x" * (kafka_kit.OUT_MAX_BYTES + 1))
    port, controller = free_port(), free_port()
    bootstrap = kafka_kit.up(port, controller, "rel-broker")
    try:
        assert bootstrap == f"127.0.0.1:{port}" and kafka_kit.status("rel-broker").reachable
        logs = sorted(p.name for p in (tmp_path / "rel-broker").glob("broker.log*"))
        assert logs == ["broker.log", "broker.log.1", "broker.log.2"], logs
        assert (tmp_path / "rel-broker" / "broker.log").stat().st_size > 0
        assert (tmp_path / "rel-broker" / "broker.out.1").stat().st_size > kafka_kit.OUT_MAX_BYTES
        assert (tmp_path / "rel-broker" / "broker.out").stat().st_size < 4096
        assert kafka_kit.up(port, controller, "rel-broker") == bootstrap  # found, not restarted
        # its ports are the data dir's by default (the client port was 19092: refused, naming
        # both, a QA pass)
        assert kafka_kit.up(data_dir="rel-broker") == bootstrap
    finally:
        assert kafka_kit.down("rel-broker", wipe=True)
    assert not (tmp_path / "rel-broker").exists()


@pytest.mark.parametrize("how", ["ctrl_c", "not_ready"])
def test_a_ctrl_c_while_the_broker_starts_stops_it(tmp_path, monkeypatch, caplog, how) -> None:
    """A QA pass of signals: Ctrl-C or SIGTERM during `fds kafka up`'s wait for the new broker
    exited at once and said nothing, and left the broker running (its own session), unready
    for the topics never made. A broker not ready in `--timeout` was left running too, unseen
    by `status` and `down` (they did not know it by its cmdline, still Python's: a QA pass)."""
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    started: list[int] = []

    def interrupted(*_: object) -> bool:
        started.append(int((tmp_path / "k" / "broker.pid").read_text()))
        if how == "not_ready":
            return False
        raise KeyboardInterrupt  # (as the handler raises it in the wait)

    monkeypatch.setattr(kafka_kit, "_wait_ready", interrupted)
    try:
        raised = KeyboardInterrupt if how == "ctrl_c" else kafka_kit.FdsError
        with caplog.at_level("WARNING"), pytest.raises(raised):
            kafka_kit.up(free_port(), free_port(), tmp_path / "k")
        if how == "ctrl_c":
            assert "stopped while the broker started: stopping it" in caplog.text
        assert not kafka_kit.status(tmp_path / "k").running
        stat = Path(f"/proc/{started[0]}/stat")  # gone, or a zombie of this process
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:  # (a failure leaves no broker behind)
        with contextlib.suppress(OSError, IndexError):
            os.kill(started[0], signal.SIGKILL)


def test_the_kit_broker_lets_a_group_member_notice_a_death_in_3_s(
    kafka_bootstrap, topics, unique_name
):
    """`fds run --session-timeout 3000` (README, "Under 5 seconds") joins a group on the kit's
    broker: Kafka's default floor (group.min.session.timeout.ms, 6 s) would refuse it."""
    if kafka_bootstrap != f"127.0.0.1:{kafka_kit.DEFAULT_PORT}":
        pytest.skip("an external broker is in use (FDS_TEST_BOOTSTRAP)")
    topic = topics["transactions"]
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=unique_name("g"),
        session_timeout_ms=3000, heartbeat_interval_ms=1000, metadata_max_age_ms=1000,
    )  # fmt: skip
    try:
        # (60 s: a refusal raises at once, InvalidSessionTimeoutError from poll; 30 s ran out
        # once, against a kit broker a benchmark had left up for 1.5 h, with the suite on both
        # cores: the deadline bounds a slow join, not what is tested)
        deadline = time.monotonic() + 60
        # The topic just made in the consumer's metadata before it joins: a join whose
        # metadata had no partitions of it ("No partition metadata for topic") was assigned
        # nothing, and kafka-python did not join again once they came (60 s of "no
        # assignment" in a CI dry run, with its metadata refreshed every second)
        while not consumer.partitions_for_topic(topic):
            assert time.monotonic() < deadline, f"no metadata of {topic} in 60 s"
            time.sleep(0.1)
        consumer.subscribe([topic])
        while not consumer.assignment():
            assert time.monotonic() < deadline, (
                f"no assignment in 60 s; the topic's partitions as the consumer sees them: "
                f"{consumer.partitions_for_topic(topic)}"
            )
            consumer.poll(timeout_ms=200)
    finally:
        consumer.close()


def test_topics_for_a_config_say_the_topics_it_names_and_were_not_made(
    kafka_bootstrap: str, unique_name, tmp_path, capsys
) -> None:
    """A QA pass (two deployments on one cluster): `fds kafka topics --config prod.yaml` made
    the kit's topics, not the prefixed ones the file names, without a word; `--prefix prod`
    made `prodtransactions`."""
    from fds.cli import main

    prefix = unique_name("p")  # (no separator: runs into the names)
    (tmp_path / "prod.yaml").write_text(f"input_topic: {prefix}.transactions\n")
    argv = ["kafka", "topics", "--config", str(tmp_path / "prod.yaml"), "--prefix", prefix]
    try:
        assert main([*argv, "--bootstrap", kafka_bootstrap]) == 0
    finally:
        made = kafka_kit.create_topics(kafka_bootstrap, prefix=prefix)  # (exist: their names)
        kafka_kit.delete_topics(kafka_bootstrap, list(made.values()))
    err = " ".join(capsys.readouterr().err.split())
    assert f"--prefix {prefix!r} runs into the names" in err and f"--prefix {prefix}." in err
    assert (
        f"the settings' input_topic '{prefix}.transactions' (input_topic in "
        f"{tmp_path / 'prod.yaml'}) is none of the topics made" in err
    ), err


def test_status_says_why_a_broker_exited_without_down(tmp_path, capsys) -> None:
    """A QA pass: a broker that died on a full disk was only "stopped" in `fds kafka status`;
    its pid file left behind says it exited without `fds kafka down`, its log says why."""
    import json
    import subprocess
    import sys

    from fds.cli import main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "kit.json").write_text(json.dumps({"port": 29593, "controller_port": 29594}))
    (tmp_path / "broker.pid").write_text(f"{dead.pid}\n")
    (tmp_path / "broker.log").write_text(
        "[2026-12-03 21:00:00,000] INFO started (kafka.server.KafkaRaftServer)\n"
        "[2026-12-03 21:05:00,000] ERROR Error while appending records (kafka.log.LogManager)\n"
        "java.io.IOException: No space left on device\n"
        "\tat java.base/sun.nio.ch.FileDispatcherImpl.write0(Native Method)\n"
    )
    assert main(["kafka", "status", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "the broker exited without `fds kafka down`: java.io.IOException: No space left" in out
    (tmp_path / "broker.pid").unlink()  # stopped by `down`: nothing to say
    assert main(["kafka", "status", "--data-dir", str(tmp_path)]) == 1
    assert "exited without" not in capsys.readouterr().out


def test_up_on_a_full_disk_names_the_data_dir(tmp_path, monkeypatch) -> None:
    """A QA pass: `fds kafka up` with its data dir on a full disk said `failed: OSError:
    [Errno 28] No space left on device`, no path."""
    import errno

    def full(*_: object) -> str:  # (the writes of server.properties, kit.json: ENOSPC)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kafka_kit, "_up", full)
    with pytest.raises(kafka_kit.FdsError) as e:
        kafka_kit.up(port=29595, data_dir=tmp_path / "d")
    assert f"cannot write the broker's data dir {tmp_path / 'd'}: OSError: [Errno 28]" in str(
        e.value
    )
