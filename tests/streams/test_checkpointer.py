"""Checkpoint files of `fds run` (fds.streams.checkpoint): atomic writes, and background writes
from a forked child that capture the state of the instant they were started."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import pytest

from fds.streams.checkpoint import Checkpointer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="background writes need fork")


def test_a_background_write_holds_the_state_of_the_instant_it_started(tmp_path):
    ck = Checkpointer(tmp_path)
    state = {"windows": list(range(100_000))}
    assert ck.save_background(lambda: state, topic="tx", offsets={0: 5})
    state["windows"].clear()  # the loop goes on changing its state meanwhile
    assert ck.wait(timeout_s=30)
    got = ck.load()
    assert got is not None and got.offsets == {0: 5}
    assert got.state["windows"] == list(range(100_000))
    assert (ck.saves, ck.failures) == (1, 0)


def test_one_background_write_at_a_time(tmp_path):
    ck = Checkpointer(tmp_path)

    def slow() -> dict:
        time.sleep(1.0)  # in the child
        return {"n": 1}

    assert ck.save_background(slow, topic="tx", offsets={0: 1})
    assert ck.busy()
    assert not ck.save_background(lambda: {"n": 2}, topic="tx", offsets={0: 2})
    assert ck.wait(timeout_s=30)
    got = ck.load()
    assert got is not None and got.state == {"n": 1}


def test_a_failed_background_write_keeps_the_previous_checkpoint(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save({"n": 1}, topic="tx", offsets={0: 1})

    def broken() -> dict:
        raise OSError("disk full")

    assert ck.save_background(broken, topic="tx", offsets={0: 2})
    assert ck.wait(timeout_s=30)
    assert ck.failures == 1 and ck.saves == 1
    got = ck.load()
    assert got is not None and got.state == {"n": 1} and got.offsets == {0: 1}


def test_a_failed_background_write_says_why_and_the_next_that_lands_says_so(
    tmp_path, caplog, monkeypatch
):
    """A QA pass: a background write that failed on a full disk logged only its exit code,
    and the alert on failed checkpoints points at the log. Its error reaches the parent's log
    line; the first write that lands after failures says so too."""
    import errno
    import logging

    ck = Checkpointer(tmp_path)

    def full(_: int) -> None:  # the child's fsync (a fork: the child has the same os module)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m, caplog.at_level(logging.INFO, "fds.streams.checkpoint"):
        m.setattr(os, "fsync", full)
        for n in (1, 2):
            assert ck.save_background(dict, topic="tx", offsets={0: n})
            assert ck.wait(timeout_s=30)
        assert (ck.saves, ck.failures, ck.failing) == (0, 2, 2)
        said = "background checkpoint failed; the previous checkpoint stays " \
            f'path="{ck.path}" exit="1" ' \
            f"error=\"OSError: [Errno 28] No space left on device: '{ck.path}'\"; " \
            "decisions go on, and a restart folds more again: free space in the state dir or " \
            "make it writable"  # fmt: skip
        assert caplog.text.count(said) == 2, caplog.text
        assert "written again" not in caplog.text
        m.undo()
        assert ck.save_background(lambda: {"n": 3}, topic="tx", offsets={0: 3})
        assert ck.wait(timeout_s=30)
    assert (ck.saves, ck.failures, ck.failing) == (1, 2, 0)
    assert f'checkpoints are written again path="{ck.path}" after 2 failed' in caplog.text


def test_a_foreground_save_supersedes_a_running_background_write(tmp_path):
    ck = Checkpointer(tmp_path)

    def slow() -> dict:
        time.sleep(1.0)
        return {"n": "old"}

    assert ck.save_background(slow, topic="tx", offsets={0: 1})
    child = ck._child
    assert child is not None
    ck.save({"n": "new"}, topic="tx", offsets={0: 9})  # e.g. on revocation or at a stop
    assert not ck.busy()
    with pytest.raises(ProcessLookupError):  # the stale writer is gone (killed and reaped):
        os.kill(child, 0)  # nothing can land over the new checkpoint any more
    got = ck.load()
    assert got is not None and got.state == {"n": "new"} and got.offsets == {0: 9}
    assert [p.name for p in tmp_path.iterdir()] == ["engine.ckpt"]  # no temporary file left


def test_the_background_writer_runs_at_the_lowest_cpu_priority(tmp_path):
    """It must yield the cores to the decision loop (checkpoints showed in the latency tail)."""
    ck = Checkpointer(tmp_path)
    mine = os.nice(0)
    assert ck.save_background(lambda: {"nice": os.nice(0)}, topic="t", offsets={0: 1})
    assert ck.wait(30)
    assert ck.load().state == {"nice": 19} and os.nice(0) == mine  # this process is unchanged


def test_a_background_writer_dies_with_its_instance(tmp_path):
    """Found by a review: the writer of a killed instance (kill -9, the OOM killer) lived on,
    holding a copy as large as the instance, and renamed its older state over the checkpoint
    the restarted instance had written since."""
    import subprocess
    import sys
    from pathlib import Path

    from fds.streams.checkpoint import Checkpointer

    repo = Path(__file__).resolve().parents[2]
    pid_file = tmp_path / "writer.pid"
    script = f"""
