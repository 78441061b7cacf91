"""A quantized MatMul whose activation has zero pad lanes leaves the int8 weight rows an
earlier tile put in a plane's load buffer (lower.matmul with pad_zero): they meet
only zero lanes of x, so they add 0, and the short last tile loads its own rows only."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import lower
from compiler.errors import CompileError

# full tiles first (their rows stay in the buffers), then short ones that read past K
DIMS = [400, 960, 50, 700, 37]


def _model(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, inits, ws = [], [], []
    v = "x"
    for i, (k, n) in enumerate(zip(DIMS[:-1], DIMS[1:], strict=True)):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        ws.append(w)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(h.make_node("MatMul", [v, f"W{i}"], [f"m{i}"]))
        last = i == len(DIMS) - 2
        if not last:
            nodes.append(h.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        v = f"m{i}" if last else f"r{i}"
    graph = h.make_graph(nodes, "chain",
                         [h.make_tensor_value_info("x", T.FLOAT, [rows, DIMS[0]])],
                         [h.make_tensor_value_info(v, T.FLOAT, [rows, DIMS[-1]])],
                         initializer=inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), ws, v


@pytest.mark.parametrize("rows", [1, 6, 40])
def test_stale_rows_add_nothing(rows, monkeypatch):
    model, ws, out = _model(rows)
    x = np.random.default_rng(1).standard_normal((rows, DIMS[0])).astype(np.float32)
    res = lpusim.run_onnx(model, {"x": x}, precision="int8")
    ref = x.astype(np.float64)
    for i, w in enumerate(ws):
        ref = ref @ w
        if i < len(ws) - 1:
            ref = np.maximum(ref, 0)
    assert np.abs(res.outputs[out] - ref).max() <= 5e-2 * np.abs(ref).max()
    # the same program with every short tile's stale rows zeroed has more instructions
    left = lpusim.compile_onnx(model, precision="int8")
    matmul = lower.matmul
    monkeypatch.setattr(lower, "matmul", lambda *a, **k: matmul(*a, **{**k, "pad_zero": False}))
    zeroed = lpusim.compile_onnx(model, precision="int8")
    assert left.instruction_count() < zeroed.instruction_count()


def test_stale_rows_only_for_integer_weights():
    from compiler.backend.lower import Tiled

    w = Tiled("fp8_e4m3", 10, 10, {})
    with pytest.raises(CompileError, match="stale weight rows"):
        lower.matmul(None, None, w, None, 0, "m", pad_zero=True)
