"""IR graph -> Program: place tensors, lower and schedule every op in order, emit queues."""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import numpy as np

from compiler.backend import lower
from compiler.backend.axes import last_axis_forms
from compiler.backend.emit import queue_words
from compiler.backend.gather import lower_gather, table_chunks
from compiler.backend.gather_elements import gather_elements_as_selects
from compiler.backend.modulo import lower_mod
from compiler.backend.ops import (
    ABSMAX_FLOOR,
    FEW_ROWS,
    GELU,
    QMAX,
    S_PARTS_ROWS,
    SEQUENCE_BLOCK_VECTORS,
    SEQUENCE_BLOCKS,
    apart,
    gelu_absmax_bound,
    lower_cast,
    lower_clip,
    lower_data_movement,
    lower_elementwise,
    lower_expand,
    lower_head_matmul,
    lower_matmul_quant,
    lower_norm,
    lower_outer_product,
    lower_reduce,
    lower_reduce_max,
    lower_reshape,
    lower_segment_sum,
    lower_sequence,
    lower_softmax,
    lower_softmax_one,
    lower_trilu,
    parts_whole,
    quantize_weights,
    remap,
    row_absmax,
    row_index,
    side_of,
    softmax_row_blocks,
    spread_int,
    tile_part,
    tile_parts,
)
from compiler.backend.pad import pads_as_concats
from compiler.backend.placement import Allocator, Placement, rows_cols
from compiler.backend.products import Emit, canonical_products
from compiler.backend.ranges import ARITH, WRAP_SAFE, integer_ranges
from compiler.backend.schedule import Scheduler
from compiler.backend.select import lower_where
from compiler.backend.splits import head_groups, output_parts, row_blocks
from compiler.backend.transpose import lower_transpose_last
from compiler.backend.trig import lower_trig
from compiler.backend.widen import narrow_floats_in_fp32
from compiler.errors import CompileError, NoRoomError
from compiler.ir import Graph, TensorType
from isa.dtypes import dtype as dtype_info
from isa.dtypes import numpy_dtype
from lpusim.program import ChipProgram, Program, TensorSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# The element type MatMul weights and activations have on the MXM under each policy; tensors
# stay fp32 elsewhere, products accumulate in fp32 (int32 for int8). The quantized policies
# (int8, fp8: e4m3fn) scale weights per output channel (at compile time) and activations per
# row (on chip).
MXM_POLICY = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8",
              "fp8": "fp8_e4m3"}
QUANTIZED = {p: t for p, t in MXM_POLICY.items() if t in QMAX}  # policy -> quantized type
# the element type constant Gather tables (embeddings) are stored in: the MXM's type (a
# quantized type with a scale per column, like the per-output-channel scales of weights)
TABLE_DTYPE = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8",
               "fp8": "fp8_e4m3"}
NORMS = {"LayerNormalization", "RMSNormalization"}
MOVES = {"Transpose", "Slice", "Split", "Concat"}
REDUCES = {"ReduceMean": "mean", "ReduceSum": "sum"}
LOWERED_OPS = tuple(sorted(set(lower.UNARY) | set(lower.BINARY) | set(lower.CHAINS)
                           | lower.ALIASES | lower.MATMULS | NORMS | set(REDUCES)
                           | {"Gelu", "Softmax", "LogSoftmax", "Clip", "Gather", "Cast", "Where",
                              "Expand", "ReduceMax", "Trilu", "Mod", "Sin", "Cos",
                              "SegmentSum", "SoftmaxOne", "HeadMatMul"}
                           | MOVES))
# stream width of a weight load from tiled weights (rows per cycle = LW_STREAMS / dtype bytes),
# and LW_STREAMS_MANY for a MatMul of more than LW_FEW_ROWS rows: its loads hide behind the
# activations' stream either way, and a load over fewer slices finds their read ports free
# sooner (BERT-base int8 over nine sequence lengths 64-192: 16 streams 5,903,209 cycles,
# 8: 5,815,748, 4: 5,881,246; GPT-2-small's one-token step, whose loads bound it, takes
# 68,026 cycles at 16 and 80,654 at 8)
LW_STREAMS = 16
LW_STREAMS_MANY = 8
LW_FEW_ROWS = 16
# IR dtype -> machine dtype in the fp32 exact mode; bools are fp32 0.0/1.0 (what the VXM's
# comparisons and logical ops give). int8/16/32 are computed in their own type on the VXM
# (wrapping). The other integers are held in a wider signed type whose range the host checks
# when it loads an input: they are read only where that is exact (see _type_ok), never
# computed (an int64 or unsigned result would wrap at the wrong width).
_MACHINE = {"float32": "fp32", "bool": "fp32", "int64": "int32", "int32": "int32",
            "int8": "int8", "int16": "int16", "uint8": "int16", "uint16": "int32",
            "uint32": "int32", "uint64": "int32", "float16": "fp16", "bfloat16": "bf16",
            "float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2"}
_NATIVE_INTS = ("int8", "int16", "int32")
_WIDENED = ("int64", "uint8", "uint16", "uint32", "uint64")
# narrow floats: the VXM computes in fp32 and rounds once to the element type, which is the
# correctly rounded result of these ops (fp32 holds more than twice their precision)
_NARROW_FLOATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
_NARROW_FLOAT_OPS = {"Cast", "IsNaN", "Max", "Min", "Add", "Sub", "Mul", "Div", "Neg", "Abs",
                     "Relu", "Trilu", "Equal", "Less", "Greater", "LessOrEqual",
                     "GreaterOrEqual", "ReduceMax", "Expand", "Where", "Softmax",
                     "LogSoftmax", "Gather"} | MOVES
_PASS_THROUGH = lower.ALIASES | {"Identity"}  # take any element type the machine holds
_AS_FLOAT = ("float32", "bool")
# ops that compute int8/16/32 results in their own type
_INT_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Abs", "Relu", "Clip", "Where",
            "Trilu"}
_COMPARE = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
# ops whose results are some of their inputs' values (selected, or masked to zero): exact on a
# widened integer, whose values the host checked to fit the machine type when it loaded them;
# the host reads such an output back in its own type
_SELECT = {"Trilu", "Where", "Max", "Min"}
# unsigned arithmetic: a uint8 / uint16 Add, Sub or Mul is wrapped to its type (ops.
# UNSIGNED_MASK); a quotient of values the host checked to fit the machine type (non-negative)
# is exact
_UNSIGNED_OPS = {"uint8": {"Add", "Sub", "Mul", "Div"}, "uint16": {"Add", "Sub", "Mul", "Div"},
                 "uint32": {"Div"}, "uint64": {"Div"}}


def _type_ok(op: str, v: str, ins: list[str], dtype: str) -> bool:
    """May op read (or write) value v, an integer or narrow float of IR type dtype?"""
    if dtype in _NARROW_FLOATS:
        return op in _NARROW_FLOAT_OPS
    if op == "Mod" or op in MOVES or op in ("Expand", "Gather"):  # exact on any integer the
        return True  # machine holds: Mod (see lower_mod), moves of values (Gather: picks)
    if op == "Cast" and v not in ins:  # lower_cast: integer results only from bools and
        return True  # integers (whose values it converts exactly)
    if v in ins and (op in _COMPARE or (op in ("Pow", "Trilu") and ins[1:2] == [v])):
        return True  # exact on any integer the machine holds (Pow: the exponent, to fp32)
    if dtype in _WIDENED and op in _SELECT and not (op == "Where" and v == ins[0]):
        return True
    if op in _UNSIGNED_OPS.get(dtype, ()):
        return True
    return dtype in _NATIVE_INTS and op in _INT_OPS and not (op == "Where" and v == ins[0])


# a constant Where condition broadcast to its output is stored at the output's shape when it
# takes no more elements than this (the lowering copies run-time conditions over leading dims
# only)
_FULL_CONDITION_LIMIT = 1 << 20


def _full_const_conditions(graph: Graph) -> None:
    """A constant Where condition that broadcasts to the output (e.g. a per-row flag over the
    lanes) becomes a constant of the output's shape."""
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] != "Where" or not graph.is_const(nd["inputs"][0]):
            continue
        c = nd["inputs"][0]
        arr = graph.const_array(c)
        full = tuple(graph.values[nd["outputs"][0]].shape)
        if arr is None or tuple(arr.shape) == full or math.prod(full) > _FULL_CONDITION_LIMIT:
            continue
        big = graph.add_const(graph.fresh_name(f"{c}_full"),
                              np.ascontiguousarray(np.broadcast_to(arr, full)), kind="const")
        graph.set_input(name, 0, big)


def _constant_outputs(graph: Graph) -> None:
    """A graph output that is a constant (a folded Shape, say) becomes the result of an
    Identity of it, which the program copies out like any other result."""
    for v in list(graph.outputs):
        if not graph.is_const(v):
            continue
        ty = graph.values[v]
        c = graph.fresh_name(f"{v}@const")
        graph.rename_value(v, c)
        graph.outputs = [v if o == c else o for o in graph.outputs]
        graph.add_node(graph.fresh_name(f"{v}_copy"), "Identity", [c], [v], types=[ty])


def _numerators_only(graph, nd, place, sum_dtype: str | None) -> bool:
    """Does a Softmax leave its row sums to the HeadMatMul that reads it? When its only
    reader is a HeadMatMul's P and its exponentials are rounded to fp16 for the MXM anyway (an
    fp32 Softmax under the int8 and fp8 policies), softmax(x) @ V = (e @ V) / (e @ 1) with
    e = exp(x - max): the HeadMatMul takes e and finds each head's row sums on the MXM in its
    own output layout (ops.lower_head_matmul), and P = e / s is never formed."""
    out = nd["outputs"][0]
    users = graph.consumers(out)
    if nd["op"] != "Softmax" or sum_dtype != "fp16" or out in graph.outputs or len(users) != 1 \
            or place[nd["inputs"][0]].dtype != "fp32" or nd["attrs"].get("nan_to_zero"):
        return False
    user = graph.node(users[0])
    return user["op"] == "HeadMatMul" and user["inputs"][0] == out


def _machine_dtype(ir_dtype: str, what: str) -> str:
    try:
        return _MACHINE[ir_dtype]
    except KeyError:
        raise CompileError(f"{what}: element type {ir_dtype} is not lowered yet "
                           f"(lowered: {', '.join(_MACHINE)})") from None


# ops that only move or relabel elements: rounding before them is rounding after them
_RELABELS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
_IR_FLOAT = {"fp16": "float16", "bf16": "bfloat16"}
_ONNX_CAST_TO = {"float16": 10, "bfloat16": 16}  # onnx.TensorProto element types


def _rows(graph: Graph, v: str) -> int:
    """The rows of v viewed as (rows, last dim)."""
    shape = graph.values[v].shape
    return math.prod(shape[:-1]) if shape else 1


def _projection_of(graph: Graph, v: str):
    """v as columns of a projection: (MatMul(Bias) node, first column, columns) when v is its
    output, or a last-axis Split of it (through Reshapes that keep the last dimension), with
    constant weights (and bias); else None."""
    cols = graph.values[v].shape[-1]
    first = 0
    p = graph.producer(v)
    if p is not None and graph.node(p)["op"] == "Split":
        nd = graph.node(p)
        x = nd["inputs"][0]
        rank = len(graph.values[x].shape)
        if int(nd["attrs"].get("axis", 0)) % rank != rank - 1:
            return None
        sizes = [graph.values[o].shape[-1] if o else None for o in nd["outputs"]]
        if len(nd["inputs"]) > 1 and nd["inputs"][1]:
            if not graph.is_const(nd["inputs"][1]):
                return None
            sizes = [int(a) for a in graph.const_array(nd["inputs"][1]).reshape(-1)]
        if None in sizes:
            return None
        first = sum(sizes[:nd["outputs"].index(v)])
        v = x
        while (p := graph.producer(v)) is not None and graph.node(p)["op"] == "Reshape" \
                and graph.values[graph.node(p)["inputs"][0]].shape[-1:] \
                == graph.values[v].shape[-1:]:
            v = graph.node(p)["inputs"][0]
        p = graph.producer(v)
    if p is None or graph.node(p)["op"] not in lower.MATMULS:
        return None
    ins = graph.node(p)["inputs"]
    if not graph.is_const(ins[1]) or len(graph.values[ins[1]].shape) != 2 \
            or (len(ins) > 2 and ins[2] and not graph.is_const(ins[2])):
        return None
    return p, first, cols


def _one_key_fused_projection(graph: Graph) -> None:
    """After _one_key_merged: R = SoftmaxOne(s [, mask]) * v with v = x @ Wv + bv (columns of a
    projection) and O = R @ Wo + bo (R's only reader, maybe through Reshapes that keep the
    last dimension). Every lane of p is 1, or NaN when some head's score is not finite, so
        O = x @ (Wv Wo) + (bv Wo + bo) + g,   g = ReduceSum(s - s over every lane)
    (g: 0, or NaN in the row): the out-projection reads x, the projection's own input, and
    no longer waits for v, v's absmax and the attention. Wv Wo is a constant of the same
    size as Wo. The numbers differ by rounding (the products are summed in another order;
    under int8, x and Wv Wo are quantized instead of v and Wo)."""
    for name in graph.topo_order():
        if name not in graph.g.nodes:
            continue
        nd = graph.node(name)
        if nd["op"] != "Mul":
            continue
        pv, v = nd["inputs"][:2]
        sm = graph.producer(pv)
        if sm is None or graph.node(sm)["op"] != "SoftmaxOne" or graph.num_uses(pv) != 1:
            continue
        r = nd["outputs"][0]
        end = _quantized_reader(graph, r)
        if end is None or len(graph.consumers(end)) != 1:
            continue
        out_node = graph.consumers(end)[0]
        onode = graph.node(out_node)
        proj = _projection_of(graph, v)
        if proj is None or graph.values[onode["outputs"][0]].dtype != "float32":
            continue
        p, first, cols = proj
        pins = graph.node(p)["inputs"]
        x = pins[0]
        wo_name = onode["inputs"][1]
        wos = graph.values[wo_name].shape
        bo_name = onode["inputs"][2] if onode["op"] == "MatMulBias" \
            and len(onode["inputs"]) > 2 else ""
        xs = tuple(graph.values[x].shape)
        o = onode["outputs"][0]
        os_ = tuple(graph.values[o].shape)
        if len(wos) != 2 or wos[0] != cols or int(np.prod(xs[:-1])) != int(np.prod(os_[:-1])) \
                or (bo_name and not graph.is_const(bo_name)):
            continue
        arrays = [graph.const_array(a) for a in (pins[1], wo_name)] + \
            [graph.const_array(a) for a in (pins[2] if len(pins) > 2 else "", bo_name) if a]
        if any(a is None for a in arrays):  # shape-only weights (timing): shapes only
            fw = fb = None
        else:
            w = graph.const_array(pins[1]).astype(np.float64)[:, first:first + cols]
            bv = graph.const_array(pins[2]).reshape(-1).astype(np.float64)[
                first:first + cols] if len(pins) > 2 and pins[2] else np.zeros(cols)
            wo = graph.const_array(wo_name).astype(np.float64)
            bo = graph.const_array(bo_name).reshape(-1).astype(np.float64) if bo_name \
                else np.zeros(wos[1])
            fw, fb = (w @ wo).astype(np.float32), (bv @ wo + bo).astype(np.float32)
        wvo = graph.add_const(graph.fresh_name(f"{wo_name}_fused_v"), fw, kind="weight",
                              ty=TensorType("float32", (xs[-1], wos[1])))
        cvo = graph.add_const(graph.fresh_name(f"{wo_name}_fused_v_bias"), fb, kind="weight",
                              ty=TensorType("float32", (wos[1],)))
        s_in = graph.node(sm)["inputs"]
        order = onode["order"]
        graph.remove_node(out_node)
        ty = TensorType("float32", xs[:-1] + (wos[1],))
        mm = graph.fresh_name(f"{o}_fused")
        graph.add_node(graph.fresh_name(f"{out_node}_fused"), "MatMulBias", [x, wvo, cvo],
                       [mm], types=[ty], order=graph.node(p)["order"] + 0.5)
        g = graph.fresh_name(f"{o}_nan")
        sty = graph.values[s_in[0]]
        graph.add_node(graph.fresh_name(f"{out_node}_nan"), "SoftmaxOne", s_in, [g],
                       {"log": 1}, types=[sty], order=graph.node(sm)["order"])
        gs = graph.fresh_name(f"{o}_nan_sum")
        axes = graph.add_const(graph.fresh_name(f"{o}_nan_axes"),
                               np.array([len(sty.shape) - 1], np.int64))
        graph.add_node(graph.fresh_name(f"{out_node}_nan_sum"), "ReduceSum", [g, axes], [gs],
                       {"keepdims": 1}, types=[TensorType("float32", sty.shape[:-1] + (1,))],
                       order=graph.node(sm)["order"] + 0.5)
        if tuple(ty.shape) == os_:
            graph.add_node(graph.fresh_name(f"{out_node}_fused_out"), "Identity", [mm], [o],
                           types=[graph.values[o]], order=order)
        else:  # the projection's rows laid out as the out-projection's
            shp = graph.add_const(graph.fresh_name(f"{o}_shape"), np.array(os_, np.int64))
            graph.add_node(graph.fresh_name(f"{out_node}_rows"), "Reshape", [mm, shp], [o],
                           types=[TensorType("float32", os_)], order=order)
        _add_row_guard(graph, o, gs)
    graph.prune()


