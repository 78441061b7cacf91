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
from isa.table import ALU_BY_CODE, BY_OPCODE, CHAIN_OP_BITS
from lpusim.errors import HazardError, ProgramFormatError
from lpusim.sim import opcodes as oc
from lpusim.sim.columns import COLUMNS, NCOL, C
from lpusim.sim.derive import derive_columns, opcode_in, queue_error

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
                raise queue_error(c, qname, i, f"invalid opcode {int(op[i]):#04x}")
            kind = oc.UNIT_CODES[qi.kind]
            wrong = (unit_of[op] != 0) & (unit_of[op] != kind)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise queue_error(c, qname, i, f"{BY_OPCODE[int(op[i])].mnemonic} cannot run on a "
                           f"{qi.kind} queue")
            # decode() rejects words with bits outside their fields
            _check_stray_bits(words, op, c, qname)
            cost = np.ones(len(op), np.int64)
            nop = op == oc.OP_NOP
            rep = op == oc.OP_REPEAT
            if (nop & (f["imm"] < 1)).any() or (rep & ((f["imm"] < 1) | (f["aux"] < 1))).any():
                i = int(np.flatnonzero((nop & (f["imm"] < 1)) | (rep & ((f["imm"] < 1)
                                                                         | (f["aux"] < 1))))[0])
                raise queue_error(c, qname, i, "nop and repeat need counts >= 1")
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
                raise queue_error(c, qi.name, i, "repeat must follow an instruction of the unit "
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
    link_vectors = derive_columns(col, arch, lat_of, alu_lat, alu_ok, maps, nchips, queue_names)

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
            raise queue_error(chip, qname, i, str(exc)) from None


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
    rd = opcode_in(op, [oc.OP_MEM_READ, oc.OP_MEM_GATHER])
    wr = opcode_in(op, [oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER])
    ws = opcode_in(op, [code for code, row in BY_OPCODE.items() if row.writes])
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
