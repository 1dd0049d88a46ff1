"""Windowed behaviour features: exact event-time windows per entity, label-aware, checkpointable.

>>> from types import SimpleNamespace as S
>>> plan = FeaturePlan([S(name="n_10m", entity="card_id", agg="count", field=None, window="10m")])
>>> plan.compute({"tx_id": "t1", "ts": 0.0, "card_id": "c1", "amount": 5.0})
{'n_10m': 1}
"""

from fds.features.calendar import DayClock
from fds.features.kernel import Compiler
from fds.features.plan import FeaturePlan
from fds.features.spec import AGGS, CALENDAR_DAY, FIELD_AGGS, Layout, compile_specs

__all__ = [
    "AGGS",
    "CALENDAR_DAY",
    "FIELD_AGGS",
    "Compiler",
    "DayClock",
    "FeaturePlan",
    "Layout",
    "compile_specs",
]
