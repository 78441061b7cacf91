"""Placements packed into few slices (the near-VXM preference squeezed to 4 positions and
applied to every node) must still give programs that compile and match the reference: no
lowering may rely on the allocator spreading tensors over the chip. Found this way: a lane
merge's partial sums with both operands in one slice (a job that needs one read port twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

import lpusim
from compiler.backend import compile as backend
from compiler.backend import placement
from compiler.errors import CompileError

DATA = Path(__file__).resolve().parents[2] / "models" / "data"


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("int8", 5e-2)])
def test_models_compile_with_tensors_crowded_near_the_vxm(precision, tol, monkeypatch):
    monkeypatch.setattr(placement, "NEAR_POSITIONS", 4)
    monkeypatch.setattr(placement, "NEAR_VECTORS", 64)
    monkeypatch.setattr(backend, "FEW_ROWS", 1000)  # every node counts as few rows
    res = lpusim.run_onnx(DATA / "hf-bert.onnx", dims={"batch": 1, "seq": 33},
                          precision=precision)
    for err in res.report["errors"].values():
        assert err["max_rel"] <= tol


def test_a_tensor_may_span_space_written_before_and_space_never_written():
    """Free space written before and space never written are kept apart (constants take only
    the latter), so a tensor larger than either part of a slice found no range although the
    whole was free: alloc spans them as a last resort, and only then."""
    from lpusim.arch import load_arch

    alloc = placement.Allocator(load_arch("tsp-v1"), list(range(88)))
    words = alloc.words
    # every slice: the top 3/8 held by constants, the bottom half written once and freed
    for s0 in range(0, 88, 4):
        alloc.alloc("fp32", (words * 3 // 8, 320), 4, resident=True, only=frozenset(
            range(s0, s0 + 4)))
        p, _ = alloc.alloc("fp32", (words // 2, 320), 4, only=frozenset(range(s0, s0 + 4)))
        alloc.release(p, 100)
    n = words * 9 // 16  # more than the written half, less than the 5/8 free
    assert alloc.try_alloc("fp32", (n, 320), 4) is None
    p, after = alloc.alloc("fp32", (n, 320), 4)
    assert p.addr == 0 and after == 100
    with pytest.raises(CompileError, match="does not fit one chip"):
        alloc.alloc("fp32", (words * 5 // 8 + 1, 320), 4)
