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
from towers.ranker import Ranker, RankerConfig


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


class ByItem(nn.Module):
    """Scores each pair by its item's row: the highest row first."""

    def forward(self, user: dict, item: dict, retrieval: torch.Tensor) -> torch.Tensor:
        return item["item"].float()


def served(relevant: list[set[int]]) -> ranking.Served:
    """Two users' candidates in retrieval order; the second user has only two (-1 pads)."""
    return ranking.Served(
        {"user": torch.tensor([1, 2])}, {"item": torch.arange(5)},
        np.array([[0, 1, 2], [3, 4, -1]]), torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.2, 0.0]]),
        relevant,
    )  # fmt: skip


def test_served_metrics_rank_the_candidates_in_the_rankers_order():
    task = served([{2}, {4}])
    assert ranking.served_metrics(ByRetrieval(), task, k=1) == {"recall@1": 0.0, "ndcg@1": 0.0}
    assert ranking.served_metrics(ByItem(), task, k=1) == {"recall@1": 1.0, "ndcg@1": 1.0}
    by_retrieval = ranking.served_metrics(ByRetrieval(), task, k=2)
    assert by_retrieval["recall@2"] == pytest.approx(0.5)  # user 2 finds item 4 second
    assert by_retrieval["ndcg@2"] == pytest.approx(0.5 / math.log2(3))


def test_an_epoch_is_no_worse_only_where_it_loses_neither_recall_nor_ndcg():
    start = {"recall@20": 0.2, "ndcg@20": 0.3}
    assert ranking.no_worse({"recall@20": 0.2, "ndcg@20": 0.3}, start)
    assert not ranking.no_worse({"recall@20": 0.19, "ndcg@20": 0.4}, start)
    assert not ranking.no_worse({"recall@20": 0.3, "ndcg@20": 0.29}, start)


def test_the_ranker_keeps_the_retrieval_order_where_training_cannot_beat_it():
    """Retrieval puts each user's validation item first; the training labels are noise: no epoch
    can do better, so the ranker comes back as it started and serves the retrieval order."""
    rng, n_users, n_items = np.random.default_rng(0), 4, 20
    config = RankerConfig(num_users=n_users + 1, num_items=n_items)
    users = {"user": torch.arange(1, n_users + 1), "activity": torch.zeros(n_users, 4)}
    items = {"item": torch.arange(n_items), "popularity": torch.zeros(n_items, 4)}
    n = 512
    data = ranking.Examples(
        users, torch.from_numpy(rng.integers(n_users, size=n)), items,
        torch.from_numpy(rng.integers(n_items, size=n)),
        torch.from_numpy(rng.integers(2, size=n).astype(np.float32)),
        torch.from_numpy(rng.normal(size=n).astype(np.float32)),
    )  # fmt: skip
    cand = np.stack([rng.permutation(n_items)[:5] for _ in range(n_users)])
    retrieval = torch.linspace(1.0, 0.0, 5).repeat(n_users, 1)
    task = ranking.Served(users, items, cand, retrieval, [{int(c[0])} for c in cand])
    ranker = Ranker(config)
    cfg = ranking.RankerTrainConfig(epochs=3, batch_size=64, lr=0.05, patience=3)
    result = ranking.fit_ranker(ranker, data, task, cfg)
    assert result["best_epoch"] == 0 and len(result["history"]) == 4
    assert ranking.served_metrics(ranker, task) == {"recall@20": 1.0, "ndcg@20": 1.0}
