"""Emission: the scheduler's instructions become one binary instruction stream per queue, the
gaps between them filled with nops. Encoded per mnemonic in bulk (isa.encoding.encode_array):
a large model has over a million instructions."""

from __future__ import annotations

import numpy as np

from compiler.errors import CompileError
from isa.encoding import encode_array
from isa.fields import FIELDS


def queue_words(qname: str, code: list) -> tuple[np.ndarray, list[list[int]]]:
    """The (n, 2) uint64 words of one queue's instructions (`Emitted`, any order), and the op
    tag of every word run-length encoded as [[op, words], ...] (a nop takes the tag of the
    instruction it delays)."""
    lst = sorted(code, key=lambda e: e.cycle)
    n = len(lst)
    cycles = np.fromiter((e.cycle for e in lst), np.int64, n)
    prev_end = np.concatenate([[0], cycles[:-1] + 1])
    gaps = cycles - prev_end
    if n and gaps.min() < 0:
        i = int(np.argmax(gaps < 0))
        raise CompileError(f"internal: two instructions at cycle {int(cycles[i])} on {qname}")
    nop_max = FIELDS["imm"].max_value
    if n and gaps.max() > nop_max:  # a nop counts at most 2**32 - 1 cycles: split longer gaps
        nops_before = -(-gaps // nop_max)
    else:
        nops_before = (gaps > 0).astype(np.int64)
    pos = np.arange(n) + np.cumsum(nops_before)  # the word of each instruction
    words = np.zeros((n + int(nops_before.sum()), 2), np.uint64)
    # nops: the k nops before instruction i fill the words pos[i] - k .. pos[i] - 1
    has = np.flatnonzero(nops_before)
    if has.size:
        k = nops_before[has]
        first = pos[has] - k
        where = np.repeat(first, k) + _ramp(k)
        left = np.repeat(gaps[has], k) - _ramp(k) * nop_max
        words[where] = encode_array("nop", len(where), imm=np.minimum(left, nop_max))
    by_mn: dict[str, list[int]] = {}
    for i, e in enumerate(lst):
        by_mn.setdefault(e.mnemonic, []).append(i)
    for mn, idx in by_mn.items():
        group = [lst[i].fields for i in idx]
        names = sorted({name for f in group for name in f})
        values = {name: np.fromiter((f.get(name, 0) for f in group), np.int64, len(group))
                  for name in names}
        words[pos[idx]] = encode_array(mn, len(idx), **values)
    ops = np.fromiter((e.op for e in lst), np.int64, n)
    tags = np.repeat(ops, nops_before + 1)  # each instruction's nops come right before it
    return words, run_lengths(tags)


def run_lengths(tags: np.ndarray) -> list[list[int]]:
    """[[value, count], ...] of the runs of equal values."""
    if not len(tags):
        return []
    cut = np.flatnonzero(np.diff(tags)) + 1
    starts = np.concatenate([[0], cut])
    counts = np.diff(np.concatenate([starts, [len(tags)]]))
    return [[int(v), int(c)] for v, c in zip(tags[starts], counts, strict=True)]


def _ramp(k: np.ndarray) -> np.ndarray:
    """0 .. k[j] - 1 for every j, concatenated."""
    starts = np.repeat(np.cumsum(k) - k, k)
    return np.arange(int(k.sum())) - starts
