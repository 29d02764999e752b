"""A protected call interrupted (cancelled, KeyboardInterrupt) has no outcome to count, but
the half-open trial permit it held is given back at once, in every form of the policy:
kept, it would make every process wait for the half-open timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState
from resilient_circuit.storage import PostgresStorage

NAMESPACE = "interrupted"


# The plain policy runs the fast drivers; a fallback takes the general ones.
DRIVERS = {"fast": {}, "general": {"fallback": lambda exc: "fallback"}}


@pytest.fixture(params=DRIVERS)
def policy(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[CircuitProtectorPolicy]:
    store = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    made = CircuitProtectorPolicy(
        resource_key="svc",
        storage=store,
        half_open_timeout=timedelta(hours=1),
        **DRIVERS[request.param],
    )
    made.force(CircuitState.HALF_OPEN)  # one trial call at a time
    yield made
    store.close()


def test_a_cancelled_async_trial_gives_its_permit_back(policy: CircuitProtectorPolicy) -> None:
    @policy
    async def slow(started: asyncio.Event) -> str:
        started.set()  # admitted: the trial permit is held
        await asyncio.sleep(3600)
        return "late"

    @policy
    async def quick() -> str:
        return "ok"

    async def main() -> str:
        started = asyncio.Event()
        trial = asyncio.ensure_future(slow(started))
        await started.wait()
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        return await quick()

    assert asyncio.run(main()) == "ok"


def test_an_interrupted_sync_trial_gives_its_permit_back(policy: CircuitProtectorPolicy) -> None:
    @policy
    def interrupted() -> None:
        raise KeyboardInterrupt

    @policy
    def quick() -> str:
        return "ok"

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert quick() == "ok"


def test_a_failing_permit_return_never_replaces_the_interruption(
    policy: CircuitProtectorPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever returning the permit raises, the caller gets its KeyboardInterrupt."""
    breaker = policy._bound()  # type: ignore[attr-defined]

    def broken_release(self: object, generation: int | None) -> None:
        raise RuntimeError("release failed")

    monkeypatch.setattr(type(breaker), "release", broken_release)

    @policy
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
