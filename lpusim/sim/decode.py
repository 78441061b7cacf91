"""Decode a Program once into flat struct-of-arrays for the interpreters.

Everything that follows from the program text alone is worked out here, vectorised: issue
cycles (nop, repeat, sync/notify), the expansion of repeats, per-instruction latency and
vector interval, static checks (field ranges, SRAM bounds of plain reads and writes, link
use and send/receive matching), and the counters that do not depend on data. What depends on
the order of events in time (streams, MEM ports, ALUs, MXM state, gather addresses) is left to
the interpreters, which see only these arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from isa.dtypes import DTYPE_BY_CODE
from isa.fields import FIELDS
from isa.table import ALU_BY_CODE, BY_OPCODE, CHAIN_CVT, CHAIN_OP_BITS
from lpusim.errors import HazardError, ProgramFormatError
from lpusim.sim import opcodes as oc
from lpusim.sim.columns import COLUMNS, NCOL, C
from lpusim.sim.derive import Deriver, derive_block, queue_error

_FIELD_COLS = ("count", "dtype", "dtype2", "dst", "dst_dir", "dst_g", "src", "src_dir", "src_g",
               "src2", "src2_dir", "src2_g", "addr", "stride", "imm", "aux", "flag", "ops")


_C_OP, _C_T0, _C_SIDX, _C_REP = C["op"], C["t0"], C["sidx"], C["rep"]
_C_CHIP, _C_QID, _C_UIDX, _C_POS, _C_UNIT = C["chip"], C["qid"], C["uidx"], C["pos"], C["unit"]
_C_COUNT, _C_STRIDE, _C_AUX, _C_DTYPE, _C_ADDR = C["count"], C["stride"], C["aux"], C["dtype"], \
    C["addr"]
_OP_NOP, _OP_REPEAT = oc.OP_NOP, oc.OP_REPEAT
_OP_MEM_READ, _OP_MEM_WRITE = oc.OP_MEM_READ, oc.OP_MEM_WRITE
_OP_MXM_ABC, _OP_MXM_ACC, _OP_MXM_LW = oc.OP_MXM_ABC, oc.OP_MXM_ACC, oc.OP_MXM_LW
_OP_MXM_IW, _OP_DESKEW, _OP_SEND = oc.OP_MXM_IW, oc.OP_C2C_DESKEW, oc.OP_C2C_SEND
_C_INTERVAL, _C_LAT, _C_NOPS, _C_G_IN, _C_G_OUT = (C["interval"], C["lat"], C["nops"], C["g_in"],
                                                  C["g_out"])


@dataclass
class Decoded:
    """A program ready to run: per dynamic instruction columns.

    `raw` holds them grouped by (chip, queue) and, within a queue, in (static index, repetition)
    order: everything that does not depend on the order across queues (static checks, counters,
    the timing-only fast path) reads it. `cols` is the same matrix sorted by issue cycle, the
    order the event kernels and the reference run in (ties: chip, queue, static index,
    repetition); it is built on first use."""

    raw: np.ndarray  # (NCOL, N) int32 (int64 past 2**31 cycles): one contiguous row per column
    nchips: int
    queue_names: tuple[str, ...]  # by queue id
    maps: np.ndarray  # (nchips, max_maps, lanes) int16
    link_vectors: int  # vectors carried over all links (rows of the link buffer)
    ring: int  # power of two > any event distance (calendar size)
    end_cycle: int  # last cycle any unit is active, + 1
    busy: np.ndarray  # (nchips, nqueues) busy cycles
    counters: dict = field(default_factory=dict)
    static_instructions: int = 0
    _cols: np.ndarray | None = field(default=None, repr=False)

    @property
    def cols(self) -> np.ndarray:
        """(NCOL, N), sorted by issue cycle."""
        if self._cols is None:
            order = np.argsort(self.raw[C["t0"]], kind="stable")
            self._cols = take_columns(self.raw, order)
        return self._cols

    def col(self, name: str) -> np.ndarray:
        return self.cols[C[name]]

    @property
    def n(self) -> int:
        """Issued (dynamic) instructions."""
        return self.raw.shape[1]

    def row(self, k: int) -> np.ndarray:
        """The columns of instruction k of `cols` (index with C[name])."""
        return self.cols[:, k]

    def describe(self, k: int) -> str:
        """'MEM_W0 #3 mem.read' for dynamic instruction k of `cols`."""
        row = self.row(k)
        name = BY_OPCODE[int(row[C["op"]])].mnemonic
        rep = int(row[C["rep"]])
        r = f" (repeat {rep})" if rep else ""
        return f"{self.queue_names[int(row[C['qid']])]} #{int(row[C['sidx']])} {name}{r}"


@njit(cache=True)
def take_columns(raw, order):
    """raw[:, order], as a new C-contiguous matrix (numpy's fancy indexing along axis 1 is
    several times slower)."""
    out = np.empty((raw.shape[0], order.shape[0]), raw.dtype)
    for c in range(raw.shape[0]):
        for k in range(order.shape[0]):
            out[c, k] = raw[c, order[k]]
    return out


def _opcode_tables(arch):
    n = 1 << FIELDS["opcode"].width
    unit = np.full(n, -1, np.int64)
    lat = np.zeros(n, np.int64)
    for op, row in BY_OPCODE.items():
        unit[op] = oc.UNIT_CODES[row.unit]
        lat[op] = arch.lat(row.latency) if row.latency else 0
    alu_lat = np.zeros(1 << CHAIN_OP_BITS, np.int64)
    alu_ok = np.zeros(1 << CHAIN_OP_BITS, bool)
    for code, a in ALU_BY_CODE.items():
        alu_lat[code] = arch.lat(a.latency)
        alu_ok[code] = True
    alu_lat[CHAIN_CVT] = arch.lat("vxm_convert")  # a chain's conversion link
    alu_ok[CHAIN_CVT] = True
    return unit, lat, alu_lat, alu_ok


def _dispatch(chip, qname, op, cost, queues_state):
    """Record a queue's segments (split after each sync) with in-segment offsets."""
    is_sync = op == oc.OP_SYNC
    cost_last = int(cost[-1]) if len(cost) else 0  # bounds the issue cycles of a last repeat
    if not is_sync.any():  # one segment: offsets are the running issue cost
        offset = np.cumsum(cost) - cost
        queues_state.append(dict(chip=chip, name=qname, op=op, seg=None, offset=offset,
                                 nseg=1, base=[0], cost_last=cost_last))
        return
    seg = np.concatenate([[0], np.cumsum(is_sync)[:-1]]) if len(op) else np.zeros(0, np.int64)
    csum = np.concatenate([[0], np.cumsum(cost)])
    nseg = int(seg[-1]) + 1 if len(op) else 1
    starts = np.searchsorted(seg, np.arange(nseg), side="left")
    offset = csum[:-1] - csum[starts[seg]] if len(op) else np.zeros(0, np.int64)
    queues_state.append(dict(chip=chip, name=qname, op=op, seg=seg, offset=offset,
                             nseg=nseg, base=[0] + [None] * (nseg - 1), cost_last=cost_last))


