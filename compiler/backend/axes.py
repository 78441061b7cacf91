"""Ops over axes the lowering does not take directly, rewritten as ops over the last (or the
trailing) axes: a Softmax / LogSoftmax over one inner axis between two Transposes (opset 13
on; before, the axis starts a flattened 2-D view: Reshapes instead), a Reduce over inner axes
on a transposed input with the result transposed back, a Gather of indices computed at run
time along an inner axis (or of a 1-D tensor) as a Gather of rows between Transposes (or
Reshapes)."""

from __future__ import annotations

import numpy as np

from compiler.backend.products import Emit
from compiler.ir import Graph, TensorType

_REDUCES = ("ReduceMax", "ReduceMean", "ReduceSum")


def last_axis_forms(graph: Graph) -> None:
    """Afterwards every Softmax / LogSoftmax is over the last axis, and every ReduceMax /
    ReduceMean / ReduceSum with constant axes and keepdims reduces trailing axes."""
    opset = int(graph.meta.get("opset", 18))
    for name in graph.topo_order():
        op = graph.node(name)["op"]
        if op in ("Softmax", "LogSoftmax"):
            _softmax(graph, name, opset)
        elif op in _REDUCES:
            _reduce(graph, name)
        elif op == "Gather" and not graph.is_const(graph.node(name)["inputs"][1]):
            _gather(graph, name)


def _perm_to_end(rank: int, axes: list[int]) -> tuple[list[int], list[int]]:
    perm = [a for a in range(rank) if a not in axes] + axes
    return perm, [int(i) for i in np.argsort(perm)]


def _transposed_type(t: TensorType, perm: list[int]) -> TensorType:
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _softmax(graph: Graph, name: str, opset: int) -> None:
    nd = graph.node(name)
    x, y = nd["inputs"][0], nd["outputs"][0]
    xt = graph.values[x]
    rank = len(xt.shape)
    default = -1 if opset >= 13 else 1
    axis = int(nd["attrs"].get("axis", default)) % max(rank, 1)
    if rank == 0 or axis == rank - 1:
        return
    emit = Emit(graph, name, nd["order"])
    op, attrs = nd["op"], dict(nd["attrs"], axis=-1)
    graph.remove_node(name)
    if opset < 13:  # softmax over each row of the [prod(shape[:axis]), rest] view
        flat = (int(np.prod(xt.shape[:axis], dtype=np.int64)),
                int(np.prod(xt.shape[axis:], dtype=np.int64)))
        x2 = emit.shaped("Reshape", x, flat)
        y2 = emit(op, [x2], TensorType(xt.dtype, flat), attrs)
        emit.shaped("Reshape", y2, tuple(xt.shape), out=y)
        return
    perm, back = _perm_to_end(rank, [axis])
    tt = _transposed_type(xt, perm)
    x2 = emit("Transpose", [x], tt, {"perm": tuple(perm)})
    y2 = emit(op, [x2], tt, attrs)
    emit("Transpose", [y2], graph.values[y], {"perm": tuple(back)}, out=y)


def _reduce(graph: Graph, name: str) -> None:
    nd = graph.node(name)
    ins = nd["inputs"]
    x, y = ins[0], nd["outputs"][0]
    rank = len(graph.values[x].shape)
    if not int(nd["attrs"].get("keepdims", 1)) or rank < 2:
        return
    axes = nd["attrs"].get("axes")
    if len(ins) > 1 and ins[1]:
        arr = graph.const_array(ins[1]) if graph.is_const(ins[1]) else None
        if arr is None:
            return
        axes = [int(a) for a in arr.reshape(-1)]
    if not axes:
        return
    got = sorted({int(a) % rank for a in axes})
    if got == list(range(got[0], rank)):
        return  # trailing already
    emit = Emit(graph, name, nd["order"])
    attrs = {k: v for k, v in nd["attrs"].items() if k != "axes"}
    graph.remove_node(name)
    perm, back = _perm_to_end(rank, got)
    x2 = emit("Transpose", [x], _transposed_type(graph.values[x], perm), {"perm": tuple(perm)})
    ax = graph.add_const(graph.fresh_name(f"{name}_axes"),
                         np.arange(rank - len(got), rank, dtype=np.int64))
    r2 = emit(nd["op"], [x2, ax], _transposed_type(graph.values[y], perm), attrs)
    emit("Transpose", [r2], graph.values[y], {"perm": tuple(back)}, out=y)


def _gather(graph: Graph, name: str) -> None:
    nd = graph.node(name)
    data, idx = nd["inputs"]
    y = nd["outputs"][0]
    dt = graph.values[data]
    rank = len(dt.shape)
    if rank == 0:
        return
    axis = int(nd["attrs"].get("axis", 0))
    if not -rank <= axis < rank:
        return  # lower_gather names the problem
    axis %= rank
    if axis == 0 and rank >= 2:
        return
    emit = Emit(graph, name, nd["order"])
    graph.remove_node(name)
    ishape = tuple(graph.values[idx].shape)
    arr = graph.const_array(data) if graph.is_const(data) else None
    if rank == 1:  # rows of one element
        d2 = (dt.shape[0], 1)
        if arr is not None:
            rows = graph.add_const(graph.fresh_name(f"{data}_rows"), arr.reshape(d2))
        else:
            rows = emit.shaped("Reshape", data, d2)
        g = emit("Gather", [rows, idx], TensorType(dt.dtype, ishape + (1,)), {"axis": 0})
        if ishape:
            emit.shaped("Reshape", g, ishape, out=y)
        else:
            emit("Squeeze", [g], graph.values[y], out=y)
        return
    perm = [axis] + [a for a in range(rank) if a != axis]
    tt = _transposed_type(dt, perm)
    if arr is not None:
        dtp = graph.add_const(graph.fresh_name(f"{data}_T"),
                              np.ascontiguousarray(np.transpose(arr, perm)))
    else:
        dtp = emit("Transpose", [data], tt, {"perm": tuple(perm)})
    q = len(ishape)
    g = emit("Gather", [dtp, idx], TensorType(dt.dtype, ishape + tt.shape[1:]), {"axis": 0})
    # g's axes: the indices' q, then data's before `axis`, then data's after it
    back = list(range(q, q + axis)) + list(range(q)) + list(range(q + axis, q + rank - 1))
    emit("Transpose", [g], graph.values[y], {"perm": tuple(back)}, out=y)
