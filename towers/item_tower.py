"""The multimodal item tower: one projection per modality into a shared space, summed, L2-normed.

Modalities: the item id (dropped out of a share of the training rows, so an item never seen
still embeds from its content; `ttr train` keeps every id where its data brings no new items),
categorical (every categorical, multi_categorical and numeric item feature, through
`towers.nn.Fields`), text (a pretrained sentence encoder's vector where the catalogue has them,
else a hashed bag of the title's and text features' words), and an image vector (a pretrained
network's, per image). The encoders stay frozen: their vectors are inputs, and a
learned vector stands in where an item has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from towers.inputs import TEXT_BUCKETS
from towers.nn import Dropout, Fields, forget, mean_pool, mlp, table, unit

MODALITIES = ("id", "categorical", "text", "image")


@dataclass(frozen=True)
class ItemTowerConfig:
    num_items: int  # item indices 1..num_items-1 (0: unknown)
    fields: tuple[tuple[str, str, int], ...] = ()  # (name, kind, rows): the categorical modality
    dim: int = 64  # output width, the user tower's
    embed: int = 64  # width of the id and text embeddings before projection (`ttr train`:
    # the towers' width, retrieval/training.py's towers_for)
    field_embed: int = 16  # width of each feature's embedding in the categorical modality
    id_dropout: float = 0.2  # share of training rows whose id embedding is replaced by "unknown"
    text_dim: int = 0  # width of the precomputed text vector; 0: hashed words instead
    image_dim: int = 0  # width of the precomputed image vector; 0: no image input
    modalities: tuple[str, ...] = ("id",)  # of MODALITIES: what the item has, and the ablation


class ItemTower(nn.Module):
    Config = ItemTowerConfig

    def __init__(self, config: ItemTowerConfig) -> None:
        super().__init__()
        self.config = c = config
        unknown = set(c.modalities) - set(MODALITIES)
        if unknown or (("image" in c.modalities) != (c.image_dim > 0)):
            raise ValueError(f"modalities {c.modalities} do not match image_dim {c.image_dim}")
        if ("categorical" in c.modalities) != bool(c.fields):
            raise ValueError(f"modalities {c.modalities} do not match fields {c.fields}")
        self.proj = nn.ModuleDict()
        if "id" in c.modalities:
            self.ids = table(c.num_items, c.embed)
            self.proj["id"] = nn.Linear(c.embed, c.dim)
        if "categorical" in c.modalities:
            self.features = Fields(c.fields, c.field_embed)
            self.proj["categorical"] = mlp([self.features.width, c.dim, c.dim])
        if "text" in c.modalities and c.text_dim:
            self.missing_text = nn.Parameter(torch.zeros(c.dim))
            self.proj["text"] = _frozen_input(c.text_dim, c.dim)
        elif "text" in c.modalities:
            self.words = nn.Embedding(TEXT_BUCKETS, c.embed, padding_idx=0)
            self.proj["text"] = nn.Linear(c.embed, c.dim)
        if "image" in c.modalities:
            self.missing_image = nn.Parameter(torch.zeros(c.dim))
            self.proj["image"] = _frozen_input(c.image_dim, c.dim)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return unit(sum(self._projected(m, x) for m in self.config.modalities))

    def forget(self, item_ids: torch.Tensor) -> None:
        """Items never trained on embed from their content alone, like an unknown id."""
        if "id" in self.config.modalities:
            forget(self.ids, item_ids)

    def _projected(self, modality: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The modality in the shared space. A pretrained vector is projected as it is, and the
        learned missing vector (in the shared space: no gradient then flows back through the
        dropout of a frozen input) stands in where an item has none."""
        frozen = modality == "image" or (modality == "text" and self.config.text_dim > 0)
        if not frozen:
            return self.proj[modality](self._input(modality, x))
        has = x[f"has_{modality}"][:, None]  # (B, 1)
        missing = self.missing_text if modality == "text" else self.missing_image
        return has * self.proj[modality](x[f"{modality}_vector"]) + (1 - has) * missing

    def _input(self, modality: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
        if modality == "id":
            ids = x["item"]
            if self.training and self.config.id_dropout > 0:
                drop = torch.rand(ids.shape, device=ids.device) < self.config.id_dropout
                ids = ids.masked_fill(drop, 0)
            return self.ids(ids)
        if modality == "categorical":
            return torch.cat(self.features(x), dim=1)
        return mean_pool(self.words, x["words"])


def _frozen_input(width: int, dim: int) -> nn.Module:
    """A pretrained encoder's vector (standardised with the inputs: `towers.inputs.standardised`)
    into the shared space: half of it dropped out in training, and projected linearly. A wider
    projection (an MLP, or no dropout) learned to tell the training items apart by their vectors
    and ranked unseen items worse (ml-100k cold start: content-only Recall@20 0.27 through an
    MLP, 0.33 linear, 0.37 linear with dropout)."""
    return nn.Sequential(Dropout(0.5), nn.Linear(width, dim))