import os, signal, sys, time
sys.path.insert(0, {str(repo)!r})
from fds.streams.checkpoint import Checkpointer
ck = Checkpointer({str(tmp_path)!r})
def slow_state():  # a large state pickled at nice 19 on a busy machine
    time.sleep(1.5)
    return {{"features": "OLD"}}
ck.save_background(slow_state, topic="tx", offsets={{0: 50}})
with open({str(pid_file)!r}, "w") as f:  # (not a pipe: run() would wait for the writer)
    f.write(str(ck._child))  # the writer's pid, for the test to wait on
os.kill(os.getpid(), signal.SIGKILL)
"""
    old = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert old.returncode == -9
    writer = int(pid_file.read_text())
    ck = Checkpointer(tmp_path)  # the restarted instance, caught up
    ck.save({"features": "NEW"}, topic="tx", offsets={0: 100})
    deadline = time.monotonic() + 60
    while not _gone(writer):  # at once, or (the bug) after its 1.5 s of pickling and a write
        assert time.monotonic() < deadline, f"the old writer {writer} still runs after 60 s"
        time.sleep(0.05)  # polling interval for another process's exit
    got = ck.load()
    assert got is not None and got.offsets == {0: 100} and got.state == {"features": "NEW"}


def _gone(pid: int) -> bool:
    """Has process ``pid`` ended? (An orphan's zombie counts as ended: who reaps it, and when,
    is up to init.)"""
    if not os.path.isdir("/proc/self"):  # no procfs: a zombie counts as running (wait longer)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_one_fds_run_holds_a_state_dir(tmp_path):
    """Found by a QA pass: two instances of a group without instance ids shared the default
    state dir, wrote over each other's checkpoint and restored each other's state."""
    from fds.errors import ConfigError

    first, second = Checkpointer(tmp_path), Checkpointer(tmp_path)
    first.lock()
    with pytest.raises(ConfigError, match=rf"in use by fds run, pid {os.getpid()} on "):
        second.lock()
    first.unlock()
    second.lock()  # free again once the first stopped
    second.unlock()
    (tmp_path / "lock").unlink()
    (tmp_path / "lock").mkdir()  # a lock file that cannot be opened: said, no traceback
    with pytest.raises(ConfigError, match="cannot lock the state dir: Is a directory"):
        first.lock()


def test_on_disk_says_what_the_file_covers_after_each_save_and_load(tmp_path):
    from fds.errors import ConfigError
    from fds.streams.checkpoint import FileOffsets

    ck = Checkpointer(tmp_path)
    assert ck.on_disk is None and ck.load() is None and ck.on_disk is None
    offsets = {0: 5, 1: 3}
    ck.save({"n": 1}, topic="tx", offsets=offsets)
    offsets[0] = 99  # (the caller's dict goes on changing)
    assert ck.on_disk == FileOffsets("tx", {0: 5, 1: 3})
    again = Checkpointer(tmp_path)  # a restarted instance
    assert again.on_disk is None
    again.load()
    assert again.on_disk == FileOffsets("tx", {0: 5, 1: 3})
    again.path.write_bytes(b"torn")
    with pytest.raises(ConfigError):
        again.load()
    assert again.on_disk is None


def test_on_disk_changes_once_a_background_write_has_landed(tmp_path):
    from fds.streams.checkpoint import FileOffsets

    ck = Checkpointer(tmp_path)
    ck.save({"n": 1}, topic="tx", offsets={0: 1})

    def slow() -> dict:
        time.sleep(0.5)  # in the child
        return {"n": 2}

    assert ck.save_background(slow, topic="tx", offsets={0: 2})
    assert ck.busy() and ck.on_disk == FileOffsets("tx", {0: 1})  # the file is still the old one
    assert ck.wait(timeout_s=30)
    assert ck.on_disk == FileOffsets("tx", {0: 2}) == tuple(_covers(ck))

    def broken() -> dict:
        raise OSError("disk full")

    assert ck.save_background(broken, topic="tx", offsets={0: 3})
    assert ck.wait(timeout_s=30) and ck.failures == 1
    assert ck.on_disk == FileOffsets("tx", {0: 2}) == tuple(_covers(ck))
    # superseded by a foreground save: the foreground's
    assert ck.save_background(slow, topic="tx", offsets={0: 4})
    ck.save({"n": 5}, topic="tx", offsets={0: 5})
    assert ck.on_disk == FileOffsets("tx", {0: 5}) == tuple(_covers(ck))


def test_a_background_write_cancelled_after_its_rename_counts_as_on_disk(tmp_path):
    """Not the writer's exit code: killed by cancel() just after its rename (or failing in its
    directory fsync after it), it had replaced the file all the same."""
    from fds.streams.checkpoint import FileOffsets

    ck = Checkpointer(tmp_path)
    ck.save({"n": 1}, topic="tx", offsets={0: 1})
    before = ck.path.stat().st_ino
    assert ck.save_background(lambda: {"n": 2}, topic="tx", offsets={0: 2})
    deadline = time.monotonic() + 30
    while ck.path.stat().st_ino == before:  # the child renamed its file (not reaped yet)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ck.cancel()
    assert ck.on_disk == FileOffsets("tx", {0: 2}) == tuple(_covers(ck))


def _covers(ck: Checkpointer) -> Any:
    """What the checkpoint file on disk covers, read from it."""
    from fds.streams.checkpoint import FileOffsets

    got = Checkpointer(ck.dir).load()
    assert got is not None
    return FileOffsets(got.topic, got.offsets)


def test_parse_checkpoint_reads_bytes_without_writing_them(tmp_path):
    import pickle

    from fds.errors import ConfigError
    from fds.streams.checkpoint import parse_checkpoint

    ck = Checkpointer(tmp_path / "theirs")
    ck.save({"n": 1}, topic="tx", offsets={0: 4, 2: 9})
    got = parse_checkpoint(ck.path.read_bytes(), where="state topic g/i1")
    assert (got.topic, got.offsets, got.state) == ("tx", {0: 4, 2: 9}, {"n": 1})
    assert got == ck.load()
    with pytest.raises(ConfigError, match=r"^state topic g/i1: checkpoint is unreadable"):
        parse_checkpoint(ck.path.read_bytes()[:-20], where="state topic g/i1")
    # a SHA-256 after the pickle: a byte a failing disk changed is found (a QA pass) ...
    raw = bytearray(ck.path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    with pytest.raises(ConfigError, match="do not match the checksum written with them"):
        parse_checkpoint(bytes(raw), where="here")
    # ... and an earlier release, which unpickles the file as it is, reads it (what follows a
    # pickle is ignored)
    assert pickle.loads(ck.path.read_bytes())["offsets"] == {0: 4, 2: 9}
    foreign = pickle.dumps({"format": 0, "state": {}})
    with pytest.raises(ConfigError, match=r"^there: checkpoint has an unknown format"):
        parse_checkpoint(foreign, where="there")
    assert [p.name for p in tmp_path.iterdir()] == ["theirs"]


def test_a_state_dir_deleted_while_held_is_made_again_with_its_lock(tmp_path, caplog):
    """A QA pass: ``rm -rf`` of the state dir while fds run decided failed every later
    checkpoint until a restart, and took the lock file with it: a second instance given the
    dir was let in. The next write makes the dir again and takes the lock again."""
    import logging
    import shutil

    from fds.errors import ConfigError

    ck = Checkpointer(tmp_path / "state")
    ck.lock()
    ck.save({"n": 1}, topic="tx", offsets={0: 1})
    shutil.rmtree(ck.dir)
    with caplog.at_level(logging.WARNING, "fds.streams.checkpoint"):
        ck.save({"n": 2}, topic="tx", offsets={0: 2})
        assert f'state dir="{ck.dir}" was deleted; recreated' in caplog.text
        shutil.rmtree(ck.dir)
        assert ck.save_background(lambda: {"n": 3}, topic="tx", offsets={0: 3})
        assert ck.wait(timeout_s=30) and ck.failures == 0
    assert Checkpointer(ck.dir).load().state == {"n": 3}  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="in use by fds run, pid "):
        Checkpointer(ck.dir).lock()  # held again
    (ck.dir / "lock").unlink()  # the lock file alone
    ck.save({"n": 4}, topic="tx", offsets={0: 4})
    assert f'state dir="{ck.dir}": its lock file was deleted; taken again' in caplog.text
    with pytest.raises(ConfigError, match="in use by fds run, pid "):
        Checkpointer(ck.dir).lock()
    ck.unlock()


def test_a_state_dir_taken_by_another_instance_after_it_was_deleted_is_not_written(tmp_path):
    """Deleted, then given to a second instance (which made it again and holds it): this one
    refuses to write its checkpoint there, saying so, and leaves the other's file alone."""
    import shutil

    from fds.streams.checkpoint import StateDirTaken

    ck = Checkpointer(tmp_path / "state")
    ck.lock()
    shutil.rmtree(ck.dir)
    other = Checkpointer(ck.dir)
    other.lock()
    other.save({"theirs": True}, topic="tx", offsets={0: 9})
    for write in (ck.save, ck.save_background):
        with pytest.raises(StateDirTaken) as refused:
            write({"mine": True}, topic="tx", offsets={0: 1})  # type: ignore[operator]
        said = str(refused.value)
        assert said.startswith(f"{ck.dir}: the state dir was deleted, or its lock file"), said
        assert "in use by fds run, pid" in said and "no checkpoint is written" in said
    assert Checkpointer(ck.dir).load().state == {"theirs": True}  # type: ignore[union-attr]
    other.unlock()
    ck.unlock()


