"""The `ttr evaluate` stage: full-ranking metrics on the test split, baselines in the same run.

Every model ranks the whole catalogue for each test user, with the items the user interacted with
before the test period excluded; relevant items are the user's test items not seen before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp_sparse

from retrieval import artifacts, index, metrics, store
from retrieval.training import (
    Split,
    SplitConfig,
    catalogue_frame,
    embed_items,
    embed_users,
    fit,
    load_towers,
    split,
    vocab_of,
)
from towers.train import TrainConfig

K_VALUES = (10, 20, 50, 100)
K_MAX = max(K_VALUES)
ABLATION = {  # the image input joins when posters have vectors (the content-encoder issue)
    "id": ("id",),
    "id+categorical": ("id", "categorical"),
    "id+categorical+text": ("id", "categorical", "text"),
}


@dataclass(frozen=True)
class EvalConfig:
    ials_factors: tuple[int, ...] = (32, 64)  # the small grid iALS is tuned over
    ials_regularization: tuple[float, ...] = (0.01, 0.1)
    ials_iterations: int = 15


@dataclass(frozen=True)
class Protocol:
    users: np.ndarray  # test user ids
    relevant: list[set[int]]  # catalogue rows each user interacts with in the test period
    exclude: list[set[int]]  # catalogue rows each user interacted with before it
    warm: np.ndarray  # whether the user has any interaction before the test period


def protocol(before: pd.DataFrame, test: pd.DataFrame, row_of: dict[int, int]) -> Protocol:
    seen = before.groupby("user_id")["item_id"].apply(lambda s: {row_of[i] for i in s})
    wanted = test.groupby("user_id")["item_id"].apply(lambda s: {row_of[i] for i in s})
    users = [u for u in sorted(wanted.index) if wanted[u] - seen.get(u, set())]
    return Protocol(
        np.array(users), [wanted[u] - seen.get(u, set()) for u in users],
        [seen.get(u, set()) for u in users], np.array([u in seen.index for u in users]),
    )  # fmt: skip


def top_k(scores: np.ndarray, exclude: list[set[int]], k: int) -> list[list[int]]:
    """Row indices of the k best scores per user, excluded rows never among them."""
    scores = scores.copy()
    for row, done in enumerate(exclude):
        scores[row, list(done)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(scores, part, axis=1)
    order = best.argsort(axis=1)[:, ::-1]
    ranked, kept = np.take_along_axis(part, order, axis=1), np.take_along_axis(best, order, axis=1)
    return [row[np.isfinite(keep)].tolist() for row, keep in zip(ranked, kept, strict=True)]


def popularity_scores(before: pd.DataFrame, row_of: dict[int, int], n_users: int) -> np.ndarray:
    counts = np.bincount([row_of[i] for i in before["item_id"]], minlength=len(row_of))
    return np.tile(counts.astype(np.float32), (n_users, 1))


def ials_scores(train: pd.DataFrame, row_of: dict[int, int], users: np.ndarray,
                factors: int, regularization: float, iterations: int) -> np.ndarray:  # fmt: skip
    """iALS (the `implicit` library) fit on `train`; users it never saw score by popularity."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    known = {u: r for r, u in enumerate(np.sort(train["user_id"].unique()))}
    rows = train["user_id"].map(known).to_numpy()
    cols = np.array([row_of[i] for i in train["item_id"]])
    matrix = sp_sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                  shape=(len(known), len(row_of)))  # fmt: skip
    with threadpool_limits(
        1, "blas"
    ):  # implicit's own threads do the work; BLAS threads fight them
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=iterations, random_state=0
        )
        model.fit(matrix, show_progress=False)
    scores = popularity_scores(train, row_of, len(users)) * 1e-9
    for i, u in enumerate(users):
        if u in known:
            scores[i] = model.user_factors[known[u]] @ model.item_factors.T
    return scores


