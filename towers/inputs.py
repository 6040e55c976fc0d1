"""Feature rows (a point-in-time training frame, or one online row as lists) into tensors.

One encoding per feature kind, fitted on training rows only (`Encoding.fit`) and saved with the
towers (`Vocab`), used for training and serving alike:

    categorical        an index among the values seen in training, most frequent first (0: missing
                       or unseen); past CATEGORIES distinct values, a stable hash bucket instead
    multi_categorical  a padded row of such indices (the tower pools them)
    numeric            [value standardised, present] and the value's bucket among training
                       quantiles (an embedding learns what a linear input cannot: a film's first
                       years, an age band)
    text               hashed words (where no pretrained text vector stands in)

Ids (of items and users) become indices the same way, from the catalogue a version was trained
on (`Ids`): 0 is padding and any id outside it.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

CATEGORIES = 10_000  # distinct values an encoding indexes; past that, hashed into this many
QUANTILES = 32  # buckets of a numeric feature
TEXT_BUCKETS = 1 << 15  # hashed words
MAX_TOKENS = 64
MAX_VALUES = 32  # values of a multi_categorical cell the tower pools
TOKEN = re.compile(r"[a-z0-9]+")
OTHER = "(other)"  # the share slot pooling a feature's less frequent values
FIELD_KINDS = ("categorical", "multi_categorical", "numeric", "text")  # what `Fields` embeds
Inputs = dict[str, torch.Tensor]


class Ids:
    """Ids of one entity in a fixed order (sorted); an id's index is its position + 1, and 0
    stands for padding and for any id outside them."""

    def __init__(self, values: Iterable) -> None:
        self.values = np.asarray(values if not isinstance(values, pd.Series) else values.values)
        self.sorted = len(self.values) < 2 or bool(np.all(self.values[1:] > self.values[:-1]))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def kind(self) -> str:
        return "int64" if np.issubdtype(self.values.dtype, np.integer) else "string"

    @functools.cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.values)

    @functools.cached_property
    def _positions(self) -> dict:
        return {v: i for i, v in enumerate(self.values.tolist())}

    def rows(self, ids: Sequence | np.ndarray | pd.Series) -> np.ndarray:
        """Each id's position, -1 where absent. A request's few hundred ids are looked up by
        binary search (integers) or in a dict (strings): building a pandas index for them cost
        a tenth of a request."""
        ids = np.asarray(ids if not isinstance(ids, pd.Series) else ids.values)
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        if self.kind == "int64" and not np.issubdtype(ids.dtype, np.integer):
            ids = pd.to_numeric(pd.Series(ids, dtype=object), errors="coerce").to_numpy()
        if len(ids) > 4096 or not self.sorted:
            return self._index.get_indexer(ids).astype(np.int64)
        if self.kind == "int64" and np.issubdtype(ids.dtype, np.integer):
            at = np.minimum(np.searchsorted(self.values, ids), len(self.values) - 1)
            return np.where(self.values[at] == ids, at, -1).astype(np.int64)
        found = self._positions
        return np.fromiter((found.get(i, -1) for i in ids.tolist()), np.int64, len(ids))

    def index(self, ids: Sequence | np.ndarray | pd.Series) -> np.ndarray:
        """Each id's index (position + 1), 0 where absent."""
        return self.rows(ids) + 1

    def save(self, path: Path) -> None:
        pq.write_table(pa.table({"id": self.values}), path)

    @classmethod
    def load(cls, path: Path) -> Ids:
        return cls(pq.read_table(path)["id"].to_numpy(zero_copy_only=False))


def stable_hash(value: object, buckets: int) -> int:
    """1 + a stable bucket of `value` below `buckets` (crc32: the same in every process)."""
    return 1 + zlib.crc32(str(value).encode()) % (buckets - 1)


