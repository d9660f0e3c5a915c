#!/usr/bin/env python3
"""Golden values for ftl's encoder parity tests, computed with Hugging Face transformers.

Writes one safetensors file per model under tests/fixtures/parity/:
  input_ids, attention_mask  [batch, seq] int64  the reference tokenizer's output
  hidden                     [batch, seq, d]      final hidden states (last_hidden_state)
  pooled                     [batch, d]           mean over attention_mask (sentence-transformers)
  relative_buckets           [1201] int64         MPNet only: bucket of relative position -600..600
and, in the header metadata, the sentences, max_tokens and the versions used.

Run from the crate root, fp32 on CPU (about a minute):
  python3 -m venv /root/refenv && /root/refenv/bin/pip install torch transformers safetensors
  scripts/fetch-test-models.sh /root/ftl-models
  /root/refenv/bin/python scripts/reference/parity.py /root/ftl-models tests/fixtures/parity

Versions the checked-in fixtures were made with: torch 2.15.0, transformers 5.24.0, safetensors 0.8.0.
"""

import json
import sys
from pathlib import Path

import safetensors.torch
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

MAX_TOKENS = 64

SENTENCES = [
    "Hello world.",
    "A",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "café naïve — 東京",
    "What?! No way... (really) — yes: 100% #1 @home & co.",
    "Ünïcödé ßtraße, an emoji 🙂, tabs\tand\nnewlines.",
    "Fine-tuning compact language models is cheap; evaluating them well is not.",
    # Longer than MAX_TOKENS, so truncation applies.
    " ".join(
        ["Pipelines describe data, models and training runs in one readable file,"]
        + ["and each stage can be checked before anything expensive starts running"] * 6
    ),
]

MODELS = {"minilm_l6": "bert", "mpnet_base": "mpnet"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)


def main(models_dir: Path, out_dir: Path) -> None:
    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, model_type in MODELS.items():
        src = models_dir / name
        tokenizer = AutoTokenizer.from_pretrained(src)
        model, info = AutoModel.from_pretrained(
            src, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        assert not info["missing_keys"], info
        model.eval()
        enc = tokenizer(
            SENTENCES, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        tensors = {
            "input_ids": enc["input_ids"].to(torch.int64).contiguous(),
            "attention_mask": enc["attention_mask"].to(torch.int64).contiguous(),
            "hidden": hidden.float().contiguous(),
            "pooled": mean_pool(hidden, enc["attention_mask"]).float().contiguous(),
        }
        if model_type == "mpnet":
            relative = torch.arange(-600, 601, dtype=torch.long)
            buckets = model.encoder.relative_position_bucket(relative, num_buckets=32)
            tensors["relative_buckets"] = buckets.to(torch.int64).contiguous()
        metadata = {
            "model": name,
            "sentences": json.dumps(SENTENCES, ensure_ascii=False),
            "max_tokens": str(MAX_TOKENS),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        path = out_dir / f"{name}.safetensors"
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)
        print(f"{path}: ids {tuple(enc['input_ids'].shape)}, hidden {tuple(hidden.shape)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
