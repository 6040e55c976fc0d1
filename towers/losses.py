"""The loss that joins the towers: in-batch sampled softmax with logQ correction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float = 0.05,
    item_ids: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each user's positive against every candidate (weighted by
    `weights` (B,) where given).

    users (B, d) and items (C, d), C >= B: row i's positive is candidate i; candidates B.. are
    extra negatives. log_q (C,) is each candidate's log sampling probability, subtracted from its
    logit so that popular items are not over-penalised as negatives (Yi et al. 2019). With
    item_ids (C,), a candidate that is the same item as a row's positive is not its negative.
    """
    batch = users.shape[0]
    logits = users @ items.T / temperature - log_q  # (B, C)
    if item_ids is not None:
        same = item_ids[None, :] == item_ids[:batch, None]  # (B, C)
        same[:, :batch] &= ~torch.eye(batch, dtype=torch.bool, device=users.device)
        logits = logits.masked_fill(same, float("-inf"))
    losses = F.cross_entropy(logits, torch.arange(batch, device=users.device), reduction="none")
    return losses.mean() if weights is None else (losses * weights).mean()
