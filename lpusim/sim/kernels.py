"""Numba kernels: the fast path of the simulator. Arrays and scalars only.

`run_kernel` follows the same event order and the same rules as lpusim/sim/reference.py (read
that first: it is the definition). Events live in a calendar of `ring` buckets per phase;
each bucket is sorted by (instruction, vector) before it runs, which gives exactly the
reference's (cycle, phase, instruction, vector) order.

The timing checks (streams, ports, ALUs, MXM state) are written inline in the event loop, on
the stream specs that decode worked out per instruction; only value computation (functional
mode) calls out, where 320 lanes of work pay for the call.

The status array returned describes a hazard, if one stopped the run:
status[0] hazard code (opcodes.HAZARDS), [1] instruction k, [2] cycle, [3] stream direction,
[4] stream, [5] detail (slice, ALU, accumulator, tile or bank).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from isa.table import CHAIN_CVT
from lpusim.sim import numerics as nm
from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C

_OP, _CHIP, _POS, _UIDX, _T0, _COUNT, _IV, _LAT = (C["op"], C["chip"], C["pos"], C["uidx"],
                                                   C["t0"], C["count"], C["interval"], C["lat"])
_DT, _DT2, _ADDR, _STRIDE, _IMM, _AUX = (C["dtype"], C["dtype2"], C["addr"], C["stride"],
                                         C["imm"], C["aux"])
_FLAG, _OPS, _LBASE, _NOPS, _GIN, _GOUT = (C["flag"], C["ops"], C["link_base"], C["nops"],
                                           C["g_in"], C["g_out"])
_R1D, _R1S, _R1N, _R1K = C["r1_dir"], C["r1_s"], C["r1_n"], C["r1_step"]
_R2D, _R2S, _R2N = C["r2_dir"], C["r2_s"], C["r2_n"]
_BDT = C["b_dt"]
_WD, _WS, _WN, _WK = C["w_dir"], C["w_s"], C["w_n"], C["w_step"]

MEM_READ, MEM_WRITE, MEM_GATHER, MEM_SCATTER = (oc.OP_MEM_READ, oc.OP_MEM_WRITE,
                                                oc.OP_MEM_GATHER, oc.OP_MEM_SCATTER)
MXM_LW, MXM_IW, MXM_ABC, MXM_ACC = oc.OP_MXM_LW, oc.OP_MXM_IW, oc.OP_MXM_ABC, oc.OP_MXM_ACC
SXM_SHIFT, SXM_ROTATE, SXM_PERMUTE, SXM_DISTRIBUTE, SXM_TRANSPOSE = (
    oc.OP_SXM_SHIFT, oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE, oc.OP_SXM_DISTRIBUTE,
    oc.OP_SXM_TRANSPOSE)
C2C_SEND, C2C_RECV, C2C_DESKEW = oc.OP_C2C_SEND, oc.OP_C2C_RECV, oc.OP_C2C_DESKEW
VXM_CVT, VXM_CHAIN, VXM_BASE = oc.OP_VXM_CVT, oc.OP_VXM_CHAIN, oc.VXM_ALU_BASE
DT_INT32, DT_FP32 = oc.DT_INT32, oc.DT_FP32
HZ_STREAM_CONFLICT, HZ_STREAM_EMPTY, HZ_MEM_PORT, HZ_SRAM_BOUNDS = (
    oc.HZ["stream-conflict"], oc.HZ["stream-empty"], oc.HZ["mem-port"], oc.HZ["sram-bounds"])
HZ_MXM_UNLOADED, HZ_MXM_DTYPE, HZ_ACC_CONFLICT, HZ_ALU_BUSY = (
    oc.HZ["mxm-unloaded"], oc.HZ["mxm-dtype"], oc.HZ["mxm-acc-conflict"], oc.HZ["alu-busy"])
HZ_INSTALL_BUSY = oc.HZ["mxm-install-busy"]
R2_ROW = 16  # rows of the read scratch where the second stream group lands


@njit(cache=True)
def _is_float(dt):
    return dt >= 3


@njit(cache=True)
def _no_out(op):
    return op == MXM_LW or op == C2C_SEND or op == C2C_DESKEW


@njit(cache=True)
def _hz(status, code, k, t, d, s, detail):
    status[0] = code
    status[1] = k
    status[2] = t
    status[3] = d
    status[4] = s
    status[5] = detail


@njit(cache=True)
def _sort_bucket(keys, slots, n):
    # insertion sort, carrying slots along: buckets are short and nearly sorted
    for a in range(1, n):
        v = keys[a]
        w = slots[a]
        b = a - 1
        while b >= 0 and keys[b] > v:
            keys[b + 1] = keys[b]
            slots[b + 1] = slots[b]
            b -= 1
        keys[b + 1] = v
        slots[b + 1] = w


@njit(cache=True)
def run_kernel(cols, maps, sram, functional, lanes, lps, num_positions, nslices, nwords,
               words_per_bank, nstreams, planes, rows, accv, nalus, link_vectors, ring, pool,
               trace_rows, do_trace, check_streams):
    N = cols.shape[1]
    nchips = maps.shape[0]
    F = functional
    status = np.zeros(8, np.int64)
    ring_s = 1
    while ring_s < num_positions + 2:
        ring_s *= 2
    rmask = ring_s - 1
    # stream state: diagonal tag and writer position per (chip, direction, stream, diagonal)
    stag = np.full((nchips, 2, nstreams, ring_s), -(1 << 62), np.int64)
    spos = np.zeros((nchips, 2, nstreams, ring_s), np.int64)
    sdata = np.zeros((nchips if F else 1, 2, nstreams if F else 1, ring_s if F else 1,
                      lanes), np.uint8)
    rport_t = np.full((nchips, nslices), -1, np.int64)
    rport_banks = np.zeros((nchips, nslices), np.int64)  # bit mask
    wport_t = np.full((nchips, nslices), -1, np.int64)
    alu_t = np.full((nchips, nalus), -1, np.int64)
    buf_dtype = np.full((nchips, planes), -1, np.int64)
    buf_loaded = np.zeros((nchips, planes), np.bool_)
    pend_dtype = np.full((nchips, planes), -1, np.int64)
    iw_done = np.full((nchips, planes), -1, np.int64)  # cycle the last install reaches the array
    arr_dtype = np.full((nchips, planes), -1, np.int64)
    acc_kind = np.full((nchips, planes, accv), -1, np.int64)
    acc_wt = np.full((nchips, planes, accv), -1, np.int64)
    mc = nchips if F else 1
    mp = planes if F else 1
    buffer = np.zeros((mc, mp, rows if F else 1, lanes))
    pending = np.zeros_like(buffer)
    array = np.zeros_like(buffer)
    acc = np.zeros((mc, mp, accv if F else 1, lanes))
    link = np.zeros((max(link_vectors, 1) if F else 1, 4, lanes), np.uint8)
    nslot = pool if F else 1
    slot_b = np.zeros((nslot, 16, lanes), np.uint8)
    slot_f = np.zeros((nslot, lanes))
    free_slots = np.arange(nslot)[::-1].copy()
    nfree = nslot
    ev_key = np.zeros(pool, np.int64)  # k << 20 | i
    ev_slot = np.zeros(pool, np.int64)
    ev_next = np.full(pool, -1, np.int64)
    free_ev = np.arange(pool)[::-1].copy()
    nfree_ev = pool
    head = np.full((2, ring), -1, np.int64)
    bkeys = np.zeros(pool, np.int64)
    bslot = np.zeros(pool, np.int64)
    tmp = np.zeros((R2_ROW + 4, lanes), np.uint8)
    scratch_f = np.zeros((6, lanes), np.float32)
    scratch_i = np.zeros((6, lanes), np.int64)
    xv = np.zeros(lanes)
    addrs = np.zeros(lanes // lps, np.int64)
    ntrace = 0
    pending_ev = 0
    nk = 0
    t = cols[_T0, 0] if N > 0 else 0
    while nk < N or pending_ev > 0:
        if pending_ev == 0 and cols[_T0, nk] > t:
            t = cols[_T0, nk]
        b = t & (ring - 1)
        for phase in range(2):
            n = 0
            e = head[phase, b]
            while e >= 0:
                bkeys[n] = ev_key[e]
                bslot[n] = ev_slot[e]
                n += 1
                nxt = ev_next[e]
                free_ev[nfree_ev] = e
                nfree_ev += 1
                e = nxt
                pending_ev -= 1
            head[phase, b] = -1
            if phase == 0:
                while nk < N and cols[_T0, nk] == t:
                    bkeys[n] = nk << 20
                    bslot[n] = -1
                    n += 1
                    nk += 1
            if n > 1:
                _sort_bucket(bkeys, bslot, n)
            for a in range(n):
                k = bkeys[a] >> 20
                i = bkeys[a] & ((1 << 20) - 1)
                if do_trace:
                    trace_rows[ntrace, 0] = t
                    trace_rows[ntrace, 1] = phase
                    trace_rows[ntrace, 2] = k
                    trace_rows[ntrace, 3] = i
                    ntrace += 1
                op = cols[_OP, k]
                chip = cols[_CHIP, k]
                pos = cols[_POS, k]
                u = cols[_UIDX, k]
                if phase == 0:
                    # --- reads: streams (generic), then the unit's own rules
                    for grp in range(2 if check_streams else 0):
                        if grp == 0:
                            d, s0, ns, step, row0 = (cols[_R1D, k], cols[_R1S, k], cols[_R1N, k],
                                                     cols[_R1K, k], 0)
                        else:
                            d, s0, ns, step, row0 = (cols[_R2D, k], cols[_R2S, k], cols[_R2N, k],
                                                     1, R2_ROW)
                        dg = t - pos if d == 0 else t + pos
                        r = dg & rmask
                        for j in range(ns):
                            s = s0 + j * step
                            if stag[chip, d, s, r] != dg:
                                _hz(status, HZ_STREAM_EMPTY, k, t, d, s, 0)
                                return status, ntrace
                            if F:
                                tmp[row0 + j] = sdata[chip, d, s, r]
                    if op == MEM_READ or op == MEM_GATHER:
                        if op == MEM_READ:
                            banks = 1 << ((cols[_ADDR, k] + i * cols[_STRIDE, k])
                                          // words_per_bank)
                        elif F:
                            banks = _gather_banks(cols[_ADDR, k], tmp, lps, nwords,
                                                  words_per_bank, addrs)
                            if banks < 0:
                                _hz(status, HZ_SRAM_BOUNDS, k, t, -1, -1, -banks - 1)
                                return status, ntrace
                        else:
                            banks = 1 << (cols[_ADDR, k] // words_per_bank)
                        if rport_t[chip, u] == t:
                            _hz(status, HZ_MEM_PORT, k, t, -1, -1, u)
                            return status, ntrace
                        rport_t[chip, u] = t
                        rport_banks[chip, u] = banks
                    elif op >= VXM_BASE or op == VXM_CHAIN or op == VXM_CVT:
                        for alu in range(u, u + max(cols[_NOPS, k], 1)):
                            if alu_t[chip, alu] == t:
                                _hz(status, HZ_ALU_BUSY, k, t, -1, -1, alu)
                                return status, ntrace
                            alu_t[chip, alu] = t
                    elif op == MXM_LW:
                        dt = cols[_DT, k]
                        if buf_loaded[chip, u] and buf_dtype[chip, u] != dt:
                            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, u)
                            return status, ntrace
                        buf_loaded[chip, u] = True
                        buf_dtype[chip, u] = dt
                    elif op == MXM_IW:
                        if not buf_loaded[chip, u]:
                            _hz(status, HZ_MXM_UNLOADED, k, t, -1, -1, u)
                            return status, ntrace
                        if t <= iw_done[chip, u]:
                            _hz(status, HZ_INSTALL_BUSY, k, t, -1, -1, u)
                            return status, ntrace
                        iw_done[chip, u] = t + cols[_LAT, k]
                        buf_loaded[chip, u] = False
                        pend_dtype[chip, u] = buf_dtype[chip, u]
                    elif op == MXM_ABC:
                        if arr_dtype[chip, u] < 0:
                            _hz(status, HZ_MXM_UNLOADED, k, t, -1, -1, u)
                            return status, ntrace
                        if arr_dtype[chip, u] != cols[_DT, k]:
                            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, u)
                            return status, ntrace
                    elif op == MXM_ACC:
                        ac = cols[_ADDR, k] + i
                        want = 0 if cols[_DT, k] == DT_INT32 else 1
                        if acc_kind[chip, u, ac] != want:
                            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, ac)
                            return status, ntrace
                    slot = -1
                    if F:
                        if not _no_out(op):
                            nfree -= 1
                            slot = free_slots[nfree]
                        _compute_in(cols, k, i, op, chip, u, tmp, slot, slot_b, slot_f, sram,
                                    maps, buffer, pending, array, acc, link, scratch_f,
                                    scratch_i, xv, addrs, lanes, lps)
                    # schedule the next vector and this vector's commit
                    if i + 1 < cols[_COUNT, k]:
                        nfree_ev -= 1
                        e = free_ev[nfree_ev]
                        ev_key[e] = (k << 20) | (i + 1)
                        ev_slot[e] = -1
                        tb = (t + cols[_IV, k]) & (ring - 1)
                        ev_next[e] = head[0, tb]
                        head[0, tb] = e
                        pending_ev += 1
                    if not _no_out(op):
                        nfree_ev -= 1
                        e = free_ev[nfree_ev]
                        ev_key[e] = (k << 20) | i
                        ev_slot[e] = slot
                        tb = (t + cols[_LAT, k]) & (ring - 1)
                        ev_next[e] = head[1, tb]
                        head[1, tb] = e
                        pending_ev += 1
                else:
                    slot = bslot[a]
                    # --- commits: the unit's own rules, then streams (generic)
                    if op == MEM_WRITE or op == MEM_SCATTER:
                        if op == MEM_WRITE:
                            banks = 1 << ((cols[_ADDR, k] + i * cols[_STRIDE, k])
                                          // words_per_bank)
                        elif F:
                            banks = _gather_banks(cols[_ADDR, k], slot_b[slot, 1:3], lps,
                                                  nwords, words_per_bank, addrs)
                            if banks < 0:
                                _hz(status, HZ_SRAM_BOUNDS, k, t, -1, -1, -banks - 1)
                                return status, ntrace
                        else:
                            banks = 1 << (cols[_ADDR, k] // words_per_bank)
                        if wport_t[chip, u] == t or (rport_t[chip, u] == t
                                                     and (rport_banks[chip, u] & banks) != 0):
                            _hz(status, HZ_MEM_PORT, k, t, -1, -1, u)
                            return status, ntrace
                        wport_t[chip, u] = t
                    elif op == MXM_IW:
                        arr_dtype[chip, u] = pend_dtype[chip, u]
                    elif op == MXM_ABC:
                        ac = cols[_ADDR, k] + i
                        if acc_wt[chip, u, ac] == t:
                            _hz(status, HZ_ACC_CONFLICT, k, t, -1, -1, ac)
                            return status, ntrace
                        acc_wt[chip, u, ac] = t
                        kind = 1 if _is_float(cols[_DT, k]) else 0
                        if cols[_FLAG, k] == 1 and acc_kind[chip, u, ac] != kind:
                            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, ac)
                            return status, ntrace
                        acc_kind[chip, u, ac] = kind
                    ns = cols[_WN, k] if check_streams else 0
                    if ns > 0:
                        d = cols[_WD, k]
                        dg = t - pos if d == 0 else t + pos
                        r = dg & rmask
                        for j in range(ns):
                            s = cols[_WS, k] + j * cols[_WK, k]
                            if stag[chip, d, s, r] == dg and spos[chip, d, s, r] == pos:
                                _hz(status, HZ_STREAM_CONFLICT, k, t, d, s, 0)
                                return status, ntrace
                            stag[chip, d, s, r] = dg
                            spos[chip, d, s, r] = pos
                            if F:
                                sdata[chip, d, s, r] = slot_b[slot, j]
                    if F:
                        _compute_out(cols, k, i, op, chip, u, slot, slot_b, slot_f, sram,
                                     pending, array, acc, addrs, lanes, lps)
                        if slot >= 0:
                            free_slots[nfree] = slot
                            nfree += 1
        t += 1
    return status, ntrace


@njit(cache=True)
def _gather_banks(base, m, lps, nwords, words_per_bank, addrs):
    """Per-tile addresses from a uint16 map (lane 16k addresses tile k): their bank mask, or
    -(tile + 1) for the first tile whose address is outside the slice."""
    banks = 0
    for tile in range(addrs.shape[0]):
        lane = tile * lps
        a = base + (np.int64(m[0, lane]) | (np.int64(m[1, lane]) << 8))
        if a < 0 or a >= nwords:
            return -(tile + 1)
        addrs[tile] = a
        banks |= 1 << (a // words_per_bank)
    return banks


@njit(cache=True)
def _compute_in(cols, k, i, op, chip, u, tmp, slot, slot_b, slot_f, sram, maps, buffer,
                pending, array, acc, link, sf, si, xv, addrs, lanes, lps):
    """Functional mode: the values an event reads (tmp holds its input streams)."""
    gin = cols[_GIN, k]
    if op == MEM_READ:
        slot_b[slot, 0] = sram[chip, u, cols[_ADDR, k] + i * cols[_STRIDE, k]]
    elif op == MEM_GATHER:
        for tile in range(addrs.shape[0]):
            for j in range(lps):
                slot_b[slot, 0, tile * lps + j] = sram[chip, u, addrs[tile], tile * lps + j]
    elif op == MEM_WRITE:
        slot_b[slot, 0] = tmp[0]
    elif op == MEM_SCATTER:
        slot_b[slot, 0] = tmp[0]
        slot_b[slot, 1] = tmp[R2_ROW]
        slot_b[slot, 2] = tmp[R2_ROW + 1]
    elif op >= VXM_BASE or op == VXM_CHAIN or op == VXM_CVT:
        _vxm_compute(cols, k, op, tmp, sf[0], si[0], sf[1], si[1], sf[2], si[2],
                     slot_b[slot], lanes)
    elif op == MXM_LW:
        dt = cols[_DT, k]
        per = cols[_AUX, k] // gin
        for j in range(per):
            row = cols[_ADDR, k] + i * per + j
            nm.unpack(tmp[j * gin:(j + 1) * gin], dt, sf[0], si[0])
            if _is_float(dt):
                for lane in range(lanes):
                    buffer[chip, u, row, lane] = sf[0, lane]
            else:
                for lane in range(lanes):
                    buffer[chip, u, row, lane] = si[0, lane]
    elif op == MXM_IW:
        pending[chip, u] = buffer[chip, u]
    elif op == MXM_ABC:
        dt = cols[_DT, k]
        nm.unpack(tmp[:gin], dt, sf[0], si[0])
        if _is_float(dt):
            for r in range(lanes):
                xv[r] = sf[0, r]
        else:
            for r in range(lanes):
                xv[r] = si[0, r]
        out = slot_f[slot]
        out[:] = 0.0
        w = array[chip, u]
        # exact products summed in fp64 in input order, as the reference's cumsum
        for r in range(lanes):
            xr = xv[r]
            for j in range(lanes):
                out[j] = out[j] + xr * w[r, j]
        for j in range(lanes):
            if out[j] != out[j]:  # a NaN result is the canonical quiet NaN
                out[j] = np.nan
    elif op == MXM_ACC:
        v = acc[chip, u, cols[_ADDR, k] + i]
        if cols[_DT, k] == DT_INT32:
            for j in range(lanes):
                si[0, j] = np.int64(v[j])
            nm.pack(sf[0], si[0], DT_INT32, slot_b[slot, :4])
        else:
            for j in range(lanes):
                sf[0, j] = np.float32(v[j])
            nm.pack(sf[0], si[0], DT_FP32, slot_b[slot, :4])
    elif op == SXM_SHIFT or op == SXM_ROTATE or op == SXM_PERMUTE or op == SXM_DISTRIBUTE:
        out = slot_b[slot]
        imm = cols[_IMM, k]
        for lane in range(lanes):
            if op == SXM_SHIFT:
                srcl = lane - imm
                if srcl < 0 or srcl >= lanes:
                    srcl = -1
            elif op == SXM_ROTATE:
                srcl = (lane - imm) % lanes
            else:
                srcl = maps[chip, imm, lane]
            for j in range(gin):
                out[j, lane] = tmp[j, srcl] if srcl >= 0 else 0
    elif op == SXM_TRANSPOSE:
        out = slot_b[slot]
        for sl in range(lanes // lps):
            for a in range(lps):  # output stream a, lane 16*sl + b <- stream b, lane 16*sl + a
                for bb in range(lps):
                    out[a, sl * lps + bb] = tmp[bb, sl * lps + a]
    elif op == C2C_SEND:
        link[cols[_LBASE, k] + i, :gin] = tmp[:gin]
    elif op == C2C_RECV:
        g = cols[_GOUT, k]
        slot_b[slot, :g] = link[cols[_LBASE, k] + i, :g]


@njit(cache=True)
def _compute_out(cols, k, i, op, chip, u, slot, slot_b, slot_f, sram, pending, array, acc,
                 addrs, lanes, lps):
    """Functional mode: the values an event commits outside the streams."""
    if op == MEM_WRITE:
        sram[chip, u, cols[_ADDR, k] + i * cols[_STRIDE, k]] = slot_b[slot, 0]
    elif op == MEM_SCATTER:
        for tile in range(addrs.shape[0]):
            for j in range(lps):
                sram[chip, u, addrs[tile], tile * lps + j] = slot_b[slot, 0, tile * lps + j]
    elif op == MXM_IW:
        array[chip, u] = pending[chip, u]
    elif op == MXM_ABC:
        v = slot_f[slot]
        dst = acc[chip, u, cols[_ADDR, k] + i]
        accumulate = cols[_FLAG, k] == 1
        if not _is_float(cols[_DT, k]):
            for j in range(lanes):
                s = np.int64(v[j])
                if accumulate:
                    s += np.int64(dst[j])
                s = ((s + (1 << 31)) % (1 << 32)) - (1 << 31)
                dst[j] = s
        else:
            for j in range(lanes):
                r = np.float32(v[j])
                if accumulate:
                    r = np.float32(np.float32(dst[j]) + r)
                if r != r:
                    r = np.float32(np.nan)
                dst[j] = r


@njit(cache=True)
def _vxm_compute(cols, k, op, tmp, xf, xi, yf, yi, zf, zi, out, lanes):
    dt = cols[_DT, k]
    nm.unpack(tmp[:cols[_GIN, k]], dt, xf, xi)
    if op == VXM_CVT:
        dt2 = cols[_DT2, k]
        nm.convert(dt, dt2, xf, xi, zf, zi)
        nm.pack(zf, zi, dt2, out[:cols[_GOUT, k]])
        return
    bdt = cols[_BDT, k]  # B's type: a chain's binary links may follow its cvt link
    if cols[_R2N, k] > 0:
        nm.unpack(tmp[R2_ROW:R2_ROW + cols[_R2N, k]], bdt, yf, yi)
    else:  # immediate B operand: fp32 bits, or int32 wrapped to the element width
        bits = np.int64(cols[_IMM, k]) & 0xFFFFFFFF
        fb = np.zeros(1, np.uint32)
        fb[0] = np.uint32(bits)
        fval = fb.view(np.float32)[0]
        ival = bits - (1 << 32) if bits >= (1 << 31) else bits
        if not _is_float(bdt):
            width = 8 if bdt == 0 else (16 if bdt == 1 else 32)
            half = np.int64(1) << (width - 1)
            ival = ((ival + half) % (half * 2)) - half
        for lane in range(lanes):
            yf[lane] = fval
            yi[lane] = ival
    if op >= VXM_BASE:
        nm.alu(op - VXM_BASE, dt, xf, xi, yf, yi, zf, zi)
    else:
        for sl in range(4):
            c = (cols[_OPS, k] >> (6 * sl)) & 63
            if c == 0:
                break
            if sl > 0:
                for lane in range(lanes):
                    xf[lane] = zf[lane]
                    xi[lane] = zi[lane]
            if c == CHAIN_CVT:  # to dtype2, rounded to it (through its stream bytes)
                dt2 = cols[_DT2, k]
                nm.convert(dt, dt2, xf, xi, zf, zi)
                nm.pack(zf, zi, dt2, out[:cols[_GOUT, k]])
                nm.unpack(out[:cols[_GOUT, k]], dt2, zf, zi)
                dt = dt2
            else:
                nm.alu(c, dt, xf, xi, yf, yi, zf, zi)
    nm.pack(zf, zi, dt, out[:cols[_GOUT, k]])
