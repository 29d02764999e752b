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


feature_configs = st.builds(
    lambda base, duration, k, slow, slow_limit, factor, max_cool: Config.build(
        failure_limit=base.failure_limit,
        window_size=base.window_size,
        success_limit=base.success_limit,
        cooldown=timedelta(microseconds=base.cooldown_ns // 1000),
        half_open_timeout=timedelta(microseconds=base.half_open_timeout_ns // 1000),
        window_duration=None if duration is None else timedelta(milliseconds=duration),
        minimum_calls=None if k is None else min(k, base.window_size if duration is None else k),
        slow_call_duration=None if slow is None else timedelta(milliseconds=slow),
        slow_call_limit=None if slow is None else slow_limit,
        cooldown_factor=factor,
        max_cooldown=None
        if max_cool is None
        else timedelta(microseconds=base.cooldown_ns // 1000 + max_cool * 1000),
    ),
    configs,
    st.one_of(st.none(), st.integers(1, 300)),
    st.one_of(st.none(), st.integers(1, 12)),
    st.one_of(st.none(), st.integers(1, 15)),
    st.sampled_from([Fraction(1, 1), Fraction(1, 2), Fraction(2, 3)]),
    st.sampled_from([1, 1.5, 2, 3]),
    st.one_of(st.none(), st.integers(0, 200)),
)

feature_events = st.lists(
    st.tuples(
        st.integers(0, 40),  # time step in ms
        st.sampled_from(
            ["acquire", "acquire", "ok", "fail", "ok", "fail", "release", "hold", "force", "reset"]
        ),
        st.sampled_from(list(CircuitState)),
        st.integers(0, 30),  # the call's duration in ms
    ),
    max_size=150,
)


def _check_features(st_: State, cfg: Config, prev: State) -> None:
    assert st_.generation >= prev.generation
    if st_.state is not prev.state:
        assert st_.generation > prev.generation
    assert st_.held == (st_.state is CircuitState.DISABLED) or (
        st_.held and st_.state is CircuitState.OPEN
    )
    assert (st_.open_until is not None) == (st_.state is CircuitState.OPEN and not st_.held)
    assert 0 <= st_.window_slow <= st_.window_len
    assert 0 <= st_.window_failures <= st_.window_len
    if st_.state is CircuitState.CLOSED:
        assert st_.last_cooldown == 0
    cap = m.COOLDOWN_CEILING // timedelta(microseconds=1) * 1000
    if cfg.max_cooldown_ns is not None:
        cap = cfg.max_cooldown_ns
    assert st_.last_cooldown <= max(cap, cfg.cooldown_ns)
    if st_.buckets:
        b = m.TIME_BUCKETS
        assert len(st_.buckets) == 3 * b
        assert st_.window_len == sum(st_.buckets[:b])
        assert st_.window_failures == sum(st_.buckets[b : 2 * b])
        assert st_.window_slow == sum(st_.buckets[2 * b :])
        assert min(st_.buckets) >= 0
    else:
        assert st_.window_len == len(st_.window)
        assert st_.window_failures == sum(not ok for ok in st_.window)
        assert st_.window_slow == st_.slow_bits.bit_count()
    if st_.state is CircuitState.HALF_OPEN:
        assert len(st_.permits) <= cfg.half_open_window - st_.window_len
    else:
        assert st_.permits == ()


@settings(max_examples=300, deadline=None)
@given(feature_configs, feature_events)
def test_feature_invariants_hold_for_any_event_sequence(cfg: Config, seq: list) -> None:
    """Holds, DISABLED, releases, slow calls, time windows and growing cooldowns keep the
    machine's invariants: bucket sums, hold rules, cooldown bounds, permit caps."""
    state, now, admitted = m.INITIAL, 0, []
    for step, kind, target, took in seq:
        now += step * 1_000_000
        prev = state
        if kind == "acquire":
            adm, state = m.try_acquire(state, cfg, now)
            assert (adm.retry_after is None) == adm.permitted
            if prev.state is CircuitState.DISABLED:
                assert adm.permitted
                assert state is prev
            if prev.held and prev.state is CircuitState.OPEN:
                assert not adm.permitted
                assert state is prev
            if adm.permitted:
                admitted.append(adm.generation)
        elif kind in ("ok", "fail"):
            generation = admitted.pop(0) if admitted else state.generation
            state = m.record(state, cfg, now, kind == "ok", generation, took * 1_000_000)
            if prev.state in (CircuitState.OPEN, CircuitState.DISABLED):
                assert state is prev
            if state.state is CircuitState.OPEN and prev.state is not CircuitState.OPEN:
                cooldown = state.open_until - now  # type: ignore[operator]
                assert cooldown == state.last_cooldown >= cfg.cooldown_ns
        elif kind == "release":
            generation = admitted.pop(0) if admitted else None
            state = m.release(state, cfg, now, generation)
            assert state._replace(permits=prev.permits) == prev
            assert len(state.permits) <= len(prev.permits)
        elif kind == "hold":
            state = m.force(state, cfg, now, CircuitState.OPEN, hold=True)
            assert state.held
            assert state.state is CircuitState.OPEN
        elif kind == "force":
            state = m.force(state, cfg, now, target)
            assert state.state is target
        else:
            state = m.reset(state)
            assert not state.held
        _check_features(state, cfg, prev)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 400),
    st.lists(st.tuples(st.integers(0, 60), st.booleans(), st.booleans()), max_size=120),
)
def test_memory_store_time_window_matches_the_machine(duration_ms: int, seq: list) -> None:
    """The memory store's unlocked successes within a bucket leave exactly the state the
    pure machine computes record by record."""
    from resilient_circuit.storage import InMemoryStorage

    cfg = Config.build(
        failure_limit=Fraction(1, 2),
        window_duration=timedelta(milliseconds=duration_ms),
        minimum_calls=3,
        cooldown=timedelta(milliseconds=5),
    )
    clock = [0]
    breaker = InMemoryStorage(namespace="p", clock=lambda: clock[0]).breaker("k", "p", cfg)
    state = m.INITIAL
    for index, (step, ok, acquire) in enumerate(seq):
        clock[0] += step * 1_000_000
        if acquire:
            _, state = m.try_acquire(state, cfg, clock[0])
            breaker.acquire()
        generation = state.generation
        state = m.record(state, cfg, clock[0], ok, generation)
        breaker.record(ok, generation)
        if index % 7 == 6:
            # Read now and then only: reading places the successes counted meanwhile.
            assert breaker.state == state
    assert breaker.state == state


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "fail", "stale", "none", "acquire", "read", "force", "reset"]),
            st.integers(0, 3),
        ),
        max_size=160,
    ),
    # None: the limit's own denominator; 32 and 40 outcomes: windows wider than the
    # interpreter's single-digit ints (30 bits), which outcomes shift out of within
    # a sequence.
    st.sampled_from([None, 32, 40]),
    # Outcomes before the sequence, so that a wide window is full when it starts.
    st.integers(0, 45).flatmap(lambda n: st.lists(st.booleans(), min_size=n, max_size=n)),
)
def test_memory_store_count_window_matches_the_machine(
    den: int, num: int, seq: list, size: int | None, fill: list[bool]
) -> None:
    """The memory store's CLOSED count window, updated in place, leaves exactly the state
    the pure machine computes outcome by outcome, whatever reads come in between."""
    from resilient_circuit.storage import InMemoryStorage

    cfg = Config.build(
        failure_limit=Fraction(min(num, den), den),
        window_size=size,
        cooldown=timedelta(milliseconds=2),
    )
    assert cfg.plain
    clock = [0]
    storage = InMemoryStorage(namespace="p", clock=lambda: clock[0])
    breaker = storage.breaker("k", "p", cfg)
    state = m.INITIAL
    successes = failures = 0
    seq = [("ok" if ok else "fail", 0) for ok in fill] + seq
    for kind, step in seq:
        clock[0] += step * 1_000_000
        if kind == "acquire":
            _, state = m.try_acquire(state, cfg, clock[0])
            breaker.acquire()
        elif kind == "read":
            assert breaker.state == state
            assert breaker.snapshot().window == state.window
            assert storage.get_state("k", "p")["execution_log"] == list(state.window)
        elif kind == "force":
            state = m.force(state, cfg, clock[0], CircuitState.CLOSED)
            breaker.force(CircuitState.CLOSED)
        elif kind == "reset":
            state = m.reset(state)
            breaker.reset()
            successes = failures = 0
        else:
            ok = kind == "ok" or (kind != "fail" and step % 2 == 0)
            generation = {"stale": state.generation - 1, "none": None}.get(kind, state.generation)
            state = m.record(state, cfg, clock[0], ok, generation)
            reply = breaker.record(ok, generation)
            assert (reply.state, reply.generation) == (state.state, state.generation)
            successes += ok
            failures += not ok
    assert breaker.state == state
    assert (breaker.successes, breaker.failures) == (successes, failures)


