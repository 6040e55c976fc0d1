"""`ttr explain`: one user's recent history and top recommendations as a grid of tiles (PNG): each
item's image where the dataset has one, else a tile with its title."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no backend, no screen, no global state

from retrieval.catalogue import read_meta
from retrieval.pipeline import Pipeline

TILE = (120, 180)  # image tiles, width x height in pixels
PLACEHOLDER = 0.85  # grey of the tile where an item has no image


def tile(path: Path | None) -> np.ndarray:
    """The image resized to a tile, or a grey placeholder."""
    if path is None:
        return np.full((TILE[1], TILE[0], 3), PLACEHOLDER)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(TILE)) / 255.0


def draw(rows: list[tuple[str, list[tuple[Path | None, str]]]], title: str, path: Path) -> Path:
    """A grid: one labelled row per (label, [(image, caption)]), written to `path` as PNG; an item
    without an image gets a grey tile with its caption written across it."""
    width = max((len(items) for _, items in rows), default=1) or 1
    fig = Figure(figsize=(1.5 * width, 2.9 * len(rows)))
    axes = fig.subplots(len(rows), width, squeeze=False)
    for axes_row, (label, items) in zip(axes, rows, strict=True):
        axes_row[0].set_title(label, loc="left", fontsize=10, fontweight="bold", pad=14)
        for col, ax in enumerate(axes_row):
            ax.set_axis_off()
            if col < len(items):
                image, caption = items[col]
                ax.imshow(tile(image))
                if image is None:
                    ax.text(TILE[0] / 2, TILE[1] / 2, textwrap.fill(caption, 16), ha="center",
                            va="center", fontsize=8)  # fmt: skip
                ax.text(TILE[0] / 2, TILE[1] + 8, textwrap.fill(caption, 22), ha="center",
                        va="top", fontsize=6)  # fmt: skip
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(hspace=0.65, wspace=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def explain(pipeline: Pipeline, offline_dir: Path, user_id: int | str, path: Path,
            k: int = 10) -> dict:  # fmt: skip
    """Write the user's grid to `path`; returns what it shows."""
    meta = read_meta(offline_dir)
    seen = pipeline.history(user_id, k)
    rec = pipeline.recommend(user_id, k)
    shown = [
        (f"recently seen by user {user_id}", [_tile(pipeline, i, "") for i in seen]),
        (f"top {k} recommended ({rec.source})",
         [_tile(pipeline, it["item_id"], f"{n}. ") for n, it in enumerate(rec.items, 1)]),
    ]  # fmt: skip
    draw(shown, f"{meta['dataset']}: user {user_id}, model {pipeline.model_version}", path)
    return {"history": seen, "recommended": [it["item_id"] for it in rec.items],
            "source": rec.source, "path": str(path)}  # fmt: skip


def _tile(pipeline: Pipeline, item_id: int | str, prefix: str) -> tuple[Path | None, str]:
    """(the item's image, its caption: its title, else its id)."""
    return pipeline.image_of(item_id), prefix + pipeline.describe(item_id)["title"]
