"""What ``fds`` says when a Kafka client cannot connect (fds.streams.kafka_kit.ClientErrors),
from the warnings kafka-python logs while it bootstraps."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from fds.streams.kafka_kit import ClientErrors, close_producer, flush_within
from fds.timeutil import WAKE_S

DROP = "KafkaConnectionError: socket disconnected"


def seen(*reasons: str) -> ClientErrors:
    with ClientErrors() as errors:
        for why in reasons:
            logging.getLogger("kafka.net.manager").warning(
                "Bootstrap connection to bootstrap-0 failed: %s (backoff 0.5 secs)", why
            )
    return errors


def test_a_wrong_password_dropped_and_then_cut_short_still_points_at_the_login():
    """The last attempt before the bootstrap deadline times out ("after 173 ms"): on a loaded
    machine that replaced the drops, and a wrong SCRAM password read as a broker that is down
    (a CI run failed so)."""
    errors = seen(DROP, DROP, "[Error 7] RequestTimedOutError: Request timed out after 173 ms")
    assert errors.last == DROP
    assert "check --sasl-username, the password" in errors.hint("is it up?", "SASL_SSL")
    # alone, a timeout is what is said
    assert seen("[Error 7] RequestTimedOutError: x").last == "[Error 7] RequestTimedOutError: x"
    # a refusal still outranks what comes after it, a later drop still replaces a timeout
    refused = "[Error 58] SaslAuthenticationFailedError: invalid credentials"
    assert seen(refused, DROP).last == refused
    assert seen("[Error 7] RequestTimedOutError: x", DROP).last == DROP


def test_a_protocol_the_port_does_not_speak_points_at_security_protocol():
    """Found by a QA pass: a SASL client on a PLAINTEXT port, and an SSL client on a SASL_SSL
    port, were told to check that the broker is up, after the whole timeout."""
    sasl_on_plain = seen("[Error 34] IllegalSaslStateError: Request is not valid")
    assert sasl_on_plain.refused  # final: given up at once, not after the broker timeout
    said = sasl_on_plain.hint("is the broker up?", "SASL_PLAINTEXT")
    assert "takes no SASL login on this port" in said and "--security-protocol" in said
    said = seen(DROP).hint("is the broker up?", "SSL")
    assert "after the TLS handshake" in said and "--security-protocol" in said
    said = ClientErrors().hint("is the broker up?", "SSL")  # (nothing more in the client's log)
    assert said.startswith("is the broker up?; or its port speaks another protocol than SSL")
    assert ClientErrors().hint("is the broker up?") == "is the broker up?"


def test_a_mechanism_the_port_does_not_enable_points_at_sasl_mechanism():
    """A QA pass: `--sasl-mechanism SCRAM-SHA-256` on the kit's SCRAM-SHA-512 port waited the
    whole broker timeout, then blamed the login's dropped connection (OAUTHBEARER: the broker)."""
    errors = seen("[Error 33] UnsupportedSaslMechanismError: SCRAM-SHA-256", DROP)
    assert errors.refused  # final: given up at once
    said = errors.hint("is the broker up?", "SASL_SSL")
    assert said.startswith("the broker enables no such SASL mechanism on this port ([Error 33]")
    assert "check --sasl-mechanism" in said


def test_a_tls_handshake_ended_at_once_again_and_again_points_at_security_protocol():
    """A QA pass: an SSL client on a PLAINTEXT port waited out the broker timeout (the broker
    ends each handshake at once), then was told to check --ssl-cafile."""
    eof = ("KafkaConnectionError: Handshake failed: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF "
           "occurred in violation of protocol (_ssl.c:1006)")  # fmt: skip
    assert not seen(eof, eof).refused  # (a broker going down may cut one or two)
    assert not seen(eof, eof, DROP, eof).refused  # (in a row: a review)
    errors = seen(eof, eof, eof)
    assert errors.refused  # final: given up at once
    said = errors.hint("is the broker up?", "SSL")
    assert said.startswith("the broker ended the TLS handshake at once (")
    assert "a port without TLS spoken to with SSL? check --security-protocol" in said


def test_a_certificate_for_another_host_points_at_the_host_name():
    """Found by a QA pass: a host-name mismatch was blamed on --ssl-cafile."""
    why = ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, "
           "certificate is not valid for 'vm'. (_ssl.c:1006)")  # fmt: skip
    errors = seen(why)
    assert errors.refused  # final: given up at once
    said = errors.hint("is the broker up?", "SASL_SSL")
    assert "not for the host in --bootstrap" in said and "ssl_check_hostname: false" in said


