"""The one IR: a graph of ops over values with static tensor types.

`Graph.g` is a networkx MultiDiGraph whose nodes are ops keyed by a unique name; there is one
edge u -> v (key = value name) for every value that op u produces and op v reads. Values that
no op produces (graph inputs, constants) have no edges. Node attributes:

- `op`: the ONNX op type for imported ops (later, lowered op names); `domain`: "" for ai.onnx;
- `inputs` / `outputs`: ordered value names ("" for an omitted optional input or output);
- `attrs`: name -> int | float | str | tuple | np.ndarray;
- `order`: a number that breaks ties in `topo_order` (original order in the source model).

Mutate through the methods (`add_node`, `remove_node`, `set_input`, `replace_uses`, ...) so the
edge set and the producer/consumer indexes stay in step with the node attributes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import numpy as np

from compiler.errors import CompileError

ConstKind = Literal["weight", "const"]


@dataclass(frozen=True)
class TensorType:
    """Element type (numpy-style name: float32, int64, bool, ...) and static shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass
class Const:
    """A constant value: `array` is None for a shape-only weight (timing-only compilation)."""

    array: np.ndarray | None
    kind: ConstKind = "const"


def const_kind(dtype: str, shape: Sequence[int]) -> ConstKind:
    """The frontend's rule: a float tensor of rank >= 2 is a weight, anything else a const."""
    return "weight" if len(shape) >= 2 and np.dtype(dtype).kind == "f" else "const"


def dtype_name(dtype: Any) -> str:
    """numpy dtype (or anything np.dtype accepts) -> the IR's dtype name."""
    return str(np.dtype(dtype))


