"""Jitter kinds of ExponentialDelay, with a seeded random source."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from resilient_circuit import ExponentialDelay, FixedDelay

SECOND = timedelta(seconds=1)


class Extremes:
    """A random source that always draws the low end, or always the high end."""

    def __init__(self, high: bool) -> None:
        self.high = high
        self.draws: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.draws.append((a, b))
        return b if self.high else a


def test_proportional_jitter_stays_within_min_and_max_delay() -> None:
    """jitter=1.0 on [1 s, 10 s] stays within [1 s, 10 s] (0.4.5 could return 0.4 s)."""
    delay = ExponentialDelay(SECOND, 10 * SECOND, jitter=1.0, rng=random.Random(7))
    for attempt in range(1, 8):
        for _ in range(300):
            assert 1.0 <= delay.for_attempt(attempt) <= 10.0


def test_proportional_jitter_draws_from_the_part_of_the_range_inside_the_bounds() -> None:
    """+-50% on [1 s, 10 s]: attempt 1 draws from [1, 1.5], attempt 5 (capped 16 s) from [8, 10]."""
    low, high = Extremes(high=False), Extremes(high=True)
    assert ExponentialDelay(SECOND, 10 * SECOND, jitter=0.5, rng=low).for_attempt(1) == 1.0
    assert ExponentialDelay(SECOND, 10 * SECOND, jitter=0.5, rng=high).for_attempt(1) == 1.5
    assert low.draws == [(1.0, 1.5)]
    capped = Extremes(high=False)
    assert ExponentialDelay(SECOND, 10 * SECOND, jitter=0.2, rng=capped).for_attempt(5) == 8.0
    assert capped.draws == [(8.0, 10.0)]


def test_proportional_by_name_is_plus_or_minus_the_whole_delay() -> None:
    """jitter="proportional" is the proportional kind with fraction 1."""
    source = Extremes(high=True)
    delay = ExponentialDelay(SECOND, 100 * SECOND, jitter="proportional", rng=source)
    assert delay.for_attempt(3) == 8.0
    assert source.draws == [(1.0, 8.0)]
    assert delay.jitter_kind == "proportional"
    assert ExponentialDelay(SECOND, SECOND, jitter=0.1).jitter_kind == "proportional"
    assert ExponentialDelay(SECOND, SECOND).jitter_kind is None


def test_full_jitter_draws_between_zero_and_the_capped_delay() -> None:
    """Full jitter (AWS): uniform in [0, min(max_delay, min_delay * factor ** (n - 1))]."""
    source = Extremes(high=True)
    delay = ExponentialDelay(SECOND, 10 * SECOND, jitter="full", rng=source)
    assert [delay.for_attempt(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert source.draws[0] == (0.0, 1.0)
    seeded = ExponentialDelay(SECOND, 10 * SECOND, jitter="full", rng=random.Random(3))
    assert all(0.0 <= seeded.for_attempt(4) <= 8.0 for _ in range(200))


def test_equal_jitter_keeps_half_the_delay() -> None:
    """Equal jitter (AWS): half the delay plus uniform in [0, half]."""
    delay = ExponentialDelay(SECOND, 10 * SECOND, jitter="equal", rng=Extremes(high=False))
    assert [delay.for_attempt(n) for n in (1, 2, 3, 5)] == [0.5, 1.0, 2.0, 5.0]
    seeded = ExponentialDelay(SECOND, 10 * SECOND, jitter="equal", rng=random.Random(5))
    assert all(2.0 <= seeded.for_attempt(3) <= 4.0 for _ in range(200))


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    """Decorrelated (AWS): uniform in [min_delay, 3 x previous], capped; first from min_delay."""
    source = Extremes(high=True)
    delay = ExponentialDelay(SECOND, 20 * SECOND, jitter="decorrelated", rng=source)
    assert delay.for_attempt(1) == 3.0
    assert delay.for_attempt(2, previous=3.0) == 9.0
    assert delay.for_attempt(3, previous=9.0) == 20.0
    assert source.draws == [(1.0, 3.0), (1.0, 9.0), (1.0, 27.0)]
    seeded = ExponentialDelay(SECOND, 20 * SECOND, jitter="decorrelated", rng=random.Random(9))
    previous = None
    for attempt in range(1, 50):
        current = seeded.for_attempt(attempt, previous=previous)
        assert 1.0 <= current <= 20.0
        previous = current


def test_delays_stay_frozen_and_comparable() -> None:
    """A delay is a frozen dataclass; the random source takes no part in equality."""
    one = ExponentialDelay(SECOND, 10 * SECOND, jitter="full", rng=random.Random(1))
    two = ExponentialDelay(SECOND, 10 * SECOND, jitter="full")
    assert one == two
    with pytest.raises(AttributeError):
        one.jitter = None  # type: ignore[misc]
    assert FixedDelay(SECOND).for_attempt(7) == 1.0


@pytest.mark.parametrize(
    ("jitter", "error"),
    [("sideways", ValueError), (1.5, ValueError), (True, TypeError), ([0.1], TypeError)],
)
def test_bad_jitter_is_refused_naming_it(jitter: object, error: type[Exception]) -> None:
    """Unknown kinds and out-of-range fractions raise an error naming `jitter`."""
    with pytest.raises(error, match="jitter"):
        ExponentialDelay(SECOND, SECOND, jitter=jitter)  # type: ignore[arg-type]


def test_bad_random_source_is_refused_naming_it() -> None:
    """An rng without uniform() raises TypeError naming `rng`."""
    with pytest.raises(TypeError, match="rng"):
        ExponentialDelay(SECOND, SECOND, jitter="full", rng=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "error"), [("2", TypeError), (-SECOND, ValueError), (-2, ValueError)]
)
def test_fixed_delay_refuses_a_bad_delay_naming_its_own_parameter(
    delay: object, error: type[Exception]
) -> None:
    """FixedDelay(delay=...) names `delay` in its error, not ExponentialDelay's `min_delay`."""
    with pytest.raises(error, match=r"^`delay` must be"):
        FixedDelay(delay)  # type: ignore[arg-type]
