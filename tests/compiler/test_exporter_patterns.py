"""Ops the dynamo exporter (torch.onnx.export(dynamo=True)) and RoBERTa write outside the
issue's list: GatherND (attention_mask[batch_idx, kv_idx] with indices known at compile time,
a classification head's logits[arange(batch), last_token] with indices computed at run time),
ArgMax (that head's last token), CumSum over run-time integers (RoBERTa's position ids),
gathers of a constant whose elements are all equal, and Casts between integers and bools; and
what other families write: Tile (GPT-J's, CodeGen's and Cohere's rotary tables), a NaN guard
around a Softmax whose -inf mask masks whole rows (TorchScript's sdpa with left padding), two
float32-min masks added (GPT-Neo), a squared ReLU (Nemotron), a norm without epsilon (Helium),
a Softmax over more than 320 columns. Each compiles and matches onnxruntime (or the onnx
reference); what is not lowered is a one-line error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.ops.op_gathernd import _gather_nd_impl

import lpusim
from compiler.errors import CompileError
from compiler.frontend import import_onnx
from compiler.interp import _gather_elements, _gathernd, gathernd_flat

I64, F, B = TensorProto.INT64, TensorProto.FLOAT, TensorProto.BOOL


def _model(nodes, inputs, outputs, inits=(), opset=20):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _ops(model, dims=None):
    g = import_onnx(model, dims)
    return sorted(g.node(n)["op"] for n in g.nodes())


def _exact(res):
    for name, err in res.report["errors"].items():
        assert err["max_abs"] == 0.0, (name, err)


# --- GatherND -----------------------------------------------------------------------------

def test_gathernd_numpy_matches_the_onnx_reference():
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = int(rng.integers(0, 3))
        shape = [int(d) for d in rng.integers(1, 5, int(rng.integers(b + 1, b + 4)))]
        k = int(rng.integers(1, len(shape) - b + 1))
        extra = [int(d) for d in rng.integers(1, 4, int(rng.integers(0, 3)))]
        ishape = shape[:b] + extra
        idx = np.stack([rng.integers(0, shape[b + j], ishape) for j in range(k)], -1)
        x = rng.standard_normal(shape).astype(np.float32)
        want = _gather_nd_impl(x, idx, b)[0]
        got = _gathernd([x, idx], {"batch_dims": b})[0]
        assert got.shape == want.shape and np.array_equal(got, want), (shape, idx.shape, b)


def test_gathernd_negative_and_out_of_range_indices():
    assert gathernd_flat(np.array([[-1, -2]]), (3, 4), 0).tolist() == [10]
    with pytest.raises(ValueError, match="out of range"):
        gathernd_flat(np.array([[3, 0]]), (3, 4), 0)


def _mask_model():
    """The dynamo exporter's padding mask: mask[arange(batch), arange(seq)] broadcast to
    [batch, 1, 1, seq] as GatherND indices built from the input's shape, then a Where."""
    nodes = [
        helper.make_node("Shape", ["mask"], ["shp"]),
        helper.make_node("Gather", ["shp", "i0"], ["nb1"], axis=0),
        helper.make_node("Gather", ["shp", "i1"], ["ns1"], axis=0),
        helper.make_node("Squeeze", ["nb1"], ["nb"]),
        helper.make_node("Squeeze", ["ns1"], ["ns"]),
        helper.make_node("Range", ["z", "nb", "one"], ["bi"]),
        helper.make_node("Range", ["z", "ns", "one"], ["si"]),
        helper.make_node("Reshape", ["bi", "b_shape"], ["bi4"]),
        helper.make_node("Reshape", ["si", "s_shape"], ["si4"]),
        helper.make_node("Concat", ["nb1", "c1", "c1", "ns1"], ["full"], axis=0),
        helper.make_node("Expand", ["bi4", "full"], ["be"]),
        helper.make_node("Expand", ["si4", "full"], ["se"]),
        helper.make_node("Unsqueeze", ["be", "last"], ["bu"]),
        helper.make_node("Unsqueeze", ["se", "last"], ["su"]),
        helper.make_node("Concat", ["bu", "su"], ["idx"], axis=-1),
        helper.make_node("Cast", ["mask"], ["mb"], to=B),
        helper.make_node("GatherND", ["mb", "idx"], ["m4"]),
        helper.make_node("Where", ["m4", "x", "low"], ["y"]),
    ]
    inits = [_const("i0", np.array([0])), _const("i1", np.array([1])), _const("z", np.array(0)),
             _const("one", np.array(1)), _const("c1", np.array([1])),
             _const("b_shape", np.array([-1, 1, 1, 1])), _const("s_shape", np.array([1, 1, 1, -1])),
             _const("last", np.array([-1])), _const("low", np.array(-1e4, np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("mask", I64, ["batch", "seq"]),
                          helper.make_tensor_value_info("x", F, ["batch", 4, 6, "seq"])],
                  [helper.make_tensor_value_info("y", F, ["batch", 4, 6, "seq"])], inits)


def test_gathernd_of_the_padding_mask_is_a_reshape():
    """Indices that take every element once, in order, leave no gather behind."""
    m = _mask_model()
    assert "GatherND" not in _ops(m, {"batch": 2, "seq": 7})
    assert "Gather" not in _ops(m, {"batch": 2, "seq": 7})
    rng = np.random.default_rng(1)
    mask = np.ones((2, 7), np.int64)
    mask[1, :3] = 0
    x = rng.standard_normal((2, 4, 6, 7)).astype(np.float32)
    res = lpusim.run_onnx(m, {"mask": mask, "x": x}, dims={"batch": 2, "seq": 7})
    _exact(res)
    np.testing.assert_array_equal(res.outputs["y"],
                                  np.where(mask[:, None, None, :] != 0, x, np.float32(-1e4)))


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gathernd_with_constant_indices_becomes_a_gather(batch_dims):
    """Rows picked in another order (and with batch_dims 1, per batch entry) by a constant:
    Reshape + Gather, matching onnxruntime exactly."""
    if batch_dims == 0:
        idx = np.array([[[1, 2], [0, 0]], [[1, 0], [1, 2]]], np.int64)  # [2, 2, 2] -> rows
    else:
        idx = np.array([[[2], [0], [1]], [[1], [1], [2]]], np.int64)  # [2, 3, 1]
    m = _model([helper.make_node("GatherND", ["x", "idx"], ["y"], batch_dims=batch_dims)],
               [helper.make_tensor_value_info("x", F, [2, 3, 40])],
               [helper.make_tensor_value_info("y", F, list(idx.shape[:-1]) + [40])],
               [_const("idx", idx)])
    ops = _ops(m)
    assert "GatherND" not in ops and "Gather" in ops
    x = np.random.default_rng(2).standard_normal((2, 3, 40)).astype(np.float32)
    res = lpusim.run_onnx(m, {"x": x})
    _exact(res)
    np.testing.assert_array_equal(res.outputs["y"], _gather_nd_impl(x, idx, batch_dims)[0])


def test_gathernd_of_single_elements():
    """Indices of every axis pick scalars: gathered as rows of one column."""
    idx = np.array([[1, 3], [0, 0], [1, 1]], np.int64)
    m = _model([helper.make_node("GatherND", ["x", "idx"], ["y"])],
               [helper.make_tensor_value_info("x", F, [2, 4])],
               [helper.make_tensor_value_info("y", F, [3])], [_const("idx", idx)])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    res = lpusim.run_onnx(m, {"x": x})
    _exact(res)
    np.testing.assert_array_equal(res.outputs["y"], [7, 0, 5])


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gathernd_with_run_time_indices(batch_dims):
    """Indices computed on chip (the dynamo exporter's logits[arange(batch), last_token]):
    the flat row of each tuple in int64 arithmetic, negative indices from the end, then a
    Gather of rows; single elements too (k = rank)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    cases = [(2, (3, 2)), (1, (3, 2, 1))] if batch_dims == 0 else [(1, (3, 1)), (2, (3, 2, 2))]
    for k, ishape in cases:
        dims = x.shape[batch_dims:batch_dims + k]
        cols = [rng.integers(-d, d, ishape[:-1]) for d in dims]
        idx = np.stack(cols, -1).astype(np.int64)
        want = _gathernd([x, idx], {"batch_dims": batch_dims})[0]
        m = _model([helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)],
                   [helper.make_tensor_value_info("x", F, list(x.shape)),
                    helper.make_tensor_value_info("i", I64, list(idx.shape))],
                   [helper.make_tensor_value_info("y", F, list(want.shape))])
        assert "GatherND" not in _ops(m)
        res = lpusim.run_onnx(m, {"x": x, "i": idx})
        assert np.array_equal(res.outputs["y"], want), (k, ishape)


def _classification_head(dynamo: bool):
    """transformers' sequence-classification pooling as the exporters write it: the last
    token that is not padding, argmax(arange(seq) * (ids != pad)), then that row of the
    logits: a Gather of the flattened rows at b * seq + index (TorchScript), or a GatherND
    with [arange(batch), index] (dynamo)."""
    b, s, c = 3, 7, 5
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["tok"]),
             helper.make_node("Cast", ["tok"], ["tok_i"], to=TensorProto.INT32),
             helper.make_node("Mul", ["pos", "tok_i"], ["scored"]),
             helper.make_node("ArgMax", ["scored"], ["last"], axis=-1, keepdims=0)]
    if dynamo:
        nodes += [helper.make_node("Unsqueeze", ["last", "ax"], ["last1"]),
                  helper.make_node("Concat", ["rows", "last1"], ["idx"], axis=1),
                  helper.make_node("GatherND", ["logits", "idx"], ["y"])]
        inits = [_const("rows", np.arange(b, dtype=np.int64)[:, None]),
                 _const("ax", np.array([1], np.int64))]
    else:
        nodes += [helper.make_node("Add", ["last", "offsets"], ["flat"]),
                  helper.make_node("Reshape", ["logits", "rs"], ["rows2"]),
                  helper.make_node("Gather", ["rows2", "flat"], ["y"], axis=0)]
        inits = [_const("offsets", np.arange(b, dtype=np.int64) * s),
                 _const("rs", np.array([b * s, c], np.int64))]
    inits += [_const("pad", np.int64(0)), _const("pos", np.arange(s, dtype=np.int32))]
    m = _model(nodes, [helper.make_tensor_value_info("ids", I64, [b, s]),
                       helper.make_tensor_value_info("logits", F, [b, s, c])],
               [helper.make_tensor_value_info("y", F, [b, c])], inits, opset=17)
    rng = np.random.default_rng(8)
    ids = rng.integers(1, 50, (b, s))
    ids[1, 4:] = 0  # right padding
    ids[2, 6:] = 0
    logits = rng.standard_normal((b, s, c)).astype(np.float32)
    return m, {"ids": ids, "logits": logits}, logits[np.arange(b), [6, 3, 5]]


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_sequence_classification_head(dynamo):
    m, feeds, want = _classification_head(dynamo)
    assert "ArgMax" in _ops(m)  # lowered in the backend, as reductions
    res = lpusim.run_onnx(m, feeds)
    assert np.array_equal(res.outputs["y"], want)


@pytest.mark.parametrize("keepdims,last", [(1, 0), (0, 0), (0, 1)])
def test_argmax_of_floats_with_ties(keepdims, last):
    x = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [-1, -5, -1, -9]], np.float32)
    m = _model([helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=keepdims,
                                 select_last_index=last)],
               [helper.make_tensor_value_info("x", F, [3, 4])],
               [helper.make_tensor_value_info("y", I64, [3, 1] if keepdims else [3])])
    res = lpusim.run_onnx(m, {"x": x})
    want = (3 - np.argmax(x[:, ::-1], 1)) if last else np.argmax(x, 1)
    assert res.outputs["y"].dtype == np.int64
    assert np.array_equal(res.outputs["y"].reshape(-1), want)


def test_argmax_of_integers_beyond_float32_is_a_clear_error():
    m = _model([helper.make_node("ArgMax", ["x"], ["y"], axis=-1, name="am")],
               [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 4])],
               [helper.make_tensor_value_info("y", I64, [2, 1])])
    with pytest.raises(CompileError, match=r"ArgMax \(node 'am'\): its int32 input may exceed "
                                           r"2\^24"):
        lpusim.compile_onnx(m)


# --- CumSum -------------------------------------------------------------------------------

@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum_of_run_time_integers_is_exact(exclusive, reverse):
    """RoBERTa's position ids: cumsum(ids != pad) * (ids != pad) + pad, in int64."""
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["k32"], to=TensorProto.INT32),
             helper.make_node("CumSum", ["k32", "ax"], ["c32"], exclusive=exclusive,
                              reverse=reverse),
             helper.make_node("Cast", ["c32"], ["c"], to=I64),
             helper.make_node("Cast", ["keep"], ["k64"], to=I64),
             helper.make_node("Mul", ["c", "k64"], ["ck"]),
             helper.make_node("Add", ["ck", "pad"], ["pos"])]
    m = _model(nodes, [helper.make_tensor_value_info("ids", I64, [2, 11])],
               [helper.make_tensor_value_info("pos", I64, [2, 11]),
                helper.make_tensor_value_info("c32", TensorProto.INT32, [2, 11])],
               [_const("pad", np.array(1, np.int64)), _const("ax", np.array(-1, np.int64))])
    ids = np.array([[5, 9, 3, 4, 4, 7, 2, 8, 6, 1, 1], [1, 1, 1, 7, 3, 3, 9, 2, 5, 4, 6]],
                   np.int64)
    res = lpusim.run_onnx(m, {"ids": ids})
    _exact(res)
    keep = (ids != 1).astype(np.int64)
    c = np.flip(np.cumsum(np.flip(keep, 1), 1), 1) if reverse else np.cumsum(keep, 1)
    if exclusive:
        c = c - keep
    np.testing.assert_array_equal(res.outputs["pos"], c * keep + 1)


