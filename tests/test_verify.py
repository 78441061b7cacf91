"""The timing-only fast path (lpusim/sim/verify.py) must agree with the reference interpreter on
whether a program has a timing hazard: no false 'clean' (a missed hazard), no false alarm."""

from __future__ import annotations

import numpy as np
import pytest

from lpusim.arch import load_arch
from lpusim.asm import assemble
from lpusim.errors import HazardError
from lpusim.sim.decode import decode
from lpusim.sim.verify import timing_clean
from lpusim.simulator import simulate
from tests.test_sim_differential import gen_program

ARCH = load_arch("tsp-v1")


def reference_clean(program) -> bool:
    try:
        simulate(program, mode="timing", engine="reference")
    except HazardError:
        return False
    return True


def verdicts(text):
    program = assemble(text)
    try:
        dec = decode(program, ARCH)
    except HazardError:
        return None  # a static hazard: neither path runs
    return timing_clean(dec, ARCH), reference_clean(program)


@pytest.mark.parametrize("seed", range(60))
def test_verdict_matches_reference(seed):
    text, _ = gen_program(seed, perturb=seed % 2 == 0)
    v = verdicts(text)
    if v is not None:
        assert v[0] == v[1], f"fast path says clean={v[0]}, reference says clean={v[1]}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2000, 2400))
def test_verdict_matches_reference_sweep(seed):
    text, _ = gen_program(seed, perturb=True)
    v = verdicts(text)
    if v is not None:
        assert v[0] == v[1]


def test_hazard_programs_are_not_clean():
    from tests import test_hazards as th

    found = 0
    for name in dir(th):
        text = getattr(th, name)
        if not (isinstance(text, str) and text.lstrip().startswith((".arch", ";"))):
            continue
        v = verdicts(text)
        if v is None:
            continue
        assert v[0] == v[1], name
        found += 1
    assert found >= 5


def _vxm_add_at(base: int, write_at: int = 11) -> str:
    """tests/programs/vxm_add.s with every issue cycle moved `base` cycles later."""
    return (".arch tsp-v1\n"
            ".tensor x input int8 [4,320] slices=MEM_W0 addr=0\n"
            ".tensor y input int8 [4,320] slices=MEM_W1 addr=0\n"
            ".tensor z output int8 [4,320] slices=MEM_W2 addr=0\n"
            f".queue MEM_W1\n@{base} mem.read E1, 0, count=4\n"
            f".queue MEM_W0\n@{base + 1} mem.read E0, 0, count=4\n"
            f".queue VXM0\n@{base + 6} vxm.add int8, W0, E0, E1, count=4\n"
            f".queue MEM_W2\n@{base + write_at} mem.write W0, 0, count=4\n")


def test_programs_past_2_31_cycles_decode_wide():
    """Issue cycles beyond int32 switch the decoded matrix to int64: same results, cycles and
    hazards as the program issued at cycle 0, shifted."""
    arch = load_arch("tsp-v1")
    base = 3 << 30
    near, far = assemble(_vxm_add_at(0)), assemble(_vxm_add_at(base))
    assert decode(near, arch).raw.dtype == np.int32
    assert decode(far, arch).raw.dtype == np.int64
    rng = np.random.default_rng(0)
    inp = {n: rng.integers(-128, 128, (4, 320)).astype(np.int8) for n in ("x", "y")}
    a, b = simulate(near, inp), simulate(far, inp)
    np.testing.assert_array_equal(a.outputs["z"], b.outputs["z"])
    assert b.report["cycles"] == a.report["cycles"] + base
    assert simulate(far, mode="timing").report["cycles"] == b.report["cycles"]
    with pytest.raises(HazardError) as exc:  # the write one cycle early reads an empty stream
        simulate(assemble(_vxm_add_at(base, write_at=10)), mode="timing")
    assert exc.value.kind == "stream-empty" and exc.value.cycle == base + 10
