"""The fds exception tree.

::

    FdsError                    root: every error fds raises on purpose
    ├── ConfigError             a config, rules, model or mapping file is wrong (names file:line)
    ├── ValidationError         one input record violates the contract (goes to the dead letters)
    ├── StageError              a stage raised while deciding one record (goes to the dead letters)
    └── ArtifactError           a model artifact failed verification (sha256 / HMAC / canary)
"""

from __future__ import annotations

__all__ = ["ArtifactError", "ConfigError", "FdsError", "StageError", "ValidationError"]


class FdsError(Exception):
    """Root of every error fds raises on purpose."""


class ConfigError(FdsError):
    """A configuration file or value is wrong.

    ``where`` is ``file:line[:column]`` when known; the message says what to do.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ValidationError(FdsError):
    """One input record does not satisfy the contract."""


class StageError(FdsError):
    """A stage raised while deciding one record."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage = stage
        self.cause = cause
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")


class ArtifactError(FdsError):
    """A model artifact is corrupt, tampered with, or fails its canary check.

    ``local``: the failure may come from this machine rather than the artifact (its key, its
    file system, its libraries): another machine may load the same version.
    """

    def __init__(self, message: str, *, local: bool = False) -> None:
        super().__init__(message)
        self.local = local
