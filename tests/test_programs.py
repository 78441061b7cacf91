"""Hand-written assembly programs (tests/programs/*.s): numerics, engines, golden traces.

For each program: assemble, simulate with seeded random inputs, compare the outputs with
numpy, check that the fast (Numba) and the reference engine agree exactly (outputs and trace
rows), that timing-only mode reports the same cycle count and the same events, and compare the
text trace with tests/golden/<program>.trace (`pytest --update-golden` rewrites them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpusim.asm import assemble
from lpusim.simulator import simulate
from lpusim.trace import text_trace

PROGRAMS = Path(__file__).parent / "programs"

# mxm.lw with a 2-byte dtype: decode sets g_in = the src group width (1) instead of the dtype
# width, so the reference engine crashes in unpack and the fast engine loads wrong weights.

def _ints(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def inputs_vxm_add(rng):
    return {"x": _ints(rng, (4, 320), np.int8), "y": _ints(rng, (4, 320), np.int8)}


def expect_vxm_add(inp):
    return {"z": (inp["x"].astype(np.int16) + inp["y"]).astype(np.int8)}  # wraps mod 256


def inputs_matmul_int8(rng):
    return {"x": _ints(rng, (8, 640), np.int8), "W": _ints(rng, (640, 320), np.int8)}


def expect_matmul_int8(inp):
    return {"y": (inp["x"].astype(np.int64) @ inp["W"].astype(np.int64)).astype(np.int32)}


def inputs_matmul_fp16(rng):
    return {"x": rng.standard_normal((4, 320)).astype(np.float16),
            "W": (rng.standard_normal((320, 320)) / 16).astype(np.float16)}


def expect_matmul_fp16(inp):
    # products of fp16 values are exact in fp64 and a 320-term sum of them is (nearly) exact
    # in fp64, so the MXM's "sum in fp64, round once to fp32" is float64 x@W rounded to fp32
    return {"y": (inp["x"].astype(np.float64) @ inp["W"].astype(np.float64)).astype(np.float32)}


def inputs_transpose(rng):
    return {f"a{j}": _ints(rng, (1, 320), np.int8) for j in range(16)}


def expect_transpose(inp):
    a = np.concatenate([inp[f"a{j}"] for j in range(16)])          # (16 rows, 320 lanes)
    # out row j, lane 16k+i = in row i, lane 16k+j: every 16x16 tile transposed
    t = a.reshape(16, 20, 16).transpose(2, 1, 0).reshape(16, 320)
    return {f"b{j}": t[j:j + 1] for j in range(16)}


def inputs_gather(rng):
    table = _ints(rng, (64, 320), np.int8)
    idx = rng.integers(0, 64, (4, 20))                 # a row index per (vector, tile)
    idx[0] = idx[0, 0]                                 # vector 0: a plain embedding-row lookup
    m = np.repeat(idx, 16, axis=1).astype(np.int16)    # lane 16k+j carries tile k's index
    m[:, 1::16] = 7                                    # only lane 16k is read: junk elsewhere
    return {"table": table, "map": m, "_idx": idx}


def expect_gather(inp):
    idx, table = inp["_idx"], inp["table"]
    out = np.empty((4, 320), np.int8)
    for v in range(4):
        for k in range(20):
            out[v, 16 * k:16 * k + 16] = table[idx[v, k], 16 * k:16 * k + 16]
    assert np.array_equal(out[0], table[idx[0, 0]])
    return {"out": out}


def inputs_two_chip(rng):
    return {"x": _ints(rng, (2, 320), np.int8)}


def expect_two_chip(inp):
    return {"y": inp["x"]}


CASES = {
    "vxm_add": (inputs_vxm_add, expect_vxm_add),
    "matmul_int8": (inputs_matmul_int8, expect_matmul_int8),
    "matmul_fp16": (inputs_matmul_fp16, expect_matmul_fp16),
    "transpose": (inputs_transpose, expect_transpose),
    "gather": (inputs_gather, expect_gather),
    "two_chip": (inputs_two_chip, expect_two_chip),
}
BROKEN: dict[str, str] = {}


def _program(name):
    path = PROGRAMS / f"{name}.s"
    return assemble(path.read_text(), source=str(path), base_dir=PROGRAMS)


def _inputs(name):
    inp = CASES[name][0](np.random.default_rng(sum(map(ord, name))))
    return inp, {k: v for k, v in inp.items() if not k.startswith("_")}


def _functional_params():
    return [pytest.param(n, marks=pytest.mark.xfail(reason=BROKEN[n], strict=True))
            if n in BROKEN else n for n in CASES]


def test_every_program_has_a_case():
    assert sorted(p.stem for p in PROGRAMS.glob("*.s")) == sorted(CASES)


@pytest.mark.parametrize("name", _functional_params())
def test_outputs_match_numpy(name):
    inp, given = _inputs(name)
    res = simulate(_program(name), given, engine="reference")
    want = CASES[name][1](inp)
    assert sorted(res.outputs) == sorted(want)
    for k, v in want.items():
        got = res.outputs[k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        if np.issubdtype(v.dtype, np.floating):
            # one fp32 rounding of a dot product whose fp64 sum is exact up to ~1e-16
            # relative: the results agree to within 1 ulp of fp32
            np.testing.assert_allclose(got, v, rtol=1e-6, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(got, v, err_msg=k)


@pytest.mark.parametrize("name", _functional_params())
def test_fast_and_reference_agree(name):
    _, given = _inputs(name)
    prog = _program(name)
    ref = simulate(prog, given, engine="reference", trace=True)
    fast = simulate(prog, given, engine="fast", trace=True)
    assert sorted(ref.outputs) == sorted(fast.outputs)
    for k in ref.outputs:
        assert ref.outputs[k].tobytes() == fast.outputs[k].tobytes(), k
    np.testing.assert_array_equal(ref.trace_rows, fast.trace_rows)
    assert ref.report["cycles"] == fast.report["cycles"]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_timing_mode_matches_functional(name, engine):
    prog = _program(name)
    timing = simulate(prog, mode="timing", engine=engine, trace=True)
    # the functional run of the broken program is compared through the fast engine only
    eng = "fast" if name in BROKEN else engine
    _, given = _inputs(name)
    func = simulate(prog, given, engine=eng, trace=True)
    assert timing.report["cycles"] == func.report["cycles"]
    np.testing.assert_array_equal(timing.trace_rows, func.trace_rows)


@pytest.mark.parametrize("name", list(CASES))
def test_golden_trace(name, golden):
    # timing mode, so that the golden trace also exists for a program whose values are wrong
    # (fast engine: the reference engine's timing mode is broken, see REF_TIMING_BUG; the
    # functional traces of both engines equal this one, see the tests above)
    res = simulate(_program(name), mode="timing", engine="fast", trace=True)
    header = (f"tests/programs/{name}.s: simulate(mode='timing', engine='fast'); "
              f"{res.report['cycles']} cycles\n"
              "made by: python -m pytest tests/test_programs.py --update-golden")
    golden(f"{name}.trace", text_trace(res.decoded, res.trace_rows, header))
