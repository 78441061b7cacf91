"""IR graph -> Program: place tensors, lower and schedule every op in order, emit queues."""

from __future__ import annotations

import numpy as np

from compiler.backend import lower
from compiler.backend.placement import Allocator, Placement, rows_cols
from compiler.backend.schedule import Scheduler
from compiler.errors import CompileError
from compiler.ir import Graph
from isa.dtypes import dtype as dtype_info
from isa.dtypes import numpy_dtype
from isa.encoding import encode, to_words
from lpusim.program import ChipProgram, Program, TensorSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# The element type MatMul weights and activations have on the MXM under each policy; tensors
# stay fp32 elsewhere, products accumulate in fp32. int8 and fp8 need scales (per output
# channel for weights) and are not implemented yet.
MXM_POLICY = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
NORMS = {"LayerNormalization", "RMSNormalization"}
REDUCES = {"ReduceMean": "mean", "ReduceSum": "sum"}
# Gelu as a sequence of VXM passes: (ALU ops, B operand: a float immediate, "x" for the op's
# input, or None)
_S2, _SPI = 1 / np.sqrt(2.0), np.sqrt(2 / np.pi)
GELU = {
    "none": [(["mul"], _S2), (["erf"], None), (["add"], 1.0), (["mul"], "x"), (["mul"], 0.5)],
    "tanh": [(["mul"], "x"), (["mul"], "x"), (["mul"], 0.044715), (["add"], "x"),
             (["mul"], _SPI), (["tanh"], None), (["add"], 1.0), (["mul"], "x"), (["mul"], 0.5)],
}
LOWERED_OPS = tuple(sorted(set(lower.UNARY) | set(lower.BINARY) | set(lower.CHAINS)
                           | lower.ALIASES | lower.MATMULS | NORMS | set(REDUCES)
                           | {"Gelu", "Softmax", "Clip"}))
# IR dtype -> machine dtype in the fp32 exact mode
_MACHINE = {"float32": "fp32"}


def _machine_dtype(ir_dtype: str, what: str) -> str:
    try:
        return _MACHINE[ir_dtype]
    except KeyError:
        raise CompileError(f"{what}: element type {ir_dtype} is not lowered yet "
                           f"(lowered: {', '.join(_MACHINE)})") from None


