"""Row blocks that run side by side keep apart: attention's scores are written per Softmax
block into slices of their own (compile._softmax_parts), and the blocks of a Softmax or a
norm take their temporaries from disjoint sets of slices first (ops.block_region). Data only
moves: the outputs are the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

import lpusim
from compiler.backend import compile as backend
from compiler.backend import ops
from compiler.backend.placement import Allocator
from tests.compiler.test_head_matmul import _attention

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("s,heads,hd", [(64, 12, 64), (80, 10, 32)])
def test_scores_are_written_in_blocks_of_whole_heads_apart(s, heads, hd, precision,
                                                           monkeypatch):
    got = []
    real = Allocator.derive

    def derive(self, src, key, held, value):
        if key == ("row_parts",) and value[0][2].dtype == "fp32":
            got.append(value)
        return real(self, src, key, held, value)

    model = _attention(1, s, heads, hd)
    x = RNG.standard_normal((1, s, heads * hd)).astype(np.float32)
    with monkeypatch.context() as mp:
        mp.setattr(Allocator, "derive", derive)
        split = lpusim.run_onnx(model, {"x": x}, precision=precision)
    (parts,) = got
    assert len(parts) >= 2
    assert [r0 for r0, _, _ in parts] == [sum(n for _, n, _ in parts[:i])
                                          for i in range(len(parts))]
    assert sum(n for _, n, _ in parts) == heads * s
    assert all(r0 % s == 0 for r0, _, _ in parts)  # whole heads
    assert all(not set(a.slices) & set(b.slices)
               for (_, _, a), (_, _, b) in zip(parts, parts[1:], strict=False))
    tol = 1e-4 if precision == "fp32" else 0.1
    assert max(e["max_rel"] for e in split.report["errors"].values()) <= tol
    # the same numbers as scores in one placement
    monkeypatch.setattr(backend, "_softmax_parts", lambda graph, alloc, out, y: (None, {}))
    whole = lpusim.run_onnx(model, {"x": x}, precision=precision)
    np.testing.assert_array_equal(split.outputs["out"], whole.outputs["out"])


def test_scores_read_elsewhere_stay_whole(monkeypatch):
    """Scores that are also a graph output (or read by another op) keep one placement."""
    model = _attention(1, 64, 12, 64)
    model.graph.output.append(model.graph.output[0])
    model.graph.output[-1].name = "scores"
    got = []
    real = backend._softmax_parts
    monkeypatch.setattr(backend, "_softmax_parts",
                        lambda *a: got.append(real(*a)) or got[-1])
    x = RNG.standard_normal((1, 64, 768)).astype(np.float32)
    res = lpusim.run_onnx(model, {"x": x}, precision="fp32")
    assert got == [(None, {})]
    assert max(e["max_rel"] for e in res.report["errors"].values()) <= 1e-4


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_block_regions_partition_the_slices(n):
    alloc = Allocator(lpusim.arch.load_arch("tsp-v1"), list(range(88)))
    regions = [ops.block_region(alloc, k, n) for k in range(n)]
    assert set().union(*regions) == set(range(88))
    assert sum(len(r) for r in regions) == 88
    # runs of whole fp32 groups
    assert all(len({s // ops.REGION_RUN for s in r}) * ops.REGION_RUN == len(r) for r in regions)


def test_blocks_take_temporaries_in_their_region_first(monkeypatch):
    """While a block of a Softmax or norm is lowered, the allocator's choices fall in that
    block's region when it has room (within the slices a step asks for, as the corner turn's
    hemisphere): most of them (a third would, by chance, with three blocks; measured 73%)."""
    seen = []
    real = Allocator.try_alloc

    def try_alloc(self, dtype, shape, nbytes, avoid=frozenset(), resident=False, only=None,
                  bank=None):
        got = real(self, dtype, shape, nbytes, avoid, resident, only, bank)
        if got is not None and self.region is not None and not resident and not self.near:
            pref = self.region if only is None else self.region & only
            if pref:
                seen.append(set(got[0].slices) <= pref)
        return got

    monkeypatch.setattr(Allocator, "try_alloc", try_alloc)
    model = _attention(1, 64, 12, 64)
    x = RNG.standard_normal((1, 64, 768)).astype(np.float32)
    lpusim.run_onnx(model, {"x": x}, precision="int8")
    assert len(seen) > 20
    assert np.mean(seen) > 0.6


def test_a_softmax_block_waits_for_all_its_rows():
    """A Softmax block starts from when its producer recorded its rows done only when the
    recorded blocks hold all of them: a norm's blocks of 32 rows hold a block of 64, not
    one of 512, which waits for the start (all of x)."""
    assert ops.rows_ready(None, 0, 64, 100) == 100  # nothing recorded
    blocks = ((0, 32, 5), (32, 32, 6))
    assert ops.rows_ready(blocks, 0, 64, 100) == 6
    assert ops.rows_ready(blocks, 32, 16, 100) == 6
    assert ops.rows_ready(blocks, 0, 512, 100) == 100


def test_rows_are_found_in_the_block_that_holds_them():
    from compiler.backend.placement import Placement
    from compiler.errors import CompileError

    alloc = Allocator(lpusim.arch.load_arch("tsp-v1"), list(range(88)))
    x = Placement("fp32", (96, 64), 96, 64, 1, (0, 1, 2, 3), 0)
    assert ops.rows_at(alloc, x, 10, 4, "t").addr == 10  # no blocks: x's own rows
    p0 = Placement("fp32", (64, 64), 64, 64, 1, (4, 5, 6, 7), 100)
    p1 = Placement("fp32", (32, 64), 32, 64, 1, (8, 9, 10, 11), 200)
    alloc.derive(x, ("row_parts",), [p0, p1], ((0, 64, p0), (64, 32, p1)))
    got = ops.rows_at(alloc, x, 70, 8, "t")
    assert got.slices == p1.slices and got.addr == 206
    with pytest.raises(CompileError, match="two blocks"):
        ops.rows_at(alloc, x, 60, 8, "t")