def test_cumsum_of_floats_along_a_middle_axis():
    m = _model([helper.make_node("CumSum", ["x", "ax"], ["y"])],
               [helper.make_tensor_value_info("x", F, [3, 9, 5])],
               [helper.make_tensor_value_info("y", F, [3, 9, 5])],
               [_const("ax", np.array([1], np.int32))])
    x = np.random.default_rng(4).standard_normal((3, 9, 5)).astype(np.float32)
    res = lpusim.run_onnx(m, {"x": x})
    np.testing.assert_allclose(res.outputs["y"], np.cumsum(x, 1), rtol=1e-5, atol=1e-5)


def test_cumsum_of_constants_folds_and_a_run_time_axis_is_an_error():
    m = _model([helper.make_node("CumSum", ["c", "ax"], ["s"]),
                helper.make_node("Add", ["x", "s"], ["y"])],
               [helper.make_tensor_value_info("x", F, [4])],
               [helper.make_tensor_value_info("y", F, [4])],
               [_const("c", np.array([1, 2, 3, 4], np.float32)),
                _const("ax", np.array(0, np.int64))])
    assert _ops(m) == ["Add"]
    m = _model([helper.make_node("CumSum", ["x", "ax"], ["y"], name="cs")],
               [helper.make_tensor_value_info("x", F, [4]),
                helper.make_tensor_value_info("ax", I64, [])],
               [helper.make_tensor_value_info("y", F, [4])])
    with pytest.raises(CompileError, match=r"^CumSum \(node 'cs'\): an axis computed at run "):
        import_onnx(m)


