"""ONNX import: load, check, bind symbolic dims, infer shapes, fold, and build the one IR.

`import_onnx(model, dims)` returns a verified Graph whose values all have static types. Weights
whose data is absent (external files missing, or the models/ shape-only convention: EXTERNAL
tensors at location "__lpusim_shape_only__") become shape-only consts (array None) for
timing-only compilation. Every failure is a CompileError with a one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import CompileError
from compiler.fold import fold_constants
from compiler.interp import gathernd_flat
from compiler.ir import Graph, TensorType, const_kind, dtype_name

# Ops of the ai.onnx domain the compiler accepts: the list of issue 3 point 2, plus ops the
# torch exporter writes into mask and position subgraphs (LessOrEqual, GreaterOrEqual, Cos,
# Sin, and GatherND: the dynamo exporter's attention_mask[batch_idx, kv_idx]), CumSum
# (RoBERTa's position ids from input_ids) and Size.
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted((
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Erf",
    "Tanh", "Sigmoid", "Relu", "Gelu", "Softmax", "LogSoftmax", "LayerNormalization",
    "RMSNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "MatMul", "Gemm", "Gather",
    "GatherElements", "Transpose", "Reshape", "Flatten", "Concat", "Slice", "Split",
    "Unsqueeze", "Squeeze", "Expand", "Where", "Equal", "Less", "Greater", "Not", "And",
    "IsNaN", "Cast", "Constant", "ConstantOfShape", "Shape", "Range", "Trilu", "Identity",
    "Max", "Min", "Clip", "Attention", "RotaryEmbedding", "Size", "LessOrEqual",
    "GreaterOrEqual", "Cos", "Sin", "Or", "CastLike", "Sum", "Mod", "Pad", "GatherND",
    "CumSum", "Tile", "ArgMax",
)))

SHAPE_ONLY_LOCATION = "__lpusim_shape_only__"  # models/common.py's convention
_MAX_ROUNDS = 8
_INFER_DATA_LIMIT = 1 << 16  # consts up to this many elements keep their data for inference


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("==>"):
            return line
    return type(e).__name__


def _np_dtype(elem_type: int) -> Any:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError) as e:
        raise CompileError(f"unsupported tensor element type {elem_type}") from e


# -- loading --------------------------------------------------------------------------------


def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str, Path | None]:
    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m, model.graph.name or "<model>", None
    path = Path(model)
    src = str(model)
    if not path.exists():
        raise CompileError(f"{src}: no such file")
    if not path.is_file():
        raise CompileError(f"{src}: not a file")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, RuntimeError, ...: all mean the bytes are not a model
        raise CompileError(f"{src}: not a valid ONNX model (protobuf parse failed)") from e
    if not m.ir_version or not m.HasField("graph"):
        raise CompileError(f"{src}: not a valid ONNX model (no ir_version or graph)")
    return m, src, path.parent


def _external_location(t: TensorProto) -> str | None:
    if t.data_location != TensorProto.EXTERNAL:
        return None
    return next((e.value for e in t.external_data if e.key == "location"), "")


def _split_initializers(model: onnx.ModelProto, base: Path | None
                        ) -> tuple[dict[str, np.ndarray | None], dict[str, TensorType]]:
    """Initializer arrays (None when shape-only), loading external data that exists."""
    from onnx.external_data_helper import load_external_data_for_tensor

    arrays: dict[str, np.ndarray | None] = {}
    types: dict[str, TensorType] = {}
    for t in model.graph.initializer:
        types[t.name] = TensorType(dtype_name(_np_dtype(t.data_type)),
                                   tuple(int(d) for d in t.dims))
        loc = _external_location(t)
        if loc is not None:
            if loc == SHAPE_ONLY_LOCATION or base is None or not (base / loc).is_file():
                arrays[t.name] = None
                continue
            t2 = TensorProto()
            t2.CopyFrom(t)
            try:
                load_external_data_for_tensor(t2, str(base))
                arrays[t.name] = numpy_helper.to_array(t2)
            except Exception:  # a short or unreadable data file: treat as absent
                arrays[t.name] = None
            continue
        try:
            arrays[t.name] = numpy_helper.to_array(t)
        except Exception as e:
            raise CompileError(f"initializer {t.name!r}: cannot read its data "
                               f"({_first_line(e)})") from e
    return arrays, types


def _without_shape_only(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray | None],
                        types: Mapping[str, TensorType]) -> onnx.ModelProto:
    """A copy where data-less initializers are typed graph inputs (so the checker accepts it)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [t for t in m.graph.initializer if arrays.get(t.name) is not None
            and t.data_location != TensorProto.EXTERNAL]
    declared = {i.name for i in m.graph.input}
    for t in m.graph.initializer:
        if arrays.get(t.name) is None and t.name not in declared:
            ty = types[t.name]
            m.graph.input.append(helper.make_tensor_value_info(
                t.name, t.data_type, list(ty.shape)))
    loaded = [numpy_helper.from_array(arrays[t.name], t.name) for t in m.graph.initializer
              if arrays.get(t.name) is not None and t.data_location == TensorProto.EXTERNAL]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep + loaded)
    return m