def missing(value: object) -> bool:
    """A cell holds nothing: None, NA, or the NaN pandas puts in an empty cell."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and np.isnan(value)


def present(values: object) -> bool:
    """A list cell holds a value: not None, and not the NaN pandas puts in an empty cell."""
    return not missing(values)


def cells(values: pd.Series | Sequence) -> list:
    """A column (a frame's, or an online row's list) as a plain list."""
    return values.tolist() if isinstance(values, pd.Series) else list(values)


@dataclass(frozen=True)
class Encoding:
    """How one feature becomes tensors; fitted on training rows."""

    name: str
    kind: str
    values: tuple[str, ...] = ()  # categorical: index = position + 1
    hashed: int = 0  # categorical past CATEGORIES values: buckets (0: indexed by `values`)
    mean: float = 0.0  # numeric
    std: float = 1.0
    edges: tuple[float, ...] = ()  # numeric: bucket edges (training quantiles)

    @property
    def rows(self) -> int:
        """Rows of the embedding table this encoding indexes."""
        if self.kind == "numeric":
            return len(self.edges) + 2
        if self.kind == "text":
            return TEXT_BUCKETS
        return self.hashed or len(self.values) + 1

    @functools.cached_property
    def _lookup(self) -> dict[str, int]:
        return {v: i + 1 for i, v in enumerate(self.values)}

    @classmethod
    def fit(cls, name: str, kind: str, column: pd.Series) -> Encoding:
        """The encoding of `column` (one cell per training row)."""
        if kind == "numeric":
            x = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
            x = x[np.isfinite(x)]
            if not len(x):
                return cls(name, kind)
            edges = np.unique(np.quantile(x, np.linspace(0, 1, QUANTILES + 1)[1:-1]))
            return cls(name, kind, mean=float(x.mean()), std=float(x.std()) or 1.0,
                       edges=tuple(float(e) for e in edges))  # fmt: skip
        if kind == "text":
            return cls(name, kind)
        flat = pd.Series([v for c in cells(column) for v in _values(c)], dtype=object)
        counts = flat.value_counts()
        ranked = sorted(counts.index, key=lambda v: (-counts[v], v))
        if len(ranked) > CATEGORIES:
            return cls(name, kind, hashed=CATEGORIES)
        return cls(name, kind, values=tuple(ranked))

    def encode(self, column: pd.Series | Sequence) -> Inputs:
        """`{name: tensor}` (numeric also `{name}:bucket`) for every cell of `column`."""
        if self.kind == "numeric":
            x = floats(column)
            have = ~np.isnan(x)
            z = np.where(have, (np.nan_to_num(x) - self.mean) / self.std, 0.0)
            bucket = np.where(have, 1 + np.searchsorted(self.edges, np.nan_to_num(x),
                                                        side="right"), 0)  # fmt: skip
            return {self.name: torch.from_numpy(np.stack([z, have], 1).astype(np.float32)),
                    f"{self.name}:bucket": torch.from_numpy(bucket.astype(np.int64))}  # fmt: skip
        if self.kind == "text":
            return {self.name: padded([words(c) for c in cells(column)], MAX_TOKENS)}
        lists = [[self.code(v) for v in _values(c)] for c in cells(column)]
        if self.kind == "categorical":
            return {self.name: torch.tensor([c[0] if c else 0 for c in lists], dtype=torch.long)}
        return {self.name: padded(lists, MAX_VALUES)}

    def code(self, value: str) -> int:
        if self.hashed:
            return stable_hash(value, self.hashed)
        return self._lookup.get(str(value), 0)


def _values(cell: object) -> list[str]:
    if missing(cell):
        return []
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [str(v) for v in cell if not missing(v)]
    return [str(cell)]


def words(text: object) -> list[int]:
    """Hashed token ids of a text (0 words for a missing one)."""
    if missing(text):
        return []
    return [stable_hash(w, TEXT_BUCKETS) for w in TOKEN.findall(str(text).lower())]


def floats(values: pd.Series | Sequence) -> np.ndarray:
    """float64 with NaN where a value is missing: a frame's column, or a plain list (one online
    row: building a DataFrame would cost more than the whole user tower)."""
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.array([np.nan if missing(v) else v for v in values], dtype=np.float64)


def padded(lists: Sequence, width: int | None = None) -> torch.Tensor:
    """(B, w) int64 from lists of ints, 0-padded, w the longest list capped at `width` (padding
    costs a pooled bag as much as a value); a missing cell is an empty list."""
    lists = [[] if missing(v) else v for v in lists]
    longest = max((len(v) for v in lists), default=0)
    width = max(1, longest if width is None else min(width, longest))
    out = np.zeros((len(lists), width), dtype=np.int64)
    for row, values in enumerate(lists):
        values = np.asarray(values, dtype=np.int64)[:width]
        out[row, : len(values)] = values
    return torch.from_numpy(out)


def id_lists(lists: pd.Series | Sequence, ids: Ids, width: int | None = None) -> torch.Tensor:
    """(B, w) indices of the ids in each list (recent items), 0-padded; unknown ids are 0."""
    lists = [[] if missing(v) else v for v in cells(lists)]
    lengths = np.array([min(len(v), width or len(v)) for v in lists], dtype=np.int64)
    flat = [x for v, n in zip(lists, lengths, strict=True) for x in list(v)[:n]]
    out = np.zeros((len(lists), max(1, int(lengths.max(initial=0)))), dtype=np.int64)
    if flat:
        rows = np.repeat(np.arange(len(lists)), lengths)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = ids.index(flat)
    return torch.from_numpy(out)


def dense(lists: pd.Series | Sequence, width: int) -> torch.Tensor:
    """(B, width) float32 from lists of floats; None is a row of zeros."""
    lists = cells(lists)
    out = np.zeros((len(lists), width), dtype=np.float32)
    for row, values in enumerate(lists):
        if present(values):
            out[row] = values
    return torch.from_numpy(out)


def standardised(vectors: torch.Tensor) -> torch.Tensor:
    """Each row at zero mean and unit variance over its components (a row of zeros stays zeros):
    encoders differ in scale. Done once per catalogue: as a LayerNorm in every training step it
    cost ~2 ms of a ~29 ms ml-1m step (720 distinct items' text and image vectors, forward and
    back)."""
    return torch.nn.functional.layer_norm(vectors, vectors.shape[1:])


def scalar(values: pd.Series | Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """(value with 0 for missing, 1.0 where present), both (B,) float32."""
    x = floats(values).astype(np.float32)
    have = ~np.isnan(x)
    return torch.from_numpy(np.where(have, x, 0.0).astype(np.float32)), torch.from_numpy(
        have.astype(np.float32)
    )


@dataclass(frozen=True)
class Vocab:
    """Everything the inputs of a trained version are encoded with, fitted on its training rows;
    saved beside its towers (`save` / `load`)."""

    items: Ids  # the catalogue: item index = position + 1
    users: Ids  # every user: user index = position + 1
    user_features: tuple[Encoding, ...] = ()
    item_features: tuple[Encoding, ...] = ()
    shares: dict[str, list[str]] = field(default_factory=dict)  # the activity shares' values
    rating: tuple[float, float] = (0.0, 1.0)  # mean and std of ratings in training rows
    title: bool = False  # items have a title (read as text)
    text_dim: int = 0  # width of the pretrained text vectors; 0: none (hashed words instead)
    image_dim: int = 0  # width of the pretrained image vectors; 0: none

    @property
    def num_items(self) -> int:
        return len(self.items) + 1

    @property
    def num_users(self) -> int:
        return len(self.users) + 1

    def fields(self, side: str) -> tuple[tuple[str, str, int], ...]:
        """(name, kind, rows) of a side's features that `Fields` embeds: the user's features;
        the item's categorical, multi_categorical and numeric ones (its text is a modality)."""
        if side == "user":
            return tuple((e.name, e.kind, e.rows) for e in self.user_features)
        return tuple((e.name, e.kind, e.rows) for e in self.item_features if e.kind != "text")

    @property
    def item_text(self) -> tuple[str, ...]:
        """The item columns read as text: the title and each text feature."""
        texts = tuple(e.name for e in self.item_features if e.kind == "text")
        return (("title",) if self.title else ()) + texts

    def share_widths(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, len(values)) for name, values in self.shares.items())

    def save(self, folder: Path) -> None:
        self.items.save(folder / "items.parquet")
        self.users.save(folder / "users.parquet")
        raw = {k: v for k, v in asdict(self).items() if k not in ("items", "users")}
        (folder / "vocab.json").write_text(json.dumps(raw, indent=2))

    @classmethod
    def load(cls, folder: Path) -> Vocab:
        raw = json.loads((folder / "vocab.json").read_text())
        encodings = {side: tuple(Encoding(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in e.items()}) for e in raw[side])
                     for side in ("user_features", "item_features")}  # fmt: skip
        return cls(Ids.load(folder / "items.parquet"), Ids.load(folder / "users.parquet"),
                   **encodings, shares=raw["shares"], rating=tuple(raw["rating"]),
                   title=raw["title"], text_dim=raw["text_dim"],
                   image_dim=raw["image_dim"])  # fmt: skip


