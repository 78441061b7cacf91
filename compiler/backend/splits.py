"""Tensors too large for one group of MEM slices, computed in pieces that fit.

A tensor lies in one group of slices (one slice per byte), in one range of addresses, and the
weights leave every slice about a third of its 8,192 words: BERT-base at sequence 384 has
attention scores of 12 x 384 rows of two vectors (9,216 vectors per byte, more than a slice
holds) and queries of 4,608 vectors (more than any free range); GPT-2-small's logits at 16
tokens take 2,528. Such values are computed in pieces, each made of pieces of its producer's
inputs (_Slicer: the slice of a Transpose's output is a slice of its input's permuted axis; of
a Reshape's, a slice of the matching input axis or column range; of an elementwise op or a
MatMul, the same slice of every input that has the axis, rows of A or columns of B; of a
constant, a smaller constant), pushed up until the pieces are small or reach the sources,
where a Slice node takes them. Three rewrites:

- head_groups: attention in groups of heads, joined after the head merge by a Concat;
- row_blocks: a chain of row-wise ops (an FFN) in blocks of rows, joined by a Concat;
- output_parts: a graph output in parts that stay separate program outputs, joined by the
  simulator.

Every head, row and column is computed by the same ops from the same values as before: the
same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, TensorType

# split an attention whose scores take more vectors per byte than this (sequence 320 and less
# of BERT-base and GPT-2-small keep their programs)
SPLIT_VECTORS = 4096
# into groups of heads whose scores take at most this many (a quarter of a slice)
GROUP_VECTORS = 2048

# ops computed element by element over a broadcast of their inputs (and those with an axis
# attribute, away from it): a slice of the output is the op of the inputs' slices
_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Neg", "Abs", "Exp", "Log",
    "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Silu", "Sqrt", "Reciprocal", "Cast", "IsNaN",
    "IsInf", "Clip", "Identity", "Sign", "Floor", "Ceil", "Softplus", "Softmax", "LogSoftmax",
    "LayerNormalization", "RMSNormalization", "Concat",
}
_FROM_AXIS = {"Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization"}
# ops a head's rows pass through unchanged on the way from the Softmax to the head merge
_TOWARD_MERGE = _ELEMENTWISE - {"Concat", "Softmax", "LogSoftmax"}


def _vectors(shape, lanes: int) -> int:
    """Vectors per byte of a tensor of `shape` in the rows layout."""
    if not shape:
        return 1
    return math.prod(shape[:-1]) * -(-shape[-1] // lanes)


def head_groups(graph: Graph, lanes: int, tight: int = 0) -> None:
    """Compute every attention whose Softmax input has more than SPLIT_VECTORS vectors per
    byte (rows x vectors a row, `lanes` a vector) in groups of heads (module docstring).
    `tight`: the thresholds halved that many times (a retry of a model that did not fit)."""
    changed = False
    for name in graph.topo_order():
        if name not in graph.g.nodes or graph.node(name)["op"] != "Softmax":
            continue
        nd = graph.node(name)
        x = nd["inputs"][0]
        shape = tuple(graph.values[x].shape)
        n = len(shape)
        if n < 3 or int(nd["attrs"].get("axis", -1)) % n != n - 1 \
                or any(not isinstance(d, int) for d in shape):
            continue
        vectors = _vectors(shape, lanes)
        heads = shape[n - 3]
        if vectors <= SPLIT_VECTORS >> tight or heads < 2:
            continue
        merge = _merge_of(graph, nd["outputs"][0], n - 3)
        if merge is None:
            continue
        per_head = vectors // heads
        fits = [h for h in range(heads - 1, 0, -1) if heads % h == 0]
        limit = max(1, (GROUP_VECTORS >> tight) // per_head)
        # the largest group within the limit whose slices reach the sources, else the
        # smallest beyond it (grouped-query attention: a multiple of the key heads' repeats),
        # else one head a group
        order = [h for h in fits if h <= limit] + [h for h in reversed(fits) if h > limit]
        choice = next((h for h in order
                       if _split(graph.copy(), lanes, merge, heads, h, True, tight)), 1)
        _split(graph, lanes, merge, heads, choice, False, tight)
        changed = True
    if changed:
        graph.prune()


def _merge_of(graph: Graph, p: str, axis: int) -> tuple[str, int, int] | None:
    """From a Softmax output p (heads on `axis`), down its single readers (elementwise ops, the
    left operand of a MatMul, Transposes), the Reshape that merges the heads axis with the
    axes after it: (its output, the merged axis, columns per head); None if there is none."""
    v = p
    for _ in range(16):
        users = graph.consumers(v)
        if len(users) == 2 and v not in graph.outputs:  # Where(IsNaN(v), c, v): a guard
            guard = _guard_of(graph, v, users)
            if guard is not None:
                users = [guard]
        if len(users) != 1 or v in graph.outputs:
            return None
        u = graph.node(users[0])
        op, out = u["op"], u["outputs"]
        if len([o for o in out if o]) != 1 or not out[0]:
            return None
        y = out[0]
        ys = tuple(graph.values[y].shape)
        vs = tuple(graph.values[v].shape)
        if op == "MatMul" and u["inputs"][0] == v and axis < len(vs) - 2 == len(ys) - 2:
            pass
        elif op in _TOWARD_MERGE and ys == vs:
            pass
        elif op == "Slice" and u["inputs"][0] == v and ys[axis] == vs[axis]:
            pass  # of other axes (the opset-23 Attention's extra key column)
        elif op == "Transpose":
            perm = list(u["attrs"].get("perm", range(len(vs) - 1, -1, -1)))
            axis = perm.index(axis)
        elif op == "Reshape":
            for k in range(len(ys)):
                if math.prod(ys[:k]) == math.prod(vs[:axis]) and ys[k] % vs[axis] == 0 \
                        and ys[k] > vs[axis] \
                        and ys[k] // vs[axis] == math.prod(vs[axis + 1:]) // math.prod(ys[k + 1:]) \
                        and math.prod(vs[axis + 1:]) % math.prod(ys[k + 1:]) == 0:
                    return y, k, ys[k] // vs[axis]
            same = [k for k in range(len(ys)) if ys[k] == vs[axis]
                    and math.prod(ys[:k]) == math.prod(vs[:axis])]
            if not same:
                return None
            axis = same[0]  # the heads axis kept whole, other axes regrouped
        else:
            return None
        v = y
    return None


def _guard_of(graph: Graph, v: str, users: list[str]) -> str | None:
    """The Where of Where(IsNaN(v), c, v) when `users` (v's readers) are that IsNaN and Where."""
    isnan = [u for u in users if graph.node(u)["op"] == "IsNaN"]
    where = [u for u in users if graph.node(u)["op"] == "Where"]
    if len(isnan) != 1 or len(where) != 1:
        return None
    flag = graph.node(isnan[0])["outputs"][0]
    w = graph.node(where[0])
    if graph.consumers(flag) != where or flag in graph.outputs or w["inputs"][0] != flag \
            or w["inputs"][2] != v:
        return None
    return where[0]


def _split(graph: Graph, lanes: int, merge: tuple[str, int, int], heads: int, h: int,
           check: bool, tight: int = 0) -> bool:
    """Replace the merge output by a Concat of its head groups of h heads, each pushed up to
    the sources. With `check`, say whether every group reached the sources without a Slice of a
    computed tensor of more than GROUP_VECTORS rows."""
    y, axis, unit = merge
    slicer = _Slicer(graph, lanes, big=GROUP_VECTORS >> tight)
    pieces = [slicer(y, axis, a * unit, min(heads, a + h) * unit, root=True)
              for a in range(0, heads, h)]
    if check:
        return not slicer.big
    _join(graph, y, pieces, axis, "heads")
    return True


def _join(graph: Graph, y: str, pieces: list[str], axis: int, what: str) -> None:
    """y := the Concat of `pieces` along axis, in place of y's producer."""
    prod = graph.producer(y)
    order = graph.node(prod)["order"]
    graph.remove_node(prod)
    graph.add_node(graph.fresh_name(f"{prod}_{what}"), "Concat", pieces, [y], {"axis": axis},
                   order=order + 0.5)


class _Slicer:
    """v[.., a:b on axis, ..] as a value of the graph, pushed up through v's producers; with
    `stop`, a computed tensor of at most that many vectors (`lanes` a vector) is sliced where
    it is, not pushed further (except the first, the one being split)."""

    def __init__(self, graph: Graph, lanes: int, stop: int = 0, big: int = 0) -> None:
        self.graph, self.lanes, self.stop = graph, lanes, stop
        self.limit = max(stop, big)  # a Slice of a tensor larger than this sets `big`
        self.memo: dict[tuple[str, int, int, int], str] = {}
        self.big = False  # a Slice node of a large computed tensor was needed

    def __call__(self, v: str, axis: int, a: int, b: int, root: bool = False) -> str:
        shape = tuple(self.graph.values[v].shape)
        if a == 0 and b == shape[axis]:
            return v
        key = (v, axis, a, b)
        if key not in self.memo:
            push = root or _vectors(shape, self.lanes) > self.stop
            self.memo[key] = (push and self._pushed(v, axis, a, b)) \
                or self._sliced(v, axis, a, b)
        return self.memo[key]

    def _type(self, v: str, axis: int, a: int, b: int) -> TensorType:
        t = self.graph.values[v]
        shape = list(t.shape)
        shape[axis] = b - a
        return TensorType(t.dtype, tuple(shape))

    def _const(self, base: str, arr: np.ndarray) -> str:
        g = self.graph
        return g.add_const(g.fresh_name(base), arr, kind="const")

    def _sliced(self, v: str, axis: int, a: int, b: int) -> str:
        """A Slice node of v (of a constant: a smaller constant)."""
        g = self.graph
        t = self._type(v, axis, a, b)
        if g.is_const(v):  # a smaller constant (shape-only, for timing, if v is)
            arr = g.const_array(v)
            if arr is not None:
                idx = [slice(None)] * arr.ndim
                idx[axis] = slice(a, b)
                arr = np.ascontiguousarray(arr[tuple(idx)])
            return g.add_const(g.fresh_name(f"{v}_h{a}"), arr, ty=t, kind=g.consts[v].kind)
        if _vectors(g.values[v].shape, self.lanes) > self.limit:
            self.big = True  # the whole tensor is still computed
        p = g.producer(v)
        order = g.node(p)["order"] + 0.25 if p is not None else None
        out = g.fresh_name(f"{v}_h{a}")
        ints = [self._const(f"{v}_h{a}_{k}", np.array([x], np.int64))
                for k, x in (("starts", a), ("ends", b), ("axes", axis))]
        g.add_node(g.fresh_name(f"{v}_slice_h{a}"), "Slice", [v] + ints, [out], types=[t],
                   order=order)
        return out

    def _pushed(self, v: str, axis: int, a: int, b: int) -> str | None:
        """The slice made of slices of the inputs of v's producer, or None."""
        g = self.graph
        p = g.producer(v)
        if p is None:
            return None
        nd = g.node(p)
        op, ins = nd["op"], list(nd["inputs"])
        outs = [o for o in nd["outputs"] if o]
        if outs != [v] or nd["outputs"][0] != v or nd.get("domain"):
            return None
        shape = tuple(g.values[v].shape)
        R = len(shape)
        attrs = dict(nd["attrs"])
        ranks = [len(g.values[u].shape) if u else 0 for u in ins]
        if op in ("MatMul", "MatMulBias") and axis == R - 2 and ranks[0] >= 2 \
                and ranks[1] >= 2:  # rows of A @ B: of A
            new = [self(ins[0], ranks[0] - 2, a, b)] + ins[1:]
        elif op in ("MatMul", "MatMulBias") and axis == R - 1 and ranks[1] >= 2:
            # columns of A @ B (+ bias): of B (and of the bias, unless it broadcasts)
            new = [ins[0], self(ins[1], ranks[1] - 1, a, b)]
            if len(ins) > 2 and ins[2]:
                bias = ins[2]
                new.append(self(bias, ranks[2] - 1, a, b) if ranks[2] and
                           g.values[bias].shape[-1] == shape[-1] else bias)
        elif op in _ELEMENTWISE or (op == "MatMul" and axis < R - 2):
            if op == "Concat" and int(attrs["axis"]) % R == axis:
                return None
            if op in _FROM_AXIS and axis >= int(attrs.get("axis", -1)) % R:
                return None  # over the axes from `axis` on
            new = []
            for k, u in enumerate(ins):
                if not u or (op == "Clip" and k):
                    new.append(u)
                    continue
                us = tuple(g.values[u].shape)
                if op in ("LayerNormalization", "RMSNormalization") and k:
                    new.append(u)  # scale and bias: over the normalized axes only
                    continue
                ax = axis - (R - len(us))
                if ax < 0 or us[ax] == 1:
                    new.append(u)
                elif us[ax] == shape[axis]:
                    new.append(self(u, ax, a, b))
                else:
                    return None
        elif op == "Transpose":
            perm = list(attrs.get("perm", range(R - 1, -1, -1)))
            new = [self(ins[0], perm[axis], a, b)]
        elif op == "Reshape":
            xs = tuple(g.values[ins[0]].shape)
            outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
            for k in range(len(xs)):
                ik = math.prod(xs[k + 1:])
                if math.prod(xs[:k]) == outer and xs[k] * ik == shape[axis] * inner \
                        and (a * inner) % ik == 0 and (b * inner) % ik == 0:
                    src = self(ins[0], k, a * inner // ik, b * inner // ik)
                    break
            else:
                return None
            new = [src, self._const(f"{v}_h{a}_shape",
                                    np.array(self._type(v, axis, a, b).shape, np.int64))]
        elif op == "Expand":
            us = tuple(g.values[ins[0]].shape)
            ax = axis - (R - len(us))
            src = ins[0] if ax < 0 or us[ax] == 1 else self(ins[0], ax, a, b)
            new = [src, self._const(f"{v}_h{a}_shape",
                                    np.array(self._type(v, axis, a, b).shape, np.int64))]
        elif op == "Unsqueeze":
            axes = attrs.get("axes")
            if axes is None and len(ins) > 1 and g.is_const(ins[1]):
                axes = g.const_array(ins[1]).reshape(-1).tolist()
            if axes is None:
                return None
            axes = sorted(int(x) % R for x in axes)
            if axis in axes:
                return None
            new = [self(ins[0], axis - sum(x < axis for x in axes), a, b)] + ins[1:]
        elif op == "Slice":
            data_rank = len(g.values[ins[0]].shape)
            if len(ins) < 4 or not ins[3] or not g.is_const(ins[3]):
                return None
            sliced_axes = [int(x) % data_rank for x in g.const_array(ins[3]).reshape(-1)]
            if axis in sliced_axes:
                return None
            new = [self(ins[0], axis, a, b)] + ins[1:]
        else:
            return None
        out = g.fresh_name(f"{v}_h{a}")
        g.add_node(g.fresh_name(f"{p}_h{a}"), op, new, [out], attrs,
                   types=[self._type(v, axis, a, b)], order=nd["order"])
        return out


# a chain of row-wise ops (MatMuls with the chain as their left operand, elementwise ops, norms
# and Softmaxes over the last axis) through a tensor of more vectors per byte than this
# (BERT-base's FFN at sequence 512: [512, 3072], 5,120) is computed in blocks of rows
ROW_SPLIT_VECTORS = 4096
# of at most this many vectors per byte in its largest tensor
ROW_BLOCK_VECTORS = 2048


def row_blocks(graph: Graph, lanes: int, tight: int = 0) -> None:
    """Compute every chain of row-wise ops through a tensor of more than ROW_SPLIT_VECTORS
    vectors per byte in blocks of rows: from that tensor down to the first tensor of at most
    ROW_BLOCK_VECTORS (the chain's end; BERT's FFN: the second MatMul's output), whose row
    blocks are pushed up (_Slicer) to inputs of at most ROW_BLOCK_VECTORS (the FFN's input,
    sliced by rows) and joined by a Concat. The same numbers: every op in the chain computes a
    row from that row of its inputs."""
    for name in graph.topo_order():
        if name not in graph.g.nodes:
            continue
        outs = [o for o in graph.node(name)["outputs"] if o]
        if len(outs) != 1:
            continue
        shape = tuple(graph.values[outs[0]].shape)
        if len(shape) < 2 or any(not isinstance(d, int) for d in shape) \
                or _vectors(shape, lanes) <= ROW_SPLIT_VECTORS >> tight:
            continue
        end = _row_end(graph, outs[0], lanes, ROW_BLOCK_VECTORS >> tight)
        if end is None:
            continue
        e, largest = end
        axis = len(graph.values[e].shape) - 2
        rows = graph.values[e].shape[axis]
        blocks = min(rows, -(-largest // (ROW_BLOCK_VECTORS >> tight)))
        step = -(-rows // blocks)
        stop = ROW_BLOCK_VECTORS >> tight
        if blocks < 2 or not _rows_split(graph.copy(), lanes, e, axis, rows, step, True, stop):
            continue
        _rows_split(graph, lanes, e, axis, rows, step, False, stop)
        graph.prune()


def _row_end(graph: Graph, x: str, lanes: int, block: int) -> tuple[str, int] | None:
    """From x down its single readers that compute a row from a row (x their left MatMul
    operand, or an elementwise input of their own shape), the first tensor of at most
    ROW_BLOCK_VECTORS vectors, and the most vectors of any tensor on the way; None if the
    chain ends before."""
    v, largest = x, 0
    for _ in range(32):
        vs = tuple(graph.values[v].shape)
        n = _vectors(vs, lanes)
        if n <= block:
            return (v, largest) if v != x else None
        largest = max(largest, n)
        users = graph.consumers(v)
        if len(users) != 1 or v in graph.outputs:
            return None
        u = graph.node(users[0])
        outs = [o for o in u["outputs"] if o]
        if len(outs) != 1 or u["outputs"][0] != outs[0] or u.get("domain"):
            return None
        y, op = outs[0], u["op"]
        ys = tuple(graph.values[y].shape)
        R = len(ys)
        if op in ("MatMul", "MatMulBias") and u["inputs"][0] == v and v not in u["inputs"][1:] \
                and len(vs) == R >= 2:
            pass
        elif op in _ELEMENTWISE and op != "Concat" and ys == vs \
                and (op not in _FROM_AXIS or int(u["attrs"].get("axis", -1)) % R == R - 1):
            pass
        else:
            return None
        v = y
    return None


def _rows_split(graph: Graph, lanes: int, e: str, axis: int, rows: int, step: int,
                check: bool, stop: int) -> bool:
    """e := the Concat of its blocks of `step` rows on axis, each pushed up to inputs of at most
    ROW_BLOCK_VECTORS. With `check`, say whether that needed no Slice of a larger tensor."""
    slicer = _Slicer(graph, lanes, stop=stop, big=GROUP_VECTORS)
    pieces = [slicer(e, axis, a, min(rows, a + step), root=True) for a in range(0, rows, step)]
    if check:
        return not slicer.big
    _join(graph, e, pieces, axis, "rows")
    return True


# a graph output of more vectors per byte than this (GPT-2-small's logits from 13 tokens on:
# 158 vectors a row) is computed and kept in parts of at most OUTPUT_PART_VECTORS (ranges of
# 2,048 are rare beside GPT-2-small's weights)
OUTPUT_SPLIT_VECTORS = 2048
OUTPUT_PART_VECTORS = 1024


def output_parts(graph: Graph, lanes: int, tight: int = 0) -> dict[str, dict]:
    """Split every graph output of more than OUTPUT_SPLIT_VECTORS vectors per byte into parts
    along its last axis (columns: an LM head's vocabulary, each part of its own weight
    columns), else along its rows, each part pushed up (_Slicer) and made a graph output of its
    own, named `{output}#{k}`. The weights leave every MEM slice about a third of its words free
    and a tensor lies in one group of slices, so a large output finds no range that holds it
    whole; its parts do. Returns {output: {"axis": axis, "parts": [names]}}: the simulator
    joins the parts (simulate). The same numbers: each part's columns or rows are computed as
    before."""
    joined: dict[str, dict] = {}
    for y in list(graph.outputs):
        shape = tuple(graph.values[y].shape)
        if len(shape) < 2 or any(not isinstance(d, int) for d in shape) \
                or _vectors(shape, lanes) <= OUTPUT_SPLIT_VECTORS >> tight \
                or graph.producer(y) is None or y in graph.inputs:
            continue
        R = len(shape)
        rows = math.prod(shape[:-1])
        vpr = -(-shape[-1] // lanes)
        # columns: parts of whole vectors, as many vectors a row as fit the budget
        part = OUTPUT_PART_VECTORS >> tight
        per = max(1, part // rows) * lanes
        plans = [(R - 1, per)] if per < shape[-1] else []
        # rows (of the axis before the last): as many as fit
        lead = math.prod(shape[:-2]) if R > 2 else 1
        step = max(1, part // (lead * vpr))
        if step < shape[-2]:
            plans.append((R - 2, step))
        for axis, step in plans:
            if _parts(graph.copy(), lanes, y, axis, step, True, part):
                joined[y] = {"axis": axis,
                             "parts": _parts(graph, lanes, y, axis, step, False, part)}
                break
    if joined:
        graph.prune()
    return joined


def _parts(graph: Graph, lanes: int, y: str, axis: int, step: int, check: bool, part: int):
    """y's blocks of `step` on axis as graph outputs `{y}#{k}` in y's place (see output_parts);
    with `check`, whether that needed no Slice of a larger tensor (else the parts' sources
    would be as large as y)."""
    n = graph.values[y].shape[axis]
    slicer = _Slicer(graph, lanes, stop=part, big=GROUP_VECTORS)
    pieces = [slicer(y, axis, a, min(n, a + step), root=True) for a in range(0, n, step)]
    if check:
        return not slicer.big and all(p != y for p in pieces)
    names = []
    for k, p in enumerate(pieces):
        name = graph.fresh_name(f"{y}#{k}")
        graph.rename_value(p, name)
        names.append(name)
    i = graph.outputs.index(y)
    graph.outputs = graph.outputs[:i] + names + graph.outputs[i + 1:]
    return names
