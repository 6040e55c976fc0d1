"""The loss on cases worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from towers.losses import sampled_softmax_loss
from towers.train import Positives, user_weights

EYE = torch.eye(2)


def test_two_by_two_without_correction():
    # logits = I / 1 = [[1, 0], [0, 1]]; each row: -log(e / (e + 1)) = log(1 + e^-1) = 0.31326
    loss = sampled_softmax_loss(EYE, EYE, torch.zeros(2), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert loss.item() == pytest.approx(0.31326, abs=1e-5)


def test_two_by_two_with_logq_correction():
    # q = (0.5, 0.25): logits - log q = [[1 + 0.6931, 1.3863], [0.6931, 1 + 1.3863]]
    # row 0: log(1 + e^(1.3863 - 1.6931)) = log(1 + e^-0.3069) = 0.55144
    # row 1: log(1 + e^(0.6931 - 2.3863)) = log(1 + e^-1.6931) = 0.16889; mean 0.36017
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = sampled_softmax_loss(EYE, EYE, log_q, temperature=1.0)
    assert loss.item() == pytest.approx(0.36017, abs=1e-4)


def test_temperature_sharpens():
    # logits = I / 0.5 = [[2, 0], [0, 2]]: log(1 + e^-2) = 0.12693
    loss = sampled_softmax_loss(EYE, EYE, torch.zeros(2), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_duplicate_positive_is_not_a_negative_and_extra_negatives_count():
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # both rows drew item 7; item 9 is extra
    # each row sees its positive (logit 1) and the extra negative (logit 0): log(1 + e^-1)
    positives, counts = torch.tensor([0, 0]), torch.tensor([2, 1])
    loss = sampled_softmax_loss(users, items, torch.zeros(2), 1.0, positives, counts)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_distinct_items_give_the_loss_over_the_batch_as_drawn():
    g = torch.Generator().manual_seed(0)
    drawn = torch.tensor([4, 2, 4, 7, 2, 4, 9])  # five rows' positives, then two extra negatives
    users, table = torch.randn(5, 3, generator=g), torch.randn(10, 3, generator=g)
    log_q = torch.randn(10, generator=g)
    expected = []  # row i against every drawn candidate, copies of its positive left out
    for i in range(5):
        keep = [j for j in range(7) if j == i or drawn[j] != drawn[i]]
        logits = table[drawn[keep]] @ users[i] - log_q[drawn[keep]]
        expected.append(torch.logsumexp(logits, 0) - logits[keep.index(i)])
    distinct, inverse, counts = torch.unique(drawn, return_inverse=True, return_counts=True)
    loss = sampled_softmax_loss(users, table[distinct], log_q[distinct], temperature=1.0,
                                positives=inverse[:5], counts=counts)  # fmt: skip
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)


def test_weights_scale_each_row():
    # row 0 with logq correction alone is 0.55144 (above); weights (2, 0): (2 * 0.55144 + 0) / 2
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = sampled_softmax_loss(EYE, EYE, log_q, temperature=1.0, weights=torch.tensor([2.0, 0.0]))
    assert loss.item() == pytest.approx(0.55144, abs=1e-4)


def test_user_weights_even_out_users():
    ids = torch.tensor([3, 3, 3, 3, 5])  # user 3 has four examples, user 5 one
    weights = user_weights(ids, 0.5)  # 4^-0.5 and 1^-0.5, scaled to mean 1
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[4].item() == pytest.approx(2 * weights[0].item())
    assert torch.equal(user_weights(ids, 0.0), torch.ones(5))


def test_an_excluded_candidate_is_no_negative():
    # row 0's only negative is excluded: its loss is -log(e / e) = 0; row 1 as before, 0.31326
    excluded = torch.tensor([[False, True], [False, False]])
    loss = sampled_softmax_loss(EYE, EYE, torch.zeros(2), temperature=1.0, excluded=excluded)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) / 2, abs=1e-6)


@pytest.mark.parametrize("dense_limit", [0, 1 << 10])  # grouped by user, a table
def test_positives_mark_what_each_rows_user_had_by_then(dense_limit):
    users = torch.tensor([2, 5, 2, 2, 5, 7, 3])  # training rows (user, catalogue row, time)
    items = torch.tensor([0, 1, 3, 4, 3, 1, 2])  # user 2: rows 0, 3, 4; user 5: 1, 3; user 7: 1
    times = torch.tensor([10, 20, 30, 40, 50, 60, 70])
    candidates = torch.tensor([3, 1, 0, 5])
    timeless = Positives(users, items, n_items=6, dense_limit=dense_limit)
    assert (timeless.table is None) == (dense_limit == 0)
    assert timeless.among(torch.tensor([4, 0, 6, 3]), candidates).tolist() == [
        [True, True, False, False],  # user 5: every one of their rows
        [True, False, True, False],  # user 2 (row 4 is no candidate)
        [False, False, False, False],  # user 3 has only row 2, no candidate
        [True, False, True, False],
    ]
    timed = Positives(users, items, n_items=6, times=times, dense_limit=dense_limit)
    assert (timed.table is None) == (dense_limit == 0)
    assert timed.among(torch.tensor([4, 0, 2, 3]), candidates).tolist() == [
        [False, True, False, False],  # user 5 at 50: row 1 (at 20) but not 3 (at 50 itself)
        [False, False, False, False],  # user 2 at 10: nothing yet
        [False, False, True, False],  # user 2 at 30: row 0
        [True, False, True, False],  # user 2 at 40: rows 0 and 3
    ]
