from collections import Counter

import pytest

from vitcls.data.folder import Sample
from vitcls.data.split import stratified_split


def make_samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(f"/data/{label}/{i}.jpg", label) for label, n in counts.items() for i in range(n)]


def test_stratified_fractions_per_class_disjoint_and_complete():
    samples = make_samples({0: 100, 1: 50, 2: 10, 3: 3})
    kept, held = stratified_split(samples, 0.2, seed=42)
    assert Counter(s.label for s in held) == {0: 20, 1: 10, 2: 2, 3: 1}
    assert not set(kept) & set(held)
    assert sorted(kept + held, key=samples.index) == samples


def test_same_seed_same_split_other_seed_other_split():
    samples = make_samples({0: 40, 1: 40})
    first = stratified_split(samples, 0.25, seed=7)
    assert first == stratified_split(list(samples), 0.25, seed=7)
    assert first[1] != stratified_split(samples, 0.25, seed=8)[1]


def test_every_class_keeps_and_gives_at_least_one():
    samples = make_samples({0: 2, 1: 1, 2: 5})
    kept, held = stratified_split(samples, 0.9, seed=0)
    assert Counter(s.label for s in kept) == {0: 1, 1: 1, 2: 1}
    assert Counter(s.label for s in held) == {0: 1, 2: 4}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_rejected(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split(make_samples({0: 4}), fraction, seed=0)
