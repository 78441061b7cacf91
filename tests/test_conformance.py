"""ONNX conformance of the ops the backend lowers (issue 3's acceptance point).

Runs the ONNX project's node test cases (see tools/conformance.py) for every op in
compiler.backend.compile.LOWERED_OPS, compiles each in fp32 mode, simulates it and compares with
the expected outputs at the case's rtol/atol. A wrong number is never acceptable: every case
must PASS, or be NOT LOWERED with the compiler's reason, or be EXCLUDED with a reason that makes
it impossible by design (float64/string, a shape that depends on input values). `pytest -s`
prints the per-op table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx.backend.test.case.node")

from compiler.backend.compile import LOWERED_OPS  # noqa: E402

_TOOL = Path(__file__).resolve().parents[1] / "tools" / "conformance.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("lpusim_conformance_tool", _TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


conf = _load_tool()
OPS = sorted(LOWERED_OPS)


@pytest.fixture(scope="module")
def results():
    rows, cases = conf.run(OPS)
    print("\nONNX node-test conformance of the lowered ops (fp32 mode)\n")
    print(conf.format_table(rows))
    by_op: dict[str, list] = {op: [] for op in OPS}
    for r in cases:
        by_op[r.op].append(r)
    return by_op


def _bad(cases, statuses):
    return [f"{r.name}: {r.status}: {r.reason}" for r in cases if r.status in statuses]


@pytest.mark.parametrize("op", OPS)
def test_no_wrong_numbers(results, op):
    """No case of a lowered op may produce a wrong value, shape or dtype."""
    bad = _bad(results[op], {conf.FAIL})
    assert not bad, f"{op}: wrong outputs:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("op", OPS)
def test_every_case_classified(results, op):
    """Each case passes, or is refused with a reason, or excluded with a reason; never a crash."""
    bad = [f"{r.name}: {r.status}: {r.reason}" for r in results[op]
           if not (r.status == conf.PASS
                   or (r.status in (conf.NOT_LOWERED, conf.EXCLUDED) and r.reason.strip()))]
    assert not bad, f"{op}: cases neither passed nor cleanly refused:\n  " + "\n  ".join(bad)


def test_harness_sees_cases(results):
    """The harness found the ONNX cases and passes the plain float32 ones (a smoke check that
    a broken collector cannot make the suite vacuously green)."""
    assert len(results["Add"]) >= 2 and len(results["Relu"]) >= 1
    passed = {r.name for rs in results.values() for r in rs if r.status == conf.PASS}
    assert {"test_add", "test_add_bcast", "test_relu"} <= passed


def test_frozen_shape_inputs_no_wrong_numbers():
    """The value-dependent-shape cases of the lowered ops, re-run with their shape operands
    folded into initializers (as exporters write them): refused is fine, wrong is not."""
    bad = []
    for op, cases in conf.collect(OPS).items():
        for case in cases:
            if not conf._value_shape_operands(case.model) or conf._exclusion(case.model):
                continue
            r = conf.run_case(op, case, freeze_shape_inputs=True)
            if r.status in (conf.FAIL, conf.ERROR):
                bad.append(f"{r.name}: {r.status}: {r.reason}")
    assert not bad, "\n  ".join(["frozen shape-input cases:"] + bad)
