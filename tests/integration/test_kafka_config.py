"""Settings and CLI wiring of the Kafka doors; needs no broker (fast, not marked integration).

It lives beside the Kafka integration tests to keep the Kafka area's files together.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pydantic
import pytest

from fds.errors import ConfigError
from fds.streams import kafka_cli
from fds.streams.kafka import KafkaSettings, load_settings, settings_from

#: A self-signed certificate alone (its key was not kept): a CA file that loads.
TEST_CA = Path(__file__).with_name("test-ca.pem")


def test_flags_beat_environment_beat_file(tmp_path, monkeypatch):
    f = tmp_path / "kafka.yaml"
    f.write_text("bootstrap: file:9092\ngroup: from-file\ninput_topic: file-topic\n")
    monkeypatch.setenv("FDS_GROUP", "from-env")
    monkeypatch.setenv("FDS_INPUT_TOPIC", "env-topic")
    s = load_settings(f, input_topic="flag-topic", dlq_topic=None)
    assert (s.bootstrap, s.group, s.input_topic) == ("file:9092", "from-env", "flag-topic")
    assert s.dlq_topic == "dead-letters"  # a None flag (argparse default) is ignored
    monkeypatch.delenv("FDS_GROUP")
    monkeypatch.setenv("fds_group", "lower-env")  # (read by pydantic, lost to the file: a QA)
    assert load_settings(f).group == "lower-env"


def test_an_fds_variable_fds_does_not_read_is_warned_about_once(monkeypatch, caplog):
    """A QA pass: FDS_REGISTRY and FDS_METRICS_PORT (then flags only) and a typo were ignored
    without a word; a deployment then served from another's registry and port. They are
    settings now: a flag-only option (--rules) and a typo are warned about."""
    from fds.streams import settings

    monkeypatch.setattr(settings, "_WARNED_ENV", set())
    monkeypatch.setenv("FDS_GROPU", "g")
    monkeypatch.setenv("FDS_RULES", "rules/other.yaml")
    for name in ("FDS_REGISTRY", "FDS_MODELS_TOPIC", "FDS_METRICS_PORT", "FDS_METRICS_HOST"):
        monkeypatch.setenv(name, {"FDS_METRICS_PORT": "29700"}.get(name, "127.0.0.1"))
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        load_settings()
        load_settings()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "FDS_GROPU is no variable fds reads: ignored (did you mean FDS_GROUP?)",
        "FDS_RULES is no variable fds reads: ignored",  # (a flag's hint: the CLI's, test_cli)
    ]


def _no_deployment_env(monkeypatch) -> None:
    for name in ("FDS_REGISTRY", "FDS_MODELS_TOPIC", "FDS_METRICS_PORT", "FDS_METRICS_HOST"):
        monkeypatch.delenv(name, raising=False)


def test_a_deployments_registry_models_topic_and_metrics_are_settings(tmp_path, monkeypatch):
    """A QA pass (two deployments on one cluster): the registry, the models topic and the
    metrics port were flags only, to be given to every process of a deployment. They are
    settings now, as every other: flag > FDS_* > the file > the command's default."""
    _no_deployment_env(monkeypatch)
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "kafka.yaml"
    f.write_text(
        "registry: reg\nmodels_topic: prod.models\nmetrics_port: 9200\nmetrics_host: 0.0.0.0\n"
    )
    monkeypatch.chdir(tmp_path)
    s = load_settings(f)  # the file; its registry relative to it, as its state dir
    assert (s.registry, s.models_topic, s.metrics_port) == (tmp_path / "etc" / "reg",
                                                           "prod.models", 9200)  # fmt: skip
    assert s.metrics_address(9108) == ("0.0.0.0", 9200)
    assert s.given_as("registry") == f"registry in {f}"
    monkeypatch.setenv("FDS_REGISTRY", "env-reg")  # the environment over the file
    monkeypatch.setenv("FDS_MODELS_TOPIC", "env.models")
    monkeypatch.setenv("FDS_METRICS_PORT", "-1")
    monkeypatch.setenv("FDS_METRICS_HOST", "127.0.0.1")
    s = load_settings(f)
    assert (str(s.registry), s.models_topic, s.metrics_port) == ("env-reg", "env.models", -1)
    assert s.metrics_address(9108) == ("127.0.0.1", -1) and s.fix("metrics_port") == (
        "fix FDS_METRICS_PORT"
    )
    s = load_settings(f, registry="flag-reg", models_topic="m", metrics_port=0)  # flags over all
    assert (str(s.registry), s.models_topic, s.metrics_port) == ("flag-reg", "m", 0)
    assert s.given_as("metrics_port") == "--metrics-port"
    _no_deployment_env(monkeypatch)
    s = load_settings()  # none given: each command's own default
    assert (s.registry, s.models_topic, s.metrics_port, s.metrics_host) == (None,) * 4
    assert s.metrics_address(9109) == ("127.0.0.1", 9109)
    assert (s.models_topic_for("models"), s.models_topic_for(None)) == ("models", None)
    for none in ("none", "None"):  # none turns it off, as fds train --models-topic none
        f.write_text(f"models_topic: {none}\n")
        assert load_settings(f).models_topic_for("models") is None
    assert load_settings(f, models_topic="m").models_topic_for("models") == "m"  # (the flag)


