"""Vectorised graph construction shared by the bundled models: batch checks, positions, CSR, the binary-tree graph.

Every model's ``batch_graph`` builds one :class:`~edbatch_jax.graph.Graph` for a
batch of instances with NumPy arrays (no Python loop over nodes): node ids are
local to an instance, instances are concatenated in order, and ids are a
topological order. The helpers here are the pieces they all need: checking a
batch (:func:`check_nonempty`, :func:`check_sequences`), the position of every
item of concatenated instances (:func:`token_positions`, :func:`sequence_layout`), an operand table padded
with ``-1`` to CSR (:func:`padded_csr`), the :class:`~edbatch_jax.graph.Graph`
of per-node arrays (:func:`instance_graph`), and the graph of binary trees with a
loss node per tree node (:func:`binary_tree_graph`, :func:`binary_tree_batch_graph`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edbatch_jax.graph import Graph, GraphError
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.zoo.data.sst import Tree
from edbatch_jax.zoo.data.vocab import Vocabulary
from edbatch_jax.zoo.models.kernels import binary_tree_arrays, padded_to_csr

__all__ = [
    "binary_tree_batch_graph",
    "binary_tree_graph",
    "check_nonempty",
    "check_sequences",
    "instance_graph",
    "padded_csr",
    "sequence_layout",
    "token_positions",
]


def check_nonempty(instances: Sequence, what: str) -> None:
    """Raises :class:`~edbatch_jax.graph.GraphError` naming ``what`` when there are no ``instances``."""
    if len(instances) == 0:
        raise GraphError(f"batch_graph got an empty batch: no {what}")


def check_sequences(word_ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], what: str) -> np.ndarray:
    """int64 ``[B]``: the lengths of ``B`` sequences of word ids, checked against their label sequences.

    Args:
      word_ids: ``B >= 1`` int arrays ``[T_b]``.
      labels: ``B`` int arrays ``[T_b]`` (pass ``word_ids`` again for sequences without labels).
      what: the name of one sequence in error messages (``"sentence"``).

    Raises:
      GraphError: an empty batch, as many word as label sequences missing, or a
        sequence without words or with as many labels as words missing.
    """
    check_nonempty(word_ids, what)
    if len(word_ids) != len(labels):
        raise GraphError(f"batch_graph got {len(word_ids)} word sequences but {len(labels)} label sequences")
    try:
        lengths = np.fromiter(map(len, word_ids), np.int64, count=len(word_ids))
        label_lengths = np.fromiter(map(len, labels), np.int64, count=len(labels))
    except TypeError:  # a scalar where a sequence belongs
        k = next(k for k, (w, y) in enumerate(zip(word_ids, labels)) if np.ndim(w) == 0 or np.ndim(y) == 0)
        raise GraphError(
            f"{what} {k}: its words and labels must be sequences, got {type(word_ids[k]).__name__} and "
            f"{type(labels[k]).__name__}"
        ) from None
    bad = np.flatnonzero((lengths == 0) | (lengths != label_lengths))
    if bad.size:
        k = int(bad[0])
        raise GraphError(f"{what} {k}: {lengths[k]} words and {label_lengths[k]} labels (need as many, at least one)")
    return lengths


def token_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sequence, position)`` int64 ``[sum(lengths)]`` of every item of concatenated sequences (or instances)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    sentence = np.repeat(np.arange(lengths.shape[0]), lengths)
    return sentence, np.arange(sentence.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def sequence_layout(lengths: np.ndarray, fixed: int, per_token: int) -> tuple[np.ndarray, ...]:
    """Where the nodes of concatenated sequences go: ``fixed`` nodes, then ``per_token`` blocks of ``T`` nodes each.

    Args:
      lengths: int64 ``[B]``, the tokens ``T_b`` of every sequence.
      fixed: nodes at the start of every sequence (its initial states).
      per_token: blocks of ``T_b`` nodes after them (one node per token each).

    Returns:
      ``(sizes, t, base, length)``: int64 ``[B]`` nodes per sequence, then per
      token of all sequences (int64 ``[sum(lengths)]``) its position ``t``, the
      first node id of its sequence and the length of its sequence.
    """
    sizes = fixed + per_token * lengths
    first = np.cumsum(sizes) - sizes
    sequence, t = token_positions(lengths)
    return sizes, t, first[sequence], lengths[sequence]


def padded_csr(args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(arg_ptr int32 [N + 1], arg_idx int32 [M])`` of an int ``[N, k]`` operand table padded with ``-1``
    (negative entries are padding; one compiled pass, :func:`~edbatch_jax.zoo.models.kernels.padded_to_csr`)."""
    return padded_to_csr(np.ascontiguousarray(args))


