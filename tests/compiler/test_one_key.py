"""Attention against one key: a Softmax (LogSoftmax) over one element is exp(v - v) (v - v),
one VXM chain that keeps the definition's NaN for an infinite or NaN v; and P [.., M, 1] @
V [.., 1, N] of a spread P (a row sum's result) is one VXM multiplication, no MXM pass."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend import ops

NEG = float(np.finfo(np.float32).min)


def _softmax_model(op: str, shape, elem=T.FLOAT):
    g = h.make_graph([h.make_node(op, ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", elem, shape)],
                     [h.make_tensor_value_info("y", elem, shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("elem,npt", [(T.FLOAT, np.float32), (T.FLOAT16, np.float16)])
def test_one_element_softmax_keeps_nan(op, elem, npt):
    x = np.array([[0.5], [-3e4], [np.inf], [-np.inf], [np.nan], [7.0]], npt).reshape(2, 3, 1)
    r = lpusim.run_onnx(_softmax_model(op, [2, 3, 1], elem), {"x": x},
                        precision="fp32" if elem == T.FLOAT else "fp16")
    y = r.outputs["y"].reshape(-1)
    finite = np.isfinite(x.reshape(-1))
    want = np.where(finite, 1.0 if op == "Softmax" else 0.0, np.nan)
    np.testing.assert_array_equal(y, want.astype(npt))


def _attention_model(m: int, with_mask: bool, log: bool = False):
    """scores = ReduceSum(q * k) (a spread value), [+ mask], Softmax, @ v."""
    nodes = [h.make_node("Mul", ["q", "k"], ["qk"]),
             h.make_node("ReduceSum", ["qk", "axes"], ["s"], keepdims=1)]
    s = "s"
    if with_mask:
        nodes.append(h.make_node("Add", ["s", "mask"], ["sm"]))
        s = "sm"
    nodes += [h.make_node("LogSoftmax" if log else "Softmax", [s], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [h.make_tensor("axes", T.INT64, [1], [-1])]
    if with_mask:
        inits.append(h.make_tensor("mask", T.FLOAT, [1, 1, 1, 1], [0.0]))
    g = h.make_graph(nodes, "g",
                     [h.make_tensor_value_info("q", T.FLOAT, [2, 3, m, 24]),
                      h.make_tensor_value_info("k", T.FLOAT, [2, 3, 1, 24]),
                      h.make_tensor_value_info("v", T.FLOAT, [2, 3, 1, 40])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 3, m, 40])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def _count(monkeypatch, name):
    calls = []
    real = getattr(ops, name)

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    import compiler.backend.compile as compile_mod
    monkeypatch.setattr(compile_mod, name, spy)
    return calls


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_one_key_attention_matches_numpy(monkeypatch, m, with_mask, precision):
    soft = _count(monkeypatch, "lower_softmax_one")
    outer = _count(monkeypatch, "lower_outer_product")
    rng = np.random.default_rng(m)
    q = rng.standard_normal((2, 3, m, 24)).astype(np.float32)
    k = rng.standard_normal((2, 3, 1, 24)).astype(np.float32)
    v = rng.standard_normal((2, 3, 1, 40)).astype(np.float32)
    q[1, 2, 0, 0] = np.inf  # one NaN score: its row of y is NaN, and no other
    r = lpusim.run_onnx(_attention_model(m, with_mask), {"q": q, "k": k, "v": v},
                        precision=precision)
    want = np.broadcast_to(v, (2, 3, m, 40)).copy()
    want[1, 2, 0] = np.nan
    np.testing.assert_array_equal(r.outputs["y"], want)
    assert soft and outer  # the one-key forms were taken


def test_one_key_log_softmax_product():
    """LogSoftmax over one key is 0: the product is zero (the sign of a zero aside)."""
    rng = np.random.default_rng(3)
    ins = {"q": rng.standard_normal((2, 3, 4, 24)).astype(np.float32),
           "k": rng.standard_normal((2, 3, 1, 24)).astype(np.float32),
           "v": rng.standard_normal((2, 3, 1, 40)).astype(np.float32)}
    y = lpusim.run_onnx(_attention_model(4, True, log=True), ins).outputs["y"]
    assert np.all(y == 0)


def test_masked_one_key_with_lowest_mask():
    """A mask of the lowest float: v = s + mask is finite unless s is very negative; every
    lane of the spread result agrees with lane 0, so each row of y is all V or all NaN."""
    model = _attention_model(1, True)
    for init in model.graph.initializer:
        if init.name == "mask":
            init.CopyFrom(h.make_tensor("mask", T.FLOAT, [1, 1, 1, 1], [NEG]))
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3, 1, 24)).astype(np.float32)
    k = rng.standard_normal((2, 3, 1, 24)).astype(np.float32)
    v = rng.standard_normal((2, 3, 1, 40)).astype(np.float32)
    q[0, 1, 0, :] = -1e37  # s + lowest overflows to -inf: that row is NaN
    k[0, 1, 0, :] = 1.0
    r = lpusim.run_onnx(model, {"q": q, "k": k, "v": v})
    want = v.copy()
    want[0, 1] = np.nan
    np.testing.assert_array_equal(r.outputs["y"], want)


@pytest.mark.parametrize("name", ["hf-gpt2", "tiny-bert"])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("merged", [True, False])
def test_one_key_absmax_from_v_is_exact(monkeypatch, name, precision, merged):
    """One query, no past: the out-projection's row absmax is V's, found early; the outputs
    are bit for bit those of the absmax found from the attention's output. `merged`: in
    _one_key_merged's form (R = p * v), else in the exporter's (P @ V4, then moves)."""
    import compiler.backend.compile as compile_mod

    path = f"models/data/{name}.onnx"
    dims = {"batch": 1, "seq": 1}
    found = []
    real = compile_mod._one_key_outputs
    # with the out-projection folded onto the projection's input, no absmax of V is needed:
    # this checks the form without it
    monkeypatch.setattr(compile_mod, "_one_key_fused_projection", lambda g: None)
    if not merged:
        monkeypatch.setattr(compile_mod, "_one_key_merged", lambda g: None)
    monkeypatch.setattr(compile_mod, "_one_key_outputs",
                        lambda g: found.append(real(g)) or found[-1])
    early = lpusim.run_onnx(path, dims=dims, precision=precision)
    monkeypatch.setattr(compile_mod, "_one_key_outputs", lambda g: {})
    late = lpusim.run_onnx(path, dims=dims, precision=precision)
    assert found and len(found[0]) == 2  # both layers
    for k, v in late.outputs.items():
        np.testing.assert_array_equal(early.outputs[k], v)


def test_one_key_absmax_needs_one_key():
    """Eight keys: the attention's output is a mix of V's rows, not one of them."""
    import compiler.backend.compile as compile_mod
    from compiler.frontend import import_onnx
    from compiler.pipeline import default_pipeline, run_pipeline
    from models.presets import build_preset

    for seq, want in ((1, 2), (8, 0)):
        g = run_pipeline(import_onnx(build_preset("tiny-gpt2", batch=1, seq=seq), {}),
                         default_pipeline()).copy()
        for f in (compile_mod.canonical_products, compile_mod.last_axis_forms,
                  compile_mod._vector_products, compile_mod._transposed_heads,
                  compile_mod._fold_score_scale, compile_mod._mask_into_softmax):
            f(g)
        assert len(compile_mod._one_key_outputs(g)) == want


def _heads_model(v_interleaved: bool = False, scale: bool = True):
    """q, k, v [1, 1, 8] split into 2 heads of 4, one key, the output projected by a constant
    weight (the form _one_key_merged rewrites); with `v_interleaved`, V's heads take every
    other column instead, so they do not line up with Q's and K's."""
    def heads(x, out, interleaved=False):
        if interleaved:
            return [h.make_node("Reshape", [x, "s4x2"], [out + "a"]),
                    h.make_node("Transpose", [out + "a"], [out + "b"], perm=[0, 1, 3, 2]),
                    h.make_node("Transpose", [out + "b"], [out], perm=[0, 2, 1, 3])]
        return [h.make_node("Reshape", [x, "s2x4"], [out + "a"]),
                h.make_node("Transpose", [out + "a"], [out], perm=[0, 2, 1, 3])]
    nodes = heads("q", "q4") + heads("v", "v4", v_interleaved) + [
        h.make_node("Reshape", ["k", "s2x4"], ["k4a"]),
        h.make_node("Transpose", ["k4a"], ["kt"], perm=[0, 2, 3, 1]),
        h.make_node("MatMul", ["q4", "kt"], ["s0"])]
    nodes += [h.make_node("Mul", ["s0", "c"], ["s"])] if scale else \
        [h.make_node("Identity", ["s0"], ["s"])]
    nodes += [h.make_node("Softmax", ["s"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v4"], ["y4"]),
              h.make_node("Transpose", ["y4"], ["y3"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["y3", "s8"], ["y"]),
              h.make_node("MatMul", ["y", "w"], ["out"])]
    rng = np.random.default_rng(5)
    inits = [h.make_tensor("s2x4", T.INT64, [4], [1, 1, 2, 4]),
             h.make_tensor("s4x2", T.INT64, [4], [1, 1, 4, 2]),
             h.make_tensor("s8", T.INT64, [3], [1, 1, 8]),
             h.make_tensor("c", T.FLOAT, [], [0.5]),
             h.make_tensor("w", T.FLOAT, [8, 6], rng.standard_normal(48).tolist())]
    vi = [h.make_tensor_value_info(n, T.FLOAT, [1, 1, 8]) for n in "qkv"]
    g = h.make_graph(nodes, "g", vi, [h.make_tensor_value_info("out", T.FLOAT, [1, 1, 6])],
                     inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _projected_model(mlp: bool = False):
    """x [1, 1, 8] -> one fused QKV projection (with bias) -> Split -> 2 heads of 4, one key ->
    an out-projection with bias: the form _one_key_fused_projection folds. With `mlp`, a
    pre-norm block follows: h = x + attn; out = h + relu(LayerNorm(h) @ w1) @ w2."""
    rng = np.random.default_rng(8)
    nodes = [h.make_node("MatMul", ["x", "wqkv"], ["qkv0"]),
             h.make_node("Add", ["qkv0", "bqkv"], ["qkv"]),
             h.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], axis=-1)]
    for a in "qkv":
        nodes += [h.make_node("Reshape", [a, "s2x4"], [a + "4a"]),
                  h.make_node("Transpose", [a + "4a"], [a + "4"], perm=[0, 2, 1, 3])]
    nodes += [h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
              h.make_node("MatMul", ["q4", "kt"], ["s0"]),
              h.make_node("Div", ["s0", "c"], ["s"]),
              h.make_node("Softmax", ["s"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v4"], ["y4"]),
              h.make_node("Transpose", ["y4"], ["y3"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["y3", "s8"], ["y"]),
              h.make_node("MatMul", ["y", "wo"], ["o0"]),
              h.make_node("Add", ["o0", "bo"], ["attn" if mlp else "out"])]
    arrays = {"wqkv": rng.standard_normal((8, 24)), "bqkv": rng.standard_normal(24),
              "wo": rng.standard_normal((8, 8 if mlp else 6)),
              "bo": rng.standard_normal(8 if mlp else 6)}
    if mlp:
        nodes += [h.make_node("Add", ["x", "attn"], ["h"]),
                  h.make_node("LayerNormalization", ["h", "g1", "b1"], ["n"], axis=-1),
                  h.make_node("MatMul", ["n", "w1"], ["f0"]),
                  h.make_node("Relu", ["f0"], ["f1"]),
                  h.make_node("MatMul", ["f1", "w2"], ["f2"]),
                  h.make_node("Add", ["h", "f2"], ["out"])]
        arrays.update(g1=rng.standard_normal(8), b1=rng.standard_normal(8),
                      w1=rng.standard_normal((8, 16)), w2=rng.standard_normal((16, 8)))
    inits = [h.make_tensor(k, T.FLOAT, list(a.shape), a.reshape(-1).tolist())
             for k, a in arrays.items()]
    inits += [h.make_tensor("sizes", T.INT64, [3], [8, 8, 8]),
              h.make_tensor("s2x4", T.INT64, [4], [1, 1, 2, 4]),
              h.make_tensor("s8", T.INT64, [3], [1, 1, 8]),
              h.make_tensor("c", T.FLOAT, [], [2.0])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 8])],
                     [h.make_tensor_value_info("out", T.FLOAT, [1, 1, 8 if mlp else 6])],
                     inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), arrays


def test_one_key_out_projection_folded_onto_the_input():
    import compiler.backend.compile as compile_mod

    model, a = _projected_model()
    ops_ = _ops_after_rewrite(model, compile_mod._one_key_fused_projection,
                              compile_mod._drop_unread_split_columns)
    assert "Transpose" not in ops_ and ops_.count("MatMulBias") == 2 and "SegmentSum" in ops_
    x = np.random.default_rng(9).standard_normal((1, 1, 8)).astype(np.float32)
    v = x.astype(np.float64) @ a["wqkv"][:, 16:] + a["bqkv"][16:]
    want = v @ a["wo"] + a["bo"]
    for precision, tol in (("fp32", 1e-5), ("int8", 5e-2)):
        got = lpusim.run_onnx(model, {"x": x}, precision=precision).outputs["out"]
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
    # scores that overflow to inf: the reference's row is NaN, and so is the folded one's
    got = lpusim.run_onnx(model, {"x": x * np.float32(1e20)}).outputs["out"]
    assert np.isnan(got).all()


def _ops_after_rewrite(model, *more):
    import compiler.backend.compile as compile_mod
    from compiler.frontend import import_onnx
    from compiler.pipeline import default_pipeline, run_pipeline

    g = run_pipeline(import_onnx(model, {}), default_pipeline()).copy()
    for f in (compile_mod.canonical_products, compile_mod.last_axis_forms,
              compile_mod._vector_products, compile_mod._transposed_heads,
              compile_mod._fold_score_scale, compile_mod._mask_into_softmax,
              compile_mod._one_key_merged, *more):
        f(g)
    return sorted(g.node(n)["op"] for n in g.topo_order())


@pytest.mark.parametrize("scale", [True, False])
def test_one_key_merged_rewrite_matches_numpy(scale):
    model = _heads_model(scale=scale)
    ops_ = _ops_after_rewrite(model)
    assert "SegmentSum" in ops_ and "SoftmaxOne" in ops_ and "Transpose" not in ops_
    rng = np.random.default_rng(6)
    ins = {n: rng.standard_normal((1, 1, 8)).astype(np.float32) for n in "qkv"}
    w = next(np.array(t.float_data, np.float32).reshape(8, 6)
             for t in model.graph.initializer if t.name == "w")
    for precision, tol in (("fp32", 1e-6), ("int8", 5e-2)):
        got = lpusim.run_onnx(model, ins, precision=precision).outputs["out"]
        want = ins["v"].astype(np.float64) @ w
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
    # a non-finite score in head 1: the reference's output row is NaN (the projection adds
    # every head's lanes), and so is the rewritten one's
    ins["q"][0, 0, 5] = np.inf
    got = lpusim.run_onnx(model, ins).outputs["out"]
    assert np.isnan(got).all()


def test_one_key_merged_needs_heads_that_line_up():
    model = _heads_model(v_interleaved=True)
    assert "SegmentSum" not in _ops_after_rewrite(model)
    rng = np.random.default_rng(7)
    ins = {n: rng.standard_normal((1, 1, 8)).astype(np.float32) for n in "qkv"}
    w = next(np.array(t.float_data, np.float32).reshape(8, 6)
             for t in model.graph.initializer if t.name == "w")
    v = ins["v"].reshape(4, 2).T.reshape(1, 1, 8)  # V's columns in its head order
    got = lpusim.run_onnx(model, ins).outputs["out"]
    np.testing.assert_allclose(got, v.astype(np.float64) @ w, rtol=1e-5, atol=1e-6)


def test_nan_guard_after_the_block():
    """The NaN guard of a folded one-key attention is added after the block's MLP (where every
    path from the attention's output meets again), not before it: the same outputs, NaN
    rows included."""
    import compiler.backend.compile as compile_mod
    from compiler.frontend import import_onnx
    from compiler.pipeline import default_pipeline, run_pipeline

    model, a = _projected_model(mlp=True)
    g = run_pipeline(import_onnx(model, {}), default_pipeline()).copy()
    for f in (compile_mod.canonical_products, compile_mod.last_axis_forms,
              compile_mod._vector_products, compile_mod._transposed_heads,
              compile_mod._fold_score_scale, compile_mod._mask_into_softmax,
              compile_mod._one_key_merged, compile_mod._one_key_fused_projection):
        f(g)
    guard = [n for n in g.topo_order() if n.endswith("_guard")]
    assert len(guard) == 1 and g.node(guard[0])["outputs"] == ["out"]
    x = np.random.default_rng(10).standard_normal((1, 1, 8)).astype(np.float32)
    v = x.astype(np.float64) @ a["wqkv"][:, 16:] + a["bqkv"][16:]
    hh = x + v @ a["wo"] + a["bo"]
    mu, var = hh.mean(-1, keepdims=True), hh.var(-1, keepdims=True)
    n = (hh - mu) / np.sqrt(var + 1e-5) * a["g1"] + a["b1"]
    want = hh + np.maximum(n @ a["w1"], 0) @ a["w2"]
    got = lpusim.run_onnx(model, {"x": x}).outputs["out"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.isnan(lpusim.run_onnx(model, {"x": x * np.float32(1e20)}).outputs["out"]).all()
