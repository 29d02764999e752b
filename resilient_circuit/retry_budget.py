"""A retry budget shared by the whole fleet: retries stay a fraction of first attempts.

``RetryBudget(name, ratio, min_per_second)`` is a token bucket: every first attempt
deposits ``ratio`` tokens, every retry withdraws one, and the bucket refills by itself
up to ``min_per_second`` tokens at ``min_per_second`` per second (the floor). Tokens
decay with a 10-second time constant, so a long healthy period cannot bank a retry
storm. Across every process sharing the bucket, the retries made in the T seconds
since the bucket was created never exceed ``ratio`` x first attempts +
``min_per_second`` x (T + 1).

With PostgreSQL configured the bucket is a row of ``rc_retry_budgets`` (see
``_budget_pg``); otherwise it lives in this process's memory. Deposits are counted
in the process and flushed in batches (every ``flush_interval``, when 1000 are
pending, at exit, and along with any withdrawal), so a first attempt never waits
for a round trip; a withdrawal is one round trip, made only when a retry is about
to happen.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

from resilient_circuit._machine import as_timedelta
from resilient_circuit._settings import database_dsn, database_schema, default_namespace

if TYPE_CHECKING:
    from resilient_circuit._budget_pg import PostgresBudgetStore

__all__ = (
    "BudgetStore",
    "BudgetUnavailable",
    "InMemoryBudgetStore",
    "PostgresBudgetStore",
    "RetryBudget",
    "create_budget_store",
)

logger = logging.getLogger("resilient_circuit.retry_budget")

#: Tokens decay as exp(-t / DECAY_SECONDS): what was deposited a minute ago is gone.
DECAY_SECONDS = 10.0
#: Deposits pending in one process before the flusher is woken early.
FLUSH_BATCH = 1000
#: After the database failed to answer, how long the in-memory fallback is used alone.
OUTAGE_BACKOFF_SECONDS = 1.0
_MAX_NAME = 255
# Adding up fractional deposits rounds: five deposits of 0.2 make a whole token.
_ROUNDING = 1e-9


class BudgetUnavailable(Exception):
    """A budget store could not answer (the budget then falls back to memory)."""


class BudgetStore(Protocol):
    """Where budgets live: ``settle`` is one atomic step of one bucket."""

    def settle(
        self,
        namespace: str,
        name: str,
        first_attempts: int,
        ratio: float,
        min_per_second: float,
        withdraw: bool,
    ) -> bool:
        """Deposit ``first_attempts`` x ``ratio`` tokens and, with ``withdraw``, try to
        take one. Returns whether a token was taken; raises ``BudgetUnavailable``."""
        ...


#: The most first attempts one settle step accepts (the bound of the SQL functions too).
MAX_FIRST_ATTEMPTS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Settlement:
    """One ``settle`` step, as a store carries it out."""

    namespace: str
    name: str
    first_attempts: int
    ratio: float
    min_per_second: float
    withdraw: bool


class SettlingStore:
    """The ``BudgetStore.settle`` both stores share: it bounds the backlog, then hands
    the step to ``_settle``."""

    def settle(
        self,
        namespace: str,
        name: str,
        first_attempts: int,
        ratio: float,
        min_per_second: float,
        withdraw: bool,
    ) -> bool:
        """See ``BudgetStore.settle``."""
        # A backlog larger than one step takes (a long outage under heavy traffic) is
        # worth MAX_FIRST_ATTEMPTS deposits and no more, in memory as in PostgreSQL.
        first_attempts = min(first_attempts, MAX_FIRST_ATTEMPTS)
        step = Settlement(namespace, name, first_attempts, ratio, min_per_second, withdraw)
        return self._settle(step)

    def _settle(self, step: Settlement) -> bool:
        raise NotImplementedError


class _Bucket:
    __slots__ = ("balance", "updated")

    def __init__(self, balance: float, now: float) -> None:
        self.balance = balance
        self.updated = now

    def settle(
        self, now: float, first_attempts: int, ratio: float, min_per_second: float, withdraw: bool
    ) -> bool:
        # The same arithmetic as rc_budget_settle_at in sql/schema.sql.
        elapsed = max(0.0, now - self.updated)
        balance = self.balance
        if elapsed > 0:
            balance = 0.0 if elapsed >= 600 else balance * math.exp(-elapsed / DECAY_SECONDS)
            if balance < min_per_second:
                balance = min(min_per_second, balance + min_per_second * elapsed)
            self.updated = now
        balance += first_attempts * ratio
        permitted = withdraw and balance >= 1 - _ROUNDING
        if permitted:
            balance = max(0.0, balance - 1)
        self.balance = balance
        return permitted


class InMemoryBudgetStore(SettlingStore):
    """Budgets in this process's memory: the twin of the PostgreSQL table.

    ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not callable(clock):
            raise TypeError("`clock` must be callable")
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _settle(self, step: Settlement) -> bool:
        key = (step.namespace, step.name)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                # One second of floor to start with, as in PostgreSQL.
                bucket = self._buckets[key] = _Bucket(step.min_per_second, now)
            return bucket.settle(
                now, step.first_attempts, step.ratio, step.min_per_second, step.withdraw
            )

    def balance(self, name: str, namespace: str | None = None) -> float | None:
        """The bucket's balance as last settled (None if never used); for tests and logs."""
        with self._lock:
            bucket = self._buckets.get((namespace or default_namespace(), name))
            return None if bucket is None else bucket.balance


