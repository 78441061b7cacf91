"""The IR: text round trip, verify errors, deterministic order, mutation helpers."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import CompileError
from compiler.ir import Graph, TensorType, parse_ir, print_ir
from lpusim.errors import LpusimError

TEXT = """graph main
meta opset = 23
input %x: float32[1,4,8]
const @w0: float32[8,8] weight
const @b0: float32[2] const = [0.5, -1.0]
const @"onnx::a b": int64[2] const = [4, 4]
const @h: float16[3] const = [0.1, inf, nan]
const @flag: bool[2] const = [true, false]
%y: float32[1,4,8] = MatMul(%x, @w0) {}  # mm_0
%a: float32[1,4,4], %b: float32[1,4,4] = Split(%y, @"onnx::a b") {axis=-1}  # split_0
%z: float32[1,4,4], _ = LayerNormalization(%a, @b0, _) {axis=-1, epsilon=1e-05}  # "ln 0"
%q: float32[1,4,4] = Neg(%z) {t=(1, 2.5, "s"), v=float32[1] [-3.4028235e+38]}  # neg_0
%onnx::Add_1: float32[1,4,4] = Add(%q, %b) {}  # add_0
output %onnx::Add_1
"""


def test_round_trip():
    g = parse_ir(TEXT)
    g.verify()
    assert print_ir(g) == TEXT
    assert print_ir(parse_ir(print_ir(g))) == TEXT
    assert g.consts["@h".strip("@")].array.dtype == np.float16
    assert np.isnan(g.consts["h"].array[2])
    assert g.node("neg_0")["attrs"]["v"].dtype == np.float32


def test_large_const_data_elided_and_shape_only_parse():
    g = Graph()
    g.add_input("x", TensorType("float32", (2, 32)))
    g.add_const("w", np.ones((32, 32), np.float32))
    g.add_node("mm", "MatMul", ["x", "w"], ["y"], types=[TensorType("float32", (2, 32))])
    g.outputs = ["y"]
    text = print_ir(g)
    assert "const @w: float32[32,32] weight\n" in text
    assert parse_ir(text).consts["w"].array is None
    assert "= [" in print_ir(g, data_limit=1 << 20)


def test_unnamed_ops_get_names_and_order_is_deterministic():
    g = parse_ir("input %x: float32[2]\n%b: float32[2] = Neg(%x)\n%a: float32[2] = Abs(%x)\n"
                 "%c: float32[2] = Add(%a, %b)\noutput %c\n")
    assert g.topo_order() == ["neg_0", "abs_0", "add_0"]


@pytest.mark.parametrize("text, message", [
    ("input %x: float32[2]\n%y: float32[2] = Neg(%u)\noutput %y\n", "undefined value 'u'"),
    ("input %x: float32[2]\n%y: ? = Neg(%x)\noutput %y\n", r"'y' \(node 'neg_0'\) has no type"),
    ("input %x: float32[2]\noutput %q\n", "graph output 'q'"),
    ("input %x: float32[2]\n%x: float32[2] = Neg(%x)\noutput %x\n", "defined twice"),
])
def test_verify_errors(text, message):
    with pytest.raises(CompileError, match=message) as e:
        parse_ir(text).verify()
    assert isinstance(e.value, LpusimError) and "\n" not in str(e.value)


def test_cycle_is_an_error():
    g = parse_ir("input %x: float32[2]\n%a: float32[2] = Add(%x, %b)\n"
                 "%b: float32[2] = Neg(%a)\noutput %b\n")
    with pytest.raises(CompileError, match="cycle"):
        g.verify()


@pytest.mark.parametrize("text, message", [
    ("input %x: float32[2\n", "line 1"),
    ("input %x: floaty[2]\n", "unknown dtype 'floaty'"),
    ("const @c: float32[2] const = [1.0]\n", "do not fill"),
    ("%y: float32[2] = Neg(%x) {a=}\n", "bad attribute value"),
])
def test_parse_errors(text, message):
    with pytest.raises(CompileError, match=message):
        parse_ir(text)


def test_mutation_keeps_edges_consistent():
    g = parse_ir("input %x: float32[2]\n%a: float32[2] = Neg(%x)  # n\n"
                 "%b: float32[2] = Abs(%a)  # m\n%c: float32[2] = Exp(%b)  # e\noutput %c\n")
    assert g.producer("a") == "n" and g.consumers("a") == ["m"]
    g.replace_uses("b", "a")
    g.verify()
    assert g.consumers("a") == ["m", "e"] and list(g.g.successors("n")) == ["m", "e"]
    g.prune()
    assert sorted(g.g.nodes) == ["e", "n"]
    g.remove_node("e")
    assert g.forward("c", "a")  # c is a graph output: a is renamed to c
    g.verify()
    assert print_ir(g).splitlines()[-2:] == ["%c: float32[2] = Neg(%x) {}  # n", "output %c"]
    h = g.copy()
    h.remove_node("n")
    assert "n" in g.g and g.producer("c") == "n"
