"""Flax modules as ops: ``flax.linen`` modules, ``flax.nnx`` modules, and an NNX container of one cell per op type.

The only module of the engine that imports Flax (``edbatch_jax`` loads it
when one of these names is first used).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flax import nnx

from edbatch_jax.engine.ops import Op, OpError, as_ops, signature_arity

__all__ = ["NNXCells", "linen_op", "nnx_op"]


def _edge_method(module, edge: bool | str) -> str | None:
    """The name of the module's per-argument method (``edge=True``: ``"edge"``), checked to exist."""
    if edge is False or edge is None:
        return None
    method = "edge" if edge is True else edge
    if not isinstance(method, str) or not callable(getattr(type(module), method, None)):
        raise OpError(
            f"{type(module).__name__} has no method {method!r} for its per-argument (edge) computation; define "
            f"{method}(self, payload, operand_state)"
        )
    return method


def _module_op(
    module,
    params_key: str,
    arity: int | None,
    aggregate: str | None,
    edge: bool | str,
    stochastic: bool,
    apply: Callable[..., Any],
    context: bool = False,
) -> Op:
    """The :class:`Op` of a Flax module, given ``apply(params, method, *args, **kwargs)``, which runs the module's
    method ``method`` (``None``: ``__call__``) with the parameters ``params``."""
    name = type(module).__name__

    def fn(params, payload, *states, **kw):  # kw: a stochastic op's key, the context of an op reading it
        return apply(params, None, payload, *states, **kw)

    method = _edge_method(module, edge)
    edge_fn = None
    if method is not None:

        def edge_fn(params, payload, state, **kw):
            return apply(params, method, payload, state, **kw)

        edge_fn.__name__ = f"{name}.{method}[{params_key}]"
    if arity is None and aggregate is None:
        arity = signature_arity(type(module).__call__)  # (self, payload, *states)
    fn.__name__ = f"{name}[{params_key}]"
    return Op(
        fn=fn,
        arity=arity,
        aggregate=aggregate,
        params_key=params_key,
        edge=edge_fn,
        stochastic=stochastic,
        context=context,
    )


def linen_op(
    module,
    params_key: str,
    arity: int | None = None,
    aggregate: str | None = None,
    edge: bool | str = False,
    stochastic: bool = False,
    context: bool = False,
) -> Op:
    """Wraps a ``flax.linen`` module as an op.

    The node function is ``module.apply({"params": params[params_key]}, payload,
    *operand_states)``; the arity is read from ``module.__call__(self, payload,
    *operand_states)`` unless given. With ``edge`` (``True`` for a method
    named ``edge``, or the method's name) and an ``aggregate``, the module's
    ``edge(self, payload, operand_state)`` method is the op's per-argument
    computation (:class:`~edbatch_jax.engine.ops.Op`'s ``edge``), sharing the
    module's parameters; define the submodules both methods use in
    ``setup``. With ``stochastic``, ``__call__`` takes a keyword ``key``:
    the node's PRNG key, or ``None`` (deterministic; see
    :class:`~edbatch_jax.engine.ops.Op`). With ``context``, ``__call__`` (and
    ``edge``) take a keyword ``context``: an
    :class:`~edbatch_jax.engine.ops.Context`.
    """

    def apply(params, method, *args, **kwargs):
        return module.apply({"params": params}, *args, method=method, **kwargs)

    return _module_op(module, params_key, arity, aggregate, edge, stochastic, apply, context)


def nnx_op(
    module,
    params_key: str,
    arity: int | None = None,
    aggregate: str | None = None,
    edge: bool | str = False,
    stochastic: bool = False,
    context: bool = False,
) -> Op:
    """Wraps a ``flax.nnx`` module instance as an op.

    The op reads ``params[params_key]``: the ``nnx.State`` of the module's
    ``nnx.Param`` variables (``nnx.state(module, nnx.Param)``, or the
    ``params_key`` entry of ``nnx.split(container, nnx.Param)`` for a
    container module holding every cell). The node function is
    ``nnx.merge(graphdef, params, rest)(payload, *operand_states)``, so the
    engine differentiates with respect to the ``nnx.State`` and an
    ``nnx.Optimizer`` can apply the gradients. The arity is read from
    ``type(module).__call__(self, payload, *operand_states)`` unless given.
    ``edge`` (``True``: a method named ``edge``, or its name) makes that
    method, ``edge(self, payload, operand_state)``, the per-argument
    computation of a variable-arity op, as in :func:`linen_op`; so do
    ``stochastic`` (a ``key`` keyword of ``__call__``) and ``context`` (a
    ``context`` keyword of ``__call__`` and ``edge``).
    """
    graphdef, _, rest = nnx.split(module, nnx.Param, ...)

    def apply(params, method, *args, **kwargs):
        merged = nnx.merge(graphdef, params, rest)
        return (merged if method is None else getattr(merged, method))(*args, **kwargs)

    return _module_op(module, params_key, arity, aggregate, edge, stochastic, apply, context)


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
      aggregate: op type name -> ``"sum"``, ``"mean"``, ``"max"`` or
        ``"softmax"`` for variable-arity cells (see :class:`Op`).
      edge: op type name -> ``True`` (or a method name) for the cells whose
        ``edge(payload, operand_state)`` method computes per argument
        (:func:`nnx_op`).
      stochastic: the op types whose cells draw random numbers (a ``key``
        keyword of ``__call__``; :func:`nnx_op`).
      context: the op types whose cells read context (a ``context`` keyword
        of ``__call__`` and ``edge``; :func:`nnx_op`).
      extra_ops: ops without parameters (e.g. a variadic sum node), passed
        through unchanged into :attr:`ops`.
    """

    def __init__(
        self,
        cells: Mapping[str, Any],
        *,
        arity: Mapping[str, int] | None = None,
        aggregate: Mapping[str, str] | None = None,
        edge: Mapping[str, bool | str] | None = None,
        stochastic: Sequence[str] = (),
        context: Sequence[str] = (),
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
        arity, aggregate, edge = dict(arity or {}), dict(aggregate or {}), dict(edge or {})
        ops = {
            name: nnx_op(
                cell,
                name,
                arity.get(name),
                aggregate.get(name),
                edge.get(name, False),
                name in stochastic,
                name in context,
            )
            for name, cell in cells.items()
        }
        # Built once, so every eb.run(cells.ops, ...) reuses the engine's compiled steps.
        self._ops = tuple({**ops, **extra_ops}.items())

    @classmethod
    def matching(cls, ops: Mapping[str, Any], cells: Mapping[str, Any]) -> NNXCells:
        """NNX ``cells`` for some of the op types of ``ops`` (say, a Linen model's).

        Each cell's op takes the arity and aggregate of ``ops[name]`` (and,
        where ``ops[name]`` has an ``edge`` function, the cell's method named
        ``edge``); the ops of ``ops`` without a cell (parameter-free ones)
        are passed through.
        """
        ops = as_ops(ops)
        missing = sorted(set(cells) - set(ops))
        if missing:
            raise OpError(f"cells {missing} have no op type in {sorted(ops)}")
        return cls(
            cells,
            arity={name: ops[name].arity for name in cells if ops[name].arity is not None},
            aggregate={name: ops[name].aggregate for name in cells if ops[name].aggregate is not None},
            edge={name: True for name in cells if ops[name].edge is not None},
            stochastic=[name for name in cells if ops[name].stochastic],
            context=[name for name in cells if ops[name].context],
            extra_ops={name: op for name, op in ops.items() if name not in cells},
        )

    @property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; a cell's op reads ``params[name]`` of ``nnx.split(self, nnx.Param)``."""
        return dict(self._ops)
