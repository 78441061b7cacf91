"""The Program: what the compiler or assembler emits and the simulator runs.

One ChipProgram per chip: an instruction stream per queue (the queue names the unit; gaps in
time are nop instructions, so issue cycles follow from the stream), the chip's SXM map table,
and the tensors placed in its SRAM. The Program also carries the architecture configuration it
was built for, so a Program file runs the same on any machine.

Tensor layout ("rows"): the tensor is viewed as a 2-D array (rows, cols) with cols = shape[-1]
(a scalar or 1-D tensor is one row). Each row takes ceil(cols / lanes) vectors; vector v holds
columns (v % vpr) * lanes ... + lanes - 1 of row v // vpr, zero padded. Byte b of every element
lives in MEM slice slices[b] (one slice per byte of the element type, little-endian), at
address addr + v * stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TENSOR_KINDS = ("input", "output", "weight", "const")


@dataclass
class TensorSpec:
    name: str
    kind: str  # input | output | weight | const
    dtype: str  # an isa.dtypes name
    shape: tuple[int, ...]
    chip: int
    slices: tuple[int, ...]  # MEM slice per byte plane (len = element width in bytes)
    addr: int
    stride: int = 1
    data: np.ndarray | None = None  # weight/const values when known (None in timing-only)

    def rows_cols(self) -> tuple[int, int]:
        if len(self.shape) == 0:
            return 1, 1
        cols = self.shape[-1]
        rows = math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1
        return rows, cols

    def vectors(self, lanes: int) -> int:
        rows, cols = self.rows_cols()
        return rows * max(1, math.ceil(cols / lanes))


@dataclass
class ChipProgram:
    queues: dict[str, np.ndarray] = field(default_factory=dict)  # queue name -> (n, 2) uint64
    maps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int16))

    def instruction_count(self) -> int:
        return sum(len(w) for w in self.queues.values())


@dataclass
class Program:
    arch_config: dict  # the resolved preset (lpusim.arch: Arch.from_config rebuilds it)
    chips: list[ChipProgram]
    tensors: list[TensorSpec] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # free-form, JSON-able (source, generator)

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def instruction_count(self) -> int:
        return sum(c.instruction_count() for c in self.chips)
