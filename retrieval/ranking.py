"""The `ttr train-ranker` stage: NeuMF with side features on the towers' split, trained with
uniform and hard negatives, published under `<artifacts>/ranker/` with its own `latest`.

The ranker's user side is the `user_tower` feature service (the same user features the towers
read); its item side is the `ranker` service (content and popularity); beside them, the pair's
retrieval score. Positives are the training interactions with both sides point in time; each gets
`negatives` uniform items and `hard_negatives` items from the retrieval stage's top `hard_pool`
for that user (items the towers rank high that the user did not pick), paired with the positive's
user features and time.

The ranker's first-stage score is the towers' cosine plus, where the validation users choose it,
a weight times the item-to-item neighbours' score (`towers.neighbours`, fitted on the training
rows; `choose_neighbours`): the two rank about as well alone on ml-1m and far better together.
The ranker starts as the first-stage order (its output layer: that score, Platt-scaled to the
labels) and learns what to add. Early stopping scores each epoch on the served task (the
validation users' top `candidates` by the towers, re-ordered) and keeps the first-stage order
where no epoch beats it: NDCG@20 gained by `gain_z` standard errors of the users' paired
differences, no recall@20 or NDCG@20 lost (the neighbours' weight is chosen so too). Training
and validation use the towers trained before their refit, which never saw the validation rows;
the refit ranker, the published towers.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from retrieval import artifacts, prior, store
from retrieval.catalogue import read_meta
from retrieval.errors import TTRError
from retrieval.training import (
    Split,
    World,
    embed_items,
    embed_users,
    load_towers,
    read_split,
    sets_of_rows,
    training_users,
    validation_set,
    validation_towers,
    world_of,
)
from towers import metrics, neighbours
from towers import nn as tnn
from towers.features import training_frame
from towers.inputs import Vocab, categorical_inputs
from towers.progress import Progress, Step, report, say
from towers.ranker import Ranker, RankerConfig, popularity_inputs
from towers.train import Inputs, embed, take
from towers.user_tower import UserTower

if TYPE_CHECKING:
    from feast import FeatureStore

SERVICE = "ranker"
PAIRS = 1 << 18  # (user, item) pairs scored at once: 64 MiB of 64-d item rows
K = 20  # early stopping watches recall@K and NDCG@K of the served task
MIN_GROUP = 20  # validation users with and without history each, from which each group's figures
# are guarded apart: on ml-100k an epoch that lifted validation NDCG@20 0.2930 -> 0.3124 (users
# without history gaining) cost the test's users with history a quarter of their recall
DAY = pd.Timedelta(days=1)
NEIGHBOUR_LAMBDAS = (250.0, 500.0, 1000.0, 2000.0)  # the regularisation the validation users
NEIGHBOUR_WEIGHTS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)  # and weight of the neighbours' score
# beside the cosine choose among (ml-1m, seed 0: lambda 500, weight 0.35, validation Recall@20 /
# NDCG@20 0.2629 / 0.2152 against the towers' 0.2555 / 0.2082; the best at 250, 1,000 and 2,000:
# 0.2629 / 0.2144, 0.2627 / 0.2146, 0.2602 / 0.2128)


@dataclass(frozen=True)
class RankerTrainConfig:
    epochs: int = 10
    batch_size: int = 2048
    lr: float = 2e-3
    weight_decay: float = 1e-6
    negatives: int = 4  # uniform negatives per positive
    hard_negatives: int = 1  # negatives per positive from the retrieval stage's top items
    hard_pool: int = 500  # how deep in the retrieval ranking hard negatives are drawn (from the
    # top 100, ml-100k's validation HR@10 fell with each epoch: the towers' top items for a user
    # are often ones the user picks later; from the top 500 it rose 0.451 -> 0.496 in one epoch)
    patience: int = 2  # epochs without a better validation NDCG@20 before stopping
    candidates: int = 200  # the retrieval depth the ranker re-orders, as `ttr serve` hands it
    refit: bool = True  # then train afresh on training + validation rows for the best epochs
    gain_z: float = 2.0  # an order (an epoch, a neighbours' weight) replaces the one it starts
    # from only where its validation NDCG@20 gain is at least this many standard errors of the
    # users' paired differences (`gain_z`): on ml-100k (seed 1) an NCF epoch kept for validation
    # NDCG@20 0.3084 -> 0.3290 cost the test's users with history 0.2001 -> 0.1657 recall@20; at
    # 2, ml-100k's NCF epochs (z 0.3-0.9) are refused at seeds 0-2, ml-1m's neighbours pass (9.6)
    neighbours: bool = True  # offer the item-to-item neighbours to the validation users (chosen
    # where they beat the towers' order as an epoch must; catalogues up to neighbours.MAX_ITEMS)
    seed: int = 0


def ranker_items(feast_store: FeatureStore, vocab: Vocab, entities: pd.DataFrame) -> Inputs:
    """Item-side ranker inputs for (item_id, event_timestamp) rows, point in time."""
    return ranker_inputs(training_frame(feast_store, SERVICE, entities), vocab)


def ranker_inputs(frame: pd.DataFrame, vocab: Vocab) -> Inputs:
    """Item-side ranker inputs from a frame of the ranker service's item features (text and
    content vectors are the towers' input, not the ranker's)."""
    popularity = popularity_inputs(frame, vocab.rating)
    return {**categorical_inputs(frame, vocab), "popularity": popularity}


def item_table(
    feast_store: FeatureStore, vocab: Vocab, items: np.ndarray, times: pd.Series
) -> tuple[Inputs, np.ndarray]:
    """Item-side inputs for each (item, time) pair, read once per distinct (item, day): the
    popularity rows are stamped at day ends, so the value at any time of a day is the value at
    its start. Returns the table and each pair's row in it."""
    day = pd.to_datetime(times, utc=True).dt.floor("D")
    pairs = pd.DataFrame({"item_id": items, "event_timestamp": day.to_numpy()})
    distinct = pairs.drop_duplicates().reset_index(drop=True)
    where = pairs.merge(distinct.reset_index(), on=["item_id", "event_timestamp"], how="left")
    return ranker_items(feast_store, vocab, distinct), where["index"].to_numpy()