# -- dims -----------------------------------------------------------------------------------


def _bind_dims(model: onnx.ModelProto, dims: Mapping[str, int], consts: set[str]) -> None:
    found: list[str] = []
    real_inputs = [i for i in model.graph.input if i.name not in consts]
    for inp in real_inputs:
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param not in found:
                found.append(d.dim_param)
    unknown = [k for k in dims if k not in found]
    if unknown:
        listed = ", ".join(found) if found else "none"
        raise CompileError(f"unknown dim {unknown[0]!r}; the model's symbolic dims: {listed}")
    for k, v in dims.items():
        if not isinstance(v, int | np.integer) or int(v) < 0:
            raise CompileError(f"dim {k!r} must be a non-negative integer, not {v!r}")
    for inp in real_inputs:
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            raise CompileError(f"input {inp.name!r} has no shape")
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                continue
            if d.HasField("dim_param"):
                if d.dim_param not in dims:
                    raise CompileError(f"input {inp.name!r} has a symbolic dim {d.dim_param!r} "
                                       f"with no value: pass --dim {d.dim_param}=N")
                d.dim_value = int(dims[d.dim_param])
            else:
                raise CompileError(f"input {inp.name!r} has an unnamed dim {i} with no size")


# -- conversion -----------------------------------------------------------------------------


def _attr_value(node: onnx.NodeProto, a: onnx.AttributeProto) -> Any:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                  onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS):
        raise CompileError(f"node {node.name!r} ({node.op_type}): attribute {a.name!r} of a "
                           f"subgraph or sparse type is not supported")
    v = helper.get_attribute_value(a)
    if isinstance(v, TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, float):
        return float(str(np.float32(v)))
    if isinstance(v, list):
        return tuple(x.decode() if isinstance(x, bytes) else
                     float(str(np.float32(x))) if isinstance(x, float) else
                     numpy_helper.to_array(x) if isinstance(x, TensorProto) else x for x in v)
    return v


def _static_type(vi: onnx.ValueInfoProto) -> TensorType | None:
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if not tt.elem_type or not tt.HasField("shape"):
        return None
    shape = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        shape.append(int(d.dim_value))
    return TensorType(dtype_name(_np_dtype(tt.elem_type)), tuple(shape))


