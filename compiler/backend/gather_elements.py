"""GatherElements along an axis of at most MAX_AXIS entries, as selections: y takes data's
slice r along the axis where the index is r (or r - n), for r = 0 .. n-1 (Equal, Or and
Where, the slice broadcast along the axis). The indices are read
at run time, so no static data movement does it; the cost grows with the axis length."""

from __future__ import annotations

import numpy as np

from compiler.backend.pad import ir_numpy_dtype
from compiler.backend.products import Emit
from compiler.errors import CompileError
from compiler.ir import Graph, TensorType

MAX_AXIS = 64


def gather_elements_as_selects(graph: Graph) -> None:
    """Afterwards no GatherElements remains (CompileError for an axis longer than
    MAX_AXIS)."""
    for name in graph.topo_order():
        if graph.node(name)["op"] == "GatherElements":
            _rewrite(graph, name)


def _rewrite(graph: Graph, name: str) -> None:
    nd = graph.node(name)
    data, idx = nd["inputs"][:2]
    y = nd["outputs"][0]
    dt, it = graph.values[data], graph.values[idx]
    rank = len(dt.shape)
    what = f"GatherElements (node {name!r})"
    if rank == 0 or len(it.shape) != rank:
        raise CompileError(f"{what}: data and indices of different ranks")
    axis = int(nd["attrs"].get("axis", 0)) % rank
    n = dt.shape[axis]
    if n > MAX_AXIS:
        raise CompileError(f"{what}: an axis of {n} entries (more than {MAX_AXIS}) is not "
                           "lowered yet")
    emit = Emit(graph, name, nd["order"])
    graph.remove_node(name)
    ishape = tuple(it.shape)
    part = tuple(1 if d == axis else ishape[d] for d in range(rank))
    idx_np = np.dtype(it.dtype) if it.dtype != "bool" else np.int64

    def piece(r: int) -> str:
        """data[..., r, ...] over the indices' extent, shape `part`."""
        starts = [0 if d != axis else r for d in range(rank)]
        ends = [ishape[d] if d != axis else r + 1 for d in range(rank)]
        c = [graph.add_const(graph.fresh_name(f"{name}_{k}"), np.array(v, np.int64))
             for k, v in (("starts", starts), ("ends", ends), ("axes", list(range(rank))))]
        return emit("Slice", [data] + c, TensorType(dt.dtype, part))

    def equals(r: int) -> str:
        """indices == r or indices == r - n (negative indices count from the end)."""
        ks = [graph.add_const(graph.fresh_name(f"{name}_k"), np.array(v, idx_np))
              for v in (r, r - n)]
        e = [emit("Equal", [idx, k], TensorType("bool", ishape)) for k in ks]
        return emit("Or", e, TensorType("bool", ishape))

    acc = graph.add_const(graph.fresh_name(f"{name}_zero"),
                          np.zeros((), ir_numpy_dtype(dt.dtype)))
    for r in range(n):
        acc = emit("Where", [equals(r), piece(r), acc], TensorType(dt.dtype, ishape),
                   out=y if r == n - 1 else None)
