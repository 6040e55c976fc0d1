"""`ttr explain`: one user's recent history and top recommendations as a grid of posters (PNG)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no backend, no screen, no global state

from retrieval.content import poster_path
from retrieval.offline import read_meta
from retrieval.pipeline import SERVICE, Pipeline
from towers.features import online_rows

TILE = (120, 180)  # poster tiles, width x height in pixels
PLACEHOLDER = 0.85  # grey of the tile where an item has no poster


def history(pipeline: Pipeline, user_id: int, k: int) -> list[int]:
    """The user's most recent items (the online `recent_items` feature), newest first."""
    row = online_rows(pipeline.store, SERVICE, "user_id", [user_id])[0]
    return [int(i) for i in (row.get("recent_items") or [])[:k]]


def tile(path: Path | None) -> np.ndarray:
    """The poster resized to a tile, or a grey placeholder."""
    if path is None:
        return np.full((TILE[1], TILE[0], 3), PLACEHOLDER)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(TILE)) / 255.0


def draw(rows: list[tuple[str, list[tuple[Path | None, str]]]], title: str, path: Path) -> Path:
    """A grid: one labelled row per (label, [(poster, caption)]), written to `path` as PNG."""
    width = max((len(items) for _, items in rows), default=1) or 1
    fig = Figure(figsize=(1.5 * width, 2.9 * len(rows)))
    axes = fig.subplots(len(rows), width, squeeze=False)
    for axes_row, (label, items) in zip(axes, rows, strict=True):
        axes_row[0].set_title(label, loc="left", fontsize=10, fontweight="bold", pad=14)
        for col, ax in enumerate(axes_row):
            ax.set_axis_off()
            if col < len(items):
                poster, caption = items[col]
                ax.imshow(tile(poster))
                if poster is None:
                    ax.text(TILE[0] / 2, TILE[1] / 2, "no poster", ha="center", fontsize=7)
                ax.text(TILE[0] / 2, TILE[1] + 8, textwrap.fill(caption, 22), ha="center",
                        va="top", fontsize=6)  # fmt: skip
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(hspace=0.65, wspace=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def explain(pipeline: Pipeline, offline_dir: Path, user_id: int, path: Path, k: int = 10) -> dict:
    """Write the user's grid to `path`; returns what it shows."""
    meta = read_meta(offline_dir)
    source = Path(meta["source"]) if meta.get("source") else None
    seen = history(pipeline, user_id, k)
    rec = pipeline.recommend(user_id, k)
    shown = [
        (f"recently seen by user {user_id}", [(poster_path(source, i), _title(pipeline, i))
                                               for i in seen]),
        (f"top {k} recommended ({rec.source})",
         [(poster_path(source, it["item_id"]), f"{n}. {it['title']}")
          for n, it in enumerate(rec.items, 1)]),
    ]  # fmt: skip
    draw(shown, f"{meta['dataset']}: user {user_id}, model {pipeline.model_version}", path)
    return {"history": seen, "recommended": [it["item_id"] for it in rec.items],
            "source": rec.source, "path": str(path)}  # fmt: skip


def _title(pipeline: Pipeline, item_id: int) -> str:
    row = pipeline.row(item_id)
    return pipeline.titles[row] if row >= 0 else str(item_id)
