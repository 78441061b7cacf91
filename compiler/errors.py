"""Errors the compiler raises for bad input (a model it cannot read, check, shape or support)."""

from lpusim.errors import LpusimError


class CompileError(LpusimError):
    """The model cannot be compiled; the one-line message names the op, node, value or dim."""
