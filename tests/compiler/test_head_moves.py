"""Attention's head split (Reshape then Transpose) and merge (Transpose then Reshape): the
Transpose's row order is applied by the Reshape's lane moves when nothing else reads the value
between them (compile._row_move_beside); the numbers are those of the two ops apart."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend.compile import _row_move_beside
from compiler.frontend import import_onnx

RNG = np.random.default_rng(5)
B, S, H, D = 2, 6, 4, 40  # 4 heads of 40 columns: a row of 160 lanes


def _model(nodes, inputs, outputs, inits):
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def _split_merge(extra_output: bool):
    """x [B, S, H*D] -> heads [B, H, S, D] (+1) -> back to [B, S, H*D]."""
    nodes = [h.make_node("Reshape", ["x", "s4"], ["r"]),
             h.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
             h.make_node("Add", ["t", "one"], ["u"]),
             h.make_node("Transpose", ["u"], ["v"], perm=[0, 2, 1, 3]),
             h.make_node("Reshape", ["v", "s3"], ["y"])]
    outs = [h.make_tensor_value_info("y", T.FLOAT, [B, S, H * D])]
    if extra_output:
        outs.append(h.make_tensor_value_info("r", T.FLOAT, [B, S, H, D]))
    inits = [h.make_tensor("s4", T.INT64, [4], [B, S, H, D]),
             h.make_tensor("s3", T.INT64, [3], [B, S, H * D]),
             h.make_tensor("one", T.FLOAT, [1], [1.0])]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [B, S, H * D])], outs, inits)


def test_both_moves_are_found():
    graph = import_onnx(_split_merge(False))
    by_op = {graph.node(n)["outputs"][0]: n for n in graph.nodes()}
    assert _row_move_beside(graph, by_op["r"], after=True)[0] == by_op["t"]
    assert _row_move_beside(graph, by_op["v"], after=False)[0] == by_op["y"]


def test_a_value_read_elsewhere_is_not_skipped():
    graph = import_onnx(_split_merge(True))
    by_op = {graph.node(n)["outputs"][0]: n for n in graph.nodes()}
    assert _row_move_beside(graph, by_op["r"], after=True) is None


@pytest.mark.parametrize("extra_output", [False, True])
def test_split_and_merge_match_numpy(extra_output):
    x = RNG.standard_normal((B, S, H * D)).astype(np.float32)
    res = lpusim.run_onnx(_split_merge(extra_output), {"x": x})
    heads = x.reshape(B, S, H, D).transpose(0, 2, 1, 3) + 1
    np.testing.assert_array_equal(res.outputs["y"], heads.transpose(0, 2, 1, 3).reshape(B, S, -1))
    if extra_output:
        np.testing.assert_array_equal(res.outputs["r"], x.reshape(B, S, H, D))


def _keys_transposed(perms, shape4=(B, S, H, D)):
    """x [B, S, H*D] -> Reshape to shape4 -> the Transposes `perms` -> MatMul of q [B, H, S, D]
    with it (K^T per head, as exporters write attention's scores)."""
    nodes = [h.make_node("Reshape", ["x", "s4"], ["r"])]
    v = "r"
    for i, p in enumerate(perms):
        nodes.append(h.make_node("Transpose", [v], [f"t{i}"], perm=p))
        v = f"t{i}"
    nodes.append(h.make_node("MatMul", ["q", v], ["y"]))
    inits = [h.make_tensor("s4", T.INT64, [4], list(shape4))]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [B, S, H * D]),
                          h.make_tensor_value_info("q", T.FLOAT, [B, H, S, D])],
                  [h.make_tensor_value_info("y", T.FLOAT, [B, H, S, S])], inits)


@pytest.mark.parametrize("perms", [[[0, 2, 1, 3], [0, 1, 3, 2]],  # BERT's export
                                   [[0, 2, 3, 1]]])
def test_keys_turned_whole_then_relabelled(perms):
    """The head split of K and its per-head transposes are one corner turn of K [.., S, D]
    and a reshape to [.., H, hd, S] that keeps the last axis (compile._transposed_heads)."""
    from compiler.backend.compile import _transposed_heads
    from compiler.passes import PASSES

    m = _keys_transposed(perms)
    graph = import_onnx(m)
    for p in PASSES.values():
        graph = p().apply(graph)
    _transposed_heads(graph)
    ops = [(graph.node(n)["op"], graph.values[graph.node(n)["inputs"][0]].shape)
           for n in graph.topo_order()]
    assert ("Transpose", (B, S, H * D)) in ops and ops.count(("Transpose", (B, S, H * D))) == 1
    assert not any(op == "Transpose" and len(shp) == 4 for op, shp in ops)
    x = RNG.standard_normal((B, S, H * D)).astype(np.float32)
    q = RNG.standard_normal((B, H, S, D)).astype(np.float32)
    k = x.reshape(B, S, H, D).transpose(0, 2, 3, 1)
    r = lpusim.run_onnx(m, {"x": x, "q": q}, precision="fp32")
    np.testing.assert_allclose(r.outputs["y"], q @ k, rtol=1e-5, atol=1e-4)


def test_other_reshapes_are_left_alone():
    from compiler.backend.compile import _transposed_heads
    from compiler.passes import PASSES

    m = _keys_transposed([[0, 2, 1, 3], [0, 1, 3, 2]])
    graph = import_onnx(m)
    for p in PASSES.values():
        graph = p().apply(graph)
    t = next(n for n in graph.topo_order() if graph.node(n)["op"] == "Transpose")
    graph.node(t)["attrs"]["perm"] = [0, 1, 2, 3]  # now not K^T: [B, S, hd, H] after both
    before = [graph.node(n)["op"] for n in graph.topo_order()]
    _transposed_heads(graph)
    assert [graph.node(n)["op"] for n in graph.topo_order()] == before
