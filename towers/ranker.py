"""NeuMF with side features (He et al. 2017): a GMF branch over user and item ids, an MLP branch
over the ids and both sides' features, joined by one linear layer into a logit, with the retrieval
stage's score (the two towers' dot product) beside them in that layer.

The user side takes the same inputs as the user tower (`towers.inputs.user_inputs`); the item side
the item tower's categorical inputs plus the item's popularity (`popularity_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from towers.inputs import AGE_EDGES, HASH_BUCKETS, YEAR_EDGES, scalar
from towers.nn import Dropout, known

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RankerConfig:
    num_users: int
    num_items: int
    num_genres: int
    gmf: int = 32  # width of the GMF branch's id embeddings
    embed: int = 32  # width of the MLP branch's id embeddings
    side: int = 16  # width of each categorical side-feature embedding
    hidden: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.1
    retrieval_scale: float = 20.0  # the towers' 1 / temperature: the initial logit's weight


def popularity_inputs(frame: pd.DataFrame) -> torch.Tensor:
    """(B, 4): log counts (all time, trailing 30 days), centred mean rating, rating present."""
    count, _ = scalar(frame["item_count"])
    recent, _ = scalar(frame["item_count_30d"])
    rating, has_rating = scalar(frame["item_mean_rating"])
    return torch.stack(
        [torch.log1p(count), torch.log1p(recent), (rating - 3.0) * has_rating, has_rating], dim=1
    )


class Ranker(nn.Module):
    Config = RankerConfig

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.gmf_user = nn.Embedding(c.num_users, c.gmf, sparse=True)  # sparse: see `optimizers`
        self.gmf_item = nn.Embedding(c.num_items, c.gmf, sparse=True)
        self.mlp_user = nn.Embedding(c.num_users, c.embed, sparse=True)
        self.mlp_item = nn.Embedding(c.num_items, c.embed, sparse=True)
        self.age = nn.Embedding(len(AGE_EDGES) + 2, c.side)
        self.categorical = nn.ModuleDict(
            {k: nn.Embedding(HASH_BUCKETS, c.side) for k in ("gender", "occupation", "zip")}
        )
        self.year = nn.Embedding(len(YEAR_EDGES) + 2, c.side)
        width = 2 * c.embed + 5 * c.side + 4 + 4 + 2 * c.num_genres + 1
        layers: list[nn.Module] = []
        for d_in, d_out in zip((width, *c.hidden[:-1]), c.hidden, strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), Dropout(c.dropout)]
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(c.gmf + c.hidden[-1] + 1, 1)
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(table.weight, std=0.01)
        with torch.no_grad():  # untrained, it ranks as the retrieval stage; training adds to that
            self.out.weight.zero_()
            self.out.weight[0, -1] = c.retrieval_scale
            self.out.bias.zero_()

    def forward(self, user: Inputs, item: Inputs, retrieval: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for row i of `user` with row i of `item`, whose retrieval score is
        `retrieval[i]`."""
        u, i = known(user["user_id"], self.config.num_users), item["item_id"]
        gmf = self.gmf_user(u) * self.gmf_item(i)
        affinity = (user["genre_shares"] * item["genres"]).sum(dim=1, keepdim=True)
        side = [self.age(user["age"])] + [emb(user[k]) for k, emb in self.categorical.items()]
        parts = [self.mlp_user(u), self.mlp_item(i), *side, self.year(item["year"])]
        parts += [user["numeric"], item["popularity"], user["genre_shares"], item["genres"]]
        mlp = self.mlp(torch.cat([*parts, affinity], dim=1))
        return self.out(torch.cat([gmf, mlp, retrieval[:, None]], dim=1)).squeeze(1)

    def score(self, user: Inputs, items: Inputs, retrieval: torch.Tensor) -> torch.Tensor:
        """Logits (C,) of one user (a batch of one row) against every row of `items`."""
        n = len(items["item_id"])
        user = {k: v.expand(n, *v.shape[1:]) for k, v in user.items() if k != "recent_items"}
        return self(user, items, retrieval)
