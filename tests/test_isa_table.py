"""The whole instruction table: encode/decode and asm/disasm round trips, and table validation."""

from __future__ import annotations

import dataclasses
import random

import pytest

import isa.table as table
from isa.asm import assemble_instruction, disassemble_instruction
from isa.dtypes import DTYPES
from isa.encoding import decode, encode
from isa.fields import FIELDS
from isa.table import ALU_BY_NAME, ALU_OPS, CHAIN_CVT, CHAIN_OP_BITS, INSTRUCTIONS, Instr, Operand
from lpusim.errors import AsmError, IsaError

SAMPLES_PER_ROW = 40


def _random_values(row: Instr, rng: random.Random) -> dict[str, int]:
    """Random field values that the assembler accepts for `row`."""
    values: dict[str, int] = {}
    dts = list(DTYPES)
    if row.alu is not None and row.alu.kind != "any":
        dts = [d for d in DTYPES if d.is_float == (row.alu.kind == "float")]
    for op in row.operands:
        if op.kind == "dtype":
            values[op.name] = rng.choice(dts if op.name == "dtype" else DTYPES).code
    dt = next((d for d in DTYPES if d.code == values.get("dtype")), None)
    for op in row.operands:
        if op.kind == "int":
            f = FIELDS[op.name]
            values[op.name] = rng.randint(f.min_value, f.max_value)
        elif op.kind == "stream" or (op.kind == "streamb" and rng.random() < 0.5):
            g = rng.randrange(3)
            values[op.name] = rng.randrange(0, 32, 1 << g)
            values[f"{op.name}_dir"] = rng.randrange(2)
            values[f"{op.name}_g"] = g
        elif op.kind == "streamb":
            values["imm"] = rng.getrandbits(32)
            values["flag"] = 1
        elif op.kind == "chain":
            ok = [
                a
                for a in ALU_OPS
                if dt is None or a.kind == "any" or (a.kind == "float") == dt.is_float
            ]
            ops = 0
            for i in range(rng.randint(1, 4)):
                ops |= rng.choice(ok).code << (CHAIN_OP_BITS * i)
            values["ops"] = ops
    return values


@pytest.mark.parametrize("row", INSTRUCTIONS, ids=lambda r: r.mnemonic)
def test_round_trips(row: Instr) -> None:
    rng = random.Random(f"lpusim-{row.mnemonic}")
    for _ in range(SAMPLES_PER_ROW):
        values = _random_values(row, rng)
        word = encode(row.mnemonic, **values)
        got_row, got = decode(word)
        assert got_row is row
        assert encode(row.mnemonic, **got) == word
        text = disassemble_instruction(word)
        assert assemble_instruction(text) == word, text
        assert disassemble_instruction(assemble_instruction(text)) == text


def test_defaults_round_trip() -> None:
    for row in INSTRUCTIONS:
        values = _random_values(row, random.Random(row.opcode))
        for op in row.operands:
            if isinstance(op.default, int):
                values[op.name] = op.default
        word = encode(row.mnemonic, **values)
        assert assemble_instruction(disassemble_instruction(word)) == word


def test_decode_rejects_unused_opcode_and_stray_bits() -> None:
    used = {r.opcode for r in INSTRUCTIONS}
    unused = next(op for op in range(1, 256) if op not in used)
    with pytest.raises(IsaError, match="invalid opcode"):
        decode(unused)
    with pytest.raises(IsaError, match="invalid opcode"):
        decode(0)
    nop = encode("nop", imm=3)
    with pytest.raises(IsaError, match="outside its fields"):
        decode(nop | 1 << FIELDS["dst"].lo)


def test_disassembler_rejects_words_the_assembler_cannot_write() -> None:
    bad_group = encode("mem.read", dst=0, dst_g=3, addr=0)
    misaligned = encode("mem.read", dst=3, dst_g=1, addr=0)
    empty_chain = encode("vxm.chain", dtype=5, ops=0)
    gap_chain = encode("vxm.chain", dtype=5, ops=16 << CHAIN_OP_BITS)
    for word in (bad_group, misaligned, empty_chain, gap_chain):
        with pytest.raises(IsaError):
            disassemble_instruction(word)


@pytest.mark.parametrize(
    "text, column, message",
    [
        ("mem.rd E0, 0", 1, "did you mean mem.read"),
        ("mem.read E3, E3", 14, "operand addr expects an integer, got 'E3'"),
        ("mem.read E3/2, 0", 10, "multiple of the group width 2"),
        ("mem.read E0/3, 0", 10, "group width of 1, 2 or 4"),
        ("mem.read E32, 0", 10, "below 32"),
        ("mem.read E0", 12, "missing operand addr"),
        ("mem.read E0, 0, count=70000", 23, "operand count expects an integer in [0, 65535]"),
        ("mem.read E0, 0, 1, 1, 1", 23, "too many operands"),
        ("mem.read E0, 0, cnt=1", 17, "no operand 'cnt'"),
        ("mem.read E0, count=2, 0", 23, "positional operand cannot follow"),
        ("vxm.exp int8, E0, E1", 9, "takes float types"),
        ("vxm.add int8, E0, E1, #1.5", 23, "integer after '#'"),
        ("vxm.add fp32, E0/4, E4/4, #1e39", 27, "fits fp32"),
        ("vxm.chain fp16, E0/2, E2/2, E4/2, ops=sub:epx", 39, "did you mean exp"),
        ("vxm.add int9, E0, E1, E2", 9, "expects a dtype"),
    ],
)
def test_errors_name_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(AsmError) as info:
        assemble_instruction(text, line=7, source="t.s")
    assert info.value.line == 7
    assert info.value.column == column, str(info.value)
    assert message in str(info.value)
    assert str(info.value).startswith(f"t.s:7:{column}: ")


