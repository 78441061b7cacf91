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


@pytest.mark.parametrize("source", ["tiny-bert", "tiny-gpt2", "tiny-llama",
                                    f"{DATA}/hf-llama-sdpa.onnx", f"{DATA}/hf-gpt2.onnx"])
def test_forced_groups_give_the_same_numbers(source, monkeypatch):
    """Split every attention (tiny models' scores are far under the threshold) into groups of
    one head: fp32 outputs bit-identical to the unsplit program's."""
    if source.endswith(".onnx"):
        model, dims = source, {"batch": 2, "seq": 11}
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
