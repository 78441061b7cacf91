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
    op_of,
    other,
    remove_all,
)


@dataclass(frozen=True)
class RecognizeLayernorm:
    """Rewrite decomposed layer normalization over the last axis as LayerNormalization.

    Matches mean = ReduceMean(x); d = x - mean; var = ReduceMean(Pow(d, 2) or d*d);
    n = d / Sqrt(var + eps) or d * Reciprocal(Sqrt(var + eps)); then an optional Mul by a
    const [C] scale and Add of a const [C] bias. Afterwards none of these chains remains: each
    is one LayerNormalization(x, scale, bias?) {axis=-1, epsilon} (scale is ones when the
    chain had none). Fused LayerNormalization ops are left as they are.
    """

    name: ClassVar[str] = "recognize-layernorm"

    def apply(self, graph: Graph) -> Graph:
        for r1 in graph.topo_order():
            if r1 in graph.g and graph.node(r1)["op"] == "ReduceMean":
                self._match(graph, r1)
        graph.prune()
        return graph

    def _match(self, graph: Graph, r1: str) -> None:
        x = graph.node(r1)["inputs"][0]
        xt = graph.values[x]
        if not xt.rank or not is_last_axis_reduce(graph, r1, xt.rank):
            return
        mean = graph.node(r1)["outputs"][0]
        sub = only_user(graph, mean)
        if sub is None or graph.node(sub)["op"] != "Sub" or graph.node(sub)["inputs"] != [x, mean]:
            return
        d = graph.node(sub)["outputs"][0]
        users = graph.consumers(d)
        if len(users) != 2 or d in graph.outputs:
            return
        sq = next((u for u in users if graph.node(u)["op"] in ("Pow", "Mul")
                   and (graph.node(u)["inputs"] == [d, d]
                        or (graph.node(u)["op"] == "Pow" and graph.node(u)["inputs"][0] == d
                            and is_scalar(graph, graph.node(u)["inputs"][1], 2.0)))), None)
        if sq is None:
            return
        norm = users[1] if users[0] == sq else users[0]
        r2 = only_user(graph, graph.node(sq)["outputs"][0])
        if r2 is None or graph.node(r2)["op"] != "ReduceMean" or \
                not is_last_axis_reduce(graph, r2, xt.rank):
            return
        var = graph.node(r2)["outputs"][0]
        tail = eps_sqrt(graph, var)
        if tail is None:
            return
        add, eps, sqrt, s = tail
        chain = [r1, sub, sq, r2, add, sqrt]
        na = graph.node(norm)
        if na["op"] == "Div" and na["inputs"] == [d, s] and graph.num_uses(s) == 1:
            chain.append(norm)
        elif na["op"] == "Mul" and graph.num_uses(d) == (3 if graph.node(sq)["op"] == "Mul"
                                                          and sq != norm else 2):
            inv = other(na["inputs"], d)
            rec = None if inv is None else op_of(graph, inv, "Reciprocal")
            if rec is None or graph.node(rec)["inputs"][0] != s or graph.num_uses(s) != 1 \
                    or graph.num_uses(inv) != 1:
                return
            chain += [rec, norm]
        else:
            return
        c = xt.shape[-1]
        scale, bias, y, tail = affine_tail(graph, na["outputs"][0], c, with_bias=True)
        scale = ones_vector(graph, xt.dtype, c) if scale is None else as_vector(graph, scale, c)
        ins = [x, scale] + ([] if bias is None else [as_vector(graph, bias, c)])
        yt = graph.values[y]
        order = graph.node(r1)["order"]
        remove_all(graph, chain + tail)
        graph.add_node(graph.fresh_name(f"{r1}_layernorm"), "LayerNormalization", ins, [y],
                       {"axis": -1, "epsilon": f32(eps)}, types=[yt], order=order)
