"""Ops lowered in row blocks (Softmax, LayerNorm, RMSNorm over many rows) and the quantized
input shared by int8 matmuls: the same numbers as the plain lowering."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.backend import ops

RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, inits=(), opset=23):
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def _fp32(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def _run(m, inputs, precision="fp32"):
    program = lpusim.compile_onnx(m, precision=precision)
    return lpusim.simulate(program, inputs).outputs


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_in_row_blocks(op):
    rows = 3 * ops.SOFTMAX_BLOCK_VECTORS  # three blocks
    x = RNG.standard_normal((rows, 200)).astype(np.float32) * 4
    y = _run(_model([h.make_node(op, ["x"], ["y"], axis=-1)], [_fp32("x", [rows, 200])],
                    [_fp32("y", [rows, 200])]), {"x": x})["y"]
    z = x - x.max(axis=-1, keepdims=True)
    want = z - np.log(np.exp(z).sum(-1, keepdims=True)) if op == "LogSoftmax" else \
        np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def _norm_reference(op, x, gamma, beta):
    """LayerNorm (RMSNorm) of x's rows with epsilon 1e-5, in float64."""
    x64 = x.astype(np.float64)
    if op == "LayerNormalization":
        d = x64 - x64.mean(-1, keepdims=True)
        return d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5) * gamma + beta
    return x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-5) * gamma


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_norms_in_row_blocks(op):
    cols = 640
    rows = ops.NORM_BLOCKS * ops.NORM_BLOCK_VECTORS // 2 + 5  # 2 vectors per row: 4 blocks
    x = RNG.standard_normal((rows, cols)).astype(np.float32) * 3 + 1
    gamma = RNG.standard_normal(cols).astype(np.float32)
    beta = RNG.standard_normal(cols).astype(np.float32)
    inits = [numpy_helper.from_array(gamma, "g")]
    names = ["x", "g"]
    if op == "LayerNormalization":
        inits.append(numpy_helper.from_array(beta, "b"))
        names.append("b")
    m = _model([h.make_node(op, names, ["y"], axis=-1, epsilon=1e-5)],
               [_fp32("x", [rows, cols])], [_fp32("y", [rows, cols])], inits)
    y = _run(m, {"x": x})["y"]
    want = _norm_reference(op, x, gamma, beta)
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5)