# --- gathers of uniform constants, GatherElements folding ---------------------------------

def test_gather_of_a_uniform_constant_folds_whatever_the_indices():
    """RoBERTa's token types: zeros [1, 66] gathered at run-time position ids are zeros."""
    nodes = [helper.make_node("GatherElements", ["buf", "pos"], ["tt"], axis=1),
             helper.make_node("Gather", ["emb", "tt"], ["e"], axis=0),
             helper.make_node("Add", ["x", "e"], ["y"])]
    emb = np.random.default_rng(5).standard_normal((2, 8)).astype(np.float32)
    m = _model(nodes, [helper.make_tensor_value_info("pos", I64, [1, 6]),
                       helper.make_tensor_value_info("x", F, [1, 6, 8])],
               [helper.make_tensor_value_info("y", F, [1, 6, 8])],
               [_const("buf", np.zeros((1, 66), np.int64)), _const("emb", emb)])
    assert _ops(m) == ["Add"]
    x = np.random.default_rng(6).standard_normal((1, 6, 8)).astype(np.float32)
    res = lpusim.run_onnx(m, {"pos": np.array([[2, 3, 60, 5, 1, 7]]), "x": x})
    np.testing.assert_array_equal(res.outputs["y"], x + emb[0])


def test_gather_elements_numpy_with_shorter_index_axes():
    """Off the axis, GatherElements' indices may be shorter than the data (onnx's reference
    implementation refuses that, and falls back wrongly along axes of more than 32)."""
    x = np.arange(3 * 70, dtype=np.float32).reshape(3, 70)
    idx = np.array([[69, 0, -1]])
    got = _gather_elements([x, idx], {"axis": 1})[0]
    np.testing.assert_array_equal(got, [[69, 0, 69]])
    got = _gather_elements([x, np.array([[2], [1]])], {"axis": 0})[0]
    np.testing.assert_array_equal(got, [[140], [70]])


