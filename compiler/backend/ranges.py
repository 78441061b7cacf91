"""Value ranges of the integers the machine holds in a wider type than their own (int64,
uint32 and uint64 in int32): where every Add, Sub and Mul of them provably stays inside
int32, computing it there is exact. The host checks each input against the range the
analysis assumed for it: the type's range as the machine holds it, or a narrower one,
[-2^k, 2^k) (the largest k that makes every such result fit), for the inputs that reach such
arithmetic.

An unsigned result may be negative in int32 (x - y with y > x): it is the true result
modulo 2^32 or 2^64, which is what the host reads back, and what further Add, Sub and Mul
keep; ops that read it as a number (comparisons, Div, Max, ...) are refused."""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph

WIDE = ("int64", "uint32", "uint64")
ARITH = ("Add", "Sub", "Mul")
_INT32 = (-(2**31), 2**31 - 1)
# the range of each integer IR type as the machine holds it (the host checks inputs fit)
HELD = {"int8": (-128, 127), "int16": (-(2**15), 2**15 - 1), "int32": _INT32,
        "int64": _INT32, "uint8": (0, 255), "uint16": (0, 2**16 - 1), "uint32": (0, 2**31 - 1),
        "uint64": (0, 2**31 - 1)}
# ops that treat a wrapped unsigned value (negative in int32) consistently: modular
# arithmetic, moves and selections of its bits, equality
WRAP_SAFE = {"Add", "Sub", "Mul", "Neg", "Where", "Trilu", "Equal", "Identity", "Reshape",
             "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Concat",
             "Expand"}
_SAME = WRAP_SAFE - {"Add", "Sub", "Mul", "Neg", "Equal"} | {"Gather"}


class Ranges:
    """The outcome of the analysis: `exact` (wide Add/Sub/Mul results that fit int32),
    `wrapped` (unsigned values that may be negative in int32) and `inputs` (graph inputs whose
    checked range is narrower than HELD's)."""

    def __init__(self, exact: set, wrapped: set, inputs: dict) -> None:
        self.exact, self.wrapped, self.inputs = exact, wrapped, inputs


def integer_ranges(graph: Graph) -> Ranges:
    wide_ops = [n for n in graph.topo_order() if graph.node(n)["op"] in ARITH
                and graph.values[graph.node(n)["outputs"][0]].dtype in WIDE]
    r, bad = _propagate(graph, {})
    narrowed: dict[str, tuple[int, int]] = {}
    if bad and wide_ops:
        feeding = _reaching(graph, wide_ops)
        for k in range(30, 0, -1):
            trial = {v: (max(HELD[graph.values[v].dtype][0], -(2**k)),
                         min(HELD[graph.values[v].dtype][1], 2**k - 1)) for v in feeding}
            r2, bad2 = _propagate(graph, trial)
            if not bad2:
                r, bad, narrowed = r2, bad2, trial
                break
    exact = {graph.node(n)["outputs"][0] for n in wide_ops} - bad
    wrapped = {v for v, (lo, _) in r.items()
               if lo < 0 and graph.values[v].dtype.startswith("uint")}
    return Ranges(exact, wrapped, narrowed)


def _reaching(graph: Graph, targets: list[str]) -> list[str]:
    """Wide-typed graph inputs with a path to one of the target nodes."""
    seen, stack = set(), list(targets)
    while stack:
        n = stack.pop()
        for v in graph.node(n)["inputs"]:
            p = graph.producer(v) if v else None
            if p is not None and p not in seen:
                seen.add(p)
                stack.append(p)
    found = {v for n in list(seen) + targets for v in graph.node(n)["inputs"] if v}
    return [v for v in graph.inputs if v in found and graph.values[v].dtype in WIDE]


def _propagate(graph: Graph, given: dict) -> tuple[dict, set]:
    """Integer value -> (lo, hi) as mathematical integers, and the wide Add/Sub/Mul results
    whose range leaves int32."""
    r: dict[str, tuple[int, int]] = {}

    def rng(v: str) -> tuple[int, int]:
        if v in r:
            return r[v]
        dt = graph.values[v].dtype
        if v in given:
            return given[v]
        arr = graph.const_array(v) if graph.is_const(v) else None
        if arr is not None and arr.size and dt in HELD:
            return int(np.min(arr)), int(np.max(arr))
        return HELD.get(dt, _INT32)

    for v in graph.inputs:
        if graph.values[v].dtype in HELD:
            r[v] = rng(v)
    bad = set()
    for n in graph.topo_order():
        nd = graph.node(n)
        op, ins = nd["op"], [v for v in nd["inputs"] if v]
        for o in nd["outputs"]:
            if not o or graph.values[o].dtype not in HELD:
                continue
            dt = graph.values[o].dtype
            ints = [rng(v) for v in ins if graph.values[v].dtype in HELD]
            if op in ARITH and dt in WIDE and len(ints) == 2:
                (a0, a1), (b0, b1) = ints
                if op == "Add":
                    lo, hi = a0 + b0, a1 + b1
                elif op == "Sub":
                    lo, hi = a0 - b1, a1 - b0
                else:
                    ps = (a0 * b0, a0 * b1, a1 * b0, a1 * b1)
                    lo, hi = min(ps), max(ps)
                if lo < _INT32[0] or hi > _INT32[1]:
                    bad.add(o)
                r[o] = (lo, hi)
            elif op in ARITH and len(ints) == 2:  # a native type: exact where it fits, else
                (a0, a1), (b0, b1) = ints  # it wraps anywhere in its type
                ps = (a0 * b0, a0 * b1, a1 * b0, a1 * b1) if op == "Mul" else \
                    (a0 + b0, a1 + b1) if op == "Add" else (a0 - b1, a1 - b0)
                lo, hi = min(ps), max(ps)
                r[o] = (lo, hi) if HELD[dt][0] <= lo and hi <= HELD[dt][1] else HELD[dt]
            elif op == "Cast" and ins:  # a bool is 0 or 1; an integer keeps its range where
                src = graph.values[ins[0]].dtype  # the new type holds it; a marked one of
                lo, hi = (0, 1) if src == "bool" else ints[0] if ints else \
                    tuple(nd["attrs"].get("value_range", HELD[dt]))  # floats (ArgMax) its own
                r[o] = (lo, hi) if HELD[dt][0] <= lo and hi <= HELD[dt][1] else HELD[dt]
            elif op == "Neg" and dt in WIDE and ints:
                r[o] = (-ints[0][1], -ints[0][0])
            elif op in ("Max", "Min") and ints:
                f = max if op == "Max" else min
                r[o] = (f(i[0] for i in ints), f(i[1] for i in ints))
            elif op in ("Where", "Trilu", "Concat") and ints:
                sel = ints[-2:] if op == "Where" else ints[:1] if op == "Trilu" else ints
                extra = [(0, 0)] if op == "Trilu" else []
                r[o] = (min(i[0] for i in sel + extra), max(i[1] for i in sel + extra))
            elif op in _SAME and ints:
                r[o] = ints[0]
            else:
                r[o] = HELD[dt]
    return r, bad
