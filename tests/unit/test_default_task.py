"""The default job's reward cannot be gamed by echoing the question (a measured failure of a peer)."""

import re

from omegaconf import OmegaConf

from rlvr.config import compose
from rlvr.data import load_problems
from rlvr.sandbox import ProcessVerifier, ScoreRequest


def test_echoed_question_scores_zero_on_the_default_task():
    cfg = compose([])
    assert cfg.data.name == "mix"
    problems = [p for p in load_problems(OmegaConf.to_container(cfg.data.train, resolve=True)) if p.family != "letters"][:20]
    requests, expected = [], []
    for p in problems:
        expr = re.search(r"(-?\d+(?:\s*[-+*]\s*-?\d+)+)", p.question).group(1)
        requests += [
            ScoreRequest(expr, p.answer, p.answer_type),  # the bare echo
            ScoreRequest(f"The answer is \\boxed{{{expr}}}.", p.answer, p.answer_type),  # the echo, boxed
            ScoreRequest(f"{expr} = {p.answer}. The answer is \\boxed{{{p.answer}}}.", p.answer, p.answer_type),
        ]
        expected += [0.0, 0.0, 1.0]
    with ProcessVerifier(OmegaConf.to_container(cfg.verifier.terms), num_workers=2, timeout_s=10) as verifier:
        results, stats = verifier.score(requests)
    assert [r.reward for r in results] == expected
    assert stats.get("timeout", 0) == 0
