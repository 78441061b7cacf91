"""Backend lowerings of integer elementwise ops, comparisons, Where, Clip, LogSoftmax and
per-row values computed through elementwise chains: compiled, simulated and checked against
numpy (integers exactly, with the machine's wrapping) or onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import lpusim
from compiler.errors import CompileError
from lpusim.errors import LpusimError

RNG = np.random.default_rng(11)
ONNX_TYPE = {np.int8: T.INT8, np.int16: T.INT16, np.int32: T.INT32, np.uint8: T.UINT8,
             np.uint16: T.UINT16, np.uint32: T.UINT32, np.uint64: T.UINT64, np.int64: T.INT64,
             np.float32: T.FLOAT, np.float16: T.FLOAT16, bool: T.BOOL}


def model(nodes, inputs, outputs, opset=18):
    g = h.make_graph(nodes, "g", inputs, outputs)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def vi(name, np_type, shape):
    return h.make_tensor_value_info(name, ONNX_TYPE[np_type], shape)


def run(m, inputs):
    program = lpusim.compile_onnx(m, precision="fp32")
    return lpusim.simulate(program, inputs).outputs


def ints(np_type, shape):
    info = np.iinfo(np_type)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True).astype(np_type)


@pytest.mark.parametrize("np_type", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("op,fn", [("Add", np.add), ("Sub", np.subtract),
                                   ("Mul", np.multiply), ("Max", np.maximum),
                                   ("Min", np.minimum)])
def test_integer_arithmetic_wraps_in_its_type(np_type, op, fn):
    x, y = ints(np_type, (3, 40)), ints(np_type, (3, 40))
    m = model([h.make_node(op, ["x", "y"], ["z"])],
              [vi("x", np_type, [3, 40]), vi("y", np_type, [3, 40])], [vi("z", np_type, [3, 40])])
    got = run(m, {"x": x, "y": y})["z"]
    with np.errstate(over="ignore"):
        want = fn(x, y)  # numpy wraps integer overflow too
    assert got.dtype == np_type
    np.testing.assert_array_equal(got, want)


def test_integer_division_truncates_and_row_broadcast():
    x = ints(np.int16, (4, 7))
    y = RNG.integers(-9, 10, size=7).astype(np.int16)
    y[y == 0] = 3
    m = model([h.make_node("Div", ["x", "y"], ["z"])],
              [vi("x", np.int16, [4, 7]), vi("y", np.int16, [7])], [vi("z", np.int16, [4, 7])])
    got = run(m, {"x": x, "y": y})["z"]
    want = (np.trunc(x.astype(np.float64) / y)).astype(np.int16)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("np_type", [np.int8, np.uint8, np.uint16, np.uint32, np.int64])
@pytest.mark.parametrize("op,fn", [("Equal", np.equal), ("Less", np.less),
                                   ("GreaterOrEqual", np.greater_equal)])
def test_integer_comparisons_give_bools(np_type, op, fn):
    lo, hi = (0, 200) if np.dtype(np_type).kind == "u" else (-100, 100)
    x = RNG.integers(lo, hi, size=(2, 30)).astype(np_type)
    y = RNG.integers(lo, hi, size=(2, 30)).astype(np_type)
    y[:, :5] = x[:, :5]
    m = model([h.make_node(op, ["x", "y"], ["z"])],
              [vi("x", np_type, [2, 30]), vi("y", np_type, [2, 30])], [vi("z", bool, [2, 30])])
    got = run(m, {"x": x, "y": y})["z"]
    assert got.dtype == bool
    np.testing.assert_array_equal(got, fn(x, y))


def test_wide_integer_inputs_outside_the_machine_type_are_refused():
    m = model([h.make_node("Less", ["x", "y"], ["z"])],
              [vi("x", np.uint32, [4]), vi("y", np.uint32, [4])], [vi("z", bool, [4])])
    program = lpusim.compile_onnx(m, precision="fp32")
    x = np.array([1, 2, 3, 2**31 + 5], np.uint32)
    with pytest.raises(LpusimError, match="outside"):
        lpusim.simulate(program, {"x": x, "y": x})


@pytest.mark.parametrize("np_type", [np.int64, np.uint32, np.uint64])
def test_wide_integer_arithmetic_is_exact_in_the_checked_input_range(np_type):
    """int64/uint32/uint64 Add, Sub and Mul run in int32 where every result provably fits:
    the inputs that reach them are checked to [-2^k, 2^k) by the host (here k = 15, for a
    product); an unsigned difference below zero wraps as in its type, and a comparison may
    not read it."""
    m = model([h.make_node("Mul", ["x", "y"], ["p"]), h.make_node("Sub", ["x", "y"], ["d"]),
               h.make_node("Add", ["d", "y"], ["s"])],
              [vi("x", np_type, [2, 9]), vi("y", np_type, [2, 9])],
              [vi(n, np_type, [2, 9]) for n in ("p", "d", "s")])
    program = lpusim.compile_onnx(m, precision="fp32")
    lo = 0 if np.dtype(np_type).kind == "u" else -(2**15)
    assert program.meta["input_ranges"] == {"x": [lo, 2**15 - 1], "y": [lo, 2**15 - 1]}
    x = RNG.integers(max(lo, -3000), 3000, (2, 9)).astype(np_type)
    y = RNG.integers(max(lo, -3000), 3000, (2, 9)).astype(np_type)
    x[0, 0], y[0, 0] = 2**15 - 1, 2**15 - 1
    got = lpusim.simulate(program, {"x": x, "y": y}).outputs
    with np.errstate(over="ignore"):
        for name, want in (("p", x * y), ("d", x - y), ("s", x - y + y)):
            assert got[name].dtype == np_type
            np.testing.assert_array_equal(got[name], want)
    x[1, 1] = 2**15
    with pytest.raises(LpusimError, match="exact"):
        lpusim.simulate(program, {"x": x, "y": y})
    if np.dtype(np_type).kind == "u":
        m2 = model([h.make_node("Sub", ["x", "y"], ["d"]), h.make_node("Less", ["d", "y"], ["c"])],
                   [vi("x", np_type, [4]), vi("y", np_type, [4])], [vi("c", bool, [4])])
        with pytest.raises(CompileError, match="wrapped"):
            lpusim.compile_onnx(m2, precision="fp32")


def test_broadcasts_of_a_column_against_a_row():
    """An operand [..., 1] computed at run time broadcast along the lanes (spread by the SXM
    for integers, the MXM for floats) against a constant row, a computed row or a full
    operand; Sub and comparisons with the broadcast operand first."""
    cases = [((2, 1, 4, 1), (1, 1, 1, 8), np.int64, False), ((3, 1), (1, 5), np.float32, False),
             ((2, 1, 4, 1), (2, 1, 4, 8), np.int32, False), ((2, 3, 1), (6,), np.int32, True)]
    for sa, sb, dt, const in cases:
        full = list(np.broadcast_shapes(sa, sb))
        b = RNG.integers(-9, 9, sb).astype(dt)
        nodes = [h.make_node("Sub", ["a", "b"], ["d"]), h.make_node("Less", ["a", "b"], ["l"])]
        ins = [vi("a", dt, list(sa))] + ([] if const else [vi("b", dt, list(sb))])
        m = model(nodes, ins, [vi("d", dt, full), vi("l", bool, full)])
        if const:
            m.graph.initializer.append(numpy_helper.from_array(b, "b"))
        a = RNG.integers(-9, 9, sa).astype(dt)
        got = run(m, {"a": a} if const else {"a": a, "b": b})
        np.testing.assert_array_equal(got["d"], a - b)
        np.testing.assert_array_equal(got["l"], a < b)


@pytest.mark.parametrize("np_type", [np.uint8, np.uint16])
@pytest.mark.parametrize("op,fn", [("Add", np.add), ("Sub", np.subtract),
                                   ("Mul", np.multiply), ("Div", np.floor_divide)])
def test_unsigned_arithmetic_wraps_in_its_type(np_type, op, fn):
    """uint8 and uint16 are held in int16 and int32: Add, Sub and Mul keep the low bits of
    the wider result, Div of non-negative values is exact (and uint32 Div too)."""
    x, y = ints(np_type, (3, 40)), ints(np_type, (3, 40))
    y[y == 0] = 7
    m = model([h.make_node(op, ["x", "y"], ["z"]), h.make_node("Div", ["u", "v"], ["w"])],
              [vi("x", np_type, [3, 40]), vi("y", np_type, [3, 40]),
               vi("u", np.uint32, [5]), vi("v", np.uint32, [5])],
              [vi("z", np_type, [3, 40]), vi("w", np.uint32, [5])])
    u = np.array([0, 7, 2**31 - 1, 100, 9], np.uint32)
    v = np.array([3, 7, 2, 2**31 - 1, 10], np.uint32)
    got = run(m, {"x": x, "y": y, "u": u, "v": v})
    with np.errstate(over="ignore"):
        want = fn(x, y)
    assert got["z"].dtype == np_type
    np.testing.assert_array_equal(got["z"], want)
    np.testing.assert_array_equal(got["w"], u // v)


def test_integer_clip_and_where_with_runtime_scalars():
    """int8 Clip with bounds given as inputs (spread over the lanes by the SXM), and an int32
    Where whose branches are a one-element input and a row."""
    x = ints(np.int8, (3, 50))
    c = RNG.random((3, 50)) < 0.5
    row = ints(np.int32, (50,))
    nodes = [h.make_node("Clip", ["x", "lo", "hi"], ["y"]),
             h.make_node("Where", ["c", "s", "row"], ["w"])]
    m = model(nodes, [vi("x", np.int8, [3, 50]), vi("lo", np.int8, []),
                      vi("hi", np.int8, []), vi("c", bool, [3, 50]), vi("s", np.int32, []),
                      vi("row", np.int32, [50])],
              [vi("y", np.int8, [3, 50]), vi("w", np.int32, [3, 50])])
    s = np.int32(-123456)
    got = run(m, {"x": x, "lo": np.int8(-20), "hi": np.int8(70), "c": c, "s": s, "row": row})
    np.testing.assert_array_equal(got["y"], np.clip(x, -20, 70))
    np.testing.assert_array_equal(got["w"], np.where(c, s, row))


def test_max_of_three_and_pow_with_an_integer_exponent():
    a, b, c = (RNG.standard_normal((2, 9)).astype(np.float32) for _ in range(3))
    e = RNG.integers(0, 4, size=(2, 9)).astype(np.int64)
    m = model([h.make_node("Max", ["a", "b", "c"], ["y"]), h.make_node("Pow", ["a", "e"], ["p"])],
              [vi("a", np.float32, [2, 9]), vi("b", np.float32, [2, 9]),
               vi("c", np.float32, [2, 9]), vi("e", np.int64, [2, 9])],
              [vi("y", np.float32, [2, 9]), vi("p", np.float32, [2, 9])])
    got = run(m, {"a": a, "b": b, "c": c, "e": e})
    np.testing.assert_array_equal(got["y"], np.maximum(np.maximum(a, b), c))
    np.testing.assert_allclose(got["p"], a ** e.astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 300)])
def test_log_softmax(shape):
    x = (RNG.standard_normal(shape) * 10).astype(np.float32)
    m = model([h.make_node("LogSoftmax", ["x"], ["y"])], [vi("x", np.float32, list(shape))],
              [vi("y", np.float32, list(shape))])
    got = run(m, {"x": x})["y"]
    x64 = x.astype(np.float64)
    mx = x64.max(-1, keepdims=True)
    want = x64 - mx - np.log(np.exp(x64 - mx).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_per_row_values_through_elementwise_chains():
    """ReduceMean / ReduceMax results (one vector per row, the value in every lane) stay such
    through unary and binary elementwise ops, so a later op can broadcast them over the row:
    a layer norm and a log-softmax written out op by op."""
    x = RNG.standard_normal((6, 20)).astype(np.float32)
    i = h.make_tensor("ax", T.INT64, [1], [-1])
    nodes = [h.make_node("Constant", [], ["axes"], value=i),
             h.make_node("ReduceMean", ["x", "axes"], ["m"]),
             h.make_node("Mul", ["x", "x"], ["sq"]),
             h.make_node("ReduceMean", ["sq", "axes"], ["msq"]),
             h.make_node("Mul", ["m", "m"], ["m2"]),
             h.make_node("Sub", ["msq", "m2"], ["var"]),
             h.make_node("Add", ["var", "eps"], ["ve"]),
             h.make_node("Sqrt", ["ve"], ["sd"]),
             h.make_node("Sub", ["x", "m"], ["d"]),
             h.make_node("Div", ["d", "sd"], ["ln"]),
             h.make_node("ReduceMax", ["x", "axes"], ["mx"]),
             h.make_node("Sub", ["x", "mx"], ["xs"]),
             h.make_node("Exp", ["xs"], ["ex"]),
             h.make_node("ReduceSum", ["ex", "axes"], ["se"]),
             h.make_node("Log", ["se"], ["lse"]),
             h.make_node("Sub", ["xs", "lse"], ["ls"])]
    g = h.make_graph(nodes, "g", [vi("x", np.float32, [6, 20])],
                     [vi("ln", np.float32, [6, 20]), vi("ls", np.float32, [6, 20])],
                     [h.make_tensor("eps", T.FLOAT, [], [1e-5])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    res = lpusim.run_onnx(m, {"x": x})
    assert res.report["errors"]["ln"]["max_abs"] < 1e-4
    assert res.report["errors"]["ls"]["max_abs"] < 1e-5


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_casts_between_float_types():
    """fp32 -> fp16 / bf16 / fp8 by the VXM's conversion (round to nearest even); to fp8 a
    saturating Cast clamps to the largest finite value (NaN stays), a non-saturating one
    gives what the conversion gives (e4m3fn: NaN, e5m2: inf)."""
    import ml_dtypes

    x = np.array([[0.4789, -0.7229, 1e6, -1e6, np.inf, -np.inf, np.nan, 1e-7, 3.3, 500.0]],
                 np.float32)
    outs = [("h", T.FLOAT16, np.float16, {}), ("b", T.BFLOAT16, ml_dtypes.bfloat16, {}),
            ("e4", T.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, {}),
            ("e5", T.FLOAT8E5M2, ml_dtypes.float8_e5m2, {}),
            ("e4n", T.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, {"saturate": 0})]
    nodes = [h.make_node("Cast", ["x"], [n], to=t, **kw) for n, t, _, kw in outs]
    nodes.append(h.make_node("Cast", ["h"], ["back"], to=T.FLOAT))
    m = model(nodes, [vi("x", np.float32, [1, 10])],
              [h.make_tensor_value_info(n, t, [1, 10]) for n, t, _, _ in outs]
              + [vi("back", np.float32, [1, 10])], opset=21)
    got = run(m, {"x": x})
    for n, _, npt, kw in outs:
        src = x if kw or npt in (np.float16, ml_dtypes.bfloat16) else \
            np.clip(x, -float(ml_dtypes.finfo(npt).max), float(ml_dtypes.finfo(npt).max))
        assert got[n].dtype == np.dtype(npt), n
        np.testing.assert_array_equal(got[n].astype(np.float32), src.astype(npt).astype(
            np.float32), err_msg=n)
    np.testing.assert_array_equal(got["back"], x.astype(np.float16).astype(np.float32))


def test_float16_comparison_isnan_and_max():
    x = np.array([[1.5, np.nan, -2.0, 7.0]], np.float16)
    y = np.array([[1.5, 0.0, 3.0, -7.0]], np.float16)
    nodes = [h.make_node("IsNaN", ["x"], ["n"]), h.make_node("Less", ["x", "y"], ["l"]),
             h.make_node("Max", ["x", "y"], ["m"])]
    m = model(nodes, [h.make_tensor_value_info(v, T.FLOAT16, [1, 4]) for v in "xy"],
              [vi("n", bool, [1, 4]), vi("l", bool, [1, 4]),
               h.make_tensor_value_info("m", T.FLOAT16, [1, 4])])
    got = run(m, {"x": x, "y": y})
    np.testing.assert_array_equal(got["n"], np.isnan(x))
    np.testing.assert_array_equal(got["l"], x < y)
    assert got["m"].dtype == np.float16
    np.testing.assert_array_equal(got["m"], np.maximum(x, y))


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_norms_over_trailing_axes(op):
    """axis=1 of [2, 3, 4, 5]: flattened to [2, 60], normalised, laid back out."""
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    ins = ["x", "w", "b"] if op == "LayerNormalization" else ["x", "w"]
    outs = ["y", "mean", "inv"] if op == "LayerNormalization" else ["y"]
    m = model([h.make_node(op, ins, outs, axis=1, epsilon=1e-3)],
              [vi("x", np.float32, [2, 3, 4, 5]), vi("w", np.float32, [3, 4, 5]),
               vi("b", np.float32, [3, 4, 5])][:len(ins)],
              [vi("y", np.float32, [2, 3, 4, 5]), vi("mean", np.float32, [2, 1, 1, 1]),
               vi("inv", np.float32, [2, 1, 1, 1])][:len(outs)], opset=23)
    res = lpusim.run_onnx(m, {k: v for k, v in {"x": x, "w": w, "b": b}.items() if k in ins})
    for o in outs:
        assert res.report["errors"][o]["max_abs"] < 1e-4, o


def test_reductions_over_trailing_axes_broadcast_per_block():
    """ReduceMean over axes 1..3 and ReduceMax over all axes (keepdims): one value per block
    of rows, which a later Div / Sub reads once for every row of its block."""
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    axes = h.make_tensor("axes", T.INT64, [3], [1, 2, 3])
    nodes = [h.make_node("Mul", ["x", "x"], ["sq"]),
             h.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
             h.make_node("Sqrt", ["ms"], ["rms"]),
             h.make_node("Div", ["x", "rms"], ["y"]),
             h.make_node("ReduceMax", ["x"], ["mx"]),
             h.make_node("Sub", ["x", "mx"], ["d"])]
    g = h.make_graph(nodes, "g", [vi("x", np.float32, [2, 3, 4, 5])],
                     [vi("y", np.float32, [2, 3, 4, 5]), vi("d", np.float32, [2, 3, 4, 5])],
                     [axes])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    got = run(m, {"x": x})
    rms = np.sqrt((x.astype(np.float64) ** 2).mean(axis=(1, 2, 3), keepdims=True))
    np.testing.assert_allclose(got["y"], x / rms, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["d"], x - x.max())


@pytest.mark.parametrize("c_shape", [None, [1], [7], [5, 7]])
def test_gemm_with_transposes_alpha_beta_and_runtime_operands(c_shape):
    a = RNG.standard_normal((6, 5)).astype(np.float32)  # transA: [K, M]
    b = RNG.standard_normal((7, 6)).astype(np.float32)  # transB: [N, K]
    ins = ["a", "b"] + (["c"] if c_shape else [])
    vis = [vi("a", np.float32, [6, 5]), vi("b", np.float32, [7, 6])]
    feeds = {"a": a, "b": b}
    if c_shape:
        vis.append(vi("c", np.float32, c_shape))
        feeds["c"] = RNG.standard_normal(c_shape).astype(np.float32)
    m = model([h.make_node("Gemm", ins, ["y"], transA=1, transB=1, alpha=0.5, beta=-2.0)],
              vis, [vi("y", np.float32, [5, 7])], opset=13)
    got = run(m, feeds)["y"]
    want = 0.5 * (a.T.astype(np.float64) @ b.T) + (-2.0 * feeds["c"] if c_shape else 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sa,sb", [([4], [2, 4, 3]), ([1, 2, 5, 4], [4]), ([4], [4]),
                                   ([3, 1, 2, 4], [1, 2, 4, 5])])
def test_matmul_of_1d_operands_and_broadcast_batches(sa, sb):
    a = RNG.standard_normal(sa).astype(np.float32)
    b = RNG.standard_normal(sb).astype(np.float32)
    want = np.matmul(a.astype(np.float64), b)
    m = model([h.make_node("MatMul", ["a", "b"], ["y"])],
              [vi("a", np.float32, sa), vi("b", np.float32, sb)],
              [vi("y", np.float32, list(want.shape))])
    got = run(m, {"a": a, "b": b})["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,axis,opset", [("Softmax", 0, 13), ("LogSoftmax", 1, 13),
                                           ("Softmax", 1, 11)])
def test_softmax_over_an_inner_axis(op, axis, opset):
    """opset 13 on: over that axis alone (transposed to the last and back); before: over the
    flattened trailing axes from it."""
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32) * 3
    m = model([h.make_node(op, ["x"], ["y"], axis=axis)], [vi("x", np.float32, [3, 4, 5])],
              [vi("y", np.float32, [3, 4, 5])], opset=opset)
    got = run(m, {"x": x})["y"]
    x64 = x.astype(np.float64) if opset >= 13 else x.astype(np.float64).reshape(3, -1)
    ax = axis if opset >= 13 else 1
    e = np.exp(x64 - x64.max(ax, keepdims=True))
    want = e / e.sum(ax, keepdims=True)
    want = (np.log(want) if op == "LogSoftmax" else want).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reductions_over_inner_axes():
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    axes0 = h.make_tensor("a0", T.INT64, [1], [0])
    axes02 = h.make_tensor("a02", T.INT64, [2], [0, 2])
    nodes = [h.make_node("ReduceSum", ["x", "a0"], ["s"]),
             h.make_node("ReduceMax", ["x", "a02"], ["mx"])]
    g = h.make_graph(nodes, "g", [vi("x", np.float32, [3, 4, 5])],
                     [vi("s", np.float32, [1, 4, 5]), vi("mx", np.float32, [1, 4, 1])],
                     [axes0, axes02])
    got = run(h.make_model(g, opset_imports=[h.make_opsetid("", 18)]), {"x": x})
    np.testing.assert_allclose(got["s"], x.sum(0, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["mx"], x.max((0, 2), keepdims=True))


@pytest.mark.parametrize("shape,axis,ishape,const", [((5, 4, 3), 1, (2,), False),
                                                     ((3, 6), 1, (2, 2), True),
                                                     ((10,), 0, (3,), False)])
def test_gather_of_runtime_indices_along_inner_axes(shape, axis, ishape, const):
    data = RNG.standard_normal(shape).astype(np.float32)
    n = shape[axis]
    idx = RNG.integers(-n, n, size=ishape).astype(np.int64)
    want = np.take(data, idx, axis=axis)
    inits = [h.make_tensor("d", T.FLOAT, list(shape), data.ravel())] if const else []
    ins = [vi("i", np.int64, list(ishape))] + ([] if const else [vi("d", np.float32, list(shape))])
    g = h.make_graph([h.make_node("Gather", ["d", "i"], ["y"], axis=axis)], "g", ins,
                     [vi("y", np.float32, list(want.shape))], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    feeds = {"i": idx} if const else {"i": idx, "d": data}
    np.testing.assert_array_equal(run(m, feeds)["y"], want)


@pytest.mark.parametrize("np_type,shape,k,upper,k_const", [
    (np.float32, (4, 5), None, 1, True), (np.float32, (2, 3, 7), -1, 0, False),
    (np.int8, (3, 4, 5), 2, 1, False), (np.int16, (6, 5), -2, 0, True),
    (np.float32, (3, 400), 30, 1, False)])
def test_trilu_keeps_the_bits_of_the_kept_triangle(np_type, shape, k, upper, k_const):
    """x AND a mask of the element width: inf and NaN are kept (or zeroed) exactly; k a
    constant, absent, or an input (the mask then built on chip)."""
    x = (RNG.standard_normal(shape) * 50).astype(np_type)
    if np_type == np.float32:
        x.ravel()[3], x.ravel()[5] = np.inf, np.nan
    names, ins, inits, feeds = ["x"], [vi("x", np_type, list(shape))], [], {"x": x}
    if k is not None:
        names.append("k")
        if k_const:
            inits.append(h.make_tensor("k", T.INT64, [], [k]))
        else:
            ins.append(vi("k", np.int64, []))
            feeds["k"] = np.array(k, np.int64)
    g = h.make_graph([h.make_node("Trilu", names, ["y"], upper=upper)], "g", ins,
                     [vi("y", np_type, list(shape))], inits)
    got = run(h.make_model(g, opset_imports=[h.make_opsetid("", 14)]), feeds)["y"]
    want = np.triu(x, k or 0) if upper else np.tril(x, k or 0)
    assert got.dtype == np_type
    np.testing.assert_array_equal(got, want)


def test_where_with_a_condition_broadcast_over_leading_dims():
    m = model([h.make_node("Where", ["c", "a", "b"], ["y"])],
              [vi("c", bool, [1, 3, 1, 8]), vi("a", np.float32, [2, 3, 4, 8]),
               vi("b", np.float32, [2, 3, 4, 8])], [vi("y", np.float32, [2, 3, 4, 8])])
    c = RNG.random((1, 3, 1, 8)) > 0.5
    a, b = (RNG.standard_normal((2, 3, 4, 8)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(run(m, {"c": c, "a": a, "b": b})["y"], np.where(c, a, b))


@pytest.mark.parametrize("np_type", [np.float32, np.float16, np.int8])
def test_where_selects_bits_with_a_condition_broadcast_along_lanes(np_type):
    """Where is a bitwise select: inf and NaN pass through the branch taken and do not leak
    from the other; a [4, 1] condition (a graph input: spread over the lanes by the MXM) is
    broadcast along the last dim, a -inf scalar branch is a constant row and a 0 branch drops
    its term."""
    lane = model([h.make_node("Where", ["c", "a", "b"], ["y"]),
                  h.make_node("Where", ["c", "a", "ninf"], ["y2"]),
                  h.make_node("Where", ["c", "zero", "b"], ["y3"])],
                 [vi("c", bool, [4, 1]), vi("a", np_type, [4, 330]),
                  vi("b", np_type, [4, 330])],
                 [vi("y", np_type, [4, 330]), vi("y2", np_type, [4, 330]),
                  vi("y3", np_type, [4, 330])])
    float_ = np.dtype(np_type).kind == "f"
    fill = np.array(-np.inf if float_ else -128, np_type)
    lane.graph.initializer.extend([numpy_helper.from_array(fill, "ninf"),
                                   numpy_helper.from_array(np.zeros((), np_type), "zero")])
    c = np.array([[True], [False], [True], [False]])
    if float_:
        a, b = (RNG.standard_normal((4, 330)).astype(np_type) for _ in range(2))
        a[0, :3] = [np.inf, -np.inf, np.nan]
        b[0, :3] = [np.nan, np.inf, -np.inf]
        a[1, :3] = [np.nan, np.inf, -np.inf]
    else:
        a, b = ints(np_type, (4, 330)), ints(np_type, (4, 330))
    got = run(lane, {"c": c, "a": a, "b": b})
    for name, want in (("y", np.where(c, a, b)), ("y2", np.where(c, a, fill)),
                       ("y3", np.where(c, np.zeros((), np_type), b))):
        assert got[name].dtype == np_type
        np.testing.assert_array_equal(got[name], want)


def test_where_with_a_per_row_condition_from_a_reduction():
    """A condition computed per row (ReduceMax -> Equal, held in every lane) selects whole
    rows of a softmax, as Attention's function body does for rows with every key masked."""
    m = model([h.make_node("ReduceMax", ["bias", "axes"], ["mx"], keepdims=1),
               h.make_node("Equal", ["mx", "ninf"], ["dead"]),
               h.make_node("Add", ["s", "bias"], ["sb"]),
               h.make_node("Softmax", ["sb"], ["p"], axis=-1),
               h.make_node("Where", ["dead", "zero", "p"], ["y"])],
              [vi("bias", np.float32, [4, 6]), vi("s", np.float32, [2, 3, 4, 6])],
              [vi("y", np.float32, [2, 3, 4, 6])])
    m.graph.initializer.extend([h.make_tensor("ninf", T.FLOAT, [], [-np.inf]),
                                h.make_tensor("zero", T.FLOAT, [], [0.0]),
                                h.make_tensor("axes", T.INT64, [1], [-1])])
    bias = np.zeros((4, 6), np.float32)
    bias[1] = -np.inf
    bias[2, :3] = -np.inf
    s = RNG.standard_normal((2, 3, 4, 6)).astype(np.float32)
    x = s + bias
    with np.errstate(all="ignore"):
        e = np.exp(x - x.max(-1, keepdims=True))
        want = np.where(np.isneginf(bias.max(-1, keepdims=True)), 0, e / e.sum(-1, keepdims=True))
    got = run(m, {"bias": bias, "s": s})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_wide_integer_selections_come_back_in_their_type():
    m = model([h.make_node("Max", ["x", "y"], ["z"]), h.make_node("Trilu", ["z"], ["t"])],
              [vi("x", np.int64, [4, 5]), vi("y", np.int64, [4, 5])],
              [vi("t", np.int64, [4, 5])])
    x, y = (RNG.integers(-2**31, 2**31 - 1, (4, 5)).astype(np.int64) for _ in range(2))
    out = run(m, {"x": x, "y": y})["t"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.triu(np.maximum(x, y)))


