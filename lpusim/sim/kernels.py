"""Numba kernels: the fast path of the simulator. Arrays and scalars only.

`run_kernel` follows the same event order and the same rules as lpusim/sim/reference.py (read
that first: it is the definition). Events live in a calendar of `ring` buckets per phase;
each bucket is sorted by (instruction, vector) before it runs, which gives exactly the
reference's (cycle, phase, instruction, vector) order.

The status array returned describes a hazard, if one stopped the run:
status[0] hazard code (opcodes.HAZARDS), [1] instruction k, [2] cycle, [3] stream direction,
[4] stream, [5] detail (slice, ALU, accumulator, tile or bank).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lpusim.sim import numerics as nm
from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C

# column indices as plain ints for the kernel
_OP, _CHIP, _POS, _UIDX, _T0, _COUNT, _IV, _LAT = (C["op"], C["chip"], C["pos"], C["uidx"],
                                                   C["t0"], C["count"], C["interval"], C["lat"])
_DT, _DT2, _DST, _DSTD, _SRC, _SRCD = (C["dtype"], C["dtype2"], C["dst"], C["dst_dir"], C["src"],
                                       C["src_dir"])
_SRC2, _SRC2D, _ADDR, _STRIDE, _IMM, _AUX = (C["src2"], C["src2_dir"], C["addr"], C["stride"],
                                             C["imm"], C["aux"])
_FLAG, _OPS, _LBASE, _NOPS, _GIN, _GOUT = (C["flag"], C["ops"], C["link_base"], C["nops"],
                                           C["g_in"], C["g_out"])

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


@njit(cache=True)
def _is_float(dt):
    return dt >= 3


@njit(cache=True)
def _no_out(op):
    return op == MXM_LW or op == C2C_SEND or op == C2C_DESKEW


@njit(cache=True)
def _is_vxm(op):
    return op >= VXM_BASE or op == VXM_CHAIN or op == VXM_CVT


@njit(cache=True)
def _diag(d, pos, t):
    return t - pos if d == 0 else t + pos


@njit(cache=True)
def _alu_arity(code):
    # binary ALU ops have codes 16 and above (isa.table.ALU_OPS)
    return 2 if code >= 16 else 1


@njit(cache=True)
def _hz(status, code, k, t, d, s, detail):
    status[0] = code
    status[1] = k
    status[2] = t
    status[3] = d
    status[4] = s
    status[5] = detail


@njit(cache=True)
def _read_stream(stag, sdata, functional, chip, d, s, pos, t, ring_s, out_row, status, k):
    dg = _diag(d, pos, t)
    r = dg & (ring_s - 1)
    if stag[chip, d, s, r] != dg:
        _hz(status, HZ_STREAM_EMPTY, k, t, d, s, 0)
        return False
    if functional:
        out_row[:] = sdata[chip, d, s, r]
    return True


@njit(cache=True)
def _write_stream(stag, spos, sdata, functional, chip, d, s, pos, t, ring_s, row, status, k):
    dg = _diag(d, pos, t)
    r = dg & (ring_s - 1)
    if stag[chip, d, s, r] == dg and spos[chip, d, s, r] == pos:
        _hz(status, HZ_STREAM_CONFLICT, k, t, d, s, 0)
        return False
    stag[chip, d, s, r] = dg
    spos[chip, d, s, r] = pos
    if functional:
        sdata[chip, d, s, r] = row
    return True


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
               words_per_bank,
               nstreams, planes, rows, accv, nalus, link_vectors, ring, pool, trace_rows,
               do_trace):
    N = cols.shape[0]
    nchips = maps.shape[0]
    status = np.zeros(8, np.int64)
    ring_s = 1
    while ring_s < num_positions + 2:
        ring_s *= 2
    # stream state: diagonal tag, writer position, data
    stag = np.full((nchips, 2, nstreams, ring_s), -(1 << 62), np.int64)
    spos = np.zeros((nchips, 2, nstreams, ring_s), np.int64)
    F = functional
    sdata = np.zeros((nchips if F else 1, 2, nstreams if F else 1, ring_s if F else 1,
                      lanes), np.uint8)
    # unit state
    rport_t = np.full((nchips, nslices), -1, np.int64)
    rport_banks = np.zeros((nchips, nslices), np.int64)  # bit mask
    wport_t = np.full((nchips, nslices), -1, np.int64)
    alu_t = np.full((nchips, nalus), -1, np.int64)
    buf_dtype = np.full((nchips, planes), -1, np.int64)
    buf_loaded = np.zeros((nchips, planes), np.bool_)
    pend_dtype = np.full((nchips, planes), -1, np.int64)
    arr_dtype = np.full((nchips, planes), -1, np.int64)
    acc_kind = np.full((nchips, planes, accv), -1, np.int64)
    acc_wt = np.full((nchips, planes, accv), -1, np.int64)
    mf = planes if F else 1
    buffer = np.zeros((nchips if F else 1, mf, rows if F else 1, lanes))
    pending = np.zeros_like(buffer)
    array = np.zeros_like(buffer)
    acc = np.zeros((nchips if F else 1, mf, accv if F else 1, lanes))
    link = np.zeros((max(link_vectors, 1) if F else 1, 4, lanes), np.uint8)
    # in-flight data slots and the event calendar
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
    slot_of = np.zeros(pool, np.int64)
    # scratch vectors
    xf = np.zeros(lanes, np.float32)
    xi = np.zeros(lanes, np.int64)
    yf = np.zeros(lanes, np.float32)
    yi = np.zeros(lanes, np.int64)
    zf = np.zeros(lanes, np.float32)
    zi = np.zeros(lanes, np.int64)
    tmp = np.zeros((16, lanes), np.uint8)
    tmp2 = np.zeros((4, lanes), np.uint8)
    xv = np.zeros(lanes)
    addrs = np.zeros(lanes // lps, np.int64)
    ntrace = 0
    pending_ev = 0
    nk = 0
    t = cols[0, _T0] if N > 0 else 0
    while nk < N or pending_ev > 0:
        if pending_ev == 0 and cols[nk, _T0] > t:
            t = cols[nk, _T0]
        b = t & (ring - 1)
        for phase in range(2):
            # collect this bucket (and, in phase 0, the instructions that issue now)
            n = 0
            e = head[phase, b]
            while e >= 0:
                bkeys[n] = ev_key[e]
                slot_of[n] = e
                n += 1
                nxt = ev_next[e]
                free_ev[nfree_ev] = e
                nfree_ev += 1
                e = nxt
                pending_ev -= 1
            head[phase, b] = -1
            if phase == 0:
                while nk < N and cols[nk, _T0] == t:
                    bkeys[n] = nk << 20
                    slot_of[n] = -1
                    n += 1
                    nk += 1
            # remember each event's slot before sorting by key
            for a in range(n):
                bslot[a] = ev_slot[slot_of[a]] if slot_of[a] >= 0 else -1
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
                op = cols[k, _OP]
                chip = cols[k, _CHIP]
                pos = cols[k, _POS]
                u = cols[k, _UIDX]
                if phase == 0:
                    slot = -1
                    if F and not _no_out(op):
                        nfree -= 1
                        slot = free_slots[nfree]
                    ok = _phase_in(cols, k, i, t, op, chip, pos, u, slot, slot_b, slot_f, stag,
                                   sdata, F, ring_s, sram, nwords, words_per_bank, lps, rport_t,
                                   rport_banks, alu_t, buf_dtype, buf_loaded, pend_dtype,
                                   arr_dtype, acc_kind, buffer, pending, array, acc, link, maps,
                                   status, xf, xi, yf, yi, zf, zi, tmp, tmp2, xv, addrs, lanes)
                    if not ok:
                        return status, ntrace
                    # schedule the next vector and this vector's commit
                    if i + 1 < cols[k, _COUNT]:
                        nfree_ev -= 1
                        e = free_ev[nfree_ev]
                        ev_key[e] = (k << 20) | (i + 1)
                        ev_slot[e] = -1
                        tb = (t + cols[k, _IV]) & (ring - 1)
                        ev_next[e] = head[0, tb]
                        head[0, tb] = e
                        pending_ev += 1
                    if not _no_out(op):
                        nfree_ev -= 1
                        e = free_ev[nfree_ev]
                        ev_key[e] = (k << 20) | i
                        ev_slot[e] = slot
                        tb = (t + cols[k, _LAT]) & (ring - 1)
                        ev_next[e] = head[1, tb]
                        head[1, tb] = e
                        pending_ev += 1
                else:
                    slot = bslot[a]
                    ok = _phase_out(cols, k, i, t, op, chip, pos, u, slot, slot_b, slot_f, stag,
                                    spos, sdata, F, ring_s, sram, nwords, words_per_bank, lps,
                                    rport_t, rport_banks, wport_t, pend_dtype, arr_dtype,
                                    acc_kind, acc_wt, pending, array, acc, status, addrs,
                                    lanes)
                    if not ok:
                        return status, ntrace
                    if F and slot >= 0:
                        free_slots[nfree] = slot
                        nfree += 1
        t += 1
    return status, ntrace


@njit(cache=True)
def _read_group(stag, sdata, F, chip, d, s0, g, pos, t, ring_s, out, status, k):
    for j in range(g):
        if not _read_stream(stag, sdata, F, chip, d, s0 + j, pos, t, ring_s, out[j], status, k):
            return False
    return True


@njit(cache=True)
def _tile_addrs(base, m, lps, words_n, addrs, status, k, t):
    ntiles = addrs.shape[0]
    for tile in range(ntiles):
        lane = tile * lps
        a = base + (np.int64(m[0, lane]) | (np.int64(m[1, lane]) << 8))
        if a < 0 or a >= words_n:
            _hz(status, HZ_SRAM_BOUNDS, k, t, -1, -1, tile)
            return False
        addrs[tile] = a
    return True


@njit(cache=True)
def _phase_in(cols, k, i, t, op, chip, pos, u, slot, slot_b, slot_f, stag, sdata, F, ring_s,
              sram, nwords, words_per_bank, lps, rport_t, rport_banks, alu_t, buf_dtype,
              buf_loaded, pend_dtype, arr_dtype, acc_kind, buffer, pending, array, acc, link,
              maps, status, xf, xi, yf, yi, zf, zi, tmp, tmp2, xv, addrs, lanes):
    gin = cols[k, _GIN]
    if op == MEM_READ or op == MEM_GATHER:
        banks = 0
        if op == MEM_READ:
            a = cols[k, _ADDR] + i * cols[k, _STRIDE]
            banks = 1 << (a // words_per_bank)
            if F:
                slot_b[slot, 0] = sram[chip, u, a]
        else:
            if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], 2, pos, t,
                               ring_s, tmp, status, k):
                return False
            if F:
                ntiles = lanes // lps
                if not _tile_addrs(cols[k, _ADDR], tmp, lps, nwords, addrs, status, k,
                                   t):
                    return False
                for tile in range(ntiles):
                    banks |= 1 << (addrs[tile] // words_per_bank)
                    for j in range(lps):
                        slot_b[slot, 0, tile * lps + j] = sram[chip, u, addrs[tile],
                                                               tile * lps + j]
            else:
                banks = 1 << (cols[k, _ADDR] // words_per_bank)
        if rport_t[chip, u] == t:
            _hz(status, HZ_MEM_PORT, k, t, -1, -1, u)
            return False
        rport_t[chip, u] = t
        rport_banks[chip, u] = banks
        return True
    if op == MEM_WRITE:
        return _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], 1, pos, t,
                           ring_s, slot_b[max(slot, 0)], status, k)
    if op == MEM_SCATTER:
        sb = slot_b[max(slot, 0)]
        if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], 1, pos, t,
                           ring_s, sb, status, k):
            return False
        return _read_group(stag, sdata, F, chip, cols[k, _SRC2D], cols[k, _SRC2], 2, pos, t,
                           ring_s, sb[1:3], status, k)
    if _is_vxm(op):
        nops = max(cols[k, _NOPS], 1)
        for alu in range(u, u + nops):
            if alu_t[chip, alu] == t:
                _hz(status, HZ_ALU_BUSY, k, t, -1, -1, alu)
                return False
            alu_t[chip, alu] = t
        if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], gin, pos, t,
                           ring_s, tmp, status, k):
            return False
        binary = False
        if op >= VXM_BASE:
            binary = _alu_arity(op - VXM_BASE) == 2
        elif op == VXM_CHAIN:
            for sl in range(4):
                c = (cols[k, _OPS] >> (6 * sl)) & 63
                if c != 0 and _alu_arity(c) == 2:
                    binary = True
        if binary and cols[k, _FLAG] == 0:
            if not _read_group(stag, sdata, F, chip, cols[k, _SRC2D], cols[k, _SRC2], gin, pos,
                               t, ring_s, tmp[4:8], status, k):
                return False
        if F:
            _vxm_compute(cols, k, op, tmp, binary, xf, xi, yf, yi, zf, zi, slot_b[slot], lanes)
        return True
    if op == MXM_LW:
        dt = cols[k, _DT]
        ns = cols[k, _AUX]
        if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], ns, pos, t,
                           ring_s, tmp, status, k):
            return False
        if buf_loaded[chip, u] and buf_dtype[chip, u] != dt:
            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, u)
            return False
        buf_loaded[chip, u] = True
        buf_dtype[chip, u] = dt
        if F:
            g = gin
            per = ns // g
            for j in range(per):
                row = cols[k, _ADDR] + i * per + j
                nm.unpack(tmp[j * g:(j + 1) * g], dt, xf, xi)
                if _is_float(dt):
                    for lane in range(lanes):
                        buffer[chip, u, row, lane] = xf[lane]
                else:
                    for lane in range(lanes):
                        buffer[chip, u, row, lane] = xi[lane]
        return True
    if op == MXM_IW:
        if not buf_loaded[chip, u]:
            _hz(status, HZ_MXM_UNLOADED, k, t, -1, -1, u)
            return False
        buf_loaded[chip, u] = False
        if F:
            pending[chip, u] = buffer[chip, u]
        pend_dtype[chip, u] = buf_dtype[chip, u]
        return True
    if op == MXM_ABC:
        dt = cols[k, _DT]
        if arr_dtype[chip, u] < 0:
            _hz(status, HZ_MXM_UNLOADED, k, t, -1, -1, u)
            return False
        if arr_dtype[chip, u] != dt:
            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, u)
            return False
        if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], gin, pos, t,
                           ring_s, tmp, status, k):
            return False
        if F:
            nm.unpack(tmp[:gin], dt, xf, xi)
            if _is_float(dt):
                for r in range(lanes):
                    xv[r] = xf[r]
            else:
                for r in range(lanes):
                    xv[r] = xi[r]
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
        return True
    if op == MXM_ACC:
        a = cols[k, _ADDR] + i
        want = 0 if cols[k, _DT] == DT_INT32 else 1
        if acc_kind[chip, u, a] != want:
            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, a)
            return False
        if F:
            v = acc[chip, u, a]
            if want == 0:
                for j in range(lanes):
                    zi[j] = np.int64(v[j])
                nm.pack(zf, zi, DT_INT32, slot_b[slot, :4])
            else:
                for j in range(lanes):
                    zf[j] = np.float32(v[j])
                nm.pack(zf, zi, DT_FP32, slot_b[slot, :4])
        return True
    if op == SXM_SHIFT or op == SXM_ROTATE or op == SXM_PERMUTE or op == SXM_DISTRIBUTE:
        if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], gin, pos, t,
                           ring_s, tmp, status, k):
            return False
        if F:
            out = slot_b[slot]
            imm = cols[k, _IMM]
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
        return True
    if op == SXM_TRANSPOSE:
        step = cols[k, _AUX]
        for j in range(16):
            if not _read_stream(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC] + j * step,
                                pos, t, ring_s, tmp[j], status, k):
                return False
        if F:
            out = slot_b[slot]
            for sl in range(lanes // lps):
                for a in range(lps):  # output stream a, lane 16*sl + b <- stream b, lane 16*sl + a
                    for bb in range(lps):
                        out[a, sl * lps + bb] = tmp[bb, sl * lps + a]
        return True
    if op == C2C_SEND:
        g = gin
        if not _read_group(stag, sdata, F, chip, cols[k, _SRCD], cols[k, _SRC], g, pos, t,
                           ring_s, tmp, status, k):
            return False
        if F:
            link[cols[k, _LBASE] + i, :g] = tmp[:g]
        return True
    if op == C2C_RECV:
        if F:
            g = cols[k, _GOUT]
            slot_b[slot, :g] = link[cols[k, _LBASE] + i, :g]
        return True
    return True  # deskew


@njit(cache=True)
def _vxm_compute(cols, k, op, tmp, binary, xf, xi, yf, yi, zf, zi, out, lanes):
    dt = cols[k, _DT]
    nm.unpack(tmp[:cols[k, _GIN]], dt, xf, xi)
    if op == VXM_CVT:
        dt2 = cols[k, _DT2]
        nm.convert(dt, dt2, xf, xi, zf, zi)
        nm.pack(zf, zi, dt2, out[:cols[k, _GOUT]])
        return
    if binary and cols[k, _FLAG] == 0:
        nm.unpack(tmp[4:4 + cols[k, _GIN]], dt, yf, yi)
    else:
        bits = cols[k, _IMM] & 0xFFFFFFFF
        fb = np.zeros(1, np.uint32)
        fb[0] = np.uint32(bits)
        fval = fb.view(np.float32)[0]
        ival = bits - (1 << 32) if bits >= (1 << 31) else bits
        if not _is_float(dt):
            width = 8 if dt == 0 else (16 if dt == 1 else 32)
            half = np.int64(1) << (width - 1)
            ival = ((ival + half) % (half * 2)) - half
        for lane in range(lanes):
            yf[lane] = fval
            yi[lane] = ival
    if op >= VXM_BASE:
        nm.alu(op - VXM_BASE, dt, xf, xi, yf, yi, zf, zi)
    else:
        first = True
        for sl in range(4):
            c = (cols[k, _OPS] >> (6 * sl)) & 63
            if c == 0:
                break
            if first:
                nm.alu(c, dt, xf, xi, yf, yi, zf, zi)
                first = False
            else:
                for lane in range(lanes):
                    xf[lane] = zf[lane]
                    xi[lane] = zi[lane]
                nm.alu(c, dt, xf, xi, yf, yi, zf, zi)
    nm.pack(zf, zi, dt, out[:cols[k, _GOUT]])


@njit(cache=True)
def _phase_out(cols, k, i, t, op, chip, pos, u, slot, slot_b, slot_f, stag, spos, sdata, F,
               ring_s, sram, nwords, words_per_bank, lps, rport_t, rport_banks, wport_t,
               pend_dtype, arr_dtype, acc_kind, acc_wt, pending, array, acc, status, addrs,
               lanes):
    if op == MEM_WRITE or op == MEM_SCATTER:
        banks = 0
        ntiles = lanes // lps
        if op == MEM_WRITE:
            a = cols[k, _ADDR] + i * cols[k, _STRIDE]
            banks = 1 << (a // words_per_bank)
        elif F:
            if not _tile_addrs(cols[k, _ADDR], slot_b[slot, 1:3], lps, nwords, addrs,
                               status, k, t):
                return False
            for tile in range(ntiles):
                banks |= 1 << (addrs[tile] // words_per_bank)
        else:
            banks = 1 << (cols[k, _ADDR] // words_per_bank)
        if wport_t[chip, u] == t:
            _hz(status, HZ_MEM_PORT, k, t, -1, -1, u)
            return False
        if rport_t[chip, u] == t and (rport_banks[chip, u] & banks) != 0:
            _hz(status, HZ_MEM_PORT, k, t, -1, -1, u)
            return False
        wport_t[chip, u] = t
        if F:
            if op == MEM_WRITE:
                sram[chip, u, a] = slot_b[slot, 0]
            else:
                for tile in range(ntiles):
                    for j in range(lps):
                        sram[chip, u, addrs[tile], tile * lps + j] = slot_b[slot, 0,
                                                                            tile * lps + j]
        return True
    if op == MXM_IW:
        if F:
            array[chip, u] = pending[chip, u]
        arr_dtype[chip, u] = pend_dtype[chip, u]
        return True
    if op == MXM_ABC:
        a = cols[k, _ADDR] + i
        if acc_wt[chip, u, a] == t:
            _hz(status, HZ_ACC_CONFLICT, k, t, -1, -1, a)
            return False
        acc_wt[chip, u, a] = t
        kind = 1 if _is_float(cols[k, _DT]) else 0
        accumulate = cols[k, _FLAG] == 1
        if accumulate and acc_kind[chip, u, a] != kind:
            _hz(status, HZ_MXM_DTYPE, k, t, -1, -1, a)
            return False
        acc_kind[chip, u, a] = kind
        if F:
            v = slot_f[slot]
            dst = acc[chip, u, a]
            if kind == 0:
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
        return True
    if op == SXM_TRANSPOSE:
        step = cols[k, _AUX]
        for j in range(16):
            if not _write_stream(stag, spos, sdata, F, chip, cols[k, _DSTD],
                                 cols[k, _DST] + j * step, pos, t, ring_s,
                                 slot_b[max(slot, 0), j], status, k):
                return False
        return True
    g = cols[k, _GOUT]
    for j in range(g):
        if not _write_stream(stag, spos, sdata, F, chip, cols[k, _DSTD], cols[k, _DST] + j, pos,
                             t, ring_s, slot_b[max(slot, 0), j], status, k):
            return False
    return True
