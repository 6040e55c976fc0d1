"""Ranker-training benchmark: examples/s of the NCF re-ranker's training loop at ml-1m's shape.

    python benchmarks/ranker.py [--interactions 120000] [--repeats 2] [--out FILE]

The loop is `retrieval.ranking.fit_ranker` (one epoch, no validation) on random inputs shaped as
`ttr train-ranker` builds them for ml-1m: each interaction with 4 uniform and 1 hard negative
(6 examples), the user side as the towers read it (6,040 users, their features, activity, genre
shares and 200 recent items) and an item table of (item, day) rows (3,953 items, genres, the
popularity inputs, genre multi-hot). The variants are the user side with the towers'
recent items carried through the loop (as `ttr train-ranker` did before; the ranker does not read
them), the baseline, and without them (as it does now). The id tables are sparse, stepped by lazy
Adam: dense tables ran the loop 1.25x faster (`ranker.json` of 14f2af1) but kept no epoch on
ml-1m (`variants_20261206.json`). Each variant reports its best of `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from train import GENRES, USER_FIELDS, USERS, opening, positives

from retrieval.ranking import Examples, RankerTrainConfig, fit_ranker
from towers.ranker import Ranker, RankerConfig

ROOT = Path(__file__).resolve().parent.parent
ITEMS, PER_ROW = 3_953, 6  # the positive, 4 uniform and 1 hard negative
ITEM_FIELDS = (("genres", "multi_categorical", GENRES + 1),)
VARIANTS = {  # whether the user side carries the towers' recent items
    "recent items carried (baseline)": True,
    "no recent items carried (ttr train-ranker)": False,
}


def examples(n: int, recent: bool, g: torch.Generator) -> Examples:
    """`n` interactions' examples: user row i's positive item and its 5 negatives."""
    users = {
        "user": torch.randint(1, USERS + 1, (n,), generator=g),
        **{name: torch.randint(1, rows, (n,), generator=g) for name, _, rows in USER_FIELDS},
        "activity": torch.randn(n, 4, generator=g),
        "genres_shares": torch.rand(n, GENRES, generator=g),
    }
    if recent:
        users["recent_items"] = torch.randint(0, ITEMS, (n, 200), generator=g)
    cand = torch.cat([positives(n, ITEMS, g)[:, None],
                      torch.randint(1, ITEMS, (n, PER_ROW - 1), generator=g)], 1)  # fmt: skip
    days = 4 * ITEMS  # distinct (item, day) rows: a few days per item
    table = {
        "item": torch.arange(days) % ITEMS,
        "genres": torch.randint(0, GENRES + 1, (days, 3), generator=g),
        "popularity": torch.randn(days, 4, generator=g),
        "genres:share": (torch.rand(days, GENRES, generator=g) < 0.1).float(),
    }
    where = cand.reshape(-1) + ITEMS * torch.randint(0, 4, (n * PER_ROW,), generator=g)
    labels = torch.zeros(n, PER_ROW)
    labels[:, 0] = 1.0
    return Examples(users, torch.arange(n).repeat_interleave(PER_ROW), table, where,
                    labels.reshape(-1), torch.randn(n * PER_ROW, generator=g))  # fmt: skip


def rate(recent: bool, n: int) -> float:
    data = examples(n, recent, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ranker = Ranker(RankerConfig(USERS + 1, ITEMS, USER_FIELDS, ITEM_FIELDS, (("genres", GENRES),)))
    result = fit_ranker(ranker, data, None, RankerTrainConfig(epochs=1))
    return result["history"][0]["examples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ranker.json"))
    args = parser.parse_args()
    rounds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # variants in turn, so that a slow spell hits them all
        for name, variant in VARIANTS.items():
            rounds[name].append(rate(variant, args.interactions))
    best = {name: max(r) for name, r in rounds.items()}
    base = best[next(iter(VARIANTS))]
    print(f"{'variant':40s} {'examples/s':>12s} {'x baseline':>10s}")
    for name, value in best.items():
        print(f"{name:40s} {value:>12,.0f} {value / base:>10.2f}")
    report = {
        **opening(__file__),
        "examples_per_epoch": args.interactions * PER_ROW,
        "examples_per_s": best, "rounds": rounds,
        "ratio_to_baseline": {name: value / base for name, value in best.items()},
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
