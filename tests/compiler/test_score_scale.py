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
from compiler.backend.compile import _fold_score_scale, _vector_products
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


def _fused(split_axis=-1, keys=S, op="Div"):
    """A fused QKV projection split in three (GPT-2's c_attn), one query row against `keys`
    keys (one: the scores are a ReduceSum of products, _vector_products)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((D, 3 * D)).astype(np.float32)
    b = rng.standard_normal(3 * D).astype(np.float32)
    hd = D // H
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["p0"]), h.make_node("Add", ["p0", "b"], ["p"]),
        h.make_node("Split", ["p", "sizes"], ["q0", "k0", "v0"], axis=split_axis),
        h.make_node("Reshape", ["q0", "qshp"], ["q1"]),
        h.make_node("Transpose", ["q1"], ["q"], perm=[1, 0, 2]),
        h.make_node("Reshape", ["k0", "kshp"], ["k1"]),
        h.make_node("Transpose", ["k1"], ["k"], perm=[1, 0, 2]),
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),  # as GPT-2's export
        h.make_node("MatMul", ["q", "kt"], ["s"]), h.make_node(op, ["s", "c"], ["y"]),
    ]
    rows = keys  # the query and key rows come from the same x
    c = np.float32(8.0 if op == "Div" else 0.125)
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("W", w), ("b", b), ("c", np.array(c)),
              ("sizes", np.array([D, D, D], np.int64)),
              ("qshp", np.array([rows, H, hd], np.int64)),
              ("kshp", np.array([rows, H, hd], np.int64)))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [rows, D])],
                     [h.make_tensor_value_info("y", T.FLOAT, [H, rows, rows])],
                     initializer=inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])

    def ref(x):
        p = x @ w + b
        q = p[:, :D].reshape(rows, H, hd).transpose(1, 0, 2)
        kt = p[:, D:2 * D].reshape(rows, H, hd).transpose(1, 2, 0)
        return (q @ kt) / 8.0
    return m, ref


@pytest.mark.parametrize("keys", [S, 1])
@pytest.mark.parametrize("op", ["Div", "Mul"])
def test_scale_folded_through_a_split(keys, op):
    model, ref = _fused(keys=keys, op=op)
    graph = import_onnx(model)
    for p in PASSES.values():
        graph = p().apply(graph)
    _vector_products(graph)
    _fold_score_scale(graph)
    ops = [graph.node(n)["op"] for n in graph.topo_order()]
    assert not any("c" in graph.node(n)["inputs"] for n in graph.topo_order())  # gone
    assert ("ReduceSum" in ops) == (keys == 1)  # the one-key form is folded too
    x = np.random.default_rng(8).standard_normal((keys, D)).astype(np.float32)
    for precision, tol in (("fp32", 1e-5), ("int8", 5e-2)):
        r = lpusim.run_onnx(model, {"x": x}, precision=precision)
        assert np.abs(r.outputs["y"] - ref(x)).max() <= tol * np.abs(ref(x)).max()


def test_split_of_another_axis_left_alone():
    """The query's columns are a Split of the last axis only (here the same graph with the
    Split's axis changed after import)."""
    graph = import_onnx(_fused()[0])
    for p in PASSES.values():
        graph = p().apply(graph)
    sp = next(n for n in graph.topo_order() if graph.node(n)["op"] == "Split")
    graph.node(sp)["attrs"]["axis"] = 0
    _fold_score_scale(graph)
    assert "Div" in [graph.node(n)["op"] for n in graph.topo_order()]