def _resolve_syncs(states, notify_lat: int, sync_lat: int) -> None:
    """Fix the start cycle of every segment: a sync parked at s resumes after the first notify
    of its chip at or after s. Release the earliest waiting queue(s) first; no later-found
    notify can precede it, because every later notify follows some release."""
    by_chip: dict[int, list] = {}
    for st in states:
        by_chip.setdefault(st["chip"], []).append(st)
    for chip, qs in by_chip.items():
        notifies: list[int] = []
        cur = {id(q): 0 for q in qs}
        pending = list(qs)
        parked: list[tuple[dict, int]] = []
        while True:
            for q in pending:
                s = cur[id(q)]
                if q["seg"] is None:  # no sync: one segment
                    t, ops = q["base"][0] + q["offset"], q["op"]
                else:
                    mask = q["seg"] == s
                    t = q["base"][s] + q["offset"][mask]
                    ops = q["op"][mask]
                notifies.extend(int(x) for x in t[ops == oc.OP_NOTIFY])
                if s < q["nseg"] - 1:
                    parked.append((q, int(t[-1])))
            pending = []
            if not parked:
                break
            cand = []
            for _q, s_at in parked:
                later = [n for n in notifies if n >= s_at]
                cand.append(min(later) if later else None)
            known = [c for c in cand if c is not None]
            if not known:
                q, s_at = parked[0]
                idx = int(np.flatnonzero(q["seg"] == cur[id(q)])[-1])
                raise HazardError("sync-deadlock", "sync is never released: no notify on this "
                                  "chip at or after it", chip=chip, unit=q["name"], instr=idx,
                                  cycle=s_at)
            m = min(known)
            still = []
            for (q, s_at), c in zip(parked, cand, strict=True):
                if c == m:
                    cur[id(q)] += 1
                    q["base"][cur[id(q)]] = max(m + notify_lat, s_at + sync_lat)
                    pending.append(q)
                else:
                    still.append((q, s_at))
            parked = still


