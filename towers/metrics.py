"""Full-ranking retrieval metrics: pure numpy over top-k lists and sets of relevant items; the one
top-k with exclusions every stage ranks through; and the sampled (NCF) protocol's HR and NDCG."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CHUNK_SCORES = 1 << 24  # users x items scores held at once (64 MiB of float32)


def top_k(users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor,
          exclude: Sequence[set[int]] | None, k: int) -> np.ndarray:  # fmt: skip
    """(U, k) int64: each user's k best item rows by inner product (users (U, d) @ items (I, d)
    transposed), best first, the rows in `exclude[u]` left out and -1 where fewer remain. Scored
    a chunk of users at a time (CHUNK_SCORES scores), so a million-item catalogue never holds a
    users x items matrix."""
    users = torch.as_tensor(users, dtype=torch.float32)
    items = torch.as_tensor(items, dtype=torch.float32)
    k = min(k, items.shape[0])
    step = max(1, CHUNK_SCORES // max(items.shape[0], 1))
    out = np.full((users.shape[0], k), -1, dtype=np.int64)
    for start in range(0, users.shape[0], step):
        scores = users[start : start + step] @ items.T  # (chunk, I)
        for row, done in enumerate((exclude or [])[start : start + step]):
            if done:
                scores[row, list(done)] = float("-inf")
        best, top = scores.topk(k, dim=1)
        out[start : start + step] = torch.where(torch.isfinite(best), top, -1).numpy()
    return out


def sampled_hits(scores: np.ndarray | torch.Tensor, weights: np.ndarray | None = None,
                 k: int = 10) -> dict[str, float]:  # fmt: skip
    """HR@k and NDCG@k of the sampled protocol (He et al. 2017): each row scores its positive
    (column 0) against sampled items; its rank is the number scored above it. `weights`: each
    row's share (default equal)."""
    scores = torch.as_tensor(scores)
    rank = (scores[:, 1:] > scores[:, :1]).sum(dim=1).double()
    hit = (rank < k).double()
    share = torch.full_like(rank, 1 / len(rank)) if weights is None else torch.as_tensor(
        weights, dtype=torch.float64) / float(np.sum(weights))  # fmt: skip
    return {f"hr@{k}": float((hit * share).sum()),
            f"ndcg@{k}": float((hit / torch.log2(rank + 2.0) * share).sum())}  # fmt: skip


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
    return float(np.mean(ndcg_per_user(top, relevant, k)))


def ndcg_per_user(top: list[list[int]], relevant: list[set[int]], k: int) -> np.ndarray:
    """(U,) each user's binary-relevance NDCG@k (`ndcg_at_k` is their mean)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits(top, relevant, k) @ discounts
    ideal = np.array([discounts[: min(len(rel), k)].sum() for rel in relevant])
    return dcg / ideal


def f1_at_k(top: list[list[int]], relevant: list[set[int]], k: int) -> float:
    """Mean over users of the harmonic mean of precision@k and recall@k."""
    h = hits(top, relevant, k).sum(axis=1)
    p, r = h / k, h / np.array([len(rel) for rel in relevant])
    return float(np.mean(np.where(h > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)))


def report(top: list[list[int]], relevant: list[set[int]], ks: tuple[int, ...]) -> dict[str, float]:
    """recall, ndcg, precision and f1 at each k, keyed "recall@10" and so on."""
    fns = {"recall": recall_at_k, "ndcg": ndcg_at_k, "precision": precision_at_k, "f1": f1_at_k}
    return {f"{name}@{k}": fn(top, relevant, k) for k in ks for name, fn in fns.items()}