def compile_graph(graph: Graph, arch, *, precision: str = "fp32") -> Program:
    """Lower a canonicalised graph to a single-chip Program for `arch`."""
    if precision not in PRECISIONS:
        raise CompileError(f"unknown precision {precision!r} (choose from "
                           f"{', '.join(PRECISIONS)})")
    if precision not in MXM_POLICY:
        raise CompileError(f"precision {precision} is not implemented yet (implemented: "
                           f"{', '.join(MXM_POLICY)})")
    mxm_dtype = MXM_POLICY[precision]
    arch.mxm_rate_of(mxm_dtype)  # the preset must accept it on the MXM
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] not in LOWERED_OPS:
            raise CompileError(f"op {nd['op']!r} (node {name!r}) is not lowered to the machine "
                               f"yet; lowered ops: {', '.join(LOWERED_OPS)}")
    west = [q.index for q in arch.queues if q.kind == "MEM" and q.hemisphere == "W"]
    _check_fits(graph, arch, len(west))
    alloc = Allocator(arch, west)
    sch = Scheduler(arch)
    ready: dict[str, int] = {}
    # values whose lanes past the last column are finite (graph inputs and constants hold
    # zeros there)
    clean: dict[str, bool] = {v: True for v in list(graph.inputs) + list(graph.consts)}
    # values [..., 1] held as one vector per row with the value in every lane (MXM row sums)
    spread: set[str] = set()

    class _Places(dict):
        """Constants get SRAM only when an op reads them as data (not as a shape operand or
        an immediate)."""

        def __missing__(self, v):
            if not graph.is_const(v):
                raise KeyError(v)
            p, _ = new(v)
            ready[v] = 0
            return p

    place: dict[str, Placement] = _Places()
    typed: dict[tuple[str, str], Placement] = {}  # a constant stored in another element type

    def as_type(v: str, md: str) -> Placement:
        """Constant v as machine dtype md (the weights of a reduced-precision MatMul)."""
        if md == _machine_dtype(graph.values[v].dtype, f"value {v!r}"):
            return place[v]
        if (v, md) not in typed:
            ty = graph.values[v]
            typed[(v, md)], _ = alloc.alloc(md, tuple(ty.shape), dtype_info(md).nbytes,
                                            resident=True)
        return typed[(v, md)]

    def spread_scalar(v: str) -> str:
        """A value of one element, spread into every lane of one vector by the MXM (x @ a row
        of ones); returns the name its placement is registered under."""
        name = f"__spread_{v}"
        if name not in place:
            ones = "__ones_row"
            if ones not in graph.consts:
                graph.add_const(ones, np.ones((1, arch.lanes), np.float32), kind="const")
            src = place[v]
            sp, after = alloc.alloc(src.dtype, (1, arch.lanes), len(src.slices))
            ready[name] = lower.matmul(sch, src, place[ones], sp,
                                       max(ready.get(v, 0), after), f"spread {v}",
                                       zero=zero(src.dtype))
            place[name] = sp
            clean[name] = True
        return name

    def zero(mdtype: str) -> Placement:
        """A zero vector of a machine dtype (the padding rows of short weight tiles)."""
        name = "__zero"
        if name not in graph.consts:
            graph.add_const(name, np.zeros(arch.lanes, np.float32), kind="const")
        return as_type(name, mdtype)
    tensors: list[TensorSpec] = []

    def new(value: str, not_before: int = 0) -> tuple[Placement, int]:
        ty = graph.values[value]
        md = _machine_dtype(ty.dtype, f"value {value!r}")
        resident = value in graph.consts or value in graph.inputs
        p, after = alloc.alloc(md, tuple(ty.shape), dtype_info(md).nbytes, resident=resident)
        place[value] = p
        return p, max(after, not_before)

    for v in graph.inputs:
        new(v)
        ready[v] = 0
    last_use = _last_uses(graph)
    order = graph.topo_order()
    for name in order:
        nd = graph.node(name)
        op, ins, outs = nd["op"], list(nd["inputs"]), nd["outputs"]
        what = f"{op} (node {name!r})"
        if any(v and graph.values[v].size == 0 for v in list(ins) + list(outs)):
            raise CompileError(f"{what}: tensors with no elements are not lowered yet")
        start = max([ready.get(i, 0) for i in ins if i] + [0])
        if op in lower.ALIASES or (op == "Identity"):
            src = place[ins[0]]
            ty = graph.values[outs[0]]
            rows, cols = rows_cols(tuple(ty.shape))
            if cols != src.cols:
                raise CompileError(f"{what}: a reshape that changes the last dimension "
                                   f"({src.cols} -> {cols}) is not lowered yet")
            place[outs[0]] = Placement(src.dtype, tuple(ty.shape), rows, cols, src.vpr,
                                       src.slices, src.addr)
            ready[outs[0]] = ready[ins[0]]
            clean[outs[0]] = clean.get(ins[0], False)
            continue
        out = outs[0]
        if op in lower.MATMULS:
            x = place[ins[0]]
            if x.cols % arch.lanes and not clean.get(ins[0], False):
                raise CompileError(f"{what}: the activation's lanes past its last column may "
                                   "hold inf or NaN (it comes from an op like Reciprocal or "
                                   "Log); masking them is not lowered yet")
            clean[out] = True
            if not graph.is_const(ins[1]):
                raise CompileError(f"{what}: the weight must be a constant (activation x "
                                   "activation matmul is not lowered yet)")
            bias = ins[2] if len(ins) > 2 and ins[2] else None
            w = as_type(ins[1], mxm_dtype)
            t_x = start
            xq = x
            if mxm_dtype != x.dtype:  # round the activations to the MXM's type on the VXM
                xq, a = alloc.alloc(mxm_dtype, x.shape, dtype_info(mxm_dtype).nbytes,
                                    avoid=frozenset(x.slices))
                t_x = lower.elementwise(sch, ["cvt"], x, None, None, xq, max(start, a),
                                        what + " activations to " + mxm_dtype)
            if bias is None:
                y, nb = new(out, t_x)
                ready[out] = lower.matmul(sch, xq, w, y, max(t_x, nb), what,
                                          zero=zero(w.dtype))
            else:
                tmp_ty = graph.values[out]
                mdt = _machine_dtype(tmp_ty.dtype, what)
                tmp, nb = alloc.alloc(mdt, tuple(tmp_ty.shape), dtype_info(mdt).nbytes)
                t1 = lower.matmul(sch, xq, w, tmp, max(t_x, nb), what, zero=zero(w.dtype))
                y, nb2 = new(out, t1)
                ready[out] = lower.elementwise(sch, ["add"], tmp, place[bias], None, y,
                                               max(t1, nb2), what + " bias")
                alloc.release(tmp, ready[out])
            if xq is not x:
                alloc.release(xq, ready[out])
        elif op in NORMS:
            ready[out] = _norm(graph, arch, sch, alloc, nd, place, new, start, what, zero,
                               clean, spread)
            clean[out] = True
        elif op == "Softmax":
            ready[out] = _softmax(graph, arch, sch, alloc, nd, place, new, start, what, zero,
                                  clean)
            clean[out] = True
        elif op == "Clip":
            ready[out], clean[out] = _clip(graph, sch, alloc, nd, place, new, start, what,
                                           clean, spread_scalar, lambda v: ready.get(v, 0))
        elif op == "Gelu":
            ready[out] = _sequence(sch, alloc, place[ins[0]], new, out, start, what,
                                   GELU[str(nd["attrs"].get("approximate", "none"))])
            clean[out] = clean.get(ins[0], False)
        elif op in REDUCES:
            ready[out] = _reduce(graph, arch, sch, nd, place, new, start, what, zero, clean,
                                 REDUCES[op])
            clean[out] = True
            spread.add(out)
        else:
            ready[out], clean[out] = _elementwise(graph, sch, alloc, nd, place, new, start,
                                                  what, clean, spread,
                                                  lambda v: ready.get(v, 0), spread_scalar)
        # free the inputs whose last reader this was (never graph inputs, outputs or consts)
        for i in ins:
            if i and last_use.get(i) == name and i not in graph.outputs \
                    and i not in graph.inputs and not graph.is_const(i) and i in place:
                if not _aliased(i, place, graph.outputs):
                    alloc.release(place[i], ready[out])
    for v in graph.inputs:
        tensors.append(_spec(v, "input", place[v], None))
    for v, c in graph.consts.items():
        kind = "weight" if c.kind == "weight" else "const"
        if v in place:
            tensors.append(_spec(v, kind, place[v], c.array))
    for (v, md), p in sorted(typed.items()):
        tensors.append(_spec(f"{v}@{md}", "weight" if graph.consts[v].kind == "weight"
                             else "const", p, graph.consts[v].array))
    for v in graph.outputs:
        if v in graph.inputs or graph.is_const(v):
            raise CompileError(f"graph output {v!r} is an input or a constant: nothing to "
                               "compute")
        tensors.append(_spec(v, "output", place[v], None))
    _check_distinct(tensors)
    chip = _emit(sch, arch)
    return Program(arch.config, [chip], tensors, {"generator": "lpusim compile",
                                                  "precision": precision,
                                                  "graph": graph.name})


