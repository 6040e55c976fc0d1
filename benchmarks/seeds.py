"""Seed spread: the two-tower's test Recall@20 over several training seeds, per config variant,
against popularity and tuned iALS on the same test users, so that one seed's luck stops steering
decisions.

    python benchmarks/seeds.py --repo DIR [--seeds 0 1 2] [--variant NAME=JSON ...] [--out FILE]

DIR is a feature repository after `ttr data`, `ttr content`, `ttr apply` and `ttr materialize`.
Each run is `ttr train --seed S` (early stopping, then the refit) followed by `ttr evaluate
--no-retrain`, in process, into a temporary artifacts directory. A variant's JSON changes
TrainConfig fields, e.g. lr3='{"lr": 0.001}'; the defaults run first as the baseline. On temporal
splits the table shows users with and without training history (warm, cold) beside all of them;
where the version chose a popularity prior for users without history, the JSON also holds the
towers' cosine alone (`cosine_alone`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from train import changes, opening

from retrieval import artifacts, evaluate, store, training
from retrieval.catalogue import read_meta
from towers.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("all", "warm", "cold")


def recalls(model: dict) -> dict[str, float]:
    """Test Recall@20 of one model's `ttr evaluate` entry, over all users and per group, and its
    NDCG@20 over all users (`ndcg_all`)."""
    out = {"all": model["recall@20"], "ndcg_all": model["ndcg@20"]}
    out.update({g: model[g]["recall@20"] for g in GROUPS[1:] if model.get(g, {}).get("users")})
    return out


def one_run(prof: store.Profile, change: dict, seed: int) -> dict:
    """Train with `change` and `seed`, then evaluate on the test split: every model's recalls, and
    the towers' training time (`train_s`, as the version's manifest records it)."""
    with tempfile.TemporaryDirectory() as root:
        cfg = TrainConfig(**{**change, "seed": seed})
        version = training.run(prof, Path(root), cfg, training.SplitConfig())
        seconds = artifacts.manifest(version)["seconds"]
        result = evaluate.run(prof, Path(root), evaluate.EvalConfig(retrain=False))
    runs = {name: recalls(model) for name, model in result["models"].items()}
    runs["two_tower"]["train_s"] = seconds
    return runs


def summary(per_seed: dict[int, dict[str, float]]) -> dict:
    """Mean and (n > 1) sample standard deviation per user group and of NDCG@20, the worst seed's
    overall, and the longest training where recorded."""
    out: dict = {}
    for group in (*GROUPS, "ndcg_all"):
        values = [run[group] for run in per_seed.values() if group in run]
        if values:
            out[f"mean_{group}"] = statistics.fmean(values)
            out[f"std_{group}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["min_all"] = min(run["all"] for run in per_seed.values())
    if seconds := [run["train_s"] for run in per_seed.values() if "train_s" in run]:
        out["max_train_s"] = max(seconds)
    return out


def print_table(variants: dict, reference: dict) -> None:
    cols = [g for g in GROUPS if f"mean_{g}" in variants["defaults"]["summary"]]
    print(f"{'model':34s} " + " ".join(f"{g + ' mean ± std':>18s}" for g in cols)
          + f" {'worst seed':>10s} {'all / defaults':>14s}")  # fmt: skip
    base = variants["defaults"]["summary"]["mean_all"]
    for name, v in variants.items():
        s = v["summary"]
        cells = " ".join(f"{s[f'mean_{g}']:>10.4f} ± {s[f'std_{g}']:.4f}" for g in cols)
        print(f"two-tower {name:24s} {cells} {s['min_all']:>10.4f} {s['mean_all'] / base:>14.3f}")
    for name, r in reference.items():
        cells = " ".join(f"{r[g]:>18.4f}" if g in r else f"{'':>18s}" for g in cols)
        print(f"{name:34s} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seeds.json"))
    args = parser.parse_args()
    prof = store.profile(args.repo)
    variants, reference = {}, {}
    for name, change in changes(args.variant).items():
        runs = {seed: one_run(prof, change, seed) for seed in args.seeds}
        reference = {m: r for m, r in runs[args.seeds[0]].items() if m in ("popularity", "ials")}
        per_seed = {seed: run["two_tower"] for seed, run in runs.items()}
        variants[name] = {"change": change, "seeds": per_seed, "summary": summary(per_seed)}
        cosine = {seed: run["two_tower_cosine"] for seed, run in runs.items()
                  if "two_tower_cosine" in run}  # fmt: skip
        if cosine:  # the towers without the popularity prior for users with no history
            variants[name]["cosine_alone"] = {"seeds": cosine, "summary": summary(cosine)}
    print_table(variants, reference)
    report = {
        **opening(__file__),
        "dataset": read_meta(prof.offline_dir)["dataset"], "metric": "test Recall@20",
        "reference": reference, "two_tower": variants,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
