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

from isa.dtypes import DTYPE_BY_CODE
from isa.encoding import field_array
from isa.fields import FIELDS
from isa.table import ALU_BY_CODE, BY_OPCODE, CHAIN_MAX, CHAIN_OP_BITS
from lpusim.errors import HazardError, ProgramFormatError
from lpusim.sim import opcodes as oc

# Per-instruction integer columns, in this order: Decoded.cols is an (NCOL, N) int64 array.
COLUMNS = (
    "chip", "qid", "unit", "uidx", "pos", "op", "t0", "count", "interval", "lat",
    "dtype", "dtype2", "dst", "dst_dir", "dst_g", "src", "src_dir", "src_g",
    "src2", "src2_dir", "src2_g", "addr", "stride", "imm", "aux", "flag", "ops",
    "sidx", "rep", "link_base", "nops", "g_in", "g_out",
    # the streams an instruction reads (two groups) and writes, as (direction, first stream,
    # number of streams, step between streams); n = 0 where there is none
    "r1_dir", "r1_s", "r1_n", "r1_step", "r2_dir", "r2_s", "r2_n", "w_dir", "w_s", "w_n", "w_step",
)  # fmt: skip
C = {name: i for i, name in enumerate(COLUMNS)}
NCOL = len(COLUMNS)

_FIELD_COLS = ("count", "dtype", "dtype2", "dst", "dst_dir", "dst_g", "src", "src_dir", "src_g",
               "src2", "src2_dir", "src2_g", "addr", "stride", "imm", "aux", "flag", "ops")


@dataclass
class Decoded:
    """A program ready to run: per dynamic instruction columns, sorted by issue cycle."""

    cols: np.ndarray  # (NCOL, N) int64: one contiguous row per column, for the kernels
    nchips: int
    queue_names: tuple[str, ...]  # by queue id
    maps: np.ndarray  # (nchips, max_maps, lanes) int16
    link_vectors: int  # vectors carried over all links (rows of the link buffer)
    ring: int  # power of two > any event distance (calendar size)
    end_cycle: int  # last cycle any unit is active, + 1
    busy: np.ndarray  # (nchips, nqueues) busy cycles
    counters: dict = field(default_factory=dict)
    static_instructions: int = 0

    def col(self, name: str) -> np.ndarray:
        return self.cols[C[name]]

    @property
    def n(self) -> int:
        """Issued (dynamic) instructions."""
        return self.cols.shape[1]

    def row(self, k: int) -> np.ndarray:
        """The columns of instruction k (index with C[name])."""
        return self.cols[:, k]

    def describe(self, k: int) -> str:
        """'MEM_W0 #3 mem.read' for dynamic instruction k."""
        row = self.row(k)
        name = BY_OPCODE[int(row[C["op"]])].mnemonic
        rep = int(row[C["rep"]])
        r = f" (repeat {rep})" if rep else ""
        return f"{self.queue_names[int(row[C['qid']])]} #{int(row[C['sidx']])} {name}{r}"


def _err(chip: int, qname: str, idx: int, msg: str) -> ProgramFormatError:
    return ProgramFormatError(f"chip {chip}, queue {qname}, instruction #{idx}: {msg}")


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
    return unit, lat, alu_lat, alu_ok


def _dispatch(chip, qname, op, cost, queues_state):
    """Record a queue's segments (split after each sync) with in-segment offsets."""
    is_sync = op == oc.OP_SYNC
    seg = np.concatenate([[0], np.cumsum(is_sync)[:-1]]) if len(op) else np.zeros(0, np.int64)
    csum = np.concatenate([[0], np.cumsum(cost)])
    nseg = int(seg[-1]) + 1 if len(op) else 1
    starts = np.searchsorted(seg, np.arange(nseg), side="left")
    offset = csum[:-1] - csum[starts[seg]] if len(op) else np.zeros(0, np.int64)
    queues_state.append(dict(chip=chip, name=qname, op=op, seg=seg, offset=offset,
                             nseg=nseg, base=[0] + [None] * (nseg - 1)))


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


