"""Reward terms for the end-to-end tests.

A random-init model never answers arithmetic, so the strict `math` reward is always 0 there.
`odd_length` adds a term that splits groups roughly in half, so advantages are nonzero and the
learners really change the weights.
"""


def odd_length(completion: str, answer: str, answer_type: str = "number", **kwargs) -> float:
    return float(len(completion) % 2 == 1)
