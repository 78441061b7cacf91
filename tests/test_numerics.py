"""Element numerics: the Numba kernels (lpusim.sim.numerics) against numpy / ml_dtypes and against
the plain reference (lpusim.sim.numerics_ref). Passes with and without NUMBA_DISABLE_JIT=1."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from isa.dtypes import DTYPES, numpy_dtype
from isa.table import ALU_OPS
from lpusim.sim import numerics as N
from lpusim.sim import numerics_ref as R

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

JIT = not numba.config.DISABLE_JIT
FLOAT_DTS = [d for d in DTYPES if d.is_float]
INT_DTS = [d for d in DTYPES if not d.is_float]
SMALL_FLOAT_DTS = [d for d in FLOAT_DTS if d.name != "fp32"]
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _ids(ds):
    return [d.name for d in ds]


def _to_buf(elems: np.ndarray) -> np.ndarray:
    """Element array (any dtype) -> uint8[g, lanes] byte planes."""
    g = elems.dtype.itemsize
    return np.ascontiguousarray(np.ascontiguousarray(elems).view(np.uint8).reshape(-1, g).T)


def _from_buf(buf: np.ndarray, npdt) -> np.ndarray:
    return np.ascontiguousarray(buf.T).view(npdt).reshape(-1)


def _f32(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(np.float32)


def _assert_same_elems(got: np.ndarray, want: np.ndarray, what: str, nan_class=True) -> None:
    """Bit equality; with nan_class, NaN vs NaN of another payload also passes."""
    ub = UINT[got.dtype.itemsize]
    gb, wb = got.view(ub), want.view(ub)
    bad = gb != wb
    if nan_class and bad.any():
        gf = got.astype(np.float32) if got.dtype != np.float32 else got
        wf = want.astype(np.float32) if want.dtype != np.float32 else want
        bad &= ~(np.isnan(gf) & np.isnan(wf))
    if bad.any():
        i = np.flatnonzero(bad)[:8]
        raise AssertionError(
            f"{what}: {bad.sum()} mismatches, e.g. at {i.tolist()}: "
            f"got {[hex(v) for v in gb[i]]} want {[hex(v) for v in wb[i]]}"
        )


# ----------------------------------------------------------------------------- unpack


@pytest.mark.parametrize("d", SMALL_FLOAT_DTS, ids=_ids(SMALL_FLOAT_DTS))
def test_unpack_float_exhaustive(d):
    npdt = numpy_dtype(d)
    bits = np.arange(1 << (8 * d.nbytes), dtype=np.int64).astype(UINT[d.nbytes])
    elems = bits.view(npdt)
    buf = _to_buf(elems)
    outf = np.empty(len(bits), np.float32)
    outi = np.zeros(len(bits), np.int64)
    N.unpack(buf, d.code, outf, outi)
    want = elems.astype(np.float32)
    _assert_same_elems(outf, want, f"unpack {d.name}", nan_class=False)
    reff = np.empty_like(outf)
    R.unpack(buf, d.code, reff, outi)
    _assert_same_elems(reff, want, f"ref unpack {d.name}", nan_class=False)


def test_unpack_fp32_roundtrip():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32)
    bits[:4] = [0x7F800001, 0xFFC00000, 0x80000000, 0x00000001]
    buf = _to_buf(bits)
    outf = np.empty(len(bits), np.float32)
    N.unpack(buf, 5, outf, np.zeros(len(bits), np.int64))
    assert np.array_equal(outf.view(np.uint32), bits)
    back = np.zeros_like(buf)
    N.pack(outf, np.zeros(len(bits), np.int64), 5, back)
    assert np.array_equal(back, buf)


@pytest.mark.parametrize("d", INT_DTS, ids=_ids(INT_DTS))
def test_unpack_pack_int(d):
    rng = np.random.default_rng(2)
    npdt = numpy_dtype(d)
    info = np.iinfo(npdt)
    vals = rng.integers(info.min, info.max, 5000, endpoint=True).astype(npdt)
    vals[:2] = [info.min, info.max]
    buf = _to_buf(vals)
    outi = np.empty(len(vals), np.int64)
    N.unpack(buf, d.code, np.zeros(len(vals), np.float32), outi)
    assert np.array_equal(outi, vals.astype(np.int64))
    # pack wraps modulo 2^bits
    wide = rng.integers(-(1 << 40), 1 << 40, 5000).astype(np.int64)
    wide[:4] = [info.max + 1, info.min - 1, -1, 1 << 33]
    got = np.zeros((d.nbytes, len(wide)), np.uint8)
    N.pack(np.zeros(len(wide), np.float32), wide, d.code, got)
    assert np.array_equal(_from_buf(got, npdt), wide.astype(npdt))
    ref = np.zeros_like(got)
    R.pack(np.zeros(len(wide), np.float32), wide, d.code, ref)
    assert np.array_equal(got, ref)


# ----------------------------------------------------------------------------- pack (rounding)


def _pack_cases(d, rng, n_random):
    """float32 inputs for packing to d: every finite value of d, midpoints, midpoints +/- 1 ulp,
    overflow boundaries, specials, random bit patterns."""
    npdt = numpy_dtype(d)
    bits = np.arange(1 << (8 * d.nbytes), dtype=np.int64).astype(UINT[d.nbytes])
    vals = bits.view(npdt).astype(np.float32)
    fin = np.unique(vals[np.isfinite(vals)].astype(np.float64))  # sorted, -0 merged with +0
    mx = fin[-1]
    ulp_top = fin[-1] - fin[-2]
    edges = np.concatenate([fin, [mx + ulp_top, mx + 2 * ulp_top], -np.array([mx + ulp_top])])
    edges = np.unique(edges)
    mids = (edges[:-1] + edges[1:]) / 2  # exact in float64 and in float32 for these types
    m32 = mids.astype(np.float32)
    ok = np.isfinite(m32)  # bf16's edges beyond its max lie beyond float32's
    assert np.array_equal(m32[ok].astype(np.float64), mids[ok])
    up, down = np.float32(np.inf), np.float32(-np.inf)
    parts = [
        vals,
        m32,
        np.nextafter(m32, up),
        np.nextafter(m32, down),
        edges.astype(np.float32),
        _f32(
            [
                0x7F800000,
                0xFF800000,
                0x7F7FFFFF,
                0xFF7FFFFF,
                0x00000001,
                0x80000001,
                0x007FFFFF,
                0x00800000,
                0x7F800001,
                0xFF800001,
                0x7FC00000,
                0xFFFFFFFF,
                0x7FBFFFFF,
                0x7F802000,
                0x7F801FFF,
                0x80000000,
                0,
            ]
        ),
        rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ]
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))


@pytest.mark.parametrize("d", SMALL_FLOAT_DTS, ids=_ids(SMALL_FLOAT_DTS))
def test_pack_float_rounding(d):
    rng = np.random.default_rng(3 + d.code)
    x = _pack_cases(d, rng, 200_000 if JIT else 30_000)
    npdt = numpy_dtype(d)
    with np.errstate(all="ignore"):
        want = x.astype(npdt)
    got = np.zeros((d.nbytes, len(x)), np.uint8)
    N.pack(x, np.zeros(len(x), np.int64), d.code, got)
    _assert_same_elems(_from_buf(got, npdt), want, f"pack {d.name}")
    ref = np.zeros_like(got)
    R.pack(x, np.zeros(len(x), np.int64), d.code, ref)
    _assert_same_elems(_from_buf(ref, npdt), want, f"ref pack {d.name}")
    q, qr = np.empty_like(x), np.empty_like(x)
    N.quantize(x, d.code, q)
    R.quantize(x, d.code, qr)
    _assert_same_elems(q, want.astype(np.float32), f"quantize {d.name}")
    _assert_same_elems(qr, want.astype(np.float32), f"ref quantize {d.name}")
    x2 = x.copy()
    N.quantize(x2, d.code, x2)  # in place
    assert np.array_equal(x2.view(np.uint32), q.view(np.uint32))


def test_pack_known_overflow():
    """Documented behaviours: e4m3fn has no inf (overflow and inf give NaN; 464 ties down to 448);
    e5m2 and fp16 overflow to inf; NaN of fp16 keeps the payload top bits."""
    cases = {
        "fp8_e4m3": (
            [448, 464, 464.1, 1e9, np.inf, -np.inf, -465],
            [0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0xFF, 0xFF],
        ),
        "fp8_e5m2": ([57344, 61439, 61440, np.inf], [0x7B, 0x7B, 0x7C, 0x7C]),
        "fp16": ([65504, 65519.99, 65520, np.inf], [0x7BFF, 0x7BFF, 0x7C00, 0x7C00]),
        "bf16": ([3.3895314e38, np.float32(3.4028235e38), np.inf], [0x7F7F, 0x7F80, 0x7F80]),
    }
    for name, (xs, want) in cases.items():
        d = next(dd for dd in DTYPES if dd.name == name)
        x = np.array(xs, np.float32)
        got = np.zeros((d.nbytes, len(x)), np.uint8)
        N.pack(x, np.zeros(len(x), np.int64), d.code, got)
        assert _from_buf(got, UINT[d.nbytes]).tolist() == want, name


# ----------------------------------------------------------------------------- alu / convert


def _float_inputs(d, rng, n):
    """Values representable in d (as the machine sees them after unpack), rich in specials."""
    specials = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -0.5,
            2.0,
            3.0,
            np.inf,
            -np.inf,
            np.nan,
            -np.nan,
            1e-40,
            -1e-40,
            1e-7,
            88.0,
            89.0,
            -104.0,
            1e38,
            -1e38,
            3.4e38,
            0.1,
            10.0,
            1e-3,
            7.0,
            -7.0,
            20.0,
            -20.0,
        ],
        np.float32,
    )
    if d.name == "fp32":
        parts = [
            rng.integers(0, 1 << 32, n // 4, dtype=np.uint64).astype(np.uint32).view(np.float32),
            rng.standard_normal(n // 4).astype(np.float32) * np.float32(4),
            (rng.standard_normal(n // 4) * 1e-30).astype(np.float32),
            (rng.standard_normal(n // 4) * 1e30).astype(np.float32),
            _f32([0x7F800001, 0xFFA00000, 0x7FC00001]),
        ]
        raw = np.concatenate(parts)
    else:
        npdt = numpy_dtype(d)
        b = rng.integers(0, 1 << (8 * d.nbytes), n, dtype=np.uint64).astype(UINT[d.nbytes])
        raw = b.view(npdt).astype(np.float32)
    with np.errstate(all="ignore"):
        sp = specials.astype(numpy_dtype(d)).astype(np.float32)
    x = np.concatenate([sp, raw])[:n]
    return np.ascontiguousarray(rng.permutation(np.resize(x, n)).astype(np.float32))


def _int_inputs(d, rng, n):
    info = np.iinfo(numpy_dtype(d))
    sp = np.array(
        [0, 1, -1, 2, -2, 7, -7, info.min, info.max, info.min + 1, info.max - 1, 3, -3], np.int64
    )
    r = rng.integers(info.min, info.max, n, endpoint=True).astype(np.int64)
    small = rng.integers(-9, 10, n).astype(np.int64)
    x = np.concatenate([sp, np.where(rng.random(n) < 0.3, small, r)])[:n]
    return rng.permutation(x)


def _ops_for(d):
    return [a for a in ALU_OPS if a.kind == "any" or (a.kind == "float") == d.is_float]


ALU_CASES = [(d, a) for d in DTYPES for a in _ops_for(d)]


@pytest.mark.parametrize("d,a", ALU_CASES, ids=[f"{d.name}-{a.name}" for d, a in ALU_CASES])
def test_alu_matches_reference(d, a):
    n = 3000 if JIT else 1000
    rng = np.random.default_rng(1000 + 37 * d.code + a.code)
    if d.is_float:
        xf, yf = _float_inputs(d, rng, n), _float_inputs(d, rng, n)
        xi = yi = np.zeros(n, np.int64)
    else:
        xi, yi = _int_inputs(d, rng, n), _int_inputs(d, rng, n)
        xf = yf = np.zeros(n, np.float32)
    zf_n, zf_r = np.full(n, 7, np.float32), np.full(n, 7, np.float32)
    zi_n, zi_r = np.full(n, 7, np.int64), np.full(n, 7, np.int64)
    N.alu(a.code, d.code, xf, xi, yf, yi, zf_n, zi_n)
    R.alu(a.code, d.code, xf, xi, yf, yi, zf_r, zi_r)
    if d.is_float:
        _assert_same_elems(zf_n, zf_r, f"alu {a.name} {d.name}", nan_class=False)
    else:
        assert np.array_equal(zi_n, zi_r), f"alu {a.name} {d.name}"
        info = np.iinfo(numpy_dtype(d))
        assert zi_n.min() >= info.min and zi_n.max() <= info.max
    # after packing to the dtype
    bn = np.zeros((d.nbytes, n), np.uint8)
    br = np.zeros_like(bn)
    N.pack(zf_n, zi_n, d.code, bn)
    R.pack(zf_r, zi_r, d.code, br)
    assert np.array_equal(bn, br)


def test_alu_spot_semantics():
    def f(name, x, y=0.0, dt=5):
        xa, ya = np.array([x], np.float32), np.array([y], np.float32)
        z = np.zeros(1, np.float32)
        i0 = np.zeros(1, np.int64)
        N.alu(next(a.code for a in ALU_OPS if a.name == name), dt, xa, i0, ya, i0, z, i0)
        return z[0]

    def i(name, x, y=0, dt=0):
        xa, ya = np.array([x], np.int64), np.array([y], np.int64)
        z = np.zeros(1, np.int64)
        f0 = np.zeros(1, np.float32)
        N.alu(next(a.code for a in ALU_OPS if a.name == name), dt, f0, xa, f0, ya, f0, z)
        return int(z[0])

    assert np.isnan(f("max", np.nan, 1)) and np.isnan(f("min", 1, np.nan))
    assert np.isnan(f("relu", np.nan)) and f("relu", -3) == 0 and f("relu", 2.5) == 2.5
    assert np.signbit(f("min", 0.0, -0.0)) and not np.signbit(f("max", -0.0, 0.0))
    assert f("and", np.nan, 2) == 1 and f("xor", 0, -1) == 1 and f("not", np.nan) == 0
    assert f("eq", np.nan, np.nan) == 0 and f("isnan", np.nan) == 1
    assert f("div", 1, 0) == np.inf and f("pow", -8, 1 / 3) != f("pow", -8, 1 / 3)
    assert f("add", np.float32(16777216), 1) == 16777216  # fp32 arithmetic, not fp64
    assert i("abs", -128) == -128 and i("add", 127, 1) == -128 and i("neg", -128) == -128
    assert i("div", -7, 2) == -3 and i("div", 7, -2) == -3 and i("div", 5, 0) == 0
    assert i("div", -(1 << 31), -1, dt=2) == -(1 << 31)
    assert i("mul", 1 << 20, 1 << 20, dt=2) == 0 and i("mul", 100, 3, dt=0) == 44


CVT_CASES = [(a, b) for a in DTYPES for b in DTYPES]


@pytest.mark.parametrize("a,b", CVT_CASES, ids=[f"{a.name}-{b.name}" for a, b in CVT_CASES])
def test_convert_matches_reference(a, b):
    n = 3000 if JIT else 1000
    rng = np.random.default_rng(5000 + 8 * a.code + b.code)
    if a.is_float:
        extra = np.array(
            [
                0.5,
                1.5,
                2.5,
                -0.5,
                -1.5,
                -2.5,
                127.5,
                128.5,
                -128.5,
                -129.5,
                32767.5,
                -32768.5,
                2147483520.0,
                2147483648.0,
                -2147483648.0,
                -2147483904.0,
                1e10,
                -1e10,
                np.nan,
                np.inf,
                -np.inf,
                0.49999997,
            ],
            np.float32,
        )
        xf = np.ascontiguousarray(np.concatenate([extra, _float_inputs(a, rng, n)]))
        m = len(xf)
        xi = np.zeros(m, np.int64)
    else:
        xi = np.concatenate(
            [
                np.array(
                    [
                        (1 << 24) + 1,
                        (1 << 25) + 3,
                        -(1 << 31),
                        (1 << 31) - 1,
                        65519,
                        65520,
                        65535,
                        2049,
                    ],
                    np.int64,
                ),
                _int_inputs(a, rng, n),
            ]
        )
        m = len(xi)
        xf = np.zeros(m, np.float32)
    zf_n, zf_r = np.zeros(m, np.float32), np.zeros(m, np.float32)
    zi_n, zi_r = np.zeros(m, np.int64), np.zeros(m, np.int64)
    N.convert(a.code, b.code, xf, xi, zf_n, zi_n)
    R.convert(a.code, b.code, xf, xi, zf_r, zi_r)
    if b.is_float:
        _assert_same_elems(zf_n, zf_r, f"cvt {a.name}->{b.name}", nan_class=False)
    else:
        assert np.array_equal(zi_n, zi_r), f"cvt {a.name}->{b.name}"
    bn = np.zeros((b.nbytes, m), np.uint8)
    br = np.zeros_like(bn)
    N.pack(zf_n, zi_n, b.code, bn)
    R.pack(zf_r, zi_r, b.code, br)
    assert np.array_equal(bn, br)
    if a.is_float and not b.is_float:
        info = np.iinfo(numpy_dtype(b))
        want = (
            np.rint(np.nan_to_num(xf.astype(np.float64), nan=0.0, posinf=info.max, neginf=info.min))
            .clip(info.min, info.max)
            .astype(np.int64)
        )
        assert np.array_equal(zi_n, want)
