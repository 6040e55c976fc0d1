"""The multimodal item tower: one projection per modality into a shared space, summed, L2-normed.

Modalities: the item id (dropped out in training, so an item never seen still embeds from its
content), categorical (genres multi-hot, year bucket), text (a hashed bag of title and plot words;
the slot a pretrained encoder's vector will fill), and an image vector (precomputed per item, with
a learned vector standing in where an item has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from towers.inputs import TEXT_BUCKETS, YEAR_EDGES
from towers.nn import forget, mlp, unit

MODALITIES = ("id", "categorical", "text", "image")


@dataclass(frozen=True)
class ItemTowerConfig:
    num_items: int
    num_genres: int
    dim: int = 64
    embed: int = 64  # width of the id and text embeddings before projection
    id_dropout: float = 0.2  # share of training rows whose id embedding is replaced by "unknown"
    image_dim: int = 0  # width of the precomputed image vector; 0: no image input
    modalities: tuple[str, ...] = ("id", "categorical", "text")  # the ablation switch


class ItemTower(nn.Module):
    Config = ItemTowerConfig

    def __init__(self, config: ItemTowerConfig) -> None:
        super().__init__()
        self.config = c = config
        unknown = set(c.modalities) - set(MODALITIES)
        if unknown or (("image" in c.modalities) != (c.image_dim > 0)):
            raise ValueError(f"modalities {c.modalities} do not match image_dim {c.image_dim}")
        self.proj = nn.ModuleDict()
        if "id" in c.modalities:
            self.ids = nn.Embedding(c.num_items, c.embed, padding_idx=0)
            self.proj["id"] = nn.Linear(c.embed, c.dim)
        if "categorical" in c.modalities:
            self.year = nn.Embedding(len(YEAR_EDGES) + 2, 16)
            self.proj["categorical"] = mlp([c.num_genres + 16, c.dim, c.dim])
        if "text" in c.modalities:
            self.words = nn.EmbeddingBag(TEXT_BUCKETS, c.embed, mode="mean", padding_idx=0)
            self.proj["text"] = nn.Linear(c.embed, c.dim)
        if "image" in c.modalities:
            self.missing_image = nn.Parameter(torch.zeros(c.image_dim))
            self.proj["image"] = nn.Linear(c.image_dim, c.dim)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return unit(sum(self.proj[m](self._input(m, x)) for m in self.config.modalities))

    def forget(self, item_ids: torch.Tensor) -> None:
        """Items never trained on embed from their content alone, like an unknown id."""
        if "id" in self.config.modalities:
            forget(self.ids, item_ids)

    def _input(self, modality: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
        if modality == "id":
            ids = x["item_id"]
            if self.training and self.config.id_dropout > 0:
                drop = torch.rand(ids.shape, device=ids.device) < self.config.id_dropout
                ids = ids.masked_fill(drop, 0)
            return self.ids(ids)
        if modality == "categorical":
            return torch.cat([x["genres"], self.year(x["year"])], dim=1)
        if modality == "text":
            return self.words(x["text"])
        has = x["has_image"][:, None]  # (B, 1)
        return has * x["image"] + (1 - has) * self.missing_image
