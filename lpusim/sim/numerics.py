"""Element numerics of the machine (Numba kernels, one vector at a time).

Layout: a vector of `lanes` elements of width g bytes is a uint8 array buf[g, lanes]; row b holds
little-endian byte b of every element. Values travel as float32 (float dtypes) or int64 (int
dtypes) arrays of length `lanes`.

All functions are `@njit(cache=True, error_model="numpy")` over arrays and scalars only, and run
unchanged as plain Python under NUMBA_DISABLE_JIT=1. `numerics_ref` is the plain numpy / ml_dtypes
definition of the same functions; tests/test_numerics.py holds the two bit-identical.

Float arrays passed to unpack/pack/alu/convert must be C-contiguous 1-D float32 (they are bit-cast
with `.view(np.uint32)`); int arrays are 1-D int64.

NaN policy: copy/neg/abs (and cvt float->float) move bits, so NaN payloads and signs pass through
(neg flips the sign bit). Every other float ALU op that yields NaN yields the canonical quiet NaN
0x7FC00000, so results never depend on which NaN operand the hardware/compiler propagates.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from lpusim.sim.opcodes import (
    ALU,
    DT_BF16,
    DT_FP8E4M3,
    DT_FP8E5M2,
    DT_FP16,
    DT_FP32,
    DT_INT8,
    DT_INT16,
    DT_INT32,
)

# ALU op codes (module-level int constants: frozen into the kernels)
A_COPY = ALU["copy"]
A_NEG = ALU["neg"]
A_ABS = ALU["abs"]
A_RELU = ALU["relu"]
A_NOT = ALU["not"]
A_ISNAN = ALU["isnan"]
A_EXP = ALU["exp"]
A_TANH = ALU["tanh"]
A_RSQRT = ALU["rsqrt"]
A_RECIP = ALU["recip"]
A_SQRT = ALU["sqrt"]
A_LOG = ALU["log"]
A_ERF = ALU["erf"]
A_SIGMOID = ALU["sigmoid"]
A_ADD = ALU["add"]
A_SUB = ALU["sub"]
A_MUL = ALU["mul"]
A_DIV = ALU["div"]
A_MAX = ALU["max"]
A_MIN = ALU["min"]
A_POW = ALU["pow"]
A_AND = ALU["and"]
A_OR = ALU["or"]
A_XOR = ALU["xor"]
A_EQ = ALU["eq"]
A_LT = ALU["lt"]
A_LE = ALU["le"]
A_GT = ALU["gt"]
A_GE = ALU["ge"]

_jit = njit(cache=True, error_model="numpy")


# ----------------------------------------------------------------------------- dtype properties


@_jit
def is_float_dt(dt):
    return dt >= DT_FP16


@_jit
def dt_width(dt):
    """Bytes per element (= rows of buf)."""
    if dt == DT_INT8 or dt == DT_FP8E4M3 or dt == DT_FP8E5M2:
        return 1
    if dt == DT_INT16 or dt == DT_FP16 or dt == DT_BF16:
        return 2
    return 4


@_jit
def int_bits(dt):
    if dt == DT_INT8:
        return 8
    if dt == DT_INT16:
        return 16
    return 32


@_jit
def wrap_int(v, bits):
    """v (int64) modulo 2^bits, as a signed bits-wide value."""
    half = np.int64(1) << (bits - 1)
    mask = (np.int64(1) << bits) - 1
    return ((np.int64(v) + half) & mask) - half


@_jit
def sat_int(v, bits):
    """v (int64) clamped to the signed bits-wide range."""
    hi = (np.int64(1) << (bits - 1)) - 1
    lo = -hi - 1
    if v > hi:
        return hi
    if v < lo:
        return lo
    return np.int64(v)


# ----------------------------------------------------------------------------- bit conversions


@_jit
def small_to_f32bits(h, dt):
    """Bits (int) of an fp16/bf16/fp8 element -> bits (int64) of the equal float32 value.

    NaNs follow numpy / ml_dtypes: fp16 and bf16 keep the payload (shifted), fp8 NaNs become the
    quiet NaN 0x7FC00000 with the sign."""
    h = np.int64(h)
    if dt == DT_BF16:
        return (h & 0xFFFF) << 16
    if dt == DT_FP16:
        ebits = 5
        mbits = 10
    elif dt == DT_FP8E5M2:
        ebits = 5
        mbits = 2
    else:  # DT_FP8E4M3 (e4m3fn: no inf, NaN = S.1111.111)
        ebits = 4
        mbits = 3
    bias = (1 << (ebits - 1)) - 1
    emax = (1 << ebits) - 1
    sign = ((h >> (ebits + mbits)) & 1) << 31
    e = (h >> mbits) & emax
    m = h & ((1 << mbits) - 1)
    if dt == DT_FP8E4M3:
        if e == emax and m == (1 << mbits) - 1:
            return sign | 0x7FC00000
    elif e == emax:
        if m == 0:
            return sign | 0x7F800000
        if dt == DT_FP16:
            return sign | 0x7F800000 | (m << 13)
        return sign | 0x7FC00000
    if e == 0:
        if m == 0:
            return sign
        # subnormal: normalise
        e = 1
        while (m & (1 << mbits)) == 0:
            m <<= 1
            e -= 1
        m &= (1 << mbits) - 1
    return sign | ((e - bias + 127) << 23) | (m << (23 - mbits))


@_jit
def f32bits_to_small(u, dt):
    """Bits (int) of a float32 -> bits (int64) of fp16/bf16/fp8, rounding to nearest even exactly
    as numpy (fp16) / ml_dtypes (bf16, fp8) astype from float32 do."""
    u = np.int64(u) & 0xFFFFFFFF
    if dt == DT_BF16:
        if (u & 0x7FFFFFFF) > 0x7F800000:
            return ((u >> 16) & 0x8000) | 0x7FC0
        return (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    if dt == DT_FP16:
        ebits = 5
        mbits = 10
    elif dt == DT_FP8E5M2:
        ebits = 5
        mbits = 2
    else:
        ebits = 4
        mbits = 3
    fn = dt == DT_FP8E4M3
    bias = (1 << (ebits - 1)) - 1
    emax = (1 << ebits) - 1
    s = ((u >> 31) & 1) << (ebits + mbits)
    a = u & 0x7FFFFFFF
    if a > 0x7F800000:  # NaN
        if dt == DT_FP16:
            r = 0x7C00 + ((a & 0x7FFFFF) >> 13)
            if r == 0x7C00:
                r += 1
            return s | r
        if fn:
            return s | 0x7F
        return s | (emax << mbits) | (1 << (mbits - 1))
    if a == 0x7F800000:  # inf (e4m3fn has none: NaN)
        if fn:
            return s | 0x7F
        return s | (emax << mbits)
    e = a >> 23
    sh = 23 - mbits
    if e >= 128 - bias:  # a normal number in the target
        t = a - ((127 - bias) << 23)
        r = (t + (1 << (sh - 1)) - 1 + ((t >> sh) & 1)) >> sh
        if fn:
            if r > (1 << (ebits + mbits)) - 2:
                r = 0x7F
        elif r >= (emax << mbits):
            r = emax << mbits
        return s | r
    if e == 0:  # float32 zero/subnormal: below half the smallest target subnormal
        return s
    sig = (a & 0x7FFFFF) | 0x800000
    rshift = 151 - bias - mbits - e
    if rshift > 24:
        return s
    q = sig >> rshift
    rem = sig & ((np.int64(1) << rshift) - 1)
    half = np.int64(1) << (rshift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1
    return s | q


# ----------------------------------------------------------------------------- unpack / pack


@_jit
def unpack(buf, dt, outf, outi):
    """buf uint8[g, lanes] -> element values: float dtypes into outf (float32, exact), int dtypes
    into outi (int64, sign-extended)."""
    n = buf.shape[1]
    if dt == DT_INT8:
        for i in range(n):
            outi[i] = wrap_int(np.int64(buf[0, i]), 8)
    elif dt == DT_INT16:
        for i in range(n):
            outi[i] = wrap_int(np.int64(buf[0, i]) | (np.int64(buf[1, i]) << 8), 16)
    elif dt == DT_INT32:
        for i in range(n):
            v = (
                np.int64(buf[0, i])
                | (np.int64(buf[1, i]) << 8)
                | (np.int64(buf[2, i]) << 16)
                | (np.int64(buf[3, i]) << 24)
            )
            outi[i] = wrap_int(v, 32)
    elif dt == DT_FP32:
        ob = outf.view(np.uint32)
        for i in range(n):
            v = (
                np.int64(buf[0, i])
                | (np.int64(buf[1, i]) << 8)
                | (np.int64(buf[2, i]) << 16)
                | (np.int64(buf[3, i]) << 24)
            )
            ob[i] = v
    elif dt == DT_FP16 or dt == DT_BF16:
        ob = outf.view(np.uint32)
        for i in range(n):
            ob[i] = small_to_f32bits(np.int64(buf[0, i]) | (np.int64(buf[1, i]) << 8), dt)
    else:
        ob = outf.view(np.uint32)
        for i in range(n):
            ob[i] = small_to_f32bits(np.int64(buf[0, i]), dt)


@_jit
def pack(valf, vali, dt, buf):
    """Element values -> buf uint8[g, lanes]. Float dtypes round valf (float32) to nearest even
    as numpy/ml_dtypes astype; int dtypes wrap vali (int64) modulo 2^bits."""
    n = buf.shape[1]
    if dt == DT_INT8 or dt == DT_INT16 or dt == DT_INT32:
        g = dt_width(dt)
        for i in range(n):
            v = np.int64(vali[i])
            for b in range(g):
                buf[b, i] = (v >> (8 * b)) & 0xFF
    elif dt == DT_FP32:
        vb = valf.view(np.uint32)
        for i in range(n):
            v = np.int64(vb[i])
            buf[0, i] = v & 0xFF
            buf[1, i] = (v >> 8) & 0xFF
            buf[2, i] = (v >> 16) & 0xFF
            buf[3, i] = (v >> 24) & 0xFF
    elif dt == DT_FP16 or dt == DT_BF16:
        vb = valf.view(np.uint32)
        for i in range(n):
            r = f32bits_to_small(vb[i], dt)
            buf[0, i] = r & 0xFF
            buf[1, i] = (r >> 8) & 0xFF
    else:
        vb = valf.view(np.uint32)
        for i in range(n):
            buf[0, i] = f32bits_to_small(vb[i], dt) & 0xFF


@_jit
def quantize(valf, dt, outf):
    """outf = valf rounded to float dtype dt and widened back to float32 (= unpack(pack(valf)));
    outf may be valf. fp32 copies bits."""
    n = valf.shape[0]
    vb = valf.view(np.uint32)
    ob = outf.view(np.uint32)
    if dt == DT_FP32:
        for i in range(n):
            ob[i] = vb[i]
    else:
        for i in range(n):
            ob[i] = small_to_f32bits(f32bits_to_small(vb[i], dt), dt)


# ----------------------------------------------------------------------------- ALU


@_jit
def falu(code, x, y):
    """One float ALU op on float32 scalars x, y (y ignored by unary ops) -> float32."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if code == A_COPY:
        return x
    if code == A_NEG:
        return -x
    if code == A_ABS:
        return abs(x)
    if code == A_ISNAN:
        return one if x != x else zero
    if code == A_NOT:
        return one if x == 0 else zero
    if code == A_EQ:
        return one if x == y else zero
    if code == A_LT:
        return one if x < y else zero
    if code == A_LE:
        return one if x <= y else zero
    if code == A_GT:
        return one if x > y else zero
    if code == A_GE:
        return one if x >= y else zero
    if code == A_AND:
        return one if (x != 0 and y != 0) else zero
    if code == A_OR:
        return one if (x != 0 or y != 0) else zero
    if code == A_XOR:
        return one if ((x != 0) != (y != 0)) else zero
    x64 = np.float64(x)
    y64 = np.float64(y)
    # +,-,*,/ (and sqrt) of fp32 values in fp64 rounded once to fp32 equal the fp32 operation
    if code == A_RELU:
        r = x64 if (x64 > 0.0 or x64 != x64) else 0.0  # relu(NaN) = NaN, relu(-0) = +0
    elif code == A_ADD:
        r = x64 + y64
    elif code == A_SUB:
        r = x64 - y64
    elif code == A_MUL:
        r = x64 * y64
    elif code == A_DIV:
        r = x64 / y64
    elif code == A_MAX:
        if x64 != x64 or y64 != y64:
            r = np.nan
        elif x64 == y64:
            r = x64 + y64 if x64 == 0.0 else x64  # max(-0, +0) = +0
        else:
            r = x64 if x64 > y64 else y64
    elif code == A_MIN:
        if x64 != x64 or y64 != y64:
            r = np.nan
        elif x64 == y64:
            r = -((-x64) + (-y64)) if x64 == 0.0 else x64  # min(-0, +0) = -0
        else:
            r = x64 if x64 < y64 else y64
    elif code == A_EXP:
        r = np.exp(x64)
    elif code == A_TANH:
        r = np.tanh(x64)
    elif code == A_RSQRT:
        r = 1.0 / np.sqrt(x64)
    elif code == A_RECIP:
        r = 1.0 / x64
    elif code == A_SQRT:
        r = np.sqrt(x64)
    elif code == A_LOG:
        r = np.log(x64)
    elif code == A_ERF:
        r = math.erf(x64)
    elif code == A_SIGMOID:
        r = 1.0 / (1.0 + np.exp(-x64))
    elif code == A_POW:
        r = np.power(x64, y64)
    else:
        r = np.nan
    if r != r:
        return np.float32(np.nan)
    return np.float32(r)


