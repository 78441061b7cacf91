"""Bit ranges of the fields of the 128-bit instruction word: the one place they are spelled out.

An instruction word is two little-endian uint64 halves; bit 0 is the low bit of the first half.
Fields may overlap across instructions that never use them together; the table checks that no
instruction uses one bit twice.
"""

from __future__ import annotations

from dataclasses import dataclass

WORD_BITS = 128


@dataclass(frozen=True)
class Field:
    name: str
    lo: int
    width: int
    signed: bool = False

    @property
    def hi(self) -> int:
        return self.lo + self.width

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lo

    @property
    def min_value(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_value(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


def _f(name: str, lo: int, width: int, signed: bool = False) -> tuple[str, Field]:
    return name, Field(name, lo, width, signed)


FIELDS: dict[str, Field] = dict(
    [
        _f("opcode", 0, 8),
        _f("count", 8, 16),  # vectors streamed by one instruction
        _f("dtype", 24, 4),
        _f("dtype2", 28, 4),
        # a stream operand: stream index, direction (0 east, 1 west), log2 of group width
        _f("dst", 32, 5),
        _f("dst_dir", 37, 1),
        _f("dst_g", 38, 2),
        _f("src", 40, 5),
        _f("src_dir", 45, 1),
        _f("src_g", 46, 2),
        _f("src2", 48, 5),
        _f("src2_dir", 53, 1),
        _f("src2_g", 54, 2),
        _f("addr", 56, 16),  # SRAM address, accumulator address or weight-buffer row
        _f("stride", 72, 8, signed=True),
        _f("ops", 56, 24),  # VXM chain: four 6-bit ALU op codes (0 ends the chain)
        _f("imm", 80, 32),  # immediate: cycles, repeat count, map index, scalar bits
        _f("shift", 80, 32, signed=True),  # SXM lane shift/rotate amount (+ north, - south)
        _f("aux", 112, 15),  # second small immediate: repeat gap, stream count
        _f("flag", 127, 1),  # instruction-specific switch: accumulate, immediate operand
    ]
)
