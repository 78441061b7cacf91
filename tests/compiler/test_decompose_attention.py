"""Attention and RotaryEmbedding end to end: small ONNX graphs compiled (decompose-attention,
decompose-rotary and the rest of the pipeline), simulated in the fp32 exact mode and compared
with onnx.reference.ReferenceEvaluator (or onnxruntime where the two disagree); plus the
refusals, which must be one-line CompileErrors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from compiler import interp
from compiler.errors import CompileError
from compiler.frontend import import_onnx
from compiler.ir import iter_ops, parse_ir
from compiler.pipeline import default_pipeline, get_pass, run_pipeline
from lpusim.api import compile_onnx, simulate

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64


def _model(op: str, inputs, outputs, opset: int = 23, **attrs) -> onnx.ModelProto:
    """One `op` node; inputs are (name, elem type, shape), "" for an omitted one; the
    outputs' types come from ONNX shape inference."""
    names = [n for n, _, _ in inputs]
    node = helper.make_node(op, names, outputs, name="node", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s)
                                        for n, t, s in inputs if n], [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    types = {v.name: v for v in inferred.graph.value_info}
    m.graph.output.extend(types[o] for o in outputs if o)
    return m


def _feeds(m: onnx.ModelProto, seed: int = 0, **given) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in m.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = given.get(vi.name, rng.standard_normal(shape).astype(np.float32))
    return feeds


def _check(m: onnx.ModelProto, feeds, rtol: float = 1e-4, atol: float = 1e-5) -> dict:
    """Compile and simulate `m`; every output must match the ONNX reference."""
    want = ReferenceEvaluator(m).run(None, feeds)
    sim = simulate(compile_onnx(m, precision="fp32"), feeds)
    for vi, w in zip(m.graph.output, want, strict=True):
        got = sim.outputs[vi.name]
        assert got.shape == w.shape, vi.name
        np.testing.assert_allclose(got, w, rtol=rtol, atol=atol, err_msg=vi.name)
    return sim.outputs


def test_gqa_3d_causal_with_past_and_present():
    m = _model("Attention", [("Q", F, [2, 3, 16]), ("K", F, [2, 3, 8]), ("V", F, [2, 3, 6]),
                             ("", 0, None), ("past_key", F, [2, 2, 2, 4]),
                             ("past_value", F, [2, 2, 2, 3])],
               ["Y", "present_key", "present_value"], is_causal=1, q_num_heads=4,
               kv_num_heads=2)
    _check(m, _feeds(m))


def test_bool_mask_fully_masked_row_is_zero_softcap_and_probabilities():
    m = _model("Attention", [("Q", F, [1, 2, 3, 8]), ("K", F, [1, 2, 4, 8]),
                             ("V", F, [1, 2, 4, 8]), ("attn_mask", B, [3, 4])],
               ["Y", "", "", "qk"], qk_matmul_output_mode=3, softcap=2.0)
    mask = np.array([[True, False, True, True], [False] * 4, [False, False, False, True]])
    out = _check(m, _feeds(m, attn_mask=mask))
    assert not out["Y"][:, :, 1].any() and not out["qk"][:, :, 1].any()
    assert np.all(out["qk"][:, :, 0, 1] == 0) and np.all(out["qk"][:, :, 2, 3] == 1)


def test_short_float_mask_with_minus_inf_and_biased_scores():
    """A float mask shorter than the keys is padded with -inf; mode 2 returns the scores with
    that bias (so -inf where masked); one row masked entirely by -inf gives zeros."""
    m = _model("Attention", [("Q", F, [2, 2, 3, 4]), ("K", F, [2, 2, 5, 4]),
                             ("V", F, [2, 2, 5, 4]), ("attn_mask", F, [2, 1, 3, 4])],
               ["Y", "", "", "qk"], qk_matmul_output_mode=2, scale=0.25)
    feeds = _feeds(m)
    feeds["attn_mask"][0, 0, 2] = -np.inf
    out = _check(m, feeds)
    assert np.isneginf(out["qk"][:, :, :, 4]).all()
    assert not out["Y"][0, :, 2].any()


def test_nonpad_kv_seqlen_per_batch_causal_frontier():
    """opset 24's external cache: per batch, keys past nonpad_kv_seqlen are padding and the
    causal frontier sits at nonpad - Sq (negative for batch 1: its first row sees no key)."""
    m = _model("Attention", [("Q", F, [2, 2, 3, 4]), ("K", F, [2, 1, 5, 4]),
                             ("V", F, [2, 1, 5, 4]), ("", 0, None), ("", 0, None),
                             ("", 0, None), ("nonpad_kv_seqlen", I64, [2])],
               ["Y"], opset=24, is_causal=1)
    out = _check(m, _feeds(m, nonpad_kv_seqlen=np.array([4, 2], dtype=np.int64)))
    assert not out["Y"][1, :, 0].any() and out["Y"][1, :, 1].any()


def test_decode_step_over_few_keys():
    """Probabilities @ V of a decode step over 4 keys: a batched MatMul of computed operands,
    one row per batch, K = 4 (installs on one plane closer than the install latency used to
    replace weights still on their way into the array)."""
    m = _model("Attention", [("Q", F, [1, 4, 1, 8]), ("K", F, [1, 4, 4, 8]),
                             ("V", F, [1, 4, 4, 8])], ["Y"])
    _check(m, _feeds(m))


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_3d_position_ids_partial(interleaved):
    m = _model("RotaryEmbedding", [("x", F, [2, 3, 16]), ("cos", F, [10, 2]),
                                   ("sin", F, [10, 2]), ("pos", I64, [2, 3])],
               ["y"], num_heads=2, rotary_embedding_dim=4, interleaved=interleaved)
    pos = np.array([[0, 1, 2], [7, 3, 9]], dtype=np.int64)
    _check(m, _feeds(m, pos=pos))


def test_rotary_4d_interleaved_without_position_ids():
    m = _model("RotaryEmbedding", [("x", F, [1, 2, 3, 8]), ("cos", F, [1, 3, 4]),
                                   ("sin", F, [1, 3, 4])], ["y"], interleaved=1)
    _check(m, _feeds(m))


def _interp(m: onnx.ModelProto, feeds) -> dict:
    g = run_pipeline(import_onnx(m), default_pipeline(), verify=True)
    assert not iter_ops(g, ("Attention", "RotaryEmbedding"))
    return interp.run(g, feeds)


def test_window_with_past_matches_reference():
    m = _model("Attention", [("Q", F, [1, 2, 3, 4]), ("K", F, [1, 2, 3, 4]),
                             ("V", F, [1, 2, 3, 4]), ("", 0, None), ("past_key", F, [1, 2, 4, 4]),
                             ("past_value", F, [1, 2, 4, 4])],
               ["Y", "present_key", "present_value"], opset=25, is_causal=1,
               left_window_size=2)
    feeds = _feeds(m)
    want = ReferenceEvaluator(m).run(None, feeds)
    got = _interp(m, feeds)
    for vi, w in zip(m.graph.output, want, strict=True):
        np.testing.assert_allclose(got[vi.name], w, rtol=1e-5, atol=1e-6)


def test_mode_0_is_the_raw_product_even_with_softcap():
    """The specification (and onnxruntime, and ONNX's own function body) say mode 0 is the raw
    QK product; onnx.reference returns it after the softcap."""
    ort = pytest.importorskip("onnxruntime")
    m = _model("Attention", [("Q", F, [1, 1, 2, 4]), ("K", F, [1, 1, 3, 4]),
                             ("V", F, [1, 1, 3, 4])], ["Y", "", "", "qk"], softcap=1.0)
    feeds = _feeds(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip(["Y", "qk"], sess.run(None, feeds), strict=True))
    got = _interp(m, feeds)
    raw = (feeds["Q"] / 2) @ feeds["K"].transpose(0, 1, 3, 2)
    np.testing.assert_allclose(got["qk"], raw, rtol=1e-5)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shapes,attrs,reason", [
    ("[1,2,8] [1,2,8] [1,2,8]", "", "need q_num_heads and kv_num_heads"),
    ("[1,2,9] [1,2,6] [1,2,6]", "kv_num_heads=2, q_num_heads=2",
     "Q hidden size 9 is not a multiple of 2 heads"),
    ("[1,3,2,4] [1,2,2,4] [1,2,2,4]", "", "3 query heads are not a multiple of 2 KV heads"),
    ("[1,1,2,4] [1,1,2,4] [1,1,2,4] [2,3]", "", "attn_mask has 3 keys, more than the 2 of K"),
    ("[1,1,2,4] [1,1,2,4] [1,1,2,4]", "qk_matmul_output_mode=4", "mode 4 is not one of"),
])
def test_refusals_are_one_line(shapes, attrs, reason):
    names = ["Q", "K", "V", "attn_mask"]
    decls = [f"input %{n}: float32{s}" for n, s in zip(names, shapes.split(), strict=False)]
    args = ", ".join(f"%{n}" for n in names[:len(decls)])
    graph = parse_ir("\n".join(["graph main", "meta opset = 23", *decls,
                                 f"%Y: float32[1] = Attention({args}) {{{attrs}}}  # node",
                                 "output %Y", ""]))
    with pytest.raises(CompileError, match=reason) as e:
        run_pipeline(graph, [get_pass("decompose-attention")])
    assert "\n" not in str(e.value)
