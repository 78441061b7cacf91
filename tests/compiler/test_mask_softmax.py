"""Softmax(x + mask) with the mask one row broadcast over all rows (attention's padding mask)
becomes a Softmax with the mask as a second input (compile._mask_into_softmax), whose first
pass adds it: the values of the graph, one pass fewer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lpusim
from compiler.backend.compile import _mask_into_softmax
from compiler.frontend import import_onnx

NEG = float(np.finfo(np.float32).min)


def _model(shape, mask_shape, elem=T.FLOAT, extra_use=False):
    nodes = [h.make_node("Add", ["x", "m"], ["s"]),
             h.make_node("Softmax", ["s"], ["y"], axis=-1)]
    outs = [h.make_tensor_value_info("y", elem, shape)]
    if extra_use:
        nodes.append(h.make_node("Relu", ["s"], ["r"]))
        outs.append(h.make_tensor_value_info("r", elem, shape))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", elem, shape),
                                  h.make_tensor_value_info("m", elem, mask_shape)], outs)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def _softmax(v):
    v = v.astype(np.float64)
    e = np.exp(v - v.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(1, 2, 5, 7), (1, 4, 130, 100), (2, 3, 16, 320)])
@pytest.mark.parametrize("elem,precision", [(T.FLOAT, "fp32"), (T.FLOAT16, "fp16")])
def test_masked_softmax_matches_reference(shape, elem, precision):
    rng = np.random.default_rng(sum(shape))
    npt = np.float32 if elem == T.FLOAT else np.float16
    x = (rng.standard_normal(shape) * 3).astype(npt)
    m = np.zeros((1, 1, 1, shape[-1]), npt)
    m[..., shape[-1] // 2:] = NEG if elem == T.FLOAT else -6.0e4  # padded keys
    model = _model(list(shape), list(m.shape), elem)
    graph = import_onnx(model)
    _mask_into_softmax(graph)
    ops = [graph.node(n)["op"] for n in graph.topo_order()]
    assert ops == ["Softmax"]
    r = lpusim.run_onnx(model, {"x": x, "m": m}, precision=precision)
    ref = _softmax(x.astype(np.float32) + m.astype(np.float32))
    tol = 1e-6 if elem == T.FLOAT else 2e-3
    assert np.abs(r.outputs["y"].astype(np.float64) - ref).max() <= tol


@pytest.mark.parametrize("mask_shape,extra_use", [((1, 1, 5, 7), False),  # not one row
                                                  ((1, 1, 1, 7), True)])  # sum read again
def test_left_alone(mask_shape, extra_use):
    graph = import_onnx(_model([1, 2, 5, 7], list(mask_shape), extra_use=extra_use))
    _mask_into_softmax(graph)
    assert "Add" in [graph.node(n)["op"] for n in graph.topo_order()]
