"""A servable bundle: one version's towers, its index and its ranker, loaded and checked together.

`load` refuses a version whose parts do not belong together: an index of another width than the
user tower, an index holding ids outside the version's catalogue, an index built by another
version, a ranker trained for other towers. A missing ranker is allowed (the candidates keep their
retrieval order). `newest` walks the versions from `latest` back and returns the first that loads,
saying in one log line why each one before it could not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retrieval import artifacts, index
from retrieval.errors import TTRError
from towers import nn as tnn
from towers.inputs import Vocab
from towers.ranker import Ranker
from towers.user_tower import UserTower

log = logging.getLogger("ttr.bundle")


class BundleError(TTRError):
    """A version that cannot serve, and which check it failed."""


@dataclass
class Bundle:
    version: Path
    manifest: dict
    vocab: Vocab
    user_tower: UserTower
    index: faiss.Index
    index_info: dict
    embeddings: np.ndarray  # the catalogue's, as indexed: row r for index id r
    ranker: Ranker | None
    ranker_version: str | None

    @property
    def model_version(self) -> str:
        return self.manifest["version"]

    @property
    def index_version(self) -> str:
        return f"{self.model_version}/{self.index_info['sha256'][:12]}"

    @property
    def key(self) -> tuple[str, str, str | None]:
        """What tells two bundles apart: the towers, the index and the ranker."""
        return self.model_version, self.index_version, self.ranker_version


def load(version: Path) -> Bundle:
    """The version's bundle, every check passed; a BundleError naming the first that failed."""
    try:
        manifest = artifacts.manifest(version)
        vocab = Vocab.load(version)
        user_tower = tnn.load(UserTower, version, "user_tower")
        built, info = index.load(version)
        vectors = index.embeddings(version)
    except (OSError, ValueError, KeyError, TTRError) as err:
        raise BundleError(f"version {version.name}: cannot load: {err}") from err
    check_index(version.name, built, info, vectors, user_tower, vocab)
    ranker, ranker_version = load_ranker(version, vocab)
    return Bundle(version, manifest, vocab, user_tower, built, info, vectors, ranker,
                  ranker_version)  # fmt: skip


def check_index(name: str, built: faiss.Index, info: dict, vectors: np.ndarray,
                user_tower: UserTower, vocab: Vocab) -> None:  # fmt: skip
    if info.get("model_version") != name:
        raise BundleError(f"version {name}: its index was built by {info.get('model_version')}")
    if built.d != user_tower.config.dim or vectors.shape[1:] != (built.d,):
        raise BundleError(f"version {name}: index width {built.d} differs from the user tower's "
                          f"{user_tower.config.dim}")  # fmt: skip
    ids = index.stored_ids(built)
    outside = (ids < 0) | (ids >= len(vocab.items))
    if outside.any() or len(vectors) != len(vocab.items):
        raise BundleError(f"version {name}: its index holds {int(outside.sum())} ids outside "
                          f"the catalogue of {len(vocab.items):,} items")  # fmt: skip


def load_ranker(version: Path, vocab: Vocab) -> tuple[Ranker | None, str | None]:
    """The version's ranker (None, logged, where it has none); a BundleError where it was
    trained for other towers."""
    folder = artifacts.target(version, artifacts.RANKER)
    if folder is None:
        log.warning("version %s has no ranker: candidates keep their retrieval order", version.name)
        return None, None
    try:
        made = artifacts.manifest(folder)
        ranker = tnn.load(Ranker, folder, "ranker")
    except (OSError, ValueError, KeyError) as err:
        raise BundleError(f"version {version.name}: cannot load its ranker: {err}") from err
    if made.get("retrieval_version") != version.name:
        raise BundleError(f"version {version.name}: its ranker was trained for "
                          f"{made.get('retrieval_version')}")  # fmt: skip
    c = ranker.config
    expected = (vocab.num_users, vocab.num_items, vocab.fields("user"), vocab.fields("item"))
    if (c.num_users, c.num_items, c.user_fields, c.item_fields) != expected:
        raise BundleError(f"version {version.name}: its ranker's inputs differ from the towers'")
    if c.neighbour_items not in (0, len(vocab.items)):
        spans = f"{c.neighbour_items:,} items, the catalogue {len(vocab.items):,}"
        raise BundleError(f"version {version.name}: its ranker's neighbours span {spans}")
    return ranker.eval(), made["version"]


def newest(root: Path) -> Bundle:
    """The newest version that loads, `latest` first, then older ones newest first; an error
    where none does."""
    first = artifacts.target(root, artifacts.LATEST)
    candidates = ([first] if first else []) + [v for v in artifacts.versions(root) if v != first]
    reasons = []
    for version in candidates:
        if artifacts.target(version, artifacts.INDEX) is None:
            continue  # trained, never indexed: not a bundle yet
        try:
            return load(version)
        except BundleError as err:
            log.error("%s; serving an older version", err)
            reasons.append(str(err))
    detail = f" ({'; '.join(reasons)})" if reasons else ""
    raise TTRError(f"no servable version in {root}{detail}; run `ttr train` and `ttr index`")