def test_a_lock_whose_holder_note_the_disk_refuses_still_holds(tmp_path, monkeypatch):
    """A QA pass: on a full disk, writing who holds the state dir's lock raised a pathless
    OSError and fds run did not start; the lock holds without its note. Another: the note
    refused stayed in the file's buffer, and its flush at the close (fds run's clean stop)
    raised: exit 1, "free space on the output's disk"."""
    import errno

    import fds.streams.checkpoint as checkpoint
    from fds.errors import ConfigError

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    class Full(io.FileIO):  # (the disk: every write refused, buffered ones at their flush)
        write = full

    monkeypatch.setattr(
        checkpoint.os, "fdopen",
        lambda fd, mode: io.TextIOWrapper(io.BufferedRandom(Full(fd, "r+"))),
    )  # fmt: skip
    monkeypatch.setattr(checkpoint.os, "pwrite", full)
    args = ("the state dir", "fds run", "stop it", "--state-dir")
    f = checkpoint.hold(tmp_path / ".lock", *args)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="the state dir is in use by another process;"):
        checkpoint.hold(tmp_path / ".lock", *args)  # (held: flock, whatever the note)
    f.close()  # (nothing left to flush)


def test_a_checkpoint_others_could_have_written_is_not_unpickled(tmp_path, caplog):
    """A security review: a state dir in a shared folder (mode 0777) was used without a word,
    and a checkpoint planted there ran its code when `fds run` loaded it."""
    import pickle

    from fds.errors import ConfigError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    ck = Checkpointer(shared)
    assert "is writable by every user (mode 0777)" in caplog.text
    ran = tmp_path / "ran"

    class Planted:
        def __reduce__(self) -> Any:
            return (open, (str(ran), "w"))

    ck.path.write_bytes(pickle.dumps(Planted()))
    ck.path.chmod(0o666)
    with pytest.raises(ConfigError) as e:
        ck.load()
    assert e.value.where == str(ck.path) and "writable by every user (mode 0666)" in str(e.value)
    if os.geteuid() == 0:  # (only root can give a file to another user)
        ck.path.chmod(0o600)
        os.chown(ck.path, 4242, -1)
        with pytest.raises(ConfigError, match="owned by user 4242, not by this process's"):
            ck.load()
    ck.path.unlink()
    ck.path.symlink_to(tmp_path / "elsewhere")  # (a link is not followed)
    (tmp_path / "elsewhere").write_bytes(pickle.dumps(Planted()))
    with pytest.raises(OSError):
        ck.load()
    assert not ran.exists()
    ck.path.unlink()
    ck.save({"n": 1}, topic="tx", offsets={0: 1})  # what fds writes loads as before
    assert ck.load() is not None
    ck.path.chmod(0o660)  # (Kubernetes' fsGroup at each mount: the pod's own file, a review)
    assert ck.load() is not None


def test_partial_files_of_writers_that_died_are_removed(tmp_path):
    """A QA pass: a writer killed mid-write (the instance's kill -9 or OOM takes it along) left
    its partial `.engine.ckpt.XXXX` in the state dir for good, one per crash, up to a
    snapshot's size each. The lock's new holder removes them, and so does each reaped writer."""
    from fds.streams.checkpoint import FILE_NAME

    left = tmp_path / f".{FILE_NAME}.k1ll3d"  # (what a killed writer leaves)
    left.write_bytes(b"x" * 1000)
    ck = Checkpointer(tmp_path)
    assert left.exists()  # (not before the dir is held: its writer may be alive)
    ck.lock()
    try:
        assert not left.exists()
        ck.save({"n": 1}, topic="tx", offsets={0: 1})
        left.write_bytes(b"x")

        def broken() -> dict:
            raise OSError("killed")

        assert ck.save_background(broken, topic="tx", offsets={0: 2})
        assert ck.wait(timeout_s=30) and ck.failures == 1
        assert not left.exists() and ck.load() is not None
    finally:
        ck.unlock()
