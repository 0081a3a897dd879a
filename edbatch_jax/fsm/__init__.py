"""Layer 3, the learned policy: ED-Batch's batching policy as a finite state machine.

The batching MDP as fixed-shape JAX arrays (:mod:`~edbatch_jax.fsm.env`),
state encodings, the jit-compiled Q-learning loop, :class:`FSMPolicy` with
its versioned policy files, and :func:`resolve_policy` (policies by name or
file). Imports the graph and scheduling layers.
"""

from edbatch_jax.fsm.encoding import ENCODINGS, decode, encode, encode_np, num_states, state_tuple
from edbatch_jax.fsm.env import CHUNK, BatchingEnv, EnvState, ReferenceEnv, make_env, observe, reset, stack_envs, step
from edbatch_jax.fsm.policy import FALLBACKS, FSMDecision, FSMPolicy, PolicyFileError, learn_fsm
from edbatch_jax.fsm.qlearning import LearningResult, QLearningSettings, greedy_actions, run_q_learning
from edbatch_jax.fsm.resolve import resolve_policy

__all__ = [
    "ENCODINGS",
    "FALLBACKS",
    "BatchingEnv",
    "EnvState",
    "FSMDecision",
    "FSMPolicy",
    "LearningResult",
    "PolicyFileError",
    "QLearningSettings",
    "ReferenceEnv",
    "decode",
    "encode",
    "encode_np",
    "greedy_actions",
    "learn_fsm",
    "make_env",
    "num_states",
    "observe",
    "reset",
    "resolve_policy",
    "run_q_learning",
    "stack_envs",
    "state_tuple",
    "step",
]
