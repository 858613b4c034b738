"""Model sources: the tiny test model and the packaged SmolLM2 conversion."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.models import build_tiny_model, convert_smollm2


def test_tiny_model_builds_once_and_loads(tmp_path):
    path = build_tiny_model(tmp_path / "tiny")
    stamp = (path / "config.json").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "tiny") == path and (path / "config.json").stat().st_mtime_ns == stamp
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.decode(tok("What is 12 + 7?").input_ids) == "What is 12 + 7?"
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.head_dim == 64
    assert not list(tmp_path.glob("tiny.tmp-*"))  # built in a temp dir, then renamed


@pytest.mark.slow
def test_smollm2_conversion_is_plain_safetensors(tmp_path):
    path = convert_smollm2(tmp_path / "smol")
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template
