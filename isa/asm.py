"""Text <-> one instruction, derived from the table (isa/table.py); nothing here names an opcode.

Syntax: `MNEMONIC op, op, ..., name=value` with operands in table order. Operands that have a
default may be left out at the end or given as `name=value` (after the positional ones).
Operand kinds:

  stream   `E4`, `W8/2`, `E0/4`: direction, first stream (< 32), group width 1, 2 or 4 (the
           first stream must be a multiple of the width; `/1` may be left out).
  streamb  a stream operand, or an immediate `#1.5`, `#-3`, `#nan`, `#inf`: the value's fp32
           bits for float dtypes, int32 two's complement bits for integer dtypes (the row's
           `dtype` operand decides); `#bits:0x7fc00001` gives the 32 bits directly. An
           immediate sets `flag`.
  dtype    an element type name (isa.dtypes).
  int      decimal or 0x hexadecimal; negative only for signed fields.
  chain    up to four ALU op names joined by ':' (`sub:exp`); op i fills bits 6i..6i+5 of `ops`
           and a 0 code ends the chain. One link may be `cvt.TYPE` (code 63, TYPE in dtype2).

Canonical text (what `disassemble_instruction` prints): operands positionally up to the first
one that has a default; from there on `name=value`, left out when it holds the default. Rows of
at most two operands print everything positionally (`nop 5`, `repeat 3, 2`, `c2c.send E0/4,
8`). A semantic check shared by both directions (group widths, dtype codes, chains, ALU op
types, immediate operands) keeps them inverse: every word the disassembler accepts assembles
back to itself.
"""

from __future__ import annotations

import difflib
import math
import re
import struct
from dataclasses import dataclass

from isa.dtypes import DTYPE_BY_CODE, DTYPE_BY_NAME
from isa.encoding import decode, encode
from isa.fields import FIELDS
from isa.table import (
    ALU_BY_CODE,
    ALU_BY_NAME,
    BY_MNEMONIC,
    CHAIN_CVT,
    CHAIN_MAX,
    CHAIN_OP_BITS,
    Instr,
)
from lpusim.errors import AsmError, IsaError

GROUP_WIDTHS = (1, 2, 4)
_STREAM_RE = re.compile(r"^([EWew])(\d+)(?:/(\d+))?$")
_INT_RE = re.compile(r"^-?(?:0[xX][0-9a-fA-F]+|\d+)$")
_NAMED_RE = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.*)$", re.S)
_CANONICAL_NAN = 0x7FC00000
_IMM_BITS = 32


@dataclass(frozen=True)
class _Token:
    text: str
    col: int  # 1-based column in the source line


class _Problem(Exception):
    """A semantic check failed; `operand` names the operand to blame."""

    def __init__(self, operand: str, message: str):
        super().__init__(message)
        self.operand = operand
        self.message = message


# ---------------------------------------------------------------- semantic check (both ways)


def _dtype_of(row: Instr, values: dict[str, int]):
    """The element type the row's immediates and ALU ops refer to (None if the row has none)."""
    if not any(o.name == "dtype" for o in row.operands):
        return None
    return DTYPE_BY_CODE.get(values.get("dtype", 0))


def _chain_codes(ops: int) -> list[int]:
    return [(ops >> (CHAIN_OP_BITS * i)) & ((1 << CHAIN_OP_BITS) - 1) for i in range(CHAIN_MAX)]


