"""PQ-trees: orders of a universe in which given subsets are consecutive.

A PQ-tree (Booth & Lueker, "Testing for the consecutive ones property, interval
graphs, and graph planarity using PQ-tree algorithms", J. Comput. Syst. Sci.
13(3), 1976) represents a set of permutations of a finite universe. Its leaves
are the items; every inner node is either

* a *P-node*, written ``(a b c)``, whose children may be permuted freely, or
* a *Q-node*, written ``[a b c]``, whose children keep their order or are
  reversed as a whole.

The permutations the tree *admits* are the frontiers (leaves read left to
right) of all trees obtained this way. The tree over a fresh universe is one
P-node: every permutation is admitted. :meth:`PQTree.reduce` adds a constraint
"this subset is consecutive" and restructures the tree so that it admits
exactly the permutations satisfying every constraint added so far, or reports
that none does. This solves the consecutive-ones problem: the memory-layout
planner uses it to find an order of items in a buffer in which many subsets are
each contiguous.

The reduction is Booth & Lueker's: *bubble* up from the leaves of the subset to
the root of the pertinent subtree (the lowest node whose frontier holds the
whole subset), then rewrite the pertinent nodes bottom-up with the templates
L1, P0-P6 and Q0-Q3. Each pertinent node is *full* (every leaf below it is in
the subset), *partial* (some are) or *empty*; a partial node is rewritten into a
Q-node with its full children at one end.

Example::

  tree = PQTree(range(5))
  tree.reduce([0, 1, 2])    # True
  tree.reduce([2, 3])       # True
  tree                      # PQTree((4 [(0 1) 2 3]))
  tree.frontier()           # e.g. [4, 0, 1, 2, 3]
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from typing import NamedTuple

from edbatch_jax.errors import EdbatchError

__all__ = ["PQTree", "PQTreeError"]

# Node kinds.
_LEAF, _PNODE, _QNODE = 0, 1, 2
# Labels of pertinent nodes (empty nodes carry no label).
_EMPTY, _PARTIAL, _FULL = 0, 1, 2


class PQTreeError(EdbatchError):
    """Bad input: a repeated item in a universe, or an item not in the universe."""


class _Cell:
    """A union-find cell naming the parent of a group of siblings.

    Every inner node owns a cell and its children point at it. When the children
    of a Q-node are spliced into another Q-node, the two cells are united in
    near-constant time instead of re-pointing every moved child; the
    representative of a set names the current parent.
    """

    __slots__ = ("link", "node", "rank")

    def __init__(self, node: _Node):
        self.link: _Cell | None = None
        self.node = node
        self.rank = 0


class _Node:
    """A leaf, P-node or Q-node.

    Attributes:
      kind: ``_LEAF``, ``_PNODE`` or ``_QNODE``.
      item: the item of a leaf.
      up: the parent's cell (see :class:`_Cell`), ``None`` at the root.
      nb0, nb1: the neighbours of a child of a Q-node. The two links are
        unordered: walking along siblings always takes the link that does not
        lead back, so a Q-node is reversed by swapping ``end0`` and ``end1``.
      kids: the children of a P-node (an insertion-ordered set).
      end0, end1: the endmost children of a Q-node.
      count: the number of children of a Q-node.
      cell: the cell its children point at (inner nodes only).
    """

    __slots__ = ("kind", "item", "up", "nb0", "nb1", "kids", "end0", "end1", "count", "cell")

    def __init__(self, kind: int, item: Hashable = None):
        self.kind = kind
        self.item = item
        self.up: _Cell | None = None
        self.nb0: _Node | None = None
        self.nb1: _Node | None = None
        self.kids: dict[_Node, None] | None = {} if kind == _PNODE else None
        self.end0: _Node | None = None
        self.end1: _Node | None = None
        self.count = 0
        self.cell = None if kind == _LEAF else _Cell(self)


# --------------------------------------------------------------------------
# Structure helpers.


def _find(cell: _Cell) -> _Cell:
    """The representative of a cell's set (with path halving)."""
    while cell.link is not None:
        nxt = cell.link
        if nxt.link is not None:
            cell.link = nxt = nxt.link
        cell = nxt
    return cell


def _parent(node: _Node) -> _Node | None:
    """The parent of a node, ``None`` at the root."""
    cell = node.up
    if cell is None:
        return None
    if cell.link is not None:
        cell = node.up = _find(cell)
    return cell.node


