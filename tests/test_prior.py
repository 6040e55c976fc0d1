"""The popularity prior for users without history, on small worlds with planted structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import prior
from towers import metrics

ITEMS, DIM = 60, 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def world(n_users: int, signal: float, seed: int = 0) -> dict:
    """Users who each want two of the five most popular items and one item their vector points
    at, with `signal` the share of that pull in the user vector (the rest noise)."""
    rng = np.random.default_rng(seed)
    items = unit(rng.normal(size=(ITEMS, DIM)))
    counts = np.log1p(np.arange(ITEMS, 0, -1) ** 2).astype(np.float32)  # item 0 the most popular
    own = rng.integers(10, ITEMS, n_users)
    heads = [set(rng.choice(5, 2, replace=False).tolist()) for _ in range(n_users)]
    users = unit(signal * items[own] + (1 - signal) * rng.normal(size=(n_users, DIM)))
    relevant = [h | {int(o)} for h, o in zip(heads, own, strict=True)]
    return {"users": users, "items": items, "counts": counts, "relevant": relevant,
            "seen": [set() for _ in range(n_users)]}  # fmt: skip


def test_augmented_vectors_score_the_cosine_plus_the_weighted_prior_for_cold_users_only():
    w = world(4, 0.5)
    cold = np.array([True, False, True, False])
    users, items = prior.augmented(w["users"], w["items"], cold, w["counts"], 0.3)
    scores = users @ items.T
    cosines = w["users"] @ w["items"].T
    np.testing.assert_allclose(scores[~cold], cosines[~cold], atol=1e-6)
    np.testing.assert_allclose(scores[cold], cosines[cold] + 0.3 * w["counts"], atol=1e-5)


def test_a_weight_is_chosen_where_popularity_ranks_the_cold_users_items_better():
    w = world(200, 0.0)  # the vectors say nothing: popularity finds two of each user's three
    choice = prior.choose(w["users"], w["items"], np.ones(200, bool), w["counts"], w["relevant"],
                          w["seen"], 20)  # fmt: skip
    assert choice.value > 0
    assert "200 users without history" in choice.reason
    at = {}
    for weight in (0.0, choice.value):
        vectors = prior.augmented(w["users"], w["items"], np.ones(200, bool), w["counts"], weight)
        at[weight] = metrics.recall_at_k(metrics.top_k(*vectors, w["seen"], 20), w["relevant"],
                                         20)  # fmt: skip
    assert at[choice.value] > at[0.0] + 0.3


def test_no_weight_where_the_cosine_already_finds_what_popularity_cannot():
    w = world(200, 1.0)
    w["relevant"] = [r - set(range(5)) for r in w["relevant"]]  # only the item it points at
    choice = prior.choose(w["users"], w["items"], np.ones(200, bool), w["counts"], w["relevant"],
                          w["seen"], 20)  # fmt: skip
    assert choice.value == 0.0


def test_too_few_cold_validation_users_keep_the_cosine_alone():
    w = world(200, 0.0)
    cold = np.zeros(200, bool)
    cold[: prior.MIN_USERS - 1] = True
    choice = prior.choose(w["users"], w["items"], cold, w["counts"], w["relevant"], w["seen"], 20)
    assert choice.value == 0.0 and "fewer than" in choice.reason


def test_rerank_takes_popular_items_faiss_missed_and_never_a_seen_one():
    w = world(1, 0.0, seed=3)
    query = w["users"][0]
    cosines = w["items"] @ query
    seen = {0}  # the most popular item, already seen
    retrieved = np.array([r for r in np.argsort(-cosines) if r not in seen][:10])
    rows, scores = prior.rerank(retrieved, query, w["items"], w["counts"],
                                np.argsort(-w["counts"]), seen, 1000.0, 10)  # fmt: skip
    assert rows.tolist() == list(range(1, 11))  # popularity's order at this weight, 0 seen
    assert not set(rows.tolist()) <= set(retrieved.tolist())  # some FAISS did not retrieve
    np.testing.assert_allclose(scores, cosines[rows], atol=1e-6)  # the cosines, as served


@pytest.mark.parametrize("weight", [0.0, 0.2, 2.0])
def test_rerank_matches_the_exact_blend_where_its_pool_holds_the_answer(weight):
    w = world(1, 0.5, seed=4)
    query = w["users"][0]
    cosines = w["items"] @ query
    everything = np.argsort(-cosines)
    rows, _ = prior.rerank(everything[:20], query, w["items"], w["counts"],
                           np.argsort(-w["counts"]), set(), weight, 20)  # fmt: skip
    exact = metrics.top_k(*prior.augmented(w["users"], w["items"], np.ones(1, bool),
                                           w["counts"], weight), None, 5)[0]  # fmt: skip
    assert rows[:5].tolist() == exact.tolist()


def test_cold_reads_the_has_history_column_of_the_activity():
    activity = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.5, 1.0, 0.2, 1.0]])
    assert prior.cold({"activity": activity}).tolist() == [True, False]


def test_a_version_without_a_choice_has_no_prior():
    assert prior.weight({"choices": {}}) == 0.0
    assert prior.weight({"choices": {"cold_prior": {"value": 0.5, "reason": "r"}}}) == 0.5


def test_evaluate_reorders_only_the_cold_users_retrieved_lists():
    from retrieval.evaluate import with_prior

    w = world(2, 0.0, seed=5)
    tops = [np.argsort(-(w["items"] @ u))[:10].tolist() for u in w["users"]]
    cold = np.array([True, False])
    out = with_prior(tops, w["users"], w["items"], w["counts"], cold, [set(), set()], 1000.0)
    assert out[0] == list(range(10)) and out[1] == tops[1]
    assert with_prior(tops, w["users"], w["items"], w["counts"], cold, [set(), set()], 0.0) == tops
