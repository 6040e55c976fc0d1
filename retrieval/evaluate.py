"""The `ttr evaluate` stage: full-ranking metrics on the test split, baselines in the same run.

Every model ranks the whole catalogue for each test user, with the items the user interacted with
before the test period excluded; relevant items are the user's test items not seen before. Every
full-ranking model is an inner product of user and item vectors (popularity, iALS, the towers,
the cold-start baselines), ranked through `towers.metrics.top_k` a chunk of users at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
import torch

from retrieval import artifacts, index, prior, store
from retrieval.bundle import BundleError, load_ranker
from retrieval.catalogue import read_meta
from retrieval.errors import TTRError
from retrieval.offline import activity_from
from retrieval.ranking import catalogue_items, ncf_candidates
from retrieval.training import (
    Split,
    SplitConfig,
    World,
    embed_items,
    fit,
    load_towers,
    modalities_of,
    read_split,
    sets_of_rows,
    user_frame,
    world_of,
)
from towers import metrics
from towers.inputs import Vocab, share_hot, user_inputs
from towers.progress import Progress, say
from towers.ranker import Ranker
from towers.train import Inputs, TrainConfig, embed, take

K_VALUES = (10, 20, 50, 100)
K_MAX = max(K_VALUES)
ABLATION = {  # each variant runs where the catalogue has its inputs
    "id": ("id",),
    "id+categorical": ("id", "categorical"),
    "id+categorical+text": ("id", "categorical", "text"),
    "id+categorical+text+image": ("id", "categorical", "text", "image"),
}
SIMILAR_K = 10
SIMILAR_QUERIES = 5_000  # items the `/similar` check asks about, at most (drawn, seed 0): all
# of a 1M-item catalogue would score 10^12 pairs
ACTIVITY_GROUPS = 4  # quantile groups of the test users' count of earlier items


@dataclass(frozen=True)
class EvalConfig:
    ials_factors: tuple[int, ...] = (32, 64)  # the small grid iALS is tuned over
    ials_regularization: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    ials_iterations: int = 15
    cold_items: float = 0.1  # share of the catalogue held out of training for the cold start
    candidates: int = 200  # the two-stage pipeline: retrieval depth handed to the ranker
    seed: int = 0  # the NCF protocol's sampled negatives
    retrain: bool = True  # the ablation and the cold start (each retrains the towers)
    ablation: bool = True  # with `retrain`: the ablation too (false: the cold start alone)
    cold_draws: int = 3  # draws of held-out items the cold start averages over

    def __post_init__(self) -> None:
        if self.cold_draws < 1:
            raise TTRError(f"cold draws {self.cold_draws}: the cold start needs at least 1")


@dataclass(frozen=True)
class Protocol:
    users: np.ndarray  # test user ids
    relevant: list[set[int]]  # catalogue rows each user interacts with in the test period
    exclude: list[set[int]]  # catalogue rows each user interacted with before it
    warm: np.ndarray  # whether the user has any interaction before the test period


def protocol(before: pd.DataFrame, test: pd.DataFrame, vocab: Vocab) -> Protocol:
    seen, wanted = sets_of_rows(before, vocab), sets_of_rows(test, vocab)
    users = [u for u in sorted(wanted.index) if wanted[u] - seen.get(u, set())]
    return Protocol(
        np.array(users), [wanted[u] - seen.get(u, set()) for u in users],
        [seen.get(u, set()) for u in users], np.array([u in seen.index for u in users]),
    )  # fmt: skip


def counts_of(rows: pd.DataFrame, vocab: Vocab) -> np.ndarray:
    """Interactions per catalogue row."""
    return np.bincount(vocab.items.rows(rows["item_id"]), minlength=len(vocab.items)).astype(
        np.float32
    )


def popularity_vectors(before: pd.DataFrame, vocab: Vocab, n_users: int) -> tuple[np.ndarray, ...]:
    """Popularity as an inner product: every user (1) times each item's count."""
    return np.ones((n_users, 1), np.float32), counts_of(before, vocab)[:, None]