def _unite(keep: _Node, gone: _Node) -> None:
    """Makes ``keep`` the parent of every child of ``gone`` (union by rank)."""
    a, b = _find(keep.cell), _find(gone.cell)
    if a.rank < b.rank:
        a, b = b, a
    b.link = a
    if a.rank == b.rank:
        a.rank += 1
    a.node = keep
    keep.cell = a


def _children(node: _Node) -> list[_Node]:
    """The children of an inner node, in order (from ``end0`` for a Q-node)."""
    if node.kind == _PNODE:
        return list(node.kids)
    out, prev, cur = [], None, node.end0
    while cur is not None:
        out.append(cur)
        prev, cur = cur, _step(cur, prev)
    return out


def _num_children(node: _Node) -> int:
    return len(node.kids) if node.kind == _PNODE else node.count


def _step(node: _Node, prev: _Node | None) -> _Node | None:
    """The sibling of ``node`` away from ``prev`` (from an end: ``prev=None``)."""
    return node.nb1 if node.nb0 is prev else node.nb0


def _relink(node: _Node, old: _Node | None, new: _Node | None) -> None:
    """Replaces the sibling link ``old`` (``None``: the free one) by ``new``."""
    if node.nb0 is old:
        node.nb0 = new
    else:
        node.nb1 = new


def _push_end(q: _Node, node: _Node, side: int) -> None:
    """Adds ``node`` as the new ``end1`` (side 1) or ``end0`` (side 0) of ``q``."""
    if side:
        old, q.end1 = q.end1, node
    else:
        old, q.end0 = q.end0, node
    node.nb0, node.nb1 = old, None
    _relink(old, None, node)
    node.up = q.cell
    q.count += 1


def _fill_pair(q: _Node, first: _Node, last: _Node) -> None:
    """Gives the childless Q-node ``q`` the two children ``[first last]``."""
    q.end0, q.end1, q.count = first, last, 2
    first.nb0, first.nb1 = None, last
    last.nb0, last.nb1 = first, None
    first.up = last.up = q.cell


def _group(nodes: list[_Node]) -> _Node:
    """The only node of ``nodes``, or a new P-node over them."""
    if len(nodes) == 1:
        return nodes[0]
    p = _Node(_PNODE)
    for node in nodes:
        p.kids[node] = None
        node.up = p.cell
    return p


def _splice(q: _Node, child: _Node, full_nb: _Node | None) -> None:
    """Replaces the partial Q-node ``child`` of ``q`` by its own children.

    A partial Q-node keeps its full children at ``end1``; they are put next to
    ``full_nb``, the sibling of ``child`` on the full side (``None``: ``child``
    is an end of ``q`` and the full side is that end).
    """
    empty_nb = child.nb1 if child.nb0 is full_nb else child.nb0
    for end, nb in ((child.end1, full_nb), (child.end0, empty_nb)):
        _relink(end, None, nb)
        if nb is None:
            if q.end0 is child:
                q.end0 = end
            else:
                q.end1 = end
        else:
            _relink(nb, child, end)
    q.count += child.count - 1
    _unite(q, child)


def _join(first: _Node, second: _Node) -> None:
    """Appends the children of partial ``second``, reversed, to partial ``first``.

    Both keep their full children at ``end1``; afterwards the full children of
    both meet in the middle of ``first`` (template P6).
    """
    a, b = first.end1, second.end1
    _relink(a, None, b)
    _relink(b, None, a)
    first.end1 = second.end0
    first.count += second.count
    _unite(first, second)


# --------------------------------------------------------------------------
# Template matching on labels (shared by the check and the rewrite).


def _match_q_end(
    q: _Node, label: dict[_Node, int], num_pertinent: int
) -> tuple[int, _Node | None, _Node | None] | None:
    """Matches a non-root Q-node: pertinent children ``full* partial?`` at one end.

    Returns:
      ``(side, partial, full_nb)`` where ``side`` is the end (0 or 1) holding
      the full children, ``partial`` the partial child or ``None``, and
      ``full_nb`` the neighbour of ``partial`` toward that end; ``None`` if the
      pertinent children do not have this shape.
    """
    for side in (1, 0):
        prev, cur = None, (q.end1 if side else q.end0)
        seen = 0
        while cur is not None and label.get(cur) == _FULL:
            seen += 1
            prev, cur = cur, _step(cur, prev)
        partial = None
        if cur is not None and label.get(cur) == _PARTIAL:
            seen += 1
            partial = cur
        if seen and seen == num_pertinent:
            return side, partial, prev
    return None


