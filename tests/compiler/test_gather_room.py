"""A gathered table of many chunks can fill most slices the weights leave: the gather's
output and parts keep apart from the table where there is room, and otherwise only from the
chunk they are gathered from (mem.gather cannot write the slice it reads)."""

from __future__ import annotations

import lpusim
from lpusim.simulator import simulate
from models.presets import build_preset


def test_gpt2_medium_layers_compile_beside_its_wide_table():
    # 4 of GPT-2-medium's layers, int8, one token: its 50,257 x 1,024 token table spans many
    # slices, and the weights fill most of the others (this failed: "no range is free", with
    # 62 MB free)
    program = lpusim.compile_onnx(build_preset("gpt2-medium", batch=1, seq=1, layers=4),
                                  precision="int8")
    assert simulate(program, mode="timing").report["cycles"] > 0