def fit_vocab(
    items: Ids, users: Ids, user_rows: pd.DataFrame, item_rows: pd.DataFrame,
    kinds: Mapping[str, Mapping[str, str]], shares: dict[str, list[str]], ratings: np.ndarray,
    title: bool, text_dim: int = 0, image_dim: int = 0,
) -> Vocab:  # fmt: skip
    """The vocabulary of a training run: each feature's encoding fitted on the training rows'
    users (`user_rows`) and items (`item_rows`), one row per training interaction."""
    rated = ratings[~np.isnan(ratings)]
    rating = (float(rated.mean()), float(rated.std()) or 1.0) if len(rated) else (0.0, 1.0)
    return Vocab(
        items, users,
        tuple(Encoding.fit(n, k, user_rows[n]) for n, k in kinds["users"].items()),
        tuple(Encoding.fit(n, k, item_rows[n]) for n, k in kinds["items"].items()
              if k != "image"),
        shares, rating, title, text_dim, image_dim,
    )  # fmt: skip


def user_inputs(frame: pd.DataFrame | Mapping[str, Sequence], vocab: Vocab) -> Inputs:
    """Tensors for the user tower (and the ranker's user side) from the user features and
    activity: a training frame, or online rows as lists."""
    out: Inputs = {
        "user": torch.from_numpy(vocab.users.index(cells(frame["user_id"]))),
        **activity_inputs(frame, vocab),
        "recent_items": id_lists(frame["recent_items"], vocab.items),
    }
    for encoding in vocab.user_features:
        out.update(encoding.encode(frame[encoding.name]))
    return out