def decode(program, arch) -> Decoded:
    """Decode `program` for `arch` (raises ProgramFormatError or HazardError on static faults)."""
    if arch.mxm_rows != arch.lanes or arch.mxm_cols != arch.lanes:
        raise ProgramFormatError(f"preset {arch.name}: the simulator needs mxm_rows = mxm_cols "
                                 f"= lanes ({arch.mxm_rows}x{arch.mxm_cols}, {arch.lanes} lanes)")
    unit_of, lat_of, alu_lat, alu_ok = _opcode_tables(arch)
    nchips = len(program.chips)
    queue_names = tuple(q.name for q in arch.queues)
    notify_lat, sync_lat = arch.lat("icu_notify"), arch.lat("icu_sync")

    states: list[dict] = []
    per_queue = []
    static_n = 0
    for c, chip in enumerate(program.chips):
        for qname, words in chip.queues.items():
            try:
                qi = arch.queue_by_name(qname)
            except Exception as exc:  # ArchError with the list of valid names
                raise ProgramFormatError(f"chip {c}: {exc}") from None
            words = np.asarray(words, dtype=np.uint64).reshape(-1, 2)
            static_n += len(words)
            # ICU fields for every word; the others later, for the unit instructions only
            f = {name: field_array(words, name) for name in ("opcode", "imm", "aux")}
            op = f["opcode"]
            known = unit_of[op] >= 0
            if not known.all():
                i = int(np.flatnonzero(~known)[0])
                raise _err(c, qname, i, f"invalid opcode {int(op[i]):#04x}")
            kind = oc.UNIT_CODES[qi.kind]
            wrong = (unit_of[op] != 0) & (unit_of[op] != kind)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise _err(c, qname, i, f"{BY_OPCODE[int(op[i])].mnemonic} cannot run on a "
                           f"{qi.kind} queue")
            # decode() rejects words with bits outside their fields
            _check_stray_bits(words, op, c, qname)
            cost = np.ones(len(op), np.int64)
            nop = op == oc.OP_NOP
            rep = op == oc.OP_REPEAT
            if (nop & (f["imm"] < 1)).any() or (rep & ((f["imm"] < 1) | (f["aux"] < 1))).any():
                i = int(np.flatnonzero((nop & (f["imm"] < 1)) | (rep & ((f["imm"] < 1)
                                                                         | (f["aux"] < 1))))[0])
                raise _err(c, qname, i, "nop and repeat need counts >= 1")
            cost[nop] = f["imm"][nop]
            cost[rep] = f["imm"][rep] * f["aux"][rep]
            _dispatch(c, qname, op, cost, states)
            per_queue.append((c, qi, f, states[-1], words))
    _resolve_syncs(states, notify_lat, sync_lat)

    blocks = []
    for c, qi, f, st, words in per_queue:
        op = f["opcode"]
        t = np.asarray(st["base"], np.int64)[st["seg"]] + st["offset"] \
            if len(op) else np.zeros(0, np.int64)
        idx = np.flatnonzero(unit_of[op] != 0)
        sub = words.take(idx, axis=0)
        rows = {name: field_array(sub, name) for name in _FIELD_COLS}
        rows["t0"], rows["sidx"], rows["rep"] = t.take(idx), idx, np.zeros(len(idx), np.int64)
        rep_idx = np.flatnonzero(op == oc.OP_REPEAT)
        if len(rep_idx):
            prev = rep_idx - 1
            bad = (prev < 0) | (unit_of[op[np.maximum(prev, 0)]] == 0)
            if bad.any():
                i = int(rep_idx[np.flatnonzero(bad)[0]])
                raise _err(c, qi.name, i, "repeat must follow an instruction of the unit "
                           "(not nop, repeat, sync or notify)")
            n = f["imm"][rep_idx]
            src = np.repeat(prev, n)
            j = np.concatenate([np.arange(1, k + 1) for k in n])
            at = np.searchsorted(idx, src)  # where each repeated instruction sits in rows
            extra = {name: rows[name].take(at) for name in _FIELD_COLS}
            extra["t0"] = t[src] + j * np.repeat(f["aux"][rep_idx], n)
            extra["sidx"], extra["rep"] = src, j
            _advance_repeats(extra, j, f["opcode"][src])
            rows = {k2: np.concatenate([rows[k2], extra[k2]]) for k2 in rows}
        m = len(rows["t0"])
        rows["op"] = np.concatenate([op.take(idx), op[src]]) if len(rep_idx) else op.take(idx)
        if len(rep_idx):  # repetitions go right after the instruction they repeat
            within = np.lexsort((rows["rep"], rows["sidx"]))
            rows = {k2: v[within] for k2, v in rows.items()}
        rows["chip"] = np.full(m, c, np.int64)
        rows["qid"] = np.full(m, qi.id, np.int64)
        rows["unit"] = unit_of[rows["op"]]
        rows["uidx"] = np.full(m, qi.index, np.int64)
        rows["pos"] = np.full(m, qi.position, np.int64)
        blocks.append(((c, qi.id), rows))

    blocks = [b for _, b in sorted(blocks, key=lambda kb: kb[0])]
    N = sum(len(b["t0"]) for b in blocks)
    # Columns stay separate contiguous arrays while decoding (numpy is slow on strided views);
    # the kernels get one row per instruction at the end. Blocks are in (chip, queue) order
    # and each is in (static index, repetition) order, so a stable sort on the issue cycle
    # gives the order (t0, chip, queue, static index, repetition).
    order = np.argsort(np.concatenate([b["t0"] for b in blocks]) if blocks
                       else np.zeros(0, np.int64), kind="stable")
    cols = np.zeros((NCOL, N), np.int64)
    col = {name: cols[C[name]] for name in COLUMNS}  # views: derive fills the matrix in place
    for name in COLUMNS:
        if blocks and name in blocks[0]:
            np.take(np.concatenate([b[name] for b in blocks]).astype(np.int64, copy=False),
                    order, out=col[name])
    maps = _stack_maps(program, arch)
    link_vectors = _derive(col, arch, lat_of, alu_lat, alu_ok, maps, nchips, queue_names)

    span = (col["count"] - 1) * col["interval"] + col["lat"]
    ends = col["t0"] + np.maximum(span, 0) + 1
    end_cycle = int(ends.max()) if N else 0
    reach = int(max((col["interval"].max() if N else 1), (col["lat"].max() if N else 1)))
    ring = 1 << max(4, (reach + 2).bit_length())
    busy = _busy(col, nchips, len(queue_names))
    dec = Decoded(cols, nchips, queue_names, maps, link_vectors, ring, end_cycle, busy,
                  static_instructions=static_n)
    dec.counters = _counters(col, arch)
    return dec


