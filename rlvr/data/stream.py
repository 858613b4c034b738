"""A seeded, resumable stream of problems, and a problem's chat messages and rendered prompt."""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from rlvr.data.problems import Problem, to_plain


def build_messages(problem: Problem, system_prompt: str | None = None, fewshot: list[dict] | None = None) -> list[dict]:
    """Chat messages: a system turn (the data's own, else ``system_prompt``), few-shot user/assistant
    pairs (``{"question": ..., "response": ...}`` each), the data's earlier turns, then the question."""
    messages: list[dict] = []
    data_system = [content for role, content in problem.context if role == "system"]
    if data_system:
        messages.append({"role": "system", "content": "\n\n".join(data_system)})
    elif system_prompt:
        messages.append({"role": "system", "content": str(system_prompt)})
    for i, shot in enumerate(to_plain(fewshot) or []):
        if not isinstance(shot, Mapping) or not isinstance(shot.get("question"), str) or not isinstance(shot.get("response"), str):
            raise ValueError(f"fewshot[{i}] must be {{'question': str, 'response': str}}, got {shot!r}")
        messages.append({"role": "user", "content": shot["question"]})
        messages.append({"role": "assistant", "content": shot["response"]})
    messages.extend({"role": role, "content": content} for role, content in problem.context if role != "system")
    messages.append({"role": "user", "content": problem.question})
    return messages



def _digest(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode(errors="surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _fingerprint(problems: list[Problem]) -> str:
    return _digest(p.uid for p in problems)


def _content_fingerprint(problems: list[Problem]) -> str:
    """Of what the problems say, not only their ids: a file's edited rows, or a task's new kwargs,
    keep every uid (`file:<name>:<row>`, `<task>/<seed>/<index>`)."""
    return _digest(part for p in problems for part in (p.question, p.answer, p.answer_type, *(c for turn in p.context for c in turn)))


class PromptStream:
    """Endless, seeded, resumable stream over a list of problems.

    Each epoch is a permutation drawn with (seed, epoch) (the identity when
    ``shuffle=False``).  A batch may span an epoch boundary: the next epoch
    starts inside it, so there is never a silent empty epoch.  ``epoch`` is
    the epoch the next problem comes from and ``position`` how many problems
    of that epoch were already served; the rollover happens as soon as an
    epoch is used up.
    """

    def __init__(self, problems: list[Problem], seed: int, shuffle: bool = True):
        if not problems:
            raise ValueError("PromptStream needs at least one problem")
        self._problems = list(problems)
        self._seed = int(seed)
        self._shuffle = bool(shuffle)
        self._epoch = 0
        self._position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self._problems)))
        if self._shuffle:
            random.Random(f"rlvr-prompt-stream:{self._seed}:{epoch}").shuffle(order)
        return order

    def __len__(self) -> int:
        return len(self._problems)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    def next(self, k: int) -> list[Problem]:
        if k < 0:
            raise ValueError(f"batch size must be >= 0, got {k}")
        out = []
        for _ in range(k):
            out.append(self._problems[self._order[self._position]])
            self._position += 1
            if self._position == len(self._order):
                self._epoch += 1
                self._position = 0
                self._order = self._permutation(self._epoch)
        return out

    def state_dict(self) -> dict:
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self._seed,
            "shuffle": self._shuffle,
            "num_problems": len(self._problems),
            **self._fingerprints,
        }

    @functools.cached_property
    def _fingerprints(self) -> dict:
        # once: the problems never change, and each step's batch records the stream's state (1.6 s a
        # step for a million rows when hashed every time)
        return {"fingerprint": _fingerprint(self._problems), "content": _content_fingerprint(self._problems)}

    def mismatch(self, d: dict) -> str | None:
        """What differs between a checkpoint's stream state and this stream, or None. (A state
        from before the content fingerprint has none, and is checked on the rest.)"""
        mine = self.state_dict()
        for key in ("num_problems", "fingerprint", "content", "seed", "shuffle"):
            if key in d and d[key] != mine[key]:
                return (f"the training prompts differ from the checkpoint's: {key} is {d[key]!r} there, {mine[key]!r} here "
                        "(a different dataset, data settings or seed)")
        return None

    def load_state_dict(self, d: dict) -> None:
        problem = self.mismatch(d)
        if problem is not None:
            raise ValueError(f"PromptStream state does not match this stream: {problem}")
        epoch, position = int(d["epoch"]), int(d["position"])
        if epoch < 0 or not 0 <= position < len(self._problems):
            raise ValueError(f"bad PromptStream state: epoch={epoch}, position={position}, {len(self._problems)} problems")
        self._epoch = epoch
        self._position = position
        self._order = self._permutation(epoch)


def message_builder(cfg: DictConfig):
    """Problem -> the data's chat messages: system prompt, few-shot turns, question."""
    fewshot = OmegaConf.to_container(cfg.data.fewshot, resolve=True) if cfg.data.fewshot else None
    return lambda problem: build_messages(problem, cfg.data.system_prompt, fewshot)


def prompt_renderer(cfg: DictConfig, model_path: str, as_ids: bool = False):
    """Problem -> prompt text: system prompt, few-shot turns and question through the chat template;
    with ``as_ids``, that text's token ids (what crosses to the engines: they never re-tokenize)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    messages_of = message_builder(cfg)

    def render(problem: Problem) -> str:
        return tokenizer.apply_chat_template(messages_of(problem), tokenize=False, add_generation_prompt=True)

    if as_ids:  # the template writes any special tokens itself
        return lambda problem: tokenizer.encode(render(problem), add_special_tokens=False)
    return render
