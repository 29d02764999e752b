"""Every breaker (and retry budget) the session may see, read in one round trip.

The CLI's ``status`` and the Prometheus fleet collector both read the shared state
through here: one ``SELECT`` on ``rc_circuit_breaker_status``, which shows an
application role only its granted namespaces; the collector adds ``rc_budget_status()``
to the same query. Needs psycopg.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

__all__ = ("BreakerRow", "BudgetRow", "glob_to_like", "read_fleet", "read_fleet_and_budgets")

STATUS_VIEW = "rc_circuit_breaker_status"
BUDGET_STATUS = "rc_budget_status"


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """One breaker as the status view shows it."""

    namespace: str
    key: str
    state: str
    generation: int
    window: str  # the current phase's outcomes, oldest first: S success, F failure
    failure_count: int  # consecutive failures
    open_until: datetime | None
    cooldown_remaining: timedelta | None
    permits: int
    successes: int  # lifetime
    failures: int  # lifetime
    failure_limit: str
    window_size: int
    updated_at: datetime
    held: bool  # OPEN or DISABLED until released by an operator
    window_calls: int  # outcomes in the current window (count or time buckets)
    window_failures: int
    window_slow: int
    extra: dict[str, Any]  # any column this version does not know by name

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict: times in ISO 8601, durations in seconds."""
        out: dict[str, Any] = {}
        for name in (
            "namespace",
            "key",
            "state",
            "generation",
            "window",
            "failure_count",
            "open_until",
            "cooldown_remaining",
            "permits",
            "successes",
            "failures",
            "failure_limit",
            "window_size",
            "updated_at",
            "held",
            "window_calls",
            "window_failures",
            "window_slow",
        ):
            out[name] = _jsonable(getattr(self, name))
        for name, value in self.extra.items():
            out.setdefault(name, _jsonable(value))
        return out


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One retry budget as ``rc_budget_status()`` shows it."""

    namespace: str
    name: str
    balance: float  # tokens left at updated_at
    min_per_second: float
    first_attempts: int  # lifetime
    retries: int  # withdrawals granted, lifetime
    refusals: int  # withdrawals refused, lifetime
    updated_at: datetime


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


_KNOWN = {
    "resource_key",
    "namespace",
    "state",
    "generation",
    "execution_log",
    "failure_count",
    "open_until",
    "cooldown_remaining",
    "permits",
    "successes",
    "failures",
    "failure_limit",
    "window_size",
    "updated_at",
    "held",
    "window_calls",
    "window_failures",
    "window_slow",
}


def glob_to_like(pattern: str) -> str:
    """A shell-style pattern (``*``, ``?``) as a LIKE pattern, other characters literal."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def read_fleet(
    conn: Any,
    schema: str,
    *,
    namespace: str | None = None,
    state: str | None = None,
    key_pattern: str | None = None,
) -> list[BreakerRow]:
    """The breakers of the view, filtered, ordered by namespace and key (one query)."""
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if namespace is not None:
        conditions.append(sql.SQL("namespace = %s"))
        params.append(namespace)
    if state is not None:
        conditions.append(sql.SQL("state = %s"))
        params.append(state.upper())
    if key_pattern is not None:
        conditions.append(sql.SQL("resource_key LIKE %s"))
        params.append(glob_to_like(key_pattern))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    statement = sql.SQL("SELECT * FROM {}{} ORDER BY namespace, resource_key").format(
        sql.Identifier(schema, STATUS_VIEW), where
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement, params)
        rows = cur.fetchall()
    return [_row(r) for r in rows]


def _row(r: dict[str, Any]) -> BreakerRow:
    window = r.get("execution_log") or ""
    # Installs older than time windows have no window_* columns: count the log instead.
    calls, failures = r.get("window_calls"), r.get("window_failures")
    return BreakerRow(
        namespace=r["namespace"],
        key=r["resource_key"],
        state=r["state"],
        generation=int(r.get("generation") or 0),
        window=window,
        failure_count=int(r.get("failure_count") or 0),
        open_until=r.get("open_until"),
        cooldown_remaining=r.get("cooldown_remaining"),
        permits=int(r.get("permits") or 0),
        successes=int(r.get("successes") or 0),
        failures=int(r.get("failures") or 0),
        failure_limit=str(r.get("failure_limit") or ""),
        window_size=int(r.get("window_size") or 0),
        updated_at=r["updated_at"],
        held=bool(r.get("held")),
        window_calls=int(calls) if calls is not None else len(window),
        window_failures=int(failures) if failures is not None else window.count("F"),
        window_slow=int(r.get("window_slow") or 0),
        extra={k: v for k, v in r.items() if k not in _KNOWN},
    )


def read_fleet_and_budgets(conn: Any, schema: str) -> tuple[list[BreakerRow], list[BudgetRow]]:
    """Every breaker and every retry budget the session may see, in one round trip.

    Both ``SELECT``s travel as one simple-protocol query (no parameters, never
    prepared); an install older than ``rc_budget_status`` raises psycopg's
    ``UndefinedFunction``.
    """
    statement = sql.SQL(
        "SELECT * FROM {} ORDER BY namespace, resource_key; SELECT * FROM {}()"
    ).format(sql.Identifier(schema, STATUS_VIEW), sql.Identifier(schema, BUDGET_STATUS))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement, prepare=False)
        breakers = cur.fetchall()
        cur.nextset()
        budgets = cur.fetchall()
    return [_row(r) for r in breakers], [
        BudgetRow(
            namespace=r["namespace"],
            name=r["name"],
            balance=float(r["balance"]),
            min_per_second=float(r["min_per_second"]),
            first_attempts=int(r["first_attempts"]),
            retries=int(r["retries"]),
            refusals=int(r["refusals"]),
            updated_at=r["updated_at"],
        )
        for r in budgets
    ]
