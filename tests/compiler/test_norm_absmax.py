"""A norm feeding only quantized MatMuls finds the row absmax that quantizes its output
beside itself (ops._norm_rows with absmax): LayerNorm from max x and -min x taken before the
mean, RMSNorm from max |x|. Monotone rounding makes the absmax the same number the MatMul
would find from the norm's output, so the program's outputs are bit-identical to those of the
unfused lowering, and the result reaches the MXM sooner."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import compile as backend
from compiler.backend import ops

N = 48


def _model(op: str, rows: int, cols: int, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cols, N)).astype(np.float32)
    g = (rng.random(cols) + 0.5).astype(np.float32)  # folded into W by _fold_norm_affine
    nodes = [h.make_node(op, ["x", "g"], ["n"], axis=-1, epsilon=1e-5),
             h.make_node("MatMul", ["n", "W"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [rows, cols])],
                         [h.make_tensor_value_info("y", T.FLOAT, [rows, N])],
                         initializer=[numpy_helper.from_array(w, "W"),
                                      numpy_helper.from_array(g, "g")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)]), g[:, None] * w


def _inputs(rows: int, cols: int, seed: int) -> np.ndarray:
    """Rows that stress the absmax: a large offset (max |x - mean| far from max |x|), all
    negative, one outlier, and plain noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[0] += 50.0
    if rows > 1:
        x[1] = -np.abs(x[1]) - 3.0
    if rows > 2:
        x[2, cols // 3] = 40.0
    return x


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
@pytest.mark.parametrize("rows,cols", [(1, 768), (4, 96), (3, 640), (96, 96)])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_norm_absmax_is_exact(op, rows, cols, precision, monkeypatch):
    model, w = _model(op, rows, cols, seed=rows + cols)
    x = _inputs(rows, cols, seed=cols)
    fused = lpusim.run_onnx(model, {"x": x}, precision=precision)
    # in blocks of one row the MatMul finds the absmax from the norm's output
    with monkeypatch.context() as mp:
        mp.setattr(ops, "NORM_BLOCK_VECTORS", 1)
        blocked = lpusim.run_onnx(model, {"x": x}, precision=precision)
    np.testing.assert_array_equal(fused.outputs["y"], blocked.outputs["y"])
    monkeypatch.setattr(backend, "_feeds_quantized", lambda graph, v, only=True: False)
    unfused = lpusim.compile_onnx(model, precision=precision)
    unfused_cycles = lpusim.simulate(unfused, mode="timing").report["cycles"]
    if rows <= ops.NORM_ABSMAX_ROWS:  # found beside the norm: sooner
        assert fused.report["cycles"] < unfused_cycles
    else:  # throughput-bound: left to the MatMul
        assert fused.report["cycles"] == unfused_cycles
    # and both are the quantized product of the normed rows
    if op == "LayerNormalization":
        d = x - x.mean(-1, keepdims=True)
        n = d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5)
    else:
        n = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
    ref = n @ w
    tol = 5e-2 if precision == "int8" else 0.129
    assert np.abs(fused.outputs["y"] - ref).max() <= tol * np.abs(ref).max()


def test_not_fused_when_the_norm_is_read_elsewhere():
    g = h.make_graph(
        [h.make_node("LayerNormalization", ["x", "g"], ["n"], axis=-1),
         h.make_node("MatMul", ["n", "W"], ["y"]), h.make_node("Relu", ["n"], ["r"])], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 64])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 8]),
         h.make_tensor_value_info("r", T.FLOAT, [2, 64])],
        initializer=[numpy_helper.from_array(np.ones((64, 8), np.float32), "W"),
                     numpy_helper.from_array(np.ones(64, np.float32), "g")])
    from compiler.frontend import import_onnx

    graph = import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 23)]))
    assert not backend._feeds_quantized(graph, "n")
    assert backend._feeds_quantized(graph, "x") is False  # read by a norm, not a MatMul


@pytest.mark.parametrize("cols", [96, 640])
def test_blocked_norm_zeroes_pad_lanes_for_the_absmax(cols, monkeypatch):
    """In row blocks the MatMul finds the absmax from the norm's output, so the folded
    LayerNorm must leave its pad lanes zero (a mean of zero past the last column): the same
    outputs as the fused absmax, to the bit."""
    model, _ = _model("LayerNormalization", 8, cols, seed=cols)
    x = _inputs(8, cols, seed=cols)
    whole = lpusim.run_onnx(model, {"x": x}, precision="int8")
    monkeypatch.setattr(ops, "NORM_BLOCK_VECTORS", 2)
    blocked = lpusim.run_onnx(model, {"x": x}, precision="int8")
    np.testing.assert_array_equal(whole.outputs["y"], blocked.outputs["y"])
