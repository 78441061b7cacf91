"""Gather: rows of a tensor picked by indices.

Constant indices move whole rows, as the other row moves do (a VXM copy per row). Indices
known only at run time (token ids into an embedding table) use the MEM slices' indirect read,
mem.gather: tile k of a gathered vector is tile k of SRAM[base + map[16k]], with the address
map arriving on a pair of streams (a uint16 per lane). The map is built on chip from the index
tensor, whose indices lie along the lanes of its rows:

1. fix and scale (VXM, int16): a = (i + V if i < 0 else i) * U, with V the table's rows and
   U the vectors one index selects;
2. one vector per index (SXM distribute): lane l of index n goes to every lane of its
   superlane, the other superlanes get zero;
3. spread to every superlane (SXM rotate by 16, 32, ... lanes, each ORed into the running
   vector): zeros elsewhere make OR the union, so overlaps from the wrap do no harm.

Then one mem.gather per byte plane of the table and vector j < U of an index, with base
address table + j, writes vector n*U + j of the result.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.backend import lower
from compiler.backend.ops import copy_rows, row_index
from compiler.backend.placement import Placement
from compiler.backend.resources import ALL_BANKS
from compiler.backend.schedule import Emitted
from compiler.errors import CompileError


def lower_gather(graph, arch, sch, alloc, nd, place, new, start, what, clean,
                 index_ranges: dict[str, tuple[int, int]]) -> tuple[int, bool]:
    """Returns (cycle the output is in SRAM, whether its padding lanes are clean)."""
    data, idx = nd["inputs"][0], nd["inputs"][1]
    out = nd["outputs"][0]
    dt = graph.values[data]
    rank = len(dt.shape)
    axis = int(nd["attrs"].get("axis", 0))
    if not -rank <= axis < rank:
        raise CompileError(f"{what}: axis {axis} is out of range for rank {rank}")
    axis %= rank
    n_axis = dt.shape[axis]
    if graph.is_const(idx):
        ind = np.asarray(graph.const_array(idx)).astype(np.int64)
        if ind.size and (ind.min() < -n_axis or ind.max() >= n_axis):
            raise CompileError(f"{what}: an index is outside [-{n_axis}, {n_axis - 1}]")
        if axis == rank - 1:
            raise CompileError(f"{what}: gathering along the last axis is not lowered yet")
        ind = np.where(ind < 0, ind + n_axis, ind)
        rows = np.take(row_index(tuple(dt.shape)), ind, axis=axis).reshape(-1)
        z, a = new(out, start)
        return copy_rows(sch, place[data], z, rows, max(start, a), what), clean.get(data, False)
    if axis != 0 or rank < 2:
        raise CompileError(f"{what}: with indices computed at run time only a gather of rows "
                           "(axis 0 of a tensor of rank 2 or more) is lowered yet")
    table = place[data]
    ids = place[idx]
    if ids.dtype not in ("int32", "int16"):
        raise CompileError(f"{what}: indices of type {ids.dtype} are not lowered")
    U = math.prod(dt.shape[1:-1]) * table.vpr  # vectors one index selects
    if n_axis * U > 32767:
        raise CompileError(f"{what}: a table of {n_axis * U:,} vectors is beyond the 15-bit "
                           "address maps this backend builds")
    if idx in graph.inputs:  # the host checks the values it loads (see lpusim.simulator)
        lo, hi = index_ranges.get(idx, (-n_axis, n_axis - 1))
        index_ranges[idx] = (max(lo, -n_axis), min(hi, n_axis - 1))
    ishape = tuple(graph.values[idx].shape)
    n_idx = math.prod(ishape)
    amap, t = address_map(arch, sch, alloc, ids, ishape, n_axis, U, start, what,
                          avoid=frozenset(table.slices))
    z, a = new(out, t, avoid=frozenset(table.slices))
    t = gather_rows(sch, table, amap, z, n_idx, U, max(t, a), what)
    alloc.release(amap, t)
    return t, clean.get(data, False)


def address_map(arch, sch, alloc, ids: Placement, ishape: tuple[int, ...], V: int, U: int,
                ready: int, what: str, avoid: frozenset[int] = frozenset()
                ) -> tuple[Placement, int]:
    """An int16 tensor with one vector per index, every lane holding its fixed, scaled index
    (the map itself in no slice of `avoid`)."""
    lanes, lps = arch.lanes, arch.lanes_per_superlane
    S = ishape[-1] if ishape else 1
    rows = math.prod(ishape[:-1]) if len(ishape) > 1 else 1
    t = ready
    a, na = alloc.alloc("int16", ids.shape, 2, avoid=frozenset(ids.slices))
    t = lower.elementwise(sch, ["cvt"], ids, None, None, a, max(t, na), what + " index map")
    lt, nl = alloc.alloc("int16", ids.shape, 2, avoid=frozenset(a.slices))
    t = lower.elementwise(sch, ["lt"], a, None, 0, lt, max(t, nl), what + " index map")
    neg, nn = alloc.alloc("int16", ids.shape, 2, avoid=frozenset(lt.slices))
    t = lower.elementwise(sch, ["mul"], lt, None, V, neg, max(t, nn), what + " index map")
    alloc.release(lt, t)
    fixed, nf = alloc.alloc("int16", ids.shape, 2, avoid=frozenset(neg.slices))
    t = lower.elementwise(sch, ["add"], a, neg, None, fixed, max(t, nf), what + " index map")
    alloc.release(a, t)
    alloc.release(neg, t)
    if U > 1:
        scaled, ns = alloc.alloc("int16", ids.shape, 2, avoid=frozenset(fixed.slices))
        t = lower.elementwise(sch, ["mul"], fixed, None, U, scaled, max(t, ns),
                              what + " index map")
        alloc.release(fixed, t)
        fixed = scaled
    n_idx = rows * S
    m, nm = alloc.alloc("int16", (n_idx, lanes), 2, avoid=avoid)
    t = max(t, nm)
    done = t
    for lane in range(min(S, lanes)):
        k = lane // lps
        dmap = np.full(lanes, -1, np.int64)
        dmap[k * lps:(k + 1) * lps] = lane
        xv, zv = [], []
        for r in range(rows):
            for c in range(fixed.vpr):
                s = c * lanes + lane
                if s < S:
                    xv.append(r * fixed.vpr + c)
                    zv.append(r * S + s)
        done = max(done, lower.sxm_unary(sch, "sxm.distribute", fixed, m, xv, zv,
                                         dict(imm=sch.map_index(dmap)), t,
                                         what + " index map"))
    alloc.release(fixed, done)
    t = done
    tiles, covered = lanes // lps, 1
    while covered < tiles:
        rot, nr = alloc.alloc("int16", (n_idx, lanes), 2, avoid=frozenset(m.slices) | avoid)
        t = lower.sxm_rotate(sch, m, rot, covered * lps, max(t, nr), what + " index map")
        m2, n2 = alloc.alloc("int16", (n_idx, lanes), 2, avoid=frozenset(rot.slices) | avoid)
        t = lower.elementwise(sch, ["or"], m, rot, None, m2, max(t, n2), what + " index map")
        alloc.release(m, t)
        alloc.release(rot, t)
        m = m2
        covered *= 2
    return m, t


def gather_rows(sch, table: Placement, amap: Placement, z: Placement, n_idx: int, U: int,
                ready: int, what: str) -> int:
    """z's vector n*U + j = the table's vector amap[n] + j, for every byte plane."""
    done = ready
    for b, tsl in enumerate(table.slices):
        zb = plane(z, b)
        for j in range(U):
            for lo in range(0, n_idx, lower.CHUNK):
                n = min(lower.CHUNK, n_idx - lo)
                done = max(done, gather_job(sch, tsl, table.addr + j, amap,
                                            list(range(lo, lo + n)), zb,
                                            [v * U + j for v in range(lo, lo + n)], ready,
                                            what))
    return done


def plane(p: Placement, b: int) -> Placement:
    """Byte plane b of a placement, as a one-slice int8 placement."""
    return Placement("int8", p.shape, p.rows, p.cols, p.vpr, (p.slices[b],), p.addr)


def gather_job(sch, tsl: int, base: int, amap: Placement, mv: list[int], zb: Placement,
               zv: list[int], ready: int, what: str) -> int:
    """One mem.gather on slice tsl: zb's vector zv[i] = SRAM[base + map], the address map
    being amap's vector mv[i] (zb is one byte plane, in another slice)."""
    arch = sch.arch
    lat = arch.lat("mem_gather")
    tp = sch.slice_pos[tsl]
    mpos = [sch.slice_pos[s] for s in amap.slices]
    if all(p < tp for p in mpos):
        dmap = 0
    elif all(p > tp for p in mpos):
        dmap = 1
    else:
        raise CompileError(f"internal: {what}: the address map straddles the gathered slice")
    zp = sch.slice_pos[zb.slices[0]]
    if zp == tp:
        raise CompileError(f"internal: {what}: the result shares a slice with the gather")
    dout = 0 if zp > tp else 1
    q = sch.slice_names[tsl]
    n = len(mv)
    ma = [amap.addr + v for v in mv]
    za = [zb.addr + v for v in zv]

    def build(res, T):
        arrive = [T + i for i in range(n)]
        bm = sch.read_flow(res, amap, ma, arrive, tp, dmap, ready)
        if bm is None or not res.take_issue(q, T):
            return None
        for i in range(n):  # data-dependent addresses: no write in any bank
            if not res.take_read(tsl, T + i, ALL_BANKS):
                return None
        leave = [T + lat + i for i in range(n)]
        bz = sch.free_group(res, 1, dout, tp, [zp], leave)
        if bz is None:
            return None
        code = sch.write_flow(res, zb, za, leave, tp, dout, bz)
        rm = sch.read_code(res, amap, ma, arrive, tp, dmap, bm)
        if code is None or rm is None:
            return None
        return rm + code + [Emitted(q, T, "mem.gather",
                                    dict(dst=bz, dst_dir=dout, src=bm, src_dir=dmap, src_g=1,
                                         addr=base, count=n))]

    T = sch.place(ready, build, what)
    return T + lat + n + abs(zp - tp) + arch.lat("mem_write") + 1
