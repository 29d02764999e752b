"""The retry options beyond 0.4.5, driven by an injected clock and sleep (nothing really waits)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import resilient_circuit.retry
from resilient_circuit import (
    ExponentialDelay,
    FixedDelay,
    GiveUpEvent,
    ProtectedCallError,
    RetryEvent,
    RetryLimitReached,
    RetryWithBackoffPolicy,
)
from resilient_circuit._machine import CircuitState
from resilient_circuit._retry_engine import Call, GiveUp, RetryEngine


class FakeTime:
    """A monotonic clock that only sleeping and the protected function move."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Flaky:
    """Raises ``errors`` in turn (each attempt taking ``cost`` seconds), then returns "ok"."""

    def __init__(self, time: FakeTime, errors: list[Exception], cost: float = 0.0) -> None:
        self.time = time
        self.errors = list(errors)
        self.cost = cost
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        self.time.now += self.cost
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Throttled(Exception):
    """A user's error that says when to come back, like an HTTP 429."""

    def __init__(self, retry_after: Any) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


def policy(time: FakeTime, **options: Any) -> RetryWithBackoffPolicy:
    return RetryWithBackoffPolicy(sleep=time.sleep, clock=time.clock, **options)


def test_max_duration_never_sleeps_past_the_budget() -> None:
    """10 s in all, 1 s attempts, 4 s waits: one wait, then give up rather than overrun."""
    time = FakeTime()
    gave_up: list[GiveUpEvent] = []
    func = Flaky(time, [ConnectionError(str(n)) for n in range(9)], cost=1.0)
    retry = policy(
        time,
        max_retries=8,
        backoff=FixedDelay(timedelta(seconds=4)),
        max_duration=timedelta(seconds=10),
        on_give_up=gave_up.append,
    )
    with pytest.raises(RetryLimitReached, match="max_duration") as caught:
        retry(func)()
    assert time.waits == [4.0]
    assert func.calls == 2
    assert str(caught.value.__cause__) == "1"
    assert [(e.attempts, e.reason) for e in gave_up] == [(2, "duration")]


def test_retry_if_result_retries_values_and_returns_the_last_one() -> None:
    """A refused value is retried like an error; out of attempts, the last value is returned."""
    time = FakeTime()
    values = iter([None, None, "done"])
    seen: list[RetryEvent] = []
    retry = policy(time, max_retries=3, retry_if_result=lambda v: v is None, on_retry=seen.append)
    assert retry(lambda: next(values))() == "done"
    assert [(e.attempt, e.exception, e.result) for e in seen] == [(1, None, None), (2, None, None)]

    gave_up: list[GiveUpEvent] = []
    stuck = policy(time, max_retries=2, retry_if_result=lambda v: v < 0, on_give_up=gave_up.append)
    assert stuck(lambda: -1)() == -1
    assert [(e.attempts, e.reason, e.result) for e in gave_up] == [(3, "attempts", -1)]


@pytest.mark.parametrize("retry_after", [7, 7.0, timedelta(seconds=7)])
def test_an_errors_retry_after_is_waited_when_it_fits(retry_after: Any) -> None:
    """retry_after (seconds or a timedelta) stretches the wait when max_duration leaves room."""
    time = FakeTime()
    func = Flaky(time, [Throttled(retry_after)])
    retry = policy(
        time, backoff=FixedDelay(timedelta(seconds=1)), max_duration=timedelta(seconds=60)
    )
    assert retry(func)() == "ok"
    assert time.waits == [7.0]


def test_a_shorter_retry_after_does_not_shorten_the_backoff() -> None:
    """The wait is the longer of the backoff's delay and retry_after."""
    time = FakeTime()
    retry = policy(time, backoff=FixedDelay(timedelta(seconds=5)))
    assert retry(Flaky(time, [Throttled(2)]))() == "ok"
    assert time.waits == [5.0]


def test_an_error_whose_retry_after_does_not_fit_is_raised_unchanged_at_once() -> None:
    """Beyond what is left of max_duration, the caller gets their own error, not a wrapper."""
    time = FakeTime()
    error = Throttled(timedelta(minutes=5))
    gave_up: list[GiveUpEvent] = []
    retry = policy(time, max_duration=timedelta(seconds=30), on_give_up=gave_up.append)
    with pytest.raises(Throttled) as caught:
        retry(Flaky(time, [error]))()
    assert caught.value is error
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert time.waits == []
    assert [e.reason for e in gave_up] == ["retry_after"]


