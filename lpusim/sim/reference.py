"""The reference interpreter: the plain-Python definition of what every instruction does.

It is slow on purpose: events are Python tuples sorted by (cycle, phase, instruction, vector),
state lives in dicts, and each instruction's effect is written out once, readably. The Numba
kernels must agree with it exactly (tests/test_sim_differential.py).

Timing model (shared with the kernels). In each event the stream operands are read first,
then the unit's own rules are checked (ports, ALUs, MXM state); commits check the unit's rules
first, then write the streams. Dynamic instruction k issues at t0 and handles vector i
at t_in = t0 + i*interval: in phase 0 of that cycle it reads its inputs (streams at its own
position, SRAM, accumulators, the link buffer); in phase 1 of cycle t_in + lat it commits its
output (streams, SRAM, accumulators, installed weights). All phase-0 events of a cycle come
before its phase-1 events, so a unit never sees a value written in the same cycle.

Streams: a value written on eastward stream s at position p in cycle t is seen at position
p + k in cycle t + k (k >= 1), unless a slice between wrote the same stream on that diagonal;
westward likewise towards lower positions. A reader with no such value is a hazard.
"""

from __future__ import annotations

import numpy as np

from lpusim.errors import HazardError
from lpusim.sim import numerics_ref as nm
from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C, Decoded

_NO_OUT = (oc.OP_MXM_LW, oc.OP_C2C_SEND, oc.OP_C2C_DESKEW)


def stream_name(direction: int, s: int, g: int = 1) -> str:
    return f"{'EW'[direction]}{s}" + (f"/{g}" if g > 1 else "")


