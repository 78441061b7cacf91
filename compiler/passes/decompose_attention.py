from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from onnx import helper

from compiler.errors import CompileError
from compiler.ir import Graph, TensorType
from compiler.passes._match import replace_each

_MODES = (0, 1, 2, 3)
_SOFTMAX_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # ONNX enum


def _max(dtype: str) -> float:
    """The largest finite value of a float dtype."""
    if dtype == "bfloat16" or dtype.startswith("float8"):
        import ml_dtypes

        return float(ml_dtypes.finfo(np_dtype(dtype)).max)
    return float(np.finfo(np_dtype(dtype)).max)


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of an IR dtype name (bfloat16 and float8 come from ml_dtypes)."""
    if name == "bfloat16" or name.startswith("float8"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


class OpBuilder:
    """Adds typed ops and consts in place of one decomposed node: names derive from the
    node's, and every op takes the node's `order`, so the result is deterministic."""

    def __init__(self, graph: Graph, node: str, order: float) -> None:
        self.graph, self.node, self.order = graph, node, order
        self._consts: dict[tuple, str] = {}  # small consts, shared by the ops that read them

    def const(self, tag: str, arr: Any) -> str:
        return self.graph.add_const(self.graph.fresh_name(f"{self.node}_{tag}"),
                                    np.asarray(arr), kind="const")

    def ints(self, tag: str, values: Sequence[int]) -> str:
        key = (tag, tuple(int(v) for v in values))
        if key not in self._consts:
            self._consts[key] = self.const(tag, np.array(key[1], dtype=np.int64))
        return self._consts[key]

    def op(self, op: str, inputs: Sequence[str], shape: Sequence[int], dtype: str,
           attrs: dict[str, Any] | None = None, tag: str | None = None) -> str:
        g = self.graph
        out = g.fresh_name(f"{self.node}_{tag or op.lower()}")
        g.add_node(g.fresh_name(f"{self.node}_{tag or op.lower()}_op"), op, list(inputs), [out],
                   attrs or {}, types=[TensorType(dtype, tuple(int(d) for d in shape))],
                   order=self.order)
        return out

    def ty(self, v: str) -> TensorType:
        return self.graph.values[v]

    def binary(self, op: str, a: str, b: str, dtype: str | None = None) -> str:
        shape = np.broadcast_shapes(self.ty(a).shape, self.ty(b).shape)
        return self.op(op, [a, b], shape, dtype or self.ty(a).dtype)

    def scalar(self, op: str, a: str, value: float, tag: str, dtype: str | None = None) -> str:
        """`a op value` with value a 0-d const of a's dtype (the result's is `dtype`)."""
        arr = np.array(value, dtype=np_dtype(self.ty(a).dtype))
        key = (str(arr.dtype), repr(arr.item()))
        if key not in self._consts:
            self._consts[key] = self.const(tag, arr)
        return self.binary(op, a, self._consts[key], dtype)

    def unary(self, op: str, a: str) -> str:
        return self.op(op, [a], self.ty(a).shape, self.ty(a).dtype)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        if tuple(shape) == self.ty(x).shape:
            return x
        return self.op("Reshape", [x, self.ints("shape", shape)], shape, self.ty(x).dtype)

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        shape = [self.ty(x).shape[p] for p in perm]
        return self.op("Transpose", [x], shape, self.ty(x).dtype, {"perm": tuple(perm)})

    def expand(self, x: str, shape: Sequence[int]) -> str:
        if tuple(shape) == self.ty(x).shape:
            return x
        return self.op("Expand", [x, self.ints("shape", shape)], shape, self.ty(x).dtype)

    def concat(self, xs: Sequence[str], axis: int) -> str:
        shape = list(self.ty(xs[0]).shape)
        axis %= len(shape)
        shape[axis] = sum(self.ty(x).shape[axis] for x in xs)
        return self.op("Concat", list(xs), shape, self.ty(xs[0]).dtype, {"axis": axis})

    def slice(self, x: str, axis: int, start: int, end: int, step: int = 1) -> str:
        shape = list(self.ty(x).shape)
        axis %= len(shape)
        shape[axis] = len(range(start, end, step))
        ins = [x, self.ints("starts", [start]), self.ints("ends", [end]),
               self.ints("axes", [axis])]
        if step != 1:
            ins.append(self.ints("steps", [step]))
        return self.op("Slice", ins, shape, self.ty(x).dtype)

    def cast(self, x: str, dtype: str) -> str:
        if self.ty(x).dtype == dtype:
            return x
        to = helper.np_dtype_to_tensor_dtype(np_dtype(dtype))
        return self.op("Cast", [x], self.ty(x).shape, dtype, {"to": int(to)})

    def finish(self, value: str, name: str, taken: set[str]) -> None:
        """Make `value` available as `name` (an output of the replaced node): rename it when
        this builder's op produced it, else copy it through an Identity."""
        g = self.graph
        if value in taken or g.producer(value) is None or value in g.outputs:
            g.add_node(g.fresh_name(f"{self.node}_out"), "Identity", [value], [name],
                       types=[g.values[value]], order=self.order)
        else:
            g.rename_value(value, name)
            value = name
        taken.add(value)


