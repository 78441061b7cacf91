"""Reference definition of the machine's element numerics, in plain numpy + ml_dtypes.

Same functions and signatures as `lpusim.sim.numerics` (which must agree bit for bit); slow is
fine. See numerics.py for the layout and the NaN policy.
"""

from __future__ import annotations

import math

import numpy as np

from isa.dtypes import DTYPE_BY_CODE, numpy_dtype

_INT_NP = {0: np.int8, 1: np.int16, 2: np.int32}
_INT_BY_BITS = {8: np.int8, 16: np.int16, 32: np.int32}
_QNAN = np.uint32(0x7FC00000).view(np.float32)


def is_float_dt(dt: int) -> bool:
    return DTYPE_BY_CODE[dt].is_float


def dt_width(dt: int) -> int:
    return DTYPE_BY_CODE[dt].nbytes


def int_bits(dt: int) -> int:
    return 8 * DTYPE_BY_CODE[dt].nbytes


def _npdt(dt: int) -> np.dtype:
    return numpy_dtype(DTYPE_BY_CODE[dt])


def unpack(buf, dt, outf, outi) -> None:
    g, lanes = buf.shape
    elems = np.ascontiguousarray(np.asarray(buf, np.uint8).T).view(_npdt(dt)).reshape(lanes)
    if is_float_dt(dt):
        outf[:] = elems.astype(np.float32)
    else:
        outi[:] = elems.astype(np.int64)


def pack(valf, vali, dt, buf) -> None:
    g, lanes = buf.shape
    with np.errstate(all="ignore"):
        if is_float_dt(dt):
            elems = np.asarray(valf, np.float32).astype(_npdt(dt))
        else:
            elems = np.asarray(vali, np.int64).astype(_npdt(dt))  # wraps modulo 2^bits
    buf[:, :] = np.ascontiguousarray(elems).view(np.uint8).reshape(lanes, g).T


def quantize(valf, dt, outf) -> None:
    with np.errstate(all="ignore"):
        outf[:] = np.asarray(valf, np.float32).astype(_npdt(dt)).astype(np.float32)


def _b(c) -> np.ndarray:
    return np.where(c, np.float32(1.0), np.float32(0.0)).astype(np.float32)


def _falu(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float op on float32 vectors -> float32 vector."""
    if name == "copy":
        return x.copy()
    if name == "neg":
        return -x
    if name == "abs":
        return np.abs(x)
    logical = {
        "isnan": lambda: np.isnan(x),
        "not": lambda: x == 0,
        "eq": lambda: x == y,
        "lt": lambda: x < y,
        "le": lambda: x <= y,
        "gt": lambda: x > y,
        "ge": lambda: x >= y,
        "and": lambda: (x != 0) & (y != 0),
        "or": lambda: (x != 0) | (y != 0),
        "xor": lambda: (x != 0) != (y != 0),
    }
    if name in logical:
        return _b(logical[name]())
    if name == "relu":
        r = np.where(np.isnan(x), x, np.where(x > 0, x, np.float32(0.0)))
    elif name == "add":
        r = x + y
    elif name == "sub":
        r = x - y
    elif name == "mul":
        r = x * y
    elif name == "div":
        r = x / y
    elif name in ("max", "min"):
        nan = np.isnan(x) | np.isnan(y)
        if name == "max":
            r = np.where(x > y, x, y)
            zeros = (x == 0) & (y == 0)
            r = np.where(zeros, x + y, r)  # max(-0, +0) = +0
        else:
            r = np.where(x < y, x, y)
            zeros = (x == 0) & (y == 0)
            r = np.where(zeros, -((-x) + (-y)), r)  # min(-0, +0) = -0
        r = np.where(nan, np.float32(np.nan), r)
    else:
        x64 = x.astype(np.float64)
        y64 = y.astype(np.float64)
        if name == "exp":
            r64 = np.exp(x64)
        elif name == "tanh":
            r64 = np.tanh(x64)
        elif name == "rsqrt":
            r64 = 1.0 / np.sqrt(x64)
        elif name == "recip":
            r64 = 1.0 / x64
        elif name == "sqrt":
            r64 = np.sqrt(x64)
        elif name == "log":
            r64 = np.log(x64)
        elif name == "erf":
            r64 = np.array([math.erf(v) for v in x64.tolist()], np.float64)
        elif name == "sigmoid":
            r64 = 1.0 / (1.0 + np.exp(-x64))
        elif name == "pow":
            r64 = np.power(x64, y64)
        else:
            raise ValueError(f"unknown float ALU op {name!r}")
        r = r64.astype(np.float32)
    r = np.asarray(r, np.float32)
    return np.where(np.isnan(r), _QNAN, r).astype(np.float32)


def _ialu(name: str, bits: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Int op on int64 vectors -> int64 vector wrapped to bits."""
    if name == "copy":
        r = x.copy()
    elif name == "neg":
        r = -x
    elif name == "abs":
        r = np.abs(x)
    elif name == "relu":
        r = np.maximum(x, 0)
    elif name == "not":
        r = (x == 0).astype(np.int64)
    elif name == "add":
        r = x + y
    elif name == "sub":
        r = x - y
    elif name == "mul":
        r = x * y
    elif name == "div":
        safe = np.where(y == 0, 1, y)
        q = np.abs(x) // np.abs(safe)
        q = np.where((x < 0) != (y < 0), -q, q)
        r = np.where(y == 0, 0, q)
    elif name == "max":
        r = np.maximum(x, y)
    elif name == "min":
        r = np.minimum(x, y)
    elif name == "and":
        r = x & y
    elif name == "or":
        r = x | y
    elif name == "xor":
        r = x ^ y
    elif name in ("eq", "lt", "le", "gt", "ge"):
        f = {
            "eq": np.equal,
            "lt": np.less,
            "le": np.less_equal,
            "gt": np.greater,
            "ge": np.greater_equal,
        }[name]
        r = f(x, y).astype(np.int64)
    else:
        raise ValueError(f"ALU op {name!r} is not defined on integers")
    return np.asarray(r, np.int64).astype(_INT_BY_BITS[bits]).astype(np.int64)


def alu(code, dt, xf, xi, yf, yi, zf, zi) -> None:
    from isa.table import ALU_BY_CODE

    name = ALU_BY_CODE[code].name
    with np.errstate(all="ignore"):
        if is_float_dt(dt):
            zf[:] = _falu(name, np.asarray(xf, np.float32), np.asarray(yf, np.float32))
        else:
            zi[:] = _ialu(name, int_bits(dt), np.asarray(xi, np.int64), np.asarray(yi, np.int64))


def convert(dt_from, dt_to, xf, xi, zf, zi) -> None:
    with np.errstate(all="ignore"):
        if is_float_dt(dt_from) and is_float_dt(dt_to):
            zf[:] = xf
        elif is_float_dt(dt_from):
            info = np.iinfo(_INT_NP[dt_to])
            x = np.asarray(xf, np.float32).astype(np.float64)
            r = np.rint(np.where(np.isnan(x), 0.0, np.clip(x, info.min, info.max)))
            zi[:] = r.astype(np.int64)
        elif is_float_dt(dt_to):
            zf[:] = np.asarray(xi, np.int64).astype(np.float32)
        else:
            info = np.iinfo(_INT_NP[dt_to])
            zi[:] = np.clip(np.asarray(xi, np.int64), info.min, info.max)
