"""Versioned artifact directories, and pointers to them swapped atomically.

    <root>/<version>/             one `ttr train` run: towers, vocabulary, manifest
    <root>/<version>/index        -> index-<digest>/  (`ttr index`: index, its embeddings)
    <root>/<version>/ranker       -> ranker-<stamp>/  (`ttr train-ranker`: trained for these towers)
    <root>/trained                -> the newest trained version (what index, ranker, evaluate use)
    <root>/latest                 -> the newest version that can serve: towers and an index

A stage writes into a hidden staging directory, renames it, and only then swaps a pointer (a
symlink replaced by `os.replace`), so a crashed or failed run never becomes a pointer's target
and a reader sees the old target or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from retrieval.errors import TTRError

LATEST = "latest"  # the newest servable version
TRAINED = "trained"  # the newest trained version
INDEX = "index"  # within a version: its current index
RANKER = "ranker"  # within a version: its current ranker
STAGING = ".incomplete-"


@contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A fresh staging directory under `root`, removed if the block fails."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=root, prefix=STAGING))
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def stamp() -> str:
    """A new, sortable, unique name: UTC time to the microsecond (names made within one second
    sort in the order they were made) and a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ") + "-" + uuid.uuid4().hex[:6]


def publish(root: Path, staged: Path, manifest: dict, pointer: str = TRAINED,
            name: str | None = None) -> Path:  # fmt: skip
    """Write the manifest, name the staged directory (`name`, else a new stamp) and point
    `pointer` at it atomically."""
    name = name or stamp()
    (staged / "manifest.json").write_text(json.dumps({"version": name, **manifest}, indent=2))
    final = root / name
    os.rename(staged, final)
    point(root, pointer, name)
    return final


def point(folder: Path, pointer: str, target: str) -> None:
    """`folder/pointer` -> `target` (a name within `folder`), swapped in one `os.replace`."""
    link = folder / f".{pointer}-{uuid.uuid4().hex}"
    os.symlink(target, link)
    os.replace(link, folder / pointer)


def target(folder: Path, pointer: str) -> Path | None:
    """Where `folder/pointer` points, or None where it does not exist."""
    path = folder / pointer
    return path.resolve() if path.exists() else None


def trained(root: Path) -> Path:
    """The newest trained version; an error naming the command that makes one."""
    found = target(root, TRAINED)
    if found is None:
        raise TTRError(f"no trained version in {root}; run `ttr train` first")
    return found


def latest(root: Path) -> Path:
    """The newest servable version; an error naming the commands that make one."""
    found = target(root, LATEST)
    if found is None:
        raise TTRError(f"no servable version in {root}; run `ttr train` and `ttr index` first")
    return found


def versions(root: Path) -> list[Path]:
    """Every complete version under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
             and not p.name.startswith(".") and (p / "manifest.json").is_file()]  # fmt: skip
    return sorted(found, key=lambda p: p.name, reverse=True)


def manifest(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())
