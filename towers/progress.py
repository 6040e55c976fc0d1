"""Progress of long work, reported through a callback: library code reports, the CLI draws.

A stage takes `progress: Progress | None` and calls it with a `Step` as work advances (a task's
units done so far, out of its total) or with a `Step` carrying a `message` (a line worth showing,
such as an epoch's validation figures). Tests and servers pass nothing and stay quiet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    task: str  # what is under way, e.g. "epoch 3/30", "text vectors"
    done: int = 0  # units finished so far in this task
    total: int | None = None  # units in all; None: unknown
    unit: str = ""  # e.g. "batches", "rows"
    message: str | None = None  # a line to show as it is (no bar)


Progress = Callable[[Step], object]


def report(progress: Progress | None, step: Step) -> None:
    if progress is not None:
        progress(step)


def say(progress: Progress | None, message: str) -> None:
    """A line for whoever is watching (the CLI prints it)."""
    report(progress, Step("", message=message))
