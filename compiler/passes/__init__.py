"""The compiler's passes, one per module; `PASSES` maps each pass name to its class."""

from __future__ import annotations

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

PASSES: dict[str, type] = {p.name: p for p in (
    FoldConstants, EliminateIdentity, DecomposeAttention, DecomposeRotary,
    DecomposeSoftmaxGuards, RecognizeLayernorm, RecognizeRmsnorm, RecognizeGelu, RecognizeSilu,
    FuseMatmulBias,
)}

__all__ = ["PASSES", "DecomposeAttention", "DecomposeRotary", "DecomposeSoftmaxGuards",
           "EliminateIdentity", "FoldConstants", "FuseMatmulBias", "RecognizeGelu",
           "RecognizeLayernorm", "RecognizeRmsnorm", "RecognizeSilu"]
