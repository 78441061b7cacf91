from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.fold import fold_constants
from compiler.ir import Graph


@dataclass(frozen=True)
class FoldConstants:
    """Evaluate ops whose inputs are all constants.

    Afterwards: no op has only const inputs with data (unless its result would exceed
    `max_elements`), Shape and Size ops are gone wherever their input's type is known, ops
    over shape-only weights with known output types became shape-only consts, and no op or
    const is dead (everything left reaches a graph output).
    """

    name: ClassVar[str] = "fold-constants"
    max_elements: int = 1 << 24

    def apply(self, graph: Graph) -> Graph:
        fold_constants(graph, max_elements=self.max_elements)
        return graph
