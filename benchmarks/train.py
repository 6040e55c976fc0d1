"""Training-loop benchmark: examples/s of the two towers at ml-1m's shape, against id-only towers.

    python benchmarks/train.py [--examples 200000] [--dim 128] [--items 3953] [--recent 200]
        [--dense-too] [--nproc 1 2] [--repeats 3] [--out FILE]

Inputs are random tensors shaped as `ttr train` builds them for ml-1m (3,953 item ids, 18 genres,
200 recent items, hashed title words, or the pretrained encoders' 384-d text and 1,280-d image
vectors where `ttr content` ran), so the loop is measured apart from Feast. `--items` sets the
catalogue's sizes (from `towers.nn.SPARSE_FROM` items the id tables are sparse, as `ttr train`
makes them; `--dense-too` measures dense tables there as well); variants whose
image vectors would take more than 2 GB are left out. The baseline in the same run is the same
loop with id-only item towers (no categorical or text inputs); one variant trains the full
towers without masking each row's user's items out of its negatives (`--mask-seen false`: what
the masks cost), and the last pools the user's recent items from the item tower's id table, with
a linear path from the pool to the output and the ids as wide as the towers
(`TrainConfig.shared_history`, what `ttr train` chooses on ml-1m, whose rows carry no time
order, with every item id kept). Three more variants cut that one's capacity where its time goes:
the user tower's MLP 128 wide instead of 256, the text and image vectors 128 wide before their
projections (what a reduction of the pretrained vectors would leave: the cost is measured here,
not what the cut does to recall), and both. An ml-1m epoch is 800,000 examples less the
validation share, 720,000. The variants run in turn, `--repeats` rounds, and each reports its
best round: the machine is shared, and what slows a round is other work on it. `--nproc 1 2`
measures each variant in one process and in two under DDP (`towers.distributed`, gloo), each
process on its share of every batch and of the cores: examples/s counts both processes' rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import torch

import towers
import towers.nn
from towers import distributed
from towers.inputs import TEXT_BUCKETS
from towers.item_tower import ItemTower, ItemTowerConfig
from towers.train import TrainConfig, Validation, train
from towers.user_tower import UserTower, UserTowerConfig

ROOT = Path(__file__).resolve().parent.parent
GENRES, USERS, EPOCH = 18, 6_040, 720_000
TEXT_DIM, IMAGE_DIM = 384, 1_280  # all-MiniLM-L6-v2, EfficientNet-Lite0
USER_FIELDS = (("age", "categorical", 8), ("gender", "categorical", 3),
               ("occupation", "categorical", 22))  # fmt: skip
ITEM_FIELDS = (("genres", "multi_categorical", GENRES + 1),)
FULL = {"modalities": ("id", "categorical", "text", "image"), "text_dim": TEXT_DIM,
        "image_dim": IMAGE_DIM}  # fmt: skip
ML1M = {"item": {**FULL, "id_dropout": 0.0}, "shared": True}  # what `ttr train` builds on ml-1m
VARIANTS = {  # the item tower's config per variant, changes to the user tower's and training's
    "id only (baseline)": {"item": {"modalities": ("id",)}},
    "id+categorical+text (hashed words)": {"item": {"modalities": ("id", "categorical", "text")}},
    "id+categorical+text+image (pretrained vectors)": {"item": FULL},
    "the same, seen items left among negatives": {"item": FULL, "train": {"mask_seen": False}},
    "the same, history pooled from the item id table (ml-1m's defaults)": ML1M,
    "ml-1m's defaults, the user tower's MLP 128 wide (from 256)": {**ML1M, "user": {"hidden": 128}},
    "ml-1m's defaults, text and image vectors 128 wide (from 384 and 1,280)": {
        **ML1M,
        "item": {**ML1M["item"], "text_dim": 128, "image_dim": 128},
    },
    "ml-1m's defaults, both cuts": {
        **ML1M,
        "user": {"hidden": 128},
        "item": {**ML1M["item"], "text_dim": 128, "image_dim": 128},
    },
}
IMAGE_BYTES = 2e9  # the most the random image vectors may take


def inputs(n: int, items: int, recent: int, g: torch.Generator,
           images: bool) -> tuple[dict, dict]:  # fmt: skip
    users = {
        "user": torch.randint(1, USERS + 1, (n,), generator=g),
        **{name: torch.randint(1, rows, (n,), generator=g) for name, _, rows in USER_FIELDS},
        "activity": torch.randn(n, 4, generator=g),
        "genres_shares": torch.rand(n, GENRES, generator=g),
        "recent_items": torch.randint(0, items, (n, recent), generator=g),
    }
    catalogue = {
        "item": torch.arange(items),
        "genres": torch.randint(0, GENRES + 1, (items, 3), generator=g),
        "words": torch.randint(0, TEXT_BUCKETS, (items, 8), generator=g),  # ml-1m: titles only
        "text_vector": torch.randn(items, TEXT_DIM, generator=g),
        "has_text": torch.ones(items),
    }
    if images:
        catalogue |= {
            "image_vector": torch.randn(items, IMAGE_DIM, generator=g),
            "has_image": (torch.rand(items, generator=g) < 0.997).float(),  # 11 ml-1m items: none
        }
    return users, catalogue


def positives(n: int, items: int, g: torch.Generator) -> torch.Tensor:
    """Each example's item row, drawn with ml-1m's popularity skew: Zipf with exponent 0.7 over
    the ids gives 720 distinct items in a batch of 1,024 (ml-1m's interactions: 730 expected)."""
    weights = torch.arange(1, items, dtype=torch.float64) ** -0.7
    return 1 + torch.multinomial(weights, n, replacement=True, generator=g)


def rate(variant: dict, users: dict, catalogue: dict, rows: torch.Tensor, dim: int) -> float:
    torch.manual_seed(0)
    items = len(catalogue["item"])
    shared = {"item_embed": dim, "skip": True} if variant.get("shared") else {}
    user_tower = UserTower(UserTowerConfig(items, USER_FIELDS, (("genres", GENRES),), dim=dim,
                                           **shared, **variant.get("user", {})))  # fmt: skip
    catalogue = narrowed(catalogue, variant["item"])
    fields = ITEM_FIELDS if "categorical" in variant["item"]["modalities"] else ()
    embed = {"embed": dim} if shared else {}  # ttr train's ids: as wide as the towers
    item_tower = ItemTower(ItemTowerConfig(items, fields, dim=dim, **variant["item"], **embed))
    if shared:  # as retrieval.training.towers_for ties them where rows carry no time order
        user_tower.recent.weight = item_tower.ids.weight
    small = Validation({k: v[:100] for k, v in users.items()}, [{1}] * 100, [set()] * 100)
    result = train(user_tower, item_tower, users, rows, torch.zeros(items), catalogue, small,
                   TrainConfig(epochs=1, batch_size=1024, **variant.get("train", {})))  # fmt: skip
    return result["history"][0]["examples_per_s"]


def narrowed(catalogue: dict, item: dict) -> dict:
    """The catalogue's text and image vectors cut to the widths the item tower's config `item`
    takes (the cost of vectors reduced before the projection, not their quality)."""
    out = dict(catalogue)
    for kind in ("text", "image"):
        if f"{kind}_vector" in out and item.get(f"{kind}_dim"):
            out[f"{kind}_vector"] = out[f"{kind}_vector"][:, : item[f"{kind}_dim"]].contiguous()
    return out


def runs_at(args: argparse.Namespace, items: int) -> dict[str, dict]:
    """The runs at one catalogue size, by name: each variant (the image ones where their vectors
    fit IMAGE_BYTES) at each process count, and dense where the tables are sparse and asked."""
    images = items * IMAGE_DIM * 4 <= IMAGE_BYTES
    line = towers.nn.SPARSE_FROM
    lines = [line] + [items + 1] * (args.dense_too and items >= line)  # items + 1: dense
    out = {}
    for name, variant in VARIANTS.items():
        if not images and "image" in variant["item"]["modalities"]:
            continue
        for nproc in args.nproc:
            for sparse_from in lines:
                tables = "sparse" if items >= sparse_from else "dense"
                label = f"{name}, {items:,} items ({tables} ids)"
                label += f", {nproc} processes" * (nproc > 1)
                out[label] = {"variant": variant, "items": items, "sparse_from": sparse_from,
                              "nproc": nproc}  # fmt: skip
    return out


def measured(args: argparse.Namespace, run: dict) -> float:
    """Examples/s of one run (variant, items, sparse_from, nproc) in `nproc` processes (this one
    where 1)."""
    if run["nproc"] == 1:
        return _rate(args, run)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rate.json"
        distributed.launch(_rate, run["nproc"], args, run, out)
        return json.loads(out.read_text())


def _rate(args: argparse.Namespace, run: dict, out: Path | None = None) -> float:
    """The run's rate on its inputs (built alike in every process: the same seed)."""
    towers.nn.SPARSE_FROM = run["sparse_from"]  # read by towers.nn.table as it builds a table
    g = torch.Generator().manual_seed(0)
    variant, items = run["variant"], run["items"]
    images = "image" in variant["item"]["modalities"]
    users, catalogue = inputs(args.examples, items, args.recent, g, images)
    rows = positives(args.examples, items, g)
    result = rate(variant, users, catalogue, rows, args.dim)
    if out is not None and distributed.main():
        out.write_text(json.dumps(result))
    return result


def measured_commit() -> str:
    """The commit of the `towers` package measured, `+dirty` where its checkout has changes."""

    def git(*args: str) -> str:
        folder = Path(towers.__file__).resolve().parent.parent
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True).stdout

    return git("rev-parse", "--short", "HEAD").strip() + (
        "+dirty" if git("status", "--porcelain") else ""
    )


