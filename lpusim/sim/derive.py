"""Per-instruction parameters and the static checks of decode: vector interval and latency,
group widths, the streams each instruction reads and writes, field ranges, SRAM bounds of
plain reads and writes, SXM maps, link serialisation, link occupancy and send/receive
matching. Everything here follows from the program text alone."""

from __future__ import annotations

import numpy as np
from numba import njit

from isa.dtypes import DTYPE_BY_CODE
from isa.fields import FIELDS
from isa.table import ALU_BY_CODE, BY_OPCODE, CHAIN_CVT, CHAIN_MAX, CHAIN_OP_BITS
from lpusim.errors import HazardError, ProgramFormatError
from lpusim.sim import opcodes as oc
from lpusim.sim.columns import C


def queue_error(chip: int, qname: str, idx: int, msg: str) -> ProgramFormatError:
    return ProgramFormatError(f"chip {chip}, queue {qname}, instruction #{idx}: {msg}")


def _fail(col, k, queue_names, msg, kind=None, cycle=-1, stream=""):
    qname = queue_names[int(col["qid"][k])]
    idx, chip = int(col["sidx"][k]), int(col["chip"][k])
    mn = BY_OPCODE[int(col["op"][k])].mnemonic
    if kind:
        raise HazardError(kind, f"{mn}: {msg}", chip=chip, unit=qname, instr=idx,
                          cycle=cycle if cycle >= 0 else int(col["t0"][k]), stream=stream)
    raise queue_error(chip, qname, idx, f"{mn}: {msg}")


def _in_issue_order(mask, t0):
    """The instructions of `mask` in issue order (ties: the earlier column, as a stable sort)."""
    k = np.flatnonzero(mask)
    return k[np.argsort(t0[k], kind="stable")]


_T0, _OP, _COUNT, _INTERVAL, _LAT = C["t0"], C["op"], C["count"], C["interval"], C["lat"]
_DTYPE, _DTYPE2, _FLAG, _OPS, _NOPS = C["dtype"], C["dtype2"], C["flag"], C["ops"], C["nops"]
_DST, _SRC, _SRC2 = C["dst"], C["src"], C["src2"]
_DST_G, _SRC_G, _SRC2_G = C["dst_g"], C["src_g"], C["src2_g"]
_DST_DIR, _SRC_DIR, _SRC2_DIR = C["dst_dir"], C["src_dir"], C["src2_dir"]
_ADDR, _STRIDE, _IMM, _AUX, _UIDX, _CHIP = (C["addr"], C["stride"], C["imm"], C["aux"], C["uidx"],
                                           C["chip"])
_G_IN, _G_OUT = C["g_in"], C["g_out"]
_R1_DIR, _R1_S, _R1_N, _R1_STEP = C["r1_dir"], C["r1_s"], C["r1_n"], C["r1_step"]
_R2_DIR, _R2_S, _R2_N = C["r2_dir"], C["r2_s"], C["r2_n"]
_W_DIR, _W_S, _W_N, _W_STEP = C["w_dir"], C["w_s"], C["w_n"], C["w_step"]
_B_DT = C["b_dt"]
_CHAIN_CVT = CHAIN_CVT
_READ, _WRITE, _GATHER, _SCATTER = (oc.OP_MEM_READ, oc.OP_MEM_WRITE, oc.OP_MEM_GATHER,
                                    oc.OP_MEM_SCATTER)
_LW, _IW, _ABC, _ACC = oc.OP_MXM_LW, oc.OP_MXM_IW, oc.OP_MXM_ABC, oc.OP_MXM_ACC
_SHIFT, _ROTATE, _PERMUTE, _DISTRIBUTE, _TRANSPOSE = (
    oc.OP_SXM_SHIFT, oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE, oc.OP_SXM_DISTRIBUTE,
    oc.OP_SXM_TRANSPOSE)
