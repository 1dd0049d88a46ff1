"""The adaptive model: specs, serving (champion/challengers, hot-swap), trainer, registry.

>>> from fds.models import ModelServer, load_spec
>>> server = ModelServer(load_spec("default"))  # a ModelStage for fds.engine.Engine
"""

from typing import TYPE_CHECKING

from fds._lazy import lazy

if TYPE_CHECKING:
    from fds.models.champion import BudgetRank, Contest
    from fds.models.registry import Registry, load_verified
    from fds.models.scorer import ModelServer, build_model_stage, canary
    from fds.models.spec import ModelSpec, build_pipeline, load_spec, parse_spec
    from fds.models.trainer import MemoryStore, Publication, SqliteStore, Trainer
    from fds.models.vector import to_vector

# Imported when first used (fds._lazy): fds.models.registry, which the Kafka kit and the state
# checkpoints use, must not pull in River through this package.
_NAMES = {
    name: (f"fds.models.{module}", name)
    for module, names in {
        "champion": ("BudgetRank", "Contest"),
        "registry": ("Registry", "load_verified"),
        "scorer": ("ModelServer", "build_model_stage", "canary"),
        "spec": ("ModelSpec", "build_pipeline", "load_spec", "parse_spec"),
        "trainer": ("MemoryStore", "Publication", "SqliteStore", "Trainer"),
        "vector": ("to_vector",),
    }.items()
    for name in names
}
__getattr__ = lazy("fds.models", _NAMES, globals())

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