class _Machine:
    def __init__(self, dec: Decoded, arch, sram, functional: bool):
        self.dec, self.arch, self.sram, self.functional = dec, arch, sram, functional
        self.lanes = arch.lanes
        self.P = arch.num_positions
        self.words_per_bank = arch.mem_words_per_bank
        self.streams: dict[tuple, tuple[int, np.ndarray]] = {}  # (chip,dir,s,diag) -> (pos,bytes)
        self.slots: dict[tuple[int, int], object] = {}
        self.read_port: dict[tuple[int, int], tuple[int, set]] = {}
        self.write_port: dict[tuple[int, int], int] = {}
        self.alu_busy: dict[tuple[int, int], int] = {}
        nch, planes = dec.nchips, arch.mxm_planes
        self.buffer = np.zeros((nch, planes, arch.mxm_rows, arch.mxm_cols))
        self.buf_dtype = np.full((nch, planes), -1)
        self.buf_loaded = np.zeros((nch, planes), bool)
        self.pending = np.zeros_like(self.buffer)
        self.pending_dtype = np.full((nch, planes), -1)
        self.iw_done = np.full((nch, planes), -1)  # cycle the last install reaches the array
        self.array = np.zeros_like(self.buffer)
        self.array_dtype = np.full((nch, planes), -1)
        accv = arch.mxm_acc_vectors_per_plane
        self.acc = np.zeros((nch, planes, accv, arch.mxm_cols), np.float64)
        self.acc_kind = np.full((nch, planes, accv), -1)  # 0 int32, 1 fp32
        self.acc_written = np.full((nch, planes, accv), -1, np.int64)
        self.link = np.zeros((dec.link_vectors, 4, self.lanes), np.uint8)

    # --- helpers -------------------------------------------------------------------------
    def hazard(self, kind, k, msg, t, stream=""):
        row = self.dec.row(k)
        raise HazardError(kind, f"{self.dec.describe(k)}: {msg}", chip=int(row[C["chip"]]),
                          unit=self.dec.queue_names[int(row[C["qid"]])],
                          instr=int(row[C["sidx"]]), cycle=t, stream=stream)

    def diag(self, direction, pos, t):
        return t - pos if direction == 0 else t + pos

    def read_streams(self, k, chip, direction, s0, g, pos, t):
        out = np.zeros((g, self.lanes), np.uint8)
        for b in range(g):
            key = (chip, direction, s0 + b, self.diag(direction, pos, t))
            hit = self.streams.get(key)
            if hit is None:
                self.hazard("stream-empty", k, "no value on the stream here in this cycle", t,
                            stream_name(direction, s0 + b))
            if hit[1] is not None:
                out[b] = hit[1]
        return out

    def write_streams(self, k, chip, direction, s0, data, pos, t, g):
        for b in range(g):
            key = (chip, direction, s0 + b, self.diag(direction, pos, t))
            old = self.streams.get(key)
            if old is not None and old[0] == pos:
                self.hazard("stream-conflict", k, "a second producer on this stream at this "
                            "position and cycle", t, stream_name(direction, s0 + b))
            self.streams[key] = (pos, data[b].copy() if data is not None else None)

    def use_read_port(self, k, chip, sl, t, banks):
        prev = self.read_port.get((chip, sl))
        if prev is not None and prev[0] == t:
            self.hazard("mem-port", k, f"MEM slice {sl} already reads in this cycle", t)
        self.read_port[(chip, sl)] = (t, set(banks))

    def use_write_port(self, k, chip, sl, t, banks):
        if self.write_port.get((chip, sl)) == t:
            self.hazard("mem-port", k, f"MEM slice {sl} already writes in this cycle", t)
        prev = self.read_port.get((chip, sl))
        if prev is not None and prev[0] == t and prev[1] & set(banks):
            self.hazard("mem-port", k, f"MEM slice {sl} reads and writes bank "
                        f"{min(prev[1] & set(banks))} in one cycle", t)
        self.write_port[(chip, sl)] = t

    def tile_addresses(self, k, base, mapbytes, t):
        m = mapbytes[0].astype(np.int64) | (mapbytes[1].astype(np.int64) << 8)
        lps = self.arch.lanes_per_superlane
        addrs = base + m[::lps]
        bad = (addrs < 0) | (addrs >= self.arch.mem_words_per_slice)
        if bad.any():
            self.hazard("sram-bounds", k, f"tile {int(np.flatnonzero(bad)[0])} address "
                        f"{int(addrs[bad][0])} outside the slice", t)
        return addrs

    # --- the instructions ----------------------------------------------------------------
    def phase_in(self, k, i, t):
        r = self.dec.row(k)
        op, chip, pos = int(r[C["op"]]), int(r[C["chip"]]), int(r[C["pos"]])
        u = int(r[C["uidx"]])
        F = self.functional
        L = self.lanes

        def src(name="src", g=None):
            gg = int(r[C["g_in"]]) if g is None else g
            return self.read_streams(k, chip, int(r[C[f"{name}_dir"]]), int(r[C[name]]), gg,
                                     pos, t)

        if op == oc.OP_MEM_READ:
            a = int(r[C["addr"]]) + i * int(r[C["stride"]])
            self.use_read_port(k, chip, u, t, [a // self.words_per_bank])
            self.slots[(k, i)] = self.sram[chip, u, a][None].copy() if F else None
        elif op == oc.OP_MEM_WRITE:
            self.slots[(k, i)] = src(g=1)
        elif op == oc.OP_MEM_GATHER:
            m = src(g=2)
            if F:
                addrs = self.tile_addresses(k, int(r[C["addr"]]), m, t)
                banks = set((addrs // self.words_per_bank).tolist())
                lps = self.arch.lanes_per_superlane
                v = np.empty((1, L), np.uint8)
                for tile, a in enumerate(addrs):
                    v[0, tile * lps:(tile + 1) * lps] = self.sram[chip, u, a,
                                                                 tile * lps:(tile + 1) * lps]
                self.slots[(k, i)] = v
            else:
                banks = {int(r[C["addr"]]) // self.words_per_bank}
                self.slots[(k, i)] = None
            self.use_read_port(k, chip, u, t, banks)
        elif op == oc.OP_MEM_SCATTER:
            d = src(g=1)
            m = self.read_streams(k, chip, int(r[C["src2_dir"]]), int(r[C["src2"]]), 2, pos, t)
            self.slots[(k, i)] = (d, m)
        elif op >= oc.VXM_ALU_BASE or op in (oc.OP_VXM_CHAIN, oc.OP_VXM_CVT):
            x = src()
            y = None
            if op != oc.OP_VXM_CVT and int(r[C["flag"]]) == 0 and self._binary(r):
                y = self.read_streams(k, chip, int(r[C["src2_dir"]]), int(r[C["src2"]]),
                                      int(r[C["r2_n"]]), pos, t)
            n = max(int(r[C["nops"]]), 1)
            for alu in range(u, u + n):
                if self.alu_busy.get((chip, alu)) == t:
                    self.hazard("alu-busy", k, f"VXM ALU {alu} is already busy in this cycle", t)
                self.alu_busy[(chip, alu)] = t
            self.slots[(k, i)] = self._vxm(r, x, y) if F else None
        elif op == oc.OP_MXM_LW:
            dt, g = int(r[C["dtype"]]), int(r[C["g_in"]])
            nstreams = int(r[C["aux"]])
            data = src(g=nstreams)
            if self.buf_loaded[chip, u] and self.buf_dtype[chip, u] != dt:
                self.hazard("mxm-dtype", k, "loads a second dtype into a half-loaded buffer", t)
            self.buf_loaded[chip, u] = True
            self.buf_dtype[chip, u] = dt
            if F:
                rows_per = nstreams // g
                for j in range(rows_per):
                    row = int(r[C["addr"]]) + i * rows_per + j
                    vf, vi = _unpack(data[j * g:(j + 1) * g], dt)
                    self.buffer[chip, u, row] = vf if _is_float(dt) else vi
        elif op == oc.OP_MXM_IW:
            if not self.buf_loaded[chip, u]:
                self.hazard("mxm-unloaded", k, "installs a weight buffer that was never "
                            "loaded", t)
            if t <= self.iw_done[chip, u]:
                self.hazard("mxm-install-busy", k, f"installs while the previous install on "
                            f"MXM plane {u} is still in flight (until cycle "
                            f"{int(self.iw_done[chip, u])})", t)
            self.iw_done[chip, u] = t + int(r[C["lat"]])
            self.buf_loaded[chip, u] = False
            self.pending[chip, u] = self.buffer[chip, u]
            self.pending_dtype[chip, u] = self.buf_dtype[chip, u]
        elif op == oc.OP_MXM_ABC:
            dt = int(r[C["dtype"]])
            x = src()
            if self.array_dtype[chip, u] < 0:
                self.hazard("mxm-unloaded", k, "streams activations with no weights "
                            "installed", t)
            if self.array_dtype[chip, u] != dt:
                self.hazard("mxm-dtype", k, "activation dtype differs from the installed "
                            "weights", t)
            if F:
                xf, xi = _unpack(x, dt)
                xv = (xf if _is_float(dt) else xi).astype(np.float64)
                w = self.array[chip, u]
                # exact products summed in fp64 in input order: a sequential sum per column
                prod = xv[:, None] * w
                col = np.cumsum(prod, axis=0)[-1]
                col[np.isnan(col)] = np.nan  # a NaN result is the canonical quiet NaN
                self.slots[(k, i)] = col
            else:
                self.slots[(k, i)] = None
        elif op == oc.OP_MXM_ACC:
            a = int(r[C["addr"]]) + i
            want = 0 if int(r[C["dtype"]]) == oc.DT_INT32 else 1
            if self.acc_kind[chip, u, a] != want:
                what = "was never written" if self.acc_kind[chip, u, a] < 0 else \
                    "holds the other type"
                self.hazard("mxm-dtype", k, f"accumulator {a} {what}", t)
            if F:
                v = self.acc[chip, u, a]
                if want == 0:
                    buf = np.zeros((4, L), np.uint8)
                    nm.pack(np.zeros(L, np.float32), v.astype(np.int64), oc.DT_INT32, buf)
                else:
                    buf = np.zeros((4, L), np.uint8)
                    nm.pack(v.astype(np.float32), np.zeros(L, np.int64), oc.DT_FP32, buf)
                self.slots[(k, i)] = buf
            else:
                self.slots[(k, i)] = None
        elif op in (oc.OP_SXM_SHIFT, oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE, oc.OP_SXM_DISTRIBUTE):
            x = src()
            self.slots[(k, i)] = self._sxm(r, x) if F else None
        elif op == oc.OP_SXM_TRANSPOSE:
            step = int(r[C["aux"]])
            rows = [self.read_streams(k, chip, int(r[C["src_dir"]]), int(r[C["src"]]) + j * step,
                                      1, pos, t)[0] for j in range(16)]
            if F:
                m = np.stack(rows)  # (16 streams, lanes)
                lps = self.arch.lanes_per_superlane
                out = m.reshape(16, L // lps, lps).transpose(2, 1, 0).reshape(lps, L)
                self.slots[(k, i)] = out
            else:
                self.slots[(k, i)] = None
        elif op == oc.OP_C2C_SEND:
            x = src()
            if F:
                self.link[int(r[C["link_base"]]) + i, : x.shape[0]] = x
        elif op == oc.OP_C2C_RECV:
            g = int(r[C["g_out"]])
            self.slots[(k, i)] = self.link[int(r[C["link_base"]]) + i, :g].copy() if F else None

    def phase_out(self, k, i, t):
        r = self.dec.row(k)
        op, chip, pos = int(r[C["op"]]), int(r[C["chip"]]), int(r[C["pos"]])
        u = int(r[C["uidx"]])
        F = self.functional
        val = self.slots.pop((k, i), None)
        if op == oc.OP_MEM_WRITE:
            a = int(r[C["addr"]]) + i * int(r[C["stride"]])
            self.use_write_port(k, chip, u, t, [a // self.words_per_bank])
            if F:
                self.sram[chip, u, a] = val[0]
        elif op == oc.OP_MEM_SCATTER:
            d, m = val
            if F:
                addrs = self.tile_addresses(k, int(r[C["addr"]]), m, t)
                self.use_write_port(k, chip, u, t, set((addrs // self.words_per_bank).tolist()))
                lps = self.arch.lanes_per_superlane
                for tile, a in enumerate(addrs):
                    sl = slice(tile * lps, (tile + 1) * lps)
                    self.sram[chip, u, a, sl] = d[0, sl]
            else:
                self.use_write_port(k, chip, u, t, {int(r[C["addr"]]) // self.words_per_bank})
        elif op == oc.OP_MXM_IW:
            self.array[chip, u] = self.pending[chip, u]
            self.array_dtype[chip, u] = self.pending_dtype[chip, u]
        elif op == oc.OP_MXM_ABC:
            a = int(r[C["addr"]]) + i
            if self.acc_written[chip, u, a] == t:
                self.hazard("mxm-acc-conflict", k, f"two results into accumulator {a} in one "
                            "cycle", t)
            self.acc_written[chip, u, a] = t
            dt = int(r[C["dtype"]])
            kind = 1 if _is_float(dt) else 0
            accumulate = int(r[C["flag"]]) == 1
            if accumulate and self.acc_kind[chip, u, a] != kind:
                self.hazard("mxm-dtype", k, f"accumulates into accumulator {a}, which holds "
                            "no value of this type", t)
            self.acc_kind[chip, u, a] = kind
            if F:
                if kind == 0:  # int8 products are exact in fp64; wrap the sum to int32
                    v = val.astype(np.int64)
                    if accumulate:
                        v = v + self.acc[chip, u, a].astype(np.int64)
                    v = ((v + (1 << 31)) % (1 << 32)) - (1 << 31)
                    self.acc[chip, u, a] = v
                else:
                    v = val.astype(np.float32)  # the dot product is rounded once
                    if accumulate:
                        v = (self.acc[chip, u, a].astype(np.float32) + v).astype(np.float32)
                    v[np.isnan(v)] = np.nan
                    self.acc[chip, u, a] = v
        elif op == oc.OP_C2C_DESKEW:
            pass
        else:  # a stream write
            g = int(r[C["g_out"]])
            data = val if F else None
            if op == oc.OP_SXM_TRANSPOSE:
                step = int(r[C["aux"]])
                for j in range(16):
                    self.write_streams(k, chip, int(r[C["dst_dir"]]), int(r[C["dst"]]) + j * step,
                                       None if data is None else data[j:j + 1], pos, t, 1)
                return
            self.write_streams(k, chip, int(r[C["dst_dir"]]), int(r[C["dst"]]), data, pos, t, g)

    # --- value semantics -------------------------------------------------------------------
    @staticmethod
    def _binary(r) -> bool:
        from isa.table import ALU_BY_CODE, CHAIN_MAX, CHAIN_OP_BITS

        op = int(r[C["op"]])
        if op >= oc.VXM_ALU_BASE:
            return ALU_BY_CODE[op - oc.VXM_ALU_BASE].arity == 2
        codes = [(int(r[C["ops"]]) >> (CHAIN_OP_BITS * s)) & 63 for s in range(CHAIN_MAX)]
        return any(c in ALU_BY_CODE and ALU_BY_CODE[c].arity == 2 for c in codes)

    def _vxm(self, r, x, y):
        from isa.table import CHAIN_CVT, CHAIN_MAX, CHAIN_OP_BITS

        op, dt = int(r[C["op"]]), int(r[C["dtype"]])
        L = self.lanes
        xf, xi = _unpack(x, dt)
        if op == oc.OP_VXM_CVT:
            dt2 = int(r[C["dtype2"]])
            zf, zi = np.zeros(L, np.float32), np.zeros(L, np.int64)
            nm.convert(dt, dt2, xf, xi, zf, zi)
            return _pack(zf, zi, dt2)
        bdt = int(r[C["b_dt"]])  # B's type: a chain's binary links may follow its cvt link
        if y is not None:
            yf, yi = _unpack(y, bdt)
        else:  # immediate B operand (fp32 bits or int32), or unused
            bits = int(r[C["imm"]]) & 0xFFFFFFFF
            yf = np.full(L, np.array([bits], np.uint32).view(np.float32)[0], np.float32)
            yi = np.full(L, bits - (1 << 32) if bits >= 1 << 31 else bits, np.int64)
            if not _is_float(bdt):
                yi = _wrap(yi, bdt)
        codes = [op - oc.VXM_ALU_BASE] if op >= oc.VXM_ALU_BASE else \
            [(int(r[C["ops"]]) >> (CHAIN_OP_BITS * s)) & 63 for s in range(CHAIN_MAX)]
        vf, vi = xf, xi
        for code in codes:
            if code == 0:
                break
            zf, zi = np.zeros(L, np.float32), np.zeros(L, np.int64)
            if code == CHAIN_CVT:  # to dtype2, rounded to it
                dt2 = int(r[C["dtype2"]])
                nm.convert(dt, dt2, vf, vi, zf, zi)
                zf, zi = _unpack(_pack(zf, zi, dt2), dt2)
                dt = dt2
            else:
                nm.alu(code, dt, vf, vi, yf, yi, zf, zi)
            vf, vi = zf, zi
        return _pack(vf, vi, dt)

    def _sxm(self, r, x):
        op = int(r[C["op"]])
        L = self.lanes
        if op == oc.OP_SXM_SHIFT:
            n = int(r[C["imm"]])
            out = np.zeros_like(x)
            src = np.arange(L) - n
            ok = (src >= 0) & (src < L)
            out[:, ok] = x[:, src[ok]]
            return out
        if op == oc.OP_SXM_ROTATE:
            return x[:, (np.arange(L) - int(r[C["imm"]])) % L]
        m = self.dec.maps[int(r[C["chip"]]), int(r[C["imm"]])].astype(np.int64)
        out = np.zeros_like(x)
        ok = m >= 0
        out[:, ok] = x[:, m[ok]]
        return out


def _is_float(dt: int) -> bool:
    return dt not in (oc.DT_INT8, oc.DT_INT16, oc.DT_INT32)


def _width(dt: int) -> int:
    from isa.dtypes import DTYPE_BY_CODE

    return DTYPE_BY_CODE[dt].nbytes


def _unpack(buf, dt):
    L = buf.shape[1]
    vf, vi = np.zeros(L, np.float32), np.zeros(L, np.int64)
    nm.unpack(np.ascontiguousarray(buf[: _width(dt)]), dt, vf, vi)
    return vf, vi


def _pack(vf, vi, dt):
    buf = np.zeros((_width(dt), len(vf)), np.uint8)
    nm.pack(vf, vi, dt, buf)
    return buf


def _wrap(v, dt):
    bits = 8 * _width(dt)
    return ((v + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))


def run(dec: Decoded, arch, sram, functional: bool, trace: bool):
    """Run every event in order. Returns (trace rows as an (n, 4) int64 array, machine)."""
    m = _Machine(dec, arch, sram, functional)
    cols = dec.cols
    events = []
    for k in range(dec.n):
        op = int(cols[C["op"], k])
        t0, n = int(cols[C["t0"], k]), int(cols[C["count"], k])
        iv, lat = int(cols[C["interval"], k]), int(cols[C["lat"], k])
        for i in range(n):
            t = t0 + i * iv
            events.append((t, 0, k, i))
            if op not in _NO_OUT:
                events.append((t + lat, 1, k, i))
    events.sort()
    with np.errstate(all="ignore"):  # NaN and inf are values here, as in IEEE hardware
        for t, phase, k, i in events:
            if phase == 0:
                m.phase_in(k, i, t)
            else:
                m.phase_out(k, i, t)
    rows = np.array(events, np.int64).reshape(-1, 4) if trace else np.zeros((0, 4), np.int64)
    return rows, m