# --- Casts to integers --------------------------------------------------------------------

def test_casts_from_bools_and_integers_to_integers():
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"]),
             helper.make_node("Cast", ["pos"], ["p32"], to=TensorProto.INT32),
             helper.make_node("Cast", ["p32"], ["p64"], to=I64),
             helper.make_node("Cast", ["pos"], ["p16"], to=TensorProto.INT16),
             helper.make_node("Add", ["p64", "ids"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [2, 5]),
                       helper.make_tensor_value_info("ids", I64, [2, 5])],
               [helper.make_tensor_value_info("y", I64, [2, 5]),
                helper.make_tensor_value_info("p16", TensorProto.INT16, [2, 5])],
               [_const("zero", np.array(0, np.float32))])
    x = np.array([[1, -2, 0, 3, -1], [-4, 5, 6, 0, 2]], np.float32)
    ids = np.arange(10, dtype=np.int64).reshape(2, 5) * 1000
    res = lpusim.run_onnx(m, {"x": x, "ids": ids})
    _exact(res)
    np.testing.assert_array_equal(res.outputs["y"], ids + (x > 0))


def test_a_cast_of_floats_to_an_integer_stays_an_error():
    m = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32, name="c")],
               [helper.make_tensor_value_info("x", F, [2, 5])],
               [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 5])])
    with pytest.raises(CompileError, match="truncates"):
        lpusim.compile_onnx(m)


def test_roberta_positions_in_onnx_form_compile():
    """The whole bundled RoBERTa export (CumSum, uniform GatherElements, int casts) loads."""
    from models import bundled_path

    g = import_onnx(bundled_path("hf-roberta-dynamo"), {"batch": 1, "seq": 5})
    ops = {g.node(n)["op"] for n in g.nodes()}
    assert "CumSum" not in ops and "GatherElements" not in ops
    assert onnx.load(bundled_path("hf-roberta-dynamo")).opset_import[0].version == 20