def _check(row: Instr, values: dict[str, int]) -> None:
    """Rules the table states in words, not bit widths. Raises _Problem."""
    for op in row.operands:
        if op.kind == "dtype" and values.get(op.name, 0) not in DTYPE_BY_CODE:
            raise _Problem(op.name, f"dtype code {values.get(op.name, 0)} is not a dtype")
    dt = _dtype_of(row, values)
    for op in row.operands:
        if op.kind == "streamb" and values.get("flag", 0):
            if any(values.get(f, 0) for f in op.fields[:3]):
                raise _Problem(op.name, "an immediate operand leaves the stream fields zero")
            continue
        if op.kind in ("stream", "streamb"):
            g = values.get(f"{op.name}_g", 0)
            if g >= len(GROUP_WIDTHS):
                raise _Problem(op.name, f"group width code {g} is not one of 1, 2, 4")
            width = GROUP_WIDTHS[g]
            if values.get(op.name, 0) % width:
                raise _Problem(
                    op.name,
                    f"first stream {values.get(op.name, 0)} is not a "
                    f"multiple of the group width {width}",
                )
            if op.kind == "streamb" and values.get("imm", 0):
                raise _Problem(op.name, "a stream operand leaves imm zero")
        if op.kind == "chain":
            codes = _chain_codes(values.get("ops", 0))
            n = codes.index(0) if 0 in codes else CHAIN_MAX
            if n == 0:
                raise _Problem(op.name, "the chain is empty")
            if any(codes[n:]):
                raise _Problem(op.name, "ALU op codes follow the 0 that ends the chain")
            cvt = [i for i in range(n) if codes[i] == CHAIN_CVT]
            if len(cvt) > 1:
                raise _Problem(op.name, "a chain converts once (one cvt link)")
            if not cvt and values.get("dtype2", 0):
                raise _Problem(op.name, "dtype2 is set only by a cvt link")
            dt2 = DTYPE_BY_CODE.get(values.get("dtype2", 0))
            if cvt and dt2 is None:
                raise _Problem(op.name, f"dtype code {values.get('dtype2')} is not a dtype")
            sides = set()
            for i, c in enumerate(codes[:n]):
                if c == CHAIN_CVT:
                    continue
                a = ALU_BY_CODE.get(c)
                if a is None:
                    raise _Problem(op.name, f"ALU op code {c} is not an ALU op")
                after = bool(cvt) and i > cvt[0]
                _check_alu_type(a, dt2 if after else dt, op.name)
                if a.arity == 2:
                    sides.add(after)
            if len(sides) > 1:
                raise _Problem(op.name, "the binary links lie on both sides of the cvt (B has "
                                        "one type)")
            if True in sides and values.get("flag", 0):
                raise _Problem(op.name, "an immediate B operand serves links before the cvt "
                                        "only")
    if row.alu is not None:
        _check_alu_type(row.alu, dt, "dtype")


def _check_alu_type(alu, dt, operand: str) -> None:
    if dt is None or alu.kind == "any":
        return
    if (alu.kind == "float") != dt.is_float:
        raise _Problem(operand, f"ALU op {alu.name} takes {alu.kind} types, not {dt.name}")


# ---------------------------------------------------------------- operand parsing


def _err(row: Instr | None, msg: str, tok: _Token, line: int, source: str) -> AsmError:
    prefix = f"{row.mnemonic}: " if row is not None else ""
    return AsmError(prefix + msg, line, tok.col, source)


def _parse_int(text: str) -> int | None:
    return int(text, 0) if _INT_RE.match(text) else None


def _parse_stream(text: str) -> tuple[int, int, int] | str:
    """-> (index, dir, g) or an error message."""
    m = _STREAM_RE.match(text)
    if not m:
        return "a stream like E4, W8/2 or E0/4"
    idx, width = int(m.group(2)), int(m.group(3) or 1)
    if width not in GROUP_WIDTHS:
        return f"a group width of 1, 2 or 4, not {width}"
    f = FIELDS["dst"]
    if idx > f.max_value:
        return f"a stream index below {f.max_value + 1}, not {idx}"
    if idx % width:
        return f"a first stream that is a multiple of the group width {width}, not {idx}"
    return idx, 0 if m.group(1) in "Ee" else 1, GROUP_WIDTHS.index(width)


def _imm_bits(text: str, is_float: bool) -> int | str:
    """`#...` body -> 32 immediate bits, or an error message."""
    if text.lower().startswith("bits:"):
        v = _parse_int(text[5:])
        if v is None or not 0 <= v < 1 << _IMM_BITS:
            return "bits:0x... with a 32-bit unsigned integer"
        return v
    if is_float:
        try:
            x = float(text)
        except ValueError:
            return "a number after '#'"
        if math.isnan(x):
            return _CANONICAL_NAN
        try:
            return struct.unpack("<I", struct.pack("<f", x))[0]
        except OverflowError:
            return f"a value that fits fp32, not {text}"
    v = _parse_int(text)
    if v is None:
        return "an integer after '#' (the dtype is an integer type)"
    if not -(1 << (_IMM_BITS - 1)) <= v < 1 << _IMM_BITS:
        return f"an integer that fits 32 bits, not {text}"
    return v & ((1 << _IMM_BITS) - 1)


def _split_operands(text: str, col0: int) -> tuple[_Token, list[_Token]]:
    """Mnemonic and comma-separated operand tokens, each with its 1-based column."""
    body = text.split(";", 1)[0].rstrip()
    stripped = body.lstrip()
    start = len(body) - len(stripped)
    m = re.match(r"\S+", stripped)
    mn = _Token(m.group(0) if m else "", col0 + start + 1)
    rest_at = start + (m.end() if m else 0)
    ops: list[_Token] = []
    if body[rest_at:].strip():
        pos = rest_at
        for part in body[rest_at:].split(","):
            lead = len(part) - len(part.lstrip())
            ops.append(_Token(part.strip(), col0 + pos + lead + 1))
            pos += len(part) + 1
    return mn, ops


