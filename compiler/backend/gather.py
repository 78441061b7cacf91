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
from compiler.backend.ops import QMAX, binary, copy_rows, quantize_weights, row_index
from compiler.backend.placement import Placement
from compiler.backend.resources import ALL_BANKS, as_range
from compiler.backend.schedule import Emitted
from compiler.errors import CompileError
from compiler.ir import TensorType


def lower_gather(graph, arch, sch, alloc, nd, place, new, start, what, clean,
                 index_ranges: dict[str, tuple[int, int]],
                 table_dtype: str = "fp32") -> tuple[int, bool]:
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
    ids = place[idx]
    if ids.dtype not in ("int32", "int16"):
        raise CompileError(f"{what}: indices of type {ids.dtype} are not lowered")
    if idx in graph.inputs:  # the host checks the values it loads (see lpusim.simulator)
        lo, hi = index_ranges.get(idx, (-n_axis, n_axis - 1))
        index_ranges[idx] = (max(lo, -n_axis), min(hi, n_axis - 1))
    ishape = tuple(graph.values[idx].shape)
    n_idx = math.prod(ishape)
    chunks = table_chunks(graph, arch, sch, alloc, data, place, table_dtype)
    U = math.prod(dt.shape[1:-1]) * chunks[0][0].vpr  # vectors one index selects
    avoid = frozenset(s for c in chunks for s in c[0].slices)
    ids_m, t = address_map(arch, sch, alloc, ids, ishape, n_axis, start, what, avoid=avoid)
    md = chunks[0][0].dtype
    z, a = new(out, t, avoid=avoid)
    parts: list[tuple[int, int, Placement]] = []  # (ready, chunk, rows gathered from it)
    scaled, ts = _scaled(sch, alloc, ids_m, U, t, what, avoid)  # i * U, for every chunk
    for i, (tab, r0, n_c) in enumerate(chunks):
        if len(chunks) == 1:
            amap, tm = scaled, ts
        else:
            amap, tm = _chunk_map(sch, alloc, scaled, r0, n_c, U, ts, what, avoid)
        if len(chunks) == 1 and md == z.dtype and not set(z.slices) & avoid:
            dest, ad = z, a
        else:
            # apart from every chunk of the table and the other parts where there is room,
            # else from its own chunk only (mem.gather cannot write the slice it reads; a
            # table of many chunks may fill most slices)
            dest, ad = alloc.try_alloc(md, z.shape, len(tab.slices),
                                       avoid | frozenset(amap.slices)
                                       | frozenset(s for _, _, p in parts for s in p.slices)) \
                or alloc.alloc(md, z.shape, len(tab.slices), avoid=frozenset(tab.slices))
        tg = gather_rows(sch, tab, _low16(amap), dest, n_idx, U, max(tm, ad), what)
        if amap is not scaled:
            alloc.release(amap, tg)
        parts.append((tg, i, dest))
    if scaled is not ids_m:
        alloc.release(scaled, max(p[0] for p in parts))
    # rows of other chunks are zero, so the row is the sum of the parts: add them in a tree,
    # the two that are ready first each time (a chain would wait for every add in turn)
    while len(parts) > 1:
        parts.sort(key=lambda r: (r[0], r[1]))
        (t1, i1, p1), (t2, _, p2) = parts[0], parts[1]
        s2, a2 = alloc.alloc(md, z.shape, len(p1.slices),
                             avoid=frozenset(p1.slices) | frozenset(p2.slices))
        # (binary: two sums can share a slice, as each avoided only its own operands)
        tt = binary(sch, alloc, ["add"], p1, p2, s2, max(t1, t2, a2), what + " chunks")
        alloc.release(p1, tt)
        alloc.release(p2, tt)
        parts = parts[2:] + [(tt, i1, s2)]
    done, _, acc = parts[0]
    alloc.release(ids_m, done)
    if md in QMAX:  # a quantized table: back to fp32 with the per-column scales
        f, af = alloc.alloc("fp32", z.shape, 4, avoid=frozenset(acc.slices) | frozenset(z.slices))
        done = lower.elementwise(sch, ["cvt"], acc, None, None, f, max(done, af), what)
        alloc.release(acc, done)
        # (into z, or an fp32 temporary that a cvt then rounds to z's narrower type)
        zs = z
        if z.dtype != "fp32":
            zs, az = alloc.alloc("fp32", z.shape, 4,
                                 avoid=frozenset(f.slices) | frozenset(z.slices))
            done = max(done, az)
        done = binary(sch, alloc, ["mul"], f, place[f"{data}@{md}.scale"], zs, max(done, a),
                      what + " scale")
        alloc.release(f, done)
        acc = zs
    if acc is not z:
        done = lower.elementwise(sch, ["cvt"] if md != z.dtype else ["copy"], acc, None, None,
                                 z, max(done, a), what)
        alloc.release(acc, done)
    return done, clean.get(data, False)


