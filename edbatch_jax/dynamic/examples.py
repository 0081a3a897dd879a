"""Three workloads whose structure is decided while they run, each with its ops, program and reference.

* **Greedy decoding** (:func:`greedy_decode`): a small RNN decoder emits the
  argmax token until an end token (``EOS``) or a length limit, so every
  instance has its own length. With a target sequence in the instance it
  runs with teacher forcing instead (the target is fed, no value is waited
  for). Every step also records a cross-entropy node against the token
  chosen, for training on the recorded graph.
* **Decoding to chosen lengths** (:func:`decode_to_length`): the same
  decoder, but the logits node's payload shifts the end token's logit
  (:data:`EOS_SHIFT` up at the instance's last step, down before it), so
  the argmax emits ``EOS`` exactly at a length the instance chose and the
  other tokens are the model's own argmax. The benchmark uses it to control
  the length distribution.
* **Adaptive computation** (:func:`act_program`): an RNN cell is applied
  again and again to one instance's state until the sum of a computed
  halting probability crosses :data:`ACT_THRESHOLD` (or a step limit), then
  read out.
* **Tree generation** (:func:`generate_tree`): top-down, each node's number
  of children (0 .. :data:`MAX_CHILDREN`) is the argmax of scores computed
  from its state; a tree's frontier waits for its scores together, so a
  round is one tree level.

Each has a one-at-a-time reference: a plain Python loop over one instance
calling the ops' functions directly with ``jax.numpy`` (no engine), giving
the values and decisions (``*_reference``), and a differentiable replay of
the decisions (``*_loss_reference``) whose ``jax.grad`` checks gradients of
the same loss on the recorded graph. Hidden sizes are tiny: these are
examples and test workloads, not models to train.

The op functions are pure and jittable (``fn(params, payload, *states) ->
state``, shapes in their docstrings); programs and references are host-side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.dynamic.runtime import Handle, call

__all__ = [
    "ACT_THRESHOLD",
    "BOS",
    "EOS",
    "EOS_SHIFT",
    "MAX_CHILDREN",
    "ACTInstance",
    "ACTOutput",
    "DecodeInstance",
    "DecodeOutput",
    "SizedDecodeInstance",
    "TreeInstance",
    "TreeOutput",
    "act_instances",
    "act_loss_reference",
    "act_ops",
    "act_params",
    "act_program",
    "act_reference",
    "decode_instances",
    "decode_loss_reference",
    "decode_ops",
    "decode_params",
    "decode_reference",
    "decode_to_length",
    "decode_to_length_reference",
    "generate_tree",
    "eos_shift",
    "greedy_decode",
    "sized_decode_instances",
    "sized_decode_ops",
    "tree_instances",
    "tree_loss_reference",
    "tree_ops",
    "tree_params",
    "tree_reference",
]

EOS = 0
"""The end token of the decoder."""
BOS = 1
"""The token fed to the decoder's first step."""


# =========================================================================== greedy decoding
@dataclasses.dataclass(frozen=True)
class DecodeInstance:
    """One decoding instance.

    Attributes:
      prompt: int32 ``[P]`` token ids the decoder's state starts from (one ``P`` for all instances).
      max_len: at most this many steps.
      target: for teacher forcing, int32 ``[T]`` (``T <= max_len``) tokens fed instead of the argmax
        (decoding stops after the target's ``EOS``, or its end); ``None`` for greedy decoding.
    """

    prompt: np.ndarray
    max_len: int
    target: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class DecodeOutput:
    """What :func:`greedy_decode` returns.

    Attributes:
      tokens: the tokens emitted before ``EOS``.
      chosen: every token chosen, one per step (``tokens``, then ``EOS`` if it was chosen).
      losses: per step, the handle of its cross-entropy node against the chosen token.
      logits: per step, the handle of its logits node.
    """

    tokens: tuple[int, ...]
    chosen: tuple[int, ...]
    losses: tuple[Handle, ...]
    logits: tuple[Handle, ...]