def _to_graph(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray | None],
              itypes: Mapping[str, TensorType]) -> Graph:
    mg = model.graph
    graph = Graph(mg.name or "main")
    opsets = {o.domain if o.domain != "ai.onnx" else "": int(o.version)
              for o in model.opset_import}
    graph.meta["opset"] = opsets.get("", 1)
    extra = {k: v for k, v in sorted(opsets.items()) if k}
    if extra:
        graph.meta["opsets"] = extra
    for name, arr in arrays.items():
        ty = itypes[name]
        graph.add_const(name, arr, ty=ty, kind=const_kind(ty.dtype, ty.shape))
    for inp in mg.input:
        if inp.name in arrays:
            continue
        ty = _static_type(inp)
        if ty is None:
            raise CompileError(f"input {inp.name!r} has no static shape")
        graph.add_input(inp.name, ty)
    for i, node in enumerate(mg.node):
        attrs = {a.name: _attr_value(node, a) for a in node.attribute}
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if node.op_type == "Constant" and not domain:
            from compiler.fold import _constant_attr

            arr = np.asarray(_constant_attr(node.name, attrs))
            if "value_float" in attrs or "value_int" in attrs:
                arr = arr.reshape(())
            graph.add_const(node.output[0], arr, kind="const")
            continue
        name = node.name if node.name and node.name not in graph.g else \
            graph.fresh_name(node.name or f"{node.op_type.lower()}_{i}")
        graph.add_node(name, node.op_type, list(node.input), list(node.output), attrs,
                       domain=domain, order=i)
    graph.outputs = [o.name for o in mg.output]
    return graph


def _to_onnx_for_inference(graph: Graph) -> onnx.ModelProto:
    """The graph as ONNX for shape inference: small consts with data are initializers; the
    rest are typed inputs (inference needs their types, not their data)."""
    inits, inputs = [], []
    for name in graph.inputs:
        ty = graph.values[name]
        inputs.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(_np(ty.dtype)), list(ty.shape)))
    for name, c in graph.consts.items():
        ty = graph.values[name]
        if c.array is not None and c.array.size <= _INFER_DATA_LIMIT:
            inits.append(numpy_helper.from_array(c.array, name))
        else:
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(_np(ty.dtype)), list(ty.shape)))
    nodes = []
    for n in graph.topo_order():
        a = graph.node(n)
        attrs = {k: (numpy_helper.from_array(v) if isinstance(v, np.ndarray) else
                     list(v) if isinstance(v, tuple) else v)
                 for k, v in a["attrs"].items() if not (isinstance(v, tuple) and not v)}
        nodes.append(helper.make_node(a["op"], a["inputs"], a["outputs"], name=n,
                                      domain=a["domain"], **attrs))
    outputs = []
    for o in graph.outputs:
        ty = graph.values.get(o)
        outputs.append(helper.make_tensor_value_info(o, 0, None) if ty is None else
                       helper.make_tensor_value_info(
                           o, helper.np_dtype_to_tensor_dtype(_np(ty.dtype)), list(ty.shape)))
    opsets = [helper.make_opsetid("", int(graph.meta.get("opset", 1)))]
    opsets += [helper.make_opsetid(d, v) for d, v in graph.meta.get("opsets", {}).items()]
    g = helper.make_graph(nodes, graph.name, inputs, outputs, inits)
    return helper.make_model(g, opset_imports=opsets, ir_version=10)


def _np(dtype: str) -> Any:
    if dtype == "bfloat16" or dtype.startswith("float8"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, dtype))
    return np.dtype(dtype)


def _infer(graph: Graph) -> tuple[int, str | None]:
    """Run ONNX shape inference (with data propagation) and record every static type found.
    Returns (number of types added or changed, the strict-mode error if any)."""
    model = _to_onnx_for_inference(graph)
    strict_error = None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:  # InferenceError and friends
        strict_error = _first_line(e)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    changed = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name in graph.consts or vi.name in graph.inputs:
            continue
        ty = _static_type(vi)
        if ty is not None and graph.values.get(vi.name) != ty:
            graph.values[vi.name] = ty
            changed += 1
    return changed, strict_error


# -- entry point ----------------------------------------------------------------------------


