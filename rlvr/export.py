"""Turn a training checkpoint into a plain Hugging Face model folder (loadable by transformers and
vLLM), or, for a LoRA run, into a peft adapter folder (`adapter=True`)."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rlvr.checkpoint import checkpoint_named, validate_checkpoint, write_failure
from rlvr.lora import LoraSettings, add_adapters, is_adapter
from rlvr.models import publish_folder, resolve_model_path

log = logging.getLogger(__name__)


def policy_state_dict(ckpt: Path, lora: bool = False) -> dict[str, torch.Tensor]:
    """The policy's full-precision weights from the DeepSpeed shards of a checkpoint (any ZeRO
    stage); a LoRA checkpoint holds the adapters only."""
    learner_dir = ckpt / "learner"
    model_states = learner_dir / "policy" / "mp_rank_00_model_states.pt"
    # ZeRO-3 writes per-rank model states only, or a mp_rank_00 file of empty placeholders
    module = torch.load(model_states, map_location="cpu", weights_only=False)["module"] if model_states.exists() else None
    if module is None or any(t.numel() == 0 for t in module.values()):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(learner_dir), tag="policy", exclude_frozen_parameters=lora)
    return module


IN_PLACE_PREFIX = ".rlvr-export-"


class ExportWriteError(OSError):
    """The export's folder could not be written (a full disk, mostly)."""


def fill_in_place(build_into, out_dir: Path) -> None:
    """Fill an existing empty folder: built in a hidden folder inside it (the same filesystem, so
    each file moves by rename), then moved in file by file with config.json (a peft adapter's
    adapter_config.json) last, so the folder is a model only once it is whole. Renaming a new folder over it instead failed for ".", a bind mount
    or a link to a folder, and replaced the folder the user's shell and permissions were on."""
    tmp = Path(tempfile.mkdtemp(prefix=IN_PLACE_PREFIX, dir=out_dir))
    try:
        build_into(tmp)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name in ("config.json", "adapter_config.json")):
            os.replace(entry, out_dir / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, adapter: bool = False) -> Path:
    """Write `out_dir`: the trained policy as a plain HF folder (LoRA adapters merged into the base),
    or with `adapter=True` a peft adapter folder that `PeftModel.from_pretrained(base, out_dir)` loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # transformers only logs this and writes nothing
        raise ValueError(f"export target {out_dir} is a file, not a folder: give a new or an empty folder")
    for leftover in out_dir.glob(f"{IN_PLACE_PREFIX}*") if out_dir.is_dir() else ():  # an export into it that crashed
        shutil.rmtree(leftover, ignore_errors=True)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        # Writing into an earlier export mixed the two: transformers applied a stale adapter_config.json's
        # adapter on top of newer merged weights, and vLLM ignored it.
        raise ValueError(f"export target {out_dir} is not empty: give a new or an empty folder")
    ckpt = checkpoint_named(ckpt) or ckpt  # a run dir: its latest checkpoint
    problem = validate_checkpoint(ckpt)
    if problem:
        raise ValueError(f"{ckpt} is not a complete checkpoint: {problem}")
    cfg = OmegaConf.load(ckpt / "config.yaml")
    lora = LoraSettings.from_config(OmegaConf.select(cfg, "model.lora"))
    if adapter and not lora.enabled:
        raise ValueError(f"{ckpt} trained full weights (model.lora.rank = 0): there is no adapter to export; drop --adapter")
    base = resolve_model_path(cfg.model.path, cfg.get("cache_dir"))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if lora.enabled:
        model = add_adapters(model, lora)
    try:
        weights = policy_state_dict(ckpt, lora.enabled)
    except (RuntimeError, KeyError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        # sizes match the manifest (validate_checkpoint passed) but the bytes do not load
        raise ValueError(f"{ckpt}: the policy's weights under learner/ do not load (a corrupt file?): {type(e).__name__}: {e}") from e
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if lora.enabled:
        missing = [k for k in missing if is_adapter(k)]  # the frozen base comes from model.path, not the checkpoint
    else:
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match {base}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if lora.enabled and not adapter:
        model = model.merge_and_unload()
    if not adapter:
        model = model.to(getattr(torch, cfg.model.dtype))

    def build(tmp: Path) -> None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder as mkdir would make it, not mkdtemp's owner-only one
        model.save_pretrained(tmp)  # a PeftModel writes adapter_config.json and adapter_model.safetensors only
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)

    try:
        if out_dir.is_dir():
            fill_in_place(build, out_dir)
        else:
            publish_folder(build, out_dir)
    except Exception as e:  # a full disk: safetensors' SafetensorError is no OSError; nothing half-written is left
        raise ExportWriteError(f"writing {out_dir} failed {write_failure(out_dir, e)}") from e
    log.info("exported %s to %s%s", ckpt, out_dir, " (peft adapter)" if adapter else "")
    return out_dir
