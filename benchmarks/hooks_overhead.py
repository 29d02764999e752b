"""The in-memory success path with no hook installed, before and after a change.

Runs ``worker_rc.py``'s breaker.success scenario (the typical policy, trip at 10%
over 10 calls, wrapping a no-op) in fresh interpreters that import the package from
two source trees, alternating them so a drift of the machine hits both alike:

    .venv/bin/python benchmarks/hooks_overhead.py [--before REF] [--runs 5]

``--before`` is a git revision (default ``main``), exported to a temporary folder;
the "after" tree is this checkout. Prints the median overhead of each, in ns per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

MEASURE = """
import json, sys
from fractions import Fraction
sys.path.insert(0, {bench!r})
from _harness import noop, overhead
import resilient_circuit
from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import InMemoryStorage
assert resilient_circuit.__file__.startswith({tree!r}), resilient_circuit.__file__
policy = CircuitProtectorPolicy(
    resource_key="bench-success", storage=InMemoryStorage(), failure_limit=Fraction(1, 10)
)
print(json.dumps(overhead(noop, policy(noop))))
"""


def export(ref: str, into: Path) -> Path:
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "resilient_circuit", "sql"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(tree: Path) -> float:
    code = MEASURE.format(bench=str(HERE), tree=str(tree))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["ns"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=5, help="runs of each tree, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = export(args.before, Path(tmp))
        results: dict[str, list[float]] = {"before": [], "after": []}
        for run in range(args.runs):
            order = [("before", before_tree), ("after", ROOT)]
            if run % 2:
                order.reverse()
            for name, tree in order:
                results[name].append(measure(tree))
    before = statistics.median(results["before"])
    after = statistics.median(results["after"])
    print(f"before ({args.before}): median {before:.1f} ns/call, best {min(results['before']):.1f}")
    print(f"after  (this tree): median {after:.1f} ns/call, best {min(results['after']):.1f}")
    print(f"change: {(after - before) / before:+.1%}")


if __name__ == "__main__":
    main()
