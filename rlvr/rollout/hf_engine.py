"""`rollout.backend=hf`: transformers `generate`, one request at a time."""

from __future__ import annotations

from typing import Iterable

import torch

from rlvr.rollout.engines import EngineConfig, SamplingConfig
from rlvr.types import GenerationRequest


class HFEngine:
    """transformers `generate`: slow, but has no moving parts; for debugging and for GPU boxes without vLLM."""

    def __init__(self, cfg: EngineConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sleeps = cfg.sleep_mode and self.device == "cuda"
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, cfg.dtype))
        self.model.to(self.device).eval()
        self.eos_ids = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[dict]]:
        results = []
        for r in requests:
            if isinstance(r.prompt, str):
                ids = self.tokenizer(r.prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(self.device)
            else:
                ids = torch.tensor([list(r.prompt)], device=self.device)
            max_new = r.max_tokens or sampling.max_tokens
            # With stop strings, one sequence per call: in a group, one that meets a stop string is
            # padded while its siblings go on, and where it stopped is not reported.
            group = []
            for count in [1] * r.n if sampling.stop else [r.n]:
                out = self.model.generate(
                    ids,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=sampling.top_p,
                    top_k=0,  # the model's generation_config may set top_k=50; the learner's π is the full softmax
                    max_new_tokens=max_new,
                    num_return_sequences=count,
                    **(dict(stop_strings=list(sampling.stop), tokenizer=self.tokenizer) if sampling.stop else {}),
                    output_scores=True,
                    return_dict_in_generate=True,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
                )
                scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                for seq, lp in zip(out.sequences, scores):
                    resp = seq[ids.shape[1] :].tolist()
                    end = next((i + 1 for i, t in enumerate(resp) if t in self.eos_ids), len(resp))  # a group pads after EOS
                    resp = resp[:end]
                    stopped = bool(resp and resp[-1] in self.eos_ids) or (bool(sampling.stop) and len(resp) < max_new)
                    group.append(
                        dict(
                            prompt_ids=ids[0].tolist(),
                            response_ids=resp,
                            text=self.tokenizer.decode(resp, skip_special_tokens=True),
                            logprobs=lp[:end].float().tolist(),
                            finish_reason="stop" if stopped else "length",
                        )
                    )
            results.append(group)
        return results

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each named tensor into the model. A name the model lacks is an error (it was skipped,
        leaving stale weights unseen), except a tied LM head, which is the embedding's tensor."""
        params = dict(self.model.named_parameters())
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        unknown = []
        with torch.no_grad():
            for name, tensor in weights:
                if name in params:
                    params[name].copy_(tensor.to(params[name].device, params[name].dtype))
                elif name not in tied:
                    unknown.append(name)
        if unknown:
            raise ValueError(f"the HF engine's model has no parameters named {unknown[:5]} ({len(unknown)} in all): "
                             "the learner's and the engine's models differ")

    def sleep(self) -> None:
        if self.sleeps:
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        if self.sleeps:
            self.model.to(self.device)
