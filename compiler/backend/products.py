"""Matrix products in forms the lowering does not take directly, rewritten into ones it does:
Gemm ops the canonicalizer left (a transposed A, an alpha, a C computed at run time, ...) as
Transpose, MatMul, Mul by a scalar and Add; MatMul of activations with a 1-D operand or
broadcast batch dimensions as Reshape / Expand around a MatMul of equal batch dimensions."""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, TensorType


def canonical_products(graph: Graph) -> None:
    """Afterwards no Gemm remains: Y = alpha * A' @ B' + beta * C is
    [Transpose A] [Transpose B] MatMul [Mul alpha] [Mul beta] [Add]; and every MatMul whose B
    is not a constant has operands of rank >= 2 with equal batch dimensions (or a B of rank
    2). New nodes are named after the node they replace and ordered where it was."""
    for name in graph.topo_order():
        op = graph.node(name)["op"]
        if op == "Gemm":
            _expand(graph, name)
        elif op == "MatMul" and not graph.is_const(graph.node(name)["inputs"][1]):
            _matmul(graph, name)


class Emit:
    """Adds nodes in place of one removed node, in order."""

    def __init__(self, graph: Graph, name: str, order: float) -> None:
        self.graph, self.name, self.order, self.step = graph, name, order, 0

    def __call__(self, op, inputs, out_ty, attrs=None, out=None) -> str:
        g = self.graph
        self.step += 1
        o = out or g.fresh_name(f"{self.name}_{op.lower()}")
        g.add_node(g.fresh_name(f"{self.name}_{op.lower()}"), op, inputs, [o], attrs,
                   types=[out_ty], order=self.order + self.step / 16)
        return o

    def shaped(self, op: str, v: str, shape: tuple, out: str | None = None) -> str:
        """Reshape or Expand v to `shape` (its element type kept)."""
        g = self.graph
        s = g.add_const(g.fresh_name(f"{self.name}_shape"), np.array(shape, np.int64))
        return self(op, [v, s], TensorType(g.values[v].dtype, tuple(shape)), out=out)


def _matmul(graph: Graph, name: str) -> None:
    nd = graph.node(name)
    a, b = nd["inputs"]
    y = nd["outputs"][0]
    sa, sb = tuple(graph.values[a].shape), tuple(graph.values[b].shape)
    if len(sa) >= 2 and len(sb) >= 2 and (len(sb) == 2 or sa[:-2] == sb[:-2]):
        return
    yt = graph.values[y]
    emit = Emit(graph, name, nd["order"])
    graph.remove_node(name)
    if len(sa) == 1:
        sa = (1,) + sa
        a = emit.shaped("Reshape", a, sa)
    if len(sb) == 1:
        sb = sb + (1,)
        b = emit.shaped("Reshape", b, sb)
    lead = tuple(np.broadcast_shapes(sa[:-2], sb[:-2]))
    if sa[:-2] != lead:
        sa = lead + sa[-2:]
        a = emit.shaped("Expand", a, sa)
    if len(sb) > 2 and sb[:-2] != lead:
        sb = lead + sb[-2:]
        b = emit.shaped("Expand", b, sb)
    full = lead + (sa[-2], sb[-1])
    if full == tuple(yt.shape):
        emit("MatMul", [a, b], yt, out=y)
    else:
        p = emit("MatMul", [a, b], TensorType(yt.dtype, full))
        if yt.shape:
            emit.shaped("Reshape", p, tuple(yt.shape), out=y)
        else:  # [1, 1] -> []: no shape operand (it would have no elements)
            emit("Squeeze", [p], yt, out=y)


def _expand(graph: Graph, name: str) -> None:
    nd = graph.node(name)
    at = nd["attrs"]
    a, b, c = list(nd["inputs"]) + [""] * (3 - len(nd["inputs"]))
    y = nd["outputs"][0]
    yt = graph.values[y]
    emit = Emit(graph, name, nd["order"])
    graph.remove_node(name)

    def scalar(v: float) -> str:
        return graph.add_const(graph.fresh_name(f"{name}_scale"),
                               np.array(v, np.dtype(yt.dtype)))

    def transposed(v: str) -> str:
        vt = graph.values[v]
        return emit("Transpose", [v], TensorType(vt.dtype, (vt.shape[1], vt.shape[0])),
                    {"perm": (1, 0)})

    if int(at.get("transA", 0)):
        a = transposed(a)
    if int(at.get("transB", 0)):
        b = transposed(b)
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    p = emit("MatMul", [a, b], yt, out=y if not c and alpha == 1.0 else None)
    if alpha != 1.0:
        p = emit("Mul", [p, scalar(alpha)], yt, out=y if not c else None)
    if c:
        if beta != 1.0:
            c = emit("Mul", [c, scalar(beta)], graph.values[c])
        emit("Add", [p, c], yt, out=y)
