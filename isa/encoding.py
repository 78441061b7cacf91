"""Binary encoder and decoder, derived from the table and the field map.

An instruction is a dict of field name -> int (signed fields hold negative values as such).
A word is a pair of uint64 (low half first); a program stream is a (n, 2) uint64 array.
"""

from __future__ import annotations

import numpy as np

from isa.fields import FIELDS
from isa.table import BY_MNEMONIC, BY_OPCODE, Instr
from lpusim.errors import IsaError


def _plan(row: Instr):
    """(opcode, allowed field names, per field (name, lo, bit mask, min, max)) of a row."""
    fields = tuple((name, FIELDS[name].lo, (1 << FIELDS[name].width) - 1,
                    FIELDS[name].min_value, FIELDS[name].max_value) for name in row.fields[1:])
    return row.opcode, frozenset(row.fields) - {"opcode"}, fields


_PLANS = {mnemonic: _plan(row) for mnemonic, row in BY_MNEMONIC.items()}


def encode(mnemonic: str, **values: int) -> int:
    """Encode one instruction as a 128-bit integer. Unset fields take the operand default or 0."""
    plan = _PLANS.get(mnemonic)
    if plan is None:
        raise IsaError(f"unknown mnemonic {mnemonic!r}")
    word, allowed, fields = plan
    if not allowed.issuperset(values):
        extra = set(values) - allowed
        raise IsaError(f"{mnemonic}: no field(s) {', '.join(sorted(extra))} "
                       f"(fields: {', '.join(sorted(allowed)) or 'none'})")
    get = values.get
    for name, lo, mask, vmin, vmax in fields:
        v = get(name, 0)
        if type(v) is not int:
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise IsaError(f"{mnemonic}: field {name} must be an integer, got {v!r}")
            v = int(v)
        if not vmin <= v <= vmax:
            raise IsaError(f"{mnemonic}: field {name}={v} does not fit [{vmin}, {vmax}]")
        word |= (v & mask) << lo
    return word


def decode(word: int) -> tuple[Instr, dict[str, int]]:
    """Decode a 128-bit integer into its table row and field values."""
    op = word & FIELDS["opcode"].max_value
    row = BY_OPCODE.get(op)
    if row is None:
        raise IsaError(f"invalid opcode {op:#04x} in word {word:#034x}")
    values: dict[str, int] = {}
    used = FIELDS["opcode"].mask
    for name in row.fields[1:]:
        f = FIELDS[name]
        used |= f.mask
        v = (word >> f.lo) & ((1 << f.width) - 1)
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        values[name] = v
    if word & ~used:
        raise IsaError(f"{row.mnemonic}: bits set outside its fields in word {word:#034x}")
    return row, values


def to_words(ints: list[int]) -> np.ndarray:
    """128-bit integers -> (n, 2) uint64 array (low half first)."""
    out = np.zeros((len(ints), 2), dtype=np.uint64)
    for i, w in enumerate(ints):
        out[i, 0] = w & 0xFFFF_FFFF_FFFF_FFFF
        out[i, 1] = w >> 64
    return out


def from_words(words: np.ndarray) -> list[int]:
    return [int(lo) | (int(hi) << 64) for lo, hi in np.asarray(words, dtype=np.uint64)]


def field_array(words: np.ndarray, name: str) -> np.ndarray:
    """Extract one field from every word of a (n, 2) uint64 array, as int64 (vectorised)."""
    f = FIELDS[name]
    words = np.asarray(words, dtype=np.uint64)
    lo, width = f.lo, f.width
    if lo >= 64:
        v = words[:, 1] >> np.uint64(lo - 64)
    elif lo + width <= 64:
        v = words[:, 0] >> np.uint64(lo)
    else:
        low_bits = 64 - lo
        v = (words[:, 0] >> np.uint64(lo)) | (words[:, 1] << np.uint64(low_bits))
    v = (v & np.uint64((1 << width) - 1)).astype(np.int64)
    if f.signed:
        v = np.where(v >= (1 << (width - 1)), v - (1 << width), v)
    return v


def encode_array(mnemonic: str, n: int, **values) -> np.ndarray:
    """Encode n instructions of one mnemonic at once: field values are scalars or length-n
    arrays. Returns an (n, 2) uint64 array. Ranges are checked as in `encode`."""
    row = BY_MNEMONIC.get(mnemonic)
    if row is None:
        raise IsaError(f"unknown mnemonic {mnemonic!r}")
    extra = set(values) - set(row.fields[1:])
    if extra:
        raise IsaError(f"{mnemonic}: no field(s) {', '.join(sorted(extra))}")
    lo = np.full(n, row.opcode, np.uint64)
    hi = np.zeros(n, np.uint64)
    for name in row.fields[1:]:
        f = FIELDS[name]
        v = np.broadcast_to(np.asarray(values.get(name, 0), dtype=np.int64), (n,))
        if n and ((v < f.min_value) | (v > f.max_value)).any():
            raise IsaError(f"{mnemonic}: a value of field {name} does not fit "
                           f"[{f.min_value}, {f.max_value}]")
        u = (v & ((1 << f.width) - 1)).astype(np.uint64)
        if f.lo >= 64:
            hi |= u << np.uint64(f.lo - 64)
        elif f.hi <= 64:
            lo |= u << np.uint64(f.lo)
        else:
            lo |= u << np.uint64(f.lo)
            hi |= u >> np.uint64(64 - f.lo)
    return np.stack([lo, hi], axis=1)
