"""Attention's P @ V with V split into heads by moves and the output merged back, read by a
MatMul with constant weights: one HeadMatMul (compile._merged_values_product), an MXM
accumulation per 320-column tile over the heads in it, each against v's tile with the other
heads' lanes zeroed. No head split of v, no merge of the output; the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import compile as backend
from compiler.backend import lower

RNG = np.random.default_rng(7)


def _attention(b: int, s: int, heads: int, hd: int, interleaved: bool = False,
               out_proj: bool = True):
    """x [b, s, D] -> q, k, v projections -> heads -> Softmax(q k^T) v -> merged [b, s, D]
    (-> @ Wo). interleaved: head h holds columns d * heads + h (a [.., hd, H] reshape)."""
    d = heads * hd
    inits = [numpy_helper.from_array((RNG.standard_normal((d, d)) / np.sqrt(d))
                                     .astype(np.float32), n) for n in ("Wq", "Wk", "Wv", "Wo")]
    split = [b, s, hd, heads] if interleaved else [b, s, heads, hd]
    to_heads = [0, 3, 1, 2] if interleaved else [0, 2, 1, 3]
    inits += [numpy_helper.from_array(np.array(split, np.int64), "split"),
              numpy_helper.from_array(np.array([b, s, d], np.int64), "merged")]
    nodes = []
    for n in "qkv":
        nodes += [h.make_node("MatMul", ["x", f"W{n}"], [f"{n}2"]),
                  h.make_node("Reshape", [f"{n}2", "split"], [f"{n}3"])]
    nodes += [h.make_node("Transpose", ["q3"], ["q4"], perm=to_heads),
              h.make_node("Transpose", ["k3"], ["k4"],
                          perm=[0, 3, 2, 1] if interleaved else [0, 2, 3, 1]),
              h.make_node("Transpose", ["v3"], ["v4"], perm=to_heads),
              h.make_node("MatMul", ["q4", "k4"], ["scores"]),
              h.make_node("Softmax", ["scores"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v4"], ["y4"]),
              h.make_node("Transpose", ["y4"], ["y3"],
                          perm=[0, 2, 3, 1] if interleaved else [0, 2, 1, 3]),
              h.make_node("Reshape", ["y3", "merged"], ["r" if out_proj else "out"])]
    if out_proj:
        nodes.append(h.make_node("MatMul", ["r", "Wo"], ["out"]))
    g = h.make_graph(nodes, "attention", [h.make_tensor_value_info("x", T.FLOAT, [b, s, d])],
                     [h.make_tensor_value_info("out", T.FLOAT, [b, s, d])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _run(model, x, precision, monkeypatch=None, rewrite=True):
    if not rewrite:
        monkeypatch.setattr(backend, "_merged_values_product", lambda graph, lanes: None)
    calls = []
    real = backend.lower_head_matmul
    if monkeypatch is not None:
        monkeypatch.setattr(backend, "lower_head_matmul",
                            lambda *a, **k: calls.append(1) or real(*a, **k))
    res = lpusim.run_onnx(model, {"x": x}, precision=precision)
    if monkeypatch is not None:
        monkeypatch.undo()
    err = max(e["max_rel"] for e in res.report["errors"].values())  # against onnxruntime
    return res.outputs["out"], len(calls), err


@pytest.mark.parametrize("b,s,heads,hd,interleaved", [
    (1, 24, 4, 16, False),    # one tile, 4 heads
    (2, 9, 3, 40, False),     # two batches
    (1, 16, 8, 48, False),    # 384 columns: head 6 straddles the 320-lane tiles
    (1, 12, 4, 24, True),     # head h in columns d * 4 + h: lanes masks that interleave
])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_head_matmul_matches_the_split_and_merge(b, s, heads, hd, interleaved, precision,
                                                  monkeypatch):
    model = _attention(b, s, heads, hd, interleaved)
    x = RNG.standard_normal((b, s, heads * hd)).astype(np.float32)
    got, n, err = _run(model, x, precision, monkeypatch)
    assert n == 1
    plain, n0, err0 = _run(model, x, precision, monkeypatch, rewrite=False)
    assert n0 == 0
    if precision == "fp32":
        np.testing.assert_array_equal(got, plain)
        assert err <= 1e-4
    else:
        # int8: the HeadMatMul takes the Softmax's exponentials e and divides e @ V by each
        # head's e @ 1 (P = e / s is never rounded to fp16), so the numbers differ from the
        # split and merge's in the last bits; x, q, k, v and r are each quantized by rows in a
        # graph of random weights: up to 5.2e-2 from onnxruntime's either way
        assert err <= 0.1 and err0 <= 0.1
        np.testing.assert_allclose(got, plain, rtol=0, atol=0.05 * np.abs(plain).max())


def test_head_matmul_needs_a_quantized_reader(monkeypatch):
    """The merged output as the graph's output (no MatMul reading it) keeps the head split
    and merge: a NaN row of one head's P would reach the other heads' lanes."""
    model = _attention(1, 10, 2, 32, out_proj=False)
    x = RNG.standard_normal((1, 10, 64)).astype(np.float32)
    _, n, err = _run(model, x, "fp32", monkeypatch)
    assert n == 0
    assert err <= 1e-4


def test_head_matmul_in_the_bundled_exports(monkeypatch):
    """hf-bert (the exporter's graph) takes the rewrite at every layer."""
    model = "models/data/hf-bert.onnx"
    calls = []
    real = backend.lower_head_matmul
    monkeypatch.setattr(backend, "lower_head_matmul",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    res = lpusim.run_onnx(model, dims={"batch": 1, "seq": 16}, precision="int8")
    assert len(calls) == 2  # its two layers
    assert max(e["max_rel"] for e in res.report["errors"].values()) <= 5e-2


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_head_matmul_takes_p_block_by_block(precision, monkeypatch):
    """A Softmax over many rows runs in row blocks and tells its reader when each is done;
    HeadMatMul converts P block by block and each product waits only for its own heads'
    rows. The same numbers as converting all of P at once, in fewer cycles."""
    from compiler.backend.placement import Allocator

    # a Softmax over 12 * 64 rows: 3 blocks; 768 columns: 3 tiles, each with its own heads
    model = _attention(1, 64, 12, 64)
    x = RNG.standard_normal((1, 64, 768)).astype(np.float32)
    blocks, started = [], []
    real, real_mm = Allocator.derive, lower.matmul

    def derive(self, src, key, held, value):
        if key == ("row_ready",):  # the Softmax's (after the scores' own blocks)
            blocks[:] = value
        return real(self, src, key, held, value)

    def matmul(sch, x, w, y, ready, what, *args, **kw):
        if what.endswith("MatMul_4'") or "x_parts" in kw:  # the HeadMatMul's products
            started.append(ready)
        return real_mm(sch, x, w, y, ready, what, *args, **kw)

    monkeypatch.setattr(Allocator, "derive", derive)
    monkeypatch.setattr(lower, "matmul", matmul)
    fast = lpusim.run_onnx(model, {"x": x}, precision=precision)
    monkeypatch.undo()
    # the first tile's products (its heads' rows of P, or of e under int8) may start before
    # the Softmax's last block is done
    assert len(blocks) == 3 and min(started) < max(t for _, _, t in blocks)
    monkeypatch.setattr(Allocator, "derive", lambda self, src, key, held, value: None
                        if key == ("row_ready",) else real(self, src, key, held, value))
    whole = lpusim.run_onnx(model, {"x": x}, precision=precision)
    np.testing.assert_array_equal(fast.outputs["out"], whole.outputs["out"])
    assert fast.report["cycles"] < whole.report["cycles"]


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_int8_softmax_leaves_its_row_sums_to_head_matmul(precision, monkeypatch):
    """Under int8 the Softmax before a HeadMatMul writes only e = exp(x - max) (fp16, the
    MXM's type) and the HeadMatMul divides e @ V by e @ 1 of each head: no P = e / s, no
    conversion of P. fp16 keeps the Softmax whole. Both match onnxruntime."""
    from compiler.backend.placement import Allocator

    marked, divided = [], []
    real, real_ew = Allocator.derive, lower.elementwise

    def derive(self, src, key, held, value):
        if key == ("numerators",):
            marked.append(src.dtype)
        return real(self, src, key, held, value)

    def elementwise(sch, ops, x, y, imm, z, ready, what, *args, **kw):
        if what.endswith(" over the row sums"):
            divided.append(z.dtype)
        return real_ew(sch, ops, x, y, imm, z, ready, what, *args, **kw)

    monkeypatch.setattr(Allocator, "derive", derive)
    monkeypatch.setattr(lower, "elementwise", elementwise)
    model = _attention(1, 40, 6, 32)  # 192 columns: one tile of 6 heads, 128 pad lanes
    x = RNG.standard_normal((1, 40, 192)).astype(np.float32)
    res = lpusim.run_onnx(model, {"x": x}, precision=precision)
    monkeypatch.undo()
    err = max(e["max_rel"] for e in res.report["errors"].values())
    if precision == "int8":
        assert marked == ["fp16"] and divided == ["fp32"]
        assert err <= 0.1
    else:
        assert marked == [] and divided == []
        assert err <= 1e-2
    assert np.isfinite(res.outputs["out"]).all()  # the pad lanes 0 / s, not 0 / 0


@pytest.mark.parametrize("s,heads,hd", [(64, 12, 64), (80, 10, 32)])
def test_int8_softmax_blocks_write_their_exponentials_apart(s, heads, hd, monkeypatch):
    """The int8 Softmax's row blocks write their exponentials to placements of their own,
    whole heads each (800 rows in blocks of 267 would split a head of 80: they are 320, 320
    and 160), so the HeadMatMul reads one block while the next is written."""
    from compiler.backend.placement import Allocator

    got = []
    real = Allocator.derive

    def derive(self, src, key, held, value):
        if key == ("row_parts",):
            got.append(value)
        return real(self, src, key, held, value)

    monkeypatch.setattr(Allocator, "derive", derive)
    model = _attention(1, s, heads, hd)
    x = RNG.standard_normal((1, s, heads * hd)).astype(np.float32)
    res = lpusim.run_onnx(model, {"x": x}, precision="int8")
    monkeypatch.undo()
    # the exponentials (fp16); the scores' blocks are fp32 (test_block_parts.py)
    got = [v for v in got if v[0][2].dtype == "fp16"]
    assert len(got) == 1 and len(got[0]) == 3
    starts = [r0 for r0, _, _ in got[0]]
    assert all(r0 % s == 0 for r0 in starts)  # whole heads
    assert all(not set(a.slices) & set(b.slices)
               for (_, _, a), (_, _, b) in zip(got[0], got[0][1:], strict=False))
    assert max(e["max_rel"] for e in res.report["errors"].values()) <= 0.1
