"""Under the int8 and fp8 policies a post-norm (BERT's LayerNorm, read by the next MatMuls and
by the residual Add) is split (compile._split_norm_affine): the MatMuls read the normalized
rows z with g and b folded into their weights, the other readers y = z * g + b."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import compile as backend
from compiler.frontend import import_onnx
from compiler.pipeline import default_pipeline, run_pipeline

ROWS, COLS, N = 24, 96, 96


def _model(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((COLS, N)) / np.sqrt(COLS)).astype(np.float32)
    c = rng.standard_normal(N).astype(np.float32)
    g = (rng.random(COLS) + 0.5).astype(np.float32)
    b = rng.standard_normal(COLS).astype(np.float32)
    nodes = [h.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5),
             h.make_node("MatMul", ["y", "W"], ["p"]),
             h.make_node("Add", ["p", "c"], ["pc"]),
             h.make_node("Add", ["y", "pc"], ["out"])]
    graph = h.make_graph(nodes, "post_norm",
                         [h.make_tensor_value_info("x", T.FLOAT, [ROWS, COLS])],
                         [h.make_tensor_value_info("out", T.FLOAT, [ROWS, COLS]),
                          h.make_tensor_value_info("y", T.FLOAT, [ROWS, COLS])],
                         initializer=[numpy_helper.from_array(a, k) for k, a in
                                      (("W", w), ("c", c), ("g", g), ("b", b))])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)]), w, c, g, b


def test_the_matmul_reads_the_normalized_rows_with_g_and_b_in_its_weights():
    model, w, c, g, b = _model()
    graph = run_pipeline(import_onnx(model), default_pipeline())
    backend._split_norm_affine(graph)
    norm = [n for n in graph.topo_order() if graph.node(n)["op"] == "LayerNormalization"]
    assert len(norm) == 1
    nd = graph.node(norm[0])
    assert len(nd["inputs"]) == 1  # no scale, no bias
    z = nd["outputs"][0]
    readers = {graph.node(u)["op"]: graph.node(u) for u in graph.consumers(z)}
    assert set(readers) == {"MatMulBias", "Mul"}
    mm = readers["MatMulBias"]
    np.testing.assert_allclose(graph.const_array(mm["inputs"][1]), g[:, None] * w, rtol=1e-6)
    np.testing.assert_allclose(graph.const_array(mm["inputs"][2]), b @ w + c, rtol=1e-5,
                               atol=1e-5)
    # y for the residual and the graph output: z * g + b
    mul = readers["Mul"]
    assert mul["inputs"][1] == "g"
    (add,) = [graph.node(u) for u in graph.consumers(mul["outputs"][0])]
    assert add["op"] == "Add" and add["inputs"][1] == "b" and add["outputs"][0] == "y"


def test_a_norm_read_only_by_matmuls_is_left_to_the_fold():
    model, *_ = _model()
    model.graph.output.pop()  # y no longer an output
    model.graph.node[3].input[0] = "pc"  # nor read by the Add
    graph = import_onnx(model)
    backend._split_norm_affine(graph)
    (norm,) = [n for n in graph.topo_order() if graph.node(n)["op"] == "LayerNormalization"]
    assert len(graph.node(norm)["inputs"]) == 3


@pytest.mark.parametrize("precision,tol", [("int8", 5e-2), ("fp8", 0.129)])
def test_split_post_norm_matches_the_reference(precision, tol, monkeypatch):
    model, *_ = _model(seed=3)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((ROWS, COLS)) * 3 + 2).astype(np.float32)
    ref = dict(zip(["out", "y"], ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x}),
        strict=True))
    res = lpusim.run_onnx(model, {"x": x}, precision=precision)
    for name, t in (("y", 2.0 ** -10), ("out", tol)):  # y: the mean from x in fp16
        err = np.abs(res.outputs[name] - ref[name]).max() / np.abs(ref[name]).max()
        assert err <= t, (name, err)
    # y is (x - m) * rsqrt(v + eps) * g + b in the same steps as the unsplit norm's
    monkeypatch.setattr(backend, "_split_norm_affine", lambda graph: None)
    unsplit = lpusim.run_onnx(model, {"x": x}, precision=precision)
    np.testing.assert_array_equal(res.outputs["y"], unsplit.outputs["y"])