def test_onnx_node_cases_with_the_constant_operands_frozen():
    """The ONNX project's GatherND and CumSum node cases give their indices and axis as graph
    inputs (CumSum's is NOT LOWERED then: the compiler needs it at compile time; GatherND's
    indices may be computed at run time); frozen to constants, as exporters write them, every
    case of a type the machine has passes."""
    import importlib.util
    import sys
    from pathlib import Path

    pytest.importorskip("onnx.backend.test.case.node")
    name = "lpusim_conformance_tool"  # as tests/test_conformance.py loads it
    conf = sys.modules.get(name)
    if conf is None:
        tool = Path(__file__).resolve().parents[2] / "tools" / "conformance.py"
        spec = importlib.util.spec_from_file_location(name, tool)
        conf = importlib.util.module_from_spec(spec)
        sys.modules[name] = conf
        spec.loader.exec_module(conf)
    statuses = {}
    for op, cases in conf.collect(["GatherND", "CumSum"]).items():
        for case in cases:
            if not conf._exclusion(case.model):
                statuses[case.name] = conf.run_case(op, case, freeze_shape_inputs=True).status
    assert statuses == {"test_gathernd_example_float32": conf.PASS,
                        "test_gathernd_example_int32": conf.PASS,
                        "test_gathernd_example_int32_batch_dim1": conf.PASS,
                        "test_cumsum_2d_int32": conf.PASS,
                        "test_cumsum_1d_int32_exclusive": conf.PASS}


def test_gathernd_of_every_row_in_order_is_a_reshape():
    """attention_mask-like indices over the leading axes of a 3-D value: rows in order."""
    b, s = np.meshgrid(np.arange(2), np.arange(5), indexing="ij")
    idx = np.stack([b, s], -1)[:, None]  # [2, 1, 5, 2]
    m = _model([helper.make_node("GatherND", ["x", "idx"], ["y"])],
               [helper.make_tensor_value_info("x", F, [2, 5, 7])],
               [helper.make_tensor_value_info("y", F, [2, 1, 5, 7])], [_const("idx", idx)])
    assert _ops(m) == ["Reshape"]
    x = np.random.default_rng(7).standard_normal((2, 5, 7)).astype(np.float32)
    res = lpusim.run_onnx(m, {"x": x})
    _exact(res)
    np.testing.assert_array_equal(res.outputs["y"], x[:, None])


def _table_gather(elem):
    """Gather of a float16 (or bfloat16) [10, 64] table at run-time ids: (model, table)."""
    import ml_dtypes

    np_t = np.float16 if elem == TensorProto.FLOAT16 else ml_dtypes.bfloat16
    table = np.random.default_rng(8).standard_normal((10, 64)).astype(np_t)
    t = numpy_helper.from_array(table, "table")
    assert t.data_type == elem
    m = _model([helper.make_node("Gather", ["table", "ids"], ["e"], axis=0)],
               [helper.make_tensor_value_info("ids", I64, [1, 5])],
               [helper.make_tensor_value_info("e", elem, [1, 5, 64])], [t])
    return m, table


IDS = np.array([[3, 0, 9, 3, 7]])


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_gather_of_a_narrow_float_table(elem):
    """A model exported in half precision (model.half()): its embedding table is float16 (or
    bfloat16), gathered at run-time ids exactly."""
    m, table = _table_gather(elem)
    res = lpusim.run_onnx(m, {"ids": IDS}, precision="fp16")
    got = res.outputs["e"]
    assert got.dtype == table.dtype
    np.testing.assert_array_equal(got.view(np.uint16), table[IDS].view(np.uint16))
    assert res.report["errors"]["e"]["max_abs"] == 0.0
    if elem == TensorProto.BFLOAT16:  # onnxruntime cannot hand bfloat16 to numpy: the other
        assert res.report["reference"].startswith("onnx.reference")  # reference, and why
        assert "onnxruntime" in res.report["reference"]


def test_a_model_no_reference_can_run_still_gives_its_outputs(monkeypatch):
    """When neither onnxruntime nor onnx's ReferenceEvaluator runs a model, run_onnx keeps
    the simulated outputs and says so in the report instead of raising."""
    import onnx.reference

    def broken(self, *a, **k):
        raise RuntimeError("no kernel\nsecond line")

    monkeypatch.setattr(onnx.reference.ReferenceEvaluator, "run", broken)
    m, table = _table_gather(TensorProto.BFLOAT16)
    res = lpusim.run_onnx(m, {"ids": IDS}, precision="fp16")
    np.testing.assert_array_equal(res.outputs["e"].view(np.uint16),
                                  table[IDS].view(np.uint16))
    assert res.report["errors"] == {}
    ref = res.report["reference"]
    assert ref.startswith("none (no runtime could run the model: onnxruntime ")
    assert "onnx.reference" in ref and "no kernel" in ref and "second line" not in ref


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_a_quantized_table_gathered_into_float16(precision):
    """The int8 and fp8 policies quantize an embedding table per column; a float16 model's
    rows come back from fp32 through a conversion (a scale multiply wrote fp32 results into
    the float16 placement, an invalid program, before)."""
    m, table = _table_gather(TensorProto.FLOAT16)
    res = lpusim.run_onnx(m, {"ids": IDS}, precision=precision)
    assert res.outputs["e"].dtype == np.float16
    assert 0.0 < res.report["errors"]["e"]["max_rel"] <= {"int8": 5e-2, "fp8": 0.129}[precision]


