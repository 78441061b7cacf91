"""ONNX conformance: run the ONNX project's node test cases through compile + simulate.

For every op of the frontend's SUPPORTED_OPS (or the ops named on the command line) this
collects the node test cases of the installed onnx package
(`onnx.backend.test.case.node.collect_testcases`, including the `_expanded` function-body
variants, which are counted under the op they expand), compiles each model with
`lpusim.api.compile_onnx(model, precision="fp32")`, simulates it with the case's inputs and
compares every output with the expected one the way the ONNX backend test runner does (same
shape, same dtype, `np.testing.assert_allclose` with the case's rtol/atol).

Each case gets one status:

  PASS         every output matches.
  FAIL         an output differs (value, shape or dtype): a bug.
  NOT LOWERED  the compiler refused it with a CompileError (reason recorded).
  EXCLUDED     impossible by design on this machine: float64/string/complex tensors or a
               storage type the ISA does not have (fp8 fnuz, e8m0, fp4, int4/2, uint4/2), or an
               output shape that depends on the values of a graph input (e.g. Reshape's shape,
               Slice's starts, Reduce's axes given as inputs rather than constants).
  ERROR        anything else raised (a crash in the compiler or simulator): a bug.

`--freeze-shape-inputs` runs the value-dependent-shape cases anyway, with the operands that
set the shape folded into initializers (as exporters write them); their status is then that
of the frozen run and the reason says so. It also freezes the operands the compiler needs as
constants though they set no shape (CumSum's axis), which otherwise make a case NOT
LOWERED.

    python tools/conformance.py                 # all supported ops
    python tools/conformance.py Add Relu        # some ops
    python tools/conformance.py --json table.json --verbose
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PASS, FAIL, NOT_LOWERED, EXCLUDED, ERROR = "PASS", "FAIL", "NOT LOWERED", "EXCLUDED", "ERROR"
STATUSES = (PASS, FAIL, NOT_LOWERED, EXCLUDED, ERROR)

# element types the machine has no representation for, by design
_EXCLUDED_TYPES = {11: "float64", 8: "string", 14: "complex64", 15: "complex128",
                   # storage types the ISA does not have (its types: int8/16/32, fp16, bf16,
                   # fp32, fp8 e4m3fn and e5m2)
                   18: "float8e4m3fnuz", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
                   23: "float4e2m1", 24: "float8e8m0", 25: "uint2", 26: "int2"}

# (op, input indices) whose *values* set the shape of an output
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Tile": (1,),
    "Pad": (1, 3), "TopK": (1,), "OneHot": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
    "CenterCropPad": (1,), "NonZero": (0,), "Compress": (1,), "Unique": (0,),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,), "StringSplit": (0,),
    "Loop": (0,),  # the trip count sets the length of the scan outputs (Range's function body)
}
_SHAPE_ONLY = {"Shape", "Size"}  # outputs depend on the shape of the input, not its values
# (op, input indices) the compiler needs as constants though they set no shape (exporters
# write them so); as graph inputs the compiler refuses them (NOT LOWERED), and
# --freeze-shape-inputs freezes them too
CONST_OPERANDS: dict[str, tuple[int, ...]] = {"CumSum": (1,)}


@dataclass
class CaseResult:
    op: str
    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0


@dataclass
class OpRow:
    op: str
    cases: int = 0
    counts: dict = field(default_factory=lambda: {s: 0 for s in STATUSES})
    not_lowered_reasons: dict = field(default_factory=dict)
    excluded_reasons: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # (case, reason) for FAIL and ERROR


# ---------------------------------------------------------------------------- collection

_CASES = None


def _all_cases():
    """Every node test case of the installed onnx, once per process (the onnx collector runs
    each export at import time, so it can only be filtered on its first call)."""
    global _CASES
    if _CASES is None:
        import onnx.backend.test.case.node as node_mod

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            cases = node_mod.collect_testcases()
        names = getattr(node_mod, "_existing_names", {})
        out = []
        for c in cases:
            base = c.name.split("_expanded")[0]
            node = names.get(base)
            if node is not None:
                op = node.op_type
            elif len(c.model.graph.node) == 1:
                op = c.model.graph.node[0].op_type
            else:
                continue
            out.append((op, c))
        _CASES = out
    return _CASES


def collect(ops) -> dict[str, list]:
    want = set(ops)
    by_op: dict[str, list] = {op: [] for op in sorted(want)}
    for op, c in _all_cases():
        if op in want:
            by_op[op].append(c)
    return by_op


# ---------------------------------------------------------------------------- one case

def _to_array(x):
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(x) if isinstance(x, TensorProto) else np.asarray(x)


def _elem_types(vis):
    for vi in vis:
        t = vi.type
        if t.HasField("tensor_type"):
            yield vi.name, t.tensor_type.elem_type
        else:
            yield vi.name, None  # sequence / optional / map


def _value_shape_operands(model, operands=SHAPE_OPERANDS) -> list[str]:
    """Operands fed (through value-preserving ops) by graph inputs that set an output shape
    (or, with CONST_OPERANDS, that the compiler needs as constants)."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    tainted = {vi.name for vi in g.input if vi.name not in inits}
    found = []
    for node in g.node:
        slots = operands.get(node.op_type, ())
        for i in slots:
            if i < len(node.input) and node.input[i] in tainted:
                found.append(f"{node.op_type} input {i} ({node.input[i]!r})")
        if node.op_type not in _SHAPE_ONLY and any(i in tainted for i in node.input if i):
            tainted.update(o for o in node.output if o)
    return found


