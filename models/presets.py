"""Published model shapes as builder calls: name -> (builder, kwargs).

Shapes are those of the released checkpoints (GPT-2: Radford et al. 2019 / the Hugging Face
configs; BERT: Devlin et al. 2019; Llama 3: Meta's model cards). Large presets are meant to be
built with ``weights="shape-only"``; `build_preset` defaults to that for everything except the
tiny-* test instances.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from models.bert import bert
from models.gpt2 import gpt2
from models.llama import llama


def _gpt2(layers: int, d: int, heads: int) -> tuple[Callable, dict]:
    return gpt2, dict(layers=layers, d_model=d, heads=heads, vocab=50257, max_positions=1024)


def _bert(layers: int, d: int, heads: int) -> tuple[Callable, dict]:
    return bert, dict(layers=layers, d_model=d, heads=heads, ffn=4 * d, vocab=30522,
                      max_positions=512)


def _llama3(layers: int, d: int, heads: int, ffn: int) -> tuple[Callable, dict]:
    return llama, dict(layers=layers, d_model=d, heads=heads, kv_heads=8, ffn=ffn, vocab=128256,
                       rope_theta=500000.0, max_positions=8192)


PRESETS: dict[str, tuple[Callable[..., onnx.ModelProto], dict]] = {
    "gpt2-small": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "bert-base": _bert(12, 768, 12),
    "bert-large": _bert(24, 1024, 16),
    "llama-3-8b": _llama3(32, 4096, 32, 14336),
    "llama-3-70b": _llama3(80, 8192, 64, 28672),
    "tiny-gpt2": (gpt2, dict(layers=2, d_model=64, heads=4, vocab=256, max_positions=64,
                             ffn=128)),
    "tiny-llama": (llama, dict(layers=2, d_model=64, heads=4, kv_heads=2, ffn=176, vocab=256,
                               max_positions=64)),
    "tiny-bert": (bert, dict(layers=2, d_model=64, heads=4, ffn=128, vocab=256,
                             max_positions=64)),
}

# Parameter counts of the released models (weights only), for checking the presets.
PUBLISHED_PARAMS = {
    "gpt2-small": 124.4e6, "gpt2-medium": 354.8e6, "gpt2-large": 774.0e6, "gpt2-xl": 1557.6e6,
    "bert-base": 109.5e6, "bert-large": 335.1e6,
    "llama-3-8b": 8.03e9, "llama-3-70b": 70.55e9,
}


def list_presets() -> list[str]:
    return list(PRESETS)


def build_preset(name: str, **overrides) -> onnx.ModelProto:
    """Build preset `name`; keyword overrides go to the builder (e.g. weights="random",
    seq=128, attention="opset23"). Defaults to weights="shape-only" except for tiny-*."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    builder, kwargs = PRESETS[name]
    kwargs = dict(kwargs)
    if not name.startswith("tiny-"):
        kwargs["weights"] = "shape-only"
    kwargs.update(overrides)
    return builder(**kwargs)


BUNDLED = ("tiny-gpt2", "tiny-llama", "tiny-bert")


def write_bundled(out_dir: Path | None = None) -> list[Path]:
    """(Re)write models/data/tiny-*.onnx from the builders (seed 0, random weights):
    python -c "from models.presets import write_bundled; write_bundled()"
    """
    out_dir = Path(__file__).parent / "data" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in BUNDLED:
        path = out_dir / f"{name}.onnx"
        onnx.save(build_preset(name), path)
        paths.append(path)
    return paths

