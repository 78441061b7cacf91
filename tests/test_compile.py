"""End to end: ONNX -> compiler -> Program -> simulator, checked against onnxruntime / the ONNX
reference, plus the compiler's errors and determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from lpusim.cli import main
from lpusim.errors import LpusimError
from lpusim.program_io import program_to_bytes

RNG = np.random.default_rng(7)


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def vi(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def const(name, arr):
    arr = np.asarray(arr, np.float32)
    return h.make_tensor(name, T.FLOAT, list(arr.shape), arr.ravel())


def mlp(k=400, n=330, n2=20):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    b = RNG.standard_normal(n).astype(np.float32)
    w2 = RNG.standard_normal((n, n2)).astype(np.float32)
    return model([h.make_node("Gemm", ["x", "Wt", "B"], ["m"], transB=1),
                  h.make_node("Tanh", ["m"], ["r"]),
                  h.make_node("MatMul", ["r", "W2"], ["y"])],
                 [vi("x", ["batch", k])], [vi("y", ["batch", n2])],
                 [const("Wt", w.T), const("B", b), const("W2", w2)])


def test_mlp_matches_reference():
    res = lpusim.run_onnx(mlp(), dims={"batch": 3})
    assert res.report["errors"]["y"]["max_rel"] < 1e-4
    assert res.report["precision"] == "fp32" and res.report["reference"]
    assert res.report["roofline_ratio"] >= 1.0
    assert res.report["roofline_bound_by"] in res.report["roofline_terms_cycles"]


@pytest.mark.parametrize("b,m,k,n", [(3, 1, 4, 4), (4, 1, 2, 8), (3, 2, 3, 5), (2, 1, 64, 16)])
def test_batched_matmul_of_computed_operands(b, m, k, n):
    """One product per batch on one MXM plane: with few rows and a short K, consecutive
    installs come close together; each batch must still meet its own weights."""
    x = RNG.standard_normal((b, m, k)).astype(np.float32)
    w = RNG.standard_normal((b, k, n)).astype(np.float32)
    mm = model([h.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [b, m, k]),
               vi("w", [b, k, n])], [vi("y", [b, m, n])])
    res = lpusim.run_onnx(mm, {"x": x, "w": w})
    np.testing.assert_allclose(res.outputs["y"], x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,fn", [
    ("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide),
    ("Max", np.maximum), ("Min", np.minimum)])
def test_binary_ops_with_row_and_scalar_broadcast(op, fn):
    b = RNG.standard_normal(40).astype(np.float32) + 3
    m = model([h.make_node(op, ["x", "b"], ["t"]), h.make_node(op, ["t", "s"], ["y"])],
              [vi("x", [5, 40])], [vi("y", [5, 40])], [const("b", b), const("s", 1.5)])
    x = RNG.standard_normal((5, 40)).astype(np.float32)
    res = lpusim.run_onnx(m, {"x": x})
    want = fn(fn(x, b), np.float32(1.5))
    np.testing.assert_allclose(res.outputs["y"], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["Relu", "Neg", "Abs", "Exp", "Tanh", "Sigmoid", "Erf"])
def test_unary_ops(op):
    m = model([h.make_node(op, ["x"], ["y"])], [vi("x", [3, 700])], [vi("y", [3, 700])])
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] < 1e-5


def test_silu_and_scalar_minus_x():
    m = model([h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["x", "s"], ["t"]),
               h.make_node("Sub", ["one", "t"], ["y"])],
              [vi("x", [2, 64])], [vi("y", [2, 64])], [const("one", 1.0)])
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] < 1e-5


def test_compile_is_deterministic():
    m = mlp(64, 48, 8)
    assert program_to_bytes(lpusim.compile_onnx(m, dims={"batch": 2})) == \
        program_to_bytes(lpusim.compile_onnx(m, dims={"batch": 2}))


def test_model_too_large_for_the_chip():
    from models.common import shape_only_tensor

    m = model([h.make_node("MatMul", ["x", "W"], ["y"])], [vi("x", [1, 8192])],
              [vi("y", [1, 8192])], [shape_only_tensor("W", [8192, 8192])])
    m.metadata_props.add(key="lpusim.weights", value="shape-only")
    with pytest.raises(LpusimError, match="does not fit one chip.*bytes"):
        lpusim.compile_onnx(m)


def test_unlowered_op_and_precision_are_clear_errors():
    m = model([h.make_node("Mod", ["x", "x"], ["y"], fmod=1)], [vi("x", [2, 8])],
              [vi("y", [2, 8])])
    with pytest.raises(LpusimError, match="Mod.*not lowered"):
        lpusim.compile_onnx(m)
    with pytest.raises(LpusimError, match="unknown precision 'fp4'"):
        lpusim.compile_onnx(mlp(8, 8, 8), dims={"batch": 1}, precision="fp4")


def test_fp8_policy_quantizes_weights_per_channel_and_rows_on_chip():
    res = lpusim.run_onnx(mlp(), dims={"batch": 3}, precision="fp8")
    # e4m3 rounds each operand of a product once: relative error <= 2u + u^2, u = 2^-4
    assert res.report["errors"]["y"]["max_rel"] < 2 * 2.0 ** -4 + 2.0 ** -8
    assert "fp8_e4m3" in res.report["mxm"]["dtypes"]
    assert "fp8_e4m3" in res.report["mxm"]["emulated_dtypes"]  # tsp-v1 emulates fp8


def test_second_preset_compiles():
    """lpx-2026 has 78 MEM slices per hemisphere (not a multiple of 4): no 4-byte tensor may
    straddle the middle of the chip."""
    res = lpusim.run_onnx(mlp(), dims={"batch": 3}, arch="lpx-2026")
    assert res.report["errors"]["y"]["max_rel"] < 1e-4 and res.report["arch"] == "lpx-2026"


def test_cli_compile_and_run(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(64, 48, 8), str(path))
    runner = CliRunner()
    out = tmp_path / "m.lpu"
    r = runner.invoke(main, ["compile", str(path), "-o", str(out), "--dim", "batch=2"])
    assert r.exit_code == 0, r.output
    assert out.exists()
    r = runner.invoke(main, ["sim", str(out), "--random-inputs", "1"])
    assert r.exit_code == 0, r.output
    rep = tmp_path / "r.json"
    r = runner.invoke(main, ["run", str(path), "--dim", "batch=2", "--json", str(rep)])
    assert r.exit_code == 0, r.output
    assert "max rel error" in r.output and rep.exists()


@pytest.mark.parametrize("args,msg", [
    (["run", "{bad}"], "not a valid ONNX model"),
    (["run", "{model}"], "symbolic dim 'batch'"),
    (["run", "{model}", "--dim", "batch=x"], "expected NAME=N"),
    (["run", "{model}", "--dim", "nope=3", "--dim", "batch=1"], "nope"),
    (["compile", "{missing}", "-o", "{out}"], "missing"),
])
def test_cli_errors_are_one_line(tmp_path, args, msg):
    good = tmp_path / "m.onnx"
    onnx.save(mlp(16, 8, 4), str(good))
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model\n")
    subst = {"{bad}": str(bad), "{model}": str(good), "{missing}": str(tmp_path / "missing.onnx"),
             "{out}": str(tmp_path / "o.lpu")}
    r = CliRunner().invoke(main, [subst.get(a, a) for a in args])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert msg in lines[0]
    assert not (tmp_path / "o.lpu").exists()


def test_matmul_after_ops_that_fill_pad_lanes():
    """Lanes past a row's last column meet zero weight rows in the MXM's sums over K: ones
    (from exp) are fine, over two K tiles too; inf (from a reciprocal) is refused unless
    K fills whole tiles."""
    for k, op, ok in ((64, "Exp", True), (330, "Exp", True), (64, "Reciprocal", False),
                      (320, "Reciprocal", True)):
        w = RNG.standard_normal((k, 8)).astype(np.float32)
        m = model([h.make_node(op, ["x"], ["e"]), h.make_node("MatMul", ["e", "W"], ["y"])],
                  [vi("x", [2, k])], [vi("y", [2, 8])], [const("W", w)])
        if ok:
            res = lpusim.run_onnx(m)
            assert res.report["errors"]["y"]["max_rel"] < 1e-4
        else:
            with pytest.raises(LpusimError, match="past its last column"):
                lpusim.compile_onnx(m)


@pytest.mark.parametrize("cols", [48, 400])
@pytest.mark.parametrize("op,opset", [("LayerNormalization", 17), ("RMSNormalization", 23)])
def test_norms(op, opset, cols):
    g = RNG.standard_normal(cols).astype(np.float32)
    b = RNG.standard_normal(cols).astype(np.float32)
    ins, inits = ["x", "g"], [const("g", g)]
    if op == "LayerNormalization":
        ins.append("b")
        inits.append(const("b", b))
    m = model([h.make_node(op, ins, ["y"], epsilon=1e-5)], [vi("x", [3, cols])],
              [vi("y", [3, cols])], inits, opset=opset)
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] < 1e-5


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu(approx):
    m = model([h.make_node("Gelu", ["x"], ["y"], approximate=approx)], [vi("x", [2, 330])],
              [vi("y", [2, 330])], opset=20)
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] < 1e-6


def test_decomposed_layernorm_from_an_exporter_pattern():
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div, as exporters write it, is recognised and
    lowered."""
    nodes = [h.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
             h.make_node("Sub", ["x", "m"], ["d"]),
             h.make_node("Pow", ["d", "two"], ["p"]),
             h.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
             h.make_node("Add", ["v", "eps"], ["ve"]),
             h.make_node("Sqrt", ["ve"], ["s"]),
             h.make_node("Div", ["d", "s"], ["y"])]
    m = model(nodes, [vi("x", [4, 64])], [vi("y", [4, 64])],
              [const("two", 2.0), const("eps", 1e-5)])
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] < 1e-5