def import_onnx(model: str | Path | onnx.ModelProto,
                dims: Mapping[str, int] | None = None) -> Graph:
    """Load an ONNX model into the IR with every shape static (see the module docstring)."""
    proto, src, base = _load(model)
    arrays, itypes = _split_initializers(proto, base)
    checkable = _without_shape_only(proto, arrays, itypes)
    try:
        onnx.checker.check_model(checkable)
    except Exception as e:  # ValidationError, or a proto too large to check in memory
        raise CompileError(f"{src}: invalid ONNX model: {_first_line(e)}") from e
    _check_ops(proto)
    _bind_dims(proto, dims or {}, set(arrays))
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    graph = _to_graph(proto, arrays, itypes)
    strict_error = None
    for _ in range(_MAX_ROUNDS):
        added, err = _infer(graph)
        strict_error = strict_error or err
        folded = fold_constants(graph)
        if not added and not folded:
            break
    _check_static(graph, strict_error)
    _castlike_to_cast(graph)
    _sum_to_adds(graph)
    _gathernd_to_gather(graph)
    _cumsum_to_adds(graph)
    _tile_to_concats(graph)
    graph.verify()
    return graph


def _castlike_to_cast(graph: Graph) -> None:
    """CastLike(x, like) is Cast(x, to=like's element type) once types are known: one op for
    the passes and the backend."""
    for n in graph.topo_order():
        a = graph.node(n)
        if a["op"] != "CastLike" or a.get("domain"):
            continue
        to = _elem_type(graph.values[a["inputs"][1]].dtype)
        a["op"] = "Cast"
        a["attrs"] = {"to": to, **({"saturate": a["attrs"]["saturate"]}
                                   if "saturate" in a["attrs"] else {})}
        graph.set_inputs(n, a["inputs"][:1])


def _sum_to_adds(graph: Graph) -> None:
    """Sum(x1, ..., xn) as a chain of binary Adds (Identity for one input)."""
    for n in graph.topo_order():
        a = graph.node(n)
        if a["op"] != "Sum" or a.get("domain"):
            continue
        xs, y, order = list(a["inputs"]), a["outputs"][0], a["order"]
        if len(xs) == 1:
            a["op"] = "Identity"
            continue
        graph.remove_node(n)
        acc = xs[0]
        for i, x in enumerate(xs[1:], start=1):
            if i == len(xs) - 1:
                out, ty = y, None
            else:
                out = graph.fresh_name(f"{y}_sum{i}")
                shape = np.broadcast_shapes(graph.values[acc].shape, graph.values[x].shape)
                ty = TensorType(graph.values[acc].dtype, tuple(int(d) for d in shape))
            graph.add_node(graph.fresh_name(f"{n}_add{i}"), "Add", [acc, x], [out],
                           types=None if ty is None else [ty], order=order)
            acc = out


def _gathernd_to_gather(graph: Graph) -> None:
    """GatherND(x, idx) with idx known at compile time (the dynamo exporter's
    attention_mask[batch_idx, kv_idx], whose indices are ranges over bound dims) as
    Gather(Reshape(x, [prod(x.shape[:b + k]), *x.shape[b + k:]]), flat idx, axis=0): one op
    the backend has; a Reshape alone when the indices take every slice once, in order.
    Indices computed at run time: _gathernd_run_time."""
    for n in graph.topo_order():
        a = graph.node(n)
        if a["op"] == "GatherND" and not a.get("domain"):
            _gathernd_node(graph, n, a)


def _gathernd_node(graph: Graph, n: str, a: dict) -> None:
    x, idx = a["inputs"][:2]
    arr = graph.const_array(idx)
    if arr is None:
        _gathernd_run_time(graph, n, a)
        return
    b = int(a["attrs"].get("batch_dims", 0))
    xt = graph.values[x]
    try:
        flat = gathernd_flat(arr, xt.shape, b)
    except ValueError as e:
        raise CompileError(f"GatherND (node {n!r}): {e}") from None
    k = int(arr.shape[-1])
    y, order = a["outputs"][0], a["order"]
    yt = graph.values[y]
    graph.remove_node(n)
    lead = int(np.prod(xt.shape[:b + k], dtype=np.int64))
    if flat.size == lead and np.array_equal(flat.reshape(-1), np.arange(lead)):
        _reshape_node(graph, n, x, yt.shape, y, order)  # every slice once, in order
        return
    at = graph.add_const(graph.fresh_name(f"{n}_indices"), flat, kind="const")
    _gather_rows(graph, n, x, b + k, at, tuple(flat.shape), y, order)


