"""Compiler benchmarks (issue 3): compile time, simulated latency, roofline bound and ratio for
published model shapes on one chip. Prints; asserts nothing.

    python tools/bench_compile.py                      # GPT-2-small one-token step, int8
    python tools/bench_compile.py bert-base --seq 128  # BERT-base, sequence 128, int8
    python tools/bench_compile.py --past 31            # one token after 31 cached ones

Weights are shape-only (no data), so the program runs in timing mode; the numbers do not
depend on weight values.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@click.command()
@click.argument("preset", default="gpt2-small")
@click.option("--seq", default=1, show_default=True, type=click.IntRange(1),
              help="Sequence length (tokens); 1 is a one-token step without a KV cache.")
@click.option("--precision", default="int8", show_default=True,
              type=click.Choice(["fp32", "fp16", "bf16", "int8", "fp8"]))
@click.option("--arch", "arch_name", default="tsp-v1", show_default=True,
              help="Machine preset or TOML file.")
@click.option("--past", default=None, type=click.IntRange(1),
              help="Tokens in a KV cache (GPT-2 and Llama presets: their opset-23 Attention "
                   "with past key/value inputs); without it the step has no cache.")
def main(preset: str, seq: int, precision: str, arch_name: str, past: int | None) -> None:
    """Compile PRESET (a models/ preset name) and simulate it in timing mode."""
    import lpusim
    from lpusim.errors import LpusimError
    from lpusim.simulator import simulate
    from models.presets import build_preset

    dims = None
    try:
        if past is None:
            model = build_preset(preset, batch=1, seq=seq)
        else:
            model = build_preset(preset, batch=1, seq=seq, attention="opset23", past=True)
            dims = {"past_seq": past}
    except TypeError:
        raise click.ClickException(f"{preset}: --past needs a GPT-2 or Llama preset (their "
                                   "opset-23 Attention takes a KV cache)") from None
    except (KeyError, ValueError) as e:
        raise click.ClickException(f"{preset}: {e.args[0] if e.args else e}") from None
    t = time.perf_counter()
    try:
        program = lpusim.compile_onnx(model, arch=arch_name, precision=precision, dims=dims)
    except LpusimError as e:
        raise click.ClickException(str(e)) from None
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = simulate(program, mode="timing").report
    sim_s = time.perf_counter() - t
    cache = "" if past is None else f", {past} cached tokens"
    print(f"{preset} seq {seq}{cache} batch 1, {precision}, on one {arch_name} chip "
          f"({platform.machine()}, Python {platform.python_version()})")
    print(f"  compile      {compile_s:8.1f} s   ({program.instruction_count():,} instructions, "
          f"{len(program.tensors):,} tensors)")
    print(f"  simulate     {sim_s:8.1f} s   (timing mode)")
    print(f"  latency      {rep['latency_s'] * 1e6:10.1f} us  ({rep['cycles']:,} cycles)")
    print(f"  roofline     {rep['roofline_latency_s'] * 1e6:10.1f} us  "
          f"(bound by {rep['roofline_bound_by']})")
    print(f"  ratio        {rep['roofline_ratio']:10.2f}")


if __name__ == "__main__":
    main()
