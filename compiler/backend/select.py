"""Where as a bitwise select on the VXM: exact for every value of every element type (inf and
NaN included, in the branch taken and in the one not taken)."""

from __future__ import annotations

import numpy as np

from compiler.backend import lower
from compiler.backend.ops import apart, reader
from compiler.backend.placement import Placement
from compiler.errors import CompileError
from isa.dtypes import dtype as dtype_info
from isa.dtypes import numpy_dtype

# the integer type of each element width: a select sees any element as its bits
BITS = {1: "int8", 2: "int16", 4: "int32"}
# each term of the select: the condition (0/1 in the bits type) made a mask of all ones or
# all zeros, ANDed with the branch; a 4-byte select reads the condition's fp32 bits (0, or
# those of 1.0) as they are, and `not, not` makes them 0/1
TAKE_A = {False: ["neg", "and"], True: ["not", "not", "neg", "and"]}
TAKE_B = ["not", "neg", "and"]


def bits_view(p: Placement, kind: str) -> Placement:
    return Placement(kind, p.shape, p.rows, p.cols, p.vpr, p.slices, p.addr)


def lower_where(graph, sch, alloc, nd, place, new, start, what, clean, spread, spread_scalar,
                ready_of) -> tuple[int, bool]:
    """Where(c, a, b) = (a AND m) OR (b AND NOT m) on the bits of the output's element type,
    m all ones where c is true. c (fp32 0/1) is read as int32, or converted to the 1- or
    2-byte integer type first; each term is one VXM chain over c ending in an AND with its
    branch, and a branch that is the constant 0 drops its term. The condition and the
    branches may be broadcast over leading dims, or along the last dim from [..., 1] (one
    vector per row with the value in every lane: spread through the MXM, or the SXM for
    integers, when it is not).
    Scalar constant branches are immediates; a non-finite one, or one so large that two of
    them add up to inf (a mask's float32 min: GPT-Neo adds two such masks), is a constant row,
    so that lanes past the last column stay 0 and finite whatever is added to them. Returns
    (ready cycle, whether those lanes stay finite)."""
    c, a, b = nd["inputs"]
    out = nd["outputs"][0]
    full = tuple(graph.values[out].shape)
    z, az = new(out, start)
    kind = BITS[dtype_info(z.dtype).nbytes]
    zb = bits_view(z, kind)
    t = start

    def operand(v: str):
        """(placement, reader) or (None, immediate bits) of an operand, and whether its lanes
        past the last column are finite."""
        nonlocal t
        ty = graph.values[v]
        vs = tuple(ty.shape)
        arr = graph.const_array(v) if graph.is_const(v) and v != c else None
        if arr is not None and arr.size == 1:
            val = np.asarray(arr).reshape(-1)[0]
            if dtype_info(z.dtype).is_float and not _small(val, z.dtype):
                cols = full[-1] if full else 1
                name = f"__fill_{z.dtype}_{cols}_{val!r}"
                if name not in graph.consts:
                    graph.add_const(name, np.full((1, cols), val, dtype=numpy_dtype(z.dtype)),
                                    kind="const")
                return place[name], (lambda v_: v_ % vpr), True
            return None, _bits(arr, z.dtype, kind), True
        along_lanes = vs != full and full and full[-1] != 1 and (not vs or vs[-1] == 1)
        if along_lanes:
            if v not in spread:
                if not clean.get(v, False) and ty.size != 1 \
                        and dtype_info(place[v].dtype).is_float:  # the MXM spreads it
                    raise CompileError(f"{what}: the lanes past the last column of {v!r} may "
                                       "hold inf or NaN; masking them is not lowered yet")
                v = spread_scalar(v)
            t = max(t, ready_of(v))
            return place[v], reader(vs, full, vpr, True), clean.get(v, False)
        if vs and full and vs[-1] != full[-1]:
            raise CompileError(f"{what}: an operand broadcast along the last dimension "
                               f"({list(vs)} to {list(full)}) is not lowered yet")
        t = max(t, ready_of(v))
        return place[v], reader(vs, full, vpr, False), clean.get(v, False)

    vpr = z.vpr
    temps: list[Placement] = []
    pc, c_of, _ = operand(c)
    if pc.dtype != "fp32":
        raise CompileError(f"internal: {what}: a condition held as {pc.dtype}")
    if kind == "int32":
        cm = bits_view(pc, kind)
    else:  # the condition as 0/1 of the branches' width
        cm, ac = alloc.alloc(kind, pc.shape, dtype_info(kind).nbytes,
                             avoid=frozenset(pc.slices) | frozenset(z.slices))
        t = lower.elementwise(sch, ["cvt"], pc, None, None, cm, max(t, ac), what + " condition")
        temps.append(cm)
    terms = []
    pads_ok = True
    for v, ops in ((a, TAKE_A[kind == "int32"]), (b, TAKE_B)):
        p, how, ok = operand(v)
        if p is not None or how != 0:  # (c ? 0 : b) is b AND NOT m alone, and so on
            terms.append((ops, p, how))
            pads_ok = pads_ok and ok
    t0, done = t, t
    if not terms:  # both branches 0
        return lower.elementwise(sch, ["and"], cm, None, 0, zb, max(t0, az), what,
                                 x_of=c_of), True
    parts = []
    for ops, p, how in terms:
        if len(terms) == 1:
            dst, at = zb, az
        else:
            dst, at = alloc.alloc(kind, full, len(z.slices),
                                  avoid=frozenset(cm.slices) | frozenset(z.slices)
                                  | (frozenset(p.slices) if p is not None else frozenset()))
            parts.append(dst)
        if p is None:
            t1 = lower.elementwise(sch, ops, cm, None, how, dst, max(t0, at), what, x_of=c_of)
        else:
            q, tq, cp = apart(sch, alloc, bits_view(p, kind), cm, t0, what)
            t1 = lower.elementwise(sch, ops, cm, q, None, dst, max(t0, at, tq), what,
                                   x_of=c_of, y_of=how or (lambda v_: v_))
            if cp is not None:
                alloc.release(cp, t1)
        done = max(done, t1)
    if parts:
        done = lower.elementwise(sch, ["or"], parts[0], parts[1], None, zb, max(done, az),
                                 what)
    for p in parts + temps:
        alloc.release(p, done)
    return done, pads_ok


def _small(val, mdtype: str) -> bool:
    """Is val, in machine type mdtype, finite and at most half its largest finite value (so
    that the sum of two such values is finite)?"""
    import ml_dtypes  # its finfo knows bfloat16 too

    t = numpy_dtype(mdtype)
    v = np.float64(np.asarray(val).astype(t))
    return bool(np.isfinite(v)) and abs(v) <= float(ml_dtypes.finfo(t).max) / 2


def _bits(arr, mdtype: str, kind: str) -> int:
    """The bits of a one-element constant in machine type mdtype, as a signed integer of the
    bits type `kind`."""
    v = np.asarray(arr).reshape(-1)[:1].astype(numpy_dtype(mdtype))
    return int(v.view(numpy_dtype(kind))[0])