def ials_vectors(
    train: pd.DataFrame, vocab: Vocab, users: np.ndarray, factors: int, regularization: float,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """iALS (the `implicit` library) fit on `train`, as (user, item) vectors whose inner product
    is its score; a user it never saw scores by popularity (a last column of counts)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    known = {u: r for r, u in enumerate(np.sort(train["user_id"].unique()))}
    rows = train["user_id"].map(known).to_numpy()
    cols = vocab.items.rows(train["item_id"])
    matrix = sp_sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                  shape=(len(known), len(vocab.items)))  # fmt: skip
    with threadpool_limits(1, "blas"):  # implicit's own threads do the work; BLAS's fight them
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=iterations, random_state=0
        )
        model.fit(matrix, show_progress=False)
    user_x = np.zeros((len(users), factors + 1), np.float32)
    for i, u in enumerate(users):
        if u in known:
            user_x[i, :factors] = model.user_factors[known[u]]
        else:
            user_x[i, factors] = 1.0
    item_x = np.hstack([model.item_factors, counts_of(train, vocab)[:, None]])
    return user_x, item_x.astype(np.float32)


def ials_grid(sp: Split, vocab: Vocab, cfg: EvalConfig) -> dict:
    """iALS's factors and regularization with the best validation recall@20 (fit on the training
    rows), and its validation recall@20 and NDCG@20."""
    val = protocol(sp.train, sp.validation, vocab)
    best: dict = {"val_recall@20": -1.0}
    for factors in cfg.ials_factors:
        for reg in cfg.ials_regularization:
            vectors = ials_vectors(sp.train, vocab, val.users, factors, reg, cfg.ials_iterations)
            top = metrics.top_k(*vectors, val.exclude, 20)
            recall = metrics.recall_at_k(top, val.relevant, 20)
            if recall > best["val_recall@20"]:
                best = {"factors": factors, "regularization": reg, "val_recall@20": recall,
                        "val_ndcg@20": metrics.ndcg_at_k(top, val.relevant, 20)}  # fmt: skip
    return best


def tuned_ials(sp: Split, vocab: Vocab, cfg: EvalConfig, users: np.ndarray,
               ) -> tuple[tuple[np.ndarray, np.ndarray], dict]:  # fmt: skip
    """Pick factors and regularization by validation recall@20, then refit on train+validation."""
    chosen = ials_grid(sp, vocab, cfg)
    vectors = ials_vectors(before_test(sp), vocab, users, chosen["factors"],
                           chosen["regularization"], cfg.ials_iterations)  # fmt: skip
    return vectors, chosen


def scored(top: np.ndarray | list, proto: Protocol, temporal: bool) -> dict:
    out = metrics.report(top, proto.relevant, K_VALUES)
    if temporal:
        for name, mask in (("warm", proto.warm), ("cold", ~proto.warm)):
            out[name] = group(top, proto, mask)
    out["by_activity"] = by_activity(top, proto)
    return out


def group(top: np.ndarray | list, proto: Protocol, mask: np.ndarray) -> dict:
    """The metrics of the users `mask` picks, and their number."""
    part = [t for t, m in zip(top, mask, strict=True) if m]
    rel = [r for r, m in zip(proto.relevant, mask, strict=True) if m]
    return {"users": len(part), **(metrics.report(part, rel, K_VALUES) if part else {})}


def activity_note(groups: dict) -> str:
    """What the "LO-HI items" rows are, and why there may be fewer than ACTIVITY_GROUPS."""
    note = (f"'LO-HI items': users by their count of earlier items, in {ACTIVITY_GROUPS} groups "
            "of equal size")  # fmt: skip
    if len(groups) < ACTIVITY_GROUPS:
        note += (f" ({len(groups)} here: where many users share a count, as the users with no "
                 "history do, the groups that would split them merge)")  # fmt: skip
    return note


def by_activity(top: np.ndarray | list, proto: Protocol, parts: int = ACTIVITY_GROUPS) -> dict:
    """Metrics per group of users by their count of items before the test ("LO-HI", quantile
    groups): a model can lead on light users and trail on heavy ones, whose many test items weigh
    most in NDCG and precision."""
    counts = np.array([len(e) for e in proto.exclude])
    edges = np.unique(np.quantile(counts, np.linspace(0, 1, parts + 1)).astype(int))
    highs = [*(edges[1:-1] - 1), edges[-1]]  # each group ends before the next; the last at the max
    out = {}
    for lo, hi in zip(edges, highs, strict=False):
        mask = (counts >= lo) & (counts <= hi)
        if mask.any():
            out[f"{lo}-{hi}"] = group(top, proto, mask)
    return out


def ann_top(version: Path, users: np.ndarray, proto: Protocol, k: int = K_MAX) -> list[list[int]]:
    """Top k through the version's FAISS index (its ids are catalogue rows)."""
    built, info = index.load(version)
    found = index.search_excluding(built, info["params"], users, k, proto.exclude)
    return [rows.tolist() for rows, _ in found]