def _check_stray_bits(words, op, chip, qname):
    from isa.encoding import decode as decode_word

    lo_table, hi_table = _field_masks()
    lo_mask, hi_mask = lo_table[op], hi_table[op]
    stray = ((words[:, 0] & ~lo_mask) != 0) | ((words[:, 1] & ~hi_mask) != 0)
    if stray.any():
        i = int(np.flatnonzero(stray)[0])
        word = int(words[i, 0]) | (int(words[i, 1]) << 64)
        try:
            decode_word(word)
        except Exception as exc:
            raise _err(chip, qname, i, str(exc)) from None


def _advance_repeats(extra, j, op):
    """Repetition j of an instruction moves on to the next block of its addresses."""
    cnt, stride = extra["count"], extra["stride"]
    mem = (op == oc.OP_MEM_READ) | (op == oc.OP_MEM_WRITE)
    extra["addr"][mem] += j[mem] * cnt[mem] * stride[mem]
    acc = (op == oc.OP_MXM_ABC) | (op == oc.OP_MXM_ACC)
    extra["addr"][acc] += j[acc] * cnt[acc]
    lw = op == oc.OP_MXM_LW
    if lw.any():
        g = np.array([DTYPE_BY_CODE.get(int(d), DTYPE_BY_CODE[0]).nbytes
                      for d in extra["dtype"][lw]])
        extra["addr"][lw] += j[lw] * cnt[lw] * (extra["aux"][lw] // g)


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


def _fail(col, k, queue_names, msg, kind=None, cycle=-1, stream=""):
    qname = queue_names[int(col["qid"][k])]
    idx, chip = int(col["sidx"][k]), int(col["chip"][k])
    mn = BY_OPCODE[int(col["op"][k])].mnemonic
    if kind:
        raise HazardError(kind, f"{mn}: {msg}", chip=chip, unit=qname, instr=idx,
                          cycle=cycle if cycle >= 0 else int(col["t0"][k]), stream=stream)
    raise _err(chip, qname, idx, f"{mn}: {msg}")


def _first(mask):
    return int(np.flatnonzero(mask)[0])


def _derive(col, arch, lat_of, alu_lat, alu_ok, maps, nchips, queue_names) -> int:
    """Fill interval, lat, nops, g_in, g_out, link_base; run the static checks."""
    op = col["op"]
    N = len(op)
    S = arch.streams_per_direction
    width = np.zeros(16, np.int64)
    for code, d in DTYPE_BY_CODE.items():
        width[code] = d.nbytes
    is_float = np.zeros(16, bool)
    for code, d in DTYPE_BY_CODE.items():
        is_float[code] = d.is_float

    def fail(mask, msg, kind=None):
        if mask.any():
            _fail(col, _first(mask), queue_names, msg, kind)

    col["interval"][:] = 1
    col["lat"][:] = lat_of[op]
    col["count"][(op == oc.OP_MXM_IW) | (op == oc.OP_C2C_DESKEW)] = 1
    fail(col["count"] < 1, "count must be at least 1")

    uses_dtype = _opset(op, [oc.OP_MXM_LW, oc.OP_MXM_ABC, oc.OP_MXM_ACC, oc.OP_SXM_SHIFT,
                              oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE, oc.OP_SXM_DISTRIBUTE,
                              oc.OP_VXM_CVT, oc.OP_VXM_CHAIN]) | (op >= oc.VXM_ALU_BASE)
    fail(uses_dtype & (col["dtype"] >= len(DTYPE_BY_CODE)), "invalid dtype code")
    fail((op == oc.OP_VXM_CVT) & (col["dtype2"] >= len(DTYPE_BY_CODE)), "invalid dtype2 code")
    dt = np.minimum(col["dtype"], len(DTYPE_BY_CODE) - 1)
    g_dt = np.where(uses_dtype, width[dt], 1)

    # stream operands: group widths and bounds
    def gw(name):
        return 1 << col[f"{name}_g"]

    for name in ("dst", "src", "src2"):
        # group widths are powers of two
        bad = ((col[name] & (gw(name) - 1)) != 0) | (col[name] + gw(name) > S)
        if name == "src2":
            bad &= col["flag"] == 0
        fail(bad & _has_stream(op, name), f"stream group {name} not aligned or out of range")
    one = _opset(op, [oc.OP_MEM_READ, oc.OP_MEM_GATHER, oc.OP_SXM_TRANSPOSE])
    fail(one & (col["dst_g"] != 0), "dst must be a single stream (group width 1)")
    fail(_opset(op, [oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER, oc.OP_MXM_LW, oc.OP_SXM_TRANSPOSE])
         & (col["src_g"] != 0), "src must be a single stream (group width 1)")
    fail(_opset(op, [oc.OP_MEM_GATHER]) & (col["src_g"] != 1),
         "the address map must be a group of 2 streams")
    fail((op == oc.OP_MEM_SCATTER) & (col["src2_g"] != 1),
         "the address map must be a group of 2 streams")

    vxm = (op >= oc.VXM_ALU_BASE) | (op == oc.OP_VXM_CHAIN) | (op == oc.OP_VXM_CVT)
    sxm_el = _opset(op, [oc.OP_SXM_SHIFT, oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE,
                          oc.OP_SXM_DISTRIBUTE])
    elem = vxm | sxm_el
    fail(elem & (gw("src") != g_dt), "src group width must equal the element width")
    out_w = np.where(op == oc.OP_VXM_CVT, width[np.minimum(col["dtype2"], 7)], g_dt)
    fail(elem & (gw("dst") != out_w), "dst group width must equal the result element width")
    # ALU ops: binary ops read src2 (stream or immediate); chains
    alu_code = np.where(op >= oc.VXM_ALU_BASE, op - oc.VXM_ALU_BASE, 0)
    nops = np.zeros(N, np.int64)
    nops[op >= oc.VXM_ALU_BASE] = 1
    chain = op == oc.OP_VXM_CHAIN
    chain_lat = np.zeros(N, np.int64)
    binary_any = np.zeros(N, bool)
    float_only = np.zeros(N, bool)
    ended = np.zeros(N, bool)
    for slot in range(CHAIN_MAX):
        code = (col["ops"] >> (CHAIN_OP_BITS * slot)) & ((1 << CHAIN_OP_BITS) - 1)
        code = np.where(chain, code, 0)
        if slot == 0:
            code = np.where(op >= oc.VXM_ALU_BASE, alu_code, code)
        fail(ended & (code != 0), "chain ops continue after an empty slot")
        present = code != 0
        fail(present & ~alu_ok[code], "unknown ALU op code in chain")
        fail(chain & (slot == 0) & ~present, "empty chain")
        ended |= ~present
        nops[chain & present] += 1
        chain_lat += np.where(present & chain, alu_lat[code], 0)
        ar = np.array([ALU_BY_CODE[int(x)].arity if int(x) in ALU_BY_CODE else 0
                       for x in range(1 << CHAIN_OP_BITS)])
        fo = np.array([ALU_BY_CODE[int(x)].kind == "float" if int(x) in ALU_BY_CODE else False
                       for x in range(1 << CHAIN_OP_BITS)])
        binary_any |= present & (ar[code] == 2)
        float_only |= present & fo[code]
    col["lat"][chain] = chain_lat[chain]
    col["nops"][:] = nops
    fail(vxm & float_only & ~is_float[dt], "this ALU op needs a floating-point dtype")
    fail(vxm & (col["uidx"] + np.maximum(nops, 1) > arch.vxm_alus),
         f"a chain of that length does not fit from this ALU (ALUs 0..{arch.vxm_alus - 1})")
    fail(binary_any & (col["flag"] == 0) & (gw("src2") != g_dt),
         "src2 group width must equal the element width")
    col["flag"][vxm & ~binary_any & (op != oc.OP_VXM_CVT)] = 0  # unary ops read no B operand

    # SRAM bounds of reads and writes (gather/scatter addresses depend on data)
    mem = (op == oc.OP_MEM_READ) | (op == oc.OP_MEM_WRITE)
    last = col["addr"] + (col["count"] - 1) * col["stride"]
    words = arch.mem_words_per_slice
    oob = mem & ((np.minimum(col["addr"], last) < 0) | (np.maximum(col["addr"], last) >= words))
    if oob.any():
        k = _first(oob)
        _fail(col, k, queue_names, f"addresses {int(col['addr'][k])}..{int(last[k])} outside "
              f"the slice (0..{words - 1})", kind="sram-bounds")
    gs = (op == oc.OP_MEM_GATHER) | (op == oc.OP_MEM_SCATTER)
    fail(gs & ((col["addr"] < 0) | (col["addr"] >= words)), "base address outside the slice",
         kind="sram-bounds")

    # MXM
    mxm_dt = _opset(op, [oc.OP_MXM_LW, oc.OP_MXM_ABC])
    for code in np.unique(dt[mxm_dt]):
        name = DTYPE_BY_CODE[int(code)].name
        try:
            rate = arch.mxm_rate_of(name)
        except Exception as exc:
            _fail(col, _first(mxm_dt & (dt == code)), queue_names, str(exc))
        step = 1.0 / rate
        if abs(step - round(step)) > 1e-9:
            _fail(col, _first(mxm_dt & (dt == code)), queue_names,
                  f"MXM rate {rate} for {name} is not 1/integer")
        col["interval"][(op == oc.OP_MXM_ABC) & (dt == code)] = int(round(step))
    abc, acc, lw = op == oc.OP_MXM_ABC, op == oc.OP_MXM_ACC, op == oc.OP_MXM_LW
    fail(abc & (gw("src") != g_dt), "activation group width must equal the element width")
    fail(acc & ~np.isin(col["dtype"], [oc.DT_INT32, oc.DT_FP32]), "acc emits int32 or fp32")
    fail(acc & (col["dst_g"] != 2), "acc writes a group of 4 streams")
    fail((abc | acc) & ((col["addr"] < 0) | (col["addr"] + col["count"]
                                              > arch.mxm_acc_vectors_per_plane)),
         f"accumulators out of range (0..{arch.mxm_acc_vectors_per_plane - 1})")
    fail(abc & (col["flag"] > 1), "flag must be 0 or 1")
    fail(lw & ((col["aux"] < 1) | ((col["aux"] & (g_dt - 1)) != 0)
               | (col["aux"] > arch.mxm_load_streams_max) | (col["src"] + col["aux"] > S)),
         f"aux must be a multiple of the element width, at most {arch.mxm_load_streams_max}, "
         f"and the streams must exist")
    rows_end = col["addr"] + col["count"] * (col["aux"] // np.maximum(g_dt, 1))
    fail(lw & ((col["addr"] < 0) | (rows_end > arch.mxm_rows)),
         f"weight rows out of range (0..{arch.mxm_rows - 1})")

    # SXM
    nmaps = np.full(nchips, maps.shape[1])
    has_map = np.array([(maps[c] != -1).any(axis=1) for c in range(nchips)])
    mp = (op == oc.OP_SXM_PERMUTE) | (op == oc.OP_SXM_DISTRIBUTE)
    bad_map = mp & ((col["imm"] < 0) | (col["imm"] >= nmaps[col["chip"]]))
    fail(bad_map, "map index not in the program's map table")
    ok_idx = np.clip(col["imm"], 0, maps.shape[1] - 1)
    fail(mp & ~has_map[col["chip"], ok_idx], "map index not in the program's map table")
    _check_maps(col, maps, arch, queue_names)
    tr = op == oc.OP_SXM_TRANSPOSE
    fail(tr & ~np.isin(col["aux"], [1, 2]), "aux (stream step) must be 1 or 2")
    span = 15 * col["aux"]
    fail(tr & ((col["src"] + span >= S) | (col["dst"] + span >= S)),
         "the 16 streams must exist")
    col["imm"][op == oc.OP_SXM_SHIFT] = _signed32(col["imm"][op == oc.OP_SXM_SHIFT])
    col["imm"][op == oc.OP_SXM_ROTATE] = _signed32(col["imm"][op == oc.OP_SXM_ROTATE])

    # group widths seen by the kernels
    col["g_in"][:] = np.where(elem | abc | lw, g_dt, gw("src"))
    col["g_out"][:] = np.where(elem, out_w, gw("dst"))
    _stream_specs(col, op, binary_any, vxm)
    return _links(col, arch, nchips, queue_names)


def _stream_specs(col, op, binary_any, vxm) -> None:
    """Which streams each instruction reads and writes, so the kernels check them generically."""
    reads_src = _has_stream(op, "src") & ~_opset(op, [oc.OP_MEM_SCATTER])
    col["r1_dir"][:] = np.where(reads_src, col["src_dir"], col["src_dir"])
    col["r1_s"][:] = col["src"]
    col["r1_n"][:] = np.where(reads_src, col["g_in"], 0)
    col["r1_n"][op == oc.OP_MXM_LW] = col["aux"][op == oc.OP_MXM_LW]
    col["r1_n"][op == oc.OP_MEM_GATHER] = 2
    col["r1_n"][_opset(op, [oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER])] = 1
    col["r1_step"][:] = 1
    tr = op == oc.OP_SXM_TRANSPOSE
    col["r1_n"][tr] = 16
    col["r1_step"][tr] = col["aux"][tr]
    b = vxm & binary_any & (col["flag"] == 0)
    sc = op == oc.OP_MEM_SCATTER
    col["r2_dir"][:] = col["src2_dir"]
    col["r2_s"][:] = col["src2"]
    col["r2_n"][:] = np.where(b, col["g_in"], np.where(sc, 2, 0))
    writes = _has_stream(op, "dst")
    col["w_dir"][:] = col["dst_dir"]
    col["w_s"][:] = col["dst"]
    col["w_n"][:] = np.where(writes, col["g_out"], 0)
    col["w_n"][_opset(op, [oc.OP_MEM_READ, oc.OP_MEM_GATHER])] = 1
    col["w_step"][:] = 1
    col["w_n"][tr] = 16
    col["w_step"][tr] = col["aux"][tr]


def _signed32(v):
    return np.where(v >= 1 << 31, v - (1 << 32), v)


def _check_maps(col, maps, arch, queue_names):
    op = col["op"]
    lanes = arch.lanes
    sl = np.arange(lanes) // arch.lanes_per_superlane
    for kind, code in (("permute", oc.OP_SXM_PERMUTE), ("distribute", oc.OP_SXM_DISTRIBUTE)):
        ks = np.flatnonzero(op == code)
        used = {(int(col["chip"][k]), int(col["imm"][k])): int(k) for k in ks[::-1]}
        for (c, m), k in sorted(used.items()):
            v = maps[c, m].astype(np.int64)
            if kind == "permute":
                ok = np.array_equal(np.sort(v), np.arange(lanes))
                why = "is not a bijection of the lanes"
            else:
                ok = bool(((v == -1) | ((v >= 0) & (v < lanes))).all())
                ok = ok and bool(((v == -1) | (sl[np.clip(v, 0, lanes - 1)] == sl)).all())
                why = "moves data across superlanes (or has an index out of range)"
            if not ok:
                _fail(col, k, queue_names, f"map {m} {why}")


def _links(col, arch, nchips, queue_names) -> int:
    """Serialisation, link occupancy and send/receive matching (all static)."""
    op = col["op"]
    send, recv = op == oc.OP_C2C_SEND, op == oc.OP_C2C_RECV
    if not (send.any() or recv.any()):
        return 0
    bpc = arch.link_bytes_per_cycle
    g = np.where(send, 1 << col["src_g"], 1 << col["dst_g"])
    ser = np.ceil(g * arch.lanes / bpc).astype(np.int64)
    col["interval"][send] = ser[send]
    col["lat"][send] = arch.lat("c2c_send") + ser[send] + arch.hop_latency_cycles
    arrivals: dict[tuple[int, int], list] = {}
    base = 0
    for k in np.flatnonzero(send):  # sorted by t0, so in order per link
        c, link = int(col["chip"][k]), int(col["uidx"][k])
        peer = arch.link_peer(nchips, c, link)
        if peer is None:
            _fail(col, k, queue_names, f"link {link} of chip {c} is not connected in a system "
                  f"of {nchips} chip(s)")
        lst = arrivals.setdefault(peer, [])
        if lst and lst[-1][1] > col["t0"][k]:
            _fail(col, k, queue_names, f"link {link} is still busy until cycle {lst[-1][1]}",
                  kind="link-busy", stream=f"link {link}")
        n, t0 = int(col["count"][k]), int(col["t0"][k])
        arr = t0 + np.arange(n) * ser[k] + col["lat"][k]
        lst.append((t0, t0 + n * int(ser[k]), arr, int(g[k]), base, k))
        col["link_base"][k] = base
        base += n
    consumed: dict[tuple[int, int], int] = {}
    for k in np.flatnonzero(recv):
        key = (int(col["chip"][k]), int(col["uidx"][k]))
        sends = arrivals.get(key, [])
        n, t0 = int(col["count"][k]), int(col["t0"][k])
        first = consumed.get(key, 0)
        flat = [(a, gg, b + i) for (_, _, arr, gg, b, _) in sends for i, a in enumerate(arr)]
        if first + n > len(flat):
            _fail(col, k, queue_names, f"receives vector {len(flat)} on link {key[1]} but the "
                  f"peer sends only {len(flat)} vector(s)", kind="recv-unmatched",
                  stream=f"link {key[1]}")
        for i in range(n):
            a, gg, b = flat[first + i]
            if gg != int(g[k]):
                _fail(col, k, queue_names, f"group width {int(g[k])} differs from the send's "
                      f"{gg}", kind="recv-unmatched", stream=f"link {key[1]}")
            if a >= t0 + i:
                _fail(col, k, queue_names, f"vector {first + i} arrives at cycle {a}, after the "
                      f"receive reads it at cycle {t0 + i}", kind="recv-early",
                      cycle=t0 + i, stream=f"link {key[1]}")
        col["link_base"][k] = flat[first][2]
        consumed[key] = first + n
    return base


def _busy(col, nchips, nq) -> np.ndarray:
    busy = np.zeros((nchips, nq), np.int64)
    span = col["count"] * col["interval"]
    single = (col["op"] == oc.OP_MXM_IW) | (col["op"] == oc.OP_C2C_DESKEW)
    span = np.where(single, col["lat"], span)
    np.add.at(busy, (col["chip"], col["qid"]), span)
    # a chain also keeps the ALUs after its own busy
    extra = np.maximum(col["nops"] - 1, 0)
    for j in range(1, int(extra.max()) + 1 if len(extra) else 1):
        m = extra >= j
        np.add.at(busy, (col["chip"][m], col["qid"][m] + j), span[m])
    return busy


def _counters(col, arch) -> dict:
    op, cnt = col["op"], col["count"]
    lanes = arch.lanes
    rd = _opset(op, [oc.OP_MEM_READ, oc.OP_MEM_GATHER])
    wr = _opset(op, [oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER])
    ws = _opset(op, [code for code, row in BY_OPCODE.items() if row.writes])
    abc = op == oc.OP_MXM_ABC
    send = op == oc.OP_C2C_SEND
    return {
        "sram_read_bytes": int((cnt[rd]).sum() * lanes),
        "sram_write_bytes": int((cnt[wr]).sum() * lanes),
        "stream_bytes": int((cnt[ws] * col["g_out"][ws]).sum() * lanes),
        "mxm_macs": int(cnt[abc].sum()) * arch.mxm_rows * arch.mxm_cols,
        "link_bytes": int((cnt[send] * col["g_in"][send]).sum() * lanes),
        "vectors": int(cnt.sum()),
    }


def _has_stream(op, name: str) -> np.ndarray:
    return _opset(op, [code for code, row in BY_OPCODE.items()
                       if name in row.reads or name in row.writes])


def _opset(op: np.ndarray, codes) -> np.ndarray:
    """op in codes, by table lookup (np.isin sorts; this is a gather)."""
    table = np.zeros(1 << FIELDS["opcode"].width, bool)
    table[list(codes)] = True
    return table[op]


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
