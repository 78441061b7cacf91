"""`lpusim compile` and `lpusim run`: ONNX model -> Program, and compile + simulate + check."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lpusim.cli import main
from lpusim.errors import LpusimError
from lpusim.fileio import write_json_atomic, write_npz_atomic


def _dims(items: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, val = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = int(val)
        except ValueError:
            raise LpusimError(f"--dim {item!r}: expected NAME=N with N an integer, e.g. "
                              "--dim seq=128") from None
    return out


_common = [
    click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "fp8"]),
                 default="fp32", show_default=True,
                 help="Numeric policy. fp32 is the exact mode for checking against the "
                      "reference (the MXM runs it at the preset's emulated rate); fp16 and "
                      "bf16 round MatMul weights and activations to that type on the MXM and "
                      "accumulate in fp32; int8 scales weights per output channel and "
                      "activations per row, accumulating in int32; fp8 does the same in "
                      "fp8 e4m3 (largest value 448), accumulating in fp32."),
    click.option("--dim", "dims", metavar="NAME=N", multiple=True,
                 help="Bind a symbolic input dimension, e.g. --dim batch=1 --dim seq=128."),
    click.option("--arch", "arch", metavar="NAME|FILE", default="tsp-v1", show_default=True,
                 help="Architecture preset name or .toml file."),
    click.option("--set", "overrides", metavar="KEY=VALUE", multiple=True,
                 help="Override one preset value (units of the key), e.g. --set clock_ghz=1.0."),
    click.option("--dump-ir-after", "dump_after", metavar="PASS|all", default=None,
                 help="Print the IR after the named compiler pass (or after every pass)."),
]


def _apply(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Program file to write (.lpu); written atomically.")
@_apply(_common)
def compile_command(model, output, precision, dims, arch, overrides, dump_after) -> None:
    """Compile MODEL (ONNX) into a Program for one chip."""
    from lpusim.api import compile_onnx
    from lpusim.program_io import save_program

    program = compile_onnx(str(model), arch=arch, precision=precision, dims=_dims(dims),
                           overrides=overrides, dump_ir_after=dump_after, dump=click.echo)
    save_program(program, output)
    click.echo(f"{output}: {program.instruction_count():,} instructions, "
               f"{len(program.tensors)} tensors, precision {precision}", err=True)


@main.command("run")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Input values: an .npz keyed by graph input name (random values of the "
                   "right type for any input not given).")
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the simulated graph outputs to this .npz (keyed by output name).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report as JSON (cycles, latency_s, roofline_latency_s, "
                   "roofline_ratio, errors per output, per-unit utilisation, SRAM bytes, and "
                   "per op: span in cycles, roofline and ratio).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random inputs.")
@_apply(_common)
def run_command(model, inputs_path, outputs_path, json_path, seed, precision, dims, arch,
                overrides, dump_after) -> None:
    """Compile MODEL, simulate it, and compare every output with a reference runtime
    (onnxruntime where installed, else onnx.reference): max abs and rel error per output."""
    from lpusim.api import run_onnx
    from lpusim.cli_sim import _load_inputs, summary

    res = run_onnx(str(model), _load_inputs(inputs_path), arch=arch, precision=precision,
                   dims=_dims(dims), overrides=overrides, seed=seed, dump_ir_after=dump_after,
                   dump=click.echo)
    r = res.report
    click.echo(summary(r))
    click.echo(f"roofline {r['roofline_latency_s'] * 1e6:.3f} us (bound by "
               f"{r['roofline_bound_by']}); simulated / roofline = {r['roofline_ratio']:.2f}")
    if r.get("ops"):
        click.echo("longest ops (span from first instruction to last result, waits included):")
    for o in sorted(r.get("ops", []), key=lambda o: -o["cycles"])[:5]:
        ratio = f"{o['ratio']:.1f}" if o["ratio"] is not None else "-"
        click.echo(f"  op {o['name']} ({o['op']}): {o['cycles']:,} cycles from cycle "
                   f"{o['start_cycle']:,}; roofline {o['roofline_cycles']:.1f} "
                   f"({o['bound_by']}), ratio {ratio}")
    click.echo(f"precision {r['precision']}; reference {r['reference']}; compile "
               f"{r['compile_s']:.2f} s")
    if r["note"]:
        click.echo(r["note"])
    for name, e in r["errors"].items():
        click.echo(f"output {name}: max abs error {e['max_abs']:.3g}, max rel error "
                   f"{e['max_rel']:.3g}")
    if outputs_path:
        write_npz_atomic(outputs_path, res.outputs)
    if json_path:
        write_json_atomic(json_path, json.loads(json.dumps(r, default=float)))
