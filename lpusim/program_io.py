"""Program files: a versioned, checksummed binary form of lpusim.program.Program (no pickle).

Byte layout (all integers little-endian):

    offset  size  field
    0       8     magic b"LPUPROG\\x00"
    8       2     u16 format version (FORMAT_VERSION)
    10      2     u16 reserved, 0
    12      8     u64 header length H
    20      H     header: canonical JSON (sort_keys, no spaces, ASCII only), see below
    20+H    ...   raw sections, in header order:
                    for each chip: for each queue (sorted by name): n x 2 u64 words,
                                   then the map table, m x lanes i16 (row-major)
                    for each tensor with data: its elements in the tensor's storage dtype
                    (isa.dtypes.numpy_dtype: bf16/fp8 via ml_dtypes), row-major
    end-32  32    SHA-256 of every byte before it

Header JSON:

    {"arch_config": {...}, "meta": {...}, "n_chips": C,
     "chips": [{"queues": [[name, n_words], ...sorted by name], "maps": [m, lanes]}, ...],
     "tensors": [{"name", "kind", "dtype", "shape", "chip", "slices", "addr", "stride",
                  "data": null | {"dtype": numpy name, "shape": [...], "nbytes": N}}, ...]}

Equal programs give byte-identical files (no timestamps; queues sorted; JSON canonical).
arch_config and meta go through JSON, so tuples come back as lists and keys must be strings.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

from isa import dtypes as isa_dtypes
from lpusim.errors import ProgramFormatError
from lpusim.fileio import write_atomic
from lpusim.program import TENSOR_KINDS, ChipProgram, Program, TensorSpec

MAGIC = b"LPUPROG\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHQ")  # magic, version, reserved, header length
_PREFIX_LEN = _PREFIX.size  # 20
_SUM_LEN = 32
_WORD_BYTES = 16  # one instruction = 2 x u64
_MAP_ITEM = 2  # int16

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "load_program",
    "program_from_bytes",
    "program_to_bytes",
    "save_program",
    "validate_program",
]


# ----------------------------------------------------------------------------------------------
# writing


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _le_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.itemsize > 1 and sys.byteorder == "big":
        arr = arr.byteswap()
    return arr.tobytes()


def _save_error(what: str) -> ProgramFormatError:
    return ProgramFormatError(f"cannot save program: {what}")


def _int_array(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub" and arr.size:
        raise _save_error(f"{what} has dtype {arr.dtype}, expected integers")
    return arr


def program_to_bytes(program: Program) -> bytes:
    """Serialize `program`; raises ProgramFormatError if it cannot be represented."""
    sections: list[bytes] = []
    chips_h = []
    for ci, chip in enumerate(program.chips):
        queues_h = []
        for name in sorted(chip.queues):
            if not isinstance(name, str):
                raise _save_error(f"chip {ci}: queue name {name!r} is not a string")
            words = _int_array(chip.queues[name], f"chip {ci} queue {name!r}")
            if words.ndim != 2 or words.shape[1] != 2:
                raise _save_error(f"chip {ci} queue {name!r} has shape {words.shape}, "
                                  f"expected (n, 2)")
            if words.dtype.kind == "i" and words.size and int(words.min()) < 0:
                raise _save_error(f"chip {ci} queue {name!r} holds negative words")
            queues_h.append([name, int(words.shape[0])])
            sections.append(_le_bytes(words.astype(np.uint64)))
        maps = _int_array(chip.maps, f"chip {ci} maps")
        if maps.ndim != 2:
            raise _save_error(f"chip {ci} maps has shape {maps.shape}, expected (m, lanes)")
        if maps.size and (int(maps.min()) < -32768 or int(maps.max()) > 32767):
            raise _save_error(f"chip {ci} maps holds values outside int16")
        sections.append(_le_bytes(maps.astype(np.int16)))
        chips_h.append({"queues": queues_h, "maps": [int(maps.shape[0]), int(maps.shape[1])]})

    tensors_h = []
    for t in program.tensors:
        where = f"tensor {t.name!r}"
        if t.kind not in TENSOR_KINDS:
            raise _save_error(f"{where}: unknown kind {t.kind!r}")
        if t.dtype not in isa_dtypes.DTYPE_BY_NAME:
            raise _save_error(f"{where}: unknown dtype {t.dtype!r}")
        try:
            th = {
                "name": str(t.name),
                "kind": t.kind,
                "dtype": t.dtype,
                "shape": [_plain_int(x, min_value=0) for x in t.shape],
                "chip": _plain_int(t.chip),
                "slices": [_plain_int(x) for x in t.slices],
                "addr": _plain_int(t.addr),
                "stride": _plain_int(t.stride),
                "data": None,
            }
        except (TypeError, ValueError) as e:
            raise _save_error(f"{where}: {e}") from None
        if t.data is not None:
            storage = isa_dtypes.numpy_dtype(t.dtype)
            try:
                data = np.asarray(t.data).astype(storage)
            except (TypeError, ValueError) as e:
                raise _save_error(f"{where}: data cannot be stored as {t.dtype}: {e}") from None
            raw = _le_bytes(data)
            th["data"] = {"dtype": storage.name, "shape": [int(x) for x in data.shape],
                          "nbytes": len(raw)}
            sections.append(raw)
        tensors_h.append(th)

    header = {
        "arch_config": program.arch_config,
        "meta": program.meta,
        "n_chips": len(program.chips),
        "chips": chips_h,
        "tensors": tensors_h,
    }
    try:
        hbytes = _canonical_json(header)
    except (TypeError, ValueError, RecursionError) as e:
        raise _save_error(f"arch_config/meta are not plain JSON ({e})") from None

    body = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes)), hbytes, *sections])
    return body + hashlib.sha256(body).digest()


def _plain_int(x, min_value: int | None = None) -> int:
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
        raise TypeError(f"{x!r} is not an integer")
    v = int(x)
    if min_value is not None and v < min_value:
        raise ValueError(f"{v} is below {min_value}")
    return v


def save_program(program: Program, path) -> None:
    """Write `program` to `path` atomically: either the whole new file or the old one stays."""
    data = program_to_bytes(program)  # before touching the disk: errors leave nothing behind
    write_atomic(path, data)


# ----------------------------------------------------------------------------------------------
# reading


class _Bad(Exception):
    """Internal: a reason; program_from_bytes turns it into ProgramFormatError with the source."""


def _want_int(obj, what: str, min_value: int | None = None) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise _Bad(f"inconsistent header: {what} is {_short(obj)}, expected an integer")
    if min_value is not None and obj < min_value:
        raise _Bad(f"inconsistent header: {what} is {obj}, must be >= {min_value}")
    return obj


def _want(obj, typ, what: str):
    if not isinstance(obj, typ):
        kind = {dict: "an object", list: "a list", str: "a string"}.get(typ, str(typ))
        raise _Bad(f"inconsistent header: {what} is {_short(obj)}, expected {kind}")
    return obj


def _short(obj) -> str:
    s = json.dumps(obj) if not isinstance(obj, str) else repr(obj)
    return s if len(s) <= 40 else s[:37] + "..."


_MAX_DIMS = 32  # numpy's smallest ndim limit
_MAX_DIM = 1 << 40  # no real dimension comes near; keeps numpy's size arithmetic in range


def _want_count(obj, what: str) -> int:
    n = _want_int(obj, what, 0)
    if n > _MAX_DIM:
        raise _Bad(f"inconsistent header: {what} is {n}, implausibly large")
    return n


def _shape(obj, what: str) -> tuple[int, ...]:
    _want(obj, list, what)
    if len(obj) > _MAX_DIMS:
        raise _Bad(f"inconsistent header: {what} has {len(obj)} dimensions, at most "
                   f"{_MAX_DIMS} allowed")
    dims = tuple(_want_count(x, f"{what}[{i}]") for i, x in enumerate(obj))
    if math.prod(d for d in dims if d) > _MAX_DIM:
        raise _Bad(f"inconsistent header: {what} {_short(list(dims))} is implausibly large")
    return dims


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_header(hbytes: bytes) -> dict:
    try:
        header = json.loads(hbytes.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _Bad(f"malformed header JSON ({msg})") from None
    if not isinstance(header, dict):
        raise _Bad("malformed header JSON (not an object)")
    return header


def _plan(header: dict) -> tuple[list, list, int]:
    """Check the header's structure; return (chip plans, tensor plans, section byte total)."""
    for key in ("arch_config", "meta", "n_chips", "chips", "tensors"):
        if key not in header:
            raise _Bad(f"inconsistent header: missing key {key!r}")
    _want(header["arch_config"], dict, "arch_config")
    _want(header["meta"], dict, "meta")
    n_chips = _want_int(header["n_chips"], "n_chips", 0)
    chips = _want(header["chips"], list, "chips")
    if len(chips) != n_chips:
        raise _Bad(f"inconsistent header: n_chips is {n_chips} but {len(chips)} chips listed")
    total = 0
    chip_plans = []
    for ci, ch in enumerate(chips):
        _want(ch, dict, f"chips[{ci}]")
        queues = _want(ch.get("queues"), list, f"chips[{ci}].queues")
        qplan = []
        seen = set()
        for qi, q in enumerate(queues):
            what = f"chips[{ci}].queues[{qi}]"
            if not (isinstance(q, list) and len(q) == 2):
                raise _Bad(f"inconsistent header: {what} is {_short(q)}, expected [name, count]")
            name = _want(q[0], str, f"{what} name")
            n = _want_count(q[1], f"{what} word count")
            if name in seen:
                raise _Bad(f"inconsistent header: chip {ci} lists queue {name!r} twice")
            seen.add(name)
            qplan.append((name, n))
            total += n * _WORD_BYTES
        mshape = _shape(ch.get("maps"), f"chips[{ci}].maps")
        if len(mshape) != 2:
            raise _Bad(f"inconsistent header: chips[{ci}].maps has {len(mshape)} dimensions, "
                       f"expected 2")
        total += mshape[0] * mshape[1] * _MAP_ITEM
        chip_plans.append((qplan, mshape))

    tensors = _want(header["tensors"], list, "tensors")
    tensor_plans = []
    for ti, th in enumerate(tensors):
        what = f"tensors[{ti}]"
        _want(th, dict, what)
        for key in ("name", "kind", "dtype", "shape", "chip", "slices", "addr", "stride",
                    "data"):
            if key not in th:
                raise _Bad(f"inconsistent header: {what} lacks {key!r}")
        name = _want(th["name"], str, f"{what}.name")
        what = f"tensor {name!r}"
        kind = _want(th["kind"], str, f"{what} kind")
        if kind not in TENSOR_KINDS:
            raise _Bad(f"inconsistent header: {what} has unknown kind {kind!r} "
                       f"(known: {', '.join(TENSOR_KINDS)})")
        dt = _want(th["dtype"], str, f"{what} dtype")
        if dt not in isa_dtypes.DTYPE_BY_NAME:
            raise _Bad(f"inconsistent header: {what} has unknown dtype {dt!r}")
        spec = TensorSpec(
            name=name,
            kind=kind,
            dtype=dt,
            shape=_shape(th["shape"], f"{what} shape"),
            chip=_want_int(th["chip"], f"{what} chip", 0),
            slices=_shape(th["slices"], f"{what} slices"),
            addr=_want_int(th["addr"], f"{what} addr"),
            stride=_want_int(th["stride"], f"{what} stride"),
        )
        dplan = None
        if th["data"] is not None:
            dh = _want(th["data"], dict, f"{what} data")
            storage = isa_dtypes.numpy_dtype(dt)
            if dh.get("dtype") != storage.name:
                raise _Bad(f"inconsistent header: {what} data dtype is {_short(dh.get('dtype'))}"
                           f", expected {storage.name!r} for {dt}")
            dshape = _shape(dh.get("shape"), f"{what} data shape")
            nbytes = _want_count(dh.get("nbytes"), f"{what} data nbytes")
            need = math.prod(dshape) * storage.itemsize
            if nbytes != need:
                raise _Bad(f"inconsistent header: {what} data is {nbytes} bytes, but shape "
                           f"{_short(list(dshape))} of {dt} needs {need}")
            dplan = (storage, dshape, nbytes)
            total += nbytes
        tensor_plans.append((spec, dplan))
    return chip_plans, tensor_plans, total


