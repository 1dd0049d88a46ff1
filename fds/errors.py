"""The fds exception tree.

::

    FdsError                    root: every error fds raises on purpose
    ├── ConfigError             a config, rules, model or mapping file is wrong (names file:line)
    │   └── FeatureStateMismatch  a saved feature state does not fit the features declared now
    ├── ValidationError         one input record violates the contract (goes to the dead letters)
    ├── StageError              a stage raised while deciding one record (goes to the dead letters)
    ├── RuleError               an acting rule raised on one record's values (its stage's cause)
    └── ArtifactError           a model artifact failed verification (sha256 / HMAC / canary)
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "FdsError",
    "FeatureStateMismatch",
    "RuleError",
    "StageError",
    "ValidationError",
    "describe",
]


class FdsError(Exception):
    """Root of every error fds raises on purpose."""


class ConfigError(FdsError):
    """A configuration file or value is wrong.

    ``where`` is ``file:line[:column]`` when known; the message says what to do.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class FeatureStateMismatch(ConfigError):
    """A saved feature state that does not fit the features declared now (other declarations,
    timezone, grace; or none saved): the rest of a saved engine state may still be used."""


class ValidationError(FdsError):
    """One input record does not satisfy the contract."""


class StageError(FdsError):
    """A stage raised while deciding one record."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage = stage
        self.cause = cause
        super().__init__(f"{stage}: {describe(cause)}")


class RuleError(FdsError):
    """An active rule raised on one transaction's values (division by zero, ``log(0)``, text
    where it computes with a number): the transaction cannot be decided as the rules say.

    >>> str(RuleError("ratio", ZeroDivisionError("float division by zero")))
    'rule ratio raised ZeroDivisionError: float division by zero'
    """

    def __init__(self, rule: str, cause: BaseException) -> None:
        self.rule = rule
        self.cause = cause
        super().__init__(f"rule {rule} raised {describe(cause)}")


class ArtifactError(FdsError):
    """A model artifact is corrupt, tampered with, or fails its canary check.

    ``local``: the failure may come from this machine rather than the artifact (its key, its
    file system, its libraries): another machine may load the same version. ``bad_model``: the
    model itself fails (its canary scores no probability: a NaN weight), not its file: what it
    learned is no base to learn on from.
    """

    def __init__(self, message: str, *, local: bool = False, bad_model: bool = False) -> None:
        super().__init__(message)
        self.local = local
        self.bad_model = bad_model


def describe(exc: BaseException) -> str:
    """``Class: message`` of an exception, once (kafka-python's errors already start so); our
    own errors' messages are written for the user and go without the class name.

    >>> describe(ValueError("bad")), describe(ValueError()), describe(FdsError("no labels"))
    ('ValueError: bad', 'ValueError', 'no labels')
    >>> from kafka.errors import KafkaTimeoutError
    >>> describe(KafkaTimeoutError("no answer"))
    'KafkaTimeoutError: no answer'
    """
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    if isinstance(exc, FdsError):  # (`fds train: failed: FdsError: ...`, a QA pass)
        return text
    return text if text == name or text.startswith(f"{name}: ") else f"{name}: {text}"


def also(first: BaseException | None, then: FdsError) -> FdsError:
    """``then``, raised while ``first`` was on its way out, with ``first`` said too (two
    outputs on one full disk said only the second's failure: a QA pass).

    >>> str(also(FdsError("cannot write d.jsonl"), FdsError("cannot write dlq.jsonl")))
    'cannot write d.jsonl; and cannot write dlq.jsonl'
    >>> str(also(KeyboardInterrupt(), FdsError("x"))), str(also(FdsError("x"), FdsError("x")))
    ('x', 'x')
    """
    if isinstance(first, FdsError) and str(first) != str(then):
        return FdsError(f"{first}; and {then}")
    return then
