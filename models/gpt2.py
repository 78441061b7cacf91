"""GPT-2 family, written as the torch exporters write Hugging Face GPT2LMHeadModel.

Graph (per layer, pre-LayerNorm):
    h = Gather(wte, input_ids) + Gather(wpe, positions)      positions: Range(past, past+S) or
                                                             the position_ids input
    a = LayerNorm(h);  qkv = MatMul(a, c_attn.W) + b;  q, k, v = Split(qkv, 3)
    decomposed attention: Reshape/Transpose to [B, H, S, hd], MatMul(q, k^T), Div sqrt(hd)
        (or Mul), Add the causal mask (constant [P, P] of 0 / float32 min, Sliced to [S, S]),
        Softmax, MatMul v, Transpose/Reshape back
    fused attention (attention="opset23"): Attention(q, k, v 3-D, q_num_heads=kv_num_heads=H,
        is_causal=1) with optional past_key/past_value inputs and present outputs
    h += MatMul(y, c_proj.W) + b
    h += MatMul(gelu(MatMul(LayerNorm(h), c_fc.W) + b), c_proj.W) + b
    logits = MatMul(LayerNorm(h), Transpose(wte))     (or a separate lm_head.weight)
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


def gpt2(layers: int, d_model: int, heads: int, vocab: int, max_positions: int,
         ffn: int | None = None, *, batch: int | str = "batch", seq: int | str = "seq",
         weights: str = "random", seed: int = 0, opset: int = 17, decomposed: bool = False,
         gelu: str = "tanh", scale: str = "div", mask: str = "constant",
         tie_embeddings: bool = True, position_ids: bool = False,
         attention: str = "decomposed", past: bool = False, eps: float = 1e-5,
         ) -> onnx.ModelProto:
    """Build a GPT-2 language model graph.

    Inputs: input_ids int64 [batch, seq] (+ position_ids int64 [batch, seq] if position_ids;
    + past_key_values.{i}.key/.value float32 [batch, heads, past_seq, hd] if past).
    Outputs: logits float32 [batch, seq, vocab] (+ present.{i}.key/.value if past).

    decomposed: LayerNorm as ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add instead of
    LayerNormalization. gelu: 'tanh' | 'erf' | 'op'. scale: 'div' | 'mul'. mask: 'constant'
    | 'trilu'. attention: 'decomposed' | 'opset23' (raises the opset to 23).
    """
    ffn = 4 * d_model if ffn is None else ffn
    check_dims(layers=layers, d_model=d_model, heads=heads, vocab=vocab,
               max_positions=max_positions, ffn=ffn)
    if d_model % heads:
        raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
    if attention not in ("decomposed", "opset23"):
        raise ValueError(f"attention must be 'decomposed' or 'opset23', got {attention!r}")
    if past and attention != "opset23":
        raise ValueError("past=True needs attention='opset23'")
    if attention == "opset23":
        opset = max(opset, 23)
    hd = d_model // heads
    b = GraphBuilder("gpt2", weights=weights, seed=seed, opset=opset)

    ids = b.input("input_ids", TensorProto.INT64, [batch, seq])
    pos_in = b.input("position_ids", TensorProto.INT64, [batch, seq]) if position_ids else None
    past_names = []
    if past:
        for i in range(layers):
            kv = tuple(b.input(f"past_key_values.{i}.{t}", TensorProto.FLOAT,
                               [batch, heads, "past_seq", hd]) for t in ("key", "value"))
            past_names.append(kv)

    b.scope = "/transformer"
    batch_1d, seq_1d = b.dim(ids, 0), b.dim(ids, 1)
    wte = b.weight("transformer.wte.weight", (vocab, d_model))
    wpe = b.weight("transformer.wpe.weight", (max_positions, d_model))
    if pos_in is None:
        seq_s = b.scalar_dim(ids, 1)
        start = b.scalar_dim(past_names[0][0], 2) if past else b.const(np.int64(0))
        end = b.op("Add", [start, seq_s]) if past else seq_s
        pos = b.unsqueeze(b.op("Range", [start, end, b.const(np.int64(1))]), [0])
    else:
        pos = pos_in
    h = b.op("Add", [b.op("Gather", [wte, ids], axis=0), b.op("Gather", [wpe, pos], axis=0)])
    mask_ss = causal_mask(b, mask, seq_1d, max_positions) if attention == "decomposed" else None

    for i in range(layers):
        p = f"transformer.h.{i}"
        b.scope = f"/transformer/h.{i}/attn"
        a = b.layer_norm(h, f"{p}.ln_1", d_model, eps, decomposed)
        qkv = b.linear(a, f"{p}.attn.c_attn", d_model, 3 * d_model)
        q, k, v = b.split(qkv, [d_model] * 3, axis=-1)
        if attention == "decomposed":
            q, k, v = (split_heads(b, t, (batch_1d, seq_1d), heads, hd) for t in (q, k, v))
            y = merge_heads(b, sdpa(b, q, k, v, hd, mask_ss, scale), (batch_1d, seq_1d),
                            d_model)
        else:
            present = None
            if past:
                present = (f"present.{i}.key", f"present.{i}.value")
                for name in present:
                    b.output(name, TensorProto.FLOAT, [batch, heads, "total_seq", hd])
            y = fused_attention(b, q, k, v, past=past_names[i] if past else None,
                                present=present, q_heads=heads, kv_heads=heads)
        h = b.op("Add", [h, b.linear(y, f"{p}.attn.c_proj", d_model, d_model)])
        b.scope = f"/transformer/h.{i}/mlp"
        m = b.layer_norm(h, f"{p}.ln_2", d_model, eps, decomposed)
        m = b.gelu(b.linear(m, f"{p}.mlp.c_fc", d_model, ffn), gelu)
        h = b.op("Add", [h, b.linear(m, f"{p}.mlp.c_proj", ffn, d_model)])

    b.scope = "/transformer/ln_f"
    h = b.layer_norm(h, "transformer.ln_f", d_model, eps, decomposed)
    b.scope = "/lm_head"
    if tie_embeddings:
        head = b.op("Transpose", [wte], perm=[1, 0])
    else:
        head = b.weight("lm_head.weight", (d_model, vocab))
    b.op("MatMul", [h, head], outputs=["logits"])
    # Outputs in the order exporters use: logits first, then presents.
    b.outputs.insert(0, onnx.helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, [batch, seq, vocab]))
    return b.model(f"GPT-2: {layers} layers, d_model {d_model}, {heads} heads, ffn {ffn}, "
                   f"vocab {vocab}, {max_positions} positions, attention {attention}")
