"""Pass registry, pipeline runner, dump hook."""

from __future__ import annotations

import dataclasses

import pytest

from compiler.errors import CompileError
from compiler.ir import parse_ir
from compiler.passes import PASSES
from compiler.pipeline import default_pipeline, get_pass, run_pipeline

SRC = ("input %x: float32[2]\n%s: float32[2] = Sigmoid(%x)  # sig\n"
       "%y: float32[2] = Mul(%x, %s)  # mul\noutput %y\n")


def test_registry_names_and_modules():
    for name, cls in PASSES.items():
        assert cls.name == name
        assert cls.__module__ == "compiler.passes." + name.replace("-", "_")
        assert cls.__name__ == "".join(w.capitalize() for w in name.split("-"))
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert cls.__doc__ and "fterwards" in cls.__doc__


def test_unknown_pass_lists_valid_names():
    with pytest.raises(CompileError) as e:
        get_pass("fuse-everything")
    msg = str(e.value)
    assert msg.startswith("unknown pass 'fuse-everything'; valid passes: ")
    assert all(n in msg for n in PASSES) and "\n" not in msg


def test_bad_option():
    with pytest.raises(CompileError, match="pass 'fold-constants'"):
        get_pass("fold-constants", nonsense=1)
    assert get_pass("fold-constants", max_elements=4).max_elements == 4


def test_dump_after():
    dumped: list[str] = []
    run_pipeline(parse_ir(SRC), default_pipeline(), verify=True, dump_after="recognize-silu",
                 dump=dumped.append)
    assert len(dumped) == 1 and dumped[0].startswith("// IR after recognize-silu\n")
    assert "Silu(%x)" in dumped[0]
    dumped.clear()
    run_pipeline(parse_ir(SRC), default_pipeline(), dump_after="all", dump=dumped.append)
    assert len(dumped) == len(default_pipeline())
    with pytest.raises(CompileError, match="unknown pass 'nope'; valid: all, "):
        run_pipeline(parse_ir(SRC), default_pipeline(), dump_after="nope")


def test_verify_names_the_pass():
    @dataclasses.dataclass(frozen=True)
    class Breaker:
        name = "breaker"

        def apply(self, graph):
            graph.outputs.append("ghost")
            return graph

    with pytest.raises(CompileError, match="after pass 'breaker': graph output 'ghost'"):
        run_pipeline(parse_ir(SRC), [Breaker()], verify=True)
