"""Errors the compiler raises for bad input (a model it cannot read, check, shape or support)."""

from lpusim.errors import LpusimError


class CompileError(LpusimError):
    """The model cannot be compiled; the one-line message names the op, node, value or dim."""


class NoRoomError(CompileError):
    """A tensor found no free range in SRAM (or is larger than a MEM slice): the model may
    still fit when large tensors are computed in smaller pieces (compile_graph retries)."""
