"""Constant folding over the IR: the engine behind the fold-constants pass and the frontend."""

from __future__ import annotations

import numpy as np

from compiler.errors import CompileError
from compiler.ir import Graph, TensorType, const_kind, dtype_name

# Ops whose result depends only on the input's type, not its data.
SHAPE_OPS = ("Shape", "Size")


def _shape_result(graph: Graph, node: str) -> np.ndarray | None:
    a = graph.node(node)
    ty = graph.values.get(a["inputs"][0])
    if ty is None:
        return None
    if a["op"] == "Size":
        return np.array(ty.size, dtype=np.int64)
    rank = ty.rank
    start = int(a["attrs"].get("start", 0))
    end = int(a["attrs"].get("end", rank))
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.array(ty.shape[start:end], dtype=np.int64)


def fold_constants(graph: Graph, *, max_elements: int = 1 << 24) -> bool:
    """Replace every foldable op by consts, then prune; True if anything changed.

    An op folds when all its inputs are consts with data (evaluated with compiler.interp), when
    it is Shape/Size of a value with a known type, or when all its inputs are consts, some
    shape-only, and its output types are known (the result is a shape-only const). Results
    with more than `max_elements` elements stay ops.
    """
    from compiler.interp import eval_op

    changed = False
    opset = int(graph.meta.get("opset", 23))
    for n in graph.topo_order():
        a = graph.node(n)
        if a["op"] in ("Constant",) and not a["inputs"]:
            results: list[np.ndarray | None] = [_constant_attr(n, a["attrs"])]
        elif a["op"] in SHAPE_OPS:
            r = _shape_result(graph, n)
            if r is None:
                continue
            results = [r]
        elif a["op"] in GATHERS and a["outputs"][0] in graph.values \
                and graph.values[a["outputs"][0]].size <= max_elements \
                and not a.get("domain") and _uniform(graph, a["inputs"][0]) is not None:
            # every element of the data is one value: so is every gathered one, whatever the
            # indices (RoBERTa's token types, zeros gathered at its position ids)
            results = [np.full(graph.values[a["outputs"][0]].shape,
                               _uniform(graph, a["inputs"][0]))]
        else:
            ins = [v for v in a["inputs"] if v]
            if not ins or not all(graph.is_const(v) for v in ins):
                continue
            outs_ty = [graph.values.get(o) for o in a["outputs"] if o]
            if any(graph.const_array(v) is None for v in ins):
                if any(t is None for t in outs_ty):
                    continue
                results = [None] * len(a["outputs"])
            else:
                # (a move of one const makes no more elements than it has: a tied embedding
                # transposed for the LM head, 38.6 M of them in GPT-2, folds too)
                if a["op"] not in LAYOUT_OPS and any(t is not None and t.size > max_elements
                                                     for t in outs_ty):
                    continue
                args = [graph.const_array(v) if v else None for v in a["inputs"]]
                try:
                    results = list(eval_op(a["op"], args, a["attrs"], len(a["outputs"]),
                                           domain=a["domain"], opset=opset))
                except (IndexError, ValueError) as e:  # e.g. positions past a table's end
                    raise CompileError(f"node {n!r} ({a['op']}) on constants: {e} (is a "
                                       "--dim larger than the model allows?)") from e
        weight_in = any(graph.consts[v].kind == "weight" for v in a["inputs"]
                        if v in graph.consts)
        outputs = list(a["outputs"])
        old_types = {o: graph.values.get(o) for o in outputs if o}
        graph.remove_node(n)
        for o, r in zip(outputs, results, strict=False):
            if not o:
                continue
            ty = old_types.get(o)
            if r is not None:
                r = np.asarray(r)
                if ty is not None and dtype_name(r.dtype) != ty.dtype:
                    r = r.astype(ty.dtype)
                if ty is not None and tuple(r.shape) != ty.shape:
                    raise CompileError(f"folding node {n!r} ({a['op']}) gave shape "
                                       f"{list(r.shape)} for {o!r}, inferred {list(ty.shape)}")
                ty = TensorType(dtype_name(r.dtype), tuple(int(d) for d in r.shape))
            assert ty is not None
            kind = ("weight" if weight_in and const_kind(ty.dtype, ty.shape) == "weight"
                    else "const")
            graph.values.pop(o, None)
            graph.add_const(o, r, ty=ty, kind=kind)
        changed = True
    before = (graph.g.number_of_nodes(), len(graph.consts))
    graph.prune()
    return changed or before != (graph.g.number_of_nodes(), len(graph.consts))


GATHERS = ("Gather", "GatherElements", "GatherND")  # ops that only pick elements of input 0
# ops whose result holds input 0's elements, each once
LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def _uniform(graph: Graph, v: str) -> np.ndarray | None:
    """The one value of every element of const v (a 0-d array), or None."""
    arr = graph.const_array(v) if v else None
    if arr is None or not arr.size:
        return None
    first = arr.reshape(-1)[0]
    if not np.all((arr == first) | (np.isnan(arr) & np.isnan(first))
                  if arr.dtype.kind == "f" else arr == first):
        return None
    return np.asarray(first)


def _constant_attr(node: str, attrs: dict) -> np.ndarray:
    """The value of an ONNX Constant op (its attrs already converted to numpy by the frontend)."""
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in attrs:
            v = attrs[key]
            if isinstance(v, np.ndarray):
                return v
            if key in ("value_float", "value_floats"):
                return np.array(v, dtype=np.float32)
            return np.array(v, dtype=np.int64)
    raise CompileError(f"Constant node {node!r} has no supported value attribute "
                       f"({', '.join(sorted(attrs)) or 'none'})")