def test_float16_matmul_softmax_and_special_functions():
    """fp16 MatMuls (of two activations, and of a constant weight) and special functions run
    in fp32 and round once to fp16; an fp16 Softmax rounds each step to fp16 (x - max, exp,
    the row sum, the quotient), as ONNX's reference does."""
    a = RNG.standard_normal((2, 4, 8)).astype(np.float16)
    b = RNG.standard_normal((2, 8, 6)).astype(np.float16)
    w = RNG.standard_normal((6, 5)).astype(np.float16)
    m = model([h.make_node("MatMul", ["a", "b"], ["s"]),
               h.make_node("Softmax", ["s"], ["p"], axis=-1),
               h.make_node("Tanh", ["p"], ["t"]),
               h.make_node("MatMul", ["t", "w"], ["y"])],
              [vi("a", np.float16, [2, 4, 8]), vi("b", np.float16, [2, 8, 6])],
              [vi("p", np.float16, [2, 4, 6]), vi("y", np.float16, [2, 4, 5])])
    m.graph.initializer.append(numpy_helper.from_array(w, "w"))
    got = run(m, {"a": a, "b": b})
    f16, f32 = np.float16, np.float32
    s = np.matmul(a.astype(f32), b.astype(f32)).astype(f16)
    d = (s.astype(f32) - s.max(-1, keepdims=True).astype(f32)).astype(f16)
    e = np.exp(d.astype(f32)).astype(f16)
    tot = e.astype(np.float64).sum(-1, keepdims=True).astype(f32).astype(f16)
    p = (e.astype(f32) / tot.astype(f32)).astype(f16)
    t = np.tanh(p.astype(f32)).astype(f16)
    y = np.matmul(t.astype(f32), w.astype(f32)).astype(f16)
    assert got["p"].dtype == f16 and got["y"].dtype == f16
    np.testing.assert_array_equal(got["p"], p)
    np.testing.assert_allclose(got["y"].astype(f32), y.astype(f32), rtol=2**-10, atol=2**-14)


