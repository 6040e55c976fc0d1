"""Training both towers with in-batch sampled softmax, and the retrieval metrics it stops on."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from towers import distributed, metrics
from towers import nn as tnn
from towers.item_tower import ItemTower
from towers.losses import sampled_softmax_loss
from towers.progress import Progress, Step, report, say
from towers.user_tower import UserTower

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 0  # at most; 0: chosen from the training rows (`ttr train`: retrieval/adapt.py,
    # 30 where they fit a budget of examples, fewer on larger data)
    dim: int = 0  # both towers' output width; 0: chosen from the training rows (`ttr train`:
    # retrieval/adapt.py, 64 or 128; the towers' own default is UserTowerConfig.dim)
    batch_size: int = 0  # examples a step; 0: chosen from the training rows (`ttr train`:
    # retrieval/adapt.py, 1,024 on large data, 512 on small)
    lr: float = 3e-3
    weight_decay: float = 1e-6
    temperature: float = 0.05
    logq: float = 1.25  # weight of the logQ correction (0: in-batch sampling sinks popular items;
    # above 1 leaves some popularity in the scores; ml-1m validation recall@20 after 6 epochs,
    # user_weight 0.5: 0.1728 at 0.5, 0.2104 at 1, 0.2128 at 1.25, 0.2083 at 1.5)
    extra_negatives: int = 0  # uniform negatives added to the in-batch ones, per batch
    patience: int = 5  # epochs without a better validation recall before stopping (ml-1m's
    # validation recall dips for 3-4 epochs at a time and climbs on to epoch 26-29 of 30)
    min_epochs: int = 0  # epochs run before patience may stop; 0: half of `epochs` (amazon-hin's
    # validation recall sits below its first epoch's for 4-5 epochs before it climbs: on patience
    # alone seed 2 stopped at epoch 6 and kept epoch 1, popularity's level on test)
    refit: bool = True  # then train afresh on training + validation rows for the best epochs
    user_ids: bool = False  # a user-id input (with dropout) beside the user's features
    user_weight: float = 0.5  # examples weigh n^-user_weight, n their user's count: recall
    # averages over users, a loss over examples leans on the heaviest (0: all weigh the same;
    # ml-1m validation recall@20 after 6 epochs 0.2055 at 0, 0.2104 at 0.5, 0.2086 at 1)
    mask_seen: bool = True  # a batch's items that the row's user had by the row's time (on
    # splits without time order, every training item of theirs) are not the row's negatives: the
    # target is ranked, as served, among the items the user has not seen. ml-1m (given split, 128
    # wide): validation recall@20 / NDCG@20 0.2446 / 0.1999 against 0.2392 / 0.1917 without,
    # test 0.2644 / 0.3910 against 0.2567 / 0.3753 (iALS 0.2530 / 0.3852); ml-100k (temporal),
    # test recall@20 over seeds 0-5 0.1417 against 0.1359 (masking the user's later items too:
    # 0.1237)
    average: float = 1.0  # validate and keep a moving average of the weights over about this
    # many epochs, not the last step's (0: the last step's). ml-100k test recall@20 over seeds
    # 0-2: 0.1334 at 1, 0.1303 at 3, 0.1223 without (warm users 0.1685 / 0.1590 / 0.1363);
    # ml-1m validation recall@20 / NDCG@20 in 17 epochs 0.2430 / 0.2010 against 0.2394 / 0.1978;
    # amazon-hin test recall@20 over seeds 0-1 0.0322 against 0.0315 (warm 0.0388 / 0.0379)
    shared_history: bool | None = None  # the user tower pools its recent items from the item
    # tower's id table (SimpleX's form: a user near the items they had), not from a table of its
    # own; None: chosen from the data (`ttr train`: retrieval/adapt.py, where rows carry no time)
    id_dropout: float | None = None  # share of training rows whose item id the item tower drops
    # (ItemTowerConfig.id_dropout); None: chosen from the data (`ttr train`: retrieval/adapt.py,
    # 0.2 where validation has items training never saw, else 0)
    k: int = 20  # the recall@k early stopping watches
    seed: int = 0


class TwoTowers(torch.nn.Module):
    """Both towers as one module (what DDP wraps): users and items in, their embeddings out."""

    def __init__(self, user_tower: UserTower, item_tower: ItemTower) -> None:
        super().__init__()
        self.user_tower, self.item_tower = user_tower, item_tower

    def forward(self, users: Inputs, items: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_tower(users), self.item_tower(items)


def take(x: Inputs, rows: torch.Tensor) -> Inputs:
    return {name: t.index_select(0, rows) for name, t in x.items()}


@torch.no_grad()
def embed(tower: torch.nn.Module, x: Inputs, batch: int = 8192) -> torch.Tensor:
    """Embeddings of every row of `x`, in eval mode and in batches."""
    tower.eval()
    n = len(next(iter(x.values())))
    return torch.cat(
        [tower(take(x, torch.arange(i, min(i + batch, n)))) for i in range(0, n, batch)]
    )


@dataclass
class Validation:
    users: Inputs  # one row per validation user
    relevant: list[set[int]]  # catalogue row indices each user interacts with after the cut
    seen: list[set[int]]  # catalogue row indices each user interacted with in training


def validate(users: torch.Tensor, items: torch.Tensor, validation: Validation,
             k: int) -> dict[str, float]:  # fmt: skip
    """Recall@k and NDCG@k of the embedded validation users over the embedded catalogue."""
    top = metrics.top_k(users, items, validation.seen, k)
    return {"recall": metrics.recall_at_k(top, validation.relevant, k),
            "ndcg": metrics.ndcg_at_k(top, validation.relevant, k)}  # fmt: skip


def scored(user_tower: UserTower, item_tower: ItemTower, catalogue: Inputs,
           validation: Validation, k: int) -> dict[str, float]:  # fmt: skip
    """The towers' validation recall@k and NDCG@k."""
    users, items = embed(user_tower, validation.users), embed(item_tower, catalogue)
    return validate(users, items, validation, k)


