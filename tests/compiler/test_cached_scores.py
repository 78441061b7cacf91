"""Scores of one query row per head against a few cached keys (a decode step):
compile._cached_scores turns all heads' keys at once (K [G * S, d] -> K^T [d, G * S]),
multiplies every query row by all of it and slices each head's lanes, grouped-query heads
included (their key heads are not repeated). The numbers are the per-head products'."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend import compile as backend
from compiler.backend.compile import _cached_scores, _kv_repeat
from compiler.frontend import import_onnx
from models.presets import build_preset

RNG = np.random.default_rng(11)


def _scores(q_rows: int, keys: int, heads: int = 3, kv_heads: int = 3, d: int = 24):
    """Q [2, heads, q_rows, d] @ K^T with K [2, kv_heads, keys, d], K's heads repeated as the
    grouped-query decomposition writes it when kv_heads < heads."""
    rep = heads // kv_heads
    nodes = [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])]
    kt = "kt"
    if rep > 1:
        nodes += [h.make_node("Reshape", ["kt", "s5"], ["r5"]),
                  h.make_node("Expand", ["r5", "e5"], ["x5"]),
                  h.make_node("Reshape", ["x5", "s4"], ["kr"])]
        kt = "kr"
    nodes.append(h.make_node("MatMul", ["q", kt], ["s"]))
    inits = [h.make_tensor("s5", T.INT64, [5], [2, kv_heads, 1, d, keys]),
             h.make_tensor("e5", T.INT64, [5], [2, kv_heads, rep, d, keys]),
             h.make_tensor("s4", T.INT64, [4], [2, heads, d, keys])] if rep > 1 else []
    g = h.make_graph(nodes, "g",
                     [h.make_tensor_value_info("q", T.FLOAT, [2, heads, q_rows, d]),
                      h.make_tensor_value_info("k", T.FLOAT, [2, kv_heads, keys, d])],
                     [h.make_tensor_value_info("s", T.FLOAT, [2, heads, q_rows, keys])],
                     initializer=inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def _ops(model):
    graph = import_onnx(model)
    _cached_scores(graph, 320)
    return graph, sorted(graph.node(n)["op"] for n in graph.nodes())


@pytest.mark.parametrize("heads,kv_heads", [(3, 3), (4, 2)])
def test_one_query_row_per_head_is_rewritten(heads, kv_heads):
    graph, ops = _ops(_scores(1, 7, heads, kv_heads))
    assert ops.count("Slice") == 2 * heads  # one per query row
    assert ops.count("MatMul") == 1 and "Expand" not in ops
    turn = [n for n in graph.nodes() if graph.node(n)["op"] == "Transpose"]
    assert [tuple(graph.values[graph.node(n)["outputs"][0]].shape) for n in turn] == \
        [(24, 2 * kv_heads * 7)]


@pytest.mark.parametrize("q_rows,keys", [(2, 7), (1, 320)])
def test_several_query_rows_or_a_full_vector_of_keys_keep_the_matmul(q_rows, keys):
    _graph, ops = _ops(_scores(q_rows, keys))
    assert ops == ["MatMul", "Transpose"]


def test_a_repeat_of_other_shapes_is_not_taken_for_grouped_heads():
    graph = import_onnx(_scores(1, 5, 4, 2))
    kr = next(graph.node(n)["outputs"][0] for n in graph.nodes()
              if graph.node(n)["outputs"][0] == "kr")
    assert _kv_repeat(graph, kr) == ("kt", 2)
    assert _kv_repeat(graph, "kt") == ("kt", 1)


@pytest.mark.parametrize("heads,kv_heads", [(3, 3), (4, 2), (4, 1)])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_scores_match_the_per_head_products_bit_for_bit(heads, kv_heads, precision,
                                                        monkeypatch):
    q = RNG.standard_normal((2, heads, 1, 24)).astype(np.float32)
    k = RNG.standard_normal((2, kv_heads, 9, 24)).astype(np.float32)
    model = _scores(1, 9, heads, kv_heads)
    got = lpusim.run_onnx(model, {"q": q, "k": k}, precision=precision).outputs["s"]
    with monkeypatch.context() as mp:
        mp.setattr(backend, "_cached_scores", lambda graph, lanes: None)
        want = lpusim.run_onnx(model, {"q": q, "k": k}, precision=precision).outputs["s"]
    np.testing.assert_array_equal(got, want)
    ref = q @ np.repeat(k, heads // kv_heads, axis=1).transpose(0, 1, 3, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5 if precision == "fp32" else 1e-2,
                               atol=1e-5 if precision == "fp32" else 2e-2)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_decode_step_outputs_unchanged(name, monkeypatch):
    """A one-token step over 20 cached positions (Llama: grouped-query heads): every output,
    logits and present keys and values, bit for bit as with the per-head corner turns."""
    m = build_preset(name, batch=2, seq=1, attention="opset23", past=True)
    feeds = {"input_ids": np.array([[3], [7]], np.int64)}
    for i in range(2):
        for kv in ("key", "value"):
            shape = [d.dim_value or 20 for d in next(
                v for v in m.graph.input
                if v.name == f"past_key_values.{i}.{kv}").type.tensor_type.shape.dim]
            shape[0] = 2
            feeds[f"past_key_values.{i}.{kv}"] = RNG.standard_normal(shape).astype(np.float32)
    got = lpusim.run_onnx(m, feeds, precision="int8", dims={"past_seq": 20})
    with monkeypatch.context() as mp:
        mp.setattr(backend, "_cached_scores", lambda graph, lanes: None)
        want = lpusim.run_onnx(m, feeds, precision="int8", dims={"past_seq": 20})
    assert got.outputs.keys() == want.outputs.keys()
    for out in got.outputs:
        np.testing.assert_array_equal(got.outputs[out], want.outputs[out], err_msg=out)