def _gather_rows(graph: Graph, n: str, x: str, lead_dims: int, at: str,
                 index_shape: tuple[int, ...], y: str, order: float) -> None:
    """y = Gather(Reshape(x, [prod(x.shape[:lead_dims]), *rest]), at, axis=0), rest at least
    one column (the backend gathers rows, not lanes; single elements are rows of one column,
    reshaped to y's shape after)."""
    xt, yt = graph.values[x], graph.values[y]
    lead = int(np.prod(xt.shape[:lead_dims], dtype=np.int64))
    rest = tuple(xt.shape[lead_dims:]) or (1,)
    flat_x = _reshape_node(graph, n, x, (lead,) + rest, None, order)
    if rest == tuple(xt.shape[lead_dims:]):
        graph.add_node(graph.fresh_name(f"{n}_gather"), "Gather", [flat_x, at], [y],
                       {"axis": 0}, order=order)
        return
    rows = graph.fresh_name(f"{y}_rows")
    graph.add_node(graph.fresh_name(f"{n}_gather"), "Gather", [flat_x, at], [rows],
                   {"axis": 0}, types=[TensorType(xt.dtype, index_shape + (1,))],
                   order=order)
    _reshape_node(graph, n, rows, yt.shape, y, order)


def _gathernd_run_time(graph: Graph, n: str, a: dict) -> None:
    """GatherND with indices computed at run time (the dynamo exporter's
    logits[arange(batch), last_token] in sequence-classification heads): the flat row of
    each index tuple, sum_j idx[..., j] * stride_j (a negative index counts from the end of
    its dim) plus the batch position's offset, in int64 arithmetic, then a Gather of rows of
    x reshaped to [prod(x.shape[:b + k]), *x.shape[b + k:]]. An index out of range is not
    checked (the reference would reject it)."""
    x, idx = a["inputs"][:2]
    y, order = a["outputs"][0], a["order"]
    xt, it = graph.values[x], graph.values[idx]
    b = int(a["attrs"].get("batch_dims", 0))
    k = int(it.shape[-1])
    if not 1 <= k <= xt.rank - b or tuple(it.shape[:b]) != tuple(xt.shape[:b]):
        raise CompileError(f"GatherND (node {n!r}): indices of shape {list(it.shape)} do not "
                           f"fit data of shape {list(xt.shape)} with batch_dims {b}")
    graph.remove_node(n)
    dims = [int(d) for d in xt.shape[b:b + k]]
    col_shape = tuple(it.shape[:-1]) + (1,)

    def const(name: str, arr) -> str:
        return graph.add_const(graph.fresh_name(f"{n}_{name}"), np.asarray(arr), kind="const")

    def node(op: str, ins: list[str], shape: tuple, dtype: str = "int64", **attrs) -> str:
        out = graph.fresh_name(f"{y}_{op.lower()}")
        graph.add_node(graph.fresh_name(f"{n}_{op.lower()}"), op, ins, [out], attrs,
                       types=[TensorType(dtype, shape)], order=order)
        return out

    zero = const("zero", np.int64(0))
    flat = None
    for j, d in enumerate(dims):
        col = node("Slice", [idx, const("start", [j]), const("end", [j + 1]),
                             const("axes", [-1])], col_shape)
        neg = node("Less", [col, zero], col_shape, "bool")
        col = node("Where", [neg, node("Add", [col, const("dim", np.int64(d))], col_shape),
                             col], col_shape)
        stride = int(np.prod(dims[j + 1:], dtype=np.int64))
        term = col if stride == 1 else node("Mul", [col, const("stride", np.int64(stride))],
                                            col_shape)
        flat = term if flat is None else node("Add", [flat, term], col_shape)
    if b:  # each batch position's first row
        base = np.arange(int(np.prod(it.shape[:b], dtype=np.int64)), dtype=np.int64) \
            * int(np.prod(dims, dtype=np.int64))
        base = base.reshape(tuple(it.shape[:b]) + (1,) * (len(col_shape) - b))
        flat = node("Add", [flat, const("base", base)], col_shape)
    flat = _reshape_node(graph, n, flat, tuple(it.shape[:-1]), None, order)
    _gather_rows(graph, n, x, b + k, flat, tuple(it.shape[:-1]), y, order)


