"""Reward functions for verifiable rewards.

Everything here is a pure function of strings.  The functions run *inside* the
verifier's worker processes (see :mod:`rlvr.verifier`), which give each item a
hard wall-clock deadline, a memory limit and crash isolation.  Nothing in this
module imports Ray, and math-verify is imported lazily (only the ``expression``
and ``any`` answer types need it).

Security rule: model output is untrusted.  This module never calls ``eval``,
``exec``, ``sympy.sympify`` or ``sympy.parse_expr`` on model text.  Numeric
answers are parsed by regular expressions into :class:`fractions.Fraction`;
symbolic answers go through math-verify's LaTeX parser (latex2sympy2, a
grammar-based parser that does not evaluate Python).  Only ``answer_type="any"``
also enables math-verify's plain-expression extractor, which hands a string
made only of digits, spaces and ``+-*/^().`` characters to ``parse_expr``.

See docs/verifier.md for the full specification of the rules below.
"""

from __future__ import annotations

import functools
import importlib
import re
import math
import numbers
import threading
from fractions import Fraction
from typing import Callable, NamedTuple

__all__ = [
    "ANSWER_TYPES",
    "BadRewardValue",
    "DECIDES_CORRECTNESS",
    "REWARD_FUNCTIONS",
    "REWARD_STYLES",
    "call_reward",
    "NumericLiteral",
    "check_answer_parsable",
    "exact_reward",
    "extract_boxed",
    "extract_final_answer",
    "format_reward",
    "load_reward_fn",
    "math_reward",
    "normalize_choice",
    "parse_numeric_literal",
]

ANSWER_TYPES = ("number", "expression", "choice", "string", "any")

# Final answers longer than this are never an answer; they are rejected before
# any parsing (a defence against 1 MB "answers" and parser blow-ups).
MAX_ANSWER_CHARS = 1000
# A numeric literal (after normalisation) longer than this is rejected.
MAX_NUMBER_CHARS = 120
# Deepest bracket nesting ((, [, { together) handed to math-verify.
MAX_NESTING = 10
# A completion is taken as its own final answer only if it is one short line.
MAX_BARE_ANSWER_CHARS = 100

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
# Final-answer extraction
# --------------------------------------------------------------------------