def _exclusion(model) -> str:
    g = model.graph
    bad = set()
    for _, et in list(_elem_types(g.input)) + list(_elem_types(g.output)):
        if et is None:
            bad.add("a sequence/optional/map value (the machine has tensors only)")
        elif et in _EXCLUDED_TYPES:
            bad.add(f"{_EXCLUDED_TYPES[et]} tensors (no {_EXCLUDED_TYPES[et]} on the machine)")
    return "; ".join(sorted(bad))


def _freeze(model, inputs: dict) -> tuple:
    """The model with the graph inputs that set shapes (or are CONST_OPERANDS) turned into
    initializers."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names = set()
    for node in g.node:
        for i in SHAPE_OPERANDS.get(node.op_type, ()) + CONST_OPERANDS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in inputs:
                names.add(node.input[i])
    keep = [vi for vi in g.input if vi.name not in names]
    del g.input[:]
    g.input.extend(keep)
    for n in sorted(names):
        g.initializer.append(numpy_helper.from_array(np.asarray(inputs[n]), n))
    return m, {k: v for k, v in inputs.items() if k not in names}


def _normalise_reason(text: str) -> str:
    """A reason text with node/value names and operand lists removed, for grouping."""
    t = text.split("; lowered ops:")[0].split("; supported:")[0]
    t = re.sub(r"\(node '[^']*'\)", "", t)
    t = re.sub(r"node '[^']*'", "node", t)
    t = re.sub(r"value '[^']*'", "value", t)
    t = re.sub(r"output '[^']*'", "output", t)
    t = re.sub(r"\[[-\d, ]*\]", "[..]", t)
    t = re.sub(r"\(\d+ -> \d+\)", "", t)
    t = re.sub(r"element type \w+ is", "element type <T> is", t)
    return re.sub(r"\s+", " ", t).replace(" :", ":").strip()


def _compare(names, want, got, rtol: float, atol: float) -> str:
    """'' if every output matches (ONNX runner rules), else what differs."""
    problems = []
    for name, ref in zip(names, want, strict=True):
        if name not in got:
            problems.append(f"output {name!r} missing")
            continue
        out = np.asarray(got[name])
        if tuple(out.shape) != tuple(ref.shape):
            problems.append(f"{name}: shape {list(out.shape)} != expected {list(ref.shape)}")
            continue
        if out.dtype != ref.dtype:
            problems.append(f"{name}: dtype {out.dtype} != expected {ref.dtype}")
            continue
        msg = None
        try:
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        except AssertionError:
            o, r = out.astype(np.float64), ref.astype(np.float64)
            bad = ~np.isclose(o, r, rtol=rtol, atol=atol, equal_nan=True)
            idx = np.argwhere(bad)
            first = tuple(int(v) for v in idx[0]) if len(idx) else ()
            with np.errstate(all="ignore"):
                diff = np.abs(o - r)
                diff = np.where(bad, diff, 0)
            msg = (f"{name} {list(ref.shape)}: {int(bad.sum())}/{ref.size} elements "
                          f"differ, max abs diff {np.nanmax(diff) if diff.size else 0:.3g}; "
                          f"first at {list(first)}: got {o[first]:.7g} want {r[first]:.7g}")
        if msg:
            problems.append(msg)
    return "; ".join(problems)


def run_case(op: str, case, freeze_shape_inputs: bool = False) -> CaseResult:
    from compiler.errors import CompileError
    from lpusim.api import compile_onnx, simulate
    from lpusim.errors import LpusimError

    t0 = time.perf_counter()
    model = case.model
    res = CaseResult(op, case.name, ERROR)

    def done(status, reason=""):
        res.status, res.reason = status, reason
        res.seconds = time.perf_counter() - t0
        return res

    excl = _exclusion(model)
    if excl:
        return done(EXCLUDED, excl)
    inputs_list, outputs_list = case.data_sets[0]
    in_names = [vi.name for vi in model.graph.input
                if vi.name not in {t.name for t in model.graph.initializer}]
    inputs = {n: _to_array(v) for n, v in zip(in_names, inputs_list, strict=False)}
    out_names = [vi.name for vi in model.graph.output]
    want = [_to_array(v) for v in outputs_list]
    frozen_note = ""
    dep = _value_shape_operands(model)
    if dep:
        why = "output shape depends on input values: " + ", ".join(dep)
        if not freeze_shape_inputs:
            return done(EXCLUDED, why)
        model, inputs = _freeze(model, inputs)
        frozen_note = " [shape inputs frozen to constants]"
    elif freeze_shape_inputs and _value_shape_operands(model, CONST_OPERANDS):
        model, inputs = _freeze(model, inputs)
        frozen_note = " [constant operands frozen]"
    rtol = float(getattr(case, "rtol", None) or 1e-3)  # the ONNX backend test's defaults
    atol = float(getattr(case, "atol", None) or 1e-7)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            program = compile_onnx(model, precision="fp32")
    except CompileError as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if text.startswith("internal"):  # the compiler's own consistency check: a bug
            return done(ERROR, text + frozen_note)
        return done(NOT_LOWERED, text + frozen_note)
    except Exception as e:  # noqa: BLE001 - a crash of the compiler is a bug to report
        return done(ERROR, f"compile raised {type(e).__name__}: {e}".splitlines()[0]
                    + frozen_note)
    try:
        with np.errstate(all="ignore"):
            sim = simulate(program, inputs)
    except LpusimError as e:
        return done(ERROR, f"simulate raised {type(e).__name__}: {e}".splitlines()[0]
                    + frozen_note)
    except Exception as e:  # noqa: BLE001
        return done(ERROR, f"simulate raised {type(e).__name__}: {e}".splitlines()[0]
                    + frozen_note)
    diff = _compare(out_names, want, sim.outputs, rtol, atol)
    if diff:
        return done(FAIL, diff + frozen_note)
    return done(PASS, frozen_note.strip())


# ---------------------------------------------------------------------------- the table

def run(ops, freeze_shape_inputs: bool = False, verbose: bool = False):
    by_op = collect(ops)
    rows, results = [], []
    for op, cases in by_op.items():
        row = OpRow(op)
        for case in cases:
            r = run_case(op, case, freeze_shape_inputs)
            results.append(r)
            if verbose:
                print(f"  {r.status:12s} {r.name}  {r.reason[:160]}", flush=True)
            row.cases += 1
            row.counts[r.status] += 1
            if r.status == NOT_LOWERED:
                k = _normalise_reason(r.reason)
                row.not_lowered_reasons[k] = row.not_lowered_reasons.get(k, 0) + 1
            elif r.status == EXCLUDED:
                k = _normalise_reason(re.sub(r" \('[^']*'\)", "", r.reason))
                row.excluded_reasons[k] = row.excluded_reasons.get(k, 0) + 1
            elif r.status in (FAIL, ERROR):
                row.failures.append((r.name, r.reason))
        rows.append(row)
    return rows, results


def _top(d: dict) -> str:
    if not d:
        return ""
    k, n = collections.Counter(d).most_common(1)[0]
    more = f" (+{len(d) - 1} other reasons)" if len(d) > 1 else ""
    return f"{n}x {k}{more}"


def format_table(rows) -> str:
    head = f"{'op':20s} {'cases':>5s} {'pass':>5s} {'fail':>5s} {'error':>5s} {'n/low':>5s} " \
           f"{'excl':>5s}  most common not-lowered reason"
    lines = [head, "-" * len(head)]
    tot = collections.Counter()
    for r in rows:
        c = r.counts
        tot.update(c)
        tot["cases"] += r.cases
        lines.append(f"{r.op:20s} {r.cases:5d} {c[PASS]:5d} {c[FAIL]:5d} {c[ERROR]:5d} "
                     f"{c[NOT_LOWERED]:5d} {c[EXCLUDED]:5d}  {_top(r.not_lowered_reasons)}")
    lines.append("-" * len(head))
    lines.append(f"{'total':20s} {tot['cases']:5d} {tot[PASS]:5d} {tot[FAIL]:5d} "
                 f"{tot[ERROR]:5d} {tot[NOT_LOWERED]:5d} {tot[EXCLUDED]:5d}")
    excl = [(r.op, k, n) for r in rows for k, n in sorted(r.excluded_reasons.items())]
    if excl:
        lines.append("")
        lines.append("exclusions:")
        lines.extend(f"  {op:20s} {n:3d}x {k}" for op, k, n in excl)
    bad = [(r.op, name, why) for r in rows for name, why in r.failures]
    if bad:
        lines.append("")
        lines.append("FAIL / ERROR (bugs):")
        lines.extend(f"  {op:20s} {name}: {why}" for op, name, why in bad)
    return "\n".join(lines)


def to_json(rows, results) -> dict:
    return {"ops": [asdict(r) for r in rows], "cases": [asdict(r) for r in results]}


def main(argv=None) -> int:
    from compiler.frontend import SUPPORTED_OPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ops", nargs="*", help="op types (default: the frontend's SUPPORTED_OPS)")
    ap.add_argument("--json", metavar="FILE", help="write the table and every case here")
    ap.add_argument("--freeze-shape-inputs", action="store_true",
                    help="run value-dependent-shape cases with those operands as constants")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = ap.parse_args(argv)
    ops = args.ops or list(SUPPORTED_OPS)
    t = time.perf_counter()
    rows, results = run(ops, args.freeze_shape_inputs, args.verbose)
    print(format_table(rows))
    print(f"\n{len(results)} cases in {time.perf_counter() - t:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, results), indent=1))
    return 1 if any(r.status in (FAIL, ERROR) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
