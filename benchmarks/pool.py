"""Mean-pool benchmark: the towers' pooled recent items, forward and back, at ml-1m's shape,
against the backward it replaced (each slot's share formed densely and added with `index_add_`).

    python benchmarks/pool.py [--rows 3953] [--bags 1024] [--slots 64] [--widths 64 128]
        [--hidden 0.3] [--repeats 50] [--out FILE]

Each training row pools `--slots` of its user's recent items (`UserTowerConfig.history_sample`),
`--hidden` of them hidden as padding (`history_dropout`), from a table of `--rows` rows as wide as
`--widths` (ml-1m: 3,953 item rows; 64 wide with the user tower's own table or the item ids at
64, 128 with the item ids as wide as ml-1m's towers). Both forms run in the same process on the
same inputs, alternating, and each reports its median milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from train import opening

from towers import nn as tnn

ROOT = Path(__file__).resolve().parent.parent


def index_add_backward(table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                       grad: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The replaced backward: every slot's share (B x L x d) formed, then added into the rows."""
    shares = (weights[..., None] * grad[:, None, :]).reshape(-1, grad.shape[1])
    return grad.new_zeros(table.shape).index_add_(0, ids.reshape(-1), shares)


def current(table: torch.nn.Embedding, ids: torch.Tensor, grad: torch.Tensor) -> None:
    table.weight.grad = None
    tnn.mean_pool(table, ids).backward(grad)


def replaced(table: torch.nn.Embedding, ids: torch.Tensor, grad: torch.Tensor) -> None:
    present = ids != 0
    weights = present / present.sum(1, keepdim=True).clamp(min=1)
    with torch.no_grad():
        torch.nn.functional.embedding_bag(ids, table.weight, mode="sum",
                                          per_sample_weights=weights)  # fmt: skip
    index_add_backward(table.weight, ids, weights, grad)


def timed(step, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        out.append((time.perf_counter() - began) * 1e3)
    return out


def at_width(args: argparse.Namespace, width: int) -> dict:
    g = torch.Generator().manual_seed(0)
    table = tnn.table(args.rows, width)
    ids = torch.randint(1, args.rows, (args.bags, args.slots), generator=g)
    ids = ids.masked_fill(torch.rand(ids.shape, generator=g) < args.hidden, 0)
    grad = torch.randn(args.bags, width, generator=g)
    current(table, ids, grad)
    weights = (ids != 0) / (ids != 0).sum(1, keepdim=True).clamp(min=1)
    same = torch.allclose(table.weight.grad, index_add_backward(table.weight, ids, weights, grad),
                          atol=1e-6)  # fmt: skip
    runs: dict[str, list[float]] = {"index_add (replaced)": [], "sparse matrix (current)": []}
    for _ in range(args.rounds):
        runs["index_add (replaced)"] += timed(lambda: replaced(table, ids, grad), args.repeats)
        runs["sparse matrix (current)"] += timed(lambda: current(table, ids, grad), args.repeats)
    ms = {name: statistics.median(t) for name, t in runs.items()}
    return {"width": width, "same_gradient": same, "median_ms": ms,
            "ratio": ms["sparse matrix (current)"] / ms["index_add (replaced)"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_953)
    parser.add_argument("--bags", type=int, default=1_024)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--hidden", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pool.json"))
    args = parser.parse_args()
    results = [at_width(args, width) for width in args.widths]
    print(f"{'width':>5s} {'index_add (replaced) ms':>24s} {'sparse matrix ms':>17s} {'ratio':>6s}")
    for r in results:
        ms = r["median_ms"]
        print(f"{r['width']:>5d} {ms['index_add (replaced)']:>24.2f} "
              f"{ms['sparse matrix (current)']:>17.2f} {r['ratio']:>6.2f}")  # fmt: skip
    report = {**opening(__file__), **{k: v for k, v in vars(args).items() if k != "out"},
              "results": results}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
