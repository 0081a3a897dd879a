"""Op types: what one node computes.

An op is a pure per-node function ``f(params, payload, *operand_states) -> state``
(a pytree), written for a single node; the engine vmaps it over a batch. It
may be given as a bare function (its arity is read from its signature) or as an
:class:`Op` that says more: a fixed arity, or a variable number of operands
combined by an aggregate (``"sum"``, ``"mean"`` or ``"max"``) before ``f`` sees
them, in which case ``f(params, payload, combined_state)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

__all__ = ["NNXCells", "Op", "OpError", "as_op", "as_ops", "linen_op", "nnx_op"]

AGGREGATES = ("sum", "mean", "max")


class OpError(ValueError):
    """An op type is missing, or does not fit the nodes that use it."""


@dataclasses.dataclass(frozen=True)
class Op:
    """A per-node function with its calling convention.

    Attributes:
      fn: ``fn(params, payload, *operand_states) -> state``, pure and jittable.
      arity: number of operand states, or ``None`` for a variable number
        (then ``aggregate`` must say how they combine).
      aggregate: ``"sum"``, ``"mean"`` or ``"max"`` over the operand states of
        a variable-arity node; ``fn`` then receives one combined state.
      params_key: if set, ``fn`` receives ``params[params_key]`` instead of the
        whole parameter pytree (and only that subtree's gradient is
        accumulated per batch, which saves work in the backward sweep).
    """

    fn: Callable[..., Any]
    arity: int | None = None
    aggregate: str | None = None
    params_key: str | None = None

    def __post_init__(self):
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise OpError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.arity is None and self.aggregate is None:
            object.__setattr__(self, "arity", _signature_arity(self.fn))

    @property
    def variadic(self) -> bool:
        """Whether the op takes a variable number of operands (``aggregate`` set)."""
        return self.aggregate is not None

    def select_params(self, params):
        """The part of ``params`` that ``fn`` receives."""
        if self.params_key is None:
            return params
        try:
            return params[self.params_key]
        except (KeyError, TypeError, IndexError):
            raise OpError(
                f"op {getattr(self.fn, '__name__', self.fn)!r} reads params[{self.params_key!r}], which is missing"
            ) from None


def _signature_arity(fn: Callable) -> int:
    """Number of operand states a per-node function takes (after params, payload)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise OpError(f"cannot read the signature of {fn!r}; wrap it as eb.Op(fn, arity=...)") from None
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        raise OpError(
            f"{getattr(fn, '__name__', fn)!r} takes a variable number of operands; say how they combine "
            "with eb.Op(fn, aggregate='sum' | 'mean' | 'max'), or give a fixed arity"
        )
    if len(positional) < 2:
        raise OpError(f"{getattr(fn, '__name__', fn)!r} must take (params, payload, *operand_states)")
    return len(positional) - 2


def as_op(name: str, op: Op | Callable) -> Op:
    """Normalises a function or :class:`Op` into an :class:`Op`."""
    if isinstance(op, Op):
        return op
    if not callable(op):
        raise OpError(f"op {name!r} must be a function or eb.Op, got {type(op).__name__}")
    return Op(fn=op, arity=_signature_arity(op))


def as_ops(ops: Mapping[str, Op | Callable]) -> dict[str, Op]:
    """Normalises a mapping of op type names to functions or :class:`Op`."""
    if not isinstance(ops, Mapping):
        raise OpError(f"ops must map op type names to functions, got {type(ops).__name__}")
    return {name: as_op(name, op) for name, op in ops.items()}


def check_graph_ops(graph, ops: Mapping[str, Op]) -> None:
    """Raises :class:`OpError` if a node's op type is unknown or its arity does not fit (vectorised over nodes)."""
    import numpy as np

    used = np.bincount(graph.node_type, minlength=graph.num_types) > 0
    for t in np.flatnonzero(used).tolist():
        name = graph.op_types[t]
        if name not in ops:
            node = int(np.flatnonzero(graph.node_type == t)[0])
            raise OpError(f"op type {name!r} (used by node {node}) has no implementation; ops given: {sorted(ops)}")
    known = [ops.get(name) for name in graph.op_types]
    variadic = np.array([op is not None and op.variadic for op in known])
    want = np.array([op.arity if op is not None and not op.variadic else -1 for op in known], np.int64)
    arity = graph.arity
    bad = np.flatnonzero(np.where(variadic[graph.node_type], arity < 1, arity != want[graph.node_type]))
    if bad.size:
        v = int(bad[0])
        op, name = known[graph.node_type[v]], graph.op_types[graph.node_type[v]]
        need = "at least 1 operand" if op.variadic else f"{op.arity} operand(s)"
        raise OpError(f"node {v} (op {name!r}) has {arity[v]} argument(s) but the op takes {need}")