class _Sender:
    def force_close(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass  # (still running: a loaded machine)


class _Unacknowledged(KafkaProducer):
    """kafka-python's producer over records no broker acknowledges, whose sender outlives its
    join: ``flush`` times out for good."""

    def __init__(self) -> None:  # (no client: only what close and __del__ touch)
        self._closed, self._sender, self._metrics, self.config = False, _Sender(), None, {}

    def flush(self, timeout: float | None = None) -> None:
        raise KafkaTimeoutError("Timeout waiting for future")


def test_a_producer_given_up_on_is_closed_for_good():
    """A CI-like run under load: `fds produce` stopped by a SIGTERM in a broker outage printed
    kafka-python's KafkaTimeoutError traceback after its summary, from the producer's __del__
    at exit (its close had failed, so it flushed again)."""
    producer = _Unacknowledged()
    close_producer(producer, 0.0)
    producer.close(timeout=1)  # (what its __del__ does at exit): nothing left to flush


class _AckedAfter:
    """A producer whose records are acknowledged ``after`` seconds from now."""

    def __init__(self, after: float) -> None:
        self.at, self.waits = time.monotonic() + after, []

    def flush(self, timeout: float | None = None) -> None:
        assert timeout is not None
        self.waits.append(timeout)
        left = self.at - time.monotonic()
        time.sleep(max(min(left, timeout), 0.0))
        if left > timeout:
            raise KafkaTimeoutError("Timeout waiting for future")


def test_a_flush_waits_in_short_steps_so_a_signal_is_handled_within_one():
    """A SIGTERM the kernel gave kafka-python's network thread waited out `fds produce`'s whole
    60-s flush in an outage (the main thread runs a handler only when it wakes)."""
    acked = _AckedAfter(0.5)
    flush_within(acked, 60.0)
    assert max(acked.waits) <= WAKE_S and len(acked.waits) >= 2
    never = _AckedAfter(math.inf)
    t0 = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        flush_within(never, 0.5)
    assert time.monotonic() - t0 >= 0.5 and max(never.waits) <= WAKE_S  # (to its deadline)


def test_a_flush_s_cap_is_read_again_at_each_step():
    """`fds train` waits for the broker its whole timeout, or a share of a stop's deadline once
    stopping: a SIGTERM handled during the flush shortens it as it comes."""
    never, stopping = _AckedAfter(math.inf), time.monotonic() + 0.5
    t0 = time.monotonic()
    with pytest.raises(KafkaTimeoutError):  # a share of what is left from then on
        flush_within(never, 60.0, cap=lambda s: s if time.monotonic() < stopping else 0.5)
    assert 1.0 <= time.monotonic() - t0 < 30


def test_a_missing_topic_s_hint_waits_for_the_broker_a_bounded_time(monkeypatch) -> None:
    """A review: the closest topic of a missing one was asked with kafka-python's topics(),
    which waits without a limit: a broker gone meanwhile held the missing topic's error for
    good. The hint is given up after TOPICS_WAIT_S; a client that answers gives it."""
    import threading
    import time

    from fds.streams import service

    monkeypatch.setattr(service, "TOPICS_WAIT_S", 0.2)
    gone = threading.Event()

    class Silent:
        def topics(self) -> set[str]:
            gone.wait(5)
            return {"transactions"}

    t0 = time.monotonic()
    assert service.topics_of(Silent()) == set()
    assert time.monotonic() - t0 < 2
    gone.set()

    class Answering:
        def topics(self) -> set[str]:
            return {"transactions", "__consumer_offsets"}

    err = service.no_topic("transactons", "b:1", "fix --topic", service.topics_of(Answering()))
    assert "topic 'transactons' does not exist on b:1 (did you mean 'transactions'?)" in str(err)


DATA = Path(__file__).parent / "data"  # a throwaway EC key and certificate, made for these tests


@pytest.mark.parametrize(("key", "password", "says"), [
    ("client-encrypted.key", None, "the client key '.*client-encrypted.key' is encrypted: set its "
     "password in FDS_SSL_PASSWORD"),
    ("client-encrypted.key", "wrong", "FDS_SSL_PASSWORD does not open the client key"),
    ("client.pem", None, "'.*client.pem' and its key '.*client.pem' are no client certificate"),
])  # fmt: skip
def test_a_client_key_tls_cannot_load_is_refused_at_once(key, password, says, monkeypatch):
    """A QA pass: an encrypted --ssl-keyfile without FDS_SSL_PASSWORD made OpenSSL ask for the
    password on the terminal, where fds waited past its broker timeout, deaf to SIGTERM; a
    wrong password waited out the timeout and blamed --ssl-cafile."""
    from fds.errors import ConfigError
    from fds.streams.settings import load_settings

    if password is not None:
        monkeypatch.setenv("FDS_SSL_PASSWORD", password)
    tls = {"security_protocol": "SSL", "ssl_certfile": str(DATA / "client.pem")}
    with pytest.raises(ConfigError, match=says):
        load_settings(**tls, ssl_keyfile=str(DATA / key))
    monkeypatch.setenv("FDS_SSL_PASSWORD", "fds-test")  # (the right one; a key in the clear)
    assert load_settings(**tls, ssl_keyfile=str(DATA / "client-encrypted.key")).ssl_keyfile
    monkeypatch.delenv("FDS_SSL_PASSWORD")
    s = load_settings(**tls, ssl_keyfile=str(DATA / "client.key"))
    assert s.client_config()["ssl_password"] == ""  # (given: OpenSSL never prompts)
