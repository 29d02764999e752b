"""Where an in-memory breaker call's time goes, component by component (this library).

Each component is timed against its own baseline, every one of them in the same
interleaved rounds as the whole calls they are part of (see ``interleaved``), so that
the parts and the totals share the machine's state. The parts are measured apart from
each other and do not add up exactly: what they leave over is shown as "the rest"
(the driver's own bookkeeping: the generation checks, local variables).

    python breakdown.py        (prints one JSON line, like every worker)
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from fractions import Fraction
from functools import partial
from itertools import cycle
from typing import Any

from _harness import LogWatch, Report, breaker_of, flaky, interleaved, noop, timed_loop

COOLDOWN = timedelta(seconds=60)


def _nop2(a: object, b: object) -> None:
    return None


def _nop3(a: object, b: object, c: object) -> None:
    return None


def _nop5(a: object, b: object, c: object, d: object, e: object) -> None:
    return None


def passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call


def reraising(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception:
            raise

    return call


def raiser() -> None:
    raise ValueError("always")


def measure() -> dict[str, Any]:
    from resilient_circuit import CircuitProtectorPolicy, CircuitState, _machine
    from resilient_circuit.exceptions import ProtectedCallError
    from resilient_circuit.storage import InMemoryStorage

    def policy(key: str, limit: Fraction) -> Any:
        return CircuitProtectorPolicy(
            resource_key=key, storage=InMemoryStorage(), failure_limit=limit, cooldown=COOLDOWN
        )

    healthy = policy("healthy", Fraction(1, 10))
    closed = breaker_of(healthy)  # the breaker handle the decorator drives
    success = healthy(noop)
    timed_loop(success, 100)
    generation = closed.acquire().generation

    flaky_policy = policy("flaky", Fraction(9, 10))
    stream = flaky_policy(flaky())
    timed_loop(stream, 100)
    alternating = breaker_of(policy("alternating", Fraction(9, 10)))
    flip, flip_base, flip_machine, flip_machine_base = (cycle((False, True)) for _ in range(4))

    def records() -> None:
        alternating.record(next(flip), 0)

    def records_base() -> None:
        _nop2(next(flip_base), 0)

    config = alternating.config
    box = [_machine.INITIAL]

    def machine() -> None:
        box[0] = _machine.record(box[0], config, 0, next(flip_machine), 0)

    base_box = [_machine.INITIAL]

    def machine_base() -> None:
        base_box[0] = _nop5(base_box[0], config, 0, next(flip_machine_base), 0) or base_box[0]

    lock = threading.Lock()

    def locked() -> None:
        # As the memory store takes it on the record path.
        lock.acquire()
        lock.release()

    opened = policy("open", Fraction(1, 10))
    open_breaker = breaker_of(opened)
    rejection = opened(noop)
    opened.status = CircuitState.OPEN
    rejected = ProtectedCallError.rejected
    state = CircuitState.OPEN

    # The baseline: the very exception a rejection raises (same constructor, same
    # fields), built and raised from a function's frame, as the decorator does from
    # its own. What the decorator adds is its signature (*args, **kwargs), the clock
    # read, the remaining time computed, and deciding to reject.
    def build_and_raise() -> None:
        raise rejected("open", state, 1)

    # The floor of any rejection: the decorator's signature raising the same
    # exception; then with the one clock read and comparison that deciding to reject
    # needs whatever retry_after is (a verdict holds until a moment on the clock);
    # then with the subtraction that retry_after needs as well.
    clock = time.monotonic_ns
    until = clock() + 3600 * 10**9

    def floor_frame(*args: Any, **kwargs: Any) -> None:
        raise rejected("open", state, 1)

    def floor_decide(*args: Any, **kwargs: Any) -> None:
        if clock() < until:
            raise rejected("open", state, 1)

    def floor_clock(*args: Any, **kwargs: Any) -> None:
        now = clock()
        if now < until:
            raise rejected("open", state, until - now)

    fns: dict[str, Callable[[], Any]] = {
        "noop": noop,
        "success": success,
        "bare_stream": flaky(),
        "stream": stream,
        "rejection": rejection,
        "passthrough": passthrough(noop),
        "raiser": raiser,
        "passthrough_raise": passthrough(raiser),
        "reraise": reraising(raiser),
        "acquire_closed": closed.acquire,
        "record_steady": partial(closed.record, True, generation),
        "nop2": partial(_nop2, True, generation),
        "records": records,
        "records_base": records_base,
        "machine": machine,
        "machine_base": machine_base,
        "locked": locked,
        "acquire_open": open_breaker.acquire,
        "build_rejection": partial(rejected, "open", state, 1),
        "nop3": partial(_nop3, "open", state, 1),
        "raise_rejection": build_and_raise,
        "floor_frame": floor_frame,
        "floor_decide": floor_decide,
        "floor_clock": floor_clock,
    }
    rows = interleaved(fns)
    med = {name: statistics.median(values) for name, values in rows.items()}

    def diff(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(rows[a], rows[b], strict=True))

    total_success = diff("success", "noop")
    total_failure = 2 * diff("stream", "bare_stream") - total_success
    total_rejection = diff("rejection", "noop")
    frame = diff("passthrough", "noop")
    acquire_closed = diff("acquire_closed", "noop")
    record_steady = diff("record_steady", "nop2")
    record_pair = 2 * diff("records", "records_base")  # one failure + one success
    machine_pair = 2 * diff("machine", "machine_base")
    lock_ns = diff("locked", "noop")
    build = diff("build_rejection", "nop3")
    paths: dict[str, list[tuple[str, float]]] = {
        "success": [
            ("decorator frame: protected(*args, **kwargs) calling the function", frame),
            ("admission: MemoryBreaker.acquire() while CLOSED", acquire_closed),
            ("outcome: MemoryBreaker.record(True) on a full window of successes", record_steady),
        ],
        "failure": [
            (
                "the exception passing through the decorator's frame",
                diff("passthrough_raise", "raiser"),
            ),
            (
                "catching it (except Exception) and re-raising it",
                diff("reraise", "passthrough_raise"),
            ),
            ("admission: MemoryBreaker.acquire() while CLOSED", acquire_closed),
            (
                "outcome: record(False), and the next success shifting it through the window, "
                "less a steady success; of which:",
                record_pair - record_steady,
            ),
            (
                "  · the breaker's lock (twice: both update the window in place)",
                2 * lock_ns,
            ),
            (
                "  · for comparison, not on this path: _machine.record twice, with the two "
                "State tuples it builds",
                machine_pair,
            ),
        ],
        "rejection": [
            ("decorator frame: protected(*args, **kwargs)", frame),
            (
                "admission: MemoryBreaker.acquire() while OPEN (the general drivers'; "
                "the decorator reads the same standing verdict, Breaker.rejecting)",
                diff("acquire_open", "noop"),
            ),
            ("building ProtectedCallError (ProtectedCallError.rejected)", build),
            (
                "raising it through the frame and catching it",
                diff("raise_rejection", "noop") - build,
            ),
        ],
    }
    totals = {"success": total_success, "failure": total_failure, "rejection": total_rejection}

    def per_exception(name: str) -> float:
        """``name``'s cost over the bare build and raise of the exception, per round."""
        return statistics.median(
            (x - n) / (e - n)
            for x, e, n in zip(rows[name], rows["raise_rejection"], rows["noop"], strict=True)
        )

    out: dict[str, Any] = {"kind": "breakdown", "paths": {}, "medians": med}
    out["rejection_vs_exception"] = {
        "ratio": per_exception("rejection"),
        "exception_ns": diff("raise_rejection", "noop"),
        "rejection_ns": total_rejection,
        "floor_frame": per_exception("floor_frame"),
        "floor_decide": per_exception("floor_decide"),
        "floor_clock": per_exception("floor_clock"),
    }
    for path, parts in paths.items():
        counted = sum(ns for name, ns in parts if not name.startswith("  ·"))
        out["paths"][path] = {
            "total": totals[path],
            "parts": [
                *parts,
                ("the rest (driver bookkeeping; parts overlap)", totals[path] - counted),
            ],
        }
    return out


def main() -> None:
    report = Report("resilient_circuit", None, LogWatch("resilient_circuit"))
    with report.scenario("breakdown"):
        report.ok("breakdown", measure())
    report.emit()


if __name__ == "__main__":
    main()