@pytest.mark.parametrize("precision,unit_roundoff", [("fp16", 2.0 ** -11), ("bf16", 2.0 ** -8)])
def test_reduced_precision_matmul(precision, unit_roundoff):
    """fp16/bf16 round weights and activations to the type (relative error <= u each, so a
    product errs by <= 2u) and accumulate exactly-rounded products in fp32: the error bound is
    2u * (|x| @ |W|), plus fp32 rounding of the sum. The result also equals a numpy emulation
    of that arithmetic to fp32 rounding."""
    import ml_dtypes

    k, n = 400, 330
    w = RNG.standard_normal((k, n)).astype(np.float32)
    x = RNG.standard_normal((3, k)).astype(np.float32)
    m = model([h.make_node("MatMul", ["x", "W"], ["y"])], [vi("x", [3, k])], [vi("y", [3, n])],
              [const("W", w)])
    res = lpusim.run_onnx(m, {"x": x}, precision=precision)
    dt = np.float16 if precision == "fp16" else ml_dtypes.bfloat16
    emu = x.astype(dt).astype(np.float64) @ w.astype(dt).astype(np.float64)
    np.testing.assert_allclose(res.outputs["y"], emu, rtol=2e-7, atol=1e-5)
    bound = 2 * unit_roundoff * (np.abs(x) @ np.abs(w)) + 1e-5
    assert (np.abs(res.outputs["y"] - x.astype(np.float64) @ w) <= bound).all()
    assert res.report["precision"] == precision
    assert res.report["mxm"]["dtypes"] == [precision]