def test_immediates() -> None:
    w = assemble_instruction("vxm.mul fp32, E0/4, E4/4, #1.5")
    _, v = decode(w)
    assert v["flag"] == 1 and v["imm"] == 0x3FC00000
    _, v = decode(assemble_instruction("vxm.add int32, E0/4, E4/4, #-3"))
    assert v["imm"] == 0xFFFFFFFD
    assert (
        disassemble_instruction(assemble_instruction("vxm.add fp32, E0/4, E4/4, #0.1"))
        == "vxm.add fp32, E0/4, E4/4, #0.1"
    )
    nan = assemble_instruction("vxm.add bf16, E0/2, E4/2, #bits:0x7fc00001")
    assert disassemble_instruction(nan).endswith("#bits:0x7fc00001")


def _validate_with(monkeypatch, rows) -> None:
    monkeypatch.setattr(table, "INSTRUCTIONS", tuple(rows))
    table.validate_table()


def test_validate_table_accepts_the_table(monkeypatch) -> None:
    _validate_with(monkeypatch, INSTRUCTIONS)


def test_validate_table_catches_a_duplicate_opcode(monkeypatch) -> None:
    clone = dataclasses.replace(INSTRUCTIONS[0], mnemonic="nop2")
    with pytest.raises(IsaError, match="used twice"):
        _validate_with(monkeypatch, [*INSTRUCTIONS, clone])


def test_validate_table_catches_overlapping_fields(monkeypatch) -> None:
    row = Instr(
        "bad.overlap",
        "MEM",
        0x1F,
        (Operand("addr", "int"), Operand("ops", "chain")),
        None,
        (),
        (),
        "x",
    )
    with pytest.raises(IsaError, match="overlaps"):
        _validate_with(monkeypatch, [*INSTRUCTIONS, row])


def test_validate_table_catches_a_bad_latency_class(monkeypatch) -> None:
    row = dataclasses.replace(
        INSTRUCTIONS[4], mnemonic="mem.slow", opcode=0x1E, latency="mem_sloow"
    )
    with pytest.raises(IsaError, match="unknown latency class"):
        _validate_with(monkeypatch, [*INSTRUCTIONS, row])


@pytest.mark.parametrize("text", [
    "vxm.chain fp32, E8, E0/4, E4/4, ops=mul:cvt.int8",
    "vxm.chain int32, E8/4, E0/4, E4/4, count=3, ops=cvt.fp32:mul",
    "vxm.chain fp32, E8/2, E0/4, #0.5, ops=mul:cvt.fp16:exp",
    "vxm.chain int8, E8/4, E0, E4/4, ops=cvt.fp32:max:min",
])
def test_conversion_links_round_trip(text: str) -> None:
    word = assemble_instruction(text)
    assert disassemble_instruction(word) == text
    links = text.split("ops=")[1].split(":")
    at = next(i for i, n in enumerate(links) if n.startswith("cvt."))
    values = decode(word)[1]
    assert (values["ops"] >> (CHAIN_OP_BITS * at)) & ((1 << CHAIN_OP_BITS) - 1) == CHAIN_CVT
    assert values["dtype2"] == next(d.code for d in DTYPES if d.name == links[at][4:])


@pytest.mark.parametrize("ops, message", [
    ("mul:cvt.int8:add", "binary links lie on both sides"),
    ("cvt.int8:cvt.fp32", "converts once"),
    ("cvt.int9", "a conversion link cvt.TYPE"),
])
def test_conversion_link_errors(ops: str, message: str) -> None:
    text = f"vxm.chain fp32, E8/4, E0/4, E4/4, ops={ops}"
    with pytest.raises(AsmError) as info:
        assemble_instruction(text)
    assert message in str(info.value)
    assert info.value.column == text.index("ops=") + len("ops=") + 1  # at the chain


def test_an_immediate_serves_links_before_the_conversion_only() -> None:
    with pytest.raises(AsmError, match="before the cvt only"):
        assemble_instruction("vxm.chain fp32, E8, E0/4, #2.0, ops=exp:cvt.int8:add")


def test_dtype2_is_set_by_a_conversion_link_only() -> None:
    word = encode("vxm.chain", dtype=5, dtype2=3, ops=ALU_BY_NAME["mul"].code)
    with pytest.raises(IsaError, match="dtype2 is set only by a cvt link"):
        disassemble_instruction(word)


def test_the_simulator_refuses_a_bad_conversion_chain() -> None:
    """Words the assembler would refuse, written directly: the decoder's static check."""
    from lpusim.asm import assemble
    from lpusim.errors import ProgramFormatError
    from lpusim.simulator import simulate

    mul, add = ALU_BY_NAME["mul"].code, ALU_BY_NAME["add"].code
    for ops, dtype2, dst_g in ((mul | CHAIN_CVT << 6 | add << 12, 0, 0), (mul, 3, 2)):
        p = assemble(".queue VXM0\n@5 vxm.chain fp32, W0, E0/4, E4/4, ops=mul:cvt.int8\n")
        w = encode("vxm.chain", dtype=5, dtype2=dtype2, dst_dir=1, dst_g=dst_g, src_g=2, src2=4,
                   src2_g=2, ops=ops, count=1)
        p.chips[0].queues["VXM0"][-1] = (w & (1 << 64) - 1, w >> 64)
        with pytest.raises(ProgramFormatError, match="a chain converts once"):
            simulate(p, mode="timing")
