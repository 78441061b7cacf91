"""The timing-only fast path (lpusim/sim/verify.py) must agree with the reference interpreter on
whether a program has a timing hazard: no false 'clean' (a missed hazard), no false alarm."""

from __future__ import annotations

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
