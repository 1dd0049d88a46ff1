"""The adaptive model: specs, serving (champion/challengers, hot-swap), trainer, registry.

>>> from fds.models import ModelServer, load_spec
>>> server = ModelServer(load_spec("default"))  # a ModelStage for fds.engine.Engine
"""

from fds.models.champion import BudgetRank, Contest
from fds.models.registry import Registry, load_verified
from fds.models.scorer import ModelServer, build_model_stage, canary
from fds.models.spec import ModelSpec, build_pipeline, load_spec, parse_spec
from fds.models.trainer import MemoryStore, Publication, SqliteStore, Trainer
from fds.models.vector import to_vector

__all__ = [
    "BudgetRank",
    "Contest",
    "MemoryStore",
    "ModelServer",
    "ModelSpec",
    "Publication",
    "Registry",
    "SqliteStore",
    "Trainer",
    "build_model_stage",
    "build_pipeline",
    "canary",
    "load_spec",
    "load_verified",
    "parse_spec",
    "to_vector",
]
