"""Traces: the cycle-by-cycle text trace (the golden-trace format) and Chrome/Perfetto JSON.

Text trace, one line per event, in simulation order:

    cycle  phase  chip  unit     instruction                      vector  event

`in` events read operands (streams at the unit's position, SRAM, accumulators, links);
`out` events commit results. Streams are written `E4@46` (eastward stream 4 at position 46).
"""

from __future__ import annotations

import json

import numpy as np

from isa.asm import disassemble_instruction
from isa.encoding import encode
from isa.table import BY_OPCODE
from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C, Decoded


def _word(dec: Decoded, k: int) -> str:
    row = dec.row(k)
    ins = BY_OPCODE[int(row[C["op"]])]
    values = {}
    for name in ins.fields[1:]:
        if name == "imm":  # unsigned 32 bits (the decoded column may hold it wrapped)
            values[name] = int(row[C[name]]) & 0xFFFF_FFFF
        elif name in C:
            values[name] = int(row[C[name]])
        elif name == "shift":
            values[name] = int(row[C["imm"]])
    if "flag" in values and ins.mnemonic.startswith("vxm.") and values["flag"] == 0:
        values.pop("imm", None)
    try:
        return disassemble_instruction(encode(ins.mnemonic, **values))
    except Exception:
        return ins.mnemonic


def _streams(row, name: str, g: int, step: int = 1) -> str:
    d = "EW"[int(row[C[f"{name}_dir"]])]
    s0 = int(row[C[name]])
    pos = int(row[C["pos"]])
    return ",".join(f"{d}{s0 + j * step}" for j in range(g)) + f"@{pos}"


def _event(dec: Decoded, k: int, i: int, phase: int) -> str:
    row = dec.row(k)
    op = int(row[C["op"]])
    ins = BY_OPCODE[op]
    gin, gout = int(row[C["g_in"]]), int(row[C["g_out"]])
    if phase == 0:
        parts = []
        if op == oc.OP_MEM_READ:
            parts.append(f"SRAM[{int(row[C['addr']]) + i * int(row[C['stride']])}]")
        elif op == oc.OP_MXM_ACC:
            parts.append(f"acc[{int(row[C['addr']]) + i}]")
        elif op == oc.OP_C2C_RECV:
            parts.append(f"link vector {int(row[C['link_base']]) + i}")
        elif op == oc.OP_MXM_IW:
            parts.append("weight buffer")
        if "src" in ins.reads:
            if op == oc.OP_SXM_TRANSPOSE:
                parts.append(_streams(row, "src", 16, int(row[C["aux"]])))
            elif op == oc.OP_MXM_LW:
                parts.append(_streams(row, "src", int(row[C["aux"]])))
            elif op in (oc.OP_MEM_WRITE, oc.OP_MEM_SCATTER):
                parts.append(_streams(row, "src", 1))
            elif op == oc.OP_MEM_GATHER:
                parts.append(_streams(row, "src", 2))
            else:
                parts.append(_streams(row, "src", gin))
        if "src2" in ins.reads and int(row[C["flag"]]) == 0 and _reads_b(row):
            parts.append(_streams(row, "src2", 2 if op == oc.OP_MEM_SCATTER
                                  else int(row[C["r2_n"]])))
        return "read " + " ".join(parts) if parts else "issue"
    if op in (oc.OP_MEM_WRITE,):
        return f"write SRAM[{int(row[C['addr']]) + i * int(row[C['stride']])}]"
    if op == oc.OP_MEM_SCATTER:
        return "scatter SRAM"
    if op == oc.OP_MXM_ABC:
        how = "+=" if int(row[C["flag"]]) else "="
        return f"acc[{int(row[C['addr']]) + i}] {how} x @ W"
    if op == oc.OP_MXM_IW:
        return "weights installed"
    if op == oc.OP_SXM_TRANSPOSE:
        return "write " + _streams(row, "dst", 16, int(row[C["aux"]]))
    return "write " + _streams(row, "dst", gout)


def _reads_b(row) -> bool:
    from isa.table import ALU_BY_CODE

    op = int(row[C["op"]])
    if op == oc.OP_MEM_SCATTER:
        return True
    if op >= oc.VXM_ALU_BASE:
        return ALU_BY_CODE[op - oc.VXM_ALU_BASE].arity == 2
    if op == oc.OP_VXM_CHAIN:
        codes = [(int(row[C["ops"]]) >> (6 * s)) & 63 for s in range(4)]
        return any(c in ALU_BY_CODE and ALU_BY_CODE[c].arity == 2 for c in codes)
    return False


def text_trace(dec: Decoded, rows: np.ndarray, header: str = "") -> str:
    """The golden-trace text for the event rows of a run (cycle, phase, instruction, vector)."""
    texts: dict[int, str] = {}
    out = []
    if header:
        out.extend(f"# {line}" for line in header.splitlines())
    out.append(f"# {'cycle':>6} {'phase':<5} {'chip':>4} {'unit':<7} {'instruction':<44} "
               f"{'vector':<9} event")
    for t, phase, k, i in rows.tolist():
        if k not in texts:
            texts[k] = _word(dec, k)
        row = dec.row(k)
        rep = int(row[C["rep"]])
        tag = f"#{int(row[C['sidx']])}" + (f".{rep}" if rep else "")
        unit = dec.queue_names[int(row[C["qid"]])]
        vec = f"{i + 1}/{int(row[C['count']])}"
        out.append(f"  {t:>6} {'in' if phase == 0 else 'out':<5} {int(row[C['chip']]):>4} "
                   f"{unit:<7} {tag + ' ' + texts[k]:<44} {vec:<9} {_event(dec, k, i, phase)}")
    return "\n".join(out) + "\n"


def perfetto_trace(dec: Decoded, arch) -> dict:
    """Chrome trace-event JSON (open in ui.perfetto.dev or chrome://tracing): one process per
    chip, one track per unit; each issued instruction is a slice from issue to last commit."""
    mhz = arch.clock_ghz * 1e3
    events: list[dict] = []
    used = sorted({(int(c), int(q)) for c, q in zip(dec.cols[C["chip"]], dec.cols[C["qid"]],
                                                      strict=True)})
    for chip in sorted({c for c, _ in used}):
        events.append({"ph": "M", "name": "process_name", "pid": chip, "tid": 0,
                       "args": {"name": f"chip {chip}"}})
    for chip, qid in used:
        events.append({"ph": "M", "name": "thread_name", "pid": chip, "tid": qid,
                       "args": {"name": dec.queue_names[qid]}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": chip, "tid": qid,
                       "args": {"sort_index": qid}})
    for k in range(dec.n):
        r = dec.row(k)
        t0 = int(r[C["t0"]])
        span = (int(r[C["count"]]) - 1) * int(r[C["interval"]]) + int(r[C["lat"]]) + 1
        events.append({
            "ph": "X", "name": BY_OPCODE[int(r[C["op"]])].mnemonic,
            "pid": int(r[C["chip"]]), "tid": int(r[C["qid"]]),
            "ts": round(t0 / mhz, 6), "dur": round(span / mhz, 6),
            "args": {"instruction": _word(dec, k), "issue_cycle": t0,
                     "vectors": int(r[C["count"]]), "static_index": int(r[C["sidx"]])},
        })
    return {"displayTimeUnit": "ns", "traceEvents": events,
            "otherData": {"arch": arch.name, "clock_ghz": arch.clock_ghz}}


def perfetto_json(dec: Decoded, arch) -> str:
    return json.dumps(perfetto_trace(dec, arch), sort_keys=True, separators=(",", ":")) + "\n"