def linen_op(module, params_key: str, arity: int | None = None, aggregate: str | None = None) -> Op:
    """Wraps a ``flax.linen`` module as an op.

    The node function is ``module.apply({"params": params[params_key]}, payload,
    *operand_states)``; the arity is read from ``module.__call__(self, payload,
    *operand_states)`` unless given.
    """

    def fn(params, payload, *states):
        return module.apply({"params": params}, payload, *states)

    if arity is None and aggregate is None:
        arity = _signature_arity(type(module).__call__)  # (self, payload, *states)
    fn.__name__ = f"{type(module).__name__}[{params_key}]"
    return Op(fn=fn, arity=arity, aggregate=aggregate, params_key=params_key)


def nnx_op(module, params_key: str, arity: int | None = None, aggregate: str | None = None) -> Op:
    """Wraps a ``flax.nnx`` module instance as an op.

    The op reads ``params[params_key]``: the ``nnx.State`` of the module's
    ``nnx.Param`` variables (``nnx.state(module, nnx.Param)``, or the
    ``params_key`` entry of ``nnx.split(container, nnx.Param)`` for a
    container module holding every cell). The node function is
    ``nnx.merge(graphdef, params, rest)(payload, *operand_states)``, so the
    engine differentiates with respect to the ``nnx.State`` and an
    ``nnx.Optimizer`` can apply the gradients. The arity is read from
    ``type(module).__call__(self, payload, *operand_states)`` unless given.
    """
    graphdef, _, rest = nnx.split(module, nnx.Param, ...)

    def fn(params, payload, *states):
        return nnx.merge(graphdef, params, rest)(payload, *states)

    if arity is None and aggregate is None:
        arity = _signature_arity(type(module).__call__)
    fn.__name__ = f"{type(module).__name__}[{params_key}]"
    return Op(fn=fn, arity=arity, aggregate=aggregate, params_key=params_key)


class NNXCells(nnx.Module):
    """A ``flax.nnx`` container holding one cell module per op type.

    One ``nnx.split(cells, nnx.Param)`` gives the parameter ``nnx.State`` the
    engine differentiates (keyed by op type name), and
    ``nnx.Optimizer(cells, tx, wrt=nnx.Param)`` updates the cells in place::

      cells = eb.NNXCells({"leaf": Leaf(16, rngs=rngs), "node": Node(16, rngs=rngs)})
      _, params = nnx.split(cells, nnx.Param)
      loss = lambda p: eb.run(cells.ops, p, graph, sched, outputs=roots).sum()

    Args:
      cells: op type name -> ``nnx.Module`` whose ``__call__(payload,
        *operand_states)`` computes one node.
      arity: op type name -> number of operand states, for cells whose
        ``__call__`` takes ``*operand_states`` (otherwise read from the
        signature).
      aggregate: op type name -> ``"sum"``, ``"mean"`` or ``"max"`` for
        variable-arity cells (see :class:`Op`).
      extra_ops: ops without parameters (e.g. a variadic sum node), passed
        through unchanged into :attr:`ops`.
    """

    def __init__(
        self,
        cells: Mapping[str, Any],
        *,
        arity: Mapping[str, int] | None = None,
        aggregate: Mapping[str, str] | None = None,
        extra_ops: Mapping[str, Op] | None = None,
    ):
        extra_ops = dict(extra_ops or {})
        clash = sorted(set(cells) & set(extra_ops))
        if clash:
            raise OpError(f"op types {clash} are given both as cells and as extra_ops")
        for name, cell in cells.items():
            if not name.isidentifier() or hasattr(type(self), name):
                raise OpError(f"op type name {name!r} cannot name an NNX cell attribute")
            setattr(self, name, cell)
        arity, aggregate = dict(arity or {}), dict(aggregate or {})
        ops = {name: nnx_op(cell, name, arity.get(name), aggregate.get(name)) for name, cell in cells.items()}
        # Built once, so every eb.run(cells.ops, ...) reuses the engine's compiled steps.
        self._ops = tuple({**ops, **extra_ops}.items())

    @classmethod
    def matching(cls, ops: Mapping[str, Any], cells: Mapping[str, Any]) -> NNXCells:
        """NNX ``cells`` for some of the op types of ``ops`` (say, a Linen model's).

        Each cell's op takes the arity and aggregate of ``ops[name]``; the ops
        of ``ops`` without a cell (parameter-free ones) are passed through.
        """
        ops = as_ops(ops)
        missing = sorted(set(cells) - set(ops))
        if missing:
            raise OpError(f"cells {missing} have no op type in {sorted(ops)}")
        return cls(
            cells,
            arity={name: ops[name].arity for name in cells if ops[name].arity is not None},
            aggregate={name: ops[name].aggregate for name in cells if ops[name].aggregate is not None},
            extra_ops={name: op for name, op in ops.items() if name not in cells},
        )

    @property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; a cell's op reads ``params[name]`` of ``nnx.split(self, nnx.Param)``."""
        return dict(self._ops)
