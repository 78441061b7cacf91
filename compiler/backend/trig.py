"""Sin and Cos on the VXM, which has no trigonometric function: the argument reduced by the
nearest multiple k of pi/2 (k rounded by the fp32 -> int32 conversion; pi/2 in three parts,
Cody and Waite's), Taylor polynomials for sin and cos on the
remainder r (|r| <= pi/4, errors below 3e-8), and the quadrant k mod 4 (Cos: k + 1) choosing
sin r or cos r and the sign, with the bits of k. Accurate (a few ulp) for |x| < 2^16 pi/2,
about 1e5; NaN and inf give NaN."""

from __future__ import annotations

import numpy as np

from compiler.backend import lower
from compiler.backend.ops import apart
from compiler.backend.placement import Placement
from compiler.errors import CompileError

# pi/2 in three parts, the first two of 8 significant bits: k * each is exact in fp32 for
# |k| < 2^16
_HALF_PI = (1.5703125, 0.000484466552734375, float(np.float32(np.pi / 2 - 1.5703125
                                                                - 0.000484466552734375)))
_SIN = (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880)  # sin r = r + r z (S1 + z (S2 + ...)), z = r^2
_COS = (-1 / 2, 1 / 24, -1 / 720, 1 / 40320)  # cos r = 1 + z (C1 + z (C2 + ...))


def lower_trig(graph, sch, alloc, nd, place, new, start, what, clean) -> tuple[int, bool]:
    x_name, out = nd["inputs"][0], nd["outputs"][0]
    x = place[x_name]
    if x.dtype != "fp32":
        raise CompileError(f"internal: {what}: {x.dtype} operand (Sin/Cos take fp32)")
    shape = x.shape
    t = start
    temps: list[Placement] = []

    def tmp(dtype: str = "fp32", avoid=frozenset()) -> Placement:
        nonlocal t
        p, a = alloc.alloc(dtype, shape, 4, avoid=avoid)
        t = max(t, a)
        temps.append(p)
        return p

    def ew(ops, a: Placement, b=None, dst: Placement | None = None, kind: str | None = None
           ) -> Placement:
        """dst = ops(a, b) (b: a placement, a float immediate or None), in `kind` (a view of
        the same bits) when given."""
        nonlocal t
        avoid = frozenset(a.slices) | (frozenset(b.slices) if isinstance(b, Placement)
                                       else frozenset())
        if dst is None:
            dst = tmp(kind or a.dtype, avoid)
        if kind is not None:
            a, dst = _view(a, kind), _view(dst, kind)
            b = _view(b, kind) if isinstance(b, Placement) else b
        if isinstance(b, Placement):
            q, tq, cp = apart(sch, alloc, b, a, t, what)
            t = lower.elementwise(sch, ops, a, q, None, dst, max(t, tq), what)
            if cp is not None:
                alloc.release(cp, t)
        else:
            t = lower.elementwise(sch, ops, a, None, b, dst, t, what)
        return dst

    # k = round(x * 2 / pi) (as int32 and fp32); r = x - k * pi/2, one part at a time
    y = ew(["mul"], x, float(2 / np.pi))
    ki = ew(["cvt"], y, dst=tmp("int32", frozenset(y.slices)))
    kf = ew(["cvt"], ki, dst=tmp("fp32", frozenset(ki.slices)))
    r = x
    for part in _HALF_PI:
        r = ew(["sub"], r, ew(["mul"], kf, part))
    nan = tmp(avoid=frozenset(x.slices))  # x - x: NaN where x is inf or NaN, else 0
    t = lower.elementwise(sch, ["sub"], x, None, None, nan, t, what, y_is_x=True)
    r = ew(["add"], r, nan)
    z = tmp(avoid=frozenset(r.slices))
    t = lower.elementwise(sch, ["mul"], r, None, None, z, t, what, y_is_x=True)
    # sin r and cos r by Horner's rule in z
    h = ew(["add"], ew(["mul"], z, _SIN[3]), _SIN[2])
    for c in (_SIN[1], _SIN[0]):
        h = ew(["add"], ew(["mul"], h, z), c)
    s = ew(["add"], ew(["mul"], ew(["mul"], h, z), r), r)
    h = ew(["add"], ew(["mul"], z, _COS[3]), _COS[2])
    for c in (_COS[1], _COS[0]):
        h = ew(["add"], ew(["mul"], h, z), c)
    co = ew(["add"], ew(["mul"], h, z), 1.0)
    # quadrant j = k (+1 for Cos): [s, c, -s, -c][j mod 4], from the low bits of j
    j = ew(["add"], ki, 1) if nd["op"] == "Cos" else ki
    m = ew(["and", "neg"], j, 1)  # all ones where j is odd: cos r
    sign = ew(["mul"], ew(["and"], j, 2), 1 << 30)  # the sign bit where j & 2
    u = ew(["and"], ew(["xor"], s, co, kind="int32"), m, kind="int32")
    sel = ew(["xor"], s, u, kind="int32")
    zt, a = new(out, t, avoid=frozenset(sel.slices) | frozenset(sign.slices))
    t = max(t, a)
    ew(["xor"], sel, sign, dst=zt, kind="int32")
    for p in temps:
        alloc.release(p, t)
    return t, clean.get(x_name, False)


def _view(p: Placement, kind: str) -> Placement:
    return Placement(kind, p.shape, p.rows, p.cols, p.vpr, p.slices, p.addr)
