"""The held-out evaluation's figures (`rlvr.train.evaluate`), from a generator that scripts each
prompt's results: accuracy over prompts and per family, pass@k for every k up to n."""

import pytest
from omegaconf import OmegaConf

from rlvr.generation.base import Rollouts
from rlvr.types import Problem, Trajectory


class ScriptedResults:
    """Greedy (n=1): problem i right iff greedy[i]; sampled (n>1): the pattern in sampled[i],
    returned interleaved, as an engine may return them."""

    def __init__(self, greedy, sampled):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, problems, ns, sampling, seed) -> Rollouts:
        pats = [[g] for g in self.greedy] if ns[0] == 1 else self.sampled
        assert [len(p) for p in pats] == list(ns)
        ts = [Trajectory([1], [2], correct=bool(c), group=g) for j in range(max(ns)) for g, p in enumerate(pats) if j < len(p) for c in [p[j]]]
        return Rollouts(ts, counts={})


def evaluated(greedy, sampled, problems):
    from rlvr.train.evaluate import evaluate

    cfg = OmegaConf.create({"eval": {"max_tokens": 16, "n_samples": len(sampled[0])}, "rollout": {"temperature": 1.0, "top_p": 1.0}})
    per_prompt = []
    m = evaluate(ScriptedResults(greedy, sampled), problems, cfg, seed=0, per_prompt=per_prompt)
    return m, per_prompt


PROBLEMS = [Problem("fa/0/0", "q0", "1"), Problem("fa/0/1", "q1", "1"), Problem("fb/0/0", "q2", "1")]


def test_evaluate_means_over_prompts_and_per_family():
    # greedy: 1, 0, 1 -> accuracy 2/3 over prompts (NOT the mean of family means (0.5 + 1) / 2 = 0.75)
    m, _ = evaluated([1, 0, 1], [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], PROBLEMS)
    assert m["eval/accuracy"] == pytest.approx(2 / 3)
    assert m["eval/accuracy/fa"] == pytest.approx(0.5)
    assert m["eval/accuracy/fb"] == pytest.approx(1.0)


def test_evaluate_pass_at_k_counts_every_success_and_reports_every_k_up_to_n():
    # successes of n=4: 2, 0, 4
    # pass@1 = mean(c/n) = (0.5 + 0 + 1)/3 = 0.5
    # pass@2 = mean(1 - C(4-c,2)/C(4,2)) = ((1 - 1/6) + 0 + 1)/3 = 11/18
    # pass@4 = (1 + 0 + 1)/3 = 2/3 (n - c < k gives 1)
    m, per_prompt = evaluated([1, 0, 1], [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], PROBLEMS)
    assert m["eval/pass@1"] == pytest.approx(0.5)
    assert m["eval/pass@2"] == pytest.approx(11 / 18)
    assert m["eval/pass@4"] == pytest.approx(2 / 3)
    assert m["eval/pass@4/fa"] == pytest.approx(0.5)
    assert [r["successes"] for r in per_prompt] == [2, 0, 4]


def test_evaluate_says_what_it_runs_before_it_generates(caplog):
    """Minutes on a large eval.size (up to 1,042 s in the records) with no line and the training bar still."""
    import logging

    told = []

    class Announced(ScriptedResults):
        def generate(self, problems, ns, sampling, seed) -> Rollouts:
            told.append(caplog.text)
            return super().generate(problems, ns, sampling, seed)

    from rlvr.train.evaluate import evaluate

    cfg = OmegaConf.create({"eval": {"max_tokens": 16, "n_samples": 4}, "rollout": {"temperature": 1.0, "top_p": 1.0}})
    with caplog.at_level(logging.INFO, logger="rlvr"):
        evaluate(Announced([1, 0, 1], [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]), PROBLEMS, cfg, seed=0)
    assert "held-out evaluation: 3 prompts, greedy, then 4 samples each" in told[0]