def _clip(graph, sch, alloc, nd, place, new, start, what, clean, spread_scalar,
          ready_of) -> tuple[int, bool]:
    """Clip(x, lo, hi) = min(max(x, lo), hi); constant bounds are immediates, others are
    spread over a vector first."""
    ins = nd["inputs"]
    bounds = []
    for k, attr in ((1, "min"), (2, "max")):
        v = ins[k] if len(ins) > k and ins[k] else None
        if v is not None:
            if graph.values[v].size != 1:
                raise CompileError(f"{what}: a {attr} bound of more than one element")
            arr = graph.const_array(v) if graph.is_const(v) else None
            if arr is None:
                name = spread_scalar(v)
                start = max(start, ready_of(name))
                bounds.append((["max" if k == 1 else "min"], place[name]))
            else:
                bounds.append((["max" if k == 1 else "min"], float(arr.reshape(-1)[0])))
        elif attr in nd["attrs"]:  # opset < 11
            bounds.append((["max" if k == 1 else "min"], float(nd["attrs"][attr])))
    if not bounds:
        bounds = [(["copy"], None)]
    x = place[ins[0]]
    t = _sequence(sch, alloc, x, new, nd["outputs"][0], start, what, bounds)
    ops = [o for step in bounds for o in step[0]]
    b = bounds[-1][1]
    return t, (clean.get(ins[0], False) and isinstance(b, float | None)
               and lower.finite_at_zero(ops, b))


