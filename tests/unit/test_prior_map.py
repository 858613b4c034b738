"""The prior map: a classifier's P(pass rate >= 0.5) as a pass rate (rlvr.value.prior_map)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.value.prior_map import cross_fit, fit_isotonic


def test_a_perfect_threshold_classifier_is_mapped_to_the_pass_rates():
    """Prompts solved 30 % and 60 % of the time: a perfect classifier of 'rate >= 0.5' answers
    about 0 and 1, which as a pass-rate prior is off by 0.3 and 0.4; the map recovers the rates."""
    gen = torch.Generator().manual_seed(0)
    rate = torch.tensor([0.3, 0.6]).repeat(200)
    score = torch.where(rate >= 0.5, 0.97, 0.03) + 0.02 * torch.rand(400, generator=gen)
    observed = torch.binomial(torch.full((400,), 4.0), rate, generator=gen) / 4
    mapped = fit_isotonic(score, observed)(torch.tensor([0.04, 0.98]))
    assert torch.allclose(mapped, torch.tensor([0.3, 0.6]), atol=0.05), mapped
    raw_mse = float(((torch.tensor([0.04, 0.98]) - torch.tensor([0.3, 0.6])) ** 2).mean())
    assert float(((mapped - torch.tensor([0.3, 0.6])) ** 2).mean()) < raw_mse / 20


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])), min_size=2, max_size=40),
       st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=20))
def test_the_map_is_monotone_and_a_probability(pairs, queries):
    scores, success = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    q = torch.tensor(sorted(queries))
    out = fit_isotonic(scores, success)(q)
    assert ((out >= 0) & (out <= 1)).all() and (out.diff() >= -1e-7).all()


def test_cross_fit_never_scores_an_item_with_itself_in_the_support():
    asked = []

    def predict(support: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
        assert not set(support.tolist()) & set(held.tolist())
        asked.append((support.tolist(), held.tolist()))
        return held.float() / 10

    scores = cross_fit(7, 3, predict)
    assert torch.allclose(scores, torch.arange(7) / 10)
    assert [h for _, h in asked] == [[0, 3, 6], [1, 4], [2, 5]]
    assert len(cross_fit(3, 10, predict)) == 3  # more folds than items: one item each
