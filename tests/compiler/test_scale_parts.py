"""A quantized matmul of many rows keeps its result scales S, its accumulators and its
rescaled results before the bias in two placements each, column tiles in turn (ops.S_PARTS):
a tile's rescaling (or bias pass) reads one while later tiles are written to the other (a
slice cannot read and write one bank in a cycle). The outputs are those of one placement
each, bit for bit."""

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
    bias = [e.cycle for e in code if e.mnemonic == "vxm.add"]
    return res, scale, dequant, bias


@pytest.mark.parametrize("rows", [ROWS, 8])
def test_parts_give_the_same_outputs(rows, monkeypatch):
    one = _run(rows, 1, monkeypatch)[0]
    two = _run(rows, 2, monkeypatch)[0]
    np.testing.assert_array_equal(one.outputs["y"], two.outputs["y"])
    assert one.report["errors"]["y"]["max_rel"] < 5e-2


def test_dequantize_starts_while_scales_are_written(monkeypatch):
    # 10 column tiles of 128 rows: forming S takes 1,280 cycles, the MXM's first tile is out
    # long before; in one placement its dequantize waits for the last scale's writes
    _, scale, dequant, _ = _run(ROWS, 2, monkeypatch)
    assert scale and dequant
    assert min(dequant) < max(scale)


def test_scales_accumulators_and_rescaled_results_in_two_parts(monkeypatch):
    made = []
    real = ops.tile_parts

    def record(alloc, dtype, rows, vpr, lanes, nbytes, avoid):
        got = real(alloc, dtype, rows, vpr, lanes, nbytes, avoid)
        made.append((dtype, got[0]))
        return got

    monkeypatch.setattr(ops, "tile_parts", record)
    monkeypatch.setattr(backend, "tile_parts", record)
    _run(ROWS, 2, monkeypatch)
    # the rescaled results before the bias (fp32), S (fp32) and acc (int32): two parts each,
    # in slices of their own, 5 of the 10 column tiles each
    assert sorted(d for d, _ in made) == ["fp32", "fp32", "int32"]
    for _, parts in made:
        assert len(parts) == 2 and not set(parts[0].slices) & set(parts[1].slices)
        assert [p.vpr for p in parts] == [N // 320 // 2] * 2
    # fewer than S_PARTS_ROWS rows: one placement each
    made.clear()
    _run(8, 2, monkeypatch)
    assert made == []