def _match_q_root(
    q: _Node, label: dict[_Node, int], fulls: list[_Node], partials: list[_Node]
) -> list[tuple[_Node, _Node]] | None:
    """Matches a Q-node as pertinent root: pertinent children consecutive, as
    ``partial? full* partial?``.

    Returns:
      The ``(partial, full_nb)`` pairs to splice when there are full children
      (``full_nb`` the adjacent full child), ``[]`` for two adjacent partial
      children and nothing else, or ``None`` if there is no match.
    """
    num_pertinent = len(fulls) + len(partials)
    if not fulls:
        a, b = partials
        return [] if a.nb0 is b or a.nb1 is b else None
    start, seen, splices = fulls[0], 1, []
    for first in (start.nb0, start.nb1):
        prev, cur = start, first
        while cur is not None and label.get(cur) == _FULL:
            seen += 1
            prev, cur = cur, _step(cur, prev)
        if cur is not None and label.get(cur) == _PARTIAL:
            seen += 1
            splices.append((cur, prev))
    return splices if seen == num_pertinent else None


def _nonroot_label(node: _Node, label: dict[_Node, int], fulls: list[_Node], partials: list[_Node]) -> int | None:
    """The label of a pertinent node below the pertinent root, ``None`` if no
    template applies."""
    if len(fulls) == _num_children(node):
        return _FULL  # P1 / Q1
    if len(partials) > 1:
        return None
    if node.kind == _PNODE:
        return _PARTIAL  # P3 / P5
    if _match_q_end(node, label, len(fulls) + len(partials)) is None:
        return None
    return _PARTIAL  # Q2


def _root_matches(node: _Node, label: dict[_Node, int], fulls: list[_Node], partials: list[_Node]) -> bool:
    """Whether a template applies to the pertinent root."""
    if len(partials) > 2:
        return False
    if len(fulls) == _num_children(node) or node.kind == _PNODE:
        return True  # P1 / Q1, or P2 / P4 / P6
    return _match_q_root(node, label, fulls, partials) is not None  # Q2 / Q3


class _Plan(NamedTuple):
    """The labelling of the pertinent subtree, made before any change.

    Attributes:
      order: the partial nodes below the pertinent root, children first.
      root: the pertinent root.
      label: ``_FULL`` or ``_PARTIAL`` per labelled node.
      fulls: per pertinent node, its full children.
      partials: per pertinent node, its partial children.
    """

    order: list[_Node]
    root: _Node
    label: dict[_Node, int]
    fulls: dict[_Node, list[_Node]]
    partials: dict[_Node, list[_Node]]


_NONE: list = []  # shared empty child list (never mutated)


# --------------------------------------------------------------------------


