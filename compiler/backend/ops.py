"""Lowering of the ops that take more than one instruction pattern: elementwise ops with their
broadcasts, Clip, Gelu, Softmax, the norms and row reductions. Each function schedules its
vector work through compiler.backend.lower and returns the cycle its output is in SRAM."""

from __future__ import annotations

import math

import numpy as np

from compiler.backend import lower
from compiler.backend.placement import Placement, rows_cols
from compiler.errors import CompileError
from compiler.ir import TensorType
from isa.dtypes import dtype as dtype_info
from isa.dtypes import numpy_dtype

# Gelu as a sequence of VXM passes: (ALU ops, B operand: a float immediate, "x" for the op's
# input, or None)
_S2, _SPI = 1 / np.sqrt(2.0), np.sqrt(2 / np.pi)
# 0.5 x (1 + e) as x (0.5 e + 0.5): the same number (scaling by 0.5 is exact and commutes
# with rounding), and 0.5 e + 0.5 is one chain of two links with one immediate B
GELU = {
    "none": [(["mul"], _S2), (["erf"], None), (["mul"], 0.5), (["add"], 0.5), (["mul"], "x")],
    "tanh": [(["mul"], "x"), (["mul"], "x"), (["mul"], 0.044715), (["add"], "x"),
             (["mul"], _SPI), (["tanh"], None), (["mul"], 0.5), (["add"], 0.5), (["mul"], "x")],
}


def lower_clip(graph, sch, alloc, nd, place, new, start, what, clean, spread_scalar,
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
    t = lower_sequence(sch, alloc, x, new, nd["outputs"][0], start, what, bounds)
    ops = [o for step in bounds for o in step[0]]
    b = bounds[-1][1]
    return t, (clean.get(ins[0], False) and isinstance(b, float | None)
               and lower.finite_at_zero(ops, b))


def apart(sch, alloc, y: Placement, x: Placement, ready: int, what: str):
    """B operand y in slices apart from x's: a slice reads one vector per cycle, and both are
    read in the same cycles. Returns (placement, ready cycle, copy to release or None)."""
    if not set(y.slices) & set(x.slices):
        return y, ready, None
    cp, after = alloc.alloc(y.dtype, y.shape, len(y.slices), avoid=frozenset(x.slices))
    t = lower.elementwise(sch, ["copy"], y, None, None, cp, max(ready, after),
                          what + " operand copy")
    return cp, t, cp


def binary(sch, alloc, ops, x: Placement, y: Placement, z: Placement, ready: int, what: str,
           y_mode: str = "row", y_of=None, x_of=None) -> int:
    """z = ops(x, y) on the VXM with y in slices apart from x's (copied there if need be) and
    z apart from both (else through a temporary: a slice cannot stream reads and writes of
    one bank at once). y_mode, y_of and x_of as for lower.elementwise."""
    py, t, cp = apart(sch, alloc, y, x, ready, what)
    if set(z.slices) & (set(x.slices) | set(py.slices)):
        tmp, a = alloc.alloc(z.dtype, z.shape, len(z.slices),
                             avoid=frozenset(x.slices) | frozenset(py.slices)
                             | frozenset(z.slices))
        t = lower.elementwise(sch, ops, x, py, None, tmp, max(ready, t, a), what,
                              y_mode=y_mode, y_of=y_of, x_of=x_of)
        t = lower.elementwise(sch, ["copy"], tmp, None, None, z, t, what)
        alloc.release(tmp, t)
    else:
        t = lower.elementwise(sch, ops, x, py, None, z, max(ready, t), what, y_mode=y_mode,
                              y_of=y_of, x_of=x_of)
    if cp is not None:
        alloc.release(cp, t)
    return t


def spread_int(sch, alloc, x: Placement, z: Placement, ready: int, what: str) -> int:
    """Every vector of z (one per row of x, a value [..., 1]) := lane 0 of x's vector for that
    row in every lane, for an integer x: an SXM distribute puts it in every lane of the first
    superlane (zeros elsewhere), then rotations by 1, 2, 4, ... superlanes are ORed in
    (bitwise, so overlaps from the wrap do no harm)."""
    arch = sch.arch
    lanes, lps = arch.lanes, arch.lanes_per_superlane
    dmap = np.full(lanes, -1, np.int64)
    dmap[:lps] = 0
    g = len(x.slices)
    shape = (z.rows, lanes)
    vs = list(range(z.rows))
    m, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(x.slices))
    t = lower.sxm_unary(sch, "sxm.distribute", x, m, [v * x.vpr for v in vs], vs,
                        dict(imm=sch.map_index(dmap)), max(ready, a), what)
    covered = 1
    while covered < lanes // lps:
        rot, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(m.slices))
        t = lower.sxm_rotate(sch, m, rot, covered * lps, max(t, a), what)
        last = 2 * covered >= lanes // lps
        if last:
            nxt = z
        else:
            nxt, a = alloc.alloc(x.dtype, shape, g,
                                 avoid=frozenset(rot.slices) | frozenset(m.slices))
            t = max(t, a)
        t = binary(sch, alloc, ["or"], m, rot, nxt, t, what)
        alloc.release(rot, t)
        alloc.release(m, t)
        m = nxt
        covered *= 2
    return t


