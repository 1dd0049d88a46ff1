"""Checkpoints of engine state with the input offsets they correspond to.

A checkpoint is one file, ``<state dir>/engine.ckpt``: a pickle of ``{"format", "topic",
"offsets", "state", "written_at", "group"}`` where ``state`` is
:meth:`fds.engine.Engine.state_dict`, ``offsets`` maps each input partition to the offset of the
next record *not* folded into ``state``, and ``group`` is the consumer group whose committed
offsets those are (files of earlier releases have none: :attr:`Checkpoint.group` ``None``).
It is written atomically (temporary file in the same directory, fsync, rename, fsync of the
directory): a crash leaves the previous checkpoint or the new one, never a torn file. The pickle
is followed by :data:`~fds.models.registry.SUM_MARK` and the hex SHA-256 of the pickle's bytes,
checked when it is read: bytes a failing disk changed are a checkpoint that cannot be used, not
a state restored wrong (8 bytes flipped at random positions: 14 of 30 files failed to unpickle,
fds run crashed at every start, and 16 loaded without a word; a QA pass). ``pickle.loads``
ignores what follows the pickle, so an earlier release reads these files, and a file without the
sum (an earlier release's) is read as it is.

The caller writes it only after the offsets it carries are committed (see
:mod:`fds.streams.kafka`), so a checkpoint never runs ahead of the committed input.

:meth:`Checkpointer.save_background` writes it from a forked child instead (Redis's BGSAVE):
the child holds a copy-on-write image of the process at the instant of the fork, so the caller
pauses for the fork (the page tables: 9 ms at 360 MB resident, 21 ms at 960 MB) instead of
pickling the whole state on its decision loop (seconds at a million cards). The cost is memory:
pages the parent changes while the child writes are copied, and the child's own reference
counting touches every object it pickles, so the process may need up to twice its resident
memory for the duration of a write.

:attr:`Checkpointer.on_disk` says which input topic and offsets the file on disk covers, so that
its bytes can be published (:mod:`fds.streams.state_topic`) with them, unpickled by nobody.
:func:`parse_checkpoint` reads a checkpoint from bytes (the file's, or a snapshot fetched from
the state topic) without writing it anywhere.

>>> import tempfile
>>> ck = Checkpointer(tempfile.mkdtemp())
>>> ck.load() is None
True
>>> ck.save({"features": None}, topic="tx", offsets={0: 12, 3: 7}, group="fds")
>>> got = ck.load()
>>> got.offsets, got.topic, got.state, got.group
({0: 12, 3: 7}, 'tx', {'features': None}, 'fds')
>>> ck.on_disk
FileOffsets(topic='tx', offsets={0: 12, 3: 7}, left=None)
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from fds import gcpolicy
from fds.errors import ConfigError, describe
from fds.models.registry import (
    owner_only,
    read_own,
    sum_matches,
    untrusted,
    write_summed,
)

__all__ = [
    "Checkpoint", "Checkpointer", "FileOffsets", "StateDirTaken", "default_state_dir",
    "escape_id", "parse_checkpoint",
]  # fmt: skip

log = logging.getLogger(__name__)

# Bumped when the file layout changes; an older file is then ignored (with a log line), never
# misread.
FORMAT = 1
FILE_NAME = "engine.ckpt"
#: Held by the ``fds run`` that owns the state dir (:meth:`Checkpointer.lock`).
LOCK_NAME = "lock"
MAX_FD = 1 << 16  # descriptors a background writer closes (os.closerange: close_range(2))
# Bytes of a background writer's failure reported to its parent: one log line's worth, and
# below PIPE_BUF (4096), so that the child's one write to the pipe never blocks.
REASON_MAX = 512
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


def default_state_dir(group: str, instance: str | None = None) -> Path:
    """``~/.cache/fds/state/<group>[/<instance>]`` (``$FDS_STATE_ROOT`` replaces the root;
    ``$FDS_STATE_DIR``, like ``--state-dir``, is one instance's whole state dir).

    Each name is one directory, whatever its characters (Kafka takes any group id): ``/``,
    ``%`` and NUL are percent-encoded, ``.`` and ``..`` too (group ``../../etc`` left the root,
    ``a/b`` shared ``a``'s instance ``b``: a QA pass).

    >>> default_state_dir("fds", "i0").parts[-2:]
    ('fds', 'i0')
    >>> default_state_dir("../x", "a/b").parts[-2:]
    ('..%2Fx', 'a%2Fb')
    """
    root = Path(os.environ.get("FDS_STATE_ROOT") or Path.home() / ".cache" / "fds" / "state")
    path = root / _dir_name(group)
    return path / _dir_name(instance) if instance else path


def _dir_name(name: str) -> str:
    """``name`` as one directory name, one to one."""
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return escape_id(name)


def escape_id(name: str) -> str:
    """A group or instance id with ``%``, ``/`` and NUL percent-encoded: one to one, and with
    no ``/`` (one directory of a state dir; one part of a state topic key).

    >>> escape_id("eu/1%")
    'eu%2F1%25'
    """
    return name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")


class StateDirTaken(ConfigError):
    """The state dir was deleted while this process held it, and another one holds it now:
    this one writes no checkpoint there while it does."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A loaded checkpoint: engine ``state`` as of input ``offsets`` (partition -> next) of
    consumer ``group`` (``None``: written by a release that did not record it)."""

    topic: str
    offsets: dict[int, int]
    state: dict[str, Any]
    written_at: float
    group: str | None = None


#: Said when a state dir is taken: a file every process of a deployment reads names one dir.
SHARED_FILE = (
    " (a state_dir: in a --config file that several processes read is one dir for them all: "
    "leave it out, the default follows the group and instance)"
)


def hold(path: Path, what: str, who: str, advice: str, flag: str) -> IO[str]:
    """Lock file ``path`` of ``what`` (``the state dir``) for this process, held while the
    returned file is open (and at most until its exit); a :class:`ConfigError` says another
    ``who`` holds it (its pid and host) and ``advice``, or that it cannot be made (``flag``)."""
    where = str(path.parent)
    try:
        # (owner-only, as every state file: it was 0644, a QA pass; held open: the lock)
        f = os.fdopen(owner_only(path), "a+")
    except OSError as exc:  # (a traceback: a review)
        raise ConfigError(
            f"cannot lock {what}: {exc.strerror or exc}; give a writable {flag}", where=where
        ) from exc
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        # the holder's own note, "fds run, pid 7 on vm" (it named the refused process's kind:
        # "another fds train" for an fds run, a QA pass); a release before wrote "pid 7 on vm"
        holder = f.read().strip()
        f.close()
        if not holder.startswith("fds "):
            holder = f"another process ({holder})" if holder else "another process"
        raise ConfigError(f"{what} is in use by {holder}; {advice}", where=where) from None
    # Who holds it, for another's refusal; the lock holds without it (a full disk refused the
    # note, and fds run its start, with a pathless OSError: a QA pass). Written unbuffered: a
    # note the disk refused stayed in the buffer, and its flush at the close failed fds run's
    # clean stop (exit 1, "free space on the output's disk": a QA pass).
    with contextlib.suppress(OSError):
        os.ftruncate(f.fileno(), 0)
        os.pwrite(f.fileno(), f"{who}, pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return f


class FileOffsets(NamedTuple):
    """What a checkpoint file covers: input ``topic``, ``offsets`` (partition -> next offset
    not folded), and ``left`` (partition -> offset: partitions the state followed no more at
    that offset, whose events up to it it may still hold), when the saver said so."""

    topic: str
    offsets: dict[int, int]
    left: dict[int, int] | None = None


def parse_checkpoint(data: bytes, *, where: str) -> Checkpoint:
    """The checkpoint in ``data`` (a checkpoint file's bytes).

    Raises :class:`fds.errors.ConfigError` naming ``where`` (its file, or where it was
    fetched from) for unreadable or foreign bytes. It unpickles ``data``: give it only bytes
    from this instance's state dir or verified ones (:meth:`StateTopic.fetch_foreign
    <fds.streams.state_topic.StateTopic.fetch_foreign>`).

    >>> parse_checkpoint(b"torn", where="nowhere")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fds.errors.ConfigError: nowhere: checkpoint is unreadable: its bytes do not match the ...
    """
    if not sum_matches(data):  # (the pickle is read from the bytes as they are, the sum after
        raise ConfigError(  # it ignored)
            "checkpoint is unreadable: its bytes do not match the checksum written with "
            "them (a failing disk, or a file cut short); delete it to start from an empty "
            "state (decisions of the next events then lack their history)",
            where=where,
        )
    try:
        payload = gcpolicy.loads(data)
    except Exception as exc:
        raise ConfigError(
            f"checkpoint is unreadable ({describe(exc)}); delete it to start "
            "from an empty state (decisions of the next events then lack their history)",
            where=where,
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(
            "checkpoint has an unknown format; delete it to start from an empty state",
            where=where,
        )
    return Checkpoint(
        topic=payload["topic"],
        offsets={int(p): int(o) for p, o in payload["offsets"].items()},
        state=payload["state"],
        written_at=float(payload["written_at"]),
        group=payload.get("group"),
    )


def _die_with(parent: int) -> None:
    """In a forked child: be killed when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``), and
    leave at once if it already has (between the fork and this call)."""
    with contextlib.suppress(OSError, AttributeError):  # elsewhere: the checks alone
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


#: What a failed checkpoint's warning says to do (it said what failed only: a QA pass).
CHECKPOINT_FIX = (
    "decisions go on, and a restart folds more again: free space in the state dir or make it "
    'writable (fds_checkpoints_total{result="failed"} counts them)'
)


def _say_if_shared(path: Path) -> None:
    """Warn when another user owns the state dir or may write to it (a shared /tmp folder):
    a checkpoint they plant there is refused (:func:`read_own`), but they can delete or
    replace this instance's state (a security review)."""
    try:
        why = untrusted(path.stat())
    except OSError:
        return
    if why is not None:
        log.warning('state dir="%s" is %s: others can remove or replace its state; give fds a '
                    "dir of its own (chmod 700)", path, why)  # fmt: skip


class Checkpointer:
    """Reads and writes the checkpoint file of one ``fds run`` instance.

    Parameters
    ----------
    state_dir
        Directory of the instance's state (created when missing).

    Attributes
    ----------
    on_disk
        What the file on disk covers (:class:`FileOffsets`), ``None`` when not known (no
        file, an unreadable one, nothing saved or loaded yet): set by :meth:`save` and
        :meth:`load`, and for a background write once its child has ended (reaped by
        :meth:`busy`, :meth:`wait`, :meth:`cancel` or :meth:`save`) if its file replaced the
        previous one, whatever its exit code. Read it with the file's bytes while
        :meth:`busy` is False: a running child may have renamed its file already.
    """

    _lock: IO[str] | None = None  # the state dir's lock file, while held
    _holder = ("fds run", "")  # :meth:`lock`'s ``who`` and ``advice``, to take it again

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        # made here (:meth:`unmake`; not the folders above it: another fds run starting then
        # may be making its own in them, a review)
        self.made = not self.dir.exists()
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # (owner-only, a review)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state dir: {exc}; give a writable --state-dir",
                where=str(self.dir),
            ) from exc
        _say_if_shared(self.dir)
        self.path = self.dir / FILE_NAME
        self.saves = 0  # completed writes (a background one counts once its child succeeded)
        self.failures = 0  # writes that failed (see :meth:`failed`)
        self.failing = 0  # of those, since the last completed write
        self.on_disk: FileOffsets | None = None
        self._child: int | None = None  # pid of the background writer, while it runs
        self._reason: int | None = None  # read end of the pipe of its failure, while it runs
        # (what the child writes, the file's inode at the fork), while it runs
        self._pending: tuple[FileOffsets, int | None] | None = None

    def unmake(self, *also: str) -> None:
        """Remove the state dir if this made it and it holds no checkpoint: a start that
        failed after it (a bad rules file, a missing topic) left it behind. ``also``: the
        other files of this process in it (anything else there keeps the dir)."""
        if not self.made or self.path.exists():
            return
        self.unlock()
        for name in (LOCK_NAME, *also):
            with contextlib.suppress(OSError):
                (self.dir / name).unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def lock(
        self,
        who: str = "fds run",
        advice: str = "give each instance its own --group-instance-id (the default state dir "
        "follows it) or --state-dir" + SHARED_FILE,
    ) -> None:
        """Hold the state dir for this process until :meth:`unlock` (or its exit): two
        instances of a group given one dir (no ``--group-instance-id``, the default dir) wrote
        over each other's checkpoint and restored each other's state (a QA pass); ``who``
        holds it, ``advice`` says what to do when another one does."""
        self._lock = hold(self.dir / LOCK_NAME, "the state dir", who, advice, "--state-dir")
        self._holder = (who, advice)
        if self._child is None:  # (held: what writers left is of instances gone)
            self._sweep()

    def _keep_dir(self) -> None:
        """Before a write: make the state dir again if it was deleted, and take its lock again
        if the lock file went (with it or alone). ``rm -rf`` of the dir while ``fds run``
        decided failed every later checkpoint until a restart, and a second instance given the
        dir meanwhile was let in, both writing one checkpoint (a QA pass). Raises
        :class:`StateDirTaken` when another process holds the lock now; an ``OSError`` when
        the dir cannot be made."""
        if self._lock is not None:
            held = os.fstat(self._lock.fileno())
            try:
                now = os.stat(self.dir / LOCK_NAME)
            except FileNotFoundError:
                pass
            else:
                if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    return  # (one stat a checkpoint: the dir and its lock are as they were)
        elif self.dir.is_dir():
            return
        gone = not self.dir.is_dir()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if gone:
            log.warning('state dir="%s" was deleted; recreated', self.dir)
        if self._lock is None:
            return
        try:
            lock = hold(self.dir / LOCK_NAME, "the state dir", *self._holder, "--state-dir")
        except ConfigError as exc:
            why = str(exc).removeprefix(f"{exc.where}: ")
            raise StateDirTaken(
                "the state dir was deleted, or its lock file, while this process held it, and "
                f"it cannot be taken again ({why}); no checkpoint is written here meanwhile",
                where=str(self.dir),
            ) from None
        self._lock.close()  # (the deleted file's: nobody else can take that one)
        self._lock = lock
        if not gone:
            log.warning('state dir="%s": its lock file was deleted; taken again', self.dir)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # (the lock goes with the file's last descriptor)
            self._lock = None

    def save(
        self,
        state: dict[str, Any],
        *,
        topic: str,
        offsets: dict[int, int],
        left: dict[int, int] | None = None,
        group: str | None = None,
    ) -> None:
        """Write ``state`` as of ``offsets`` of consumer ``group`` atomically (temp + fsync +
        rename + dir fsync); ``left``: noted in :attr:`on_disk` (see :class:`FileOffsets`), not
        written.

        A background write still running is stopped first: it holds an older state. A state dir
        deleted meanwhile is made again first (see :meth:`_keep_dir`)."""
        self.cancel()
        self._keep_dir()
        self._write(state, topic, offsets, group)
        self.on_disk = FileOffsets(topic, dict(offsets), left)
        self._written()

    def save_background(
        self,
        state: Callable[[], dict[str, Any]],
        *,
        topic: str,
        offsets: dict[int, int],
        left: dict[int, int] | None = None,
        group: str | None = None,
    ) -> bool:
        """Write ``state()`` as of ``offsets`` from a forked child; return at once (``left``,
        ``group``: as for :meth:`save`).

        False (nothing started) while the previous background write is still running. Where
        ``os.fork`` does not exist this is :meth:`save`. The child closes the descriptors it
        inherited, runs only this write (no logging, no client code) and leaves with
        ``os._exit``; why it failed, if it did, reaches the parent through a pipe (its
        exit code alone said nothing: a QA pass). :attr:`on_disk` changes once the child has
        ended (:meth:`busy`, :meth:`wait`, :meth:`cancel`, :meth:`save`) and its file replaced
        the previous one.
        """
        if self.busy():
            return False
        self._keep_dir()
        if not hasattr(os, "fork"):
            self.save(state(), topic=topic, offsets=offsets, left=left, group=group)
            return True
        parent = os.getpid()
        pending = (FileOffsets(topic, dict(offsets), left), self._inode())
        reason, report = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(reason)
            os.close(report)
            raise
        if pid == 0:  # the child: a copy-on-write image of the parent at this instant
            code = 1
            try:
                # Never outlive the parent: a writer left by a killed instance (kill -9, the
                # OOM killer) held a copy as large as the instance and renamed its older
                # state over the checkpoint the restarted instance wrote since.
                _die_with(parent)
                # Not the parent's sockets (Kafka connections, the metrics port): a restarted
                # parent must be able to bind its port while this child still writes.
                os.closerange(3, report)
                os.closerange(report + 1, MAX_FD)
                # The lowest CPU priority: on a busy machine the write yields the cores to the
                # decision loop (and the broker) instead of competing with them.
                os.nice(19)
                self._write(state(), topic, offsets, group, alive=lambda: os.getppid() == parent)
                code = 0
            except BaseException as exc:  # reported to the parent: the exit code, and why
                with contextlib.suppress(BaseException):
                    os.write(report, describe(exc).encode(errors="replace")[:REASON_MAX])
            finally:
                os._exit(code)
        os.close(report)
        os.set_blocking(reason, False)
        self._child, self._pending, self._reason = pid, pending, reason
        return True

    def busy(self) -> bool:
        """Is a background write still running? (Reaps it when it has finished.)"""
        if self._child is None:
            return False
        try:
            pid, status = os.waitpid(self._child, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): its outcome is unknown
            self._reap()
            self.failed()
            return False
        if pid == 0:
            return True
        why = self._reap()
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            self._written()
        else:
            self.failed()
            log.warning(
                'background checkpoint failed; the previous checkpoint stays path="%s" '
                'exit="%d" error="%s"; %s',
                self.path, code, why or (f"killed by signal {-code}" if code < 0 else "unknown"),
                CHECKPOINT_FIX,
            )  # fmt: skip
        return False

    def failed(self) -> None:
        """Count a write that failed (:attr:`failures`; the caller logs why)."""
        self.failures += 1
        self.failing += 1

    def _written(self) -> None:
        """Count a completed write; the first after failures says so (the alert on failed
        checkpoints points at these lines)."""
        self.saves += 1
        if self.failing:
            log.info(
                'checkpoints are written again path="%s" after %d failed', self.path, self.failing
            )
            self.failing = 0

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a background write to finish (True when none is running any more)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.busy():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def cancel(self) -> None:
        """Stop a background write (its state is superseded) and remove its temporary file."""
        if self._child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._child, 0)
        self._reap()

    def _inode(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except FileNotFoundError:
            return None

    def _reap(self) -> str:
        """The background writer has ended: when the file is no longer the one it was at the
        fork, the writer's rename landed, and :attr:`on_disk` is what it wrote. Not its exit
        code: a writer killed by :meth:`cancel` just after its rename, or whose directory
        fsync failed after it, replaced the file all the same. (The writer's file is new, so
        its inode differs from the previous file's, which existed while it was made.)

        Returns why it failed, as it said (empty: it did not say)."""
        assert self._pending is not None and self._reason is not None
        covers, before = self._pending
        if self._inode() != before:
            self.on_disk = covers
        why = b""
        with contextlib.suppress(OSError):  # (nothing written: BlockingIOError)
            why = os.read(self._reason, REASON_MAX)
        os.close(self._reason)
        self._child = self._pending = self._reason = None
        self._sweep()
        return why.decode(errors="replace")

    def _sweep(self) -> None:
        """Remove the temporary files of writers that are no more: one killed mid-write (an
        instance's kill -9 or OOM takes its writer with it) left a partial checkpoint for good,
        one per crash, up to a snapshot's size each (a QA pass)."""
        for tmp in self.dir.glob(f".{FILE_NAME}.*"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _write(
        self,
        state: dict[str, Any],
        topic: str,
        offsets: dict[int, int],
        group: str | None,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        payload = {
            "format": FORMAT,
            "topic": topic,
            "offsets": dict(offsets),
            "state": state,
            "written_at": time.time(),
            # (a key more: a file of this release still reads in an earlier one, FORMAT kept)
            "group": group,
        }
        data = gcpolicy.dumps(payload)
        if not alive():  # (a background writer whose instance died while it pickled)
            raise ProcessLookupError("the instance is gone")
        write_summed(self.path, data)

    def load(self) -> Checkpoint | None:
        """The checkpoint, or ``None`` when there is none; notes in :attr:`on_disk` what it
        covers (``None`` when there is none or it cannot be read).

        Raises :class:`fds.errors.ConfigError` for an unreadable or foreign file.
        """
        self.on_disk = None
        try:
            raw = read_own(self.path)  # (a file someone else wrote: their code, unpickled)
        except FileNotFoundError:
            return None
        got = parse_checkpoint(raw, where=str(self.path))
        self.on_disk = FileOffsets(got.topic, dict(got.offsets))
        return got
