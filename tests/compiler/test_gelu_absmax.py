"""A Gelu feeding only quantized MatMuls gives them a bound of its output's
row absmax found from its input while its own passes run (ops.gelu_absmax_bound):
max |gelu(v)| <= max(max v, GELU_FLOOR) for both GELU forms. The MatMul quantizes by the
bound instead of the exact absmax, and the result reaches the MXM sooner."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import compile as backend
from compiler.backend import ops

D, F = 96, 700  # hidden rows of three vectors and a partial one


def _model(approximate: str, rows: int, seed: int):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((D, F)) / math.sqrt(D)).astype(np.float32)
    b1 = rng.standard_normal(F).astype(np.float32)
    w2 = (rng.standard_normal((F, D)) / math.sqrt(F)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "W1"], ["p"]), h.make_node("Add", ["p", "b1"], ["q"]),
             h.make_node("Gelu", ["q"], ["g"], approximate=approximate),
             h.make_node("MatMul", ["g", "W2"], ["y"])]
    graph = h.make_graph(nodes, "ffn", [h.make_tensor_value_info("x", T.FLOAT, [rows, D])],
                         [h.make_tensor_value_info("y", T.FLOAT, [rows, D])],
                         initializer=[numpy_helper.from_array(w1, "W1"),
                                      numpy_helper.from_array(b1, "b1"),
                                      numpy_helper.from_array(w2, "W2")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 20)]), (w1, b1, w2)


def _reference(x, weights, approximate):
    w1, b1, w2 = (a.astype(np.float64) for a in weights)
    q = x.astype(np.float64) @ w1 + b1
    if approximate == "tanh":
        g = 0.5 * q * (1 + np.tanh(math.sqrt(2 / math.pi) * (q + 0.044715 * q ** 3)))
    else:
        g = 0.5 * q * (1 + np.vectorize(math.erf)(q / math.sqrt(2)))
    return g @ w2


def _inputs(rows: int, seed: int) -> np.ndarray:
    """Plain rows, a row of large values, and one whose pre-activations are mostly negative."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, D)).astype(np.float32)
    x[0] *= 8.0
    if rows > 1:
        x[1] *= 0.05
    return x


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("rows", [1, 4, 40])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_gelu_bound_is_accurate_and_sooner(approximate, rows, precision, monkeypatch):
    model, weights = _model(approximate, rows, seed=rows)
    x = _inputs(rows, seed=rows + 1)
    fused = lpusim.run_onnx(model, {"x": x}, precision=precision)
    ref = _reference(x, weights, approximate)
    tol = 5e-2 if precision == "int8" else 0.129
    assert np.abs(fused.outputs["y"] - ref).max() <= tol * np.abs(ref).max()
    monkeypatch.setattr(backend, "_feeds_quantized", lambda graph, v: False)
    unfused = lpusim.compile_onnx(model, precision=precision)
    unfused_cycles = lpusim.simulate(unfused, mode="timing").report["cycles"]
    assert fused.report["cycles"] < unfused_cycles


@pytest.mark.parametrize("rows", [1, 4, 40])
def test_the_bound_scales_the_quantization(rows, monkeypatch):
    """With a floor far above every activation, the bound quantizes every value to 0 (the
    product is exactly 0) where it is used, and only there."""
    model, _ = _model("tanh", rows, seed=3)
    x = _inputs(rows, seed=4)
    monkeypatch.setattr(ops, "GELU_FLOOR", 1e6)
    y = lpusim.run_onnx(model, {"x": x}, precision="int8").outputs["y"]
    assert not y.any()
    monkeypatch.setattr(backend, "_feeds_quantized", lambda graph, v: False)
    y = lpusim.run_onnx(model, {"x": x}, precision="int8").outputs["y"]
    assert np.abs(y).max() > 0.1  # not bound: the exact absmax


def test_not_bound_when_the_gelu_is_read_elsewhere():
    """One row's bound reads a constant vector of the floor: there only when bound."""
    def floors(model) -> int:
        prog = lpusim.compile_onnx(model, precision="int8")
        return sum(t.name.startswith("__floor_") for t in prog.tensors)

    model, _ = _model("none", 1, seed=5)
    assert floors(model) == 1
    model.graph.output.append(h.make_tensor_value_info("g", T.FLOAT, [1, F]))
    assert floors(model) == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_floor_bounds_gelu_below_zero(approximate):
    """|gelu(v)| <= max(v, GELU_FLOOR) for every float32 v in [-20, 20] (fp64 formulas)."""
    v = np.linspace(-20, 20, 400_001).astype(np.float32).astype(np.float64)
    if approximate == "tanh":
        g = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    else:
        g = 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))
    assert np.all(np.abs(g) <= np.maximum(v, ops.GELU_FLOOR))
    assert np.abs(g[v < 0]).max() > 0.169  # the floor is near the minimum, not far above