@pytest.mark.parametrize("cols", [5, 100, 320])
def test_softmax(cols):
    m = model([h.make_node("Softmax", ["x"], ["y"])], [vi("x", [3, cols])], [vi("y", [3, cols])])
    x = (RNG.standard_normal((3, cols)) * 10).astype(np.float32)
    res = lpusim.run_onnx(m, {"x": x})
    assert res.report["errors"]["y"]["max_rel"] < 1e-6


def test_constants_placed_late_are_not_overwritten_by_earlier_temporaries():
    """Constants made during lowering (the row-sum matrices) are in SRAM before the run, so
    they must not take space a temporary used earlier in the schedule."""
    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Exp", ["a"], ["b"]),
             h.make_node("Neg", ["b"], ["c"]), h.make_node("Softmax", ["c"], ["s"]),
             h.make_node("LayerNormalization", ["s", "g", "bb"], ["y"])]
    m = model(nodes, [vi("x", [4, 96])], [vi("y", [4, 96])],
              [const("g", np.ones(96)), const("bb", np.zeros(96))])
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] < 1e-4


def test_clip_and_runtime_scalar_operands():
    """Clip with constant bounds (immediates) and with bounds given as inputs, and a binary op
    with a one-element input (spread over the lanes by the MXM first)."""
    x = (RNG.standard_normal((3, 50)) * 3).astype(np.float32)
    nodes = [h.make_node("Clip", ["x", "lo", "hi"], ["c"]), h.make_node("Mul", ["c", "k"], ["y"])]
    m = model(nodes, [vi("x", [3, 50]), vi("lo", []), vi("hi", []), vi("k", [1])],
              [vi("y", [3, 50])], opset=13)
    ins = {"x": x, "lo": np.float32(-1.0), "hi": np.float32(2.0), "k": np.float32([3.0])}
    res = lpusim.run_onnx(m, ins)
    np.testing.assert_allclose(res.outputs["y"], np.clip(x, -1, 2) * 3, rtol=1e-7)


