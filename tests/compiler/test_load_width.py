"""A MatMul's constant weights are stored for loads of LW_STREAMS streams (a decode step's few
rows, whose weight loads bound it) or LW_STREAMS_MANY (many rows: the loads hide behind the
activations either way, and a narrower load finds its slices' read ports free sooner)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import compile as backend

K, N = 640, 640


def _matmul(rows: int):
    rng = np.random.default_rng(rows)
    w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    graph = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                         [h.make_tensor_value_info("x", T.FLOAT, [rows, K])],
                         [h.make_tensor_value_info("y", T.FLOAT, [rows, N])],
                         initializer=[numpy_helper.from_array(w, "W")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)]), \
        rng.standard_normal((rows, K)).astype(np.float32)


@pytest.mark.parametrize("precision,nbytes", [("int8", 1), ("fp16", 2)])
@pytest.mark.parametrize("rows", [1, 16, 17, 64])
def test_the_load_width_follows_the_row_count(rows, precision, nbytes, monkeypatch):
    cap = {}
    real = backend._emit

    def emit(sch, arch):
        cap["sch"] = sch
        return real(sch, arch)

    monkeypatch.setattr(backend, "_emit", emit)
    model, x = _matmul(rows)
    res = lpusim.run_onnx(model, {"x": x}, precision=precision)
    widths = {e.fields["aux"] for e in cap["sch"].code if e.mnemonic == "mxm.lw"}
    want = backend.LW_STREAMS if rows <= backend.LW_FEW_ROWS else backend.LW_STREAMS_MANY
    assert widths == {want}  # streams per cycle: want / nbytes rows of the tile
    rows_per_cycle = want // nbytes
    assert all(e.fields["count"] == K // 2 // rows_per_cycle
               for e in cap["sch"].code if e.mnemonic == "mxm.lw")
    tol = 0.05 if precision == "int8" else 5e-3
    assert max(e["max_rel"] for e in res.report["errors"].values()) <= tol