def hard_pools(
    user_x: np.ndarray, items: np.ndarray, users: np.ndarray, seen: pd.Series, depth: int
) -> dict[object, np.ndarray]:
    """Each user's top `depth` catalogue rows by the retrieval towers (`user_x` the embeddings of
    `users`, `items` of the catalogue), the user's own rows (`seen`: per user, a set of catalogue
    rows) out; every row where the user has seen all."""
    top = metrics.top_k(user_x, items, [seen.get(u, set()) for u in users], depth)
    pools = {}
    for user, row in zip(users, top, strict=True):
        pool = row[row >= 0]
        pools[user] = pool if len(pool) else np.arange(len(items))
    return pools


def pair_scores(user_x: torch.Tensor, items: np.ndarray, cand: np.ndarray) -> torch.Tensor:
    """(U, C) retrieval scores: row u of `user_x` against the catalogue rows `cand[u]`, whose
    embeddings are `items`; `PAIRS` pairs at a time (memory stays flat)."""
    table, rows = torch.from_numpy(items), torch.from_numpy(cand)
    step = max(1, PAIRS // cand.shape[1])
    return torch.cat([
        torch.einsum("ud,ucd->uc", user_x[s : s + step], table[rows[s : s + step]])
        for s in range(0, len(cand), step)
    ])  # fmt: skip


def negatives(
    positives: np.ndarray,
    users: np.ndarray,
    pools: dict[object, np.ndarray],
    n_items: int,
    cfg: RankerTrainConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, 1 + negatives + hard_negatives) catalogue rows: each positive, then its negatives."""
    uniform = rng.integers(n_items, size=(len(positives), cfg.negatives))
    hard = np.stack([rng.choice(pools[u], size=cfg.hard_negatives) for u in users])
    return np.concatenate([positives[:, None], uniform, hard], axis=1)


@dataclass
class Served:
    """The served task on validation users: each user's top `cand.shape[1]` catalogue rows by the
    retrieval towers (training items left out; -1 where fewer remain), in retrieval order, with
    their first-stage scores (`Ranker.first_stage`; as built, the retrieval stage's served scores:
    the cosine, with the prior for users without history); `items` the
    ranker's inputs of every catalogue row, `relevant[u]` the user's validation items,
    `history[u]` the catalogue rows the user had in training."""

    users: Inputs
    items: Inputs
    cand: np.ndarray
    retrieval: torch.Tensor
    relevant: list[set[int]]
    history: list[set[int]]

    def first_stage(self, ranker: Ranker) -> Served:
        """This task with the ranker's first-stage scores in place of the retrieval stage's."""
        if not ranker.config.neighbour_weight:
            return self
        scores = [ranker.first_stage(r, h, c) for r, h, c in
                  zip(self.retrieval, self.history, self.cand, strict=True)]  # fmt: skip
        return dataclasses.replace(self, retrieval=torch.stack(scores))


def served_task(world: World, towers: Towers, sp: Split, depth: int) -> Served:
    """The retrieval stage's answers to the validation users, as `ttr serve` would hand them to
    the ranker (the prior in the scores of users without history), both sides' features as of
    the validation time."""
    v = validation_set(world, sp)
    user_x, item_x = towers.vectors(v.users)
    cand = metrics.top_k(user_x, item_x, v.seen, depth)
    retrieval = pair_scores(torch.from_numpy(user_x), item_x, np.maximum(cand, 0))
    items = catalogue_items(world, sp.validation_time)
    return Served(v.users, items, cand, retrieval, v.relevant, v.seen)


def served_scores(ranker: Ranker, s: Served) -> np.ndarray:
    """(U, C) `ranker`'s scores of the served task's candidates."""
    n, c = s.cand.shape
    ranker.eval()
    scores, step = [], max(1, PAIRS // c)
    with torch.no_grad():
        for lo in range(0, n, step):
            rows = torch.arange(lo, min(n, lo + step))
            cand = torch.from_numpy(s.cand[lo : lo + step]).clamp(min=0).reshape(-1)
            logits = ranker(take(s.users, rows.repeat_interleave(c)), take(s.items, cand),
                            s.retrieval[lo : lo + step].reshape(-1))  # fmt: skip
            scores.append(logits.view(len(rows), c))
    return torch.cat(scores).numpy()


def ordered_metrics(scores: np.ndarray, s: Served, k: int = K) -> dict[str, float]:
    """Recall@k and NDCG@k of the served task's candidates ordered by `scores` (U, C); where at
    least MIN_GROUP users have no training history and as many have some, of each group too
    ("warm recall@k", "cold ndcg@k", ...): `no_worse` then guards each."""
    top = ordered(scores, s)
    out = {f"recall@{k}": metrics.recall_at_k(top, s.relevant, k),
           f"ndcg@{k}": metrics.ndcg_at_k(top, s.relevant, k)}  # fmt: skip
    cold = np.array([not h for h in s.history])
    if min(cold.sum(), (~cold).sum()) < MIN_GROUP:
        return out
    for name, group in (("warm", ~cold), ("cold", cold)):
        rows = np.flatnonzero(group)
        top_g, rel = [top[u] for u in rows], [s.relevant[u] for u in rows]
        out[f"{name} recall@{k}"] = metrics.recall_at_k(top_g, rel, k)
        out[f"{name} ndcg@{k}"] = metrics.ndcg_at_k(top_g, rel, k)
    return out


def ordered(scores: np.ndarray, s: Served) -> list[list[int]]:
    """Each user's candidates (catalogue rows) ordered by `scores` (U, C), best first."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(s.cand, order, axis=1)
    return [row[row >= 0].tolist() for row in ranked]


def user_ndcg(scores: np.ndarray, s: Served, k: int = K) -> np.ndarray:
    """(U,) each user's NDCG@k of the served task's candidates ordered by `scores` (U, C)."""
    return metrics.ndcg_per_user(ordered(scores, s), s.relevant, k)


def gain_z(scores: np.ndarray, start: np.ndarray, s: Served, k: int = K) -> float:
    """How far the order by `scores` lifts NDCG@k over the order whose `user_ndcg` is `start`, in
    standard errors of the users' paired differences (0 for a single user, whose noise is unknown;
    the error floored at 1e-12, where every user gains alike, to stay finite in a manifest)."""
    if len(s.cand) < 2:
        return 0.0
    diff = user_ndcg(scores, s, k) - start
    return float(diff.mean() / max(diff.std(ddof=1) / np.sqrt(len(diff)), 1e-12))


def no_worse(m: dict[str, float], start: dict[str, float]) -> bool:
    """Whether `m` loses no figure of the first-stage order's `start` (recall and NDCG, overall
    and in each group it holds)."""
    return all(m[name] >= start[name] for name in start)


def beats(m: dict[str, float], start: dict[str, float], least: float) -> bool:
    """Whether the order with figures `m` (its `gain_z` under "gain z") may replace the one with
    `start`: it loses no figure and gains NDCG@20 by at least `least` standard errors."""
    return no_worse(m, start) and m["gain z"] >= least


def choose_neighbours(
    rows: pd.DataFrame, vocab: Vocab, s: Served, cfg: RankerTrainConfig,
    progress: Progress | None = None,
) -> tuple[dict, np.ndarray | None]:  # fmt: skip
    """The neighbours' regularisation and weight (of NEIGHBOUR_LAMBDAS and NEIGHBOUR_WEIGHTS) whose
    first-stage order of the served task `s` has the best NDCG@20 among those that `beats` lets
    replace the retrieval stage's order, fitted on `rows`; weight 0 (and no matrix) where none
    does or they are not offered. Returns the choice (with its reason and the validation
    figures) and the matrix."""
    start = ordered_metrics(s.retrieval.numpy(), s)
    out = {"lambda": 0.0, "weight": 0.0, "retrieval_order": start}
    if not cfg.neighbours or len(vocab.items) > neighbours.MAX_ITEMS:
        why = "not offered" if not cfg.neighbours else (f"{len(vocab.items):,} items, more than "
                                                        f"{neighbours.MAX_ITEMS:,}")  # fmt: skip
        return {**out, "reason": why}, None
    best, tried = neighbour_grid(rows, vocab, s, start, cfg.gain_z, progress)
    if best is None:
        why = (
            f"no weight gained NDCG@20 on the validation users by {cfg.gain_z:g} standard errors "
            "without losing another figure"
        )
        return {**out, "reason": why, "tried": tried}, None
    why = (
        f"the best validation NDCG@20 of {len(tried)} tried, gaining by {cfg.gain_z:g} standard "
        "errors and losing no other figure"
    )
    chosen = {"lambda": best["lambda"], "weight": best["weight"], "validation": best["m"]}
    return {**out, **chosen, "reason": why, "tried": tried}, best["matrix"]


def neighbour_grid(
    rows: pd.DataFrame, vocab: Vocab, s: Served, start: dict[str, float], least: float,
    progress: Progress | None,
) -> tuple[dict | None, list[dict]]:  # fmt: skip
    """Every (lambda, weight) of the grid on the served task: the best that `beats` `start` by
    `least` standard errors (None where none does), and each one's figures."""
    users, items = rows["user_id"].to_numpy(), vocab.items.rows(rows["item_id"])
    best, tried, top, cosine = None, [], start, s.retrieval.numpy()
    base = user_ndcg(cosine, s)
    for lam in NEIGHBOUR_LAMBDAS:
        matrix = neighbours.fit(users, items, len(vocab.items), lam)
        added = neighbours.scores_of(matrix, s.history, s.cand)
        for weight in NEIGHBOUR_WEIGHTS:
            scores = cosine + weight * added
            m = {**ordered_metrics(scores, s), "gain z": gain_z(scores, base, s)}
            tried.append({"lambda": lam, "weight": weight, **m})
            if beats(m, start, least) and m[f"ndcg@{K}"] > top[f"ndcg@{K}"]:
                best, top = {"lambda": lam, "weight": weight, "m": m, "matrix": matrix}, m
        say(progress, f"neighbours at lambda {lam:g}: best so far {_shown(top)}")
    return best, tried


def calibrate(ranker: Ranker, data: Examples, steps: int = 50) -> tuple[float, float]:
    """Fit the output layer's retrieval weight and bias to the labels with everything else at
    zero (Platt scaling of the retrieval score), so training starts from a calibrated retrieval
    order instead of undoing an overconfident one."""
    scale = torch.tensor([ranker.config.retrieval_scale], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([scale, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(scale * data.retrieval + bias, data.labels)
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        ranker.out.weight[0, -1] = scale.item()
        ranker.out.bias.fill_(bias.item())
    return scale.item(), bias.item()


def fit_ranker(
    ranker: Ranker,
    data: Examples,
    validation: Served | None,
    cfg: RankerTrainConfig,
    progress: Progress | None = None,
) -> dict:
    """Binary cross-entropy over `data`. With a `validation` set, keeps the epoch with the best
    NDCG@20 on the served task among those that `beat` the first-stage order (epoch 0, the
    untrained ranker: no figure lost, overall nor in either group of users, and NDCG@20 gained
    beyond the noise), which wins where none does; stops after
    `patience` epochs without progress. Without one, runs every epoch and keeps the last."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    steppers = tnn.optimizers(ranker, cfg.lr, cfg.weight_decay)
    history, best, start = [], {}, {}
    scale, bias = calibrate(ranker, data)
    sign = "-" if bias < 0 else "+"
    say(progress, f"the retrieval score calibrated: logit = {scale:.2f} * score {sign} "
                  f"{abs(bias):.2f}")  # fmt: skip
    if validation is not None:
        first = served_scores(ranker, validation)
        start, base = ordered_metrics(first, validation), user_ndcg(first, validation)
        history.append({"epoch": 0, **start})
        say(progress, f"epoch 0 (the first-stage order): {_shown(start)}")
        best = {"epoch": 0, "m": start, "state": copy.deepcopy(ranker.state_dict())}
    for epoch in range(cfg.epochs):
        task = f"epoch {epoch + 1}/{cfg.epochs}"
        step = _epoch(ranker, data, steppers, cfg, generator, task, progress)
        if validation is None:
            history.append({"epoch": epoch + 1, **step})
            say(progress, f"{task}: loss {step['loss']:.4f}, {step['examples_per_s']:,.0f} "
                          "examples/s")  # fmt: skip
            continue
        scores = served_scores(ranker, validation)
        m = {**ordered_metrics(scores, validation), "gain z": gain_z(scores, base, validation)}
        history.append({"epoch": epoch + 1, **step, **m})
        say(progress, f"{task}: loss {step['loss']:.4f}, {_shown(m)}, "
                      f"{step['examples_per_s']:,.0f} examples/s")  # fmt: skip
        if beats(m, start, cfg.gain_z) and m[f"ndcg@{K}"] > best["m"][f"ndcg@{K}"]:
            best = {"epoch": epoch + 1, "m": m, "state": copy.deepcopy(ranker.state_dict())}
        elif epoch + 1 - best["epoch"] >= cfg.patience:
            break
    if validation is None:
        return {"epochs": cfg.epochs, "history": history}
    ranker.load_state_dict(best["state"])
    out = {"best_epoch": best["epoch"], "retrieval_order": start}
    return {**out, **{f"val_{k}": v for k, v in best["m"].items()}, "history": history}


def _epoch(ranker: Ranker, data: Examples, steppers: list, cfg: RankerTrainConfig,
           generator: torch.Generator, task: str, progress: Progress | None) -> dict:  # fmt: skip
    """One pass over `data` in shuffled batches: the mean loss and the examples a second."""
    ranker.train()
    n = len(data.labels)
    order, began, total = torch.randperm(n, generator=generator), time.perf_counter(), 0.0
    batches = -(-n // cfg.batch_size)
    for batch, lo in enumerate(range(0, n, cfg.batch_size)):
        b = order[lo : lo + cfg.batch_size]
        user, item = take(data.users, data.rows[b]), take(data.items, data.where[b])
        loss = F.binary_cross_entropy_with_logits(ranker(user, item, data.retrieval[b]),
                                                  data.labels[b])  # fmt: skip
        for optimizer in steppers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in steppers:
            optimizer.step()
        total += loss.item() * len(b)
        report(progress, Step(task, batch + 1, batches, "batches"))
    return {"loss": total / n, "examples_per_s": n / (time.perf_counter() - began)}


def _shown(m: dict[str, float]) -> str:
    return ", ".join(f"val {name} {value:.4f}" for name, value in m.items())


def ncf_candidates(
    positives: np.ndarray,
    exclude: list[set[int]],
    n_items: int,
    rng: np.random.Generator,
    n: int = 99,
) -> np.ndarray:
    """(U, 1 + n) catalogue rows: each user's positive, then n distinct items sampled uniformly
    among those the user never interacted with (the NCF evaluation protocol). A small catalogue
    lowers n to what every user has left."""
    n = min(
        n,
        n_items
        - 1
        - max((len(d | {int(p)}) - 1 for p, d in zip(positives, exclude, strict=True)), default=0),
    )
    if n < 1:
        raise TTRError("the catalogue leaves no negatives to sample for some user")
    out = np.empty((len(positives), n + 1), dtype=np.int64)
    for u, (pos, done) in enumerate(zip(positives, exclude, strict=True)):
        out[u] = [pos, *outside(done | {int(pos)}, n_items, n, rng)]
    return out


def outside(banned: set[int], n_items: int, n: int, rng: np.random.Generator) -> list[int]:
    """n distinct rows of range(n_items) outside `banned`, uniformly: drawn at random and kept
    when new where most rows are allowed (listing a million-row catalogue per user cost 10 ms),
    else chosen from the list of allowed rows."""
    if n_items - len(banned) < 4 * n:
        allowed = np.setdiff1d(np.arange(n_items), list(banned))
        return rng.choice(allowed, size=n, replace=False).tolist()
    taken, picked = set(banned), []
    while len(picked) < n:
        for row in rng.integers(n_items, size=2 * n).tolist():
            if row not in taken and len(picked) < n:
                taken.add(row)
                picked.append(row)
    return picked


def catalogue_items(world: World, at: pd.Timestamp) -> Inputs:
    """Item-side ranker inputs of every catalogue row as of `at`."""
    ids = world.vocab.items.values
    return ranker_items(
        world.feast_store, world.vocab, pd.DataFrame({"item_id": ids, "event_timestamp": at})
    )


@dataclass
class Towers:
    """The retrieval version's user tower and its item embeddings of the catalogue, with the
    popularity prior its training chose for users without history (`retrieval.prior`: `weight`
    times `counts`, each catalogue row's log count in the rows the towers were trained on)."""

    user: UserTower
    items: np.ndarray
    weight: float = 0.0
    counts: np.ndarray | None = None

    @classmethod
    def load(cls, version: Path, vocab: Vocab, catalogue: pd.DataFrame, weight: float = 0.0,
             rows: pd.DataFrame | None = None) -> Towers:  # fmt: skip
        """The towers saved in `version`; the prior at `weight` over the items of `rows`."""
        user_tower, item_tower = load_towers(version)
        counts = None if rows is None else prior.log_counts(vocab.items.rows(rows["item_id"]),
                                                            len(vocab.items))  # fmt: skip
        return cls(user_tower, embed_items(item_tower, vocab, catalogue), weight, counts)

    def vectors(self, users: Inputs) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) vectors whose inner product is the retrieval stage's served score: the
        cosine, plus the prior for the users (rows of `users`, the tower's inputs) without
        history."""
        user_x = embed(self.user, users).numpy()
        if not self.weight or self.counts is None:
            return user_x, self.items
        return prior.augmented(user_x, self.items, prior.cold(users), self.counts, self.weight)


@dataclass
class Examples:
    """Training examples: row i pairs users[rows[i]] with items[where[i]], labelled labels[i],
    the pair's retrieval score retrieval[i]."""

    users: Inputs
    rows: torch.Tensor
    items: Inputs
    where: torch.Tensor
    labels: torch.Tensor
    retrieval: torch.Tensor


def examples(world: World, towers: Towers, sp: Split, data: pd.DataFrame, cfg: RankerTrainConfig,
             rng: np.random.Generator, ranker: Ranker) -> Examples:  # fmt: skip
    """Each interaction in `data` with its uniform and hard negatives, both sides' features as
    of the interaction (as of the test time where the split has no time order), and each pair's
    first-stage score by `ranker` (its user's items: their rows in `data`)."""
    vocab = world.vocab
    _, users = training_users(world, data)
    seen = sets_of_rows(data, vocab)
    at = sp.validation_time if data["event_timestamp"].max() < sp.validation_time else sp.test_time
    pool_users = np.sort(data["user_id"].unique())
    pool_x = embed_users(world.feast_store, towers.user, vocab, pool_users, at)
    pools = hard_pools(pool_x, towers.items, pool_users, seen, cfg.hard_pool)
    cand = negatives(vocab.items.rows(data["item_id"]), data["user_id"].to_numpy(), pools,
                     len(vocab.items), cfg, rng)  # fmt: skip
    times = data["event_timestamp"]
    if world.as_of is not None:
        times = pd.Series(world.as_of, index=data.index)
    per_row = cand.shape[1]
    table, where = item_table(world.feast_store, vocab, vocab.items.values[cand.reshape(-1)],
                              times.repeat(per_row).reset_index(drop=True))  # fmt: skip
    labels = np.zeros(cand.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    user_x, item_x = towers.vectors(users)
    retrieval = first_stage(ranker, pair_scores(torch.from_numpy(user_x), item_x, cand),
                            data["user_id"].to_numpy(), seen, cand)  # fmt: skip
    users = {k: v for k, v in users.items() if k != "recent_items"}  # the towers', not the ranker's
    return Examples(users, torch.arange(len(cand)).repeat_interleave(per_row), table,
                    torch.from_numpy(where), torch.from_numpy(labels.reshape(-1)),
                    retrieval.reshape(-1))  # fmt: skip


def first_stage(ranker: Ranker, retrieval: torch.Tensor, users: np.ndarray, seen: pd.Series,
                cand: np.ndarray) -> torch.Tensor:  # fmt: skip
    """`Ranker.first_stage` of each row's candidates `cand` (with cosines `retrieval`), the row's
    user `users[i]` having had the rows `seen[users[i]]`: one call per user."""
    if not ranker.config.neighbour_weight:
        return retrieval
    out = retrieval.clone()
    for user, where in pd.Series(np.arange(len(users))).groupby(users).indices.items():
        out[where] = ranker.first_stage(retrieval[where], seen.get(user, set()), cand[where])
    return out


def ranker_with(config: RankerConfig, matrix: np.ndarray | None, seed: int) -> Ranker:
    """A fresh ranker (seeded) holding the neighbour matrix, where there is one."""
    torch.manual_seed(seed)
    ranker = Ranker(config)
    if matrix is not None:
        ranker.neighbour_matrix.copy_(torch.from_numpy(matrix))
    return ranker


def run(prof: store.Profile, root: Path, cfg: RankerTrainConfig,
        progress: Progress | None = None) -> Path:  # fmt: skip
    """Train the ranker on the latest retrieval version's split, early stopping on validation;
    then (`cfg.refit`) afresh on training + validation rows for the best number of epochs, as the
    towers do. Published inside that version (`<version>/ranker`): a ranker always belongs to the
    towers it was trained for. Returns its directory."""
    version = artifacts.trained(root)
    manifest = artifacts.manifest(version)
    sp = read_split(prof.offline_dir, manifest["split"], manifest["train"]["seed"])
    world = world_of(prof, sp, read_meta(prof.offline_dir), vocab=Vocab.load(version))
    vocab = world.vocab
    rng = np.random.default_rng(cfg.seed)
    began = time.perf_counter()
    config = RankerConfig(
        vocab.num_users, vocab.num_items, vocab.fields("user"), vocab.fields("item"),
        vocab.share_widths(), retrieval_scale=1 / manifest["train"]["temperature"],
    )  # fmt: skip
    weight = prior.weight(manifest)
    towers = Towers.load(validation_towers(version), vocab, world.catalogue, weight, sp.train)
    validation = served_task(world, towers, sp, cfg.candidates)
    chosen, matrix = choose_neighbours(sp.train, vocab, validation, cfg, progress)
    if matrix is not None:
        config = dataclasses.replace(config, neighbour_items=len(matrix),
                                     neighbour_weight=chosen["weight"])  # fmt: skip
    say(progress, f"neighbours: weight {chosen['weight']:g}, {chosen['reason']}")
    ranker = ranker_with(config, matrix, cfg.seed)
    data = examples(world, towers, sp, sp.train, cfg, rng, ranker)
    result = fit_ranker(ranker, data, validation.first_stage(ranker), cfg, progress)
    if cfg.refit:
        say(progress, f"refit: training + validation rows, {result['best_epoch']} epochs")
        rows = pd.concat([sp.train, sp.validation])
        towers = Towers.load(version, vocab, world.catalogue, weight, rows)
        if matrix is not None:
            matrix = neighbours.fit(rows["user_id"].to_numpy(), vocab.items.rows(rows["item_id"]),
                                    len(vocab.items), chosen["lambda"])  # fmt: skip
        ranker = ranker_with(config, matrix, cfg.seed)
        data = examples(world, towers, sp, rows, cfg, rng, ranker)
        again = dataclasses.replace(cfg, epochs=result["best_epoch"])
        result["refit"] = fit_ranker(ranker, data, None, again, progress)
    info = {
        "dataset": manifest["dataset"],
        "retrieval_version": manifest["version"],
        "feature_services": {"user": "user_tower", "item": SERVICE},
        "train": asdict(cfg),
        "examples": len(data.labels),
        "neighbours": chosen,
        "seconds": time.perf_counter() - began,
        "metrics": result,
    }
    before = artifacts.target(version, artifacts.RANKER)
    with artifacts.staging(version) as staged:
        tnn.save(ranker, staged, "ranker")
        name = f"ranker-{artifacts.stamp()}"
        published = artifacts.publish(version, staged, {"stage": "train-ranker", **info},
                                      artifacts.RANKER, name)  # fmt: skip
    if before is not None:
        shutil.rmtree(before, ignore_errors=True)  # a server holding it has it in memory
    return published