@pytest.mark.parametrize(
    ("env", "file", "says"),
    [
        (
            {"FDS_METRICS_PORT": "abc"},
            "",
            "setting metrics_port: invalid port 'abc': give a whole number (from FDS_METRICS_PORT)",
        ),
        (
            {},
            "metrics_port: 99999\n",
            "kafka.yaml:2: metrics_port: a port is 0-65535 (0: any free port), or -1: off; got "
            "99999",
        ),
        ({}, "metrics_port: 9108.5\n", "kafka.yaml:2: metrics_port: invalid port 9108.5"),
        (  # (the file's value overridden: not blamed on the file)
            {"FDS_METRICS_PORT": "-2"},
            "metrics_port: 9200\n",
            "setting metrics_port: a port is 0-65535 (0: any free port), or -1: off; got -2 "
            "(from FDS_METRICS_PORT)",
        ),
        (
            {"FDS_MODELS_TOPIC": "a b"},
            "",
            "setting models_topic: 'a b' is no Kafka topic name",
        ),
        (  # (a folder `none` made beside the file: a review)
            {},
            "registry: none\n",
            "kafka.yaml:2: registry: a model registry is a folder, never none",
        ),
    ],
    ids=["env-port", "file-port", "file-port-float", "env-over-file", "env-topic", "none"],
)
def test_a_bad_registry_models_topic_or_metrics_setting_names_where(
    env, file, says, tmp_path, monkeypatch
):
    _no_deployment_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    f = tmp_path / "kafka.yaml"
    f.write_text("group: g\n" + file)
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert says in str(err.value)


def test_a_metrics_host_of_another_machine_is_refused_by_the_commands_that_serve_only(
    tmp_path, monkeypatch
):
    """A review: a deployment's file naming the scorer's address was refused by every
    command loading it (`fds produce`, `fds kafka topics` on an admin box)."""
    _no_deployment_env(monkeypatch)
    f = tmp_path / "kafka.yaml"
    f.write_text("group: g\nmetrics_host: 192.0.2.77\n")
    s = load_settings(f)  # (fds produce, fds kafka topics: loaded, nothing served)
    with pytest.raises(ConfigError) as err:
        s.metrics_address(9108)  # fds run, fds train: before their engine loads
    assert f"metrics_host in {f}: '192.0.2.77' is no address of this machine" in str(err.value)
    assert load_settings(f, metrics_port=-1).metrics_address(9108)[1] == -1  # serves none


def test_paths_in_a_settings_file_are_relative_to_it(tmp_path, monkeypatch):
    """The state dir was relative to the working directory (a QA pass); the README says every
    file name of a settings file is relative to that file."""
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "kafka.yaml"
    f.write_text("state_dir: state\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(f).state_dir == str(tmp_path / "etc" / "state")
    f.write_text("state_dir: none\n")  # (no checkpoints: a word, not a path)
    assert load_settings(f).state_dir == "none"
    f.write_text(f"state_dir: {tmp_path / 'abs'}\n")
    assert load_settings(f).state_dir == str(tmp_path / "abs")


def test_bad_values_name_the_setting_and_file(tmp_path):
    f = tmp_path / "kafka.yaml"
    f.write_text("group: g\nmax_poll_records: 0\n")
    with pytest.raises(ConfigError, match=r"kafka\.yaml:2: max_poll_records: Input should be"):
        load_settings(f)
    with pytest.raises(ConfigError, match=r"setting max_poll_records: .* \(from --max-poll"):
        load_settings(f, max_poll_records=0)  # the flag's value, not the file's
    f.write_text("group: g\nbootstrp: typo:9092\n")
    with pytest.raises(ConfigError, match=r"kafka\.yaml:2: bootstrp: .*did you mean 'bootstrap'"):
        load_settings(f)
    f.write_text("group: g\n  bad: 1\n")
    with pytest.raises(ConfigError, match=r"kafka\.yaml:2:6: not valid YAML"):
        load_settings(f)
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("broker_timeout_s: yes", "broker_timeout_s: true (YAML reads yes/no/on/off as true/"),
        ("max_poll_records: true", "max_poll_records: true (YAML reads"),
        ("max_unacked_batches: off", "max_unacked_batches: false (YAML reads"),
        ("group_instance_id: 3", "group_instance_id: a number where a text is wanted: quote it"),
        ("sasl_plain_password: 98765432109876", "sasl_plain_password: a number where a text"),
    ],
)
def test_a_value_yaml_made_another_kind_of_is_refused_not_coerced(tmp_path, line, says):
    """A QA pass: `broker_timeout_s: yes` was taken as 1 s and `max_poll_records: true` as one
    record a poll (one commit per record), without a word; a number for a text was refused
    with no fix (a numeric password: YAML reads 0123 as 83, so it is not taken as text)."""
    f = tmp_path / "kafka.yaml"
    f.write_text(f"group: g\n{line}\n")
    with pytest.raises(ConfigError, match=re.escape(f"kafka.yaml:2: {says}")) as e:
        load_settings(f)
    assert "98765432109876" not in str(e.value)  # (a secret is not echoed)
    f.write_text("group: g\nmax_poll_records: 7\ngroup_instance_id: '3'\nrebuild_state: no\n")
    s = load_settings(f)
    assert (s.max_poll_records, s.group_instance_id, s.rebuild_state) == (7, "3", False)


def test_none_turns_a_file_s_labels_and_state_topics_off(tmp_path, monkeypatch):
    """A QA pass: `--labels-topic none` and FDS_LABELS_TOPIC=none were a topic named none, so
    a file's labels or state topic could not be turned off for one process."""
    f = tmp_path / "kafka.yaml"
    f.write_text("labels_topic: labels\nstate_topic: state\n")
    assert (load_settings(f).labels_topic, load_settings(f).state_topic) == ("labels", "state")
    s = load_settings(f, labels_topic="none", state_topic="None")
    assert (s.labels_topic, s.state_topic) == (None, None)
    monkeypatch.setenv("FDS_LABELS_TOPIC", "none")
    assert load_settings(f).labels_topic is None


def test_a_ca_file_that_holds_no_certificate_is_refused_before_connecting(tmp_path):
    """A QA pass: an --ssl-cafile that exists but is no certificate waited out the broker
    timeout (60 s), then said the broker could not be reached."""
    ca = tmp_path / "ca.pem"
    ca.write_text("notapem\n")
    with pytest.raises(ConfigError, match=r"ssl_cafile: '.*ca\.pem' holds no CA certificate .*"
                       r"give the PEM file of the certificate"):  # fmt: skip
        load_settings(security_protocol="SSL", ssl_cafile=str(ca))
    assert load_settings(ssl_cafile=str(ca)).ssl_cafile == str(ca)  # (plaintext: not read)


