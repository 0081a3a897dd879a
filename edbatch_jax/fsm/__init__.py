"""Layer 3, the learned policy: ED-Batch's batching policy as a finite state machine.

The batching MDP as fixed-shape JAX arrays (:mod:`~edbatch_jax.fsm.env`),
state encodings as tuples of op type ids, the jit-compiled Q-learning loop on
a sparse Q-table (a hash table of the visited states: any number of op types
up to ``MAX_TYPES``), :class:`FSMPolicy` (a dictionary from state tuples to op
types) with its versioned policy files, and :func:`resolve_policy` (policies
by name or file). Imports the graph and scheduling layers.
"""

from edbatch_jax.fsm.encoding import (
    ENCODINGS,
    MAX_TYPES,
    ranked_state,
    ready_types,
    state_from_ranked,
    state_problem,
    state_tuple,
)
from edbatch_jax.fsm.env import CHUNK, BatchingEnv, EnvState, ReferenceEnv, make_env, observe, reset, stack_envs, step
from edbatch_jax.fsm.policy import (
    FALLBACKS,
    REFINE_BUDGET,
    FSMDecision,
    FSMPolicy,
    PolicyFileError,
    learn_fsm,
    refine_table,
)
from edbatch_jax.fsm.qlearning import LearningResult, QLearningSettings, greedy_actions, run_q_learning
from edbatch_jax.fsm.resolve import resolve_policy

__all__ = [
    "ENCODINGS",
    "FALLBACKS",
    "MAX_TYPES",
    "BatchingEnv",
    "EnvState",
    "FSMDecision",
    "FSMPolicy",
    "LearningResult",
    "PolicyFileError",
    "QLearningSettings",
    "REFINE_BUDGET",
    "ReferenceEnv",
    "greedy_actions",
    "learn_fsm",
    "make_env",
    "observe",
    "ranked_state",
    "ready_types",
    "refine_table",
    "reset",
    "resolve_policy",
    "run_q_learning",
    "stack_envs",
    "state_from_ranked",
    "state_problem",
    "state_tuple",
    "step",
]