def instance_graph(
    node_type: np.ndarray,
    arg_ptr: np.ndarray,
    arg_idx: np.ndarray,
    sizes: np.ndarray,
    payloads: Sequence[np.ndarray | None],
    op_types: tuple[str, ...],
) -> Graph:
    """The :class:`~edbatch_jax.graph.Graph` of concatenated instances of ``sizes`` nodes each.

    Args:
      node_type: int32 ``[N]``, the op type id of every node.
      arg_ptr: int32 ``[N + 1]`` and ``arg_idx`` int32 ``[M]``: the operands in CSR.
      arg_idx: see ``arg_ptr``.
      sizes: int ``[B]``, the nodes of every instance (``N`` in all).
      payloads: per op type, int32 ``[nodes of that type]`` in node order, or ``None``.
      op_types: the op type names, in type-id order.
    """
    return Graph(
        node_type=node_type,
        arg_ptr=arg_ptr,
        arg_idx=arg_idx,
        instance=np.repeat(np.arange(len(sizes), dtype=np.int32), sizes),
        payload_row=payload_rows(node_type, len(op_types)),
        payloads=tuple(payloads),
        op_types=tuple(op_types),
        num_instances=len(sizes),
    )


def binary_tree_graph(
    sizes: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    labels: np.ndarray,
    leaf_ids: np.ndarray,
    op_types: tuple[str, ...],
    internal_type: np.ndarray | None = None,
) -> Graph:
    """The batched graph of binary trees (post-order) with a loss node per tree node, built vectorised.

    Tree node ``k`` of the ``i``-th tree becomes cell node ``2 (o_i + k)`` and
    loss node ``2 (o_i + k) + 1``, with ``o_i`` the nodes of the trees before
    it; one instance per tree. A leaf is a node of type 0 (payload: its id), a
    binary node reads its two children, a loss node its cell node (payload:
    the label).

    Args:
      sizes: int ``[B]``, the nodes of every tree.
      left: int ``[sum(sizes)]``, every node's left child (local to its tree), ``-1`` at a leaf.
      right: int ``[sum(sizes)]``, the right children likewise.
      labels: int ``[sum(sizes)]``, the label of every node.
      leaf_ids: int32 ``[leaves]``: the payload of every leaf, in node order.
      op_types: ``op_types[0]`` is the leaf type and ``op_types[-1]`` the loss
        type; the ones between are internal types.
      internal_type: int ``[sum(sizes)]``, the op type id of every node (read
        only at binary nodes); ``None`` means every binary node has type id 1.
    """
    loss_type = len(op_types) - 1
    internal = np.ones(left.shape[0], np.int32) if internal_type is None else np.asarray(internal_type, np.int32)
    node_type, arg_ptr, arg_idx = binary_tree_arrays(
        np.asarray(sizes, np.int64), np.asarray(left), np.asarray(right), internal, loss_type
    )
    payloads: list[np.ndarray | None] = [None] * len(op_types)
    payloads[0], payloads[loss_type] = leaf_ids, np.asarray(labels).astype(np.int32)
    return instance_graph(node_type, arg_ptr, arg_idx, 2 * np.asarray(sizes), payloads, op_types)


def binary_tree_batch_graph(
    trees: Sequence[Tree],
    vocab: Vocabulary,
    vocab_size: int,
    op_types: tuple[str, ...],
    internal_type: np.ndarray | None = None,
) -> Graph:
    """The batched graph of several SST trees for a leaf / internal / loss model, built vectorised.

    The node numbering of :func:`binary_tree_graph`. Leaf payloads are int32
    word ids modulo ``vocab_size``, loss payloads the int32 labels; internal
    nodes carry none.

    Args:
      trees: the trees (post-order, root last).
      vocab: maps tokens to ids.
      vocab_size: leaf word ids are taken modulo it.
      op_types: the model's op types: ``op_types[0]`` is the leaf type and
        ``op_types[-1]`` the loss type; the ones between are internal types.
      internal_type: int ``[total nodes]``, the op type id of every tree node
        (read only at binary nodes); ``None`` means every binary node has type
        id 1.

    Returns:
      The :class:`Graph`, with ``op_types`` as given (types without nodes
      included, their payload ``None``).

    Raises:
      GraphError: ``trees`` is empty.
    """
    check_nonempty(trees, "trees")
    sizes = np.fromiter(map(len, (t.tokens for t in trees)), np.int64, count=len(trees))  # nodes per tree
    left = np.concatenate([t.left for t in trees])
    right = np.concatenate([t.right for t in trees])
    labels = np.concatenate([t.labels for t in trees])
    words = vocab.encode_all(trees)
    leaf_ids = (words[left < 0] % vocab_size).astype(np.int32)
    return binary_tree_graph(sizes, left, right, labels, leaf_ids, op_types, internal_type)