def lower_sequence(sch, alloc, x: Placement, new, out: str, start: int, what: str, steps) -> int:
    """Elementwise passes in order, each reading the previous result (and maybe x). Steps that
    share their B operand (or need none) run as one VXM chain; a large x runs in row blocks,
    each with its own temporaries, so the blocks' middle passes use several slices' ports and
    ALUs at once."""
    steps = _chained(steps)
    cols = alloc.derived_value(x, ("col_ready",))
    if cols is not None and x.vpr > 1 and x.rows > 1 and len(steps) > 1 \
            and not any(isinstance(b, Placement) for _, b in steps):
        return _sequence_cols(sch, alloc, x, new, out, cols, what, steps)
    blocks = 1 if any(isinstance(b, Placement) for _, b in steps) or len(steps) < 3 else \
        max(1, min(SEQUENCE_BLOCKS, x.nvec // SEQUENCE_BLOCK_VECTORS))
    if blocks == 1:
        return _sequence_rows(sch, alloc, x, lambda t: new(out, t), start, what, steps)
    y, a = new(out, start)
    done = start
    rows = -(-x.rows // blocks)
    # copies of x its producer wrote (compile: a Gelu's input), read by the blocks in turn:
    # a slice reads one vector a cycle, and every block reads its rows of x twice or more
    srcs = [x] + list(alloc.derived_value(x, ("copies",)) or ())
    for b, r0 in enumerate(range(0, x.rows, rows)):
        n = min(rows, x.rows - r0)
        yb = lower.row_block(y, r0, n)
        done = max(done, _sequence_rows(sch, alloc, lower.row_block(srcs[b % len(srcs)], r0, n),
                                        lambda t, yb=yb: (yb, a), start, what, steps))
    return done


# a pass sequence over many rows runs in up to SEQUENCE_BLOCKS row blocks of at least this
# many vectors
SEQUENCE_BLOCKS = 4
SEQUENCE_BLOCK_VECTORS = 128


def _chained(steps):
    """Consecutive steps that share a B operand (or take none) joined into one chain of at
    most CHAIN_MAX ALU ops: the same arithmetic, one trip through SRAM instead of several."""
    from isa.table import CHAIN_MAX

    out: list[tuple[list[str], object]] = []
    for ops, b in steps:
        if out and "cvt" not in ops and "cvt" not in out[-1][0] \
                and len(out[-1][0]) + len(ops) <= CHAIN_MAX:
            prev_ops, pb = out[-1]
            same = b is None or pb is None or b is pb or (
                not isinstance(b, Placement) and not isinstance(pb, Placement) and b == pb)
            if same:
                out[-1] = (prev_ops + list(ops), pb if pb is not None else b)
                continue
        out.append((list(ops), b))
    return out


def _sequence_cols(sch, alloc, x: Placement, new, out: str, cols: tuple[int, ...], what: str,
                   steps) -> int:
    """lower_sequence's passes column tile by column tile of x, each from the cycle its
    producer wrote that tile (cols[c]: a MatMul's results come out tile by tile), with
    temporaries of one vector per row. Copies of x its producer wrote are read by the tiles
    in turn."""
    vpr, g = x.vpr, len(x.slices)
    srcs = [x] + list(alloc.derived_value(x, ("copies",)) or ())
    # space free from when the first tile (then this tile) is there
    now, alloc.now = alloc.now, min(cols)
    y, a = new(out, min(cols))
    done = 0
    for c in range(vpr):
        src = srcs[c % len(srcs)]
        cur, t = None, cols[c]  # cur None: tile c of src
        alloc.now = cols[c]
        for k, (ops, b) in enumerate(steps):
            last = k == len(steps) - 1
            if last:  # vector r * vpr + c of y, as of x
                dst, vs, t = y, range(c, y.nvec, vpr), max(t, a)
                x_of = None if cur is None else (lambda v: v // vpr)
                y_of = None
            else:  # row r of a temporary
                dst, at = alloc.alloc(x.dtype, (x.rows, sch.arch.lanes), g,
                                      avoid=frozenset(src.slices))
                vs, t = None, max(t, at)
                x_of = (lambda v, c=c: v * vpr + c) if cur is None else None
                y_of = lambda v, c=c: v * vpr + c  # noqa: E731
            xin = src if cur is None else cur
            if b == "x":
                if cur is None:
                    t = lower.elementwise(sch, ops, src, None, None, dst, t, what,
                                          y_is_x=True, x_of=x_of, vectors=vs)
                else:
                    t = lower.elementwise(sch, ops, cur, src, None, dst, t, what, x_of=x_of,
                                          y_of=y_of, vectors=vs)
            else:
                t = lower.elementwise(sch, ops, xin, None, b, dst, t, what, x_of=x_of,
                                      vectors=vs)
            if cur is not None:
                alloc.release(cur, t)
            cur = dst
        done = max(done, t)
    alloc.now = now
    return done


def _sequence_rows(sch, alloc, x: Placement, out, start: int, what: str, steps) -> int:
    """lower_sequence's passes on the rows of x; out(t) gives the result's placement and the
    cycle from which it may be written."""
    cur, t = x, start
    for k, (ops, b) in enumerate(steps):
        if k == len(steps) - 1:
            dst, a = out(t)
        else:
            # temporaries avoid x's slices: a pass may read both in one cycle
            dst, a = alloc.alloc(x.dtype, x.shape, len(x.slices), avoid=frozenset(x.slices))
        if isinstance(b, Placement):
            pb, t, cp = apart(sch, alloc, b, cur, t, what)
            t = lower.elementwise(sch, ops, cur, pb, None, dst, max(t, a), what)
            if cp is not None:
                alloc.release(cp, t)
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


def lower_softmax(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean,
                  sum_dtype: str | None = None, mask_ready: int = 0,
                  numerators: bool = False) -> int:
    """Softmax (LogSoftmax) over the last axis of rows of at most 320 columns:
        xm = x + pad mask (-inf past the last column); m = row max, by rotating the vector
        through the SXM by 1, 2, 4, ... 256 lanes and taking the max on the VXM (cyclic windows
        that double cover all 320 lanes); e = exp(xm - m); s = e @ ones (MXM); y = e / s
        (LogSoftmax: y = (x - m) - log(s), from x rather than xm so that pad lanes stay
        finite). In a narrow float type each step is rounded to it: xm - m, its exp, and the
        sum (exact on the MXM in fp32, then converted). With `sum_dtype` (fp16 for an fp32
        softmax of the int8 and fp8 policies) e is rounded to it for the MXM's row sum, which
        then runs at the MXM's full rate (fp32 sums are emulated at a sixteenth of it).
    A second input (compile._mask_into_softmax) is a row added to x first: its pad lanes set
    to the lowest value (ready from `mask_ready`), x + it replaces the pad mask.
    With `numerators` (compile._numerators_only) the output holds e = exp(xm - m) in sum_dtype
    and no division: its reader (HeadMatMul) divides by the row sums itself; the output's
    placement is marked so (alloc.derive(y, ("numerators",)))."""
    x_name = nd["inputs"][0]
    xt = graph.values[x_name]
    rank = len(xt.shape)
    axis = int(nd["attrs"].get("axis", -1))
    if axis % max(rank, 1) != rank - 1:
        raise CompileError(f"{what}: softmax over an axis other than the last is not lowered "
                           "yet")
    x = place[x_name]
    if x.dtype not in ("fp32", "fp16"):
        raise CompileError(f"{what}: a softmax in {xt.dtype} is not lowered yet (its row sum "
                           "would be exact and rounded once, where ONNX's reference rounds "
                           f"to {xt.dtype} after every addition)")
    per_head = xt.shape[-2] if rank >= 3 else 1
    # x's rows in blocks of their own slices (compile: the scores' products write them so),
    # each with the cycle it is done; else the blocks are x's row ranges
    x_parts = alloc.derived_value(x, ("row_parts",))
    x_ready = alloc.derived_value(x, ("row_ready",))
    blocks_of_x = [(r0, n) for r0, n, _ in x_parts] if x_parts else \
        softmax_row_blocks(x.rows, x.nvec, per_head, numerators)
    n_blk = len(blocks_of_x)
    # a row added before (compile._mask_into_softmax): its pads set to the lowest value, a
    # copy per block of rows (each reads it once per row: one slice's port per block)
    masks: list[tuple[Placement | None, int]] = [(None, start)] * n_blk
    if len(nd["inputs"]) > 1 and nd["inputs"][1]:
        src = place[nd["inputs"][1]]
        low = place[_pad_mask(graph, arch, x, True)] if x.cols % arch.lanes else None
        masks, taken = [], frozenset(src.slices)
        for _ in range(n_blk):
            mb, a = alloc.alloc(x.dtype, (1, arch.lanes) if x.vpr == 1 else (1, x.cols),
                                len(x.slices), avoid=taken)
            taken |= frozenset(mb.slices)
            # from when the mask is ready (before the scores, as a rule): off their path
            masks.append((mb, binary(sch, alloc, ["min"], src, low, mb, max(mask_ready, a),
                                     what + " mask pads") if low is not None else
                          lower.elementwise(sch, ["copy"], src, None, None, mb,
                                            max(mask_ready, a), what + " mask")))
    if numerators and (x.dtype != "fp32" or sum_dtype in (None, x.dtype)
                       or nd["op"] != "Softmax"):
        raise CompileError(f"internal: {what}: exponentials only for an fp32 Softmax summed "
                           "in a narrower type")
    out_dtype = sum_dtype if numerators else None
    if n_blk == 1:
        got = []

        def out1(t):
            got.append(new(nd["outputs"][0], t, dtype=out_dtype))
            return got[0]

        t = _softmax_rows(graph, arch, sch, alloc, nd, place, x, clean.get(x_name, False),
                          tuple(xt.shape), out1, max(start, masks[0][1]), what, zero,
                          sum_dtype, masks[0][0], numerators=numerators)
        if masks[0][0] is not None:
            alloc.release(masks[0][0], t)
        if numerators:
            alloc.derive(got[0][0], ("numerators",), [], True)
        return t
    # blocks of rows, each with its own temporaries (in other slices): their vectors stream
    # through several slices' ports and units at once instead of one slice's, one per cycle
    y, a = new(nd["outputs"][0], start, dtype=out_dtype)
    done = start
    blocks, parts = [], []
    for k, (r0, n) in enumerate(blocks_of_x):
        xb = rows_at(alloc, x, r0, n, what)
        if numerators:  # (blocks of whole heads: rows of one head lie in one block)
            # each block's exponentials in slices of their own (y itself is never written):
            # the HeadMatMul reads one block's heads while the next block is written
            yb, a_b = alloc.alloc(y.dtype, (n, x.cols), len(y.slices),
                                  avoid=frozenset(parts[-1].slices) if parts else frozenset())
            parts.append(yb)
        else:
            yb, a_b = lower.row_block(y, r0, n), a
        mb, t_mb = masks[min(k, len(masks) - 1)]
        region, alloc.region = alloc.region, block_region(alloc, k, n_blk)
        t_b = _softmax_rows(graph, arch, sch, alloc, nd, place, xb,
                            clean.get(x_name, False), (n, x.cols),
                            lambda t, yb=yb, a_b=a_b: (yb, a_b),
                            max(rows_ready(x_ready, r0, n, start), t_mb),
                            f"{what} rows {r0}..{r0 + n - 1}", zero,
                            sum_dtype, mb, k, numerators=numerators)
        alloc.region = region
        if mb is not None:
            alloc.release(mb, t_b)
        done = max(done, t_b)
        blocks.append((r0, n, t_b))
    # when each block of rows is done: a reader by rows (HeadMatMul) may start on the first
    alloc.derive(y, ("row_ready",), [], tuple(blocks))
    if numerators:
        alloc.derive(y, ("numerators",), [], True)
        # where the rows are: (first row, rows, placement) per block, freed with y
        alloc.derive(y, ("row_parts",), parts,
                     tuple((r0, n, p) for (r0, n, _), p in zip(blocks, parts, strict=True)))
    return done


def lower_softmax_one(sch, alloc, nd, x: Placement, mask: Placement | None, new, start: int,
                      what: str, mask_ready: int = 0) -> int:
    """Softmax (LogSoftmax) over a last axis of one element: exp(v - v) (v - v), one VXM
    chain. That is the definition's exp(v - max) / sum with max = v and sum = exp(0): 1 (0)
    for a finite v, NaN for an infinite or NaN one, with no row max and no row sum. v = x, or
    x + mask (compile._mask_into_softmax: one value for every row, in every lane of its
    vector when x is a spread value, so that the result is one too)."""
    tail = ["sub"] if nd["op"] == "LogSoftmax" or nd["attrs"].get("log") else ["sub", "exp"]
    v, t = x, start
    if mask is not None:
        v, a = alloc.alloc(x.dtype, x.shape, len(x.slices), avoid=frozenset(x.slices))
        t = binary(sch, alloc, ["add"], x, mask, v, max(start, mask_ready, a), what + " mask")
    y, a = new(nd["outputs"][0], t)
    if set(y.slices) & set(v.slices):  # a slice cannot stream reads and writes at once
        tmp, a2 = alloc.alloc(x.dtype, x.shape, len(x.slices),
                              avoid=frozenset(v.slices) | frozenset(y.slices))
        t = lower.elementwise(sch, tail, v, None, None, tmp, max(t, a2), what, y_is_x=True)
        t = lower.elementwise(sch, ["copy"], tmp, None, None, y, max(t, a), what)
        alloc.release(tmp, t)
    else:
        t = lower.elementwise(sch, tail, v, None, None, y, max(t, a), what, y_is_x=True)
    if v is not x:
        alloc.release(v, t)
    return t


def lower_outer_product(sch, alloc, a: Placement, b: Placement, zn, m: int, ready: int,
                        what: str) -> int:
    """A [.., M, 1] @ B [.., 1, N] (compile._outer_product) with A a spread value (its one
    column in every lane of one vector per row): row (i, r) of the result is A's row (i, r)
    times B's row i, one VXM pass; B of another float type is converted in the same chain.
    On the MXM, B's single rows would be weights, one install each, for one column of A.
    zn: the result's placement and the cycle from which it may be written."""
    z, after = zn
    vpr = z.vpr
    ops = ["mul"] if b.dtype == z.dtype else ["cvt", "mul"]
    return binary(sch, alloc, ops, b, a, z, max(ready, after), what,
                  x_of=lambda v: (v // vpr // m) * vpr + v % vpr, y_of=lambda v: v // vpr)


# Softmax over many rows runs in up to SOFTMAX_BLOCKS blocks of at least this many vectors
# (3 with the next change below, against 4: BERT-base int8 at seq 64, 96, 128, 160, 192 -1.93%
# in all; 3 alone -0.72%)
SOFTMAX_BLOCKS = 3
SOFTMAX_BLOCK_VECTORS = 256


def block_region(alloc, k: int, n: int) -> frozenset[int]:
    """The slices that block k of n blocks of rows prefers for its temporaries: every n-th
    run of REGION_RUN slices. Blocks lowered one after another but run side by side then
    read and write their temporaries through different slices' ports (a slice reads one
    vector a cycle and writes one)."""
    return frozenset(s for i, s in enumerate(alloc.slices) if (i // REGION_RUN) % n == k)


REGION_RUN = 4  # an fp32 tensor's group of slices


def rows_ready(blocks, r0: int, n: int, start: int) -> int:
    """When rows r0 .. r0 + n - 1 of a tensor are there, from `blocks` ((first row, rows,
    cycle done) per block, as its producer records them: alloc.derive(x, ("row_ready",))):
    the latest of those holding some of the rows, when they hold them all; else `start`
    (when all of it is)."""
    over = [(min(q0 + m, r0 + n) - max(q0, r0), t) for q0, m, t in blocks or ()
            if q0 < r0 + n and q0 + m > r0]
    return max(t for _, t in over) if sum(k for k, _ in over) >= n else start


def rows_at(alloc, x: Placement, r0: int, n: int, what: str) -> Placement:
    """Rows r0 .. r0 + n - 1 of x: in the block its producer wrote them to, when it wrote x
    in blocks of their own slices (alloc.derive(x, ("row_parts",))), else x's own rows."""
    parts = alloc.derived_value(x, ("row_parts",))
    if not parts:
        return lower.row_block(x, r0, n)
    for q0, m, p in parts:
        if q0 <= r0 and r0 + n <= q0 + m:
            return lower.row_block(p, r0 - q0, n)
    raise CompileError(f"internal: {what}: rows {r0}..{r0 + n - 1} lie in two blocks")


def softmax_row_blocks(rows: int, nvec: int, per_head: int, whole_heads: bool
                       ) -> list[tuple[int, int]]:
    """(first row, rows) of each block of rows a Softmax over `rows` rows (`nvec` vectors)
    runs in; with `whole_heads`, blocks of whole heads of `per_head` rows."""
    n_blk = max(1, min(SOFTMAX_BLOCKS, nvec // SOFTMAX_BLOCK_VECTORS))
    if n_blk == 1:
        return [(0, rows)]
    step = -(-rows // n_blk)
    if whole_heads:
        step = -(-step // per_head) * per_head
    return [(r0, min(step, rows - r0)) for r0 in range(0, rows, step)]


def _softmax_rows(graph, arch, sch, alloc, nd, place, x, x_clean, shape, out, start, what,
                  zero, sum_dtype=None, mask: Placement | None = None, block: int = 0,
                  numerators: bool = False) -> int:
    """lower_softmax on the rows of x (plus the row `mask`, its pads at the lowest value);
    out(t) gives the result's placement and the cycle from which it may be written."""
    g = len(x.slices)
    narrow = x.dtype != "fp32"
    xm, m, t, temps = row_max(graph, arch, sch, alloc, place, x, x_clean, shape, start, what,
                              real_lanes=True, plus=mask, copy=block)
    sd = sum_dtype or x.dtype
    if sd != x.dtype and nd["op"] == "Softmax" and not narrow:
        return _softmax_narrow_e(arch, sch, alloc, x, xm, m, temps, shape, out, t, what, zero,
                                 sd, graph, place, numerators, nd)
    e, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(xm.slices) | frozenset(m.slices))
    per_row = dict(y_mode="col") if x.vpr > 1 else {}  # m: one vector per row
    if narrow:
        d, a2 = alloc.alloc(x.dtype, shape, g, avoid=frozenset(xm.slices) | frozenset(m.slices)
                            | frozenset(e.slices))
        t = binary(sch, alloc, ["sub"], xm, m, d, max(t, a, a2), what + " x - max", **per_row)
        t = lower.elementwise(sch, ["exp"], d, None, None, e, t, what + " exp")
        alloc.release(d, t)
    else:
        t = binary(sch, alloc, ["sub", "exp"], xm, m, e, max(t, a), what + " exp", **per_row)
    es = e
    if sd != x.dtype:
        es, a = alloc.alloc(sd, shape, dtype_info(sd).nbytes, avoid=frozenset(e.slices))
        t = lower.elementwise(sch, ["cvt"], e, None, None, es, max(t, a), what + " to " + sd)
    J = row_matrix(graph, arch, place, x.cols, 1.0, sd)
    s, a = alloc.alloc("fp32", (x.rows, arch.lanes), 4, avoid=frozenset(es.slices))
    t = lower.matmul(sch, es, J, s, max(t, a), what + " sum", zero=zero(sd))
    if es is not e:
        alloc.release(es, t)
    if narrow:
        sn, a = alloc.alloc(x.dtype, (x.rows, arch.lanes), g, avoid=frozenset(s.slices))
        t = lower.elementwise(sch, ["cvt"], s, None, None, sn, max(t, a), what + " sum")
        alloc.release(s, t)
        s = sn
    if nd["op"] == "LogSoftmax":
        d, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(x.slices) | frozenset(m.slices))
        t = binary(sch, alloc, ["sub"], x, m, d, max(t, a), what + " x - max", y_mode="col")
        ls, a = alloc.alloc(x.dtype, (x.rows, arch.lanes), g, avoid=frozenset(s.slices))
        t = lower.elementwise(sch, ["log"], s, None, None, ls, max(t, a), what + " log sum")
        y, a = out(t)
        t = binary(sch, alloc, ["sub"], d, ls, y, max(t, a), what, y_mode="col")
        temps += [d, ls]
    else:
        s, t = _guard_sum(sch, alloc, nd, s, t, what)
        y, a = out(t)
        t = binary(sch, alloc, ["div"], e, s, y, max(t, a), what, y_mode="col")
    alloc.release(m, t)
    for p in temps + [e, s]:
        alloc.release(p, t)
    return t


def _guard_sum(sch, alloc, nd, s: Placement, t: int, what: str) -> tuple[Placement, int]:
    """The row sums Softmax node nd divides by: with nan_to_zero (compile._guarded_softmax),
    max(s, 1) in place of s, one VXM pass over a vector per row (exact: a row's sum is at
    least 1 unless all its columns are -inf, where it is 0 and the row becomes 0 / 1)."""
    if not nd["attrs"].get("nan_to_zero"):
        return s, t
    s2, a = alloc.alloc(s.dtype, s.shape, len(s.slices), avoid=frozenset(s.slices))
    t = lower.elementwise(sch, ["max"], s, None, 1.0, s2, max(t, a), what + " sum at least 1")
    alloc.release(s, t)
    return s2, t


def _softmax_narrow_e(arch, sch, alloc, x, xm, m, temps, shape, out, t, what, zero, sd,
                      graph, place, numerators: bool, nd) -> int:
    """The rest of an fp32 Softmax whose row sums run in the narrow type sd: e = exp(xm - m)
    rounded to sd in the same chain, s = e @ ones (MXM, fp32 sums), y = float(e) / s. The
    division reads the e the sums add up, so every row of y sums to 1 within fp32 rounding,
    and e is written once, in sd, not in fp32 and again in sd (BERT-base int8 seq 128: one
    pass of 512 vectors fewer per block of rows). With `numerators`, e (in sd) is the result
    and the sums and the division are left to the reader."""
    per_row = dict(y_mode="col") if x.vpr > 1 else {}  # m: one vector per row
    if numerators:
        es, a = out(t)
        t = binary(sch, alloc, ["sub", "exp", "cvt"], xm, m, es, max(t, a), what + " exp",
                   **per_row)
        alloc.release(m, t)
        for p in temps:
            alloc.release(p, t)
        return t
    es, a = alloc.alloc(sd, shape, dtype_info(sd).nbytes,
                        avoid=frozenset(xm.slices) | frozenset(m.slices))
    t = binary(sch, alloc, ["sub", "exp", "cvt"], xm, m, es, max(t, a), what + " exp",
               **per_row)
    J = row_matrix(graph, arch, place, x.cols, 1.0, sd)
    s, a = alloc.alloc("fp32", (x.rows, arch.lanes), 4, avoid=frozenset(es.slices))
    t = lower.matmul(sch, es, J, s, max(t, a), what + " sum", zero=zero(sd))
    s, t = _guard_sum(sch, alloc, nd, s, t, what)
    y, a = out(t)
    t = binary(sch, alloc, ["cvt", "div"], es, s, y, max(t, a), what, y_mode="col")
    alloc.release(m, t)
    for p in temps + [es, s]:
        alloc.release(p, t)
    return t


def _lanes_below(graph, arch, r: int, dtype: str) -> str:
    """The constant row (one vector) of 1 in lanes 0 .. r - 1 and 0 past them: its name."""
    name = f"__lanes_below_{r}_{dtype}"
    if name not in graph.consts:
        row = (np.arange(arch.lanes) < r).astype(np.float32)
        graph.add_const(name, row.reshape(1, -1).astype(numpy_dtype(dtype)), kind="const")
    return name


def _pad_mask(graph, arch, x: Placement, low: bool, copy: int = 0) -> str:
    """The constant row (x.vpr vectors) that masks x's pad lanes: with `low`, +inf in x's
    columns and the lowest finite value of its type past them (a min with it sets the pads
    to that value); else 0 and -inf (added). `copy` k > 0 names its own copy (in other
    slices)."""
    name = f"__pad_mask_{x.cols}_{x.dtype}" + ("_low" if low else "") + \
        (f"_copy{copy}" if copy else "")
    if name not in graph.consts:
        row = np.full(x.vpr * arch.lanes, np.inf if low else 0.0, np.float32)
        row[x.cols:] = float(np.finfo(numpy_dtype(x.dtype)).min) if low else -np.inf
        graph.add_const(name, row.reshape(1, -1).astype(numpy_dtype(x.dtype)), kind="const")
    return name


def row_max(graph, arch, sch, alloc, place, x: Placement, x_clean: bool, shape, start: int,
            what: str, real_lanes: bool = False, plus: Placement | None = None,
            copy: int = 0):
    """The max of every row (of at most 320 columns) in every lane of its vector: lanes past
    the last column masked to -inf, then the vector rotated through the SXM by 1, 2, 4, ...
    256 lanes with a max on the VXM each time (cyclic windows that double cover all lanes).
    Returns (the masked input, the row max, ready cycle, temporaries to free after use).
    With `real_lanes` (Softmax, which reads the max in the row's own lanes only) the pad
    lanes hold the type's lowest finite value instead and only lanes 0 .. cols - 1 get the
    max (lanes_max with cols: fewer stages for short rows); the rest stay finite, so
    exp(pad - max) is in [0, 1]. With `plus` (a row, pads at the lowest finite value; x's
    pads zero) the first pass adds it instead of masking the pads. `copy` k > 0 reads the
    pad mask from its own copy (a constant in other slices: blocks of rows side by side each
    read it once per row)."""
    if x.cols > arch.lanes and not real_lanes:
        raise CompileError(f"{what}: a row max over more than {arch.lanes} columns is not "
                           "lowered yet")
    if not x_clean and x.cols % arch.lanes:
        raise CompileError(f"{what}: the input's lanes past its last column may hold inf or "
                           "NaN; masking them is not lowered yet")
    g = len(x.slices)

    def temp():
        return alloc.alloc(x.dtype, shape, g, avoid=frozenset(x.slices))

    if x.cols > arch.lanes:
        return _row_max_wide(graph, arch, sch, alloc, place, x, start, what, plus, copy)
    t = start
    temps = []
    cur = x
    if plus is not None:  # x + a row whose pads hold the lowest value: pads end at that
        cur, a = temp()
        temps.append(cur)
        t = binary(sch, alloc, ["add"], x, plus, cur, max(t, a), what + " plus mask")
    elif x.cols < arch.lanes:
        # add -inf past the last column; or (real_lanes) take the min with +inf in the row's
        # lanes and the lowest finite value past them, which sets the pads to exactly that
        # (an add could overflow to -inf, and -inf - -inf is NaN)
        # the mask is one 320-lane vector: read it once per row (the "row" broadcast)
        mp = place[_pad_mask(graph, arch, x, real_lanes, copy)]
        cur, a = temp()
        temps.append(cur)
        t = binary(sch, alloc, ["min" if real_lanes else "add"], x, mp, cur, max(t, a),
                   what + " pad mask")
    m, t = lanes_max(sch, alloc, cur, shape, t, what + " max", free_input=False,
                     cols=x.cols if real_lanes else None, side=copy % 2)
    return cur, m, t, temps


def _row_max_wide(graph, arch, sch, alloc, place, x: Placement, start: int, what: str,
                  plus: Placement | None, copy: int):
    """row_max with real_lanes for rows of more than one vector (a Softmax over more than
    320 keys): x's pads (past the last column, in each row's last vector) set to the lowest
    finite value as row_max does (a min with the pad mask row, or the add of `plus`); the
    row's vectors folded by a VXM chain, each link the max of one vector of the row with the
    running result; then lanes_max over every lane of the folded vector (the pads there hold
    the lowest value, so every lane of the result is the row's max)."""
    g, vpr = len(x.slices), x.vpr
    t, temps, xm = start, [], x
    if plus is not None or x.cols % arch.lanes:
        xm, a = alloc.alloc(x.dtype, x.shape, g, avoid=frozenset(x.slices))
        temps.append(xm)
        if plus is not None:
            t = binary(sch, alloc, ["add"], x, plus, xm, max(t, a), what + " plus mask")
        else:
            mp = place[_pad_mask(graph, arch, x, True, copy)]
            t = binary(sch, alloc, ["min"], x, mp, xm, max(t, a), what + " pad mask")
    shape = (x.rows, arch.lanes)
    m = None
    for c in range(vpr):
        nxt, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(xm.slices)
                             | frozenset(m.slices if m is not None else ()))
        t = lower.elementwise(sch, ["copy"] if m is None else ["max"], xm, m, None, nxt,
                              max(t, a), what + " max", x_of=lambda v, c=c: v * vpr + c,
                              y_mode="col")
        if m is not None:
            alloc.release(m, t)
        m = nxt
    m, t = lanes_max(sch, alloc, m, shape, t, what + " max", side=copy % 2)
    return xm, m, t, temps


def lanes_max(sch, alloc, m: Placement, shape, ready: int, what: str,
              free_input: bool = True, cols: int | None = None,
              unit: int = 1, side: int = 0) -> tuple[Placement, int]:
    """Every lane of each vector of m := the max over the vector's lanes, in stages: when
    every lane holds the max of a cyclic window of w lanes, the SXM rotates the vector by w,
    2w, ..., (k - 1)w lanes side by side and the VXM takes the max of the k vectors in a tree,
    leaving windows of k * w lanes. Few vectors are latency-bound (each stage is a trip from
    the SXM at the chip's edge to the VXM in its middle), so they take a wide radix k and few
    stages; many vectors are throughput-bound and take k = 2, the least work.
    With `cols` (lanes from cols on hold the type's lowest value), windows stop growing once
    they span cols lanes, and one rotation the other way by cols - 1 lanes extends the window
    of every lane l < cols over lanes l .. l + cols - 1: lanes 0 .. cols - 1 hold the max;
    the others some finite value. `side` (0 west, 1 east): the hemisphere whose SXM the
    corner turn takes first (blocks of rows alternate, so two can turn at once).
    With `unit` (16: superlanes) lanes move in groups of that many: the max over lanes
    j, j + unit, j + 2 unit, ... (cols counts groups). Many vectors (TURN_VECTORS or more) of
    single lanes go through the SXM's corner turn instead (turnmax.py)."""
    if unit == 1 and m.nvec >= TURN_VECTORS:
        from compiler.backend.turnmax import lanes_max_turn

        got = lanes_max_turn(sch, alloc, m, shape, ready, what, cols, side)
        if got is not None:
            if free_input:
                alloc.release(m, got[1])
            return got
    L = sch.arch.lanes // unit
    g = len(m.slices)
    span = L if cols is None else max(1, min(cols, L))
    k_max = _max_radix(m.nvec, span)
    V = sch.arch.vxm_position
    # latency-bound: the tree's temporaries near the VXM, the rotations on m's side (between
    # the SXM and the VXM); many vectors need the ports of slices anywhere
    near = frozenset(s for s, p in sch.slice_pos.items() if abs(p - V) <= NEAR_VXM) \
        if k_max > 2 else None
    t = ready
    first = m
    w = 1
    while w < span:
        k = min(k_max, -(-span // w))
        level: list[tuple[Placement, int]] = [(m, t)]
        side = side_of(sch, m) if near is not None else None
        for j in range(1, k):  # on m's side: the SXM's trip to the VXM passes them
            rot, a = _temp_in(alloc, m.dtype, shape, g,
                              frozenset(s for p, _ in level for s in p.slices), side)
            level.append((rot, lower.sxm_rotate(sch, m, rot, j * w * unit, max(t, a), what)))
        # the max of the k vectors, pairwise, near the VXM
        m, t = _max_tree(sch, alloc, level, shape, what, near,
                         keep=() if free_input else (first,))
        w *= k
    if w < L:  # lane l holds the max of lanes l - w + 1 .. l: add l + 1 .. l + span - 1
        out, a = _temp_in(alloc, m.dtype, shape, g, frozenset(m.slices), near)
        if span == 1:  # nothing to add: a copy, which the caller may free
            t = lower.elementwise(sch, ["copy"], m, None, None, out, max(t, a), what)
        else:
            rot, a2 = _temp_in(alloc, m.dtype, shape, g, frozenset(m.slices) | frozenset(
                out.slices), side_of(sch, m) if near is not None else None)
            t = lower.sxm_rotate(sch, m, rot, (1 - span) * unit, max(t, a2), what)
            t = binary(sch, alloc, ["max"], m, rot, out, max(t, a), what)
            alloc.release(rot, t)
        if m is not first or free_input:
            alloc.release(m, t)
        m = out
    return m, t


def _max_radix(nvec: int, lanes: int) -> int:
    """The radix of lanes_max for nvec vectors whose windows must span `lanes` lanes: of 2,
    4 and 8, the one with the least estimated time, counting a stage's trips (about
    LANES_TRIP cycles each: the rotation and each level of the max tree) and the SXM's cycles
    (one per rotated vector)."""
    def cost(k):
        stages, w, rot = 0, 1, 0
        while w < lanes:
            kk = min(k, -(-lanes // w))
            stages += 1 + math.ceil(math.log2(kk))
            rot += kk - 1
            w *= kk
        return stages * LANES_TRIP + rot * nvec
    return min((2, 4, 8), key=lambda k: (cost(k), k))


LANES_TRIP = 60  # cycles of one SRAM round trip through the SXM or the VXM (measured)
TURN_VECTORS = 64  # lanes_max of at least this many vectors goes through the corner turn
NEAR_VXM = 10  # slices within this many positions of the VXM hold VXM-to-VXM temporaries


def side_of(sch, p: Placement) -> frozenset[int]:
    """The slices on p's side of the VXM."""
    V = sch.arch.vxm_position
    west = sch.slice_pos[p.slices[0]] < V
    return frozenset(s for s, q in sch.slice_pos.items() if (q < V) == west)


def _temp_in(alloc, dtype: str, shape, g: int, avoid: frozenset[int], only: frozenset[int]):
    """A temporary in the slices `only` (where its trips are short) when they have room,
    else (or with only None) anywhere; never in `avoid`."""
    got = None if only is None else alloc.try_alloc(dtype, shape, g, avoid=avoid, only=only)
    return got or alloc.alloc(dtype, shape, g, avoid=avoid)


def row_matrix(graph, arch, place, cols: int, scale: float, dtype: str = "fp32"):
    """The [cols, 320] matrix (of machine type dtype) whose product with a row leaves
    scale * (row sum) in every lane, as MXM weight tiles: a constant, so its loads need not
    wait for the row."""
    name = f"__rowsum_{cols}_{scale!r}" + ("" if dtype == "fp32" else f"_{dtype}")
    if name not in graph.consts:
        graph.add_const(name, np.full((cols, arch.lanes), scale, np.float32)
                        .astype(numpy_dtype(dtype)), kind="const")
    return place.tiled(name, dtype)


def trailing_axes(graph, nd, what) -> int:
    """The first of the reduced axes, which must be the trailing ones (the last alone, or the
    last k; no axes: all of them), with keepdims."""
    ins = nd["inputs"]
    rank = len(graph.values[ins[0]].shape)
    axes = nd["attrs"].get("axes")
    if len(ins) > 1 and ins[1]:
        arr = graph.const_array(ins[1]) if graph.is_const(ins[1]) else None
        if arr is None:
            raise CompileError(f"{what}: axes computed at run time are not lowered")
        axes = tuple(int(a) for a in arr.reshape(-1))
    if axes is None or len(axes) == 0:
        if int(nd["attrs"].get("noop_with_empty_axes", 0)):
            raise CompileError(f"{what}: noop_with_empty_axes is not lowered yet")
        axes = tuple(range(rank))
    got = sorted(a % rank for a in axes)
    if not got or got != list(range(got[0], rank)):
        raise CompileError(f"{what}: reductions over axes other than the trailing ones are "
                           "not lowered yet")
    if not int(nd["attrs"].get("keepdims", 1)):
        raise CompileError(f"{what}: keepdims=0 is not lowered yet")
    return got[0]


def flatten_trailing(graph, sch, alloc, place, clean, v: str, k: int, ready: int,
                     what: str) -> tuple[str, int, Placement | None]:
    """v viewed as [prod(shape[:k]), prod(shape[k:])] (rows of the trailing dims laid along
    the lanes, see lower_reshape); v itself when k is its last axis. Returns (the value's
    name, its ready cycle, the placement to release after use or None)."""
    ty = graph.values[v]
    shape = tuple(ty.shape)
    if k >= len(shape) - 1:
        return v, ready, None
    flat = (int(np.prod(shape[:k], dtype=np.int64)), int(np.prod(shape[k:], dtype=np.int64)))
    name = f"__{v}@flat{k}"
    x = place[v]
    p, a = alloc.alloc(x.dtype, flat, len(x.slices), avoid=frozenset(x.slices))
    t = lower_reshape(sch, alloc, x, p, max(ready, a), what + " flatten")
    graph.values[name] = TensorType(ty.dtype, flat)
    place[name] = p
    clean[name] = clean.get(v, False)
    return name, t, p


def lower_reduce(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean,
                 kind) -> int:
    """ReduceMean / ReduceSum over the last axis (trailing axes: flattened into one first):
    one MXM pass against a matrix of 1/cols (or ones); the result holds the row's value in
    every lane of one vector per row."""
    k = trailing_axes(graph, nd, what)
    x_name, start, tmp = flatten_trailing(graph, sch, alloc, place, clean, nd["inputs"][0], k,
                                          start, what)
    x = place[x_name]
    if not clean.get(x_name, False) and x.cols % arch.lanes:
        raise CompileError(f"{what}: the input's lanes past its last column may hold inf or "
                           "NaN; masking them is not lowered yet")
    J = row_matrix(graph, arch, place, x.cols, 1.0 / x.cols if kind == "mean" else 1.0)
    y, a = new(nd["outputs"][0], start)
    t = lower.matmul(sch, x, J, y, max(start, a), what, zero=zero(x.dtype))
    if tmp is not None:
        alloc.release(tmp, t)
    return t


def lower_segment_sum(graph, sch, alloc, nd, place, new, start, what, zero, clean) -> int:
    """SegmentSum(x, ids) (compile._one_key_merged): every lane of a row := the sum of the
    row's lanes with its id (ids: one per column). One MXM pass against the [cols, cols]
    matrix with a 1 where two columns share an id (block diagonal for contiguous segments; its
    tiles of zeros are not loaded)."""
    x_name, ids_name = nd["inputs"][:2]
    x = place[x_name]
    if not clean.get(x_name, False) and x.cols % sch.arch.lanes:
        raise CompileError(f"{what}: the input's lanes past its last column may hold inf or "
                           "NaN; masking them is not lowered yet")
    ids = graph.const_array(ids_name).reshape(-1)
    if ids.size != x.cols:
        raise CompileError(f"{what}: {ids.size} segment ids for {x.cols} columns")
    name = f"__segments_{ids_name}_{x.dtype}"
    if name not in graph.consts:
        graph.add_const(name, np.equal.outer(ids, ids).astype(numpy_dtype(x.dtype)),
                        kind="const")
    w = place.tiled(name, x.dtype, sparse=True)
    y, a = new(nd["outputs"][0], start)
    return lower.matmul(sch, x, w, y, max(start, a), what, zero=zero(x.dtype))


def lower_head_matmul(graph, sch, alloc, nd, place, new, start, what, zero, mdt: str,
                      ready_of) -> int:
    """HeadMatMul(P, v, ids) (compile._merged_values_product): R[(b, m), c] = sum_t P[b, ids[c],
    m, t] * v[(b, t), c], P [.., H, M, T] and v [.., T, D] rounded to the MXM type mdt first.
    Every 320-column tile of R is one accumulation on an MXM plane over the heads with columns
    in it: head h's rows of P stream against v's tile with every lane not of head h zeroed (a
    bitwise AND with a constant lane mask on the VXM, exact for inf and NaN too), computed
    while the scores and the Softmax run (from when v is ready: `ready_of`)."""
    from compiler.backend.select import BITS, bits_view

    arch = sch.arch
    L = arch.lanes
    p_name, v_name, ids_name = nd["inputs"]
    ps = tuple(graph.values[p_name].shape)
    H, M, T = ps[-3:]
    lead = int(np.prod(ps[:-3], dtype=np.int64))
    ids = graph.const_array(ids_name).reshape(-1)
    P, v = place[p_name], place[v_name]
    D = v.cols
    if T > L:
        raise CompileError(f"{what}: attention over more than {L} keys in one product is not "
                           "lowered yet")
    g = dtype_info(mdt).nbytes
    bits = BITS[g]
    # P by the row blocks its Softmax finished one by one (each converted when it is done, and
    # each product waits only for its own heads' rows), else all of P at once; the output and
    # P's conversion then in space free from when the first block is done
    rr = alloc.derived_value(P, ("row_ready",))
    first = start if rr is None else min(t for _, _, t in rr)
    now, alloc.now = alloc.now, first
    y, a = new(nd["outputs"][0], first)
    alloc.now = now
    t0 = max(start, a)
    temps = []

    def to_mdt(x: Placement, t: int) -> tuple[Placement, int]:
        if x.dtype == mdt:
            return x, t
        z, az = alloc.alloc(mdt, x.shape, g, avoid=frozenset(x.slices))
        temps.append(z)
        return z, lower.elementwise(sch, ["cvt"], x, None, None, z, max(t, az),
                                    f"{what} to {mdt}")

    # v's side from when v is ready, in space free by then (the node starts with P)
    now, t_v0 = alloc.now, ready_of(v_name)
    alloc.now = t_v0
    vm, t_v = to_mdt(v, t_v0)
    alloc.now = now
    if rr is not None and P.dtype != mdt:
        now, alloc.now = alloc.now, first
        pm, az = alloc.alloc(mdt, P.shape, g, avoid=frozenset(P.slices))
        alloc.now = now
        temps.append(pm)
        rr = tuple((r0, n, lower.elementwise(sch, ["cvt"], P, None, None, pm, max(t_r, az),
                                             f"{what} to {mdt}",
                                             vectors=range(r0 * P.vpr, (r0 + n) * P.vpr)))
                   for r0, n, t_r in rr)
        t_p = max(t for _, _, t in rr)
    elif rr is not None and P.dtype == mdt:  # each block as it is done
        pm, t_p = P, max(t for _, _, t in rr)
    else:
        pm, t_p = to_mdt(P, t0)
        rr = None
    # P holds a Softmax's exponentials e only (compile._numerators_only): every tile's product
    # e @ V is divided by e @ ones of its heads (each head's row sums in its own lanes)
    numer = bool(alloc.derived_value(P, ("numerators",)))
    if numer and P.dtype != mdt:
        raise CompileError(f"internal: {what}: exponentials in {P.dtype}, not {mdt}")

    def p_rows(rows0: int, n: int) -> Placement:
        # in the placements its Softmax wrote them to, block by block, if so
        return rows_at(alloc, P, rows0, n, what) if pm is P else \
            lower.row_block(pm, rows0, n)

    def p_ready(rows0: int, n: int) -> int:
        return t_p if rr is None else max(rows_ready(rr, rows0, n, t_p), a)

    done = t0
    cols = [t0] * -(-D // L)  # when each column tile of y is written
    for j in range(-(-D // L)):
        cn = min(L, D - j * L)
        heads = sorted({int(h) for h in ids[j * L:j * L + cn]})
        masks = {}
        for h in heads:
            key = f"__head_lanes_{ids_name}_{h}_{j}_{bits}"
            if key not in sch.data:
                m = np.zeros((1, L), numpy_dtype(bits))
                m[0, :cn][ids[j * L:j * L + cn] == h] = -1
                mp, _ = alloc.alloc(bits, m.shape, g, resident=True)
                sch.data[key] = (mp, m)
            masks[h] = sch.data[key][0]
        for b in range(lead):
            tiles, t_w = {}, t_v
            alloc.now = t_v0
            for i, h in enumerate(heads):  # v's tile with only head h's lanes kept
                wt, aw = alloc.alloc(mdt, (T, cn), g, avoid=frozenset(vm.slices)
                                     | frozenset(masks[h].slices))
                temps.append(wt)
                vpr = vm.vpr
                t_w = max(t_w, binary(
                    sch, alloc, ["and"], bits_view(vm, bits), bits_view(masks[h], bits),
                    bits_view(wt, bits), max(t_v, aw), f"{what} head {h} of v",
                    x_of=lambda r, b=b, j=j, vpr=vpr: (b * T + r) * vpr + j))
                tiles[(i, 0)] = (wt,)
            alloc.now = now
            w = lower.Tiled(mdt, T * len(heads), cn, tiles)
            parts = tuple(p_rows((b * H + h) * M, M) for h in heads)
            t_pj = max(p_ready((b * H + h) * M, M) for h in heads)
            if numer:
                cols[j] = max(cols[j], _head_products_over_sums(
                    sch, alloc, parts, w, _head_ones(sch, alloc, ids, ids_name, heads, j, T, cn,
                                                     mdt),
                    y, b * M, j, t_pj, t_w, what, zero(mdt)))
                continue
            yb = Placement(y.dtype, (M, cn), M, cn, y.vpr, y.slices, y.addr + b * M * y.vpr + j)
            cols[j] = max(cols[j], lower.matmul(sch, parts[0], w, yb, t_pj, what,
                                                zero=zero(mdt), x_parts=parts, w_after=t_w))
    done = max(done, *cols)
    for p in temps:
        alloc.release(p, done)
    if len(cols) > 1 and y.rows > 1:  # its readers may start from the first tile
        alloc.derive(y, ("col_ready",), [], tuple(cols))
    return done


def _head_ones(sch, alloc, ids, ids_name: str, heads, j: int, T: int, cn: int, mdt: str):
    """The weights that sum each head's row of e into that head's lanes of column tile j: per
    head h, T rows of mdt, each 1 in the lanes of head h (ids) and in the lanes past the
    tile's cn columns, else 0: one constant vector, loaded T times (a part with vpr 0). The
    pad lanes add every head's sum (at least 1: the largest e of a row is 1), so the
    division leaves them 0 / s = 0, not 0 / 0."""
    L = sch.arch.lanes
    g = dtype_info(mdt).nbytes
    tiles = {}
    for i, h in enumerate(heads):
        key = f"__head_ones_{ids_name}_{h}_{j}_{mdt}"
        if key not in sch.data:
            m = np.zeros((1, L), numpy_dtype(mdt))
            m[0, :cn][ids[j * L:j * L + cn] == h] = 1
            m[0, cn:] = 1
            mp, _ = alloc.alloc(mdt, m.shape, g, resident=True)
            sch.data[key] = (mp, m)
        mp = sch.data[key][0]
        tiles[(i, 0)] = (Placement(mdt, (T, cn), T, cn, 0, mp.slices, mp.addr),)
    return lower.Tiled(mdt, T * len(heads), cn, tiles)


def _head_products_over_sums(sch, alloc, parts, w, ones, y: Placement, r0: int, j: int,
                             ready: int, w_after: int, what: str, zero) -> int:
    """Column tile j of rows r0.. of y := (e @ w) / (e @ ones), e the heads' rows `parts`
    (HeadMatMul's products and, with the constant ones, each head's row sums in its lanes),
    both summed in fp32 on the MXM, then one division on the VXM."""
    M, cn = parts[0].rows, w.cols
    num, a1 = alloc.alloc("fp32", (M, cn), 4, avoid=frozenset(y.slices))
    den, a2 = alloc.alloc("fp32", (M, cn), 4, avoid=frozenset(y.slices) | frozenset(num.slices))
    t1 = lower.matmul(sch, parts[0], w, num, max(ready, a1), what, zero=zero, x_parts=parts,
                      w_after=w_after)
    t2 = lower.matmul(sch, parts[0], ones, den, max(ready, a2), what + " row sums", zero=zero,
                      x_parts=parts)
    vpr = y.vpr
    done = lower.elementwise(sch, ["div"], num, den, None, y, max(t1, t2),
                             what + " over the row sums",
                             vectors=range(r0 * vpr + j, (r0 + M) * vpr + j, vpr),
                             x_of=lambda v: v // vpr - r0, y_of=lambda v: v // vpr - r0)
    alloc.release(num, done)
    alloc.release(den, done)
    return done


def lower_reduce_max(graph, arch, sch, alloc, nd, place, new, start, what, clean) -> int:
    """ReduceMax over the last axis with keepdims (trailing axes: flattened into one first):
    the row max (see row_max), which already holds the row's value in every lane of one
    vector per row."""
    k = trailing_axes(graph, nd, what)
    x_name, start, tmp = flatten_trailing(graph, sch, alloc, place, clean, nd["inputs"][0], k,
                                          start, what)
    x = place[x_name]
    shape = tuple(graph.values[x_name].shape)
    xm, m, t, temps = row_max(graph, arch, sch, alloc, place, x, clean.get(x_name, False),
                              shape, start, what)
    y, a = new(nd["outputs"][0], t)  # one vector per row, like m (rows of <= 320 columns)
    t = lower.elementwise(sch, ["copy"], m, None, None, y, max(t, a), what)
    alloc.release(m, t)
    for p in temps + ([tmp] if tmp is not None else []):
        alloc.release(p, t)
    return t


def lower_norm(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean, spread,
               sum_dtype: str | None = None, absmax: bool = False) -> int:
    """LayerNormalization / RMSNormalization over the last axis. Sums across lanes run on the
    MXM against a [cols, 320] matrix of 1/cols, which leaves the row's mean in every lane;
    the rest is elementwise on the VXM:
        LayerNorm: m = x @ J; d = x - m; v = (d * d) @ J; y = d * rsqrt(v + eps) * g + b
        RMSNorm:   q = (x * x) @ J; y = x * rsqrt(q + eps) * g
    With `sum_dtype` (fp16 for fp32 rows under the int8 and fp8 policies) the mean's MXM pass
    reads x rounded to it, at the MXM's full rate; squares stay fp32, where they cannot
    overflow.
    With `absmax` (the output feeds only quantized MatMuls) and no scale or bias, the row
    absmax that quantizes the output is found beside the norm, off its path: max |y| =
    rsqrt(v + eps) * max |d| (d = x - m, or x for RMSNorm), with max |d| taken while the
    variance is computed; lower_matmul_quant finds it derived from y."""
    op, ins, outs = nd["op"], [i for i in nd["inputs"]], nd["outputs"]
    x_name = ins[0]
    xt = graph.values[x_name]
    rank = len(xt.shape)
    axis = int(nd["attrs"].get("axis", -1))
    if not -rank <= axis < rank:
        raise CompileError(f"{what}: axis {axis} is out of range for rank {rank}")
    if axis % rank != rank - 1:  # over the trailing axes: flattened into one, and back
        return _norm_flat(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean,
                          spread, axis % rank, sum_dtype)
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
    J = row_matrix(graph, arch, place, cols, 1.0 / cols)
    z = zero(x.dtype)
    scale = ins[1] if len(ins) > 1 and ins[1] else None
    bias = ins[2] if len(ins) > 2 and ins[2] else None
    for name in (scale, bias):
        if name is not None and tuple(graph.values[name].shape) not in ((cols,), (1, cols)):
            raise CompileError(f"{what}: scale/bias of shape {list(graph.values[name].shape)} "
                               "(not one value per column) is not lowered yet")
    # the mean's matrix and zero rows: of the sum type when the mean reads x rounded to it
    n_blk = max(1, min(NORM_BLOCKS, x.nvec // NORM_BLOCK_VECTORS)) if not any(extra) else 1
    mean = (row_matrix(graph, arch, place, cols, 1.0 / cols, sum_dtype), zero(sum_dtype)) \
        if op == "LayerNormalization" and sum_dtype and sum_dtype != x.dtype else (J, z)
    if n_blk == 1:
        return _norm_rows(graph, arch, sch, alloc, op, x, tuple(xt.shape), J, z, mean, eps,
                          scale, bias, place, extra, new, outs, spread, start, what,
                          absmax and scale is None and bias is None
                          and x.rows <= NORM_ABSMAX_ROWS)
    # blocks of rows with their own temporaries (in other slices), as for Softmax
    y, a = new(outs[0], start)
    done = start
    step = -(-x.rows // n_blk)
    blocks = []
    for r0 in range(0, x.rows, step):
        n = min(step, x.rows - r0)
        yb = lower.row_block(y, r0, n)
        region, alloc.region = alloc.region, block_region(alloc, r0 // step, n_blk)
        t_b = _norm_rows(graph, arch, sch, alloc, op, lower.row_block(x, r0, n), (n, cols), J,
                         z, mean, eps, scale, bias, place, [None, None],
                         lambda _name, t, yb=yb: (yb, a), outs, spread, start,
                         f"{what} rows {r0}..{r0 + n - 1}")
        alloc.region = region
        blocks.append((r0, n, t_b))
        done = max(done, t_b)
    # when each block of rows is done: a reader by rows (a row absmax) may start on the first
    alloc.derive(y, ("row_ready",), [], tuple(blocks))
    return done


# LayerNorm / RMSNorm over many rows runs in up to NORM_BLOCKS blocks of at least this many
# vectors
NORM_BLOCKS = 4
NORM_BLOCK_VECTORS = 96
# work over this many rows or fewer (a decode step) is latency-bound: it takes the forms
# that shorten the path (and more work), measured slower on BERT-base's 128 rows
FEW_ROWS = 16
# up to this many rows a norm finds its quantizing MatMuls' absmax itself; more rows are
# throughput-bound, and its max and -min are twice the work of max |y|
NORM_ABSMAX_ROWS = FEW_ROWS


def _norm_rows(graph, arch, sch, alloc, op, x, shape, J, z, mean, eps, scale, bias, place,
               extra, new, outs, spread, start, what, absmax: bool = False) -> int:
    """lower_norm on the rows of x (of `shape`); new(name, t) gives an output's placement.
    J and z: the row-sum matrix and zero rows in x's type; mean: those the mean uses (of
    another type: x is rounded to it first)."""
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

    J_mean, zm = mean
    if absmax and op == "LayerNormalization":  # max x and -min x, beside the mean
        ext, t_ext = row_extremes(graph, sch, alloc, place, x, start, what)
    elif absmax:  # RMSNorm: max |y| = rsqrt(q + eps) * max |x|
        d_max, t_dmax = row_absmax(sch, alloc, x, start, what)
    xs = x
    if op == "LayerNormalization" and J_mean.dtype != x.dtype:  # the mean from x rounded
        xs, a = alloc.alloc(J_mean.dtype, shape, dtype_info(J_mean.dtype).nbytes,
                            avoid=frozenset(x.slices))
        t = lower.elementwise(sch, ["cvt"], x, None, None, xs, max(t, a),
                              what + " to " + J_mean.dtype)
        temps.append(xs)
    vpr = x.vpr
    r_last = x.cols % arch.lanes
    # many rows: the MXM's fp32 variance sums bound the norm (emulated at a sixteenth of its
    # rate), so the squares' column tiles are added on the VXM first and the MXM sums one K
    # tile, not vpr (BERT-base int8 at seq 64..192 3.8% fewer cycles in all); few rows are
    # latency-bound, and the two passes more cost more than the MXM saves (GPT-2-small's
    # one-token step 70,133 -> 72,700 cycles with them)
    tiles_first = vpr > 1 and rows > FEW_ROWS
    if op == "LayerNormalization":
        m, a = per_row(extra[0])
        t = lower.matmul(sch, xs, J_mean, m, max(t, a), what + " mean", zero=zm)
        d, a = temp(shape)
        if tiles_first and r_last:  # d's pad lanes 0, not -m: the squares' tiles are added
            m2, a2 = temp((2 * rows, arch.lanes))
            temps.append(m2)
            t = max(t, lower.elementwise(sch, ["copy"], m, None, None, m2, max(t, a2),
                                         what + " mean"))
            t = binary(sch, alloc, ["mul"], m, place[_lanes_below(graph, arch, r_last,
                                                                    x.dtype)],
                       lower.row_block(m2, rows, rows), max(t, a2), what + " mean")
            t = binary(sch, alloc, ["sub"], x, m2, d, max(t, a), what,
                       y_of=lambda v: v // vpr + rows * (v % vpr == vpr - 1))
        else:
            t = binary(sch, alloc, ["sub"], x, m, d, max(t, a), what, y_mode="col")
    else:
        d = x
    if absmax and op == "LayerNormalization":
        # max |x - m| = max(max x - m, m - min x), while the variance is computed
        t_m = t
        hi, a = alloc.alloc(x.dtype, (rows, arch.lanes), g, avoid=frozenset(ext.slices))
        t_hi = binary(sch, alloc, ["sub"], lower.row_block(ext, 0, rows), m, hi,
                      max(t_ext, t_m, a), what + " row max")
        lo, a = alloc.alloc(x.dtype, (rows, arch.lanes), g,
                            avoid=frozenset(ext.slices) | frozenset(hi.slices))
        t_lo = binary(sch, alloc, ["add"], lower.row_block(ext, rows, rows), m, lo,
                      max(t_ext, t_m, a), what + " row max")
        alloc.release(ext, max(t_hi, t_lo))
        d_max, t_dmax = _max_tree(sch, alloc, [(hi, t_hi), (lo, t_lo)], (rows, arch.lanes),
                                  what + " row max")
    v, a_v = temp((rows, arch.lanes))
    temps.append(v)
    if tiles_first:  # the squares' tiles, each in its own slices, added on the VXM
        sqs = []
        for k in range(vpr):
            sq_k, a = alloc.alloc(x.dtype, (rows, arch.lanes), g,
                                  avoid=frozenset(s for q in sqs for s in q[0].slices))
            sqs.append((sq_k, lower.elementwise(sch, ["mul"], d, None, None, sq_k, max(t, a),
                                                what, y_is_x=True,
                                                x_of=lambda v, k=k: v * vpr + k)))
        w, t_w = _sum_tree(sch, alloc, sqs, (rows, arch.lanes), what + " variance")
        temps.append(w)
        t = t_var = lower.matmul(sch, w, row_matrix(graph, arch, place, arch.lanes, 1.0 / x.cols),
                                 v, max(t_w, a_v), what + " variance", zero=z)
    else:
        sq, a = temp(shape)
        t = lower.elementwise(sch, ["mul"], d, None, None, sq, max(t, a), what, y_is_x=True)
        t = t_var = lower.matmul(sch, sq, J, v, max(t, a_v), what + " variance", zero=z)
        temps.append(sq)
    # Without scale and bias (folded into MatMuls) the last vector of a row is multiplied by
    # rsqrt(v + eps) zeroed past the last column: x - m is -m there, and pad lanes stay zero
    pad_mask = op == "LayerNormalization" and scale is None and bias is None \
        and x.cols % arch.lanes and extra[1] is None
    if pad_mask:  # [rsqrt(v + eps) of every row; the same zeroed past the last column]
        inv2, a = temp((2 * rows, arch.lanes))
        temps.append(inv2)
        inv = lower.row_block(inv2, 0, rows)
    else:
        inv, a = per_row(extra[1] if op == "LayerNormalization" else None)
    t = t_inv = lower.elementwise(sch, ["add", "rsqrt"], v, None, eps, inv, max(t, a), what)
    steps = [("mul", inv, "col")]
    if pad_mask:  # rsqrt(v + e) with e = eps in the row's lanes, inf past them: 0 there
        lanes = f"__eps_below_{x.cols % arch.lanes}_{eps!r}_{x.dtype}"
        if lanes not in graph.consts:
            row = np.where(np.arange(arch.lanes) < x.cols % arch.lanes, np.float32(eps),
                           np.float32(np.inf))
            graph.add_const(lanes, row.reshape(1, -1).astype(numpy_dtype(x.dtype)),
                            kind="const")
        t = max(t, binary(sch, alloc, ["add", "rsqrt"], v, place[lanes],
                          lower.row_block(inv2, rows, rows), t_var, what + " pad lanes"))
        vpr = x.vpr
        steps = [("mul", inv2, lambda v: v // vpr + rows * (v % vpr == vpr - 1))]
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
            dst, a = temp(shape)
            temps.append(dst)
        t = binary(sch, alloc, [alu], src, operand, dst, max(t, a), what,
                   **(dict(y_mode=mode) if isinstance(mode, str) else dict(y_of=mode)))
        src = dst
    if absmax:  # max |y| = rsqrt(v + eps) * max |d|, kept with y for its MatMuls
        y_max, a = alloc.alloc(x.dtype, (rows, arch.lanes), g, avoid=frozenset(d_max.slices))
        t_max = binary(sch, alloc, ["mul"], d_max, inv, y_max, max(t_dmax, t_inv, a),
                       what + " row max")
        alloc.release(d_max, t_max)
        alloc.derive(src, ("absmax",), [y_max], (y_max, t_max, False))  # not floored
    if d is not x:
        temps.append(d)
    for p in temps:
        alloc.release(p, t)
    return t


def _norm_flat(graph, arch, sch, alloc, nd, place, new, start, what, zero, clean, spread,
               k: int, sum_dtype: str | None = None) -> int:
    """A norm over axes k.. as one over the last axis of [prod(shape[:k]), prod(shape[k:])];
    scale and bias (of the normalised shape) flattened likewise; the result laid back out."""
    ins, outs = list(nd["inputs"]), list(nd["outputs"])
    shape = tuple(graph.values[ins[0]].shape)
    temps, flat_ins, t = [], [], start
    for j, v in enumerate(ins):
        if not v:
            flat_ins.append(v)
            continue
        vs = tuple(graph.values[v].shape)
        if j and vs != shape[k:]:
            raise CompileError(f"{what}: scale/bias of shape {list(vs)} (not the normalised "
                               f"shape {list(shape[k:])}) is not lowered yet")
        name, tv, p = flatten_trailing(graph, sch, alloc, place, clean, v, 0 if j else k,
                                       start, what)
        flat_ins.append(name)
        t = max(t, tv)
        if p is not None:
            temps.append(p)
    y = outs[0]
    y_flat = f"__{y}@flat{k}"
    graph.values[y_flat] = TensorType(graph.values[y].dtype, tuple(graph.values[flat_ins[0]].shape))
    inner = dict(nd, inputs=flat_ins, outputs=[y_flat] + outs[1:],
                 attrs=dict(nd["attrs"], axis=-1))
    t = lower_norm(graph, arch, sch, alloc, inner, place, new, t, what, zero, clean, spread,
                   sum_dtype)
    z, a = new(y, t)
    t = lower_reshape(sch, alloc, place[y_flat], z, max(t, a), what + " unflatten")
    for p in temps + [place[y_flat]]:
        alloc.release(p, t)
    return t


# unsigned types held in a wider signed machine type (uint8 in int16, uint16 in int32): the
# low bits of an Add, Sub or Mul computed there are the result wrapped to the type
UNSIGNED_MASK = {"uint8": 0xFF, "uint16": 0xFFFF}


def lower_elementwise(graph, sch, alloc, nd, place, new, start, what, clean, spread,
                      ready_of, spread_scalar) -> tuple[int, bool]:
    """Lower one elementwise op; returns (ready cycle, whether pad lanes stay zero). A result
    computed only from per-row values held in every lane (`spread`) and immediates is itself
    such a value: the VXM works on whole vectors."""
    out = nd["outputs"][0]
    ins = [v for v in nd["inputs"] if v]
    if nd["op"] in ("Max", "Min") and len(ins) > 2:  # fold pairwise: op(op(a, b), c) ...
        acc, temps = ins[0], []
        for k, v in enumerate(ins[1:]):
            last = k == len(ins) - 2
            name = out if last else f"__{out}_{nd['op']}{k}"
            if not last:
                shape = np.broadcast_shapes(tuple(graph.values[acc].shape),
                                            tuple(graph.values[v].shape))
                graph.values[name] = TensorType(graph.values[out].dtype, tuple(shape))
            part = dict(nd, inputs=[acc, v], outputs=[name])
            t, c = lower_elementwise(graph, sch, alloc, part, place, new, start, what, clean,
                                     spread, ready_of, spread_scalar)
            start = t
            if not last:
                temps.append(name)
            clean[name] = c
            acc = name
        for v in temps:
            alloc.release(place[v], t)
        return t, clean[out]
    kinds = {graph.values[v].dtype for v in ins}
    narrow = {k for k in kinds if k not in ("float32", "bool")}  # integers, fp16, ...
    ints = {k for k in narrow if not k.startswith(("float", "bfloat"))}
    if narrow and (len(kinds) > 1) and nd["op"] != "Pow":
        raise CompileError(f"{what}: operands of different element types "
                           f"({', '.join(sorted(kinds))}) are not lowered yet")
    if nd["op"] == "Pow" and ints:  # an integer exponent (a float base): to fp32 first
        e = ins[1]
        pe = place[e]
        if not dtype_info(place[ins[0]].dtype).is_float:
            raise CompileError(f"{what}: an integer base is not lowered yet")
        name = f"__{e}@fp32"
        cv, a = alloc.alloc("fp32", pe.shape, 4, avoid=frozenset(pe.slices))
        t0 = lower.elementwise(sch, ["cvt"], pe, None, None, cv, max(start, ready_of(e), a),
                               what + " exponent to fp32")
        place[name] = cv
        graph.values[name] = TensorType("float32", tuple(graph.values[e].shape))
        clean[name] = True
        part = dict(nd, inputs=[ins[0], name])
        t, c = lower_elementwise(graph, sch, alloc, part, place, new, max(start, t0), what,
                                 clean, spread, ready_of, spread_scalar)
        alloc.release(cv, t)
        return t, c
    narrow_out, post = None, None
    if narrow and graph.values[out].dtype == "bool":  # 0/1 in the operands' type, then fp32
        post = (["cvt"], None)
    elif nd["op"] in ("Add", "Sub", "Mul") and graph.values[out].dtype in UNSIGNED_MASK:
        # computed in the wider signed type the machine holds it in, then wrapped to its own
        post = (["and"], UNSIGNED_MASK[graph.values[out].dtype])
    if post is not None:
        kind = place[next((v for v in ins if not graph.is_const(v)), ins[0])].dtype
        holder: list[Placement] = []

        def narrow_out(value, not_before=0, avoid=frozenset()):
            p, a = alloc.alloc(kind, tuple(graph.values[value].shape),
                               dtype_info(kind).nbytes, avoid=avoid)
            holder.append(p)
            return p, max(a, not_before)

    expanded: list[Placement] = []
    t, c = _elementwise(graph, sch, alloc, nd, place, narrow_out or new, start, what, clean,
                        spread, ready_of, spread_scalar, expanded)
    for p in expanded:
        alloc.release(p, t)
    if post is not None:
        z, a = new(out, t, avoid=frozenset(holder[0].slices))
        t = lower.elementwise(sch, post[0], holder[0], None, post[1], z, max(t, a), what)
        alloc.release(holder[0], t)
        c = True
    elif ints:
        c = True  # integer ops give no inf or NaN
    full = tuple(graph.values[out].shape)
    data = [v for v in nd["inputs"] if v and not (graph.is_const(v)
                                                  and graph.values[v].size == 1)]
    if data and all(v in spread and tuple(graph.values[v].shape) == full for v in data):
        spread.add(out)
    return t, c


def _elementwise(graph, sch, alloc, nd, place, new, start, what, clean, spread, ready_of,
                 spread_scalar, expanded: list) -> tuple[int, bool]:
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
        return np.asarray(arr).reshape(-1)[0].item() if arr is not None and arr.size == 1 \
            else None

    def role(v):
        ty = graph.values[v]
        if tuple(ty.shape) == full:
            return "full"
        if scalar(v) is not None:
            return "imm"
        r, c = rows_cols(tuple(ty.shape))
        if r == 1 and c == full[-1] if full else False:
            return "row"
        tail = tuple(ty.shape)
        while tail and tail[0] == 1:
            tail = tail[1:]
        if tail and len(tail) <= len(full) and tuple(full[len(full) - len(tail):]) == tail:
            return "row"  # repeated over leading dims: B's vectors, again for every block
        if v in spread and full and tuple(ty.shape) == full[:-1] + (1,):
            return "col"
        if v in spread and len(ty.shape) == len(full) and _block(tuple(ty.shape), full):
            return "block"
        if ty.size == 1:
            return "scalar"
        vs = tuple(ty.shape)
        if full and full[-1] != 1 and vs and vs[-1] == 1 and len(vs) <= len(full) \
                and tuple(np.broadcast_shapes(vs, full)) == full and not graph.is_const(v):
            return "lanes"  # a value per row, broadcast along the lanes too
        return "other"

    ra, rb = role(a), role(b)
    alus = None  # the ALU chain, when not [alu]
    vpr_full = max(1, -(-full[-1] // sch.arch.lanes)) if full else 1
    lane_reads = {}  # operand -> output vector -> its vector (one per row, spread)
    for v, r in ((a, ra), (b, rb)):
        if r != "lanes":
            continue
        vs = tuple(graph.values[v].shape)
        if v not in spread:
            if dtype_info(place[v].dtype).is_float and not clean.get(v, False):
                raise CompileError(f"{what}: the lanes past the last column of {v!r} may hold "
                                   "inf or NaN; masking them is not lowered yet")
            sv = spread_scalar(v)  # every lane of one vector per row (MXM, or SXM for ints)
            start = max(start, ready_of(sv))
            graph.values[sv] = graph.values[v]
            spread.add(sv)
            clean[sv] = True
            if v == a:
                a = sv
            else:
                b = sv
            v = sv
        lane_reads[v] = reader(vs, full, vpr_full, True)
    # a constant broadcast in a way the VXM's reads do not do (an outer product of a column
    # and a row, say): store it at the output's shape
    for v, r in ((a, ra), (b, rb)):
        if r == "other" and graph.is_const(v) and graph.const_array(v) is not None:
            if v == a:
                a, ra = _at_full_shape(graph, clean, v, full), "full"
            else:
                b, rb = _at_full_shape(graph, clean, v, full), "full"
    # neither operand of the output's shape (a column against a row): a constant one is
    if ra != "full" and rb != "full":
        for v, r in ((b, rb), (a, ra)):
            if r not in ("imm", "scalar") and graph.is_const(v) \
                    and graph.const_array(v) is not None:
                if v == a:
                    a, ra = _at_full_shape(graph, clean, v, full), "full"
                else:
                    b, rb = _at_full_shape(graph, clean, v, full), "full"
                break
    # a computed operand broadcast over middle dims (a [B, 1, 1, S] mask against [B, H, S, S]
    # scores): its rows copied out to the output's shape first
    for v, r in ((a, ra), (b, rb)):
        vs = tuple(graph.values[v].shape)
        if (r == "other" or r == "row" and "full" not in (ra, rb)) and not graph.is_const(v) \
                and vs and full and vs[-1] == full[-1] and len(vs) <= len(full):
            idx = row_index(vs).reshape((1,) * (len(full) - len(vs)) + vs[:-1])
            rows = np.broadcast_to(idx, full[:-1]).reshape(-1)
            pv = place[v]
            ex, ae = alloc.alloc(pv.dtype, full, len(pv.slices), avoid=frozenset(pv.slices))
            t_ex = copy_rows(sch, pv, ex, rows, max(start, ready_of(v), ae), what + " broadcast")
            name = f"__expanded_{v}_{len(expanded)}"
            place[name] = ex
            graph.values[name] = TensorType(graph.values[v].dtype, full)
            clean[name] = clean.get(v, False)
            expanded.append(ex)
            start = max(start, t_ex)
            if v == a:
                a, ra = name, "full"
            else:
                b, rb = name, "full"
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
        elif alu == "sub" and ra in ("row", "col", "block", "lanes"):  # y - x = (-x) + y
            a, b, ra, rb, alus = b, a, rb, ra, ["neg", "add"]
    if ra != "full" or rb == "other":
        raise CompileError(f"{what}: this broadcast ({list(graph.values[a].shape)} with "
                           f"{list(graph.values[b].shape)}) is not lowered yet")
    alus = alus or [alu]
    z, nb = new(out, start)
    ca = clean.get(a, False)
    if a == b:  # x op x: one read, the value goes to both ALU inputs
        return (lower.elementwise(sch, [alu], place[a], None, None, z, max(start, nb), what,
                                  y_is_x=True), ca and lower.finite_at_zero([alu], 0.0))
    if rb in ("full", "row", "col", "block", "lanes"):
        pb, t, cp = apart(sch, alloc, place[b], place[a], max(start, ready_of(b)), what)
        y_of = lane_reads.get(b)
        if rb == "block":  # one value per block of f rows of the output
            f = _block(tuple(graph.values[b].shape), full)
            y_of = lambda v, f=f, vpr=z.vpr: (v // vpr) // f  # noqa: E731
        out_t = lower.elementwise(sch, alus, place[a], pb, None, z, max(start, nb, t), what,
                                  y_mode="col" if rb == "col" else "row", y_of=y_of)
        if cp is not None:
            alloc.release(cp, out_t)
        return out_t, ca and clean.get(b, False) and lower.finite_at_zero(alus, 0.0)
    if rb == "imm":
        return (lower.elementwise(sch, [alu], place[a], None, scalar(b), z, max(start, nb), what),
                ca and lower.finite_at_zero([alu], scalar(b)))
    return (lower.elementwise(sch, [alu], place[a], place[b], None, z, max(start, nb), what,
                              y_mode="col" if rb == "col" else "row"),
            ca and clean.get(b, False) and lower.finite_at_zero([alu], 0.0))


COMMUTATIVE = lower.COMMUTATIVE


def _block(shape: tuple, full: tuple) -> int:
    """Rows of `full` per value when `shape` is full[:k] followed by ones (k < rank - 1): a
    per-row value over its trailing dims, e.g. [2, 1, 1, 1] against [2, 3, 4, 5] (12); else
    0."""
    k = len(shape)
    while k and shape[k - 1] == 1:
        k -= 1
    if k >= len(full) - 1 or shape[:k] != full[:k]:
        return 0
    return int(np.prod(full[k:-1], dtype=np.int64))
COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}


def row_absmax(sch, alloc, x: Placement, ready: int, what: str, floor: float | None = None,
               signed: bool = False) -> tuple[Placement, int]:
    """max |x| of every row, in every lane of one vector per row: the row's vectors folded
    by VXM chains |v| then max with the running result (a few folds side by side, joined
    pairwise, when the row has many vectors), then lanes_max. With `floor`, the result is
    max(max |x|, floor): a link of the first |v| chain. With `signed` (rows of more than one
    vector, a floor), max x instead of max |x|. Row blocks of x that its producer recorded
    done one by one (alloc.derive(x, ("row_ready",))) are folded each from its own cycle, not
    all from `ready`."""
    arch = sch.arch
    g = len(x.slices)
    shape = (x.rows, arch.lanes)
    vpr = x.vpr
    if signed and (floor is None or vpr == 1):
        raise CompileError(f"{what}: a signed row max needs a floor and a row of vectors")
    if 1 < vpr and x.rows == 1 and not signed:  # latency-bound: |x| in one pass, a max tree
        a_x, a = alloc.alloc(x.dtype, x.shape, g, avoid=frozenset(x.slices))
        t = lower.elementwise(sch, ["abs"] if floor is None else ["abs", "max"], x, None,
                              floor, a_x, max(ready, a), what + " row max")
        cols = [(Placement(a_x.dtype, shape, 1, arch.lanes, 1, a_x.slices, a_x.addr + c), t)
                for c in range(vpr)]
        m, t = _max_tree(sch, alloc, cols, shape, what + " row max", keep=[p for p, _ in cols])
        alloc.release(a_x, t)
        return lanes_max(sch, alloc, m, shape, t, what + " row max")
    folds = max(1, min(ROW_FOLDS, vpr // 2))
    # x's rows by the blocks its producer finished one by one (a norm in row blocks), each
    # folded as soon as it is there; else all rows from `ready`
    rr = alloc.derived_value(x, ("row_ready",))
    # or its column tiles by the cycles they are there (a MatMul's results), each tile read
    # from one of the copies of x its producer wrote, in turn (a slice reads a vector a cycle)
    cr = None if rr else alloc.derived_value(x, ("col_ready",))
    srcs = [x] + list(alloc.derived_value(x, ("copies",)) or ()) if cr else [x]
    spans = [(range(r0, r0 + n), t_r) for r0, n, t_r in rr] if rr else \
        [(None, min(cr) if cr else ready)]
    parts: list[tuple[Placement, int]] = []
    # the folds' space free from when the first rows are there
    now, alloc.now = alloc.now, min(t for _, t in spans)
    for f in range(folds):
        m, ts = None, [t for _, t in spans]
        for c in range(f, vpr, folds):
            src = srcs[(c + 1) % len(srcs)]
            nxt, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(
                s for p in srcs for s in p.slices) | frozenset(m.slices if m is not None else ()))
            if cr:
                a = max(a, cr[c])
            ops = ["max"] if signed else \
                ["abs"] if m is None and floor is None else ["abs", "max"]
            ts = [lower.elementwise(sch, ops, src, m, floor if m is None else None, nxt,
                                    max(t, a), what + " row max",
                                    x_of=lambda v, c=c: v * vpr + c,
                                    y_mode="row" if m is None else "col", vectors=vs)
                  for (vs, _), t in zip(spans, ts, strict=True)]
            if m is not None:
                alloc.release(m, max(ts))
            m = nxt
        parts.append((m, max(ts)))
    alloc.now = now
    m, t = _max_tree(sch, alloc, parts, shape, what + " row max")  # join the folds
    return lanes_max(sch, alloc, m, shape, t, what + " row max")


# gelu(v) <= v for v >= 0, and gelu(v) >= -0.1701 for v < 0 (the exact and the tanh GELU
# have their minima -0.16997 and -0.17004 near v = -0.75)
GELU_FLOOR = 0.171


def gelu_absmax_bound(graph, sch, alloc, place, x: Placement, ready: int, what: str
                      ) -> tuple[Placement, int]:
    """An upper bound of max |gelu(x)| of every row of x (pad lanes zero), found from x while
    the Gelu's own passes run: max(max x, GELU_FLOOR), in every lane of one vector per row.
    Quantizing by it instead of the exact absmax costs log2(max x / gelu(max x)) bits of the
    row's step: 0.25 at max x = 1, under 0.01 from max x = 3. One row: a max tree over the
    row's vectors and a constant vector of the floor, then lanes_max; more rows: folds."""
    arch = sch.arch
    shape = (x.rows, arch.lanes)
    if x.rows > 1 and x.vpr > 1:
        return row_absmax(sch, alloc, x, ready, what, floor=GELU_FLOOR, signed=True)
    name = f"__floor_{GELU_FLOOR!r}_{x.dtype}_{x.rows}"
    if name not in graph.consts:
        graph.add_const(name, np.full(shape, GELU_FLOOR, numpy_dtype(x.dtype)), kind="const")
    low = place[name]
    if x.rows == 1:  # the row's vectors, every other one from a copy of x if it has one (a
        # tree's pair in one slice would wait for an operand copy)
        srcs = [x] + list(alloc.derived_value(x, ("copies",)) or ())
        items = [(Placement(x.dtype, shape, 1, arch.lanes, 1, src.slices, src.addr + c), ready)
                 for c in range(x.vpr) for src in [srcs[c % len(srcs)]]]
    else:  # rows of one vector each: x itself
        items = [(x, ready)]
    m, t = _max_tree(sch, alloc, items + [(low, 0)], shape, what + " row max",
                     keep=[p for p, _ in items] + [low])
    return lanes_max(sch, alloc, m, shape, t, what + " row max")


def row_extremes(graph, sch, alloc, place, x: Placement, ready: int, what: str
                 ) -> tuple[Placement, int]:
    """max x and -min x of every row of x (pad lanes zero), in every lane: a [2 rows, 320]
    placement, the maxima of the rows first, then the negated minima. One pass writes x and
    -x with the pad lanes set to -inf into column blocks of 2 rows each (vector
    c * 2R + s * R + r holds column c of row r, negated for s = 1); a max tree folds the
    blocks and lanes_max the lanes."""
    arch = sch.arch
    R, vpr, g = x.rows, x.vpr, len(x.slices)
    # the mask in slices apart from x's (both are read in one cycle), u apart from both
    mp, t_mp, cp = apart(sch, alloc, place[_pad_mask(graph, arch, x, False)], x, ready,
                         what + " row max")
    u, a = alloc.alloc(x.dtype, (2 * R * vpr, arch.lanes), g,
                       avoid=frozenset(x.slices) | frozenset(mp.slices))
    t = t_mp
    for s_, ops in ((0, ["add"]), (1, ["neg", "add"])):
        vs = [c * 2 * R + s_ * R + r for c in range(vpr) for r in range(R)]
        t = max(t, lower.elementwise(
            sch, ops, x, mp, None, u, max(t_mp, a), what + " row max", vectors=vs,
            x_of=lambda v, s_=s_: (v % (2 * R) - s_ * R) * vpr + v // (2 * R),
            y_of=lambda v: v // (2 * R)))
    if cp is not None:
        alloc.release(cp, t)
    cols = [(lower.row_block(Placement(u.dtype, (2 * R * vpr, arch.lanes), 2 * R * vpr,
                                       arch.lanes, 1, u.slices, u.addr), c * 2 * R, 2 * R), t)
            for c in range(vpr)]
    shape = (2 * R, arch.lanes)
    if vpr > 1:
        m, t = _max_tree(sch, alloc, cols, shape, what + " row max", keep=[p for p, _ in cols])
        alloc.release(u, t)
    else:  # one column block: u itself
        m = cols[0][0]
    return lanes_max(sch, alloc, m, shape, t, what + " row max")


def _sum_tree(sch, alloc, items: list[tuple[Placement, int]], shape, what: str):
    """_max_tree with an add: the elementwise sum of the placements in items."""
    return _max_tree(sch, alloc, items, shape, what, alu="add")


def _max_tree(sch, alloc, items: list[tuple[Placement, int]], shape, what: str,
              only: frozenset[int] | None = None, keep=(), alu: str = "max",
              ) -> tuple[Placement, int]:
    """The elementwise max (or `alu`) of the placements in items ((placement, ready cycle)
    each), pairwise on the VXM into temporaries (in `only` when there is room); every input but
    those in `keep` is freed after its last read. Returns the result and its ready cycle."""
    while len(items) > 1:
        joined = []
        pairs = len(items) // 2
        for k, ((p, tp), (q, tq)) in enumerate(zip(items[0::2], items[1::2], strict=False)):
            # apart from its inputs, and from what it meets at the next level (the output
            # before it, or the odd item carried over): a slice reads one vector a cycle,
            # else binary copies one of them first
            mate = joined[k - 1][0].slices if k % 2 else \
                items[-1][0].slices if k == pairs - 1 and len(items) % 2 else ()
            out, a = _temp_in(alloc, p.dtype, shape, len(p.slices),
                              frozenset(p.slices) | frozenset(q.slices) | frozenset(mate),
                              only)
            tt = binary(sch, alloc, [alu], p, q, out, max(tp, tq, a), what)
            for done in (p, q):
                if all(done is not k for k in keep):
                    alloc.release(done, tt)
            joined.append((out, tt))
        if len(items) % 2:
            joined.append(items[-1])
        items = joined
    return items[0]


ROW_FOLDS = 4  # a row of many vectors is folded by up to this many chains side by side
# a quantized activation of at least ACT_COPY_ROWS rows is written ACT_COPIES more times
# (measured on BERT-base seq 128: one copy 1,593,656 -> 1,504,587 cycles, two 1,612,373;
# written from the cvt's own streams: one 1,243,904 -> 1,216,143, two 1,264,907)
ACT_COPIES = 1
ACT_COPY_ROWS = 32


# a row's absmax is at least this before 1/absmax scales it (an all-zero row stays finite)
ABSMAX_FLOOR = 1e-30
# quantized MXM types: the largest magnitude a scaled value takes (int8: 127, symmetric;
# fp8 e4m3fn: its largest finite value)
QMAX = {"int8": 127.0, "fp8_e4m3": 448.0}


def quantize_weights(w: np.ndarray | None, qdtype: str = "int8"
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per output channel (column): scale = max |w| / QMAX; w_q = w / scale rounded to qdtype
    (int8: round-half-even; fp8: round-to-nearest-even to e4m3fn)."""
    if w is None:
        return None, None
    w = np.asarray(w, np.float32)
    qmax = np.float32(QMAX[qdtype])
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / qmax, np.float32(1)).astype(np.float32)
    v = np.clip(w / scale, -qmax, qmax)
    if qdtype == "int8":
        return np.rint(v).astype(np.int8), scale
    import ml_dtypes

    return v.astype(ml_dtypes.float8_e4m3fn), scale


# rows per job of the pass after a quantized matmul: short jobs fit between the MXM's writes
# of later tiles to the same slices (BERT-base int8 at seq 64..192: 16 rows 2.8% fewer cycles
# in all than whole tiles, 8 rows 0.05% fewer again for twice the jobs)
DQ_ROWS = 16
# a quantized matmul's result scales S, accumulators and rescaled results in this many
# placements, column tiles in turn, from this many rows on (fewer rows are latency-bound:
# GPT-2-small's one-token step took 71,380 cycles with two, against 68,026 with one)
S_PARTS = 2
S_PARTS_ROWS = 32


def lower_matmul_quant(sch, alloc, x: Placement, wq: Placement, w_scale: Placement,
                       y: Placement, ready: int, what: str, zero, x_clean: bool = False,
                       tiles: list | None = None, y_parts: tuple[Placement, ...] = ()) -> int:
    """y = x @ W on the MXM in a quantized type q (wq's: int8 or fp8 e4m3): W per output
    channel (w_q, scale from quantize_weights), x per row (token) with its own scale
    max|x_r| / QMAX found on chip:
        r = QMAX / max(m, tiny); x_q = q(x * r) (rounded to nearest); acc = x_q @ w_q (int8:
        int32, exact; fp8: exact products summed in fp32); y = float(acc) * S with
        S = (m / QMAX) * w_scale, formed while the MXM works (one pass after it, not two).
    The pass after it follows the MXM tile by tile: each 320-column tile of y is made as soon
    as its accumulators are written. `tiles`, if given, gets (vectors of y, cycle from which
    they are in SRAM) for every such part. `y_parts` (from tile_parts): y's column tiles are
    written there instead (y gives the shape and type), one part after another.
    """
    arch = sch.arch
    qdtype = wq.dtype
    qmax = QMAX[qdtype]
    g = len(x.slices)
    shape = (x.rows, arch.lanes)
    # x's quantized form serves every matmul that reads x (Q, K and V of one input): computed
    # once, freed with x
    key = ("quantized", qdtype, x.shape, x.dtype)
    got = alloc.derived_value(x, key)
    if got is None:
        found = alloc.derived_value(x, ("absmax",))  # from the norm that made x, or a Gelu
        if found is not None:
            m, t, floored = found
        else:  # the floor rides the |x| pass: max(max |x|, floor), as a pass after gives
            # (for every row count: BERT-base int8 at seq 64, 96, 128, 160, 192 -0.85% in all;
            # it was kept to 16 rows or fewer)
            floored = True
            m, t = row_absmax(sch, alloc, x, ready, what,
                              floor=ABSMAX_FLOOR if floored else None)
        t = max(t, ready)
        if floored:
            m2 = m
        else:
            m2, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(m.slices))
            t = lower.elementwise(sch, ["max"], m, None, ABSMAX_FLOOR, m2, max(t, a),
                                  what + " scale")
            if found is None:
                alloc.release(m, t)
        r, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(m2.slices))
        t_m2 = t
        t = lower.elementwise(sch, ["recip", "mul"], m2, None, qmax, r, max(t, a),
                              what + " scale")
        # x's scale, for the results: off the path to the MXM
        sx, a = alloc.alloc(x.dtype, shape, g, avoid=frozenset(m2.slices))
        t_sx = lower.elementwise(sch, ["mul"], m2, None, 1.0 / qmax, sx, max(t_m2, a),
                                 what + " scale")
        if m2 is not m or found is None:
            alloc.release(m2, max(t, t_sx))
        # x_q = q(x * r): one chain, its last link the conversion
        rp, t_r, cp = apart(sch, alloc, r, x, t, what + " quantize")
        busy = frozenset(x.slices) | frozenset(rp.slices)
        # many rows at the MXM's full rate (a vector per cycle): copies in other slices, so
        # that several tiles' activations stream at once (a slice reads one vector a cycle)
        n_q = 1 + (ACT_COPIES if x.rows >= ACT_COPY_ROWS and arch.mxm_rate_of(qdtype) >= 1
                   else 0)
        # x_q in K tiles, each in its own slice (and its copies in others): the MXM streams a
        # tile as soon as it is written, while the pass writes the next tile elsewhere (a
        # slice cannot read and write one bank in one cycle); one row: the tiles are one
        # vector each, consecutive in one slice
        parts, t_q, prev = [], [], frozenset()
        one, a1 = alloc.alloc(qdtype, x.shape, 1, avoid=busy) if x.rows == 1 else (None, 0)
        for c in range(x.vpr):
            shp = (x.rows, min(arch.lanes, x.cols - c * arch.lanes))
            p0, a = (Placement(qdtype, shp, 1, shp[1], 1, one.slices, one.addr + c), a1) \
                if one is not None else alloc.try_alloc(qdtype, shp, 1, avoid=busy | prev) \
                or alloc.alloc(qdtype, shp, 1, avoid=busy)
            alts = [p0]
            # on p0's side: written from the same streams as they pass (one row has none)
            for _ in range(n_q - 1 if one is None else 0):
                got = alloc.try_alloc(qdtype, shp, 1, only=side_of(sch, p0),
                                      avoid=busy | frozenset(s for p in alts for s in p.slices))
                if got is not None:
                    alts.append(got[0])
                    a = max(a, got[1])
            t_q.append(lower.elementwise(sch, ["mul", "cvt"], x, rp, None, p0, max(t, t_r, a),
                                         what + " quantize", y_mode="col",
                                         z_also=tuple(alts[1:]),
                                         x_of=lambda v, c=c: v * x.vpr + c))
            parts.append(tuple(alts))
            prev = frozenset(s for p in alts for s in p.slices)
        t_q = tuple(t_q)
        qs = [one] if one is not None else [p for alts in parts for p in alts]
        t = max(t_q)
        if cp is not None:
            alloc.release(cp, t)
        alloc.release(r, t)
        got = (tuple(parts), sx, t_q, t_sx)
        alloc.derive(x, key, qs + [sx], got)
    parts, sx, t_q, t_sx = got
    t_q = tuple(max(tc, ready) for tc in t_q)
    acc_dtype = "int32" if qdtype == "int8" else "fp32"
    # the scale of every result, x's row scale times W's column scale, while the MXM works
    sxp, t_sx, cp = apart(sch, alloc, sx, w_scale, max(t_sx, ready), what + " scale")
    vpr = y.vpr
    avoid = frozenset(sxp.slices) | frozenset(w_scale.slices) | frozenset(y.slices)
    # many rows: S in parts, column tiles in turn (tile_parts), and apart from x_q, which
    # the MXM streams while S is written
    Ss, a2 = tile_parts(alloc, y.dtype, y.rows, vpr, arch.lanes, g, avoid | frozenset(
        s for alts in parts for p in alts for s in p.slices)) if y.rows >= S_PARTS_ROWS \
        else ([], 0)
    if not Ss:
        S, a2 = alloc.alloc(y.dtype, y.shape, g, avoid=avoid)
        Ss = [S]
    k = len(Ss)
    # column tile by column tile, in the order the MXM makes them
    t_st = []
    for nt in range(vpr):
        sp, c = tile_part(Ss, nt, Ss[0])
        t_st.append(lower.elementwise(sch, ["mul"], w_scale, sxp, None, sp, max(t_sx, a2),
                                      what + " scale", x_of=lambda v, nt=nt: nt,
                                      y_mode="col", vectors=range(c, sp.nvec, sp.vpr)))
    t_s = max(t_st)
    if cp is not None:
        alloc.release(cp, t_s)
    s_slices = frozenset(s for p in Ss for s in p.slices)
    # apart from y, so that y can be written tile by tile as acc is read (else one pass late),
    # and from S, read with it
    # acc in parts too, as S: the MXM writes later tiles while a tile's dequantize reads it
    accs, a = tile_parts(alloc, acc_dtype, y.rows, vpr, arch.lanes, 4,
                          frozenset(y.slices) | s_slices) if k > 1 else ([], 0)
    if accs:  # the matmul writes its tiles to the parts
        acc = parts_whole(accs, acc_dtype, y.shape)
    else:
        acc, a = alloc.try_alloc(acc_dtype, y.shape, 4, avoid=frozenset(y.slices) | s_slices) \
            or alloc.alloc(acc_dtype, y.shape, 4, avoid=s_slices)
    # x's pad lanes zero: so are x_q's, and int8 weight rows left from earlier tiles add 0, so
    # a short last K tile loads no zero rows (GPT-2-small one token 117,580 -> 113,590 cycles;
    # BERT-base seq 128 1,048,067 -> 1,041,338, where a zero-row load of the FFN's third K tile
    # waited 962 cycles for the zero vector's slice; outputs bit-identical)
    got_tiles: list = []
    t = lower.matmul(sch, parts[0][0], wq, acc, max(min(t_q), a), what, zero=zero(qdtype),
                     x_parts=parts, pad_zero=x_clean and qdtype == "int8",
                     on_tile=lambda r0, n, nt, tt: got_tiles.append((r0, n, nt, tt)),
                     x_ready=t_q, y_parts=tuple(accs))
    # y = float(acc) * S: one chain (int32 accumulators: a cvt link first)
    ops = ["cvt", "mul"] if acc_dtype != y.dtype else ["mul"]
    if k == 1 and not y_parts and set(y.slices) & (set(acc.slices) | set(Ss[0].slices)):
        t = binary(sch, alloc, ops, acc, Ss[0], y, max(t, t_s), what + " dequantize")
        if tiles is not None:
            tiles.append((range(y.nvec), t))
    else:  # tile by tile, each as soon as the MXM has written it
        t = t_s
        for b0, b1, nt, tt in ((b0, min(r0 + n, b0 + DQ_ROWS), nt, tt)
                               for r0, n, nt, tt in got_tiles
                               for b0 in range(r0, r0 + n, DQ_ROWS)):
            vs = range(b0 * vpr + nt, b1 * vpr + nt, vpr)
            zp, zc = tile_part(y_parts, nt, y)
            ap, ac = tile_part(accs, nt, acc)
            sp, sc = tile_part(Ss, nt, Ss[0])
            td = lower.elementwise(sch, ops, ap, sp, None, zp, max(tt, t_st[nt]),
                                   what + " dequantize",
                                   vectors=range(b0 * zp.vpr + zc, b1 * zp.vpr + zc, zp.vpr),
                                   x_of=remap(zp, zc, ap, ac), y_of=remap(zp, zc, sp, sc))
            if tiles is not None:
                tiles.append((vs, td))
            t = max(t, td)
    for p in accs or [acc]:
        alloc.release(p, t)
    for p in Ss:
        alloc.release(p, t)
    return t


def tile_part(parts, nt: int, whole: Placement) -> tuple[Placement, int]:
    """The placement and column of column tile nt: in parts from tile_parts, or in whole."""
    if len(parts) > 1:
        return parts[nt % len(parts)], nt // len(parts)
    return whole, nt


def remap(z: Placement, z_col: int, p: Placement, col: int):
    """z's vector (of column z_col) -> p's vector of the same row in column `col` (None
    where that is the same index)."""
    if p.vpr == z.vpr and col == z_col:
        return None
    return lambda u: (u // z.vpr) * p.vpr + col


def parts_whole(parts: list[Placement], dtype: str, shape: tuple[int, ...]) -> Placement:
    """A placement of the whole value whose column tiles are in `parts` (tile_parts): for
    its shape, type and row count only; its vectors are read and written through tile_part."""
    rows, cols = rows_cols(tuple(shape))
    return Placement(dtype, tuple(shape), rows, cols, sum(p.vpr for p in parts),
                     parts[0].slices, parts[0].addr)


def tile_parts(alloc, dtype: str, rows: int, vpr: int, lanes: int, nbytes: int,
                avoid: frozenset[int]) -> tuple[list[Placement], int]:
    """S_PARTS placements of `rows` rows for vpr column tiles, in different slices: tile nt
    is column nt // S_PARTS of part nt % S_PARTS. A tile of one part can then be read while
    later tiles are written to another (a slice reads and writes one bank in a cycle only
    when they are different banks). ([], 0) where they do not fit apart from `avoid`."""
    got_parts: list[Placement] = []
    ready = 0
    for i in range(min(S_PARTS, vpr)):
        got = alloc.try_alloc(dtype, (rows, len(range(i, vpr, S_PARTS)) * lanes), nbytes,
                              avoid=avoid | frozenset(s for p in got_parts for s in p.slices))
        if got is None:
            for p in got_parts:
                alloc.release(p, ready)
            return [], 0
        got_parts.append(got[0])
        ready = max(ready, got[1])
    return got_parts, ready


def copy_rows(sch, x: Placement, z: Placement, rows: np.ndarray, ready: int, what: str) -> int:
    """z's row i = x's row rows[i] (last dimension unchanged), one VXM copy pass."""
    vpr = x.vpr
    return lower.elementwise(sch, ["copy"], x, None, None, z, ready, what,
                             x_of=lambda v: int(rows[v // vpr]) * vpr + v % vpr)


def _at_full_shape(graph, clean, v: str, full: tuple) -> str:
    """A constant stored broadcast to the output's shape (once per shape): its name."""
    name = f"{v}@{'x'.join(map(str, full))}"
    if name not in graph.consts:
        arr = np.broadcast_to(graph.const_array(v), full)
        graph.add_const(name, np.ascontiguousarray(arr), kind="const")
    clean[name] = True
    return name


def row_index(shape: tuple[int, ...]) -> np.ndarray:
    """The row number of every element row of a tensor viewed as (rows, last dim)."""
    lead = shape[:-1]
    return np.arange(int(np.prod(lead, dtype=np.int64))).reshape(lead) if lead else np.zeros(())


def reader(shape: tuple, full: tuple, vpr: int, lane_spread: bool):
    """Output vector -> the vector of an operand of `shape` that holds its values: None when
    the operand has the output's shape; its rows read again for an operand broadcast over
    leading dims; with `lane_spread` (one vector per row, the row's value in every lane) the
    row's one vector for every vector of the output row."""
    if shape == full:
        return None
    padded = (1,) * (len(full) - len(shape)) + tuple(shape)
    rows = np.broadcast_to(row_index(padded), full[:-1]).reshape(-1)
    if lane_spread:
        return lambda v: int(rows[v // vpr])
    return lambda v: int(rows[v // vpr]) * vpr + v % vpr


def lane_slice(sch, alloc, x: Placement, z: Placement, a: int, ready: int, what: str,
               rows: list[tuple[int, int]] | None = None) -> int:
    """z[zr, :cols] = x[xr, a:a + cols] for every pair (xr, zr) of `rows` (default: row r of
    both, for every row of z): lanes move south by a on the SXM (sxm.shift fills with zeros);
    an output vector that straddles two input vectors is the sum of both shifted parts."""
    L = sch.arch.lanes
    r0, v0 = a % L, a // L
    rows = rows if rows is not None else [(r, r) for r in range(z.rows)]
    xv = [xr * x.vpr + v0 + c for xr, _ in rows for c in range(z.vpr)]
    zv = [zr * z.vpr + c for _, zr in rows for c in range(z.vpr)]
    if r0 == 0:
        return lower.sxm_unary(sch, "sxm.shift", x, z, xv, zv, dict(shift=0), ready, what)
    # does any output vector take lanes from the next input vector too?
    need = [c for c in range(z.vpr) if min(L, z.cols - c * L) > L - r0]
    if not need:
        return lower.sxm_unary(sch, "sxm.shift", x, z, xv, zv, dict(shift=-r0), ready, what)
    p1, a1 = alloc.alloc(x.dtype, z.shape, len(x.slices))
    t = lower.sxm_unary(sch, "sxm.shift", x, p1, xv, zv, dict(shift=-r0), max(ready, a1), what)
    p2, a2 = alloc.alloc(x.dtype, z.shape, len(x.slices), avoid=frozenset(p1.slices))
    has = [i for i, v in enumerate(zv) if v % z.vpr in need]
    none = [i for i, v in enumerate(zv) if v % z.vpr not in need]
    t2 = lower.sxm_unary(sch, "sxm.shift", x, p2, [xv[i] + 1 for i in has],
                         [zv[i] for i in has], dict(shift=L - r0), max(ready, a2), what)
    if none:  # a shift by all the lanes gives zeros
        t2 = max(t2, lower.sxm_unary(sch, "sxm.shift", x, p2, [xv[i] for i in none],
                                     [zv[i] for i in none], dict(shift=L), max(ready, a2),
                                     what))
    t = lower.elementwise(sch, ["add"], p1, p2, None, z, max(t, t2), what,
                          vectors=zv)
    alloc.release(p1, t)
    alloc.release(p2, t)
    return t


def lane_concat(sch, alloc, pieces, z: Placement, ready: int, what: str) -> int:
    """z[zr, off:off + cols] = x[xr, :cols] for every piece (x, [(xr, zr), ...], off): the
    pieces' lanes past their last column are zeroed (sxm.distribute with -1 in the map), then
    every vector moves north to its offset (sxm.shift, zero-filled). A vector of z that one
    part fills is shifted straight into z; the parts of a vector that several fill are shifted
    into temporaries side by side and added on the VXM in a tree, so the moves and sums of
    different parts overlap instead of queueing behind each other. The pieces must cover
    every column of z."""
    L = sch.arch.lanes
    t = ready
    masked: dict[tuple, Placement] = {}
    temps = []
    moves = []  # (source, its vectors, z's vectors, shift)
    for x, rows, off in pieces:
        src = x
        if x.cols % L:
            key = (x.slices, x.addr)
            if key not in masked:
                xm, a = alloc.alloc(x.dtype, x.shape, len(x.slices))
                keep = np.arange(L)
                keep[x.cols % L:] = -1
                last = [v for v in range(x.nvec) if v % x.vpr == x.vpr - 1]
                t = lower.sxm_unary(sch, "sxm.distribute", x, xm, last, last,
                                    dict(imm=sch.map_index(keep)), max(t, a), what)
                rest = [v for v in range(x.nvec) if v % x.vpr != x.vpr - 1]
                if rest:
                    t = lower.sxm_unary(sch, "sxm.shift", x, xm, rest, rest, dict(shift=0),
                                        max(t, a), what)
                masked[key] = xm
                temps.append(xm)
            src = masked[key]
        for v in range(x.vpr):
            nv = min(L, x.cols - v * L)
            d0 = off + v * L
            c, sh = d0 // L, d0 % L
            for dc, shift in [(c, sh)] + ([(c + 1, sh - L)] if sh and sh + nv > L else []):
                moves.append((src, [xr * x.vpr + v for xr, _ in rows],
                              [zr * z.vpr + dc for _, zr in rows], shift))
    count: dict[int, int] = {}
    for _, _, zv, _ in moves:
        for zz in zv:
            count[zz] = count.get(zz, 0) + 1
    if len(count) != z.nvec:
        raise CompileError(f"internal: {what}: the pieces leave vectors of the result unset")
    done = t
    parts: dict[int, list[tuple[Placement, int, int]]] = {}  # z vector -> (place, vector, t)
    uses: dict[Placement, list[int]] = {}  # a staging temporary: [vectors unread, last read]

    def read(p: Placement, n: int, t_read: int) -> None:
        """n vectors of temporary p are read by a sum done at t_read: free it after its last."""
        u = uses[p]
        u[0] -= n
        u[1] = max(u[1], t_read)
        if u[0] == 0:
            alloc.release(p, u[1])
    for src, xv, zv, shift in moves:
        direct = [i for i, zz in enumerate(zv) if count[zz] == 1]
        if direct:
            done = max(done, lower.sxm_unary(sch, "sxm.shift", src, z, [xv[i] for i in direct],
                                             [zv[i] for i in direct], dict(shift=shift), t,
                                             what))
        staged = [i for i, zz in enumerate(zv) if count[zz] > 1]
        if staged:
            tmp, a = _apart_from(alloc, z, len(staged), uses)
            uses[tmp] = [len(staged), 0]
            t1 = lower.sxm_unary(sch, "sxm.shift", src, tmp, [xv[i] for i in staged],
                                 list(range(len(staged))), dict(shift=shift), max(t, a), what)
            for j, i in enumerate(staged):
                parts.setdefault(zv[i], []).append((tmp, j, t1))
    while parts:  # one level of the tree: parts 2k and 2k + 1 of every vector are added
        sums: dict[tuple, list[tuple[int, int, int, int]]] = {}
        nxt: dict[int, list[tuple[Placement, int, int]]] = {}
        for zz, lst in sorted(parts.items()):
            for k in range(0, len(lst) - 1, 2):
                (pa, ia, ta), (pb, ib, tb) = lst[k], lst[k + 1]
                sums.setdefault((pa, pb, len(lst) == 2), []).append((zz, ia, ib, max(ta, tb)))
            if len(lst) % 2:
                nxt.setdefault(zz, []).append(lst[-1])
        for (pa, pb, final), items in sums.items():
            xs = {i: ia for i, (_, ia, _, _) in enumerate(items)}
            ys = {i: ib for i, (_, _, ib, _) in enumerate(items)}
            t0 = max(tt for *_, tt in items)
            # the two in one slice (space ran short, or one temporary): pb read from a copy
            pb_read, t0, cpb = apart(sch, alloc, pb, pa, t0, what)
            if final:
                zs = {zz: i for i, (zz, *_) in enumerate(items)}
                t1 = lower.elementwise(
                    sch, ["add"], pa, pb_read, None, z, t0, what, vectors=sorted(zs),
                    x_of=lambda v, zs=zs, xs=xs: xs[zs[v]], y_of=lambda v, zs=zs, ys=ys: ys[zs[v]])
                done = max(done, t1)
            else:
                acc, a = _apart_from(alloc, z, len(items), uses)
                uses[acc] = [len(items), 0]
                t1 = lower.elementwise(sch, ["add"], pa, pb_read, None, acc, max(t0, a), what,
                                       x_of=xs.__getitem__, y_of=ys.__getitem__)
            if cpb is not None:
                alloc.release(cpb, t1)
            read(pa, len(items), t1)
            read(pb, len(items), t1)
            if final:
                continue
            for i, (zz, *_) in enumerate(items):
                nxt.setdefault(zz, []).append((acc, i, t1))
        parts = {zz: lst for zz, lst in nxt.items() if len(lst) > 1}
        if any(len(lst) == 1 for lst in nxt.values()):
            raise CompileError(f"internal: {what}: a vector's sum lost its last step")
    for tmp in temps:
        alloc.release(tmp, done)
    return done


def _apart_from(alloc, z: Placement, n: int, live: dict) -> tuple[Placement, int]:
    """n vectors of z's type for lane_concat's sums: never in z's slices, and where there is
    room in none of the live temporaries' either (two operands of one sum in one slice would
    need its one read port twice a cycle)."""
    shape, g = (n, alloc.arch.lanes), len(z.slices)
    held = frozenset(s for p, u in live.items() if u[0] > 0 for s in p.slices)
    return alloc.try_alloc(z.dtype, shape, g, avoid=frozenset(z.slices) | held) or \
        alloc.alloc(z.dtype, shape, g, avoid=frozenset(z.slices))


def lower_reshape(sch, alloc, x: Placement, z: Placement, ready: int, what: str,
                  z_row=None, x_row=None) -> int:
    """A reshape that changes the last dimension: split it into rows (C = m * C') or merge
    rows into it (C' = m * C); row-major order is kept, so each is a slice or a concat of
    lanes. `z_row` (split) maps a row of the reshaped tensor to the row of z it is written
    to, `x_row` (merge) a row of the tensor to reshape to the row of x that holds it: a row
    move next to the reshape (the Transpose of attention's head split or merge) done by the
    same SXM moves instead of a copy of its own."""
    C, C2 = x.cols, z.cols
    if C % C2 == 0:
        m = C // C2
        zr = z_row or (lambda i: i)
        t = ready
        for h in range(m):
            t = max(t, lane_slice(sch, alloc, x, z, h * C2, ready, what,
                                  rows=[(r, zr(r * m + h)) for r in range(x.rows)]))
        return t
    if C2 % C == 0:
        m = C2 // C
        xr = x_row or (lambda i: i)
        return lane_concat(sch, alloc, [(x, [(xr(r * m + h), r) for r in range(z.rows)], h * C)
                                        for h in range(m)], z, ready, what)
    raise CompileError(f"{what}: a reshape of the last dimension {C} -> {C2} (neither divides "
                       "the other) is not lowered yet")


def lower_data_movement(graph, sch, alloc, nd, place, new, start, what) -> int:
    """Transpose, Slice, Split and Concat that keep the last axis in place: rows move, lanes do
    not, so each is a copy of whole row vectors."""
    op, ins, outs, attrs = nd["op"], nd["inputs"], nd["outputs"], nd["attrs"]
    xt = graph.values[ins[0]]
    rank = len(xt.shape)
    idx = row_index(tuple(xt.shape))

    def const_ints(v):
        arr = graph.const_array(v) if v and graph.is_const(v) else None
        if v and arr is None:
            raise CompileError(f"{what}: a non-constant {v!r} operand is not lowered yet")
        return None if arr is None else [int(a) for a in np.asarray(arr).reshape(-1)]

    if op == "Transpose":
        perm = list(attrs.get("perm", range(rank - 1, -1, -1)))
        if rank < 1 or perm[-1] != rank - 1:
            raise CompileError(f"{what}: a transpose that moves the last axis is not lowered "
                               "yet")
        z, a = new(outs[0], start)
        return copy_rows(sch, place[ins[0]], z, idx.transpose(perm[:-1]).reshape(-1),
                         max(start, a), what)
    if op == "Slice":
        starts, ends = const_ints(ins[1]), const_ints(ins[2])
        axes = const_ints(ins[3]) if len(ins) > 3 and ins[3] else list(range(len(starts)))
        steps = const_ints(ins[4]) if len(ins) > 4 and ins[4] else [1] * len(starts)
        sl = [slice(None)] * rank
        for s_, e_, ax, st in zip(starts, ends, axes, steps, strict=True):
            ax %= rank
            sl[ax] = slice(s_, e_, st)
        cols = xt.shape[-1]
        first, stop, step = sl[-1].indices(cols)
        if step != 1:  # lanes picked by an SXM permutation (the others go past the end)
            L = sch.arch.lanes
            if cols > L:
                raise CompileError(f"{what}: slicing the last axis of rows longer than {L} "
                                   "with a step is not lowered yet")
            picked = list(range(first, stop, step))
            perm = picked + sorted(set(range(L)) - set(picked))
            rows = [int(r) for r in idx[tuple(sl[:-1])].reshape(-1)]
            z, a = new(outs[0], start)
            return lower.sxm_unary(sch, "sxm.permute", place[ins[0]], z, rows,
                                   list(range(len(rows))),
                                   dict(imm=sch.map_index(np.array(perm, np.int64))),
                                   max(start, a), what)
        if (first, stop) == (0, cols) or stop <= first:
            z, a = new(outs[0], start)
            return copy_rows(sch, place[ins[0]], z, idx[tuple(sl[:-1])].reshape(-1),
                             max(start, a), what)
        rows = [(int(r), k) for k, r in enumerate(idx[tuple(sl[:-1])].reshape(-1))]
        z, a = new(outs[0], start)
        return lane_slice(sch, alloc, place[ins[0]], z, first, max(start, a), what, rows=rows)
    axis = int(attrs.get("axis", 0)) % rank
    if axis == rank - 1 and op == "Concat":
        z, a = new(outs[0], start)
        pieces, off = [], 0
        for v in ins:
            p = place[v]
            pieces.append((p, [(r, r) for r in range(p.rows)], off))
            off += p.cols
        return lane_concat(sch, alloc, pieces, z, max(start, a), what)
    t = start
    if op == "Split" and axis == rank - 1:
        sizes = const_ints(ins[1]) if len(ins) > 1 and ins[1] else \
            [graph.values[o].shape[axis] for o in outs]
        at = 0
        for o, n in zip(outs, sizes, strict=True):
            if o:
                z, a = new(o, start)
                t = max(t, lane_slice(sch, alloc, place[ins[0]], z, at, max(start, a), what))
            at += n
        return t
    if op == "Split":
        sizes = const_ints(ins[1]) if len(ins) > 1 and ins[1] else \
            [graph.values[o].shape[axis] for o in outs]
        at = 0
        for o, n in zip(outs, sizes, strict=True):
            sl = [slice(None)] * (rank - 1)
            sl[axis] = slice(at, at + n)
            at += n
            if not o:
                continue
            z, a = new(o, start)
            t = max(t, copy_rows(sch, place[ins[0]], z, idx[tuple(sl)].reshape(-1),
                                 max(start, a), what))
        return t
    # Concat: every input's rows go to their place in the output
    out_t = graph.values[outs[0]]
    z, a = new(outs[0], start)
    out_idx = row_index(tuple(out_t.shape))
    at = 0
    for v in ins:
        n = graph.values[v].shape[axis]
        sl = [slice(None)] * (rank - 1)
        sl[axis] = slice(at, at + n)
        at += n
        dest = out_idx[tuple(sl)].reshape(-1)  # output rows this input fills, in its row order
        src = place[v]
        for r0 in range(len(dest)):  # one copy per output row: rows of z are not contiguous
            row = Placement(z.dtype, (1, z.cols), 1, z.cols, z.vpr, z.slices,
                            z.addr + int(dest[r0]) * z.vpr)
            t = max(t, copy_rows(sch, src, row, np.array([r0]), max(start, a), what))
    return t


# the largest finite value of each fp8 type: a saturating Cast clamps to it first
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


def lower_cast(graph, sch, alloc, nd, place, new, start, what, clean) -> tuple[int, bool]:
    """Cast between the types the machine holds, by the VXM's conversion (round to nearest
    even; to fp8 with saturate=1, clamped to the type's largest finite value first, NaN kept);
    anything to bool is fp32 1.0 where nonzero (NaN included); the same type is a copy."""
    x_name, out = nd["inputs"][0], nd["outputs"][0]
    src, dst = graph.values[x_name].dtype, graph.values[out].dtype
    x = place[x_name]
    z, a = new(out, start)
    t = max(start, a)
    x_clean = clean.get(x_name, False) or not dtype_info(x.dtype).is_float
    if dst == "bool":
        if x.dtype != "fp32":  # to fp32 first: or gives fp32 0/1
            tmp, a2 = alloc.alloc("fp32", z.shape, 4, avoid=frozenset(x.slices))
            t = lower.elementwise(sch, ["cvt"], x, None, None, tmp, max(t, a2), what)
            t = lower.elementwise(sch, ["or"], tmp, None, 0.0, z, t, what)
            alloc.release(tmp, t)
            return t, True
        ops = ["or"] if src != "bool" else ["copy"]
        return lower.elementwise(sch, ops, x, None, 0.0 if src != "bool" else None, z, t,
                                 what), True
    if not dtype_info(z.dtype).is_float and src != "bool" \
            and dtype_info(x.dtype).is_float and not nd["attrs"].get("integral"):
        # bools and integers convert exactly; so do whole numbers (compile's ArgMax marks
        # its Cast so)
        raise CompileError(f"{what}: a cast to {dst} is not lowered yet (the VXM rounds to "
                           "nearest where Cast truncates)")
    if not dtype_info(z.dtype).is_float and not dtype_info(x.dtype).is_float \
            and dtype_info(z.dtype).nbytes < dtype_info(x.dtype).nbytes:
        raise CompileError(f"{what}: a narrowing cast from {src} to {dst} is not lowered yet "
                           "(the VXM saturates where Cast wraps)")
    if x.dtype == z.dtype:
        return lower.elementwise(sch, ["copy"], x, None, None, z, t, what), x_clean
    cur, temps = x, []
    if z.dtype in FP8_MAX and int(nd["attrs"].get("saturate", 1)) \
            and dtype_info(x.dtype).is_float:
        m = FP8_MAX[z.dtype]
        for alu, bound in (("max", -m), ("min", m)):
            nxt, a2 = alloc.alloc(x.dtype, x.shape, len(x.slices),
                                  avoid=frozenset(cur.slices) | frozenset(z.slices))
            t = lower.elementwise(sch, [alu], cur, None, bound, nxt, max(t, a2),
                                  what + " saturate")
            temps.append(nxt)
            cur = nxt
    t = lower.elementwise(sch, ["cvt"], cur, None, None, z, t, what)
    for p in temps:
        alloc.release(p, t)
    return t, x_clean


def lower_expand(graph, sch, nd, place, new, start, what) -> int:
    """Expand over leading dims (the last dim kept): row copies."""
    x_name, out = nd["inputs"][0], nd["outputs"][0]
    xs, zs = tuple(graph.values[x_name].shape), tuple(graph.values[out].shape)
    if not xs or not zs or xs[-1] != zs[-1]:
        raise CompileError(f"{what}: an Expand of the last dimension is not lowered yet")
    idx = row_index(xs).reshape((1,) * (len(zs) - len(xs)) + xs[:-1])
    rows = np.broadcast_to(idx, zs[:-1]).reshape(-1)
    z, a = new(out, start)
    return copy_rows(sch, place[x_name], z, rows, max(start, a), what)


# the integer type of each element width: bitwise selects see any element as its bits
_BITS = {1: "int8", 2: "int16", 4: "int32"}


def lower_trilu(graph, sch, alloc, nd, place, new, start, what, clean, spread_scalar,
                ready_of) -> tuple[int, bool]:
    """Trilu: y = x AND m bitwise, with m all ones where j - i >= k (upper) or <= k (lower)
    for row i, column j of each matrix, else zero; x's bits are kept exactly (inf and NaN
    included). With a constant k, m is a constant [N, M] of the element width; with k given
    at run time, m = -(D >= k) (or D <= k) from a constant D = j - i and k spread over a
    vector, converted to the element width. m is read again for every matrix."""
    ins = [v for v in nd["inputs"]]
    x_name, out = ins[0], nd["outputs"][0]
    shape = tuple(graph.values[x_name].shape)
    if len(shape) < 2:
        raise CompileError(f"{what}: an input of rank {len(shape)} (< 2)")
    n, m = shape[-2], shape[-1]
    upper = int(nd["attrs"].get("upper", 1))
    x = place[x_name]
    width = dtype_info(x.dtype).nbytes
    kind = _BITS[width]
    d = np.arange(m)[None, :] - np.arange(n)[:, None]
    k_name = ins[1] if len(ins) > 1 and ins[1] else None
    k_arr = graph.const_array(k_name) if k_name and graph.is_const(k_name) else None
    t = start
    temps = []
    if k_name is None or k_arr is not None:
        k = int(np.asarray(k_arr).reshape(-1)[0]) if k_arr is not None else 0
        keep = d >= k if upper else d <= k
        name = f"__trilu_{n}x{m}_{'u' if upper else 'l'}{k}_{kind}"
        if name not in graph.consts:
            graph.add_const(name, np.where(keep, -1, 0).astype(kind), kind="const")
        mask = place[name]
    else:
        dn = f"__trilu_d_{n}x{m}"
        if dn not in graph.consts:
            graph.add_const(dn, d.astype(np.int32), kind="const")
        sk = spread_scalar(k_name)
        t = max(t, ready_of(sk))
        pd = place[dn]
        cmp, a = alloc.alloc("int32", (n, m), 4, avoid=frozenset(pd.slices))
        t = binary(sch, alloc, ["ge" if upper else "le", "neg"], pd, place[sk], cmp, max(t, a),
                   what + " mask")
        temps.append(cmp)
        mask = cmp
        if kind != "int32":
            mk, a = alloc.alloc(kind, (n, m), width, avoid=frozenset(cmp.slices))
            t = lower.elementwise(sch, ["cvt"], cmp, None, None, mk, max(t, a), what + " mask")
            temps.append(mk)
            mask = mk
    z, a = new(out, t)
    xb, zb = (Placement(kind, p.shape, p.rows, p.cols, p.vpr, p.slices, p.addr)
              for p in (x, z))
    t = binary(sch, alloc, ["and"], xb, mask, zb, max(t, a), what)
    for p in temps:
        alloc.release(p, t)
    return t, clean.get(x_name, False)
