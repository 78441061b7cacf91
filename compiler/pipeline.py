"""Pass registry and runner: a pipeline is a tuple of pass instances, read top to bottom."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from compiler.errors import CompileError
from compiler.ir import Graph, print_ir
from compiler.passes import PASSES
from compiler.passes.decompose_attention import DecomposeAttention
from compiler.passes.decompose_rotary import DecomposeRotary
from compiler.passes.decompose_softmax_guards import DecomposeSoftmaxGuards
from compiler.passes.eliminate_identity import EliminateIdentity
from compiler.passes.fold_constants import FoldConstants
from compiler.passes.fuse_matmul_bias import FuseMatmulBias
from compiler.passes.recognize_gelu import RecognizeGelu
from compiler.passes.recognize_layernorm import RecognizeLayernorm
from compiler.passes.recognize_rmsnorm import RecognizeRmsnorm
from compiler.passes.recognize_silu import RecognizeSilu


class Pass(Protocol):
    name: str

    def apply(self, graph: Graph) -> Graph: ...


def get_pass(name: str, **options: Any) -> Pass:
    """The pass registered as `name`, built with `options` (CompileError lists valid names)."""
    cls = PASSES.get(name)
    if cls is None:
        raise CompileError(f"unknown pass {name!r}; valid passes: {', '.join(sorted(PASSES))}")
    try:
        return cls(**options)
    except TypeError as e:
        raise CompileError(f"pass {name!r}: {e}") from e


def check_dump_after(dump_after: str | None) -> None:
    if dump_after is not None and dump_after != "all" and dump_after not in PASSES:
        raise CompileError(f"--dump-ir-after: unknown pass {dump_after!r}; valid: all, "
                           f"{', '.join(sorted(PASSES))}")


def run_pipeline(graph: Graph, passes: Iterable[Pass], *, verify: bool = False,
                 dump_after: str | None = None,
                 dump: Callable[[str], Any] = print) -> Graph:
    """Apply `passes` in order; verify the IR after each when asked; dump after the named pass
    (or "all"). Passes may modify `graph` in place; use the returned graph."""
    check_dump_after(dump_after)
    for p in passes:
        graph = p.apply(graph)
        if verify:
            try:
                graph.verify()
            except CompileError as e:
                raise CompileError(f"IR invalid after pass {p.name!r}: {e}") from e
        if dump_after == "all" or dump_after == p.name:
            dump(f"// IR after {p.name}\n{print_ir(graph)}")
    return graph


def default_pipeline() -> tuple[Pass, ...]:
    """Canonicalization and fusion (the part of the compiler that runs before precision)."""
    return (
        FoldConstants(),
        # Identity ops and no-op Casts split the chains the recognizers below look for.
        EliminateIdentity(),
        # Composite ops early: the passes below see the ops they become, and the last
        # fold-constants folds their constant parts (a rotary table at constant positions).
        DecomposeAttention(),
        DecomposeRotary(),
        DecomposeSoftmaxGuards(),
        RecognizeLayernorm(),
        RecognizeRmsnorm(),
        RecognizeGelu(),
        RecognizeSilu(),
        FuseMatmulBias(),
        # Recognizers leave scale/bias reshapes over consts behind.
        FoldConstants(),
    )
