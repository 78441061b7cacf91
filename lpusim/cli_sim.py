"""`lpusim sim`: run a Program (or an assembly file) and report cycles, bandwidth, utilisation."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import click
import numpy as np

from lpusim.cli import main
from lpusim.errors import LpusimError
from lpusim.fileio import write_atomic, write_json_atomic, write_npz_atomic


def load_program_or_asm(path: Path, arch: str | None = None, overrides=()):
    """A Program file (.lpu) or assembly text (.s/.asm), assembled on the fly."""
    from lpusim.program_io import MAGIC, load_program

    try:
        head = path.open("rb").read(len(MAGIC))
    except OSError as exc:
        raise LpusimError(f"{path}: cannot read: {exc.strerror}") from None
    if head == MAGIC:
        if arch or overrides:
            raise LpusimError("--arch/--set apply when assembling; a Program file carries the "
                              "architecture it was built for")
        return load_program(path)
    if path.suffix not in (".s", ".asm"):
        return load_program(path)  # gives the one-line "not a program file" reason
    from lpusim.asm import assemble

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LpusimError(f"{path}: not UTF-8 assembly text") from None
    return assemble(text, source=str(path), arch=arch, overrides=overrides, base_dir=path.parent)


def random_inputs(program, seed: int) -> dict[str, np.ndarray]:
    """Seeded random values for every input tensor, in a range that suits its dtype."""
    from isa.dtypes import dtype as dtype_info
    from isa.dtypes import numpy_dtype

    rng = np.random.default_rng(seed)
    index_inputs = program.meta.get("index_inputs") or {}
    out = {}
    for t in program.tensors:
        if t.kind != "input":
            continue
        d = dtype_info(t.dtype)
        if t.name in index_inputs:  # Gather indices: rows of the table (none negative)
            v = rng.integers(0, index_inputs[t.name][1] + 1, t.shape)
        elif d.is_float:
            v = rng.standard_normal(t.shape).astype(np.float32)
        elif program.meta.get("generator") == "lpusim compile":
            v = rng.integers(0, 2, t.shape)  # a compiled model's other integers: masks, 0/1
        else:
            hi = min(1 << (8 * d.nbytes - 1), 128)
            v = rng.integers(-hi, hi, t.shape)
        out[t.name] = v.astype(numpy_dtype(t.dtype))
    return out


def _load_inputs(path: Path | None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, read once (a pipe works too); a file that is not one, or
    a truncated or corrupt one, is a one-line LpusimError."""
    if path is None:
        return {}
    what = ".npz of arrays named after the program's tensors"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LpusimError(f"{path}: cannot read inputs ({what}): {exc}") from None
    if data[:4] != b"PK\x03\x04":  # every .npz is a zip archive
        raise LpusimError(f"{path}: not an .npz archive (numpy.savez writes one, with an array "
                          "per input tensor name)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise LpusimError(f"{path}: cannot read inputs ({what}): {exc}") from None


def summary(report: dict) -> str:
    """A short human-readable report: numbers with units and what bounds them."""
    r = report
    lines = [
        f"arch {r['arch']}  mode {r['mode']}  chips {r['chips']}  clock {r['clock_ghz']} GHz",
        f"cycles {r['cycles']:,}  latency {r['latency_us']:.3f} us  "
        f"instructions {r['instructions']:,} ({r['issued_instructions']:,} issued, "
        f"{r['vectors']:,} vectors)",
        f"SRAM   read {r['sram']['read_bytes']:,} B ({r['sram']['read_tb_s']:.3f} TB/s of "
        f"{r['sram']['peak_read_tb_s']:.1f} peak)  write {r['sram']['write_bytes']:,} B "
        f"({r['sram']['write_tb_s']:.3f} TB/s)",
        f"streams {r['streams']['bytes']:,} B written ({r['streams']['tb_s']:.3f} TB/s)",
        f"MXM    {r['mxm']['macs']:,} MACs, {100 * r['mxm']['utilisation']:.2f}% of peak"
        + (f"  dtypes {', '.join(r['mxm']['dtypes'])}" if r["mxm"]["dtypes"] else "")
        + (f"  (emulated, not a hardware mode: {', '.join(r['mxm']['emulated_dtypes'])})"
           if r["mxm"]["emulated_dtypes"] else ""),
        f"links  {r['links']['bytes']:,} B ({r['links']['gb_s']:.3f} GB/s)",
        "utilisation by unit kind: " + "  ".join(
            f"{k} {100 * v['utilisation']:.2f}%" for k, v in r["unit_kinds"].items()),
    ]
    return "\n".join(lines)


@main.command("sim")
@click.argument("program", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Input tensors: an .npz whose array names are the program's tensor names "
                   "(inputs, and weights/consts to override their embedded data).")
@click.option("--random-inputs", "seed", type=int, default=None, metavar="SEED",
              help="Fill every input tensor not given in --inputs with seeded random values "
                   "(normal for floats; integers: valid rows for a compiled model's Gather "
                   "indices, 0/1 for its other integer inputs, else uniform over the int8 "
                   "range).")
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the output tensors to this .npz (functional mode).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the cycle-by-cycle text trace (one line per event, cycles at the "
                   "preset clock).")
@click.option("--perfetto", "perfetto_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a Chrome/Perfetto trace JSON (one track per unit and chip; times in "
                   "microseconds at the preset clock).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full report as JSON (cycles, latency_s, bytes, TB/s, GB/s, MACs, "
                   "per-unit busy cycles and utilisation).")
@click.option("--timing-only", is_flag=True,
              help="Skip values: check every timing hazard and count cycles, bytes and MACs "
                   "without computing data (for programs whose weights are not available).")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast",
              show_default=True,
              help="fast: the Numba kernels; reference: the slow plain-Python interpreter that "
                   "defines the semantics.")
