"""Emission of scheduled instructions into queue words (compiler/backend/emit.py)."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.backend.emit import queue_words
from compiler.backend.schedule import Emitted
from compiler.errors import CompileError
from isa.encoding import encode, to_words


def _one_by_one(code):
    """The plain reading of emission: sorted by cycle, a nop before every gap."""
    words, t = [], 0
    for e in sorted(code, key=lambda e: e.cycle):
        while e.cycle > t:
            n = min(e.cycle - t, (1 << 32) - 1)
            words.append(encode("nop", imm=n))
            t += n
        words.append(encode(e.mnemonic, **e.fields))
        t = e.cycle + 1
    return to_words(words)


def test_matches_one_instruction_at_a_time():
    rng = np.random.default_rng(0)
    cycles = np.sort(rng.choice(5000, 300, replace=False))
    code = []
    for c in rng.permutation(cycles):
        if c % 3 == 0:
            code.append(Emitted("MEM_W0", int(c), "mem.read",
                                dict(dst=int(c % 32), dst_dir=int(c % 2), addr=int(c % 4096),
                                     count=int(c % 100) + 1, stride=int(c % 7) - 3)))
        elif c % 3 == 1:
            code.append(Emitted("MEM_W0", int(c), "mem.write",
                                dict(src=int(c % 32), src_dir=1, addr=7, count=2)))
        else:
            code.append(Emitted("MEM_W0", int(c), "mem.read", dict(addr=1)))
    np.testing.assert_array_equal(queue_words("MEM_W0", code)[0], _one_by_one(code))


def test_gaps_longer_than_one_nop_are_split():
    code = [Emitted("VXM0", 3, "vxm.relu", dict(dtype=7, count=4)),
            Emitted("VXM0", 3 + (1 << 32) + 5, "vxm.relu", dict(dtype=7, count=4))]
    words, tags = queue_words("VXM0", code)
    np.testing.assert_array_equal(words, _one_by_one(code))
    assert len(words) == 5  # nop 3, relu, nop 2**32 - 1, nop 6, relu
    assert tags == [[-1, 5]]


def test_op_tags_cover_every_word():
    code = [Emitted("VXM0", 0, "vxm.relu", {}, op=0), Emitted("VXM0", 4, "vxm.relu", {}, op=1),
            Emitted("VXM0", 5, "vxm.relu", {}, op=1), Emitted("VXM0", 9, "vxm.relu", {}, op=0)]
    words, tags = queue_words("VXM0", code)
    assert tags == [[0, 1], [1, 3], [0, 2]]  # relu | nop, relu, relu | nop, relu
    assert sum(n for _, n in tags) == len(words)


def test_two_instructions_in_one_cycle_is_an_error():
    code = [Emitted("VXM0", 3, "vxm.relu", {}), Emitted("VXM0", 3, "vxm.relu", {})]
    with pytest.raises(CompileError, match="two instructions at cycle 3 on VXM0"):
        queue_words("VXM0", code)