def test_without_max_duration_retry_after_may_wait_up_to_the_backoffs_max_delay() -> None:
    """No max_duration: a retry_after up to max_delay is waited; a longer one is raised at once."""
    time = FakeTime()
    backoff = ExponentialDelay(timedelta(seconds=1), timedelta(seconds=10))
    assert policy(time, backoff=backoff)(Flaky(time, [Throttled(8)]))() == "ok"
    assert time.waits == [8.0]
    with pytest.raises(Throttled):
        policy(time, backoff=backoff)(Flaky(time, [Throttled(11)]))()
    with pytest.raises(Throttled):
        policy(time)(Flaky(time, [Throttled(0.5)]))()
    assert time.waits == [8.0]


@pytest.mark.parametrize("odd", [True, "soon", float("nan"), None])
def test_unusable_retry_after_values_are_ignored(odd: object) -> None:
    """retry_after that is not a number of seconds or a timedelta changes nothing."""
    time = FakeTime()
    assert policy(time)(Flaky(time, [Throttled(odd)]))() == "ok"
    assert time.waits == []


def test_a_rejection_without_retry_after_is_not_retried_into_the_open_breaker() -> None:
    """A breaker held OPEN gives no time: the first rejection is raised unchanged, at once."""
    time = FakeTime()
    rejection = ProtectedCallError.rejected("svc", CircuitState.OPEN, None)
    func = Flaky(time, [rejection])
    with pytest.raises(ProtectedCallError) as caught:
        policy(time, max_retries=5)(func)()
    assert caught.value is rejection
    assert func.calls == 1


def test_rejections_after_a_real_error_chain_the_real_error() -> None:
    """Attempts exhausted on rejections: RetryLimitReached's cause is the function's own error."""
    time = FakeTime()
    real = ConnectionError("refused")
    rejection = ProtectedCallError.rejected("svc", CircuitState.HALF_OPEN, 0)
    with pytest.raises(RetryLimitReached) as caught:
        policy(time, max_retries=2)(Flaky(time, [real, rejection, rejection]))()
    assert caught.value.__cause__ is real
    assert caught.value.__context__ is rejection


def test_the_users_errors_are_not_chained_to_each_other() -> None:
    """Each attempt's exception keeps an empty __context__: retries run outside the handler."""
    time = FakeTime()
    first, second = ConnectionError("1"), ConnectionError("2")
    with pytest.raises(RetryLimitReached) as caught:
        policy(time, max_retries=1)(Flaky(time, [first, second]))()
    assert caught.value.__cause__ is second
    assert second.__context__ is None
    assert first.__context__ is None


def test_decorrelated_backoff_is_fed_the_previous_delay() -> None:
    """The driver passes each wait to the next for_attempt, so decorrelated jitter grows."""

    class High:
        def uniform(self, a: float, b: float) -> float:
            return b

    time = FakeTime()
    backoff = ExponentialDelay(
        timedelta(seconds=1), timedelta(seconds=20), jitter="decorrelated", rng=High()
    )
    func = Flaky(time, [ConnectionError()] * 4)
    assert policy(time, max_retries=4, backoff=backoff)(func)() == "ok"
    assert time.waits == [3.0, 9.0, 20.0, 20.0]


def test_patching_the_modules_sleep_takes_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users' tests patch resilient_circuit.retry.sleep, as with 0.4.5."""
    waits: list[float] = []
    monkeypatch.setattr(resilient_circuit.retry, "sleep", waits.append)
    retry = RetryWithBackoffPolicy(max_retries=2, backoff=FixedDelay(timedelta(seconds=3)))
    assert retry(Flaky(FakeTime(), [ConnectionError(), ConnectionError()]))() == "ok"
    assert waits == [3.0, 3.0]


def test_hooks_see_every_retry_and_the_give_up() -> None:
    """on_retry once per retry with the wait; on_give_up once with the attempts and the reason."""
    time = FakeTime()
    retries: list[RetryEvent] = []
    gave_up: list[GiveUpEvent] = []
    errors: list[Exception] = [ConnectionError(str(n)) for n in range(3)]
    retry = policy(
        time,
        max_retries=2,
        backoff=FixedDelay(timedelta(seconds=2)),
        on_retry=retries.append,
        on_give_up=gave_up.append,
    )
    with pytest.raises(RetryLimitReached):
        retry(Flaky(time, list(errors)))()
    assert [(e.attempt, e.delay, str(e.exception)) for e in retries] == [
        (1, 2.0, "0"),
        (2, 2.0, "1"),
    ]
    assert [(e.attempts, e.reason, str(e.exception)) for e in gave_up] == [(3, "attempts", "2")]


def test_should_handle_declining_runs_no_hook() -> None:
    """An error the policy does not handle is raised as is, and on_give_up is not called."""
    time = FakeTime()
    gave_up: list[GiveUpEvent] = []
    retry = policy(time, should_handle=lambda e: False, on_give_up=gave_up.append)
    with pytest.raises(KeyError):
        retry(Flaky(time, [KeyError("k")]))()
    assert gave_up == []