def test_an_offset_reset_fds_cannot_run_with_is_refused_at_the_start(tmp_path, monkeypatch):
    """Found by a QA pass: ``none`` or a typo was passed to the client, and fds run retried
    the poll's error for ever as a broker out of reach."""
    f = tmp_path / "kafka.yaml"
    f.write_text("group: g\nauto_offset_reset: none\n")
    with pytest.raises(ConfigError, match=r"kafka\.yaml:2: auto_offset_reset: .*'none' is not "
                       r"supported: .*use earliest \(the log start\) or latest"):  # fmt: skip
        load_settings(f)
    monkeypatch.setenv("FDS_AUTO_OFFSET_RESET", "latests")
    with pytest.raises(ConfigError, match=r"auto_offset_reset: Input should be 'earliest' or "
                       r"'latest' \(from FDS_AUTO_OFFSET_RESET\)"):  # fmt: skip
        load_settings()
    monkeypatch.setenv("FDS_AUTO_OFFSET_RESET", " Latest")
    assert load_settings(f).auto_offset_reset == "latest"  # (any case; the env beats the file)
    monkeypatch.setenv("FDS_AUTO_OFFSET_RESET", "smallest")  # (kafka-python's old names)
    assert load_settings(f).auto_offset_reset == "earliest"


def test_a_setting_is_told_to_be_fixed_where_it_was_given(tmp_path, monkeypatch):
    """Found by a QA pass: a missing topic named in a settings file or FDS_* was told to
    "fix --output-topic", a flag never given."""
    f = tmp_path / "kafka.yaml"
    f.write_text("output_topic: out\ndlq_topic: dead\n")
    monkeypatch.setenv("FDS_DLQ_TOPIC", "dl")
    s = load_settings(f, input_topic="in")
    assert s.fix("input_topic") == "fix --input-topic"
    assert s.fix("output_topic") == f"fix output_topic in {f}"
    assert s.fix("dlq_topic") == "fix FDS_DLQ_TOPIC"
    assert s.fix("state_topic") == "set --state-topic"  # (not given: its flag)
    assert KafkaSettings().fix("output_topic") == "set --output-topic"
    assert KafkaSettings().fix("dlq_topic") == "fix FDS_DLQ_TOPIC"  # (made directly: read too)


def test_an_empty_group_is_refused_and_an_empty_instance_id_is_none():
    """A review: group "" made the state root itself the state dir (group "" instance "x" was
    group "x"'s)."""
    with pytest.raises(ConfigError, match=r"setting group: .*at least 1 char.* \(from --group"):
        load_settings(group="")
    assert load_settings(group_instance_id="").group_instance_id is None  # (an unset variable)


def test_a_bad_value_from_the_environment_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    """Found by a QA pass: FDS_SASL_MECHANISM=PLAINX over a valid file value was reported at
    the file's line."""
    f = tmp_path / "kafka.yaml"
    f.write_text("group: g\nmax_poll_records: 100\n")
    monkeypatch.setenv("FDS_MAX_POLL_RECORDS", "0")
    with pytest.raises(ConfigError, match=r"setting max_poll_records: .*\(from FDS_MAX_POLL_R"):
        load_settings(f)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"security_protocol": "SASL_TLS"}, "Input should be 'PLAINTEXT', 'SSL'"),
        ({"security_protocol": "SASL_SSL"}, "SASL_SSL needs --sasl-mechanism"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-999"},
            "unknown SASL mechanism 'SCRAM-SHA-999': one of AWS_MSK_IAM",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "fds",
            },
            "set FDS_SASL_PLAIN_PASSWORD",
        ),
        (  # (an empty one was taken, and told as a failed login: a security review)
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "fds",
                "sasl_plain_password": "",
            },
            "set FDS_SASL_PLAIN_PASSWORD (it is empty)",
        ),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
            "ssl_cafile: no such file '/nonexistent/ca.pem'",
        ),
    ],
)
def test_security_settings_that_cannot_work_are_refused_before_connecting(settings, says):
    """They were found only after the broker timeout, and reported as a broker that is down
    (a missing password: "'NoneType' object has no attribute 'encode'")."""
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(**settings)


