"""Reward functions for verifiable rewards, one module per job.

- :mod:`~rlvr.rewards.answers`: the final answer of a completion, numeric literals, choices, strings;
- :mod:`~rlvr.rewards.builtin`: the builtin terms ``math``, ``exact`` and ``format``;
- :mod:`~rlvr.rewards.calling`: calling a term in the signature of rlvr, TRL or verl; ``module:function``;
- :mod:`~rlvr.rewards.spec`: a reward term as configured, and which terms decide "correct".

Everything here is a pure function of strings. The functions run *inside* the sandbox's worker
processes (:mod:`rlvr.sandbox`), which give each item a hard wall-clock deadline, a memory limit and
crash isolation; nothing here imports Ray. Security rule: model output is untrusted, and no function
here calls ``eval``, ``exec``, ``sympy.sympify`` or ``sympy.parse_expr`` on model text.
A new answer type or reward is one module here; the sandbox never changes for it.
See docs/verifier.md for the rules.
"""

from rlvr.rewards.answers import (
    ANSWER_TYPES,
    NumericLiteral,
    extract_boxed,
    extract_final_answer,
    normalize_choice,
    numbers_match,
    parse_numeric_literal,
)
from rlvr.rewards.builtin import (
    DECIDES_CORRECTNESS,
    REWARD_FUNCTIONS,
    check_answer_parsable,
    configure,
    exact_reward,
    format_reward,
    math_reward,
    warmup,
)
from rlvr.rewards.calling import REWARD_STYLES, BadRewardValue, call_reward, load_reward_fn
from rlvr.rewards.spec import RewardSpec, coerce_spec, correctness_terms

__all__ = [
    "ANSWER_TYPES",
    "BadRewardValue",
    "DECIDES_CORRECTNESS",
    "NumericLiteral",
    "REWARD_FUNCTIONS",
    "REWARD_STYLES",
    "RewardSpec",
    "call_reward",
    "check_answer_parsable",
    "coerce_spec",
    "configure",
    "correctness_terms",
    "exact_reward",
    "extract_boxed",
    "extract_final_answer",
    "format_reward",
    "load_reward_fn",
    "math_reward",
    "normalize_choice",
    "numbers_match",
    "parse_numeric_literal",
    "warmup",
]