@_jit
def ialu(code, bits, x, y):
    """One integer ALU op on int64 scalars x, y of a bits-wide type -> int64 (wrapped)."""
    x = np.int64(x)
    y = np.int64(y)
    if code == A_COPY:
        r = x
    elif code == A_NEG:
        r = -x
    elif code == A_ABS:
        r = -x if x < 0 else x
    elif code == A_RELU:
        r = x if x > 0 else np.int64(0)
    elif code == A_NOT:
        r = np.int64(1) if x == 0 else np.int64(0)
    elif code == A_ADD:
        r = x + y
    elif code == A_SUB:
        r = x - y
    elif code == A_MUL:
        r = x * y
    elif code == A_DIV:
        if y == 0:
            r = np.int64(0)
        else:
            ax = -x if x < 0 else x
            ay = -y if y < 0 else y
            r = ax // ay
            if (x < 0) != (y < 0):
                r = -r
    elif code == A_MAX:
        r = x if x > y else y
    elif code == A_MIN:
        r = x if x < y else y
    elif code == A_AND:
        r = x & y
    elif code == A_OR:
        r = x | y
    elif code == A_XOR:
        r = x ^ y
    elif code == A_EQ:
        r = np.int64(1) if x == y else np.int64(0)
    elif code == A_LT:
        r = np.int64(1) if x < y else np.int64(0)
    elif code == A_LE:
        r = np.int64(1) if x <= y else np.int64(0)
    elif code == A_GT:
        r = np.int64(1) if x > y else np.int64(0)
    elif code == A_GE:
        r = np.int64(1) if x >= y else np.int64(0)
    else:
        r = np.int64(0)
    return wrap_int(r, bits)


