"""Every shared vector, step by step, against the in-memory store and its pure machine."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit._machine import CircuitState, Config
from resilient_circuit.storage import InMemoryStorage
from resilient_circuit.storage.memory import MemoryBreaker
from tests._reference_model import RefBreaker, RefConfig
from tests._vectors import (
    ACQUIRE_KEYS,
    LATER_STATE_KEYS,
    REPLY_KEYS,
    STATE_KEYS,
    check_step,
    config_from,
    expected_transitions,
    iter_vectors,
    stored_config,
    stored_options,
    vector_params,
    window_text,
)

EPOCH_NS = 1_000_000_000_000  # any origin works; the vectors' times are relative
MS = 1_000_000
NAMESPACE = "vectors"


def _ms(ns: int | None) -> int | None:
    return None if ns is None else (ns - EPOCH_NS) // MS


def _snapshot(breaker: MemoryBreaker) -> dict[str, Any]:
    st = breaker.state
    # The machine keeps the window's failure count beside the window (or, for a time
    # window, beside its buckets): the two must agree.
    if st.buckets:
        assert st.window_failures == sum(st.buckets[10:20]), st
    else:
        assert st.window_failures == st.window.count(False), st
    return {
        "state": st.state.value,
        "generation": st.generation,
        "window": window_text(st.window),
        "failure_count": st.failure_count,
        "open_until_ms": _ms(st.open_until),
        "permits": len(st.permits),
        "permits_ms": [_ms(p) for p in st.permits],
        "successes": breaker.successes,
        "failures": breaker.failures,
        "held": st.held,
        "window_calls": st.window_len,
        "window_failures": st.window_failures,
        "window_slow": st.window_slow,
    }


def _in_ms(ns: int | None) -> int | None:
    return None if ns is None else ns // MS


def _config(cfg: Config) -> dict[str, Any]:
    s = cfg.success_limit
    slow = cfg.slow_call_limit
    return {
        "failure_limit": (cfg.failure_limit.numerator, cfg.failure_limit.denominator),
        "window_size": cfg.window_size,
        "success_limit": None if s is None else (s.numerator, s.denominator),
        "cooldown_ms": cfg.cooldown_ns // MS,
        "half_open_timeout_ms": cfg.half_open_timeout_ns // MS,
        "window_duration_ms": _in_ms(cfg.window_duration_ns),
        "minimum_calls": cfg.minimum_calls,
        "slow_call_duration_ms": _in_ms(cfg.slow_call_duration_ns),
        "slow_call_limit": None if slow is None else (slow.numerator, slow.denominator),
        "cooldown_factor": cfg.cooldown_factor,
        "max_cooldown_ms": _in_ms(cfg.max_cooldown_ns),
    }


def _td(ns: int | None) -> timedelta | None:
    return None if ns is None else timedelta(microseconds=ns // 1000)


def test_vectors_exist_and_are_many() -> None:
    """The shared vectors hold at least 30 scenarios with unique names."""
    names = [v["name"] for v in iter_vectors()]
    assert len(names) >= 30
    assert len(names) == len(set(names))


def test_every_vector_uses_the_full_format() -> None:
    """Every step of every vector states its whole answer, whole state and permit expiries."""
    for vector in iter_vectors():
        for index, step in enumerate(vector["steps"]):
            where = f"{vector['file']}: {vector['name']}: step {index}"
            keys = ACQUIRE_KEYS if step["op"] == "acquire" else REPLY_KEYS
            assert set(step.get("expect", ())) == keys, f"{where}: expect"
            assert set(step["after"]) == STATE_KEYS, f"{where}: after"
    assert LATER_STATE_KEYS <= STATE_KEYS


@pytest.mark.parametrize("vector", vector_params())
def test_vector(vector: dict[str, Any]) -> None:
    """The in-memory store gives every answer, state, configuration and transition expected."""
    now = [EPOCH_NS]
    storage = InMemoryStorage(namespace=NAMESPACE, clock=lambda: now[0])
    breaker = storage.breaker(vector["name"], NAMESPACE, config_from(vector["config"]))
    seen: list[tuple[str, str]] = []
    # A policy on the same breaker reports the transitions it observes.
    cfg = breaker.config
    optional: dict[str, Any] = {
        "window_duration": _td(cfg.window_duration_ns),
        "minimum_calls": cfg.minimum_calls,
        "slow_call_duration": _td(cfg.slow_call_duration_ns),
        "slow_call_limit": cfg.slow_call_limit,
        "cooldown_factor": cfg.cooldown_factor,
        "max_cooldown": _td(cfg.max_cooldown_ns),
    }
    if cfg.success_limit is not None:
        optional["success_limit"] = cfg.success_limit
    policy = CircuitProtectorPolicy(
        resource_key=vector["name"],
        storage=storage,
        namespace=NAMESPACE,
        failure_limit=cfg.failure_limit,
        window_size=cfg.window_size,
        cooldown=timedelta(microseconds=cfg.cooldown_ns // 1000),
        half_open_timeout=timedelta(microseconds=cfg.half_open_timeout_ns // 1000),
        on_status_change=lambda _p, old, new: seen.append((old.value, new.value)),
        **optional,
    )
    assert breaker.config == cfg
    declared = vector["config"]
    before = _snapshot(breaker)
    for index, step in enumerate(vector["steps"]):
        now[0] = EPOCH_NS + step["at_ms"] * MS
        where = f"{vector['name']}: step {index} ({step['op']} at {step['at_ms']} ms)"
        op = step["op"]
        if op == "acquire":
            adm = breaker.acquire()
            answer: dict[str, Any] = {
                "permitted": adm.permitted,
                "state": adm.state.value,
                "generation": adm.generation,
                "retry_after_ms": None if adm.retry_after is None else adm.retry_after // MS,
            }
        else:
            if op == "record":
                took = step.get("duration_ms")
                reply = breaker.record(
                    step["success"], step["generation"], None if took is None else took * MS
                )
            elif op == "release":
                reply = breaker.release(step["generation"])
            elif op == "force":
                reply = breaker.force(CircuitState[step["state"]], hold=step.get("hold", False))
            elif op == "reset":
                reply = breaker.reset()
            elif op == "configure":
                declared = step["config"]
                reply = breaker.configure(config_from(declared))
            else:
                pytest.fail(f"{where}: unknown op {op!r}")
            answer = {"state": reply.state.value, "generation": reply.generation}
        after = _snapshot(breaker)
        check_step(where, step, answer, after, _config(breaker.config), stored_config(declared))
        del seen[:]
        policy.snapshot()
        moves = [(t["from"], t["to"]) for t in expected_transitions(step, before)]
        assert seen == [move for move in moves if move[0] != move[1]], f"{where}: transitions"
        before = after


def _ref_config(raw: dict[str, Any]) -> RefConfig:
    slow_limit = raw.get("slow_call_limit")
    return RefConfig(
        failure_limit=config_from(raw).failure_limit,
        window_size=raw["window_size"],
        success_limit=config_from(raw).success_limit,
        cooldown_ms=raw["cooldown_ms"],
        half_open_timeout_ms=raw["half_open_timeout_ms"],
        window_duration_ms=raw.get("window_duration_ms"),
        minimum_calls=raw.get("minimum_calls"),
        slow_call_duration_ms=raw.get("slow_call_duration_ms"),
        slow_call_limit=None if slow_limit is None else Fraction(slow_limit),
        cooldown_factor=Fraction(str(raw.get("cooldown_factor", 1))),
        max_cooldown_ms=raw.get("max_cooldown_ms"),
    )


@pytest.mark.parametrize("vector", vector_params())
def test_reference_model_agrees_with_the_vector(vector: dict[str, Any]) -> None:
    """The independent reference model of the design gives what every vector expects."""
    ref = RefBreaker(_ref_config(vector["config"]))
    declared = vector["config"]
    before = _ref_state(ref)
    for index, step in enumerate(vector["steps"]):
        where = f"{vector['name']}: step {index} ({step['op']} at {step['at_ms']} ms)"
        at, op = step["at_ms"], step["op"]
        del ref.transitions[:]
        answer: dict[str, Any]
        if op == "acquire":
            permitted, state, generation, retry_after = ref.acquire(at)
            answer = {
                "permitted": permitted,
                "state": state,
                "generation": generation,
                "retry_after_ms": retry_after,
            }
        else:
            if op == "record":
                state, generation = ref.record(
                    at, step["success"], step["generation"], step.get("duration_ms")
                )
            elif op == "release":
                state, generation = ref.release(at, step["generation"])
            elif op == "force":
                state, generation = ref.force(at, step["state"], step.get("hold", False))
            elif op == "reset":
                state, generation = ref.reset(at)
            else:
                declared = step["config"]
                state, generation = ref.configure(_ref_config(declared))
            answer = {"state": state, "generation": generation}
        after = _ref_state(ref)
        f, s = ref.config.failure_limit, ref.config.success_limit
        config = {
            "failure_limit": (f.numerator, f.denominator),
            "window_size": ref.config.n,
            "success_limit": None if s is None else (s.numerator, s.denominator),
            "cooldown_ms": ref.config.cooldown_ms,
            "half_open_timeout_ms": ref.config.half_open_timeout_ms,
            **stored_options(declared),
        }
        check_step(where, step, answer, after, config, stored_config(declared))
        made = [
            {"from": t.old, "to": t.new, "generation": t.generation, "open_until_ms": t.until_ms}
            for t in ref.transitions
        ]
        assert made == expected_transitions(step, before), f"{where}: transitions"
        before = after


def _ref_state(ref: RefBreaker) -> dict[str, Any]:
    return {
        "state": ref.state,
        "generation": ref.generation,
        "window": window_text(ref.window),
        "failure_count": ref.failure_count,
        "open_until_ms": ref.open_until_ms,
        "permits": len(ref.permits_ms),
        "permits_ms": list(ref.permits_ms),
        "successes": ref.successes,
        "failures": ref.failures,
        "held": ref.held,
        "window_calls": ref.window_calls,
        "window_failures": ref.window_failures,
        "window_slow": ref.window_slow,
    }
