"""fds: a real-time fraud-detection streaming engine.

The public API; everything else is internal. Heavy parts (River models, Kafka) are imported by
the modules that need them, so ``import fds`` stays fast.
"""

from fds.engine import Engine
from fds.errors import ArtifactError, ConfigError, FdsError, StageError, ValidationError
from fds.pipeline import build_engine
from fds.replay import ReplayInput, ReplaySummary
from fds.replay import load as load_replay
from fds.replay import run as run_replay
from fds.schema import Decision, Label, Transaction, parse_label, parse_transaction
from fds.streams.files import ColumnMapping, load_mapping

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
