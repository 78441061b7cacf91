"""A small numpy interpreter of the IR: the meaning of every op a pass may write.

`run(graph, feeds)` evaluates the graph; `eval_op` evaluates one op (fold-constants uses it).
The ops this compiler introduces (MatMulBias, Silu, and Gelu / LayerNormalization /
RMSNormalization at any opset) and the common ONNX ops are written out here; any other ONNX op
is evaluated by `onnx.reference.ReferenceEvaluator` on a one-node model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from compiler.errors import CompileError
from compiler.ir import Graph

Array = np.ndarray
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _axes(attrs: Mapping[str, Any], ins: Sequence[Array | None], pos: int = 1) -> tuple | None:
    if len(ins) > pos and ins[pos] is not None:
        return tuple(int(a) for a in np.asarray(ins[pos]).reshape(-1))
    a = attrs.get("axes")
    return None if a is None else tuple(int(x) for x in a)


def _reduce(fn: Callable) -> Callable:
    def run(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
        x = ins[0]
        assert x is not None
        axes = _axes(attrs, ins)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = tuple(range(x.ndim))
        return [fn(x, axis=axes, keepdims=keep).astype(x.dtype)]
    return run


def _layernorm(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, scale = ins[0], ins[1]
    assert x is not None
    axis = int(attrs.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32)
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + np.float32(attrs.get("epsilon", 1e-5)))
    if scale is not None:
        y = y * scale
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    return [y.astype(x.dtype), mean, 1.0 / np.sqrt(var + np.float32(attrs.get("epsilon", 1e-5)))]


def _rmsnorm(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, scale = ins[0], ins[1]
    assert x is not None
    axis = int(attrs.get("axis", -1)) % x.ndim
    xf = x.astype(np.float32)
    ms = (xf * xf).mean(axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xf / np.sqrt(ms + np.float32(attrs.get("epsilon", 1e-5)))
    if scale is not None:
        y = y * scale
    return [y.astype(x.dtype)]


def _gelu(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x = ins[0]
    assert x is not None
    xf = x.astype(np.float64)
    if attrs.get("approximate", "none") == "tanh":
        y = 0.5 * xf * (1 + np.tanh(math.sqrt(2 / math.pi) * (xf + 0.044715 * xf**3)))
    else:
        y = 0.5 * xf * (1 + _erf(xf / math.sqrt(2)))
    return [y.astype(x.dtype)]


def _sigmoid(x: Array) -> Array:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(x.dtype)


def _softmax(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x = ins[0]
    assert x is not None
    axis = int(attrs.get("axis", -1))
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return [(e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)]


def _binary(fn: Callable) -> Callable:
    def run(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
        a, b = ins[0], ins[1]
        assert a is not None and b is not None
        with np.errstate(over="ignore"):  # IEEE overflow to inf, as the machine computes it
            out = fn(a, b)
        return [np.asarray(out).astype(a.dtype) if out.dtype.kind != "b" else np.asarray(out)]
    return run


def _unary(fn: Callable) -> Callable:
    def run(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
        x = ins[0]
        assert x is not None
        return [np.asarray(fn(x)).astype(x.dtype)]
    return run


def _div(a: Array, b: Array) -> Array:
    if a.dtype.kind in "iu":
        return np.trunc(a / b).astype(a.dtype)
    return a / b


def _gather(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    axis = int(attrs.get("axis", 0))
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take(x, idx, axis=axis)]


def gathernd_flat(idx: np.ndarray, data_shape: Sequence[int], batch_dims: int) -> np.ndarray:
    """GatherND's indices as indices into data reshaped to [prod(data.shape[:b + k]), ...]
    (b = batch_dims, k = idx.shape[-1]): one flat index per gathered slice, of shape
    idx.shape[:-1]. Negative indices count from the end; out of range is a ValueError."""
    b, k = batch_dims, int(idx.shape[-1])
    dims = [int(d) for d in data_shape[b:b + k]]
    if b + k > len(data_shape) or tuple(idx.shape[:b]) != tuple(data_shape[:b]):
        raise ValueError(f"indices of shape {list(idx.shape)} do not fit data of shape "
                         f"{list(data_shape)} with batch_dims {b}")
    idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + np.array(dims, dtype=np.int64), idx)
    if np.any(idx < 0) or np.any(idx >= np.array(dims, dtype=np.int64)):
        raise ValueError("an index is out of range")
    flat = np.zeros(idx.shape[:-1], dtype=np.int64)
    for j, d in enumerate(dims):
        flat = flat * d + idx[..., j]
    inner = int(np.prod(dims, dtype=np.int64))
    for j in range(b):  # batch position j of the outer dims
        step = int(np.prod(data_shape[j + 1:b], dtype=np.int64)) * inner
        flat = flat + (np.arange(data_shape[j], dtype=np.int64) * step).reshape(
            (-1,) + (1,) * (flat.ndim - j - 1))
    return flat


def _gather_elements(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    axis = int(attrs.get("axis", 0)) % x.ndim
    idx = np.where(idx < 0, idx + x.shape[axis], idx).astype(np.int64)
    # off the axis, the indices' extent may be shorter than the data's
    x = x[tuple(slice(None) if d == axis else slice(0, idx.shape[d]) for d in range(x.ndim))]
    return [np.take_along_axis(x, idx, axis=axis)]


def _cumsum(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, axis = ins[0], ins[1]
    assert x is not None and axis is not None
    ax = int(np.asarray(axis).reshape(-1)[0]) % x.ndim
    rev = bool(attrs.get("reverse", 0))
    v = np.flip(x, ax) if rev else x
    out = np.cumsum(v, axis=ax, dtype=x.dtype)
    if attrs.get("exclusive", 0):
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=ax)),
                              np.take(out, range(x.shape[ax] - 1), axis=ax)], axis=ax)
    return [np.flip(out, ax) if rev else out]


def _gathernd(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    b = int(attrs.get("batch_dims", 0))
    k = int(idx.shape[-1])
    flat = gathernd_flat(idx, x.shape, b)
    return [np.take(x.reshape((-1,) + x.shape[b + k:]), flat, axis=0)]


def _reshape(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, shape = ins[0], ins[1]
    assert x is not None and shape is not None
    new = [int(s) for s in shape]
    if not attrs.get("allowzero", 0):
        new = [x.shape[i] if s == 0 else s for i, s in enumerate(new)]
    return [x.reshape(new)]


def _slice(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x = ins[0]
    assert x is not None and ins[1] is not None and ins[2] is not None
    starts = [int(s) for s in ins[1]]
    ends = [int(s) for s in ins[2]]
    axes = (list(range(len(starts))) if len(ins) < 4 or ins[3] is None
            else [int(a) % x.ndim for a in ins[3]])
    steps = [1] * len(starts) if len(ins) < 5 or ins[4] is None else [int(s) for s in ins[4]]
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        dim = x.shape[a]
        s = max(-dim - 1, min(s, dim)) if st < 0 else max(-dim, min(s, dim))
        e = max(-dim - 1, min(e, dim))
        if st < 0 and e < -dim:
            e = None  # type: ignore[assignment]
        sl[a] = slice(s, e, st)
    return [x[tuple(sl)]]


def _unsqueeze(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x = ins[0]
    assert x is not None
    axes = _axes(attrs, ins) or ()
    rank = x.ndim + len(axes)
    y = x
    for a in sorted(a % rank for a in axes):
        y = np.expand_dims(y, a)
    return [y]


def _squeeze(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x = ins[0]
    assert x is not None
    axes = _axes(attrs, ins)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _matmul_bias(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    assert x is not None and w is not None
    y = np.matmul(x, w)
    return [y if b is None else (y + b).astype(y.dtype)]


def _where(ins: Sequence[Array | None], attrs: Mapping[str, Any]) -> list[Array]:
    c, a, b = ins
    assert c is not None and a is not None and b is not None
    return [np.where(c, a, b).astype(a.dtype)]


_OPS: dict[str, Callable[[Sequence[Array | None], Mapping[str, Any]], list[Array]]] = {
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": _binary(_div), "Pow": _binary(np.power), "MatMul": _binary(np.matmul),
    "Equal": _binary(np.equal), "Less": _binary(np.less), "Greater": _binary(np.greater),
    "And": _binary(np.logical_and), "Or": _binary(np.logical_or),
    "Max": lambda ins, a: [functools.reduce(np.maximum, ins)],
    "Min": lambda ins, a: [functools.reduce(np.minimum, ins)],
    "Sqrt": _unary(np.sqrt), "Reciprocal": _unary(lambda x: 1 / x), "Neg": _unary(np.negative),
    "Abs": _unary(np.abs), "Exp": _unary(np.exp), "Log": _unary(np.log),
    "Erf": _unary(lambda x: _erf(x)), "Tanh": _unary(np.tanh), "Sigmoid": _unary(_sigmoid),
    "Relu": _unary(lambda x: np.maximum(x, 0)), "Identity": _unary(lambda x: x),
    "Silu": _unary(lambda x: x * _sigmoid(x)),
    "Not": lambda ins, a: [np.logical_not(ins[0])],
    "IsNaN": lambda ins, a: [np.isnan(ins[0])],
    "Softmax": _softmax, "Gelu": _gelu, "LayerNormalization": _layernorm,
    "RMSNormalization": _rmsnorm, "MatMulBias": _matmul_bias,
    "ReduceMean": _reduce(np.mean), "ReduceSum": _reduce(np.sum), "ReduceMax": _reduce(np.max),
    "Gather": _gather, "GatherElements": _gather_elements, "GatherND": _gathernd,
    "CumSum": _cumsum,
    "Reshape": _reshape, "Slice": _slice, "Where": _where,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Transpose": lambda ins, a: [np.transpose(ins[0], a.get("perm"))],
    "Shape": lambda ins, a: [np.array(ins[0].shape[a.get("start", 0):a.get("end")],
                                      dtype=np.int64)],
    "Concat": lambda ins, a: [np.concatenate([x for x in ins if x is not None],
                                             axis=int(a["axis"]))],
    "Cast": lambda ins, a: [ins[0].astype(_onnx_np_dtype(int(a["to"])))],
    "CastLike": lambda ins, a: [ins[0].astype(ins[1].dtype)],
    "Sum": lambda ins, a: [functools.reduce(np.add, ins).astype(ins[0].dtype)],
    "Mod": lambda ins, a: [(np.fmod if int(a.get("fmod", 0)) else np.mod)(ins[0], ins[1])
                           .astype(ins[0].dtype)],
    "ConstantOfShape": lambda ins, a: [np.full(
        [int(d) for d in ins[0]],
        a["value"].reshape(-1)[0] if "value" in a else np.float32(0),
        dtype=a["value"].dtype if "value" in a else np.float32)],
    "Range": lambda ins, a: [np.arange(ins[0], ins[1], ins[2]).astype(ins[0].dtype)],
    "Expand": lambda ins, a: [ins[0] * np.ones([int(d) for d in ins[1]], dtype=ins[0].dtype)],
}


def _onnx_np_dtype(elem_type: int) -> Any:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type)


def _onnx_attr(v: Any) -> Any:
    from onnx import numpy_helper

    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def eval_op(op: str, ins: Sequence[Array | None], attrs: Mapping[str, Any], n_outputs: int, *,
            domain: str = "", opset: int = 23) -> list[Array]:
    """Evaluate one op on numpy arrays (None for an omitted optional input)."""
    if not domain and op in _OPS:
        out = _OPS[op](list(ins), attrs)
        return [np.asarray(o) for o in out[:n_outputs]]
    return _eval_onnx(op, ins, attrs, n_outputs, domain=domain, opset=opset)


def _eval_onnx(op: str, ins: Sequence[Array | None], attrs: Mapping[str, Any], n_outputs: int,
               *, domain: str, opset: int) -> list[Array]:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{i}" if x is not None else "" for i, x in enumerate(ins)]
    outs = [f"o{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, domain=domain,
                            **{k: _onnx_attr(v) for k, v in attrs.items()
                               if not (isinstance(v, tuple) and not v)})
    graph = helper.make_graph(
        [node], "one",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for n, x in zip(names, ins, strict=True) if x is not None],
        [helper.make_tensor_value_info(o, 0, None) for o in outs])
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        result = ReferenceEvaluator(model).run(
            None, {n: x for n, x in zip(names, ins, strict=True) if x is not None})
    except Exception as e:  # the reference raises many types; report one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"cannot evaluate op {op!r}: {msg}") from e
    return [np.asarray(r) for r in result]


def run(graph: Graph, feeds: Mapping[str, Array]) -> dict[str, Array]:
    """Evaluate `graph` on `feeds` (graph input name -> array); returns its outputs by name."""
    env: dict[str, Array | None] = {}
    for name, c in graph.consts.items():
        if c.array is None:
            raise CompileError(f"const {name!r} has no data (shape-only); cannot interpret")
        env[name] = c.array
    for name in graph.inputs:
        if name not in feeds:
            raise CompileError(f"no value for graph input {name!r}")
        env[name] = np.asarray(feeds[name])
    opset = int(graph.meta.get("opset", 23))
    for n in graph.topo_order():
        a = graph.g.nodes[n]
        ins = [env[v] if v else None for v in a["inputs"]]
        outs = eval_op(a["op"], ins, a["attrs"], len(a["outputs"]), domain=a["domain"],
                       opset=opset)
        for o, val in zip(a["outputs"], outs, strict=False):
            if o:
                env[o] = val
    return {o: env[o] for o in graph.outputs}  # type: ignore[misc]


def random_feeds(graph: Graph, seed: int = 0) -> dict[str, Array]:
    """Seeded random inputs of the right dtype (floats in [-2, 2), ints in [0, 4))."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        ty = graph.values[name]
        dt = np.dtype(ty.dtype)
        if dt.kind == "f":
            feeds[name] = rng.uniform(-2, 2, ty.shape).astype(dt)
        elif dt.kind == "b":
            feeds[name] = rng.integers(0, 2, ty.shape).astype(bool)
        else:
            feeds[name] = rng.integers(0, 4, ty.shape).astype(dt)
    return feeds


def fill_random_consts(graph: Graph, seed: int = 0) -> None:
    """Give every shape-only const seeded random data (for numerical tests of passes)."""
    rng = np.random.default_rng(seed)
    for name, c in graph.consts.items():
        if c.array is None:
            ty = graph.values[name]
            c.array = rng.uniform(-1, 1, ty.shape).astype(ty.dtype)
