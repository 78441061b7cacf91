"""Small helpers the pattern-matching passes share (no pass lives here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from compiler.ir import Graph


def op_of(graph: Graph, value: str, op: str | tuple[str, ...]) -> str | None:
    """The node producing `value` if its op is `op` (or one of them), else None."""
    n = graph.producer(value)
    if n is None:
        return None
    ops = (op,) if isinstance(op, str) else op
    return n if graph.node(n)["op"] in ops else None


def scalar(graph: Graph, value: str) -> float | None:
    """The value of a const whose elements are all equal (any shape), else None."""
    arr = graph.const_array(value)
    if arr is None or arr.size == 0:
        return None
    flat = arr.reshape(-1)
    if not np.all(flat == flat[0]):
        return None
    return float(flat[0])


def is_scalar(graph: Graph, value: str, want: float, rel: float = 1e-3) -> bool:
    got = scalar(graph, value)
    return got is not None and abs(got - want) <= rel * abs(want) + 1e-12


def only_user(graph: Graph, value: str) -> str | None:
    """The single op reading `value` once, if `value` has no other reader (nor is an output)."""
    if graph.num_uses(value) != 1:
        return None
    users = graph.consumers(value)
    return users[0] if users else None


def other(node_inputs: list[str], value: str) -> str | None:
    """For a binary op reading `value`, the other operand (None if it reads `value` twice)."""
    if len(node_inputs) != 2 or value not in node_inputs:
        return None
    a, b = node_inputs
    if a == b:
        return None
    return b if a == value else a


def reduce_axes(graph: Graph, node: str) -> tuple[int, ...] | None:
    """A Reduce* op's axes (attribute before opset 18, const input after), or None if unknown."""
    a = graph.node(node)
    if len(a["inputs"]) > 1 and a["inputs"][1]:
        arr = graph.const_array(a["inputs"][1])
        return None if arr is None else tuple(int(x) for x in arr.reshape(-1))
    axes = a["attrs"].get("axes")
    return None if axes is None else tuple(int(x) for x in axes)


def is_last_axis_reduce(graph: Graph, node: str, rank: int) -> bool:
    a: dict[str, Any] = graph.node(node)
    axes = reduce_axes(graph, node)
    return (axes is not None and len(axes) == 1 and axes[0] % rank == rank - 1
            and int(a["attrs"].get("keepdims", 1)) == 1)


def eps_sqrt(graph: Graph, value: str) -> tuple[str | None, float, str, str] | None:
    """`Sqrt(value + eps)` with eps a scalar constant, each op the only reader of its input:
    (the Add node, eps, the Sqrt node, the Sqrt's output); `Sqrt(value)` (an epsilon the
    exporter dropped, as the dynamo exporter does with Helium's 1e-8): (None, 0.0, ...); else
    None."""
    add = only_user(graph, value)
    if add is not None and graph.node(add)["op"] == "Sqrt":
        return None, 0.0, add, graph.node(add)["outputs"][0]
    if add is None or graph.node(add)["op"] != "Add":
        return None
    eps_v = other(graph.node(add)["inputs"], value)
    eps = None if eps_v is None else scalar(graph, eps_v)
    if eps is None or graph.values[eps_v].size != 1:
        return None
    sqrt = only_user(graph, graph.node(add)["outputs"][0])
    if sqrt is None or graph.node(sqrt)["op"] != "Sqrt":
        return None
    return add, eps, sqrt, graph.node(sqrt)["outputs"][0]


def remove_all(graph: Graph, nodes: list[str]) -> None:
    for n in nodes:
        if n in graph.g:
            graph.remove_node(n)


def vector_const(graph: Graph, value: str, n: int) -> bool:
    """True if `value` is a const broadcasting along the last axis only, with last dim `n`."""
    if not graph.is_const(value):
        return False
    shape = graph.values[value].shape
    return bool(shape) and shape[-1] == n and all(d == 1 for d in shape[:-1])


def as_vector(graph: Graph, value: str, n: int) -> str:
    """`value` (a vector_const) as a rank-1 [n] const, adding a reshaped copy if needed."""
    from compiler.ir import TensorType

    ty = graph.values[value]
    if ty.shape == (n,):
        return value
    arr = graph.const_array(value)
    return graph.add_const(graph.fresh_name(f"{value}_1d"),
                           None if arr is None else arr.reshape(n),
                           ty=TensorType(ty.dtype, (n,)), kind=graph.consts[value].kind)


def affine_tail(graph: Graph, value: str, n: int, *, with_bias: bool
                ) -> tuple[str | None, str | None, str, list[str]]:
    """Follow `value` through an optional Mul by a [n] const and (if `with_bias`) an Add of a
    [n] const. Returns (scale, bias, final value, matched nodes)."""
    scale = bias = None
    nodes: list[str] = []
    mul = only_user(graph, value)
    if mul is not None and graph.node(mul)["op"] == "Mul":
        g = other(graph.node(mul)["inputs"], value)
        if g is not None and vector_const(graph, g, n):
            scale = g
            nodes.append(mul)
            value = graph.node(mul)["outputs"][0]
    if with_bias:
        add = only_user(graph, value)
        if add is not None and graph.node(add)["op"] == "Add":
            b = other(graph.node(add)["inputs"], value)
            if b is not None and vector_const(graph, b, n):
                bias = b
                nodes.append(add)
                value = graph.node(add)["outputs"][0]
    return scale, bias, value, nodes


def ones_vector(graph: Graph, dtype: str, n: int) -> str:
    return graph.add_const(graph.fresh_name("ones"), np.ones(n, dtype=dtype))


def f32(x: float) -> float:
    """`x` rounded to float32 and back, printed shortest (ONNX float attributes are float32)."""
    return float(str(np.float32(x)))


def replace_each(graph: Graph, op: str, decompose: Callable[[Graph, str], None]) -> Graph:
    """Call decompose(graph, node) on every node of ai.onnx op `op` (in topological order),
    then drop what no longer feeds an output."""
    for n in graph.topo_order():
        if n in graph.g and graph.node(n)["op"] == op and not graph.node(n)["domain"]:
            decompose(graph, n)
    graph.prune()
    return graph
