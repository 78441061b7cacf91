"""Simulator throughput on a large generated program. Prints numbers; asserts nothing.

    python tools/bench.py [--blocks N] [--count V] [--engine fast]

The program streams elementwise work through the chip in steady state: in each block, seven
independent lanes each read two int8 tensors from MEM slices on the west side, add them on
their own VXM ALU, and write the result back (4 instructions per lane per block), plus an int8
matmul tile on MXM plane 0 fed from the west (LW 320 rows, IW, ABC, ACC). Issue cycles are
computed from the preset's latencies, so the program is hazard-free by construction.

Reported: instructions (static, in the program) per second, vectors per second and simulated
cycles per second, in timing-only and functional mode, plus numpy doing the same arithmetic
(the adds and the matmuls) for comparison. The first run of each mode includes Numba's compile
(or cache load) time and is reported separately; the rates are from the median of the steady
runs that follow (--repeat).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from isa.encoding import encode_array
from lpusim.arch import load_arch
from lpusim.program import ChipProgram, Program, TensorSpec
from lpusim.simulator import simulate

LANES_USED = 7


def build(arch, blocks: int, count: int, matmul: bool) -> tuple[Program, dict]:
    lat = arch.lat
    vxm = arch.vxm_position
    queues: dict[str, list[tuple[int, np.ndarray]]] = {}

    def put(qname, t, words):
        queues.setdefault(qname, []).append((t, words))

    period = count + 2
    T = np.arange(blocks) * period + 64  # cycle the operands meet at the VXM
    naddr = 2048 // count * count
    addr = (np.arange(blocks) * count) % naddr
    tensors = []
    for j in range(LANES_USED):
        a, b, c = 3 * j, 3 * j + 1, 3 * j + 2  # west MEM slices: x, y, z
        pos = [arch.mem_slice_position(s) for s in (a, b, c)]
        tx = T - lat("mem_read") - (vxm - pos[0])
        ty = T - lat("mem_read") - (vxm - pos[1])
        tz = T + lat("vxm_alu") + (vxm - pos[2])
        n = blocks
        put(f"MEM_W{a}", tx, encode_array("mem.read", n, dst=2 * j, addr=addr, count=count))
        put(f"MEM_W{b}", ty, encode_array("mem.read", n, dst=2 * j + 1, addr=addr, count=count))
        put(f"VXM{j}", T, encode_array("vxm.add", n, dtype=0, dst=j, dst_dir=1, src=2 * j,
                                        src2=2 * j + 1, count=count))
        put(f"MEM_W{c}", tz, encode_array("mem.write", n, src=j, src_dir=1, addr=addr,
                                           count=count))
        for name, s in (("x", a), ("y", b), ("z", c)):
            tensors.append(TensorSpec(f"{name}{j}", "output" if name == "z" else "input",
                                      "int8", (naddr, arch.lanes), 0, (s,), 0))
    macs = 0
    if matmul:
        # weights: the 16 westmost slices (MEM_W28..W43) each read one row per cycle westward
        # to MXM plane 0 at position 0, so a 320-row tile loads in 20 cycles.
        ns = arch.mxm_load_streams_max
        wsl = list(range(arch.mem_slices_per_hemisphere - ns, arch.mem_slices_per_hemisphere))
        xs = arch.mem_slices_per_hemisphere - ns - 1  # activation slice
        os_ = [xs - 1 - b for b in range(4)]  # int32 result byte planes
        mb = max(1, blocks // 4)
        Tm = np.arange(mb) * max(period, 400) + 64  # LW start at the MXM
        rows_per = arch.mxm_rows // ns
        for r, s in enumerate(wsl):
            p = arch.mem_slice_position(s)
            put(f"MEM_W{s}", Tm - lat("mem_read") - (p - 0),
                encode_array("mem.read", mb, dst=r, dst_dir=1, addr=r * rows_per,
                             count=rows_per))
        put("MXM0", Tm, encode_array("mxm.lw", mb, dtype=0, src=0, src_dir=1, aux=ns,
                                     count=rows_per))
        t_iw = Tm + rows_per + lat("mxm_load")
        put("MXM0", t_iw, encode_array("mxm.iw", mb))
        t_abc = t_iw + lat("mxm_install") + 1
        px = arch.mem_slice_position(xs)
        put(f"MEM_W{xs}", t_abc - lat("mem_read") - px,
            encode_array("mem.read", mb, dst=20, dst_dir=1, addr=0, count=count))
        put("MXM0", t_abc, encode_array("mxm.abc", mb, dtype=0, src=20, src_dir=1,
                                        count=count))
        t_acc = t_abc + count + lat("mxm_activate")
        put("MXM0", t_acc, encode_array("mxm.acc", mb, dtype=2, dst=24, dst_g=2, count=count))
        for b, s in enumerate(os_):
            p = arch.mem_slice_position(s)
            put(f"MEM_W{s}", t_acc + lat("mxm_accumulate") + p,
                encode_array("mem.write", mb, src=24 + b, addr=0, count=count))
        # the weights (16 rows per slice) and activations stay zero-initialised SRAM: the
        # arithmetic is done all the same
        macs = mb * count * arch.mxm_rows * arch.mxm_cols
    chip = ChipProgram()
    order = {q.name: q.id for q in arch.queues}
    for qname in sorted(queues, key=order.__getitem__):
        parts = queues[qname]
        t = np.concatenate([p[0] for p in parts])
        w = np.concatenate([p[1] for p in parts])
        idx = np.argsort(t, kind="stable")
        t, w = t[idx], w[idx]
        gaps = np.diff(np.concatenate([[0], t])) - np.concatenate([[0], np.ones(len(t) - 1,
                                                                               np.int64)])
        nop = encode_array("nop", len(t), imm=np.maximum(gaps, 1))
        out = np.empty((2 * len(t), 2), np.uint64)
        out[0::2], out[1::2] = nop, w
        keep = np.ones(2 * len(t), bool)
        keep[0::2] = gaps > 0
        chip.queues[qname] = out[keep]
    prog = Program(arch.config, [chip], tensors, {"generator": "tools/bench.py"})
    return prog, {"adds": blocks * LANES_USED * count * arch.lanes, "macs": macs}


def numpy_baseline(arch, stats, count) -> float:
    """Seconds for numpy to do the same arithmetic: the int8 adds and the int8 matmuls."""
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (count, arch.lanes), dtype=np.int8)
    y = rng.integers(-128, 128, (count, arch.lanes), dtype=np.int8)
    w = rng.integers(-128, 128, (arch.mxm_rows, arch.mxm_cols)).astype(np.int8)
    n_add = stats["adds"] // (count * arch.lanes)
    n_mm = stats["macs"] // (count * arch.mxm_rows * arch.mxm_cols)
    t = time.perf_counter()
    for _ in range(n_add):
        np.add(x, y)
    for _ in range(n_mm):
        x.astype(np.int32) @ w.astype(np.int32)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=20000, help="time blocks (default 20000)")
    ap.add_argument("--count", type=int, default=16, help="vectors per instruction")
    ap.add_argument("--functional-blocks", type=int, default=2000,
                    help="blocks for the functional run (it computes every value)")
    ap.add_argument("--no-matmul", action="store_true")
    ap.add_argument("--repeat", type=int, default=5,
                    help="steady runs after the first; the median is reported (default 5)")
    args = ap.parse_args()
    arch = load_arch("tsp-v1")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    for mode, blocks in (("timing", args.blocks), ("functional", args.functional_blocks)):
        prog, stats = build(arch, blocks, args.count, not args.no_matmul)
        ninstr = prog.instruction_count()
        inputs = None if mode == "timing" else _inputs(prog)
        t = time.perf_counter()
        simulate(prog, mode=mode, inputs=inputs)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = simulate(prog, mode=mode, inputs=inputs)
            times.append(time.perf_counter() - t)
        dt = statistics.median(times)
        rep = res.report
        print(f"[{mode}] {ninstr:,} instructions ({rep['issued_instructions']:,} issued), "
              f"{rep['vectors']:,} vectors, {rep['cycles']:,} cycles")
        print(f"[{mode}] first run (incl. compile/cache load) {first:.2f} s; steady: median "
              f"{dt:.3f} s of {args.repeat} runs (min {min(times):.3f}, max {max(times):.3f})")
        print(f"[{mode}] {ninstr / dt / 1e6:.2f} M instructions/s, "
              f"{rep['vectors'] / dt / 1e6:.2f} M vectors/s, "
              f"{rep['cycles'] / dt / 1e6:.2f} M simulated cycles/s")
        if mode == "functional":
            base = numpy_baseline(arch, stats, args.count)
            print(f"[functional] numpy doing the same arithmetic ({stats['adds']:,} int8 adds, "
                  f"{stats['macs']:,} int8 MACs): {base:.3f} s; simulator / numpy = "
                  f"{dt / base:.2f}x")


def _inputs(prog):
    rng = np.random.default_rng(1)
    return {t.name: rng.integers(-128, 128, t.shape).astype(np.int8)
            for t in prog.tensors if t.kind == "input"}


if __name__ == "__main__":
    main()