def tuned_ials(
    sp: Split, row_of: dict[int, int], cfg: EvalConfig, users: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Pick factors and regularization by validation recall@20, then refit on train+validation."""
    val = protocol(sp.train, sp.validation, row_of)
    best, chosen = -1.0, {}
    for factors in cfg.ials_factors:
        for reg in cfg.ials_regularization:
            scores = ials_scores(sp.train, row_of, val.users, factors, reg, cfg.ials_iterations)
            recall = metrics.recall_at_k(top_k(scores, val.exclude, 20), val.relevant, 20)
            if recall > best:
                best, chosen = recall, {"factors": factors, "regularization": reg}
    before = pd.concat([sp.train, sp.validation])
    scores = ials_scores(
        before, row_of, users, chosen["factors"], chosen["regularization"], cfg.ials_iterations
    )
    return scores, {**chosen, "val_recall@20": best}


def scored(top: list[list[int]], proto: Protocol, temporal: bool) -> dict:
    out = metrics.report(top, proto.relevant, K_VALUES)
    if temporal:
        for name, mask in (("warm", proto.warm), ("cold", ~proto.warm)):
            part = [t for t, m in zip(top, mask, strict=True) if m]
            rel = [r for r, m in zip(proto.relevant, mask, strict=True) if m]
            out[name] = {
                "users": len(part),
                **(metrics.report(part, rel, K_VALUES) if part else {}),
            }
    return out


def ann_top(
    version: Path, users: np.ndarray, items: np.ndarray, proto: Protocol, k: int = K_MAX
) -> list[list[int]]:
    """Top k through the version's FAISS index, over-fetched to make room for excluded items."""
    built, info = index.load(version)
    row_of = {int(i): r for r, i in enumerate(items)}
    depth = k + max((len(e) for e in proto.exclude), default=0)
    _, ids = index.search(built, info["params"], users, min(depth, len(items)))
    return [[row_of[i] for i in row if i >= 0 and row_of[i] not in done][:k]
            for row, done in zip(ids, proto.exclude, strict=True)]  # fmt: skip


def run(prof: store.Profile, root: Path, cfg: EvalConfig, ablation: bool = False) -> dict:
    """Every model on the latest version's test split, and with `ablation` the two-tower
    retrained on each subset of item-tower inputs; the JSON `ttr evaluate --json` writes."""
    version = artifacts.latest(root)
    manifest = artifacts.manifest(version)
    split_cfg = SplitConfig(manifest["split"]["cutoff"], manifest["split"]["validation"])
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    sp = split(inter, manifest["dataset"], split_cfg, manifest["train"]["seed"])
    feast_store = store.open_store(prof)
    catalogue = catalogue_frame(feast_store, prof.offline_dir, sp.test_time)
    row_of = {int(item): row for row, item in enumerate(catalogue["item_id"])}
    proto = protocol(pd.concat([sp.train, sp.validation]), sp.test, row_of)
    vocab = vocab_of(manifest)
    user_tower, item_tower = load_towers(version)
    users = embed_users(feast_store, user_tower, vocab, proto.users, sp.test_time)
    items = embed_items(item_tower, vocab, catalogue)
    tops, ials_params = rankings(sp, row_of, proto, users, items, cfg)
    if (version / "index.json").exists():
        tops["two_tower_ann"] = ann_top(version, users, catalogue["item_id"].to_numpy(), proto)
    users_info = {"test_users": len(proto.users), "warm_users": int(proto.warm.sum())}
    temporal = sp.kind == "temporal"
    result = {
        "dataset": manifest["dataset"],
        "split": {"kind": sp.kind, **asdict(split_cfg), **users_info},
        "model_version": manifest["version"], "ials": ials_params,
        "models": {name: scored(top, proto, temporal) for name, top in tops.items()},
    }  # fmt: skip
    if ablation:
        train_cfg = TrainConfig(**manifest["train"])
        result["ablation"] = {
            name: scored(ablated(prof, train_cfg, split_cfg, modalities, catalogue, proto),
                         proto, temporal)
            for name, modalities in ABLATION.items()
        }  # fmt: skip
    return result


def ablated(
    prof: store.Profile, cfg: TrainConfig, split_cfg: SplitConfig, modalities: tuple[str, ...],
    catalogue: pd.DataFrame, proto: Protocol,
) -> list[list[int]]:  # fmt: skip
    """Top K_MAX of the two-tower retrained with the item tower on `modalities` only."""
    print(f"ablation: item tower on {'+'.join(modalities)}")
    f = fit(prof, cfg, split_cfg, modalities)
    users = embed_users(
        store.open_store(prof), f.user_tower, f.vocab, proto.users, f.split.test_time
    )
    items = embed_items(f.item_tower, f.vocab, catalogue)
    return top_k(users @ items.T, proto.exclude, K_MAX)


def rankings(
    sp: Split, row_of: dict[int, int], proto: Protocol, users: np.ndarray, items: np.ndarray,
    cfg: EvalConfig,
) -> tuple[dict[str, list[list[int]]], dict]:  # fmt: skip
    """Each baseline's and the two-tower's top K_MAX for every test user."""
    before = pd.concat([sp.train, sp.validation])
    ials, ials_params = tuned_ials(sp, row_of, cfg, proto.users)
    scores = {
        "popularity": popularity_scores(before, row_of, len(proto.users)),
        "ials": ials,
        "two_tower": users @ items.T,
    }
    return {name: top_k(s, proto.exclude, K_MAX) for name, s in scores.items()}, ials_params


def table(result: dict) -> str:
    """Recall and NDCG at each k per model (and per warm/cold group on temporal splits)."""
    cols = [f"{m}@{k}" for k in (10, 20) for m in ("recall", "ndcg")] + ["recall@100"]
    split_ = result["split"]
    title = f"{result['dataset']} ({split_['kind']} split, {split_['test_users']} test users)"
    lines = [title, f"{'model':26s}" + "".join(f"{c:>12s}" for c in cols)]
    for name, res in result["models"].items():
        for group, values in [("", res)] + [
            (f" {g}", res[g]) for g in ("warm", "cold") if g in res
        ]:
            if "recall@10" in values:
                lines.append(f"{name + group:26s}" + "".join(f"{values[c]:>12.4f}" for c in cols))
    return "\n".join(lines)
