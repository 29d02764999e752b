"""Worker for backoff: retry overhead, 4 tries at most, constant zero interval."""

from __future__ import annotations

import backoff
from _harness import retry_worker

if __name__ == "__main__":
    retry_worker(
        "backoff",
        backoff.on_exception(backoff.constant, Exception, max_tries=4, interval=0, jitter=None),
    )
