"""Narrow-float ops computed in fp32: the VXM computes every float op in fp32 and rounds once
to the element type; the ops lowered only for fp32 (MatMul, the special functions, norms,
reductions) get the same semantics from a Cast of their narrow-float operands to fp32 before
and a Cast of their results back after."""

from __future__ import annotations

import numpy as np

from compiler.backend.products import Emit
from compiler.ir import Graph, TensorType

NARROW_FLOATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
# ops lowered for fp32 whose narrow-float form is the fp32 one rounded once at the end
WIDENED = {"MatMul", "MatMulBias", "Exp", "Tanh", "Sqrt", "Reciprocal",
           "Log", "Erf", "Sigmoid", "Pow", "Gelu", "Silu", "LayerNormalization",
           "RMSNormalization", "ReduceMean", "ReduceSum", "Clip", "Sin", "Cos"}


_ONNX_TYPE = {"float16": 10, "bfloat16": 16, "float8_e4m3fn": 17, "float8_e5m2": 19}


def narrow_floats_in_fp32(graph: Graph) -> None:
    """Afterwards no op of WIDENED reads or writes a narrow float (fp16, bf16, fp8): each such
    operand is a Cast to float32 (a constant: stored as float32, exactly), each such result a
    Cast back from a float32 value."""
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] not in WIDENED:
            continue
        ins, outs = list(nd["inputs"]), list(nd["outputs"])
        if not any(v and graph.values[v].dtype in NARROW_FLOATS for v in ins + outs):
            continue
        emit = Emit(graph, name, nd["order"])
        op, attrs, domain = nd["op"], dict(nd["attrs"]), nd.get("domain", "")
        graph.remove_node(name)
        wide_ins = []
        for v in ins:
            ty = graph.values[v] if v else None
            if ty is None or ty.dtype not in NARROW_FLOATS:
                wide_ins.append(v)
            elif graph.is_const(v) and graph.const_array(v) is not None:
                wide_ins.append(graph.add_const(graph.fresh_name(f"{v}@fp32"),
                                                graph.const_array(v).astype(np.float32),
                                                kind=graph.consts[v].kind))
            else:
                wide_ins.append(emit("Cast", [v], TensorType("float32", ty.shape), {"to": 1}))
        wide_outs, backs = [], []
        for o in outs:
            ty = graph.values[o] if o else None
            if ty is None or ty.dtype not in NARROW_FLOATS:
                wide_outs.append(o)
            else:
                w = graph.fresh_name(f"{o}@fp32")
                graph.values[w] = TensorType("float32", ty.shape)
                wide_outs.append(w)
                backs.append((w, o, ty))
        emit.step += 1
        graph.add_node(name, op, wide_ins, wide_outs, attrs, domain=domain,
                       order=emit.order + emit.step / 16)
        for w, o, ty in backs:
            emit("Cast", [w], ty, {"to": _ONNX_TYPE[ty.dtype]}, out=o)

