from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import networkx as nx
import numpy as np

from compiler.ir import Graph
from compiler.passes._match import is_scalar, only_user, op_of


def _finite_inputs(graph: Graph, softmax: str) -> bool:
    """True if no const feeding the softmax's input (through any path) holds -inf or NaN."""
    for n in nx.ancestors(graph.g, softmax) | {softmax}:
        for v in graph.node(n)["inputs"]:
            arr = graph.const_array(v) if v else None
            if arr is not None and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                return False
        for val in graph.node(n)["attrs"].values():
            if isinstance(val, np.ndarray) and val.dtype.kind == "f" and \
                    not np.all(np.isfinite(val)):
                return False
    return True


@dataclass(frozen=True)
class DecomposeSoftmaxGuards:
    """Remove NaN guards around Softmax when they provably never fire.

    A guard is Where(IsNaN(s), 0, s) with s = Softmax(x). Softmax gives NaN only for a row that
    is all -inf (or holds NaN or +inf). The guard is removed when no constant on any path into
    x holds a non-finite value: masks are then finite (float32 min rather than -inf), so no row
    can become all -inf. This assumes finite graph inputs and shape-only weights, and no
    overflow in the arithmetic before the Softmax (the reference would not be finite either).
    Otherwise the guard is kept as it is (the backend lowers Where and IsNaN).

    Afterwards: every remaining guard has a non-finite constant upstream of its Softmax.
    """

    name: ClassVar[str] = "decompose-softmax-guards"

    def apply(self, graph: Graph) -> Graph:
        for isnan in graph.topo_order():
            if isnan not in graph.g or graph.node(isnan)["op"] != "IsNaN":
                continue
            s = graph.node(isnan)["inputs"][0]
            sm = op_of(graph, s, "Softmax")
            where = only_user(graph, graph.node(isnan)["outputs"][0])
            if sm is None or where is None or graph.node(where)["op"] != "Where":
                continue
            cond, zero, val = graph.node(where)["inputs"]
            if cond != graph.node(isnan)["outputs"][0] or val != s or \
                    not is_scalar(graph, zero, 0.0):
                continue
            if not _finite_inputs(graph, sm):
                continue
            y = graph.node(where)["outputs"][0]
            graph.remove_node(where)
            if not graph.forward(y, s):
                graph.add_node(where, "Identity", [s], [y], types=[graph.values[y]])
            graph.remove_node(isnan)
        graph.prune()
        return graph
