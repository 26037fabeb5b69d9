"""The held-out validation split of a dataset that has none: ``data.val_fraction`` of its train items,
picked by ``train.seed``, the same way for every task (classification: within each class)."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def held_out(n: int, fraction: float, seed: int, groups: Sequence[Hashable] | None = None) -> list[int]:
    """Sorted indices of the items (of ``n``) held out for validation.

    Of each group (``groups[i]`` is item i's, e.g. its class; one group without them): ``fraction`` of
    its items rounded, at least one when it has two or more and never all of them, so training keeps
    an example of every class. Picked by one ``random.Random(seed)`` shuffle per group, groups in sorted
    order: the same seed holds out the same items.
    """
    members: dict[Hashable, list[int]] = {}
    for i in range(n):
        members.setdefault(groups[i] if groups is not None else 0, []).append(i)
    rng = random.Random(seed)
    held: list[int] = []
    for key in sorted(members):
        order = members[key]
        rng.shuffle(order)
        count = min(len(order) - 1, max(1, round(len(order) * fraction))) if len(order) > 1 else 0
        held += order[:count]
    return sorted(held)


def split_off(items: Sequence[T], fraction: float, seed: int,
              groups: Sequence[Hashable] | None = None) -> tuple[list[T], list[T]]:
    """(train, val): ``items`` without and with the :func:`held_out` ones, each in the items' order."""
    held = set(held_out(len(items), fraction, seed, groups))
    return ([x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held])
