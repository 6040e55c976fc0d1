"""The loss that joins the towers: in-batch sampled softmax with logQ correction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float = 0.05,
    positives: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each user's positive against every candidate (weighted by
    `weights` (B,) where given).

    users (B, d) and items (C, d): row i's positive is candidate `positives[i]` (default i; the
    candidates no row takes are extra negatives). log_q (C,) is each candidate's log sampling
    probability, subtracted from its logit so that popular items are not over-penalised as
    negatives (Yi et al. 2019). Candidates may be the batch's distinct items, `counts` (C,) the
    times each was drawn: a negative counts as often as it was drawn, a row's positive once (its
    other copies are not its negatives). This is the loss over the batch as drawn, at the cost of
    embedding each item once. `excluded` (B, C) marks candidates that are not a row's negatives
    (its user's other positives); a row's own positive must not be marked.
    """
    batch = users.shape[0]
    if positives is None:
        positives = torch.arange(batch, device=users.device)
    bias = -log_q  # per candidate, added to the scores in the one matrix product
    if counts is not None:
        log_counts = counts.to(users.dtype).log()
        bias = bias + log_counts
    if excluded is not None:  # into the product's bias: no masking step forward or back
        bias = torch.where(excluded, float("-inf"), bias)
    logits = torch.addmm(bias, users, items.T, alpha=1 / temperature)  # (B, C)
    if counts is not None:
        rows = torch.arange(batch, device=users.device)
        logits = logits.index_put((rows, positives), -log_counts[positives], accumulate=True)
    losses = F.cross_entropy(logits, positives, reduction="none")
    return losses.mean() if weights is None else (losses * weights).mean()
