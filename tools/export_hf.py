"""Export tiny Hugging Face transformers models to ONNX with torch.onnx.export, so the real
exporter's graph patterns are tested in CI without torch (models/data/hf-*.onnx).

    python tools/export_hf.py            # rewrites every models/data/hf-*.onnx
    python tools/export_hf.py hf-gpt2-dynamo --out DIR

Nothing is downloaded: each model is built from a small config with random initialisation
under a fixed torch seed. Needs torch and transformers (not project dependencies; CI never runs
this script); the dynamo exports need onnxscript too. The committed files were made with:

    python 3.11.7, torch 2.13.0+cpu, transformers 5.24.0, onnx 1.23.2, onnxscript 0.7.2
    hf-gpt2, hf-llama, hf-bert: the TorchScript-based torch.onnx.export (dynamo=False),
        opset 17, eager attention;
    hf-*-dynamo: torch.onnx.export(dynamo=True) (torch.export, the default exporter since
        torch 2.9), opset 20; transformers' default (sdpa) attention for the encoders, eager
        for the decoders (their sdpa graphs differ from torch in the query rows that left
        padding masks completely: 0.07 to 0.31 in the logits there, onnxruntime against
        torch); hf-roberta-dynamo adds RoBERTa (position ids from a cumulative sum over
        input_ids != pad);
    hf-llama-sdpa: the TorchScript exporter at opset 17 with sdpa attention, which masks
        with -inf and guards the Softmax with IsNaN/Where (rows that left padding masks
        whole are NaN, then 0); torch's outputs differ from onnxruntime's in those rows
        only, as above;
    all with dynamic axes batch/seq on every input and output.

Beside each model, NAME.expected.npz holds torch's inputs and outputs for a shape other than
the traced one (batch 3, seq 11, one left-padded row), so tests can compare a runtime against
torch without torch. The exact versions used are also written into each file's metadata_props
(lpusim.export.torch, lpusim.export.transformers).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import onnx

OPSET = 17  # the TorchScript exports
OPSET_DYNAMO = 20  # torch 2.13's default for dynamo=True
SEED = 0
DATA_DIR = Path(__file__).resolve().parent.parent / "models" / "data"


# export name -> (model family, dynamo exporter[, attention implementation])
EXPORTS = {"hf-gpt2": ("hf-gpt2", False), "hf-llama": ("hf-llama", False),
           "hf-bert": ("hf-bert", False), "hf-gpt2-dynamo": ("hf-gpt2", True),
           "hf-llama-dynamo": ("hf-llama", True), "hf-bert-dynamo": ("hf-bert", True),
           "hf-roberta-dynamo": ("hf-roberta", True), "hf-llama-sdpa": ("hf-llama", False, "sdpa")}


def _configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig

    return {
        "hf-roberta": RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, vocab_size=256, type_vocab_size=1,
                                    max_position_embeddings=66, pad_token_id=1),
        "hf-gpt2": GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                              n_inner=128, bos_token_id=0, eos_token_id=0, use_cache=False),
        "hf-llama": LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                max_position_embeddings=64, rope_theta=10000.0,
                                use_cache=False),
        "hf-bert": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, vocab_size=256, max_position_embeddings=64,
                              type_vocab_size=2),
    }


def export(name: str, out_dir: Path) -> Path:
    import torch
    import transformers
    from transformers import BertModel, GPT2LMHeadModel, LlamaForCausalLM, RobertaModel

    family, dynamo, *attn = EXPORTS[name]
    config = _configs()[family]
    # sdpa, transformers' default, for the dynamo encoders; eager for the rest (the decoders'
    # sdpa graphs give other values than torch in fully masked rows: left padding), unless
    # the export names its own
    config._attn_implementation = attn[0] if attn else \
        "sdpa" if dynamo and family in ("hf-bert", "hf-roberta") else "eager"
    torch.manual_seed(SEED)
    cls = {"hf-gpt2": GPT2LMHeadModel, "hf-llama": LlamaForCausalLM, "hf-bert": BertModel,
           "hf-roberta": RobertaModel}[family]
    model = cls(config).eval()

    batch, seq = 2, 8
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    dyn = {0: "batch", 1: "seq"}
    if family == "hf-roberta":
        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                             return_dict=False)
                return out[0], out[1]

        args = (ids, torch.ones_like(ids))
        in_names = ["input_ids", "attention_mask"]
        out_names = ["last_hidden_state", "pooler_output"]
        axes = {n: dyn for n in in_names} | {"last_hidden_state": dyn,
                                             "pooler_output": {0: "batch"}}
    elif family == "hf-bert":
        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, token_type_ids, attention_mask):
                out = self.m(input_ids=input_ids, token_type_ids=token_type_ids,
                             attention_mask=attention_mask, return_dict=False)
                return out[0], out[1]

        args = (ids, torch.zeros_like(ids), torch.ones_like(ids))
        in_names = ["input_ids", "token_type_ids", "attention_mask"]
        out_names = ["last_hidden_state", "pooler_output"]
        axes = {n: dyn for n in in_names} | {"last_hidden_state": dyn,
                                             "pooler_output": {0: "batch"}}
    else:
        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False, return_dict=False)[0]

        args = (ids, torch.ones_like(ids))
        in_names, out_names = ["input_ids", "attention_mask"], ["logits"]
        axes = {"input_ids": dyn, "attention_mask": dyn, "logits": dyn}

    # eval() on the wrapper: the exporter restores the wrapper's mode recursively afterwards,
    # which would otherwise leave the inner model in training mode (dropout on).
    wrapped = Wrapped(model).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(wrapped, args, input_names=in_names,
                                        output_names=out_names, dynamic_axes=axes,
                                        opset_version=OPSET_DYNAMO, dynamo=True)
            proto = program.model_proto
        else:
            torch.onnx.export(wrapped, args, buf, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
            proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, {
        "lpusim.export.tool": f"torch.onnx.export(dynamo={dynamo})",
        "lpusim.export.torch": torch.__version__,
        "lpusim.export.transformers": transformers.__version__,
        "lpusim.export.config": config.to_json_string(use_diff=True).replace("\n", " "),
    })
    onnx.checker.check_model(proto, full_check=True)
    path = out_dir / f"{name}.onnx"
    onnx.save(proto, path)

    # Torch's own outputs on a shape other than the traced one, with padding in the mask, kept
    # beside the model so tests can check any runtime against torch without torch installed.
    b2, s2 = 3, 11
    ids2 = torch.randint(0, config.vocab_size, (b2, s2), generator=g)
    mask2 = torch.ones_like(ids2)
    mask2[1, :3] = 0  # left padding in one row
    if config.pad_token_id is not None and family == "hf-roberta":
        ids2[1, :3] = config.pad_token_id  # RoBERTa's positions skip pad tokens
    feeds = {"input_ids": ids2, "attention_mask": mask2}
    if family == "hf-bert":
        types2 = torch.zeros_like(ids2)
        types2[:, s2 // 2:] = 1
        feeds["token_type_ids"] = types2
    with torch.no_grad():
        outs = wrapped(*[feeds[n] for n in in_names])
    outs = outs if isinstance(outs, tuple) else (outs,)
    arrays = {k: v.numpy() for k, v in feeds.items()}
    arrays |= {n: o.numpy() for n, o in zip(out_names, outs, strict=True)}
    np.savez(out_dir / f"{name}.expected.npz", **arrays)
    _check_with_onnxruntime(path, arrays, in_names, out_names)
    return path


def _check_with_onnxruntime(path, arrays, in_names, out_names) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(out_names, {n: arrays[n] for n in in_names})
    for n, g in zip(out_names, got, strict=True):
        err = float(np.max(np.abs(g - arrays[n])))
        if not err < 1e-4:
            raise AssertionError(f"{path.name}: {n} differs from torch by {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("names", nargs="*", default=list(EXPORTS),
                        help=f"exports to write (default all): {', '.join(EXPORTS)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in EXPORTS]
    if unknown:
        parser.error(f"unknown export {unknown[0]!r}; choose from {', '.join(EXPORTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        path = export(name, args.out)
        print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
