"""`lpusim asm` and `lpusim disasm`: assembly text <-> Program file."""

from __future__ import annotations

from pathlib import Path

import click

from lpusim.cli import main
from lpusim.errors import LpusimError
from lpusim.fileio import write_atomic


@main.command("asm")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Program file to write (.lpu); written atomically, left untouched on error.",
)
@click.option(
    "--arch",
    "arch",
    metavar="NAME|FILE",
    default=None,
    help="Architecture: a bundled preset name (e.g. tsp-v1) or a preset .toml file. "
    "Wins over the source's .arch line. Default: the source's .arch, else tsp-v1.",
)
@click.option(
    "--set",
    "overrides",
    metavar="KEY=VALUE",
    multiple=True,
    help="Override one preset value, e.g. --set latency.mem_read=6 (cycles). "
    "Values are read as TOML; units are those of the preset key (cycles, bytes, "
    "GHz, GB/s). Applied after the source's .set lines. Repeatable.",
)
def asm_command(source: Path, output: Path, arch: str | None, overrides: tuple[str, ...]) -> None:
    """Assemble SOURCE (assembly text) into a Program file.

    The syntax (directives .arch/.set/.chips/.chip/.map/.tensor/.queue, instructions, @CYCLE
    issue times) is described in lpusim/asm.py; the instruction set in isa/ISA.md.
    """
    from lpusim.asm import assemble
    from lpusim.program_io import save_program

    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LpusimError(f"{source}: cannot read assembly source: {exc}") from None
    program = assemble(
        text, source=str(source), arch=arch, overrides=overrides, base_dir=source.parent
    )
    save_program(program, output)
    n = program.instruction_count()
    click.echo(
        f"{output}: {n} instruction(s) on {len(program.chips)} chip(s), "
        f"{len(program.tensors)} tensor(s)",
        err=True,
    )


@main.command("disasm")
@click.argument("program", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Assembly file to write (written atomically). Default: standard output.",
)
def disasm_command(program: Path, output: Path | None) -> None:
    """Disassemble a Program file into assembly text that `lpusim asm` reads back.

    Each instruction line ends with a comment giving its issue cycle (until a sync). Tensor
    data embedded in the program is noted in a comment but not written out.
    """
    from lpusim.asm import disassemble
    from lpusim.program_io import load_program

    text = disassemble(load_program(program))
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomic(output, text)
