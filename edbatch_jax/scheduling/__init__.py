"""Layer 2, scheduling: schedules (ordered batches of same-type nodes) and the policies that produce them.

:func:`schedule` with a policy name or object; the heuristics (``depth``,
``agenda`` as DyNet, ``typewise``), the ready-set :class:`Frontier` every
dynamic policy steps through, and the schedule's validation. Imports only the
graph layer.
"""

from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.policies import (
    AgendaPolicy,
    DepthPolicy,
    FrontierPolicy,
    Policy,
    policy_names,
    register_policy,
    schedule,
)
from edbatch_jax.scheduling.schedule import Schedule, ScheduleError, validate_schedule
from edbatch_jax.scheduling.typewise import TypewiseFrontier, TypewisePolicy, nearest_same_type_edges

__all__ = [
    "AgendaPolicy",
    "DepthPolicy",
    "Frontier",
    "FrontierPolicy",
    "Policy",
    "Schedule",
    "ScheduleError",
    "TypewiseFrontier",
    "TypewisePolicy",
    "nearest_same_type_edges",
    "policy_names",
    "register_policy",
    "schedule",
    "validate_schedule",
]