# ops that map each row to a row; those in _ROW_NAN make a row all NaN where an operand's is
_ROW_NAN = {"LayerNormalization", "RMSNormalization", "Gelu", "Silu", "Add", "Sub", "Mul", "Div",
            "Tanh", "Sigmoid", "Erf", "Sqrt", "Reciprocal", "Neg", "Identity", "Reshape"}
_ROWWISE = _ROW_NAN | {"Relu", "Abs", "Exp", "Log", "Pow", "Max", "Min", "Softmax",
                       "LogSoftmax"}


def _row_op(graph: Graph, n: str, rows: int, nan: bool) -> bool:
    """Does node n compute each of `rows` rows (of its last dimension) from the same row of
    its operands (or from one row of them all)? With `nan`: and give an all-NaN row where an
    operand has one? (A MatMul with constant weights adds all of a row's lanes into each
    output; NaN * 0 is NaN; Softmax is over the last axis here, see last_axis_forms.)"""
    nd = graph.node(n)
    outs = [o for o in nd["outputs"] if o]
    if len(outs) != 1 or _rows(graph, outs[0]) != rows \
            or graph.values[outs[0]].dtype != "float32":
        return False
    if nd["op"] in lower.MATMULS:
        return graph.is_const(nd["inputs"][1]) and not graph.is_const(nd["inputs"][0])
    if nd["op"] == "Reshape":
        return graph.values[nd["inputs"][0]].shape[-1:] == graph.values[outs[0]].shape[-1:]
    return nd["op"] in (_ROW_NAN if nan else _ROWWISE) and all(
        _rows(graph, i) in (1, rows) and (graph.values[i].shape[-1:] in ((1,), graph.values[
            outs[0]].shape[-1:]) or nd["op"] in NORMS) for i in nd["inputs"][:2] if i)


def _add_row_guard(graph: Graph, v: str, g: str, steps: int = 4) -> None:
    """v's rows plus g (0, or NaN in a row: compile._one_key_fused_projection). Where every
    path from v meets again in a node that reads v's NaN row and makes its own NaN (the
    residual Add after a transformer block's MLP), through row-by-row work read by nothing
    else (_row_op), g is added there instead: the same values at every node that outlives
    the branch, and g's computation (after the attention's scores) is off the path of the
    work between. At most `steps` moves, the last past the first branch; never past a graph
    output."""
    rows = _rows(graph, v)
    t = v
    for _ in range(steps):
        if t in graph.outputs:
            break
        users = graph.consumers(t)
        if not users:
            break
        # the first node after t that every path from t passes, reading t itself (so that a
        # NaN row of t makes its row NaN), with the nodes between (row by row, read by
        # nothing else)
        order = graph.topo_order()
        pos = {n: i for i, n in enumerate(order)}
        reach: set[str] = set()
        todo = list(users)
        while todo and len(reach) < 64:
            n = todo.pop()
            if n in reach or not _row_op(graph, n, rows, False):
                continue
            reach.add(n)
            for o in graph.node(n)["outputs"]:
                if o:
                    todo.extend(graph.consumers(o))
        join = None
        for a in sorted(reach, key=pos.get):
            if a not in users or not _row_op(graph, a, rows, True):
                continue
            branch = {n for n in reach if pos[n] < pos[a] and _reaches(graph, n, a)}
            if all(u in branch or u == a for u in users) and all(
                    c in branch or c == a for n in branch for o in graph.node(n)["outputs"]
                    if o for c in graph.consumers(o)) and not any(
                    o in graph.outputs for n in branch for o in graph.node(n)["outputs"]):
                join = a
                break
        if join is None:
            break
        t = graph.node(join)["outputs"][0]
        if len(users) > 1:  # past a branch: its work is what g's is off the path of
            break
    nd = graph.node(graph.producer(t))
    fin = graph.fresh_name(f"{t}_unguarded")
    ty = graph.values[t]
    name, order = graph.producer(t), nd["order"]
    graph.remove_node(name)
    graph.add_node(name, nd["op"], nd["inputs"], [fin if o == t else o for o in nd["outputs"]],
                   nd["attrs"], domain=nd.get("domain", ""), types=[ty], order=order)
    gt = g
    if tuple(graph.values[g].shape) != tuple(ty.shape[:-1]) + (1,):
        gt = graph.fresh_name(f"{g}_rows")
        shp = graph.add_const(graph.fresh_name(f"{g}_shape"),
                              np.array(tuple(ty.shape[:-1]) + (1,), np.int64))
        graph.add_node(graph.fresh_name(f"{name}_guard_rows"), "Reshape", [g, shp], [gt],
                       types=[TensorType("float32", tuple(ty.shape[:-1]) + (1,))],
                       order=order + 0.4)
    graph.add_node(graph.fresh_name(f"{name}_guard"), "Add", [fin, gt], [t], types=[ty],
                   order=order + 0.5)


def _reaches(graph: Graph, a: str, b: str) -> bool:
    """Is there a path from node a to node b?"""
    return nx.has_path(graph.g, a, b)


def _drop_unread_split_columns(graph: Graph) -> None:
    """A last-axis Split of a projection's output (x @ W [+ b], maybe through Reshapes that
    keep the last dimension, each read only by the next) with outputs nothing reads: the
    projection computes only the columns read (W's and b's other columns dropped), and the
    Split splits those. E.g. a fused QKV projection whose V _one_key_fused_projection has
    folded into the out-projection."""
    for name in graph.topo_order():
        if name not in graph.g.nodes:
            continue
        nd = graph.node(name)
        if nd["op"] != "Split":
            continue
        outs = nd["outputs"]
        read = [bool(o) and (bool(graph.consumers(o)) or o in graph.outputs) for o in outs]
        if all(read) or not any(read):
            continue
        u = nd["inputs"][0]
        rank = len(graph.values[u].shape)
        if int(nd["attrs"].get("axis", 0)) % rank != rank - 1:
            continue
        if len(nd["inputs"]) > 1 and nd["inputs"][1]:
            if not graph.is_const(nd["inputs"][1]):
                continue
            sizes = [int(a) for a in graph.const_array(nd["inputs"][1]).reshape(-1)]
        elif all(outs):
            sizes = [graph.values[o].shape[-1] for o in outs]
        else:
            continue
        chain, v = [], u  # the Reshapes between the projection and the Split
        while True:
            if graph.num_uses(v) != 1 or v in graph.outputs:
                break
            p = graph.producer(v)
            if p is None or graph.node(p)["op"] != "Reshape" \
                    or graph.values[graph.node(p)["inputs"][0]].shape[-1:] \
                    != graph.values[v].shape[-1:] \
                    or not graph.is_const(graph.node(p)["inputs"][1]):
                break
            chain.append(p)
            v = graph.node(p)["inputs"][0]
        p = graph.producer(v)
        if p is None or graph.node(p)["op"] not in lower.MATMULS or graph.num_uses(v) != 1 \
                or v in graph.outputs or graph.num_uses(u) != 1:
            continue
        pins = graph.node(p)["inputs"]
        if not graph.is_const(pins[1]) or len(graph.values[pins[1]].shape) != 2 \
                or (len(pins) > 2 and pins[2] and not graph.is_const(pins[2])):
            continue
        starts = np.cumsum([0] + sizes[:-1])
        keep = np.concatenate([np.arange(a, a + n) for a, n, r in zip(starts, sizes, read,
                                                                       strict=True) if r])
        n_new = int(keep.size)
        w_arr = graph.const_array(pins[1])
        w_new = graph.add_const(graph.fresh_name(f"{pins[1]}_cols"),
                                None if w_arr is None else w_arr[:, keep],
                                ty=TensorType(graph.values[pins[1]].dtype,
                                              (graph.values[pins[1]].shape[0], n_new)),
                                kind=graph.consts[pins[1]].kind)
        graph.set_input(p, 1, w_new)
        if len(pins) > 2 and pins[2]:
            b_arr = graph.const_array(pins[2])
            b_new = graph.add_const(graph.fresh_name(f"{pins[2]}_cols"),
                                    None if b_arr is None else b_arr.reshape(-1)[keep],
                                    ty=TensorType(graph.values[pins[2]].dtype, (n_new,)),
                                    kind=graph.consts[pins[2]].kind)
            graph.set_input(p, 2, b_new)
        for val in [v] + [graph.node(c)["outputs"][0] for c in reversed(chain)]:
            t = graph.values[val]
            graph.values[val] = TensorType(t.dtype, tuple(t.shape[:-1]) + (n_new,))
        for c in chain:
            shape = [int(a) for a in graph.const_array(graph.node(c)["inputs"][1]).reshape(-1)]
            out_shape = graph.values[graph.node(c)["outputs"][0]].shape
            if shape[-1] != -1:
                shape[-1] = n_new
            if -1 in shape[:-1] or len(shape) != len(out_shape):
                shape = list(out_shape)
            graph.set_input(c, 1, graph.add_const(graph.fresh_name(f"{c}_shape"),
                                                  np.array(shape, np.int64)))
        kept = [o for o, r in zip(outs, read, strict=True) if r]
        new_sizes = graph.add_const(graph.fresh_name(f"{name}_sizes"),
                                    np.array([n for n, r in zip(sizes, read, strict=True) if r],
                                             np.int64))
        attrs, order = dict(nd["attrs"]), nd["order"]
        types = [graph.values[o] for o in kept]
        graph.remove_node(name)
        graph.add_node(name, "Split", [u, new_sizes], kept, attrs, types=types, order=order)
    graph.prune()


def _quantizes(graph: Graph, u: str, v: str) -> bool:
    """Is node u a MatMul with constant weights reading v as its activation (which it
    quantizes by its row absmax under the int8 and fp8 policies)?"""
    ins = graph.node(u)["inputs"]
    return graph.node(u)["op"] in lower.MATMULS and ins[0] == v and v not in ins[1:] \
        and graph.is_const(ins[1])


def _feeds_quantized(graph: Graph, v: str, only: bool = True) -> bool:
    """Does v feed only MatMuls with constant weights, as their activation (each quantizes v
    by its row absmax under the int8 and fp8 policies)? With only=False: any such MatMul,
    beside other readers."""
    users = graph.consumers(v)
    q = [_quantizes(graph, u, v) for u in users]
    return bool(users) and v not in graph.outputs and (all(q) if only else any(q))


def _foldable_reader(graph: Graph, u: str, y: str, cols: int) -> bool:
    """Does node u read y only as the activation of a MatMul by a constant float32 [cols, N]
    weight that nothing else reads (so that a norm's g and b can move into that weight)?"""
    und = graph.node(u)
    ins = und["inputs"]
    w = ins[1] if len(ins) > 1 else ""
    return und["op"] in lower.MATMULS and ins[0] == y and y not in ins[1:] \
        and graph.is_const(w) and graph.num_uses(w) == 1 \
        and len(graph.values[w].shape) == 2 and graph.values[w].shape[0] == cols \
        and graph.values[w].dtype == "float32"


def _norm_affine(graph: Graph, name: str):
    """(y, g, b, cols) of norm `name` when its scale g (and bias b, or None) are constants of
    one value per column and its extra outputs are not read; else None."""
    nd = graph.node(name)
    if nd["op"] not in NORMS or len(nd["inputs"]) < 2 or not nd["inputs"][1]:
        return None
    y = nd["outputs"][0]
    scale = nd["inputs"][1]
    bias = nd["inputs"][2] if len(nd["inputs"]) > 2 and nd["inputs"][2] else None
    cols = graph.values[y].shape[-1] if graph.values[y].shape else 0
    if not graph.is_const(scale) or (bias is not None and not graph.is_const(bias)) \
            or graph.values[scale].size != cols \
            or (bias is not None and graph.values[bias].size != cols) \
            or any(o and (graph.consumers(o) or o in graph.outputs)
                   for o in nd["outputs"][1:]):
        return None
    return y, scale, bias, cols


