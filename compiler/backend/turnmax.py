"""The max over the lanes of many vectors through the SXM's 16x16 corner turn.

ops.lanes_max rotates every vector through the SXM once per stage (log2 of the lanes, for
many vectors): the SXM, one vector a cycle at each edge of the chip, bounds it. For many
vectors this module turns lanes into vectors instead, per block of 16 vectors (rows j):

1. rows to 16 slices: byte plane b of row j of every block into slice j of one hemisphere
   (VXM copies), since the corner turn reads its 16 streams in one cycle;
2. corner turn, per byte plane: T_i lane 16k + j = row j lane 16k + i (transpose.py's
   _corner_turn), into 16 placements T_0 .. T_15 in distinct slices;
3. a max tree over T_0 .. T_15 (VXM): M lane 16k + j = max of row j over superlane k;
4. lanes_max over superlanes (rotations by multiples of 16 lanes) on the blocks' M only, one
   vector per 16 rows: lane 16k + j = max of row j;
5. SXM distribute with map j (every lane takes lane j of its superlane): row j's vector.

Per row the SXM handles about one vector (the distribute) instead of one per stage. The
rows of step 1 sit in one bank of their slices and the T_i in the other, so one slice may
serve both in the cycles of a corner turn (a slice reads one bank while it writes the other).
Returns None, having scheduled nothing, when the slices for the corner turn cannot be found;
the caller then rotates. BERT-base int8 at sequence 128: 1,504,587 -> 1,292,850 cycles.
"""

from __future__ import annotations

import numpy as np

from compiler.backend import lower
from compiler.backend.gather import plane
from compiler.backend.ops import _max_tree, lanes_max
from compiler.backend.placement import Placement
from compiler.backend.transpose import TILE, _corner_turn, _sixteen
from compiler.errors import CompileError

ROWS_BANK = 1  # the bank of the rows the corner turn reads (the T_i are in the other)


def lanes_max_turn(sch, alloc, m: Placement, shape, ready: int, what: str,
                   cols: int | None = None, side: int = 0) -> tuple[Placement, int] | None:
    """lanes_max of m (one vector per row) by corner turns; with `cols`, lanes 0 .. cols - 1
    of every result hold the max of the row's lanes (the others some lane's value), else every
    lane does. None when the corner turn's slices are not free. `side` (0 west, 1 east): the
    hemisphere tried first for the corner turn (a Softmax's row blocks alternate, so that two
    blocks turn at once, each through its own side's SXM: BERT-base int8 at seq 64..192
    -0.5% in all)."""
    arch = sch.arch
    L = arch.lanes
    if arch.lanes_per_superlane != TILE or L % TILE:
        return None
    n, g = m.nvec, len(m.slices)
    nb = -(-n // TILE)
    # every placement first: a failure leaves nothing scheduled
    got: list[tuple[Placement, int]] = []
    taken = set(m.slices)
    for _ in range(TILE):
        r = alloc.try_alloc(m.dtype, (nb, L), g, avoid=frozenset(taken), bank=1 - ROWS_BANK)
        if r is None:
            for p, _a in got:
                alloc.release(p, 0)
            return None
        got.append(r)
        taken |= set(r[0].slices)
    ts = [p for p, _ in got]
    t_ts = max(a for _, a in got)
    # the rows of all byte planes in one set of 16 slices, in the bank the T_i are not in
    # (the corner turn reads them while it writes the T_i: a slice reads one bank and writes
    # the other in a cycle)
    try:
        ins_all, a = _sixteen(alloc, (g * nb, L), avoid=frozenset(m.slices), bank=ROWS_BANK,
                              first=side)
    except CompileError:
        for p in ts:
            alloc.release(p, 0)
        return None
    # 1-2. per byte plane: rows to 16 slices, then the corner turn into plane b of the T_i
    t_turn = ready
    for b in range(g):
        ins = [lower.row_block(p, b * nb, nb) for p in ins_all]
        src = plane(m, b)
        t_in = max(ready, a)
        for j in range(TILE):
            vs = [v for v in range(nb) if TILE * v + j < n]
            if vs:
                t_in = max(t_in, lower.elementwise(
                    sch, ["copy"], src, None, None, ins[j], max(ready, a), what + " to rows",
                    x_of=lambda v, j=j: TILE * v + j, vectors=vs))
        t_b = _corner_turn(sch, ins, [plane(p, b) for p in ts], nb, max(t_in, t_ts),
                           what + " corner turn")
        t_turn = max(t_turn, t_b)
    for p in ins_all:
        alloc.release(p, t_turn)
    # 3. the max over the 16: every superlane's max of row j in its lane j
    sl_shape = (nb, L)
    mx, t = _max_tree(sch, alloc, [(p, t_turn) for p in ts], sl_shape, what)
    # 4. over the superlanes
    units = None if cols is None else -(-cols // TILE)
    mx, t = lanes_max(sch, alloc, mx, sl_shape, t, what, cols=units, unit=TILE)
    # 5. row j of each block: lane j of every superlane, in all its lanes
    # apart from m too: the caller may read the two together (Softmax: x - max)
    out, a = alloc.try_alloc(m.dtype, shape, g, avoid=frozenset(mx.slices) | frozenset(m.slices)) \
        or alloc.alloc(m.dtype, shape, g, avoid=frozenset(mx.slices))
    done = max(t, a)
    for j in range(TILE):
        vs = [v for v in range(nb) if TILE * v + j < n]
        if not vs:
            continue
        dmap = (np.arange(L) // TILE) * TILE + j
        done = max(done, lower.sxm_unary(sch, "sxm.distribute", mx, out, vs,
                                         [TILE * v + j for v in vs],
                                         dict(imm=sch.map_index(dmap)), max(t, a), what))
    alloc.release(mx, done)
    return out, done