_CVT, _CHAIN, _ALU_BASE, _DESKEW = oc.OP_VXM_CVT, oc.OP_VXM_CHAIN, oc.VXM_ALU_BASE, oc.OP_C2C_DESKEW
_DT_INT32, _DT_FP32 = oc.DT_INT32, oc.DT_FP32


# The static checks of Deriver, in the order they are reported. The kernel records, per
# check, the failing instruction that issues first (ties: the earlier column of the matrix, as
# a stable sort by issue cycle orders them); the caller raises the first check that failed.
_CHECKS = (
    ("count", "count must be at least 1", None),
    ("dtype", "invalid dtype code", None),
    ("dtype2", "invalid dtype2 code", None),
    ("dst_group", "stream group dst not aligned or out of range", None),
    ("src_group", "stream group src not aligned or out of range", None),
    ("src2_group", "stream group src2 not aligned or out of range", None),
    ("dst_one", "dst must be a single stream (group width 1)", None),
    ("src_one", "src must be a single stream (group width 1)", None),
    ("gather_map", "the address map must be a group of 2 streams", None),
    ("scatter_map", "the address map must be a group of 2 streams", None),
    ("src_width", "src group width must equal the element width", None),
    ("dst_width", "dst group width must equal the result element width", None),
    *((f"chain{s}_{c}", m, None) for s in range(CHAIN_MAX) for c, m in (
        ("gap", "chain ops continue after an empty slot"),
        ("unknown", "unknown ALU op code in chain"),
        ("empty", "empty chain"))),
    ("float_only", "this ALU op needs a floating-point dtype", None),
    ("chain_cvt", "a chain converts once (one cvt link), dtype2 set by it alone; its binary "
                  "links lie on one side of it, an immediate B before it", None),
    ("chain_fit", "a chain of that length does not fit from this ALU (ALUs 0..{alus})", None),
    ("src2_width", "src2 group width must equal the element width", None),
    ("sram_bounds", "addresses {addr}..{last} outside the slice (0..{words})", "sram-bounds"),
    ("gs_bounds", "base address outside the slice", "sram-bounds"),
    *((f"mxm_rate{code}", "", None) for code in range(16)),
    ("abc_width", "activation group width must equal the element width", None),
    ("acc_dtype", "acc emits int32 or fp32", None),
    ("acc_group", "acc writes a group of 4 streams", None),
    ("acc_range", "accumulators out of range (0..{accs})", None),
    ("abc_flag", "flag must be 0 or 1", None),
    ("lw_aux", "aux must be a multiple of the element width, at most {lmax}, and the streams "
               "must exist", None),
    ("lw_rows", "weight rows out of range (0..{rows})", None),
    ("map_index", "map index not in the program's map table", None),
    ("map_missing", "map index not in the program's map table", None),
    ("tr_aux", "aux (stream step) must be 1 or 2", None),
    ("tr_streams", "the 16 streams must exist", None),
)
_CK = {name: i for i, (name, _, _) in enumerate(_CHECKS)}
_CK_CHAIN = _CK["chain0_gap"]
_CK_RATE = _CK["mxm_rate0"]
_CK_DTYPE = _CK["dtype"]
_CK_COUNT = _CK["count"]
_CK_DTYPE2 = _CK["dtype2"]
_CK_DST_GROUP = _CK["dst_group"]
_CK_SRC_GROUP = _CK["src_group"]
_CK_SRC2_GROUP = _CK["src2_group"]
_CK_DST_ONE = _CK["dst_one"]
_CK_SRC_ONE = _CK["src_one"]
_CK_GATHER_MAP = _CK["gather_map"]
_CK_SCATTER_MAP = _CK["scatter_map"]
_CK_SRC_WIDTH = _CK["src_width"]
_CK_DST_WIDTH = _CK["dst_width"]
_CK_FLOAT_ONLY = _CK["float_only"]
_CK_CHAIN_CVT = _CK["chain_cvt"]
_CK_CHAIN_FIT = _CK["chain_fit"]
_CK_SRC2_WIDTH = _CK["src2_width"]
_CK_SRAM_BOUNDS = _CK["sram_bounds"]
_CK_GS_BOUNDS = _CK["gs_bounds"]
_CK_ABC_WIDTH = _CK["abc_width"]
_CK_ACC_DTYPE = _CK["acc_dtype"]
_CK_ACC_GROUP = _CK["acc_group"]
_CK_ACC_RANGE = _CK["acc_range"]
_CK_ABC_FLAG = _CK["abc_flag"]
_CK_LW_AUX = _CK["lw_aux"]
_CK_LW_ROWS = _CK["lw_rows"]
_CK_MAP_INDEX = _CK["map_index"]
_CK_MAP_MISSING = _CK["map_missing"]
_CK_TR_AUX = _CK["tr_aux"]
_CK_TR_STREAMS = _CK["tr_streams"]


