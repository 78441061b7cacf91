from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph


@dataclass(frozen=True)
class EliminateIdentity:
    """Remove ops that return their input unchanged.

    Afterwards: no Identity, no Cast to the input's own dtype, no Reshape or Expand to the
    input's own shape and no Transpose by the identity permutation remains, except where its
    output is a graph output that cannot be renamed (the input is a graph input, a const or
    another graph output).
    """

    name: ClassVar[str] = "eliminate-identity"

    def apply(self, graph: Graph) -> Graph:
        for n in graph.topo_order():
            a = graph.node(n)
            if not a["inputs"] or not a["inputs"][0] or len(a["outputs"]) != 1:
                continue
            x, y = a["inputs"][0], a["outputs"][0]
            tx, ty = graph.values.get(x), graph.values.get(y)
            op = a["op"]
            same = tx is not None and tx == ty
            if not (op == "Identity"
                    or (same and op in ("Cast", "Reshape", "Expand"))
                    or (same and op == "Transpose"
                        and tuple(a["attrs"].get("perm", ())) == tuple(range(tx.rank)))):
                continue
            if y in graph.outputs and (graph.producer(x) is None or x in graph.outputs):
                continue
            graph.remove_node(n)
            graph.forward(y, x)
        graph.prune()
        return graph
