"""Worker for stamina: retry overhead, 4 attempts at most, zero wait and jitter."""

from __future__ import annotations

import stamina
from _harness import retry_worker

if __name__ == "__main__":
    # stamina's default instrumentation logs a WARNING per retry, which with no
    # logging configured is written to stderr: that would time the terminal, not the
    # retry. Turned off, as a service would route it anyway.
    stamina.instrumentation.set_on_retry_hooks([])
    retry_worker(
        "stamina",
        stamina.retry(on=Exception, attempts=4, wait_initial=0, wait_max=0, wait_jitter=0),
    )
