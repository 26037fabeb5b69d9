"""The one held-out split (cvapps/data/holdout.py) every task uses when a dataset has no val split."""

from __future__ import annotations

import random

import pytest

from cvapps.data.holdout import held_out, split_off


@pytest.mark.parametrize(("n", "fraction", "expected"), [(0, 0.2, 0), (1, 0.5, 0), (2, 0.8, 1), (2, 0.2, 1),
                                                         (10, 0.2, 2), (10, 0.99, 9), (7, 0.5, 4)])
def test_how_many_are_held_out(n: int, fraction: float, expected: int) -> None:
    """round(fraction * n), at least one of two or more, never all: training always keeps an item."""
    assert len(held_out(n, fraction, seed=0)) == expected


def test_seeded_and_the_same_items_as_one_shuffle_of_the_indices() -> None:
    """A given seed holds out what detection and segmentation held out before they shared this function."""
    for seed in range(5):
        order = list(range(50))
        random.Random(seed).shuffle(order)
        assert held_out(50, 0.2, seed) == sorted(order[:10]) == held_out(50, 0.2, seed)
    assert held_out(50, 0.2, 0) != held_out(50, 0.2, 1)


def test_groups_are_held_out_each_on_its_own() -> None:
    labels = [0] * 10 + [1] * 3 + [2] * 1 + [3] * 2
    held = held_out(len(labels), 0.2, seed=3, groups=labels)
    per_class = {c: sum(labels[i] == c for i in held) for c in set(labels)}
    assert per_class == {0: 2, 1: 1, 2: 0, 3: 1}, "a class of one stays in training; no class is held out whole"


def test_split_off_keeps_the_items_order() -> None:
    items = [f"img{i}" for i in range(12)]
    train, val = split_off(items, 0.25, seed=1)
    assert len(val) == 3 and sorted(train + val) == sorted(items)
    assert train == [x for x in items if x in train] and val == [x for x in items if x in val]