def _sequence(sch, alloc, x: Placement, new, out: str, start: int, what: str, steps) -> int:
    """Elementwise passes in order, each reading the previous result (and maybe x)."""
    cur, t = x, start
    for k, (ops, b) in enumerate(steps):
        if k == len(steps) - 1:
            dst, a = new(out, t)
        else:
            # temporaries avoid x's slices: a pass may read both in one cycle
            dst, a = alloc.alloc(x.dtype, x.shape, len(x.slices), avoid=frozenset(x.slices))
        if isinstance(b, Placement):
            t = lower.elementwise(sch, ops, cur, b, None, dst, max(t, a), what)
        elif b == "x":
            if cur is x:
                t = lower.elementwise(sch, ops, x, None, None, dst, max(t, a), what, y_is_x=True)
            else:
                t = lower.elementwise(sch, ops, cur, x, None, dst, max(t, a), what)
        else:
            t = lower.elementwise(sch, ops, cur, None, b, dst, max(t, a), what)
        if cur is not x:
            alloc.release(cur, t)
        cur = dst
    return t


def _softmax(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean) -> int:
    """Softmax over the last axis of rows of at most 320 columns:
        xm = x + pad mask (-inf past the last column); m = row max, by rotating the vector
        through the SXM by 1, 2, 4, ... 256 lanes and taking the max on the VXM (cyclic windows
        that double cover all 320 lanes); e = exp(xm - m); s = e @ ones (MXM); y = e / s."""
    x_name = nd["inputs"][0]
    xt = graph.values[x_name]
    rank = len(xt.shape)
    axis = int(nd["attrs"].get("axis", -1))
    if axis % max(rank, 1) != rank - 1:
        raise CompileError(f"{what}: softmax over an axis other than the last is not lowered "
                           "yet")
    x = place[x_name]
    if x.cols > arch.lanes:
        raise CompileError(f"{what}: softmax over rows of more than {arch.lanes} columns is "
                           "not lowered yet")
    if not clean.get(x_name, False) and x.cols % arch.lanes:
        raise CompileError(f"{what}: the input's lanes past its last column may hold inf or "
                           "NaN; masking them is not lowered yet")
    g = len(x.slices)
    shape = tuple(xt.shape)

    def temp():
        return alloc.alloc(x.dtype, shape, g, avoid=frozenset(x.slices))

    t = start
    temps = []
    cur = x
    if x.cols < arch.lanes:
        mask = f"__softmax_pad_{x.cols}"
        if mask not in graph.consts:
            row = np.zeros(arch.lanes, np.float32)
            row[x.cols:] = -np.inf
            graph.add_const(mask, row.reshape(1, arch.lanes), kind="const")
        # the mask is one 320-lane vector: read it once per row (the "row" broadcast)
        mp = place[mask]
        cur, a = temp()
        temps.append(cur)
        t = lower.elementwise(sch, ["add"], x, mp, None, cur, max(t, a), what + " pad mask")
    xm = cur
    m = xm
    shift = 1
    while shift < arch.lanes:
        rot, a = temp()
        t = lower.sxm_rotate(sch, m, rot, shift, max(t, a), what + " max")
        nxt, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(rot.slices))
        t = lower.elementwise(sch, ["max"], m, rot, None, nxt, max(t, a), what + " max")
        alloc.release(rot, t)
        if m is not xm:
            alloc.release(m, t)
        m = nxt
        shift *= 2
    e, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(xm.slices) | frozenset(m.slices))
    t = lower.elementwise(sch, ["sub", "exp"], xm, m, None, e, max(t, a), what + " exp")
    alloc.release(m, t)
    J = _row_matrix(graph, arch, place, x.cols, 1.0)
    s, a = alloc.alloc(x.dtype, (x.rows, arch.lanes), g, avoid=frozenset(e.slices))
    t = lower.matmul(sch, e, J, s, max(t, a), what + " sum", zero=zero(x.dtype))
    y, a = new(nd["outputs"][0], t)
    t = lower.elementwise(sch, ["div"], e, s, None, y, max(t, a), what, y_mode="col")
    for p in temps + [e, s]:
        alloc.release(p, t)
    return t


def _row_matrix(graph, arch, place, cols: int, scale: float) -> Placement:
    """The [cols, 320] matrix whose product with a row leaves scale * (row sum) in every lane."""
    name = f"__rowsum_{cols}_{scale!r}"
    if name not in graph.consts:
        graph.add_const(name, np.full((cols, arch.lanes), scale, np.float32), kind="const")
    return place[name]


