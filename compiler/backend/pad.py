"""Pad in constant mode, with constant pads, as the data movement the backend lowers: a
Concat with constant blocks of the pad value per padded axis, a Slice per cropped one
(negative pads), an Identity when nothing changes."""

from __future__ import annotations

import numpy as np

from compiler.backend.products import Emit
from compiler.errors import CompileError
from compiler.ir import Graph, TensorType
from isa.dtypes import numpy_dtype

_NP = {"bfloat16": "bf16", "float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2"}


def ir_numpy_dtype(dtype: str):
    """The numpy dtype of an IR element type."""
    return numpy_dtype(_NP[dtype]) if dtype in _NP else np.dtype(dtype)


def pads_as_concats(graph: Graph) -> None:
    """Afterwards no Pad remains (CompileError for one in another mode or with pads computed
    at run time)."""
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] == "Pad":
            _pad(graph, name)


def _const_ints(graph: Graph, v: str, what: str, role: str):
    if not v:
        return None
    arr = graph.const_array(v) if graph.is_const(v) else None
    if arr is None:
        raise CompileError(f"{what}: {role} computed at run time are not lowered")
    return [int(a) for a in np.asarray(arr).reshape(-1)]


def _pad(graph: Graph, name: str) -> None:
    nd = graph.node(name)
    what = f"Pad (node {name!r})"
    ins = list(nd["inputs"]) + [""] * (4 - len(nd["inputs"]))
    x, y = ins[0], nd["outputs"][0]
    mode = nd["attrs"].get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise CompileError(f"{what}: mode {mode!r} is not lowered yet (only 'constant')")
    xt = graph.values[x]
    rank = len(xt.shape)
    pads = _const_ints(graph, ins[1], what, "pads") if ins[1] else \
        [int(p) for p in nd["attrs"].get("pads", [0] * 2 * rank)]
    axes = _const_ints(graph, ins[3], what, "axes") or list(range(rank))
    axes = [a % rank for a in axes]
    value = 0.0
    if ins[2]:
        arr = graph.const_array(ins[2]) if graph.is_const(ins[2]) else None
        if arr is None:
            raise CompileError(f"{what}: a pad value computed at run time is not lowered yet")
        if arr.size:
            value = np.asarray(arr).reshape(-1)[0]
    elif "value" in nd["attrs"]:
        value = float(nd["attrs"]["value"])
    n = len(axes)
    if len(pads) != 2 * n:
        raise CompileError(f"{what}: {len(pads)} pads for {n} axes")
    emit = Emit(graph, name, nd["order"])
    graph.remove_node(name)
    cur = x
    shape = list(xt.shape)
    dt = ir_numpy_dtype(xt.dtype)
    steps = [(a, pads[i], pads[i + n]) for i, a in enumerate(axes) if pads[i] or pads[i + n]]
    if not steps:
        emit("Identity", [x], graph.values[y], out=y)
        return
    for k, (a, lo, hi) in enumerate(steps):
        last = k == len(steps) - 1
        if lo < 0 or hi < 0:  # crop first
            start, end = max(0, -lo), shape[a] - max(0, -hi)
            shape[a] = max(0, end - start)
            consts = [graph.add_const(graph.fresh_name(f"{name}_{r}"), np.array([v], np.int64))
                      for r, v in (("starts", start), ("ends", end), ("axes", a))]
            cur = emit("Slice", [cur] + consts, TensorType(xt.dtype, tuple(shape)),
                       out=y if last and lo <= 0 and hi <= 0 else None)
            lo, hi = max(lo, 0), max(hi, 0)
        if not lo and not hi:
            continue
        parts = []
        for p, where in ((lo, "before"), (hi, "after")):
            if p:
                bshape = list(shape)
                bshape[a] = p
                parts.append((where, graph.add_const(graph.fresh_name(f"{name}_{where}"),
                                                     np.full(bshape, value, dt), kind="const")))
        ins_cat = [v for w, v in parts if w == "before"] + [cur] + \
            [v for w, v in parts if w == "after"]
        shape[a] += lo + hi
        cur = emit("Concat", ins_cat, TensorType(xt.dtype, tuple(shape)), {"axis": a},
                   out=y if last else None)