def _fold_into_matmuls(graph: Graph, users: list[str], scale: str, bias: str | None) -> None:
    """Each MatMul in `users` (_foldable_reader) takes W' = diag(g) W and c' = b W + c."""
    g_arr = graph.const_array(scale)
    b_arr = None if bias is None else graph.const_array(bias)
    for u in users:
        und = graph.node(u)
        w = und["inputs"][1]
        w_arr = graph.const_array(w)
        known = w_arr is not None and g_arr is not None and (bias is None or b_arr is not None)
        w_new = graph.add_const(
            graph.fresh_name(f"{w}_normed"),
            (w_arr * g_arr.reshape(-1, 1).astype(np.float32)).astype(np.float32)
            if known else None, ty=graph.values[w], kind=graph.consts[w].kind)
        graph.set_input(u, 1, w_new)
        if bias is None:
            continue
        n_out = graph.values[w].shape[1]
        c = und["inputs"][2] if und["op"] == "MatMulBias" else None
        c_arr = None if c is None else graph.const_array(c)
        c_new = None
        if known and (c is None or c_arr is not None):
            c_new = (b_arr.reshape(-1).astype(np.float64) @ w_arr.astype(np.float64))
            c_new = (c_new + (0 if c is None else c_arr.reshape(-1))).astype(np.float32)
        cb = graph.add_const(graph.fresh_name(f"{w}_normed_bias"), c_new,
                             ty=TensorType("float32", (n_out,)), kind="weight")
        if c is not None:
            graph.set_input(u, 2, cb)
        else:
            order = und["order"]
            x_in, out = und["inputs"][0], und["outputs"][0]
            ty = graph.values[out]
            graph.remove_node(u)
            graph.add_node(u, "MatMulBias", [x_in, w_new, cb], [out], types=[ty],
                           order=order)


def _fold_norm_affine(graph: Graph) -> None:
    """A LayerNorm/RMSNorm whose output only feeds MatMuls as their activation (the pre-norm
    of GPT-2 and Llama blocks): its constant scale g and bias b move into the weights and
    biases of those MatMuls, W' = diag(g) W and c' = b W + c, as inference engines do. The
    norm then ends at the normalized rows: two VXM passes fewer on the path to each
    MatMul. Weights read by anything else (tied embeddings) are left alone."""
    for name in graph.topo_order():
        got = _norm_affine(graph, name)
        if got is None:
            continue
        y, scale, bias, cols = got
        users = graph.consumers(y)
        if y in graph.outputs or not users \
                or not all(_foldable_reader(graph, u, y, cols) for u in users):
            continue
        _fold_into_matmuls(graph, users, scale, bias)
        graph.set_inputs(name, [graph.node(name)["inputs"][0]])
    graph.prune()


def _split_norm_affine(graph: Graph) -> None:
    """Under the int8 and fp8 policies, a norm with constant g (and b) whose output y feeds
    quantized MatMuls and other readers too (BERT's post-norm: the next Q, K and V, or the
    FFN, and the residual Add) gives the MatMuls the normalized rows z, with g and b folded
    into their weights as _fold_norm_affine does, and the other readers y = z * g + b from
    a Mul and an Add after the norm. z is one VXM pass after the variance where y is three,
    so the MatMuls' row absmax starts two passes sooner, while y is made beside it."""
    for name in graph.topo_order():
        got = _norm_affine(graph, name)
        if got is None:
            continue
        y, scale, bias, cols = got
        users = graph.consumers(y)
        mms = [u for u in users if _foldable_reader(graph, u, y, cols)]
        if not mms or (len(mms) == len(users) and y not in graph.outputs):
            continue  # no MatMul, or only MatMuls (_fold_norm_affine's case)
        nd = graph.node(name)
        order, ty = nd["order"], graph.values[y]
        z = graph.fresh_name(f"{y}_normalized")
        graph.remove_node(name)
        graph.add_node(name, nd["op"], [nd["inputs"][0]], [z] + list(nd["outputs"][1:]),
                       dict(nd["attrs"]), types=[ty] + [graph.values.get(o) if o else None
                                                        for o in nd["outputs"][1:]],
                       order=order)
        # lowered after the MatMuls, which are on the path
        after = max(graph.node(u)["order"] for u in mms)
        zg = y if bias is None else graph.fresh_name(f"{y}_scaled")
        graph.add_node(graph.fresh_name(f"{name}_scale"), "Mul", [z, scale], [zg],
                       types=[ty], order=after + 0.25)
        if bias is not None:
            graph.add_node(graph.fresh_name(f"{name}_bias"), "Add", [zg, bias], [y],
                           types=[ty], order=after + 0.5)
        for u in mms:
            graph.set_input(u, 0, z)
        _fold_into_matmuls(graph, mms, scale, bias)
    graph.prune()


def _activation_products(graph: Graph):
    """(name, node) of every MatMul whose two operands are computed (not constants), in
    topological order, skipping those a rewrite removed meanwhile."""
    for name in graph.topo_order():
        if name in graph.g.nodes:
            nd = graph.node(name)
            if nd["op"] == "MatMul" and not any(graph.is_const(v) for v in nd["inputs"][:2]):
                yield name, nd


def _vector_products(graph: Graph) -> None:
    """A MatMul of two computed operands whose right one has a single column, made by a
    Transpose of a single row (attention's scores against one key: Q @ K^T with K [.., 1, K]):
    a matrix-vector product, computed as Mul(A, row) then ReduceSum over the last axis. The
    MXM would otherwise take the transposed row as weights, K vectors of one lane each, after
    a corner turn that writes them one per cycle."""
    for name, nd in _activation_products(graph):
        a, b = nd["inputs"][:2]
        t = graph.producer(b)
        if t is None or graph.node(t)["op"] != "Transpose":
            continue
        row = graph.node(t)["inputs"][0]
        ra, rb = graph.values[a].shape, graph.values[row].shape
        n = len(rb)
        perm = _perm(graph.node(t), n)
        if n < 2 or len(ra) != n or perm != list(range(n - 2)) + [n - 1, n - 2] \
                or rb[-2] != 1 or tuple(rb[:-2]) != tuple(ra[:-2]) or rb[-1] != ra[-1] \
                or graph.values[row].dtype != "float32" or graph.values[a].dtype != "float32":
            continue
        y = nd["outputs"][0]
        prod = graph.fresh_name(f"{y}_products")
        axes = graph.add_const(graph.fresh_name(f"{y}_axes"), np.array([n - 1], np.int64))
        order = nd["order"]
        yt = graph.values[y]
        graph.remove_node(name)
        graph.add_node(graph.fresh_name(f"{name}_mul"), "Mul", [a, row], [prod],
                       types=[TensorType("float32", tuple(ra))], order=order - 0.5)
        graph.add_node(name, "ReduceSum", [prod, axes], [y], {"keepdims": 1}, types=[yt],
                       order=order)
    graph.prune()


def _kv_repeat(graph: Graph, v: str) -> tuple[str, int]:
    """(u, rep) when v is u's heads each repeated rep times, as grouped-query attention is
    decomposed: Reshape [.., Hkv, X, Y] -> [.., Hkv, 1, X, Y], Expand to [.., Hkv, rep, X, Y],
    Reshape to [.., Hkv * rep, X, Y], each value read once (head h of v is head h // rep of
    u); else (v, 1)."""
    r2 = graph.producer(v)
    if r2 is None or graph.node(r2)["op"] != "Reshape" or graph.num_uses(v) != 1:
        return v, 1
    e = graph.node(r2)["inputs"][0]
    ex = graph.producer(e)
    if ex is None or graph.node(ex)["op"] != "Expand" or graph.num_uses(e) != 1:
        return v, 1
    r = graph.node(ex)["inputs"][0]
    r1 = graph.producer(r)
    if r1 is None or graph.node(r1)["op"] != "Reshape" or graph.num_uses(r) != 1:
        return v, 1
    u = graph.node(r1)["inputs"][0]
    us, rs, es, vs = (tuple(graph.values[w].shape) for w in (u, r, e, v))
    n = len(us)
    if n < 3 or len(rs) != n + 1 or len(es) != n + 1 or len(vs) != n \
            or rs != us[:-2] + (1,) + us[-2:] or es[:n - 2] != us[:-2] \
            or es[n - 1:] != us[-2:] or vs != us[:-3] + (us[-3] * es[n - 2],) + us[-2:]:
        return v, 1
    return u, es[n - 2]


def _cached_scores(graph: Graph, lanes: int) -> None:
    """Attention's scores for one query row per head against a few keys (a decode step with a
    KV cache): Q [.., 1, d] @ Transpose(K [.., S, d]) with S < one vector's lanes, K's heads
    maybe repeated for grouped-query attention (_kv_repeat). Turned head by head, each K^T
    row of a head holds only S lanes of data, so the corner turn's work (a gather, rotations
    and a copy per row of K^T) is repeated for every head. Instead all G key heads turn at
    once: K as [G * S, d] rows becomes K^T [d, G * S] (G * S lanes a row), every query row
    multiplies all of it (Q [Gq, d] @ K^T: one MXM weight install per 320 keys of all heads,
    not one per head, and no repeat of K's heads), and query head h's scores are the lanes
    g * S .. g * S + S - 1 of row h, g = h // rep (Slices, then a Concat of the rows). The
    products are the same sums in the same order: the same numbers."""
    for name, nd in _activation_products(graph):
        a, b = nd["inputs"][:2]
        if b in graph.outputs:
            continue
        src, rep = _kv_repeat(graph, b)
        t = graph.producer(src)
        if t is None or graph.node(t)["op"] != "Transpose" or graph.num_uses(src) != 1 \
                or src in graph.outputs:
            continue
        k = graph.node(t)["inputs"][0]
        qs, ks = tuple(graph.values[a].shape), tuple(graph.values[k].shape)
        n = len(ks)
        if n < 3 or len(qs) != n \
                or _perm(graph.node(t), n) != list(range(n - 2)) + [n - 1, n - 2] \
                or qs[:-3] != ks[:-3] or qs[-3] != ks[-3] * rep or qs[-2] != 1 \
                or qs[-1] != ks[-1] or not 2 <= ks[-2] < lanes \
                or graph.values[a].dtype != "float32" or graph.values[k].dtype != "float32":
            continue
        heads, S, d = int(np.prod(ks[:-2])), ks[-2], ks[-1]
        if heads * rep < 2:
            continue
        y, order = nd["outputs"][0], nd["order"]
        yt = graph.values[y]
        f32 = "float32"
        graph.remove_node(name)

        def shape_const(tag, dims, y=y):
            return graph.add_const(graph.fresh_name(f"{y}_{tag}"), np.array(dims, np.int64))

        k2, kt, q2, full, cat = (graph.fresh_name(f"{y}_{tag}") for tag in
                                 ("keys", "keys_turned", "queries", "all_heads", "rows"))
        graph.add_node(graph.fresh_name(f"{t}_rows"), "Reshape",
                       [k, shape_const("keys_shape", [heads * S, d])], [k2],
                       types=[TensorType(f32, (heads * S, d))], order=order - 0.4)
        graph.add_node(graph.fresh_name(f"{t}_all_heads"), "Transpose", [k2], [kt],
                       {"perm": [1, 0]},
                       types=[TensorType(f32, (d, heads * S))], order=order - 0.3)
        graph.add_node(graph.fresh_name(f"{name}_queries"), "Reshape",
                       [a, shape_const("queries_shape", [heads * rep, d])], [q2],
                       types=[TensorType(f32, (heads * rep, d))], order=order - 0.2)
        graph.add_node(graph.fresh_name(f"{name}_all_heads"), "MatMul", [q2, kt], [full],
                       types=[TensorType(f32, (heads * rep, heads * S))], order=order - 0.1)
        pieces = []
        axes = shape_const("axes", [0, 1])
        for h in range(heads * rep):
            g = h // rep
            ph = graph.fresh_name(f"{y}_head{h}")
            graph.add_node(graph.fresh_name(f"{name}_head{h}"), "Slice",
                           [full, shape_const(f"starts{h}", [h, g * S]),
                            shape_const(f"ends{h}", [h + 1, (g + 1) * S]), axes], [ph],
                           types=[TensorType(f32, (1, S))], order=order - 0.05)
            pieces.append(ph)
        graph.add_node(graph.fresh_name(f"{name}_rows"), "Concat", pieces, [cat], {"axis": 0},
                       types=[TensorType(f32, (heads * rep, S))], order=order - 0.02)
        graph.add_node(name, "Reshape", [cat, shape_const("shape", list(yt.shape))], [y],
                       types=[yt], order=order)
    graph.prune()


def _transposed_heads(graph: Graph) -> None:
    """Attention's K^T per head, written as exporters do: X [.., S, D] -> Reshape
    [.., S, H, hd] -> Transposes to [.., H, hd, S]. The same values are X transposed to
    [.., D, S] (one corner turn of X) and reshaped to [.., H, hd, S], which keeps the last axis:
    a relabelling of rows, with no head split of X's lanes before the turn."""
    for name in graph.topo_order():
        if name not in graph.g.nodes:
            continue
        nd = graph.node(name)
        if nd["op"] != "Transpose":
            continue
        chain, v = [name], nd["inputs"][0]
        while graph.producer(v) is not None and graph.node(graph.producer(v))["op"] == \
                "Transpose" and graph.num_uses(v) == 1 and len(chain) < 3:
            chain.append(graph.producer(v))
            v = graph.node(chain[-1])["inputs"][0]
        r = graph.producer(v)
        if r is None or graph.node(r)["op"] != "Reshape" or graph.num_uses(v) != 1:
            continue
        x = graph.node(r)["inputs"][0]
        xs, rs = tuple(graph.values[x].shape), tuple(graph.values[v].shape)
        n = len(rs)
        if len(xs) < 2 or n != len(xs) + 1 or rs[:-2] != xs[:-1] or rs[-2] * rs[-1] != xs[-1] \
                or graph.values[x].dtype != graph.values[v].dtype:
            continue
        perm = list(range(n))  # composite: output axis i is axis perm[i] of the Reshape's
        for t in reversed(chain):
            p = [int(q) % n for q in graph.node(t)["attrs"].get("perm", range(n - 1, -1, -1))]
            perm = [perm[q] for q in p]
        if perm != list(range(n - 3)) + [n - 2, n - 1, n - 3]:
            continue
        y = nd["outputs"][0]
        yt = graph.values[y]
        order = graph.node(r)["order"]
        for t in chain:
            graph.remove_node(t)
        graph.remove_node(r)
        xt_shape = xs[:-2] + (xs[-1], xs[-2])
        xt = graph.fresh_name(f"{x}_transposed")
        graph.add_node(graph.fresh_name(f"{name}_turn"), "Transpose", [x], [xt],
                       {"perm": list(range(len(xs) - 2)) + [len(xs) - 1, len(xs) - 2]},
                       types=[TensorType(graph.values[x].dtype, xt_shape)], order=order)
        shp = graph.add_const(graph.fresh_name(f"{y}_shape"), np.array(yt.shape, np.int64))
        graph.add_node(name, "Reshape", [xt, shp], [y], types=[yt], order=order + 0.1)
    graph.prune()