def program_from_bytes(data: bytes, source: str = "<bytes>") -> Program:
    """Parse a Program file's bytes; any defect raises ProgramFormatError naming `source`."""
    try:
        return _from_bytes(bytes(data))
    except _Bad as e:
        raise ProgramFormatError(f"{source}: {e}") from None
    except (ValueError, TypeError, OverflowError, struct.error) as e:
        # Safety net: the checks above should leave nothing for numpy/struct to reject.
        raise ProgramFormatError(f"{source}: inconsistent header ({e})") from None


def _from_bytes(data: bytes) -> Program:
    size = len(data)
    if data[: len(MAGIC)] != MAGIC[:size]:
        raise _Bad("not an lpusim program file (bad magic)")
    if size < _PREFIX_LEN:
        raise _Bad(f"truncated: expected at least {_PREFIX_LEN + _SUM_LEN} bytes, found {size}")
    _, version, reserved, hlen = _PREFIX.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise _Bad(f"written by format version {version}, this lpusim reads version "
                   f"{FORMAT_VERSION}")
    min_size = _PREFIX_LEN + hlen + _SUM_LEN
    intact = size >= _PREFIX_LEN + _SUM_LEN and (
        hashlib.sha256(data[:-_SUM_LEN]).digest() == data[-_SUM_LEN:])

    if not intact:
        # Tell a short file from a damaged one: a readable header says how long it should be.
        if size < min_size:
            raise _Bad(f"truncated: expected at least {min_size} bytes, found {size}")
        try:
            _, _, total = _plan(_parse_header(data[_PREFIX_LEN:_PREFIX_LEN + hlen]))
        except _Bad:
            total = None
        if total is not None and size < min_size + total:
            raise _Bad(f"truncated: expected {min_size + total} bytes, found {size}")
        raise _Bad("corrupt: checksum mismatch")

    if reserved != 0:
        raise _Bad(f"inconsistent header: reserved field is {reserved}, expected 0")
    if size < min_size:
        raise _Bad(f"inconsistent header: header length {hlen} exceeds the file ({size} bytes)")
    header = _parse_header(data[_PREFIX_LEN:_PREFIX_LEN + hlen])
    chip_plans, tensor_plans, total = _plan(header)
    if min_size + total != size:
        raise _Bad(f"inconsistent header: sections need {total} bytes but the file holds "
                   f"{size - min_size}")

    pos = _PREFIX_LEN + hlen

    def take(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    chips = []
    for qplan, (m, lanes) in chip_plans:
        queues = {}
        for name, n in qplan:
            queues[name] = np.frombuffer(take(n * _WORD_BYTES), dtype="<u8").reshape(n, 2) \
                .astype(np.uint64)
        maps = np.frombuffer(take(m * lanes * _MAP_ITEM), dtype="<i2").reshape(m, lanes) \
            .astype(np.int16)
        chips.append(ChipProgram(queues=queues, maps=maps))

    tensors = []
    for spec, dplan in tensor_plans:
        if dplan is not None:
            storage, dshape, nbytes = dplan
            arr = np.frombuffer(take(nbytes), dtype=np.uint8).view(storage).copy()
            if storage.itemsize > 1 and sys.byteorder == "big":
                arr = arr.byteswap()
            spec.data = arr.reshape(dshape)
        tensors.append(spec)

    return Program(arch_config=header["arch_config"], chips=chips, tensors=tensors,
                   meta=header["meta"])


def load_program(path) -> Program:
    """Read a Program file; unreadable or malformed files raise ProgramFormatError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProgramFormatError(f"{path}: cannot read program file: "
                                 f"{e.strerror or e}") from None
    return program_from_bytes(data, source=str(path))


# ----------------------------------------------------------------------------------------------
# validation against an architecture


def validate_program(program: Program, arch) -> None:
    """Check `program` fits `arch` (queues, map width, tensor placement); raise the first problem.

    `arch` needs: queues (objects with .name), lanes, mem_slices, mem_words_per_slice.
    Instructions are not decoded.
    """
    known_queues = {q.name for q in arch.queues}
    lanes = int(arch.lanes)
    n_slices = int(arch.mem_slices)
    depth = int(arch.mem_words_per_slice)

    def bad(msg: str):
        raise ProgramFormatError(f"program does not fit {_arch_name(program, arch)}: {msg}")

    for ci, chip in enumerate(program.chips):
        for name, words in chip.queues.items():
            if name not in known_queues:
                bad(f"chip {ci}: unknown queue {name!r}")
            if not isinstance(words, np.ndarray) or words.dtype != np.uint64 \
                    or words.ndim != 2 or words.shape[1] != 2:
                bad(f"chip {ci} queue {name!r}: instruction words must be an (n, 2) uint64 "
                    f"array, got {_describe(words)}")
        maps = chip.maps
        if not isinstance(maps, np.ndarray) or maps.dtype != np.int16 or maps.ndim != 2 \
                or (maps.shape[0] and maps.shape[1] != lanes):
            bad(f"chip {ci}: map table must be an (m, {lanes}) int16 array, got "
                f"{_describe(maps)}")

    seen: set[str] = set()
    for t in program.tensors:
        where = f"tensor {t.name!r}"
        if t.name in seen:
            bad(f"{where} is defined twice")
        seen.add(t.name)
        if t.kind not in TENSOR_KINDS:
            bad(f"{where}: unknown kind {t.kind!r} (known: {', '.join(TENSOR_KINDS)})")
        if t.dtype not in isa_dtypes.DTYPE_BY_NAME:
            bad(f"{where}: unknown dtype {t.dtype!r}")
        if not 0 <= t.chip < len(program.chips):
            bad(f"{where}: chip {t.chip} out of range (program has {len(program.chips)} chips)")
        width = isa_dtypes.dtype(t.dtype).nbytes
        if len(t.slices) != width:
            bad(f"{where}: {len(t.slices)} slices given, {t.dtype} needs {width} "
                f"(one per byte)")
        for s in t.slices:
            if not 0 <= s < n_slices:
                bad(f"{where}: slice {s} out of range 0..{n_slices - 1}")
        if len(set(t.slices)) != len(t.slices):
            bad(f"{where}: slices {list(t.slices)} repeat a slice")
        if any(d < 0 for d in t.shape):
            bad(f"{where}: negative dimension in shape {tuple(t.shape)}")
        n_vec = t.vectors(lanes)
        if n_vec:
            first = t.addr
            last = t.addr + (n_vec - 1) * t.stride
            lo, hi = min(first, last), max(first, last)
            if lo < 0:
                bad(f"{where}: {n_vec} vectors from address {t.addr} (stride {t.stride}) reach "
                    f"address {lo}, {-lo} words below address 0")
            if hi > depth - 1:
                bad(f"{where}: {n_vec} vectors from address {t.addr} (stride {t.stride}) reach "
                    f"address {hi}, {hi - (depth - 1)} words past the last address {depth - 1}")
        if t.data is not None:
            shape = tuple(np.shape(t.data))
            if shape != tuple(t.shape):
                bad(f"{where}: data has shape {shape}, tensor shape is {tuple(t.shape)}")


def _arch_name(program: Program, arch) -> str:
    name = getattr(arch, "name", None) or (program.arch_config or {}).get("name")
    return f"architecture {name!r}" if name else "the architecture"


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__
