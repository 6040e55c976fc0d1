"""The re-ranker's first stage on a trained version: the towers' cosine, the item-to-item
neighbours alone, and their blends, on the validation users (what `ttr train-ranker` chooses
from) and on the test users (what it would then serve), over the same grid.

    python benchmarks/neighbours.py --repo feature_repo [--artifacts DIR] --out FILE

Validation: the towers from before the refit, neighbours fitted on the training rows, each
validation user's top 200 by the towers re-ordered (`retrieval.ranking.served_task`). Test: the
published towers, neighbours fitted on training + validation rows, each test user's top 200 by
the towers (seen items out) re-ordered. Recall@20 and NDCG@20 of each order. The test figures
are for reading only: the choice is made on validation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retrieval import artifacts, store
from retrieval.catalogue import read_meta
from retrieval.evaluate import before_test, protocol, users_at_test
from retrieval.ranking import (
    NEIGHBOUR_LAMBDAS,
    NEIGHBOUR_WEIGHTS,
    Served,
    Towers,
    catalogue_items,
    ordered_metrics,
    pair_scores,
    served_task,
)
from retrieval.training import read_split, validation_towers, world_of
from towers import metrics, neighbours
from towers.inputs import Vocab
from towers.train import embed


def test_task(world, version: Path, sp, depth: int) -> Served:
    """The test users' top `depth` by the published towers, as `ttr evaluate` ranks them."""
    towers = Towers.load(version, world.vocab, world.catalogue)
    proto = protocol(before_test(sp), sp.test, world.vocab)
    user_x = embed(towers.user, users_at_test(world, sp, proto.users))
    cand = metrics.top_k(user_x, towers.items, proto.exclude, depth)
    retrieval = pair_scores(user_x, towers.items, np.maximum(cand, 0))
    items = catalogue_items(world, sp.test_time)
    return Served({}, items, cand, retrieval, proto.relevant, proto.exclude)


def orders(task: Served, rows, vocab: Vocab) -> dict:
    """Recall@20 / NDCG@20 of the towers' order, the neighbours' alone and every blend."""
    cosine = task.retrieval.numpy()
    out = {"towers": ordered_metrics(cosine, task)}
    users, items = rows["user_id"].to_numpy(), vocab.items.rows(rows["item_id"])
    for lam in NEIGHBOUR_LAMBDAS:
        matrix = neighbours.fit(users, items, len(vocab.items), lam)
        added = neighbours.scores_of(matrix, task.history, task.cand)
        out[f"neighbours alone, lambda {lam:g}"] = ordered_metrics(added, task)
        for weight in NEIGHBOUR_WEIGHTS:
            m = ordered_metrics(cosine + weight * added, task)
            out[f"lambda {lam:g}, weight {weight:g}"] = m
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    prof = store.profile(args.repo)
    version = artifacts.trained(args.artifacts or args.repo.resolve().parent / "artifacts")
    manifest = artifacts.manifest(version)
    sp = read_split(prof.offline_dir, manifest["split"], manifest["train"]["seed"])
    world = world_of(prof, sp, read_meta(prof.offline_dir), vocab=Vocab.load(version))
    began = time.perf_counter()
    towers = Towers.load(validation_towers(version), world.vocab, world.catalogue)
    validation = orders(served_task(world, towers, sp, args.candidates), sp.train, world.vocab)
    test = orders(test_task(world, version, sp, args.candidates), before_test(sp), world.vocab)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "dataset": manifest["dataset"], "model_version": manifest["version"],
        "seed": manifest["train"]["seed"], "seconds": round(time.perf_counter() - began, 1),
        "validation": validation, "test": test,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    for name in validation:
        v, t = validation[name], test[name]
        print(f"{name:32} val {v['recall@20']:.4f} / {v['ndcg@20']:.4f}   "
              f"test {t['recall@20']:.4f} / {t['ndcg@20']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