def _fold_score_scale(graph: Graph) -> None:
    """Div (or Mul) by a constant scalar c of a MatMul of computed operands (attention's
    scores Q @ K^T / sqrt(d)), or of the ReduceSum of their products (_vector_products),
    where the left operand is a constant-weight MatMul (with or without bias) through
    Reshapes and Transposes, and maybe a Split of its last axis (a fused QKV projection),
    read by nothing else: c moves into that MatMul's weight and bias (the query's columns of
    them), W / c and b / c, as inference engines fold the attention scale into the query
    projection. One pass over the scores fewer."""
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] not in ("Div", "Mul") or len(nd["inputs"]) != 2:
            continue
        s, c = nd["inputs"]
        if nd["op"] == "Mul" and graph.is_const(s):
            s, c = c, s
        c_arr = graph.const_array(c) if graph.is_const(c) else None
        mm = graph.producer(s)
        if c_arr is None or c_arr.size != 1 or not np.isfinite(c_arr).all() \
                or float(c_arr.reshape(-1)[0]) == 0 or mm is None \
                or graph.num_uses(s) != 1 or graph.values[s].dtype != "float32" \
                or tuple(graph.values[nd["outputs"][0]].shape) != tuple(graph.values[s].shape):
            continue
        v = _query_side(graph, mm)
        if v is None:
            continue
        while graph.num_uses(v) == 1 and graph.producer(v) is not None \
                and graph.node(graph.producer(v))["op"] in ("Reshape", "Transpose"):
            v = graph.node(graph.producer(v))["inputs"][0]
        cols = None  # through a Split of the last axis: the query's columns of the projection
        sp = graph.producer(v)
        if sp is not None and graph.node(sp)["op"] == "Split" and graph.num_uses(v) == 1:
            cols = _split_columns(graph, sp, v)
            if cols is None:
                continue
            v = graph.node(sp)["inputs"][0]
        proj = graph.producer(v)
        if proj is None or graph.num_uses(v) != 1 or v in graph.outputs:
            continue
        pins = graph.node(proj)["inputs"]
        if graph.node(proj)["op"] not in ("MatMul", "MatMulBias") \
                or not all(graph.is_const(w) and graph.num_uses(w) == 1 for w in pins[1:]) \
                or len(graph.values[pins[1]].shape) != 2 \
                or any(graph.values[w].dtype != "float32" for w in pins[1:]):
            continue
        k = np.float32(1.0 / float(c_arr.reshape(-1)[0]) if nd["op"] == "Div"
                       else float(c_arr.reshape(-1)[0]))
        for j, w in enumerate(pins[1:], start=1):
            arr = graph.const_array(w)
            if arr is not None:
                arr = arr.astype(np.float32)  # a copy
                lo, hi = cols if cols is not None else (0, arr.shape[-1])
                arr[..., lo:hi] = (arr[..., lo:hi] * k).astype(np.float32)
            graph.set_input(proj, j, graph.add_const(
                graph.fresh_name(f"{w}_scaled"), arr, ty=graph.values[w],
                kind=graph.consts[w].kind))
        out = nd["outputs"][0]
        graph.remove_node(name)
        if not graph.forward(out, s):
            raise CompileError(f"internal: folding the scale of {name!r} lost {out!r}")
    graph.prune()


def _query_side(graph: Graph, mm: str) -> str | None:
    """The left operand of a product of two computed operands (the query of attention's
    scores): a MatMul's, or that of the Mul a ReduceSum sums (_vector_products' form); None
    for anything else."""
    nd = graph.node(mm)
    if nd["op"] == "ReduceSum":
        prod = nd["inputs"][0]
        mul = graph.producer(prod)
        if mul is None or graph.num_uses(prod) != 1 or graph.node(mul)["op"] != "Mul":
            return None
        nd = graph.node(mul)
    elif nd["op"] != "MatMul":
        return None
    ins = nd["inputs"][:2]
    return None if any(graph.is_const(v) for v in ins) else ins[0]


def _split_columns(graph: Graph, sp: str, v: str) -> tuple[int, int] | None:
    """The columns [lo, hi) of the Split's input that its output v holds, when it splits the
    last axis (else None)."""
    nd = graph.node(sp)
    x = nd["inputs"][0]
    rank = len(graph.values[x].shape)
    if rank == 0 or int(nd["attrs"].get("axis", 0)) % rank != rank - 1:
        return None
    lo = 0
    for o in nd["outputs"]:
        n = graph.values[o].shape[-1] if o else None
        if n is None:
            return None
        if o == v:
            return lo, lo + n
        lo += n
    return None


# integers up to this magnitude are exact in float32, where ArgMax compares them
_FLOAT_EXACT = 2**24


def _argmax_as_reduces(graph: Graph) -> None:
    """ArgMax(x, axis) (transformers' sequence-classification heads find each row's last
    token so) as reductions the backend has, in float32: m = ReduceMax(x); w = Where(x == m,
    index, n) (with select_last_index: -1); the first index of the maximum is -ReduceMax(-w)
    (the last: ReduceMax(w)); a Cast to int64 of that whole number, marked exact in
    [0, n - 1] (lower_cast takes it; the range analysis knows its range). Integer x is compared
    in float32, so its range must be within +-2^24 (the range analysis says; else a
    CompileError). A NaN in x is not the maximum here, as it is in ONNX's ArgMax: inputs are
    taken to be finite."""
    from compiler.backend.ranges import _propagate

    found = [n for n in graph.topo_order() if graph.node(n)["op"] == "ArgMax"]
    known = _propagate(graph, {})[0] if found else {}
    for name in found:
        nd = graph.node(name)
        x, y = nd["inputs"][0], nd["outputs"][0]
        xt, yt = graph.values[x], graph.values[y]
        rank = xt.rank
        axis = int(nd["attrs"].get("axis", 0))
        if not -rank <= axis < rank:
            raise CompileError(f"ArgMax (node {name!r}): axis {axis} is out of range for rank "
                               f"{rank}")
        axis %= rank
        keep = int(nd["attrs"].get("keepdims", 1))
        last = int(nd["attrs"].get("select_last_index", 0))
        n = int(xt.shape[axis])
        emit = Emit(graph, name, nd["order"])
        graph.remove_node(name)
        xf = x
        if not xt.dtype.startswith(("float", "bfloat")):
            lo, hi = known.get(x, (-(2**31), 2**31 - 1))
            if xt.dtype == "bool":
                lo, hi = 0, 1
            if max(-lo, hi) > _FLOAT_EXACT:
                raise CompileError(f"ArgMax (node {name!r}): its {xt.dtype} input may exceed "
                                   f"2^24 in magnitude (range {lo}..{hi}); it is compared in "
                                   "float32, where such integers are not all exact")
            xf = emit("Cast", [x], TensorType("float32", xt.shape), {"to": 1})
        elif xt.dtype != "float32":
            xf = emit("Cast", [x], TensorType("float32", xt.shape), {"to": 1})
        kept = tuple(1 if d == axis else e for d, e in enumerate(xt.shape))
        m = emit("ReduceMax", [xf], TensorType("float32", kept), {"axes": (axis,), "keepdims": 1})
        eq = emit("Equal", [xf, m], TensorType("bool", xt.shape))
        idx = graph.add_const(graph.fresh_name(f"{name}_index"), np.arange(
            n, dtype=np.float32).reshape((n,) + (1,) * (rank - 1 - axis)), kind="const")
        other = graph.add_const(graph.fresh_name(f"{name}_none"),
                                np.array(-1.0 if last else float(n), np.float32), kind="const")
        w = emit("Where", [eq, idx, other], TensorType("float32", xt.shape))
        red, kt = {"axes": (axis,), "keepdims": 1}, TensorType("float32", kept)
        if last:
            r = emit("ReduceMax", [w], kt, red)
        else:
            nw = emit("Neg", [w], TensorType("float32", xt.shape))
            r = emit("Neg", [emit("ReduceMax", [nw], kt, red)], kt)
        if not keep:
            r = emit.shaped("Reshape", r, tuple(yt.shape))
        emit("Cast", [r], yt, {"to": 7, "integral": 1, "value_range": (0, n - 1)}, out=y)


def _guarded_softmax(graph: Graph) -> None:
    """Where(IsNaN(s), 0, s) with s = Softmax(x) (the guard an exporter writes around
    attention's Softmax when its mask holds -inf; DecomposeSoftmaxGuards keeps it then): a
    Softmax node with attribute nan_to_zero, whose lowering divides by max(row sum, 1) instead
    of the row sum (lower_softmax). A row sum is at least 1 (its largest term is exp(0))
    unless every column is -inf, where it is 0: such a row is then all 0, as the guard makes
    it, and its lanes past the last column stay finite (the row's pads are exp(0) = 1 there,
    and 1 / 0 would be inf, which the guard does not see and a MatMul turns into NaN). If s
    is read elsewhere too (or is a graph output), the guarded Softmax is a second node beside
    it; else it replaces it (one pass over the probabilities fewer, too)."""
    for name in graph.topo_order():
        if name not in graph.g.nodes:
            continue
        nd = graph.node(name)
        if nd["op"] != "Softmax" or nd["attrs"].get("nan_to_zero"):
            continue
        s = nd["outputs"][0]
        if graph.values[s].shape[-1:] in ((1,), ()):
            continue  # (over one element: lower_softmax_one, guard kept)
        for isnan in [u for u in graph.consumers(s) if graph.node(u)["op"] == "IsNaN"]:
            c = graph.node(isnan)["outputs"][0]
            where = graph.consumers(c)
            if len(where) != 1 or c in graph.outputs or graph.node(where[0])["op"] != "Where":
                continue
            where = where[0]
            cond, zero, val = graph.node(where)["inputs"]
            arr = graph.const_array(zero) if graph.is_const(zero) else None
            y = graph.node(where)["outputs"][0]
            if cond != c or val != s or arr is None or arr.size != 1 \
                    or float(np.asarray(arr).reshape(-1)[0]) != 0 \
                    or graph.values[y] != graph.values[s]:
                continue
            attrs = dict(nd["attrs"], nan_to_zero=1)
            ins, order, ty = list(nd["inputs"]), nd["order"], graph.values[y]
            graph.remove_node(where)
            graph.remove_node(isnan)
            if s in graph.outputs or graph.consumers(s):  # s itself is read elsewhere
                graph.add_node(graph.fresh_name(f"{name}_guarded"), "Softmax", ins, [y], attrs,
                               types=[ty], order=order)
            else:
                graph.remove_node(name)
                graph.add_node(name, "Softmax", ins, [y], attrs, types=[ty], order=order)
                break
    graph.prune()


def _mask_into_softmax(graph: Graph) -> None:
    """Softmax(x + mask) over the last axis, with mask one row broadcast over all of x's rows
    (attention's padding mask [1, 1, 1, keys]), and the sum read by nothing else: a Softmax
    node with the mask as a second input (the backend's own form), whose first pass adds the
    mask with its pad lanes at the type's lowest value (lower_softmax). One pass over the
    scores instead of two: the Add's, and the one that sets the pad lanes."""
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] != "Softmax" or len(nd["inputs"]) != 1:
            continue
        a = nd["inputs"][0]
        shape = tuple(graph.values[a].shape)
        n = len(shape)
        add = graph.producer(a)
        if not n or int(nd["attrs"].get("axis", -1)) % n != n - 1 or add is None \
                or graph.node(add)["op"] != "Add" or a in graph.outputs \
                or len(graph.consumers(a)) != 1:
            continue
        p, q = graph.node(add)["inputs"][:2]
        if tuple(graph.values[q].shape) == shape:
            p, q = q, p
        qs = tuple(graph.values[q].shape)
        row = (1,) * (n - len(qs)) + qs
        if tuple(graph.values[p].shape) != shape or p == q or len(qs) > n \
                or row != (1,) * (n - 1) + (shape[-1],) \
                or graph.values[p].dtype != graph.values[a].dtype \
                or graph.values[q].dtype != graph.values[a].dtype:
            continue
        order, yt = nd["order"], graph.values[nd["outputs"][0]]
        y, attrs = nd["outputs"][0], dict(nd["attrs"])
        graph.remove_node(name)
        graph.remove_node(add)
        graph.add_node(name, "Softmax", [p, q], [y], attrs, types=[yt], order=order)
    graph.prune()


def _round_before_moves(graph: Graph, product_dtype: str) -> None:
    """A MatMul of two computed operands rounds both to product_dtype (its MXM type) first.
    Where an operand comes through moves (Reshape, Transpose, ...) used by nothing else, the
    rounding (a Cast) goes before them: the same values, but the moves carry half the bytes
    and the MatMul converts nothing (K^T in attention is 64 one-lane vectors per head, K one
    vector per row)."""
    ir = _IR_FLOAT.get(product_dtype)
    if ir is None:
        return
    for _name, nd in _activation_products(graph):
        for v in nd["inputs"][:2]:
            chain, cur = [], v
            while graph.num_uses(cur) == 1 and cur not in graph.outputs:
                p = graph.producer(cur)
                if p is None or graph.node(p)["op"] not in _RELABELS \
                        or len(graph.node(p)["outputs"]) != 1:
                    break
                chain.append(p)
                cur = graph.node(p)["inputs"][0]
            if not chain or graph.values[cur].dtype != "float32":
                continue
            rounded = graph.fresh_name(f"{cur}@{product_dtype}")
            graph.add_node(None, "Cast", [cur], [rounded], {"to": _ONNX_CAST_TO[ir]},
                           types=[TensorType(ir, tuple(graph.values[cur].shape))],
                           order=graph.node(chain[-1])["order"] - 0.5)  # lowered just before
            graph.set_input(chain[-1], 0, rounded)
            for p in chain:
                out = graph.node(p)["outputs"][0]
                graph.values[out] = TensorType(ir, tuple(graph.values[out].shape))


# a model in which a tensor finds no free range is compiled again with the size thresholds of
# splits.py halved, up to this many times (large tensors in smaller pieces): GPT-2-small's
# int8 prefill of 160 tokens, whose FFN output [1, 160, 1920] found no range, fits at the
# second retry. A model that fits at the first try keeps its program.
TIGHT_RETRIES = 2


def compile_graph(graph: Graph, arch, *, precision: str = "fp32") -> Program:
    """Lower a canonicalised graph to a single-chip Program for `arch` (the caller's graph is
    not changed: lowering adds constants of its own to a copy). Where a tensor finds no room,
    again with large tensors in smaller pieces (TIGHT_RETRIES); the last error if none fits."""
    for tight in range(TIGHT_RETRIES + 1):
        try:
            return _compile_graph(graph, arch, precision, tight)
        except NoRoomError:
            if tight == TIGHT_RETRIES:
                raise
    raise AssertionError("unreachable")


