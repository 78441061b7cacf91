from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compiler.ir import Graph, TensorType
from compiler.passes._match import only_user, other, scalar


def _bias_1d(graph: Graph, b: str, n: int) -> str | None:
    """A rank-1 [n] const equal to `b` broadcast over all but the last axis, or None."""
    ty = graph.values[b]
    if ty.shape == (n,):
        return b
    if ty.shape and ty.shape[-1] == n and all(d == 1 for d in ty.shape[:-1]):
        arr = graph.const_array(b)
        return graph.add_const(graph.fresh_name(f"{b}_1d"),
                               None if arr is None else arr.reshape(n),
                               ty=TensorType(ty.dtype, (n,)), kind=graph.consts[b].kind)
    if ty.size == 1 and graph.const_array(b) is not None:
        v = scalar(graph, b)
        return graph.add_const(graph.fresh_name(f"{b}_1d"), np.full(n, v, dtype=ty.dtype))
    return None


@dataclass(frozen=True)
class FuseMatmulBias:
    """Fuse a matrix product and a constant bias into one MatMulBias(x, w, b) op.

    Afterwards: no MatMul with a rank-2 right operand feeds (as its only use) an Add of a
    const that varies only along the last axis, and no Gemm with transA=0, alpha=1 remains
    whose C is absent, a row vector or a scalar const. MatMulBias(x, w, b) computes
    matmul(x, w) + b with w of rank 2 and b of shape [N]; a Gemm with transB=1 gets its weight
    transposed into a new const (or a Transpose op when the weight is not a const), and a Gemm
    without C becomes MatMul.
    """

    name: ClassVar[str] = "fuse-matmul-bias"

    def apply(self, graph: Graph) -> Graph:
        for n in graph.topo_order():
            if n not in graph.g:
                continue
            op = graph.node(n)["op"]
            if op == "MatMul":
                self._matmul_add(graph, n)
            elif op == "Gemm":
                self._gemm(graph, n)
        graph.prune()
        return graph

    def _matmul_add(self, graph: Graph, mm: str) -> None:
        a = graph.node(mm)
        x, w = a["inputs"]
        m = a["outputs"][0]
        wt = graph.values[w]
        add = only_user(graph, m)
        if wt.rank != 2 or add is None or graph.node(add)["op"] != "Add":
            return
        b = other(graph.node(add)["inputs"], m)
        if b is None or not graph.is_const(b) or graph.values[b].dtype != wt.dtype:
            return
        y = graph.node(add)["outputs"][0]
        if graph.values[y] != graph.values[m]:
            return  # the bias broadcast grows the result
        b1 = _bias_1d(graph, b, wt.shape[1])
        if b1 is None:
            return
        order = a["order"]
        graph.remove_node(add)
        graph.remove_node(mm)
        graph.add_node(mm, "MatMulBias", [x, w, b1], [y], types=[graph.values[y]], order=order)

    def _gemm(self, graph: Graph, gemm: str) -> None:
        a = graph.node(gemm)
        at = a["attrs"]
        if int(at.get("transA", 0)) or float(at.get("alpha", 1.0)) != 1.0:
            return
        ins = a["inputs"] + [""] * (3 - len(a["inputs"]))
        x, w, c = ins
        y = a["outputs"][0]
        yt = graph.values[y]
        bias = None
        beta = float(at.get("beta", 1.0))
        if c:
            if not graph.is_const(c):
                return
            if beta != 1.0:
                arr = graph.const_array(c)
                if arr is None:
                    return
                c = graph.add_const(graph.fresh_name(f"{c}_beta"),
                                    (arr * beta).astype(arr.dtype))
            bias = _bias_1d(graph, c, yt.shape[1])
            if bias is None:
                return
        if int(at.get("transB", 0)):
            wt = graph.values[w]
            tt = TensorType(wt.dtype, (wt.shape[1], wt.shape[0]))
            if graph.is_const(w):
                arr = graph.const_array(w)
                w = graph.add_const(graph.fresh_name(f"{w}_T"),
                                    None if arr is None else np.ascontiguousarray(arr.T),
                                    ty=tt, kind=graph.consts[w].kind)
            else:
                wn = graph.fresh_name(f"{w}_T")
                graph.add_node(graph.fresh_name(f"{gemm}_transpose"), "Transpose", [w], [wn],
                               {"perm": (1, 0)}, types=[tt],
                               order=a["order"])
                w = wn
        order = a["order"]
        graph.remove_node(gemm)
        if bias is None:
            graph.add_node(gemm, "MatMul", [x, w], [y], types=[yt], order=order)
        else:
            graph.add_node(gemm, "MatMulBias", [x, w, bias], [y], types=[yt], order=order)
