"""Program-level assembler and disassembler (lpusim.asm) and the asm/disasm commands."""

from __future__ import annotations

import numpy as np
import pytest

from isa.encoding import decode, encode, from_words
from lpusim.asm import assemble, disassemble
from lpusim.errors import AsmError

pytest.importorskip("lpusim.arch")

SOURCE = """\
; a small two-chip program
.arch tsp-v1
.set latency.mem_read=6
.chips 2
.map 0 permute 319..0
.map 1 distribute 0..159, -1, -1, 162..319
.tensor x input int8 [4,320] slices=MEM_W0 addr=0
.tensor "w 1" weight fp16 [2,640] slices=MEM_W1,MEM_W2 addr=8 stride=2
.queue MEM_W0
mem.read E0, 0, count=4   ; issues at 0
@10 mem.read E1, 4
repeat 3, 2
.queue VXM0
@5 vxm.add int8, E2, E0, #-3
sync
notify
.chip 1
.tensor y output int32 [320] slices=MEM_E0,MEM_E1,MEM_E2,MEM_E3 addr=100
.queue MXM0
mxm.lw int8, E0, 16, count=20
"""


def _mnemonics(words: np.ndarray) -> list[str]:
    return [decode(w)[0].mnemonic for w in from_words(words)]


def _assert_same(a, b, *, data: bool = True) -> None:
    assert a.arch_config == b.arch_config
    assert len(a.chips) == len(b.chips)
    for ca, cb in zip(a.chips, b.chips, strict=True):
        assert list(ca.queues) == list(cb.queues)
        for name in ca.queues:
            assert ca.queues[name].dtype == np.uint64
            np.testing.assert_array_equal(ca.queues[name], cb.queues[name])
        np.testing.assert_array_equal(ca.maps, cb.maps)
    assert len(a.tensors) == len(b.tensors)
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        for f in ("name", "kind", "dtype", "shape", "chip", "slices", "addr", "stride"):
            assert getattr(ta, f) == getattr(tb, f), f
        if data:
            assert (ta.data is None) == (tb.data is None)
            if ta.data is not None:
                np.testing.assert_array_equal(ta.data, tb.data)


def test_directives_and_timing() -> None:
    p = assemble(SOURCE, source="t.s")
    assert len(p.chips) == 2
    c0, c1 = p.chips
    assert list(c0.queues) == ["MEM_W0", "VXM0"]  # the arch's canonical order
    assert list(c1.queues) == ["MXM0"]
    assert _mnemonics(c0.queues["MEM_W0"]) == ["mem.read", "nop", "mem.read", "repeat"]
    assert decode(from_words(c0.queues["MEM_W0"])[1])[1]["imm"] == 9  # cycles 1..9
    assert _mnemonics(c0.queues["VXM0"]) == ["nop", "vxm.add", "sync", "notify"]
    assert c0.maps.shape == (2, 320) and c0.maps.dtype == np.int16
    assert c0.maps[0, 0] == 319 and c0.maps[0, 319] == 0
    assert list(c0.maps[1, 158:163]) == [158, 159, -1, -1, 162]
    assert c1.maps.shape[0] == 0
    x, w, y = p.tensors
    assert (x.chip, x.slices, x.shape, x.addr, x.stride) == (0, (0,), (4, 320), 0, 1)
    assert (w.name, w.slices, w.stride) == ("w 1", (1, 2), 2)
    assert (y.chip, y.slices, y.kind) == (1, (44, 45, 46, 47), "output")
    assert p.arch_config["name"] == "tsp-v1"
    assert p.arch_config["latency"]["mem_read"] == 6


def test_arch_argument_and_overrides_win() -> None:
    p = assemble(SOURCE, arch="tsp-v1", overrides=["latency.mem_read=9"])
    assert p.arch_config["latency"]["mem_read"] == 9


def test_long_gap_becomes_several_nops() -> None:
    p = assemble(".queue MEM_W0\n@10000000000 mem.read E0, 0\n")
    words = from_words(p.chips[0].queues["MEM_W0"])
    nops = [decode(w)[1]["imm"] for w in words[:-1]]
    assert sum(nops) == 10_000_000_000 and len(nops) == 3