def test_memory_store_count_window_loses_no_outcome_across_threads() -> None:
    """Outcomes recorded by several threads at once all land in the window."""
    import threading

    from resilient_circuit.storage import InMemoryStorage

    threads, per_thread = 4, 2000
    cfg = Config.build(failure_limit=Fraction(1, 1), window_size=m.MAX_WINDOW)
    breaker = InMemoryStorage(namespace="p").breaker("k", "p", cfg)
    start = threading.Barrier(threads)

    def work(seed: int) -> None:
        start.wait()
        for i in range(per_thread):
            breaker.record((i + seed) % 3 != 0, 0)

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = sum((i + seed) % 3 == 0 for seed in range(threads) for i in range(per_thread))
    state = breaker.state
    assert state.state is CircuitState.CLOSED
    assert state.window_len == threads * per_thread
    assert state.window_failures == failed == state.window_bits.bit_count()
    assert breaker.failures == failed
    assert breaker.successes == threads * per_thread - failed


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 6),
    st.lists(st.booleans(), min_size=1, max_size=30),
    st.integers(1, 6),
    st.lists(st.booleans(), max_size=12),
)
def test_memory_store_count_window_matches_the_machine_across_a_new_limit(
    den: int, before: list, num: int, after: list
) -> None:
    """A window left over the limit by a reconfiguration (a lower limit, same size):
    whichever outcome falls out of it, the store's live window trips where the machine
    does."""
    from resilient_circuit.storage import InMemoryStorage

    loose = Config.build(failure_limit=Fraction(den - 1, den), cooldown=timedelta(seconds=1))
    tight = Config.build(failure_limit=Fraction(min(num, den), den), cooldown=timedelta(seconds=1))
    breaker = InMemoryStorage(namespace="p", clock=lambda: 0).breaker("k", "p", loose)
    state = m.INITIAL
    for ok in before:
        generation = state.generation
        state = m.record(state, loose, 0, ok, generation)
        breaker.record(ok, generation)
    state = m.reconfigure(state, tight, loose)
    breaker.configure(tight)
    assert breaker.state == state
    for ok in after:
        generation = state.generation
        state = m.record(state, tight, 0, ok, generation)
        reply = breaker.record(ok, generation)
        assert (reply.state, reply.generation) == (state.state, state.generation)
    assert breaker.state == state


def test_describe_writes_every_limit_as_a_fraction() -> None:
    """Config.describe writes slow_call_limit n/d, as it writes the other limits and as the
    stored configuration it is compared with in warnings is written."""
    described = Config.build(slow_call_duration=timedelta(seconds=2)).describe()
    assert "failure_limit=1/1," in described
    assert described.endswith("slow_call_duration=2s, slow_call_limit=1/1")
