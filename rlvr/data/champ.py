"""The ``champ`` source: the 270 competition problems of the ``champ-dataset`` package (for evaluation).

The answer type is chosen per problem (see :func:`_champ_answer`); ``answer_type`` in the config is
not used. The file is ordered by category, so ``limit`` takes a seeded sample (in file order)
rather than a prefix.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from rlvr.data.problems import DataSplitConfig, Problem, RowErrors, seeded_sample
from rlvr.rewards import check_answer_parsable, parse_numeric_literal

_CHAMP_MATH_WORDS = {"sqrt", "floor", "ceil", "sum", "prod", "log", "exp", "sin", "cos", "tan", "mod"}
_CHAMP_SHORT_WORDS = {"or", "no", "is", "of", "if", "at", "as", "be", "by", "in", "on", "to"}


def _is_prose_word(w: str) -> bool:
    w = w.lower()
    return w in _CHAMP_SHORT_WORDS or (len(w) >= 3 and w not in _CHAMP_MATH_WORDS)


def _champ_answer(raw: str) -> tuple[str, str]:
    """(gold answer, answer_type) for a CHAMP answer.

    CHAMP answers are free text.  Equivalent forms are reduced to the last,
    simplest one ("C(10, 5), or equivalently 252" -> "252"); approximations
    and "(i.e., ...)" glosses are dropped; "K is the only possible value" and
    "The limit exists and is equal to X" keep K / X.  The result is a
    ``number`` if it is a numeric literal, an ``expression`` if it is made of
    math only, else a ``string`` (normalised exact match: "Yes", "No",
    "No integer solutions", ...).  An ``expression`` that the verifier cannot
    parse becomes a ``string`` too (see :func:`_champ_rows`).
    """
    a = raw.strip()
    m = re.search(r",?\s*or (?:equivalently|an equivalent form such as)\s+(.+)$", a)
    if m:
        a = m.group(1).strip()
    a = re.sub(r",?\s*or approximately .*$", "", a)
    a = re.sub(r"\s*\((?:i\.e\.|none of|no such).*\)\s*$", "", a).strip()
    for pat in (
        r"(.+?) is the only possible value",
        r"The limit exists and is equal to (.+)",
        r"The only possible value for the limit is (.+)",
    ):
        m = re.fullmatch(pat, a)
        if m:
            a = m.group(1).strip()
            break
    if parse_numeric_literal(a) is not None:
        return a, "number"
    if any(_is_prose_word(w) for w in re.findall(r"[A-Za-z]+", a)):
        return a, "string"
    # CHAMP writes a binomial coefficient C(n, k), which math-verify reads as a product: a model's
    # \binom{n+1}{2m+1} scored 0 against "C(n+1, 2m+1)"
    return re.sub(r"\bC\(([^(),]+),\s*([^(),]+)\)", r"\\binom{\1}{\2}", a), "expression"


@functools.lru_cache(maxsize=1)
def _champ_rows() -> tuple[tuple[str, Any, str | None, str | None, str | None], ...]:
    """(identifier, question, answer, answer_type, error) per CHAMP problem,
    checked once per process (the expression check runs math-verify)."""
    try:
        import champ_dataset
    except ImportError:
        raise ImportError("data.source=champ needs the champ-dataset package") from None
    rows = []
    for ident, prob in champ_dataset.load("v0").problems.items():
        if not isinstance(prob.answer, str) or not prob.answer.strip():
            rows.append((ident, prob.text, None, None, "missing answer"))
            continue
        answer, answer_type = _champ_answer(prob.answer)
        reason = check_answer_parsable(answer, answer_type)
        if reason is not None and answer_type == "expression":
            # plain-text math the verifier's LaTeX parser rejects
            # ("2^floor(n/2)*floor(n/2)!"): compare as a normalised string
            answer_type = "string"
            reason = check_answer_parsable(answer, answer_type)
        if reason is not None:
            reason = f"answer {answer[:80]!r} cannot be used as answer_type={answer_type!r}: {reason}"
        rows.append((ident, prob.text, answer, answer_type, reason))
    return tuple(rows)


def load_champ(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    errors = RowErrors("champ-dataset v0", cfg.skip_bad_rows)
    out: list[Problem] = []
    for ident, question, answer, answer_type, reason in _champ_rows():
        if exclude and question in exclude:
            continue
        row = f"problem {ident}"
        if not isinstance(question, str) or not question.strip():
            errors.bad(row, "missing or empty prompt")
        elif reason is not None:
            errors.bad(row, reason)
        else:
            out.append(Problem(uid=f"champ:{ident}", question=question, answer=answer, answer_type=answer_type))
    errors.summary(len(out))
    if cfg.limit is not None and 0 <= int(cfg.limit) < len(out):
        # CHAMP is ordered by category (Combinatorics first): a plain prefix
        # would be one category.  Take a seeded sample, kept in file order.
        out = seeded_sample(out, int(cfg.limit), "champ", cfg.seed)
    return out
