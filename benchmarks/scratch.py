"""Scratch folders for the benchmarks, removed when the benchmark exits.

A benchmark's state dirs, registries and broker data are hundreds of MB over a few runs; left in
/tmp they fill a shared machine. Set ``FDS_KEEP_SCRATCH=1`` to keep them for a look.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def remove_at_exit(path: Path) -> Path:
    """``path``, removed (with what is in it) when the process exits normally."""
    if not os.environ.get("FDS_KEEP_SCRATCH"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder named ``prefix...``, removed at exit."""
    return remove_at_exit(Path(tempfile.mkdtemp(prefix=prefix)))
