"""Transposes that move the last axis (K^T in attention), on the SXM's 16x16 corner turn.

sxm.transpose reads 16 streams in one cycle and, in every 16-lane superlane (a "tile"),
swaps stream and lane. A matrix X [R, C] (rows along vectors, columns along lanes) becomes
Y = X^T in 320x320 blocks; in a block, with tiles of 16 rows (k) and 16 columns (cb):

1. skew: Z[r] = X[r] rotated north by 16 * (r // 16) lanes, so tile cb of row 16k + j sits
   in tile cb + k (mod 20) of Z[16k + j] (sxm.rotate, all byte planes at once);
2. gather: G[cb, j] tile t = Z[16 * ((t - cb) mod 20) + j] tile t (mem.gather with a constant
   address map), i.e. tile cb + k holds X[16k + j] tile cb;
3. unskew: rotate G[cb, j] south by 16 * cb lanes, so tile k holds X[16k + j] tile cb; the 16
   vectors j go to 16 different slices (a slice reads one vector per cycle, and the corner
   turn needs all 16 in the same cycle);
4. corner turn: out stream i, tile k, lane j = X[16k + j, 16cb + i] = Y[16cb + i, 16k + j],
   written to 16 slices;
5. copy back: each row of Y to Y's own slices (VXM copy).

Steps 2-5 run per byte plane (the corner turn moves bytes); the row moves that bring the two
axes last (other permutations) are row copies.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.backend import lower
from compiler.backend.gather import gather_job, plane
from compiler.backend.ops import copy_rows, row_index
from compiler.backend.placement import Placement
from compiler.backend.resources import fit
from compiler.backend.schedule import Emitted
from compiler.errors import CompileError

TILE = 16


def lower_transpose_last(graph, arch, sch, alloc, nd, place, new, start, what) -> int:
    """ONNX Transpose whose perm moves the last axis: row moves to [..., a, last], batched
    2-D transposes to [..., last, a], row moves to the output order."""
    x_name, out = nd["inputs"][0], nd["outputs"][0]
    shape = tuple(graph.values[x_name].shape)
    n = len(shape)
    perm = [int(p) % n for p in nd["attrs"].get("perm", range(n - 1, -1, -1))]
    if arch.lanes % TILE or arch.lanes_per_superlane != TILE:
        raise CompileError(f"{what}: the corner turn needs 16-lane superlanes")
    a = perm[-1]
    others = [p for p in perm if p not in (a, n - 1)]
    p1 = others + [a, n - 1]
    y1_axes = others + [n - 1, a]
    p2 = [y1_axes.index(perm[i]) for i in range(n)]
    x = place[x_name]
    t = start
    temps = []
    if p1 != list(range(n)):
        s1 = tuple(shape[i] for i in p1)
        x1, a1 = alloc.alloc(x.dtype, s1, len(x.slices))
        t = copy_rows(sch, x, x1, row_index(shape).transpose(p1[:-1]).reshape(-1),
                      max(t, a1), what)
        x, temps = x1, [x1]
    bt = math.prod(shape[i] for i in others)
    R, C = shape[a], shape[n - 1]
    y1_shape = tuple(shape[i] for i in y1_axes)
    if p2 == list(range(n)):
        z, az = new(out, t)
        t = transpose2d(sch, alloc, x, z, bt, R, C, max(t, az), what)
    else:
        y1, ay = alloc.alloc(x.dtype, y1_shape, len(x.slices))
        t = transpose2d(sch, alloc, x, y1, bt, R, C, max(t, ay), what)
        z, az = new(out, t)
        t = copy_rows(sch, y1, z, row_index(y1_shape).transpose(p2[:-1]).reshape(-1),
                      max(t, az), what)
        temps.append(y1)
    for p in temps:
        alloc.release(p, t)
    return t


def _gather_map(sch, alloc, nr: int, nc: int, copy: int = 0) -> Placement:
    """The constant address map of step 2 for a block of nr rows and nc columns: vector
    16 * cb + j, tile t addresses Z row 16 * ((t - cb) mod tiles) + j (row 0 where that row
    is past the block: those lanes of Y are past its last column). Each byte plane gathers
    through its own `copy`: a slice reads one vector per cycle, so planes sharing one map would
    take turns."""
    key = f"__transpose_map_{nr}x{nc}" + (f"_{copy}" if copy else "")
    if key not in sch.data:
        L = sch.arch.lanes
        tiles = L // TILE
        ntc = -(-nc // TILE)
        m = np.zeros((ntc * TILE, L), np.int16)
        for cb in range(ntc):
            for j in range(TILE):
                for t in range(tiles):
                    r = TILE * ((t - cb) % tiles) + j
                    m[cb * TILE + j, t * TILE:(t + 1) * TILE] = r if r < nr else 0
        taken = frozenset(s for k, (q, _) in sch.data.items()
                          if k.startswith(f"__transpose_map_{nr}x{nc}") for s in q.slices)
        p, _ = alloc.alloc("int16", m.shape, 2, resident=True, avoid=taken)
        sch.data[key] = (p, m)
    return sch.data[key][0]


def transpose2d(sch, alloc, x: Placement, z: Placement, bt: int, R: int, C: int, ready: int,
                what: str) -> int:
    """z [bt, C, R] = x [bt, R, C] transposed in its last two axes."""
    L = sch.arch.lanes
    if R == 1:  # a row to a column (K^T of one token): row c of z is x shifted south by c
        done = ready
        for c in range(C):
            xv = [b0 * x.vpr + c // L for b0 in range(bt)]
            zv = [b0 * C + c for b0 in range(bt)]
            done = max(done, lower.sxm_unary(sch, "sxm.shift", x, z, xv, zv,
                                             dict(shift=-(c % L)), ready, what))
        return done
    done = ready
    for b0 in range(bt):
        for ra in range(-(-R // L)):
            for ca in range(-(-C // L)):
                nr, nc = min(L, R - ra * L), min(L, C - ca * L)
                xv = [(b0 * R + ra * L + r) * x.vpr + ca for r in range(nr)]
                zv = [(b0 * C + ca * L + c) * z.vpr + ra for c in range(nc)]
                done = max(done, _block(sch, alloc, x, z, xv, zv, nr, nc, ready, what))
    return done


def _block(sch, alloc, x, z, xv, zv, nr, nc, ready, what) -> int:
    L = sch.arch.lanes
    ntc = -(-nc // TILE)
    maps = [_gather_map(sch, alloc, nr, nc, b) for b in range(len(x.slices))]
    # 1. skew (every byte plane at once)
    zk, a = alloc.alloc(x.dtype, (nr, L), len(x.slices),
                        avoid=frozenset(s for m in maps for s in m.slices) | frozenset(x.slices))
    t = max(ready, a)
    t_skew = t
    for k in range(-(-nr // TILE)):
        rows = list(range(k * TILE, min(nr, (k + 1) * TILE)))
        t_skew = max(t_skew, lower.sxm_unary(sch, "sxm.rotate", x, zk, [xv[r] for r in rows],
                                             rows, dict(shift=TILE * k), t, what))
    t = t_skew
    done = t
    sides = _sides(sch.arch, alloc)
    for b in range(len(x.slices)):
        done = max(done, _plane(sch, alloc, zk, maps[b], plane(z, b), zv, b, ntc, nc, sides, t,
                                what))
    alloc.release(zk, done)
    return done


def _plane(sch, alloc, zk, amap, yb, zv, b, ntc, nc, sides, ready, what) -> int:
    """Steps 2-5 for byte plane b of a block of ntc column tiles, in hemisphere b % 2 of
    `sides` (west and east slices) where it has room (so the planes use both SXMs). The steps
    run in chunks of CHUNK column tiles, each from when its part of the step before is done:
    the gather of one chunk, the unskew of the one before and the corner turn and copy back
    of the one before that go side by side, where whole steps would wait for each other.
    Chunks alternate between two gather slices (a slice cannot read and write one bank in a
    cycle: the gather of a chunk writes one while the unskew of the last reads the other).
    With several chunks every temporary is taken first and held to the plane's end, so the
    next plane's land elsewhere (BERT-base int8 over nine sequence lengths: 5,704,472 cycles,
    against 5,787,890 with each taken when needed and freed after its last read); one chunk
    takes them as it goes, as the unchunked steps did."""
    L = sch.arch.lanes
    # 2. gather, into slices away from Z and the map
    avoid = frozenset(zk.slices) | frozenset(amap.slices)
    chunks = [list(range(c, min(ntc, c + CHUNK))) for c in range(0, ntc, CHUNK)]
    per = -(-len(chunks) // 2) * CHUNK  # column tiles in each gather slice
    gs: list[tuple[Placement, int]] = []
    for _ in range(min(2, len(chunks))):
        # byte planes alternate between the hemispheres, so both SXMs unskew and turn at once
        taken = avoid | frozenset(s for p, _a in gs for s in p.slices)
        got = alloc.try_alloc("int8", (per * TILE, L), 1, avoid=taken, only=sides[b % 2])
        gs.append(got if got is not None else alloc.alloc("int8", (per * TILE, L), 1,
                                                          avoid=taken))
    first = 0 if gs[0][0].slices[0] in sides[0] else 1

    def sixteen(away):  # 16 slices of one hemisphere, none of `away`'s
        return _sixteen(alloc, (ntc, L), avoid=frozenset(s for p in away for s in p.slices),
                        first=first)

    ins: list[Placement] = []  # the unskew's 16 slices (vector cb of slice j)
    outs: list[Placement] = []  # the corner turn's
    a3 = a4 = t4 = t5 = ready
    piped = len(chunks) > 1
    if piped:  # every chunk's temporaries first, held to the end
        ins, a3 = sixteen([p for p, _a in gs])
        outs, a4 = sixteen(ins + [yb])
    for k, cbs in enumerate(chunks):
        g, ag = gs[k % 2]
        g0 = (k // 2) * CHUNK  # the chunk's first column tile in its gather slice
        rows = [v for cb in cbs for v in range(cb * TILE, (cb + 1) * TILE)]
        tb = gather_job(sch, zk.slices[b], zk.addr, amap, rows, g,
                        [v - cbs[0] * TILE + g0 * TILE for v in rows], max(ready, ag), what)
        # 3. unskew into 16 slices
        if not ins:
            ins, a3 = sixteen([p for p, _a in gs])
        tb = max(tb, a3)
        t3 = tb
        for i, cb in enumerate(cbs):
            t3 = max(t3, lower.sxm_unary(sch, "sxm.rotate", g, None,
                                         list(range((g0 + i) * TILE, (g0 + i + 1) * TILE)),
                                         None, dict(shift=-TILE * cb), tb, what,
                                         dests=[(ins[j], cb) for j in range(TILE)]))
        if not piped:
            alloc.release(g, t3)
        # 4. corner turn into 16 slices (vector cb of slice i = row 16 cb + i of Y)
        if not outs:
            outs, a4 = sixteen(ins + [yb])
        tk = _corner_turn(sch, [lower.row_block(p, cbs[0], len(cbs)) for p in ins],
                          [lower.row_block(p, cbs[0], len(cbs)) for p in outs], len(cbs),
                          max(t3, a4), what)
        t4 = max(t4, tk)
        # 5. copy back to Y's plane b
        for i in range(TILE):
            mine = [cb for cb in cbs if cb * TILE + i < nc]
            if not mine:
                continue
            vecs = [zv[cb * TILE + i] for cb in mine]
            src = dict(zip(vecs, mine, strict=True))
            t5 = max(t5, lower.elementwise(sch, ["copy"], outs[i], None, None, yb, tk, what,
                                           x_of=src.__getitem__, vectors=vecs))
    for p in [g for g, _a in gs if piped] + ins:
        alloc.release(p, t5 if piped else t4)
    for p in outs:
        alloc.release(p, t5)
    return t5


CHUNK = 4  # column tiles (16 rows of the result each) per step of _plane's pipeline


def _sides(arch, alloc) -> list[frozenset[int]]:
    """The slices of the west and of the east hemisphere."""
    return [frozenset(q.index for q in arch.queues if q.kind == "MEM" and q.hemisphere == h)
            & frozenset(alloc.slices) for h in "WE"]


def _sixteen(alloc, shape, avoid: frozenset[int] = frozenset(),
             bank: int | None = None, first: int = 0) -> tuple[list[Placement], int]:
    """16 one-byte placements in 16 different slices of one hemisphere (the corner turn reads
    them through that side's SXM), in `bank` if given, and the first cycle all may be
    written."""
    sides = _sides(alloc.arch, alloc)
    for side in (sides[first], sides[1 - first]):
        got: list[Placement] = []
        after = 0
        for _ in range(TILE):
            r = alloc.try_alloc("int8", shape, 1, only=side, bank=bank,
                                avoid=avoid | frozenset(s for q in got for s in q.slices))
            if r is None:
                break
            got.append(r[0])
            after = max(after, r[1])
        if len(got) < TILE:
            for p in got:
                alloc.release(p, 0)
            continue
        return got, after
    raise CompileError("the corner turn needs 16 slices with free space in one hemisphere")


def _corner_turn(sch, ins: list[Placement], outs: list[Placement], n: int, ready: int,
                 what: str) -> int:
    """sxm.transpose of n vectors from the 16 slices `ins` (vector v of each) to `outs`."""
    arch = sch.arch
    q, X = sch.sxm_for(ins[0])
    din = sch.toward(ins[0], X)
    dout = 1 - din
    lat = arch.lat("sxm_transpose")
    S = arch.streams_per_direction
    bases = list(range(0, S - TILE + 1, TILE))
    # the writes of step 3 must be done before the reads: ready covers them
    # the 16 read and 16 write ports, checked first and cheaply (with how far to move)
    rlat, wlat = arch.lat("mem_read"), arch.lat("mem_write")
    checks = [(sch.table.read_port[p.slices[0]], -rlat - abs(X - sch.slice_pos[p.slices[0]]))
              for p in ins] + \
             [(sch.table.write_port[p.slices[0]], lat + wlat + abs(sch.slice_pos[p.slices[0]] - X))
              for p in outs]

    def build(res, T):
        arrive = range(T, T + n)
        leave = range(T + lat, T + lat + n)
        move = fit([(busy, [(T + off, T + off + n)]) for busy, off in checks],
                   max(0, max(-(T + off) for _b, off in checks)))
        if move:  # the least shift that frees all 32 ports
            res.need(move)
            return None
        if not res.take_issue(q, T):
            return None
        # each stage takes the first stream group that fits (Reservation.first_fit): the
        # inputs (streams toward the SXM, read ports) and the outputs (streams away from it,
        # write ports) use disjoint resources, so one stage's hint holds whatever the other
        # chose
        bs = res.first_fit(bases, lambda bs: all(
            sch.read_flow(res, ins[j], range(ins[j].addr, ins[j].addr + n), arrive, X, din,
                          ready, base=bs + j) is not None for j in range(TILE)))
        if bs is None:
            return None
        code: list[Emitted] = []

        def outputs(bd: int) -> bool:
            code.clear()
            for i in range(TILE):
                c = sch.write_flow(res, outs[i], range(outs[i].addr, outs[i].addr + n), leave,
                                   X, dout, bd + i)
                if c is None:
                    return False
                code.extend(c)
            return True

        bd = res.first_fit(bases, outputs)
        if bd is None:
            return None
        for j in range(TILE):
            c = sch.read_code(res, ins[j], range(ins[j].addr, ins[j].addr + n), arrive, X, din,
                              bs + j)
            if c is None:
                return None
            code += c
        return code + [Emitted(q, T, "sxm.transpose",
                               dict(dst=bd, dst_dir=dout, src=bs, src_dir=din, count=n, aux=1))]

    T = sch.place(max(sch.reaches(p, X, ready) for p in ins), build, what)
    far = max(abs(sch.slice_pos[p.slices[0]] - X) for p in outs)
    return T + lat + n + far + arch.lat("mem_write") + 1

