"""The shared vectors in tests/vectors/*.json and the rules every runner applies to them.

Format (one JSON object per file, ``{"vectors": [...]}``); each vector is::

    {"name": unique str, "description": str,
     "config": CONFIG,
     "steps": [STEP, ...]}

    CONFIG = {"failure_limit": "num/den", "window_size": int | null,
              "success_limit": "num/den" | null, "cooldown_ms": int,
              "half_open_timeout_ms": int,
              and optionally "window_duration_ms": int, "minimum_calls": int,
              "slow_call_duration_ms": int, "slow_call_limit": "num/den",
              "cooldown_factor": number, "max_cooldown_ms": int}
    (limits may be given unreduced, "5/10": the store keeps them reduced; an absent
    option is unused)

    STEP = {"at_ms": int (time since the vector's epoch), "op": OP, ...its arguments,
            "expect": ANSWER (optional, see below),
            "after": STATE,
            "transitions": [TRANSITION, ...] (optional, see below)}

    op "acquire"                                   ANSWER = {"permitted", "state",
                                                             "generation", "retry_after_ms"}
    op "record", "success": bool, "generation": int | null,
        "duration_ms": int (optional: how long the call took)
    op "release", "generation": int | null         (an uncounted outcome)
    op "force", "state": "CLOSED" | "OPEN" | "HALF_OPEN" | "DISABLED", "hold": bool (optional)
    op "reset"
    op "configure", "config": CONFIG               ANSWER = {"state", "generation"}
                                                   for record, release, force, reset,
                                                   configure

    STATE = {"state", "generation", "window": "SSF" (oldest first), "failure_count",
             "open_until_ms": int | null, "permits": int (outstanding trial permits),
             "permits_ms": [int, ...] (their expiry times, oldest first),
             "successes", "failures" (lifetime counters),
             "held": bool (OPEN or DISABLED until a force or reset),
             "window_calls", "window_failures", "window_slow" (the CLOSED time window's
             sums over its buckets, else the window's outcomes, failures, slow calls)}

    TRANSITION = {"from", "to", "generation", "open_until_ms"}

The rules, the same for every step type in every runner (``check_step``):

- The answer of every step is checked. With ``expect``, the whole answer must equal it
  (every key; a missing ``retry_after_ms`` is not "anything"). Without it, the
  answer's state and generation must be the ones ``after`` holds, and an acquire's
  ``retry_after_ms`` must be null exactly when it is permitted.
- ``after`` is compared with the store's whole state: every key above, nothing less.
  ``permits_ms`` came after the first version of this format: a vector without it is
  still run (its permit count is compared), but every vector in this repository has
  it (tests/test_vectors_python.py checks that, and that every step has ``expect``).
- The stored configuration after every step is the vector's ``config`` (or the last
  ``configure`` step's), reduced: limits in lowest terms, a null window the failure
  limit's denominator.
- Transitions: without ``transitions``, a step that moves the generation made exactly
  one transition, from the state before it to the state in ``after``, with ``after``'s
  generation and ``open_until_ms``; a step that does not made none. A step that makes
  more than one lists them in ``transitions``. The SQL runner compares the NOTIFY
  payloads of each step with them; the Python runner compares the
  ``on_status_change(old, new)`` calls of a policy on the same breaker (which fire
  only when the state name changes).

Adding a field later: make it optional in the loaders and in ``check_step`` so that
older files keep running, give every vector in this repository the field, and
extend ``test_every_vector_uses_the_full_format``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from resilient_circuit._machine import Config

VECTOR_DIR = Path(__file__).parent / "vectors"

STATE_KEYS = frozenset(
    {
        "state",
        "generation",
        "window",
        "failure_count",
        "open_until_ms",
        "permits",
        "permits_ms",
        "successes",
        "failures",
        "held",
        "window_calls",
        "window_failures",
        "window_slow",
    }
)
# Keys added after the first version of the format: compared when a vector has them.
LATER_STATE_KEYS = frozenset(
    {"permits_ms", "held", "window_calls", "window_failures", "window_slow"}
)
ACQUIRE_KEYS = frozenset({"permitted", "state", "generation", "retry_after_ms"})
REPLY_KEYS = frozenset({"state", "generation"})


def iter_vectors() -> Iterator[dict[str, Any]]:
    for path in sorted(VECTOR_DIR.glob("*.json")):
        for vector in json.loads(path.read_text(encoding="utf-8"))["vectors"]:
            yield {**vector, "file": path.name}


def vector_params() -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in iter_vectors()]


def _ms(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(milliseconds=value)


def config_from(raw: dict[str, Any]) -> Config:
    """A vector's config as the Python machine takes it."""
    slow_limit = raw.get("slow_call_limit")
    return Config.build(
        failure_limit=Fraction(raw["failure_limit"]),
        window_size=raw["window_size"],
        success_limit=None if raw["success_limit"] is None else Fraction(raw["success_limit"]),
        cooldown=timedelta(milliseconds=raw["cooldown_ms"]),
        half_open_timeout=timedelta(milliseconds=raw["half_open_timeout_ms"]),
        window_duration=_ms(raw.get("window_duration_ms")),
        minimum_calls=raw.get("minimum_calls"),
        slow_call_duration=_ms(raw.get("slow_call_duration_ms")),
        slow_call_limit=None if slow_limit is None else Fraction(slow_limit),
        cooldown_factor=raw.get("cooldown_factor", 1),
        max_cooldown=_ms(raw.get("max_cooldown_ms")),
    )


