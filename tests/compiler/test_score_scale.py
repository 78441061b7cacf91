"""Attention's scale (scores / sqrt(d)) folded into the query projection's weight and bias
(compile._fold_score_scale): the graph's values, the Div gone; left alone where the query is
read elsewhere or the divisor is not one number."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend.compile import _fold_score_scale
from compiler.frontend import import_onnx
from compiler.passes import PASSES

S, D, H = 6, 32, 2


def _model(div_shape=(), extra_q=False, op="Div"):
    rng = np.random.default_rng(4)
    wq, wk = (rng.standard_normal((D, D)).astype(np.float32) for _ in range(2))
    bq = rng.standard_normal(D).astype(np.float32)
    c = np.full(div_shape, 4.0, np.float32) if op == "Div" else np.full(div_shape, 0.25,
                                                                             np.float32)
    hd = D // H
    nodes = [
        h.make_node("MatMul", ["x", "Wq"], ["q0"]), h.make_node("Add", ["q0", "bq"], ["q1"]),
        h.make_node("Reshape", ["q1", "shp"], ["q2"]),
        h.make_node("Transpose", ["q2"], ["q"], perm=[1, 0, 2]),
        h.make_node("MatMul", ["x", "Wk"], ["k0"]), h.make_node("Reshape", ["k0", "shp"], ["k1"]),
        h.make_node("Transpose", ["k1"], ["kt"], perm=[1, 2, 0]),
        h.make_node("MatMul", ["q", "kt"], ["s"]), h.make_node(op, ["s", "c"], ["y"]),
    ]
    outs = [h.make_tensor_value_info("y", T.FLOAT, [H, S, S])]
    if extra_q:
        nodes.append(h.make_node("Relu", ["q1"], ["r"]))
        outs.append(h.make_tensor_value_info("r", T.FLOAT, [S, D]))
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("Wq", wq), ("Wk", wk), ("bq", bq), ("c", c),
              ("shp", np.array([S, H, hd], np.int64)))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [S, D])], outs,
                     initializer=inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 23)])

    def ref(x):
        q = (x @ wq + bq).reshape(S, H, hd).transpose(1, 0, 2)
        kt = (x @ wk).reshape(S, H, hd).transpose(1, 2, 0)
        return (q @ kt) / 4.0
    return m, ref


def _ops(model):
    graph = import_onnx(model)
    for p in PASSES.values():
        graph = p().apply(graph)
    _fold_score_scale(graph)
    return [graph.node(n)["op"] for n in graph.topo_order()]


@pytest.mark.parametrize("op,div_shape", [("Div", ()), ("Div", (1,)), ("Mul", ())])
def test_scale_folded(op, div_shape):
    model, ref = _model(div_shape, op=op)
    assert op not in _ops(model)
    x = np.random.default_rng(5).standard_normal((S, D)).astype(np.float32)
    r = lpusim.run_onnx(model, {"x": x}, precision="fp32")
    np.testing.assert_allclose(r.outputs["y"], ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra_q,div_shape", [(True, ()), (False, (S,))])
def test_left_alone(extra_q, div_shape):
    model, _ = _model(div_shape, extra_q=extra_q)
    assert "Div" in _ops(model)
