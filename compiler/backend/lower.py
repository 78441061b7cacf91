"""Lowering: each IR op becomes scheduled vector work on the units.

Supported now (fp32 exact mode, tensors in the west hemisphere):
- elementwise ops on the VXM: same-shape operands, a row operand broadcast over rows, or a
  scalar constant as an immediate;
- MatMul / MatMulBias / Gemm-derived MatMulBias with a constant [K, N] weight on MXM plane 0:
  K and N in tiles of 320, accumulating over K tiles, weights double-buffered;
- Reshape / Flatten / Squeeze / Unsqueeze / Identity that keep the last dimension: no code,
  the output shares the input's placement.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from compiler.backend.placement import Placement
from compiler.backend.resources import as_range, fit, shifted
from compiler.backend.schedule import Emitted, Scheduler
from compiler.errors import CompileError
from isa.table import ALU_BY_NAME, CHAIN_CVT

UNARY = {"Relu": "relu", "Neg": "neg", "Abs": "abs", "Exp": "exp", "Tanh": "tanh",
         "Sqrt": "sqrt", "Reciprocal": "recip", "Log": "log", "Erf": "erf", "Sigmoid": "sigmoid",
         "Identity": "copy", "Not": "not", "IsNaN": "isnan"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min",
          "Pow": "pow", "Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le",
          "GreaterOrEqual": "ge", "And": "and", "Or": "or", "Xor": "xor"}
COMMUTATIVE = {"add", "mul", "max", "min", "eq", "and", "or", "xor"}
SWAPPED = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}
CHAINS = {"Silu": ["sigmoid", "mul"]}  # x * sigmoid(x): the B operand is x itself
ALIASES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
MATMULS = {"MatMul", "MatMulBias"}
CHUNK = 4096  # vectors per elementwise job


_AT_ZERO = {
    "copy": lambda x, b: x, "neg": lambda x, b: -x, "abs": abs, "relu": lambda x, b: max(x, 0.0),
    "exp": lambda x, b: math.exp(x), "tanh": lambda x, b: math.tanh(x),
    "sqrt": lambda x, b: math.sqrt(x) if x >= 0 else math.nan, "erf": lambda x, b: math.erf(x),
    "sigmoid": lambda x, b: 1 / (1 + math.exp(-x)), "add": lambda x, b: x + b,
    "rsqrt": lambda x, b: 1 / math.sqrt(x), "recip": lambda x, b: 1 / x, "cvt": lambda x, b: x,
    "log": lambda x, b: math.log(x), "div": lambda x, b: x / b,
    "sub": lambda x, b: x - b, "mul": lambda x, b: x * b, "max": max, "min": min,
    "pow": math.pow,  # (0 ** -1 raises: not finite)
    # comparisons and logical ops give 0 or 1
    **{o: (lambda x, b: 0.0) for o in ("and", "or", "xor", "not", "eq", "lt", "le", "gt", "ge",
                                       "isnan")},
}


def finite_at_zero(ops: list[str], b: float | None) -> bool:
    """Does the op chain map a zero lane (with B = b there) to a finite value? Lanes past a
    row's last column start as zeros; an MXM sum over K multiplies them by zero weight rows,
    which gives zero only for finite values."""
    v = 0.0
    for o in ops:
        f = _AT_ZERO.get(o)
        if f is None:
            return False
        try:
            v = f(v, 0.0 if b is None else b) if o not in ("abs",) else abs(v)
        except (ValueError, OverflowError, ZeroDivisionError):
            return False
    return math.isfinite(v)


def fp32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", float(np.float32(v))))[0]


def _log2(g: int) -> int:
    return {1: 0, 2: 1, 4: 2}[g]


def elementwise(sch: Scheduler, ops: list[str], x: Placement, y: Placement | None,
                imm: float | None, z: Placement, ready: int, what: str,
                y_is_x: bool = False, y_mode: str = "row", x_of=None,
                vectors: list[int] | None = None, y_of=None,
                z_also: tuple[Placement, ...] = ()) -> int:
    """z = ops(x, B) on the VXM, B a placement, x itself, or an immediate; returns the cycle
    from which z is in SRAM. A placement B is read by `y_mode`: "row" repeats its vectors for
    every row (a same-shape B is the case of one repetition), "col" gives every vector of row
    r the vector r of B (a per-row value already spread over all lanes). `x_of` maps an output
    vector to the x vector it reads (default: the same index); `vectors` limits the work to
    those output vectors (default: all); `y_of` does for B what `x_of` does for x (instead of
    `y_mode`). `z_also`: copies of z (same shape and type, on z's side of the VXM), written
    from the same streams as they pass."""
    arch = sch.arch
    V = arch.vxm_position
    g = len(x.slices)
    # "cvt" converts to z's type: alone a vxm.cvt, in a chain its cvt link
    lat = sum(arch.lat("vxm_convert") if o == "cvt" else arch.lat(ALU_BY_NAME[o].latency)
              for o in ops)
    done = ready
    dx, dz = sch.toward(x, V), sch.away(V, z)
    dy = sch.toward(y, V) if y is not None else None
    todo = range(z.nvec) if vectors is None else (
        vectors if type(vectors) is range else list(vectors))
    step = _run_limit(sch, [x] + ([y] if y is not None else []), [z, *z_also], V, lat)
    outs = sorted([z, *z_also], key=lambda p: -max(abs(sch.slice_pos[s] - V) for s in p.slices))
    reach = [max((sch.slice_pos[p.slices[b]] for p in outs), key=lambda q: abs(q - V))
             for b in range(len(z.slices))]
    dests = [sch.slice_pos[s] for p in outs for s in p.slices]
    first = max(sch.reaches(p, V, ready) for p in ([x] if y is None else [x, y]))
    for lo in range(0, len(todo), step):
        n = min(step, len(todo) - lo)
        vs = todo[lo:lo + n]
        # consecutive vectors stay ranges, and evenly spaced addresses become ones: the
        # scheduler handles ranges in O(1)
        xa = shifted(vs, x.addr) if x_of is None else as_range([x.addr + x_of(v) for v in vs])
        if y is not None:
            if y_of is None and y_mode == "row" and type(vs) is range and vs[-1] < y.nvec:
                ya = shifted(vs, y.addr)
            else:
                ya = as_range([y.addr + (y_of(v) if y_of is not None else v % y.nvec
                                         if y_mode == "row" else v // z.vpr) for v in vs])
        za = shifted(as_range(vs), z.addr)

        def build(res, T, n=n, xa=xa, za=za, ya=(ya if y is not None else None)):
            arrive = range(T, T + n)
            # the ALUs first: the cheapest check (the choices are independent of each other)
            least = None  # no run of ALUs free: the least shift that frees one
            for a in range(arch.vxm_alus - len(ops) + 1):
                shift = 0
                for j in range(len(ops)):
                    alu = sch.table.alu[a + j]
                    fb = alu.first_busy(T, T + n)
                    if fb is not None:
                        shift = max(shift, alu.free_after(fb) - T)
                if not shift:
                    break
                least = shift if least is None else min(least, shift)
            else:
                res.need(least)
                return None
            bx = sch.read_flow(res, x, xa, arrive, V, dx, ready)
            if bx is None:
                return None
            by = None
            if y is not None:
                by = sch.read_flow(res, y, ya, arrive, V, dy, ready)
                if by is None:
                    return None
            for j in range(len(ops)):
                res.take_alus(a + j, T, T + n)
            q = f"VXM{a}"
            if not res.take_issue(q, T):
                return None
            leave = range(T + lat, T + lat + n)
            bz = sch.free_group(res, len(z.slices), dz, V, dests, leave)
            if bz is None:
                return None
            code = []
            for k, p in enumerate(outs):  # the streams held once, to the farthest copy
                c = sch.write_flow(res, p, shifted(za, p.addr - z.addr), leave, V, dz, bz,
                                   reach=reach if k == 0 else None, flows=k == 0)
                if c is None:
                    return None
                code += c
            rx = sch.read_code(res, x, xa, arrive, V, dx, bx)
            ry = sch.read_code(res, y, ya, arrive, V, dy, by) if y is not None else []
            if rx is None or ry is None:
                return None
            f = dict(dtype=_dt(x), dst=bz, dst_dir=dz, dst_g=_log2(len(z.slices)), src=bx,
                     src_dir=dx, src_g=_log2(g), count=n)
            if y is not None:
                f.update(src2=by, src2_dir=dy, src2_g=_log2(len(y.slices)))
            elif y_is_x:
                f.update(src2=bx, src2_dir=dx, src2_g=_log2(g))
            elif imm is not None:
                f.update(imm=(int(imm) & 0xFFFFFFFF) if _is_int(x) else fp32_bits(imm), flag=1)
            if ops == ["cvt"]:
                mn = "vxm.cvt"
                f["dtype2"] = _dt(z)
            elif len(ops) == 1:
                mn = f"vxm.{ops[0]}"
                if ALU_BY_NAME[ops[0]].arity == 1:
                    for k in ("src2", "src2_dir", "src2_g", "imm", "flag"):
                        f.pop(k, None)
            else:
                mn = "vxm.chain"
                f["ops"] = sum((CHAIN_CVT if o == "cvt" else ALU_BY_NAME[o].code) << (6 * i)
                               for i, o in enumerate(ops))
                if "cvt" in ops:
                    f["dtype2"] = _dt(z)
            return rx + ry + code + [Emitted(q, T, mn, f)]

        T = sch.place(first, build, what)
        far = max(abs(V - sch.slice_pos[s]) for p in outs for s in p.slices)
        done = max(done, T + lat + n + far + arch.lat("mem_write") + 1)
    return done


def _run_limit(sch, reads: list[Placement], writes: list[Placement], unit: int,
               lat: int) -> int:
    """Vectors per job: CHUNK, or fewer when a slice both streams reads to the unit and takes
    its results (its one read and one write per cycle must be on different banks): a run no
    longer than the round trip never reads and writes that slice in one cycle."""
    shared = {s for p in reads for s in p.slices} & {s for p in writes for s in p.slices}
    if not shared:
        return CHUNK
    a = sch.arch
    # from the read of a vector to the write instruction of the result: issue slots of the
    # slice's queue, and (later by mem_write) its ports
    trip = min(a.lat("mem_read") + lat + 2 * abs(unit - sch.slice_pos[s]) for s in shared)
    return max(1, min(CHUNK, trip - 1))


def _is_int(p: Placement) -> bool:
    return p.dtype in ("int8", "int16", "int32")


def _dt(p: Placement) -> int:
    from isa.dtypes import dtype

    return dtype(p.dtype).code


def row_block(p: Placement, first: int, n: int) -> Placement:
    """Rows first .. first + n - 1 of a placement, as a placement of n rows."""
    return Placement(p.dtype, (n, p.cols), n, p.cols, p.vpr, p.slices, p.addr + first * p.vpr)


@dataclass(frozen=True)
class Tiled:
    """A constant [K, N] matrix stored as MXM tiles of at most 320 x 320, each its own
    placement (K rows of one 320-column slice): no tile is limited by one slice's words, and
    the weight loads of a large matmul spread over many slices' read ports."""

    dtype: str
    rows: int
    cols: int
    tiles: dict  # (kt, nt) -> Placement of shape (rk, cn)


def matmul(sch: Scheduler, x: Placement, w: Placement | Tiled, y: Placement, ready: int,
           what: str, plane: int | None = None, zero: Placement | None = None,
           copies: tuple[Placement, ...] = (), pad_zero: bool = False,
           split: bool = True, x_parts: tuple[Placement, ...] = (), w_after: int = 0,
           on_tile=None, x_ready: tuple[int, ...] | None = None,
           y_parts: tuple[Placement, ...] = ()) -> int:
    """y[M, N] = x[M, K] @ w[K, N] on the MXM, each 320-column tile of y on the plane that is
    free first (or on `plane`); returns when y is in SRAM. With `zero` (a zero vector of w's
    type), a last K tile shorter than 320 rows also loads zero rows for the rest, so lanes of x
    past column K never meet stale weights. With `pad_zero` (x's lanes past K are zero and w
    is integer: every stale row, whatever its bytes, adds 0) only the last cycle's gaps are.
    `copies` (of x, in other slices) let the activations of several tiles stream at once:
    one slice reads one vector per cycle. With `x_parts`, K tile kt streams x_parts[kt] (M
    rows, at most 320 columns: its column tile 0; of x's type and number of slices, in any
    slices) instead of x's column tile kt, and w (Tiled) has that many rows in its tile kt (x
    gives only M, the type and the slice count); an entry may be a tuple of copies of one
    part (each in its own slices), streamed from whichever is free. `w_after`: a Tiled w
    computed on chip is loaded from then on (a constant one from the start). `x_ready`: the
    cycle from which each K tile of x may be read, when its tiles are written one by one
    (default `ready`). `y_parts`: y's column tile nt goes to column nt // k of y_parts[nt % k]
    (k placements of y's rows, each in its own slices) instead of y's column nt."""
    if pad_zero and w.dtype != "int8":
        raise CompileError(f"internal: {what}: stale weight rows left in place for {w.dtype}")
    arch = sch.arch
    lanes = arch.lanes
    M, K, N = x.rows, x.cols, w.cols
    if x_parts:
        x_parts = tuple(p if isinstance(p, tuple) else (p,) for p in x_parts)
        if not isinstance(w, Tiled) or copies or any(
                p.rows != M or p.cols != alts[0].cols or p.cols > lanes
                or len(p.slices) != len(x.slices) or p.dtype != x.dtype
                for alts in x_parts for p in alts):
            raise CompileError(f"internal: {what}: activation parts need tiled weights")
        K = sum(alts[0].cols for alts in x_parts)
    if w.rows != K:
        raise CompileError(f"{what}: inner dimensions differ ({K} vs {w.rows})")
    cap = arch.mxm_acc_vectors_per_plane
    if M > cap:  # row blocks that fit a plane's accumulators, one after another
        done = ready
        for m0 in range(0, M, cap):
            n = min(cap, M - m0)
            done = max(done, matmul(sch, row_block(x, m0, n), w, row_block(y, m0, n), ready,
                                    what, plane, zero,
                                    tuple(row_block(c, m0, n) for c in copies),
                                    pad_zero=pad_zero, split=split,
                                    x_parts=tuple(tuple(row_block(p, m0, n) for p in alts)
                                                  for alts in x_parts),
                                    w_after=w_after, on_tile=_offset(on_tile, m0),
                                    x_ready=x_ready,
                                    y_parts=tuple(row_block(p, m0, n) for p in y_parts)))
        return done
    g = len(x.slices)
    w_ready = w_after if isinstance(w, Tiled) else ready
    rate = arch.mxm_rate_of(x.dtype)
    iv = int(round(1 / rate))
    kt_n, nt_n = len(x_parts) or math.ceil(K / lanes), math.ceil(N / lanes)
    if split and plane is None and nt_n == 1 and iv > 1 and M >= SPLIT_ROWS and not copies \
            and not x_parts:
        # one column tile at a slow rate (Softmax's row sums): row blocks, each on the plane
        # free first, so they stream on several planes at once
        rr = -(-M // arch.mxm_planes)
        done = ready
        for m0 in range(0, M, rr):
            n = min(rr, M - m0)
            done = max(done, matmul(sch, row_block(x, m0, n), w, row_block(y, m0, n), ready,
                                    what, None, zero, split=False,
                                    on_tile=_offset(on_tile, m0), x_ready=x_ready))
        return done
    done = ready
    for nt in range(nt_n):
        if plane is None:  # the plane free first, on the weights' side if two are
            # (weights stream across the chip to the other side's planes too: BERT-base int8
            # at seq 64, 96, 128, 160, 192 3.5, 4.3, 0.7, 1.5, 2.4% fewer cycles than with
            # their own side's planes only; GPT-2-small's one-token step 71,968 -> 71,449)
            ps = [p for kt in range(kt_n) for p in w.tiles.get((kt, nt), ())] \
                if isinstance(w, Tiled) else [w]
            V = arch.vxm_position
            west = 2 * sum(sch.slice_pos[p.slices[0]] < V for p in ps) >= len(ps)
            pl = min(range(arch.mxm_planes), key=lambda p: (
                max(sch.mxm.get(p, _FRESH)[:2]), (arch.mxm_position(p) == 0) != west, p))
        else:
            pl = plane
        q = f"MXM{pl}"
        P = arch.mxm_position(pl)
        to_mxm, from_mxm = (1, 0) if P == 0 else (0, 1)
        # the plane is shared by every matmul: continue from where the last one left it
        t_free, array_busy_until, acc_regions, stale = sch.mxm.get(pl, _FRESH)
        # the accumulators in ACC_REGIONS regions: a tile takes the consecutive ones free
        # first, so that its activations stream in while an earlier tile's results stream out
        nreg = max(1, min(ACC_REGIONS, cap))
        reg = cap // nreg
        need = min(nreg, -(-M // reg))  # all of them (from 0) for more rows than they hold
        acc_regions = acc_regions or (0,) * nreg
        r0 = min(range(nreg - need + 1), key=lambda r: (max(acc_regions[r:r + need]), r))
        acc_free, acc_addr = max(acc_regions[r0:r0 + need]), r0 * reg
        # an install copies the load buffer into the plane's one pending register, which
        # reaches the array mxm_install cycles later: the next install must come after that,
        # or it would replace weights that are still on their way in
        iw_clear = t_free + arch.lat("mxm_install")
        # constant weights are in SRAM from the start: their loads and installs wait only for
        # the plane, not for x, so they overlap whatever computes x
        t_free, array_busy_until = max(w_ready, t_free), max(w_ready, array_busy_until)
        acc_free = max(ready, acc_free)
        last_abc_in = None
        # a Tiled matrix may leave out tiles of zeros (not for a whole column of tiles)
        kts = [kt for kt in range(kt_n) if not isinstance(w, Tiled) or (kt, nt) in w.tiles]
        for kt in kts:
            rk = x_parts[kt][0].cols if x_parts else min(lanes, K - kt * lanes)
            zeros = [] if zero is None else (list(zero) if isinstance(zero, (list, tuple))
                                             else [zero])

            if isinstance(w, Tiled):  # row r of the tile is row r // R of part r % R
                parts = list(w.tiles[(kt, nt)])
                R = len(parts)
                # a part with vpr 0 is one vector, its every row (a constant row repeated)
                plan = [(p, range(p.addr, p.addr + p.rows) if p.vpr else [p.addr] * p.rows)
                        for p in parts]
            else:
                R = 1
                a0 = w.addr + kt * lanes * w.vpr + nt
                plan = [(w, range(a0, a0 + rk * w.vpr, w.vpr))]
            n1 = -(-rk // R)  # real rows, R per cycle; zeros fill the last cycle's gaps
            # and the rows past rk that an earlier load may have left nonzero (the load
            # buffer keeps rows a load does not write): x's lanes past K meet zero weights
            total = n1 * R if pad_zero else max(n1 * R, stale if zeros else rk)
            if total > rk and not zeros:
                raise CompileError(f"internal: {what}: a short weight tile needs zero rows")
            stale = max(stale, total) if pad_zero else rk
            pad = [[i for i in range(n1) if rk <= i * R + j < total] for j in range(R)]
            lw = _lw_job(sch, q, P, to_mxm, plan, pad, zeros, n1, w_ready, 0)
            rest = total - n1 * R  # then the zero rows, as many per cycle as copies allow
            lw2 = None
            if rest > 0:
                distinct = list({zp.slices: zp for zp in zeros}.values())
                Z = max(d for d in range(1, min(len(distinct), S_LW // len(x.slices)) + 1)
                        if rest % d == 0) if distinct else 1
                n2 = rest // Z
                lw2 = _lw_job(sch, q, P, to_mxm,
                              [(zp, [zp.addr] * n2) for zp in distinct[:Z]],
                              [[] for _ in range(Z)], [], n2, w_ready, n1 * R)
            loaded = sch.place(max(t_free, *(sch.reaches(p, P, w_ready) for p, _a in plan)),
                               lw, f"{what} weight load") + n1
            if lw2 is not None:
                loaded = max(loaded, sch.place(t_free, lw2, f"{what} weight load") + n2)
            earliest_iw = max(loaded, array_busy_until - arch.lat("mxm_install") + 1, iw_clear)

            def iw(res, T, q=q):
                return [Emitted(q, T, "mxm.iw", {})] if res.take_issue(q, T) else None

            t_iw = sch.place(earliest_iw, iw, f"{what} install")
            t_free = t_iw + 1
            iw_clear = t_free + arch.lat("mxm_install")
            flag = 1 if kt != kts[0] else 0  # the first accumulates onto nothing

            x_in = ready if x_ready is None else max(ready, x_ready[kt])

            def abc(res, T, kt=kt, flag=flag, q=q, P=P, to_mxm=to_mxm, acc_addr=acc_addr,
                    x_in=x_in):
                arrive = range(T, T + M * iv, iv)
                c0 = 0 if x_parts else kt
                got = {}

                def reads(src):  # the first copy whose reads fit (the least hint if none)
                    xa = range(src.addr + c0, src.addr + c0 + M * src.vpr, src.vpr)
                    got["b"], got["xa"] = sch.read_flow(res, src, xa, arrive, P, to_mxm,
                                                        x_in), xa
                    return got["b"] is not None

                src = res.first_fit(x_parts[kt] if x_parts else (x,) + copies, reads)
                if src is None or not res.take_issue(q, T):
                    return None
                b, xa = got["b"], got["xa"]
                rc = sch.read_code(res, src, xa, arrive, P, to_mxm, b)
                if rc is None:
                    return None
                return rc + [Emitted(q, T, "mxm.abc", dict(dtype=_dt(x), src=b, src_dir=to_mxm,
                                                           src_g=_log2(g), count=M,
                                                           addr=acc_addr,
                                                           flag=flag))]

            start = max(t_iw + arch.lat("mxm_install") + 1, acc_free if kt == 0 else 0,
                        min(sch.reaches(c, P, x_in)
                            for c in (x_parts[kt] if x_parts else (x,) + copies)))
            t_abc = sch.place(start, abc, f"{what} activations")
            last_abc_in = t_abc + (M - 1) * iv
            array_busy_until = last_abc_in + 1
        yp, yc = (y_parts[nt % len(y_parts)], nt // len(y_parts)) if y_parts else (y, nt)
        ya = range(yp.addr + yc, yp.addr + yc + M * yp.vpr, yp.vpr)
        dests = [sch.slice_pos[s] for s in yp.slices]

        def acc(res, T, ya=ya, dests=dests, q=q, P=P, from_mxm=from_mxm, acc_addr=acc_addr,
                yp=yp):
            if not res.take_issue(q, T):
                return None
            leave = range(T + arch.lat("mxm_accumulate"), T + arch.lat("mxm_accumulate") + M)
            b = sch.free_group(res, 4, from_mxm, P, dests, leave)
            if b is None:
                return None
            code = sch.write_flow(res, yp, ya, leave, P, from_mxm, b)
            if code is None:
                return None
            return code + [Emitted(q, T, "mxm.acc", dict(dtype=_dt(y), dst=b, dst_dir=from_mxm,
                                                         dst_g=2, count=M,
                                                         addr=acc_addr))]

        t_acc = sch.place(last_abc_in + arch.lat("mxm_activate") + 1, acc, f"{what} results")
        acc_regions = acc_regions[:r0] + (t_acc + M,) * need + acc_regions[r0 + need:]
        sch.mxm[pl] = (t_free, array_busy_until, acc_regions, stale)
        far = max(abs(sch.slice_pos[s] - P) for s in yp.slices)
        t_nt = t_acc + arch.lat("mxm_accumulate") + M + far + arch.lat("mem_write") + 1
        if on_tile is not None:
            on_tile(0, M, nt, t_nt)
        done = max(done, t_nt)
    return done


def _offset(on_tile, m0: int):
    """on_tile for a block of rows from m0 on: its rows told as rows of the whole."""
    if on_tile is None:
        return None
    return lambda r0, n, nt, t: on_tile(m0 + r0, n, nt, t)


S_LW = 16  # streams a weight load of zero rows reads at most
# a matmul of one column tile at less than the full MXM rate and at least this many rows runs
# in mxm_planes row blocks (measured on BERT-base seq 128, where it splits Softmax's sums of
# 384 rows: 1,185,667 -> 1,145,251 cycles; from 64 rows, which splits the norms' sums too,
# one layer took 110,197 cycles against 108,264)
SPLIT_ROWS = 256
# an MXM plane's state across matmuls: (cycle its load buffer may be written, cycle after the
# last activation read of its installed weights, cycle its accumulators may be overwritten,
# the row of its load buffer from which on every row is zero)
_FRESH = (0, 0, (), 0)
ACC_REGIONS = 4  # a plane's accumulators, in this many regions of equal size


def _lw_job(sch, q: str, P: int, to_mxm: int, plan, pad, zeros, n_cyc: int, ready: int,
            addr: int):
    """The build of one mxm.lw reading R rows per cycle: plan[j] = (placement, addresses) of
    the rows streamed on the j-th stream group in cycles 0, 1, ...; pad[j] = the cycles in
    which group j carries a zero row instead (read from one of `zeros`)."""
    R = len(plan)
    g = len(plan[0][0].slices)
    S = sch.arch.streams_per_direction
    lat = sch.lat("mem_read")
    # read cycles of the real rows relative to T, per slice: checked first, cheaply
    checks = [(sch.table.read_port[sl], -lat - abs(P - sch.slice_pos[sl]), len(addrs))
              for p, addrs in plan for sl in p.slices]
    floor = max(0, ready)

    def lw(res, T):
        move = fit([(busy, [(T + off, T + off + n)]) for busy, off, n in checks],
                   max(0, max(floor - T - off for _b, off, _n in checks)))
        if move:  # the least shift that frees every slice's port
            res.need(move)
            return None
        if not res.take_issue(q, T):
            return None
        code: list[Emitted] = []

        def group(b0: int) -> bool:  # every row on streams b0.. (first_fit: the least hint)
            code.clear()
            for j, (p, addrs) in enumerate(plan):
                arrive = range(T, T + len(addrs))
                if addrs:
                    if sch.read_flow(res, p, addrs, arrive, P, to_mxm, ready,
                                     base=b0 + j * g) is None:
                        return False
                    c = sch.read_code(res, p, addrs, arrive, P, to_mxm, b0 + j * g)
                    if c is None:
                        return False
                    code.extend(c)
                if pad[j]:
                    zarr = [T + i for i in pad[j]]
                    got = []

                    def zero_row(zp, j=j, zarr=zarr, got=got):  # from a slice free then
                        za = [zp.addr] * len(zarr)
                        if sch.read_flow(res, zp, za, zarr, P, to_mxm, ready,
                                         base=b0 + j * g) is None:
                            return False
                        # no read slots: the group fails (not the next zero row)
                        got.append(sch.read_code(res, zp, za, zarr, P, to_mxm, b0 + j * g))
                        return True

                    if res.first_fit(zeros, zero_row) is None or got[0] is None:
                        return False
                    code.extend(got[0])
            return True

        b0 = res.first_fit(range(0, S - R * g + 1, R * g), group)
        if b0 is None:
            return None
        return code + [Emitted(q, T, "mxm.lw", dict(
            dtype=_dt(plan[0][0]), src=b0, src_dir=to_mxm, aux=R * g,
            count=n_cyc, addr=addr))]

    return lw


def sxm_rotate(sch: Scheduler, x: Placement, z: Placement, shift: int, ready: int,
               what: str) -> int:
    """z = x rotated north by `shift` lanes (cyclically), through the SXM of x's hemisphere."""
    n = z.nvec
    return sxm_unary(sch, "sxm.rotate", x, z, range(n), range(n), dict(shift=shift), ready, what)


def sxm_unary(sch: Scheduler, mnemonic: str, x: Placement, z: Placement | None,
              xv: list[int], zv: list[int] | None, fields: dict, ready: int, what: str,
              dests: list[tuple[Placement, int]] | None = None) -> int:
    """z's vector zv[i] = op(x's vector xv[i]) for one SXM op (rotate, shift, permute,
    distribute) through the west SXM; `dests` instead gives each result its own placement and
    vector (any slices). Returns the cycle from which the results are in SRAM."""
    arch = sch.arch
    q, X = sch.sxm_for(x)
    din = sch.toward(x, X)
    dout = 1 - din
    g = len(x.slices)
    lat = arch.lat(mnemonic.replace(".", "_"))
    if dests is None:
        dests = [(z, v) for v in zv]
    done = ready
    step = _run_limit(sch, [x], list({d[0] for d in dests}), X, lat)
    for lo in range(0, len(dests), step):
        n = min(step, len(dests) - lo)
        xa = shifted(xv[lo:lo + n], x.addr)
        part = dests[lo:lo + n]
        groups: dict[tuple, tuple[Placement, list[int]]] = {}
        for i, (p, _v) in enumerate(part):
            groups.setdefault((p.slices, p.addr), (p, []))[1].append(i)
        positions = sorted({sch.slice_pos[s] for p, _ in groups.values() for s in p.slices})

        def build(res, T, n=n, xa=xa, part=part, groups=groups, positions=positions):
            arrive = range(T, T + n)
            bx = sch.read_flow(res, x, xa, arrive, X, din, ready)
            if bx is None or not res.take_issue(q, T):
                return None
            leave = range(T + lat, T + lat + n)
            bz = sch.free_group(res, g, dout, X, positions, leave)
            if bz is None:
                return None
            code = []
            for p, idx in groups.values():
                c = sch.write_flow(res, p, [p.addr + part[i][1] for i in idx],
                                   [leave[i] for i in idx], X, dout, bz)
                if c is None:
                    return None
                code += c
            rx = sch.read_code(res, x, xa, arrive, X, din, bx)
            if rx is None:
                return None
            return rx + code + [Emitted(q, T, mnemonic,
                                        dict(dtype=_dt(x), dst=bz, dst_dir=dout, dst_g=_log2(g),
                                             src=bx, src_dir=din, src_g=_log2(g), count=n,
                                             **fields))]

        T = sch.place(sch.reaches(x, X, ready), build, what)
        far = max(abs(pos - X) for pos in positions)
        done = max(done, T + lat + n + far + arch.lat("mem_write") + 1)
    return done
