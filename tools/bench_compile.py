"""Compiler benchmarks (issue 3): compile time, simulated latency, roofline bound and ratio for
published model shapes on one chip. Prints; asserts nothing.

    python tools/bench_compile.py                      # GPT-2-small one-token step, int8
    python tools/bench_compile.py bert-base --seq 128  # BERT-base, sequence 128, int8

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
def main(preset: str, seq: int, precision: str, arch_name: str) -> None:
    """Compile PRESET (a models/ preset name) and simulate it in timing mode."""
    import lpusim
    from lpusim.simulator import simulate
    from models.presets import build_preset

    model = build_preset(preset, batch=1, seq=seq)
    t = time.perf_counter()
    program = lpusim.compile_onnx(model, arch=arch_name, precision=precision)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = simulate(program, mode="timing").report
    sim_s = time.perf_counter() - t
    print(f"{preset} seq {seq} batch 1, {precision}, on one {arch_name} chip "
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
