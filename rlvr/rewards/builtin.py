"""The builtin reward terms: ``math`` (the answer-type rules, math-verify for expressions), ``exact`` and ``format``.

math-verify is imported lazily (only the ``expression`` and ``any`` answer types need it) and only its
LaTeX parser sees model text (a grammar-based parser that does not evaluate Python). Only
``answer_type="any"`` also enables math-verify's plain-expression extractor, which hands a string made
only of digits, spaces and ``+-*/^().`` characters to ``parse_expr``.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Callable

from rlvr.rewards.answers import (
    ANSWER_TYPES,
    MAX_ANSWER_CHARS,
    MAX_NESTING,
    extract_final_answer,
    gold_answer,
    normalize_choice,
    normalize_text,
    numbers_match,
    parse_numeric_literal,
)
from rlvr.rewards.code import check_tests_parsable, code_tests_limits, code_tests_reward

# Per-call timeout handed to math-verify's own SIGALRM timer.  ``None``: the
# caller enforces the deadline (the verifier workers run every item under
# their own timer and the pool's hard kill).  math-verify's SIGALRM timer only
# works in a process's main thread, so it is never used from other threads.
_MATH_VERIFY_TIMEOUT_S: int | None = None


def configure(math_verify_timeout_s: int | None = None) -> None:
    """Set math-verify's own per-call timeout (``None`` = disabled).

    The verifier workers leave it disabled: they run every item under an
    interval timer of their own plus the pool's hard deadline, which also
    covers code that SIGALRM cannot interrupt (long C loops in big-integer
    arithmetic).
    """
    global _MATH_VERIFY_TIMEOUT_S
    _MATH_VERIFY_TIMEOUT_S = math_verify_timeout_s


def _mv_timeout() -> int | None:
    if _MATH_VERIFY_TIMEOUT_S and threading.current_thread() is threading.main_thread():
        return _MATH_VERIFY_TIMEOUT_S
    return None


# --------------------------------------------------------------------------
# math-verify (lazy)
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _mv():
    import logging

    import math_verify
    from math_verify import grader, parser

    # We pass timeouts of None on purpose (the worker enforces deadlines);
    # silence math-verify's one-time warning about it.
    grader.TIMEOUT_WARNING_SHOWN = True
    parser.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


# Answers in the shapes that datasets use.  Parsing them once before the
# workers are forked builds most of the LaTeX parser's (ANTLR) prediction
# cache in the zygote, so that every worker, including every replacement,
# starts with it instead of paying up to a second on its first few items.
_WARMUP_PAIRS = [
    (r"\frac{1}{2}", "0.5"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    (r"\sqrt[3]{2}", r"2^{1/3}"),
    ("(1,2]", r"\{1, x\}"),
    (r"(-\infty, 3) \cup [4, \infty)", r"[0,1)\cup(2,3]"),
    (r"\{1,2,3\}", r"\{3,2\}"),
    ("1, 2", "2, 1"),
    ("(3, -4)", "(3,-4)"),
    ("x^2+2x+1", "(x+1)^2"),
    ("3x-7", "-7+3x"),
    (r"\frac{3\pi}{4}", r"\frac{6\pi}{8}"),
    (r"2\pi", r"360^\circ"),
    (r"\sin x", r"\cos(\frac{\pi}{2}-x)"),
    (r"e^{2}", r"\exp(2)"),
    (r"\log_2 8", r"\ln 8 / \ln 2"),
    ("x = 3", "y=3"),
    ("x > 2", "2 < x"),
    (r"x \leq 5", r"x \in (-\infty, 5]"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}"),
    (r"3 + 4i", r"4i+3"),
    (r"\text{Yes}", r"\text{(A)}"),
    (r"5\%", r"0.05"),
    (r"\dfrac{a+b}{c}", r"\tfrac{a}{c} + \tfrac{b}{c}"),
    (r"|x-1|", r"\left| 1 - x \right|"),
    (r"\binom{5}{2}", r"10"),
    (r"5!", "120"),
    (r"a_1 + b^{n-1}", r"a_{1}+b^{-1+n}"),
]


def warmup() -> None:
    """Import math-verify and parse/verify answers of the common shapes so
    that lazy set-up happens before fork, not inside the first scored items
    of every worker."""
    mv = _mv()
    cfg = [mv.LatexExtractionConfig()]
    for gold, pred in _WARMUP_PAIRS:
        g = mv.parse("$" + gold + "$", extraction_config=cfg, parsing_timeout=None)
        p = mv.parse("$" + pred + "$", extraction_config=cfg, parsing_timeout=None)
        mv.verify(g, p, timeout_seconds=None)
    _parse_latex.cache_clear()


@functools.lru_cache(maxsize=1024)
def _parse_latex(latex: str) -> tuple:
    mv = _mv()
    return tuple(
        mv.parse(
            "$" + latex + "$",
            extraction_config=[mv.LatexExtractionConfig()],
            fallback_mode="no_fallback",
            parsing_timeout=_mv_timeout(),
        )
    )


_FACTORIAL = re.compile(r"(\d+)\s*!")
_CLOSING = {")": "(", "}": "{", "]": "["}


def _group_before(s: str, end: int) -> str:
    """The bracketed group closing at ``s[end]``, without its brackets ('' if unbalanced)."""
    close, depth = s[end], 0
    for i in range(end, -1, -1):
        depth += (s[i] == close) - (s[i] == _CLOSING[close])
        if depth == 0:
            return s[i + 1 : end]
    return ""


def _group_after(s: str, start: int) -> str:
    """The braced group opening at ``s[start]``, without its braces (the rest if unbalanced)."""
    depth = 0
    for i in range(start, len(s)):
        depth += (s[i] == "{") - (s[i] == "}")
        if depth == 0:
            return s[start + 1 : i]
    return s[start + 1 :]


def _powers(s: str):
    """(base group or '', exponent) of each ``^`` in ``s``: the exponent is its braced group (any
    depth) or the number or character after it; the base, a bracketed group closing right before."""
    for i, ch in enumerate(s):
        if ch != "^":
            continue
        j = i + 1
        while j < len(s) and s[j].isspace():
            j += 1
        if j < len(s) and s[j] == "{":
            exponent = _group_after(s, j)
        else:
            exponent = re.match(r"\d*", s[j:]).group() or s[j : j + 1]
        k = i - 1
        while k >= 0 and s[k].isspace():
            k -= 1
        yield (_group_before(s, k) if k >= 0 and s[k] in _CLOSING else ""), exponent


def _numeric(tex: str) -> bool:
    """No variable in it: SymPy would evaluate it (LaTeX commands such as \\left count as none)."""
    return not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", tex))


def _dangerous_latex(s: str) -> str | None:
    """Cheap screen for answers whose evaluation would explode (SymPy
    evaluates integer powers and factorials eagerly, in C loops that no
    signal can interrupt).  Returns a reason, or None."""
    # math-verify's LaTeX parser is super-linear in the nesting depth of
    # brackets: depth 12 takes seconds, depth 30 minutes.
    depth = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            if depth > MAX_NESTING:
                return "nesting"
        elif ch in ")}]":
            depth -= 1
    if s.count("^") > 16:
        return "powers"
    for base, exp in _powers(s):
        if "^" in exp and _numeric(exp):
            return "power tower"
        if "^" in base and _numeric(base + exp):  # (10^{99999})^{99999}: a tower written the other way
            inner = sum(len(d) for _, e in _powers(base) for d in re.findall(r"\d+", e))
            if inner + max((len(d) for d in re.findall(r"\d+", exp)), default=0) > 6:  # exponents' product past 10^6
                return "power of a power"
        for digits in re.findall(r"\d+", exp):
            if len(digits) > 5:
                return "huge exponent"
    for m in _FACTORIAL.finditer(s):
        if len(m.group(1)) > 3:
            return "huge factorial"
    if re.search(r"\d{1000,}", s):
        return "huge number"
    return None


def _expression_match(pred: str, gold: str) -> bool:
    gp = parse_numeric_literal(gold)
    pp = parse_numeric_literal(pred)
    # two numbers compare as numbers, unless a single letter follows one: in an expression 5i or 3x
    # is a product, not 5 with a unit (5 against gold 5i scored 1)
    if gp is not None and pp is not None and not any(len(x.unit) == 1 for x in (gp, pp)):
        return numbers_match(pp, gp)
    if _dangerous_latex(pred) is not None:
        return False
    mv = _mv()
    g = _parse_latex(gold)
    if not g:
        raise ValueError("gold answer is not parsable by math-verify")
    p = _parse_latex(pred)
    if not p:
        return False
    return bool(mv.verify(list(g), list(p), timeout_seconds=_mv_timeout()))


# --------------------------------------------------------------------------
# Reward functions
# --------------------------------------------------------------------------


def math_reward(completion: str, answer: str, answer_type: str = "number", choices: str = "ABCDE") -> float:
    """1.0 if the completion's final answer equals the gold ``answer``, else 0.0.

    ``answer_type`` (per dataset):

    - ``number``: the final answer (see :func:`extract_final_answer`) must be a
      numeric literal (:func:`parse_numeric_literal`); compared exactly as a
      rational, with the decimal rounding rule and the percent rule of
      :func:`numbers_match`.  Echoed questions, equations and candidate lists
      score 0.
    - ``expression``: the final answer is compared with math-verify (LaTeX
      parser only).  Numeric literals on both sides use the ``number`` rules.
      Accepts any expression equal to the gold, so it can be gamed by echoing
      the question: use ``number`` for numeric datasets.
    - ``choice``: a single option letter (kwarg ``choices``, default "ABCDE").
    - ``string``: normalised string equality (same as ``exact``).
    - ``any``: math-verify's default extraction over the *whole completion*
      (no final-answer marker needed).  Hackable; for evaluation parity with
      other tools only.

    Raises ``ValueError`` when the gold answer itself is not usable for the
    answer type (see :func:`check_answer_parsable`); the pool reports it as
    ``error:ValueError``.
    """
    if answer_type == "any":
        return _any_reward(completion, answer)
    gold = gold_answer(answer)
    if answer_type == "number":
        g = parse_numeric_literal(gold)
        if g is None:
            raise ValueError(f"gold answer is not a numeric literal: {gold[:80]!r}")
        pred = extract_final_answer(completion)
        if pred is None:
            return 0.0
        p = parse_numeric_literal(pred)
        return 1.0 if p is not None and p.lowest_terms and numbers_match(p, g) else 0.0
    if answer_type == "expression":
        pred = extract_final_answer(completion)
        if pred is None:
            return 0.0
        return 1.0 if _expression_match(pred, gold) else 0.0
    if answer_type == "choice":
        g = normalize_choice(gold, choices)
        if g is None:
            raise ValueError(f"gold answer is not a choice letter: {gold[:80]!r}")
        pred = extract_final_answer(completion)
        return 1.0 if pred is not None and normalize_choice(pred, choices) == g else 0.0
    if answer_type == "string":
        return exact_reward(completion, answer, answer_type)
    if answer_type == "code":
        raise ValueError("a code answer is scored by running its tests: use the code_tests reward")
    raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


def _any_reward(completion: str, answer: str) -> float:
    mv = _mv()
    gold = gold_answer(answer)
    g = _parse_latex(gold)
    if not g:
        g = tuple(mv.parse(gold, parsing_timeout=_mv_timeout()))
    if not g:
        raise ValueError("gold answer is not parsable by math-verify")
    p = mv.parse(completion, parsing_timeout=_mv_timeout())
    if not p:
        return 0.0
    return 1.0 if mv.verify(list(g), p, timeout_seconds=_mv_timeout()) else 0.0


def exact_reward(completion: str, answer: str, answer_type: str = "string", choices: str = "ABCDE") -> float:
    """1.0 if the final answer equals the gold answer as a string, after
    normalisation (math delimiters, ``\\text{}``, markdown bold and a final
    period removed, whitespace collapsed, case folded).  For ``choice`` both
    sides are normalised to an option letter first."""
    pred = extract_final_answer(completion)
    if pred is None:
        return 0.0
    gold = gold_answer(answer)
    if answer_type == "choice":
        g = normalize_choice(gold, choices)
        return 1.0 if g is not None and normalize_choice(pred, choices) == g else 0.0
    g = normalize_text(gold)
    return 1.0 if g and normalize_text(pred) == g else 0.0


DEFAULT_FORMAT_PATTERN = r"\\boxed\{"


@functools.lru_cache(maxsize=64)
def _compile(pattern: str, flags: int) -> re.Pattern:
    return re.compile(pattern, flags)


def format_reward(
    completion: str,
    answer: str = "",
    answer_type: str = "number",
    pattern: str = DEFAULT_FORMAT_PATTERN,
    bonus: float = 0.1,
    mode: str = "search",
    flags: int = re.DOTALL,
) -> float:
    """``bonus`` if the completion matches the regex ``pattern`` (``mode``
    ``search``, ``match`` or ``fullmatch``), else 0.  The default pattern
    rewards a ``\\boxed{`` answer.  The pattern comes from the config, the
    text from the model; a pattern with catastrophic backtracking is cut off
    by the pool's deadline like anything else."""
    if not isinstance(completion, str):
        return 0.0
    rx = _compile(pattern, flags)
    fn = {"search": rx.search, "match": rx.match, "fullmatch": rx.fullmatch}[mode]
    return float(bonus) if fn(completion) is not None else 0.0


REWARD_FUNCTIONS: dict[str, Callable[..., float | dict]] = {
    "math": math_reward,
    "exact": exact_reward,
    "format": format_reward,
    "code_tests": code_tests_reward,
}
# A builtin's check of its own option values (called with all of them, defaults filled), where it has one.
CHECK_OPTIONS: dict[str, Callable[..., object]] = {"code_tests": code_tests_limits}
# Whether each builtin says the answer is right (so that "correct" reads it) or shapes the reward.
DECIDES_CORRECTNESS: dict[str, bool] = {"math": True, "exact": True, "format": False, "code_tests": True}


def check_answer_parsable(answer: str, answer_type: str) -> str | None:
    """Error message if a dataset's gold ``answer`` cannot be used with
    ``answer_type``, else ``None``.  Called by the data loader on every row.
    ``expression`` and ``any`` parse with math-verify (in the caller's
    process: call it on trusted dataset text only)."""
    if answer_type not in ANSWER_TYPES:
        return f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}"
    if answer is None or not isinstance(answer, str):
        return f"answer must be a string, got {type(answer).__name__}"
    gold = gold_answer(answer)
    if not gold:
        return "empty answer"
    if len(gold) > MAX_ANSWER_CHARS:
        return f"answer longer than {MAX_ANSWER_CHARS} characters"
    if answer_type == "number":
        if parse_numeric_literal(gold) is None:
            return f"not a numeric literal: {gold[:80]!r}"
    elif answer_type == "choice":
        if normalize_choice(gold) is None:
            return f"not a choice letter A-E: {gold[:80]!r}"
    elif answer_type == "code":
        return check_tests_parsable(answer)
    elif answer_type in ("expression", "any"):
        if parse_numeric_literal(gold) is None:
            reason = _dangerous_latex(gold)
            if reason is not None:
                return f"answer rejected by the expression screen ({reason})"
            try:
                ok = bool(_parse_latex(gold))
            except Exception as e:  # pragma: no cover - math-verify swallows most
                return f"math-verify failed to parse: {type(e).__name__}"
            if not ok:
                return f"math-verify cannot parse: {gold[:80]!r}"
    return None
