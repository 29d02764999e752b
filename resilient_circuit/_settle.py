"""What the end of a protected call asks of the breaker, decided without any I/O.

Every driver (sync and async, the decorator's fast ones, ``call``/``acall``, ``with``
and ``async with``) runs the function, classifies what it raised (``handle``,
``ignore``, ``should_handle``, ``failure_if``: some of them may be awaited) and then
asks ``decide`` what to tell the store; the sync and async drivers differ only in
how they carry the answer out, so an ending is treated the same in every form.
"""

from __future__ import annotations

import enum

__all__ = ("Settle", "decide")


class Settle(enum.Enum):
    """What to tell the store once the call is over."""

    SUCCESS = "success"  # record a success
    FAILURE = "failure"  # record a failure
    RELEASE = "release"  # no outcome to count: give a half-open permit back now
    NOTHING = "nothing"  # no permit is held: nothing to tell


SUCCESS, FAILURE, RELEASE, NOTHING = Settle.SUCCESS, Settle.FAILURE, Settle.RELEASE, Settle.NOTHING


def decide(held: bool, raised: BaseException | None, verdict: bool | None) -> Settle:
    """What to tell the store about a call that returned (``raised`` None) or raised.

    ``held``: the call was admitted with a permit of the store (False while the store
    is down and ``on_storage_error="open"`` lets calls through without one).
    ``verdict``: how the classification counts it, True a success, False a failure,
    None not at all (an ignored exception); not read for an interruption.
    """
    if not held:
        return NOTHING
    if raised is not None and not isinstance(raised, Exception):
        # Interrupted (KeyboardInterrupt, SystemExit, GeneratorExit, a cancellation):
        # no outcome to count, but a half-open permit kept would make every process
        # wait for half_open_timeout.
        return RELEASE
    if verdict is None:
        return RELEASE
    return SUCCESS if verdict else FAILURE