_process_store: InMemoryBudgetStore | None = None
_shared_pg: dict[tuple[str, str], BudgetStore] = {}
_stores_lock = threading.Lock()


def create_budget_store() -> BudgetStore:
    """PostgreSQL when ``RC_DB_DSN`` or ``RC_DB_HOST`` is set (``.env`` is read), else memory.

    One store per (DSN, schema), and one in-memory store per process, so budgets of
    the same name and namespace share a bucket.
    """
    global _process_store
    dsn = database_dsn()
    with _stores_lock:
        if dsn is None:
            if _process_store is None:
                _process_store = InMemoryBudgetStore()
            return _process_store
        schema = database_schema()
        store = _shared_pg.get((dsn, schema))
        if store is None:
            from resilient_circuit._budget_pg import PostgresBudgetStore

            store = _shared_pg[(dsn, schema)] = PostgresBudgetStore(dsn, schema=schema)
        return store


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{what}` must be a str, got {type(value).__name__}")
    if not 1 <= len(value) <= _MAX_NAME or "\x00" in value:
        raise ValueError(f"`{what}` must be 1 to {_MAX_NAME} characters without NUL")
    return value


class _Deposits:
    """First attempts counted without a lock: ``next()`` of an ``itertools.count`` is
    atomic in CPython, where a lock costs more than everything else a deposit does."""

    __slots__ = ("_lock", "_reads", "_taken", "count")

    def __init__(self) -> None:
        self.count = itertools.count(1).__next__
        self._lock = threading.Lock()
        self._reads = 0  # calls of count() made by take() itself, not deposits
        self._taken = 0

    def take(self) -> int:
        """The deposits made since the last take."""
        with self._lock:
            self._reads += 1
            total = self.count() - self._reads
            taken, self._taken = total - self._taken, total
        return taken

    def pending(self) -> int:
        with self._lock:
            self._reads += 1
            return self.count() - self._reads - self._taken

    def forget(self) -> None:
        """After fork(): what was counted before belongs to the parent."""
        self._lock = threading.Lock()
        self._reads += 1
        self._taken = self.count() - self._reads


class _Account:
    """Everything a budget needs to settle, kept apart from ``RetryBudget`` so that the
    flusher can still deposit what a budget dropped by its owner had counted."""

    __slots__ = (
        "_fallback",
        "_outage_until",
        "_rate",
        "_ratio",
        "_store",
        "deposits",
        "name",
        "namespace",
    )

    def __init__(
        self, name: str, namespace: str, ratio: float, rate: float, store: BudgetStore | None
    ) -> None:
        self.name = name
        self.namespace = namespace
        self._ratio = ratio
        self._rate = rate
        self._store = store
        self._fallback: InMemoryBudgetStore | None = None
        self._outage_until = 0.0
        self.deposits = _Deposits()

    def __repr__(self) -> str:
        return f"<retry budget {self.name!r} in namespace {self.namespace!r}>"

    @property
    def store(self) -> BudgetStore:
        store = self._store
        if store is None:
            store = self._store = create_budget_store()
        return store

    def flush(self) -> None:
        taken = self.deposits.take()
        if taken:
            self.settle(taken, withdraw=False)

    def settle(self, first_attempts: int, *, withdraw: bool) -> bool:
        store = self.store
        now = time.monotonic()
        if now >= self._outage_until:
            try:
                permitted = store.settle(
                    self.namespace, self.name, first_attempts, self._ratio, self._rate, withdraw
                )
            except BudgetUnavailable as exc:
                if self._outage_until == 0.0 or now - self._outage_until > 60:
                    logger.warning("%r: %s; limiting retries in this process alone", self, exc)
                self._outage_until = now + OUTAGE_BACKOFF_SECONDS
            else:
                if self._outage_until:
                    logger.warning("%r: shared again", self)
                    self._outage_until = 0.0
                return permitted
        # Deposits made during an outage count in this process's own bucket only: the
        # shared one never sees them, which errs on the side of fewer retries.
        fallback = self._fallback
        if fallback is None:
            fallback = self._fallback = InMemoryBudgetStore()
        return fallback.settle(
            self.namespace, self.name, first_attempts, self._ratio, self._rate, withdraw
        )


class RetryBudget:
    """A fleet-wide limit on retries: ``ratio`` x first attempts, plus ``min_per_second``.

    Pass it to ``RetryWithBackoffPolicy(budget=...)``; policies sharing a budget's
    name (and namespace) share its tokens, across every process of the fleet when
    PostgreSQL is configured. ``store`` overrides where the bucket lives (by default
    ``create_budget_store()``). While the database does not answer, each process
    limits its own retries with an in-memory bucket of the same parameters.
    """

    def __init__(
        self,
        name: str,
        ratio: Fraction = Fraction(1, 5),
        min_per_second: float = 10,
        *,
        namespace: str | None = None,
        store: BudgetStore | None = None,
        flush_interval: timedelta = timedelta(milliseconds=500),
    ) -> None:
        name = _check_name(name, "name")
        namespace = (
            default_namespace() if namespace is None else _check_name(namespace, "namespace")
        )
        if isinstance(ratio, bool) or not isinstance(ratio, Fraction | int | float):
            raise TypeError(f"`ratio` must be a Fraction, got {type(ratio).__name__}")
        if not 0 <= ratio <= 1000:
            raise ValueError(f"`ratio` must be in [0, 1000], got {ratio}")
        if isinstance(min_per_second, bool) or not isinstance(min_per_second, int | float):
            raise TypeError(
                f"`min_per_second` must be a number, got {type(min_per_second).__name__}"
            )
        if not 0 <= min_per_second <= 1_000_000:
            raise ValueError(f"`min_per_second` must be in [0, 1000000], got {min_per_second}")
        flush_interval = as_timedelta(flush_interval, "flush_interval")
        if not timedelta(0) < flush_interval <= timedelta(minutes=1):
            raise ValueError(f"`flush_interval` must be in (0, 1 minute], got {flush_interval}")
        if store is not None and not callable(getattr(store, "settle", None)):
            # A breaker storage is the likely mix-up: budgets have stores of their own.
            raise TypeError(
                "`store` must be a budget store (resilient_circuit.retry_budget."
                "InMemoryBudgetStore() or PostgresBudgetStore(dsn), or anything with a "
                f"settle() method), got {type(store).__name__}"
            )
        self.name = name
        self.namespace = namespace
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.flush_interval = flush_interval
        self._account = account = _Account(
            name, namespace, float(ratio), float(min_per_second), store
        )
        self._count = account.deposits.count
        _flusher.watch(self, account)

    def __repr__(self) -> str:
        return (
            f"RetryBudget({self.name!r}, ratio={self.ratio!r}, "
            f"min_per_second={self.min_per_second!r}, namespace={self.namespace!r})"
        )

    @property
    def store(self) -> BudgetStore:
        """Where the bucket lives (chosen on first use when not given)."""
        return self._account.store

    @property
    def pending(self) -> int:
        """First attempts counted here and not yet deposited."""
        return self._account.deposits.pending()

    def deposit(self) -> None:
        """Count one first attempt (no I/O: flushed later in a batch)."""
        if self._count() % FLUSH_BATCH == 0 or _flusher.asleep:
            _flusher.wake()

    def withdraw(self) -> bool:
        """May a retry happen now? Takes a token if so (pending deposits travel along)."""
        account = self._account
        return account.settle(account.deposits.take(), withdraw=True)

    async def withdraw_async(self) -> bool:
        """``withdraw`` for coroutines: a database round trip runs in a worker thread."""
        if isinstance(self.store, InMemoryBudgetStore):
            return self.withdraw()
        return await asyncio.to_thread(self.withdraw)

    def flush(self) -> None:
        """Deposit every pending first attempt now (the flusher does it on its own)."""
        self._account.flush()


class _Flusher:
    """One daemon thread per process that deposits every budget's first attempts.

    It starts with the first deposit (never at import), and flushes once more at
    exit. A budget its owner dropped hands its account over, so what it counted
    is still deposited.
    """

    def __init__(self) -> None:
        self._budgets: weakref.WeakSet[RetryBudget] = weakref.WeakSet()
        self._orphans: list[_Account] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._interval = 0.5
        self.asleep = True  # no thread yet: the next deposit starts one

    def watch(self, budget: RetryBudget, account: _Account) -> None:
        with self._lock:
            self._budgets.add(budget)
            self._interval = min(self._interval, budget.flush_interval.total_seconds())
        # Live budgets are flushed by flush_all at exit; this is for collected ones.
        weakref.finalize(budget, self._adopt, account).atexit = False

    def _adopt(self, account: _Account) -> None:
        # Runs when a budget is collected: no I/O here, the thread deposits it.
        self._orphans.append(account)

    def wake(self) -> None:
        if self.asleep:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="resilient_circuit-budget-flusher", daemon=True
                    )
                    self._thread.start()
                self.asleep = False
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush_all()

    def flush_all(self) -> None:
        with self._lock:
            accounts = [budget._account for budget in self._budgets]
            orphans, self._orphans = self._orphans, []
        for account in accounts + orphans:
            try:
                account.flush()
            except Exception:  # a bug, not an outage: keep the thread alive
                logger.exception("flushing %r failed", account)

    def after_fork(self) -> None:
        # The thread did not survive the fork; the child starts its own when needed.
        # First attempts counted before the fork are the parent's to deposit.
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        self.asleep = True
        self._orphans = []
        for budget in list(self._budgets):
            budget._account.deposits.forget()


_flusher = _Flusher()
atexit.register(_flusher.flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_flusher.after_fork)


def __getattr__(name: str) -> Any:
    # psycopg is an optional dependency: import the PostgreSQL store on first use.
    if name == "PostgresBudgetStore":
        from resilient_circuit._budget_pg import PostgresBudgetStore

        return PostgresBudgetStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
