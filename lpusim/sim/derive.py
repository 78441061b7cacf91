"""Per-instruction parameters and the static checks of decode: vector interval and latency,
group widths, the streams each instruction reads and writes, field ranges, SRAM bounds of
plain reads and writes, SXM maps, link serialisation, link occupancy and send/receive
matching. Everything here follows from the program text alone."""

from __future__ import annotations

import numpy as np

from isa.dtypes import DTYPE_BY_CODE
from isa.fields import FIELDS
from isa.table import ALU_BY_CODE, BY_OPCODE, CHAIN_MAX, CHAIN_OP_BITS
from lpusim.errors import HazardError, ProgramFormatError
from lpusim.sim import opcodes as oc


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


def _first(mask):
    return int(np.flatnonzero(mask)[0])


def derive_columns(col, arch, lat_of, alu_lat, alu_ok, maps, nchips, queue_names) -> int:
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

    uses_dtype = opcode_in(op, [oc.OP_MXM_LW, oc.OP_MXM_ABC, oc.OP_MXM_ACC, oc.OP_SXM_SHIFT,
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
    one = opcode_in(op, [oc.OP_MEM_READ, oc.OP_MEM_GATHER, oc.OP_SXM_TRANSPOSE])
    fail(one & (col["dst_g"] != 0), "dst must be a single stream (group width 1)")
    fail(opcode_in(op, [oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER, oc.OP_MXM_LW, oc.OP_SXM_TRANSPOSE])
         & (col["src_g"] != 0), "src must be a single stream (group width 1)")
    fail(opcode_in(op, [oc.OP_MEM_GATHER]) & (col["src_g"] != 1),
         "the address map must be a group of 2 streams")
    fail((op == oc.OP_MEM_SCATTER) & (col["src2_g"] != 1),
         "the address map must be a group of 2 streams")

    vxm = (op >= oc.VXM_ALU_BASE) | (op == oc.OP_VXM_CHAIN) | (op == oc.OP_VXM_CVT)
    sxm_el = opcode_in(op, [oc.OP_SXM_SHIFT, oc.OP_SXM_ROTATE, oc.OP_SXM_PERMUTE,
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
    mxm_dt = opcode_in(op, [oc.OP_MXM_LW, oc.OP_MXM_ABC])
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
    reads_src = _has_stream(op, "src") & ~opcode_in(op, [oc.OP_MEM_SCATTER])
    col["r1_dir"][:] = np.where(reads_src, col["src_dir"], col["src_dir"])
    col["r1_s"][:] = col["src"]
    col["r1_n"][:] = np.where(reads_src, col["g_in"], 0)
    col["r1_n"][op == oc.OP_MXM_LW] = col["aux"][op == oc.OP_MXM_LW]
    col["r1_n"][op == oc.OP_MEM_GATHER] = 2
    col["r1_n"][opcode_in(op, [oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER])] = 1
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
    col["w_n"][opcode_in(op, [oc.OP_MEM_READ, oc.OP_MEM_GATHER])] = 1
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


def _has_stream(op, name: str) -> np.ndarray:
    return opcode_in(op, [code for code, row in BY_OPCODE.items()
                       if name in row.reads or name in row.writes])


def opcode_in(op: np.ndarray, codes) -> np.ndarray:
    """op in codes, by table lookup (np.isin sorts; this is a gather)."""
    table = np.zeros(1 << FIELDS["opcode"].width, bool)
    table[list(codes)] = True
    return table[op]


