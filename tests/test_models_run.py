"""The bundled transformer graphs, compiled and simulated end to end against onnxruntime
(issue 3's acceptance point): tiny GPT-2, Llama and BERT from models/, and the same families
(and RoBERTa) exported by torch.onnx.export from Hugging Face transformers, by its
TorchScript exporter and by the dynamo one (models/data/hf-*.onnx).

Tolerances are normwise (max |error| / max |reference|); measured over the six graphs at
sequence 8:
- fp32, the exact mode: 1e-4 (measured about 3e-7).
- fp16 and bf16: products of operands rounded once to the type, summed in fp32, so each
  matmul's error is about 2u relative to |x|.|W| (u = 2^-11 for fp16, 2^-8 for bf16); through
  two layers, LayerNorm/RMSNorm and Softmax it stays a small multiple of u. The bound is 4u:
  1.95e-3 for fp16 (measured 2.5e-4 to 6.1e-4) and 1.56e-2 for bf16 (measured 2.0e-3 to 5.5e-3).
- int8: weights per output channel and activations per row, each rounded to 1/254 of its
  range; 5e-2 (measured 8.8e-3 to 2.2e-2). Attention's activation x activation matmuls, Softmax
  row sums and LayerNorm means run in fp16 (fp32 accumulation) under this policy.
- fp8 (e4m3fn): the same scaling with 448 as the largest value; each operand of a product is
  rounded once to 3 mantissa bits (u = 2^-4), so a product errs by at most 2u + u^2 = 0.129
  of itself, the bound used (measured 3.0e-2 to 7.4e-2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lpusim

DATA = Path(__file__).resolve().parents[1] / "models" / "data"
MODELS = ["tiny-gpt2", "tiny-llama", "tiny-bert", "hf-gpt2", "hf-llama", "hf-bert",
          "hf-gpt2-dynamo", "hf-llama-dynamo", "hf-bert-dynamo", "hf-roberta-dynamo",
          "hf-llama-sdpa"]
TOL = {"fp32": 1e-4, "fp16": 4 * 2.0 ** -11, "bf16": 4 * 2.0 ** -8, "int8": 5e-2,
       "fp8": 2 * 2.0 ** -4 + 2.0 ** -8}


def _run(name, precision, seq=8):
    res = lpusim.run_onnx(DATA / f"{name}.onnx", dims={"batch": 1, "seq": seq},
                          precision=precision)
    assert res.report["errors"], "no outputs compared"
    for out, err in res.report["errors"].items():
        assert err["max_rel"] <= TOL[precision], (name, precision, out, err)
    return res


@pytest.mark.parametrize("name", MODELS)
def test_bundled_models_match_the_reference_in_fp32(name):
    res = _run(name, "fp32")
    assert res.report["reference"].startswith("onnxruntime")
    assert res.report["roofline_ratio"] >= 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8", "fp8"])
@pytest.mark.parametrize("name", ["tiny-gpt2", "hf-llama", "hf-bert", "hf-roberta-dynamo"])
def test_bundled_models_in_reduced_precision(name, precision):
    _run(name, precision)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8", "fp8"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "hf-gpt2", "hf-gpt2-dynamo",
                                  "hf-llama-dynamo", "hf-bert-dynamo"])
def test_other_bundled_models_in_reduced_precision(name, precision):
    _run(name, precision)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_left_padding_under_sdpa_masks_rows_whole_and_stays_finite(precision):
    """TorchScript's sdpa Llama with torch's own feeds (batch 3, seq 11, three left-padded
    positions): -inf masks make those query rows NaN, which the graph's IsNaN guard makes 0;
    every logit must stay finite (a 0 / 0 past the last column made the whole padded
    sequence NaN) and match onnxruntime, and torch wherever a token is not padding."""
    expected = np.load(DATA / "hf-llama-sdpa.expected.npz")
    feeds = {k: expected[k] for k in ("input_ids", "attention_mask")}
    res = lpusim.run_onnx(DATA / "hf-llama-sdpa.onnx", feeds, precision=precision,
                          dims={"batch": 3, "seq": 11})
    out, want = res.outputs["logits"], expected["logits"]
    assert np.isfinite(out).all()
    assert res.report["errors"]["logits"]["max_rel"] <= TOL[precision]
    keep = feeds["attention_mask"].astype(bool)
    err = np.abs(out[keep] - want[keep]).max() / np.abs(want[keep]).max()
    assert err <= TOL[precision], err


def test_a_longer_sequence_than_the_export():
    _run("hf-gpt2", "fp32", seq=37)


def test_space_is_freed_after_its_last_reader_in_time():
    """Regression: the exported Llama at seq 64 read rotary K after the last reader in graph
    order had finished, and its space was taken (7.8e-3 wrong in fp32); space is now freed
    when every node that read it is done."""
    _run("hf-llama", "fp32", seq=64)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_one_token_decode_step_with_a_kv_cache(name, precision):
    """The fused opset-23 Attention with past key/value inputs and present outputs (Llama:
    grouped-query, RoPE): a one-token step over 5 cached positions, logits and the updated
    caches against the reference."""
    from models.presets import build_preset

    m = build_preset(name, batch=1, seq=1, attention="opset23", past=True)
    res = lpusim.run_onnx(m, dims={"past_seq": 5}, precision=precision)
    assert {o for o in res.report["errors"] if o.startswith("present.")}, "no cache output"
    for out, err in res.report["errors"].items():
        assert err["max_rel"] <= TOL[precision], (name, precision, out, err)
