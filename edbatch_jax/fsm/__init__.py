"""The learned FSM batching policy: environment, Q-learning, policy files."""

from edbatch_jax.fsm.encoding import ENCODINGS, decode, encode, encode_np, num_states, state_tuple
from edbatch_jax.fsm.env import CHUNK, BatchingEnv, EnvState, ReferenceEnv, make_env, observe, reset, stack_envs, step
from edbatch_jax.fsm.policy import FALLBACKS, FSMDecision, FSMPolicy, PolicyFileError, learn_fsm
from edbatch_jax.fsm.qlearning import LearningResult, QLearningSettings, greedy_actions, run_q_learning

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
    "run_q_learning",
    "stack_envs",
    "state_tuple",
    "step",
]