def _reshape_node(graph: Graph, n: str, v: str, shape: tuple[int, ...], out: str | None,
                  order: float) -> str:
    """A Reshape of v to `shape` (named after node n) into out, or a new value; its name."""
    c = graph.add_const(graph.fresh_name(f"{n}_shape"), np.array(shape, dtype=np.int64),
                        kind="const")
    new = out is None
    out = out or graph.fresh_name(f"{v}_{n}")
    graph.add_node(graph.fresh_name(f"{n}_reshape"), "Reshape", [v, c], [out],
                   types=[TensorType(graph.values[v].dtype, tuple(shape))] if new else None,
                   order=order)
    return out


def _cumsum_to_adds(graph: Graph) -> None:
    """CumSum(x, axis) as a scan in log2(n) steps (n: the axis' extent): x += x shifted by 1,
    2, 4, ... along the axis (a Concat of zeros and a Slice of x), then (exclusive) shifted
    once more. Exact for integers (RoBERTa's position ids); for floats the additions' order
    differs from a running sum."""
    for n in graph.topo_order():
        a = graph.node(n)
        if a["op"] == "CumSum" and not a.get("domain"):
            _cumsum_node(graph, n, a)


def _cumsum_node(graph: Graph, n: str, a: dict) -> None:
    x, axis_v = a["inputs"][:2]
    y, order = a["outputs"][0], a["order"]
    axis_a = graph.const_array(axis_v)
    if axis_a is None or axis_a.size != 1:
        raise CompileError(f"CumSum (node {n!r}): an axis computed at run time is not "
                           "lowered; it must be a constant")
    xt = graph.values[x]
    if not xt.rank:
        raise CompileError(f"CumSum (node {n!r}): the input is a scalar")
    axis = int(axis_a.reshape(-1)[0])
    if not -xt.rank <= axis < xt.rank:
        raise CompileError(f"CumSum (node {n!r}): axis {axis} is out of range for rank "
                           f"{xt.rank}")
    axis %= xt.rank
    reverse = bool(a["attrs"].get("reverse", 0))
    exclusive = bool(a["attrs"].get("exclusive", 0))
    graph.remove_node(n)
    steps = []
    s = 1
    while s < xt.shape[axis]:
        steps.append(s)
        s *= 2
    cur = x
    for i, s in enumerate(steps):
        last = i == len(steps) - 1 and not exclusive
        out = y if last else graph.fresh_name(f"{y}_scan{s}")
        moved = _shifted(graph, n, cur, s, axis, reverse, None, order)
        graph.add_node(graph.fresh_name(f"{n}_add"), "Add", [cur, moved], [out],
                       types=None if last else [xt], order=order)
        cur = out
    if exclusive and xt.shape[axis]:
        _shifted(graph, n, cur, 1, axis, reverse, y, order)
    elif cur != y:  # one element (or none) along the axis: the sum is the input
        graph.add_node(graph.fresh_name(f"{n}_identity"), "Identity", [cur], [y], order=order)


