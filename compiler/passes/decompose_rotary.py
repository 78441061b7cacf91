from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.errors import CompileError
from compiler.ir import Graph
from compiler.passes._match import replace_each
from compiler.passes.decompose_attention import OpBuilder


@dataclass(frozen=True)
class DecomposeRotary:
    """Rewrite ONNX RotaryEmbedding (opset 23) into Gather, data movement and elementwise ops.

    The cos and sin rows are the caches' rows at position_ids (or the caches themselves, of
    shape [B, S, d/2], without position_ids), broadcast over the heads. Of each head's first
    d = rotary_embedding_dim (default: the head size) features, x1 and x2 are the two halves
    (or the even and odd features when interleaved); they become cos * x1 - sin * x2 and
    sin * x1 + cos * x2, in that order and placement, and the rest pass through. 3-D inputs
    [B, S, num_heads * head size] are split into num_heads heads. Interleaved features are
    reached by moving the feature axis in front of the sequence axis (a transpose), so the
    even and odd ones are strided rows rather than strided lanes.

    Afterwards: no RotaryEmbedding op remains; each output keeps its name.
    """

    name: ClassVar[str] = "decompose-rotary"

    def apply(self, graph: Graph) -> Graph:
        return replace_each(graph, "RotaryEmbedding", _decompose)


def _decompose(graph: Graph, node: str) -> None:
    a = graph.node(node)
    what = f"RotaryEmbedding (node {node!r})"
    ins = list(a["inputs"]) + [""] * (4 - len(a["inputs"]))
    x, cos_cache, sin_cache, pos = ins[:4]
    out = a["outputs"][0]
    at = a["attrs"]
    interleaved = bool(int(at.get("interleaved", 0)))
    xt = graph.values[x]
    if xt.rank == 4:
        bsz, heads, seq, head = xt.shape
    elif xt.rank == 3:
        bsz, seq, hidden = xt.shape
        heads = int(at.get("num_heads", 0))
        if heads <= 0 or hidden % heads:
            raise CompileError(f"{what}: a 3-D input needs num_heads dividing its hidden "
                               f"size {hidden}")
        head = hidden // heads
    else:
        raise CompileError(f"{what}: the input must be 3-D or 4-D, not {xt.rank}-D")
    rot = int(at.get("rotary_embedding_dim", 0)) or head
    if rot > head or rot % 2:
        raise CompileError(f"{what}: rotary_embedding_dim {rot} must be even and at most the "
                           f"head size {head}")
    half = rot // 2
    for c in (cos_cache, sin_cache):
        ct = graph.values[c]
        if ct.dtype != xt.dtype:
            raise CompileError(f"{what}: cache {c!r} is {ct.dtype}, the input {xt.dtype}")
        want = (ct.rank == 2) if pos else (ct.shape == (bsz, seq, half))
        if not want or ct.shape[-1] != half:
            raise CompileError(f"{what}: cache {c!r} of shape {list(ct.shape)} does not fit "
                               f"{'position_ids' if pos else f'[{bsz}, {seq}, {half}]'} and "
                               f"rotary_embedding_dim {rot}")
    if pos and graph.values[pos].shape != (bsz, seq):
        raise CompileError(f"{what}: position_ids of shape {list(graph.values[pos].shape)} "
                           f"is not [{bsz}, {seq}]")
    order = a["order"]
    graph.remove_node(node)
    b = OpBuilder(graph, node, order)

    def rows(cache: str) -> str:
        """The cache rows of every token: [B, S, half]."""
        if not pos:
            return cache
        return b.op("Gather", [cache, pos], [bsz, seq, half], xt.dtype, {"axis": 0})

    cos, sin = rows(cos_cache), rows(sin_cache)
    if interleaved:
        y = _interleaved(b, x, cos, sin, bsz, heads, seq, head, rot)
    else:
        y = _halves(b, x, cos, sin, bsz, heads, seq, head, rot)
    b.finish(y, out, set())


def _rotate(b: OpBuilder, x1: str, x2: str, cos: str, sin: str) -> tuple[str, str]:
    real = b.binary("Sub", b.binary("Mul", cos, x1), b.binary("Mul", sin, x2))
    imag = b.binary("Add", b.binary("Mul", sin, x1), b.binary("Mul", cos, x2))
    return real, imag


def _halves(b: OpBuilder, x: str, cos: str, sin: str, bsz: int, heads: int, seq: int,
            head: int, rot: int) -> str:
    """Non-interleaved: x1, x2 are lane ranges of each head's features."""
    half = rot // 2
    three_d = b.ty(x).rank == 3
    # the head axis is next to the features in the 3-D layout, before the sequence in 4-D
    x4 = b.reshape(x, [bsz, seq, heads, head]) if three_d else x
    lead = [bsz, seq, heads] if three_d else [bsz, heads, seq]
    cs_shape = [bsz, seq, 1, half] if three_d else [bsz, 1, seq, half]
    cos_e = b.expand(b.reshape(cos, cs_shape), lead + [half])
    sin_e = b.expand(b.reshape(sin, cs_shape), lead + [half])
    x1 = b.slice(x4, -1, 0, half)
    x2 = b.slice(x4, -1, half, rot)
    parts = list(_rotate(b, x1, x2, cos_e, sin_e))
    if rot < head:
        parts.append(b.slice(x4, -1, rot, head))
    y = b.concat(parts, -1)
    return b.reshape(y, list(b.ty(x).shape)) if three_d else y


def _interleaved(b: OpBuilder, x: str, cos: str, sin: str, bsz: int, heads: int, seq: int,
                 head: int, rot: int) -> str:
    """Interleaved: with features before the sequence ([B, H, head, S]), x1 and x2 are the
    even and odd feature rows; real and imag rows are interleaved again by a concat of
    [..., half, 1, S] pieces."""
    half = rot // 2
    three_d = b.ty(x).rank == 3
    if three_d:  # [B, S, H * head] -> [B, H, head, S]
        xt = b.transpose(b.reshape(x, [bsz, seq, heads, head]), [0, 2, 3, 1])
    else:
        xt = b.transpose(x, [0, 1, 3, 2])
    full = [bsz, heads, half, seq]

    def per_feature(c: str) -> str:  # [B, S, half] -> [B, H, half, S]
        return b.expand(b.reshape(b.transpose(c, [0, 2, 1]), [bsz, 1, half, seq]), full)

    cos_t, sin_t = per_feature(cos), per_feature(sin)
    x1 = b.slice(xt, 2, 0, rot, 2)
    x2 = b.slice(xt, 2, 1, rot, 2)
    real, imag = _rotate(b, x1, x2, cos_t, sin_t)
    pair = [bsz, heads, half, 1, seq]
    y = b.reshape(b.concat([b.reshape(real, pair), b.reshape(imag, pair)], 3),
                  [bsz, heads, rot, seq])
    if rot < head:
        y = b.concat([y, b.slice(xt, 2, rot, head)], 2)
    if three_d:  # [B, H, head, S] -> [B, S, H, head] -> [B, S, H * head]
        return b.reshape(b.transpose(y, [0, 3, 1, 2]), list(b.ty(x).shape))
    return b.transpose(y, [0, 1, 3, 2])
