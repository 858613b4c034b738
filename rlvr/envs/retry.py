"""`env=retry`: any task, with feedback. A wrong answer is told "incorrect, try again" until it is right
or the turns run out; the reward is the last answer's, less `turn_penalty` for each retry."""

from __future__ import annotations

from rlvr.envs import Step
from rlvr.sandbox.messages import ScoreResult


class Retry:
    tools: list[str] = []

    def __init__(self, attempts: int = 3, feedback: str = "Incorrect, try again.", turn_penalty: float = 0.1):
        if attempts < 1:
            raise ValueError(f"env.options.attempts must be >= 1, got {attempts}")
        self.attempts, self.feedback, self.turn_penalty = int(attempts), str(feedback), float(turn_penalty)

    def reset(self, problem, messages: list[dict]) -> list[dict]:
        return messages

    def step(self, messages: list[dict], scores: list[ScoreResult]) -> Step:
        last = scores[-1]
        reward = last.reward - self.turn_penalty * (len(scores) - 1)
        if last.correct or len(scores) >= self.attempts:
            return Step(None, reward, last.correct)
        return Step([{"role": "user", "content": self.feedback}], reward, last.correct)
