"""A transpose that moves the last axis (transpose.py) runs the steps of a 320-column block in
chunks of column tiles: the unskew of the first chunk goes before the gather of the last is
issued, where whole steps waited for each other. The numbers are the transpose's."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend import compile as backend
from compiler.backend import transpose

ROWS = 128


def _model(cols: int, elem):
    g = h.make_graph([h.make_node("Transpose", ["x"], ["y"], perm=[1, 0], name="turn")], "g",
                     [h.make_tensor_value_info("x", elem, [ROWS, cols])],
                     [h.make_tensor_value_info("y", elem, [cols, ROWS])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def _run(model, x, monkeypatch):
    cap = {}
    real_emit = backend._emit

    def emit(sch, arch):
        cap["sch"] = sch
        return real_emit(sch, arch)

    with monkeypatch.context() as mp:
        mp.setattr(backend, "_emit", emit)
        res = lpusim.run_onnx(model, {"x": x})
    sch = cap["sch"]
    ids = {i for i, (name, _) in enumerate(sch.ops) if name == "turn"}
    cycles: dict[str, list[int]] = {}
    for e in sch.code:
        if e.op in ids:
            cycles.setdefault(e.mnemonic, []).append(e.cycle)
    return res, cycles


@pytest.mark.parametrize("cols", [320, 200, 40])
def test_int8_unskew_overlaps_the_gathers(cols, monkeypatch):
    # one byte plane, one block: the gathers and corner turns of one _plane call
    x = np.random.default_rng(cols).integers(-128, 128, (ROWS, cols), dtype=np.int8)
    res, cyc = _run(_model(cols, T.INT8), x, monkeypatch)
    np.testing.assert_array_equal(res.outputs["y"], x.T)
    tiles = -(-cols // transpose.TILE)
    chunks = -(-tiles // transpose.CHUNK)
    assert len(cyc["sxm.transpose"]) == chunks
    assert len(cyc["mem.gather"]) == chunks
    # the unskew's rotations come after the first gather (the skew's before it)
    unskew = [c for c in cyc["sxm.rotate"] if c > min(cyc["mem.gather"])]
    if chunks > 1:
        assert min(unskew) < max(cyc["mem.gather"])


def test_fp32_turn_in_chunks_matches_numpy():
    x = np.random.default_rng(1).standard_normal((ROWS, 700)).astype(np.float32)
    res = lpusim.run_onnx(_model(700, T.FLOAT), {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], x.T)