def _last_axis(graph, nd, what) -> None:
    ins = nd["inputs"]
    rank = len(graph.values[ins[0]].shape)
    axes = nd["attrs"].get("axes")
    if len(ins) > 1 and ins[1]:
        arr = graph.const_array(ins[1]) if graph.is_const(ins[1]) else None
        axes = None if arr is None else tuple(int(a) for a in arr.reshape(-1))
    if axes is None or [a % rank for a in axes] != [rank - 1]:
        raise CompileError(f"{what}: reductions over axes other than the last are not lowered "
                           "yet")
    if not int(nd["attrs"].get("keepdims", 1)):
        raise CompileError(f"{what}: keepdims=0 is not lowered yet")


def _reduce(graph, arch, sch, nd, place, new, start, what, zero, clean, kind) -> int:
    """ReduceMean / ReduceSum over the last axis: one MXM pass against a matrix of 1/cols (or
    ones); the result holds the row's value in every lane of one vector per row."""
    _last_axis(graph, nd, what)
    x_name = nd["inputs"][0]
    x = place[x_name]
    if not clean.get(x_name, False) and x.cols % arch.lanes:
        raise CompileError(f"{what}: the input's lanes past its last column may hold inf or "
                           "NaN; masking them is not lowered yet")
    J = _row_matrix(graph, arch, place, x.cols, 1.0 / x.cols if kind == "mean" else 1.0)
    y, a = new(nd["outputs"][0], start)
    return lower.matmul(sch, x, J, y, max(start, a), what, zero=zero(x.dtype))


def _norm(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean, spread) -> int:
    """LayerNormalization / RMSNormalization over the last axis. Sums across lanes run on the
    MXM against a [cols, 320] matrix of 1/cols, which leaves the row's mean in every lane;
    the rest is elementwise on the VXM:
        LayerNorm: m = x @ J; d = x - m; v = (d * d) @ J; y = d * rsqrt(v + eps) * g + b
        RMSNorm:   q = (x * x) @ J; y = x * rsqrt(q + eps) * g
    """
    op, ins, outs = nd["op"], [i for i in nd["inputs"]], nd["outputs"]
    x_name = ins[0]
    xt = graph.values[x_name]
    axis = int(nd["attrs"].get("axis", -1))
    if axis not in (-1, len(xt.shape) - 1):
        raise CompileError(f"{what}: normalisation over axis {axis} (not the last) is not "
                           "lowered yet")
    extra = [o if o and (graph.consumers(o) or o in graph.outputs) else None
             for o in list(outs[1:3]) + [None] * (3 - len(outs))][:2]
    if op == "RMSNormalization" and any(extra):
        raise CompileError(f"{what}: extra outputs are not lowered yet")
    if not clean.get(x_name, False) and xt.shape[-1] % arch.lanes:
        raise CompileError(f"{what}: the input's lanes past its last column may hold inf or "
                           "NaN; masking them is not lowered yet")
    eps = float(nd["attrs"].get("epsilon", 1e-5))
    x = place[x_name]
    cols = x.cols
    J = _row_matrix(graph, arch, place, cols, 1.0 / cols)
    z = zero(x.dtype)
    g = len(x.slices)

    def temp(shape):
        p, after = alloc.alloc(x.dtype, shape, g)
        return p, after

    rows = x.rows
    t = start
    temps = []
    def per_row(out_name):
        """A [rows, 320] temporary, or the Mean / InvStdDev output (one vector per row)."""
        if out_name is None:
            p, a = temp((rows, arch.lanes))
            temps.append(p)
            return p, a
        spread.add(out_name)
        return new(out_name, t)

    if op == "LayerNormalization":
        m, a = per_row(extra[0])
        t = lower.matmul(sch, x, J, m, max(t, a), what + " mean", zero=z)
        d, a = temp(tuple(xt.shape))
        t = lower.elementwise(sch, ["sub"], x, m, None, d, max(t, a), what, y_mode="col")
    else:
        d = x
    sq, a = temp(tuple(xt.shape))
    t = lower.elementwise(sch, ["mul"], d, None, None, sq, max(t, a), what, y_is_x=True)
    v, a = temp((rows, arch.lanes))
    t = lower.matmul(sch, sq, J, v, max(t, a), what + " variance", zero=z)
    temps += [sq, v]
    inv, a = per_row(extra[1] if op == "LayerNormalization" else None)
    t = lower.elementwise(sch, ["add", "rsqrt"], v, None, eps, inv, max(t, a), what)
    scale = ins[1] if len(ins) > 1 and ins[1] else None
    bias = ins[2] if len(ins) > 2 and ins[2] else None
    for name in (scale, bias):
        if name is not None and tuple(graph.values[name].shape) not in ((cols,), (1, cols)):
            raise CompileError(f"{what}: scale/bias of shape {list(graph.values[name].shape)} "
                               "(not one value per column) is not lowered yet")
    steps = [("mul", inv, "col")]
    if scale is not None:
        steps.append(("mul", place[scale], "row"))
    if bias is not None:
        steps.append(("add", place[bias], "row"))
    src = d
    for k, (alu, operand, mode) in enumerate(steps):
        last = k == len(steps) - 1
        if last:
            dst, a = new(outs[0], t)
        else:
            dst, a = temp(tuple(xt.shape))
            temps.append(dst)
        t = lower.elementwise(sch, [alu], src, operand, None, dst, max(t, a), what, y_mode=mode)
        src = dst
    if d is not x:
        temps.append(d)
    for p in temps:
        alloc.release(p, t)
    return t


