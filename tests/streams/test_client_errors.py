"""What ``fds`` says when a Kafka client cannot connect (fds.streams.kafka_kit.ClientErrors),
from the warnings kafka-python logs while it bootstraps."""

from __future__ import annotations

import logging

from fds.streams.kafka_kit import ClientErrors

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
