"""Integer Mod on the VXM, from its truncating division: r = a - (a / b) * b (the remainder
with the dividend's sign, fmod=1), and for fmod=0 (the divisor's sign) r + b where r is
nonzero and its sign differs from b's."""

from __future__ import annotations

import numpy as np

from compiler.backend import lower
from compiler.backend.ops import apart, reader
from compiler.backend.placement import Placement
from compiler.errors import CompileError
from isa.dtypes import dtype as dtype_info

# (ALU chain, x, B) per pass; a, b: the operands, the rest earlier results
_TRUNCATED = [(["div", "mul"], "a", "b", "p"),   # p = (a / b) * b
              (["sub", "neg"], "p", "a", "r")]   # r = -(p - a)
_FLOORED = [(["xor"], "r", "b", "s"),               # sign bit of s: signs of r and b differ
            (["lt", "neg"], "s", 0, "m1"),           # all ones where they do
            (["and", "not", "not", "neg"], "m1", "r", "m"),  # ... and r is nonzero
            (["and"], "m", "b", "adj"),              # b there, else 0
            (["add"], "r", "adj", "y")]
# types whose values are never negative: both forms agree
_UNSIGNED = ("uint8", "uint16", "uint32", "uint64")


def lower_mod(graph, sch, alloc, nd, place, new, start, what, spread_scalar,
              ready_of) -> tuple[int, bool]:
    """Mod of integers (int8/16/32 in their own type; int64 and unsigned types in the wider
    signed type the machine holds them in, where the result is exact: it is no larger than
    the divisor, and the intermediate products wrap consistently). Operands may be scalar
    constants (the divisor: an immediate), one-element values, or broadcast over leading
    dims. Division by zero gives the dividend (ONNX leaves it undefined)."""
    a, b = nd["inputs"][:2]
    out = nd["outputs"][0]
    full = tuple(graph.values[out].shape)
    ir_type = graph.values[out].dtype
    if ir_type.startswith(("float", "bfloat")):
        raise CompileError(f"{what}: a float Mod is not lowered yet (the VXM has no "
                           "truncation of floats)")
    fmod = int(nd["attrs"].get("fmod", 0))
    z, az = new(out, start)
    vpr = z.vpr
    t = start
    ops: dict[str, tuple] = {}  # name -> (placement, reader) or (None, immediate)
    for name, v in (("a", a), ("b", b)):
        arr = graph.const_array(v) if graph.is_const(v) else None
        vs = tuple(graph.values[v].shape)
        if arr is not None and arr.size == 1 and name == "b":
            ops[name] = (None, int(np.asarray(arr).reshape(-1)[0]))
            continue
        if graph.values[v].size == 1 and vs != full:
            v = spread_scalar(v)
            ops[name] = (place[v], reader(vs, full, vpr, True))
        else:
            if vs and full and vs[-1] != full[-1]:
                raise CompileError(f"{what}: an operand broadcast along the last dimension "
                                   f"({list(vs)} to {list(full)}) is not lowered yet")
            ops[name] = (place[v], reader(vs, full, vpr, False))
        t = max(t, ready_of(v))
    steps = list(_TRUNCATED)
    if not fmod and ir_type not in _UNSIGNED:
        steps += _FLOORED
    temps: list[Placement] = []
    for k, (chain, xn, yn, dst_name) in enumerate(steps):
        x, x_of = ops[xn]
        last = k == len(steps) - 1
        y, how = ops[yn] if isinstance(yn, str) else (None, yn)
        busy = frozenset(x.slices) | (frozenset(y.slices) if y is not None else frozenset())
        if last:
            dst, ad = z, az
        else:
            dst, ad = alloc.alloc(z.dtype, full, dtype_info(z.dtype).nbytes,
                                  avoid=busy | frozenset(z.slices))
            temps.append(dst)
        if y is None:
            t = lower.elementwise(sch, chain, x, None, how, dst, max(t, ad), what, x_of=x_of)
        else:
            q, tq, cp = apart(sch, alloc, y, x, t, what)
            t = lower.elementwise(sch, chain, x, q, None, dst, max(t, ad, tq), what, x_of=x_of,
                                  y_of=how or (lambda v: v))
            if cp is not None:
                alloc.release(cp, t)
        ops[dst_name] = (dst, None)
    for p in temps:
        alloc.release(p, t)
    return t, True
