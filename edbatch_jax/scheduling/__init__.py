"""Schedules and the policies that produce them."""

from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.policies import (
    AgendaPolicy,
    DepthPolicy,
    FrontierPolicy,
    Policy,
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
    "register_policy",
    "schedule",
    "TypewiseFrontier",
    "TypewisePolicy",
    "nearest_same_type_edges",
    "validate_schedule",
]