def decode_params(key: jax.Array, vocab: int = 8, hidden: int = 8, eos_bias: float = 2.0) -> dict:
    """Decoder parameters: embeddings ``E [V, H]``, ``W_enc, W_x, W_h [H, H]``, ``b [H]``, ``W_o [H, V]``, ``b_o [V]``
    (float32); ``eos_bias`` raises the end token's logit so that lengths vary."""
    k = jax.random.split(key, 6)
    scale = 1.0 / np.sqrt(hidden)
    return {
        "E": jax.random.normal(k[0], (vocab, hidden)),
        "W_enc": jax.random.normal(k[1], (hidden, hidden)) * scale,
        "W_x": jax.random.normal(k[2], (hidden, hidden)) * scale,
        "W_h": jax.random.normal(k[3], (hidden, hidden)) * scale,
        "b": jnp.zeros((hidden,)),
        "W_o": jax.random.normal(k[4], (hidden, vocab)) * 2 * scale,
        "b_o": jnp.zeros((vocab,)).at[EOS].set(eos_bias),
    }


def decode_encode(params: dict, prompt: jax.Array) -> jax.Array:
    """``h [H]`` from the prompt ``int32 [P]``: ``tanh(mean(E[prompt]) W_enc)``."""
    return jnp.tanh(params["E"][prompt].mean(axis=0) @ params["W_enc"])


def decode_step(params: dict, token: jax.Array, h: jax.Array) -> jax.Array:
    """The next ``h [H]`` from the fed ``token`` (int32 scalar) and ``h [H]``."""
    return jnp.tanh(params["E"][token] @ params["W_x"] + h @ params["W_h"] + params["b"])


def decode_logits(params: dict, payload: None, h: jax.Array) -> jax.Array:
    """Logits ``[V]`` of ``h [H]``."""
    del payload
    return h @ params["W_o"] + params["b_o"]


def decode_xent(params: dict, target: jax.Array, logits: jax.Array) -> jax.Array:
    """Cross-entropy (float32 scalar) of ``logits [V]`` against ``target`` (int32 scalar)."""
    del params
    return jax.nn.logsumexp(logits) - logits[target]


def decode_ops() -> dict:
    """The decoder's ops: ``encode``, ``step``, ``logits``, ``xent``."""
    return {"encode": decode_encode, "step": decode_step, "logits": decode_logits, "xent": decode_xent}