def stored_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The configuration a store must hold after adopting a vector's config, reduced."""
    f = Fraction(raw["failure_limit"])
    s = None if raw["success_limit"] is None else Fraction(raw["success_limit"])
    return {
        "failure_limit": (f.numerator, f.denominator),
        "window_size": raw["window_size"] if raw["window_size"] is not None else f.denominator,
        "success_limit": None if s is None else (s.numerator, s.denominator),
        "cooldown_ms": raw["cooldown_ms"],
        "half_open_timeout_ms": raw["half_open_timeout_ms"],
        **stored_options(raw),
    }


def stored_options(raw: dict[str, Any]) -> dict[str, Any]:
    """The options beyond 0.4.5's a store must hold, with their defaults resolved."""
    f = Fraction(raw["failure_limit"])
    window = raw["window_size"] if raw["window_size"] is not None else f.denominator
    duration = raw.get("window_duration_ms")
    slow = raw.get("slow_call_duration_ms")
    limit = None if slow is None else Fraction(raw.get("slow_call_limit") or 1)
    minimum = raw.get("minimum_calls")
    return {
        "window_duration_ms": duration,
        "minimum_calls": minimum if minimum is not None else window if duration is None else 10,
        "slow_call_duration_ms": slow,
        "slow_call_limit": None if limit is None else (limit.numerator, limit.denominator),
        "cooldown_factor": float(raw.get("cooldown_factor", 1)),
        "max_cooldown_ms": raw.get("max_cooldown_ms"),
    }


def window_text(outcomes: Any) -> str:
    return "".join("S" if ok else "F" for ok in outcomes)


def expected_transitions(step: dict[str, Any], before: dict[str, Any]) -> list[dict[str, Any]]:
    """The transitions a step must announce (see the module's docstring)."""
    if "transitions" in step:
        return list(step["transitions"])
    after = step["after"]
    if after["generation"] == before["generation"]:
        return []
    return [
        {
            "from": before["state"],
            "to": after["state"],
            "generation": after["generation"],
            "open_until_ms": after["open_until_ms"],
        }
    ]


def check_step(
    where: str,
    step: dict[str, Any],
    answer: dict[str, Any],
    state: dict[str, Any],
    config: dict[str, Any],
    expected_config: dict[str, Any],
) -> None:
    """Assert one step's answer, the state and configuration it left (see the docstring)."""
    op = step["op"]
    keys = ACQUIRE_KEYS if op == "acquire" else REPLY_KEYS
    assert set(answer) == keys, f"{where}: the runner answered {sorted(answer)}"
    after = step["after"]
    if "expect" in step:
        assert answer == step["expect"], f"{where}: answered {answer}"
    else:
        assert (answer["state"], answer["generation"]) == (after["state"], after["generation"]), (
            f"{where}: answered {answer}, but left {after['state']} {after['generation']}"
        )
        if op == "acquire":
            assert (answer["retry_after_ms"] is None) == answer["permitted"], (
                f"{where}: answered {answer}"
            )
    assert set(state) == STATE_KEYS, f"{where}: the runner read {sorted(state)}"
    missing = STATE_KEYS - LATER_STATE_KEYS - set(after)
    assert not missing, f"{where}: `after` lacks {sorted(missing)}"
    compared = {key: value for key, value in state.items() if key in after}
    assert compared == after, f"{where}: left {compared}"
    assert config == expected_config, f"{where}: stored configuration {config}"
