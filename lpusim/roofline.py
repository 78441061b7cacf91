"""The roofline: a lower bound on a program's latency on the machine it was built for.

The bound is the largest of the times the program's work needs on each resource at its peak
rate: MXM multiply-accumulates, weights moved into the MXM (load-weight streams), SRAM reads,
SRAM writes, and stream traffic past one position. The report names the resource that sets the
bound and gives the simulated latency's ratio to it.
"""

from __future__ import annotations

from lpusim.sim.decode import Decoded, opcode_classes


def terms(ctr: dict, arch, chips: int = 1) -> dict[str, float]:
    """Cycles each resource needs at its peak rate for the work counted in `ctr`
    (Decoded.counters' keys)."""
    from isa.dtypes import DTYPE_BY_CODE

    lanes = arch.lanes
    chips = max(chips, 1)
    # MACs at the MXM rate of each instruction's dtype (planes work in parallel)
    mac_cycles = 0.0
    for code, n in sorted(ctr["mxm_abc_vectors"].items()):
        rate = arch.mxm_rate_of(DTYPE_BY_CODE[int(code)].name)
        mac_cycles += n / (rate * arch.mxm_planes * chips)
    weight_bytes = ctr["mxm_weight_bytes"]
    install_cycles = weight_bytes / (arch.mxm_load_streams_max * lanes * arch.mxm_planes * chips)
    read_cycles = ctr["sram_read_bytes"] / (arch.mem_slices * lanes * chips)
    write_cycles = ctr["sram_write_bytes"] / (arch.mem_slices * lanes * chips)
    stream_cycles = ctr["stream_bytes"] / (2 * arch.streams_per_direction * lanes * chips)
    return {"mxm_macs": mac_cycles, "mxm_weight_install": install_cycles,
            "sram_read": read_cycles, "sram_write": write_cycles, "streams": stream_cycles}


def roofline(dec: Decoded, arch, cycles: int) -> dict:
    bounds = terms(dec.counters, arch, dec.nchips)
    bound_by = max(bounds, key=bounds.get)
    bound_cycles = bounds[bound_by]
    clock = arch.clock_ghz * 1e9
    return {
        "roofline_cycles": bound_cycles,
        "roofline_latency_s": bound_cycles / clock,
        "roofline_bound_by": bound_by,
        "roofline_ratio": cycles / bound_cycles if bound_cycles else float("inf"),
        "roofline_terms_cycles": bounds,
    }


def op_tags_valid(ops, op_tags, nchips: int) -> bool:
    """Are a program's meta "ops" and "op_tags" well formed (a compiled program's are; a
    hand-edited file's may not be, and then the report leaves the per-op table out)?"""
    if not isinstance(ops, list) or not isinstance(op_tags, list) or len(op_tags) > nchips:
        return False
    if not all(isinstance(o, list) and len(o) == 2 and all(isinstance(x, str) for x in o)
               for o in ops):
        return False
    for chip in op_tags:
        if not isinstance(chip, dict):
            return False
        for rle in chip.values():
            if not isinstance(rle, list) or not all(
                    isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
                    and -1 <= r[0] < len(ops) and r[1] >= 1 for r in rle):
                return False
    return True


def per_op(dec: Decoded, arch, ops: list, op_tags: list) -> list[dict]:
    """The roofline of every IR node of a compiled program: its instructions' work against its
    span (first issue to last result, in cycles; ops overlap, so spans add up to more than the
    program). ops: [[name, type], ...]; op_tags: per chip, per queue, the run-length encoded op
    of every instruction word (compiler/backend/emit.py)."""
    import numpy as np

    from lpusim.sim import opcodes as oc
    from lpusim.sim.columns import C

    raw = dec.raw
    N = raw.shape[1]
    if N == 0 or not ops:
        return []
    chip, qid, sidx = raw[C["chip"]], raw[C["qid"]], raw[C["sidx"]]
    op = np.full(N, -1, np.int64)
    # raw is grouped by (chip, queue): tag each block from its queue's word tags
    cut = np.flatnonzero((np.diff(chip) != 0) | (np.diff(qid) != 0)) + 1
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [N]]), strict=True):
        c, q = int(chip[a]), dec.queue_names[int(qid[a])]
        rle = op_tags[c].get(q) if c < len(op_tags) else None
        if not rle:
            continue
        words = np.repeat([v for v, _ in rle], [n for _, n in rle])
        s = sidx[a:b]
        ok = s < len(words)
        op[a:b][ok] = words[s[ok]]
    keep = op >= 0
    if not keep.any():
        return []
    k = op[keep]
    t0 = raw[C["t0"], keep].astype(np.int64)
    cnt = raw[C["count"], keep].astype(np.int64)
    iv = raw[C["interval"], keep].astype(np.int64)
    lat = raw[C["lat"], keep].astype(np.int64)
    code = raw[C["op"], keep]
    nops = len(ops)
    start = np.full(nops, np.iinfo(np.int64).max)
    end = np.full(nops, -1)
    np.minimum.at(start, k, t0)
    np.maximum.at(end, k, t0 + np.maximum((cnt - 1) * iv + lat, 0) + 1)
    reads, writes, to_stream = opcode_classes()

    def total(mask, weight):
        return np.bincount(k[mask], weights=weight[mask], minlength=nops)

    lanes = arch.lanes
    rd = total(reads[code], cnt) * lanes
    wr = total(writes[code], cnt) * lanes
    st = total(to_stream[code], cnt * raw[C["g_out"], keep]) * lanes
    lw = total(code == oc.OP_MXM_LW, cnt * raw[C["aux"], keep]) * lanes
    abc = code == oc.OP_MXM_ABC
    dts = raw[C["dtype"], keep]
    abc_by_dt = {int(d): total(abc & (dts == d), cnt) for d in np.unique(dts[abc])}
    out = []
    for i in np.flatnonzero(end >= 0):
        ctr = {"sram_read_bytes": rd[i], "sram_write_bytes": wr[i], "stream_bytes": st[i],
               "mxm_weight_bytes": lw[i],
               "mxm_abc_vectors": {d: v[i] for d, v in abc_by_dt.items() if v[i]}}
        bounds = terms(ctr, arch, dec.nchips)
        by = max(bounds, key=bounds.get)
        cycles = int(end[i] - start[i])
        name, typ = ops[i]
        out.append({"name": name, "op": typ, "start_cycle": int(start[i]), "cycles": cycles,
                    "roofline_cycles": float(bounds[by]), "bound_by": by,
                    "ratio": float(cycles / bounds[by]) if bounds[by] else None})
    out.sort(key=lambda r: (r["start_cycle"], r["name"]))
    return out