def _heads_4d(b: OpBuilder, x: str, heads: int, what: str, role: str) -> str:
    """[B, S, heads * D] -> [B, heads, S, D]."""
    bsz, s, hidden = b.ty(x).shape
    if heads <= 0 or hidden % heads:
        raise CompileError(f"{what}: {role} hidden size {hidden} is not a multiple of "
                           f"{heads} heads")
    return b.transpose(b.reshape(x, [bsz, s, heads, hidden // heads]), [0, 2, 1, 3])


def _repeat_heads(b: OpBuilder, x: str, rep: int) -> str:
    """[B, H, R, C] -> [B, H * rep, R, C] with every head repeated rep times in place
    (h0, h0, h1, h1, ...), as grouped-query attention shares each KV head."""
    if rep == 1:
        return x
    bsz, h, r, c = b.ty(x).shape
    y = b.expand(b.reshape(x, [bsz, h, 1, r, c]), [bsz, h, rep, r, c])
    return b.reshape(y, [bsz, h * rep, r, c])


def _frontier(sq: int, skv: int, offset: Any, causal: bool, left: int, right: int
              ) -> np.ndarray:
    """Which keys j each query i attends under the causal and window bounds, with the query
    block at `offset` (an int, or per-batch ints of shape [B]): [Sq, Skv] or [B, 1, Sq, Skv]."""
    off = np.asarray(offset, dtype=np.int64)
    if off.ndim:
        off = off.reshape(-1, 1, 1, 1)
    i = np.arange(sq).reshape(sq, 1)
    j = np.arange(skv).reshape(1, skv)
    diff = (i + off) - j
    ok = np.ones(diff.shape, dtype=bool)
    if causal:
        ok &= diff >= 0
    if left >= 0:
        ok &= diff <= left
    if right >= 0:
        ok &= -diff <= right
    return ok


def _padded_mask(b: OpBuilder, mask: str, skv: int, what: str) -> str:
    """attn_mask with its last axis padded to skv keys (False, or -inf for a float mask)."""
    mt = b.ty(mask)
    if not mt.rank:
        raise CompileError(f"{what}: a 0-d attn_mask is not a valid mask")
    n = mt.shape[-1]
    if n > skv:
        raise CompileError(f"{what}: attn_mask has {n} keys, more than the {skv} of K")
    if n == skv:
        return mask
    fill = False if mt.dtype == "bool" else -np.inf
    pad = np.full(mt.shape[:-1] + (skv - n,), fill, dtype=np_dtype(mt.dtype))
    arr = b.graph.const_array(mask)
    if arr is not None:
        return b.const("mask", np.concatenate([arr, pad], axis=-1))
    return b.concat([mask, b.const("mask_pad", pad)], -1)


def _minus_inf_where_not(b: OpBuilder, allowed: str, dtype: str) -> str:
    """0 where `allowed` (a bool tensor computed at run time), -inf elsewhere:
    (a - 1) * MAX * 2, the last product overflowing to -inf (exact IEEE arithmetic; the
    backend's Where is c * a + !c * b, which cannot select an infinite branch). The 2 is a
    tensor of the operand's shape rather than a scalar: a scalar becomes an immediate applied
    to the lanes past each row's end too, where it would leave infinities."""
    a = b.cast(allowed, dtype)
    u = b.scalar("Mul", b.scalar("Sub", a, 1.0, "one"), _max(dtype), "max")
    two = b.const("two", np.full(b.ty(u).shape, 2.0, dtype=np_dtype(dtype)))
    return b.binary("Mul", u, two)


@dataclass(frozen=True)
class DecomposeAttention:
    """Rewrite ONNX Attention (opsets 23 to 25) into MatMul, Transpose, Softmax and
    elementwise ops.

    Follows the operator's specification: 3-D inputs are split into q_num_heads/kv_num_heads
    heads; Q and K are each scaled by sqrt(scale) (default scale 1/sqrt(head size)); past_key
    and past_value are concatenated before K and V along the sequence axis (present_key and
    present_value); KV heads are repeated in place for grouped-query attention; softcap maps
    the scores to c * tanh(s / c); then one Add of the bias: a float attn_mask, plus -inf
    where a bool attn_mask is False, outside the causal frontier or the left/right window
    (bottom-right aligned after the past keys, or per batch at nonpad_kv_seqlen - Sq) and past
    nonpad_kv_seqlen. The parts known at compile time are one constant; -inf from run-time
    parts is made exactly, by overflow. The softmax runs in softmax_precision when given. A
    query row whose every key is masked gives zeros (not NaN): when that can happen the
    softmax gets one more column, 0 for such a row and -inf for any other, which takes all the
    weight of a fully masked row and none of the others', and is sliced off afterwards. The
    optional 4th output is the raw QK product (mode 0, as the specification and the ONNX
    function body say; onnx.reference gives it after softcap), after softcap (1), after the
    bias (2) or the probabilities (3).

    Afterwards: no Attention op remains; each is replaced by ops of the ai.onnx domain whose
    outputs keep the Attention's output names.
    """

    name: ClassVar[str] = "decompose-attention"

    def apply(self, graph: Graph) -> Graph:
        return replace_each(graph, "Attention", _decompose)


def _decompose(graph: Graph, node: str) -> None:
    a = graph.node(node)
    what = f"Attention (node {node!r})"
    ins = list(a["inputs"]) + [""] * (7 - len(a["inputs"]))
    outs = list(a["outputs"]) + [""] * (4 - len(a["outputs"]))
    q, k, v, mask, past_k, past_v, nonpad = ins[:7]
    at = a["attrs"]
    mode = int(at.get("qk_matmul_output_mode", 0))
    if mode not in _MODES:
        raise CompileError(f"{what}: qk_matmul_output_mode {mode} is not one of 0, 1, 2, 3")
    if bool(past_k) != bool(past_v):
        raise CompileError(f"{what}: past_key and past_value must be given together")
    if past_k and nonpad:
        raise CompileError(f"{what}: nonpad_kv_seqlen cannot be combined with past_key")
    dtype = graph.values[q].dtype
    if np_dtype(dtype).kind != "f" and dtype != "bfloat16":
        raise CompileError(f"{what}: Q of element type {dtype} is not a float tensor")
    ranks = {graph.values[x].rank for x in (q, k, v)}
    if len(ranks) != 1 or ranks.pop() not in (3, 4):
        raise CompileError(f"{what}: Q, K and V must all be 3-D or all 4-D")
    rank = graph.values[q].rank
    order = a["order"]
    graph.remove_node(node)
    b = OpBuilder(graph, node, order)

    if rank == 3:
        hq, hkv = int(at.get("q_num_heads", 0)), int(at.get("kv_num_heads", 0))
        if hq <= 0 or hkv <= 0:
            raise CompileError(f"{what}: 3-D inputs need q_num_heads and kv_num_heads")
        q4 = _heads_4d(b, q, hq, what, "Q")
        k4 = _heads_4d(b, k, hkv, what, "K")
        v4 = _heads_4d(b, v, hkv, what, "V")
    else:
        q4, k4, v4 = q, k, v
        for attr, x in (("q_num_heads", q), ("kv_num_heads", k)):
            if attr in at and int(at[attr]) != graph.values[x].shape[1]:
                raise CompileError(f"{what}: {attr}={at[attr]} but the input has "
                                   f"{graph.values[x].shape[1]} heads")
    bsz, hq, sq, dq = b.ty(q4).shape
    _, hkv, _, dk = b.ty(k4).shape
    if dq != dk or b.ty(v4).shape[1] != hkv or b.ty(v4).shape[2] != b.ty(k4).shape[2]:
        raise CompileError(f"{what}: Q {list(b.ty(q4).shape)}, K {list(b.ty(k4).shape)} and "
                           f"V {list(b.ty(v4).shape)} do not fit together")
    if hq % hkv:
        raise CompileError(f"{what}: {hq} query heads are not a multiple of {hkv} KV heads")
    past = graph.values[past_k].shape[2] if past_k else 0
    present_k = b.concat([past_k, k4], 2) if past_k else k4
    present_v = b.concat([past_v, v4], 2) if past_v else v4
    skv = b.ty(present_k).shape[2]

    scale = at.get("scale")
    scale = 1.0 / np.sqrt(dq) if scale is None else float(scale)
    root = np.asarray(np.sqrt(scale), dtype=np_dtype(dtype))  # Q and K each scaled by it
    qs, ks = q4, present_k
    if root != 1:
        qs = b.scalar("Mul", q4, float(root), "scale")
        ks = b.scalar("Mul", present_k, float(root), "scale")
    kt = _repeat_heads(b, b.transpose(ks, [0, 1, 3, 2]), hq // hkv)
    vr = _repeat_heads(b, present_v, hq // hkv)
    qk = b.op("MatMul", [qs, kt], [bsz, hq, sq, skv], dtype, tag="qk")
    scores = qk
    softcap = float(at.get("softcap", 0.0))
    if softcap > 0:
        scores = b.scalar("Mul", b.unary("Tanh", b.scalar("Div", qk, softcap, "softcap")),
                          softcap, "softcap")

    bias, guard = _bias(b, graph, mask, nonpad, at, bsz, sq, skv, past, dtype, what)
    x = scores if bias is None else b.binary("Add", scores, bias)
    ext = x
    if guard is not None:
        ext = b.concat([x, b.expand(guard, [bsz, hq, sq, 1])], -1)
    sp = at.get("softmax_precision")
    if sp is not None and int(sp) not in _SOFTMAX_TYPES:
        raise CompileError(f"{what}: softmax_precision {sp} is not one of "
                           f"{', '.join(map(str, _SOFTMAX_TYPES))}")
    sp_dtype = dtype if sp is None else _SOFTMAX_TYPES[int(sp)]
    probs = b.cast(b.op("Softmax", [b.cast(ext, sp_dtype)], b.ty(ext).shape, sp_dtype,
                        {"axis": -1}), dtype)
    if guard is not None:
        probs = b.slice(probs, -1, 0, skv)
    y = b.op("MatMul", [probs, vr], [bsz, hq, sq, b.ty(vr).shape[3]], dtype, tag="y")
    if rank == 3:
        y = b.reshape(b.transpose(y, [0, 2, 1, 3]), [bsz, sq, hq * b.ty(vr).shape[3]])

    taken: set[str] = set()
    results = {0: y, 1: present_k, 2: present_v,
               3: (qk, scores, x, probs)[mode]}
    for i, out in enumerate(outs):
        if out:
            b.finish(results[i], out, taken)


def _bias(b: OpBuilder, graph: Graph, mask: str, nonpad: str, at: dict[str, Any], bsz: int,
          sq: int, skv: int, past: int, dtype: str, what: str
          ) -> tuple[str | None, str | None]:
    """The additive bias of the scores (None when it is zero) and the extra softmax column
    that zeroes fully masked rows (None when no row can be fully masked)."""
    causal = bool(int(at.get("is_causal", 0)))
    left, right = int(at.get("left_window_size", -1)), int(at.get("right_window_size", -1))
    if left < -1 or right < -1:
        raise CompileError(f"{what}: window sizes must be -1 or non-negative")
    bounded = causal or left >= 0 or right >= 0
    ndt = np_dtype(dtype)
    static = np.zeros((sq, skv), dtype=ndt)  # the part of the bias known at compile time
    parts: list[str] = []  # parts computed at run time
    allowed: list[str] = []  # bool tensors computed at run time (False: -inf)
    n_arr = graph.const_array(nonpad) if nonpad else None
    if nonpad and n_arr is None:
        allowed.append(_nonpad_allowed(b, nonpad, bsz, sq, skv, causal, left, right))
    else:
        if n_arr is not None:  # an external cache: the frontier per batch, and its padding
            n = np.asarray(n_arr, dtype=np.int64).reshape(-1)
            ok = _frontier(sq, skv, n - sq, causal, left, right) if bounded else True
            ok = ok & (np.arange(skv) < n.reshape(-1, 1, 1, 1))
        else:
            ok = _frontier(sq, skv, past, causal, left, right)
        static = static + np.where(ok, ndt.type(0), ndt.type(-np.inf))
    if mask:
        m = _padded_mask(b, mask, skv, what)
        arr = graph.const_array(m)
        is_bool = b.ty(m).dtype == "bool"
        if arr is not None:
            static = static + (np.where(arr, ndt.type(0), ndt.type(-np.inf)) if is_bool
                               else np.asarray(arr).astype(ndt))
        elif is_bool:
            allowed.append(m)
        else:
            parts.append(b.cast(m, dtype))
    if len(allowed) == 2:
        allowed = [b.binary("And", allowed[0], allowed[1])]
    if allowed:
        parts.append(_minus_inf_where_not(b, allowed[0], dtype))
    if np.any(static != 0):
        parts.append(b.const("bias", static))
    if not parts:
        return None, None
    # run-time parts at the bias's full shape, so that each sum has one operand of the
    # result's shape (a constant is broadcast where it is stored)
    shape = np.broadcast_shapes(*(b.ty(p).shape for p in parts))
    parts = [p if graph.is_const(p) else b.expand(p, shape) for p in parts]
    bias = parts[0]
    for p in parts[1:]:
        bias = b.binary("Add", bias, p)
    if not graph.is_const(bias):
        # 1 where a row has a key that is not -inf, else 0
        g = b.cast(b.scalar("Greater", bias, -np.inf, "minus_inf", "bool"), dtype)
        keep_shape = b.ty(g).shape[:-1] + (1,)
        keep = b.op("ReduceMax", [g, b.ints("axes", [-1])], keep_shape, dtype, {"keepdims": 1})
        return bias, _minus_inf_where_kept(b, keep, dtype)
    arr = graph.const_array(bias)
    dead = np.isneginf(arr.max(axis=-1, keepdims=True))
    if not dead.any():
        return bias, None
    return bias, b.const("sink", np.where(dead, ndt.type(0), ndt.type(-np.inf)))


def _minus_inf_where_kept(b: OpBuilder, keep: str, dtype: str) -> str:
    """-inf where keep is 1, 0 where it is 0 (keep * -MAX * 2, see _minus_inf_where_not)."""
    u = b.scalar("Mul", keep, -_max(dtype), "max")
    two = b.const("two", np.full(b.ty(u).shape, 2.0, dtype=np_dtype(dtype)))
    return b.binary("Mul", u, two)


def _nonpad_allowed(b: OpBuilder, nonpad: str, bsz: int, sq: int, skv: int, causal: bool,
                    left: int, right: int) -> str:
    """[B, 1, Sq, Skv] bool: key j is within the first nonpad_kv_seqlen[b] keys and inside the
    causal/window bounds of a query block at offset n - Sq. Each bound is lo[i, j] <= n or
    n <= hi[i, j] for constant lo, hi; the comparisons run with the batch along the last axis
    ([Sq, Skv, B], n read as a row), then move it to the front."""
    i = np.arange(sq).reshape(sq, 1)
    j = np.arange(skv).reshape(1, skv)
    lo = np.broadcast_to(j + 1, (sq, skv))  # padding: j < n
    hi = None
    if causal:
        lo = np.maximum(lo, j - i + sq)
    if right >= 0:
        lo = np.maximum(lo, j - i + sq - right)
    if left >= 0:
        hi = left + j - i + sq
    n = b.cast(nonpad, "float32")

    def bound(op: str, arr: np.ndarray) -> str:
        c = b.const("bound", np.ascontiguousarray(
            np.broadcast_to(arr.astype(np.float32)[:, :, None], (sq, skv, bsz))))
        return b.binary(op, c, n, "bool")

    ok = bound("LessOrEqual", lo)
    if hi is not None:
        ok = b.binary("And", ok, bound("GreaterOrEqual", hi))
    return b.reshape(b.transpose(ok, [2, 0, 1]), [bsz, 1, sq, skv])
