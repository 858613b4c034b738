"""`rollout.backend=hf`: transformers `generate`, one request at a time."""

from __future__ import annotations

import functools
from typing import Iterable

import torch

from rlvr.rollout.engines import EngineConfig, SamplingConfig
from rlvr.types import GenerationRequest


class HFEngine:
    """transformers `generate`: slow, but has no moving parts; for debugging and for GPU boxes without vLLM."""

    def __init__(self, cfg: EngineConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sleeps = cfg.sleep_mode and self.device == "cuda"
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, cfg.dtype))
        self.model.to(self.device).eval()
        folder = self.model.generation_config
        self.eos_ids = {self.tokenizer.eos_token_id} | set(folder.eos_token_id if isinstance(folder.eos_token_id, list) else [folder.eos_token_id])
        self.eos_ids -= {None}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # Only the request's sampling settings act, as in vLLM: generate() fills every setting a call
        # leaves unset from the folder's generation_config.json (a repetition_penalty, top_k,
        # no_repeat_ngram_size), which changed μ away from the softmax the learner recomputes.
        self.model.generation_config = GenerationConfig(bos_token_id=folder.bos_token_id, eos_token_id=sorted(self.eos_ids), pad_token_id=pad)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - the engine lives as long as its actor
    def _stop_criteria(self, stop: tuple[str, ...]):
        """Built once per set of stop strings: it tabulates the whole vocabulary (0.4 s for 49,152
        tokens, at every generate call of a multi-turn run); it keeps no state between calls."""
        from transformers import StopStringCriteria

        return StopStringCriteria(self.tokenizer, list(stop))

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[dict]]:
        greedy = sampling.temperature <= 0
        stop_criteria = self._stop_criteria(tuple(sampling.stop)) if sampling.stop else None
        results = []
        for r in requests:
            if isinstance(r.prompt, str):
                ids = self.tokenizer(r.prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(self.device)
            else:
                ids = torch.tensor([list(r.prompt)], device=self.device)
            max_new = r.max_tokens or sampling.max_tokens
            # With stop strings, one sequence per call: in a group, one that meets a stop string is
            # padded while its siblings go on, and where it stopped is not reported. Greedy: one
            # sequence, copied (generate() refuses several without beam search).
            group = []
            for count in [1] if greedy else [1] * r.n if sampling.stop else [r.n]:
                out = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),  # else a prompt token equal to the pad id is masked out
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=0,  # transformers' default is 50; the learner's π is the full softmax
                    max_new_tokens=max_new,
                    num_return_sequences=count,
                    **(dict(stopping_criteria=[stop_criteria]) if stop_criteria else {}),
                    output_scores=True,
                    return_dict_in_generate=True,
                )
                scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                for seq, lp in zip(out.sequences, scores):
                    resp = seq[ids.shape[1] :].tolist()
                    end = next((i + 1 for i, t in enumerate(resp) if t in self.eos_ids), len(resp))  # a group pads after EOS
                    resp = resp[:end]
                    # a stop string the last allowed token completes is a stop, as vLLM reports it
                    stopped = bool(resp and resp[-1] in self.eos_ids) or (
                        stop_criteria is not None and (len(resp) < max_new or bool(stop_criteria(seq[None, : ids.shape[1] + end], None)[0])))
                    group.append(
                        dict(
                            prompt_ids=ids[0].tolist(),
                            response_ids=resp,
                            text=self.tokenizer.decode(resp, skip_special_tokens=True),
                            logprobs=lp[:end].float().tolist(),
                            finish_reason="stop" if stopped else "length",
                        )
                    )
            if greedy:
                group = [{k: list(v) if isinstance(v, list) else v for k, v in group[0].items()} for _ in range(r.n)]
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
