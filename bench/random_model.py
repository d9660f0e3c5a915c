#!/usr/bin/env python3
"""Writes random weights for the model folder DIR (which holds config.json and
tokenizer.json), as model.safetensors, the way transformers initialises an
untrained model. For speed and memory benchmarks, where values do not matter.

    python3 bench/random_model.py DIR [SEED]
"""
import sys

import torch
from transformers import AutoConfig, AutoModel

folder = sys.argv[1]
torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
model.save_pretrained(folder, safe_serialization=True)
print(f"random {model.config.model_type} weights written to {folder}")