@njit(cache=True)
def _field(w0, w1, lo, width, signed):
    """One field of the 128-bit word (w0 low half, w1 high half) as int64."""
    if lo >= 64:
        v = w1 >> np.uint64(lo - 64)
    elif lo + width <= 64:
        v = w0 >> np.uint64(lo)
    else:
        v = (w0 >> np.uint64(lo)) | (w1 << np.uint64(64 - lo))
    x = np.int64(v & np.uint64((1 << width) - 1))
    if signed and x >= (1 << (width - 1)):
        x -= 1 << width
    return x


# first-failure slots of _scan, in the order they are reported
_BAD_OPCODE, _BAD_UNIT, _BAD_BITS, _BAD_COUNT, _BAD_REPEAT = range(5)


@njit(cache=True)
def _scan(words, unit_of, kind, lo_mask, hi_mask, f_lo, f_w, f_sg):
    """One pass over a queue's words: opcode, imm, aux and issue cost of each, and the first
    index failing each check (-1 if none): unknown opcode, wrong unit, bits outside the fields,
    nop/repeat counts < 1, a repeat not after an instruction of the unit; and the number of
    instructions it issues (unit instructions and their repetitions)."""
    n = words.shape[0]
    op = np.empty(n, np.int64)
    imm = np.empty(n, np.int64)
    aux = np.empty(n, np.int64)
    cost = np.ones(n, np.int64)
    bad = np.full(5, -1, np.int64)
    issued = 0
    for i in range(n):
        w0, w1 = words[i, 0], words[i, 1]
        o = _field(w0, w1, f_lo[0], f_w[0], f_sg[0])
        op[i] = o
        imm[i] = _field(w0, w1, f_lo[1], f_w[1], f_sg[1])
        aux[i] = _field(w0, w1, f_lo[2], f_w[2], f_sg[2])
        u = unit_of[o]
        if u < 0:
            if bad[_BAD_OPCODE] < 0:
                bad[_BAD_OPCODE] = i
            continue
        if u != 0 and u != kind and bad[_BAD_UNIT] < 0:
            bad[_BAD_UNIT] = i
        if ((w0 & ~lo_mask[o]) != 0 or (w1 & ~hi_mask[o]) != 0) and bad[_BAD_BITS] < 0:
            bad[_BAD_BITS] = i
        if u > 0:
            issued += 1
        if o == _OP_NOP:
            if imm[i] < 1 and bad[_BAD_COUNT] < 0:
                bad[_BAD_COUNT] = i
            cost[i] = imm[i]
        elif o == _OP_REPEAT:
            if (imm[i] < 1 or aux[i] < 1) and bad[_BAD_COUNT] < 0:
                bad[_BAD_COUNT] = i
            cost[i] = imm[i] * aux[i]
            issued += imm[i]
            if (i == 0 or unit_of[op[i - 1]] <= 0) and bad[_BAD_REPEAT] < 0:
                bad[_BAD_REPEAT] = i
    return op, imm, aux, cost, bad, issued


