"""Every shared vector, step by step, against the in-memory store and its pure machine."""

from __future__ import annotations

from typing import Any

import pytest

from resilient_circuit._machine import CircuitState
from resilient_circuit.storage import InMemoryStorage
from resilient_circuit.storage.memory import MemoryBreaker
from tests._vectors import config_from, iter_vectors, vector_params, window_text

EPOCH_NS = 1_000_000_000_000  # any origin works; the vectors' times are relative
MS = 1_000_000


def _snapshot(breaker: MemoryBreaker) -> dict[str, Any]:
    st = breaker.state
    return {
        "state": st.state.value,
        "generation": st.generation,
        "window": window_text(st.window),
        "failure_count": st.failure_count,
        "open_until_ms": None if st.open_until is None else (st.open_until - EPOCH_NS) // MS,
        "permits": len(st.permits),
        "successes": breaker.successes,
        "failures": breaker.failures,
    }


def test_vectors_exist_and_are_many() -> None:
    """The shared vectors hold at least 30 scenarios with unique names."""
    names = [v["name"] for v in iter_vectors()]
    assert len(names) >= 30
    assert len(names) == len(set(names))


@pytest.mark.parametrize("vector", vector_params())
def test_vector(vector: dict[str, Any]) -> None:
    """The Python state machine produces the vector's decision and state after every step."""
    now = [EPOCH_NS]
    storage = InMemoryStorage(namespace="vectors", clock=lambda: now[0])
    breaker = storage.breaker(vector["name"], "vectors", config_from(vector["config"]))
    for index, step in enumerate(vector["steps"]):
        now[0] = EPOCH_NS + step["at_ms"] * MS
        where = f"step {index} ({step['op']} at {step['at_ms']} ms)"
        op = step["op"]
        if op == "acquire":
            adm = breaker.acquire()
            got = {
                "permitted": adm.permitted,
                "state": adm.state.value,
                "generation": adm.generation,
                "retry_after_ms": None if adm.retry_after is None else adm.retry_after // MS,
            }
            assert got == step["expect"], where
        elif op == "record":
            reply = breaker.record(step["success"], step["generation"])
            got = {"state": reply.state.value, "generation": reply.generation}
            assert got == step["expect"], where
        elif op == "force":
            breaker.force(CircuitState[step["state"]])
        elif op == "reset":
            breaker.reset()
        elif op == "configure":
            breaker.configure(config_from(step["config"]))
        else:
            pytest.fail(f"{where}: unknown op {op!r}")
        assert _snapshot(breaker) == step["after"], where
