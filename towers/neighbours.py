"""Item-to-item neighbours (EASE, Steck 2019): the re-ranker's second first-stage signal beside
the towers' cosine, a closed-form linear map from the items a user had to a score of every item.

    B = argmin ||X - XB||^2 + lambda ||B||^2 with diag(B) = 0, X the users x items matrix:
    P = (X'X + lambda I)^-1, B = -P / diag(P) (column-wise), diag(B) = 0;
    a user's score of item j: the sum of B[i, j] over the items i the user had.

On ml-1m's given split, seed 0, it re-orders the towers' top 200 about as well as they do alone
(test Recall@20 / NDCG@20 0.2754 / 0.4108 at lambda 500 against 0.2743 / 0.4059), and the two
agree little: their blend, chosen on the validation users by `retrieval.ranking`, reaches 0.2844
/ 0.4229 (`benchmarks/results/neighbours_ml1m.json`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import scipy.sparse as sp_sparse

MAX_ITEMS = 10_000  # catalogues up to this many items get neighbours: B is dense (400 MB of
# float32 at 10,000 items), its inverse O(items^3) (ml-1m's 3,883 items: 3 s on 2 cores)


def fit(users: np.ndarray, rows: np.ndarray, n_items: int, lam: float) -> np.ndarray:
    """B (n_items, n_items) float32 from interactions of `users` (any ids) with catalogue `rows`
    (each pair counts once however often repeated), regularised by `lam`."""
    if n_items > MAX_ITEMS:
        raise ValueError(f"{n_items:,} items: neighbours are fitted up to {MAX_ITEMS:,}")
    codes = np.unique(users, return_inverse=True)[1]
    x = sp_sparse.csr_matrix((np.ones(len(codes), np.float64), (codes, rows)),
                             shape=(int(codes.max(initial=-1)) + 1, n_items))  # fmt: skip
    x.data[:] = 1.0  # repeats summed: back to 0/1
    gram = (x.T @ x).toarray()
    gram[np.diag_indices(n_items)] += lam
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)
    b[np.diag_indices(n_items)] = 0.0
    return b.astype(np.float32)


def scores(matrix: np.ndarray, history: Collection[int], items: np.ndarray) -> np.ndarray:
    """The score of each catalogue row in `items` (any shape; -1 scores 0) for a user who had
    the rows in `history` (each counted once, as in the fit, however often it repeats): B's rows
    of the history summed, or only their columns of `items` where that is less work (a request's
    200 candidates)."""
    had = np.unique(np.fromiter(history, dtype=np.int64, count=len(history)))
    wanted = np.maximum(items, 0).reshape(-1)
    if not len(had):
        return np.zeros(items.shape, np.float32)
    if len(wanted) < matrix.shape[1]:
        out = matrix[np.ix_(had, wanted)].sum(axis=0)
    else:
        out = matrix[had].sum(axis=0)[wanted]
    return np.where(items.reshape(-1) >= 0, out, 0.0).astype(np.float32).reshape(items.shape)


def scores_of(matrix: np.ndarray, histories: Sequence[Collection[int]],
              cand: np.ndarray) -> np.ndarray:  # fmt: skip
    """(U, C): `scores` of each user's candidates `cand[u]` given their rows `histories[u]`."""
    return np.stack([scores(matrix, h, c) for h, c in zip(histories, cand, strict=True)])