def assemble_instruction(
    text: str, *, line: int = 1, col_offset: int = 0, source: str = "<asm>"
) -> int:
    """Assemble one instruction (text after any `@cycle`) into a 128-bit word.

    `col_offset` is the number of characters of the source line before `text`, so that error
    columns point into the original line. Raises AsmError.
    """
    mn, toks = _split_operands(text, col_offset)
    if not mn.text:
        raise AsmError("expected an instruction", line, mn.col, source)
    row = BY_MNEMONIC.get(mn.text)
    if row is None:
        close = difflib.get_close_matches(mn.text, list(BY_MNEMONIC), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AsmError(f"unknown mnemonic {mn.text!r}{hint}", line, mn.col, source)

    by_name = {o.name: o for o in row.operands}
    given: dict[str, _Token] = {}
    named_seen = False
    for i, tok in enumerate(toks):
        if not tok.text:
            raise _err(row, "empty operand", tok, line, source)
        m = _NAMED_RE.match(tok.text)
        if m:
            name, value = m.group(1), m.group(2)
            if name not in by_name:
                names = ", ".join(by_name) or "none"
                raise _err(row, f"no operand {name!r} (operands: {names})", tok, line, source)
            if name in given:
                raise _err(row, f"operand {name} given twice", tok, line, source)
            given[name] = _Token(value, tok.col + m.start(2))
            named_seen = True
            continue
        if named_seen:
            raise _err(
                row, "a positional operand cannot follow a name=value operand", tok, line, source
            )
        if i >= len(row.operands):
            raise _err(row, f"too many operands (syntax: {syntax(row)})", tok, line, source)
        given[row.operands[i].name] = tok

    end = _Token("", col_offset + len(text.split(";", 1)[0].rstrip()) + 1)
    values: dict[str, int] = {}
    for op in row.operands:
        if op.name not in given and op.default is None:
            raise _err(row, f"missing operand {op.name} ({_KIND_TEXT[op.kind]})", end, line, source)
    # dtypes first: they decide how a streamb immediate is read
    order = sorted(row.operands, key=lambda o: o.kind != "dtype")
    for op in order:
        tok = given.get(op.name)
        if tok is None:
            if isinstance(op.default, int):
                values[op.name] = op.default
            continue
        _parse_operand(row, op, tok, values, line, source)

    try:
        _check(row, values)
    except _Problem as p:
        tok = given.get(p.operand, mn)
        raise _err(row, p.message, tok, line, source) from None
    try:
        return encode(row.mnemonic, **values)
    except IsaError as exc:  # a value outside its field
        raise AsmError(str(exc), line, mn.col, source) from None


_KIND_TEXT = {
    "stream": "a stream like E4 or W8/2",
    "streamb": "a stream or an immediate like #1.5",
    "dtype": "a dtype",
    "int": "an integer",
    "chain": "ALU ops joined by ':'",
}


def _parse_operand(
    row: Instr, op, tok: _Token, values: dict[str, int], line: int, source: str
) -> None:
    text = tok.text

    def bad(expected: str) -> AsmError:
        return _err(row, f"operand {op.name} expects {expected}, got {text!r}", tok, line, source)

    if op.kind == "int":
        v = _parse_int(text)
        if v is None:
            raise bad("an integer")
        f = FIELDS[op.name]
        if not f.min_value <= v <= f.max_value:
            raise bad(f"an integer in [{f.min_value}, {f.max_value}]")
        values[op.name] = v
    elif op.kind == "dtype":
        d = DTYPE_BY_NAME.get(text)
        if d is None:
            raise bad(f"a dtype ({', '.join(DTYPE_BY_NAME)})")
        values[op.name] = d.code
    elif op.kind == "stream" or (op.kind == "streamb" and not text.startswith("#")):
        r = _parse_stream(text)
        if isinstance(r, str):
            raise bad(r if op.kind == "stream" else r + " or an immediate like #1.5")
        values[op.name], values[f"{op.name}_dir"], values[f"{op.name}_g"] = r
    elif op.kind == "streamb":
        dt = _dtype_of(row, values)
        r = _imm_bits(text[1:].strip(), bool(dt and dt.is_float))
        if isinstance(r, str):
            raise bad(r)
        values["imm"], values["flag"] = r, 1
    elif op.kind == "chain":
        names = [n.strip() for n in text.split(":")]
        if not 1 <= len(names) <= CHAIN_MAX:
            raise bad(f"1 to {CHAIN_MAX} ALU ops joined by ':'")
        ops = 0
        for i, n in enumerate(names):
            if n.startswith("cvt."):  # a conversion link: its type goes to dtype2
                d = DTYPE_BY_NAME.get(n[4:])
                if d is None:
                    raise bad(f"a conversion link cvt.TYPE with a dtype "
                              f"({', '.join(DTYPE_BY_NAME)})")
                ops |= CHAIN_CVT << (CHAIN_OP_BITS * i)
                values["dtype2"] = d.code
                continue
            a = ALU_BY_NAME.get(n)
            if a is None:
                close = difflib.get_close_matches(n, list(ALU_BY_NAME), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise _err(
                    row,
                    f"operand {op.name}: unknown ALU op {n!r}{hint} "
                    f"(ops: {', '.join(ALU_BY_NAME)})",
                    tok,
                    line,
                    source,
                )
            ops |= a.code << (CHAIN_OP_BITS * i)
        values["ops"] = ops
    else:  # pragma: no cover - validate_table admits only the kinds above
        raise bad(f"an operand of kind {op.kind}")


# ---------------------------------------------------------------- disassembly


def _fmt_stream(values: dict[str, int], name: str) -> str:
    width = GROUP_WIDTHS[values[f"{name}_g"]]
    text = f"{'EW'[values[f'{name}_dir']]}{values[name]}"
    return text if width == 1 else f"{text}/{width}"


def _fmt_float_bits(bits: int) -> str:
    x = struct.unpack("<f", struct.pack("<I", bits))[0]
    if math.isnan(x):
        return "nan" if bits == _CANONICAL_NAN else f"bits:{bits:#010x}"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    # shortest text that reads back to the same fp32 value; repr(x) is exact as a fallback
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        if struct.unpack("<I", struct.pack("<f", float(text)))[0] == bits:
            break
    else:  # pragma: no cover - 9 significant digits always identify an fp32
        text = repr(x)
    if not any(c in text for c in ".en"):
        text += ".0"
    return text


def _fmt_operand(row: Instr, op, values: dict[str, int]) -> str:
    if op.kind == "int":
        return str(values[op.name])
    if op.kind == "dtype":
        return DTYPE_BY_CODE[values[op.name]].name
    if op.kind == "stream" or (op.kind == "streamb" and not values.get("flag", 0)):
        return _fmt_stream(values, op.name)
    if op.kind == "streamb":
        dt = _dtype_of(row, values)
        bits = values["imm"]
        if dt is not None and dt.is_float:
            return "#" + _fmt_float_bits(bits)
        return f"#{bits - (1 << _IMM_BITS) if bits >> (_IMM_BITS - 1) else bits}"
    codes = _chain_codes(values["ops"])
    return ":".join(f"cvt.{DTYPE_BY_CODE[values.get('dtype2', 0)].name}" if c == CHAIN_CVT
                    else ALU_BY_CODE[c].name for c in codes if c)


def _is_default(op, values: dict[str, int]) -> bool:
    return op.default is not None and values.get(op.name) == op.default


def disassemble_instruction(word: int) -> str:
    """The canonical text of one 128-bit word. Raises IsaError for a word that is not valid."""
    row, values = decode(word)
    try:
        _check(row, values)
    except _Problem as p:
        raise IsaError(
            f"{row.mnemonic}: operand {p.operand}: {p.message} (word {word:#034x})"
        ) from None
    parts: list[str] = []
    short = len(row.operands) <= 2
    if short:
        keep = len(row.operands)
        while keep and _is_default(row.operands[keep - 1], values):
            keep -= 1
        parts = [_fmt_operand(row, op, values) for op in row.operands[:keep]]
    else:
        named = False  # from the first defaulted operand on, positions are no longer fixed
        for op in row.operands:
            named = named or op.default is not None
            if not named:
                parts.append(_fmt_operand(row, op, values))
            elif not _is_default(op, values):
                parts.append(f"{op.name}={_fmt_operand(row, op, values)}")
    return f"{row.mnemonic} {', '.join(parts)}" if parts else row.mnemonic


# ---------------------------------------------------------------- syntax text for docs


def _syntax_operands(row: Instr) -> str:
    out = []
    for op in row.operands:
        out.append(op.name if op.default is None else f"[{op.name}={op.default}]")
    return ", ".join(out)


def syntax(row: Instr) -> str:
    """One-line assembly syntax of a row, e.g. `mem.read dst, addr, [count=1], [stride=1]`."""
    return f"{row.mnemonic} {_syntax_operands(row)}" if row.operands else row.mnemonic
