"""A quantized activation of many rows is written twice (ops.ACT_COPIES), and the MXM's
activation streams of different weight tiles read whichever copy's slice is free
(lower.matmul `copies`): the same numbers, sooner."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import ops

M, K, N = 128, 768, 3072  # an FFN of BERT-base at sequence 128


def _model(seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [M, K])],
                     [h.make_tensor_value_info("y", T.FLOAT, [M, N])],
                     initializer=[numpy_helper.from_array(w, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)]), w


@pytest.mark.parametrize("precision", ["int8"])
def test_copies_give_the_same_outputs_sooner(precision, monkeypatch):
    model, w = _model(5)
    x = np.random.default_rng(6).standard_normal((M, K)).astype(np.float32)
    with_copies = lpusim.run_onnx(model, {"x": x}, precision=precision)
    monkeypatch.setattr(ops, "ACT_COPIES", 0)
    single = lpusim.run_onnx(model, {"x": x}, precision=precision)
    np.testing.assert_array_equal(with_copies.outputs["y"], single.outputs["y"])
    assert with_copies.report["cycles"] < single.report["cycles"]
    ref = x @ w
    tol = 5e-2 if precision == "int8" else 0.129
    assert np.abs(with_copies.outputs["y"] - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("rows,precision", [(4, "int8"), (M, "fp8")])
def test_no_copy_for_few_rows_or_a_slower_mxm(rows, precision, monkeypatch):
    """Below ACT_COPY_ROWS rows, or where the MXM takes an activation vector every few cycles
    (fp8 on tsp-v1, emulated at 1/4 rate), the copy is not made: the same program."""
    model, _ = _model(7)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = rows
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = rows
    a = lpusim.compile_onnx(model, precision=precision).instruction_count()
    monkeypatch.setattr(ops, "ACT_COPIES", 0)
    b = lpusim.compile_onnx(model, precision=precision).instruction_count()
    assert a == b