@click.option("--arch", "arch", metavar="NAME|FILE", default=None,
              help="Architecture for assembling a .s PROGRAM (a .lpu file carries its own).")
@click.option("--set", "overrides", metavar="KEY=VALUE", multiple=True,
              help="Override a preset value when assembling a .s PROGRAM, e.g. "
                   "--set clock_ghz=1.0 (units of the preset key). Repeatable.")
def sim_command(program: Path, inputs_path, seed, outputs_path, trace_path, perfetto_path,
                json_path, timing_only, engine, arch, overrides) -> None:
    """Simulate PROGRAM (a .lpu Program file, or assembly text .s) and print a report.

    Every rule of the machine is checked (streams, MEM ports and banks, SRAM bounds, MXM
    buffers, VXM ALUs, links); a violation stops the run with one line naming the
    instruction, unit, cycle and stream, and exit status 1.
    """
    from lpusim.simulator import simulate

    prog = load_program_or_asm(program, arch, overrides)
    inputs = _load_inputs(inputs_path)
    if seed is not None:
        for name, v in random_inputs(prog, seed).items():
            inputs.setdefault(name, v)
    mode = "timing" if timing_only else "functional"
    if timing_only and outputs_path:
        raise LpusimError("--outputs needs values: drop --timing-only")
    result = simulate(prog, inputs, mode=mode, engine=engine, trace=trace_path is not None)
    if trace_path is not None:
        from lpusim.trace import text_trace

        header = (f"lpusim sim {program.name}{' --timing-only' if timing_only else ''}\n"
                  f"arch {result.report['arch']}, {result.report['cycles']} cycles")
        write_atomic(trace_path, text_trace(result.decoded, result.trace_rows, header))
    if perfetto_path is not None:
        from lpusim.trace import perfetto_json

        write_atomic(perfetto_path, perfetto_json(result.decoded, result.arch))
    if outputs_path is not None:
        write_npz_atomic(outputs_path, result.outputs)
    if json_path is not None:
        write_json_atomic(json_path, result.report)
    click.echo(summary(result.report))
    for name, v in result.outputs.items():
        click.echo(f"output {name}: {v.dtype} {list(v.shape)}")