# vectors of one stored chunk of a gathered table (a slice holds mem_words_per_slice); with
# chunks of whole slices (8192) BERT-base int8 took 1.7% more cycles over 2 layers and
# GPT-2-small's one-token step 14% more; with 2048 BERT-base no longer fits (fragmentation)
TABLE_CHUNK_VECTORS = 4096


def table_chunks(graph, arch, sch, alloc, data, place, table_dtype):
    """The table as (placement, first row, rows) chunks. A constant table is stored in
    `table_dtype`, in chunks of at most TABLE_CHUNK_VECTORS vectors per slice, each (when
    there are several) with a zero row before and after its rows, for indices in other
    chunks (_chunk_map): its row r is at row r + 1 of the placement."""
    dt = graph.values[data]
    if not graph.is_const(data):
        tab = place[data]
        return [(tab, 0, dt.shape[0])]
    key = f"{data}@{table_dtype}"
    if key not in sch.tables:
        from isa.dtypes import dtype as dtype_info
        from isa.dtypes import numpy_dtype

        V = dt.shape[0]
        per = math.prod(dt.shape[1:-1]) * -(-dt.shape[-1] // arch.lanes)  # vectors per row
        rows = max(1, TABLE_CHUNK_VECTORS // per - 2)
        single = V * per <= TABLE_CHUNK_VECTORS
        arr = graph.const_array(data)
        if table_dtype in QMAX:  # per column (feature) scales, applied after the gather
            D = dt.shape[-1]
            q, scale = quantize_weights(None if arr is None else np.asarray(arr).reshape(-1, D),
                                        table_dtype)
            arr = None if q is None else q.reshape(dt.shape)
            graph.add_const(f"{key}.scale", scale, ty=TensorType("float32", (D,)),
                            kind="const")
        g = dtype_info(table_dtype).nbytes
        got = []
        for r0 in range(0, V, V if single else rows):
            n_c = min(V - r0, V if single else rows)
            shape = (n_c + (0 if single else 2),) + tuple(dt.shape[1:])
            p, _ = alloc.alloc(table_dtype, shape, g, resident=True)
            part = None
            first = 0 if single else 1
            if arr is not None:
                part = np.zeros(shape, numpy_dtype(table_dtype))
                part[first:first + n_c] = np.asarray(arr[r0:r0 + n_c]).astype(
                    numpy_dtype(table_dtype))
            sch.data[f"{key}.r{r0}"] = (p, part)
            got.append((p, r0, n_c))
        sch.tables[key] = got
    return sch.tables[key]


def _low16(p: Placement) -> Placement:
    """The low two byte planes of an int32 placement: the uint16 address map of a gather."""
    return Placement("int16", p.shape, p.rows, p.cols, p.vpr, p.slices[:2], p.addr)


def _scaled(sch, alloc, m: Placement, U: int, ready: int, what: str, avoid):
    if U == 1:
        return m, ready
    out, a = alloc.alloc("int32", m.shape, 4, avoid=avoid | frozenset(m.slices))
    return out, lower.elementwise(sch, ["mul"], m, None, U, out, max(ready, a), what)


def _chunk_map(sch, alloc, m: Placement, r0: int, n_c: int, U: int, ready: int, what: str,
              avoid):
    """Addresses into one chunk of rows [r0, r0 + n_c), from m = i * U: (i - r0 + 1) * U for
    indices in it (its row i - r0, after the leading zero row), 0 (the zero row before) for
    indices below it and (n_c + 1) * U (the zero row after) for those above. Two VXM passes,
    min(relu(m + (1 - r0) * U), (n_c + 1) * U), where a test of both ends took eight
    (BERT-base int8 seq 128: the word embeddings' gather from 23 chunks 18,109 -> 10,788
    cycles; GPT-2-small's one-token step 70,159 -> 68,340)."""
    lo, a = alloc.alloc("int32", m.shape, 4, avoid=avoid | frozenset(m.slices))
    t = lower.elementwise(sch, ["add", "relu"], m, None, (1 - r0) * U, lo, max(ready, a),
                          what + " chunk map")
    out, a = alloc.alloc("int32", m.shape, 4, avoid=avoid | frozenset(lo.slices))
    t = lower.elementwise(sch, ["min"], lo, None, (n_c + 1) * U, out, max(t, a),
                          what + " chunk map")
    alloc.release(lo, t)
    return out, t


def address_map(arch, sch, alloc, ids: Placement, ishape: tuple[int, ...], V: int,
                ready: int, what: str, avoid: frozenset[int] = frozenset()
                ) -> tuple[Placement, int]:
    """An int32 tensor with one vector per index, every lane holding the index (negative ones
    wrapped by V), in no slice of `avoid`."""
    lanes, lps = arch.lanes, arch.lanes_per_superlane
    S = ishape[-1] if ishape else 1
    rows = math.prod(ishape[:-1]) if len(ishape) > 1 else 1
    t = ready
    a = ids
    if ids.dtype != "int32":
        a, na = alloc.alloc("int32", ids.shape, 4, avoid=frozenset(ids.slices))
        t = lower.elementwise(sch, ["cvt"], ids, None, None, a, max(t, na),
                              what + " index map")
    lt, nl = alloc.alloc("int32", ids.shape, 4, avoid=frozenset(a.slices))
    t = lower.elementwise(sch, ["lt"], a, None, 0, lt, max(t, nl), what + " index map")
    neg, nn = alloc.alloc("int32", ids.shape, 4, avoid=frozenset(lt.slices) | frozenset(a.slices))
    t = lower.elementwise(sch, ["mul"], lt, None, V, neg, max(t, nn), what + " index map")
    alloc.release(lt, t)
    fixed, nf = alloc.alloc("int32", ids.shape, 4,
                            avoid=frozenset(neg.slices) | frozenset(a.slices))
    t = lower.elementwise(sch, ["add"], a, neg, None, fixed, max(t, nf), what + " index map")
    if a is not ids:
        alloc.release(a, t)
    alloc.release(neg, t)
    n_idx = rows * S
    m, nm = alloc.alloc("int32", (n_idx, lanes), 4, avoid=avoid)
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
        rot, nr = alloc.alloc("int32", (n_idx, lanes), 4, avoid=frozenset(m.slices) | avoid)
        t = lower.sxm_rotate(sch, m, rot, covered * lps, max(t, nr), what + " index map")
        m2, n2 = alloc.alloc("int32", (n_idx, lanes), 4,
                             avoid=frozenset(rot.slices) | frozenset(m.slices) | avoid)
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
    ma = as_range([amap.addr + v for v in mv])  # ranges where they can: O(1) to schedule
    za = as_range([zb.addr + v for v in zv])

    def build(res, T):
        arrive = range(T, T + n)
        bm = sch.read_flow(res, amap, ma, arrive, tp, dmap, ready)
        if bm is None or not res.take_issue(q, T):
            return None
        # data-dependent addresses: no write in any bank
        if not res.take_reads(tsl, arrive, ALL_BANKS):
            return None
        leave = range(T + lat, T + lat + n)
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

    T = sch.place(sch.reaches(amap, tp, ready), build, what)
    return T + lat + n + abs(zp - tp) + arch.lat("mem_write") + 1
