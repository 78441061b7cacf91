"""The `lpusim` command line. Each command lives in its own `cli_*.py` module."""

from __future__ import annotations

import sys

import click

from lpusim import __version__
from lpusim.errors import LpusimError


class _Group(click.Group):
    """A click group that turns every LpusimError into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LpusimError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (OSError, ValueError) as exc:  # file not found, permission, bad numbers
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpusim")
def main() -> None:
    """lpusim: compile and simulate programs for SRAM-only tensor streaming processors (LPUs).

    Times are in cycles at the preset's clock unless a name says otherwise (_s, _us, _ns);
    sizes are in bytes; bandwidths in TB/s or GB/s as named.
    """


# Commands register themselves on `main` when their module is imported.
from lpusim import cli_arch, cli_asm, cli_compile, cli_sim  # noqa: E402,F401