def _tile_to_concats(graph: Graph) -> None:
    """Tile(x, repeats) as a Concat of r copies along every axis repeated r > 1 times (the
    TorchScript exporter writes repeat_interleave, in GPT-J's, CodeGen's and Cohere's rotary
    tables, as Unsqueeze, Tile and Reshape). The repeats must be constants once the dims are
    bound (they are Shape arithmetic when they are not literals)."""
    for n in graph.topo_order():
        a = graph.node(n)
        if a["op"] != "Tile" or a.get("domain"):
            continue
        x, rep_v = a["inputs"][:2]
        y, order = a["outputs"][0], a["order"]
        reps = graph.const_array(rep_v)
        xt = graph.values[x]
        if reps is None:
            raise CompileError(f"Tile (node {n!r}): repeats computed at run time are not "
                               "lowered; they must be constants once the dims are bound")
        reps = [int(r) for r in np.asarray(reps).reshape(-1)]
        if len(reps) != xt.rank or any(r < 0 for r in reps):
            raise CompileError(f"Tile (node {n!r}): repeats {reps} do not fit an input of rank "
                               f"{xt.rank} (one count of 0 or more per axis)")
        if 0 in reps:
            raise CompileError(f"Tile (node {n!r}): repeats {reps} give an empty tensor, which "
                               "is not lowered")
        graph.remove_node(n)
        shape = list(xt.shape)
        cur = x
        axes = [d for d, r in enumerate(reps) if r != 1]
        for i, d in enumerate(axes):
            shape[d] *= reps[d]
            last = i == len(axes) - 1
            out = y if last else graph.fresh_name(f"{y}_tile{d}")
            graph.add_node(graph.fresh_name(f"{n}_concat"), "Concat", [cur] * reps[d], [out],
                           {"axis": d}, types=None if last else [TensorType(xt.dtype,
                                                                            tuple(shape))],
                           order=order)
            cur = out
        if cur != y:  # every count 1: the input itself
            graph.add_node(graph.fresh_name(f"{n}_identity"), "Identity", [cur], [y],
                           order=order)


def _shifted(graph: Graph, n: str, v: str, s: int, axis: int, reverse: bool,
             out: str | None, order: float) -> str:
    """v moved s places along the axis (towards its end, or its start with reverse), zeros
    where nothing moved in: a Slice and a Concat named after node n, into out or a new value."""
    vt = graph.values[v]
    size = vt.shape[axis]

    def const(name: str, arr: np.ndarray) -> str:
        return graph.add_const(graph.fresh_name(f"{n}_{name}"), arr, kind="const")

    part = tuple(s if d == axis else e for d, e in enumerate(vt.shape))
    rest = tuple(size - s if d == axis else e for d, e in enumerate(vt.shape))
    zeros = const("zeros", np.zeros(part, dtype=np.dtype(vt.dtype)))
    lo, hi = (s, size) if reverse else (0, size - s)
    kept = graph.fresh_name(f"{v}_kept")
    graph.add_node(graph.fresh_name(f"{n}_slice"), "Slice",
                   [v, const("start", np.array([lo], np.int64)),
                    const("end", np.array([hi], np.int64)),
                    const("axes", np.array([axis], np.int64))], [kept],
                   types=[TensorType(vt.dtype, rest)], order=order)
    new = out is None
    out = out or graph.fresh_name(f"{v}_shift{s}")
    graph.add_node(graph.fresh_name(f"{n}_concat"), "Concat",
                   [kept, zeros] if reverse else [zeros, kept], [out], {"axis": axis},
                   types=[vt] if new else None, order=order)
    return out


def _elem_type(dtype: str) -> int:
    """IR dtype name -> ONNX TensorProto element type."""
    for e in TensorProto.DataType.values():
        try:
            if str(helper.tensor_dtype_to_np_dtype(e)) == dtype:
                return int(e)
        except (KeyError, ValueError):
            continue
    raise CompileError(f"no ONNX element type for {dtype}")


def _check_ops(model: onnx.ModelProto) -> None:
    supported = set(SUPPORTED_OPS)
    for i, node in enumerate(model.graph.node):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if domain or node.op_type not in supported:
            op = f"{domain}::{node.op_type}" if domain else node.op_type
            raise CompileError(f"unsupported op {op!r} (node {node.name or f'#{i}'!r}); "
                               f"supported: {', '.join(SUPPORTED_OPS)}")


def _check_static(graph: Graph, strict_error: str | None) -> None:
    why = f" (shape inference: {strict_error})" if strict_error else ""
    for n in graph.topo_order():
        a = graph.node(n)
        for o in a["outputs"]:
            if o and o not in graph.values:
                raise CompileError(f"value {o!r} (output of node {n!r}, {a['op']}) has no "
                                   f"static shape after shape inference and folding{why}")
    for o in graph.outputs:
        if o not in graph.values:
            raise CompileError(f"graph output {o!r} is not produced by any node")