_CHUNK = 1024  # instructions filled and derived while they are in cache


@njit(cache=True)
def _fill(out, k0, words, op, imm, aux, t, unit_of, ids, f_lo, f_w, f_sg, f_col, nbytes,
          zero_rows, lim, best, lat_of, alu_lat, alu_ok, alu_arity, alu_float, width, is_float,
          has_dst, has_src, has_src2, uses_dtype, mxm_step, maps_ok, geo):
    """Write the queue's unit instructions (and their repetitions, right after each) into
    out[:, k0:] and derive their parameters (derive.derive_block, whose arguments follow
    best); ids = chip, queue id, unit index, position; zero_rows: the rows neither this nor
    the derivation writes; lim: the largest value out holds (int32 columns hold imm as two's
    complement, and addresses of far repetitions are clamped, which keeps them out of range).
    Returns the next free column.
    In chunks of _CHUNK instructions, so the derivation reads what was just written from cache;
    within a chunk, row by row."""
    n = words.shape[0]
    m = 0
    for i in range(n):
        if unit_of[op[i]] > 0:
            m += 1
            if i + 1 < n and op[i + 1] == _OP_REPEAT:
                m += imm[i + 1]
    src = np.empty(m, np.int64)  # the static instruction of each issued one
    rep = np.empty(m, np.int64)  # its repetition number
    k = 0
    for i in range(n):
        if unit_of[op[i]] > 0:
            src[k] = i
            rep[k] = 0
            k += 1
            if i + 1 < n and op[i + 1] == _OP_REPEAT:
                for j in range(1, imm[i + 1] + 1):
                    src[k] = i
                    rep[k] = j
                    k += 1
    nf = f_col.shape[0]
    for c0 in range(0, m, _CHUNK):
        c1 = min(c0 + _CHUNK, m)
        a, b = k0 + c0, k0 + c1
        for c in zero_rows:
            out[c, a:b] = 0
        for k in range(c0, c1):  # each word read once; its fields go to nf rows
            i = src[k]
            w0, w1 = words[i, 0], words[i, 1]
            for f in range(nf):
                v = _field(w0, w1, f_lo[f], f_w[f], f_sg[f])
                if v > lim:  # imm's 32 bits in int32 columns: held as two's complement
                    v -= 1 << 32
                out[f_col[f], k0 + k] = v
        for k in range(c0, c1):
            i = src[k]
            j = rep[k]
            out[_C_T0, k0 + k] = t[i] + j * aux[i + 1] if j else t[i]
            out[_C_SIDX, k0 + k] = i
            out[_C_REP, k0 + k] = j
            out[_C_UNIT, k0 + k] = unit_of[op[i]]
        out[_C_CHIP, a:b] = ids[0]
        out[_C_QID, a:b] = ids[1]
        out[_C_UIDX, a:b] = ids[2]
        out[_C_POS, a:b] = ids[3]
        # repetition j moves on to the j-th next block of addresses
        for k in range(c0, c1):
            j = rep[k]
            if j == 0:
                continue
            kk = k0 + k
            o = op[src[k]]
            cnt = out[_C_COUNT, kk]
            a0 = out[_C_ADDR, kk]
            if o == _OP_MEM_READ or o == _OP_MEM_WRITE:
                a0 += j * cnt * out[_C_STRIDE, kk]
            elif o == _OP_MXM_ABC or o == _OP_MXM_ACC:
                a0 += j * cnt
            elif o == _OP_MXM_LW:
                a0 += j * cnt * (out[_C_AUX, kk] // nbytes[out[_C_DTYPE, kk]])
            out[_C_ADDR, kk] = min(max(a0, -lim - 1), lim)
        derive_block(out, a, b, best, lat_of, alu_lat, alu_ok, alu_arity, alu_float, width,
                       is_float, has_dst, has_src, has_src2, uses_dtype, mxm_step, maps_ok, geo)
    return k0 + m


def decode(program, arch) -> Decoded:
    """Decode `program` for `arch` (raises ProgramFormatError or HazardError on static faults)."""
    return _decode(program, arch, wide=False)


_NARROW_CYCLES = (1 << 31) - (1 << 24)  # issue cycles below this fit int32 columns


def _decode(program, arch, wide: bool) -> Decoded:
    if arch.mxm_rows != arch.lanes or arch.mxm_cols != arch.lanes:
        raise ProgramFormatError(f"preset {arch.name}: the simulator needs mxm_rows = mxm_cols "
                                 f"= lanes ({arch.mxm_rows}x{arch.mxm_cols}, {arch.lanes} lanes)")
    unit_of, lat_of, alu_lat, alu_ok = _opcode_tables(arch)
    lo_mask, hi_mask = _field_masks()
    f_lo, f_w, f_sg, f_col = _field_tables()
    nchips = len(program.chips)
    queue_names = tuple(q.name for q in arch.queues)
    notify_lat, sync_lat = arch.lat("icu_notify"), arch.lat("icu_sync")

    states: list[dict] = []
    per_queue = []
    static_n = 0
    for c, chip in enumerate(program.chips):
        qs = []
        for qname, words in chip.queues.items():
            try:
                qs.append((arch.queue_by_name(qname), words))
            except Exception as exc:  # ArchError with the list of valid names
                raise ProgramFormatError(f"chip {c}: {exc}") from None
        for qi, words in sorted(qs, key=lambda qw: qw[0].id):
            qname = qi.name
            words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64).reshape(-1, 2))
            static_n += len(words)
            op, imm, aux, cost, bad, issued = _scan(words, unit_of, oc.UNIT_CODES[qi.kind], lo_mask,
                                            hi_mask, f_lo[:3], f_w[:3], f_sg[:3])
            if bad[_BAD_OPCODE] >= 0:
                i = int(bad[_BAD_OPCODE])
                raise queue_error(c, qname, i, f"invalid opcode {int(op[i]):#04x}")
            if bad[_BAD_UNIT] >= 0:
                i = int(bad[_BAD_UNIT])
                raise queue_error(c, qname, i, f"{BY_OPCODE[int(op[i])].mnemonic} cannot run on "
                                  f"a {qi.kind} queue")
            if bad[_BAD_BITS] >= 0:  # decode() words the message
                _stray_bits_error(words, int(bad[_BAD_BITS]), c, qname)
            if bad[_BAD_COUNT] >= 0:
                raise queue_error(c, qname, int(bad[_BAD_COUNT]), "nop and repeat need counts "
                                  ">= 1")
            _dispatch(c, qname, op, cost, states)
            per_queue.append((c, qi, words, op, imm, aux, bad, states[-1], issued))
    _resolve_syncs(states, notify_lat, sync_lat)

    sizes, starts = [], []
    t_end = 0
    for c, qi, _words, _op, _imm, _aux, bad, st, issued in per_queue:
        if bad[_BAD_REPEAT] >= 0:
            raise queue_error(c, qi.name, int(bad[_BAD_REPEAT]), "repeat must follow an "
                              "instruction of the unit (not nop, repeat, sync or notify)")
        sizes.append(int(issued))
        if st["seg"] is None:
            t = st["offset"] + st["base"][0]
        else:
            t = np.asarray(st["base"], np.int64)[st["seg"]] + st["offset"]
        starts.append(t)
        if len(t):
            t_end = max(t_end, int(t[-1]) + int(st["cost_last"]))
    N = sum(sizes)
    # int32 columns halve the memory every pass reads (and the pages the OS must zero); every
    # stored value fits unless issue cycles near 2**31 (kernels compute in int64 regardless)
    wide = wide or t_end >= _NARROW_CYCLES
    raw = np.empty((NCOL, N), np.int64 if wide else np.int32)
    lim = np.iinfo(raw.dtype).max
    k = 0
    nbytes = _dtype_bytes()
    zero_rows = _zero_rows()
    maps = _stack_maps(program, arch)
    derive = Deriver(arch, lat_of, alu_lat, alu_ok, maps)
    for (c, qi, words, op, imm, aux, _bad, _st, _n), t in zip(per_queue, starts, strict=True):
        ids = np.array([c, qi.id, qi.index, qi.position], np.int64)
        k = _fill(raw, k, words, op, imm, aux, t, unit_of, ids, f_lo, f_w, f_sg, f_col, nbytes,
                  zero_rows, lim, derive.best, *derive.tables)
    if k != N:
        raise AssertionError(f"decode filled {k} of {N} instructions")
    col = {name: raw[C[name]] for name in COLUMNS}  # views: derive fills the matrix in place
    try:
        link_vectors = derive.finish(col, nchips, queue_names)
    except OverflowError:  # a link_base past int32
        return _decode(program, arch, wide=True)
    busy, counters, end_cycle, ring = _tally_decoded(raw, arch, nchips, len(queue_names))
    return Decoded(raw, nchips, queue_names, maps, link_vectors, ring, end_cycle, busy,
                   counters=counters, static_instructions=static_n)


