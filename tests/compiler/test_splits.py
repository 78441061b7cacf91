"""Attention over long sequences in groups of heads (compiler/backend/head_groups.py): the
groups compute the same numbers as the whole, exporters' variants (GQA repeats, rotary, the
sdpa NaN guard, a fused QKV Split) are pushed through, and a model whose scores are more
vectors than a MEM slice holds compiles and matches the reference."""

from __future__ import annotations

import numpy as np
import pytest

import compiler.backend.compile as cc
import compiler.backend.splits as hg
import lpusim
import models
from compiler.errors import CompileError
from models.presets import build_preset

DATA = "models/data"


def _backend_ops(model, dims, precision="fp32"):
    """The op types of the backend graph, as compile_graph lowers it."""
    got = {}
    orig = cc._round_before_moves

    def capture(graph, dt):
        got["ops"] = sorted(graph.node(n)["op"] for n in graph.nodes())
        return orig(graph, dt)

    cc._round_before_moves = capture
    try:
        lpusim.compile_onnx(model, precision=precision, dims=dims)
    finally:
        cc._round_before_moves = orig
    return got["ops"]


@pytest.mark.parametrize("source", ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-llama-opset23",
                                    f"{DATA}/hf-llama-sdpa.onnx", f"{DATA}/hf-gpt2.onnx"])
def test_forced_groups_give_the_same_numbers(source, monkeypatch):
    """Split every attention (tiny models' scores are far under the threshold) into groups of
    one head: fp32 outputs bit-identical to the unsplit program's."""
    if source.endswith(".onnx"):
        model, dims = source, {"batch": 2, "seq": 11}
    elif source.endswith("-opset23"):  # the opset-23 Attention op, decomposed by the passes
        model, dims = build_preset(source[:-8], batch=2, seq=11, attention="opset23"), None
    else:
        model, dims = build_preset(source, batch=2, seq=11), None
    whole = lpusim.run_onnx(model, None, dims=dims)
    monkeypatch.setattr(hg, "SPLIT_VECTORS", 1)
    monkeypatch.setattr(hg, "GROUP_VECTORS", 1)  # one head a group
    split = lpusim.run_onnx(model, None, dims=dims)
    assert whole.report["cycles"] != split.report["cycles"]  # a different program
    for name, arr in whole.outputs.items():
        np.testing.assert_array_equal(split.outputs[name], arr, err_msg=name)


@pytest.mark.parametrize("budget", [11, 22])
def test_groups_replace_the_whole_attention(budget, monkeypatch):
    """tiny-llama (4 query heads sharing 2 key heads, rotary) in groups of 2 heads: two
    Softmaxes per layer, a Concat joining them, no Slice of the repeated keys (the slice is
    pushed up through the repeat to the 2 key heads, one per group). With a budget of one head
    (11 rows of one vector), groups of one head would slice the repeated keys whole: groups of
    2 are taken instead."""
    model = build_preset("tiny-llama", batch=1, seq=11)
    before = _backend_ops(model, None)
    monkeypatch.setattr(hg, "SPLIT_VECTORS", 1)
    monkeypatch.setattr(hg, "GROUP_VECTORS", budget)
    after = _backend_ops(model, None)
    layers = before.count("Softmax")
    assert after.count("Softmax") == 2 * layers
    assert after.count("Concat") >= before.count("Concat") + layers
    assert after.count("Expand") == before.count("Expand") * 2


def test_a_model_whose_scores_exceed_a_slice():
    """12 heads x 400 queries x 2 vectors of fp32 scores = 9,600 vectors a byte: more than a
    MEM slice (8,192), a CompileError before; now 6 groups of 2 heads, within 1e-4 (fp32) and
    5e-2 (int8) of the reference."""
    m = models.bert(1, 192, 12, 256, 256, 512, seq=400, batch=1)
    for precision, tol in (("fp32", 1e-4), ("int8", 5e-2)):
        res = lpusim.run_onnx(m, precision=precision)
        for name, err in res.report["errors"].items():
            assert err["max_rel"] <= tol, (precision, name, err)


