"""Loading the shared vectors in tests/vectors/*.json (one format for both implementations)."""

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


def iter_vectors() -> Iterator[dict[str, Any]]:
    for path in sorted(VECTOR_DIR.glob("*.json")):
        for vector in json.loads(path.read_text(encoding="utf-8"))["vectors"]:
            yield {**vector, "file": path.name}


def vector_params() -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in iter_vectors()]


def config_from(raw: dict[str, Any]) -> Config:
    """A vector's config as the Python machine takes it."""
    return Config.build(
        failure_limit=Fraction(raw["failure_limit"]),
        window_size=raw["window_size"],
        success_limit=None if raw["success_limit"] is None else Fraction(raw["success_limit"]),
        cooldown=timedelta(milliseconds=raw["cooldown_ms"]),
        half_open_timeout=timedelta(milliseconds=raw["half_open_timeout_ms"]),
    )


def window_text(outcomes: Any) -> str:
    return "".join("S" if ok else "F" for ok in outcomes)
