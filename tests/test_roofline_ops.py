"""The per-op roofline of compiled programs (lpusim/roofline.py per_op)."""

from __future__ import annotations

from pathlib import Path

import onnx

import lpusim
from lpusim.program_io import program_from_bytes, program_to_bytes
from lpusim.simulator import simulate

MODELS = Path(__file__).resolve().parents[1] / "models" / "data"


def test_every_op_has_a_span_and_a_roofline_within_the_program():
    model = onnx.load(MODELS / "tiny-gpt2.onnx")
    program = lpusim.compile_onnx(model, precision="int8", dims={"batch": 1, "seq": 8})
    rep = simulate(program, mode="timing").report
    ops = rep["ops"]
    nodes = {n.name for n in model.graph.node}
    names = [o["name"] for o in ops]
    assert len(names) == len(set(names))
    matmuls = [o for o in ops if o["op"].startswith("MatMul")]
    assert len(matmuls) >= 8  # 4 per layer, 2 layers
    assert {o["name"] for o in matmuls} <= nodes
    for o in ops:
        assert 0 <= o["start_cycle"] and o["start_cycle"] + o["cycles"] <= rep["cycles"]
        # an op's work is part of the program's, so is its bound
        assert o["roofline_cycles"] <= rep["roofline_cycles"] + 1e-9
        if o["roofline_cycles"]:
            assert o["ratio"] == o["cycles"] / o["roofline_cycles"]
    for o in matmuls:
        assert o["roofline_cycles"] > 0
    # the tags travel in the program file
    again = program_from_bytes(program_to_bytes(program))
    assert simulate(again, mode="timing").report["ops"] == ops


def test_hand_written_programs_have_no_ops():
    from lpusim.asm import assemble

    text = (Path(__file__).parent / "programs" / "vxm_add.s").read_text()
    assert "ops" not in simulate(assemble(text), mode="timing").report


def test_malformed_op_tags_leave_the_table_out():
    model = onnx.load(MODELS / "tiny-gpt2.onnx")
    program = lpusim.compile_onnx(model, dims={"batch": 1, "seq": 8})
    program.meta["op_tags"] = [{"VXM0": [[10**6, 1]]}]  # an op index out of range
    assert "ops" not in simulate(program, mode="timing").report
