"""Llama family (GQA, RoPE, SwiGLU, RMSNorm, no biases), written as the torch exporters write
Hugging Face LlamaForCausalLM.

Graph (per layer, pre-norm):
    RMSNorm: Pow(x, 2) -> ReduceMean -> Add eps -> Sqrt -> Reciprocal -> Mul x -> Mul weight
        (rms="opset23": the RMSNormalization op)
    q, k, v = MatMul by q_proj [d, H*hd], k_proj / v_proj [d, KV*hd]; Reshape/Transpose to heads
    RoPE (rope="decomposed"): cos/sin = Gather(table [P, hd], positions) -> Unsqueeze;
        rotate_half(x) = Concat(Neg(Slice(x, hd/2:)), Slice(x, :hd/2)); x*cos + rotate_half(x)*sin
        (rope="opset23": RotaryEmbedding with [P, hd/2] caches and position_ids)
    GQA: k, v [B, KV, S, hd] -> Unsqueeze(2) -> Expand [B, KV, H/KV, S, hd] -> Reshape [B, H, S, hd]
    attention: MatMul q k^T, Mul 1/sqrt(hd) (or Div), Add causal mask, Softmax, MatMul v
        (attention="opset23": Attention with kv_num_heads, is_causal=1, optional past/present)
    SwiGLU: down(MatMul(x, gate) * Sigmoid(MatMul(x, gate)) * MatMul(x, up))
    logits = MatMul(RMSNorm(h), lm_head [d, vocab])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from models.common import (
    GraphBuilder,
    causal_mask,
    check_dims,
    fused_attention,
    merge_heads,
    sdpa,
    split_heads,
)


def rope_tables(max_positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables [max_positions, head_dim/2] (float32) of the Llama rotary embedding."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _rms_norm(b: GraphBuilder, x: str, name: str, d: int, eps: float, form: str) -> str:
    w = b.weight(name, (d,), init="scale")
    if form == "opset23":
        return b.op("RMSNormalization", [x, w], axis=-1, epsilon=eps)
    var = b.reduce_mean(b.op("Pow", [x, b.const(np.float32(2.0))]), [-1])
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(eps))])])])
    return b.op("Mul", [w, b.op("Mul", [x, inv])])


def _rotate_half(b: GraphBuilder, x: str, hd: int) -> str:
    x1 = b.slice(x, [0], [hd // 2], [-1])
    x2 = b.slice(x, [hd // 2], [np.iinfo(np.int64).max], [-1])
    return b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)


def _repeat_kv(b: GraphBuilder, x: str, bs: tuple[str, str], kv_heads: int, n_rep: int,
               hd: int) -> str:
    if n_rep == 1:
        return x
    x5 = b.unsqueeze(x, [2])
    expanded = b.op("Expand", [x5, b.concat_shape([bs[0], kv_heads, n_rep, bs[1], hd])])
    return b.op("Reshape", [expanded, b.concat_shape([bs[0], kv_heads * n_rep, bs[1], hd])])


def llama(layers: int, d_model: int, heads: int, kv_heads: int, ffn: int, vocab: int, *,
          rope_theta: float = 10000.0, max_positions: int = 2048,
          batch: int | str = "batch", seq: int | str = "seq", weights: str = "random",
          seed: int = 0, opset: int = 17, rms: str = "decomposed", rope: str = "decomposed",
          attention: str = "decomposed", past: bool = False, scale: str = "mul",
          mask: str = "trilu", tie_embeddings: bool = False, position_ids: bool = False,
          eps: float = 1e-5) -> onnx.ModelProto:
    """Build a Llama causal language model graph.

    Inputs: input_ids int64 [batch, seq] (+ position_ids int64 [batch, seq] if position_ids;
    + past_key_values.{i}.key/.value float32 [batch, kv_heads, past_seq, hd] if past).
    Outputs: logits float32 [batch, seq, vocab] (+ present.{i}.key/.value if past).

    rms / rope / attention: 'decomposed' | 'opset23' (the fused RMSNormalization,
    RotaryEmbedding and Attention ops; any 'opset23' raises the opset to 23). scale: 'mul' |
    'div'. mask: 'trilu' (ConstantOfShape + Trilu, built per call) | 'constant' (a
    [max_positions]^2 constant; large for long contexts).
    """
    check_dims(layers=layers, d_model=d_model, heads=heads, kv_heads=kv_heads, ffn=ffn,
               vocab=vocab, max_positions=max_positions)
    if d_model % heads or heads % kv_heads:
        raise ValueError(f"need d_model % heads == 0 and heads % kv_heads == 0, got "
                         f"{d_model}, {heads}, {kv_heads}")
    for opt, val in (("rms", rms), ("rope", rope), ("attention", attention)):
        if val not in ("decomposed", "opset23"):
            raise ValueError(f"{opt} must be 'decomposed' or 'opset23', got {val!r}")
    if past and attention != "opset23":
        raise ValueError("past=True needs attention='opset23'")
    if "opset23" in (rms, rope, attention):
        opset = max(opset, 23)
    hd = d_model // heads
    if hd % 2:
        raise ValueError(f"head_dim {hd} must be even for rotary embeddings")
    n_rep = heads // kv_heads
    b = GraphBuilder("llama", weights=weights, seed=seed, opset=opset)

    ids = b.input("input_ids", TensorProto.INT64, [batch, seq])
    pos_in = b.input("position_ids", TensorProto.INT64, [batch, seq]) if position_ids else None
    past_names = []
    if past:
        for i in range(layers):
            past_names.append(tuple(
                b.input(f"past_key_values.{i}.{t}", TensorProto.FLOAT,
                        [batch, kv_heads, "past_seq", hd]) for t in ("key", "value")))

    b.scope = "/model"
    bs = (b.dim(ids, 0), b.dim(ids, 1))
    h = b.op("Gather", [b.weight("model.embed_tokens.weight", (vocab, d_model)), ids], axis=0)

    # Positions [1 or B, S], then the rotary tables for them.
    if pos_in is None:
        seq_s = b.scalar_dim(ids, 1)
        start = b.scalar_dim(past_names[0][0], 2) if past else b.const(np.int64(0))
        end = b.op("Add", [start, seq_s]) if past else seq_s
        pos = b.unsqueeze(b.op("Range", [start, end, b.const(np.int64(1))]), [0])
    else:
        pos = pos_in
    cos_half, sin_half = rope_tables(max_positions, hd, rope_theta)
    if rope == "decomposed":
        cos_t = b.const(np.concatenate([cos_half, cos_half], -1), name="rope_cos_table")
        sin_t = b.const(np.concatenate([sin_half, sin_half], -1), name="rope_sin_table")
        cos = b.unsqueeze(b.op("Gather", [cos_t, pos], axis=0), [1])  # [B|1, 1, S, hd]
        sin = b.unsqueeze(b.op("Gather", [sin_t, pos], axis=0), [1])
    else:
        cos_t = b.const(cos_half, name="rope_cos_cache")
        sin_t = b.const(sin_half, name="rope_sin_cache")
        pos_bs = pos if pos_in is not None else b.op("Expand", [pos, b.concat_shape(list(bs))])
    mask_ss = causal_mask(b, mask, bs[1], max_positions) if attention == "decomposed" else None

    for i in range(layers):
        p = f"model.layers.{i}"
        b.scope = f"/model/layers.{i}/self_attn"
        a = _rms_norm(b, h, f"{p}.input_layernorm.weight", d_model, eps, rms)
        q = b.linear(a, f"{p}.self_attn.q_proj", d_model, heads * hd, bias=False)
        k = b.linear(a, f"{p}.self_attn.k_proj", d_model, kv_heads * hd, bias=False)
        v = b.linear(a, f"{p}.self_attn.v_proj", d_model, kv_heads * hd, bias=False)
        if rope == "opset23" and attention == "opset23":
            # All 3-D: RotaryEmbedding and Attention take [B, S, heads*hd] with head counts.
            q = b.op("RotaryEmbedding", [q, cos_t, sin_t, pos_bs], num_heads=heads)
            k = b.op("RotaryEmbedding", [k, cos_t, sin_t, pos_bs], num_heads=kv_heads)
            y = _fused(b, q, k, v, i, past, past_names, batch, kv_heads, hd, heads)
        else:
            q = split_heads(b, q, bs, heads, hd)
            k = split_heads(b, k, bs, kv_heads, hd)
            v = split_heads(b, v, bs, kv_heads, hd)
            if rope == "decomposed":
                q = b.op("Add", [b.op("Mul", [q, cos]),
                                 b.op("Mul", [_rotate_half(b, q, hd), sin])])
                k = b.op("Add", [b.op("Mul", [k, cos]),
                                 b.op("Mul", [_rotate_half(b, k, hd), sin])])
            else:
                q = b.op("RotaryEmbedding", [q, cos_t, sin_t, pos_bs])
                k = b.op("RotaryEmbedding", [k, cos_t, sin_t, pos_bs])
            if attention == "opset23":
                y = _fused(b, q, k, v, i, past, past_names, batch, kv_heads, hd, None)
            else:
                k = _repeat_kv(b, k, bs, kv_heads, n_rep, hd)
                v = _repeat_kv(b, v, bs, kv_heads, n_rep, hd)
                y = sdpa(b, q, k, v, hd, mask_ss, scale)
            y = merge_heads(b, y, bs, d_model)
        h = b.op("Add", [h, b.linear(y, f"{p}.self_attn.o_proj", heads * hd, d_model,
                                     bias=False)])
        b.scope = f"/model/layers.{i}/mlp"
        m = _rms_norm(b, h, f"{p}.post_attention_layernorm.weight", d_model, eps, rms)
        gate = b.linear(m, f"{p}.mlp.gate_proj", d_model, ffn, bias=False)
        up = b.linear(m, f"{p}.mlp.up_proj", d_model, ffn, bias=False)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
        h = b.op("Add", [h, b.linear(act, f"{p}.mlp.down_proj", ffn, d_model, bias=False)])

    b.scope = "/model/norm"
    h = _rms_norm(b, h, "model.norm.weight", d_model, eps, rms)
    b.scope = "/lm_head"
    if tie_embeddings:
        head = b.op("Transpose", ["model.embed_tokens.weight"], perm=[1, 0])
    else:
        head = b.weight("lm_head.weight", (d_model, vocab))
    b.op("MatMul", [h, head], outputs=["logits"])
    b.outputs.insert(0, onnx.helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, [batch, seq, vocab]))
    return b.model(f"Llama: {layers} layers, d_model {d_model}, {heads} heads, {kv_heads} kv "
                   f"heads, ffn {ffn}, vocab {vocab}, rope_theta {rope_theta}, "
                   f"{max_positions} positions, rms {rms}, rope {rope}, attention {attention}")


def _fused(b, q, k, v, i, past, past_names, batch, kv_heads, hd, heads):
    present = None
    if past:
        present = (f"present.{i}.key", f"present.{i}.value")
        for name in present:
            b.output(name, TensorProto.FLOAT, [batch, kv_heads, "total_seq", hd])
    return fused_attention(b, q, k, v, past=past_names[i] if past else None, present=present,
                           q_heads=heads, kv_heads=kv_heads if heads else None)