def with_prior(
    tops: list[list[int]], users: np.ndarray, items: np.ndarray, counts: np.ndarray,
    cold: np.ndarray, exclude: list[set[int]], weight: float,
) -> list[list[int]]:  # fmt: skip
    """Each cold user's retrieved `tops` re-ordered with the popularity prior as `/recommend`
    orders them (`retrieval.prior.rerank`); the other users' as they are."""
    if not weight:
        return tops
    popular = np.argsort(-counts, kind="stable")
    return [prior.rerank(np.array(top, dtype=np.int64), users[u], items, counts, popular,
                         exclude[u], weight, len(top))[0].tolist() if cold[u] else top
            for u, top in enumerate(tops)]  # fmt: skip


def run(prof: store.Profile, root: Path, cfg: EvalConfig, progress: Progress | None = None) -> dict:
    """Every model on the latest version's test split and, with `cfg.retrain`, the two-tower
    retrained on each subset of item-tower inputs and with items held out for a cold start;
    the JSON `ttr evaluate --json` writes."""
    version = artifacts.trained(root)
    manifest = artifacts.manifest(version)
    split_cfg = SplitConfig(manifest["split"]["cutoff"], manifest["split"]["validation"])
    sp = read_split(prof.offline_dir, manifest["split"], manifest["train"]["seed"])
    world = world_of(prof, sp, read_meta(prof.offline_dir), vocab=Vocab.load(version))
    vocab = world.vocab
    proto = protocol(before_test(sp), sp.test, vocab)
    user_tower, item_tower = load_towers(version)
    user_x = users_at_test(world, sp, proto.users)
    users = embed(user_tower, user_x).numpy()
    items = embed_items(item_tower, vocab, world.catalogue)
    ials, ials_params = tuned_ials(sp, vocab, cfg, proto.users)
    counts = prior.log_counts(vocab.items.rows(before_test(sp)["item_id"]), len(vocab.items))
    weight, cold = prior.weight(manifest), prior.cold(user_x)
    vectors = {"popularity": popularity_vectors(before_test(sp), vocab, len(users)),
               "ials": ials,
               "two_tower": prior.augmented(users, items, cold, counts, weight)}  # fmt: skip
    tops = {name: metrics.top_k(*v, proto.exclude, K_MAX) for name, v in vectors.items()}
    if weight and cold.any():  # what the towers' cosine alone would rank
        tops["two_tower_cosine"] = metrics.top_k(users, items, proto.exclude, K_MAX)
    if artifacts.target(version, artifacts.INDEX) is not None:
        depth = max(K_MAX, cfg.candidates) if weight else K_MAX  # the prior's pool as served
        retrieved = ann_top(version, users, proto, depth)
        tops["two_tower_ann"] = [top[:K_MAX] for top in with_prior(
            retrieved, users, items, counts, cold, proto.exclude, weight
        )]  # fmt: skip
    ranker = version_ranker(version, vocab, progress)
    if ranker is not None:
        ranked = RankerView(ranker, user_x, catalogue_items(world, sp.test_time),
                            *vectors["two_tower"], proto.exclude)  # fmt: skip
        candidates = metrics.top_k(*vectors["two_tower"], proto.exclude, cfg.candidates)
        tops["two_stage"] = two_stage(candidates, ranked)
    users_info = {"test_users": len(proto.users), "warm_users": int(proto.warm.sum())}
    temporal = sp.kind == "temporal"
    result = {
        "dataset": manifest["dataset"],
        "split": {"kind": sp.kind, **asdict(split_cfg), **users_info},
        "model_version": manifest["version"], "ials": ials_params,
        "models": {name: scored(top, proto, temporal) for name, top in tops.items()},
    }  # fmt: skip
    if ranker is not None:
        result["ncf_protocol"] = ncf_protocol(sp.test, proto, vocab, vectors, ranked, cfg.seed)
    feature = group_feature(vocab)
    if feature:
        result["similar"] = similar(items, world.catalogue, feature, counts_of(before_test(sp),
                                                                                vocab))  # fmt: skip
    train_cfg = TrainConfig(**manifest["train"])
    if cfg.retrain and cfg.ablation:
        result["ablation"] = {
            name: scored(ablated(prof, train_cfg, split_cfg, modalities, world, proto, progress),
                         proto, temporal)
            for name, modalities in ABLATION.items()
            if set(modalities) <= set(modalities_of(vocab))
        }  # fmt: skip
    if cfg.retrain:
        result["cold_start"] = cold_start(prof, train_cfg, split_cfg, cfg, world, proto, progress)
    return result