def test_bfloat16_softmax_is_refused_with_a_reason():
    m = model([h.make_node("Softmax", ["x"], ["y"], axis=-1)],
              [h.make_tensor_value_info("x", T.BFLOAT16, [2, 6])],
              [h.make_tensor_value_info("y", T.BFLOAT16, [2, 6])])
    with pytest.raises(CompileError, match="softmax in bfloat16"):
        lpusim.compile_onnx(m, precision="fp32")


def test_pad_in_constant_mode_is_concats_and_slices():
    """Pad with constant pads: blocks of the pad value (here -inf) concatenated along the
    padded axes (the last one included), a crop (negative pad) sliced off."""
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    pads = np.array([0, 1, 2, 0, -1, 3], np.int64)  # begins of axes 0..2, then ends
    m = model([h.make_node("Pad", ["x", "pads", "v"], ["y"], mode="constant"),
               h.make_node("Pad", ["x", "zeros"], ["same"])],
              [vi("x", np.float32, [2, 3, 5])],
              [vi("y", np.float32, [2, 3, 10]), vi("same", np.float32, [2, 3, 5])])
    m.graph.initializer.extend([numpy_helper.from_array(pads, "pads"),
                                numpy_helper.from_array(np.zeros(6, np.int64), "zeros"),
                                numpy_helper.from_array(np.array(-np.inf, np.float32), "v")])
    got = run(m, {"x": x})
    want = np.pad(x, [(0, 0), (1, 0), (2, 3)], constant_values=-np.inf)[:, :3]
    np.testing.assert_array_equal(got["y"], want)
    np.testing.assert_array_equal(got["same"], x)


