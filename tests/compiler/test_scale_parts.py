"""A quantized matmul of many rows keeps its result scales S and its accumulators in two
placements each, column tiles in turn (ops.S_PARTS): a tile's dequantize reads one while the
scales and results of later tiles are written to the other (a slice cannot read and write one
bank in a cycle). The outputs are those of one placement each, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import lpusim
from compiler.backend import compile as backend
from compiler.backend import ops
from isa.table import CHAIN_CVT

ROWS, K, N = 128, 320, 3200


def _model(rows: int):
    rng = np.random.default_rng(7)
    w = nh.from_array(rng.standard_normal((K, N)).astype(np.float32) * 0.05, "w")
    b = nh.from_array(rng.standard_normal(N).astype(np.float32), "b")
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
                      h.make_node("Add", ["xw", "b"], ["y"], name="bias")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [rows, K])],
                     [h.make_tensor_value_info("y", T.FLOAT, [rows, N])], [w, b])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _run(rows: int, parts: int, monkeypatch):
    cap = {}
    real_emit = backend._emit

    def emit(sch, arch):
        cap["sch"] = sch
        return real_emit(sch, arch)

    x = np.random.default_rng(rows).standard_normal((rows, K)).astype(np.float32)
    with monkeypatch.context() as mp:
        mp.setattr(backend, "_emit", emit)
        mp.setattr(ops, "S_PARTS", parts)
        res = lpusim.run_onnx(_model(rows), {"x": x}, precision="int8")
    sch = cap["sch"]
    ids = {i for i, (name, _) in enumerate(sch.ops) if name.startswith("mm")}
    code = [e for e in sch.code if e.op in ids]
    # the scales' formation: single muls; the dequantize: chains whose first link is a cvt
    scale = [e.cycle for e in code if e.mnemonic == "vxm.mul"]
    dequant = [e.cycle for e in code if e.mnemonic == "vxm.chain"
               and e.fields["ops"] & 63 == CHAIN_CVT]
    return res, scale, dequant


@pytest.mark.parametrize("rows", [ROWS, 8])
def test_parts_give_the_same_outputs(rows, monkeypatch):
    one, _, _ = _run(rows, 1, monkeypatch)
    two, _, _ = _run(rows, 2, monkeypatch)
    np.testing.assert_array_equal(one.outputs["y"], two.outputs["y"])
    assert one.report["errors"]["y"]["max_rel"] < 5e-2


def test_dequantize_starts_while_scales_are_written(monkeypatch):
    # 10 column tiles of 128 rows: forming S takes 1,280 cycles, the MXM's first tile is out
    # long before; in one placement its dequantize waits for the last scale's writes
    _, scale, dequant = _run(ROWS, 2, monkeypatch)
    assert scale and dequant
    assert min(dequant) < max(scale)
