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

import contextlib
from collections.abc import Iterator

__all__ = ["EdbatchError", "input_checks", "input_checks_enabled"]


class EdbatchError(ValueError):
    """Base class of the library's errors: a bad input or misuse, named in the message."""


_INPUT_CHECKS = [True]


def input_checks_enabled() -> bool:
    """Whether the library checks its inputs where they enter (always, unless inside :func:`input_checks`)."""
    return _INPUT_CHECKS[-1]


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Context manager: input checks on (the default) or off inside the block, process-wide.

    The checks of graphs, schedules, layouts, outputs and payloads where they
    enter the library are vectorised and run once per plan; turning them off
    exists to measure what they cost (``edbatch bench --checks on,off``),
    not to run without them: an unchecked bad input may give a wrong answer.

    Example::

      with eb.input_checks(False):
          engine.run(params, graph, sched)
    """
    _INPUT_CHECKS.append(bool(enabled))
    try:
        yield
    finally:
        _INPUT_CHECKS.pop()