def test_one_head_too_large_is_still_a_one_line_error():
    """A single head whose scores take more than a slice cannot be split further: the
    allocator's one-line error, not a traceback."""
    m = models.gpt2(1, 64, 2, 256, 2304, 128, seq=2304, batch=1)
    with pytest.raises(CompileError, match="more than one MEM slice holds") as e:
        lpusim.compile_onnx(m)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_forced_row_blocks_give_the_same_numbers(family, monkeypatch):
    """The FFN (GELU, or SwiGLU's two products) of a small model in blocks of rows, forced by
    low thresholds: outputs bit-identical in fp32, and equal in int8 too (its activations are
    quantized per row)."""
    if family == "bert":
        model = models.bert(1, 64, 4, 640, 256, 512, seq=11, batch=2)
    else:
        model = models.llama(1, 64, 4, 2, 640, 256, seq=11, batch=2)
    for precision in ("fp32", "int8"):
        monkeypatch.setattr(hg, "ROW_SPLIT_VECTORS", 10**9)
        whole = lpusim.run_onnx(model, None, precision=precision)
        act = "Gelu" if family == "bert" else "Silu"
        before = _backend_ops(model, None, precision).count(act)
        monkeypatch.setattr(hg, "ROW_SPLIT_VECTORS", 30)  # the FFN's [2, 11, 640]: 44 vectors
        monkeypatch.setattr(hg, "ROW_BLOCK_VECTORS", 24)  # its output [2, 11, 64]: 22
        assert _backend_ops(model, None, precision).count(act) == 2 * before == 2
        split = lpusim.run_onnx(model, None, precision=precision)
        assert whole.report["cycles"] != split.report["cycles"]
        for name, arr in whole.outputs.items():
            np.testing.assert_array_equal(split.outputs[name], arr, err_msg=(precision, name))


