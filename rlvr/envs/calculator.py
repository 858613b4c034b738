"""`env=calculator`: arithmetic the model may hand to a `calculate` tool.

The tool evaluates arithmetic with a parser (Python's `ast` builds the tree; only numbers, + - * /
// % ** and parentheses are walked), never with `eval`: its input is model output.
"""

from __future__ import annotations

import ast
import math
import operator

from rlvr.envs import Step
from rlvr.sandbox.messages import ScoreResult

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10**30


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("exponent too large")
        out = _BINARY[type(node.op)](left, right)
        if abs(out) > MAX_MAGNITUDE:
            raise ValueError("result too large")
        return out
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "23 * 47"
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse {expression!r}") from e
    out = _value(tree.body)
    if isinstance(out, complex) or not math.isfinite(out):  # (-8) ** (1/3), 1e999, 1e999 - 1e999
        raise ValueError("the result is not a finite real number")
    if abs(out) > MAX_MAGNITUDE:  # a bare constant is never checked by the walk
        raise ValueError("result too large")
    if isinstance(out, float):
        out = int(out) if out.is_integer() else round(out, 6)
    return str(out)


class Calculator:
    """One question; the model may call `calculate` before it answers. The episode ends at the first
    answer (a turn without a tool call), whose score is the reward."""

    tools = ["rlvr.envs.calculator:calculate"]

    def __init__(self, system_prompt: str = "", fewshot: list[dict] | None = None):
        self.system_prompt, self.fewshot = system_prompt, list(fewshot or [])

    def reset(self, problem, messages: list[dict]) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [dict(m) for m in self.fewshot] + [{"role": "user", "content": problem.question}]

    def step(self, messages: list[dict], scores: list[ScoreResult]) -> Step:
        return Step(None, scores[-1].reward, scores[-1].correct)
