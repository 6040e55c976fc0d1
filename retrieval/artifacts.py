"""Versioned artifact directories with an atomic `latest` pointer.

A stage writes into a hidden staging directory; `publish` renames it to a version name and then
swaps the `latest` symlink in one `os.replace`, so a crashed or failed run never becomes latest.
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

LATEST = "latest"


@contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A fresh staging directory under `root`, removed if the block fails."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=root, prefix=".incomplete-"))
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def publish(root: Path, staged: Path, manifest: dict) -> Path:
    """Write the manifest, name the version, and point `latest` at it atomically."""
    name = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    (staged / "manifest.json").write_text(json.dumps({"version": name, **manifest}, indent=2))
    final = root / name
    os.rename(staged, final)
    link = root / f".latest-{uuid.uuid4().hex}"
    os.symlink(name, link)
    os.replace(link, root / LATEST)
    return final


def latest(root: Path) -> Path:
    """The directory `latest` points at; an error naming the command that makes one."""
    path = root / LATEST
    if not path.exists():
        raise TTRError(f"no trained version in {root}; run `ttr train` first")
    return path.resolve()


def manifest(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())