_BOX_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
_BOX_START = re.compile(r"\\(?:boxed|fbox)\b")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE = re.compile(r"(?i)\banswer\s*(?:is|:|=)\s*:?[ \t]*\n?[ \t]*")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def extract_boxed(text: str) -> list[str] | None:
    r"""Contents of every outermost, brace-balanced ``\boxed{...}``/``\fbox{...}``.

    One linear pass over the text.  Escaped braces ``\{``/``\}`` do not count
    for balancing.  A box nested inside another box is part of the outer
    box's content.  An unclosed box is ignored.  Returns ``None`` when the text
    contains no box command at all (so callers can tell "no box" from
    "only unclosed boxes", which returns ``[]``).
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    out: list[str] = []
    stack: list[int] = []  # content start for a box, -1 for a plain group
    open_boxes = 0
    for m in _BOX_TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == "\\" and len(tok) == 2:  # \{ or \}
            continue
        if tok == "{":
            stack.append(-1)
        elif tok == "}":
            if not stack:
                continue
            start = stack.pop()
            if start >= 0:
                open_boxes -= 1
                if open_boxes == 0:
                    out.append(text[start : m.start()])
        else:  # a box opening
            stack.append(m.end())
            open_boxes += 1
    return out


def _strip_wrappers(ans: str) -> str:
    """Remove decoration around an answer: whitespace, ``$``/``\\(``/``\\[``
    math delimiters, markdown bold, a nested ``\\boxed{}`` and a final period."""
    s = ans.strip()
    for _ in range(4):
        before = s
        s = s.strip().strip("*").strip()
        if s.endswith("."):
            s = s[:-1].rstrip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$").strip()
        for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(a) and s.endswith(b):
                s = s[len(a) : len(s) - len(b)].strip()
        boxed = extract_boxed(s)
        if boxed and len(boxed) == 1 and _BOX_START.match(s) and s.rstrip().endswith("}"):
            inner = boxed[0]
            # only unwrap when the box spans the whole string
            if re.fullmatch(r"\\(?:boxed|fbox)\s*\{" + re.escape(inner) + r"\}", s, re.S):
                s = inner.strip()
        if s == before:
            break
    return s


def _answer_key(ans: str) -> str:
    """Key used to decide whether two marked answers are "the same"."""
    if len(ans) > 4 * MAX_ANSWER_CHARS:
        return ans  # not an answer anyway (rejected by _finish)
    return re.sub(r"\s+", "", _strip_wrappers(ans))


def extract_final_answer(completion: str) -> str | None:
    r"""The clearly marked final answer of a completion, or ``None``.

    Rules, in order (the first rule that applies decides):

    1. **Boxed / GSM8K markers.**  Collect the contents of every outermost
       brace-balanced ``\boxed{...}`` (or ``\fbox{...}``) and the rest of the
       line after every ``####``.  If there is at least one, they must all be
       the same answer (compared after stripping whitespace, ``$`` and a final
       period); then that answer is returned.  If they differ (e.g.
       ``\boxed{44} \boxed{45}``, or ``\boxed{45}`` plus ``#### 44``) the
       answer is ambiguous and ``None`` is returned: a policy must not be able
       to list candidates.  If the text has box commands but none of them is
       closed, ``None`` (the output was truncated).
    2. **Answer phrases.**  ``answer is X`` / ``answer: X`` / ``answer = X``
       (case-insensitive, so "The final answer is", "Answer:"), X running to
       the end of that line and cut at the first sentence end (a period
       followed by whitespace).  A phrase whose X contains another phrase
       ("Answer: The final answer is 45") defers to the inner one.  If
       several phrases give different answers ("the answer is 44 or the
       answer is 45"), ``None``.
    3. **Bare answer.**  A completion that is a single line of at most 100
       characters is its own final answer (``"45"``, ``"$\frac12$"``).

    The result is stripped of ``$``/``\(``/``\[`` delimiters, markdown bold and
    a final period.  An empty answer (``\boxed{}``) gives ``None``; so does an
    answer longer than 1000 characters.
    """
    if not isinstance(completion, str) or not completion:
        return None
    marked: list[str] = []
    boxed = extract_boxed(completion)
    if boxed is not None:
        if not boxed:
            return None
        marked.extend(boxed)
    if "####" in completion:
        marked.extend(m.group(1) for m in _GSM8K.finditer(completion))
    if marked:
        keys = {_answer_key(a) for a in marked}
        if len(keys) != 1:
            return None
        return _finish(marked[-1])

    has_phrase = "nswer" in completion or "NSWER" in completion  # fast pre-check for 1 MB texts
    phrases = list(_ANSWER_PHRASE.finditer(completion)) if has_phrase else []
    if phrases:
        answers: list[str | None] = []
        for i, m in enumerate(phrases):
            rest = completion[m.end() : m.end() + 2 * MAX_ANSWER_CHARS]
            rest = rest.split("\n", 1)[0]
            cut = _SENTENCE_END.search(rest)
            if cut is not None:
                rest = rest[: cut.start()]
            if i + 1 < len(phrases) and phrases[i + 1].start() < m.end() + len(rest):
                between = completion[m.end() : phrases[i + 1].start()]
                if not re.search(r"[\d$\\]", between):
                    continue  # "Answer: the final answer is 45": the inner phrase decides
                rest = between  # "answer is 44 or the answer is 45": two answers
            answers.append(_finish(rest))
        keys = {_answer_key(a) if a else "" for a in answers}
        if len(keys) != 1 or not answers[-1]:
            return None
        return answers[-1]

    bare = completion.strip()
    if bare and len(bare) <= MAX_BARE_ANSWER_CHARS and "\n" not in bare:
        return _finish(bare)
    return None


def _finish(ans: str) -> str | None:
    if len(ans) > 4 * MAX_ANSWER_CHARS:
        return None
    s = _strip_wrappers(ans)
    if not s or len(s) > MAX_ANSWER_CHARS:
        return None
    return s


def _gold(answer: str) -> str:
    """Gold answers may be given bare (``45``) or marked (``#### 45``,
    ``\\boxed{45}``, a full GSM8K solution); marked ones are unwrapped."""
    if not isinstance(answer, str):
        answer = str(answer)
    if "####" in answer or "\\boxed" in answer or "\\fbox" in answer:
        got = extract_final_answer(answer)
        if got is not None:
            return got
    return _strip_wrappers(answer)


# --------------------------------------------------------------------------
# Numeric literals
# --------------------------------------------------------------------------


class NumericLiteral(NamedTuple):
    value: Fraction
    percent: bool  # written with %, \% or "percent"
    decimals: int | None  # digits after the decimal point, None if not a decimal


# Words that may not follow a number as a "unit": they turn the answer into a
# list of candidates ("45 or forty-four") or a commentary.
_STOP_WORDS = frozenset(
    """or and not no nor but maybe either neither wait actually vs versus plus minus
    times than is isn equals equal approx approximately about around if else also
    zero one two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty
    sixty seventy eighty ninety hundred thousand million billion half quarter third
    thirds halves""".split()
)

_TEXT_CMD = re.compile(r"\\(?:text|textrm|textit|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,!;:>]|\\quad|\\qquad|\\thinspace")
_CURRENCY = "$£€¥₹"
_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_DEC = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_FRAC_ARG = r"[+-]?\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(
    r"(?P<sign>[+-])?\s*"
    r"(?:"
    rf"\\frac\s*\{{\s*(?P<fn>{_FRAC_ARG})\s*\}}\s*\{{\s*(?P<fd>{_FRAC_ARG})\s*\}}"
    r"|\\frac\s*(?P<sn>\d)\s*(?P<sd>\d)"
    r"|(?P<an>\d+)\s*/\s*(?P<ad>\d+)"
    rf"|(?P<dec>{_DEC})"
    r")"
    r"\s*(?P<pct>%|percent\b|per\s+cent\b)?"
    r"(?P<unit>(?:\s*[A-Za-z]+\.?){0,3})"
)
_VAR_PREFIX = re.compile(r"^[A-Za-z]\s*=\s*")


def _normalize_number_text(s: str) -> str:
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "$")
    s = s.replace("\\left", "").replace("\\right", "")
    s = _SPACING.sub("", s)
    s = s.replace("\\ ", " ").replace("~", " ")
    for _ in range(2):
        s = _TEXT_CMD.sub(lambda m: " " + m.group(1) + " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", " degrees", s)
    return s.strip()


def _to_fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def parse_numeric_literal(text: str) -> NumericLiteral | None:
    r"""Parse a *numeric literal* answer; ``None`` if it is anything else.

    Accepted: an optional sign, then one of an integer (``45``, ``1,234``,
    ``1{,}234``), a decimal (``3.5``, ``.5``), ``a/b`` with integers, or
    ``\frac{a}{b}`` / ``\dfrac`` / ``\tfrac`` / ``\frac12``; optionally
    followed by a percent sign (``%``, ``\%``, "percent") and by at most three
    unit words made of letters only (``cm``, ``\text{ dollars}``, ``degrees``).
    Also accepted around the literal: a currency sign (``$``, ``\$``, ``£``,
    ``€``), ``x =`` with a single-letter variable, LaTeX spacing and math
    delimiters.  Unit words may not be conjunctions or number words ("or",
    "and", "forty"), so ``45 or 46`` and ``45 or forty-four`` are not literals.
    Anything with an operator, a second number, or an equation
    (``61 - 16``, ``61-16=45``, ``44, 45, 46``, ``10^{10}``) is rejected.
    """
    if not isinstance(text, str):
        return None
    s = _strip_wrappers(text)
    if not s or len(s) > MAX_ANSWER_CHARS:
        return None
    s = _normalize_number_text(s)
    s = _VAR_PREFIX.sub("", s, count=1)
    sign = ""
    if s[:1] in "+-" and s[1:2] and s[1:].lstrip()[:1] in _CURRENCY:
        sign, s = s[0], s[1:].lstrip()
    if s[:1] and s[0] in _CURRENCY:
        s = s[1:].lstrip()
    if sign and s[:1] in "+-":
        return None
    s = sign + s
    if len(s) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER_RE.fullmatch(s)
    if m is None:
        return None
    unit = m.group("unit") or ""
    for word in re.findall(r"[A-Za-z]+", unit):
        if word.lower() in _STOP_WORDS or len(word) > 15:
            return None
    decimals = None
    try:
        if m.group("fn") is not None:
            num, den = Fraction(m.group("fn")), Fraction(m.group("fd"))
            value = num / den
        elif m.group("sn") is not None:
            value = Fraction(int(m.group("sn")), int(m.group("sd")))
        elif m.group("an") is not None:
            value = Fraction(int(m.group("an")), int(m.group("ad")))
        else:
            dec = m.group("dec")
            value = _to_fraction(dec)
            if "." in dec:
                decimals = len(dec.split(".", 1)[1])
    except (ZeroDivisionError, ValueError):
        return None
    if m.group("sign") == "-":
        value = -value
    return NumericLiteral(value, bool(m.group("pct")), decimals)


def _close(a: NumericLiteral, av: Fraction, b: NumericLiteral, bv: Fraction) -> bool:
    if av == bv:
        return True
    # Rounding rule: a decimal written with d >= 2 digits after the point
    # matches a value that it rounds (d digits are not enough to write the
    # other value exactly, and the difference is at most half a unit in the
    # last place).  1/3 vs 0.33 -> yes; 0.5 vs 0.50 -> exact; 2 vs 2.01 -> no.
    for x, xv, yv in ((a, av, bv), (b, bv, av)):
        d = x.decimals
        if d is not None and d >= 2:
            scale = 10**d
            if (yv * scale).denominator != 1 and abs(xv - yv) * scale * 2 <= 1:
                return True
    return False


def numbers_match(pred: NumericLiteral, gold: NumericLiteral) -> bool:
    """Exact rational comparison, with the decimal rounding rule and with a
    percent literal read either as itself or divided by 100 (``45%`` matches
    gold ``45`` and gold ``0.45``)."""
    pvals = [pred.value] + ([pred.value / 100] if pred.percent else [])
    gvals = [gold.value] + ([gold.value / 100] if gold.percent else [])
    return any(_close(pred, pv, gold, gv) for pv in pvals for gv in gvals)


# --------------------------------------------------------------------------
# Choices and strings
# --------------------------------------------------------------------------

_CHOICE_RE = re.compile(
    r"(?i:option|choice)?\s*(?:\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Za-z])\s*[.):]?)"
)


def normalize_choice(text: str | None, choices: str = "ABCDE") -> str | None:
    """A single option letter (``B``, ``(B)``, ``b)``, ``Option B``,
    ``\\text{B}``), upper-cased, or ``None``.  Anything more (``B) 42``,
    ``A or B``) is not a choice."""
    if not isinstance(text, str):
        return None
    s = _strip_wrappers(text)
    for _ in range(2):
        s = _TEXT_CMD.sub(lambda m: m.group(1), s).strip()
    s = s.strip("*").strip()
    if len(s) > 20:
        return None
    m = _CHOICE_RE.fullmatch(s)
    if m is None:
        return None
    letter = next(g for g in m.groups() if g).upper()
    return letter if letter in choices.upper() else None


def _normalize_text(text: str) -> str:
    s = _strip_wrappers(text)
    for _ in range(2):
        s = _TEXT_CMD.sub(lambda m: m.group(1), s)
    return re.sub(r"\s+", " ", s).strip().casefold()


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


_POW_GROUP = re.compile(r"\^\s*\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}|\^\s*(\d+)")
_FACTORIAL = re.compile(r"(\d+)\s*!")


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
    for m in _POW_GROUP.finditer(s):
        exp = m.group(1) if m.group(1) is not None else m.group(2)
        if "^" in exp and not re.search(r"[A-Za-z]", exp.replace("\\cdot", "").replace("\\times", "")):
            return "power tower"
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
    if gp is not None and pp is not None:
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


def math_reward(completion: str, answer: str, answer_type: str = "number", **kwargs) -> float:
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
    gold = _gold(answer)
    if answer_type == "number":
        g = parse_numeric_literal(gold)
        if g is None:
            raise ValueError(f"gold answer is not a numeric literal: {gold[:80]!r}")
        pred = extract_final_answer(completion)
        if pred is None:
            return 0.0
        p = parse_numeric_literal(pred)
        return 1.0 if p is not None and numbers_match(p, g) else 0.0
    if answer_type == "expression":
        pred = extract_final_answer(completion)
        if pred is None:
            return 0.0
        return 1.0 if _expression_match(pred, gold) else 0.0
    if answer_type == "choice":
        choices = kwargs.get("choices", "ABCDE")
        g = normalize_choice(gold, choices)
        if g is None:
            raise ValueError(f"gold answer is not a choice letter: {gold[:80]!r}")
        pred = extract_final_answer(completion)
        return 1.0 if pred is not None and normalize_choice(pred, choices) == g else 0.0
    if answer_type == "string":
        return exact_reward(completion, answer, answer_type)
    raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


def _any_reward(completion: str, answer: str) -> float:
    mv = _mv()
    gold = _gold(answer)
    g = _parse_latex(gold)
    if not g:
        g = tuple(mv.parse(gold, parsing_timeout=_mv_timeout()))
    if not g:
        raise ValueError("gold answer is not parsable by math-verify")
    p = mv.parse(completion, parsing_timeout=_mv_timeout())
    if not p:
        return 0.0
    return 1.0 if mv.verify(list(g), p, timeout_seconds=_mv_timeout()) else 0.0


def exact_reward(completion: str, answer: str, answer_type: str = "string", **kwargs) -> float:
    """1.0 if the final answer equals the gold answer as a string, after
    normalisation (math delimiters, ``\\text{}``, markdown bold and a final
    period removed, whitespace collapsed, case folded).  For ``choice`` both
    sides are normalised to an option letter first."""
    pred = extract_final_answer(completion)
    if pred is None:
        return 0.0
    gold = _gold(answer)
    if answer_type == "choice":
        choices = kwargs.get("choices", "ABCDE")
        g = normalize_choice(gold, choices)
        return 1.0 if g is not None and normalize_choice(pred, choices) == g else 0.0
    g = _normalize_text(gold)
    return 1.0 if g and _normalize_text(pred) == g else 0.0


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
    **kwargs,
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


REWARD_FUNCTIONS: dict[str, Callable[..., float]] = {
    "math": math_reward,
    "exact": exact_reward,
    "format": format_reward,
}
# Whether each builtin says the answer is right (so that "correct" reads it) or shapes the reward.
DECIDES_CORRECTNESS: dict[str, bool] = {"math": True, "exact": True, "format": False}


REWARD_STYLES = ("rlvr", "trl", "verl")


class BadRewardValue(ValueError):
    """A reward function returned something other than one finite number for the completion."""


def _one_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadRewardValue(f"{what} returned {type(value).__name__} {str(value)[:40]!r}, not a number")
    v = float(value)
    if not math.isfinite(v):
        raise BadRewardValue(f"{what} returned {v}, not a finite number")
    return v


def call_reward(
    fn: Callable, style: str, completion: str, answer: str, answer_type: str,
    prompt: str = "", meta: dict | None = None, kwargs: dict | None = None,
) -> float:
    """One completion's reward from a term written in ``style``:

    - ``rlvr``: ``fn(completion, answer, answer_type, **kwargs) -> float``;
    - ``trl``:  ``fn(prompts=[prompt], completions=[completion], **{column: [value]}, **kwargs) -> [float]``
      (TRL's batched signature, called with a batch of one; the columns are the row's other fields,
      and ``answer`` when the row has none);
    - ``verl``: ``fn(data_source, completion, ground_truth, extra_info, **kwargs) -> float | {"score": float, ...}``.

    Raises :class:`BadRewardValue` for None, NaN, a non-number or a list of the wrong length.
    """
    kwargs = kwargs or {}
    meta = meta or {}
    if style == "rlvr":
        return _one_number(fn(completion, answer, answer_type, **kwargs), "reward function")
    if style == "trl":
        columns = {k: [v] for k, v in meta.items() if k not in ("prompts", "completions")}
        columns.setdefault("answer", [answer])
        out = fn(prompts=[prompt], completions=[completion], **columns, **kwargs)
        if not isinstance(out, (list, tuple)) or len(out) != 1:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise BadRewardValue(f"trl-style reward returned {got} for 1 completion (expected a list of 1 float)")
        return _one_number(out[0], "trl-style reward")
    if style == "verl":
        out = fn(meta.get("data_source") or "", completion, answer, meta.get("extra_info"), **kwargs)
        if isinstance(out, dict):
            if "score" not in out:
                raise BadRewardValue(f"verl-style reward returned a dict without 'score' (keys: {sorted(out)[:8]})")
            out = out["score"]
        return _one_number(out, "verl-style reward")
    raise ValueError(f"unknown reward style {style!r}; known: {REWARD_STYLES}")


def load_reward_fn(spec: str) -> Callable[..., float]:
    """A built-in name (``math``, ``exact``, ``format``) or ``module:function``
    (``function`` may be a dotted attribute path).  The function is called as
    ``fn(completion, answer, answer_type, **kwargs)`` and must return a
    finite number."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward function spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown reward function {spec!r}: use one of {sorted(REWARD_FUNCTIONS)} or 'module:function'"
        )
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"bad reward function spec {spec!r}: expected 'module:function'")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj


def check_answer_parsable(answer: str, answer_type: str) -> str | None:
    """Error message if a dataset's gold ``answer`` cannot be used with
    ``answer_type``, else ``None``.  Called by the data loader on every row.
    ``expression`` and ``any`` parse with math-verify (in the caller's
    process: call it on trusted dataset text only)."""
    if answer_type not in ANSWER_TYPES:
        return f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}"
    if answer is None or not isinstance(answer, str):
        return f"answer must be a string, got {type(answer).__name__}"
    gold = _gold(answer)
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