def test_tensor_data(tmp_path) -> None:
    np.save(tmp_path / "w.npy", np.arange(6, dtype=np.float64).reshape(2, 3))
    text = ".tensor w weight bf16 [2,3] slices=MEM_W0,MEM_W1 addr=0 data=w.npy\n"
    p = assemble(text, base_dir=tmp_path)
    import ml_dtypes

    assert p.tensors[0].data.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(p.tensors[0].data.astype(np.float32), np.arange(6).reshape(2, 3))
    out = disassemble(p)
    assert "; data: 12 bytes embedded in the program" in out
    _assert_same(p, assemble(out), data=False)
    with pytest.raises(AsmError, match=r"shape \[2, 3\], the tensor is \[3, 2\]") as info:
        assemble(text.replace("[2,3]", "[3,2]"), base_dir=tmp_path)
    assert info.value.column == text.index("w.npy") + 1


@pytest.mark.parametrize("cut", ["npy", "npz"])
def test_tensor_data_from_a_truncated_file_is_an_asm_error(tmp_path, cut) -> None:
    """A truncated .npy (or a truncated .npz named as data) is an AsmError at the data= token,
    not an EOFError or BadZipFile traceback."""
    import io

    buf = io.BytesIO()
    arr = np.arange(600, dtype=np.float32).reshape(20, 30)
    (np.save if cut == "npy" else np.savez)(buf, arr)
    (tmp_path / "w.npy").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    text = ".tensor w weight fp32 [20,30] slices=MEM_W0,MEM_W1,MEM_W2,MEM_W3 addr=0 data=w.npy\n"
    with pytest.raises(AsmError, match="cannot read"):
        assemble(text, base_dir=tmp_path)


def test_disassemble_round_trip() -> None:
    p = assemble(SOURCE)
    text = disassemble(p)
    assert ".set latency.mem_read=6" in text
    assert "    nop 9" in text and "; @10" in text
    assert ".map 0 319..0" in text
    _assert_same(p, assemble(text))
    assert disassemble(assemble(text)) == text


def test_disassemble_stops_counting_after_sync() -> None:
    text = disassemble(assemble(".queue VXM1\nsync\nnotify\n"))
    assert "sync" in text and "; @0" in text
    assert [ln for ln in text.splitlines() if "notify" in ln] == ["    notify"]


def test_map_runs_compress() -> None:
    entries = "5, 4, 3, 7, 8, 0..2, 6, 9..319"
    p = assemble(f".map 0 {entries}\n")
    text = disassemble(p)
    assert ".map 0 5..3,7,8,0..2,6,9..319" in text
    _assert_same(p, assemble(text))


BAD = [
    (".queue MEM_W0\nmem.read E0, 0\n@0 mem.read E1, 0", 3, 1, "before queue MEM_W0's next free"),
    (".queue MEM_W0\nsync\n@9 mem.read E1, 0", 3, 1, "passed a sync"),
    (
        ".queue VXM0\n  mem.read E0, 0",
        2,
        3,
        "mem.read cannot run on queue VXM0 (a VXM queue; use a MEM queue)",
    ),
    (".queue MEM_X0", 1, 8, "unknown queue 'MEM_X0'"),
    ("mem.read E0, 0", 1, 1, "before any .queue"),
    (".queue MEM_W0\n@4 mem.rd E0, 0", 2, 4, "did you mean mem.read"),
    (
        ".tensor x input int8 [4] slices=MEM_W0 addr=0\n"
        ".tensor x input int8 [4] slices=MEM_W1 addr=0",
        2,
        9,
        "tensor 'x' is defined twice",
    ),
    (".tensor x inptu int8 [4] slices=MEM_W0 addr=0", 1, 11, "unknown kind 'inptu'"),
    (".tensor x input int7 [4] slices=MEM_W0 addr=0", 1, 17, "unknown dtype 'int7'"),
    (".tensor x input fp16 [4] slices=MEM_W0 addr=0", 1, 33, "fp16 needs 2 slice(s)"),
    (".tensor x input int8 [4] slices=MEM_W0 addr=-1", 1, 45, "addr: expected an integer >= 0"),
    (".tensor x input int8 [4] slices=VXM0 addr=0", 1, 33, "not a MEM slice"),
    (".tensor x input int8 [4,320] slices=MEM_W0 addr=8190", 1, 49, "outside 0..8191"),
    (".chips 2\n.chip 2", 2, 7, "expected an integer in 0..1"),
    (".chip 1\n.tensor x input int8 [4] slices=MEM_W0 addr=0", 1, 7, "in 0..0"),
    (".queue MEM_W0\n.arch tsp-v1", 2, 1, "must come before"),
    (".arch nosuch", 1, 7, "no preset named 'nosuch'"),
    (".arch tsp-v1\n.set latency.mem_read=4\n.set latency.bogus=3", 3, 6, "latency.bogus"),
    (".map 0 0..10", 1, 1, "11 entries, expected exactly 320"),
    (".map 0 0..318, 320", 1, 16, "entries must lie in -1..319"),
    (".map 1 0..319", 1, 6, "map table has no entry 0"),
    (".queue MEM_W0\nrepeat 2", 2, 1, "repeat needs a previous instruction"),
    (".queue MEM_W0\nnop 0", 2, 1, "nop needs operands >= 1"),
    (".queue MEM_W0\n@x mem.read E0, 0", 2, 1, "expected @CYCLE"),
    (".frob 3", 1, 1, "unknown directive '.frob'"),
]


