"""Checkpoint files of `fds run` (fds.streams.checkpoint): atomic writes, and background writes
from a forked child that capture the state of the instant they were started."""

from __future__ import annotations

import os
import time

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
    with pytest.raises(ProcessLookupError):  # the stale writer is gone (killed and reaped) ...
        os.kill(child, 0)
    time.sleep(1.5)  # ... so nothing lands over the new checkpoint when it would have finished
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
