"""A classifier's P(pass rate >= 0.5) turned into a pass-rate prior: an isotonic map fit on the context.

V0's head is a classifier: fit on the context with labels 1[success >= 0.5], it answers the
probability that a prompt's pass rate is at least one half.  V0.5 fuses the prior with observed
successes as a *pass rate*, and the two differ even for a perfect classifier: a prompt solved 60 %
of the time gets a score near 1.  The map is E[success | score], fit on the context by
isotonic regression (the pool-adjacent-violators fit, scikit-learn's `IsotonicRegression`): the
one monotone function of the score closest to the observed success rates.  It keeps V0's ranking
of prompts and takes its scale from the policy's own outcomes.

The context's scores must be out-of-fold (:func:`cross_fit`): a head fit in context on a prompt
predicts that same prompt too well, and a map fit on such scores would be too steep.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["MAPS", "cross_fit", "fit_isotonic"]

MAPS = ("none", "isotonic")


def fit_isotonic(scores: torch.Tensor, success: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The non-decreasing map score -> E[success | score] fit on (scores, success), as a function
    of new scores (linear between the fitted points, constant beyond them)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(scores.double().numpy(), success.double().numpy())
    return lambda s: torch.as_tensor(iso.predict(s.double().numpy()), dtype=torch.float32)


def cross_fit(n: int, folds: int, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Out-of-fold scores of the n context items: item i is scored by ``predict(support, query)``
    (index tensors) with its fold (i mod folds) left out of the support."""
    folds = max(2, min(int(folds), n))
    index = torch.arange(n)
    scores = torch.empty(n)
    for k in range(folds):
        held = index[index % folds == k]
        scores[held] = predict(index[index % folds != k], held).float()
    return scores