class PQTree:
    """A PQ-tree over a universe of distinct hashable items.

    ``reduce`` is a *safe* reduction: it first labels the pertinent subtree and
    checks that a template applies at every pertinent node, without changing
    the tree, and only then rewrites it. A rejected constraint therefore leaves
    the tree exactly as it was.

    Cost: a reduction touches only the pertinent subtree (the paths from the
    subset's leaves to their lowest common ancestor) and, for a Q-node, its
    pertinent children; parents of spliced Q-node children are kept with a
    union-find structure. It never scans the whole tree. Over a sequence of
    successful reductions this is Booth & Lueker's O(n + m + sum |S|) bound (up
    to the inverse-Ackermann factor of the union-find), for n items and m
    subsets S.

    Args:
      universe: the items, distinct and hashable; may be empty.

    Raises:
      PQTreeError: if an item is repeated.
    """

    def __init__(self, universe: Iterable[Hashable]):
        self._leaves: dict[Hashable, _Node] = {}
        for item in universe:
            if item in self._leaves:
                raise PQTreeError(f"item {item!r} appears twice in the universe")
            self._leaves[item] = _Node(_LEAF, item)
        self._root: _Node | None = None
        if len(self._leaves) == 1:
            (self._root,) = self._leaves.values()
        elif self._leaves:
            self._root = _group(list(self._leaves.values()))

    @classmethod
    def from_blocks(cls, universe: Iterable[Hashable], blocks: Iterable[Iterable[Hashable]]) -> PQTree:
        """A tree over ``universe`` in which each of the disjoint ``blocks`` is consecutive.

        The same tree as ``PQTree(universe)`` followed by ``reduce(block)`` for
        every block in turn, built in one pass over the items instead: the root
        P-node holds the items of no block of two or more, in universe order,
        then one P-node per such block, in block order.

        Args:
          universe: the items, distinct and hashable.
          blocks: pairwise disjoint collections of items of the universe;
            repeats inside a block are ignored.

        Returns:
          A new :class:`PQTree`.

        Raises:
          PQTreeError: if an item is repeated in the universe, is not in it, or
            lies in two blocks.
        """
        tree = cls(universe)
        leaves, root = tree._leaves, tree._root
        placed: set[Hashable] = set()
        for block in blocks:
            items = dict.fromkeys(block)
            for item in items:
                if item not in leaves:
                    raise PQTreeError(f"item {item!r} is not in the universe")
                if item in placed:
                    raise PQTreeError(f"item {item!r} lies in two blocks")
            placed.update(items)
            if not 2 <= len(items) < len(leaves):
                continue  # always consecutive: the tree stays as it is (as reduce would leave it)
            nodes = [leaves[item] for item in items]
            for node in nodes:
                del root.kids[node]
            group = _group(nodes)
            root.kids[group] = None
            group.up = root.cell
        return tree

    def __len__(self) -> int:
        return len(self._leaves)

    def __contains__(self, item: object) -> bool:
        return item in self._leaves

    def __repr__(self) -> str:
        return f"PQTree({self._render()})"

    # ---------------------------------------------------------------- queries

    def frontier(self) -> list:
        """One admitted order: the leaves from left to right.

        Returns:
          A list of all items, in which every accepted subset is consecutive.
        """
        out = []
        stack = [self._root] if self._root is not None else []
        while stack:
            node = stack.pop()
            if node.kind == _LEAF:
                out.append(node.item)
            else:
                stack.extend(reversed(_children(node)))
        return out

    def orders(self) -> Iterator[list]:
        """All admitted orders, each once. Only for small trees (this is the
        product of factorials of P-node degrees, times 2 per Q-node).

        Yields:
          Lists of all items, one per admitted permutation.
        """
        if self._root is None:
            yield []
            return
        for order in _orders(self._root):
            yield list(order)

    def copy(self) -> PQTree:
        """An independent copy of the tree.

        Returns:
          A new :class:`PQTree` admitting the same orders.
        """
        new = PQTree(())
        if self._root is None:
            return new
        new._root = _Node(self._root.kind, self._root.item)
        stack = [(self._root, new._root)]
        while stack:
            old, twin = stack.pop()
            if old.kind == _LEAF:
                new._leaves[old.item] = twin
                continue
            old_kids = _children(old)
            kids = [_Node(kid.kind, kid.item) for kid in old_kids]
            stack.extend(zip(old_kids, kids))
            if old.kind == _PNODE:
                for kid in kids:
                    twin.kids[kid] = None
                    kid.up = twin.cell
            else:
                twin.end0, twin.end1, twin.count = kids[0], kids[0], 1
                kids[0].up = twin.cell
                for kid in kids[1:]:
                    _push_end(twin, kid, 1)
        return new

    # -------------------------------------------------------------- reduction

    def reduce(self, subset: Iterable[Hashable]) -> bool:
        """Adds the constraint "``subset`` is consecutive".

        Args:
          subset: items of the universe; repeats are ignored.

        Returns:
          ``True`` if the constraint is compatible with those accepted so far (the
          tree now admits exactly the orders satisfying all of them); ``False``
          otherwise, and the tree is left unchanged. Subsets of at most one item
          and the whole universe are always accepted.

        Raises:
          PQTreeError: if an item is not in the universe (the tree is unchanged).
        """
        leaves: dict[_Node, None] = {}
        for item in subset:
            leaf = self._leaves.get(item)
            if leaf is None:
                raise PQTreeError(f"item {item!r} is not in the universe")
            leaves[leaf] = None
        if len(leaves) <= 1 or len(leaves) == len(self._leaves):
            return True
        plan = self._plan(list(leaves))
        if plan is None:
            return False
        self._rewrite(plan)
        return True

    def _plan(self, leaves: list[_Node]) -> _Plan | None:
        """Labels the pertinent subtree and checks the templates, without changes.

        Args:
          leaves: the distinct leaves of the subset, at least two and not all.

        Returns:
          The labelling, or ``None`` if some pertinent node matches no template.
        """
        label: dict[_Node, int] = {}
        fulls: dict[_Node, list[_Node]] = {}  # pertinent node -> its full children
        partials: dict[_Node, list[_Node]] = {}
        # Bubble. The leaves are full; their parents start the climb.
        climb: deque[_Node] = deque()
        for leaf in leaves:
            label[leaf] = _FULL
            cell = leaf.up
            if cell.link is not None:
                cell = leaf.up = _find(cell)
            kids = fulls.get(cell.node)
            if kids is None:
                fulls[cell.node] = [leaf]
                climb.append(cell.node)
            else:
                kids.append(leaf)
        # Climb until a single node is left on the queue; it is an ancestor of
        # all the leaves (the pertinent root or a little above). `waiting` counts
        # per node its inner children climbed through: for nodes up to the
        # pertinent root, the pertinent inner children not yet labelled.
        waiting = dict.fromkeys(climb, 0)
        parents: dict[_Node, _Node] = {}
        while len(climb) > 1:
            node = climb.popleft()
            parent = _parent(node)
            if parent is None:  # the root: wait for the others to climb to it
                climb.append(node)
                continue
            parents[node] = parent
            if parent in waiting:
                waiting[parent] += 1
            else:
                waiting[parent] = 1
                climb.append(parent)

        # Label bottom-up: a node is ready once all its pertinent children are.
        target = len(leaves)
        leaf_count = {node: len(kids) for node, kids in fulls.items()}
        order: list[_Node] = []
        ready = deque(node for node, n in waiting.items() if not n)
        while ready:
            node = ready.popleft()
            kid_fulls, kid_partials = fulls.get(node, _NONE), partials.get(node, _NONE)
            if leaf_count[node] == target:
                if not _root_matches(node, label, kid_fulls, kid_partials):
                    return None
                return _Plan(order, node, label, fulls, partials)
            node_label = _nonroot_label(node, label, kid_fulls, kid_partials)
            if node_label is None:
                return None
            label[node] = node_label
            if node_label == _PARTIAL:
                order.append(node)
            parent = parents[node]
            leaf_count[parent] = leaf_count.get(parent, 0) + leaf_count[node]
            (fulls if node_label == _FULL else partials).setdefault(parent, []).append(node)
            waiting[parent] -= 1
            if not waiting[parent]:
                ready.append(parent)
        raise AssertionError("the pertinent root was not reached")

    def _rewrite(self, plan: _Plan) -> None:
        """Applies the templates along a plan of :meth:`_plan` (which matched).

        Full nodes are left as they are (L1, P1, Q1), so only the partial nodes
        and the pertinent root are rewritten, children first.
        """
        label = plan.label
        moved: dict[_Node, _Node] = {}  # partial node -> the node in its place
        for node in plan.order:
            kid_partials = [moved[kid] for kid in plan.partials.get(node, _NONE)]
            result = self._rewrite_partial(node, label, plan.fulls.get(node, _NONE), kid_partials)
            moved[node] = result
            if result is not node:
                del label[node]
                label[result] = _PARTIAL
        root = plan.root
        kid_partials = [moved[kid] for kid in plan.partials.get(root, _NONE)]
        self._rewrite_root(root, label, plan.fulls.get(root, _NONE), kid_partials)

    def _rewrite_partial(
        self, node: _Node, label: dict[_Node, int], fulls: list[_Node], partials: list[_Node]
    ) -> _Node:
        """Applies P3, P5 or Q2 to a partial node below the pertinent root.

        Returns:
          The node now in its place: a Q-node with its full children at ``end1``.
        """
        if node.kind == _QNODE:  # Q2
            side, partial, full_nb = _match_q_end(node, label, len(fulls) + len(partials))
            if side == 0:
                node.end0, node.end1 = node.end1, node.end0
            if partial is not None:
                _splice(node, partial, full_nb)
            return node
        kids = node.kids
        for kid in fulls:
            del kids[kid]
        if not partials:  # P3: [empties fulls]
            full_group = _group(fulls)
            q = _Node(_QNODE)
            self._replace(node, q)
            _fill_pair(q, self._take_rest(node), full_group)
            return q
        # P5: [empties partial's-children fulls]
        (q,) = partials
        del kids[q]
        self._replace(node, q)
        if fulls:
            _push_end(q, _group(fulls), 1)
        if kids:
            _push_end(q, self._take_rest(node), 0)
        return q

    def _rewrite_root(self, node: _Node, label: dict[_Node, int], fulls: list[_Node], partials: list[_Node]) -> None:
        """Applies P1, P2, P4, P6, Q1, Q2 or Q3 to the pertinent root."""
        if len(fulls) == _num_children(node) or (node.kind == _QNODE and not partials):
            return  # P1 / Q1, or Q2 / Q3 with the full children already in place
        if node.kind == _QNODE:  # Q2 / Q3
            splices = _match_q_root(node, label, fulls, partials)
            if fulls:
                for partial, full_nb in splices:
                    _splice(node, partial, full_nb)
            else:
                a, b = partials
                a_full_end = a.end1
                _splice(node, a, b)
                _splice(node, b, a_full_end)
            return
        kids = node.kids
        for kid in fulls:
            del kids[kid]
        if not partials:  # P2: (empties (fulls))
            full_group = _group(fulls)
            kids[full_group] = None
            full_group.up = node.cell
            return
        q = partials[0]
        if fulls:  # P4 / P6: the full children go to the full end of a partial.
            _push_end(q, _group(fulls), 1)
        if len(partials) == 2:  # P6: [q's-children fulls other's-children-reversed]
            del kids[partials[1]]
            _join(q, partials[1])
        if len(kids) == 1:
            del kids[q]
            self._replace(node, q)

    def _replace(self, old: _Node, new: _Node) -> None:
        """Puts the detached node ``new`` in the place of ``old``, detaching it."""
        parent = _parent(old)
        new.up = old.up
        new.nb0 = new.nb1 = None
        if parent is None:
            self._root = new
        elif parent.kind == _PNODE:
            del parent.kids[old]
            parent.kids[new] = None
        else:
            new.nb0, new.nb1 = old.nb0, old.nb1
            for nb in (old.nb0, old.nb1):
                if nb is not None:
                    _relink(nb, old, new)
            if parent.end0 is old:
                parent.end0 = new
            if parent.end1 is old:
                parent.end1 = new
        old.up = old.nb0 = old.nb1 = None

    @staticmethod
    def _take_rest(pnode: _Node) -> _Node:
        """The remaining children of a detached P-node: the node itself if it has
        several, else its only child (taken out of it)."""
        if len(pnode.kids) > 1:
            return pnode
        (kid,) = pnode.kids
        del pnode.kids[kid]
        return kid

    # --------------------------------------------------------------- internals

    def _render(self) -> str:
        """The tree as text: P-nodes ``(a b)``, Q-nodes ``[a b c]`` from ``end0``."""
        if self._root is None:
            return ""
        parts = []
        stack: list = [self._root]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                parts.append(node)
            elif node.kind == _LEAF:
                parts.append(repr(node.item))
            else:
                opening, closing = ("(", ")") if node.kind == _PNODE else ("[", "]")
                parts.append(opening)
                stack.append(closing)
                kids = _children(node)
                for i, kid in enumerate(reversed(kids)):
                    stack.append(kid)
                    if i < len(kids) - 1:
                        stack.append(" ")
        return "".join(parts)

    def _check(self) -> None:
        """Asserts the structural invariants (for tests).

        Raises:
          AssertionError: if a parent link, sibling link, child count or node
            degree is inconsistent, or the leaves are not exactly the universe.
        """
        if self._root is None:
            assert not self._leaves
            return
        assert self._root.up is None, "the root has a parent"
        seen = set()
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.kind == _LEAF:
                assert self._leaves.get(node.item) is node, f"stray leaf {node.item!r}"
                seen.add(node.item)
                continue
            kids = _children(node)
            if node.kind == _PNODE:
                assert len(kids) >= 2, "P-node with fewer than 2 children"
            else:
                assert len(kids) >= 3, "Q-node with fewer than 3 children"
                assert node.count == len(kids), "stale Q-node child count"
                assert node.end1 is kids[-1], "bad Q-node end"
                for i, kid in enumerate(kids):
                    left = kids[i - 1] if i else None
                    right = kids[i + 1] if i + 1 < len(kids) else None
                    assert {id(kid.nb0), id(kid.nb1)} == {id(left), id(right)}, "bad sibling link"
            for kid in kids:
                assert _parent(kid) is node, "bad parent link"
            stack.extend(kids)
        assert seen == set(self._leaves), "leaves differ from the universe"


def _orders(node: _Node) -> Iterator[tuple]:
    """All frontiers of the subtree at ``node`` (recursive; small trees only)."""
    if node.kind == _LEAF:
        yield (node.item,)
        return
    kids = _children(node)
    kid_orders = {kid: list(_orders(kid)) for kid in kids}
    if node.kind == _PNODE:
        arrangements: Iterable = itertools.permutations(kids)
    else:
        arrangements = (kids, kids[::-1])
    for arrangement in arrangements:
        for pieces in itertools.product(*(kid_orders[kid] for kid in arrangement)):
            yield tuple(itertools.chain.from_iterable(pieces))
