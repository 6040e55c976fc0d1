"""A popularity prior for users with no history: what the towers retrieve for them is ranked by
the cosine plus `weight` x log(1 + the item's interactions so far), the weight chosen on the
validation split's users without training rows (0 where it has too few of them).

A user known only by their own features (age, occupation, ...) tells the towers little, and
popularity ranks those users' items better than the towers alone do (ml-100k, 192 test users with
no history, Recall@20 over seeds 0-2: towers 0.1134, popularity 0.1208); a blend of the two beats
both. The towers learn no popularity term of their own: their logQ correction takes it out of
the scores on purpose (warm users gain), and a learned item bias cost warm users a quarter of
their recall (`benchmarks/results/seeds_item_bias_ml100k.json`). Users with any history are
ranked by the cosine alone, exactly as before.
"""

from __future__ import annotations

import numpy as np

from retrieval.adapt import Choice
from towers import metrics
from towers.train import Inputs

GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 10.0)  # weights tried; 10 is popularity's
# order with the cosine breaking ties (cosines lie in [-1, 1], log counts in [0, ~14])
MIN_USERS = 20  # validation users without history needed to choose a weight other than 0


def cold(users: Inputs) -> np.ndarray:
    """(B,) bool: which users of the user-tower inputs have no history (`activity` column 1)."""
    return (users["activity"][:, 1] == 0).numpy()


def weight(manifest: dict) -> float:
    """The weight a version's training chose (0 for a version trained before there was one)."""
    return float(manifest.get("choices", {}).get("cold_prior", {}).get("value", 0.0))


def log_counts(item_rows: np.ndarray, n_items: int) -> np.ndarray:
    """log(1 + interactions) per catalogue row, from the rows' catalogue indices."""
    return np.log1p(np.bincount(item_rows, minlength=n_items)).astype(np.float32)


def augmented(users: np.ndarray, items: np.ndarray, cold: np.ndarray, counts: np.ndarray,
              weight: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(user, item) vectors whose inner product is the served score: the cosine, plus `weight` x
    `counts` (log counts per item) for the users `cold` marks."""
    column = (weight * cold.astype(np.float32))[:, None]
    return (np.hstack([users, column]).astype(np.float32),
            np.hstack([items, counts[:, None]]).astype(np.float32))  # fmt: skip


def choose(users: np.ndarray, items: np.ndarray, cold: np.ndarray, counts: np.ndarray,
           relevant: list[set[int]], seen: list[set[int]], k: int) -> Choice:  # fmt: skip
    """The weight of GRID with the best validation recall@k over the users `cold` marks (the
    smallest such weight on a tie); 0 with fewer than MIN_USERS of them."""
    picked = np.flatnonzero(cold)
    if len(picked) < MIN_USERS:
        return Choice(0.0, f"{len(picked)} validation users without history, fewer than "
                           f"{MIN_USERS}: the cosine alone")  # fmt: skip
    rel, had = [relevant[i] for i in picked], [seen[i] for i in picked]
    ones = np.ones(len(picked), dtype=bool)
    recalls = {}
    for weight in GRID:
        top = metrics.top_k(*augmented(users[picked], items, ones, counts, weight), had, k)
        recalls[weight] = metrics.recall_at_k(top, rel, k)
    best = max(GRID, key=lambda w: (recalls[w], -w))
    return Choice(best, f"validation recall@{k} of the {len(picked)} users without history: "
                        f"{recalls[best]:.4f} at {best} (at 0: {recalls[0.0]:.4f})")  # fmt: skip


def rerank(rows: np.ndarray, query: np.ndarray, embeddings: np.ndarray, counts: np.ndarray,
           popular: np.ndarray, seen: set[int], weight: float,
           depth: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The `depth` best of the retrieved catalogue `rows` and the `depth` most popular unseen
    items together, by the cosine to `query` (1-d) plus `weight` x `counts`: (rows, cosines)."""
    popular = np.array([r for r in popular[: depth + len(seen)] if int(r) not in seen][:depth],
                       dtype=np.int64)  # fmt: skip
    pool = np.unique(np.concatenate([rows.astype(np.int64), popular]))
    cosines = embeddings[pool] @ query
    order = np.argsort(-(cosines + weight * counts[pool]), kind="stable")[:depth]
    return pool[order], cosines[order].astype(np.float32)
