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
