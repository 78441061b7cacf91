"""ONNX graph builders for transformer families, presets with published shapes, and tiny
bundled models (models/data/*.onnx).

    from models import gpt2, llama, bert, build_preset, list_presets, load_bundled
    m = gpt2(2, 64, 4, 256, 64)                       # random weights, seeded
    big = build_preset("llama-3-8b")                  # shape-only weights (see models.common)
"""

from __future__ import annotations

from pathlib import Path

import onnx

from models.bert import bert
from models.common import (
    SHAPE_ONLY_KEY,
    SHAPE_ONLY_LOCATION,
    check_model,
    is_shape_only,
    model_is_shape_only,
    parameter_count,
)
from models.gpt2 import gpt2
from models.llama import llama
from models.presets import PRESETS, PUBLISHED_PARAMS, build_preset, list_presets

DATA_DIR = Path(__file__).parent / "data"


def bundled_models() -> list[str]:
    """Names of the bundled .onnx files (without the suffix), e.g. 'tiny-gpt2', 'hf-gpt2'."""
    return sorted(p.stem for p in DATA_DIR.glob("*.onnx"))


def bundled_path(name: str) -> Path:
    path = DATA_DIR / f"{name}.onnx"
    if not path.exists():
        raise FileNotFoundError(f"no bundled model {name!r}; have: {', '.join(bundled_models())}")
    return path


def load_bundled(name: str) -> onnx.ModelProto:
    return onnx.load(bundled_path(name))


__all__ = [
    "DATA_DIR", "PRESETS", "PUBLISHED_PARAMS", "SHAPE_ONLY_KEY", "SHAPE_ONLY_LOCATION",
    "bert", "build_preset", "bundled_models", "bundled_path", "check_model", "gpt2",
    "is_shape_only", "list_presets", "llama", "load_bundled", "model_is_shape_only",
    "parameter_count",
]
