"""Q @ K^T against a single key (K [.., 1, d]): the MatMul becomes Mul and ReduceSum
(compile._vector_products), with the same numbers; a K of several rows keeps the MatMul."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend.compile import _vector_products
from compiler.frontend import import_onnx

RNG = np.random.default_rng(9)


def _scores(keys: int):
    nodes = [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             h.make_node("MatMul", ["q", "kt"], ["s"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("q", T.FLOAT, [1, 3, 2, 24]),
                                  h.make_tensor_value_info("k", T.FLOAT, [1, 3, keys, 24])],
                     [h.make_tensor_value_info("s", T.FLOAT, [1, 3, 2, keys])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


@pytest.mark.parametrize("keys,rewritten", [(1, True), (4, False)])
def test_rewrite_only_for_one_key(keys, rewritten):
    graph = import_onnx(_scores(keys))
    _vector_products(graph)
    ops = sorted(graph.node(n)["op"] for n in graph.nodes())
    assert ops == (["Mul", "ReduceSum"] if rewritten else ["MatMul", "Transpose"])


@pytest.mark.parametrize("precision,rtol", [("fp32", 1e-6), ("int8", 1e-6)])
def test_scores_against_one_key_match_numpy(precision, rtol):
    q = RNG.standard_normal((1, 3, 2, 24)).astype(np.float32)
    k = RNG.standard_normal((1, 3, 1, 24)).astype(np.float32)
    s = lpusim.run_onnx(_scores(1), {"q": q, "k": k}, precision=precision).outputs["s"]
    want = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)
    np.testing.assert_allclose(s, want, rtol=rtol, atol=rtol * np.abs(want).max())