def _elementwise(graph, sch, alloc, nd, place, new, start, what, clean, spread,
                 ready_of, spread_scalar) -> tuple[int, bool]:
    """Lower one elementwise op; returns (ready cycle, whether pad lanes stay zero)."""
    op, ins, out = nd["op"], nd["inputs"], nd["outputs"][0]
    c0 = clean.get(ins[0], False)
    if op in lower.CHAINS:
        z, nb = new(out, start)
        return (lower.elementwise(sch, lower.CHAINS[op], place[ins[0]], None, None, z,
                                  max(start, nb), what, y_is_x=True),
                c0 and lower.finite_at_zero(lower.CHAINS[op], 0.0))
    if op in lower.UNARY:
        z, nb = new(out, start)
        return (lower.elementwise(sch, [lower.UNARY[op]], place[ins[0]], None, None, z,
                                  max(start, nb), what),
                c0 and lower.finite_at_zero([lower.UNARY[op]], None))
    ins = [i for i in ins if i]
    if op in ("Max", "Min") and len(ins) == 1:
        z, nb = new(out, start)
        return lower.elementwise(sch, ["copy"], place[ins[0]], None, None, z, max(start, nb),
                                 what), c0
    if len(ins) != 2:
        raise CompileError(f"{what}: {len(ins)} inputs; only two are lowered yet")
    alu = lower.BINARY[op]
    a, b = ins[0], ins[1]
    zt = graph.values[out]
    full = tuple(zt.shape)

    def scalar(v):
        arr = graph.const_array(v) if graph.is_const(v) else None
        return float(arr.reshape(-1)[0]) if arr is not None and arr.size == 1 else None

    def role(v):
        ty = graph.values[v]
        if tuple(ty.shape) == full:
            return "full"
        if scalar(v) is not None:
            return "imm"
        r, c = rows_cols(tuple(ty.shape))
        if r == 1 and c == full[-1] if full else False:
            return "row"
        if v in spread and full and tuple(ty.shape) == full[:-1] + (1,):
            return "col"
        if ty.size == 1:
            return "scalar"
        return "other"

    ra, rb = role(a), role(b)
    # a one-element tensor that is not a constant: spread it over a vector, then broadcast it
    if rb == "scalar" and ra == "full":
        b = spread_scalar(b)
        rb = "row"
        start = max(start, ready_of(b))
    if ra == "scalar" and rb == "full":
        a = spread_scalar(a)
        ra = "row"
        start = max(start, ready_of(a))
        if alu == "sub":  # s - x = (-x) + s
            z, nb = new(out, start)
            return (lower.elementwise(sch, ["neg", "add"], place[b], place[a], None, z,
                                      max(start, nb), what), False)
    if ra != "full" and rb == "full":
        if alu in COMMUTATIVE:
            a, b, ra, rb = b, a, rb, ra
        elif alu in lower.SWAPPED:
            a, b, ra, rb, alu = b, a, rb, ra, lower.SWAPPED[alu]
        elif ra == "imm" and alu == "sub":  # s - x = (-x) + s
            z, nb = new(out, start)
            return (lower.elementwise(sch, ["neg", "add"], place[b], None, scalar(a), z,
                                      max(start, nb), what),
                    clean.get(b, False) and lower.finite_at_zero(["neg", "add"], scalar(a)))
    if ra != "full" or rb == "other":
        raise CompileError(f"{what}: this broadcast ({list(graph.values[a].shape)} with "
                           f"{list(graph.values[b].shape)}) is not lowered yet")
    z, nb = new(out, start)
    ca = clean.get(a, False)
    if a == b:  # x op x: one read, the value goes to both ALU inputs
        return (lower.elementwise(sch, [alu], place[a], None, None, z, max(start, nb), what,
                                  y_is_x=True), ca and lower.finite_at_zero([alu], 0.0))
    if rb in ("full", "row", "col") and set(place[a].slices) & set(place[b].slices):
        # one slice cannot read both operands in one cycle: copy B to other slices first
        pb = place[b]
        cp, after = alloc.alloc(pb.dtype, pb.shape, len(pb.slices),
                                avoid=frozenset(place[a].slices))
        t = lower.elementwise(sch, ["copy"], pb, None, None, cp, max(start, after, ready_of(b)),
                              what + " operand copy")
        out_t = lower.elementwise(sch, [alu], place[a], cp, None, z, max(start, nb, t), what,
                                  y_mode="col" if rb == "col" else "row")
        alloc.release(cp, out_t)
        return out_t, ca and clean.get(b, False) and lower.finite_at_zero([alu], 0.0)
    if rb == "imm":
        return (lower.elementwise(sch, [alu], place[a], None, scalar(b), z, max(start, nb), what),
                ca and lower.finite_at_zero([alu], scalar(b)))
    return (lower.elementwise(sch, [alu], place[a], place[b], None, z, max(start, nb), what,
                              y_mode="col" if rb == "col" else "row"),
            ca and clean.get(b, False) and lower.finite_at_zero([alu], 0.0))


