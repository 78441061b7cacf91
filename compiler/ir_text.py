"""The IR's text form: `print_ir` and `parse_ir`, so pass tests are text in, text out.

    graph main
    meta opset = 23
    input %x: float32[1,4,8]
    const @w0: float32[8,8] weight
    const @b0: float32[2] const = [0.5, -1.0]
    %y: float32[1,4,8] = MatMul(%x, @w0) {}  # mm_0
    %a: float32[1,4,4], %b: float32[1,4,4] = Split(%y, @s) {axis=-1}  # split_0
    output %y

- `%name` is a graph input or an op's output, `@name` a const; a name that is not a plain
  identifier (letters, digits, `_ . - /`, inner `:`) is written as a JSON string: `%"a b"`.
  `_` in place of a value is an omitted optional input or output.
- A const line gives type and kind (`weight` or `const`) and, for at most `data_limit`
  elements, `= [v, ...]` (flat, C order; floats in the shortest form that reads back to the
  same value of the const's dtype). Without data the const parses as shape-only (array None).
- An op line: outputs with types, `=`, `domain::Op` (plain `Op` for ai.onnx), arguments, the
  attributes in braces sorted by name (int, float (always with `.`/`e`, or inf/nan), "string",
  tuple `(a, b)`, tensor `float32[2] [1.0, 2.0]`), then `# node_name`. Without a trailing name
  the parser names the op `<op>_<n>`.
- Ops are printed in `Graph.topo_order()`; `#` at the start of a line is a comment.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from compiler.errors import CompileError

DATA_LIMIT = 16

_BARE = re.compile(r"^[A-Za-z0-9_.\-/]+(?:::?[A-Za-z0-9_.\-/]+)*$")
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<name>[%@](?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-/]+(?:::?[A-Za-z0-9_.\-/]+)*))
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)(?![A-Za-z0-9_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.\-]*(?:::[A-Za-z_][A-Za-z0-9_.\-]*)?)
  | (?P<punct>[()\[\]{},=:?])
""", re.VERBOSE)


def _name(sigil: str, name: str) -> str:
    if not name:
        return "_"
    return sigil + (name if _BARE.match(name) else json.dumps(name))


def _fmt_scalar(x: Any, dtype: np.dtype) -> str:
    if dtype.kind == "b":
        return "true" if bool(x) else "false"
    if dtype.kind in "iu":
        return str(int(x))
    s = str(x)
    if s in ("inf", "-inf", "nan"):
        return s
    if "." not in s and "e" not in s:
        s += ".0"
    return s


def _fmt_data(arr: np.ndarray) -> str:
    return "[" + ", ".join(_fmt_scalar(x, arr.dtype) for x in arr.reshape(-1)) + "]"


def _fmt_attr(v: Any) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _fmt_scalar(float(v), np.dtype("float64"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt_attr(x) for x in v) + ")"
    if isinstance(v, np.ndarray):
        shape = ",".join(str(d) for d in v.shape)
        return f"{v.dtype}[{shape}] {_fmt_data(v)}"
    raise TypeError(f"cannot print attribute value {v!r}")


def _fmt_type(graph: Any, value: str) -> str:
    ty = graph.values.get(value)
    return "?" if ty is None else str(ty)


def print_ir(graph: Any, *, data_limit: int = DATA_LIMIT) -> str:
    """The graph as text (deterministic: same graph, same text)."""
    gname = graph.name if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", graph.name) else json.dumps(
        graph.name)
    lines = [f"graph {gname}"]
    for k in sorted(graph.meta):
        lines.append(f"meta {k} = {json.dumps(graph.meta[k], sort_keys=True)}")
    for v in graph.inputs:
        lines.append(f"input {_name('%', v)}: {_fmt_type(graph, v)}")
    for v, c in graph.consts.items():
        line = f"const {_name('@', v)}: {_fmt_type(graph, v)} {c.kind}"
        if c.array is not None and c.array.size <= data_limit:
            line += " = " + _fmt_data(c.array)
        lines.append(line)
    for n in graph.topo_order():
        a = graph.g.nodes[n]
        outs = ", ".join(f"{_name('%', o)}: {_fmt_type(graph, o)}" if o else "_"
                         for o in a["outputs"])
        ins = ", ".join(_name("@" if v in graph.consts else "%", v) for v in a["inputs"])
        attrs = ", ".join(f"{k}={_fmt_attr(a['attrs'][k])}" for k in sorted(a["attrs"]))
        op = f"{a['domain']}::{a['op']}" if a["domain"] else a["op"]
        lines.append(f"{outs} = {op}({ins}) {{{attrs}}}  # {_name('', n)}")
    for v in graph.outputs:
        lines.append(f"output {_name('@' if v in graph.consts else '%', v)}")
    return "\n".join(lines) + "\n"


