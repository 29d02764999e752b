"""Random event sequences never break the state machine's invariants."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_circuit import _machine as m
from resilient_circuit._machine import CircuitState, Config, State

configs = st.builds(
    lambda fn, fd, n, s, c, h: Config.build(
        failure_limit=Fraction(min(fn, fd), fd),
        window_size=n,
        success_limit=s,
        cooldown=timedelta(milliseconds=c),
        half_open_timeout=timedelta(milliseconds=h),
    ),
    st.integers(1, 12),
    st.integers(1, 12),
    st.one_of(st.none(), st.integers(1, 15)),
    st.one_of(st.none(), st.sampled_from([Fraction(1, 1), Fraction(2, 3), Fraction(3, 5)])),
    st.integers(0, 50),
    st.integers(1, 40),
)

events = st.lists(
    st.tuples(
        st.integers(0, 20),  # time step in ms
        st.sampled_from(["acquire", "acquire", "ok", "fail", "stale", "anon", "force", "reset"]),
        st.sampled_from(list(CircuitState)),
    ),
    max_size=120,
)


def _check(st_: State, cfg: Config, prev: State) -> None:
    if st_.state is CircuitState.HALF_OPEN:
        size = cfg.half_open_window
    elif st_.state is CircuitState.OPEN:
        # OPEN keeps the window that tripped it, which may be a half-open one.
        size = max(cfg.window_size, cfg.half_open_window)
    else:
        size = cfg.window_size
    assert st_.window_len <= size
    assert st_.window_len == len(st_.window)
    assert st_.window_failures == sum(not ok for ok in st_.window)
    assert st_.window_bits < (1 << max(st_.window_len, 0)) or st_.window_len == 0
    assert st_.generation >= prev.generation
    if st_.state is CircuitState.HALF_OPEN:
        assert len(st_.permits) <= cfg.half_open_window - st_.window_len
    else:
        assert st_.permits == ()
    assert (st_.open_until is not None) == (st_.state is CircuitState.OPEN)
    if st_.state is not prev.state:
        assert st_.generation > prev.generation


@settings(max_examples=300, deadline=None)
@given(configs, events)
def test_invariants_hold_for_any_event_sequence(cfg: Config, seq: list) -> None:
    """Permits never exceed the cap, the window never its size, generations never go back."""
    state, now, admitted = m.INITIAL, 0, []
    for step, kind, target in seq:
        now += step * 1_000_000
        prev = state
        if kind == "acquire":
            adm, state = m.try_acquire(state, cfg, now)
            assert (adm.retry_after is None) == adm.permitted
            if adm.permitted:
                admitted.append(adm.generation)
        elif kind in ("ok", "fail"):
            generation = admitted.pop(0) if admitted else state.generation
            state = m.record(state, cfg, now, kind == "ok", generation)
        elif kind == "stale":
            state = m.record(state, cfg, now, False, state.generation - 1)
            assert state is prev
        elif kind == "anon":
            state = m.record(state, cfg, now, True, None)
        elif kind == "force":
            state = m.force(state, cfg, now, target)
            assert state.state is target
        else:
            state = m.reset(state)
        _check(state, cfg, prev)


@settings(max_examples=200, deadline=None)
@given(configs, st.lists(st.booleans(), max_size=60))
def test_closed_trips_exactly_when_the_full_window_reaches_the_limit(
    cfg: Config, outcomes: list[bool]
) -> None:
    """In CLOSED, a failure that fills the window to the failure ratio is what trips it."""
    state = m.INITIAL
    f, n = cfg.failure_limit, cfg.window_size
    history: list[bool] = []
    for ok in outcomes:
        if state.state is not CircuitState.CLOSED:
            break
        history.append(ok)
        state = m.record(state, cfg, 0, ok, None)
        window = history[-n:]
        should_trip = (
            not ok
            and len(window) == n
            and sum(not x for x in window) * f.denominator >= f.numerator * n
        )
        assert (state.state is CircuitState.OPEN) == should_trip


def test_large_window_appends_in_constant_work() -> None:
    """A 10 000-outcome window appends by shifting bits, keeping the failure count exact."""
    cfg = Config.build(failure_limit=Fraction(1, 1), window_size=10_000)
    state = m.INITIAL
    for i in range(25_000):
        state = m.record(state, cfg, 0, i % 3 != 0, None)
    assert state.window_len == 10_000
    assert state.window_failures == sum(not ok for ok in state.window)
