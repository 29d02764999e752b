"""Circuit breaker and retry whose breaker state is shared through PostgreSQL.

The breaker's state machine runs inside PostgreSQL (``resilient-circuit-cli
pg-setup`` installs it), so every process and host of an application shares one
breaker; without a database the same state machine runs in memory.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from resilient_circuit._machine import CircuitState
from resilient_circuit._testing import is_testing, set_testing
from resilient_circuit.backoff import ExponentialDelay, FixedDelay
from resilient_circuit.circuit_breaker import (
    CircuitProtectorPolicy,
    CircuitStatus,
    ExecutionLog,
    StatusChangeListener,
)
from resilient_circuit.exceptions import (
    ProtectedCallError,
    ProtectionException,
    RetryLimitReached,
    SchemaNotReady,
    StorageAccessDenied,
    StorageNotUsable,
)
from resilient_circuit.failsafe import SafetyNet
from resilient_circuit.instrumentation import (
    CallDuringOutage,
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSlow,
    CallSucceeded,
    Event,
    Hook,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
    StorageAvailable,
    StorageOutageEnded,
    StorageOutageStarted,
    add_hook,
    get_hooks,
    remove_hook,
    set_hooks,
)
from resilient_circuit.policy import ProtectionPolicy
from resilient_circuit.retry import (
    GiveUpEvent,
    GiveUpHook,
    RetryEvent,
    RetryHook,
    RetryWithBackoffPolicy,
)
from resilient_circuit.retry_budget import RetryBudget
from resilient_circuit.storage import StorageError

try:
    __version__ = version("resilient_circuit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = (
    "CallDuringOutage",
    "CallFailed",
    "CallIgnored",
    "CallRejected",
    "CallSlow",
    "CallSucceeded",
    "CircuitProtectorPolicy",
    "CircuitState",
    "CircuitStatus",
    "Event",
    "ExecutionLog",
    "ExponentialDelay",
    "FixedDelay",
    "GiveUpEvent",
    "GiveUpHook",
    "Hook",
    "ProtectedCallError",
    "ProtectionException",
    "ProtectionPolicy",
    "RetryBudget",
    "RetryEvent",
    "RetryGaveUp",
    "RetryHook",
    "RetryLimitReached",
    "RetryScheduled",
    "RetryWithBackoffPolicy",
    "SafetyNet",
    "SchemaNotReady",
    "StateChanged",
    "StatusChangeListener",
    "StorageAccessDenied",
    "StorageAvailable",
    "StorageError",
    "StorageNotUsable",
    "StorageOutageEnded",
    "StorageOutageStarted",
    "__version__",
    "add_hook",
    "get_hooks",
    "is_testing",
    "remove_hook",
    "set_hooks",
    "set_testing",
)