def test_constant_outputs_are_copied_out_by_the_program():
    """Outputs folded to constants at compile time (Shape, Size, Constant) are written by the
    program (a copy from the constant's SRAM), not aliased to it."""
    m = model([h.make_node("Shape", ["x"], ["s"]), h.make_node("Size", ["x"], ["n"]),
               h.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
                   np.array([[1.5, -2.0]], np.float32))),
               h.make_node("Relu", ["x"], ["y"])],
              [vi("x", np.float32, [2, 3, 4])],
              [vi("s", np.int64, [3]), vi("n", np.int64, []), vi("c", np.float32, [1, 2]),
               vi("y", np.float32, [2, 3, 4])])
    program = lpusim.compile_onnx(m, precision="fp32")
    out = {t.name: t for t in program.tensors if t.kind == "output"}
    held = {(t.slices, t.addr) for t in program.tensors if t.kind != "output"}
    assert set(out) == {"s", "n", "c", "y"}
    assert not {(t.slices, t.addr) for t in out.values()} & held
    got = lpusim.simulate(program, {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32)})
    np.testing.assert_array_equal(got.outputs["s"], np.array([2, 3, 4], np.int64))
    assert got.outputs["s"].dtype == np.int64
    np.testing.assert_array_equal(got.outputs["n"], np.array(24, np.int64))
    np.testing.assert_array_equal(got.outputs["c"], np.array([[1.5, -2.0]], np.float32))


