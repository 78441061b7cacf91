"""Timing-only fast path: decide whether a decoded program is free of timing hazards by
checking each machine rule over whole instructions (runs of vectors) instead of event by event.

Every rule the event kernel checks in timing mode is a property of sets of (place, cycle)
pairs, independent of the order the events run in:
- stream-conflict: two writes of one stream at one position in one cycle;
- stream-empty: a read of a stream at position q on diagonal d with no write on d upstream of q
  (in timing mode no values flow, so only the existence of a writer matters);
- mem-port: two reads (or two writes) of one slice in one cycle, or a read and a write of one
  bank in one cycle;
- alu-busy: two instructions on one VXM ALU in one cycle;
- MXM state (install before load, dtype, accumulators): sequential per plane, checked by the
  event kernel run on the MXM instructions alone.
So when every check passes, the program has no hazard. When one fails, the caller runs the event
kernel, which reports the first hazard in event order exactly as the reference does.

Each rule is a Numba kernel over the decoded columns: it expands instructions into runs (one per
stream, slice, bank or ALU they use), groups the runs by key with a counting sort (keys are
small dense integers; instructions arrive sorted by issue cycle, so a key's runs are nearly
always already in time order, and the few that are not are sorted in place), and sweeps.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C, Decoded

_OP, _CHIP, _POS, _UIDX, _T0 = C["op"], C["chip"], C["pos"], C["uidx"], C["t0"]
_QID, _UNIT, _MEM_UNIT = C["qid"], C["unit"], oc.UNIT_CODES["MEM"]
_COUNT, _INTERVAL, _LAT, _NOPS = C["count"], C["interval"], C["lat"], C["nops"]
_ADDR, _STRIDE = C["addr"], C["stride"]
_R1 = (C["r1_dir"], C["r1_s"], C["r1_n"], C["r1_step"])
_R2 = (C["r2_dir"], C["r2_s"], C["r2_n"])
_W = (C["w_dir"], C["w_s"], C["w_n"], C["w_step"])
_RD, _GA = oc.OP_MEM_READ, oc.OP_MEM_GATHER
_WR, _SC = oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER
_MXM_OPS = (oc.OP_MXM_LW, oc.OP_MXM_IW, oc.OP_MXM_ABC, oc.OP_MXM_ACC)
_NEG = -(1 << 62)


@njit(cache=True)
def _group(key, start, nkeys):
    """Order of the runs by (key, start), keys in [0, nkeys). Returns (order, bounds): the runs of
    key k are order[bounds[k]:bounds[k + 1]]. Stable counting sort, then an in-place sort of the
    few groups whose starts are out of order."""
    n = key.shape[0]
    bounds = np.zeros(nkeys + 1, np.int64)
    for i in range(n):
        bounds[key[i] + 1] += 1
    for k in range(nkeys):
        bounds[k + 1] += bounds[k]
    fill = bounds[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        k = key[i]
        order[fill[k]] = i
        fill[k] += 1
    for k in range(nkeys):
        a, b = bounds[k], bounds[k + 1]
        for i in range(a + 1, b):
            if start[order[i]] < start[order[i - 1]]:
                seg = order[a:b].copy()
                order[a:b] = seg[np.argsort(start[seg], kind="mergesort")]
                break
    return order, bounds


@njit(cache=True)
def _overlaps(key, start, end, nkeys):
    """Does any run [start, end) overlap another run with the same key?"""
    order, bounds = _group(key, start, nkeys)
    for k in range(nkeys):
        hi = _NEG
        for i in range(bounds[k], bounds[k + 1]):
            r = order[i]
            if start[r] < hi:
                return True
            if end[r] > hi:
                hi = end[r]
    return False


@njit(cache=True)
def _covered(us, ue, m, a, n, step, i):
    """Are the diagonals a, a + step, ..., a + (n - 1) * step inside the union of the m sorted,
    disjoint, non-touching intervals [us[j], ue[j])? i: an interval index at or before the
    one holding a (reads come in increasing a, so the caller passes the previous answer).
    Returns (covered, index of the interval holding a)."""
    # gallop forward from i to the last interval starting at or before a
    if i < 0:
        i = 0
    if i >= m or us[i] > a:
        return False, i
    hop = 1
    while i + hop < m and us[i + hop] <= a:
        i += hop
        hop *= 2
    while hop > 1:
        hop //= 2
        if i + hop < m and us[i + hop] <= a:
            i += hop
    if step == 1:
        return a + n <= ue[i], i
    j = i
    for v in range(n):
        x = a + v * step
        while j < m and ue[j] <= x:
            j += 1
        if j == m or us[j] > x:
            return False, i
    return True, i


@njit(cache=True)
def _stream_op(cols, k, pass_):
    """Stream operand `pass_` of instruction k (0: the writes, 1 and 2: the read groups) as
    (direction, first stream, streams, stream step, cycle of the first vector, vector step)."""
    if pass_ == 0:
        return (cols[_W[0], k], cols[_W[1], k], cols[_W[2], k], cols[_W[3], k],
                cols[_T0, k] + cols[_LAT, k], 1)
    if pass_ == 1:
        return (cols[_R1[0], k], cols[_R1[1], k], cols[_R1[2], k], cols[_R1[3], k],
                cols[_T0, k], cols[_INTERVAL, k])
    return (cols[_R2[0], k], cols[_R2[1], k], cols[_R2[2], k], 1, cols[_T0, k],
            cols[_INTERVAL, k])


@njit(cache=True)
def _streams_clean(cols, S, P, nchips):
    """No two writes of a stream at one position in one cycle, and every read finds a value:
    some write upstream (or at an earlier position in the flow) on its diagonal."""
    N = cols.shape[1]
    # one event per (instruction, stream), keyed by (stream (chip, direction, stream), position
    # along the flow, write) as one int, so that per stream the positions come in flow order and
    # at one position the reads come first: a value written here is seen downstream only.
    # Counting sort by key: count, then place each event's (first diagonal, vectors, step)
    # straight into its key's range.
    ngroups = nchips * 2 * S
    nkeys = ngroups * P * 2
    bounds = np.zeros(nkeys + 1, np.int64)
    nw = 0
    for pass_ in range(3):
        for k in range(N):
            d, s, m, st, t, vstep = _stream_op(cols, k, pass_)
            if m == 0:
                continue
            if pass_ == 0:
                if vstep != cols[_INTERVAL, k]:
                    return False  # writers stream one vector per cycle on every unit
                nw += m
            p = cols[_POS, k]
            base = ((cols[_CHIP, k] * 2 + d) * S + s) * P + (p if d == 0 else P - 1 - p)
            for j in range(m):
                bounds[(base + j * st * P) * 2 + (1 if pass_ == 0 else 0) + 1] += 1
    for i in range(nkeys):
        bounds[i + 1] += bounds[i]
    ne = bounds[nkeys]
    d0 = np.empty(ne, np.int64)  # the diagonal of the first vector (t - pos or t + pos)
    n = np.empty(ne, np.int32)  # vectors (count < 2**16)
    step = np.empty(ne, np.int32)  # cycles between them
    fill = bounds[:-1].copy()
    for pass_ in range(3):
        for k in range(N):
            d, s, m, st, t, vstep = _stream_op(cols, k, pass_)
            if m == 0:
                continue
            p = cols[_POS, k]
            base = ((cols[_CHIP, k] * 2 + d) * S + s) * P + (p if d == 0 else P - 1 - p)
            dg = t - p if d == 0 else t + p
            cnt = cols[_COUNT, k]
            for j in range(m):
                key = (base + j * st * P) * 2 + (1 if pass_ == 0 else 0)
                e = fill[key]
                fill[key] = e + 1
                d0[e] = dg
                n[e] = cnt
                step[e] = vstep
    # per key, sort by first diagonal (events arrive grouped by queue, mostly in order)
    for key in range(nkeys):
        a, b = bounds[key], bounds[key + 1]
        for i in range(a + 1, b):
            if d0[i] < d0[i - 1]:
                o = np.argsort(d0[a:b], kind="mergesort") + a
                d0[a:b] = d0[o]
                n[a:b] = n[o]
                step[a:b] = step[o]
                break
    # stream-empty: per stream, walk the positions along the flow keeping the union of the
    # diagonals written so far as sorted disjoint intervals; each read must lie inside it
    us = np.empty(nw + 1, np.int64)
    ue = np.empty(nw + 1, np.int64)
    ns = np.empty(nw + 1, np.int64)
    ne_ = np.empty(nw + 1, np.int64)
    for g in range(ngroups):
        m = 0
        for kk in range(g * P * 2, (g + 1) * P * 2):
            a, b = bounds[kk], bounds[kk + 1]
            if a == b:
                continue
            if kk % 2 == 0:  # reads at this position, in increasing first diagonal
                at = 0
                for i in range(a, b):
                    ok, at = _covered(us, ue, m, d0[i], n[i], step[i], at)
                    if not ok:
                        return False
                continue
            # writes at this position: two overlap on a diagonal iff they drive the stream here
            # in one cycle (stream-conflict); then merge them into the union
            for i in range(a + 1, b):
                if d0[i] < d0[i - 1] + n[i - 1]:
                    return False
            i, j, q = 0, a, 0
            while i < m or j < b:
                if j == b or (i < m and us[i] <= d0[j]):
                    s0, s1 = us[i], ue[i]
                    i += 1
                else:
                    s0, s1 = d0[j], d0[j] + n[j]
                    j += 1
                if q > 0 and s0 <= ne_[q - 1]:
                    ne_[q - 1] = max(ne_[q - 1], s1)
                else:
                    ns[q] = s0
                    ne_[q] = s1
                    q += 1
            us[:q] = ns[:q]
            ue[:q] = ne_[:q]
            m = q
    return True


@njit(cache=True)
def _sorted_runs(start):
    """Order of runs by start (identity when already sorted, as a queue's runs usually are)."""
    for i in range(1, start.shape[0]):
        if start[i] < start[i - 1]:
            return np.argsort(start, kind="mergesort")
    return np.arange(start.shape[0])


@njit(cache=True)
def _self_overlap(start, end, order):
    hi = _NEG
    for i in order:
        if start[i] < hi:
            return True
        hi = max(hi, end[i])
    return False


@njit(cache=True)
def _next_piece(order, start, end, split, i, n, bank):
    """From piece i on (piece 2j and 2j + 1 are the halves of run order[j] before and after
    its bank crossing): the first non-empty piece in `bank` as (i, start, end, found)."""
    while i < 2 * n:
        r = order[i // 2]
        if i % 2 == 0:
            s, e, bk = start[r], split[r, 1], split[r, 0]
        else:
            s, e, bk = split[r, 1], end[r], split[r, 2]
        if bk == bank and e > s:
            return i, s, e, True
        i += 1
    return i, 0, 0, False


@njit(cache=True)
def _mem_block(cols, a, b, words_per_bank, banks):
    """The port rules of one MEM slice, whose instructions are cols[:, a:b] (one queue)."""
    nr = 0
    nw = 0
    for k in range(a, b):
        o = cols[_OP, k]
        if o == _RD or o == _GA:
            nr += 1
        elif o == _WR or o == _SC:
            nw += 1
    # per run: start, end, and its split at the first bank crossing (a run of plain reads or
    # writes crosses at most one bank boundary: count * stride <= words per bank)
    rs = np.empty(nr, np.int64)
    re = np.empty(nr, np.int64)
    rb = np.empty((nr, 3), np.int64)  # first bank, cycle the second starts, second bank
    ws = np.empty(nw, np.int64)
    we = np.empty(nw, np.int64)
    wb = np.empty((nw, 3), np.int64)
    i = 0
    j = 0
    for k in range(a, b):
        o = cols[_OP, k]
        is_r = o == _RD or o == _GA
        if not (is_r or o == _WR or o == _SC):
            continue
        cnt = cols[_COUNT, k]
        t0 = cols[_T0, k] + (0 if is_r else cols[_LAT, k])
        a0 = cols[_ADDR, k]
        s_ = cols[_STRIDE, k]
        a1 = a0 + (cnt - 1) * s_ if (o == _RD or o == _WR) else a0
        b0 = a0 // words_per_bank
        b1 = a1 // words_per_bank
        if b0 == b1:
            first_b1 = cnt
        elif s_ > 0:
            first_b1 = -((a0 - b1 * words_per_bank) // s_)  # ceil((B - a0) / s)
        else:
            first_b1 = (b0 * words_per_bank - a0) // s_ + 1
        first_b1 = min(max(first_b1, 0), cnt)
        if is_r:
            rs[i], re[i] = t0, t0 + cnt
            rb[i, 0], rb[i, 1], rb[i, 2] = b0, t0 + first_b1, b1
            i += 1
        else:
            ws[j], we[j] = t0, t0 + cnt
            wb[j, 0], wb[j, 1], wb[j, 2] = b0, t0 + first_b1, b1
            j += 1
    ro = _sorted_runs(rs)
    wo = _sorted_runs(ws)
    if _self_overlap(rs, re, ro) or _self_overlap(ws, we, wo):
        return False  # two reads, or two writes, of the slice in one cycle
    if nr == 0 or nw == 0:
        return True
    # a read and a write of one bank in one cycle: per bank, sweep both lists by start
    for bank in range(banks):
        ir = 0
        iw = 0
        hi_r = _NEG
        hi_w = _NEG
        while ir < 2 * nr or iw < 2 * nw:
            # the next piece (half of a run) of each list that lies in this bank
            ir, sr, er, has_r = _next_piece(ro, rs, re, rb, ir, nr, bank)
            iw, sw, ew, has_w = _next_piece(wo, ws, we, wb, iw, nw, bank)
            if not has_r and not has_w:
                break
            if has_r and (not has_w or sr <= sw):
                if sr < hi_w:
                    return False
                hi_r = max(hi_r, er)
                ir += 1
            else:
                if sw < hi_r:
                    return False
                hi_w = max(hi_w, ew)
                iw += 1
    return True


@njit(cache=True)
def _mem_clean(cols, words_per_bank, banks):
    """One read and one write per slice per cycle, and never a read and a write of one bank in
    one cycle. A slice's instructions are those of its queue: one contiguous block of `cols`
    (the decoded matrix is grouped by chip and queue)."""
    N = cols.shape[1]
    a = 0
    while a < N:
        b = a + 1
        while b < N and cols[_QID, b] == cols[_QID, a] and cols[_CHIP, b] == cols[_CHIP, a]:
            b += 1
        o = cols[_OP, a]
        if o == _RD or o == _GA or o == _WR or o == _SC or cols[_UNIT, a] == _MEM_UNIT:
            if not _mem_block(cols, a, b, words_per_bank, banks):
                return False
        a = b
    return True


@njit(cache=True)
def _alus_clean(cols, alus, nchips):
    """No VXM ALU is used by two instructions in one cycle (a chain holds nops ALUs)."""
    N = cols.shape[1]
    m = 0
    for k in range(N):
        m += cols[_NOPS, k]
    if m < 2:
        return True
    key = np.empty(m, np.int64)
    start = np.empty(m, np.int64)
    end = np.empty(m, np.int64)
    i = 0
    for k in range(N):
        for j in range(cols[_NOPS, k]):
            key[i] = cols[_CHIP, k] * alus + cols[_UIDX, k] + j
            start[i] = cols[_T0, k]
            end[i] = cols[_T0, k] + cols[_COUNT, k]
            i += 1
    return not _overlaps(key, start, end, nchips * alus)


def timing_clean(dec: Decoded, arch) -> bool:
    """True if the program has no timing hazard (see the module docstring)."""
    cols = dec.raw  # the rules do not depend on the order of instructions
    if cols.shape[1] == 0:
        return True
    if not _streams_clean(cols, arch.streams_per_direction, arch.num_positions, dec.nchips):
        return False
    if not _mem_clean(cols, arch.mem_words_per_bank, arch.mem_banks_per_slice):
        return False
    if not _alus_clean(cols, arch.vxm_alus, dec.nchips):
        return False
    # MXM state: the event kernel on the MXM instructions alone, without streams
    op = cols[_OP]
    mx = (op == _MXM_OPS[0]) | (op == _MXM_OPS[1]) | (op == _MXM_OPS[2]) | (op == _MXM_OPS[3])
    if mx.any():
        from lpusim.simulator import run_mxm_only

        if not run_mxm_only(dec, arch, mx):
            return False
    return True
