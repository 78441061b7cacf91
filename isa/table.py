"""The instruction set, defined once. Every other view (encoder, decoder, assembler,
disassembler, the simulator's opcode constants, ISA.md) is derived from the rows below.

Operand kinds (how the assembler writes an operand and which fields it fills):
  stream    "E4", "W8/2", "E0/4": direction (E eastward, W westward), first stream, group width
            (1, 2 or 4 streams; the first stream must be a multiple of the width);
            fills <name>, <name>_dir, <name>_g.
  streamb   a stream operand or an immediate "#1.5" / "#-3" (the B operand of a VXM op);
            an immediate sets `flag` and puts the value's bits (fp32 for float dtypes, int32
            for integer dtypes) in `imm`.
  dtype     an element type name (isa.dtypes), fills the field of the same name.
  int       a decimal or 0x integer.
  chain     ALU op names joined by ':' (up to four), e.g. "sub:exp"; fills `ops`.
Operands with a default may be omitted; optional operands may be written `name=value`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from isa.fields import FIELDS, WORD_BITS

UNITS = ("ICU", "MEM", "VXM", "MXM", "SXM", "C2C")

LATENCY_CLASSES = (
    "mem_read", "mem_write", "mem_gather", "mem_scatter",
    "vxm_alu", "vxm_special", "vxm_convert",
    "mxm_load", "mxm_install", "mxm_activate", "mxm_accumulate",
    "sxm_shift", "sxm_permute", "sxm_distribute", "sxm_rotate", "sxm_transpose",
    "c2c_send", "c2c_recv", "c2c_deskew",
    "icu_sync", "icu_notify",
)  # fmt: skip


@dataclass(frozen=True)
class Operand:
    name: str
    kind: str  # stream | streamb | dtype | int | chain
    default: int | str | None = None
    doc: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        if self.kind == "stream":
            return (self.name, f"{self.name}_dir", f"{self.name}_g")
        if self.kind == "streamb":
            return (self.name, f"{self.name}_dir", f"{self.name}_g", "imm", "flag")
        if self.kind == "chain":
            return ("ops", "dtype2")  # dtype2: the type a cvt link converts to
        return (self.name,)


@dataclass(frozen=True)
class AluOp:
    """One operation of a VXM ALU. `kind` says which element types it accepts."""

    code: int
    name: str
    arity: int
    latency: str  # vxm_alu or vxm_special
    kind: str  # any | float | int
    semantics: str


# Integer arithmetic wraps modulo 2^bits; float ops compute in fp32 and round to the element
# type; special functions are evaluated in fp64 and rounded once to fp32, then to the type.
# Comparisons and logical ops give 1 or 0 in the element type.
ALU_OPS: tuple[AluOp, ...] = (
    AluOp(1, "copy", 1, "vxm_alu", "any", "z = x"),
    AluOp(2, "neg", 1, "vxm_alu", "any", "z = -x"),
    AluOp(3, "abs", 1, "vxm_alu", "any", "z = |x|"),
    AluOp(4, "relu", 1, "vxm_alu", "any", "z = max(x, 0)"),
    AluOp(5, "not", 1, "vxm_alu", "any", "z = 1 if x == 0 else 0"),
    AluOp(6, "isnan", 1, "vxm_alu", "float", "z = 1 if x is NaN else 0"),
    AluOp(7, "exp", 1, "vxm_special", "float", "z = e^x"),
    AluOp(8, "tanh", 1, "vxm_special", "float", "z = tanh(x)"),
    AluOp(9, "rsqrt", 1, "vxm_special", "float", "z = 1/sqrt(x)"),
    AluOp(10, "recip", 1, "vxm_special", "float", "z = 1/x"),
    AluOp(11, "sqrt", 1, "vxm_special", "float", "z = sqrt(x)"),
    AluOp(12, "log", 1, "vxm_special", "float", "z = ln(x)"),
    AluOp(13, "erf", 1, "vxm_special", "float", "z = erf(x)"),
    AluOp(14, "sigmoid", 1, "vxm_special", "float", "z = 1/(1+e^-x)"),
    AluOp(16, "add", 2, "vxm_alu", "any", "z = x + y"),
    AluOp(17, "sub", 2, "vxm_alu", "any", "z = x - y"),
    AluOp(18, "mul", 2, "vxm_alu", "any", "z = x * y"),
    AluOp(19, "div", 2, "vxm_special", "any", "z = x / y (integers: toward zero, /0 gives 0)"),
    AluOp(20, "max", 2, "vxm_alu", "any", "z = max(x, y) (NaN if either is NaN)"),
    AluOp(21, "min", 2, "vxm_alu", "any", "z = min(x, y) (NaN if either is NaN)"),
    AluOp(22, "pow", 2, "vxm_special", "float", "z = x ** y"),
    AluOp(23, "and", 2, "vxm_alu", "any", "z = x & y bitwise (floats: 1 if x and y nonzero)"),
    AluOp(24, "or", 2, "vxm_alu", "any", "z = x | y bitwise (floats: 1 if x or y nonzero)"),
    AluOp(25, "xor", 2, "vxm_alu", "any", "z = x ^ y bitwise (floats: 1 if exactly one nonzero)"),
    AluOp(26, "eq", 2, "vxm_alu", "any", "z = 1 if x == y else 0"),
    AluOp(27, "lt", 2, "vxm_alu", "any", "z = 1 if x < y else 0"),
    AluOp(28, "le", 2, "vxm_alu", "any", "z = 1 if x <= y else 0"),
    AluOp(29, "gt", 2, "vxm_alu", "any", "z = 1 if x > y else 0"),
    AluOp(30, "ge", 2, "vxm_alu", "any", "z = 1 if x >= y else 0"),
)
ALU_BY_NAME: dict[str, AluOp] = {a.name: a for a in ALU_OPS}
ALU_BY_CODE: dict[int, AluOp] = {a.code: a for a in ALU_OPS}
CHAIN_MAX = 4
CHAIN_OP_BITS = 6
# a link of a chain that is no ALU op: cvt.TYPE converts the running value to TYPE (the
# instruction's dtype2); links after it compute in TYPE
CHAIN_CVT = (1 << CHAIN_OP_BITS) - 1


@dataclass(frozen=True)
class Instr:
    """One row of the instruction table."""

    mnemonic: str
    unit: str
    opcode: int
    operands: tuple[Operand, ...]
    latency: str | None  # latency class (a key of the preset's [latency] table)
    reads: tuple[str, ...]  # stream operands read
    writes: tuple[str, ...]  # stream operands written
    semantics: str
    alu: AluOp | None = None

    @functools.cached_property
    def fields(self) -> tuple[str, ...]:
        out = ["opcode"]
        for op in self.operands:
            for f in op.fields:
                if f not in out:
                    out.append(f)
        return tuple(out)


def _s(name: str, doc: str) -> Operand:
    return Operand(name, "stream", None, doc)


def _i(name: str, doc: str, default: int | None = None) -> Operand:
    return Operand(name, "int", default, doc)


_COUNT = _i("count", "vectors to stream, one per cycle", 1)
_DT = Operand("dtype", "dtype", None, "element type")

_ROWS: list[Instr] = [
    # ICU: valid in every queue
    Instr("nop", "ICU", 0x01, (_i("imm", "cycles to idle (>= 1)", 1),), None, (), (),
          "the queue issues nothing for imm cycles"),
    Instr("repeat", "ICU", 0x02,
          (_i("imm", "repetitions (>= 1)"), _i("aux", "cycles between repetitions (>= 1)", 1)),
          None, (), (),
          "issue the previous instruction imm more times, aux cycles apart; addresses advance "
          "by count*stride (SRAM), count (accumulator) or the rows loaded (weights) each time"),
    Instr("sync", "ICU", 0x03, (), "icu_sync", (), (),
          "park the queue until a notify on this chip at or after this cycle"),
    Instr("notify", "ICU", 0x04, (), "icu_notify", (), (),
          "release every parked queue of this chip icu_notify cycles later"),
    # MEM: one read port and one write port per slice, on different banks in any cycle
    Instr("mem.read", "MEM", 0x10,
          (_s("dst", "stream to write (group width 1)"), _i("addr", "first address"), _COUNT,
           _i("stride", "address step per vector", 1)),
          "mem_read", (), ("dst",),
          "for i < count: dst <- SRAM[addr + i*stride] (one 320-byte vector per cycle)"),
    Instr("mem.write", "MEM", 0x11,
          (_s("src", "stream to read (group width 1)"), _i("addr", "first address"), _COUNT,
           _i("stride", "address step per vector", 1)),
          "mem_write", ("src",), (),
          "for i < count: SRAM[addr + i*stride] <- src"),
    Instr("mem.gather", "MEM", 0x12,
          (_s("dst", "stream to write (group width 1)"),
           _s("src", "address map (group width 2: a uint16 per lane; lane 16*k addresses tile k)"),
           _i("addr", "base address"), _COUNT),
          "mem_gather", ("src",), ("dst",),
          "for i < count, tile k: dst[k] <- SRAM[addr + map[16k]][k] (each tile reads its "
          "own word)"),
    Instr("mem.scatter", "MEM", 0x13,
          (_s("src", "data stream (group width 1)"),
           _s("src2", "address map (group width 2, as for gather)"),
           _i("addr", "base address"), _COUNT),
          "mem_scatter", ("src", "src2"), (),
          "for i < count, tile k: SRAM[addr + map[16k]][k] <- src[k]"),
    # MXM: the queue names the plane; weights are double-buffered (LW fills, IW installs)
    Instr("mxm.lw", "MXM", 0x20,
          (_DT, _s("src", "first stream (group width 1)"),
           _i("aux", "streams read per cycle (a multiple of the dtype width)"),
           _COUNT, _i("addr", "first weight-buffer row", 0)),
          "mxm_load", ("src",), (),
          "each cycle read aux streams from src on, giving aux/width rows of the weight buffer"),
    Instr("mxm.iw", "MXM", 0x21, (), "mxm_install", (), (),
          "install the loaded weight buffer into the array (double buffer swap)"),
    Instr("mxm.abc", "MXM", 0x22,
          (_DT, _s("src", "activation stream group (width = dtype width)"), _COUNT,
           _i("addr", "first accumulator", 0), _i("flag", "1: add to the accumulator", 0)),
          "mxm_activate", ("src",), (),
          "for i < count: acc[addr+i] (+)= x_i @ W (int8 -> int32 exact; floats: exact "
          "products summed in fp64 in order, rounded once to fp32); one vector per 1/rate cycles"),
    Instr("mxm.acc", "MXM", 0x23,
          (Operand("dtype", "dtype", None, "int32 or fp32"),
           _s("dst", "stream group (width 4)"), _COUNT, _i("addr", "first accumulator", 0)),
          "mxm_accumulate", (), ("dst",),
          "for i < count: dst <- acc[addr+i]"),
    # SXM
    Instr("sxm.shift", "SXM", 0x30,
          (_DT, _s("dst", "output group"), _s("src", "input group"), _COUNT,
           _i("shift", "lanes to shift, + north (up in lane index), - south", 0)),
          "sxm_shift", ("src",), ("dst",),
          "z[l] = x[l - shift] (zero where l - shift is outside 0..lanes-1)"),
    Instr("sxm.rotate", "SXM", 0x31,
          (_DT, _s("dst", "output group"), _s("src", "input group"), _COUNT,
           _i("shift", "lanes to rotate north (negative: south)", 0)),
          "sxm_rotate", ("src",), ("dst",), "z[l] = x[(l - shift) mod lanes]"),
    Instr("sxm.permute", "SXM", 0x32,
          (_DT, _s("dst", "output group"), _s("src", "input group"), _COUNT,
           _i("imm", "index of a permutation in the program's map table")),
          "sxm_permute", ("src",), ("dst",), "z[l] = x[map[l]] (map is a bijection)"),
    Instr("sxm.distribute", "SXM", 0x33,
          (_DT, _s("dst", "output group"), _s("src", "input group"), _COUNT,
           _i("imm", "index of a distribute map in the program's map table")),
          "sxm_distribute", ("src",), ("dst",),
          "z[l] = x[map[l]] or 0 where map[l] = -1; map[l] stays in l's superlane"),
    Instr("sxm.transpose", "SXM", 0x34,
          (_s("dst", "first output stream (group width 1)"),
           _s("src", "first input stream (group width 1)"), _COUNT,
           _i("aux", "stream step between the 16 streams (1 or 2)", 1)),
          "sxm_transpose", ("src",), ("dst",),
          "per superlane: out stream dst+j*aux, lane 16k+i <- in stream src+i*aux, lane 16k+j"),
    # C2C: the queue names the link
    Instr("c2c.send", "C2C", 0x40, (_s("src", "stream group to send"), _COUNT),
          "c2c_send", ("src",), (),
          "send count vectors over the link; vector i is read at issue + i*serialisation"),
    Instr("c2c.recv", "C2C", 0x41, (_s("dst", "stream group to write"), _COUNT),
          "c2c_recv", (), ("dst",),
          "write the next count vectors received on the link, one per cycle"),
    Instr("c2c.deskew", "C2C", 0x42, (), "c2c_deskew", (), (),
          "align this link's program to the peer's clock (occupies the link unit c2c_deskew)"),
    # VXM: the queue names the first ALU; a chain of k ops occupies ALUs q .. q+k-1
    Instr("vxm.cvt", "VXM", 0x7E,
          (_DT, Operand("dtype2", "dtype", None, "result type"), _s("dst", "result group"),
           _s("src", "input group"), _COUNT),
          "vxm_convert", ("src",), ("dst",),
          "z = convert(x): round to nearest even; float to int saturates (NaN gives 0)"),
    Instr("vxm.chain", "VXM", 0x7F,
          (_DT, _s("dst", "result group"), _s("src", "input group"),
           Operand("src2", "streamb", None, "B operand of binary ops: stream group or #imm"),
           _COUNT, Operand("ops", "chain", None, "ALU ops joined by ':'")),
          "vxm_alu", ("src", "src2"), ("dst",),
          "v = x; for op in ops: v = op(v) or op(v, B); z = v (latency: sum over the ops). "
          "One link may be cvt.TYPE: v = convert(v) to TYPE (as vxm.cvt; its latency "
          "vxm_convert); the links after it, and z, are of TYPE. B is of the type of the "
          "binary links, which all lie on one side of the cvt; an immediate B before it"),
]

for _a in ALU_OPS:
    _ops: tuple[Operand, ...] = (_DT, _s("dst", "result group"), _s("src", "x group"))
    _reads: tuple[str, ...] = ("src",)
    if _a.arity == 2:
        _ops += (Operand("src2", "streamb", None, "y: stream group or #imm"),)
        _reads = ("src", "src2")
    _ROWS.append(Instr(f"vxm.{_a.name}", "VXM", 0x80 + _a.code, _ops + (_COUNT,), _a.latency,
                       _reads, ("dst",), _a.semantics, alu=_a))

INSTRUCTIONS: tuple[Instr, ...] = tuple(_ROWS)
BY_MNEMONIC: dict[str, Instr] = {r.mnemonic: r for r in INSTRUCTIONS}
BY_OPCODE: dict[int, Instr] = {r.opcode: r for r in INSTRUCTIONS}


def validate_table() -> None:
    """Fail loudly if the table is inconsistent (runs at import)."""
    from lpusim.errors import IsaError

    seen_mn: set[str] = set()
    seen_op: set[int] = set()
    op_field = FIELDS["opcode"]
    for row in INSTRUCTIONS:
        if row.mnemonic in seen_mn:
            raise IsaError(f"duplicate mnemonic {row.mnemonic}")
        if row.opcode in seen_op:
            raise IsaError(f"{row.mnemonic}: opcode {row.opcode:#x} used twice")
        if not 0 < row.opcode <= op_field.max_value:
            raise IsaError(f"{row.mnemonic}: opcode {row.opcode:#x} does not fit the field")
        seen_mn.add(row.mnemonic)
        seen_op.add(row.opcode)
        if row.unit not in UNITS:
            raise IsaError(f"{row.mnemonic}: unknown unit {row.unit}")
        if row.latency is not None and row.latency not in LATENCY_CLASSES:
            raise IsaError(f"{row.mnemonic}: unknown latency class {row.latency}")
        used = 0
        for fname in row.fields:
            if fname not in FIELDS:
                raise IsaError(f"{row.mnemonic}: unknown field {fname}")
            f = FIELDS[fname]
            if f.hi > WORD_BITS:
                raise IsaError(f"field {fname} runs past bit {WORD_BITS}")
            if used & f.mask:
                raise IsaError(f"{row.mnemonic}: field {fname} overlaps another field")
            used |= f.mask
        names = {o.name for o in row.operands}
        for s in row.reads + row.writes:
            if s not in names:
                raise IsaError(f"{row.mnemonic}: stream operand {s} is not an operand")
    for a in ALU_OPS:
        if not 0 < a.code < (1 << CHAIN_OP_BITS) or a.code == CHAIN_CVT:
            raise IsaError(f"ALU op {a.name}: code does not fit a chain slot")
    if FIELDS["ops"].width != CHAIN_MAX * CHAIN_OP_BITS:
        raise IsaError("the ops field must hold CHAIN_MAX ALU op codes")


validate_table()
