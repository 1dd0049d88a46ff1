"""Signals as the kernel may deliver them: to any thread of the process."""

from __future__ import annotations

import ctypes
import os


def signal_a_thread_but_main(pid: int, sig: int) -> None:
    """Send ``sig`` to a thread of process ``pid`` other than its main thread (``tgkill``): the
    kernel may hand a process's signal to any thread, and CPython runs the handler only when
    the main thread wakes."""
    libc = ctypes.CDLL(None, use_errno=True)
    tid = min(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    if libc.tgkill(pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill {pid} {tid}")