def _stray_bits_error(words, i, chip, qname):
    from isa.encoding import decode as decode_word

    word = int(words[i, 0]) | (int(words[i, 1]) << 64)
    try:
        decode_word(word)
    except Exception as exc:
        raise queue_error(chip, qname, i, str(exc)) from None
    raise AssertionError("stray bits not found by decode()")


@functools.cache
def _field_tables():
    """(lo, width, signed, column) of opcode, imm, aux and then every other field column."""
    names = ("opcode", "imm", "aux") + tuple(n for n in _FIELD_COLS if n not in ("imm", "aux"))
    lo = np.array([FIELDS[n].lo for n in names], np.int64)
    w = np.array([FIELDS[n].width for n in names], np.int64)
    sg = np.array([FIELDS[n].signed for n in names], np.bool_)
    col = np.array([C["op"]] + [C[n] for n in names[1:]], np.int64)
    return lo, w, sg, col


_DERIVED = ("interval", "lat", "nops", "g_in", "g_out", "r1_dir", "r1_s", "r1_n", "r1_step",
            "r2_dir", "r2_s", "r2_n", "w_dir", "w_s", "w_n", "w_step", "b_dt")  # every row


@functools.cache
def _zero_rows():
    """Rows of the decoded matrix that neither _fill nor Deriver writes for every
    instruction (link_base: sends and receives only)."""
    filled = set(_field_tables()[3].tolist()) | {C[n] for n in (
        "t0", "sidx", "rep", "unit", "chip", "qid", "uidx", "pos")} | {C[n] for n in _DERIVED}
    return np.array([c for c in range(NCOL) if c not in filled], np.int64)