@pytest.mark.parametrize("text, line, column, message", BAD, ids=[b[3][:30] for b in BAD])
def test_errors_have_line_and_column(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(AsmError) as info:
        assemble(text, source="bad.s")
    err = info.value
    assert message in str(err)
    assert (err.line, err.column) == (line, column), str(err)
    assert str(err).startswith(f"bad.s:{line}:{column}: ")


def test_assembled_words_match_the_encoder() -> None:
    p = assemble(".queue MEM_E3\nmem.write W4, 17, count=3, stride=-2\n")
    assert from_words(p.chips[0].queues["MEM_E3"]) == [
        encode("mem.write", src=4, src_dir=1, addr=17, count=3, stride=-2)
    ]


# ---------------------------------------------------------------- command line


def test_cli_asm_disasm(tmp_path) -> None:
    pytest.importorskip("lpusim.program_io")
    from click.testing import CliRunner

    from lpusim.cli import main
    from lpusim.program_io import load_program

    src = tmp_path / "p.s"
    src.write_text(SOURCE)
    out = tmp_path / "p.lpu"
    runner = CliRunner()
    r = runner.invoke(main, ["asm", str(src), "-o", str(out), "--set", "latency.mem_read=7"])
    assert r.exit_code == 0, r.output
    prog = load_program(out)
    assert prog.arch_config["latency"]["mem_read"] == 7
    r = runner.invoke(main, ["disasm", str(out)])
    assert r.exit_code == 0, r.output
    assert ".set latency.mem_read=7" in r.output
    _assert_same(assemble(SOURCE, overrides=["latency.mem_read=7"]), assemble(r.output))
    text_out = tmp_path / "back.s"
    r = runner.invoke(main, ["disasm", str(out), "-o", str(text_out)])
    assert r.exit_code == 0 and text_out.read_text().startswith(".arch tsp-v1")


def test_cli_errors_are_one_line(tmp_path) -> None:
    pytest.importorskip("lpusim.program_io")
    from click.testing import CliRunner

    from lpusim.cli import main

    src = tmp_path / "bad.s"
    src.write_text(".queue VXM0\nmem.read E0, 0\n")
    out = tmp_path / "bad.lpu"
    r = CliRunner().invoke(main, ["asm", str(src), "-o", str(out)])
    assert r.exit_code == 1
    assert "error:" in r.output and ":2:1: mem.read cannot run on queue VXM0" in r.output
    assert "Traceback" not in r.output
    assert not out.exists()
    r = CliRunner().invoke(main, ["asm", str(tmp_path / "missing.s"), "-o", str(out)])
    assert r.exit_code == 1 and "cannot read" in r.output
    junk = tmp_path / "junk.lpu"
    junk.write_bytes(b"junk")
    r = CliRunner().invoke(main, ["disasm", str(junk)])
    assert r.exit_code == 1 and r.output.startswith("error:")
