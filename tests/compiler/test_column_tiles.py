"""A MatMul's results come out one 320-column tile at a time, and its readers follow them:
a Gelu runs its passes tile by tile, each from when its producer wrote that tile
(ops._sequence_cols, from the ("col_ready",) record compile._add_bias leaves), and a quantized
MatMul writes its int8 (fp8) activations in K tiles of their own slices, streaming each into
the MXM as soon as it is written (lower.matmul's x_parts and x_ready). Only the order of the
work changes: the outputs are the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import compile as backend
from compiler.backend import lower
from compiler.backend.placement import Allocator

ROWS, D, FF = 256, 640, 1600  # FF: five column tiles, the last one short


def _ffn(seed: int = 0):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((D, FF)) / np.sqrt(D)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(FF)).astype(np.float32)
    w2 = (rng.standard_normal((FF, D)) / np.sqrt(FF)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(D)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "W1"], ["p"], name="up"),
             h.make_node("Add", ["p", "b1"], ["pb"], name="up_bias"),
             h.make_node("Gelu", ["pb"], ["g"], name="gelu"),
             h.make_node("MatMul", ["g", "W2"], ["q"], name="down"),
             h.make_node("Add", ["q", "b2"], ["out"], name="down_bias")]
    graph = h.make_graph(nodes, "ffn", [h.make_tensor_value_info("x", T.FLOAT, [ROWS, D])],
                         [h.make_tensor_value_info("out", T.FLOAT, [ROWS, D])],
                         initializer=[numpy_helper.from_array(a, k) for k, a in
                                      (("W1", w1), ("b1", b1), ("W2", w2), ("b2", b2))])
    x = rng.standard_normal((ROWS, D)).astype(np.float32)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)]), x


def _run(model, x, precision, monkeypatch, drop_col_ready=False):
    """run_onnx, with the scheduler's instructions and node names kept."""
    cap = {}
    real_emit, real_derive = backend._emit, Allocator.derive

    def emit(sch, arch):
        cap["sch"] = sch
        return real_emit(sch, arch)

    def derive(self, src, key, held, value):
        if drop_col_ready and key == ("col_ready",):
            return None
        return real_derive(self, src, key, held, value)

    with monkeypatch.context() as mp:
        mp.setattr(backend, "_emit", emit)
        mp.setattr(Allocator, "derive", derive)
        res = lpusim.run_onnx(model, {"x": x}, precision=precision)
    return res, cap["sch"]


def _cycles(sch, node: str, mnemonic: str | None = None) -> list[int]:
    ids = {i for i, (name, _) in enumerate(sch.ops) if name == node}
    return sorted(e.cycle for e in sch.code
                  if e.op in ids and (mnemonic is None or e.mnemonic == mnemonic))


def _watch(monkeypatch, keep):
    """Every ("col_ready",) record, and (what, ready, first cycle) of each VXM job that
    keep(ops, B operand, what) accepts, as they are made."""
    cols, jobs = [], []
    real_derive, real_ew = Allocator.derive, lower.elementwise

    def derive(self, src, key, held, value):
        if key == ("col_ready",):
            cols.append(value)
        return real_derive(self, src, key, held, value)

    def elementwise(sch, ops, x, y, imm, z, ready, what, **kw):
        n = len(sch.code)
        t = real_ew(sch, ops, x, y, imm, z, ready, what, **kw)
        if keep(ops, y, what):
            jobs.append((what, ready, min((e.cycle for e in sch.code[n:]), default=t)))
        return t

    monkeypatch.setattr(Allocator, "derive", derive)
    monkeypatch.setattr(lower, "elementwise", elementwise)
    return cols, jobs


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_gelu_runs_tile_by_tile_and_gives_the_same_numbers(precision, monkeypatch):
    model, x = _ffn()
    cols, jobs = _watch(monkeypatch, lambda ops, y, what: what == "Gelu (node 'gelu')")
    tiled, _ = _run(model, x, precision, monkeypatch)
    starts = [(r, t) for _, r, t in jobs]
    up = cols[0]  # the first MatMul's output, five tiles written one by one
    assert len(up) == 5 and min(up) < max(up)
    # three passes per tile (x / sqrt 2 and erf; * 0.5 + 0.5; * x), the first from when
    # its tile is there
    assert len(starts) == 3 * len(up)
    assert [r for r, _ in starts[::3]] == list(up)
    assert all(t >= r for r, t in starts)
    tol = 1e-4 if precision == "fp32" else 0.05
    assert max(e["max_rel"] for e in tiled.report["errors"].values()) <= tol
    # the same numbers as the Gelu over all rows at once, from the last tile on
    jobs.clear()
    whole, _ = _run(model, x, precision, monkeypatch, drop_col_ready=True)
    assert len(jobs) < 3 * len(up) and min(r for _, r, _ in jobs) >= max(up)
    np.testing.assert_array_equal(tiled.outputs["out"], whole.outputs["out"])


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_activations_stream_a_k_tile_as_soon_as_it_is_written(precision,
                                                                         monkeypatch):
    model, x = _ffn(1)
    calls = []
    real = lower.matmul

    def matmul(sch, x, w, y, ready, what, *args, **kw):
        if kw.get("x_ready") is not None and "down" in what:
            calls.append((kw["x_parts"], kw["x_ready"]))
        return real(sch, x, w, y, ready, what, *args, **kw)

    monkeypatch.setattr(lower, "matmul", matmul)
    res, sch = _run(model, x, precision, monkeypatch)
    (parts, ready), = calls
    assert len(parts) == len(ready) == -(-FF // 320)
    assert [alts[0].cols for alts in parts] == [320] * 4 + [FF - 4 * 320]
    # a tile is written while the one before it is read: in other slices
    for a, b in zip(parts, parts[1:], strict=False):
        assert not {s for p in a for s in p.slices} & {s for p in b for s in p.slices}
    assert list(ready) == sorted(ready) and ready[0] < ready[-1]
    down = next(name for name, op in sch.ops if op.startswith("MatMul") and "down" in name)
    assert _cycles(sch, down, "mxm.abc")[0] < ready[-1]
    tol = 0.05 if precision == "int8" else 0.15
    assert max(e["max_rel"] for e in res.report["errors"].values()) <= tol


def test_the_out_projection_folds_the_head_products_tile_by_tile(monkeypatch):
    """HeadMatMul records when each column tile of the merged heads is written; the row
    absmax that quantizes them for the out-projection folds each tile from then on."""
    from tests.compiler.test_head_matmul import _attention

    model = _attention(1, 64, 12, 64)  # 768 merged columns: three tiles
    x = np.random.default_rng(5).standard_normal((1, 64, 768)).astype(np.float32)
    # a fold's first pass: max(|x|, floor) of one tile
    cols, folds = _watch(monkeypatch, lambda ops, y, what: what.endswith("row max")
                         and ops[-1] == "max" and y is None)
    res, sch = _run(model, x, "int8", monkeypatch)
    heads = next(name for name, op in sch.ops if op == "HeadMatMul")
    out_proj = [name for name, op in sch.ops if op.startswith("MatMul")][-1]
    (tiles,) = [c for c in cols if len(c) == 3]
    assert max(tiles) >= _cycles(sch, heads)[-1]
    # the out-projection's absmax: its first fold from the first tile, not the last
    starts = [t for what, t, _ in folds if f"'{out_proj}'" in what]
    assert starts and min(starts) == min(tiles) < max(tiles)
    # x, q, k, v and the merged heads each quantized by rows, in a graph of random weights:
    # as test_head_matmul's bound
    assert max(e["max_rel"] for e in res.report["errors"].values()) <= 0.1