def test_a_security_error_says_where_the_protocol_came_from(tmp_path):
    """Found by a review: set in a settings file, it named neither the file nor the flag."""
    f = tmp_path / "kafka.yaml"
    f.write_text("security_protocol: SASL_SSL\n")
    with pytest.raises(ConfigError, match=re.escape(f"(security_protocol from {f})")):
        load_settings(f)
    with pytest.raises(ConfigError, match=re.escape("(security_protocol from --security-proto")):
        load_settings(security_protocol="SASL_SSL")


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        # a port that is no number was a traceback from the client, an empty one a wait for
        # the broker timeout (a review)
        ({"bootstrap": "127.0.0.1:abc"}, "setting bootstrap: '127.0.0.1:abc' is not host:port"),
        ({"bootstrap": "a:1,127.0.0.1:"}, "'127.0.0.1:' is not host:port"),
        ({"bootstrap": ""}, "'' has an empty server between or after its commas"),
        ({"bootstrap": "127.0.0.1:1,"}, "'127.0.0.1:1,' has an empty server between or after"),
        ({"bootstrap": "h:70000"}, "'h:70000': port 70000 is not 1 to 65535"),
        ({"bootstrap": "host:1:2"}, "'host:1:2' is not host:port"),  # (waited a minute: a QA)
        # dead letters sent to the input were read back and wrapped again, growing, until one
        # was too large (a review)
        ({"dlq_topic": "transactions"}, "dlq_topic and input_topic are both 'transactions'"),
        ({"output_topic": "x", "input_topic": "x"}, "output_topic and input_topic are both"),
        (
            {"labels_topic": "decisions"},
            "output_topic and labels_topic are both 'decisions': give each its own topic "
            "(output_topic from the default, labels_topic from --labels-topic)",
        ),
        # a space in the input topic was a traceback from the client (a QA leftover)
        ({"input_topic": "bad topic"}, "setting input_topic: 'bad topic' is no Kafka topic"),
        ({"state_topic": ".."}, "setting state_topic: '..' is no Kafka topic name"),
        ({"dlq_topic": "x" * 250}, "is no Kafka topic name: 1 to 249 ASCII"),
    ],
)
def test_a_server_that_is_no_host_port_or_a_topic_used_twice_is_refused(settings, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(**settings)
    assert load_settings(bootstrap="broker-1:9092, [::1]:9093")  # (IPv6, spaces)
    assert load_settings(bootstrap="kafka")  # a host alone: port 9092, as kafka-python reads it
    assert load_settings(output_topic="out", dlq_topic="out")  # written both: no loop


def test_security_settings_that_work_are_not_refused(tmp_path, monkeypatch):
    """Any mechanism kafka-python knows; a CA file a plaintext client never reads; a CA file
    named relative to the settings file."""
    assert load_settings(security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM")
    monkeypatch.setenv("FDS_SSL_CAFILE", "/nonexistent/ca.pem")
    assert load_settings().ssl_cafile == "/nonexistent/ca.pem"  # PLAINTEXT: not read
    monkeypatch.delenv("FDS_SSL_CAFILE")
    (tmp_path / "ca.pem").write_bytes(TEST_CA.read_bytes())
    f = tmp_path / "kafka.yaml"
    f.write_text("security_protocol: SSL\nssl_cafile: ca.pem\n")
    monkeypatch.chdir("/")
    assert load_settings(f).ssl_cafile == str(tmp_path / "ca.pem")
    f.write_text("group: g\n1: 2\n")
    with pytest.raises(ConfigError, match="1: a setting's name is text"):
        load_settings(f)


def test_the_group_timeouts_are_flags_too():
    """The README said every setting is a flag; these two were env or file only."""
    from fds.streams import kafka

    parser = argparse.ArgumentParser(prog="fds")
    kafka.register_run(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", "--session-timeout", "20000", "--max-poll-interval", "60000"])
    s = kafka.settings_from(args)
    assert (s.session_timeout_ms, s.max_poll_interval_ms) == (20000, 60000)


def test_security_settings_reach_the_client_and_secrets_stay_hidden(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(TEST_CA.read_bytes())
    s = KafkaSettings(
        bootstrap="a:9093,b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="fds",
        sasl_plain_password="s3cret",
        ssl_cafile=str(ca),
    )
    cfg = s.client_config()
    assert cfg["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert cfg["sasl_plain_password"] == "s3cret" and cfg["ssl_cafile"] == str(ca)
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["ssl_check_hostname"] is True
    # reconnect within a second of a broker coming back (kafka-python's 30 s kept fds run
    # idle for up to 39 s after an outage, a chaos run)
    assert cfg["reconnect_backoff_max_ms"] == 1000
    assert "s3cret" not in repr(s)
    with pytest.raises(pydantic.ValidationError):
        s.group = "other"  # frozen


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fds")
    kafka_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_wiring():
    args = _parse(["kafka", "up", "--port", "29092", "--controller-port", "29093"])
    assert (args.port, args.controller_port, args.func.__name__) == (29092, 29093, "_up")
    args = _parse(["run", "--bootstrap", "b:1", "--exactly-once", "--rules", "none"])
    assert args.bootstrap == "b:1" and args.exactly_once and args.rules is None
    args = _parse(["produce", "tx.jsonl", "--topic", "t", "--rate", "50"])
    assert (str(args.file), args.topic, args.rate) == ("tx.jsonl", "t", 50.0)


def test_produce_missing_file_is_a_usage_error(tmp_path, capsys):
    args = _parse(["produce", str(tmp_path / "nope.jsonl"), "--bootstrap", "127.0.0.1:1"])
    assert args.func(args) == 2
    assert "not found" in capsys.readouterr().err


def test_a_state_topic_without_a_state_dir_is_a_usage_error(capsys):
    """--state-dir none switched --state-topic off without a word (a QA pass)."""
    args = _parse([
        "run", "--bootstrap", "127.0.0.1:1", "--state-dir", "none", "--state-topic", "state",
        "--group-instance-id", "i0", "--rules", "none", "--model", "none",
    ])  # fmt: skip
    assert args.func(args) == 2
    assert (
        "a state topic (--state-topic) publishes the state dir's checkpoints, and state dir "
        "none (--state-dir) writes none" in capsys.readouterr().err
    )


def test_conflicting_settings_are_named_where_they_were_given(tmp_path, monkeypatch, capsys):
    """A state topic and `state_dir: none` from a settings file or FDS_* were told as the flags
    --state-topic and --state-dir, never given."""
    f = tmp_path / "kafka.yaml"
    f.write_text("state_topic: state\n")
    monkeypatch.setenv("FDS_STATE_DIR", "none")
    args = _parse(["run", "--bootstrap", "127.0.0.1:1", "--config", str(f),
                   "--group-instance-id", "i0", "--rules", "none", "--model", "none"])  # fmt: skip
    assert args.func(args) == 2
    assert (
        f"a state topic (state_topic in {f}) publishes the state dir's checkpoints, and "
        "state dir none (FDS_STATE_DIR) writes none" in capsys.readouterr().err
    )
    monkeypatch.delenv("FDS_STATE_DIR")
    monkeypatch.setenv("FDS_STATE_ROOT", str(tmp_path / "state"))
    args = _parse(["run", "--bootstrap", "127.0.0.1:1", "--config", str(f), "--rules", "none",
                   "--model", "none"])  # fmt: skip
    assert args.func(args) == 2
    assert (
        f"a state topic (state_topic in {f}) needs an instance id (--group-instance-id)"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--rate", "-5", "greater than 0"), ("--limit", "0", "must be at least 1")],
)
def test_produce_rate_and_limit_must_be_positive(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(["produce", "tx.jsonl", flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_client_errors_name_the_refusal_not_an_unreachable_broker():
    """kafka-python logs why a bootstrap connection failed and then only raises "Unable to
    bootstrap"; a refused login outranks the disconnects logged around it."""
    import logging

    from fds.streams.kafka_kit import ClientErrors

    manager = logging.getLogger("kafka.net.manager")
    with ClientErrors() as errors:
        manager.warning("Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: "
                        "socket disconnected (backoff 0.05 secs)")  # fmt: skip
        manager.warning("Bootstrap connection to bootstrap-0 failed: [Error 58] "
                        "SaslAuthenticationFailedError: invalid credentials "
                        "(backoff 0.11 secs)")  # fmt: skip
        manager.warning("Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: "
                        "socket disconnected (backoff 0.2 secs)")  # fmt: skip
    manager.warning("Connection failed: ECONNREFUSED")  # after the block: not kept
    assert errors.last == "[Error 58] SaslAuthenticationFailedError: invalid credentials"
    assert errors.hint("is it up?").startswith("the broker refused the login")
    assert ClientErrors().hint("is it up?") == "is it up?"
    dropped = ClientErrors()
    dropped.last = "KafkaConnectionError: socket disconnected"
    assert "during the login" in dropped.hint("is it up?", "SASL_SSL")
    assert "spoken to in PLAINTEXT" in dropped.hint("is it up?", "PLAINTEXT")


def test_a_final_refusal_ends_the_connect_at_once_a_drop_does_not():
    """``ClientErrors.connect`` gives up on a client constructor (which retries until its
    bootstrap timeout) as soon as it logs a refusal no retry changes; a drop keeps waiting."""
    import logging
    import threading

    from fds.streams.kafka_kit import ClientErrors, ClientRefused

    manager = logging.getLogger("kafka.net.manager")
    release = threading.Event()

    def constructor(*reasons: str):
        def make() -> str:
            for why in reasons:
                manager.warning("Bootstrap connection to bootstrap-0 failed: %s", why)
            release.wait(60)  # retrying, as kafka-python does until its timeout
            return "client"

        return make

    with ClientErrors() as errors, pytest.raises(ClientRefused, match="certificate verify"):
        why = "KafkaConnectionError: Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] " + (
            "certificate verify failed"
        )
        errors.connect(constructor(why))
    with ClientErrors() as errors, pytest.raises(ClientRefused, match="frame length"):
        errors.connect(constructor("InvalidReceiveError: Invalid frame length: 352518912"))
    release.set()  # the abandoned constructors end
    release.clear()
    with ClientErrors() as errors:
        threading.Timer(0.3, release.set).start()
        assert errors.connect(constructor("KafkaConnectionError: socket disconnected")) == "client"
        release.clear()
        # one of two bootstrap addresses refusing is no verdict: kafka-python tries the other
        # (a refusal seen by an earlier connect of the block does not count either)
        threading.Timer(0.3, release.set).start()
        refused = "InvalidReceiveError: Invalid frame length: 1"
        assert errors.connect(constructor(refused), servers=2) == "client"
    msg = errors.explain(ClientRefused("x"), "h:1", "cannot reach Kafka at h:1", "up?", "SSL")
    assert msg.startswith("Kafka at h:1 refused the client: ")


def test_a_fetch_wait_the_client_cannot_take_is_refused():
    """A review: fetch_max_wait_ms of 30 s or more made kafka-python refuse to start, told
    as a broker out of reach; 0 fetched in a tight loop while idle."""
    for bad in (0, 30_000):
        with pytest.raises(ConfigError, match="fetch_max_wait_ms"):
            load_settings(fetch_max_wait_ms=bad)
    assert load_settings(fetch_max_wait_ms=20, fetch_min_bytes=16384).fetch_min_bytes == 16384


def test_a_home_folder_from_the_environment_is_expanded(monkeypatch):
    """A QA pass: FDS_STATE_DIR='~/sd' (systemd and Kubernetes do not expand ~) made a
    folder named `~` in the working directory; the file's `state_dir: ~/sd` was expanded."""
    import os

    monkeypatch.setenv("FDS_STATE_DIR", "~/sd")
    monkeypatch.setenv("FDS_REGISTRY", "~/reg")
    s = load_settings()
    assert s.state_dir == os.path.expanduser("~/sd") and str(s.registry).startswith("/")


def test_a_registry_flag_at_home_and_empty_paths_of_a_file(tmp_path, monkeypatch):
    """A QA pass: `--registry ~/r` (parsed into a Path) made a folder `~` in the working
    directory; a settings file's `state_dir: ""` or `registry: ""` became the file's own
    folder, where the environment's empty value is the default, or refused."""
    import os

    from fds.cli import build_parser

    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    for command in ("run", "train"):
        s = settings_from(parse([command, "--registry", "~/qa-r"]))
        assert str(s.registry) == os.path.expanduser("~/qa-r")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "s.yaml").write_text('state_dir: ""\n')
    assert not settings_from(parse(["run", "--config", "cfg/s.yaml"])).state_dir  # (default)
    (tmp_path / "cfg" / "r.yaml").write_text('registry: ""\n')
    with pytest.raises(ConfigError, match=r"r\.yaml:1: registry: empty: give a folder"):
        settings_from(parse(["run", "--config", "cfg/r.yaml"]))


def test_settings_that_have_no_effect_are_said(caplog):
    """A QA pass: `--sasl-mechanism PLAIN` (or `--ssl-cafile`) without a SASL (SSL) protocol
    connected in plaintext without a word, `--transactional-id` without `--exactly-once` too;
    `security_protocol: sasl_ssl` was refused for its case."""
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        load_settings(sasl_mechanism="PLAIN", ssl_cafile="ca.pem", transactional_id="t")
    said = caplog.text
    assert "sasl_mechanism given, but security_protocol is PLAINTEXT: not used" in said
    assert "ssl_cafile given, but security_protocol is PLAINTEXT: not used" in said
    assert "transactional_id given without exactly_once" in said
    caplog.clear()
    s = load_settings(security_protocol="sasl_plaintext", sasl_mechanism="PLAIN",
                      sasl_plain_username="u", sasl_plain_password="p")  # fmt: skip
    assert s.security_protocol == "SASL_PLAINTEXT" and "not used" not in caplog.text
    # the mechanism in any case too, as the protocol (a QA pass: `plain` was refused)
    s = load_settings(security_protocol="sasl_ssl", sasl_mechanism=" scram-sha-512",
                      sasl_plain_username="u", sasl_plain_password="p")  # fmt: skip
    assert (s.security_protocol, s.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")


def test_a_commit_interval_that_has_no_effect_is_said(caplog):
    """Exactly-once commits a transaction per batch and max_unacked_batches 0 a synchronous
    commit per batch: a commit interval given with either is not used; its default is not
    worth a word."""
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        load_settings(commit_interval_ms=500, exactly_once=True)
        load_settings(commit_interval_ms=500, max_unacked_batches=0)
        load_settings(exactly_once=True)
        load_settings(commit_interval_ms=500)
    said = [r.getMessage() for r in caplog.records if "commit_interval_ms" in r.getMessage()]
    assert len(said) == 2
    assert "exactly_once commits a transaction per batch: not used" in said[0]
    assert "max_unacked_batches 0 commits each batch synchronously: not used" in said[1]
    caplog.clear()  # (a QA pass: --exactly-once --max-unacked-batches 5 said nothing)
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        load_settings(max_unacked_batches=5, exactly_once=True)
        load_settings(max_unacked_batches=5)
    said = [r.getMessage() for r in caplog.records if "max_unacked_batches given" in r.getMessage()]
    assert len(said) == 1 and "exactly_once commits a transaction per batch" in said[0]


def test_a_poll_wait_or_a_stop_deadline_past_the_stop_promise_is_bounded(monkeypatch, caplog):
    """A QA pass: FDS_POLL_TIMEOUT_MS=30000 took 18.5 s to stop, 99999999999 never stopped;
    shutdown_timeout_s took inf. More than the promise leaves is taken as that, with a
    warning (refused, a deployment file's 25 s stopped an upgrade: a review); inf refused."""
    with pytest.raises(ConfigError, match="shutdown_timeout_s"):
        load_settings(shutdown_timeout_s=float("inf"))
    monkeypatch.setenv("FDS_POLL_TIMEOUT_MS", "99999999999")
    with caplog.at_level("WARNING", logger="fds.streams.kafka"):
        s = load_settings(shutdown_timeout_s=25)
    assert (s.poll_timeout_ms, s.shutdown_timeout_s) == (1000, 9.0)
    assert "shutdown_timeout_s 25 is more than a stop can wait (10 s): 9 is used" in caplog.text
    assert "poll_timeout_ms 99999999999 is more than a stop can wait (10 s): 1000" in caplog.text


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "x.csv", "--topic", "a/b"],
        ["produce", "x.csv", "--labels-topic", "a b"],
        ["run", "--models-topic", "é"],
        ["train", "--decisions-topic", ""],
        ["train", "--models-topic", "a:b"],
    ],
)
def test_a_topic_flag_kafka_cannot_take_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(argv)
    assert exit_.value.code == 2
    assert "is no Kafka topic name" in capsys.readouterr().err


def test_produce_checks_a_foreign_file_for_any_topic_but_a_labels_file(tmp_path, capsys):
    """A QA pass: a CSV of other column names sent to a prefixed transactions topic went out
    whole (checked only for the input topic's own name); one topic given both roles sent the
    labels as transactions; `--compression none` (the documented default) was refused."""
    from fds.streams.produce import _labels_file, produce_file

    mine = tmp_path / "mine.csv"
    mine.write_text("TRANSACTION_ID,TX_DATETIME,AMT\nt1,2026-01-01 00:00:00,5\n")
    s = KafkaSettings(bootstrap="127.0.0.1:1", broker_timeout_s=1)
    with pytest.raises(ConfigError, match=r"amount|card_id"):
        produce_file(mine, s, topic="p-transactions")
    labels = tmp_path / "x.labels.jsonl"
    labels.write_text('{"tx_id": "t1", "ts": 1767225600, "is_fraud": true}\n')
    assert _labels_file(labels, None) and not _labels_file(mine, None)
    with pytest.raises(ConfigError, match="--labels-topic 'p-t' is the topic the records go to"):
        produce_file(mine, s, topic="p-t", labels_topic="p-t")
    # a transactions file to the labels topic (fds run and fds train dead-lettered each one)
    tx = tmp_path / "tx.jsonl"
    tx.write_text('{"tx_id": "t1", "ts": 1767225600, "card_id": "c1", "amount": 5}\n')
    for name, fix in (
        ("labels", "--topic transactions, or no --topic"),
        ("p.labels", "--topic p.transactions\\)"),  # (a README walk: the prefix's topic)
        ("p-labels", "--topic p-transactions\\)"),
    ):
        said = f"--topic '{name}' is a labels topic, but .* holds no labels.*\\({fix}"
        with pytest.raises(ConfigError, match=said):
            produce_file(tx, s, topic=name)
    # ... and a labels file to a prefixed transactions topic (each dead-lettered: a QA pass)
    # (and to the input topic, the default: told to map amount and card_id, a README walk)
    for name, fix in (("p.transactions", "p.labels"), ("p_transactions", "p_labels"),
                      ("transactions", "labels"), (None, "labels")):  # fmt: skip
        named = (
            f"--topic '{name}' is a transactions topic"
            if name
            else "without --topic the records go to the transactions topic 'transactions'"
        )
        said = f"{named}, but .* holds labels "
        with pytest.raises(ConfigError, match=said + f".*--topic {fix}\\)"):
            produce_file(labels, s, topic=name)
    # labelled transactions of another amount column are no labels file: told to map it (a
    # review: told "holds labels")
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("tx_id,ts,card_id,amt,is_fraud\nt1,1767225600,c1,5,0\n")
    with pytest.raises(ConfigError, match=r"required engine field\(s\) \['amount'\]"):
        produce_file(labelled, s)
    with pytest.raises(ConfigError, match=r"\(--topic payments, or no --topic\)"):
        produce_file(tx, KafkaSettings(input_topic="payments", bootstrap="127.0.0.1:1"),
                     topic="labels")  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"--topic 'mine' is a labels topic.*--topic transactions,"
    ):
        produce_file(tx, KafkaSettings(labels_topic="mine", bootstrap="127.0.0.1:1"), topic="mine")
    for none in ("none", "NONE"):
        assert KafkaSettings(compression_type=none).compression_type is None
    assert KafkaSettings(compression_type="LZ4").compression_type == "lz4"
    with pytest.raises(ValueError, match="'zip' is not one of 'none', 'gzip'"):
        KafkaSettings(compression_type="zip")  # (the refusal omitted 'none': a QA pass)


def test_train_refuses_one_topic_for_decisions_and_labels(capsys):
    args = _parse(["train", "--decisions-topic", "d", "--labels-topic", "d", "--metrics-port",
                   "-1"])  # fmt: skip
    assert args.func(args) == 2
    assert "--decisions-topic and --labels-topic are both 'd'" in capsys.readouterr().err
    # (announcements written to the decisions topic were read back as bad records: a QA pass)
    for flags, says in [
        (["--decisions-topic", "d", "--models-topic", "d"], "--decisions-topic and --models-topic"),
        (["--labels-topic", "l", "--models-topic", "l"], "--labels-topic and --models-topic"),
    ]:
        args = _parse(["train", *flags, "--metrics-port", "-1"])
        assert args.func(args) == 2
        assert f"{says} are both" in capsys.readouterr().err


def test_train_says_its_metrics_address_whatever_q_and_refuses_a_port_before_making_state(
    tmp_path, capsys
):
    """QA passes: `fds -q train --metrics-port 0` never said which port it took (the line was
    INFO), and a port in use was refused after the state dir and registry had been made."""
    import logging
    import socket

    from fds.cli import main

    try:
        reg, st = str(tmp_path / "reg"), str(tmp_path / "st")
        argv = ["-q", "train", "--bootstrap", "127.0.0.1:1", "--broker-timeout", "1",
                "--registry", reg, "--state-dir", st]  # fmt: skip
        assert main([*argv, "--metrics-port", "0"]) == 1  # (no broker)
        assert re.search(r"^serving metrics on http://127\.0\.0\.1:\d+/metrics$",
                         capsys.readouterr().err, re.M)  # fmt: skip
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            reg, st = tmp_path / "reg2", tmp_path / "st2"
            argv[6:10] = ["--registry", str(reg), "--state-dir", str(st)]
            assert main([*argv, "--metrics-port", str(taken.getsockname()[1])]) == 2
        assert "cannot serve metrics on 127.0.0.1" in capsys.readouterr().err
        assert not reg.exists() and not st.exists()
    finally:
        logging.getLogger("fds").setLevel(logging.INFO)  # (as the other tests expect)


def test_run_refuses_the_models_topic_in_another_role():
    """A QA pass: `fds run --models-topic transactions` read the announcements as input."""
    from fds.streams.kafka import build_run_engine

    for role, topic in [("input_topic", "transactions"), ("labels_topic", "labels")]:
        s = load_settings(labels_topic="labels")
        with pytest.raises(ConfigError, match=rf"--models-topic and {role} are both '{topic}'"):
            build_run_engine(None, None, models_topic=topic, settings=s)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_and_train_serve_from_a_deployment_files_registry_and_port(
    tmp_path, monkeypatch, capsys
):
    """One file per deployment, read by fds run and fds train alike: the registry each
    serves from or publishes to and the port of its /metrics (they were flags only: a QA
    pass, two deployments on one cluster). The flags still win."""
    import logging
    import socket

    from fds.cli import main

    _no_deployment_env(monkeypatch)
    monkeypatch.setenv("FDS_STATE_ROOT", str(tmp_path / "state"))
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "prod.yaml"
    reg = tmp_path / "etc" / "reg"  # (relative to the file)
    run_port, train_port = _free_port(), _free_port()
    deployment = "bootstrap: 127.0.0.1:1\nbroker_timeout_s: 1\nregistry: reg\n"
    try:
        f.write_text(f"{deployment}metrics_port: {run_port}\n")
        assert main(["run", "--config", str(f), "--rules", "none"]) == 1  # (no broker)
        err = capsys.readouterr().err
        assert f"serving metrics on http://127.0.0.1:{run_port}/metrics" in err
        assert f'msg="serving model" version="none yet" registry="{reg}" models_topic="none"' in err
        f.write_text(f"{deployment}metrics_port: {train_port}\n")
        assert main(["train", "--config", str(f)]) == 1
        err = capsys.readouterr().err
        assert f"serving metrics on http://127.0.0.1:{train_port}/metrics" in err
        assert f'models_topic="models" registry="{reg}"' in err  # (its start line)
        other = tmp_path / "other"  # the flags as they are, over the file's
        assert main(["train", "--config", str(f), "--registry", str(other),
                     "--models-topic", "none", "--metrics-port", "-1"]) == 1  # fmt: skip
        err = capsys.readouterr().err
        assert "serving metrics" not in err and f'models_topic="none" registry="{other}"' in err
        with socket.socket() as taken:  # a refused port is told to be fixed where it was given
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            f.write_text(f"{deployment}metrics_port: {taken.getsockname()[1]}\n")
            assert main(["train", "--config", str(f)]) == 2
        assert f"choose another port (metrics_port in {f}, 0-65535)" in capsys.readouterr().err
    finally:
        logging.getLogger("fds").setLevel(logging.INFO)  # (as the other tests expect)


def test_a_models_topic_of_a_file_is_named_there_in_fds_run_and_fds_train(
    tmp_path, monkeypatch, capsys
):
    """Its checks name it where it was given (they said --models-topic, never given)."""
    _no_deployment_env(monkeypatch)
    f = tmp_path / "kafka.yaml"
    f.write_text("bootstrap: 127.0.0.1:1\nmodels_topic: transactions\n")
    args = _parse(["run", "--config", str(f), "--rules", "none", "--model", "none",
                   "--state-dir", "none"])  # fmt: skip
    assert args.func(args) == 2
    assert (
        f"models_topic in {f} and input_topic are both 'transactions': give each its own topic "
        f"(set --input-topic or fix models_topic in {f})" in capsys.readouterr().err
    )
    f.write_text("bootstrap: 127.0.0.1:1\nmodels_topic: models\n")
    # --model none: a deployment's file, shared by every scorer, is no reason to refuse (a
    # review: it exited 2); the flag is
    from fds.streams.kafka import build_run_engine, close_engine, load_settings

    for flag, refused in ((None, False), ("models", True)):
        s = load_settings(f, models_topic=flag)
        if refused:
            with pytest.raises(ConfigError, match=r"a models topic \(--models-topic: models\)"):
                build_run_engine(None, None, settings=s, models_topic=s.models_topic)
        else:
            engine = build_run_engine(None, None, settings=s, models_topic=s.models_topic)
            assert engine.model is None
            close_engine(engine)
    args = _parse(["run", "--config", str(f), "--rules", "none", "--model", "none",
                   "--state-dir", "none", "--models-topic", "NONE"])  # fmt: skip
    assert settings_from(args).models_topic_for(None) is None  # (a flag turns the file's off)
    f.write_text("models_topic: decisions\n")
    args = _parse(["train", "--config", str(f), "--metrics-port", "-1"])
    assert args.func(args) == 2
    assert f"--decisions-topic and models_topic in {f} are both 'decisions'" in (
        capsys.readouterr().err
    )


def test_produce_and_topics_take_a_deployment_file_with_every_setting(tmp_path, monkeypatch):
    """A deployment's one file serves every command, its registry, models topic and metrics
    included (fds produce and fds kafka topics read only what they use)."""
    _no_deployment_env(monkeypatch)
    f = tmp_path / "prod.yaml"
    f.write_text(
        "bootstrap: b:1\ninput_topic: prod.tx\nregistry: reg\nmodels_topic: prod.models\n"
        "metrics_port: 9200\nmetrics_host: 127.0.0.1\n"
    )
    for argv in (["produce", "tx.jsonl"], ["kafka", "topics"]):
        s = settings_from(_parse([*argv, "--config", str(f)]))
        assert (s.bootstrap, s.input_topic, s.metrics_port) == ("b:1", "prod.tx", 9200)


def test_the_readmes_deployment_file_serves_run_and_train(tmp_path, monkeypatch):
    """README "Configuration": its one file per deployment, read by fds run and fds train,
    and the error it quotes for a bad metrics port."""
    from pathlib import Path

    from fds.cli import build_parser
    from fds.streams.kafka import RUN_METRICS_PORT
    from fds.streams.train import TRAIN_METRICS_PORT, train_settings, trainer_topics

    _no_deployment_env(monkeypatch)
    for name in ("FDS_GROUP", "FDS_INPUT_TOPIC", "FDS_OUTPUT_TOPIC", "FDS_LABELS_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = re.search(r"```yaml\n(# etc/prod\.yaml.*?)```", readme, re.S)
    assert example is not None
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "prod.yaml"
    f.write_text(example.group(1))
    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    run = settings_from(parse(["run", "--config", "etc/prod.yaml"]))
    assert run.registry == Path("etc/registry")  # (relative to the file)
    assert run.models_topic_for(None) == "prod.models"
    assert run.metrics_address(RUN_METRICS_PORT) == ("127.0.0.1", 9208)
    args = parse(["train", "--config", "etc/prod.yaml", "--metrics-port", "9209"])
    train = train_settings(args)
    assert (train.group, train.registry) == ("fds-prod-train", run.registry)
    assert trainer_topics(args, train) == ("prod.decisions", "prod.labels", "prod.models")
    assert train.metrics_address(TRAIN_METRICS_PORT) == ("127.0.0.1", 9209)
    f.write_text(example.group(1).replace("metrics_port: 9208", "metrics_port: 99999"))
    said = "etc/prod.yaml:11: metrics_port: a port is 0-65535 (0: any free port), or -1: off"
    assert said in readme.replace("\n", " ")
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings("etc/prod.yaml")


def test_kafka_topics_says_when_a_deployments_models_topic_is_not_made(tmp_path, monkeypatch):
    """The models topic a file names is one of the deployment's topics: `fds kafka topics
    --config` says when it did not make it (none: there is none to make)."""
    _no_deployment_env(monkeypatch)
    f = tmp_path / "prod.yaml"
    made = {"prod.transactions", "prod.models"}
    f.write_text("models_topic: models\n")
    assert kafka_cli._other_topics(load_settings(f), "prod.", made) == [
        f"the settings' models_topic 'models' (models_topic in {f}) is none of the topics made: "
        "fds run needs it (make it, or fix the setting)"
    ]
    for fine in ("prod.models", "none"):
        f.write_text(f"models_topic: {fine}\n")
        assert kafka_cli._other_topics(load_settings(f), "prod.", made) == []


def test_a_service_stops_on_sighup_unless_started_to_ignore_it():
    """A QA pass: SIGHUP (a closed terminal) killed fds run on the spot; it drains and exits as
    on SIGTERM now, except under `nohup` (started ignoring it: a review found the handler
    undid that, and a logout stopped the service)."""
    import signal

    from fds.streams.kafka import on_stop_signals

    def stop(*_: object) -> None:
        pass

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        on_stop_signals(stop)
        assert all(signal.getsignal(s) is stop for s in saved)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts it
        on_stop_signals(stop)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_the_exactly_once_warning_names_the_setting_as_it_was_given(tmp_path):
    """A QA pass: `exactly_once: true` in a settings file was warned about as
    "--exactly-once without --group-instance-id ...", a flag the user never gave."""
    import subprocess
    import sys

    (tmp_path / "k.yaml").write_text(
        "exactly_once: true\nbootstrap: 127.0.0.1:2\nbroker_timeout_s: 1\nmetrics_port: -1\n"
        "state_dir: none\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fds", "run", "--config", "k.yaml", "--rules", "none",
         "--model", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1  # (no broker there)
    assert "exactly_once in k.yaml without --group-instance-id or --transactional-id" in (
        done.stderr
    ), done.stderr
