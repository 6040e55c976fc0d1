"""Full-ranking retrieval metrics: pure numpy over top-k lists and sets of relevant items."""

from __future__ import annotations

import numpy as np


def hits(top: list[list[int]], relevant: list[set[int]], k: int) -> np.ndarray:
    """(U, k) 0/1 matrix: whether each of a user's top-k items is relevant (a list shorter
    than k counts as misses)."""
    out = np.zeros((len(top), k))
    for u, (row, rel) in enumerate(zip(top, relevant, strict=True)):
        out[u, : len(row[:k])] = [item in rel for item in row[:k]]
    return out


def recall_at_k(top: list[list[int]], relevant: list[set[int]], k: int) -> float:
    """Mean over users of relevant items in the top k / all of the user's relevant items."""
    sizes = np.array([len(rel) for rel in relevant])
    return float(np.mean(hits(top, relevant, k).sum(axis=1) / sizes))


def precision_at_k(top: list[list[int]], relevant: list[set[int]], k: int) -> float:
    """Mean over users of relevant items in the top k / k."""
    return float(np.mean(hits(top, relevant, k).sum(axis=1) / k))


def ndcg_at_k(top: list[list[int]], relevant: list[set[int]], k: int) -> float:
    """Binary-relevance NDCG@k; the ideal ranks min(|relevant|, k) relevant items first."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits(top, relevant, k) @ discounts
    ideal = np.array([discounts[: min(len(rel), k)].sum() for rel in relevant])
    return float(np.mean(dcg / ideal))


def f1_at_k(top: list[list[int]], relevant: list[set[int]], k: int) -> float:
    """Mean over users of the harmonic mean of precision@k and recall@k."""
    h = hits(top, relevant, k).sum(axis=1)
    p, r = h / k, h / np.array([len(rel) for rel in relevant])
    return float(np.mean(np.where(h > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)))


def report(top: list[list[int]], relevant: list[set[int]], ks: tuple[int, ...]) -> dict[str, float]:
    """recall, ndcg, precision and f1 at each k, keyed "recall@10" and so on."""
    fns = {"recall": recall_at_k, "ndcg": ndcg_at_k, "precision": precision_at_k, "f1": f1_at_k}
    return {f"{name}@{k}": fn(top, relevant, k) for k in ks for name, fn in fns.items()}
