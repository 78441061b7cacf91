"""BERT family (post-LayerNorm encoder), written as the torch exporters write Hugging Face
BertModel.

Graph:
    h = LayerNorm(Gather(word, input_ids) + Gather(token_type, token_type_ids)
                  + Gather(position, Range(0, S)))
    additive mask = Mul(Sub(1.0, Cast<float>(Unsqueeze(attention_mask, [1, 2]))), float32 min)
        -> [B, 1, 1, S]
    per layer: q, k, v = MatMul + Add bias each; Reshape/Transpose to heads; MatMul q k^T,
        Div sqrt(hd) (or Mul), Add mask, Softmax, MatMul v, back; dense + bias;
        h = LayerNorm(h + attn); h = LayerNorm(h + MatMul(gelu_erf(MatMul(h) + b)) + b)
    outputs: last_hidden_state [B, S, d]; pooler_output = Tanh(Gemm(h[:, 0], W, b, transB=1))
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from models.common import FLOAT32_MIN, GraphBuilder, check_dims, merge_heads, sdpa, split_heads


def bert(layers: int, d_model: int, heads: int, ffn: int, vocab: int, max_positions: int,
         type_vocab: int = 2, *, batch: int | str = "batch", seq: int | str = "seq",
         weights: str = "random", seed: int = 0, opset: int = 17, decomposed: bool = False,
         gelu: str = "erf", scale: str = "div", pooler: bool = True, eps: float = 1e-12,
         ) -> onnx.ModelProto:
    """Build a BERT encoder graph.

    Inputs (int64 [batch, seq]): input_ids, token_type_ids, attention_mask (1 = attend).
    Outputs: last_hidden_state float32 [batch, seq, d_model] and, if pooler,
    pooler_output float32 [batch, d_model].

    decomposed: LayerNorm as ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add. gelu: 'erf' | 'tanh' |
    'op'. scale: 'div' | 'mul'.
    """
    check_dims(layers=layers, d_model=d_model, heads=heads, ffn=ffn, vocab=vocab,
               max_positions=max_positions, type_vocab=type_vocab)
    if d_model % heads:
        raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
    hd = d_model // heads
    b = GraphBuilder("bert", weights=weights, seed=seed, opset=opset)
    ids = b.input("input_ids", TensorProto.INT64, [batch, seq])
    types = b.input("token_type_ids", TensorProto.INT64, [batch, seq])
    amask = b.input("attention_mask", TensorProto.INT64, [batch, seq])

    b.scope = "/embeddings"
    bs = (b.dim(ids, 0), b.dim(ids, 1))
    word = b.weight("embeddings.word_embeddings.weight", (vocab, d_model))
    posw = b.weight("embeddings.position_embeddings.weight", (max_positions, d_model))
    typew = b.weight("embeddings.token_type_embeddings.weight", (type_vocab, d_model))
    pos = b.unsqueeze(b.op("Range", [b.const(np.int64(0)), b.scalar_dim(ids, 1),
                                     b.const(np.int64(1))]), [0])
    h = b.op("Add", [b.op("Gather", [word, ids], axis=0), b.op("Gather", [typew, types], axis=0)])
    h = b.op("Add", [h, b.op("Gather", [posw, pos], axis=0)])
    h = b.layer_norm(h, "embeddings.LayerNorm", d_model, eps, decomposed)

    b.scope = "/extended_attention_mask"
    m = b.op("Cast", [b.unsqueeze(amask, [1, 2])], to=TensorProto.FLOAT)
    m = b.op("Mul", [b.op("Sub", [b.const(np.float32(1.0)), m]),
                     b.const(np.float32(FLOAT32_MIN))])

    for i in range(layers):
        p = f"encoder.layer.{i}"
        b.scope = f"/encoder/layer.{i}/attention"
        q, k, v = (split_heads(b, b.linear(h, f"{p}.attention.self.{n}", d_model, d_model),
                               bs, heads, hd) for n in ("query", "key", "value"))
        y = merge_heads(b, sdpa(b, q, k, v, hd, m, scale), bs, d_model)
        y = b.linear(y, f"{p}.attention.output.dense", d_model, d_model)
        h = b.layer_norm(b.op("Add", [y, h]), f"{p}.attention.output.LayerNorm", d_model, eps,
                         decomposed)
        b.scope = f"/encoder/layer.{i}/ffn"
        f = b.gelu(b.linear(h, f"{p}.intermediate.dense", d_model, ffn), gelu)
        f = b.linear(f, f"{p}.output.dense", ffn, d_model)
        h = b.layer_norm(b.op("Add", [f, h]), f"{p}.output.LayerNorm", d_model, eps, decomposed)

    b.op("Identity", [h], outputs=["last_hidden_state"])
    b.output("last_hidden_state", TensorProto.FLOAT, [batch, seq, d_model])
    if pooler:
        b.scope = "/pooler"
        first = b.op("Gather", [h, b.const(np.int64(0))], axis=1)  # [B, d]
        w = b.weight("pooler.dense.weight", (d_model, d_model))  # torch layout [out, in]
        bias = b.weight("pooler.dense.bias", (d_model,), init="bias")
        b.op("Tanh", [b.op("Gemm", [first, w, bias], transB=1)], outputs=["pooler_output"])
        b.output("pooler_output", TensorProto.FLOAT, [batch, d_model])
    return b.model(f"BERT: {layers} layers, d_model {d_model}, {heads} heads, ffn {ffn}, "
                   f"vocab {vocab}, {max_positions} positions, {type_vocab} token types")
