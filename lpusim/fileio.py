"""Atomic output files: the whole new file appears, or nothing changes."""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path


def write_atomic(path, data: bytes | str) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.
    On any failure the temporary file is removed and an existing `path` is left untouched."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = path.parent if str(path.parent) else Path(".")
    while True:
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz_atomic(path, arrays: dict) -> None:
    buf = io.BytesIO()
    import numpy as np

    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())
