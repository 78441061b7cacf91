from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph
from compiler.passes._match import is_scalar, only_user, op_of, other, remove_all

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _scaled_by(graph: Graph, value: str, factor: float) -> tuple[str, str] | None:
    """If `value` = Mul(v, factor) or Div(v, 1/factor) (const operand, either Mul order),
    return (v, node)."""
    n = op_of(graph, value, ("Mul", "Div"))
    if n is None:
        return None
    a, b = graph.node(n)["inputs"]
    if graph.node(n)["op"] == "Div":
        return (a, n) if is_scalar(graph, b, 1.0 / factor) else None
    if is_scalar(graph, b, factor):
        return a, n
    if is_scalar(graph, a, factor):
        return b, n
    return None


def _plus_one(graph: Graph, value: str) -> tuple[str, str] | None:
    """If the only use of `value` is Add(value, 1) (either order), return (sum, node)."""
    add = only_user(graph, value)
    if add is None or graph.node(add)["op"] != "Add":
        return None
    c = other(graph.node(add)["inputs"], value)
    if c is None or not is_scalar(graph, c, 1.0):
        return None
    return graph.node(add)["outputs"][0], add


def _half_x_times(graph: Graph, a: str, x: str) -> tuple[str, list[str]] | None:
    """Find the Mul tree computing 0.5 * x * a in any association; returns (result, nodes)."""
    leaves: list[str] = []
    nodes: list[str] = []
    cur = a
    for _ in range(2):
        m = only_user(graph, cur)
        if m is None or graph.node(m)["op"] != "Mul":
            return None
        o = other(graph.node(m)["inputs"], cur)
        if o is None:
            return None
        nodes.append(m)
        if o == x:
            leaves.append("x")
        elif is_scalar(graph, o, 0.5):
            leaves.append("half")
        else:
            half = _scaled_by(graph, o, 0.5)
            if half is None or half[0] != x or graph.num_uses(o) != 1 or \
                    graph.node(half[1])["op"] != "Mul":
                return None
            leaves += ["x", "half"]
            nodes.append(half[1])
        if sorted(leaves) == ["half", "x"]:
            return graph.node(m)["outputs"][0], nodes
        if len(leaves) != 1:
            return None
        cur = graph.node(m)["outputs"][0]
    return None


@dataclass(frozen=True)
class RecognizeGelu:
    """Rewrite decomposed GELU as Gelu(x) {approximate="none"|"tanh"}.

    Matches 0.5 * x * (1 + Erf(x / sqrt(2))) (x / sqrt(2) as Div or Mul by 1/sqrt(2)) and
    0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) (x^3 as Pow(x, 3), x*x*x), in
    every operand order and association of the products that exporters write. Afterwards none
    of these chains remains (opset-20 Gelu ops are left as they are).
    """

    name: ClassVar[str] = "recognize-gelu"

    def apply(self, graph: Graph) -> Graph:
        for n in graph.topo_order():
            if n not in graph.g:
                continue
            op = graph.node(n)["op"]
            if op == "Erf":
                self._erf(graph, n)
            elif op == "Tanh":
                self._tanh(graph, n)
        graph.prune()
        return graph

    def _replace(self, graph: Graph, x: str, y: str, nodes: list[str], approx: str) -> None:
        yt = graph.values[y]
        order = min(graph.node(n)["order"] for n in nodes)
        name = graph.fresh_name(f"{nodes[0]}_gelu")
        remove_all(graph, nodes)
        graph.add_node(name, "Gelu", [x], [y], {"approximate": approx}, types=[yt], order=order)

    def _erf(self, graph: Graph, erf: str) -> None:
        u = graph.node(erf)["inputs"][0]
        scaled = _scaled_by(graph, u, 1.0 / SQRT_2)
        if scaled is None or graph.num_uses(u) != 1:
            return
        x, scale_node = scaled
        p1 = _plus_one(graph, graph.node(erf)["outputs"][0])
        if p1 is None:
            return
        prod = _half_x_times(graph, p1[0], x)
        if prod is None:
            return
        self._replace(graph, x, prod[0], [scale_node, erf, p1[1], *prod[1]], "none")

    def _tanh(self, graph: Graph, tanh: str) -> None:
        u = graph.node(tanh)["inputs"][0]
        scaled = _scaled_by(graph, u, SQRT_2_OVER_PI)
        if scaled is None or graph.num_uses(u) != 1:
            return
        inner, scale_node = scaled
        add = op_of(graph, inner, "Add")
        if add is None or graph.num_uses(inner) != 1:
            return
        for x, m in (graph.node(add)["inputs"], reversed(graph.node(add)["inputs"])):
            cubic = _scaled_by(graph, m, 0.044715)
            if cubic is None or graph.num_uses(m) != 1:
                continue
            cube_nodes = self._cube(graph, cubic[0], x)
            if cube_nodes is None:
                continue
            p1 = _plus_one(graph, graph.node(tanh)["outputs"][0])
            if p1 is None:
                return
            prod = _half_x_times(graph, p1[0], x)
            if prod is None:
                return
            nodes = [*cube_nodes, cubic[1], add, scale_node, tanh, p1[1], *prod[1]]
            self._replace(graph, x, prod[0], nodes, "tanh")
            return

    def _cube(self, graph: Graph, value: str, x: str) -> list[str] | None:
        """Nodes computing value = x^3 (Pow(x, 3) or x * (x * x) in either order)."""
        if graph.num_uses(value) != 1:
            return None
        n = op_of(graph, value, "Pow")
        if n is not None:
            a, b = graph.node(n)["inputs"]
            return [n] if a == x and is_scalar(graph, b, 3.0) else None
        n = op_of(graph, value, "Mul")
        if n is None:
            return None
        sq = other(graph.node(n)["inputs"], x)
        if sq is None or graph.num_uses(sq) != 1:
            return None
        s = op_of(graph, sq, "Mul")
        if s is None or graph.node(s)["inputs"] != [x, x]:
            return None
        return [s, n]