@_jit
def alu(code, dt, xf, xi, yf, yi, zf, zi):
    """z = op(x, y) over whole vectors: float dtypes use xf/yf -> zf (float32), int dtypes use
    xi/yi -> zi (int64, wrapped to the dtype). Unary ops ignore y."""
    if dt >= DT_FP16:
        n = xf.shape[0]
        for i in range(n):
            zf[i] = falu(code, xf[i], yf[i])
    else:
        bits = int_bits(dt)
        n = xi.shape[0]
        for i in range(n):
            zi[i] = ialu(code, bits, xi[i], yi[i])


@_jit
def f32_to_int_sat(x, bits):
    """float32 -> int64: round half to even, NaN -> 0, saturate to the signed bits-wide range."""
    hi = (np.int64(1) << (bits - 1)) - 1
    lo = -hi - 1
    x64 = np.float64(x)
    if x64 != x64:
        return np.int64(0)
    if x64 >= np.float64(hi):
        return hi
    if x64 <= np.float64(lo):
        return lo
    f = np.floor(x64)
    d = x64 - f
    r = np.int64(f)
    if d > 0.5 or (d == 0.5 and (r & 1) == 1):
        r += 1
    return r


@_jit
def convert(dt_from, dt_to, xf, xi, zf, zi):
    """vxm.cvt on values: float->float copies fp32 (pack rounds); int->float rounds int64 to
    float32 (nearest even); float->int rounds half to even, NaN -> 0, saturates; int->int
    saturates."""
    ff = dt_from >= DT_FP16
    tf = dt_to >= DT_FP16
    if ff and tf:
        n = xf.shape[0]
        for i in range(n):
            zf[i] = xf[i]
    elif ff:
        bits = int_bits(dt_to)
        n = xf.shape[0]
        for i in range(n):
            zi[i] = f32_to_int_sat(xf[i], bits)
    elif tf:
        n = xi.shape[0]
        for i in range(n):
            zf[i] = np.float32(xi[i])
    else:
        bits = int_bits(dt_to)
        n = xi.shape[0]
        for i in range(n):
            zi[i] = sat_int(xi[i], bits)
