"""The user tower: an MLP over the `user_tower` feature service, L2-normalised output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from towers.inputs import AGE_EDGES, HASH_BUCKETS
from towers.nn import mlp, unit


@dataclass(frozen=True)
class UserTowerConfig:
    num_items: int  # item id vocabulary (ids 1..num_items-1; 0 pads the recent-items list)
    num_genres: int
    dim: int = 64  # output width, shared with the item tower
    hidden: int = 256
    embed: int = 16  # width of each categorical embedding
    item_embed: int = 32  # width of the recent-items embedding, pooled by mean
    dropout: float = 0.1


class UserTower(nn.Module):
    Config = UserTowerConfig

    def __init__(self, config: UserTowerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.age = nn.Embedding(len(AGE_EDGES) + 2, c.embed)
        self.categorical = nn.ModuleDict(
            {k: nn.Embedding(HASH_BUCKETS, c.embed) for k in ("gender", "occupation", "zip")}
        )
        self.recent = nn.EmbeddingBag(c.num_items, c.item_embed, mode="mean", padding_idx=0)
        width = 4 * c.embed + 4 + c.num_genres + c.item_embed
        self.mlp = mlp([width, c.hidden, c.hidden, c.dim], c.dropout)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.age(x["age"])] + [emb(x[k]) for k, emb in self.categorical.items()]
        parts += [x["numeric"], x["genre_shares"], self.recent(x["recent_items"])]
        return unit(self.mlp(torch.cat(parts, dim=1)))  # (B, dim)
