#!/usr/bin/env python3
"""Loads an adapter ftl saved with PEFT's own loader and scores it with PyTorch.

    python3 bench/peft_check.py BASE_MODEL_DIR RUN_DIR/adapter DEV_TSV [--max-len 64]

BASE_MODEL_DIR is the Hugging Face folder the run started from; the adapter
folder holds adapter_config.json, adapter_model.safetensors and ftl's
head.safetensors (the classification head, with its label names and pooling
in the file's metadata). Prints one JSON line: the dev accuracy PyTorch gets
with PeftModel.from_pretrained, to compare with the accuracy in the run's
summary.json. Labels in DEV_TSV are label indices (SST-2's 0/1).
"""
import argparse
import json

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("adapter")
ap.add_argument("dev")
ap.add_argument("--max-len", type=int, default=64)
args = ap.parse_args()

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
tok = AutoTokenizer.from_pretrained(args.base)
model = AutoModel.from_pretrained(args.base, torch_dtype=torch.float32)
model = PeftModel.from_pretrained(model, args.adapter).to(dev).eval()

with safe_open(f"{args.adapter}/head.safetensors", "pt") as f:
    meta = f.metadata()
    weight = f.get_tensor("classifier.weight").to(dev)
    bias = f.get_tensor("classifier.bias").to(dev) if "classifier.bias" in f.keys() else None
pooling = meta.get("pooling", "mean")

rows = []
with open(args.dev, encoding="utf-8") as f:
    next(f)
    for line in f:
        text, label = line.rstrip("\n").rsplit("\t", 1)
        rows.append((text.strip(), int(label)))

correct = 0
with torch.no_grad():
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=args.max_len,
                  return_tensors="pt").to(dev)
        hidden = model(**enc).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = pooled @ weight.T + (bias if bias is not None else 0)
        labels = torch.tensor([l for _, l in chunk], device=dev)
        correct += (logits.argmax(-1) == labels).sum().item()

print(json.dumps({"adapter": args.adapter, "pooling": pooling, "rows": len(rows),
                  "peft_accuracy": correct / len(rows)}))