def test_a_narrowing_integer_cast_is_refused():
    """int32 -> int8 wraps in ONNX (onnxruntime); the VXM's conversion saturates: refused
    rather than a wrong number for values out of range."""
    m = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT8, name="c")],
               [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 5])],
               [helper.make_tensor_value_info("y", TensorProto.INT8, [2, 5])])
    with pytest.raises(CompileError, match="narrowing cast from int32 to int8"):
        lpusim.compile_onnx(m)


def test_a_large_constant_transposed_folds_past_the_size_limit():
    """The dynamo exporter ties GPT-2's LM head to its embedding: one initializer read by the
    Gather and by a Transpose (38.6 M elements, over the fold's limit). The Transpose folds
    whatever its size (it makes no new elements), so the head is a constant weight; ops that
    make more elements than they read (Expand) keep the limit."""
    from compiler.fold import fold_constants
    from compiler.ir import Graph, TensorType

    g = Graph()
    w = np.arange(24, dtype=np.float32).reshape(4, 6)
    g.add_const("w", w, kind="weight")
    g.add_const("shape", np.array([3, 4, 6], np.int64))
    g.add_input("x", TensorType("float32", (2, 4)))
    g.add_node("t", "Transpose", ["w"], ["wt"], {"perm": (1, 0)},
               types=[TensorType("float32", (6, 4))])
    g.add_node("e", "Expand", ["w", "shape"], ["big"], types=[TensorType("float32", (3, 4, 6))])
    g.add_node("m", "MatMul", ["x", "w"], ["y"], types=[TensorType("float32", (2, 6))])
    g.add_node("a", "Add", ["big", "y"], ["z"], types=[TensorType("float32", (3, 2, 6))])
    g.add_node("b", "MatMul", ["y", "wt"], ["u"],
               types=[TensorType("float32", (2, 4))])
    g.outputs = ["z", "u"]
    fold_constants(g, max_elements=16)
    assert g.is_const("wt") and np.array_equal(g.const_array("wt"), w.T)
    assert not g.is_const("big") and "e" in g.g


# --- Tile ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reps", [[1, 2, 1], [2, 1, 3], [1, 1, 1]])
def test_tile_of_a_run_time_input_is_exact(reps):
    shp = [2, 3, 4]
    out = [a * b for a, b in zip(shp, reps, strict=True)]
    m = _model([helper.make_node("Tile", ["x", "r"], ["y"])],
               [helper.make_tensor_value_info("x", F, shp)],
               [helper.make_tensor_value_info("y", F, out)],
               [_const("r", np.array(reps, np.int64))])
    assert "Tile" not in _ops(m)
    x = np.random.default_rng(0).standard_normal(shp).astype(np.float32)
    res = lpusim.run_onnx(m, {"x": x})
    assert np.array_equal(res.outputs["y"], np.tile(x, reps))


def test_tile_with_run_time_or_zero_repeats_is_a_clear_error():
    x = helper.make_tensor_value_info("x", F, [2, 3])
    run_time = _model([helper.make_node("Tile", ["x", "r"], ["y"])],
                      [x, helper.make_tensor_value_info("r", I64, [2])],
                      [helper.make_tensor_value_info("y", F, [None, None])])
    with pytest.raises(CompileError, match=r"output of node .*Tile\) has no static shape"):
        import_onnx(run_time)
    zero = _model([helper.make_node("Tile", ["x", "r"], ["y"], name="t")], [x],
                  [helper.make_tensor_value_info("y", F, [2, 0])],
                  [_const("r", np.array([1, 0], np.int64))])
    with pytest.raises(CompileError, match="give an empty tensor"):
        import_onnx(zero)


# --- masks that make whole rows -inf --------------------------------------------------------

def _attention_probs(rows_masked: int, guard: bool, s: int = 11):
    """scores + Where(mask, 0, -inf), Softmax, (the NaN guard,) @ V: the first rows_masked
    query rows see no key, as left padding makes them in TorchScript's sdpa export."""
    nodes = [helper.make_node("Where", ["m", "zero", "ninf"], ["bias"]),
             helper.make_node("Add", ["x", "bias"], ["xs"]),
             helper.make_node("Softmax", ["xs"], ["p"], axis=-1)]
    if guard:
        nodes += [helper.make_node("IsNaN", ["p"], ["isn"]),
                  helper.make_node("Where", ["isn", "zero", "p"], ["pg"])]
    nodes.append(helper.make_node("MatMul", ["pg" if guard else "p", "v"], ["o"]))
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, s, s]),
                       helper.make_tensor_value_info("m", B, [1, 1, s, s]),
                       helper.make_tensor_value_info("v", F, [1, 2, s, 16])],
               [helper.make_tensor_value_info("o", F, [1, 2, s, 16])],
               [_const("zero", np.float32(0)), _const("ninf", np.float32(-np.inf))], opset=17)
    rng = np.random.default_rng(0)
    mask = np.tril(np.ones((s, s), bool))[None, None].copy()
    mask[..., :rows_masked, :] = False
    return m, {"x": rng.standard_normal((1, 2, s, s)).astype(np.float32), "m": mask,
               "v": rng.standard_normal((1, 2, s, 16)).astype(np.float32)}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_guarded_softmax_over_rows_masked_whole_is_zero_there(precision):
    """Those rows' Softmax is NaN (0 / 0) and the guard makes them 0; lanes past the last
    column must stay finite too, or the MatMul's zero weight rows make the rows NaN."""
    m, feeds = _attention_probs(3, guard=True)
    res = lpusim.run_onnx(m, feeds, precision=precision)
    o = res.outputs["o"]
    assert np.isfinite(o).all() and not o[0, :, :3].any()
    tol = {"fp32": 1e-6, "fp16": 4 * 2.0 ** -11, "int8": 4 * 2.0 ** -11}[precision]
    assert res.report["errors"]["o"]["max_rel"] <= tol


