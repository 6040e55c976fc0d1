"""NeuMF with side features (He et al. 2017): a GMF branch over user and item ids, an MLP branch
over the ids and both sides' features, joined by one linear layer into a logit, with the retrieval
stage's score beside them in that layer: the two towers' dot product, plus, where the validation
users chose it, a weight times the item-to-item neighbours' score (`towers.neighbours`) of the
candidate given the user's items (`Ranker.first_stage`).

The user side takes the same inputs as the user tower (`towers.inputs.user_inputs`); the item side
the item tower's categorical inputs plus the item's popularity (`popularity_inputs`); and for
each activity share, how much of the user's history falls on the item's values (their affinity).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from towers import neighbours
from towers.inputs import scalar
from towers.nn import Dropout, Fields, known

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RankerConfig:
    num_users: int  # user indices 1..num_users-1 (0: unknown)
    num_items: int
    user_fields: tuple[tuple[str, str, int], ...] = ()  # (name, kind, rows), as the towers'
    item_fields: tuple[tuple[str, str, int], ...] = ()
    shares: tuple[tuple[str, int], ...] = ()  # (item feature, width) of the activity shares
    gmf: int = 32  # width of the GMF branch's id embeddings
    embed: int = 32  # width of the MLP branch's id embeddings
    side: int = 16  # width of each categorical side-feature embedding
    hidden: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.1
    retrieval_scale: float = 20.0  # the towers' 1 / temperature: the initial logit's weight
    neighbour_items: int = 0  # catalogue rows of the neighbour matrix (0: no neighbours)
    neighbour_weight: float = 0.0  # its score's weight in the first-stage score, beside the cosine


def popularity_inputs(frame: pd.DataFrame, rating: tuple[float, float]) -> torch.Tensor:
    """(B, 4): log counts (all time, trailing 30 days), mean rating standardised by the training
    ratings' `rating` (mean, std), rating present."""
    count, _ = scalar(frame["item_count"])
    recent, _ = scalar(frame["item_count_30d"])
    value, has_rating = scalar(frame["item_mean_rating"])
    z = (value - rating[0]) / rating[1] * has_rating
    return torch.stack([torch.log1p(count), torch.log1p(recent), z, has_rating], dim=1)


class Ranker(nn.Module):
    Config = RankerConfig

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.gmf_user = nn.Embedding(c.num_users, c.gmf, sparse=True)  # sparse: see `optimizers`
        self.gmf_item = nn.Embedding(c.num_items, c.gmf, sparse=True)
        self.mlp_user = nn.Embedding(c.num_users, c.embed, sparse=True)
        self.mlp_item = nn.Embedding(c.num_items, c.embed, sparse=True)
        self.user_features = Fields(c.user_fields, c.side)
        self.item_features = Fields(c.item_fields, c.side)
        shares = sum(w for _, w in c.shares)
        width = 2 * c.embed + self.user_features.width + self.item_features.width + 4 + 4
        width += 2 * shares + len(c.shares)
        layers: list[nn.Module] = []
        for d_in, d_out in zip((width, *c.hidden[:-1]), c.hidden, strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), Dropout(c.dropout)]
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(c.gmf + c.hidden[-1] + 1, 1)
        n = c.neighbour_items
        self.register_buffer("neighbour_matrix", torch.zeros(n, n))  # `towers.neighbours.fit`
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(table.weight, std=0.01)
        with torch.no_grad():  # untrained, it ranks as the retrieval stage; training adds to that
            self.out.weight.zero_()
            self.out.weight[0, -1] = c.retrieval_scale
            self.out.bias.zero_()

    def first_stage(self, retrieval: torch.Tensor, history: Collection[int],
                    items: np.ndarray) -> torch.Tensor:  # fmt: skip
        """The score the ranker reads as `retrieval`: the retrieval stage's scores `retrieval` of
        catalogue rows `items` (same shape; the cosine, with the popularity prior for a user
        without history) for a user who had the rows in `history`, plus the neighbours' score
        times its weight."""
        if not self.config.neighbour_weight:
            return retrieval
        added = neighbours.scores(self.neighbour_matrix.numpy(), history, items)
        return retrieval + self.config.neighbour_weight * torch.from_numpy(added)

    def forward(self, user: Inputs, item: Inputs, retrieval: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for row i of `user` with row i of `item`, whose first-stage score
        (`first_stage`) is `retrieval[i]`."""
        return self._logits(self._user_side(user), item, retrieval)

    def score(self, user: Inputs, items: Inputs, retrieval: torch.Tensor) -> torch.Tensor:
        """Logits (C,) of one user (a batch of one row) against every row of `items`: the user's
        side is computed once."""
        return self._logits(self._user_side(user), items, retrieval)

    def _user_side(self, user: Inputs) -> dict[str, list[torch.Tensor]]:
        u = known(user["user"], self.config.num_users)
        return {
            "gmf": [self.gmf_user(u)],
            "parts": [self.mlp_user(u), *self.user_features(user), user["activity"]],
            "shares": [user[f"{name}_shares"] for name, _ in self.config.shares],
        }

    def _logits(self, side: dict[str, list[torch.Tensor]], item: Inputs,
                retrieval: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The user's side (B rows, or one row for every item) with the items' (B rows)."""
        i = known(item["item"], self.config.num_items)
        n = len(i)
        mlp_u, *features, activity = (t.expand(n, *t.shape[1:]) for t in side["parts"])
        gmf = side["gmf"][0] * self.gmf_item(i)
        parts = [mlp_u, self.mlp_item(i), *features, *self.item_features(item), activity,
                 item["popularity"]]  # fmt: skip
        for mine, (name, _) in zip(side["shares"], self.config.shares, strict=True):
            its = item[f"{name}:share"]
            parts += [mine.expand(n, -1), its, (mine * its).sum(dim=1, keepdim=True)]
        mlp = self.mlp(torch.cat(parts, dim=1))
        return self.out(torch.cat([gmf, mlp, retrieval[:, None]], dim=1)).squeeze(1)