def _compile_graph(graph: Graph, arch, precision: str, tight: int) -> Program:
    """compile_graph with splits.py's thresholds halved `tight` times."""
    graph = graph.copy()
    _argmax_as_reduces(graph)
    gather_elements_as_selects(graph)
    pads_as_concats(graph)
    canonical_products(graph)
    last_axis_forms(graph)
    narrow_floats_in_fp32(graph)
    _full_const_conditions(graph)
    _constant_outputs(graph)
    if precision in QUANTIZED:
        _split_norm_affine(graph)
    _fold_norm_affine(graph)
    _vector_products(graph)
    _cached_scores(graph, arch.lanes)
    _transposed_heads(graph)
    _fold_score_scale(graph)
    _mask_into_softmax(graph)
    head_groups(graph, arch.lanes, tight)
    row_blocks(graph, arch.lanes, tight)
    joined = output_parts(graph, arch.lanes, tight)
    _one_key_merged(graph)
    _one_key_fused_projection(graph)
    _merged_values_product(graph, arch.lanes)
    _drop_unread_split_columns(graph)
    _guarded_softmax(graph)
    ranges = integer_ranges(graph)
    if precision not in PRECISIONS:
        raise CompileError(f"unknown precision {precision!r} (choose from "
                           f"{', '.join(PRECISIONS)})")
    if precision not in MXM_POLICY:
        raise CompileError(f"precision {precision} is not implemented yet (implemented: "
                           f"{', '.join(MXM_POLICY)})")
    mxm_dtype = MXM_POLICY[precision]
    arch.mxm_rate_of(mxm_dtype)  # the preset must accept it on the MXM
    # the int8 and fp8 policies sum Softmax rows and LayerNorm means on the MXM in fp16 (fp32
    # accumulation), as they run attention's activation products, where the preset has fp16
    # in hardware (fp32 passes are emulated at a sixteenth of the rate)
    sum_dtype = "fp16" if precision in QUANTIZED and "fp16" in arch.mxm_rate else None
    _round_before_moves(graph, "fp16" if precision in QUANTIZED else mxm_dtype)
    for name in graph.topo_order():
        nd = graph.node(name)
        if nd["op"] not in LOWERED_OPS:
            raise CompileError(f"op {nd['op']!r} (node {name!r}) is not lowered to the machine "
                               f"yet; lowered ops: {', '.join(LOWERED_OPS)}")
    mem = [q.index for q in arch.queues if q.kind == "MEM"]
    _check_fits(graph, arch, len(mem), precision)
    alloc = Allocator(arch, mem)
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

        def tiled(self, v: str, md: str, sparse: bool = False):
            """Constant [K, N] v as MXM weight tiles of machine dtype md (loaded many rows
            per cycle, and before the activations are ready); `sparse`: no tiles of zeros."""
            return tiled_weight(v, md, sparse=sparse)

    place: dict[str, Placement] = _Places()
    index_ranges: dict[str, tuple[int, int]] = {}  # graph inputs used as Gather indices
    typed: dict[tuple[str, str], Placement] = {}  # a constant stored in another element type
    # MatMul weights in MXM tiles: (value, machine dtype) -> (tiles, data, tensor kind)
    tiled: dict[tuple[str, str], tuple[lower.Tiled, np.ndarray | None, str]] = {}

    def tiled_weight(v: str, md: str, data: np.ndarray | None = None, sparse: bool = False,
                     rows: int = 1):
        """Constant [K, N] weight v stored as MXM tiles of machine dtype md (data: the values
        to store, when not v's own, e.g. int8 quantized). `sparse`: tiles of zeros are left
        out (lower.matmul skips them), but for one per column of tiles with nothing else.
        `rows`: the activations' rows (the load width, LW_STREAMS or LW_STREAMS_MANY)."""
        if (v, md) not in tiled:
            ty = graph.values[v]
            if len(ty.shape) != 2:
                return as_type(v, md)
            arr = data if data is not None else graph.const_array(v)
            K, N = ty.shape
            L = arch.lanes
            g = dtype_info(md).nbytes
            streams = LW_STREAMS if rows <= LW_FEW_ROWS else LW_STREAMS_MANY
            R = max(1, min(streams, arch.mxm_load_streams_max) // g)  # rows per LW cycle
            tiles = {}
            for kt in range(-(-K // L)):
                for nt in range(-(-N // L)):
                    rk, cn = min(L, K - kt * L), min(L, N - nt * L)
                    if sparse and arr is not None and not np.any(
                            arr[kt * L:kt * L + rk, nt * L:nt * L + cn]) and np.any(
                            arr[:, nt * L:nt * L + cn]):
                        continue
                    parts: list[Placement] = []
                    for j in range(min(R, rk)):  # rows j, j + R, ... in their own slices
                        p, _ = alloc.alloc(md, (len(range(j, rk, R)), cn), g, resident=True,
                                           avoid=frozenset(s for q in parts for s in q.slices))
                        parts.append(p)
                    tiles[(kt, nt)] = tuple(parts)
            kind = "weight" if graph.consts[v].kind == "weight" else "const"
            tiled[(v, md)] = (lower.Tiled(md, K, N, tiles), arr, kind)
        return tiled[(v, md)][0]

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
        """A value [..., 1] (one element, say) spread into every lane of one vector per row, by
        the MXM (x @ a row of ones) or for integers the SXM; returns the name its placement is
        registered under."""
        name = f"__spread_{v}"
        if name not in place and not dtype_info(place[v].dtype).is_float:
            src = place[v]
            sp, after = alloc.alloc(src.dtype, (src.rows, arch.lanes), len(src.slices))
            ready[name] = spread_int(sch, alloc, src, sp, max(ready.get(v, 0), after),
                                     f"spread {v}")
            place[name] = sp
            clean[name] = True
        if name not in place:
            ones = "__ones_row"
            if ones not in graph.consts:
                graph.add_const(ones, np.ones((1, arch.lanes), np.float32), kind="const")
            src = place[v]
            sp, after = alloc.alloc(src.dtype, (src.rows, arch.lanes), len(src.slices))
            ready[name] = lower.matmul(sch, src, place[ones], sp,
                                       max(ready.get(v, 0), after), f"spread {v}",
                                       zero=zero(src.dtype))
            place[name] = sp
            clean[name] = True
        return name

    def zero(mdtype: str) -> list[Placement]:
        """Zero vectors of a machine dtype, the padding rows of short weight tiles: as many
        copies as one weight load reads rows per cycle, in different slices where space
        allows."""
        out = []
        for c in range(max(1, lower.S_LW // dtype_info(mdtype).nbytes)):
            name = "__zero" if c == 0 else f"__zero{c}"
            if name not in graph.consts:
                graph.add_const(name, np.zeros(arch.lanes, np.float32), kind="const")
            out.append(as_type(name, mdtype))
        return out
    tensors: list[TensorSpec] = []
    reading: list[frozenset[int]] = [frozenset()]  # slices the current op's inputs are in

    def new(value: str, not_before: int = 0, avoid: frozenset[int] = frozenset(),
            dtype: str | None = None) -> tuple[Placement, int]:
        """A placement for value (in machine type `dtype` if given, else its own) and the
        first cycle it may be written."""
        ty = graph.values[value]
        md = dtype or _machine_dtype(ty.dtype, f"value {value!r}")
        resident = value in graph.consts or value in graph.inputs
        arr = graph.const_array(value) if value in graph.consts else None
        if arr is not None and arr.size and not dtype_info(md).is_float:
            info = np.iinfo(numpy_dtype(md))
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise CompileError(f"constant {value!r} ({ty.dtype}) holds values outside "
                                   f"the range of {md}, the type the machine holds it in")
        # away from the op's inputs (streaming reads and writes of one bank collide) and from
        # `avoid`, where there is room: both are preferences (the scheduler keeps the ports)
        got = alloc.try_alloc(md, tuple(ty.shape), dtype_info(md).nbytes,
                              avoid | reading[0], resident) or \
            alloc.try_alloc(md, tuple(ty.shape), dtype_info(md).nbytes, avoid, resident)
        p, after = got or alloc.alloc(md, tuple(ty.shape), dtype_info(md).nbytes,
                                      resident=resident)
        place[value] = p
        return p, max(after, not_before)

    def quant_weight(wname: str, qdtype: str, what: str, rows: int = 1) -> None:
        """A MatMul weight quantized per output channel, in MXM tiles (for activations of
        `rows` rows), and its scales."""
        if (wname, qdtype) not in tiled:
            ty = graph.values[wname]
            if len(ty.shape) != 2:
                raise CompileError(f"{what}: {precision} weights of rank {len(ty.shape)} are "
                                   "not lowered yet")
            wq_data, w_scale = quantize_weights(graph.const_array(wname), qdtype)
            tiled_weight(wname, qdtype, wq_data, rows=rows)
            graph.add_const(f"{wname}@{qdtype}.scale", w_scale,
                            ty=TensorType("float32", (ty.shape[-1],)), kind="const")

    for v in graph.inputs:
        new(v)
        ready[v] = 0
    # weights and tables first: they need space no temporary has used (they are in SRAM
    # before the run), which is easiest to find before any temporary is placed
    for name in graph.topo_order():
        nd = graph.node(name)
        ins = nd["inputs"]
        if nd["op"] in lower.MATMULS and graph.is_const(ins[1]):
            if precision in QUANTIZED:
                quant_weight(ins[1], QUANTIZED[precision], f"{nd['op']} (node {name!r})",
                             _rows(graph, ins[0]))
            else:
                tiled_weight(ins[1], mxm_dtype, rows=_rows(graph, ins[0]))
        elif nd["op"] == "Gather" and graph.is_const(ins[0]) and not graph.is_const(ins[1]) \
                and len(graph.values[ins[0]].shape) >= 2:
            table_chunks(graph, arch, sch, alloc, ins[0], place, TABLE_DTYPE[precision])
    last_use = _last_uses(graph)
    # {v: R}: R's row absmax is v's (one-key attention), found when v is ready
    absmax_from = _one_key_outputs(graph) if precision in QUANTIZED else {}
    pending_absmax: dict[str, tuple] = {}
    order = graph.topo_order()
    # the values living in each placement (a reshape that keeps the last dim shares its
    # input's): the space is free when the last of them is dead
    owners: dict[tuple, set[str]] = {}
    # per placement, the cycle by which every node that read it so far is done: the last
    # reader in graph order need not be the last in time (an earlier one may wait longer)
    read_until: dict[tuple, int] = {}

    def key(p: Placement) -> tuple:
        return (p.slices, p.addr)

    def finish(name: str, ins, outs) -> None:
        """After node `name`: register its outputs' placements and free the space of values
        read for the last time (or never read), unless another live value shares it, once
        every node that read the space is done."""
        for o in outs:
            if o in absmax_from and clean.get(o, False):  # a one-key attention's absmax
                p = place[o]
                few = p.rows <= FEW_ROWS and p.dtype == "fp32"  # (the floor is 0 in fp16)
                m, t = row_absmax(sch, alloc, p, ready[o], f"absmax of {o!r}",
                                  floor=ABSMAX_FLOOR if few else None)
                if p.dtype != "fp32":  # exact: every fp16 value is an fp32 value
                    m32, a = alloc.alloc("fp32", m.shape, 4, avoid=frozenset(m.slices))
                    t = lower.elementwise(sch, ["cvt"], m, None, None, m32, max(t, a),
                                          f"absmax of {o!r}")
                    alloc.release(m, t)
                    m = m32
                pending_absmax[absmax_from[o]] = (m, t, few)
        done = max([ready.get(o, 0) for o in outs if o] + [0])
        for i in ins:
            if i and i in place:
                k = key(place[i])
                read_until[k] = max(read_until.get(k, 0), done)
        for o in outs:
            if o and o in place and o not in graph.outputs:
                owners.setdefault(key(place[o]), set()).add(o)
        dead = [i for i in ins if i and last_use.get(i) == name]
        dead += [o for o in outs if o and o not in last_use]
        for v in dead:
            if v in graph.outputs or v in graph.inputs or graph.is_const(v) or v not in place:
                continue
            k = key(place[v])
            vals = owners.get(k)
            if vals is None or v not in vals:
                continue
            vals.discard(v)
            if not vals and not _aliased(v, place, graph.outputs):
                del owners[k]
                alloc.release(place[v], max(done, read_until.pop(k, 0)))
    fused: set[str] = set()  # nodes lowered together with the one before them
    for name in order:
        nd = graph.node(name)
        op, ins, outs = nd["op"], list(nd["inputs"]), nd["outputs"]
        what = f"{op} (node {name!r})"
        sch.begin_op(name, op)
        start = max([ready.get(i, 0) for i in ins if i] + [0])
        alloc.now = start
        # few rows (latency-bound): small temporaries near the VXM
        alloc.near = all(_rows(graph, o) <= FEW_ROWS for o in outs if o)
        empty = {v for v in list(ins) + list(outs) if v and graph.values[v].size == 0}
        if empty:
            if all(graph.values[o].size == 0 for o in outs if o):  # nothing to compute
                for o in outs:
                    if o:
                        new(o)
                        ready[o], clean[o] = start, True
                finish(name, ins, outs)
                continue
            if op == "Concat":  # an empty piece adds nothing
                nd = dict(nd, inputs=[v for v in ins if v not in empty])
            elif op == "Split":  # an empty piece is not written
                for o in outs:
                    if o in empty:
                        new(o)
                        ready[o], clean[o] = start, True
                nd = dict(nd, outputs=["" if o in empty else o for o in outs])
                outs = nd["outputs"]
            else:
                raise CompileError(f"{what}: tensors with no elements are not lowered yet")
        reading[0] = frozenset(s for i in ins if i and i in place for s in place[i].slices)
        for v in ins + list(outs):
            vt = graph.values[v] if v else None
            as_index = op in _PASS_THROUGH or (op == "Gather" and v == ins[1]) \
                or (op == "Cast" and v == ins[0])
            if v in ranges.wrapped and v in ins and op not in WRAP_SAFE:
                raise CompileError(f"{what}: {v!r} ({vt.dtype}) may have wrapped around (a "
                                   "difference below zero): reading it as a number is not "
                                   "lowered yet")
            exact = op in ARITH and outs[0] in ranges.exact  # see compiler.backend.ranges
            # a product of two computed operands converts each to its MXM type on its own
            as_index = as_index or (op in ("MatMul", "HeadMatMul") and v in ins
                                    and vt.dtype in _IR_FLOAT.values()
                                    and not any(graph.is_const(i) for i in ins[:2]))
            if vt is not None and vt.dtype not in _AS_FLOAT and not graph.is_const(v) \
                    and not as_index and not exact and not _type_ok(op, v, ins, vt.dtype):
                why = (f"; the machine holds {vt.dtype} as {_MACHINE[vt.dtype]}, so only "
                       "comparisons, Cast, Gather, Pow exponents, moves, selections (Where, "
                       "Max, Min, Trilu), Mod, unsigned Div, uint8/uint16 arithmetic and Add, "
                       "Sub, Mul proven to stay in int32 read it"
                       if vt.dtype in _WIDENED else "")
                raise CompileError(f"{what}: element type {vt.dtype} (value {v!r}) is not "
                                   f"lowered yet for this op{why}")
        if op == "Identity" and graph.is_const(ins[0]):  # a constant output, copied out
            z, a = new(outs[0], start)
            ready[outs[0]] = lower.elementwise(sch, ["copy"], place[ins[0]], None, None, z,
                                               max(start, a), what)
            clean[outs[0]] = True
            finish(name, ins, outs)
            continue
        if name in fused:  # done with its neighbour (see _row_move_beside)
            finish(name, ins, outs)
            continue
        if op in lower.ALIASES or (op == "Identity"):
            src = place[ins[0]]
            ty = graph.values[outs[0]]
            rows, cols = rows_cols(tuple(ty.shape))
            if cols != src.cols:
                mv = _row_move_beside(graph, name, after=True) if cols < src.cols else None
                if mv is None:
                    z, a = new(outs[0], start)
                    ready[outs[0]] = lower_reshape(sch, alloc, src, z, max(start, a), what)
                else:  # split, then the Transpose's row order: written there directly
                    t_name, row_of = mv
                    t_out = graph.node(t_name)["outputs"][0]
                    z, a = new(t_out, start)
                    ready[outs[0]] = ready[t_out] = lower_reshape(
                        sch, alloc, src, z, max(start, a), what, z_row=row_of)
                    clean[t_out] = clean.get(ins[0], False)
                    fused.add(t_name)
                clean[outs[0]] = clean.get(ins[0], False)
                finish(name, ins, outs)
                continue
            place[outs[0]] = Placement(src.dtype, tuple(ty.shape), rows, cols, src.vpr,
                                       src.slices, src.addr)
            ready[outs[0]] = ready[ins[0]]
            clean[outs[0]] = clean.get(ins[0], False)
            if ins[0] in spread:  # same rows, one column: still one vector per row
                spread.add(outs[0])
            finish(name, ins, outs)
            continue
        out = outs[0]
        if op in lower.MATMULS:
            x = place[ins[0]]
            if x.cols % arch.lanes and not clean.get(ins[0], False):
                raise CompileError(f"{what}: the activation's lanes past its last column may "
                                   "hold inf or NaN (it comes from an op like Reciprocal or "
                                   "Log); masking them is not lowered yet")
            clean[out] = True
            if not graph.is_const(ins[1]) and ins[0] in spread \
                    and _outer_product(graph, ins, out):
                ready[out] = lower_outer_product(sch, alloc, x, place[ins[1]], new(out, start),
                                                 graph.values[ins[0]].shape[-2],
                                                 max(start, ready.get(ins[1], 0)), what)
                clean[out] = clean.get(ins[1], False)
                finish(name, ins, outs)
                continue
            if not graph.is_const(ins[1]):
                ready[out] = _matmul_activations(graph, sch, alloc, x, ins, out, mxm_dtype,
                                                 precision, start, what, new, place, zero,
                                                 ready)
                clean[out] = clean.get(ins[1], False)
                finish(name, ins, outs)
                continue
            bias = ins[2] if len(ins) > 2 and ins[2] else None
            if precision in QUANTIZED:
                wname, qd = ins[1], QUANTIZED[precision]
                quant_weight(wname, qd, what)
                if ins[0] in pending_absmax:
                    m, t_m, floored = pending_absmax.pop(ins[0])
                    alloc.derive(x, ("absmax",), [m], (m, t_m, floored))
                w_scale = place[f"{wname}@{qd}.scale"]
                if bias is None:
                    y, nb = new(out, start)
                    ready[out] = lower_matmul_quant(sch, alloc, x, tiled[(wname, qd)][0],
                                                    w_scale, y, max(start, nb), what, zero,
                                                    clean.get(ins[0], False))
                else:
                    shape = tuple(graph.values[out].shape)
                    rows, cols = rows_cols(shape)
                    # many rows: in parts, column tiles in turn, as the results' scales (the
                    # bias pass reads a tile while the MXM's later tiles are rescaled)
                    tmp_parts, nb = tile_parts(alloc, "fp32", rows, -(-cols // arch.lanes),
                                                arch.lanes, 4, frozenset()) \
                        if rows >= S_PARTS_ROWS and cols > arch.lanes else ([], 0)
                    if tmp_parts:
                        tmp = parts_whole(tmp_parts, "fp32", shape)
                    else:
                        tmp, nb = alloc.alloc("fp32", shape, 4)
                    parts: list = []
                    t1 = lower_matmul_quant(sch, alloc, x, tiled[(wname, qd)][0], w_scale,
                                            tmp, max(start, nb), what, zero,
                                            clean.get(ins[0], False), tiles=parts,
                                            y_parts=tuple(tmp_parts))
                    ready[out] = _add_bias(sch, alloc, tmp, place[bias], out, new, t1, what,
                                           _copies_for(graph, out, arch.lanes), parts,
                                           tuple(tmp_parts))
            else:
                ready[out] = _matmul_float(graph, sch, alloc, x, ins, out, bias, mxm_dtype,
                                           start, what, new, place, tiled_weight, zero)
        elif op == "Cast":
            ready[out], clean[out] = lower_cast(graph, sch, alloc, nd, place, new, start, what,
                                                clean)
            if ins[0] in spread:
                spread.add(out)
        elif op == "Where":
            ready[out], clean[out] = lower_where(graph, sch, alloc, nd, place, new, start,
                                                 what, clean, spread, spread_scalar,
                                                 lambda v: ready.get(v, 0))
        elif op in ("Sin", "Cos"):
            ready[out], clean[out] = lower_trig(graph, sch, alloc, nd, place, new, start, what,
                                                clean)
        elif op == "Mod":
            ready[out], clean[out] = lower_mod(graph, sch, alloc, nd, place, new, start, what,
                                               spread_scalar, lambda v: ready.get(v, 0))
        elif op == "Trilu":
            ready[out], clean[out] = lower_trilu(graph, sch, alloc, nd, place, new, start, what,
                                                 clean, spread_scalar,
                                                 lambda v: ready.get(v, 0))
        elif op == "Expand":
            ready[out] = lower_expand(graph, sch, nd, place, new, start, what)
            clean[out] = clean.get(ins[0], False)
        elif op == "Gather":
            ready[out], clean[out] = lower_gather(graph, arch, sch, alloc, nd, place, new,
                                                  start, what, clean, index_ranges,
                                                  TABLE_DTYPE[precision])
        elif op in NORMS:
            ready[out] = lower_norm(graph, arch, sch, alloc, nd, place, new, start, what, zero,
                                    clean, spread, sum_dtype,
                                    absmax=precision in QUANTIZED
                                    and _feeds_quantized(graph, out, only=False))
            clean[out] = True
        elif op == "HeadMatMul":
            ready[out] = lower_head_matmul(graph, sch, alloc, nd, place, new, start, what, zero,
                                           "fp16" if precision in QUANTIZED else mxm_dtype,
                                           lambda v: ready.get(v, 0))
            # a pad lane is 0 (P times zeroed weights) but in a row that is NaN throughout
            clean[out] = True
        elif op == "SegmentSum":
            ready[out] = lower_segment_sum(graph, sch, alloc, nd, place, new, start, what, zero,
                                           clean)
            clean[out] = True
        elif op == "SoftmaxOne" or (
                op in ("Softmax", "LogSoftmax") and graph.values[ins[0]].shape[-1:] == (1,)
                and place[ins[0]].dtype in ("fp32", "fp16")
                and (ins[0] in spread or clean.get(ins[0], False))
                and (len(ins) < 2 or not ins[1] or clean.get(ins[1], False))):
            # over one element: exp(v - v); a spread x (and mask) gives a spread result
            # (SoftmaxOne: _one_key_merged's, on a SegmentSum's result, always clean)
            mask, t_mask = None, 0
            if len(ins) > 1 and ins[1]:
                m_name = ins[1]
                m_arr = graph.const_array(m_name) if graph.is_const(m_name) else None
                if (ins[0] in spread or op == "SoftmaxOne") and m_arr is not None:  # all lanes
                    m_name = f"__spread_{m_name}"
                    if m_name not in graph.consts:
                        graph.add_const(m_name, np.full(
                            (1, arch.lanes), m_arr.reshape(-1)[0],
                            numpy_dtype(place[ins[0]].dtype)), kind="const")
                elif ins[0] in spread or op == "SoftmaxOne":
                    m_name = spread_scalar(m_name)
                mask, t_mask = place[m_name], ready.get(m_name, 0)
            ready[out] = lower_softmax_one(sch, alloc, nd, place[ins[0]], mask, new, start,
                                           what, t_mask)
            clean[out] = True
            if ins[0] in spread:
                spread.add(out)
        elif op in ("Softmax", "LogSoftmax"):
            ready[out] = lower_softmax(graph, arch, sch, alloc, nd, place, new, start, what, zero,
                                       clean, sum_dtype,
                                       ready.get(ins[1], 0) if len(ins) > 1 and ins[1] else 0,
                                       numerators=_numerators_only(graph, nd, place, sum_dtype))
            clean[out] = True
        elif op == "Transpose" and _moves_last(nd, graph):
            ready[out] = lower_transpose_last(graph, arch, sch, alloc, nd, place, new, start,
                                              what)
            clean[out] = clean.get(ins[0], False)
        elif op == "Transpose" and (mv := _row_move_beside(graph, name, after=False)):
            # the Transpose's rows go straight into the lane merge of the Reshape after it
            r_name, row_of = mv
            r_out = graph.node(r_name)["outputs"][0]
            z, a = new(r_out, start)
            ready[out] = ready[r_out] = lower_reshape(sch, alloc, place[ins[0]], z,
                                                      max(start, a), what, x_row=row_of)
            clean[out] = clean[r_out] = clean.get(ins[0], False)
            fused.add(r_name)
        elif op in MOVES:
            ready[out] = lower_data_movement(graph, sch, alloc, nd, place, new, start, what)
            for o in outs:
                if o:
                    ready[o] = ready[out]
                    clean[o] = clean.get(ins[0], False) if op != "Concat" else \
                        all(clean.get(i, False) for i in ins)
        elif op == "Clip":
            ready[out], clean[out] = lower_clip(graph, sch, alloc, nd, place, new, start, what,
                                           clean, spread_scalar, lambda v: ready.get(v, 0))
        elif op == "Gelu":
            x = place[ins[0]]
            # quantized for a MatMul: the scale's bound found from x beside the Gelu's
            # passes, not from its output after them (measured on BERT-base int8: seq 128
            # 923,256 -> 901,423 cycles, seq 96 752,842 -> 749,441, seq 64 546,272 -> 546,220;
            # GPT-2-small's one-token step took it already)
            bound = precision in QUANTIZED and clean.get(ins[0], False) \
                and _feeds_quantized(graph, out)
            if bound:
                m, t_m = gelu_absmax_bound(graph, sch, alloc, place, x, start, what)
            ready[out] = lower_sequence(sch, alloc, x, new, out, start, what,
                                   GELU[str(nd["attrs"].get("approximate", "none"))])
            if bound:
                alloc.derive(place[out], ("absmax",), [m], (m, t_m, True))  # floored
            clean[out] = clean.get(ins[0], False)
        elif op == "ReduceMax":
            ready[out] = lower_reduce_max(graph, arch, sch, alloc, nd, place, new, start, what,
                                          clean)
            clean[out] = True
            spread.add(out)
        elif op in REDUCES:
            ready[out] = lower_reduce(graph, arch, sch, alloc, nd, place, new, start, what,
                                      zero, clean, REDUCES[op])
            clean[out] = True
            spread.add(out)
        else:
            ready[out], clean[out] = lower_elementwise(graph, sch, alloc, nd, place, new, start,
                                                  what, clean, spread,
                                                  lambda v: ready.get(v, 0), spread_scalar)
        finish(name, ins, outs)
    for v in graph.inputs:
        tensors.append(_spec(v, "input", place[v], None))
    for v, c in graph.consts.items():
        kind = "weight" if c.kind == "weight" else "const"
        if v in place:
            tensors.append(_spec(v, kind, place[v], c.array))
    L = arch.lanes
    for (v, md), (tw, data, kind) in sorted(tiled.items(), key=lambda kv: kv[0]):
        for (kt, nt), parts in sorted(tw.tiles.items()):
            R = len(parts)
            for j, p in enumerate(parts):
                part = None if data is None else np.asarray(data)[
                    kt * L + j:kt * L + min(L, tw.rows - kt * L):R,
                    nt * L:nt * L + p.cols].astype(numpy_dtype(md))
                tensors.append(TensorSpec(f"{v}@{md}.k{kt}n{nt}r{j}", kind, md,
                                          tuple(p.shape), 0, tuple(p.slices), p.addr, 1, part))
    for name, (p, data) in sorted(sch.data.items()):
        tensors.append(TensorSpec(name, "const", p.dtype, tuple(p.shape), 0, tuple(p.slices),
                                  p.addr, 1, data))
    for (v, md), p in sorted(typed.items()):
        tensors.append(_spec(f"{v}@{md}", "weight" if graph.consts[v].kind == "weight"
                             else "const", p, graph.consts[v].array))
    for v in graph.outputs:
        if v in graph.inputs or graph.is_const(v):
            raise CompileError(f"graph output {v!r} is an input or a constant: nothing to "
                               "compute")
        tensors.append(_spec(v, "output", place[v], None))
    _check_distinct(tensors)
    chip, tags = _emit(sch, arch)
    meta = {"generator": "lpusim compile", "precision": precision, "graph": graph.name}
    host_types = {v: graph.values[v].dtype for v in list(graph.inputs) + list(graph.outputs)
                  if graph.values[v].dtype not in ("float32",)}
    if host_types:  # the host's element type where the chip holds another (see _MACHINE)
        meta["host_types"] = dict(sorted(host_types.items()))
    if index_ranges:
        meta["index_inputs"] = {k: list(v) for k, v in sorted(index_ranges.items())}
    if ranges.inputs:  # the ranges in which the program's int64/uint32/uint64 sums are exact
        meta["input_ranges"] = {k: list(v) for k, v in sorted(ranges.inputs.items())}
    if joined:  # graph outputs kept in parts (splits.output_parts), joined by the simulator
        meta["joined_outputs"] = joined
    # which node every instruction word lowers (the report's per-op roofline)
    meta["ops"] = [list(o) for o in sch.ops]
    meta["op_tags"] = [tags]
    return Program(arch.config, [chip], tensors, meta)


def _outer_product(graph: Graph, ins, out: str) -> bool:
    """A MatMul A [.., M, 1] @ B [.., 1, N] of computed operands with the same leading
    (batch) dimensions and float types: every product is one multiplication, no sum."""
    at, bt, yt = graph.values[ins[0]], graph.values[ins[1]], graph.values[out]
    return len(at.shape) >= 2 and len(at.shape) == len(bt.shape) and at.shape[-1] == 1 \
        and bt.shape[-2] == 1 and tuple(at.shape[:-2]) == tuple(bt.shape[:-2]) \
        and at.dtype == yt.dtype and at.dtype in _FLOATS and bt.dtype in _FLOATS


_FLOATS = ("float32", "float16", "bfloat16")


def _move_chain(graph: Graph, v: str, forward: bool) -> tuple[str, list[str]]:
    """From v, the single-use Reshapes and Transposes that follow it (forward: to the last
    value reached) or lead to it (backward: from the first); returns (that value, the nodes
    in data order)."""
    nodes: list[str] = []
    while True:
        if forward:
            users = graph.consumers(v)
            if len(users) != 1 or v in graph.outputs or graph.node(users[0])["op"] not in (
                    "Reshape", "Transpose"):
                return v, nodes
            nodes.append(users[0])
            v = graph.node(users[0])["outputs"][0]
        else:
            p = graph.producer(v)
            if p is None or graph.num_uses(v) != 1 or v in graph.outputs \
                    or graph.node(p)["op"] not in ("Reshape", "Transpose"):
                return v, nodes[::-1]
            nodes.append(p)
            v = graph.node(p)["inputs"][0]


def _index_map(graph: Graph, src: str, nodes: list[str]) -> np.ndarray:
    """The flat index in src of every element of the value the moves `nodes` make from it."""
    a = np.arange(graph.values[src].size, dtype=np.int64).reshape(graph.values[src].shape)
    for n in nodes:
        nd = graph.node(n)
        if nd["op"] == "Reshape":
            a = a.reshape(graph.values[nd["outputs"][0]].shape)
        else:
            a = a.transpose(_perm(nd, a.ndim))
    return a


def _one_key_merged(graph: Graph) -> None:
    """Attention against one key (one query, no past), as exporters write it: q, k, v [.., D]
    split into heads by moves (Q4, V4 [.., H, 1, hd]; K4 the same, or K^T [.., H, hd, 1]),
    S = ReduceSum(Q4 * K4) (from _vector_products) or Q4 @ K^T, maybe times or over a constant
    scale, P = Softmax(S [+ mask]) over one element, y = P @ V4, and y merged back by moves
    into R [.., D] read (maybe through Reshapes that keep D) only by MatMuls with constant
    weights. Rewritten on the merged layout, with no head split and no merge:
        s = SegmentSum(q * k)   (every lane: the sum over its head's lanes, one MXM pass
                                 against a block-diagonal matrix of ones) [* or / the scale]
        p = SoftmaxOne(s [, mask])   (exp(v - v): 1, or NaN for a non-finite score)
        R = p * v
    The same numbers: a head's sum adds the same products (the other heads' lanes meet zero
    weights), 1 * v is v. One difference: a non-finite product in one head makes the sums of
    the heads sharing its 320-lane tile NaN (0 * inf), where the reference has NaN in that
    head's lanes only; every MatMul reading R adds all of a row's lanes, so its outputs are
    NaN in that row either way. The head maps are checked on index arrays, not assumed."""
    for name, nd in _activation_products(graph):
        if not _outer_product(graph, nd["inputs"], nd["outputs"][0]):
            continue
        p_val, v4, y = nd["inputs"][0], nd["inputs"][1], nd["outputs"][0]
        sm = graph.producer(p_val)
        if sm is None or graph.node(sm)["op"] != "Softmax" or graph.num_uses(p_val) != 1 \
                or p_val in graph.outputs:
            continue
        s4, scale = graph.node(sm)["inputs"][0], None
        sp = graph.producer(s4)
        if sp is not None and graph.node(sp)["op"] in ("Mul", "Div") \
                and graph.num_uses(s4) == 1 and s4 not in graph.outputs:
            a, b = graph.node(sp)["inputs"][:2]
            if graph.node(sp)["op"] == "Mul" and graph.is_const(a):
                a, b = b, a
            if graph.is_const(b) and graph.values[b].size == 1 and not graph.is_const(a) \
                    and graph.values[b].dtype == "float32":
                scale, s4 = (graph.node(sp)["op"], b, sp), a
        rs = graph.producer(s4)
        if rs is None or graph.num_uses(s4) != 1 or s4 in graph.outputs:
            continue
        shape4 = tuple(graph.values[y].shape)
        first = rs  # the first node of the scores
        if graph.node(rs)["op"] == "ReduceSum":  # _vector_products' Mul and ReduceSum
            prod = graph.node(rs)["inputs"][0]
            mul = graph.producer(prod)
            rank = len(graph.values[prod].shape)
            axes = graph.node(rs)["inputs"][1] if len(graph.node(rs)["inputs"]) > 1 else ""
            if mul is None or graph.node(mul)["op"] != "Mul" or graph.num_uses(prod) != 1 \
                    or not axes or not graph.is_const(axes) \
                    or [int(a) % rank for a in graph.const_array(axes).reshape(-1)] \
                    != [rank - 1] or not int(graph.node(rs)["attrs"].get("keepdims", 1)) \
                    or tuple(graph.values[prod].shape) != shape4:
                continue
            q4, k4 = graph.node(mul)["inputs"][:2]
            score_nodes, first = [mul, rs], mul
            k_shape = shape4
        elif graph.node(rs)["op"] == "MatMul" and not any(
                graph.is_const(x) for x in graph.node(rs)["inputs"][:2]):  # Q4 @ K^T [.., hd, 1]
            q4, k4 = graph.node(rs)["inputs"][:2]
            score_nodes = [rs]
            k_shape = shape4[:-2] + (shape4[-1], 1)
        else:
            continue
        if tuple(graph.values[q4].shape) != shape4 or tuple(graph.values[v4].shape) != shape4 \
                or tuple(graph.values[k4].shape) != k_shape or q4 == k4:
            continue
        (q, qn), (k, kn), (v, vn) = (_move_chain(graph, x, False) for x in (q4, k4, v4))
        r, rn = _move_chain(graph, y, True)
        shape = tuple(graph.values[q].shape)
        # R: the first value after y of q's shape; the moves after it only relabel rows
        cut = next((i for i in range(1, len(rn) + 1)
                    if tuple(graph.values[graph.node(rn[i - 1])["outputs"][0]].shape) == shape),
                   None)
        if cut is None or not qn or not kn or not vn or not shape:
            continue
        rn = rn[:cut]
        r = graph.node(rn[-1])["outputs"][0]
        if any(tuple(graph.values[x].shape) != shape or graph.values[x].dtype != "float32"
               for x in (q, k, v, r)) or _quantized_reader(graph, r) is None:
            continue
        mq, mk, mv = (_index_map(graph, x, ns) for x, ns in ((q, qn), (k, kn), (v, vn)))
        mk = mk.reshape(shape4)
        ry = _index_map(graph, y, rn).reshape(-1)  # R's element e is y's element ry[e]
        if not (np.array_equal(mq, mk) and np.array_equal(mq, mv)) \
                or not np.array_equal(mv.reshape(-1)[ry], np.arange(ry.size)):
            continue
        D = shape[-1]
        seg = (ry // shape4[-1]).reshape(-1, D)  # the score (head) of each element of R
        rows = [set(row.tolist()) for row in seg]
        canon = [np.unique(row, return_inverse=True)[1] for row in seg]
        if sum(len(x) for x in rows) != len(set().union(*rows)) \
                or any(not np.array_equal(c, canon[0]) for c in canon):
            continue  # a head spans two rows, or the rows' heads lie differently
        orders = [graph.node(n)["order"] for n in (first, rs, sm, name)]
        mask = graph.node(sm)["inputs"][1] if len(graph.node(sm)["inputs"]) > 1 else ""
        for n in qn + kn + vn + score_nodes + ([scale[2]] if scale else []) + [sm, name] + rn:
            if n in graph.g.nodes:
                graph.remove_node(n)
        ty = TensorType("float32", shape)
        t = graph.fresh_name(f"{r}_qk")
        graph.add_node(graph.fresh_name(f"{name}_qk"), "Mul", [q, k], [t], types=[ty],
                       order=orders[0])
        ids = graph.add_const(graph.fresh_name(f"{r}_heads"), canon[0].astype(np.int64))
        sv = graph.fresh_name(f"{r}_scores")
        graph.add_node(graph.fresh_name(f"{name}_scores"), "SegmentSum", [t, ids], [sv],
                       types=[ty], order=orders[1])
        if scale is not None:  # the scores' scale, as the graph applies it
            sv2 = graph.fresh_name(f"{r}_scaled")
            graph.add_node(graph.fresh_name(f"{name}_scale"), scale[0], [sv, scale[1]], [sv2],
                           types=[ty], order=orders[1] + 0.5)
            sv = sv2
        pv = graph.fresh_name(f"{r}_probs")
        graph.add_node(graph.fresh_name(f"{name}_probs"), "SoftmaxOne",
                       [sv] + ([mask] if mask else []), [pv], types=[ty], order=orders[2])
        graph.add_node(graph.fresh_name(f"{name}_out"), "Mul", [pv, v], [r], types=[ty],
                       order=orders[3])
    graph.prune()


def _merged_values_product(graph: Graph, lanes: int) -> None:
    """Attention's P @ V over many keys, with V split into heads by moves from v [.., T, D]
    and the output merged back by moves into R [.., M, D] read (maybe through Reshapes that
    keep D) only by MatMuls with constant weights: one HeadMatMul(P, v, ids), ids[c] the head
    of column c (the head maps checked on index arrays, not assumed),
        R[(b, m), c] = sum_t P[b, ids[c], m, t] * v[(b, t), c].
    Lowered (ops.lower_head_matmul) as, for every 320-column tile of R, one MXM accumulation
    over the heads in that tile, each head's P rows against v's tile with the other heads'
    lanes zeroed: no head split of v and no merge of the output. The same numbers: a head's
    columns get its own products, plus exact zeros from the other heads. One difference: P
    comes from a Softmax, so its values are in [0, 1] or NaN, and a NaN row of one head's P
    makes the row NaN in the other heads of its tile too (NaN * 0); every MatMul reading R adds
    all of a row's lanes, so its outputs are NaN in that row either way. At most `lanes` keys
    (one K tile per head)."""
    for name, nd in _activation_products(graph):
        p4, v4, y = nd["inputs"][0], nd["inputs"][1], nd["outputs"][0]
        sm = graph.producer(p4)
        ps, vs = (tuple(graph.values[x].shape) for x in (p4, v4))
        if sm is None or graph.node(sm)["op"] != "Softmax" or len(ps) < 3 \
                or len(vs) != len(ps) or ps[:-2] != vs[:-2] or ps[-1] != vs[-2] \
                or not 2 <= ps[-1] <= lanes \
                or any(graph.values[x].dtype != "float32" for x in (p4, v4, y)):
            continue
        v, vn = _move_chain(graph, v4, False)
        r, rn = _move_chain(graph, y, True)
        if not vn or not rn or graph.values[v].dtype != "float32" \
                or graph.values[r].dtype != "float32" or _quantized_reader(graph, r) is None:
            continue
        H, M, T, hd = ps[-3], ps[-2], ps[-1], vs[-1]
        lead = int(np.prod(ps[:-3], dtype=np.int64))
        D = graph.values[v].shape[-1]
        if graph.values[r].shape[-1] != D or D != H * hd or _rows(graph, v) != lead * T \
                or _rows(graph, r) != lead * M:
            continue
        # V4[b, h, t, d] = v[(b, t), cols[h, d]], the same columns for every (b, t)
        mv = _index_map(graph, v, vn).reshape(lead, H, T, hd)
        rows = np.arange(lead)[:, None, None, None] * T + np.arange(T)[None, None, :, None]
        cols = mv[:1, :, :1, :] % D
        if not np.array_equal(mv // D, np.broadcast_to(rows, mv.shape)) \
                or not np.array_equal(mv % D, np.broadcast_to(cols, mv.shape)):
            continue
        cols = cols.reshape(H, hd)
        if not np.array_equal(np.sort(cols.reshape(-1)), np.arange(D)):
            continue
        # R[(b, m), cols[h, d]] = y[b, h, m, d]
        ry = _index_map(graph, y, rn).reshape(lead * M, D)
        want = np.empty((lead * M, D), np.int64)
        yi = np.arange(lead * H * M * hd, dtype=np.int64).reshape(lead, H, M, hd)
        want.reshape(lead, M, D)[:, :, cols.reshape(-1)] = \
            yi.transpose(0, 2, 1, 3).reshape(lead, M, H * hd)
        if not np.array_equal(ry, want):
            continue
        ids = np.empty(D, np.int64)
        ids[cols.reshape(-1)] = np.repeat(np.arange(H), hd)
        order = graph.node(name)["order"]
        rt = graph.values[r]
        for n in vn + [name] + rn:
            graph.remove_node(n)
        idc = graph.add_const(graph.fresh_name(f"{r}_heads"), ids)
        graph.add_node(name, "HeadMatMul", [p4, v, idc], [r], types=[rt], order=order)
    graph.prune()


def _quantized_reader(graph: Graph, v: str) -> str | None:
    """v, or the value single-use Reshapes that keep the last dimension make of it, read only
    by MatMuls with constant weights (_feeds_quantized: each adds all of a row's lanes into
    every output); None if there is no such value."""
    while not _feeds_quantized(graph, v):
        users = graph.consumers(v)
        if len(users) != 1 or v in graph.outputs or graph.node(users[0])["op"] != "Reshape":
            return None
        out = graph.node(users[0])["outputs"][0]
        if graph.values[out].shape[-1:] != graph.values[v].shape[-1:]:
            return None
        v = out
    return v


def _one_key_outputs(graph: Graph) -> dict[str, str]:
    """Attention against one key, as exporters write it for one query and no past: P =
    Softmax over one element (1, or NaN for a non-finite score), y = P @ V4 [b, H, 1, hd],
    R = y through Reshapes and Transposes, read only by quantized MatMuls; V4 = v through
    such moves (v of fp32 or fp16, the rounding of _round_before_moves), every row of R
    holding the elements of the same row of v (checked on index arrays). R's row holds the
    values of v's row, each times 1 (or NaN): its absmax is v's, which is found while the
    scores are computed, not after. Also R = p * v of _one_key_merged. Returns {v: R}."""
    found: dict[str, str] = {}
    for name in graph.topo_order():
        nd = graph.node(name)
        ins = nd["inputs"]
        if nd["op"] == "Mul" and graph.producer(ins[0]) is not None \
                and graph.node(graph.producer(ins[0]))["op"] == "SoftmaxOne":
            # _one_key_merged's R = p * v: p's lanes are 1 (or NaN)
            r, v = nd["outputs"][0], ins[1]
            end = _quantized_reader(graph, r)
            if end is not None and graph.values[v].shape == graph.values[r].shape \
                    and graph.values[v].dtype in ("float32", "float16"):
                found[v] = end
            continue
        if nd["op"] != "MatMul" or any(graph.is_const(v) for v in nd["inputs"][:2]) \
                or not _outer_product(graph, nd["inputs"], nd["outputs"][0]):
            continue
        p_val, v4, y = nd["inputs"][0], nd["inputs"][1], nd["outputs"][0]
        sm = graph.producer(p_val)
        ps = graph.values[p_val].shape
        if sm is None or graph.node(sm)["op"] != "Softmax" or len(ps) < 3 or ps[-2] != 1:
            continue
        r, rn = _move_chain(graph, y, True)
        v, vn = _move_chain(graph, v4, False)
        rows = _rows(graph, r)
        if _rows(graph, v) != rows or graph.values[r].shape[-1] != graph.values[v].shape[-1] \
                or graph.values[r].dtype != "float32" \
                or graph.values[v].dtype not in ("float32", "float16") \
                or not _feeds_quantized(graph, r):
            continue
        # every row of R holds the elements of the same row of v (checked on index arrays)
        src = _index_map(graph, v, vn).reshape(-1)[_index_map(graph, y, rn).reshape(-1)]
        if np.array_equal(src.reshape(rows, -1) // graph.values[v].shape[-1],
                          np.repeat(np.arange(rows)[:, None], src.size // rows, axis=1)):
            found[v] = r
    return found


def _matmul_activations(graph, sch, alloc, x, ins, out, mxm_dtype, precision, start, what, new,
                        place, zero, ready) -> int:
    """A @ B with B computed on chip (e.g. attention probabilities @ V): B is loaded as MXM
    weights straight from SRAM. With leading (batch) dimensions on both, one product per
    batch, on row ranges of the three tensors."""
    if precision in QUANTIZED:  # per-channel scales are a compile-time thing: attention's
        mxm_dtype = "fp16"    # activation x activation products run in fp16 (fp32 sums)
    at, bt = graph.values[ins[0]], graph.values[ins[1]]
    if len(at.shape) < 2 or len(bt.shape) < 2:
        raise CompileError(f"{what}: a MatMul with a 1-D operand is not lowered yet")
    w = place[ins[1]]
    t = max(start, ready.get(ins[1], 0))
    if len(bt.shape) != 2:
        lead_a, lead_b = tuple(at.shape[:-2]), tuple(bt.shape[:-2])
        if lead_a != lead_b:
            raise CompileError(f"{what}: batched matmul with broadcast batch dimensions "
                               f"({list(lead_a)} and {list(lead_b)}) is not lowered yet")
    y, a = new(out, t)
    t = max(t, a)
    xs, ws = x, w
    cps = []
    # scores read only by a Softmax in blocks of rows: each block's heads written to slices
    # of their own (y itself is never written), so that the Softmax's blocks read at once
    parts, free = _softmax_parts(graph, alloc, out, y) if len(bt.shape) > 2 else (None, {})
    g2 = dtype_info(mxm_dtype).nbytes
    t0 = t
    if mxm_dtype != x.dtype:  # each operand to the MXM's type on the VXM
        xs, a = alloc.alloc(mxm_dtype, x.shape, g2, avoid=frozenset(x.slices))
        t = max(t, lower.elementwise(sch, ["cvt"], x, None, None, xs, max(t0, a),
                                     what + " to " + mxm_dtype))
        cps.append(xs)
    if mxm_dtype != w.dtype:
        ws, a = alloc.alloc(mxm_dtype, w.shape, g2, avoid=frozenset(w.slices))
        t = max(t, lower.elementwise(sch, ["cvt"], w, None, None, ws, max(t0, a),
                                     what + " to " + mxm_dtype))
        cps.append(ws)
    if len(bt.shape) == 2:
        done = lower.matmul(sch, xs, ws, y, t, what, zero=zero(ws.dtype))
    else:
        M, K, N = at.shape[-2], bt.shape[-2], bt.shape[-1]
        done = t
        part_done: dict[int, int] = {}
        for b in range(int(np.prod(at.shape[:-2], dtype=np.int64))):
            def rows(p, first, n, cols):
                return Placement(p.dtype, (n, cols), n, cols, p.vpr, p.slices,
                                 p.addr + first * p.vpr)
            yp, r0 = y, 0
            if parts:  # the block holding head b's rows
                r0, _, yp = next(q for q in parts if q[0] <= b * M < q[0] + q[1])
            tb = lower.matmul(sch, rows(xs, b * M, M, K), rows(ws, b * K, K, N),
                              rows(yp, b * M - r0, M, N), max(t, free.get(r0, 0)), what,
                              zero=zero(ws.dtype))
            part_done[r0] = max(part_done.get(r0, 0), tb)
            done = max(done, tb)
        if parts:  # when each block is done: its Softmax block may start then
            alloc.derive(y, ("row_ready",), [],
                         tuple((r0, n, part_done[r0]) for r0, n, _ in parts))
    for p in cps:
        alloc.release(p, done)
    return done


def _softmax_parts(graph: Graph, alloc, out: str, y: Placement):
    """When batched products `out` (placed at y, [heads * M, N]) are read only by a
    Softmax over their last axis that runs in blocks of whole heads: a placement per block
    in slices apart from the previous one's, recorded with y (alloc.derive(y, ("row_parts",)),
    freed with it), as (first row, rows, placement), and the cycle each is free from; else
    (None, {})."""
    users = graph.consumers(out)
    if out in graph.outputs or len(users) != 1:
        return None, {}
    nd = graph.node(users[0])
    ty = graph.values[out]
    rank = len(ty.shape)
    if nd["op"] != "Softmax" or nd["inputs"][0] != out or rank < 3 \
            or int(nd["attrs"].get("axis", -1)) % rank != rank - 1:
        return None, {}
    blocks = softmax_row_blocks(y.rows, y.nvec, ty.shape[-2], True)
    if len(blocks) < 2:
        return None, {}
    parts: list = []
    free = {}
    for r0, n in blocks:
        p, a = alloc.alloc(y.dtype, (n, y.cols), len(y.slices),
                           avoid=frozenset(parts[-1][2].slices) if parts else frozenset())
        parts.append((r0, n, p))
        free[r0] = a
    alloc.derive(y, ("row_parts",), [p for _, _, p in parts], tuple(parts))
    return parts, free


def _matmul_float(graph, sch, alloc, x, ins, out, bias, mxm_dtype, start, what, new, place,
                  weight, zero) -> int:
    """MatMul in a float policy: weights stored in the MXM's type, activations converted on the
    VXM when the type differs, the bias added in fp32."""
    w = weight(ins[1], mxm_dtype)
    t_x = start
    xq = x
    if mxm_dtype != x.dtype:  # round the activations to the MXM's type on the VXM
        xq, a = alloc.alloc(mxm_dtype, x.shape, dtype_info(mxm_dtype).nbytes,
                            avoid=frozenset(x.slices))
        t_x = lower.elementwise(sch, ["cvt"], x, None, None, xq, max(start, a),
                                what + " activations to " + mxm_dtype)
    if bias is None:
        y, nb = new(out, t_x)
        done = lower.matmul(sch, xq, w, y, max(t_x, nb), what, zero=zero(w.dtype))
    else:
        tmp_ty = graph.values[out]
        mdt = _machine_dtype(tmp_ty.dtype, what)
        tmp, nb = alloc.alloc(mdt, tuple(tmp_ty.shape), dtype_info(mdt).nbytes)
        vpr = tmp.vpr
        parts: list = []  # each tile's bias added as soon as the MXM has written it
        t1 = lower.matmul(sch, xq, w, tmp, max(t_x, nb), what, zero=zero(w.dtype),
                          on_tile=lambda r0, n, nt, tt: parts.append(
                              (range(r0 * vpr + nt, (r0 + n) * vpr + nt, vpr), tt)))
        done = _add_bias(sch, alloc, tmp, place[bias], out, new, t1, what,
                         _copies_for(graph, out, sch.arch.lanes), parts)
    if xq is not x:
        alloc.release(xq, done)
    return done


def _check_fits(graph: Graph, arch, nslices: int, precision: str) -> None:
    """Resident tensors (weights, constants, inputs) alone must fit the usable SRAM, in the
    types they are stored in: MatMul weights in the MXM's, Gather tables in TABLE_DTYPE's."""
    role: dict[str, set[str]] = {}
    for name in graph.topo_order():
        nd = graph.node(name)
        for k, v in enumerate(nd["inputs"]):
            if v and graph.is_const(v):
                r = "weight" if (nd["op"] in lower.MATMULS and k == 1) else \
                    "table" if (nd["op"] == "Gather" and k == 0) else "data"
                role.setdefault(v, set()).add(r)
    stored = {"weight": dtype_info(MXM_POLICY[precision]).nbytes,
              "table": dtype_info(TABLE_DTYPE[precision]).nbytes}
    need = 0
    for v in list(graph.consts) + list(graph.inputs):
        ty = graph.values[v]
        rows, cols = rows_cols(tuple(ty.shape))
        vec = rows * max(1, -(-cols // arch.lanes))
        size = np.dtype(ty.dtype).itemsize
        for r in role.get(v, {"data"}):
            need += vec * arch.lanes * stored.get(r, size)
    have = nslices * arch.mem_words_per_slice * arch.lanes
    if need > have:
        chips = -(-need // have)
        raise CompileError(f"the model does not fit one chip: its weights and inputs need "
                           f"{need:,} bytes and {arch.name} has {have:,} bytes of SRAM; about "
                           f"{chips} chips' worth (multi-chip compilation is a later step)")


def _add_bias(sch, alloc, tmp: Placement, bias: Placement, out: str, new, ready: int,
              what: str, copies: int = 0, parts: list | None = None,
              tmp_parts: tuple[Placement, ...] = ()) -> int:
    """out = tmp + bias (a row repeated for every row); frees tmp. The three are streamed at
    once, so they sit in different slices. `copies` more of out, on its side of the VXM,
    written from the same streams (kept with out: alloc.derive(out, ("copies",))). `parts`:
    (vectors of tmp, cycle they are in SRAM), each added as soon as it is there (default: all
    of tmp at `ready`). `tmp_parts`: tmp's column tiles are there (ops.tile_part); every
    part of `parts` is then vectors of one column tile."""
    parts = parts or [(range(tmp.nvec), ready)]
    first = min(t for _, t in parts)
    held = tuple(sorted({s for p in tmp_parts or [tmp] for s in p.slices}))
    pb, t, cp = apart(sch, alloc, bias, replace(tmp, slices=held), first, what)
    busy = frozenset(held) | frozenset(pb.slices)
    y, nb = new(out, t, avoid=busy)
    extra: list[Placement] = []
    for _ in range(copies):
        got = alloc.try_alloc(y.dtype, y.shape, len(y.slices), only=side_of(sch, y),
                              avoid=busy | frozenset(s for p in [y, *extra] for s in p.slices))
        if got is not None:
            extra.append(got[0])
            nb = max(nb, got[1])
    done = t
    cols = [t] * y.vpr  # when each column tile of y is there
    for vs, tp in parts:
        src, x_of = tmp, None
        if tmp_parts:  # y's vectors of the tile -> the part's
            nt = vs[0] % y.vpr
            src, c = tile_part(tmp_parts, nt, tmp)
            x_of = remap(y, nt, src, c)
        td = lower.elementwise(sch, ["add"], src, pb, None, y, max(t, nb, tp), what + " bias",
                               vectors=vs, z_also=tuple(extra), x_of=x_of)
        done = max(done, td)
        for c in ({v % y.vpr for v in vs} if len(vs) < y.nvec else range(y.vpr)):
            cols[c] = max(cols[c], td)
    if extra:
        alloc.derive(y, ("copies",), extra, tuple(extra))
    if len(parts) > 1 and y.vpr > 1:  # its readers may start from the first tile
        alloc.derive(y, ("col_ready",), [], tuple(cols))
    for p in tmp_parts or [tmp]:
        alloc.release(p, done)
    if cp is not None:
        alloc.release(cp, done)
    return done


def _copies_for(graph: Graph, v: str, lanes: int) -> int:
    """Copies of v to write as it is made: for a Gelu, its only reader, in row blocks that
    each read their rows of x twice (ops.lower_sequence), one source per block. Measured on
    BERT-base at seq 128 (4 blocks): no copy 1,106,538 cycles, 1: 1,119,743, 2: 1,063,269,
    3: 1,045,600."""
    users = graph.consumers(v)
    t = graph.values[v]
    if len(users) != 1 or graph.node(users[0])["op"] != "Gelu" or v in graph.outputs:
        return 0
    vpr = -(-(t.shape[-1] if t.shape else 1) // lanes)
    if _rows(graph, v) == 1 and vpr > 1:  # a decode step: the Gelu's bound pairs the row's
        return 1  # vectors in a max tree, one of each pair from the copy (ops.gelu_absmax_bound)
    vectors = _rows(graph, v) * vpr
    return max(0, min(SEQUENCE_BLOCKS, vectors // SEQUENCE_BLOCK_VECTORS) - 1)


def _row_move_beside(graph: Graph, name: str, after: bool):
    """Attention's head split (Reshape [.., m * C] -> [.., m, C] then a Transpose that keeps
    the last axis) and merge (such a Transpose, then Reshape [.., m, C] -> [.., m * C]): when
    the value between them is read by nothing else, the Transpose's row order can be applied
    by the Reshape's lane moves. For the Reshape `name` (after=True: its Transpose comes
    after) or the Transpose `name` (after=False: its Reshape comes after), returns (the
    other node, a map from a row of the value between them to the row it is written to
    (split) or read from (merge)), or None."""
    nd = graph.node(name)
    mid = nd["outputs"][0]
    users = graph.consumers(mid)
    if len(users) != 1 or mid in graph.outputs:
        return None
    other = graph.node(users[0])
    if after:
        if other["op"] != "Transpose" or _moves_last(other, graph):
            return None
        shape = tuple(graph.values[mid].shape)
        perm = _perm(other, len(shape))
    else:
        if other["op"] not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") \
                or nd["op"] != "Transpose" or _moves_last(nd, graph):
            return None
        c_in = graph.values[mid].shape[-1] if graph.values[mid].shape else 1
        out_shape = graph.values[other["outputs"][0]].shape
        c_out = out_shape[-1] if out_shape else 1
        if c_out <= c_in or c_out % c_in:
            return None
        shape = tuple(graph.values[nd["inputs"][0]].shape)
        perm = _perm(nd, len(shape))
    if len(shape) < 2:
        return None
    # the Transpose's output row j is its input row src[j]
    src = row_index(shape).transpose(perm[:-1]).reshape(-1)
    if after:  # reshaped row i is written to the Transpose's output row where src == i
        dst = np.empty_like(src)
        dst[src] = np.arange(len(src))
        return users[0], lambda i, dst=dst: int(dst[i])
    return users[0], lambda j, src=src: int(src[j])  # merged row j reads input row src[j]


def _perm(nd, rank: int) -> list[int]:
    return [int(p) % rank for p in nd["attrs"].get("perm", range(rank - 1, -1, -1))]


def _moves_last(nd, graph) -> bool:
    n = len(graph.values[nd["inputs"][0]].shape)
    return n >= 2 and _perm(nd, n)[-1] != n - 1


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


def _emit(sch: Scheduler, arch) -> tuple[ChipProgram, dict]:
    """The chip's queues, and per queue the op tags of its words (emit.queue_words)."""
    by_q: dict[str, list] = {}
    for e in sch.code:
        by_q.setdefault(e.queue, []).append(e)
    chip = ChipProgram()
    tags = {}
    order = {q.name: q.id for q in arch.queues}
    for qname in sorted(by_q, key=order.__getitem__):
        chip.queues[qname], tags[qname] = queue_words(qname, by_q[qname])
    if sch.maps:
        chip.maps = np.array(sch.maps, dtype=np.int16)
    return chip, tags