class _Line:
    def __init__(self, text: str, lineno: int) -> None:
        self.lineno = lineno
        self.toks: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                self.fail(f"unexpected character {text[pos]!r}")
            assert m is not None and m.lastgroup is not None
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group()))
            pos = m.end()
        self.i = 0

    def fail(self, msg: str) -> None:
        raise CompileError(f"IR line {self.lineno}: {msg}")

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eol", "")

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        k, t = self.peek()
        if (kind is not None and k != kind) or (text is not None and t != text):
            self.fail(f"expected {text or kind}, found {t or 'end of line'!r}")
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("punct", "ident"):
            self.i += 1
            return True
        return False

    def value_name(self) -> str:
        k, t = self.peek()
        if k == "ident" and t == "_":
            self.i += 1
            return ""
        t = self.take("name")[1:]
        return json.loads(t) if t.startswith('"') else t

    def type_(self) -> tuple[str, tuple[int, ...]] | None:
        if self.accept("?"):
            return None
        dtype = self.take("ident")
        try:
            np.dtype(_np_dtype(dtype))
        except TypeError:
            self.fail(f"unknown dtype {dtype!r}")
        self.take("punct", "[")
        dims: list[int] = []
        while not self.accept("]"):
            dims.append(int(self.take("num")))
            self.accept(",")
        return dtype, tuple(dims)

    def data(self, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        self.take("punct", "[")
        items: list[Any] = []
        while not self.accept("]"):
            k, t = self.peek()
            if k == "ident" and t in ("true", "false"):
                self.i += 1
                items.append(t == "true")
            else:
                t = self.take("num")
                items.append(float(t) if any(c in t for c in ".eEn") else int(t))
            self.accept(",")
        try:
            arr = np.array(items, dtype=np.float64 if np.dtype(_np_dtype(dtype)).kind == "f"
                           else None).astype(_np_dtype(dtype)).reshape(shape)
        except ValueError:
            self.fail(f"{len(items)} data values do not fill {dtype}{list(shape)}")
        return arr

    def attr_value(self) -> Any:
        k, t = self.peek()
        if k == "num":
            self.i += 1
            return float(t) if any(c in t for c in ".eEn") else int(t)
        if k == "str":
            self.i += 1
            return json.loads(t)
        if t == "(":
            self.i += 1
            items = []
            while not self.accept(")"):
                items.append(self.attr_value())
                self.accept(",")
            return tuple(items)
        if k == "ident":
            ty = self.type_()
            assert ty is not None
            return self.data(*ty)
        self.fail(f"bad attribute value {t!r}")

    def end(self) -> None:
        if self.i != len(self.toks):
            self.fail(f"unexpected {self.toks[self.i][1]!r}")


def _np_dtype(name: str) -> Any:
    if name == "bfloat16" or name.startswith("float8"):
        import ml_dtypes

        return getattr(ml_dtypes, name)
    return np.dtype(name)


def parse_ir(text: str) -> Any:
    """Parse the text form back into a Graph (the inverse of `print_ir` up to elided data)."""
    from compiler.ir import Graph, TensorType

    graph = Graph()
    counts: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        body, name = raw, None
        m = re.search(r'\s#\s*("(?:[^"\\]|\\.)*"|\S+)\s*$', raw)
        if m:
            body, name = raw[: m.start()], m.group(1)
            name = json.loads(name) if name.startswith('"') else name
        ln = _Line(body, lineno)
        k, t = ln.peek()
        if k == "ident" and t == "graph":
            ln.take()
            gname = ln.take()
            graph.name = json.loads(gname) if gname.startswith('"') else gname
        elif k == "ident" and t == "meta":
            ln.take()
            key = ln.take("ident")
            rest = body.split("=", 1)[1]
            graph.meta[key] = json.loads(rest)
            continue
        elif k == "ident" and t == "input":
            ln.take()
            v = ln.value_name()
            ln.take("punct", ":")
            ty = ln.type_()
            if ty is None:
                ln.fail("a graph input needs a type")
            assert ty is not None
            graph.add_input(v, TensorType(*ty))
        elif k == "ident" and t == "const":
            ln.take()
            v = ln.value_name()
            ln.take("punct", ":")
            ty = ln.type_()
            if ty is None:
                ln.fail("a const needs a type")
            assert ty is not None
            kind = ln.take("ident")
            if kind not in ("weight", "const"):
                ln.fail(f"const kind must be weight or const, not {kind!r}")
            arr = ln.data(*ty) if ln.accept("=") else None
            graph.add_const(v, arr, ty=TensorType(*ty), kind=kind)  # type: ignore[arg-type]
        elif k == "ident" and t == "output":
            ln.take()
            graph.outputs.append(ln.value_name())
        else:
            outs: list[str] = []
            types: list[Any] = []
            while True:
                o = ln.value_name()
                outs.append(o)
                ty = None
                if o:
                    ln.take("punct", ":")
                    ty = ln.type_()
                types.append(None if ty is None else TensorType(*ty))
                if not ln.accept(","):
                    break
            ln.take("punct", "=")
            op = ln.take("ident")
            domain = ""
            if "::" in op:
                domain, op = op.rsplit("::", 1)
            ln.take("punct", "(")
            ins: list[str] = []
            while not ln.accept(")"):
                ins.append(ln.value_name())
                ln.accept(",")
            attrs: dict[str, Any] = {}
            if ln.accept("{"):
                while not ln.accept("}"):
                    key = ln.take("ident")
                    ln.take("punct", "=")
                    attrs[key] = ln.attr_value()
                    ln.accept(",")
            if name is None:
                n = counts.get(op, 0)
                counts[op] = n + 1
                name = f"{op.lower()}_{n}"
            try:
                graph.add_node(name, op, ins, outs, attrs, domain=domain, types=types)
            except CompileError as e:
                ln.fail(str(e))
        ln.end()
    return graph
