"""The user tower: an MLP over the `user_tower` feature service (the user's own features, their
activity and shares, their recent items pooled), L2-normalised output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from towers.nn import Fields, forget, known, mean_pool, mlp, table, unit


@dataclass(frozen=True)
class UserTowerConfig:
    num_items: int  # item indices 1..num_items-1 (0 pads the recent-items list)
    fields: tuple[tuple[str, str, int], ...] = ()  # (name, kind, rows) of the user's features
    shares: tuple[tuple[str, int], ...] = ()  # (item feature, width) of the activity shares
    dim: int = 64  # output width, shared with the item tower (validation recall@20 / NDCG@20:
    # ml-100k 0.1120 / 0.2787 at 64, 0.1034 / 0.2638 at 128; ml-1m, 30 epochs, 0.2357 / 0.1914
    # at 64, 0.2379 / 0.1940 at 128: the larger dataset takes the wider towers)
    hidden: int = 256
    embed: int = 16  # width of each categorical embedding
    item_embed: int = 32  # width of the recent-items embedding, pooled by mean
    history_sample: int = 64  # recent items each training row pools, drawn at random; 0: all
    history_dropout: float = 0.3  # share of recent items hidden from each training row
    dropout: float = 0.1
    num_users: int = 0  # user indices 1..num_users-1 for an id input; 0: none
    id_dropout: float = 0.2  # share of training rows whose id is replaced by "unknown"
    skip: bool = False  # the pooled history also straight to the output, through one linear
    # map: set where the pool reads the item tower's id table (`TrainConfig.shared_history`;
    # both together on ml-1m at the defaults: validation recall@20 0.2489 against 0.2430)


class UserTower(nn.Module):
    Config = UserTowerConfig

    def __init__(self, config: UserTowerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.features = Fields(c.fields, c.embed)
        self.recent = table(c.num_items, c.item_embed)
        width = self.features.width + 4 + sum(w for _, w in c.shares) + c.item_embed
        if c.num_users:
            self.ids = table(c.num_users, c.item_embed)
            width += c.item_embed
        self.mlp = mlp([width, c.hidden, c.hidden, c.dim], c.dropout)
        if c.skip:
            self.skip = nn.Linear(c.item_embed, c.dim)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [*self.features(x), x["activity"]]
        parts += [x[f"{name}_shares"] for name, _ in self.config.shares]
        pooled = self._pooled(x["recent_items"])
        parts.append(pooled)
        if self.config.num_users:
            ids = known(x["user"], self.config.num_users)
            if self.training and self.config.id_dropout > 0:
                ids = ids.masked_fill(torch.rand(ids.shape) < self.config.id_dropout, 0)
            parts.append(self.ids(ids))
        out = self.mlp(torch.cat(parts, dim=1))
        return unit(out + self.skip(pooled) if self.config.skip else out)  # (B, dim)

    def _pooled(self, recent: torch.Tensor) -> torch.Tensor:
        """The mean embedding of the recent items (of a sample of them, in training)."""
        return mean_pool(self.recent, self._history(recent))

    def _history(self, recent: torch.Tensor) -> torch.Tensor:
        """The recent items; in training a random sample of them, a random share hidden (as
        padding): the tower learns what else a user likes from any part of their history, not to
        recognise the items it was shown. A mean over a sample estimates the mean over all: a
        row whose items span more than `history_sample` columns draws that many columns with
        replacement (a draw that lands on padding counts for nothing), a shorter row keeps all."""
        if not self.training:
            return recent
        c = self.config
        if 0 < c.history_sample < recent.shape[1]:
            columns = torch.arange(recent.shape[1])
            span = ((recent != 0) * (columns + 1)).amax(1, keepdim=True)  # (B, 1): to the last item
            draws = (torch.rand(len(recent), c.history_sample) * span).long()
            first = columns[: c.history_sample].expand_as(draws)
            recent = recent.gather(1, torch.where(span > c.history_sample, draws, first))
        if c.history_dropout > 0:
            recent = recent.masked_fill(torch.rand(recent.shape) < c.history_dropout, 0)
        return recent

    def forget(self, item_ids: torch.Tensor, user_ids: torch.Tensor) -> None:
        """Items never trained on count as padding in the recent-items pool; users never trained
        on embed from their features alone, like an unknown id."""
        forget(self.recent, item_ids)
        if self.config.num_users:
            forget(self.ids, user_ids)