@functools.cache
def _dtype_bytes():
    """Element bytes by dtype code (unknown codes as code 0), for the repeat address step."""
    out = np.full(16, DTYPE_BY_CODE[0].nbytes, np.int64)
    for code, d in DTYPE_BY_CODE.items():
        out[code] = d.nbytes
    return out


def _stack_maps(program, arch) -> np.ndarray:
    n = max([len(ch.maps) for ch in program.chips] + [0])
    out = np.full((len(program.chips), max(n, 1), arch.lanes), -1, np.int16)
    for c, ch in enumerate(program.chips):
        m = np.asarray(ch.maps)
        if m.size:
            if m.ndim != 2 or m.shape[1] != arch.lanes:
                raise ProgramFormatError(f"chip {c}: SXM maps must be (n, {arch.lanes}), "
                                         f"got {m.shape}")
            out[c, : len(m)] = m
    return out


@njit(cache=True)
def _tally(cols, nchips, nq, reads, writes, writes_stream):
    """One pass over the instructions: busy cycles per (chip, queue) (a chain also keeps the
    ALUs after its own busy; mxm.iw and c2c.deskew are busy for their latency), vectors read,
    written, put on streams, multiplied (mxm.abc) and sent, the end cycle and the largest
    interval and latency."""
    busy = np.zeros((nchips, nq), np.int64)
    # sram read, sram write, stream vectors x group, abc vectors, link vectors x group, vectors,
    # weight-load vectors x streams, then abc vectors per dtype code (16)
    sums = np.zeros(7 + 16, np.int64)
    end = 0
    reach = 1
    for k in range(cols.shape[1]):
        op, cnt = cols[_C_OP, k], cols[_C_COUNT, k]
        iv, lat = cols[_C_INTERVAL, k], cols[_C_LAT, k]
        span = lat if (op == _OP_MXM_IW or op == _OP_DESKEW) else cnt * iv
        chip, qid = cols[_C_CHIP, k], cols[_C_QID, k]
        for j in range(max(cols[_C_NOPS, k], 1)):
            busy[chip, qid + j] += span
        if reads[op]:
            sums[0] += cnt
        if writes[op]:
            sums[1] += cnt
        if writes_stream[op]:
            sums[2] += cnt * cols[_C_G_OUT, k]
        if op == _OP_MXM_ABC:
            sums[3] += cnt
            sums[7 + cols[_C_DTYPE, k]] += cnt
        elif op == _OP_MXM_LW:
            sums[6] += cnt * cols[_C_AUX, k]
        if op == _OP_SEND:
            sums[4] += cnt * cols[_C_G_IN, k]
        sums[5] += cnt
        end = max(end, cols[_C_T0, k] + max((cnt - 1) * iv + lat, 0) + 1)
        reach = max(reach, iv, lat)
    return busy, sums, end, reach


