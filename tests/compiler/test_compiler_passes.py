"""Pass tests, text in and text out: each tests/compiler/passes/*.ir file holds

    # pass: NAME [JSON options]
    <input IR>
    # expect:
    <expected IR, exactly as print_ir writes it>

The pass runs through run_pipeline with verify=True; the result must print as the expected
block (`pytest --update-golden` rewrites that block). Each case is also run numerically: the
graph before and after the pass, under compiler.interp on seeded random inputs (and random data
for shape-only consts), must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler import interp
from compiler.ir import parse_ir, print_ir
from compiler.pipeline import get_pass, run_pipeline

CASES = sorted((Path(__file__).parent / "passes").glob("*.ir"))


def _read(path: Path):
    text = path.read_text()
    head, _, rest = text.partition("\n")
    assert head.startswith("# pass: "), f"{path.name}: first line must be '# pass: NAME'"
    spec = head[len("# pass: "):].split(None, 1)
    options = json.loads(spec[1]) if len(spec) > 1 else {}
    src, sep, expected = rest.partition("# expect:\n")
    assert sep, f"{path.name}: no '# expect:' line"
    return head, spec[0], options, src, expected


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_pass_text(path: Path, request):
    head, name, options, src, expected = _read(path)
    graph = parse_ir(src)
    graph.verify()
    out = print_ir(run_pipeline(graph, [get_pass(name, **options)], verify=True))
    if request.config.getoption("--update-golden"):
        path.write_text(f"{head}\n{src}# expect:\n{out}")
        return
    assert out == expected, f"{path.name}: got\n{out}"
    assert print_ir(parse_ir(out)) == out


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_pass_numerics(path: Path):
    _, name, options, src, _ = _read(path)
    graph = parse_ir(src)
    interp.fill_random_consts(graph, seed=1)
    feeds = interp.random_feeds(graph, seed=2)
    want = interp.run(graph, feeds)
    after = run_pipeline(graph.copy(), [get_pass(name, **options)], verify=True)
    got = interp.run(after, feeds)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_every_pass_has_a_case():
    from compiler.passes import PASSES

    covered = {_read(p)[1] for p in CASES}
    assert set(PASSES) <= covered, sorted(set(PASSES) - covered)
