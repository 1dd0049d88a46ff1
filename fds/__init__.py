"""fds: a real-time fraud-detection streaming engine.

The public API; everything else is internal. The names below are imported when first used
(PEP 562), so ``import fds`` (and the ``fds`` command before it parses its arguments) stays
fast: the engine pulls in River and NumPy, seconds on a loaded machine, and a service must be
able to handle a SIGTERM in that time.

>>> import fds
>>> fds.Engine.__module__
'fds.engine'
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from fds._lazy import lazy as _lazy
from fds.errors import (
    ArtifactError,
    ConfigError,
    FdsError,
    RuleError,
    StageError,
    ValidationError,
)

if _TYPE_CHECKING:
    from fds.engine import Engine
    from fds.pipeline import build_engine
    from fds.replay import ReplayInput, ReplaySummary
    from fds.replay import load as load_replay
    from fds.replay import run as run_replay
    from fds.schema import Decision, Label, Transaction, parse_label, parse_transaction
    from fds.streams.files import ColumnMapping, load_mapping

# public name -> (module, name there)
_LAZY = {
    "Engine": ("fds.engine", "Engine"),
    "build_engine": ("fds.pipeline", "build_engine"),
    "ReplayInput": ("fds.replay", "ReplayInput"),
    "ReplaySummary": ("fds.replay", "ReplaySummary"),
    "load_replay": ("fds.replay", "load"),
    "run_replay": ("fds.replay", "run"),
    "Decision": ("fds.schema", "Decision"),
    "Label": ("fds.schema", "Label"),
    "Transaction": ("fds.schema", "Transaction"),
    "parse_label": ("fds.schema", "parse_label"),
    "parse_transaction": ("fds.schema", "parse_transaction"),
    "ColumnMapping": ("fds.streams.files", "ColumnMapping"),
    "load_mapping": ("fds.streams.files", "load_mapping"),
}


__getattr__ = _lazy("fds", _LAZY, globals())

__all__ = [
    "ArtifactError",
    "ColumnMapping",
    "ConfigError",
    "Decision",
    "Engine",
    "FdsError",
    "Label",
    "ReplayInput",
    "ReplaySummary",
    "RuleError",
    "StageError",
    "Transaction",
    "ValidationError",
    "build_engine",
    "load_mapping",
    "load_replay",
    "parse_label",
    "parse_transaction",
    "run_replay",
]
__version__ = "0.1.0"
