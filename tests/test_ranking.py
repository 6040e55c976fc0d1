"""The ranker stage's arithmetic on cases worked by hand: retrieval scores of candidate pairs,
the NCF protocol's sampled candidates, and validation HR/NDCG with users weighted equally."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from retrieval import ranking
from towers import metrics, neighbours
from towers.inputs import Ids, Vocab
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
        relevant, [set(), set()],
    )  # fmt: skip


def test_served_scores_rank_the_candidates_in_the_rankers_order():
    task = served([{2}, {4}])
    assert ranking.ordered_metrics(ranking.served_scores(ByRetrieval(), task), task, k=1) == {
        "recall@1": 0.0,
        "ndcg@1": 0.0,
    }
    assert ranking.ordered_metrics(ranking.served_scores(ByItem(), task), task, k=1) == {
        "recall@1": 1.0,
        "ndcg@1": 1.0,
    }
    by_retrieval = ranking.ordered_metrics(ranking.served_scores(ByRetrieval(), task), task, k=2)
    assert by_retrieval["recall@2"] == pytest.approx(0.5)  # user 2 finds item 4 second
    assert by_retrieval["ndcg@2"] == pytest.approx(0.5 / math.log2(3))


def test_an_epoch_is_no_worse_only_where_it_loses_neither_recall_nor_ndcg():
    start = {"recall@20": 0.2, "ndcg@20": 0.3}
    assert ranking.no_worse({"recall@20": 0.2, "ndcg@20": 0.3}, start)
    assert not ranking.no_worse({"recall@20": 0.19, "ndcg@20": 0.4}, start)
    assert not ranking.no_worse({"recall@20": 0.3, "ndcg@20": 0.29}, start)


def test_an_order_replaces_another_only_where_its_gain_is_beyond_the_users_noise():
    """Half the users find their item first under the new order, the rest gain nothing: the
    paired differences (1, 1, 0, 0) lift NDCG@1 by 0.5 at a standard error of 0.289 (z 1.73),
    refused; twice as many users, the same half, at 0.189 (z 2.65), kept."""

    def judged(n: int) -> tuple[dict[str, float], dict[str, float]]:
        cand = np.tile(np.arange(2), (n, 1))
        task = ranking.Served({}, {}, cand, torch.zeros(n, 2), [{1}] * n, [set()] * n)
        start = np.tile([1.0, 0.0], (n, 1))  # item 1 second: nobody finds theirs first
        moved = start.copy()
        moved[: n // 2] = [0.0, 1.0]
        before, base = (
            ranking.ordered_metrics(start, task, k=1),
            ranking.user_ndcg(start, task, k=1),
        )
        return before, {**ranking.ordered_metrics(moved, task, k=1),
                        "gain z": ranking.gain_z(moved, base, task, k=1)}  # fmt: skip

    (before, four), (_, eight) = judged(4), judged(8)
    assert four["gain z"] == pytest.approx(0.5 / math.sqrt(1 / 3 / 4))
    assert eight["gain z"] == pytest.approx(0.5 / math.sqrt(2 / 7 / 8))
    least = ranking.RankerTrainConfig().gain_z
    assert ranking.no_worse(four, before) and not ranking.beats(four, before, least)
    assert ranking.beats(eight, before, least)
    task = ranking.Served({}, {}, np.tile(np.arange(2), (3, 1)), torch.zeros(3, 2), [{1}] * 3,
                          [set()] * 3)  # fmt: skip
    assert (
        ranking.gain_z(np.ones((3, 2)), ranking.user_ndcg(np.ones((3, 2)), task), task) == 0.0
    )  # the same order
    alike = ranking.gain_z(
        np.tile([0.0, 1.0], (3, 1)),
        ranking.user_ndcg(np.tile([1.0, 0.0], (3, 1)), task, k=1),
        task,
        k=1,
    )
    assert 1e9 < alike < math.inf  # every user gains alike: beyond any noise, finite in JSON
    one = dataclasses.replace(task, cand=task.cand[:1], relevant=[{1}], history=[set()])
    assert ranking.gain_z(np.array([[0.0, 1.0]]), np.zeros(1), one, k=1) == 0.0


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
    task = ranking.Served(users, items, cand, retrieval, [{int(c[0])} for c in cand],
                          [set()] * n_users)  # fmt: skip
    ranker = Ranker(config)
    cfg = ranking.RankerTrainConfig(epochs=3, batch_size=64, lr=0.05, patience=3)
    result = ranking.fit_ranker(ranker, data, task, cfg)
    assert result["best_epoch"] == 0 and len(result["history"]) == 4
    assert ranking.ordered_metrics(ranking.served_scores(ranker, task), task) == {
        "recall@20": 1.0,
        "ndcg@20": 1.0,
    }


def test_neighbours_are_the_closed_form_ridge_regression_of_each_item_on_the_others():
    """Column j of B regresses item j's column of X on the other items' (EASE): checked against
    that regression solved directly, column by column."""
    rng = np.random.default_rng(0)
    x = (rng.random((30, 6)) < 0.4).astype(np.float64)
    users, items = np.nonzero(x)
    b = neighbours.fit(np.repeat(users, 2), np.repeat(items, 2), 6, lam=2.0)  # repeats count once
    gram = x.T @ x
    for j in range(6):
        others = [i for i in range(6) if i != j]
        direct = np.linalg.solve(gram[np.ix_(others, others)] + 2.0 * np.eye(5), gram[others, j])
        assert np.allclose(b[others, j], direct, atol=1e-5) and b[j, j] == 0


def test_neighbour_scores_sum_the_rows_of_the_users_items_either_way():
    matrix = np.arange(16, dtype=np.float32).reshape(4, 4)
    few = neighbours.scores(matrix, [2, 0, 2], np.array([3, -1]))  # the candidates' columns
    every = neighbours.scores(matrix, {0, 2}, np.array([[3, 1, 0, 2], [-1, -1, 1, 1]]))  # rows
    assert few.tolist() == [3 + 11, 0]
    assert every.tolist() == [[14, 10, 8, 12], [0, 0, 10, 10]]
    assert neighbours.scores(matrix, set(), np.array([1, 2])).tolist() == [0, 0]


def blocks(n_users: int = 40, seed: int = 0) -> tuple[pd.DataFrame, list[set[int]], list[set[int]]]:
    """Items 0-9 and 10-19: each user takes half of one block in training (users alternate) and
    one more item of it later."""
    rng, rows, history, later = np.random.default_rng(seed), [], [], []
    for user in range(n_users):
        block = np.arange(10) + 10 * (user % 2)
        picked = rng.permutation(block)
        rows += [(user, int(item)) for item in picked[:5]]
        history.append(set(picked[:5].tolist()))
        later.append({int(picked[5])})
    return pd.DataFrame(rows, columns=["user_id", "item_id"]), history, later


def catalogue(n: int) -> Vocab:
    """A vocabulary whose catalogue rows are the item ids 0..n-1."""
    return Vocab(Ids(np.arange(n)), Ids(np.arange(40)))


def test_the_validation_users_choose_neighbours_where_their_items_predict_what_comes_next():
    """The towers rank every unseen item alike (noise); the neighbours know the blocks: they are
    chosen, and their first-stage order finds the users' next items."""
    rows, history, later = blocks()
    rng = np.random.default_rng(1)
    cand = np.stack([np.array(sorted(set(range(20)) - h)) for h in history])  # 15 unseen each
    task = ranking.Served({}, {}, cand, torch.from_numpy(rng.normal(0, 0.01, cand.shape)).float(),
                          later, history)  # fmt: skip
    cfg = ranking.RankerTrainConfig()
    chosen, matrix = ranking.choose_neighbours(rows, catalogue(20), task, cfg)
    assert chosen["weight"] > 0 and matrix is not None
    assert chosen["validation"]["recall@20"] == 1.0  # 15 candidates: every next item is in them
    assert chosen["validation"]["ndcg@20"] > chosen["retrieval_order"]["ndcg@20"] + 0.2
    ranker = ranking.ranker_with(
        RankerConfig(2, 21, neighbour_items=20, neighbour_weight=chosen["weight"]), matrix, 0
    )
    ordered = task.first_stage(ranker)
    top3 = np.take_along_axis(cand, np.argsort(-ordered.retrieval.numpy(), axis=1)[:, :3], 1)
    assert all(set(top.tolist()) <= set(range(10 * (u % 2), 10 * (u % 2) + 10))
               for u, top in enumerate(top3))  # fmt: skip
    unoffered, none = ranking.choose_neighbours(
        rows, catalogue(20), task, ranking.RankerTrainConfig(neighbours=False)
    )
    assert unoffered["weight"] == 0 and none is None