def user_weights(user_ids: torch.Tensor, power: float) -> torch.Tensor:
    """Each example's weight, n^-power with n its user's number of examples, scaled to mean 1."""
    _, inverse, counts = torch.unique(user_ids, return_inverse=True, return_counts=True)
    weights = counts[inverse].double() ** -power
    return (weights / weights.mean()).float()


class Positives:
    """Which of a batch's candidates each training row's user had by the row's time: the rows
    before it in `times` (without times, every one of the user's rows). Read from a table per
    (user, item) where it fits in `dense_limit` bytes, else from the rows grouped by user: with
    times the table holds each pair's first position in time (int32), without them whether the
    user had the item (a byte). Marking 1,024 ml-1m rows' ~900 candidates (their users hold
    ~400k positives between them) took 2.6 ms from an int32 table and 11 ms from the groups; a
    byte table gathers 2-3x faster than an int32 one (1,024 x 728 pairs from 6,041 x 3,953)."""

    def __init__(
        self,
        user_ids: torch.Tensor,
        item_rows: torch.Tensor,
        n_items: int,
        times: torch.Tensor | None = None,
        dense_limit: int = 1 << 27,
    ) -> None:
        if times is None:
            ranks, self.row_ranks = torch.zeros_like(user_ids), torch.ones_like(user_ids)
        else:
            ranks = self.row_ranks = torch.unique(times, return_inverse=True)[1]
        self.user_ids = user_ids
        n_users = int(user_ids.max()) + 1
        pairs = user_ids * n_items + item_rows
        self.table = None
        if times is None and n_users * n_items <= dense_limit:
            had = torch.zeros(n_users * n_items, dtype=torch.bool)
            had[pairs] = True
            self.table = had.view(n_users, n_items)
            return
        if n_users * n_items * 4 <= dense_limit:
            first = torch.full(
                (n_users * n_items,), torch.iinfo(torch.int32).max, dtype=torch.int32
            )
            first.scatter_reduce_(0, pairs, ranks.int(), "amin")
            self.table = first.view(n_users, n_items)
            return
        order = torch.argsort(user_ids, stable=True)
        self.items, self.ranks = item_rows[order], ranks[order]
        per_user = torch.bincount(user_ids, minlength=n_users)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), per_user.cumsum(0)])
        self.column = torch.full((n_items,), -1, dtype=torch.long)

    def among(self, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B, C) bool: had training row `rows[b]`'s user catalogue row `candidates[c]` by then."""
        user_ids, by = self.user_ids[rows], self.row_ranks[rows]
        if self.table is not None:
            pairs = user_ids[:, None] * self.table.shape[1] + candidates[None, :]
            taken = self.table.view(-1)[pairs]
            return taken if taken.dtype == torch.bool else taken < by[:, None]
        starts = self.offsets[user_ids]
        lengths = self.offsets[user_ids + 1] - starts
        owner = torch.repeat_interleave(torch.arange(len(user_ids)), lengths)
        at = torch.arange(len(owner)) + (starts - lengths.cumsum(0) + lengths)[owner]
        self.column[candidates] = torch.arange(len(candidates))
        column = self.column[self.items[at]]
        self.column[candidates] = -1
        spare = (column < 0) | (self.ranks[at] >= by[owner])  # no candidate, or not yet had
        column[spare] = len(candidates)  # a spare column, dropped
        out = torch.zeros(len(user_ids), len(candidates) + 1, dtype=torch.bool)
        out[owner, column] = True
        return out[:, :-1]