def _bmm_attention(S=11, D=64, H=4):
    """Attention as BLOOM's and DeBERTa-v2's exports write it at batch 1: heads flattened into
    the batch of 3-D MatMuls ([H, S, hd]), and a constant per-head bias on the scores."""
    from onnx import TensorProto, helper, numpy_helper

    hd = D // H
    rng = np.random.default_rng(4)

    def const(name, arr):
        return numpy_helper.from_array(np.asarray(arr), name)

    inits = [const(w, (rng.standard_normal((D, D)) / 8).astype(np.float32))
             for w in ("wq", "wk", "wv", "wo")]
    inits += [const("s4", np.array([1, S, H, hd], np.int64)),
              const("s3", np.array([H, S, hd], np.int64)),
              const("p4", np.array([1, H, S, S], np.int64)),
              const("p3", np.array([H, S, S], np.int64)),
              const("o4", np.array([1, H, S, hd], np.int64)),
              const("o3", np.array([1, S, D], np.int64)),
              const("bias", (rng.standard_normal((1, H, 1, S))).astype(np.float32))]
    n = helper.make_node
    nodes = []
    for t in ("q", "k", "v"):
        nodes += [n("MatMul", ["x", f"w{t}"], [f"{t}2"]),
                  n("Reshape", [f"{t}2", "s4"], [f"{t}4"]),
                  n("Transpose", [f"{t}4"], [f"{t}t"], perm=[0, 2, 1, 3]),
                  n("Reshape", [f"{t}t", "s3"], [f"{t}3"])]
    nodes += [n("Transpose", ["k3"], ["kT"], perm=[0, 2, 1]),
              n("MatMul", ["q3", "kT"], ["sc3"]),
              n("Reshape", ["sc3", "p4"], ["sc4"]),
              n("Add", ["sc4", "bias"], ["sb"]),
              n("Softmax", ["sb"], ["p"], axis=-1),
              n("Reshape", ["p", "p3"], ["pr"]),
              n("MatMul", ["pr", "v3"], ["o"]),
              n("Reshape", ["o", "o4"], ["oo"]),
              n("Transpose", ["oo"], ["ot"], perm=[0, 2, 1, 3]),
              n("Reshape", ["ot", "o3"], ["om"]),
              n("MatMul", ["om", "wo"], ["y"])]
    F = TensorProto.FLOAT
    g = helper.make_graph(nodes, "bmm", [helper.make_tensor_value_info("x", F, [1, S, D])],
                          [helper.make_tensor_value_info("y", F, [1, S, D])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_heads_flattened_into_a_batch(monkeypatch):
    """BLOOM-style 3-D attention with a per-head constant bias: split into 4 groups of one
    head (the bias sliced per head), bit-identical in fp32 and matching the reference."""
    model = _bmm_attention()
    whole = lpusim.run_onnx(model)
    monkeypatch.setattr(hg, "SPLIT_VECTORS", 1)
    monkeypatch.setattr(hg, "GROUP_VECTORS", 1)
    assert _backend_ops(model, None).count("Softmax") == 4
    split = lpusim.run_onnx(model)
    np.testing.assert_array_equal(split.outputs["y"], whole.outputs["y"])
    assert split.report["errors"]["y"]["max_rel"] <= 1e-5


@pytest.mark.parametrize("source, axis", [("gpt2-vocab-1000", 2), ("tiny-bert", 1)])
def test_forced_output_parts_give_the_same_numbers(source, axis, monkeypatch, tmp_path):
    """A graph output larger than the budget is computed in parts, each a program output of
    its own (`name#k`), and the simulator joins them: GPT-2's logits by vocabulary columns
    (each part of its own LM-head columns), BERT's hidden states ([.., 64]: one vector a row)
    by rows. Bit-identical to the whole output in fp32 (and int8, by columns), also through a
    saved .lpu."""
    from lpusim.program_io import load_program, save_program
    from lpusim.simulator import simulate

    model = models.gpt2(1, 64, 4, 1000, 64, 128, seq=11, batch=2) if source.startswith(
        "gpt2") else build_preset(source, batch=2, seq=11)
    for precision in ("fp32", "int8"):
        monkeypatch.setattr(hg, "OUTPUT_SPLIT_VECTORS", 10**9)
        whole = lpusim.run_onnx(model, None, precision=precision)
        monkeypatch.setattr(hg, "OUTPUT_SPLIT_VECTORS", 8)
        monkeypatch.setattr(hg, "OUTPUT_PART_VECTORS", 8)
        program = lpusim.compile_onnx(model, precision=precision)
        joined = program.meta["joined_outputs"]
        name = next(iter(joined))
        assert joined[name]["axis"] == axis and len(joined[name]["parts"]) > 1
        assert {t.name for t in program.tensors if t.kind == "output"} >= \
            set(joined[name]["parts"])
        split = lpusim.run_onnx(model, None, precision=precision)
        assert sorted(split.outputs) == sorted(whole.outputs)
        for k, arr in whole.outputs.items():
            if precision == "fp32" or axis == 2:
                np.testing.assert_array_equal(split.outputs[k], arr, err_msg=(precision, k))
            else:  # blocks of at most 16 rows: a norm quantizes its MatMuls' input by a
                # bound of max |y| found beside its mean (ops.NORM_ABSMAX_ROWS), not by the
                # exact max: other activation scales, within the same bound
                assert split.report["errors"][k]["max_rel"] <= 5e-2
        save_program(program, tmp_path / "p.lpu")
        feeds = {t.name: v for t, v in zip(
            [t for t in program.tensors if t.kind == "input"],
            [np.ones(t.shape, np.int64) for t in program.tensors if t.kind == "input"],
            strict=True)}
        a = simulate(program, feeds).outputs
        b = simulate(load_program(tmp_path / "p.lpu"), feeds).outputs
        assert sorted(a) == sorted(whole.outputs)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_a_model_that_finds_no_room_is_compiled_again_in_smaller_pieces(monkeypatch):
    """With the head-split threshold above its scores' 9,600 vectors, the model's scores are
    more than a MEM slice holds: compile_graph compiles it again with the thresholds halved
    (4,096 x 2 / 2 < 9,600), and it fits; without retries the NoRoomError is the result."""
    from compiler.errors import NoRoomError

    m = models.bert(1, 96, 12, 128, 256, 512, seq=400, batch=1)
    monkeypatch.setattr(hg, "SPLIT_VECTORS", 10_000)
    program = lpusim.compile_onnx(m)
    assert any("_heads" in name for name, _ in program.meta["ops"])
    monkeypatch.setattr(cc, "TIGHT_RETRIES", 0)
    with pytest.raises(NoRoomError, match="more than one MEM slice holds"):
        lpusim.compile_onnx(m)