COMMUTATIVE = lower.COMMUTATIVE


def _check_fits(graph: Graph, arch, nslices: int) -> None:
    """Resident tensors (weights, constants, inputs) alone must fit the usable SRAM."""
    need = 0
    for v in list(graph.consts) + list(graph.inputs):
        ty = graph.values[v]
        rows, cols = rows_cols(tuple(ty.shape))
        vec = rows * max(1, -(-cols // arch.lanes))
        need += vec * arch.lanes * np.dtype(ty.dtype).itemsize
    have = nslices * arch.mem_words_per_slice * arch.lanes
    if need > have:
        chips = -(-need // have)
        raise CompileError(f"the model does not fit one chip: its weights and inputs need "
                           f"{need:,} bytes and this backend places tensors in {have:,} bytes "
                           f"(the west half of {arch.name}'s {arch.sram_bytes:,} bytes); about "
                           f"{chips} chips' worth (multi-chip compilation is a later step)")


def _aliased(v, place, outputs) -> bool:
    p = place[v]
    return any(place.get(o) is not None and place[o].addr == p.addr
               and place[o].slices == p.slices for o in outputs)


def _last_uses(graph: Graph) -> dict[str, str]:
    last: dict[str, str] = {}
    for name in graph.topo_order():
        for i in graph.node(name)["inputs"]:
            if i:
                last[i] = name
    return last


def _spec(name: str, kind: str, p: Placement, data) -> TensorSpec:
    arr = None
    if data is not None:
        arr = np.asarray(data).astype(numpy_dtype(p.dtype)).reshape(p.shape)
    return TensorSpec(name, kind, p.dtype, tuple(p.shape), 0, tuple(p.slices), p.addr, 1, arr)


def _check_distinct(tensors):
    seen = {}
    for t in tensors:
        key = (t.slices, t.addr, t.kind)
        if t.kind == "output" and key in seen:
            raise CompileError(f"outputs {seen[key]!r} and {t.name!r} share storage")
        seen[key] = t.name


def _emit(sch: Scheduler, arch) -> ChipProgram:
    by_q: dict[str, list] = {}
    for e in sch.code:
        by_q.setdefault(e.queue, []).append(e)
    chip = ChipProgram()
    order = {q.name: q.id for q in arch.queues}
    for qname in sorted(by_q, key=order.__getitem__):
        lst = sorted(by_q[qname], key=lambda e: e.cycle)
        words = []
        t = 0
        for e in lst:
            if e.cycle < t:
                raise CompileError(f"internal: two instructions at cycle {e.cycle} on {qname}")
            if e.cycle > t:
                words.append(encode("nop", imm=e.cycle - t))
            words.append(encode(e.mnemonic, **e.fields))
            t = e.cycle + 1
        chip.queues[qname] = to_words(words)
    return chip
