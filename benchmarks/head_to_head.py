"""This library, circuitbreaker and pybreaker in one process, in the same rounds.

The table times every library in its own process (its own environment); a target
that is a ratio between two of them then also carries the difference between two
processes (where their objects landed, what the sibling core did meanwhile), which
on a small shared machine is as large as the ratio itself. Here the three breakers'
paths run interleaved in one process, round by round, and each ratio is the median
of the per-round ratios. Both peers are pure Python: their environments'
site-packages go at the end of sys.path, after this repository.

    python head_to_head.py SITE_PACKAGES [SITE_PACKAGES ...]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from fractions import Fraction
from typing import Any

from _harness import LogWatch, Report, flaky, interleaved, median_ratio, noop, summary_of

NEVER = 10**9


def ours() -> dict[str, Callable[[], Any]]:
    from resilient_circuit import CircuitProtectorPolicy, CircuitState
    from resilient_circuit.storage import InMemoryStorage

    def policy(key: str, limit: Fraction) -> Any:
        return CircuitProtectorPolicy(
            resource_key=key,
            storage=InMemoryStorage(),
            failure_limit=limit,
            cooldown=timedelta(seconds=60),
        )

    opened = policy("open", Fraction(1, 10))
    rejection = opened(noop)
    opened.status = CircuitState.OPEN
    return {
        "success": policy("success", Fraction(1, 10))(noop),
        "stream": policy("stream", Fraction(9, 10))(flaky()),
        "stream_ok": policy("stream-ok", Fraction(9, 10))(noop),
        "rejection": rejection,
    }


def circuitbreaker_paths() -> dict[str, Callable[[], Any]]:
    import circuitbreaker as cb

    opened = cb.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    rejection = opened(noop)
    try:
        opened(flaky())()
    except ValueError:
        pass
    return {
        "success": cb.CircuitBreaker(failure_threshold=5, recovery_timeout=60)(noop),
        "stream": cb.CircuitBreaker(failure_threshold=NEVER, recovery_timeout=60)(flaky()),
        "stream_ok": cb.CircuitBreaker(failure_threshold=NEVER, recovery_timeout=60)(noop),
        "rejection": rejection,
    }


def pybreaker_paths() -> dict[str, Callable[[], Any]]:
    import pybreaker

    opened = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    rejection = opened(noop)
    opened.open()
    return {
        "success": pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(noop),
        "stream": pybreaker.CircuitBreaker(fail_max=NEVER, reset_timeout=60)(flaky()),
        "stream_ok": pybreaker.CircuitBreaker(fail_max=NEVER, reset_timeout=60)(noop),
        "rejection": rejection,
    }


LIBRARIES = {"ours": ours, "circuitbreaker": circuitbreaker_paths, "pybreaker": pybreaker_paths}


def main() -> None:
    sys.path.extend(sys.argv[1:])
    report = Report("head-to-head", None, LogWatch("resilient_circuit"))
    with report.scenario("h2h.*"):
        fns: dict[str, Callable[[], Any]] = {"noop": noop, "bare_stream": flaky()}
        for library, build in LIBRARIES.items():
            for path, fn in build().items():
                fns[f"{library}.{path}"] = fn
        rows = interleaved(fns)

        def minus(a: str, b: str) -> list[float]:
            return [x - y for x, y in zip(rows[a], rows[b], strict=True)]

        per_round: dict[str, dict[str, list[float]]] = {}
        for library in LIBRARIES:
            success = minus(f"{library}.success", "noop")
            ok = minus(f"{library}.stream_ok", "noop")
            stream = minus(f"{library}.stream", "bare_stream")
            per_round[library] = {
                "success": success,
                "failure": [2 * s - o for s, o in zip(stream, ok, strict=True)],
                "rejection": minus(f"{library}.rejection", "noop"),
            }
            for path, values in per_round[library].items():
                report.ok(f"h2h.{library}.{path}", summary_of(values))
        for peer in ("circuitbreaker", "pybreaker"):
            for path, values in per_round["ours"].items():
                report.ok(
                    f"h2h.ratio.{peer}.{path}",
                    {"kind": "ratio", "ratio": median_ratio(values, per_round[peer][path])},
                )
    report.emit()


if __name__ == "__main__":
    main()