def test_an_unguarded_softmax_over_rows_masked_whole_is_nan_there_only():
    m, feeds = _attention_probs(3, guard=False)
    o = lpusim.run_onnx(m, feeds).outputs["o"]
    assert np.isnan(o[0, :, :3]).all() and np.isfinite(o[0, :, 3:]).all()


def test_two_float32_min_masks_added_stay_finite_past_the_last_column():
    """GPT-Neo: Where(causal, scores, min) + Where(padding, 0, min): the sum is -inf where
    both mask (as in the reference) and must not be -inf in the pad lanes, where -inf - -inf
    made every row NaN."""
    s, lo = 11, np.finfo(np.float32).min
    nodes = [helper.make_node("Where", ["c", "x", "lo"], ["a"]),
             helper.make_node("Where", ["pad", "zero", "lo"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["xs"]),
             helper.make_node("Softmax", ["xs"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [2, 2, s, s]),
                       helper.make_tensor_value_info("pad", B, [2, 1, 1, s]),
                       helper.make_tensor_value_info("v", F, [2, 2, s, 16])],
               [helper.make_tensor_value_info("o", F, [2, 2, s, 16])],
               [_const("c", np.tril(np.ones((s, s), bool))[None, None]),
                _const("zero", np.float32(0)), _const("lo", np.float32(lo))], opset=17)
    rng = np.random.default_rng(1)
    pad = np.ones((2, 1, 1, s), bool)
    pad[1, ..., :3] = False
    res = lpusim.run_onnx(m, {"x": rng.standard_normal((2, 2, s, s)).astype(np.float32),
                              "pad": pad,
                              "v": rng.standard_normal((2, 2, s, 16)).astype(np.float32)})
    assert np.isfinite(res.outputs["o"]).all()
    assert res.report["errors"]["o"]["max_rel"] <= 1e-5


def test_a_squared_relu_feeds_a_matmul():
    """Nemotron's MLP: Pow(Relu(x @ W1), 2) @ W2; Pow(0, 2) is 0 in the pad lanes."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Pow", ["r", "two"], ["q"]),
             helper.make_node("MatMul", ["q", "w2"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [3, 24])],
               [helper.make_tensor_value_info("y", F, [3, 8])],
               [_const("w1", rng.standard_normal((24, 40)).astype(np.float32)),
                _const("two", np.float32(2)),
                _const("w2", rng.standard_normal((40, 8)).astype(np.float32))])
    res = lpusim.run_onnx(m, {"x": rng.standard_normal((3, 24)).astype(np.float32)})
    assert res.report["errors"]["y"]["max_rel"] <= 1e-5


# --- Softmax over more than 320 columns -----------------------------------------------------

def _wide_softmax(cols, op="Softmax", mask=None, guard=False, rows=6):
    """x [2, rows, cols] (+ a mask row or a -inf mask), op over the last axis, (a NaN guard,)
    @ W [cols, 24]: a Softmax over more keys than the VXM has lanes (a sequence of more than
    320 tokens), its rows folded vector by vector before the lanes' max."""
    nodes, inits, xs = [], [_const("w", np.random.default_rng(5).standard_normal(
        (cols, 24)).astype(np.float32))], "x"
    ins = [helper.make_tensor_value_info("x", F, [2, rows, cols])]
    if mask == "row":  # one row for every query: compile's Softmax with a mask input
        ins.append(helper.make_tensor_value_info("mrow", F, [1, 1, cols]))
        nodes.append(helper.make_node("Add", ["x", "mrow"], ["xa"]))
        xs = "xa"
    elif mask == "-inf":
        ins.append(helper.make_tensor_value_info("m", B, [2, rows, cols]))
        inits += [_const("zero", np.float32(0)), _const("ninf", np.float32(-np.inf))]
        nodes += [helper.make_node("Where", ["m", "zero", "ninf"], ["bias"]),
                  helper.make_node("Add", ["x", "bias"], ["xa"])]
        xs = "xa"
    nodes.append(helper.make_node(op, [xs], ["p"], axis=-1))
    p = "p"
    if guard:
        nodes += [helper.make_node("IsNaN", ["p"], ["isn"]),
                  helper.make_node("Where", ["isn", "zero", "p"], ["pg"])]
        p = "pg"
    nodes.append(helper.make_node("MatMul", [p, "w"], ["y"]))
    m = _model(nodes, ins, [helper.make_tensor_value_info("y", F, [2, rows, 24]),
                            helper.make_tensor_value_info("p", F, [2, rows, cols])],
               inits, opset=17)
    rng = np.random.default_rng(6)
    feeds = {"x": (3 * rng.standard_normal((2, rows, cols))).astype(np.float32)}
    if mask == "row":
        feeds["mrow"] = np.where(rng.random((1, 1, cols)) < 0.2, np.float32(-1e9),
                                 np.float32(0)).astype(np.float32)
    elif mask == "-inf":
        mm = rng.random((2, rows, cols)) < 0.7
        mm[0, :2] = False  # two rows masked whole
        feeds["m"] = mm
    return m, feeds


@pytest.mark.parametrize("cols", [330, 640, 700])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_softmax_over_more_than_320_columns(cols, precision):
    m, feeds = _wide_softmax(cols)
    res = lpusim.run_onnx(m, feeds, precision=precision)
    tol = {"fp32": 1e-5, "fp16": 4 * 2.0 ** -11, "int8": 5e-2}[precision]
    for name, err in res.report["errors"].items():
        assert err["max_rel"] <= tol, (name, err)
    if precision == "fp32":
        np.testing.assert_allclose(res.outputs["p"].sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_wide_softmax_with_a_mask_row(op):
    m, feeds = _wide_softmax(400, op=op, mask="row")
    res = lpusim.run_onnx(m, feeds)
    for name, err in res.report["errors"].items():
        assert err["max_rel"] <= 1e-5, (name, err)


@pytest.mark.parametrize("cols", [200, 400])
def test_a_guarded_softmax_also_read_unguarded(cols):
    """The probabilities are a graph output too (output_attentions): NaN in the rows masked
    whole, as in the reference, while the guarded copy feeding the MatMul is 0 there."""
    m, feeds = _wide_softmax(cols, mask="-inf", guard=True)
    res = lpusim.run_onnx(m, feeds)
    assert np.isfinite(res.outputs["y"]).all() and not res.outputs["y"][0, :2].any()
    assert np.isnan(res.outputs["p"][0, :2]).all() and np.isfinite(res.outputs["p"][1]).all()
    assert res.report["errors"]["y"]["max_rel"] <= 1e-5


@pytest.mark.parametrize("family", [pytest.param("bert", marks=pytest.mark.slow), "gpt2"])
def test_a_sequence_longer_than_the_lanes_end_to_end(family):
    """A tiny BERT and GPT-2 at sequence 400 (attention over 400 keys) in fp32 and int8."""
    import models

    m = models.bert(1, 64, 4, 128, 256, 512, seq=400, batch=1) if family == "bert" else \
        models.gpt2(1, 64, 4, 256, 512, 128, seq=400, batch=1)
    for precision, tol in (("fp32", 1e-4), ("int8", 5e-2)):
        res = lpusim.run_onnx(m, precision=precision)
        for name, err in res.report["errors"].items():
            assert err["max_rel"] <= tol, (precision, name, err)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_a_norm_without_epsilon_is_recognized(norm):
    """The dynamo exporter drops Helium's 1e-8 epsilon: Sqrt(ReduceMean(x * x)) with no Add.
    It is still one norm (epsilon 0), so its output feeds a MatMul."""
    rng = np.random.default_rng(3)
    nodes = []
    x = "x"
    if norm == "layer":
        nodes += [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
                  helper.make_node("Sub", ["x", "mu"], ["d"])]
        x = "d"
    nodes += [helper.make_node("Pow", [x, "two"], ["sq"]),
              helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1]),
              helper.make_node("Sqrt", ["ms"], ["r"]),
              helper.make_node("Reciprocal", ["r"], ["ir"]),
              helper.make_node("Mul", [x, "ir"], ["n"]),
              helper.make_node("MatMul", ["n", "w"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [3, 40])],
               [helper.make_tensor_value_info("y", F, [3, 8])],
               [_const("two", np.float32(2)),
                _const("w", rng.standard_normal((40, 8)).astype(np.float32))], opset=17)
    from compiler.pipeline import default_pipeline, run_pipeline

    g = run_pipeline(import_onnx(m), default_pipeline())
    ops = {g.node(n)["op"] for n in g.nodes()}
    assert ("RMSNormalization" if norm == "rms" else "LayerNormalization") in ops
    assert not ops & {"Sqrt", "Reciprocal", "Pow"}
    res = lpusim.run_onnx(m, {"x": rng.standard_normal((3, 40)).astype(np.float32)})
    assert res.report["errors"]["y"]["max_rel"] <= 1e-5