@functools.cache
def opcode_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per opcode: reads SRAM, writes SRAM, puts vectors on streams (what the counters and
    the roofline count)."""
    reads, writes, ws = (np.zeros(1 << FIELDS["opcode"].width, np.bool_) for _ in range(3))
    reads[[oc.OP_MEM_READ, oc.OP_MEM_GATHER]] = True
    writes[[oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER]] = True
    ws[[code for code, row in BY_OPCODE.items() if row.writes]] = True
    return reads, writes, ws


def _tally_decoded(raw, arch, nchips, nq):
    """busy, counters, end cycle and ring size of the decoded program."""
    busy, sums, end, reach = _tally(raw, nchips, nq, *opcode_classes())
    lanes = arch.lanes
    counters = {
        "sram_read_bytes": int(sums[0]) * lanes,
        "sram_write_bytes": int(sums[1]) * lanes,
        "stream_bytes": int(sums[2]) * lanes,
        "mxm_macs": int(sums[3]) * arch.mxm_rows * arch.mxm_cols,
        "link_bytes": int(sums[4]) * lanes,
        "vectors": int(sums[5]),
        "mxm_weight_bytes": int(sums[6]) * lanes,
        # vectors streamed into the MXM per activation dtype code
        "mxm_abc_vectors": {code: int(sums[7 + code]) for code in range(16) if sums[7 + code]},
    }
    ring = 1 << max(4, (int(reach) + 2).bit_length())
    return busy, counters, int(end), ring


@functools.cache
def _field_masks() -> tuple[np.ndarray, np.ndarray]:
    """Per opcode: the bits its fields use, low and high halves of the word."""
    n = 1 << FIELDS["opcode"].width
    lo, hi = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    for code, row in BY_OPCODE.items():
        mask = 0
        for name in row.fields:
            mask |= FIELDS[name].mask
        lo[code], hi[code] = mask & 0xFFFF_FFFF_FFFF_FFFF, mask >> 64
    return lo, hi


__all__ = ["COLUMNS", "C", "Decoded", "decode"]
