"""What a child process does right after ``os.fork()``, before anything else runs.

gunicorn ``--preload``, Celery's prefork pool and ``multiprocessing``'s fork start
method build the application (its policies and stores) in a parent that then
forks workers. A child inherits its parent's memory but not its threads: pooled
connections whose sockets the parent keeps using, a LISTEN thread that does not
exist, locks a vanished thread may hold, verdicts and queued outcomes that are
the parent's. Objects that hold such things register a reset here; it runs in
every child (``os.register_at_fork``), and the parent is left untouched.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ("after_fork_in_child",)

logger = logging.getLogger("resilient_circuit")

T = TypeVar("T")

_resets: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def after_fork_in_child(obj: T, reset: Callable[[T], None]) -> None:
    """Call ``reset(obj)`` in every child forked while ``obj`` is alive."""
    with _lock:
        _resets[obj] = reset


def _in_child() -> None:
    global _lock
    # Another thread of the parent may have held it at the fork.
    _lock = threading.Lock()
    for obj, reset in list(_resets.items()):
        try:
            reset(obj)
        except Exception:  # pragma: no cover - a bug; the child must still start
            logger.exception("resetting %r after fork failed", obj)


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_in_child)
