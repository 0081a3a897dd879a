"""The library's exception base class, usable by every layer.

Every error the library raises for a caller's mistake is an
:class:`EdbatchError` (and a ``ValueError``, as before), of one class per
boundary: :class:`~edbatch_jax.graph.GraphError` (graphs),
:class:`~edbatch_jax.scheduling.ScheduleError` (schedules, and layouts used
with another graph), :class:`~edbatch_jax.engine.OpError` (ops and what they
return), :class:`~edbatch_jax.fsm.PolicyFileError` (policy files) and
:class:`~edbatch_jax.layout.PQTreeError`. Catch :class:`EdbatchError` to
catch them all. Messages name the node, op type, instance, argument position
or file line, and say what was expected.
"""

from __future__ import annotations

__all__ = ["EdbatchError"]


class EdbatchError(ValueError):
    """Base class of the library's errors: a bad input or misuse, named in the message."""