def before_test(sp: Split) -> pd.DataFrame:
    return pd.concat([sp.train, sp.validation])


def users_at_test(world: World, sp: Split, user_ids: np.ndarray, afresh: bool = False) -> Inputs:
    """User-tower inputs of `user_ids` as of the test time. A random split is drawn after the
    store was built, whose activity features as of then count the test rows themselves: there
    (and with `afresh`: a cold start's store holds its held-out items) they are computed from the
    rows before the test instead, as the store would hold them had the rest never happened."""
    frame = user_frame(world.feast_store, user_ids, sp.test_time)
    if afresh or sp.kind == "random":
        frame = activity_from(before_test(sp), frame, world.shares, world.features)
    return user_inputs(frame, world.vocab)


def group_feature(vocab: Vocab) -> str | None:
    """The item feature that groups items for `/similar`'s check and the cold-start baselines:
    the first categorical or multi_categorical one (ml-*: genres), None where there is none."""
    return next(iter(vocab.shares), None)


def value_sets(catalogue: pd.DataFrame, feature: str) -> list[set[str]]:
    return [set(_names(v)) for v in catalogue[feature]]


def similar(items: np.ndarray, catalogue: pd.DataFrame, feature: str, counts: np.ndarray) -> dict:
    """What `/similar` returns, judged by `feature`: for every catalogue item with a value of it
    (a draw of SIMILAR_QUERIES of them in larger catalogues), the share of its SIMILAR_K nearest
    items (by item embedding, itself excluded) that share a value with it, against the SIMILAR_K
    most popular other items."""
    values = value_sets(catalogue, feature)
    queries = np.array([r for r, v in enumerate(values) if v])
    if len(queries) > SIMILAR_QUERIES:
        queries = np.sort(np.random.default_rng(0).choice(queries, SIMILAR_QUERIES, replace=False))
    if not len(queries):
        return {"feature": feature, "items": 0}
    nearest = metrics.top_k(items[queries], items, [{int(q)} for q in queries], SIMILAR_K)
    popular = np.argsort(-counts, kind="stable")[: SIMILAR_K + 1]
    top_popular = [[r for r in popular if r != q][:SIMILAR_K] for q in queries]

    def share(lists: list | np.ndarray) -> float:
        hits = [np.mean([bool(values[q] & values[r]) for r in rows if r >= 0])
                for q, rows in zip(queries, lists, strict=True)]  # fmt: skip
        return float(np.mean(hits))

    key = f"shared_value@{SIMILAR_K}"
    return {"feature": feature, "items": len(queries), "two_tower": {key: share(nearest)},
            "popularity": {key: share(top_popular)}}  # fmt: skip


