"""Final answers: extraction from a completion, numeric literals, choice letters, normalised strings.

Pure functions of strings, run inside the sandbox workers (:mod:`rlvr.sandbox`). Model output is
untrusted: numbers are parsed by regular expressions into :class:`fractions.Fraction`, never by
``eval`` or SymPy. See docs/verifier.md for the rules.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import NamedTuple

ANSWER_TYPES = ("number", "expression", "choice", "string", "any", "code")

# Final answers longer than this are never an answer; they are rejected before
# any parsing (a defence against 1 MB "answers" and parser blow-ups).
MAX_ANSWER_CHARS = 1000
# A numeric literal (after normalisation) longer than this is rejected.
MAX_NUMBER_CHARS = 120
# Deepest bracket nesting ((, [, { together) handed to math-verify.
MAX_NESTING = 10
# A completion is taken as its own final answer only if it is one short line.
MAX_BARE_ANSWER_CHARS = 100

# --------------------------------------------------------------------------
# Final-answer extraction
# --------------------------------------------------------------------------

_BOX_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
_BOX_START = re.compile(r"\\(?:boxed|fbox)\b")
_GSM8K = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*)")  # exactly four: five or more are a markdown heading
_ANSWER_PHRASE = re.compile(r"(?i)\banswer\s*(?:\*\*)?\s*(?:is|:|=)\s*:?(?:\*\*)?[ \t]*\n?[ \t]*")  # **Answer**: 7, **Final Answer:**
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
    r"""Key used to decide whether two marked answers are "the same": without whitespace, ``$`` or
    ``\$``; a numeric literal by its value and percent sign (``18``, ``18.00``, ``1,800`` written
    twice are one answer; a unit word is no second answer)."""
    if len(ans) > 4 * MAX_ANSWER_CHARS:
        return ans  # not an answer anyway (rejected by _finish)
    stripped = _strip_wrappers(ans)
    literal = parse_numeric_literal(stripped)
    if literal is not None:
        return f"{literal.value}{'%' if literal.percent else ''}"
    return re.sub(r"\s+|\\?\$", "", stripped)


def after_thinking(completion: str) -> str | None:
    """What follows a reasoning model's thinking (the text after the last ``</think>``; the whole
    completion when it has none), or None when a ``<think>`` never closed: the output was cut before
    any answer, and tries made while thinking are not answers."""
    if "</think>" in completion:
        return completion.rsplit("</think>", 1)[1]
    return None if "<think>" in completion else completion


def extract_final_answer(completion: str) -> str | None:
    r"""The clearly marked final answer of a completion, or ``None``.

    Rules, in order (the first rule that applies decides), read after the last ``</think>`` when
    there is one (a ``<think>`` never closed gives ``None``):

    1. **Boxed / GSM8K markers.**  Collect the contents of every outermost
       brace-balanced ``\boxed{...}`` (or ``\fbox{...}``) and the rest of the
       line after every ``####`` that holds a numeric literal (exactly four
       ``#``: ``#### Step 1`` is a markdown heading).  If there is at least one,
       they must all be the same answer (compared after stripping whitespace,
       ``$``, ``\$`` and a final period; numeric literals by value, so ``18``
       and ``18.00`` agree); then that answer is returned.  If they differ (e.g.
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
    completion = after_thinking(completion)
    if completion is None:
        return None
    marked: list[str] = []
    boxed = extract_boxed(completion)
    if boxed is not None:
        if not boxed:
            return None
        marked.extend(boxed)
    if "####" in completion:
        # GSM8K's marker holds a number; "#### Step 1" or "#### Final Answer" is a markdown heading
        marked.extend(m.group(1) for m in _GSM8K.finditer(completion) if parse_numeric_literal(_strip_wrappers(m.group(1))) is not None)
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
            lines = rest.split("\n")
            rest = lines[0]
            if not rest.strip(" \t*"):  # "the final answer is:" then a blank line, then the answer
                rest = next((line for line in lines[1:3] if line.strip(" \t*")), "")
            cut = _SENTENCE_END.search(rest)
            if cut is not None:
                rest = rest[: cut.start()]
            if i + 1 < len(phrases) and phrases[i + 1].start() < m.end() + len(rest):
                between = completion[m.end() : phrases[i + 1].start()]
                if not re.search(r"[\d$\\]", between):
                    continue  # "Answer: the final answer is 45": the inner phrase decides
                rest = between  # "answer is 44 or the answer is 45": two answers
            answers.append(_finish(rest))
        if any(a and re.search(r"[\d$\\]", a) for a in answers):
            # "we check our answer is reasonable" is no answer beside "the answer is 7" (it vetoed it);
            # answers without math in them stay when no phrase has any ("the answer is yes")
            answers = [a for a in answers if a and re.search(r"[\d$\\]", a)]
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


def gold_answer(answer: str) -> str:
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
    # False for a fraction that is not in lowest terms (90/2, \frac{6}{4}, \frac{1.5}{3}): it restates
    # a division rather than answering it, so a ``number`` answer written so scores 0
    lowest_terms: bool = True
    unit: str = ""  # the words after it ("cm", "dollars"); a single letter may be a variable (5i, 3x)


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
    # math delimiters around the number inside the answer: "$18$ dollars", "\(18\) dollars"
    s = re.sub(r"(?<!\\)\$([^$]+?)(?<!\\)\$", r"\1", s)
    s = re.sub(r"\\\((.*?)\\\)", r"\1", s)
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
    lowest_terms = True
    try:
        parts = next(((m.group(n), m.group(d)) for n, d in (("fn", "fd"), ("sn", "sd"), ("an", "ad")) if m.group(n) is not None), None)
        if parts is not None:
            num, den = Fraction(parts[0]), Fraction(parts[1])
            value = num / den
            whole = num.denominator == 1 and den.denominator == 1 and "." not in parts[0] + parts[1]
            lowest_terms = whole and abs(den) > 1 and math.gcd(int(num), int(den)) == 1
        else:
            dec = m.group("dec")
            value = _to_fraction(dec)
            if "." in dec:
                decimals = len(dec.split(".", 1)[1])
    except (ZeroDivisionError, ValueError):
        return None
    if m.group("sign") == "-":
        value = -value
    return NumericLiteral(value, bool(m.group("pct")), decimals, lowest_terms, " ".join(unit.split()))


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


def normalize_text(text: str) -> str:
    s = _strip_wrappers(text)
    for _ in range(2):
        s = _TEXT_CMD.sub(lambda m: m.group(1), s)
    return re.sub(r"\s+", " ", s).strip().casefold()

