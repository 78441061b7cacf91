from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph
from compiler.passes._match import only_user, other


@dataclass(frozen=True)
class RecognizeSilu:
    """Rewrite x * Sigmoid(x) (either operand order) as Silu(x).

    Afterwards: no Mul reads both a value x and Sigmoid(x) where that Sigmoid has no other use.
    """

    name: ClassVar[str] = "recognize-silu"

    def apply(self, graph: Graph) -> Graph:
        for sig in graph.topo_order():
            a = graph.node(sig)
            if a["op"] != "Sigmoid":
                continue
            x, s = a["inputs"][0], a["outputs"][0]
            mul = only_user(graph, s)
            if mul is None or graph.node(mul)["op"] != "Mul":
                continue
            if other(graph.node(mul)["inputs"], s) != x:
                continue
            y = graph.node(mul)["outputs"][0]
            order = graph.node(mul)["order"]
            graph.remove_node(mul)
            graph.remove_node(sig)
            graph.add_node(mul, "Silu", [x], [y], types=[graph.values[y]], order=order)
        graph.prune()
        return graph
