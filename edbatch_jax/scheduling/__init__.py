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
    "validate_schedule",
]