class Graph:
    """A graph of ops over typed values; see the module docstring for the node attributes."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.g: nx.MultiDiGraph = nx.MultiDiGraph()
        self.values: dict[str, TensorType] = {}
        self.consts: dict[str, Const] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.meta: dict[str, Any] = {}
        self._producer: dict[str, str] = {}
        self._users: dict[str, list[str]] = {}
        self._next_order = 0
        self._names: dict[str, int] = {}

    # -- construction -------------------------------------------------------------------------

    def add_input(self, name: str, ty: TensorType) -> None:
        self.values[name] = ty
        self.inputs.append(name)

    def add_const(self, name: str, array: np.ndarray | None, *, ty: TensorType | None = None,
                  kind: ConstKind | None = None) -> str:
        """Add constant `name` (its type comes from `array`, or `ty` when shape-only)."""
        if array is not None:
            array = np.asarray(array)
            ty = TensorType(dtype_name(array.dtype), tuple(int(d) for d in array.shape))
        if ty is None:
            raise ValueError(f"const {name!r} needs an array or a type")
        self.values[name] = ty
        self.consts[name] = Const(array, kind or const_kind(ty.dtype, ty.shape))
        return name

    def fresh_name(self, base: str) -> str:
        """A value or node name not used yet, derived from `base` (deterministic)."""
        n = self._names.get(base, 0)
        while True:
            cand = base if n == 0 else f"{base}_{n}"
            n += 1
            if cand not in self.values and cand not in self.g and cand not in self.consts:
                self._names[base] = n
                return cand

    def add_node(self, name: str | None, op: str, inputs: Sequence[str], outputs: Sequence[str],
                 attrs: dict[str, Any] | None = None, *, domain: str = "",
                 types: Sequence[TensorType | None] | None = None,
                 order: float | None = None) -> str:
        """Add an op; `types` (one per output) are recorded in `values` when given."""
        if name is None:
            name = self.fresh_name(op.lower())
        if name in self.g:
            raise CompileError(f"duplicate node name {name!r}")
        if order is None:
            order = self._next_order
        self._next_order = max(self._next_order, int(order) + 1)
        self.g.add_node(name, op=op, inputs=list(inputs), outputs=list(outputs),
                        attrs=dict(attrs or {}), domain=domain, order=order)
        for i, out in enumerate(outputs):
            if not out:
                continue
            if out in self._producer:
                raise CompileError(f"value {out!r} is defined twice (nodes "
                                   f"{self._producer[out]!r} and {name!r})")
            self._producer[out] = name
            if types is not None and types[i] is not None:
                self.values[out] = types[i]  # type: ignore[assignment]
            for user in self._users.get(out, ()):
                self.g.add_edge(name, user, key=out)
        for inp in inputs:
            if inp:
                self._link(inp, name)
        return name

    def _link(self, value: str, user: str) -> None:
        users = self._users.setdefault(value, [])
        if user not in users:
            users.append(user)
        prod = self._producer.get(value)
        if prod is not None and not self.g.has_edge(prod, user, key=value):
            self.g.add_edge(prod, user, key=value)

    def _unlink(self, value: str, user: str) -> None:
        if value in self.g.nodes[user]["inputs"]:
            return  # still read through another input slot
        users = self._users.get(value, [])
        if user in users:
            users.remove(user)
        prod = self._producer.get(value)
        if prod is not None and self.g.has_edge(prod, user, key=value):
            self.g.remove_edge(prod, user, key=value)

    def remove_node(self, name: str) -> None:
        """Remove an op; the values it produced become undefined (their types stay until
        `prune`, so a replacement op may define them again)."""
        attrs = self.g.nodes[name]
        for out in attrs["outputs"]:
            if out and self._producer.get(out) == name:
                del self._producer[out]
        for inp in attrs["inputs"]:
            users = self._users.get(inp)
            if users and name in users:
                users.remove(name)
        self.g.remove_node(name)

    def set_input(self, node: str, index: int, value: str) -> None:
        ins = self.g.nodes[node]["inputs"]
        old = ins[index]
        ins[index] = value
        if old:
            self._unlink(old, node)
        if value:
            self._link(value, node)

    def set_inputs(self, node: str, values: Sequence[str]) -> None:
        old = list(self.g.nodes[node]["inputs"])
        self.g.nodes[node]["inputs"] = list(values)
        for v in old:
            if v:
                self._unlink(v, node)
        for v in values:
            if v:
                self._link(v, node)

    def replace_uses(self, old: str, new: str, *, outputs: bool = True) -> None:
        """Every op reading `old` reads `new` instead (and graph outputs, when `outputs`)."""
        for user in list(self._users.get(old, ())):
            ins = self.g.nodes[user]["inputs"]
            for i, v in enumerate(ins):
                if v == old:
                    ins[i] = new
            self._unlink(old, user)
            self._link(new, user)
        if outputs:
            self.outputs = [new if o == old else o for o in self.outputs]

    def forward(self, old: str, new: str) -> bool:
        """Make readers of `old` read `new`, keeping graph output names.

        Call after removing the op that produced `old`. When `old` is a graph output, `new` is
        renamed to `old` instead (possible only if an op produces `new` and `new` is not itself
        a graph output). Returns False, changing nothing, when neither works.
        """
        assert old not in self._producer, "remove the producer of `old` first"
        if old not in self.outputs:
            self.replace_uses(old, new, outputs=False)
            return True
        if new not in self._producer or new in self.outputs:
            return False
        self.rename_value(new, old)
        return True

    def rename_value(self, old: str, new: str) -> None:
        """Rename a value everywhere (definition, readers, graph inputs/outputs)."""
        ty = self.values.pop(old, None)
        if ty is not None:
            self.values[new] = ty
        if old in self.consts:
            self.consts = {new if k == old else k: c for k, c in self.consts.items()}
        self.inputs = [new if v == old else v for v in self.inputs]
        prod = self._producer.pop(old, None)
        if prod is not None:
            outs = self.g.nodes[prod]["outputs"]
            outs[outs.index(old)] = new
            self._producer[new] = prod
            for _, user, key in list(self.g.out_edges(prod, keys=True)):
                if key == old:
                    self.g.remove_edge(prod, user, key=old)
        self.replace_uses(old, new)
        self._users.pop(old, None)
        for u in list(self._users.get(new, ())):
            self._link(new, u)

    # -- queries ------------------------------------------------------------------------------

    def node(self, name: str) -> dict[str, Any]:
        return self.g.nodes[name]

    def nodes(self) -> Iterator[str]:
        return iter(self.g.nodes)

    def producer(self, value: str) -> str | None:
        """The op that defines `value`, or None for a graph input, const or undefined value."""
        return self._producer.get(value)

    def consumers(self, value: str) -> list[str]:
        """Ops that read `value` (each once, in the order they started reading it)."""
        return list(self._users.get(value, ()))

    def num_uses(self, value: str) -> int:
        """Readers of `value`, counting a graph output as one reader."""
        n = sum(self.g.nodes[u]["inputs"].count(value) for u in self._users.get(value, ()))
        return n + self.outputs.count(value)

    def const_array(self, value: str) -> np.ndarray | None:
        c = self.consts.get(value)
        return None if c is None else c.array

    def is_const(self, value: str) -> bool:
        return value in self.consts

    def topo_order(self) -> list[str]:
        """Ops in dependency order; ties go to the lower `order`, then the name."""
        indeg = {n: 0 for n in self.g.nodes}
        for _, v in self.g.edges():
            indeg[v] += 1
        heap = [(self.g.nodes[n]["order"], n) for n, d in indeg.items() if d == 0]
        heapq.heapify(heap)
        out: list[str] = []
        while heap:
            _, n = heapq.heappop(heap)
            out.append(n)
            for _, v in self.g.out_edges(n):
                indeg[v] -= 1
                if indeg[v] == 0:
                    heapq.heappush(heap, (self.g.nodes[v]["order"], v))
        if len(out) != len(indeg):
            stuck = sorted(n for n, d in indeg.items() if d > 0)
            raise CompileError(f"the graph has a cycle through node {stuck[0]!r}")
        return out

    # -- maintenance --------------------------------------------------------------------------

    def prune(self) -> None:
        """Remove ops whose outputs nothing reads, then consts nothing reads."""
        live = set(self.outputs)
        for n in reversed(self.topo_order()):
            attrs = self.g.nodes[n]
            if any(o and (o in live) for o in attrs["outputs"]):
                live.update(v for v in attrs["inputs"] if v)
            else:
                self.remove_node(n)
        for name in [c for c in self.consts if c not in live]:
            del self.consts[name]
            self.values.pop(name, None)
        defined = set(self.inputs) | set(self.consts) | set(self._producer)
        for name in [v for v in self.values if v not in defined]:
            del self.values[name]

    def copy(self) -> Graph:
        """An independent copy (const arrays are shared: passes never mutate an array)."""
        new = Graph(self.name)
        new.g = self.g.copy()
        for n in new.g.nodes:
            a = new.g.nodes[n]
            a["inputs"] = list(a["inputs"])
            a["outputs"] = list(a["outputs"])
            a["attrs"] = dict(a["attrs"])
        new.values = dict(self.values)
        new.consts = {k: Const(c.array, c.kind) for k, c in self.consts.items()}
        new.inputs = list(self.inputs)
        new.outputs = list(self.outputs)
        new.meta = dict(self.meta)
        new._producer = dict(self._producer)
        new._users = {k: list(v) for k, v in self._users.items()}
        new._next_order = self._next_order
        new._names = dict(self._names)
        return new

    def verify(self) -> None:
        """Raise CompileError unless every value is defined once, typed and static, and acyclic."""
        defined: dict[str, str] = {}

        def define(value: str, where: str) -> None:
            if value in defined:
                raise CompileError(f"value {value!r} is defined twice ({defined[value]} and "
                                   f"{where})")
            defined[value] = where

        for v in self.inputs:
            define(v, "graph input")
        for v in self.consts:
            define(v, "const")
        for n in self.g.nodes:
            for o in self.g.nodes[n]["outputs"]:
                if o:
                    define(o, f"node {n!r}")
        for v, where in defined.items():
            ty = self.values.get(v)
            if ty is None:
                raise CompileError(f"value {v!r} ({where}) has no type")
            if not isinstance(ty, TensorType) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ty.shape):
                raise CompileError(f"value {v!r} ({where}) has no static shape: {ty}")
        for v, c in self.consts.items():
            if c.array is not None and (tuple(c.array.shape) != self.values[v].shape
                                        or dtype_name(c.array.dtype) != self.values[v].dtype):
                raise CompileError(f"const {v!r}: data {c.array.dtype}{list(c.array.shape)} "
                                   f"does not match its type {self.values[v]}")
        for n in self.g.nodes:
            a = self.g.nodes[n]
            for v in a["inputs"]:
                if v and v not in defined:
                    raise CompileError(f"node {n!r} ({a['op']}) reads undefined value {v!r}")
            want = {(self._producer[v], v) for v in a["inputs"] if v in self._producer}
            have = {(u, k) for u, _, k in self.g.in_edges(n, keys=True)}
            if want != have:
                raise CompileError(f"node {n!r}: edges {sorted(have)} do not match its inputs")
        for v in self.outputs:
            if v not in defined:
                raise CompileError(f"graph output {v!r} is not defined")
        self.topo_order()

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, {self.g.number_of_nodes()} ops, "
                f"{len(self.consts)} consts)")


def iter_ops(graph: Graph, op: str | Iterable[str]) -> list[str]:
    """Names of the ops of the given type(s), in topological order."""
    ops = {op} if isinstance(op, str) else set(op)
    return [n for n in graph.topo_order() if graph.g.nodes[n]["op"] in ops]


# The text form lives in its own module; it is part of this module's API.
from compiler.ir_text import parse_ir, print_ir  # noqa: E402

__all__ = ["Const", "Graph", "TensorType", "const_kind", "dtype_name", "iter_ops",
           "parse_ir", "print_ir"]
