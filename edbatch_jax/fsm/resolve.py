"""Policies by name: the one place where a policy given as text becomes a policy.

Host-side; not jittable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from edbatch_jax.fsm.policy import FSMPolicy, PolicyFileError
from edbatch_jax.scheduling.policies import Policy, policy_names

__all__ = ["resolve_policy"]


def resolve_policy(
    spec: str | os.PathLike | Policy,
    op_types: Sequence[str],
    shipped: str | os.PathLike | None = None,
) -> str | Policy:
    """A policy for :func:`~edbatch_jax.schedule` from what a user typed.

    Args:
      spec: a registered policy name (``"agenda"``, ``"depth"``,
        ``"typewise"``, or one added with ``register_policy``: returned as
        is, after checking it exists), a policy file (a path ending in
        ``.json``: loaded as an :class:`~edbatch_jax.FSMPolicy`), ``"fsm"``
        (the ``shipped`` policy file), or a policy object (returned as is).
      op_types: the model's op type names; a policy file that does not know
        one of them is refused (it may know more op types than the model has).
      shipped: the policy file that ``"fsm"`` names (a bundled workload's
        learned policy), or ``None`` when there is none.

    Returns:
      A policy name or object that :func:`~edbatch_jax.schedule` accepts.

    Raises:
      PolicyFileError: ``"fsm"`` without a shipped file, or a file that is
        missing, corrupt or that does not know one of ``op_types`` (named in
        the message).
      ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"a policy is a name, a policy file or a Policy object, got {type(spec).__name__}")
    text = os.fspath(spec)
    if text == "fsm":
        if shipped is None:
            raise PolicyFileError("policy 'fsm' names a shipped policy file, and none was given for this model")
        return FSMPolicy.load(shipped, op_types=op_types)
    if text.endswith(".json"):
        return FSMPolicy.load(text, op_types=op_types)
    if text not in policy_names():
        raise ValueError(
            f"unknown policy {text!r}; known policies: {sorted(policy_names())}, 'fsm' or a policy file (*.json)"
        )
    return text
