"""Worker for tenacity: retry overhead, 4 attempts at most, no wait."""

from __future__ import annotations

import tenacity
from _harness import retry_worker

if __name__ == "__main__":
    stop = tenacity.stop_after_attempt(4)
    retry_worker("tenacity", tenacity.retry(stop=stop, wait=tenacity.wait_none(), reraise=True))