def ablated(
    prof: store.Profile, cfg: TrainConfig, split_cfg: SplitConfig, modalities: tuple[str, ...],
    world: World, proto: Protocol, progress: Progress | None,
) -> np.ndarray:  # fmt: skip
    """Top K_MAX of the two-tower retrained with the item tower on `modalities` only."""
    say(progress, f"ablation: item tower on {'+'.join(modalities)}")
    f = fit(prof, cfg, split_cfg, modalities, progress=progress)
    user_x = users_at_test(f.world, f.split, proto.users)
    users = embed(f.user_tower, user_x).numpy()
    items = embed_items(f.item_tower, f.vocab, f.world.catalogue)
    counts = prior.log_counts(f.vocab.items.rows(before_test(f.split)["item_id"]),
                              len(f.vocab.items))  # fmt: skip
    weight = f.choices["cold_prior"]["value"]
    return metrics.top_k(*prior.augmented(users, items, prior.cold(user_x), counts, weight),
                         proto.exclude, K_MAX)  # fmt: skip


def cold_start_variants(vocab: Vocab) -> dict[str, tuple[str, ...] | None]:
    """The item tower's inputs per cold-start variant (None: every input it has): the published
    tower, content alone (no id input at all) and id+categorical, where the catalogue has them."""
    have = modalities_of(vocab)
    out: dict[str, tuple[str, ...] | None] = {"two_tower": None}
    content = tuple(m for m in have if m != "id")
    if content:
        out["+".join(content)] = content
    if "categorical" in have and content != ("categorical",):
        out["id+categorical"] = ("id", "categorical")
    return out


def cold_start(
    prof: store.Profile, cfg: TrainConfig, split_cfg: SplitConfig, eval_cfg: EvalConfig,
    world: World, proto: Protocol, progress: Progress | None = None,
) -> dict:  # fmt: skip
    """`cold_draw` repeated `eval_cfg.cold_draws` times, draw d with seed `cfg.seed + d` (for the
    held-out items and the training), each model's metrics averaged over the draws: on ml-1m one
    draw of 388 items put content's edge over id+categorical at +1%, the next at +11%."""
    draws = [cold_draw(prof, dataclasses.replace(cfg, seed=cfg.seed + d), split_cfg, eval_cfg,
                       world, proto, progress)
             for d in range(eval_cfg.cold_draws)]  # fmt: skip
    models = [name for name, value in draws[0].items() if isinstance(value, dict)]
    mean = {name: {m: float(np.mean([d[name][m] for d in draws])) for m in draws[0][name]}
            for name in models}  # fmt: skip
    return {"items": draws[0]["items"], "users": sum(d["users"] for d in draws), **mean,
            "draws": draws}  # fmt: skip


def cold_draw(
    prof: store.Profile, cfg: TrainConfig, split_cfg: SplitConfig, eval_cfg: EvalConfig,
    world: World, proto: Protocol, progress: Progress | None = None,
) -> dict:  # fmt: skip
    """A share of the catalogue held out of training entirely, then ranked among themselves for
    each test user who interacts with them: each of the tower variants from content alone (the
    held-out ids are unknown to it) against popularity within the group feature's values and the
    user's shares over them (where the items have such a feature)."""
    rng = np.random.default_rng(cfg.seed)
    ids = world.vocab.items.values
    size = max(1, int(len(ids) * eval_cfg.cold_items))
    rows = np.sort(rng.choice(len(ids), size=size, replace=False))  # catalogue rows held out
    hidden = frozenset(ids[rows].tolist())
    say(progress, f"cold start (seed {cfg.seed}): {len(hidden):,} items held out of training")
    local = {int(r): j for j, r in enumerate(rows)}
    relevant, exclude = ([{local[r] for r in s if r in local} for s in sets]
                         for sets in (proto.relevant, proto.exclude))  # fmt: skip
    keep = np.array([bool(rel) for rel in relevant])
    wanted, exclude = ([s for s, k in zip(sets, keep, strict=True) if k]
                       for sets in (relevant, exclude))  # fmt: skip
    vectors = {}
    for name, modalities in cold_start_variants(world.vocab).items():
        f = fit(prof, cfg, split_cfg, modalities, hidden=hidden, progress=progress)
        user_x = users_at_test(f.world, f.split, proto.users[keep], afresh=True)
        items = embed_items(f.item_tower, f.vocab, world.catalogue.iloc[rows])
        vectors[name] = (embed(f.user_tower, user_x).numpy(), items)
    feature = group_feature(world.vocab)
    if feature:
        before = before_test(f.split)  # without the held-out items
        vectors.update(group_baselines(before, world, feature, rows, proto.users[keep], rng))
    return {
        "seed": cfg.seed, "items": len(hidden), "users": int(keep.sum()),
        **{name: metrics.report(metrics.top_k(*v, exclude, K_MAX), wanted, K_VALUES)
           for name, v in vectors.items()},
    }  # fmt: skip