async def test_async_driver_honours_duration_result_predicate_and_async_hooks() -> None:
    """Coroutines get the same rules; async hooks and an async retry_if_result are awaited."""
    time = FakeTime()
    retries: list[RetryEvent] = []
    gave_up: list[GiveUpEvent] = []

    async def on_retry(event: RetryEvent) -> None:
        await asyncio.sleep(0)
        retries.append(event)

    async def on_give_up(event: GiveUpEvent) -> None:
        gave_up.append(event)

    async def empty(value: object) -> bool:
        return value == ""

    answers = iter(["", "", "full"])

    async def fetch() -> str:
        time.now += 1.0
        return next(answers)

    retry = RetryWithBackoffPolicy(
        max_retries=5,
        backoff=FixedDelay(timedelta(seconds=2)),
        retry_if_result=empty,
        on_retry=on_retry,
        on_give_up=on_give_up,
        async_sleep=time.async_sleep,
        clock=time.clock,
    )
    assert await retry(fetch)() == "full"
    assert time.waits == [2.0, 2.0]
    assert len(retries) == 2

    async def down() -> None:
        time.now += 1.0
        raise TimeoutError("down")

    limited = RetryWithBackoffPolicy(
        max_retries=10,
        backoff=FixedDelay(timedelta(seconds=2)),
        max_duration=timedelta(seconds=7),
        on_give_up=on_give_up,
        async_sleep=time.async_sleep,
        clock=time.clock,
    )
    with pytest.raises(RetryLimitReached) as caught:
        await limited(down)()
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert [(e.attempts, e.reason) for e in gave_up] == [(3, "duration")]


async def test_patching_the_modules_async_sleep_takes_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resilient_circuit.retry.async_sleep is looked up at each wait, like sleep."""
    waits: list[float] = []

    async def fake(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(resilient_circuit.retry, "async_sleep", fake)
    calls = {"n": 0}

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("x")
        return "ok"

    retry = RetryWithBackoffPolicy(backoff=FixedDelay(timedelta(seconds=4)))
    assert await retry(flaky)() == "ok"
    assert waits == [4.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_duration": "5"}, TypeError, "max_duration"),
        ({"max_duration": -5}, ValueError, "max_duration"),
        ({"max_duration": timedelta(0)}, ValueError, "max_duration"),
        ({"retry_if_result": 1}, TypeError, "retry_if_result"),
        ({"on_give_up": "x"}, TypeError, "on_give_up"),
        ({"budget": "b"}, TypeError, "budget"),
        ({"clock": None}, TypeError, "clock"),
        ({"sleep": 3}, TypeError, "sleep"),
    ],
)
def test_new_options_are_validated_naming_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Each new option refuses a wrong value with an error naming it."""
    with pytest.raises(error, match=name):
        RetryWithBackoffPolicy(**kwargs)


def test_a_refused_value_then_an_error_ends_with_the_error() -> None:
    """Values and errors mix: the give-up carries the last attempt's error and no stale value."""
    time = FakeTime()
    outcomes: list[Any] = [None, ConnectionError("last")]
    gave_up: list[GiveUpEvent] = []

    def fetch() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retry = policy(
        time, max_retries=1, retry_if_result=lambda v: v is None, on_give_up=gave_up.append
    )
    with pytest.raises(RetryLimitReached) as caught:
        retry(fetch)()
    assert str(caught.value.__cause__) == "last"
    assert [(e.attempts, e.reason, e.result) for e in gave_up] == [(2, "attempts", None)]


def test_the_engine_decides_without_io() -> None:
    """RetryEngine answers with a wait in seconds or a GiveUp, from values alone."""
    engine = RetryEngine(
        backoff=FixedDelay(timedelta(seconds=2)),
        max_attempts=3,
        should_handle=lambda e: not isinstance(e, KeyError),
        max_duration=10.0,
    )
    call = Call(started=0.0)
    assert engine.after_error(call, ConnectionError("1"), now=1.0) == 2.0
    assert call.attempts == 2
    rejection = ProtectedCallError.rejected("svc", CircuitState.OPEN, 5_000_000_000)
    assert engine.after_error(call, rejection, now=3.0) == 5.0
    step = engine.after_error(call, ConnectionError("3"), now=9.0)
    assert isinstance(step, GiveUp)
    assert isinstance(step.error, RetryLimitReached)
    assert str(step.cause) == "3"
    assert step.event is not None
    assert (step.event.attempts, step.event.reason) == (3, "attempts")
    unhandled = engine.after_error(Call(0.0), KeyError("k"), now=0.0)
    assert isinstance(unhandled, GiveUp)
    assert unhandled.event is None
    assert isinstance(unhandled.error, KeyError)
    assert unhandled.cause is None