@njit(cache=True)
def _mark(best, check, k, t0):
    b = best[check]
    if b < 0 or t0[k] < t0[b]:
        best[check] = k


@njit(cache=True)
def derive_block(cols, k0, k1, best, lat_of, alu_lat, alu_ok, alu_arity, alu_float, width,
                   is_float, has_dst, has_src, has_src2, uses_dtype, mxm_step, maps_ok, geo):
    """Per instruction of cols[:, k0:k1]: interval, lat, nops, g_in, g_out, the stream operands
    (r1, r2, w) and the static checks. geo = streams, ALUs, words per slice, accumulators per
    plane, load streams, MXM rows. best[check] is the first failing instruction (in issue
    order) of each check of _CHECKS, or -1; updated in place."""
    S, alus, words, accs, lmax, rows = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    t0 = cols[_T0]
    for k in range(k0, k1):
        op = cols[_OP, k]
        cols[_INTERVAL, k] = 1
        lat = lat_of[op]
        if op == _IW or op == _DESKEW:
            cols[_COUNT, k] = 1
        count = cols[_COUNT, k]
        if count < 1:
            _mark(best, _CK_COUNT, k, t0)
        dtype = cols[_DTYPE, k]
        ud = uses_dtype[op]
        if ud and dtype >= 8:
            _mark(best, _CK_DTYPE, k, t0)
        if op == _CVT and cols[_DTYPE2, k] >= 8:
            _mark(best, _CK_DTYPE2, k, t0)
        dt = min(dtype, 7)
        g_dt = width[dt] if ud else 1
        dst, src, src2 = cols[_DST, k], cols[_SRC, k], cols[_SRC2, k]
        gdst, gsrc, gsrc2 = 1 << cols[_DST_G, k], 1 << cols[_SRC_G, k], 1 << cols[_SRC2_G, k]
        flag = cols[_FLAG, k]
        if has_dst[op] and ((dst & (gdst - 1)) != 0 or dst + gdst > S):
            _mark(best, _CK_DST_GROUP, k, t0)
        if has_src[op] and ((src & (gsrc - 1)) != 0 or src + gsrc > S):
            _mark(best, _CK_SRC_GROUP, k, t0)
        if has_src2[op] and flag == 0 and ((src2 & (gsrc2 - 1)) != 0 or src2 + gsrc2 > S):
            _mark(best, _CK_SRC2_GROUP, k, t0)
        if (op == _READ or op == _GATHER or op == _TRANSPOSE) and gdst != 1:
            _mark(best, _CK_DST_ONE, k, t0)
        if (op == _WRITE or op == _SCATTER or op == _LW or op == _TRANSPOSE) and gsrc != 1:
            _mark(best, _CK_SRC_ONE, k, t0)
        if op == _GATHER and gsrc != 2:
            _mark(best, _CK_GATHER_MAP, k, t0)
        if op == _SCATTER and gsrc2 != 2:
            _mark(best, _CK_SCATTER_MAP, k, t0)
        vxm = op >= _ALU_BASE or op == _CHAIN or op == _CVT
        sxm_el = op == _SHIFT or op == _ROTATE or op == _PERMUTE or op == _DISTRIBUTE
        elem = vxm or sxm_el
        if elem and gsrc != g_dt:
            _mark(best, _CK_SRC_WIDTH, k, t0)
        # ALU ops and chains (a chain's cvt link changes the type of the links after it)
        chain = op == _CHAIN
        nops = 1 if op >= _ALU_BASE else 0
        chain_lat = 0
        binary_any = False
        binary_before = False
        binary_after = False
        float_only = False
        ended = False
        cvts = 0
        link_dt = dt
        dt2 = min(cols[_DTYPE2, k], 7)
        ops = cols[_OPS, k]
        for slot in range(CHAIN_MAX):
            code = (ops >> (CHAIN_OP_BITS * slot)) & ((1 << CHAIN_OP_BITS) - 1) if chain else 0
            if slot == 0 and op >= _ALU_BASE:
                code = op - _ALU_BASE
            present = code != 0
            if ended and present:
                _mark(best, _CK_CHAIN + 3 * slot, k, t0)
            if present and not alu_ok[code]:
                _mark(best, _CK_CHAIN + 3 * slot + 1, k, t0)
            if chain and slot == 0 and not present:
                _mark(best, _CK_CHAIN + 3 * slot + 2, k, t0)
            if not present:
                ended = True
            if chain and present:
                nops += 1
                chain_lat += alu_lat[code]
            if chain and code == _CHAIN_CVT:
                cvts += 1
                link_dt = dt2
                continue
            if present and alu_arity[code] == 2:
                binary_any = True
                if cvts:
                    binary_after = True
                else:
                    binary_before = True
            if present and alu_float[code] and not is_float[link_dt]:
                float_only = True
        if chain:
            lat = chain_lat
        if chain and (cvts > 1 or (cvts == 0 and cols[_DTYPE2, k] != 0)
                      or (binary_before and binary_after) or (binary_after and flag != 0)):
            _mark(best, _CK_CHAIN_CVT, k, t0)
        if chain and cvts and cols[_DTYPE2, k] >= 8:
            _mark(best, _CK_DTYPE2, k, t0)
        b_dt = dt2 if binary_after else dt
        cols[_B_DT, k] = b_dt
        out_w = width[dt2] if op == _CVT or (chain and cvts > 0) else g_dt
        if elem and gdst != out_w:
            _mark(best, _CK_DST_WIDTH, k, t0)
        cols[_NOPS, k] = nops
        if vxm and float_only:
            _mark(best, _CK_FLOAT_ONLY, k, t0)
        if vxm and cols[_UIDX, k] + max(nops, 1) > alus:
            _mark(best, _CK_CHAIN_FIT, k, t0)
        if binary_any and flag == 0 and gsrc2 != width[b_dt]:
            _mark(best, _CK_SRC2_WIDTH, k, t0)
        if vxm and not binary_any and op != _CVT:
            flag = 0  # unary ops read no B operand
            cols[_FLAG, k] = 0
        # SRAM bounds of plain reads and writes (gather/scatter addresses depend on data)
        addr = cols[_ADDR, k]
        if op == _READ or op == _WRITE:
            last = addr + (count - 1) * cols[_STRIDE, k]
            if min(addr, last) < 0 or max(addr, last) >= words:
                _mark(best, _CK_SRAM_BOUNDS, k, t0)
        if (op == _GATHER or op == _SCATTER) and (addr < 0 or addr >= words):
            _mark(best, _CK_GS_BOUNDS, k, t0)
        # MXM
        abc, acc, lw = op == _ABC, op == _ACC, op == _LW
        if abc or lw:
            if mxm_step[dt] < 0:
                _mark(best, _CK_RATE + dt, k, t0)
            elif abc:
                cols[_INTERVAL, k] = mxm_step[dt]
        if abc and gsrc != g_dt:
            _mark(best, _CK_ABC_WIDTH, k, t0)
        if acc and not (dtype == _DT_INT32 or dtype == _DT_FP32):
            _mark(best, _CK_ACC_DTYPE, k, t0)
        if acc and gdst != 4:
            _mark(best, _CK_ACC_GROUP, k, t0)
        if (abc or acc) and (addr < 0 or addr + count > accs):
            _mark(best, _CK_ACC_RANGE, k, t0)
        if abc and flag > 1:
            _mark(best, _CK_ABC_FLAG, k, t0)
        aux = cols[_AUX, k]
        if lw and (aux < 1 or (aux & (g_dt - 1)) != 0 or aux > lmax or src + aux > S):
            _mark(best, _CK_LW_AUX, k, t0)
        if lw and (addr < 0 or addr + count * (aux // max(g_dt, 1)) > rows):
            _mark(best, _CK_LW_ROWS, k, t0)
        # SXM
        imm = cols[_IMM, k]
        if op == _PERMUTE or op == _DISTRIBUTE:
            if imm < 0 or imm >= maps_ok.shape[1]:
                _mark(best, _CK_MAP_INDEX, k, t0)
            if not maps_ok[cols[_CHIP, k], min(max(imm, 0), maps_ok.shape[1] - 1)]:
                _mark(best, _CK_MAP_MISSING, k, t0)
        tr = op == _TRANSPOSE
        if tr and not (aux == 1 or aux == 2):
            _mark(best, _CK_TR_AUX, k, t0)
        if tr and (src + 15 * aux >= S or dst + 15 * aux >= S):
            _mark(best, _CK_TR_STREAMS, k, t0)
        if (op == _SHIFT or op == _ROTATE) and imm >= 1 << 31:
            cols[_IMM, k] = imm - (1 << 32)
        cols[_LAT, k] = lat
        # group widths seen by the kernels
        g_in = g_dt if (elem or abc or lw) else gsrc
        g_out = out_w if elem else gdst
        cols[_G_IN, k] = g_in
        cols[_G_OUT, k] = g_out
        # the streams each instruction reads and writes, so the kernels check them generically
        reads_src = has_src[op] and op != _SCATTER
        r1_n = g_in if reads_src else 0
        if lw:
            r1_n = aux
        elif op == _GATHER:
            r1_n = 2
        elif op == _WRITE or op == _SCATTER:
            r1_n = 1
        elif tr:
            r1_n = 16
        cols[_R1_DIR, k] = cols[_SRC_DIR, k]
        cols[_R1_S, k] = src
        cols[_R1_N, k] = r1_n
        cols[_R1_STEP, k] = aux if tr else 1
        cols[_R2_DIR, k] = cols[_SRC2_DIR, k]
        cols[_R2_S, k] = src2
        if vxm and binary_any and flag == 0:
            cols[_R2_N, k] = width[b_dt]
        elif op == _SCATTER:
            cols[_R2_N, k] = 2
        else:
            cols[_R2_N, k] = 0
        w_n = g_out if has_dst[op] else 0
        if op == _READ or op == _GATHER:
            w_n = 1
        elif tr:
            w_n = 16
        cols[_W_DIR, k] = cols[_DST_DIR, k]
        cols[_W_S, k] = dst
        cols[_W_N, k] = w_n
        cols[_W_STEP, k] = aux if tr else 1


class Deriver:
    """The per-instruction parameters in steps: decode's fill kernel calls `derive_block`
    with `tables` and `best` on each chunk of raw right after writing it, while it is in cache
    (it fills interval, lat, nops, g_in, g_out and the stream operands and runs the static
    checks); `finish` raises the first failure, checks SXM maps and links, fills link_base, and
    returns the vectors carried over links."""

    def __init__(self, arch, lat_of, alu_lat, alu_ok, maps):
        n_op = 1 << FIELDS["opcode"].width
        n_alu = 1 << CHAIN_OP_BITS
        width = np.zeros(16, np.int64)
        is_float = np.zeros(16, np.bool_)
        for code, d in DTYPE_BY_CODE.items():
            width[code], is_float[code] = d.nbytes, d.is_float
        arity = np.zeros(n_alu, np.int64)
        float_alu = np.zeros(n_alu, np.bool_)
        for code, a in ALU_BY_CODE.items():
            arity[code], float_alu[code] = a.arity, a.kind == "float"
        has = {name: np.zeros(n_op, np.bool_) for name in ("dst", "src", "src2")}
        for code, row in BY_OPCODE.items():
            for name, table in has.items():
                table[code] = name in row.reads or name in row.writes
        uses_dtype = np.zeros(n_op, np.bool_)
        uses_dtype[[oc.OP_MXM_LW, oc.OP_MXM_ABC, oc.OP_MXM_ACC, oc.OP_SXM_SHIFT,
                    oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE, oc.OP_SXM_DISTRIBUTE, oc.OP_VXM_CVT,
                    oc.OP_VXM_CHAIN]] = True
        uses_dtype[oc.VXM_ALU_BASE:] = True
        # the MXM's vector interval per dtype: 1 / rate, which must be an integer
        mxm_step = np.full(8, -1, np.int64)
        self.rate_error = {}
        for code, d in DTYPE_BY_CODE.items():
            try:
                rate = arch.mxm_rate_of(d.name)
            except Exception as exc:
                self.rate_error[code] = str(exc)
                continue
            step = 1.0 / rate
            if abs(step - round(step)) > 1e-9:
                self.rate_error[code] = f"MXM rate {rate} for {d.name} is not 1/integer"
            else:
                mxm_step[code] = int(round(step))
        maps_ok = np.ascontiguousarray((maps != -1).any(axis=2))
        geo = np.array([arch.streams_per_direction, arch.vxm_alus, arch.mem_words_per_slice,
                        arch.mxm_acc_vectors_per_plane, arch.mxm_load_streams_max,
                        arch.mxm_rows], np.int64)
        self.arch, self.maps = arch, maps
        self.tables = (lat_of, alu_lat, alu_ok, arity, float_alu, width, is_float, has["dst"],
                       has["src"], has["src2"], uses_dtype, mxm_step, maps_ok, geo)
        self.best = np.full(len(_CHECKS), -1, np.int64)

    def finish(self, col, nchips, queue_names) -> int:
        arch = self.arch
        for i in np.flatnonzero(self.best >= 0)[:1]:
            k = int(self.best[i])
            name, msg, kind = _CHECKS[i]
            if name.startswith("mxm_rate"):
                msg = self.rate_error[int(name[len("mxm_rate"):])]
            elif name == "sram_bounds":
                addr = int(col["addr"][k])
                last = addr + (int(col["count"][k]) - 1) * int(col["stride"][k])
                msg = msg.format(addr=addr, last=last, words=arch.mem_words_per_slice - 1)
            else:
                msg = msg.format(alus=arch.vxm_alus - 1, accs=arch.mxm_acc_vectors_per_plane - 1,
                                 lmax=arch.mxm_load_streams_max, rows=arch.mxm_rows - 1)
            _fail(col, k, queue_names, msg, kind)
        _check_maps(col, self.maps, arch, queue_names)
        return _links(col, arch, nchips, queue_names)


def _check_maps(col, maps, arch, queue_names):
    op = col["op"]
    lanes = arch.lanes
    sl = np.arange(lanes) // arch.lanes_per_superlane
    for kind, code in (("permute", oc.OP_SXM_PERMUTE), ("distribute", oc.OP_SXM_DISTRIBUTE)):
        ks = _in_issue_order(op == code, col["t0"])
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
    for k in _in_issue_order(send, col["t0"]):  # in order per link
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
    for k in _in_issue_order(recv, col["t0"]):
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
