"""Program files: round trip, determinism, every load error, fuzzing, atomic save, validation."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest

from lpusim import fileio
from lpusim.errors import ProgramFormatError
from lpusim.program import ChipProgram, Program, TensorSpec
from lpusim.program_io import (
    FORMAT_VERSION,
    MAGIC,
    load_program,
    program_from_bytes,
    program_to_bytes,
    save_program,
    validate_program,
)

LANES = 16


def make_program() -> Program:
    rng = np.random.default_rng(1)
    chip0 = ChipProgram(
        queues={
            "MEM_W0": rng.integers(0, 2**63, size=(5, 2), dtype=np.uint64) | np.uint64(1 << 63),
            "VXM0": np.array([[1, 2], [3, 4]], dtype=np.uint64),
            "ICU": np.zeros((0, 2), dtype=np.uint64),
        },
        maps=rng.integers(-100, 100, size=(3, LANES)).astype(np.int16),
    )
    chip1 = ChipProgram(queues={"VXM0": np.array([[7, 8]], dtype=np.uint64)})
    tensors = [
        TensorSpec("x", "input", "int8", (2, 20), 0, (0,), 0, 1,
                   rng.integers(-128, 127, size=(2, 20)).astype(np.int8)),
        TensorSpec("h", "const", "fp16", (3,), 0, (1, 2), 10, 2,
                   np.array([1.5, -0.0, np.inf], dtype=np.float16)),
        TensorSpec("w", "weight", "bf16", (4, 4), 1, (3, 4), 0, 1,
                   rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16)),
        TensorSpec("f", "weight", "fp32", (), 0, (5, 6, 7, 8), 100, 1,
                   np.array(3.25, dtype=np.float32)),
        TensorSpec("q", "const", "fp8_e4m3", (2, 3), 1, (9,), 50, 3,
                   np.array([[0.5, -2, 448], [0, 1, -1]], dtype=ml_dtypes.float8_e4m3fn)),
        TensorSpec("y", "output", "int32", (1, 16), 1, (10, 11, 12, 13), 200, 1, None),
    ]
    return Program(
        arch_config={"name": "tiny", "chip": {"lanes": LANES, "mem_words_per_slice": 256},
                     "clock_ghz": 0.9, "list": [1, 2, "x"], "flag": True},
        chips=[chip0, chip1],
        tensors=tensors,
        meta={"source": "test", "unicode": "µs ✓", "n": None},
    )


def assert_programs_equal(a: Program, b: Program) -> None:
    assert a.arch_config == b.arch_config
    assert a.meta == b.meta
    assert len(a.chips) == len(b.chips)
    for ca, cb in zip(a.chips, b.chips, strict=True):
        assert set(ca.queues) == set(cb.queues)
        for name in ca.queues:
            assert cb.queues[name].dtype == np.uint64
            assert cb.queues[name].shape == ca.queues[name].shape
            assert np.array_equal(ca.queues[name], cb.queues[name])
        assert cb.maps.dtype == np.int16
        assert cb.maps.shape == ca.maps.shape
        assert np.array_equal(ca.maps, cb.maps)
    assert len(a.tensors) == len(b.tensors)
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        for f in ("name", "kind", "dtype", "chip", "addr", "stride"):
            assert getattr(ta, f) == getattr(tb, f)
        assert tuple(ta.shape) == tb.shape and tuple(ta.slices) == tb.slices
        if ta.data is None:
            assert tb.data is None
        else:
            assert tb.data.dtype == ta.data.dtype
            assert tb.data.shape == ta.data.shape
            assert ta.data.tobytes() == tb.data.tobytes()


def reseal(body: bytes) -> bytes:
    """Give `body` (a file without its checksum) a valid checksum."""
    return body + hashlib.sha256(body).digest()


def build(header, sections: bytes = b"", version=FORMAT_VERSION, reserved=0) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return reseal(struct.pack("<8sHHQ", MAGIC, version, reserved, len(h)) + h + sections)


def split(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack_from("<Q", data, 12)
    return json.loads(data[20:20 + hlen]), data[20 + hlen:-32]


# ---------------------------------------------------------------------------------------------
# round trip and determinism


def test_round_trip_bytes():
    p = make_program()
    q = program_from_bytes(program_to_bytes(p))
    assert_programs_equal(p, q)
    assert q.tensor("w").data.dtype == ml_dtypes.bfloat16
    assert q.tensor("q").data.dtype == ml_dtypes.float8_e4m3fn
    assert q.tensors[3].data.shape == ()
    assert list(q.chips[0].queues) == sorted(p.chips[0].queues)
    q.tensor("x").data[0, 0] = 5  # loaded arrays are writable copies
    q.chips[0].queues["VXM0"][0, 0] = 9


def test_round_trip_file(tmp_path):
    p = make_program()
    path = tmp_path / "prog.lpu"
    save_program(p, path)
    assert_programs_equal(p, load_program(path))
    assert not [f for f in os.listdir(tmp_path) if f != "prog.lpu"]


def test_empty_program():
    p = Program(arch_config={}, chips=[])
    q = program_from_bytes(program_to_bytes(p))
    assert q.chips == [] and q.tensors == [] and q.meta == {}


def test_data_is_stored_in_tensor_dtype():
    p = Program({}, [ChipProgram()], [TensorSpec("w", "weight", "bf16", (3,), 0, (0, 1), 0, 1,
                                                  np.array([1.0, 2.5, 3.0], np.float32))])
    q = program_from_bytes(program_to_bytes(p))
    assert q.tensors[0].data.dtype == ml_dtypes.bfloat16
    assert q.tensors[0].data.astype(np.float32).tolist() == [1.0, 2.5, 3.0]


def test_byte_identical(tmp_path):
    a, b = tmp_path / "a.lpu", tmp_path / "b.lpu"
    save_program(make_program(), a)
    save_program(make_program(), b)
    assert a.read_bytes() == b.read_bytes()
    # same content, other dict insertion orders -> same bytes
    p = make_program()
    p.chips[0].queues = dict(reversed(list(p.chips[0].queues.items())))
    p.arch_config = dict(reversed(list(p.arch_config.items())))
    assert program_to_bytes(p) == a.read_bytes()


def test_layout():
    data = program_to_bytes(make_program())
    assert data[:8] == MAGIC
    assert struct.unpack_from("<HH", data, 8) == (FORMAT_VERSION, 0)
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    header, sections = split(data)
    assert header["n_chips"] == 2
    assert header["chips"][0]["queues"] == [["ICU", 0], ["MEM_W0", 5], ["VXM0", 2]]
    assert header["chips"][0]["maps"] == [3, LANES]
    assert header["tensors"][2]["data"] == {"dtype": "bfloat16", "shape": [4, 4], "nbytes": 32}
    # first section: chip 0's ICU (empty) then MEM_W0 words, little-endian
    p = make_program()
    assert sections[:80] == p.chips[0].queues["MEM_W0"].astype("<u8").tobytes()


def test_unsaveable_programs_raise():
    p = make_program()
    p.meta = {"bad": object()}
    with pytest.raises(ProgramFormatError, match="cannot save"):
        program_to_bytes(p)
    p = make_program()
    p.tensors[0].kind = "scratch"
    with pytest.raises(ProgramFormatError, match="unknown kind"):
        program_to_bytes(p)
    p = make_program()
    p.chips[0].queues["VXM0"] = np.zeros((3,), np.uint64)
    with pytest.raises(ProgramFormatError, match=r"expected \(n, 2\)"):
        program_to_bytes(p)


# ---------------------------------------------------------------------------------------------
# load errors


def load_error(data: bytes, tmp_path=None) -> str:
    with pytest.raises(ProgramFormatError) as ei:
        program_from_bytes(data, source="prog.lpu")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("prog.lpu: ")
    return msg


def test_not_a_program_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is text\n" * 10)
    with pytest.raises(ProgramFormatError, match="not an lpusim program file") as ei:
        load_program(path)
    assert str(path) in str(ei.value)
    assert "not an lpusim program" in load_error(b"LPUPROX\x00" + bytes(100))


def test_missing_file(tmp_path):
    with pytest.raises(ProgramFormatError, match="cannot read"):
        load_program(tmp_path / "nope.lpu")


def test_unsupported_version():
    data = bytearray(program_to_bytes(make_program()))
    struct.pack_into("<H", data, 8, 7)
    msg = load_error(bytes(data))
    assert "written by format version 7, this lpusim reads version 1" in msg


def test_truncated():
    data = program_to_bytes(make_program())
    for n in (0, 3, 8, 15, 19, 25, len(data) // 2, len(data) - 40, len(data) - 1):
        msg = load_error(data[:n])
        assert "truncated: expected" in msg and f"found {n}" in msg, (n, msg)
    assert f"truncated: expected {len(data)} bytes, found {len(data) - 40}" in \
        load_error(data[:-40])


def test_checksum_mismatch():
    data = bytearray(program_to_bytes(make_program()))
    data[-50] ^= 0x40  # in a section
    assert "corrupt: checksum mismatch" in load_error(bytes(data))
    data = bytearray(program_to_bytes(make_program()))
    data[-1] ^= 1  # in the checksum itself
    assert "corrupt: checksum mismatch" in load_error(bytes(data))
    data = program_to_bytes(make_program()) + b"\x00"  # trailing garbage
    assert "corrupt: checksum mismatch" in load_error(data)


def test_malformed_header_json():
    assert "malformed header JSON" in load_error(build(b"{not json"))
    assert "malformed header JSON" in load_error(build(b"[1, 2]"))
    assert "malformed header JSON" in load_error(build(b"\xff\xfe"))
    assert "malformed header JSON" in load_error(build(b'{"a": NaN}'))
    assert "malformed header JSON" in load_error(build(b"[" * 100000))


def test_inconsistent_header():
    data = program_to_bytes(make_program())
    header, sections = split(data)

    def variant(mutate, secs=sections):
        h = json.loads(json.dumps(header))
        mutate(h)
        return load_error(build(h, secs))

    assert "missing key 'tensors'" in variant(lambda h: h.pop("tensors"))
    assert "must be >= 0" in variant(lambda h: h["chips"][0]["queues"][1].__setitem__(1, -5))
    assert "must be >= 0" in variant(lambda h: h["chips"][0]["maps"].__setitem__(0, -1))
    assert "unknown kind 'scratch'" in variant(
        lambda h: h["tensors"][0].__setitem__("kind", "scratch"))
    assert "unknown dtype 'int4'" in variant(
        lambda h: h["tensors"][0].__setitem__("dtype", "int4"))
    assert "expected an integer" in variant(lambda h: h["tensors"][0].__setitem__("addr", "0"))
    assert "expected an integer" in variant(lambda h: h["tensors"][0].__setitem__("chip", True))
    assert "n_chips is 3" in variant(lambda h: h.__setitem__("n_chips", 3))
    assert "listed" in variant(lambda h: h.__setitem__("n_chips", 3))
    assert "queue 'VXM0' twice" in variant(
        lambda h: h["chips"][0]["queues"].__setitem__(1, ["VXM0", 2]))
    assert "data is 32 bytes, but shape [4, 5]" in variant(
        lambda h: h["tensors"][2]["data"].__setitem__("shape", [4, 5]))
    assert "data dtype is" in variant(
        lambda h: h["tensors"][2]["data"].__setitem__("dtype", "float32"))
    # section lengths that do not match the shapes
    msg = variant(lambda h: h["chips"][0]["queues"][1].__setitem__(1, 6))
    assert "sections need" in msg
    assert "sections need" in load_error(build(header, sections + b"\x00" * 16))
    assert "sections need" in load_error(build(header, sections[:-16]))
    assert "reserved field" in load_error(build(header, sections, reserved=3))
    # sizes numpy could not allocate or shape must be refused before numpy sees them
    assert "implausibly large" in variant(lambda h: h["chips"][1].__setitem__("maps", [0, 2**70]))
    assert "implausibly large" in variant(
        lambda h: h["tensors"][4]["data"].update(shape=[0] + [2**40] * 3, nbytes=0),
        sections[:-6])
    assert "at most 32 allowed" in variant(
        lambda h: h["tensors"][4]["data"].update(shape=[2, 3] + [1] * 40))


def test_header_length_beyond_file():
    # a sealed file whose header length points past the end
    body = struct.pack("<8sHHQ", MAGIC, 1, 0, 10**6) + b"{}"
    msg = load_error(reseal(body))
    assert "header length" in msg or "truncated" in msg


# ---------------------------------------------------------------------------------------------
# fuzzing: every mutation raises ProgramFormatError or loads; nothing else escapes


def _must_fail_cleanly(data: bytes, allow_success: bool = False) -> None:
    try:
        program_from_bytes(data, source="fuzz")
    except ProgramFormatError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz: ")
    else:
        assert allow_success, "mutated file loaded"


def test_fuzz():
    rng = random.Random(12345)
    good = program_to_bytes(make_program())
    header, sections = split(good)
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    for _ in range(150):  # truncations
        _must_fail_cleanly(good[:rng.randrange(len(good))])
    for _ in range(200):  # byte flips (checksum not fixed: always an error)
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        _must_fail_cleanly(bytes(data))
    for _ in range(100):  # garbage, with and without a valid prefix
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        _must_fail_cleanly(junk)
        _must_fail_cleanly(good[:rng.randrange(24)] + junk)
    for _ in range(300):  # header mutations with a valid checksum: exercise the header checks
        h = bytearray(hbytes)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(h))
            h[i] = rng.choice(b'0123456789-[]{}",:.eEtfn \x00\xff' + bytes([h[i] ^ 1]))
        _must_fail_cleanly(build(bytes(h), sections), allow_success=True)
    for _ in range(100):  # sealed files with random prefix fields
        body = struct.pack("<8sHHQ", MAGIC, rng.choice([1, 1, 0, 2, 65535]),
                           rng.choice([0, 0, 1]), rng.randrange(2**64))
        _must_fail_cleanly(reseal(body + good[20:rng.randrange(20, len(good))]))


# ---------------------------------------------------------------------------------------------
# atomic save


def test_atomic_save_failure_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "prog.lpu"
    real_fdopen = os.fdopen

    class Boom(OSError):
        pass

    def fdopen(fd, mode):
        f = real_fdopen(fd, mode)

        class Half:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                f.write(data[: len(data) // 2])
                raise Boom("disk full")

            def __getattr__(self, name):
                return getattr(f, name)

        return Half()

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)
    with pytest.raises(Boom):
        save_program(make_program(), path)
    assert os.listdir(tmp_path) == []


def test_atomic_save_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "prog.lpu"
    save_program(make_program(), path)
    before = path.read_bytes()

    def replace(src, dst):
        raise OSError("replace failed")

    monkeypatch.setattr(fileio.os, "replace", replace)
    p = make_program()
    p.meta["changed"] = 1
    with pytest.raises(OSError, match="replace failed"):
        save_program(p, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["prog.lpu"]


def test_unsaveable_program_does_not_touch_disk(tmp_path):
    path = tmp_path / "prog.lpu"
    save_program(make_program(), path)
    before = path.read_bytes()
    p = make_program()
    p.meta = {"x": {1, 2}}
    with pytest.raises(ProgramFormatError):
        save_program(p, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["prog.lpu"]


# ---------------------------------------------------------------------------------------------
# validate_program


@dataclass(frozen=True)
class Q:
    name: str
    kind: str
    index: int


@dataclass
class TinyArch:
    queues: tuple = (Q("ICU", "icu", 0), Q("MEM_W0", "mem", 0), Q("VXM0", "vxm", 0))
    lanes: int = LANES
    mem_slices: int = 16
    mem_words_per_slice: int = 256
    streams_per_direction: int = 32
    name: str = "tiny"


def test_validate_ok():
    validate_program(make_program(), TinyArch())
    validate_program(program_from_bytes(program_to_bytes(make_program())), TinyArch())


def _validate_error(mutate) -> str:
    p = make_program()
    mutate(p)
    with pytest.raises(ProgramFormatError) as ei:
        validate_program(p, TinyArch())
    return str(ei.value)


def _set_tensor(i, **kw):
    def mutate(p):
        for k, v in kw.items():
            setattr(p.tensors[i], k, v)
    return mutate


def test_validate_catches_each_problem():
    assert "unknown queue 'MXM9'" in _validate_error(
        lambda p: p.chips[0].queues.__setitem__("MXM9", np.zeros((1, 2), np.uint64)))
    assert "(n, 2) uint64" in _validate_error(
        lambda p: p.chips[0].queues.__setitem__("VXM0", np.zeros((1, 2), np.int64)))
    assert "(n, 2) uint64" in _validate_error(
        lambda p: p.chips[0].queues.__setitem__("VXM0", np.zeros((1, 3), np.uint64)))
    assert f"(m, {LANES}) int16" in _validate_error(
        lambda p: setattr(p.chips[0], "maps", np.zeros((2, 8), np.int16)))
    assert f"(m, {LANES}) int16" in _validate_error(
        lambda p: setattr(p.chips[0], "maps", np.zeros((2, LANES), np.int32)))
    assert "chip 2 out of range" in _validate_error(_set_tensor(0, chip=2))
    assert "1 slices given, fp16 needs 2" in _validate_error(_set_tensor(1, slices=(1,)))
    assert "slice 16 out of range 0..15" in _validate_error(_set_tensor(1, slices=(1, 16)))
    assert "repeat" in _validate_error(_set_tensor(1, slices=(1, 1)))
    # tensor x: 2 rows x 20 cols at 16 lanes -> 4 vectors; addr 254 reaches 257, 2 past 255
    msg = _validate_error(_set_tensor(0, addr=254))
    assert "tensor 'x'" in msg and "reach address 257, 2 words past the last address 255" in msg
    msg = _validate_error(_set_tensor(0, addr=0, stride=100))
    assert "reach address 300, 45 words past" in msg
    msg = _validate_error(_set_tensor(0, addr=5, stride=-3))
    assert "address -4, 4 words below address 0" in msg
    assert "data has shape (2, 20), tensor shape is (2, 21)" in _validate_error(
        _set_tensor(0, shape=(2, 21)))
    assert "'x' is defined twice" in _validate_error(_set_tensor(1, name="x"))
    assert "unknown kind 'temp'" in _validate_error(_set_tensor(0, kind="temp"))
    assert "unknown dtype 'int4'" in _validate_error(_set_tensor(0, dtype="int4"))


def test_validate_fits_last_word_exactly():
    # 4 vectors at addr 252 end at 255, the last word: fine
    p = make_program()
    p.tensors[0].addr = 252
    validate_program(p, TinyArch())
