"""The ranker stage's arithmetic on cases worked by hand: retrieval scores of candidate pairs,
the NCF protocol's sampled candidates, and validation HR/NDCG with users weighted equally."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from retrieval import ranking
from towers import metrics


class ByRetrieval(nn.Module):
    """Scores each pair by its retrieval score alone (what an untrained ranker does)."""

    def forward(self, user: dict, item: dict, retrieval: torch.Tensor) -> torch.Tensor:
        return retrieval


def test_pair_scores_are_dot_products_across_chunks(monkeypatch):
    monkeypatch.setattr(ranking, "PAIRS", 8)  # 8 pairs a chunk: 3 users of 3 candidates each
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(7, 4, generator=g), torch.randn(5, 4, generator=g).numpy()
    cand = np.random.default_rng(0).integers(5, size=(7, 3))
    expected = np.einsum("ud,ucd->uc", users.numpy(), items[cand])
    assert np.allclose(ranking.pair_scores(users, items, cand).numpy(), expected, atol=1e-6)


def test_hard_pools_are_the_best_unseen_items_across_chunks(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK_SCORES", 12)  # two users of six items a chunk
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(6, 3))
    items = items.astype(np.float32)
    seen = pd.Series({1: {0, 2}, 4: set(range(6))})  # catalogue rows
    pools = ranking.hard_pools(users, items, np.arange(5), seen, depth=3)
    scores = users @ items.T
    for user in (0, 1, 2, 3):
        allowed = [r for r in range(6) if r not in seen.get(user, set())]
        best = sorted(allowed, key=lambda r: -scores[user, r])[:3]
        assert sorted(pools[user].tolist()) == sorted(best)
    assert sorted(pools[4].tolist()) == list(range(6))  # all seen: the whole catalogue


def test_ncf_candidates_put_the_positive_first_and_sample_unseen_items():
    rng = np.random.default_rng(0)
    cand = ranking.ncf_candidates(np.array([3, 7]), [{1, 2, 3}, {0}], 12, rng, n=6)
    assert cand.shape == (2, 7) and cand[:, 0].tolist() == [3, 7]
    assert not {1, 2, 3} & set(cand[0, 1:].tolist()) and 0 not in cand[1, 1:]
    assert all(len(set(row)) == 7 for row in cand.tolist())  # distinct
    small = ranking.ncf_candidates(np.array([3]), [{1, 2, 3}], 6, rng)  # 99 lowered to 3 left
    assert sorted(small[0, 1:].tolist()) == [0, 4, 5]


def test_ncf_candidates_in_a_large_catalogue_are_distinct_unseen_and_uniform():
    rng = np.random.default_rng(0)
    seen = set(range(0, 1000, 2))  # every even row: 499 rows left besides the positive
    cand = ranking.ncf_candidates(np.array([1] * 2000), [seen] * 2000, 1000, rng)
    negatives = cand[:, 1:]
    assert all(len(set(row)) == 99 for row in negatives.tolist())
    assert (negatives % 2 == 1).all() and (negatives != 1).all()
    counts = np.bincount(negatives.ravel(), minlength=1000)[3::2]  # each allowed row: ~397 draws
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


def test_validation_hit_rate_weighs_each_user_equally():
    retrieval = torch.tensor([
        [0.9, 0.1, 0.2],  # user 1: positive first -> rank 0
        [0.1, 0.5, 0.9],  # user 1: two items above -> rank 2
        [0.5, 0.9, 0.1],  # user 2: one above -> rank 1
    ])  # fmt: skip
    v = ranking.Validation(
        {"user": torch.tensor([1, 1, 2])}, {"item": torch.arange(9)}, retrieval,
        torch.tensor([0.5, 0.5, 1.0]),
    )  # fmt: skip
    assert ranking.hit_rate(ByRetrieval(), v, k=1)[0] == pytest.approx(0.25)
    hr, ndcg = ranking.hit_rate(ByRetrieval(), v, k=2)
    assert hr == pytest.approx((0.5 + 1.0) / 2)
    assert ndcg == pytest.approx((0.5 * 1.0 + 1.0 / math.log2(3)) / 2)