@pytest.mark.parametrize("np_type", [np.int8, np.int32, np.uint8, np.uint32, np.int64])
@pytest.mark.parametrize("fmod", [0, 1])
def test_integer_mod_takes_the_sign_of_the_divisor_or_dividend(np_type, fmod):
    """Integer Mod from the truncating division: fmod=1 keeps the dividend's sign, fmod=0 the
    divisor's; a scalar divisor is an immediate, a [1] one is broadcast."""
    signed = np.dtype(np_type).kind == "i"
    lo, hi = (-100, 100) if signed else (0, 200)
    a = RNG.integers(lo, hi, size=(3, 40)).astype(np_type)
    b = RNG.integers(lo, hi, size=(3, 40)).astype(np_type)
    b[b == 0] = 3
    b1 = np.array([-7 if signed else 7], np_type)
    m = model([h.make_node("Mod", ["a", "b"], ["y"], fmod=fmod),
               h.make_node("Mod", ["a", "b1"], ["y1"], fmod=fmod),
               h.make_node("Mod", ["a", "five"], ["y5"], fmod=fmod)],
              [vi("a", np_type, [3, 40]), vi("b", np_type, [3, 40]), vi("b1", np_type, [1])],
              [vi(n, np_type, [3, 40]) for n in ("y", "y1", "y5")])
    m.graph.initializer.append(numpy_helper.from_array(np.array(5, np_type), "five"))
    got = run(m, {"a": a, "b": b, "b1": b1})
    fn = np.fmod if fmod else np.mod
    for name, d in (("y", b), ("y1", b1), ("y5", np.array(5, np_type))):
        assert got[name].dtype == np_type
        np.testing.assert_array_equal(got[name], fn(a, d))


