"""Metrics on cases worked by hand."""

from __future__ import annotations

import math

import pytest

from towers import metrics

TOP = [[1, 2, 3, 4], [5, 6, 7, 8]]
RELEVANT = [{2, 9}, {5, 6, 7, 8, 10}]


def test_recall_precision_f1():
    # user 0: top-2 holds 2 (1 of 2 relevant); user 1: top-2 holds 5, 6 (2 of 5)
    assert metrics.recall_at_k(TOP, RELEVANT, 2) == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert metrics.precision_at_k(TOP, RELEVANT, 2) == pytest.approx((1 / 2 + 2 / 2) / 2)
    # f1: user 0 p=.5 r=.5 -> .5; user 1 p=1 r=.4 -> 2*.4/1.4 = .5714
    assert metrics.f1_at_k(TOP, RELEVANT, 2) == pytest.approx((0.5 + 0.8 / 1.4) / 2)


def test_ndcg_uses_the_ideal_over_min_relevant_and_k():
    # user 0: hit at rank 2 -> 1/log2(3); ideal: 2 relevant -> 1 + 1/log2(3)
    # user 1: hits at ranks 1-4 -> ideal equals dcg (min(5, 4) = 4 positions): 1.0
    user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(TOP, RELEVANT, 4) == pytest.approx((user0 + 1.0) / 2)


def test_report_keys():
    out = metrics.report(TOP, RELEVANT, (2, 4))
    assert set(out) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "f1") for k in (2, 4)}


def test_a_short_list_counts_as_misses():
    assert metrics.recall_at_k([[2]], [{2, 9}], 4) == 0.5
    assert metrics.precision_at_k([[2]], [{2, 9}], 4) == 0.25


def test_the_table_says_why_it_shows_fewer_activity_groups():
    from retrieval.evaluate import ACTIVITY_GROUPS, activity_note

    four = {f"{i}-{i}": {} for i in range(ACTIVITY_GROUPS)}
    assert "here" not in activity_note(four)
    assert "(2 here: where many users share a count" in activity_note({"0-101": {}, "102-608": {}})
