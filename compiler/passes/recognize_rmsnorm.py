from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph
from compiler.passes._match import (
    affine_tail,
    as_vector,
    eps_sqrt,
    f32,
    is_last_axis_reduce,
    is_scalar,
    ones_vector,
    only_user,
    other,
    remove_all,
)


@dataclass(frozen=True)
class RecognizeRmsnorm:
    """Rewrite decomposed RMS normalization over the last axis as RMSNormalization.

    Matches ms = ReduceMean(Pow(x, 2) or x*x); r = Sqrt(ms + eps); then x * Reciprocal(r),
    x / r, or x * (1 / r); then an optional Mul by a const [C] scale. Afterwards none of these
    chains remains: each is one RMSNormalization(x, scale) {axis=-1, epsilon} (scale is ones
    when the chain had none). Fused RMSNormalization ops are left as they are. Run after
    recognize-layernorm: a layer norm's tail is an RMS norm of x - mean.
    """

    name: ClassVar[str] = "recognize-rmsnorm"

    def apply(self, graph: Graph) -> Graph:
        for r in graph.topo_order():
            if r in graph.g and graph.node(r)["op"] == "ReduceMean":
                self._match(graph, r)
        graph.prune()
        return graph

    def _match(self, graph: Graph, r: str) -> None:
        sq = graph.producer(graph.node(r)["inputs"][0])
        if sq is None or graph.num_uses(graph.node(sq)["outputs"][0]) != 1:
            return
        sa = graph.node(sq)
        if sa["op"] == "Mul" and sa["inputs"][0] == sa["inputs"][1]:
            x = sa["inputs"][0]
        elif sa["op"] == "Pow" and is_scalar(graph, sa["inputs"][1], 2.0):
            x = sa["inputs"][0]
        else:
            return
        xt = graph.values[x]
        if not xt.rank or not is_last_axis_reduce(graph, r, xt.rank):
            return
        ms = graph.node(r)["outputs"][0]
        tail = eps_sqrt(graph, ms)
        if tail is None:
            return
        add, eps, sqrt, s = tail
        user = only_user(graph, s)
        if user is None:
            return
        chain = [sq, r, add, sqrt]
        ua = graph.node(user)
        if ua["op"] == "Div" and ua["inputs"] == [x, s]:
            norm = user
        elif ua["op"] == "Reciprocal" or (ua["op"] == "Div" and ua["inputs"][1] == s
                                          and is_scalar(graph, ua["inputs"][0], 1.0)):
            inv = ua["outputs"][0]
            norm = only_user(graph, inv)
            if norm is None or graph.node(norm)["op"] != "Mul" or \
                    other(graph.node(norm)["inputs"], inv) != x:
                return
            chain.append(user)
        else:
            return
        chain.append(norm)
        c = xt.shape[-1]
        scale, _, y, tail = affine_tail(graph, graph.node(norm)["outputs"][0], c,
                                        with_bias=False)
        scale = ones_vector(graph, xt.dtype, c) if scale is None else as_vector(graph, scale, c)
        yt = graph.values[y]
        order = graph.node(r)["order"]
        remove_all(graph, chain + tail)
        graph.add_node(graph.fresh_name(f"{r}_rmsnorm"), "RMSNormalization", [x, scale], [y],
                       {"axis": -1, "epsilon": f32(eps)}, types=[yt], order=order)