def test_int8_matmuls_of_one_input_share_its_quantization():
    """Two int8 MatMuls reading one input give what each gives alone (one quantization)."""
    x = RNG.standard_normal((40, 320)).astype(np.float32)
    w1 = RNG.standard_normal((320, 96)).astype(np.float32)
    w2 = RNG.standard_normal((320, 64)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    both = _model([h.make_node("MatMul", ["x", "w1"], ["y1"]),
                   h.make_node("MatMul", ["x", "w2"], ["y2"])], [_fp32("x", [40, 320])],
                  [_fp32("y1", [40, 96]), _fp32("y2", [40, 64])], inits)
    got = _run(both, {"x": x}, "int8")
    for out, w, n in (("y1", "w1", 96), ("y2", "w2", 64)):
        alone = _model([h.make_node("MatMul", ["x", w], [out])], [_fp32("x", [40, 320])],
                       [_fp32(out, [40, n])], [i for i in inits if i.name == w])
        np.testing.assert_array_equal(got[out], _run(alone, {"x": x}, "int8")[out])


@pytest.mark.parametrize("rows", [300, 100])
def test_slow_sums_of_many_rows_run_on_several_planes(rows, monkeypatch):
    """Softmax's row sums under int8 run on the MXM in fp16 (a quarter of its rate): from
    SPLIT_ROWS rows on, in row blocks on several planes at once; the same numbers either way."""
    from compiler.backend import lower

    m = _model([h.make_node("Softmax", ["x"], ["y"], axis=-1)], [_fp32("x", [rows, 64])],
               [_fp32("y", [rows, 64])])
    x = RNG.standard_normal((rows, 64)).astype(np.float32)

    def planes(program):
        return sum(1 for q, words in program.chips[0].queues.items()
                   if q.startswith("MXM") and len(words))

    monkeypatch.setattr(ops, "SOFTMAX_BLOCK_VECTORS", 10_000)  # one block of rows
    split = lpusim.compile_onnx(m, precision="int8")
    monkeypatch.setattr(lower, "SPLIT_ROWS", 10_000)
    whole = lpusim.compile_onnx(m, precision="int8")
    assert (planes(split) > planes(whole)) == (rows >= 256)
    a = lpusim.simulate(split, {"x": x}).outputs["y"]
    b = lpusim.simulate(whole, {"x": x}).outputs["y"]
    np.testing.assert_array_equal(a, b)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(a, e / e.sum(-1, keepdims=True), atol=2e-3)


def test_a_gelu_input_is_written_once_per_row_block(monkeypatch):
    """A quantized MatMul with bias feeding a Gelu of several row blocks writes copies of its
    output as it goes (compile._copies_for), one per block, from the same streams; the
    blocks read their rows from different slices. The same numbers without them."""
    from compiler.backend import compile as backend

    rows, k, n = 128, 64, 1300
    w = (RNG.standard_normal((k, n)) / 8).astype(np.float32)
    b = RNG.standard_normal(n).astype(np.float32)
    m = _model([h.make_node("MatMul", ["x", "W"], ["p"]), h.make_node("Add", ["p", "b"], ["q"]),
                h.make_node("Gelu", ["q"], ["y"])], [_fp32("x", [rows, k])],
               [_fp32("y", [rows, n])],
               [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")], opset=20)
    x = RNG.standard_normal((rows, k)).astype(np.float32)
    with_copies = lpusim.compile_onnx(m, precision="int8")
    monkeypatch.setattr(backend, "_copies_for", lambda graph, v, lanes: 0)
    without = lpusim.compile_onnx(m, precision="int8")
    assert with_copies.instruction_count() > without.instruction_count()
    np.testing.assert_array_equal(lpusim.simulate(with_copies, {"x": x}).outputs["y"],
                                  lpusim.simulate(without, {"x": x}).outputs["y"])


def _abc_count(program) -> int:
    from isa.encoding import decode

    n = 0
    for q, words in program.chips[0].queues.items():
        if q.startswith("MXM"):
            n += sum(decode(int(lo) | int(hi) << 64)[0].mnemonic == "mxm.abc" for lo, hi in words)
    return n


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
@pytest.mark.parametrize("folded", [False, True])
def test_norm_variance_sums_one_tile_of_added_squares(op, folded):
    """Over more than FEW_ROWS rows of several column tiles, the squares' tiles are added on
    the VXM and the MXM sums one K tile per block for the variance, not one per column tile
    (three for 700 columns). The last tile's pad lanes must add nothing: x - mean is masked
    there (a mean of 40 would add 192 * 1600 per row otherwise). `folded`: a MatMul after the
    norm takes its scale and bias (compile._fold_norm_affine), so the norm ends at the
    normalized rows, its pad lanes zeroed by the last multiplication."""
    rows, cols, n = 40, 700, 64
    x = (RNG.standard_normal((rows, cols)) * 3 + 40).astype(np.float32)
    gamma = RNG.standard_normal(cols).astype(np.float32)
    beta = RNG.standard_normal(cols).astype(np.float32)
    w = (RNG.standard_normal((cols, n)) / 16).astype(np.float32)
    names, inits = ["x", "g"], [numpy_helper.from_array(gamma, "g")]
    if op == "LayerNormalization":
        names.append("b")
        inits.append(numpy_helper.from_array(beta, "b"))
    nodes = [h.make_node(op, names, ["y"], axis=-1, epsilon=1e-5)]
    out = _fp32("y", [rows, cols])
    if folded:
        nodes.append(h.make_node("MatMul", ["y", "W"], ["z"]))
        inits.append(numpy_helper.from_array(w, "W"))
        out = _fp32("z", [rows, n])
    m = _model(nodes, [_fp32("x", [rows, cols])], [out], inits)
    program = lpusim.compile_onnx(m)
    got = lpusim.simulate(program, {"x": x}).outputs["z" if folded else "y"]
    want = _norm_reference(op, x, gamma, beta)
    if folded:
        want = want @ w
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # MXM passes: per block of rows, the mean's 3 K tiles (fp32) and the variance's 1; the
    # MatMul's 3 K tiles of one column tile
    blocks = max(1, min(ops.NORM_BLOCKS, rows * 3 // ops.NORM_BLOCK_VECTORS))
    mean_tiles = 3 if op == "LayerNormalization" else 0
    assert _abc_count(program) == blocks * (mean_tiles + 1) + (3 if folded else 0)


def test_int8_softmax_divides_the_rounded_exponentials_it_sums():
    """Under int8 an fp32 Softmax's exponentials are rounded to fp16 in the exp chain, summed
    on the MXM and divided in fp32: every row sums to 1 within fp32 rounding, and the values
    are those of e16 / sum(e16)."""
    rows, cols = 48, 100
    x = (RNG.standard_normal((rows, cols)) * 3).astype(np.float32)
    m = _model([h.make_node("Softmax", ["x"], ["y"], axis=-1)], [_fp32("x", [rows, cols])],
               [_fp32("y", [rows, cols])])
    y = _run(m, {"x": x}, "int8")["y"].astype(np.float64)
    e16 = np.exp(x - x.max(-1, keepdims=True)).astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(y, e16 / e16.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


def test_quantized_matmul_dequantizes_tile_by_tile():
    """An int8 MatMul + bias of many column tiles on 128 rows: the dequantization and bias
    jobs follow the MXM one column tile (16 rows at a time) apiece, the accumulators rotate
    over their regions, and the result is the reference's."""
    from compiler.backend import lower

    rows, k, n = 128, 320, 1500  # 5 column tiles, more than a plane's regions
    w = (RNG.standard_normal((k, n)) / 8).astype(np.float32)
    b = RNG.standard_normal(n).astype(np.float32)
    m = _model([h.make_node("MatMul", ["x", "W"], ["p"]), h.make_node("Add", ["p", "b"], ["y"])],
               [_fp32("x", [rows, k])], [_fp32("y", [rows, n])],
               [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")], opset=20)
    x = RNG.standard_normal((rows, k)).astype(np.float32)
    program = lpusim.compile_onnx(m, precision="int8")
    y = lpusim.simulate(program, {"x": x}).outputs["y"]
    want = x.astype(np.float64) @ w + b
    assert np.abs(y - want).max() / np.abs(want).max() < 2e-2
    from isa.encoding import decode

    addrs = set()
    for q, words in program.chips[0].queues.items():
        if q.startswith("MXM"):
            for lo, hi in words:
                ins, f = decode(int(lo) | int(hi) << 64)
                if ins.mnemonic == "mxm.acc":
                    addrs.add(f["addr"])
    from lpusim.arch_load import load_arch

    cap = load_arch("tsp-v1").mxm_acc_vectors_per_plane
    assert len(addrs) > 1 and all(a % (cap // lower.ACC_REGIONS) == 0 for a in addrs)


def test_a_norm_tells_the_quantizing_matmul_its_rows_block_by_block(monkeypatch):
    """A LayerNorm in row blocks records when each block is done; the int8 MatMul after it
    folds each block's rows into their row absmax from then on. The same numbers as folding
    all rows after the norm, in fewer cycles."""
    from compiler.backend.placement import Allocator

    rows, cols, n = 128, 768, 320
    g = RNG.standard_normal(cols).astype(np.float32)
    b = RNG.standard_normal(cols).astype(np.float32)
    w = (RNG.standard_normal((cols, n)) / 16).astype(np.float32)
    m = _model([h.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1),
                h.make_node("MatMul", ["y", "W"], ["z"])], [_fp32("x", [rows, cols])],
               [_fp32("z", [rows, n])],
               [numpy_helper.from_array(g, "g"), numpy_helper.from_array(b, "b"),
                numpy_helper.from_array(w, "W")])
    x = RNG.standard_normal((rows, cols)).astype(np.float32)
    fast = lpusim.run_onnx(m, {"x": x}, precision="int8")
    real = Allocator.derive
    monkeypatch.setattr(Allocator, "derive", lambda self, src, key, held, value: None
                        if key == ("row_ready",) else real(self, src, key, held, value))
    whole = lpusim.run_onnx(m, {"x": x}, precision="int8")
    np.testing.assert_array_equal(fast.outputs["z"], whole.outputs["z"])
    assert fast.report["cycles"] < whole.report["cycles"]