def test_float_mod_is_refused_with_a_reason():
    m = model([h.make_node("Mod", ["a", "b"], ["y"], fmod=1)],
              [vi("a", np.float32, [4]), vi("b", np.float32, [4])], [vi("y", np.float32, [4])])
    with pytest.raises(CompileError, match="float Mod"):
        lpusim.compile_onnx(m, precision="fp32")


def test_slices_with_steps_and_over_several_axes():
    """A step on the last axis picks lanes by an SXM permutation (negative steps too); the
    last axis and another sliced at once move lanes of the picked rows."""
    x = RNG.standard_normal((3, 4, 10)).astype(np.float32)

    def sl(name, starts, ends, axes, steps):
        consts = [numpy_helper.from_array(np.array(v, np.int64), f"{name}_{k}")
                  for k, v in (("s", starts), ("e", ends), ("a", axes), ("t", steps))]
        return h.make_node("Slice", ["x"] + [c.name for c in consts], [name]), consts

    n1, c1 = sl("even", [0], [10], [-1], [2])
    n2, c2 = sl("back", [8, 3], [0, 0], [2, 1], [-3, -1])
    n3, c3 = sl("both", [1, 3], [3, 9], [1, 2], [1, 1])
    m = model([n1, n2, n3], [vi("x", np.float32, [3, 4, 10])],
              [vi("even", np.float32, [3, 4, 5]), vi("back", np.float32, [3, 3, 3]),
               vi("both", np.float32, [3, 2, 6])])
    m.graph.initializer.extend(c1 + c2 + c3)
    got = run(m, {"x": x})
    np.testing.assert_array_equal(got["even"], x[..., ::2])
    np.testing.assert_array_equal(got["back"], x[:, 3:0:-1, 8:0:-3])
    np.testing.assert_array_equal(got["both"], x[:, 1:3, 3:9])


