"""The simulator's Python shell: validate, bind tensors, run an engine, read results, report.

    result = simulate(program, {"x": x})          # functional + timing, Numba fast path
    result.outputs["y"], result.report["cycles"]
    simulate(program, mode="timing")              # timing only: no values, every hazard check
                                                  # that does not depend on data
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from isa.dtypes import dtype as dtype_info
from isa.dtypes import numpy_dtype
from lpusim.errors import HazardError, LpusimError
from lpusim.program import Program, TensorSpec
from lpusim.roofline import op_tags_valid, per_op, roofline
from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C, Decoded, decode, take_columns
from lpusim.sim.verify import timing_clean

MODES = ("functional", "timing")
ENGINES = ("fast", "reference")


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]
    report: dict
    decoded: Decoded = field(repr=False)
    trace_rows: np.ndarray = field(repr=False)  # (n, 4): cycle, phase, instruction, vector
    arch: object = field(repr=False, default=None)


def _arch_for(program: Program, arch):
    from lpusim.arch import arch_from_config, load_arch

    if arch is None:
        return arch_from_config(program.arch_config)
    if isinstance(arch, str):
        return load_arch(arch)
    return arch


def tensor_vectors(t: TensorSpec, values: np.ndarray, lanes: int) -> np.ndarray:
    """Values -> (vectors, g, lanes) uint8 byte planes in the "rows" layout."""
    rows, cols = t.rows_cols()
    vpr = max(1, math.ceil(cols / lanes))
    g = dtype_info(t.dtype).nbytes
    a = np.zeros((rows, vpr * lanes), numpy_dtype(t.dtype))
    a[:, :cols] = np.asarray(values).reshape(rows, cols)
    b = a.reshape(rows * vpr, lanes).view(np.uint8).reshape(rows * vpr, lanes, g)
    return np.ascontiguousarray(b.transpose(0, 2, 1))


def vectors_tensor(t: TensorSpec, planes: np.ndarray, lanes: int) -> np.ndarray:
    rows, cols = t.rows_cols()
    vpr = max(1, math.ceil(cols / lanes))
    flat = np.ascontiguousarray(planes.transpose(0, 2, 1)).view(numpy_dtype(t.dtype))
    return flat.reshape(rows, vpr * lanes)[:, :cols].reshape(t.shape).copy()


def _addresses(t: TensorSpec, lanes: int) -> np.ndarray:
    return t.addr + np.arange(t.vectors(lanes)) * t.stride


def _bind(program: Program, arch, sram: np.ndarray, inputs: dict) -> None:
    lanes = arch.lanes
    given = dict(inputs or {})
    names = {t.name for t in program.tensors}
    unknown = sorted(set(given) - names)
    if unknown:
        raise LpusimError(f"input {unknown[0]!r} is not a tensor of the program "
                          f"(tensors: {', '.join(sorted(names)) or 'none'})")
    index_inputs = {k: (int(v[0]), int(v[1]))
                    for k, v in (program.meta.get("index_inputs") or {}).items()}
    # integer inputs whose arithmetic the compiler proved exact in this range only
    input_ranges = {k: (int(v[0]), int(v[1]))
                    for k, v in (program.meta.get("input_ranges") or {}).items()}
    for t in program.tensors:
        if t.name in given:
            values = np.asarray(given[t.name])
        elif t.kind == "input":
            raise LpusimError(f"input tensor {t.name!r} ({t.dtype} {list(t.shape)}) was not "
                              "given a value")
        elif t.data is not None:
            values = t.data
        else:
            if t.kind in ("weight", "const"):
                raise LpusimError(f"{t.kind} tensor {t.name!r} has no data in the program; "
                                  "give it as an input or run in timing mode")
            continue
        if tuple(values.shape) != tuple(t.shape):
            raise LpusimError(f"tensor {t.name!r}: expected shape {list(t.shape)}, got "
                              f"{list(values.shape)}")
        target = np.dtype(numpy_dtype(t.dtype))
        if values.dtype.kind in "iub" and target.kind == "i" and values.size:
            lo, hi = np.iinfo(target).min, np.iinfo(target).max
            if t.name in index_inputs:  # Gather indices: the table's rows
                lo, hi = index_inputs[t.name]
            elif t.name in input_ranges:
                lo, hi = input_ranges[t.name]
            if int(values.min()) < lo or int(values.max()) > hi:
                bad = int(values.min()) if int(values.min()) < lo else int(values.max())
                raise LpusimError(f"input {t.name!r} holds {bad}, outside [{lo}, {hi}] "
                                  + ("(the rows of the table it indexes)"
                                     if t.name in index_inputs else
                                     "(the range in which the program's integer arithmetic "
                                     "on it is exact)" if t.name in input_ranges
                                     else f"({t.dtype})"))
        try:
            cast = values.astype(numpy_dtype(t.dtype))
        except (TypeError, ValueError) as exc:
            raise LpusimError(f"tensor {t.name!r}: cannot convert {values.dtype} to "
                              f"{t.dtype}: {exc}") from None
        vec = tensor_vectors(t, cast, lanes)
        addrs = _addresses(t, lanes)
        for b, sl in enumerate(t.slices):
            sram[t.chip, sl, addrs] = vec[:, b]


_WIDE_INTS = {"int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
              "uint64": np.uint64}


def _read_outputs(program: Program, arch, sram: np.ndarray) -> dict[str, np.ndarray]:
    host_types = program.meta.get("host_types") or {}
    out = {}
    for t in program.tensors:
        if t.kind != "output":
            continue
        addrs = _addresses(t, arch.lanes)
        planes = np.stack([sram[t.chip, sl, addrs] for sl in t.slices], axis=1)
        out[t.name] = vectors_tensor(t, planes, arch.lanes)
        host = host_types.get(t.name)
        if host == "bool":  # held as 0.0/1.0 on chip
            out[t.name] = out[t.name] != 0
        elif host in _WIDE_INTS:  # held in a narrower signed type; the values fit (the
            out[t.name] = out[t.name].astype(_WIDE_INTS[host])  # compiler only selects them)
    # outputs the compiler kept in parts (too large for one group of slices): joined
    for name, how in sorted((program.meta.get("joined_outputs") or {}).items()):
        parts = [out.pop(p) for p in how["parts"]]
        out[name] = np.concatenate(parts, axis=int(how["axis"]))
    return out


def _inflight_bound(col: np.ndarray) -> int:
    """An upper bound on events pending (and vectors in flight) at any one cycle."""
    if col.shape[1] == 0:
        return 16
    cnt, iv, lat = col[C["count"]], col[C["interval"]], col[C["lat"]]
    w = np.minimum(cnt, lat // iv + 1) + 1
    start = col[C["t0"]]
    end = start + (cnt - 1) * iv + lat + 1
    times = np.concatenate([start, end])
    deltas = np.concatenate([w, -w])
    order = np.lexsort((deltas, times))
    return int(np.cumsum(deltas[order]).max()) + 16


def simulate(program: Program, inputs: dict | None = None, *, arch=None, mode: str = "functional",
             engine: str = "fast", trace: bool = False) -> SimResult:
    """Run `program`. Raises HazardError if it breaks a rule of the machine."""
    from lpusim.program_io import validate_program

    if mode not in MODES:
        raise LpusimError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if engine not in ENGINES:
        raise LpusimError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    arch = _arch_for(program, arch)
    validate_program(program, arch)
    dec = decode(program, arch)
    functional = mode == "functional"
    shape = (dec.nchips, arch.mem_slices, arch.mem_words_per_slice, arch.lanes)
    sram = np.zeros(shape if functional else (1, 1, 1, 1), np.uint8)
    if functional:  # timing mode needs no values, so it ignores inputs
        _bind(program, arch, sram, inputs)
    if engine == "reference":
        from lpusim.sim import reference

        rows, _ = reference.run(dec, arch, sram if functional else None, functional, trace)
    elif not functional and not trace and timing_clean(dec, arch):
        rows = np.zeros((0, 4), np.int64)  # no hazard: the counters are all static
    else:
        rows = _run_fast(dec, arch, sram, functional, trace)
    outputs = _read_outputs(program, arch, sram) if functional else {}
    report = make_report(dec, arch, mode, engine, program.meta)
    return SimResult(outputs, report, dec, rows, arch)


def _kernel(dec: Decoded, cols, arch, sram, functional: bool, trace: bool, streams: bool):
    from lpusim.sim.kernels import run_kernel

    n_events = int((cols[C["count"]] * 2).sum()) if cols.shape[1] else 0
    trace_rows = np.zeros((n_events if trace else 1, 4), np.int64)
    status, ntrace = run_kernel(
        cols, dec.maps, sram, functional, arch.lanes, arch.lanes_per_superlane,
        arch.num_positions, arch.mem_slices, arch.mem_words_per_slice, arch.mem_words_per_bank,
        arch.streams_per_direction, arch.mxm_planes, arch.mxm_rows,
        arch.mxm_acc_vectors_per_plane, arch.vxm_alus, dec.link_vectors, dec.ring,
        _inflight_bound(cols), trace_rows, trace, streams)
    return status, trace_rows[:ntrace] if trace else np.zeros((0, 4), np.int64)


def _run_fast(dec: Decoded, arch, sram, functional: bool, trace: bool) -> np.ndarray:
    status, rows = _kernel(dec, dec.cols, arch, sram, functional, trace, True)
    if status[0] != 0:
        raise kernel_hazard(dec, status)
    return rows


def run_mxm_only(dec: Decoded, arch, mask: np.ndarray) -> bool:
    """The MXM state rules on the MXM instructions alone (streams unchecked): True if clean."""
    sram = np.zeros((1, 1, 1, 1), np.uint8)
    k = np.flatnonzero(mask)  # of dec.raw: put them in issue order (stable, as dec.cols is)
    k = k[np.argsort(dec.raw[C["t0"], k], kind="stable")]
    status, _ = _kernel(dec, take_columns(dec.raw, k), arch, sram, False, False, False)
    return status[0] == 0


_HAZARD_TEXT = {
    "stream-conflict": "a second producer on this stream at this position and cycle",
    "stream-empty": "no value on the stream here in this cycle",
    "mem-port": "MEM slice {d} port conflict (two reads, two writes, or a read and a write on "
                "one bank) in this cycle",
    "sram-bounds": "tile {d} address outside the slice",
    "mxm-unloaded": "no loaded weights to install, or no weights installed",
    "mxm-dtype": "dtype differs from the loaded/installed weights or accumulator {d}",
    "mxm-acc-conflict": "two results into accumulator {d} in one cycle",
    "alu-busy": "VXM ALU {d} is already busy in this cycle",
    "mxm-install-busy": "installs while the previous install on MXM plane {d} is still in "
                        "flight",
}


def kernel_hazard(dec: Decoded, status) -> HazardError:
    from lpusim.sim.reference import stream_name

    kind = oc.HAZARDS[int(status[0])]
    k, t, d, s, detail = (int(x) for x in status[1:6])
    row = dec.row(k)
    stream = stream_name(d, s) if s >= 0 and d >= 0 else ""
    return HazardError(kind, f"{dec.describe(k)}: " + _HAZARD_TEXT[kind].format(d=detail),
                       chip=int(row[C["chip"]]), unit=dec.queue_names[int(row[C["qid"]])],
                       instr=int(row[C["sidx"]]), cycle=t, stream=stream)


def make_report(dec: Decoded, arch, mode: str, engine: str, meta: dict | None = None) -> dict:
    """Counters in numbers with units. Cycles include the superlane skew: a vector op that
    starts at tile 0 finishes superlanes - 1 cycles later at the last tile. A compiled
    program's meta (ops, op_tags) adds the roofline of every op ("ops")."""
    skew = arch.superlanes - 1
    cycles = dec.end_cycle + skew if dec.n else 0
    seconds = cycles / (arch.clock_ghz * 1e9)
    ctr = dec.counters
    units = []
    for c in range(dec.nchips):
        for q in arch.queues:
            b = int(dec.busy[c, q.id])
            if b:
                units.append({"chip": c, "unit": q.name, "kind": q.kind, "busy_cycles": b,
                              "utilisation": b / cycles if cycles else 0.0})
    by_kind = {}
    for kind in ("MEM", "VXM", "MXM", "SXM", "C2C"):
        qs = [q for q in arch.queues if q.kind == kind]
        total = int(sum(dec.busy[c, q.id] for c in range(dec.nchips) for q in qs))
        cap = cycles * len(qs) * dec.nchips
        by_kind[kind] = {"busy_cycles": total, "units": len(qs) * dec.nchips,
                         "utilisation": total / cap if cap else 0.0}
    dts = sorted(ctr["mxm_abc_vectors"])
    from isa.dtypes import DTYPE_BY_CODE

    mxm_dtypes = [DTYPE_BY_CODE[d].name for d in dts]
    peak_macs = (arch.mxm_planes * arch.mxm_rows * arch.mxm_cols * cycles * dec.nchips
                 * max([arch.mxm_rate_of(d) for d in mxm_dtypes] or [1.0]))

    def per_s(nbytes, scale):
        return nbytes / seconds / scale if seconds else 0.0

    return {
        "arch": arch.name,
        "mode": "functional" if mode == "functional" else "timing-only",
        "engine": engine,
        "chips": dec.nchips,
        "clock_ghz": arch.clock_ghz,
        "cycles": cycles,
        "latency_s": seconds,
        "latency_us": seconds * 1e6,
        "instructions": dec.static_instructions,
        "issued_instructions": dec.n,
        "vectors": ctr["vectors"],
        "sram": {
            "read_bytes": ctr["sram_read_bytes"],
            "write_bytes": ctr["sram_write_bytes"],
            "read_tb_s": per_s(ctr["sram_read_bytes"], 1e12),
            "write_tb_s": per_s(ctr["sram_write_bytes"], 1e12),
            "peak_read_tb_s": arch.sram_read_bw_tb_s * dec.nchips,
            "peak_write_tb_s": arch.sram_write_bw_tb_s * dec.nchips,
        },
        "streams": {"bytes": ctr["stream_bytes"], "tb_s": per_s(ctr["stream_bytes"], 1e12),
                    "peak_tb_s": arch.stream_bw_tb_s * dec.nchips},
        "mxm": {"macs": ctr["mxm_macs"], "peak_macs": int(peak_macs),
                "utilisation": ctr["mxm_macs"] / peak_macs if peak_macs else 0.0,
                "dtypes": mxm_dtypes,
                "emulated_dtypes": [d for d in mxm_dtypes if arch.is_emulated(d)]},
        "links": {"bytes": ctr["link_bytes"], "gb_s": per_s(ctr["link_bytes"], 1e9),
                  "peak_gb_s_per_link": arch.link_bw_gb_s},
        **roofline(dec, arch, cycles),
        "unit_kinds": by_kind,
        "units": units,
        "superlane_skew_cycles": skew,
        **({"ops": per_op(dec, arch, meta["ops"], meta["op_tags"])}
           if meta and op_tags_valid(meta.get("ops"), meta.get("op_tags"), dec.nchips)
           else {}),
    }
