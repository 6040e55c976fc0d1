"""The generic pieces the towers share: an MLP builder, and checkpoints that carry their config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of `sizes`, ReLU and dropout between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), Dropout(dropout)]
    return nn.Sequential(*layers)


class Dropout(nn.Module):
    """Dropout whose mask comes from random bytes, eight drawn per 64-bit random number (`p` is
    rounded to a multiple of 1/256), applied as a float mask (a boolean one costs twice as much in
    the product). `nn.Dropout` draws a float per element: on a 1,024 x 1,664 batch of content
    vectors, forward and back, 19.3 ms here against 4.7 ms through a boolean mask and 2.4 ms
    this way; on the user tower's 1,024 x 256 hidden layer 3.1, 0.6 and 0.4 ms."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p, self.threshold = p, round(p * 256)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
        keep = words.view(torch.uint8)[:n].view(x.shape).to(x.dtype).ge_(self.threshold)
        return x * keep.mul_(256 / (256 - self.threshold))


SPARSE_FROM = 100_000  # rows from which an id table is sparse: a step's gradient and update
# touch only the rows its batch used (a dense AdamW step visits all of a 1M-item table's rows)


def table(rows: int, width: int) -> nn.Embedding:
    """An id table (row 0 the padding and unknown id), sparse from SPARSE_FROM rows: stepped by
    lazy Adam then (`optimizers`)."""
    return nn.Embedding(rows, width, padding_idx=0, sparse=rows >= SPARSE_FROM)


class _MeanPool(torch.autograd.Function):
    """Rows of a table summed per bag with per-slot weights. The backward multiplies the bags'
    gradient by the (rows x bags) matrix of the slots' weights, held sparse (its slots of weight
    0, padding and hidden items, left out): ml-1m's 1,024 x 64 recent items, forward and back,
    3.3 ms into 64-wide rows and 4.4 ms into 128-wide ones, against 6.4 and 18.7 ms for each
    slot's share formed densely and added with `index_add_` (`benchmarks/pool.py`), and more for
    `nn.EmbeddingBag`'s sorting backward. A sparse table gets the slots' shares as a sparse
    gradient instead (rows touched only)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                sparse: bool):  # fmt: skip
        ctx.save_for_backward(ids, weights)
        ctx.rows, ctx.sparse = table.shape[0], sparse
        return F.embedding_bag(ids, table, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        ids, weights = ctx.saved_tensors
        slots = weights.reshape(-1).nonzero().squeeze(1)
        rows, bags, shares = (
            ids.reshape(-1)[slots],
            slots // ids.shape[1],
            weights.reshape(-1)[slots],
        )
        if ctx.sparse:
            size = (ctx.rows, grad.shape[1])
            table = torch.sparse_coo_tensor(rows[None], grad[bags] * shares[:, None], size,
                                            check_invariants=False)  # fmt: skip
        else:
            size = (ctx.rows, len(grad))
            pool = torch.sparse_coo_tensor(torch.stack([rows, bags]), shares, size,
                                           check_invariants=False)  # fmt: skip
            table = torch.sparse.mm(pool, grad)
        return table, None, None, None


class Fields(nn.Module):
    """One side's features (`towers.inputs.Encoding`), each embedded by its kind, concatenated
    into (B, width): a categorical its value's row; a multi_categorical and a text the mean of
    their values' rows; a numeric its bucket's row beside [value standardised, present]."""

    def __init__(self, fields: tuple[tuple[str, str, int], ...], embed: int) -> None:
        super().__init__()
        self.fields = fields
        self.tables = nn.ModuleDict(
            {name: nn.Embedding(rows, embed, padding_idx=0) for name, _, rows in fields}
        )
        self.width = sum(embed + 2 * (kind == "numeric") for _, kind, _ in fields)

    def forward(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        parts = []
        for name, kind, _ in self.fields:
            table = self.tables[name]
            if kind == "numeric":
                parts += [table(x[f"{name}:bucket"]), x[name]]
            elif kind == "categorical":
                parts.append(table(x[name]))
            else:
                parts.append(mean_pool(table, x[name]))
        return parts


def mean_pool(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """The mean of `table`'s rows for each row of `ids` (B, L), padding (id 0) left out: (B, d);
    a row of padding alone pools to zeros."""
    present = ids != 0
    weights = (present / present.sum(1, keepdim=True).clamp(min=1)).to(table.weight.dtype)
    return _MeanPool.apply(table.weight, ids, weights, table.sparse)


@torch.no_grad()
def forget(table: nn.Embedding | nn.EmbeddingBag, ids: torch.Tensor) -> None:
    """Zero the rows of `ids`: what the table holds for ids it never trained on is its random
    initialisation, and zero is what the padding id (and id dropout) stands for."""
    table.weight[ids] = 0.0


def sparse_tables(model: nn.Module) -> list[nn.Parameter]:
    """The weights of `model`'s sparse id tables (`table`), each once (two towers may share one)."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
    return list({id(w): w for w in weights}.values())


def optimizers(model: nn.Module, lr: float, weight_decay: float,
               fused: bool = False) -> list[torch.optim.Optimizer]:  # fmt: skip
    """AdamW over the dense parameters (`fused`: in one kernel) and lazy Adam (`SparseAdam`:
    moments move only for the rows a batch touched) over the sparse embedding tables: a dense
    step visits every row of every table, which at a million items made training crawl."""
    tables = sparse_tables(model)
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]
    out: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay, fused=fused or None)
    ]
    if tables:
        out.append(torch.optim.SparseAdam(tables, lr=lr))
    return out


def known(ids: torch.Tensor, size: int) -> torch.Tensor:
    """`ids` with those outside an embedding table of `size` rows replaced by 0 (unknown)."""
    return torch.where((ids >= 0) & (ids < size), ids, torch.zeros_like(ids))


def save(model: nn.Module, folder: Path, name: str) -> None:
    """`name.safetensors` (weights) and `name.json` (the model's config) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"{name}.safetensors"
    )
    config = {"class": type(model).__name__, "config": dataclasses.asdict(model.config)}
    (folder / f"{name}.json").write_text(json.dumps(config, indent=2))


def load(cls: Any, folder: Path, name: str) -> Any:
    """Rebuild `cls` from `name.json` alone and load `name.safetensors` strictly, in eval mode."""
    saved = json.loads((folder / f"{name}.json").read_text())
    if saved["class"] != cls.__name__:
        raise ValueError(f"{folder / name}: a {saved['class']}, not a {cls.__name__}")
    fields = {k: _tuples(v) for k, v in saved["config"].items()}
    model = cls(cls.Config(**fields))
    weights = load_file(folder / f"{name}.safetensors")
    stored = {k: v.shape for k, v in weights.items()}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if mismatched := sorted(k for k in stored | expected if stored.get(k) != expected.get(k)):
        raise ValueError(
            f"{folder / name}: saved by another version of {cls.__name__} (its weights "
            f"{mismatched[:4]} do not match); retrain it"
        )
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _tuples(value: Any) -> Any:
    """JSON lists back into the tuples a frozen config holds, nested ones too."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x, dim=-1)
