"""A synthetic catalogue with planted structure: users and items in hidden groups.

A user mostly picks items of its own group (with a popularity skew inside the group), rates them
high, and the group also shows in the user's age and occupation and in the item's genre, year and
title words, so both collaborative and content signals can recover it. Generated vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retrieval.datasets import SPECS, Tables, read_tables
from retrieval.errors import TTRError
from retrieval.reader import Dataset

START = pd.Timestamp("2020-01-01", tz="UTC")
WORDS = [
    "amber",
    "birch",
    "cobalt",
    "delta",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "krypton",
    "lagoon",
    "meadow",
    "nebula",
    "onyx",
    "prairie",
]


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 2_000
    items: int = 1_000
    interactions: int = 50_000
    groups: int = 8  # hidden groups shared by users and items
    affinity: float = 0.8  # share of a user's interactions inside its own group
    days: int = 180  # span of the timeline
    seed: int = 0

    def validate(self) -> None:
        if min(self.users, self.items, self.interactions, self.groups, self.days) < 1:
            raise TTRError("synthetic sizes, groups and days must be positive")
        if self.items < self.groups:
            raise TTRError(f"synthetic: {self.items} items cannot fill {self.groups} groups")
        if not 0.0 <= self.affinity <= 1.0:
            raise TTRError(f"synthetic: affinity {self.affinity} is not in [0, 1]")
        if self.items > 1_000_000 or self.interactions > 10_000_000:
            raise TTRError("synthetic: at most 1M items and 10M interactions")


def generate(cfg: SyntheticConfig) -> tuple[Tables, dict[str, np.ndarray]]:
    """Users, items and interactions with groups planted (the tables of `specs/synthetic.yaml`),
    and the groups."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    user_group = rng.integers(cfg.groups, size=cfg.users)
    item_group = rng.permutation(np.arange(cfg.items) % cfg.groups)
    interactions = _interactions(cfg, rng, user_group, item_group)
    genres = [f"genre-{g}" for g in range(cfg.groups)]
    tables = {"interactions": interactions, "users": _users(rng, user_group),
              "items": _items(rng, item_group, genres)}  # fmt: skip
    return tables, {"user_group": user_group, "item_group": item_group}


def load(cfg: SyntheticConfig, out_dir: Path) -> Dataset:
    """The synthetic world written into `out_dir` and read through its spec, like any data."""
    tables, truth = generate(cfg)
    ds = read_tables(tables, SPECS / "synthetic.yaml", out_dir)
    ds.truth = truth
    return ds


def _interactions(
    cfg: SyntheticConfig, rng: np.random.Generator, user_group: np.ndarray, item_group: np.ndarray
) -> pd.DataFrame:
    n = cfg.interactions
    activity = rng.lognormal(0.0, 1.0, cfg.users)
    users = rng.choice(cfg.users, size=n, p=activity / activity.sum())
    by_group = np.argsort(item_group, kind="stable")  # item ids grouped, (items,)
    sizes = np.bincount(item_group, minlength=cfg.groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    g = user_group[users]
    skew = rng.random(n) ** 2  # favours the first items of each group: a popularity skew
    in_group = by_group[starts[g] + (skew * sizes[g]).astype(np.int64)]
    inside = rng.random(n) < cfg.affinity
    items = np.where(inside, in_group, rng.integers(cfg.items, size=n))
    rating = np.where(item_group[items] == g, rng.integers(4, 6, n), rng.integers(1, 4, n))
    seconds = rng.integers(0, cfg.days * 86_400, size=n)
    return pd.DataFrame(
        {
            "user_id": users.astype(np.int64) + 1,
            "item_id": items.astype(np.int64) + 1,
            "rating": rating.astype(np.float32),
            "timestamp": (START + pd.to_timedelta(seconds, unit="s")).as_unit("us"),
        }
    )


def _users(rng: np.random.Generator, group: np.ndarray) -> pd.DataFrame:
    n = len(group)
    return pd.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int64),
            "age": pd.array(18 + 5 * (group % 10) + rng.integers(0, 5, n), dtype="Int64"),
            "gender": pd.array(np.where(rng.random(n) < 0.5, "F", "M"), dtype="string"),
            "occupation": pd.array([f"occupation-{g % 12}" for g in group], dtype="string"),
            "zip_prefix": pd.array([f"{z:03d}" for z in rng.integers(0, 1000, n)], dtype="string"),
        }
    )


def _items(rng: np.random.Generator, group: np.ndarray, genres: list[str]) -> pd.DataFrame:
    n = len(group)
    word = [WORDS[g % len(WORDS)] for g in group]
    return pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1, dtype=np.int64),
            "title": pd.array(
                [f"The {w} story {i + 1}" for i, w in enumerate(word)], dtype="string"
            ),
            "genres": [[genres[g]] for g in group],
            "year": pd.array(1960 + 2 * (group % 30) + rng.integers(0, 2, n), dtype="Int64"),
            "plot": pd.array([f"A tale of {w} and more {w}." for w in word], dtype="string"),
        }
    )
