"""Element types of the machine: code, width in bytes (= streams in a group), numpy storage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str
    code: int
    nbytes: int
    is_float: bool
    numpy_name: str  # a numpy or ml_dtypes type name


DTYPES: tuple[DType, ...] = (
    DType("int8", 0, 1, False, "int8"),
    DType("int16", 1, 2, False, "int16"),
    DType("int32", 2, 4, False, "int32"),
    DType("fp16", 3, 2, True, "float16"),
    DType("bf16", 4, 2, True, "bfloat16"),
    DType("fp32", 5, 4, True, "float32"),
    DType("fp8_e4m3", 6, 1, True, "float8_e4m3fn"),
    DType("fp8_e5m2", 7, 1, True, "float8_e5m2"),
)

DTYPE_BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
DTYPE_BY_CODE: dict[int, DType] = {d.code: d for d in DTYPES}


def dtype(name: str) -> DType:
    try:
        return DTYPE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r} (known: {', '.join(DTYPE_BY_NAME)})") from None


def numpy_dtype(d: DType | str):
    """The numpy dtype that stores elements of `d` (bf16 and fp8 come from ml_dtypes)."""
    import numpy as np

    d = dtype(d) if isinstance(d, str) else d
    if d.numpy_name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, d.numpy_name))
    return np.dtype(d.numpy_name)
