"""The one rule every driver follows once a protected call is over (``decide``)."""

from __future__ import annotations

import asyncio

import pytest

from resilient_circuit._settle import Settle, decide

INTERRUPTIONS = [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), asyncio.CancelledError()]


@pytest.mark.parametrize(
    ("raised", "verdict", "expected"),
    [
        (None, True, Settle.SUCCESS),  # returned
        (None, False, Settle.FAILURE),  # returned a value failure_if flags
        (ValueError(), False, Settle.FAILURE),  # a counted failure
        (ValueError(), True, Settle.SUCCESS),  # not a handled exception
        (ValueError(), None, Settle.RELEASE),  # ignored: not counted, permit back
    ],
)
def test_a_counted_or_ignored_ending(
    raised: BaseException | None, verdict: bool | None, expected: Settle
) -> None:
    assert decide(True, raised, verdict) is expected


@pytest.mark.parametrize("raised", INTERRUPTIONS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("verdict", [True, False, None])
def test_an_interruption_gives_the_permit_back_whatever_the_verdict(
    raised: BaseException, verdict: bool | None
) -> None:
    assert decide(True, raised, verdict) is Settle.RELEASE


@pytest.mark.parametrize("raised", [None, ValueError(), KeyboardInterrupt()])
@pytest.mark.parametrize("verdict", [True, False, None])
def test_without_a_permit_there_is_nothing_to_tell(
    raised: BaseException | None, verdict: bool | None
) -> None:
    """Admitted without the store (it is down, on_storage_error='open')."""
    assert decide(False, raised, verdict) is Settle.NOTHING
