"""A norm's constant scale and bias folded into the MatMuls it feeds (compile._fold_norm_affine):
the numbers stay those of the graph, and nothing is folded where the normed value or a weight
is read elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend.compile import _fold_norm_affine
from compiler.frontend import import_onnx

RNG = np.random.default_rng(3)
R, C, N = 5, 96, 40


def _graph(op: str, with_bias: bool, mm_bias: bool, extra_output: bool):
    g = (RNG.random(C) + 0.5).astype(np.float32)
    b = RNG.standard_normal(C).astype(np.float32)
    w = RNG.standard_normal((C, N)).astype(np.float32)
    c = RNG.standard_normal(N).astype(np.float32)
    norm_in = ["x", "g"] + (["b"] if with_bias and op == "LayerNormalization" else [])
    nodes = [h.make_node(op, norm_in, ["n"], axis=-1, epsilon=1e-5),
             h.make_node("MatMul", ["n", "W"], ["m"])]
    last = "m"
    if mm_bias:
        nodes.append(h.make_node("Add", ["m", "c"], ["y"]))
        last = "y"
    outs = [h.make_tensor_value_info(last, T.FLOAT, [R, N])]
    if extra_output:
        outs.append(h.make_tensor_value_info("n", T.FLOAT, [R, C]))
    inits = [numpy_helper.from_array(a, k) for k, a in
             (("g", g), ("b", b), ("W", w), ("c", c))]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [R, C])], outs,
                         initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 23)])
    return model, (g, b if with_bias and op == "LayerNormalization" else None, w,
                   c if mm_bias else None), last


def _reference(op, x, g, b, w, c):
    if op == "LayerNormalization":
        d = x - x.mean(-1, keepdims=True)
        n = d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5)
    else:
        n = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
    n = n * g + (0 if b is None else b)
    return n @ w + (0 if c is None else c)


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
@pytest.mark.parametrize("with_bias,mm_bias", [(True, True), (True, False), (False, True)])
def test_folded_norm_matches_numpy(op, with_bias, mm_bias):
    model, (g, b, w, c), last = _graph(op, with_bias, mm_bias, extra_output=False)
    graph = import_onnx(model)
    from compiler.passes import PASSES
    for p in PASSES.values():
        graph = p().apply(graph)
    _fold_norm_affine(graph)
    norm = [n for n in graph.nodes() if graph.node(n)["op"] == op]
    assert len(norm) == 1 and len(graph.node(norm[0])["inputs"]) == 1  # scale and bias gone
    x = RNG.standard_normal((R, C)).astype(np.float32) * 3
    got = lpusim.run_onnx(model, {"x": x}).outputs[last]
    want = _reference(op, x.astype(np.float64), g, b, w, c)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_normed_value_read_elsewhere_is_not_folded():
    model, *_ = _graph("LayerNormalization", True, True, extra_output=True)
    graph = import_onnx(model)
    _fold_norm_affine(graph)
    norm = [n for n in graph.nodes() if graph.node(n)["op"] == "LayerNormalization"]
    assert len(graph.node(norm[0])["inputs"]) == 3
