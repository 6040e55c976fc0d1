"""Validation sweep: the two-tower's validation recall@20 and NDCG@20 per epoch, for config changes
against the defaults in the same run, with tuned iALS on the same validation rows as reference.

    python benchmarks/validate.py --repo DIR [--epochs 30] [--dim D] [--variant NAME=JSON ...]
        [--out FILE]

DIR is a feature repository after `ttr data`, `ttr content`, `ttr apply` and `ttr materialize`.
A variant's JSON changes configs: {"train": {TrainConfig fields}, "user": {UserTowerConfig
fields but dim}, "item": {ItemTowerConfig fields but dim}}, e.g. dim128='{"train": {"dim": 128}}'
(the towers' width is a training option; --dim sets it for every run). The defaults run first as
the baseline. Every run trains all epochs (no early stopping, no refit), so the curves compare
epoch by epoch; the best epoch is the one early stopping would keep.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
from train import changes, opening

from retrieval import evaluate, store, training
from retrieval.catalogue import read_meta
from towers.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def curve(prof: store.Profile, change: dict, epochs: int, dim: int) -> dict:
    """One training run with `change` applied: each epoch's validation metrics, and the best."""
    cfg = TrainConfig(**{"epochs": epochs, "dim": dim, **change.get("train", {}),
                         "patience": epochs, "refit": False})  # fmt: skip
    shapes = training.Shapes(change.get("user", {}), change.get("item", {}))
    f = training.fit(prof, cfg, training.SplitConfig(), shapes=shapes)
    history = [{k: step[k] for k in ("epoch", "recall", "ndcg", "examples_per_s")}
               for step in f.result["history"]]  # fmt: skip
    best = max(history, key=lambda step: step["recall"])
    return {"change": change, "best_epoch": best["epoch"], "recall@20": best["recall"],
            "ndcg@20": best["ndcg"], "history": history}  # fmt: skip


def ials(prof: store.Profile) -> dict:
    """iALS tuned as `ttr evaluate` tunes it, on the same split's validation rows."""
    meta = read_meta(prof.offline_dir)
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    sp = training.split(inter, meta["schema"]["split"], training.SplitConfig())
    vocab = training.world_of(prof, sp, meta).vocab
    return evaluate.ials_grid(sp, vocab, evaluate.EvalConfig())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--dim", type=int, default=TrainConfig.dim, help="the towers' width (0: from the data)"
    )
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "validate.json"))
    args = parser.parse_args()
    prof = store.profile(args.repo)
    runs = {
        name: curve(prof, change, args.epochs, args.dim)
        for name, change in changes(args.variant).items()
    }
    reference = ials(prof)
    base = runs["defaults"]
    print(f"{'variant':28s} {'best epoch':>10s} {'recall@20':>10s} {'NDCG@20':>8s} "
          f"{'recall / defaults':>18s} {'NDCG / defaults':>16s}")  # fmt: skip
    for name, r in runs.items():
        print(f"{name:28s} {r['best_epoch']:>10d} {r['recall@20']:>10.4f} {r['ndcg@20']:>8.4f} "
              f"{r['recall@20'] / base['recall@20']:>18.3f} "
              f"{r['ndcg@20'] / base['ndcg@20']:>16.3f}")  # fmt: skip
    print(f"{'iALS (tuned)':28s} {'':>10s} {reference['val_recall@20']:>10.4f} "
          f"{reference['val_ndcg@20']:>8.4f}")  # fmt: skip
    report = {
        **opening(__file__),
        "dataset": read_meta(prof.offline_dir)["dataset"], "epochs": args.epochs, "dim": args.dim,
        "ials": reference, "variants": runs,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