def activity_inputs(frame: pd.DataFrame | Mapping[str, Sequence], vocab: Vocab) -> Inputs:
    """The user's activity ("activity": log count, has history, standardised mean rating, has
    rating) and their shares over each item feature's values ("{name}_shares")."""
    count, has_history = scalar(frame["interaction_count"])
    rating, has_rating = scalar(frame["mean_rating"])
    mean, std = vocab.rating
    out: Inputs = {
        "activity": torch.stack(
            [torch.log1p(count), has_history, (rating - mean) / std * has_rating, has_rating], 1
        ),  # (B, 4)
    }
    for name, values in vocab.shares.items():
        out[f"{name}_shares"] = dense(frame[f"{name}_shares"], len(values))
    return out


def item_inputs(frame: pd.DataFrame, vocab: Vocab) -> Inputs:
    """Tensors for the item tower from `item_id` and the `item_tower` feature service's columns:
    the id, the features `Fields` embeds, the text (pretrained vectors, else hashed words of the
    title and text features) and the image vectors."""
    out = categorical_inputs(frame, vocab)
    if vocab.item_text:
        columns = [cells(frame[c]) for c in vocab.item_text]
        texts = [" ".join(str(t) for t in row if present(t)) for row in zip(*columns, strict=True)]
        out["words"] = padded([words(t) for t in texts], MAX_TOKENS)
    for kind, width in (("text", vocab.text_dim), ("image", vocab.image_dim)):
        if width:
            out[f"{kind}_vector"] = standardised(dense(frame[f"{kind}_vector"], width))
            has = frame[f"has_{kind}"].astype("boolean").fillna(False).to_numpy(dtype=np.float32)
            out[f"has_{kind}"] = torch.from_numpy(has)
    return out


def categorical_inputs(frame: pd.DataFrame, vocab: Vocab) -> Inputs:
    """The item index (0 outside the catalogue), each non-text item feature's encoding, and the
    item's multi-hot over each activity share's values (`{name}:share`)."""
    out: Inputs = {"item": torch.from_numpy(vocab.items.index(frame["item_id"]))}
    for encoding in vocab.item_features:
        if encoding.kind != "text":
            out.update(encoding.encode(frame[encoding.name]))
    for name, values in vocab.shares.items():
        out[f"{name}:share"] = share_hot(frame[name], values)
    return out


def share_hot(column: pd.Series, values: list[str]) -> torch.Tensor:
    """(B, len(values)) 0/1: which share values each cell holds (the last, "(other)" where the
    values were pooled, for any value not listed)."""
    index = {v: j for j, v in enumerate(values)}
    other = index.get(OTHER, -1)
    out = np.zeros((len(column), len(values)), dtype=np.float32)
    for row, cell in enumerate(cells(column)):
        for v in _values(cell):
            j = index.get(v, other)
            if j >= 0:
                out[row, j] = 1.0
    return torch.from_numpy(out)
