"""The max over the lanes of many vectors by corner turns (turnmax.py) gives the same
numbers as the rotations of ops.lanes_max, bit for bit, in fewer cycles: Softmax rows (with
pad lanes and masked rows), ReduceMax, and the row absmax of quantized MatMuls, in 4- and
2-byte types, with row counts that do not fill the last block of 16."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import ops

ROTATE_ONLY = 10**9


def _both(model, inputs, precision, monkeypatch):
    turned = lpusim.run_onnx(model, inputs, precision=precision)
    with monkeypatch.context() as mp:
        mp.setattr(ops, "TURN_VECTORS", ROTATE_ONLY)
        rotated = lpusim.run_onnx(model, inputs, precision=precision)
    for k in turned.outputs:
        np.testing.assert_array_equal(turned.outputs[k], rotated.outputs[k])
    assert turned.report["cycles"] < rotated.report["cycles"]
    return turned


def _model(nodes, ins, outs, inits=()):
    g = h.make_graph(nodes, "g", ins, outs, initializer=list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


@pytest.mark.parametrize("rows,cols", [(100, 128), (70, 320), (131, 33)])
@pytest.mark.parametrize("elem,precision", [(T.FLOAT, "fp32"), (T.FLOAT16, "fp16")])
def test_softmax(rows, cols, elem, precision, monkeypatch):
    rng = np.random.default_rng(rows + cols)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 4
    x[3, 7] = 60.0
    x[5] = -1e4  # a row far below zero: the max must be its own
    x[6, : cols // 2] = np.float32(-3.0e38) if elem == T.FLOAT else -6.0e4  # masked keys
    npt = np.float32 if elem == T.FLOAT else np.float16
    x = x.astype(npt)
    m = _model([h.make_node("Softmax", ["x"], ["y"], axis=-1)],
               [h.make_tensor_value_info("x", elem, [rows, cols])],
               [h.make_tensor_value_info("y", elem, [rows, cols])])
    r = _both(m, {"x": x}, precision, monkeypatch)
    xf = x.astype(np.float64)
    e = np.exp(xf - xf.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    tol = 1e-6 if elem == T.FLOAT else 2e-3
    assert np.abs(r.outputs["y"].astype(np.float64) - ref).max() <= tol


def test_reduce_max(monkeypatch):
    rows, cols = 90, 200
    x = np.random.default_rng(2).standard_normal((rows, cols)).astype(np.float32)
    x[:, 0] = -50.0
    m = _model([h.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=1)],
               [h.make_tensor_value_info("x", T.FLOAT, [rows, cols])],
               [h.make_tensor_value_info("y", T.FLOAT, [rows, 1])],
               [numpy_helper.from_array(np.array([-1], np.int64), "a")])
    r = _both(m, {"x": x}, "fp32", monkeypatch)
    np.testing.assert_array_equal(r.outputs["y"], x.max(-1, keepdims=True))


@pytest.mark.parametrize("rows,k", [(100, 768), (65, 300)])
def test_quantized_matmul_absmax(rows, k, monkeypatch):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, 96)).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x[2, 5] = -30.0
    m = _model([h.make_node("MatMul", ["x", "W"], ["y"])],
               [h.make_tensor_value_info("x", T.FLOAT, [rows, k])],
               [h.make_tensor_value_info("y", T.FLOAT, [rows, 96])],
               [numpy_helper.from_array(w, "W")])
    r = _both(m, {"x": x}, "int8", monkeypatch)
    ref = x @ w
    assert np.abs(r.outputs["y"] - ref).max() <= 5e-2 * np.abs(ref).max()