def group_baselines(
    before: pd.DataFrame, world: World, feature: str, rows: np.ndarray, users: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The cold start's baselines over the catalogue `rows`, as (user, item) vectors: popularity
    within the values of `feature` (ties broken at random), and the user's shares over them."""
    popular = untied(value_popularity(before, world, feature, rows), rng)
    scale = max(float(popular.max()), 1.0)
    hot = share_hot(world.catalogue[feature], world.vocab.shares[feature]).numpy()
    shares = user_shares(before, world.vocab, hot, users)
    spread = hot[rows] / np.maximum(hot[rows].sum(0), 1.0)
    with_ties = np.hstack([spread, 1e-9 * popular[:, None] / scale])
    return {
        f"popularity_within_{feature}": (np.ones((len(users), 1), np.float32), popular[:, None]),
        f"user_{feature}": (np.hstack([shares, np.ones((len(users), 1))]), with_ties),
    }


def user_shares(before: pd.DataFrame, vocab: Vocab, hot: np.ndarray,
                users: np.ndarray) -> np.ndarray:  # fmt: skip
    """(users, values): each user's share of earlier interactions on each value (`hot`: the
    catalogue's multi-hot over the values)."""
    of_user = before[before["user_id"].isin(users)]
    at = (pd.Index(users).get_indexer(of_user["user_id"]), vocab.items.rows(of_user["item_id"]))
    counts = sp_sparse.csr_matrix((np.ones(len(of_user)), at), (len(users), len(vocab.items)))
    in_value = counts @ hot
    return in_value / np.maximum(in_value.sum(1, keepdims=True), 1.0)


def untied(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each score's rank (0 the lowest), ties broken at random. Popularity within genre scores
    every item of a genre set alike (on ml-1m 48-83 of the 388 held-out items tie at its 20th
    place): its top k took them in whatever order the sort left them."""
    order = np.lexsort((rng.random(len(scores)), scores))
    ranks = np.empty(len(scores), dtype=np.float32)
    ranks[order] = np.arange(len(scores))
    return ranks


def value_popularity(before: pd.DataFrame, world: World, feature: str,
                     rows: np.ndarray) -> np.ndarray:  # fmt: skip
    """Each of the catalogue `rows`' score: the mean, over its values of `feature`, of how many
    interactions in `before` fell on that value."""
    per_item = counts_of(before, world.vocab)
    values = value_sets(world.catalogue, feature)
    per_value: dict[str, float] = {}
    for count, names in zip(per_item, values, strict=True):
        for v in names:
            per_value[v] = per_value.get(v, 0.0) + count
    return np.array([np.mean([per_value[v] for v in values[r]] or [0.0]) for r in rows],
                    dtype=np.float32)  # fmt: skip


def _names(values: object) -> list[str]:
    if values is None or isinstance(values, float):
        return []
    return [str(v) for v in values] if not isinstance(values, str) else [values]


def version_ranker(version: Path, vocab: Vocab, progress: Progress | None = None) -> Ranker | None:
    """The version's ranker, if it has one that fits its towers."""
    try:
        return load_ranker(version, vocab)[0]
    except BundleError as err:
        say(progress, f"{err}: left out")
        return None


@dataclass
class RankerView:
    """The ranker's scores of test users (rows of `users`) against catalogue rows (`items`), both
    sides' features as of the test time, beside their first-stage scores (from the retrieval
    stage's served scores, the inner products of `user_vectors` and `item_vectors`: the cosine,
    with the prior for users without history; and the catalogue rows each user had before the
    test, `history`)."""

    ranker: Ranker
    users: Inputs
    items: Inputs
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    history: list[set[int]]

    @torch.no_grad()
    def scores(self, row: int, items: np.ndarray) -> np.ndarray:
        one = take(self.users, torch.tensor([row]))
        item = take(self.items, torch.from_numpy(items))
        retrieval = torch.from_numpy(self.item_vectors[items] @ self.user_vectors[row])
        retrieval = self.ranker.first_stage(retrieval, self.history[row], items)
        return self.ranker.score(one, item, retrieval).numpy()


def two_stage(retrieval: np.ndarray, ranked: RankerView) -> list[list[int]]:
    """Each user's retrieved candidates (seen items excluded; -1 pads) re-ordered by the ranker."""
    out = []
    for row, top in enumerate(retrieval):
        items = top[top >= 0]
        out.append(items[np.argsort(-ranked.scores(row, items), kind="stable")].tolist())
    return out


def ncf_protocol(test: pd.DataFrame, proto: Protocol, vocab: Vocab,
                 vectors: dict[str, tuple[np.ndarray, np.ndarray]], ranked: RankerView,
                 seed: int) -> dict:  # fmt: skip
    """Each test user's latest test interaction ranked against 99 items the user never
    interacted with, sampled uniformly (He et al. 2017): HR@10 and NDCG@10 per model."""
    latest = test.sort_values("event_timestamp", kind="stable").groupby("user_id").tail(1)
    latest_item = latest.set_index("user_id")["item_id"]
    positives = vocab.items.rows(latest_item.reindex(proto.users).to_numpy())
    done = [e | r for e, r in zip(proto.exclude, proto.relevant, strict=True)]
    cand = ncf_candidates(positives, done, len(vocab.items), np.random.default_rng(seed))
    picked = {name: np.einsum("ud,ucd->uc", u, i[cand]) for name, (u, i) in vectors.items()}
    picked["ranker"] = np.stack([ranked.scores(r, c) for r, c in enumerate(cand)])
    out = {name: metrics.sampled_hits(s) for name, s in picked.items()}
    return {"users": len(cand), "negatives": cand.shape[1] - 1, **out}


def table(result: dict) -> str:
    """Recall and NDCG at each k per model, per warm/cold group on temporal splits and per group
    of users by their count of earlier items; then the ablation and the cold start, if run."""
    split_ = result["split"]
    rows = []
    for name, res in result["models"].items():
        groups = [(f" {g} ({res[g]['users']} users)", res[g]) for g in ("warm", "cold") if g in res]
        groups += [(f" {span} items ({v['users']} users)", v)
                   for span, v in res.get("by_activity", {}).items()]  # fmt: skip
        rows += [(name + label, v) for label, v in [("", res), *groups] if "recall@10" in v]
    title = f"{result['dataset']} ({split_['kind']} split, {split_['test_users']} test users)"
    title += "; " + activity_note(next(iter(result["models"].values())).get("by_activity", {}))
    sections = [(title, rows)]
    if "ablation" in result:
        sections.append(("ablation: the item tower on", list(result["ablation"].items())))
    if cold := result.get("cold_start"):
        seeds = ", ".join(str(d["seed"]) for d in cold["draws"])
        title = (f"cold start: {cold['items']:,} items held out, ranked among themselves; "
                 f"mean of {len(cold['draws'])} draws (seeds {seeds})")  # fmt: skip
        models = [name for name, v in cold.items() if isinstance(v, dict)]
        sections.append((title, [(name, cold[name]) for name in models]))
    width = max([26, *(len(label) + 2 for _, section in sections for label, _ in section)])
    cols = [f"{m}@{k}" for k in (10, 20) for m in ("recall", "ndcg")] + ["recall@100"]
    lines = []
    for title, section in sections:
        lines += [title, f"{'model':{width}s}" + "".join(f"{c:>12s}" for c in cols)]
        lines += [f"{label:{width}s}" + "".join(f"{v[c]:>12.4f}" for c in cols)
                  for label, v in section]  # fmt: skip
    return "\n".join(lines)