def test_int8_matmul_per_channel_weights_per_row_activations():
    """int8: weights scaled per output column at compile time, activations per row on chip
    (max |x_r| / 127 from SXM rotations), int32 accumulation. Matches a numpy emulation of the
    same arithmetic exactly, and stays within the rigorous bound: each operand errs by at most
    half a step, so |err| <= K * max|x_r| * max|w_n| * (1/127 + 1/254^2)."""
    k, n = 400, 330
    w = RNG.standard_normal((k, n)).astype(np.float32)
    b = RNG.standard_normal(n).astype(np.float32)
    x = RNG.standard_normal((3, k)).astype(np.float32)
    m = model([h.make_node("MatMul", ["x", "W"], ["t"]), h.make_node("Add", ["t", "B"], ["y"])],
              [vi("x", [3, k])], [vi("y", [3, n])], [const("W", w), const("B", b)])
    res = lpusim.run_onnx(m, {"x": x}, precision="int8")
    sw = (np.abs(w).max(0) / np.float32(127)).astype(np.float32)
    wq = np.clip(np.rint(w / sw), -127, 127)
    mx = np.abs(x).max(1, keepdims=True).astype(np.float32)
    r = (np.float32(1 / mx.astype(np.float64)) * np.float32(127)).astype(np.float32)
    xq = np.clip(np.rint(x * r), -128, 127)
    # the result scale, x's row scale times W's column scale, is formed while the MXM works
    scale = (mx * np.float32(1 / 127)).astype(np.float32) * sw
    emu = (xq @ wq).astype(np.float32) * scale + b
    np.testing.assert_array_equal(res.outputs["y"], emu)
    bound = k * mx * np.abs(w).max(0) * (1 / 127 + 1 / 254 ** 2) + 1e-4
    assert (np.abs(res.outputs["y"] - (x.astype(np.float64) @ w + b)) <= bound).all()
    assert res.report["mxm"]["dtypes"] == ["int8"] and not res.report["mxm"]["emulated_dtypes"]


def test_row_moves_transpose_slice_split_concat():
    """Ops that keep the last axis move whole rows: the attention head transpose
    (0, 2, 1, 3), a Slice and a Split of a leading axis, and a Concat of two inputs."""
    x = RNG.standard_normal((2, 3, 4, 40)).astype(np.float32)
    z = RNG.standard_normal((2, 2, 4, 40)).astype(np.float32)
    i64 = lambda name, vals: h.make_tensor(name, T.INT64, [len(vals)], vals)  # noqa: E731
    nodes = [h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
             h.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
             h.make_node("Split", ["x", "sp"], ["a", "b"], axis=1),
             h.make_node("Concat", ["x", "z"], ["c"], axis=1)]
    m = model(nodes, [vi("x", [2, 3, 4, 40]), vi("z", [2, 2, 4, 40])],
              [vi("t", [2, 4, 3, 40]), vi("s", [2, 2, 4, 40]), vi("a", [2, 1, 4, 40]),
               vi("b", [2, 2, 4, 40]), vi("c", [2, 5, 4, 40])],
              [i64("st", [1]), i64("en", [3]), i64("ax", [1]), i64("sp", [1, 2])], opset=13)
    res = lpusim.run_onnx(m, {"x": x, "z": z})
    np.testing.assert_array_equal(res.outputs["t"], x.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(res.outputs["s"], x[:, 1:3])
    np.testing.assert_array_equal(res.outputs["a"], x[:, :1])
    np.testing.assert_array_equal(res.outputs["b"], x[:, 1:])
    np.testing.assert_array_equal(res.outputs["c"], np.concatenate([x, z], axis=1))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_matmul_of_two_activations_and_independent_matmuls(precision):
    """P @ V with V computed on chip (loaded as MXM weights from SRAM), batched over a leading
    dimension, next to two matmuls that share an input and one MXM plane (weights and
    accumulators of one must not be replaced while the other still uses them)."""
    w1 = RNG.standard_normal((40, 30)).astype(np.float32)
    w2 = RNG.standard_normal((40, 30)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "W1"], ["a"]), h.make_node("MatMul", ["x", "W2"], ["b"]),
             h.make_node("Relu", ["v"], ["rv"]), h.make_node("MatMul", ["p", "rv"], ["c"])]
    m = model(nodes, [vi("x", [5, 40]), vi("p", [2, 3, 4]), vi("v", [2, 4, 6])],
              [vi("a", [5, 30]), vi("b", [5, 30]), vi("c", [2, 3, 6])],
              [const("W1", w1), const("W2", w2)])
    res = lpusim.run_onnx(m, precision=precision)
    tol = 1e-5 if precision == "fp32" else 2e-3
    for name in ("a", "b", "c"):
        assert res.report["errors"][name]["max_rel"] < tol, name