def opening(script: str) -> dict:
    """What a training benchmark's JSON opens with: its command, the commit measured, the date,
    the machine."""
    return {
        "command": "python " + " ".join([os.path.relpath(script, ROOT), *sys.argv[1:]]),
        "commit": measured_commit(), "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }  # fmt: skip


def changes(variants: list[str]) -> dict[str, dict]:
    """The defaults (no change), then each `NAME=JSON` variant's change, by name."""
    out: dict[str, dict] = {"defaults": {}}
    for spec in variants:
        name, _, text = spec.partition("=")
        out[name] = json.loads(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128, help="towers' width (ml-1m's choice)")
    parser.add_argument("--items", type=int, nargs="+", default=[3_953],
                        help="catalogue sizes (ml-1m's)")  # fmt: skip
    parser.add_argument("--recent", type=int, default=200, help="recent items (ml-1m's choice)")
    parser.add_argument("--dense-too", action="store_true",
                        help="where the id tables are sparse, also measure them dense")  # fmt: skip
    parser.add_argument("--nproc", type=int, nargs="+", default=[1], help="processes (DDP)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    runs = {name: run for items in args.items for name, run in runs_at(args, items).items()}
    rounds = [{name: measured(args, run) for name, run in runs.items()}
              for _ in range(args.repeats)]  # fmt: skip
    results = {name: max(r[name] for r in rounds) for name in runs}
    print(f"{'item tower':92s} {'examples/s':>11s} {'ml-1m epoch s':>14s}")
    for name, r in results.items():
        print(f"{name:92s} {r:>11,.0f} {EPOCH / r:>14.1f}")
    report = {
        **opening(__file__),
        "examples": args.examples, "dim": args.dim, "items": args.items, "recent": args.recent,
        "sparse_from": towers.nn.SPARSE_FROM, "examples_per_s": results,
        "rounds": rounds,
        "ml1m_epoch_s": {name: EPOCH / r for name, r in results.items()},
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
