"""Backend ``hf-classifier``: a Hugging Face sequence classifier that reads the context as text.

Not a published format: a simple way to plug in any single-logit classifier trained to read
(context, prompt) as one text.  The published V0 is backend ``v0`` (:mod:`rlvr.value.v0`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rlvr.value.context import UNC_MAX, UNC_MIN, Context, check_pairs, check_prompts, clip_prior, offline

CONFIG_FILE = "rlvr_value.json"


class HFClassifierValueModel:
    """A Hugging Face sequence classifier in a local folder that reads the context as text.

    Format: a folder that ``transformers`` loads with
    ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForSequenceClassification.from_pretrained``, with
    ``num_labels == 1``; ``sigmoid(logit)`` is the predicted success rate.
    The model reads one text per query: the last ``context_items`` context
    pairs, then the prompt::

        ### solved 0.75:
        <context prompt>
        ### solved 0.00:
        <context prompt>
        ### prompt:
        <query prompt>

    (truncated from the left to ``max_length`` tokens, so the query survives).
    An optional ``rlvr_value.json`` in the folder overrides ``context_items``,
    ``max_length`` and ``uncertainty``.  The checkpoint has no error model of
    its own, so the uncertainty is the constant ``uncertainty``.
    """

    @staticmethod
    def config_kwargs(value_cfg) -> dict:
        return {"path": value_cfg.hf_classifier.path}

    def __init__(
        self,
        path: str | None = None,
        context_size: int = 256,
        context_items: int = 8,
        max_length: int = 512,
        uncertainty: float = 0.25,
        batch_size: int = 16,
    ):
        if not path:
            raise ValueError("the hf-classifier value backend needs a model folder: set value.hf_classifier.path")
        path = os.path.expanduser(str(path))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"value.hf_classifier.path: model folder not found: {path}")
        cfg_file = Path(path) / CONFIG_FILE
        overrides = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        unknown = set(overrides) - {"context_items", "max_length", "uncertainty"}
        if unknown:
            raise ValueError(f"{cfg_file}: unknown keys {sorted(unknown)}")
        self.path = path
        self.context_items = int(overrides.get("context_items", context_items))
        self.max_length = int(overrides.get("max_length", max_length))
        self.uncertainty = float(min(UNC_MAX, max(UNC_MIN, overrides.get("uncertainty", uncertainty))))
        self.batch_size = int(batch_size)
        offline()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path} is not an hf-classifier value model (a transformers sequence-classification model "
                f"and its tokenizer): {e}"
            ) from e
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path}: an hf-classifier value model has a single logit, this one has {self.model.config.num_labels}")
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval().requires_grad_(False)
        self._ctx = Context(context_size)

    def render(self, prompt: str) -> str:
        items = list(zip(self._ctx.prompts, self._ctx.success))[-self.context_items :] if self.context_items > 0 else []
        parts = [f"### solved {y:.2f}:\n{x}" for x, y in items]
        parts.append(f"### prompt:\n{prompt}")
        return "\n".join(parts)

    @torch.inference_mode()
    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = check_prompts(prompts)
        texts = [self.render(p) for p in prompts]
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            )
            logits = self.model(**batch).logits.float()
            out.append(torch.sigmoid(logits[:, 0]))
        prior = torch.cat(out) if out else torch.zeros(0)
        return clip_prior(prior), torch.full((len(prompts),), self.uncertainty)

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        self._ctx.add(*check_pairs(prompts, success))

    def state_dict(self) -> dict:
        return {"backend": "hf-classifier", **self._ctx.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)
