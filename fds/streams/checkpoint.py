"""Checkpoints of engine state with the input offsets they correspond to.

A checkpoint is one file, ``<state dir>/engine.ckpt``: a pickle of ``{"format", "topic",
"offsets", "state", "written_at"}`` where ``state`` is :meth:`fds.engine.Engine.state_dict` and
``offsets`` maps each input partition to the offset of the next record *not* folded into
``state``. It is written atomically (temporary file in the same directory, fsync, rename, fsync
of the directory): a crash leaves the previous checkpoint or the new one, never a torn file.

The caller writes it only after the offsets it carries are committed (see
:mod:`fds.streams.kafka`), so a checkpoint never runs ahead of the committed input.

>>> import tempfile
>>> ck = Checkpointer(tempfile.mkdtemp())
>>> ck.load() is None
True
>>> ck.save({"features": None}, topic="tx", offsets={0: 12, 3: 7})
>>> got = ck.load()
>>> got.offsets, got.topic, got.state
({0: 12, 3: 7}, 'tx', {'features': None})
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fds.errors import ConfigError
from fds.models.registry import write_atomic

__all__ = ["Checkpoint", "Checkpointer", "default_state_dir"]

# Bumped when the file layout changes; an older file is then ignored (with a log line), never
# misread.
FORMAT = 1
FILE_NAME = "engine.ckpt"


def default_state_dir(group: str, instance: str | None = None) -> Path:
    """``~/.cache/fds/state/<group>[/<instance>]`` (``$FDS_STATE_DIR`` replaces the root).

    >>> default_state_dir("fds", "i0").parts[-2:]
    ('fds', 'i0')
    """
    root = Path(os.environ.get("FDS_STATE_DIR") or Path.home() / ".cache" / "fds" / "state")
    path = root / group
    return path / instance if instance else path


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A loaded checkpoint: engine ``state`` as of input ``offsets`` (partition -> next)."""

    topic: str
    offsets: dict[int, int]
    state: dict[str, Any]
    written_at: float


class Checkpointer:
    """Reads and writes the checkpoint file of one ``fds run`` instance.

    Parameters
    ----------
    state_dir
        Directory of the instance's state (created when missing).
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state dir: {exc}; give a writable --state-dir",
                where=str(self.dir),
            ) from exc
        self.path = self.dir / FILE_NAME
        self.saves = 0

    def save(self, state: dict[str, Any], *, topic: str, offsets: dict[int, int]) -> None:
        """Write ``state`` as of ``offsets`` atomically (temp + fsync + rename + dir fsync)."""
        payload = {
            "format": FORMAT,
            "topic": topic,
            "offsets": dict(offsets),
            "state": state,
            "written_at": time.time(),
        }
        write_atomic(self.path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        self.saves += 1

    def load(self) -> Checkpoint | None:
        """The checkpoint, or ``None`` when there is none.

        Raises :class:`fds.errors.ConfigError` for an unreadable or foreign file.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            payload = pickle.loads(raw)
        except Exception as exc:
            raise ConfigError(
                f"checkpoint is unreadable ({type(exc).__name__}: {exc}); delete it to start "
                "from an empty state (decisions of the next events then lack their history)",
                where=str(self.path),
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ConfigError(
                "checkpoint has an unknown format; delete it to start from an empty state",
                where=str(self.path),
            )
        return Checkpoint(
            topic=payload["topic"],
            offsets={int(p): int(o) for p, o in payload["offsets"].items()},
            state=payload["state"],
            written_at=float(payload["written_at"]),
        )
