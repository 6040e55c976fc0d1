"""The popularity prior's weight curve: Recall@20 of the users without history at every weight
of `retrieval.prior.GRID`, on the validation split (the early-stopped towers, what `ttr train`
chooses the weight on) and on the test split (the published towers), per training seed.

    python benchmarks/prior.py --repo DIR [--seeds 0 1 2] [--out FILE]

DIR is a feature repository after `ttr data` (a dataset whose split is in time order, so that
some test users have no history), `ttr content` (optional), `ttr apply` and `ttr materialize`.
Each seed is `ttr train --seed S` in process, into a temporary artifacts directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from train import opening

from retrieval import artifacts, evaluate, prior, store, training
from retrieval.catalogue import read_meta
from towers import metrics
from towers.inputs import Vocab
from towers.train import Inputs, TrainConfig, embed

ROOT = Path(__file__).resolve().parent.parent


def curve(towers: tuple, world: training.World, user_x: Inputs, proto: evaluate.Protocol,
          rows: np.ndarray) -> dict[float, float]:  # fmt: skip
    """Recall@20 of the users without history at each weight (`rows`: the interactions before)."""
    users, items = (
        embed(towers[0], user_x).numpy(),
        training.embed_items(towers[1], world.vocab, world.catalogue),
    )
    cold = prior.cold(user_x)
    counts = prior.log_counts(rows, len(world.vocab.items))
    rel = [r for r, c in zip(proto.relevant, cold, strict=True) if c]
    out = {}
    for weight in prior.GRID:
        top = metrics.top_k(*prior.augmented(users, items, cold, counts, weight), proto.exclude, 20)
        out[weight] = metrics.recall_at_k([t for t, c in zip(top, cold, strict=True) if c], rel, 20)
    return out


def one_seed(prof: store.Profile, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        version = training.run(prof, Path(root), TrainConfig(seed=seed), training.SplitConfig())
        manifest = artifacts.manifest(version)
        sp = training.read_split(prof.offline_dir, manifest["split"], seed)
        world = training.world_of(prof, sp, read_meta(prof.offline_dir), vocab=Vocab.load(version))
        rows = world.vocab.items.rows
        val = evaluate.protocol(sp.train, sp.validation, world.vocab)
        val_x = training.validation_users(world, sp, val.users)
        test = evaluate.protocol(evaluate.before_test(sp), sp.test, world.vocab)
        test_x = evaluate.users_at_test(world, sp, test.users)
        return {
            "chosen": manifest["choices"]["cold_prior"],
            "validation": curve(training.load_towers(version / training.BEFORE_REFIT), world,
                                val_x, val, rows(sp.train["item_id"])),
            "test": curve(training.load_towers(version), world, test_x, test,
                          rows(evaluate.before_test(sp)["item_id"])),
            "cold_users": {"validation": int(prior.cold(val_x).sum()),
                           "test": int(prior.cold(test_x).sum())},
        }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prior.json"))
    args = parser.parse_args()
    prof = store.profile(args.repo)
    seeds = {seed: one_seed(prof, seed) for seed in args.seeds}
    print(f"{'weight':>8s} " + " ".join(f"{f'val / test s{s}':>18s}" for s in seeds))
    for weight in prior.GRID:
        cells = [f"{r['validation'][weight]:.4f} / {r['test'][weight]:.4f}" for r in seeds.values()]
        print(f"{weight:>8g} " + " ".join(f"{c:>18s}" for c in cells))
    for seed, r in seeds.items():
        print(f"seed {seed}: chose {r['chosen']['value']} ({r['chosen']['reason']})")
    report = {**opening(__file__), "dataset": read_meta(prof.offline_dir)["dataset"],
              "seeds": seeds}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