def test_neighbours_are_not_chosen_where_the_towers_already_rank_the_next_items_first():
    rows, history, later = blocks()
    cand = np.stack([np.array([*sorted(nxt), *sorted(set(range(20)) - h - nxt)])
                     for h, nxt in zip(history, later, strict=True)])  # fmt: skip
    retrieval = torch.linspace(1.0, 0.0, cand.shape[1]).repeat(len(cand), 1)
    task = ranking.Served({}, {}, cand, retrieval, later, history)
    chosen, matrix = ranking.choose_neighbours(
        rows, catalogue(20), task, ranking.RankerTrainConfig()
    )
    assert chosen["weight"] == 0 and matrix is None and chosen["tried"]


def test_an_order_that_gains_overall_but_costs_users_with_history_is_worse():
    """20 users with training history, 20 without (the MIN_GROUP of each): an order that finds
    every cold user's item and loses one warm user's gains overall, and is still refused."""
    n = 2 * ranking.MIN_GROUP
    cand = np.tile(np.arange(3), (n, 1))
    relevant = [{0}] * ranking.MIN_GROUP + [{2}] * ranking.MIN_GROUP  # warm want 0, cold want 2
    history = [{9}] * ranking.MIN_GROUP + [set()] * ranking.MIN_GROUP
    task = ranking.Served({}, {}, cand, torch.zeros(n, 3), relevant, history)
    start = np.tile([3.0, 2.0, 1.0], (n, 1))  # item 0 first: every warm user finds theirs
    moved = start.copy()
    moved[ranking.MIN_GROUP :, 2] = 9.0  # every cold user's item first...
    moved[0] = [1.0, 2.0, 3.0]  # ...and one warm user's item last
    before, after = (
        ranking.ordered_metrics(start, task, k=1),
        ranking.ordered_metrics(moved, task, k=1),
    )
    assert after["recall@1"] > before["recall@1"] and after["ndcg@1"] > before["ndcg@1"]
    assert after["cold recall@1"] == 1.0 and after["warm recall@1"] == pytest.approx(0.95)
    assert not ranking.no_worse(after, before)
    few = dataclasses.replace(task, history=[{9}] * (n - 1) + [set()])  # 1 cold user: no groups
    assert set(ranking.ordered_metrics(moved, few, k=1)) == {"recall@1", "ndcg@1"}


def test_a_ranker_whose_neighbours_span_another_catalogue_is_refused(tmp_path):
    """A ranker is loaded only where its neighbour matrix spans the version's catalogue: a row
    of it per catalogue row, or none."""
    from retrieval import artifacts, bundle
    from towers import nn as tnn

    vocab = catalogue(20)
    version = tmp_path / "v1"
    for n, refused in ((0, False), (20, False), (5, True)):
        folder = version / f"ranker-{n}"
        config = RankerConfig(vocab.num_users, vocab.num_items, neighbour_items=n,
                              neighbour_weight=0.5 * bool(n))  # fmt: skip
        tnn.save(Ranker(config), folder, "ranker")
        (folder / "manifest.json").write_text('{"retrieval_version": "v1", "version": "r"}')
        artifacts.point(version, artifacts.RANKER, folder.name)
        if refused:
            with pytest.raises(
                bundle.BundleError, match="neighbours span 5 items, the catalogue 20"
            ):
                bundle.load_ranker(version, vocab)
        else:
            assert bundle.load_ranker(version, vocab)[0].config.neighbour_items == n