def test_tensors_with_no_elements():
    """An op whose results are empty needs no code; an empty Split piece is not written and
    an empty Concat piece adds nothing."""
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    sizes = numpy_helper.from_array(np.array([6, 0], np.int64), "sizes")
    m = model([h.make_node("Split", ["x", "sizes"], ["a", "e"], axis=-1),
               h.make_node("Relu", ["e"], ["r"]),
               h.make_node("Concat", ["a", "r"], ["y"], axis=-1),
               h.make_node("Trilu", ["z"], ["tz"])],
              [vi("x", np.float32, [2, 6]), vi("z", np.float32, [0, 5])],
              [vi("y", np.float32, [2, 6]), vi("tz", np.float32, [0, 5])])
    m.graph.initializer.append(sizes)
    got = run(m, {"x": x, "z": np.zeros((0, 5), np.float32)})
    np.testing.assert_array_equal(got["y"], x)
    assert got["tz"].shape == (0, 5)


def test_sin_and_cos_by_argument_reduction_and_polynomials():
    """Sin and Cos (the VXM has neither): within a few fp32 ulp of numpy over |x| < 1e5, with
    sin(0) = 0 and NaN for inf and NaN; fp16 runs in fp32 and rounds once."""
    x = np.concatenate([np.linspace(-1e5, 1e5, 997), RNG.standard_normal(300) * 4,
                        [0.0, -0.0, np.pi / 4, np.pi / 2, np.pi, 1e-30, np.inf, -np.inf,
                         np.nan]]).astype(np.float32).reshape(1, -1)
    n = x.shape[1]
    m = model([h.make_node("Sin", ["x"], ["s"]), h.make_node("Cos", ["x"], ["c"]),
               h.make_node("Sin", ["xh"], ["sh"])],
              [vi("x", np.float32, [1, n]), vi("xh", np.float16, [1, 6])],
              [vi("s", np.float32, [1, n]), vi("c", np.float32, [1, n]),
               vi("sh", np.float16, [1, 6])])
    xh = np.array([[-3, -0.5, 0, 0.25, 1.5, 6]], np.float16)
    got = run(m, {"x": x, "xh": xh})
    x64 = x.astype(np.float64)
    for name, fn in (("s", np.sin), ("c", np.cos)):
        with np.errstate(invalid="ignore"):
            want = fn(x64)
        np.testing.assert_allclose(got[name], want, rtol=0, atol=4e-7)
    assert got["s"][0, n - 9] == 0 and got["c"][0, n - 9] == 1
    assert np.isnan(got["s"][0, -3:]).all() and np.isnan(got["c"][0, -3:]).all()
    np.testing.assert_array_equal(got["sh"], np.sin(xh.astype(np.float32)).astype(np.float16))


@pytest.mark.parametrize("dshape,ishape,axis,np_type", [((3, 4), (2, 4), 0, np.float32),
                                                        ((3, 5), (3, 7), -1, np.float32),
                                                        ((2, 4, 3), (2, 2, 3), 1, np.int32)])
def test_gather_elements_as_selections(dshape, ishape, axis, np_type):
    """GatherElements with indices read at run time (negative ones too): data's slices along
    the axis selected where the index names them."""
    n = dshape[axis]
    data = (RNG.standard_normal(dshape) * 10).astype(np_type)
    idx = RNG.integers(-n, n, size=ishape).astype(np.int64)
    m = model([h.make_node("GatherElements", ["d", "i"], ["y"], axis=axis)],
              [vi("d", np_type, list(dshape)), vi("i", np.int64, list(ishape))],
              [vi("y", np_type, list(ishape))])
    got = run(m, {"d": data, "i": idx})["y"]
    np.testing.assert_array_equal(got, np.take_along_axis(data, np.where(idx < 0, idx + n, idx),
                                                          axis=axis))
