"""The product of two computed operands under a reduced-precision policy: the rounding to the
MXM type moves before the Reshape/Transpose chain that feeds it (compile._round_before_moves),
which changes no value, and never retypes a value something else reads."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend.compile import _round_before_moves
from compiler.frontend import import_onnx

RNG = np.random.default_rng(11)


def _attention_scores(extra_output: bool = False):
    """s = q @ transpose(reshape(k)) for q [4, 2, 8], k [4, 16]; optionally k's reshape is
    also a graph output (read by something other than the product)."""
    nodes = [h.make_node("Reshape", ["k", "shape"], ["kr"]),
             h.make_node("Transpose", ["kr"], ["kt"], perm=[1, 2, 0]),
             h.make_node("MatMul", ["q", "kt"], ["s"])]
    outs = [h.make_tensor_value_info("s", T.FLOAT, [2, 4, 4])]
    if extra_output:
        outs.append(h.make_tensor_value_info("kr", T.FLOAT, [4, 2, 8]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("q", T.FLOAT, [2, 4, 8]),
                                  h.make_tensor_value_info("k", T.FLOAT, [4, 16])], outs,
                     initializer=[h.make_tensor("shape", T.INT64, [3], [4, 2, 8])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def test_the_cast_goes_before_the_moves():
    graph = import_onnx(_attention_scores())
    _round_before_moves(graph, "fp16")
    casts = [n for n in graph.nodes() if graph.node(n)["op"] == "Cast"]
    assert len(casts) == 1 and graph.node(casts[0])["inputs"] == ["k"]
    assert graph.values["kr"].dtype == graph.values["kt"].dtype == "float16"
    assert graph.values["q"].dtype == graph.values["s"].dtype == "float32"
    graph.verify()


def test_a_value_read_elsewhere_keeps_its_type():
    """kr is also a graph output: the Cast goes after it, before the Transpose only."""
    graph = import_onnx(_attention_scores(extra_output=True))
    _round_before_moves(graph, "fp16")
    casts = [n for n in graph.nodes() if graph.node(n)["op"] == "Cast"]
    assert len(casts) == 1 and graph.node(casts[0])["inputs"] == ["kr"]
    assert graph.values["kr"].dtype == "float32" and graph.values["kt"].dtype == "float16"


def test_fp32_policy_leaves_the_graph_alone():
    graph = import_onnx(_attention_scores())
    _round_before_moves(graph, "fp32")
    assert not [n for n in graph.nodes() if graph.node(n)["op"] == "Cast"]


def test_same_numbers_as_rounding_at_the_product():
    q = RNG.standard_normal((2, 4, 8)).astype(np.float32)
    k = RNG.standard_normal((4, 16)).astype(np.float32)
    res = lpusim.run_onnx(_attention_scores(), {"q": q, "k": k}, precision="fp16")
    kt = k.reshape(4, 2, 8).transpose(1, 2, 0)
    want = q.astype(np.float16).astype(np.float32) @ kt.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(res.outputs["s"], want, rtol=1e-6, atol=1e-6)