def test_cli_inputs_that_are_not_an_npz(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(16, 8, 4), str(path))
    bad = tmp_path / "in.npz"
    bad.write_text("x,y\n1,2\n")
    r = CliRunner().invoke(main, ["run", str(path), "--dim", "batch=1", "--inputs", str(bad)])
    assert r.exit_code == 1 and "not an .npz archive" in r.output


def test_cli_inputs_from_a_truncated_npz_or_a_pipe(tmp_path):
    """A truncated .npz is a one-line error, not a traceback; an .npz read from a pipe (the
    file is read once) works."""
    import io
    import os
    import threading

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(16, 8, 4), str(path))
    buf = io.BytesIO()
    np.savez(buf, x=RNG.standard_normal((1, 16)).astype(np.float32))
    data = buf.getvalue()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    r = CliRunner().invoke(main, ["run", str(path), "--dim", "batch=1", "--inputs", str(cut)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "cannot read inputs" in r.output and len(r.output.strip().splitlines()) == 1
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    r = CliRunner().invoke(main, ["run", str(path), "--dim", "batch=1", "--inputs", str(fifo)])
    writer.join()
    assert r.exit_code == 0, r.output


def i64(name, vals):
    return h.make_tensor(name, T.INT64, [len(vals)], vals)


@pytest.mark.parametrize("cols,starts", [(40, (0, 8, 24)), (700, (0, 100, 330, 650)),
                                         (960, (0, 300, 640))])
def test_lane_moves_slice_split_concat_reshape(cols, starts):
    """Ops that move lanes: a Slice and a Split of the last axis (offsets that straddle
    vectors included), a Concat along it, and reshapes that split the last dim into heads and
    merge heads back (exactly, whatever the pad lanes of the pieces hold)."""
    x = RNG.standard_normal((3, 2, cols)).astype(np.float32)
    y = RNG.standard_normal((3, 2, 30)).astype(np.float32)
    a, b, c = starts[:3]
    heads = 4 if cols % 4 == 0 else 5
    nodes = [h.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
             h.make_node("Split", ["x", "sp"], ["p0", "p1", "p2"], axis=-1),
             h.make_node("Exp", ["p1"], ["e"]),  # pad lanes of a slice hold other columns
             h.make_node("Concat", ["e", "y", "p0"], ["cat"], axis=2),
             h.make_node("Reshape", ["x", "hs"], ["split"]),
             h.make_node("Reshape", ["split", "ms"], ["merged"])]
    dh = cols // heads
    m = model(nodes, [vi("x", [3, 2, cols]), vi("y", [3, 2, 30])],
              [vi("s", [3, 2, c - b]), vi("p0", [3, 2, b]), vi("p1", [3, 2, c - b]),
               vi("p2", [3, 2, cols - c]), vi("cat", [3, 2, c + 30]),
               vi("split", [3, 2, heads, dh]), vi("merged", [3, 2, cols])],
              [i64("st", [b]), i64("en", [c]), i64("ax", [2]), i64("sp", [b, c - b, cols - c]),
               i64("hs", [3, 2, heads, dh]), i64("ms", [3, 2, cols])], opset=13)
    res = lpusim.run_onnx(m, {"x": x, "y": y})
    np.testing.assert_array_equal(res.outputs["s"], x[..., b:c])
    np.testing.assert_array_equal(res.outputs["p0"], x[..., :b])
    np.testing.assert_array_equal(res.outputs["p2"], x[..., c:])
    np.testing.assert_allclose(res.outputs["cat"],
                               np.concatenate([np.exp(x[..., b:c]), y, x[..., :b]], axis=2),
                               rtol=1e-6)
    np.testing.assert_array_equal(res.outputs["split"], x.reshape(3, 2, heads, dh))
    np.testing.assert_array_equal(res.outputs["merged"], x)


def embedding(vocab, d, ids_shape, extra=(), axis=0):
    w = RNG.standard_normal((vocab, *extra, d)).astype(np.float32)
    g = h.make_graph([h.make_node("Gather", ["W", "ids"], ["y"], axis=axis)], "g",
                     [h.make_tensor_value_info("ids", T.INT64, list(ids_shape))],
                     [vi("y", [*ids_shape, *extra, d])], [const("W", w)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), w


@pytest.mark.parametrize("vocab,d,ids_shape,extra", [
    (50, 64, (1, 8), ()), (7, 700, (2, 3), ()), (300, 24, (400,), ()), (9, 16, (5,), (3,)),
    (20, 8, (), ()), (9000, 40, (2, 7), ())])
def test_gather_rows_with_runtime_indices(vocab, d, ids_shape, extra):
    """Embedding lookups: indices from the host (int64 loaded as int32), negative ones
    wrapped, map built on chip and rows fetched by mem.gather, exactly."""
    m, w = embedding(vocab, d, ids_shape, extra)
    ids = RNG.integers(-vocab, vocab, ids_shape)
    res = lpusim.run_onnx(m, {"ids": ids})
    np.testing.assert_array_equal(res.outputs["y"], w[np.where(ids < 0, ids + vocab, ids)])
    prog = lpusim.compile_onnx(m)
    assert prog.meta["index_inputs"] == {"ids": [-vocab, vocab - 1]}
    # seeded random ids for a run without inputs stay in the table
    res = lpusim.run_onnx(m)
    assert res.report["errors"]["y"]["max_abs"] == 0.0


@pytest.mark.parametrize("vocab,d", [(9000, 40), (3000, 700)])
def test_gather_from_a_chunked_table_at_the_chunk_edges(vocab, d):
    """A table of more than TABLE_CHUNK_VECTORS vectors is stored in chunks, each between
    two zero rows; an index picks its own chunk's row and the zero rows of the others
    (_chunk_map's clamp): the first and last rows of every chunk, and those beside them,
    come back exactly."""
    from compiler.backend.gather import TABLE_CHUNK_VECTORS

    per = -(-d // 320)
    rows = TABLE_CHUNK_VECTORS // per - 2
    edges = sorted({e for r0 in range(0, vocab, rows) for e in (r0 - 1, r0, r0 + 1)
                    if 0 <= e < vocab} | {vocab - 1})
    ids = np.array(edges + [-1, -vocab, -rows])
    m, w = embedding(vocab, d, ids.shape)
    res = lpusim.run_onnx(m, {"ids": ids})
    np.testing.assert_array_equal(res.outputs["y"], w[np.where(ids < 0, ids + vocab, ids)])


def test_gather_index_out_of_range_is_a_clear_error():
    m, _ = embedding(10, 32, (1, 4))
    with pytest.raises(LpusimError, match=r"input 'ids' holds 10, outside \[-10, 9\]"):
        lpusim.run_onnx(m, {"ids": np.array([[0, 1, 10, 2]])})


def test_gather_with_constant_indices_moves_rows():
    x = RNG.standard_normal((4, 5, 24)).astype(np.float32)
    m = model([h.make_node("Gather", ["x", "i"], ["y"], axis=1)], [vi("x", [4, 5, 24])],
              [vi("y", [4, 2, 24])], [i64("i", [3, -5])])
    res = lpusim.run_onnx(m, {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], x[:, [3, 0]])


def test_gather_along_the_last_axis_with_runtime_indices():
    """Rows of the transposed table (a constant, transposed at compile time), then the
    result's axes put back in ONNX order; the host checks the indices against that axis."""
    w = RNG.standard_normal((10, 32)).astype(np.float32)
    g = h.make_graph([h.make_node("Gather", ["W", "ids"], ["y"], axis=1)], "g",
                     [h.make_tensor_value_info("ids", T.INT64, [1, 4])],
                     [vi("y", [10, 1, 4])], [const("W", w)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    ids = np.array([[0, -1, 31, 5]])
    res = lpusim.run_onnx(m, {"ids": ids})
    np.testing.assert_array_equal(res.outputs["y"], np.take(w, ids, axis=1))
    with pytest.raises(LpusimError, match=r"outside \[-32, 31\]"):
        lpusim.run_onnx(m, {"ids": np.array([[0, 1, 32, 2]])})


@pytest.mark.parametrize("shape,perm", [((5, 7), (1, 0)), ((2, 3, 33, 50), (0, 1, 3, 2)),
                                        ((2, 3, 1, 400), (0, 1, 3, 2)),
                                        ((2, 8, 4, 16), (0, 2, 3, 1)), ((3, 4, 5), (2, 0, 1)),
                                        ((330, 20), (1, 0)), ((20, 700), (1, 0)),
                                        ((40, 96), (1, 0)), ((320, 320), (1, 0))])
def test_transposes_that_move_the_last_axis(shape, perm):
    """K^T and friends through the SXM corner turn (skew, gather, unskew, transpose, copy
    back), blocks of 320 included, in chunks of 5 column tiles (96 columns: 5 + 1), byte
    planes on both hemispheres' SXMs: exact."""
    x = RNG.standard_normal(shape).astype(np.float32)
    m = model([h.make_node("Transpose", ["x"], ["y"], perm=list(perm))], [vi("x", list(shape))],
              [vi("y", [shape[p] for p in perm])])
    res = lpusim.run_onnx(m, {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], x.transpose(perm))


def test_gather_from_a_table_in_chunks_in_reduced_precision():
    """A table larger than a chunk (several slices' worth) is stored in chunks, each with a
    zero row that indices of the other chunks read; fp16 keeps the table in fp16, int8 in
    int8 with a scale per column."""
    from compiler.backend.ops import quantize_weights

    m, w = embedding(9000, 700, (1, 5))
    ids = np.array([[0, 8999, 4000, -1, 1234]])
    rows = np.where(ids < 0, ids + 9000, ids)
    res = lpusim.run_onnx(m, {"ids": ids}, precision="fp16")
    np.testing.assert_array_equal(res.outputs["y"], w.astype(np.float16).astype(np.float32)[rows])
    res = lpusim.run_onnx(m, {"ids": ids}, precision="int8")
    q, scale = quantize_weights(w)
    np.testing.assert_array_equal(res.outputs["y"], q[rows].astype(np.float32) * scale)


def test_computed_operand_broadcast_over_middle_dims():
    """A [B, 1, 1, S] mask added to [B, H, S, S] scores (BERT at batch 2): rows copied out."""
    s = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)
    mk = RNG.standard_normal((2, 1, 1, 9)).astype(np.float32)
    m = model([h.make_node("Add", ["s", "m"], ["y"])],
              [vi("s", [2, 4, 9, 9]), vi("m", [2, 1, 1, 9])], [vi("y", [2, 4, 9, 9])])
    res = lpusim.run_onnx(m, {"s": s, "m": mk})
    np.testing.assert_array_equal(res.outputs["y"], s + mk)


@pytest.mark.parametrize("cols", [7, 320])
def test_reduce_max_over_the_last_axis(cols):
    x = RNG.standard_normal((3, 5, cols)).astype(np.float32)
    m = model([h.make_node("ReduceMax", ["x"], ["y"], axes=[-1], keepdims=1)],
              [vi("x", [3, 5, cols])], [vi("y", [3, 5, 1])])
    res = lpusim.run_onnx(m, {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], x.max(axis=-1, keepdims=True))


@pytest.mark.parametrize("model, seq", [("hf-bert", 8), ("tiny-bert", 64)])
def test_scheduler_skips_only_starts_that_cannot_fit(monkeypatch, model, seq):
    """place() jumps over start cycles a failed build says cannot fit; trying every cycle
    instead must give the same program (the hints never skip a feasible start). tiny-bert at
    64 rows streams fp16 attention rows to the MXM every fourth cycle (stepped read ranges)
    and reads 4-byte values from four slices at different distances (fit over many ports)."""
    from pathlib import Path

    from compiler.backend.resources import Reservation
    from models.presets import build_preset

    if model == "hf-bert":
        m = Path(__file__).resolve().parents[1] / "models" / "data" / "hf-bert.onnx"
        dims = {"batch": 1, "seq": seq}
    else:
        m, dims = build_preset(model, batch=1, seq=seq), None
    fast = program_to_bytes(lpusim.compile_onnx(m, dims=dims, precision="int8"))
    monkeypatch.setattr(Reservation, "need", lambda self, delta: None)
    slow = program_to_bytes(lpusim.compile_onnx(m, dims=dims, precision="int8"))
    assert fast == slow