def decode_instances(
    n: int, seed: int = 0, vocab: int = 8, prompt_len: int = 3, max_len: int = 12, teacher: bool = False
) -> list[DecodeInstance]:
    """``n`` random instances (prompts of ``prompt_len`` tokens from ``2 .. vocab-1``; with ``teacher``, random
    targets of 1 .. ``max_len`` tokens ending in ``EOS``)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(2, vocab, prompt_len).astype(np.int32)
        target = None
        if teacher:
            length = int(rng.integers(1, max_len + 1))
            target = np.append(rng.integers(2, vocab, length - 1), EOS).astype(np.int32)
        out.append(DecodeInstance(prompt, max_len, target))
    return out


def greedy_decode(inst: DecodeInstance) -> Generator:
    """The program of one decoding instance: greedy (waits for each step's logits), or teacher-forced."""
    h = call("encode", payload=inst.prompt)
    tokens, chosen, losses, all_logits = [], [], [], []
    prev = BOS
    steps = inst.max_len if inst.target is None else min(inst.max_len, len(inst.target))
    for t in range(steps):
        h = call("step", h, payload=np.int32(prev))
        logits = call("logits", h)
        if inst.target is None:
            lv = yield logits  # the value decides the structure
            tok = int(np.argmax(lv))
        else:
            tok = int(inst.target[t])  # teacher forcing: the target, no waiting
        losses.append(call("xent", logits, payload=np.int32(tok)))
        all_logits.append(logits)
        chosen.append(tok)
        if tok == EOS:
            break
        tokens.append(tok)
        prev = tok
    return DecodeOutput(tuple(tokens), tuple(chosen), tuple(losses), tuple(all_logits))


def decode_reference(params: dict, inst: DecodeInstance) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """One instance, one op at a time (no engine): ``(chosen tokens, logits per step)``."""
    h = decode_encode(params, jnp.asarray(inst.prompt))
    chosen, logits_seen = [], []
    prev = BOS
    steps = inst.max_len if inst.target is None else min(inst.max_len, len(inst.target))
    for t in range(steps):
        h = decode_step(params, jnp.int32(prev), h)
        logits = decode_logits(params, None, h)
        logits_seen.append(np.asarray(logits))
        tok = int(jnp.argmax(logits)) if inst.target is None else int(inst.target[t])
        chosen.append(tok)
        if tok == EOS:
            break
        prev = tok
    return tuple(chosen), logits_seen


def decode_loss_reference(params: dict, inst: DecodeInstance, chosen: tuple[int, ...]) -> jax.Array:
    """The summed cross-entropy of one instance with the tokens ``chosen`` fed and scored (differentiable)."""
    h = decode_encode(params, jnp.asarray(inst.prompt))
    loss = jnp.float32(0.0)
    prev = BOS
    for tok in chosen:
        h = decode_step(params, jnp.int32(prev), h)
        loss = loss + decode_xent(params, jnp.int32(tok), decode_logits(params, None, h))
        prev = tok
    return loss


# =========================================================================== decoding to chosen lengths
EOS_SHIFT = 1000.0
"""Added to the end token's logit at an instance's last step, subtracted before it (logits are a few units)."""


@dataclasses.dataclass(frozen=True)
class SizedDecodeInstance:
    """One decoding instance whose ``EOS`` comes at step ``length`` (1-based): ``prompt`` int32 ``[P]``."""

    prompt: np.ndarray
    length: int


def decode_logits_shifted(params: dict, shift: jax.Array, h: jax.Array) -> jax.Array:
    """Logits ``[V]`` of ``h [H]`` with ``shift`` (float32 scalar) added to the end token's."""
    return decode_logits(params, None, h).at[EOS].add(shift)


def eos_shift(step: int, length: int) -> np.float32:
    """The end token's shift at 0-based ``step`` of an instance of ``length`` steps."""
    return np.float32(EOS_SHIFT if step == length - 1 else -EOS_SHIFT)


def sized_decode_ops() -> dict:
    """The ops of :func:`decode_to_length`: ``encode``, ``step``, ``logits`` (payload: the end token's shift)."""
    return {"encode": decode_encode, "step": decode_step, "logits": decode_logits_shifted}


def sized_decode_instances(lengths: np.ndarray, seed: int = 0, vocab: int = 8, prompt_len: int = 3) -> list:
    """One :class:`SizedDecodeInstance` per entry of ``lengths`` (each >= 1), random prompts."""
    rng = np.random.default_rng(seed)
    return [
        SizedDecodeInstance(rng.integers(2, vocab, prompt_len).astype(np.int32), int(n))
        for n in np.asarray(lengths).reshape(-1)
    ]


def decode_to_length(inst: SizedDecodeInstance) -> Generator:
    """Greedy decoding, one step per round, whose end token is forced at ``inst.length``; returns the chosen tokens
    (the last one ``EOS``). The argmax of each step's logits decides the next token and whether to stop."""
    h = call("encode", payload=inst.prompt)
    chosen, prev, t = [], BOS, 0
    while True:
        h = call("step", h, payload=np.int32(prev))
        lv = yield call("logits", h, payload=eos_shift(t, inst.length))
        tok = int(np.argmax(lv))
        chosen.append(tok)
        if tok == EOS:
            return tuple(chosen)
        prev, t = tok, t + 1


def decode_to_length_reference(params: dict, inst: SizedDecodeInstance) -> tuple[int, ...]:
    """One instance, one op at a time (no engine): the chosen tokens of :func:`decode_to_length`."""
    h = decode_encode(params, jnp.asarray(inst.prompt))
    chosen, prev, t = [], BOS, 0
    while True:
        h = decode_step(params, jnp.int32(prev), h)
        tok = int(jnp.argmax(decode_logits_shifted(params, jnp.float32(eos_shift(t, inst.length)), h)))
        chosen.append(tok)
        if tok == EOS:
            return tuple(chosen)
        prev, t = tok, t + 1


# =========================================================================== adaptive computation
ACT_THRESHOLD = 1.0
"""An instance halts once the sum of its halting probabilities reaches this."""


@dataclasses.dataclass(frozen=True)
class ACTInstance:
    """One adaptive-computation instance: ``tokens`` int32 ``[L]`` (one ``L`` for all), at most ``max_steps`` steps."""

    tokens: np.ndarray
    max_steps: int


@dataclasses.dataclass(frozen=True)
class ACTOutput:
    """What :func:`act_program` returns: the steps taken, the halting sum, the read-out value (float32 ``[C]``) and
    the handle of the read-out node."""

    steps: int
    halting: float
    output: np.ndarray
    readout: Handle


def act_params(key: jax.Array, vocab: int = 8, hidden: int = 8, classes: int = 3) -> dict:
    """ACT parameters: ``E [V, H]``, ``W [H, H]``, ``b [H]``, ``w_halt [H]``, ``b_halt []``, ``W_out [H, C]``."""
    k = jax.random.split(key, 4)
    scale = 1.0 / np.sqrt(hidden)
    return {
        "E": jax.random.normal(k[0], (vocab, hidden)),
        "W": jax.random.normal(k[1], (hidden, hidden)) * scale,
        "b": jnp.zeros((hidden,)),
        "w_halt": jax.random.normal(k[2], (hidden,)) * 2,
        "b_halt": jnp.float32(-1.0),
        "W_out": jax.random.normal(k[3], (hidden, classes)) * scale,
    }


def act_embed(params: dict, tokens: jax.Array) -> jax.Array:
    """``h [H]`` of ``tokens`` int32 ``[L]``: ``tanh(mean(E[tokens]))``."""
    return jnp.tanh(params["E"][tokens].mean(axis=0))


def act_ponder(params: dict, payload: None, h: jax.Array) -> jax.Array:
    """One more step of computation on ``h [H]``."""
    del payload
    return jnp.tanh(h @ params["W"] + params["b"] + h)


def act_halt(params: dict, payload: None, h: jax.Array) -> jax.Array:
    """The halting probability (float32 scalar) of ``h [H]``."""
    del payload
    return jax.nn.sigmoid(h @ params["w_halt"] + params["b_halt"])


def act_readout(params: dict, payload: None, h: jax.Array) -> jax.Array:
    """The output ``[C]`` of ``h [H]``."""
    del payload
    return h @ params["W_out"]


def act_ops() -> dict:
    """The ACT ops: ``embed``, ``ponder``, ``halt``, ``readout``."""
    return {"embed": act_embed, "ponder": act_ponder, "halt": act_halt, "readout": act_readout}


def act_instances(n: int, seed: int = 0, vocab: int = 8, length: int = 3, max_steps: int = 8) -> list[ACTInstance]:
    """``n`` random instances."""
    rng = np.random.default_rng(seed)
    return [ACTInstance(rng.integers(0, vocab, length).astype(np.int32), max_steps) for _ in range(n)]


def act_program(inst: ACTInstance) -> Generator:
    """The program of one ACT instance: ponder until the halting sum reaches :data:`ACT_THRESHOLD`."""
    h = call("embed", payload=inst.tokens)
    total, steps = 0.0, 0
    while steps < inst.max_steps:
        h = call("ponder", h)
        steps += 1
        p = yield call("halt", h)
        total += float(p)
        if total >= ACT_THRESHOLD:
            break
    readout = call("readout", h)
    out = yield readout
    return ACTOutput(steps, total, out, readout)


def act_reference(params: dict, inst: ACTInstance) -> tuple[int, float, np.ndarray]:
    """One instance, one op at a time (no engine): ``(steps, halting sum, output [C])``."""
    h = act_embed(params, jnp.asarray(inst.tokens))
    total, steps = 0.0, 0
    while steps < inst.max_steps:
        h = act_ponder(params, None, h)
        steps += 1
        total += float(act_halt(params, None, h))
        if total >= ACT_THRESHOLD:
            break
    return steps, total, np.asarray(act_readout(params, None, h))


def act_loss_reference(params: dict, inst: ACTInstance, steps: int) -> jax.Array:
    """``sum(output**2)`` of one instance run for ``steps`` steps (differentiable)."""
    h = act_embed(params, jnp.asarray(inst.tokens))
    for _ in range(steps):
        h = act_ponder(params, None, h)
    return jnp.sum(act_readout(params, None, h) ** 2)


# =========================================================================== tree generation
MAX_CHILDREN = 3
"""A generated node has 0 .. MAX_CHILDREN children."""


@dataclasses.dataclass(frozen=True)
class TreeInstance:
    """One tree to generate from the token ``seed`` (int), at most ``max_depth`` levels below the root."""

    seed: int
    max_depth: int


@dataclasses.dataclass(frozen=True)
class TreeOutput:
    """What :func:`generate_tree` returns: ``shape`` (children of every node, breadth-first) and the handles of
    every node's arity scores, in the same order."""

    shape: tuple[int, ...]
    scores: tuple[Handle, ...]


def tree_params(key: jax.Array, vocab: int = 8, hidden: int = 8) -> dict:
    """Tree-generator parameters: ``E [V, H]``, ``W_a [H, K+1]``, ``b_a [K+1]``, ``W_c [H, H]``, ``P [K, H]``."""
    k = jax.random.split(key, 4)
    scale = 1.0 / np.sqrt(hidden)
    return {
        "E": jax.random.normal(k[0], (vocab, hidden)),
        "W_a": jax.random.normal(k[1], (hidden, MAX_CHILDREN + 1)) * 2 * scale,
        "b_a": jnp.zeros((MAX_CHILDREN + 1,)),
        "W_c": jax.random.normal(k[2], (hidden, hidden)) * scale,
        "P": jax.random.normal(k[3], (MAX_CHILDREN, hidden)),
    }


def tree_root(params: dict, seed: jax.Array) -> jax.Array:
    """The root's state ``[H]`` from its ``seed`` token (int32 scalar)."""
    return jnp.tanh(params["E"][seed])


def tree_arity(params: dict, payload: None, h: jax.Array) -> jax.Array:
    """Scores ``[K + 1]`` of a node's number of children from its state ``h [H]``."""
    del payload
    return h @ params["W_a"] + params["b_a"]


def tree_child(params: dict, position: jax.Array, h: jax.Array) -> jax.Array:
    """The state ``[H]`` of the child at ``position`` (int32 scalar) of a node with state ``h [H]``."""
    return jnp.tanh(h @ params["W_c"] + params["P"][position])


def tree_ops() -> dict:
    """The tree generator's ops: ``root``, ``arity``, ``child``."""
    return {"root": tree_root, "arity": tree_arity, "child": tree_child}


def tree_instances(n: int, seed: int = 0, vocab: int = 8, max_depth: int = 3) -> list[TreeInstance]:
    """``n`` random instances."""
    rng = np.random.default_rng(seed)
    return [TreeInstance(int(rng.integers(0, vocab)), max_depth) for _ in range(n)]


def generate_tree(inst: TreeInstance) -> Generator:
    """The program of one tree: level by level, each node's children decided from its scores."""
    frontier = [(call("root", payload=np.int32(inst.seed)), 0)]
    shape, all_scores = [], []
    while frontier:
        handles = tuple(call("arity", h) for h, _ in frontier)
        scores = yield handles  # the whole level waits together
        nxt = []
        for (h, depth), s, a in zip(frontier, scores, handles):
            n = int(np.argmax(s)) if depth < inst.max_depth else 0
            shape.append(n)
            all_scores.append(a)
            nxt += [(call("child", h, payload=np.int32(k)), depth + 1) for k in range(n)]
        frontier = nxt
    return TreeOutput(tuple(shape), tuple(all_scores))


def tree_reference(params: dict, inst: TreeInstance) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """One tree, one op at a time (no engine): ``(shape, scores per node)``, breadth-first."""
    frontier = [(tree_root(params, jnp.int32(inst.seed)), 0)]
    shape, seen = [], []
    while frontier:
        nxt = []
        for h, depth in frontier:
            s = tree_arity(params, None, h)
            seen.append(np.asarray(s))
            n = int(jnp.argmax(s)) if depth < inst.max_depth else 0
            shape.append(n)
            nxt += [(tree_child(params, jnp.int32(k), h), depth + 1) for k in range(n)]
        frontier = nxt
    return tuple(shape), seen


def tree_loss_reference(params: dict, inst: TreeInstance, shape: tuple[int, ...]) -> jax.Array:
    """``sum`` over nodes of ``scores[children]`` for the tree of the given ``shape`` (differentiable)."""
    frontier = [tree_root(params, jnp.int32(inst.seed))]
    loss, i = jnp.float32(0.0), 0
    while frontier:
        nxt = []
        for h in frontier:
            n = shape[i]
            i += 1
            loss = loss + tree_arity(params, None, h)[n]
            nxt += [tree_child(params, jnp.int32(k), h) for k in range(n)]
        frontier = nxt
    return loss