class Averaged:
    """An exponential moving average of a model's dense parameters over about `steps` steps
    (none where `steps` is 0), swapped into the model in place; over fewer updates than that, the
    plain mean of every update's weights (so the random start weighs no more than a step).
    Sparse id tables keep their own weights: averaging a million-row table would visit every
    row at every step."""

    def __init__(self, model: torch.nn.Module, steps: float) -> None:
        sparse = {id(t) for t in tnn.sparse_tables(model)}
        self.params = [p for p in model.parameters() if steps > 0 and id(p) not in sparse]
        self.shadow = [p.detach().clone() for p in self.params]
        self.steps, self.updates = max(steps, 1.0), 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1 / min(self.steps, self.updates)
        if self.params:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)

    @torch.no_grad()
    def swap(self) -> None:
        """The average into the model, the model's weights into the average."""
        for p, s in zip(self.params, self.shadow, strict=True):
            kept = p.detach().clone()
            p.copy_(s)
            s.copy_(kept)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        self.swap()
        try:
            yield
        finally:
            self.swap()


def train(
    user_tower: UserTower,
    item_tower: ItemTower,
    users: Inputs,
    item_rows: torch.Tensor,
    item_log_q: torch.Tensor,
    catalogue: Inputs,
    validation: Validation | None,
    cfg: TrainConfig,
    times: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> dict:
    """Fit both towers on positive pairs (row i of `users`, row `item_rows[i]` of `catalogue`);
    `item_log_q[r]` is the log sampling probability of catalogue row r. With a `validation` set,
    keeps the weights of the epoch with the best validation recall@k and stops after `patience`
    epochs without progress (not before `min_epochs`); without one, runs every epoch and keeps the
    last. The weights validated and kept are their moving average over `cfg.average` epochs
    (`Averaged`). `times` (each row's time, int64) tell `cfg.mask_seen` which items a row's user
    had by then; without them, every training item of the user counts as had."""
    if cfg.epochs <= 0 or cfg.batch_size <= 0:
        raise ValueError(f"epochs {cfg.epochs} and batch_size {cfg.batch_size}: both must be "
                         "positive (`ttr train` chooses each left at 0 from the data)")  # fmt: skip
    torch.manual_seed(cfg.seed + distributed.rank())  # dropout and history draws: per process
    generator = torch.Generator().manual_seed(cfg.seed)  # the epochs' order: the same in all
    model = distributed.wrap(TwoTowers(user_tower, item_tower))
    steppers = tnn.optimizers(model, cfg.lr, cfg.weight_decay, fused=True)
    progress = progress if distributed.main() else None
    n, n_items = len(item_rows), len(item_log_q)
    n -= n % distributed.world()  # so that every process has a share of every batch
    weights = user_weights(users["user"], cfg.user_weight)
    positives = Positives(users["user"], item_rows, n_items, times) if cfg.mask_seen else None
    best = {"recall": -1.0, "epoch": -1, "state": None}
    averaged = Averaged(model, cfg.average * -(-n // cfg.batch_size))
    history, stopped = [], "epochs"
    floor = cfg.min_epochs or -(-cfg.epochs // 2)  # before it, early stopping waits
    for epoch in range(cfg.epochs):
        user_tower.train()
        item_tower.train()
        order = torch.randperm(len(item_rows), generator=generator)[:n]
        began, total, done = time.perf_counter(), 0.0, 0
        task, batches = f"epoch {epoch + 1}/{cfg.epochs}", -(-n // cfg.batch_size)
        for batch, start in enumerate(range(0, n, cfg.batch_size)):
            rows = distributed.my_slice(order[start : start + cfg.batch_size])
            cand = item_rows[rows]
            if cfg.extra_negatives:
                extra = torch.randint(n_items, (cfg.extra_negatives,), generator=generator)
                cand = torch.cat([cand, extra])
            distinct, inverse, counts = torch.unique(cand, return_inverse=True, return_counts=True)
            u, v = model(take(users, rows), take(catalogue, distinct))
            labels = inverse[: len(rows)]
            excluded = None
            if positives is not None:
                excluded = positives.among(rows, distinct)
                excluded[torch.arange(len(rows)), labels] = False
            loss = sampled_softmax_loss(
                u, v, cfg.logq * item_log_q[distinct], cfg.temperature,
                labels, counts, weights[rows], excluded,
            )  # fmt: skip
            for optimizer in steppers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in steppers:
                optimizer.step()
            averaged.update()
            total, done = total + loss.item() * len(rows), done + len(rows)
            report(progress, Step(task, batch + 1, batches, "batches"))
        seconds = time.perf_counter() - began
        step = {"epoch": epoch + 1, "loss": total / done, "examples_per_s": n / seconds}
        if validation is None:
            history.append(step)
            say(progress, f"{task}: loss {total / done:.4f}, {n / seconds:,.0f} examples/s")
            continue
        with averaged.swapped():
            scores = distributed.agree(
                scored(user_tower, item_tower, catalogue, validation, cfg.k)
                if distributed.main() else None
            )  # fmt: skip
            history.append({**step, **scores})
            figures = f"recall@{cfg.k} {scores['recall']:.4f} NDCG@{cfg.k} {scores['ndcg']:.4f}"
            say(progress, f"{task}: loss {total / done:.4f}, val {figures}, "
                          f"{n / seconds:,.0f} ex/s")  # fmt: skip
            improved = scores["recall"] > best["recall"]
            if improved:
                state = (copy.deepcopy(user_tower.state_dict()),
                         copy.deepcopy(item_tower.state_dict()))  # fmt: skip
                best = {**scores, "epoch": epoch + 1, "state": state}
        if not improved and epoch + 1 - best["epoch"] >= cfg.patience and epoch + 1 >= floor:
            stopped = "patience"
            break
    if validation is None:
        averaged.swap()  # the average is what the run keeps
        return {"epochs": cfg.epochs, "history": history}
    user_tower.load_state_dict(best["state"][0])
    item_tower.load_state_dict(best["state"][1])
    return {"best_epoch": best["epoch"], f"val_recall@{cfg.k}": best["recall"],
            f"val_ndcg@{cfg.k}": best["ndcg"], "stopped": stopped, "history": history}  # fmt: skip
