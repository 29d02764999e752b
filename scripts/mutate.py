"""Mutation check of the state machine's tests: does each deliberate bug fail them?

Copies the working tree to a scratch directory once, then for each mutant below
replaces one exact piece of ``resilient_circuit/_machine.py`` or ``sql/schema.sql``,
runs the machine's tests there (vectors, differential and property tests, SQL
functions; first failure stops), puts the original back, and prints which
mutants survived. Run by hand (``make mutate``), not in CI: it takes minutes.

    python scripts/mutate.py [--only ID ...] [--list] [--keep]

Exit status 1 when a mutant marked ``must_kill`` survives, or when the unmutated
copy does not pass to begin with.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MACHINE = "resilient_circuit/_machine.py"
SCHEMA = "sql/schema.sql"
# Quickest killers first: the first failure ends the run of a mutant.
TESTS = (
    "tests/test_vectors_python.py",
    "tests/test_sql_vectors.py",
    "tests/test_differential.py",
    "tests/test_sql_functions.py",
    "tests/test_machine_properties.py",
)
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: ``before`` (found exactly once in ``path``) becomes ``after``."""

    id: str
    path: str
    before: str
    after: str
    must_kill: bool = False


MUTANTS = (
    # ------------------------------------------------ the ones the tests once missed
    Mutant(
        "sql_closed_trip_integer_division",
        SCHEMA,
        "AND (_failed::bigint * _row.failure_limit_den\n"
        "                        >= _row.failure_limit_num::bigint * _len",
        "AND (_failed >= (_row.failure_limit_num::bigint * _len) / _row.failure_limit_den",
        must_kill=True,
    ),
    Mutant(
        "sql_half_open_failure_limit_integer_division",
        SCHEMA,
        "_to := CASE WHEN _failed::bigint * _row.failure_limit_den\n"
        "                                 >= _row.failure_limit_num::bigint * _size",
        "_to := CASE WHEN _failed >= (_row.failure_limit_num::bigint * _size)"
        " / _row.failure_limit_den",
        must_kill=True,
    ),
    Mutant(
        "py_half_open_failure_limit_integer_division",
        MACHINE,
        "close = not _reaches(in_window, size, cfg.failure_limit)",
        "close = not in_window >= cfg.failure_limit.numerator * size"
        " // cfg.failure_limit.denominator",
        must_kill=True,
    ),
    Mutant(
        "py_closed_trip_integer_division_rounds_down",
        MACHINE,
        "-(-f.numerator * self.window_size // f.denominator)",
        "f.numerator * self.window_size // f.denominator",
        must_kill=True,
    ),
    # ------------------------------------------------------------- Python machine
    Mutant(
        "py_closed_trip_strict",
        MACHINE,
        "in_window >= cfg.closed_trip",
        "in_window > cfg.closed_trip",
    ),
    Mutant(
        "py_success_limit_strict",
        MACHINE,
        "(length - in_window) * s.denominator >= s.numerator * size",
        "(length - in_window) * s.denominator > s.numerator * size",
    ),
    Mutant(
        "py_permit_cap_off_by_one",
        MACHINE,
        "if len(permits) < cfg.half_open_window - st.window_len:",
        "if len(permits) <= cfg.half_open_window - st.window_len:",
    ),
    Mutant(
        "py_permit_alive_at_its_expiry",
        MACHINE,
        "live = tuple(p for p in permits if p > now)",
        "live = tuple(p for p in permits if p >= now)",
    ),
    Mutant(
        "py_record_releases_newest_permit",
        MACHINE,
        "permits = _live(st.permits, now)[1:]",
        "permits = _live(st.permits, now)[:-1]",
    ),
    Mutant(
        "py_retry_after_from_latest_permit",
        MACHINE,
        "retry_after = min(permits) - now if permits else 0",
        "retry_after = max(permits) - now if permits else 0",
    ),
    Mutant(
        "py_force_open_ignores_cooldown",
        MACHINE,
        "open_until=None if hold else now + cooldown,",
        "open_until=None if hold else now,",
    ),
    Mutant(
        "py_half_open_success_keeps_failure_count",
        MACHINE,
        "failure_count = 0 if success else st.failure_count + 1",
        "failure_count = st.failure_count if success else st.failure_count + 1",
    ),
    Mutant(
        "py_closed_eviction_keeps_failure",
        MACHINE,
        "            in_window -= 1\n            bits ^= 1 << size",
        "            bits ^= 1 << size",
    ),
    Mutant(
        "py_half_open_entry_clears_failure_count",
        MACHINE,
        "HALF_OPEN, generation, 0, 0, 0, st.failure_count, None, trial,",
        "HALF_OPEN, generation, 0, 0, 0, 0, None, trial,",
    ),
    Mutant(
        "py_reconfigure_keeps_failure_tally",
        MACHINE,
        "window_failures=bits.bit_count(),",
        "window_failures=min(st.window_failures, size),",
    ),
    Mutant(
        "py_reconfigure_keeps_long_window",
        MACHINE,
        "    if st.window_len <= size:\n        return st",
        "    if True:\n        return st",
    ),
    # ------------------------------------------------------------------ PL/pgSQL
    Mutant(
        "sql_open_until_inclusive",
        SCHEMA,
        "        END IF;\n        IF _now < _row.open_until THEN",
        "        END IF;\n        IF _now <= _row.open_until THEN",
    ),
    Mutant(
        "sql_permit_cap_off_by_one",
        SCHEMA,
        "IF cardinality(_live) < coalesce(_row.success_limit_den, _row.window_size)",
        "IF cardinality(_live) <= coalesce(_row.success_limit_den, _row.window_size)",
    ),
    Mutant(
        "sql_success_limit_strict",
        SCHEMA,
        ">= _row.success_limit_num::bigint * _size",
        "> _row.success_limit_num::bigint * _size",
    ),
    Mutant(
        "sql_record_releases_newest_permit",
        SCHEMA,
        "WHERE u.expiry > _now ORDER BY u.ord\n            ))[_released + 1 :];",
        "WHERE u.expiry > _now ORDER BY u.ord DESC\n            ))[_released + 1 :];",
    ),
    Mutant(
        "sql_stale_generation_counts",
        SCHEMA,
        "CONTINUE WHEN _generation IS NOT NULL AND _generation <> _row.generation;",
        "CONTINUE WHEN false;",
    ),
    Mutant(
        "sql_fast_path_counts_stale_successes",
        SCHEMA,
        "count(*) FILTER (WHERE u.gen IS NULL OR u.gen = _row.generation),",
        "count(*),",
    ),
    Mutant(
        "sql_force_open_ignores_cooldown",
        SCHEMA,
        "open_until = CASE WHEN p_hold THEN NULL ELSE _now + _row.cooldown END,",
        "open_until = CASE WHEN p_hold THEN NULL ELSE _now END,",
    ),
    Mutant(
        "sql_reset_keeps_lifetime_counters",
        SCHEMA,
        "        successes = 0,\n        failures = 0,\n",
        "",
    ),
    Mutant(
        "sql_notify_half_open_with_old_generation",
        SCHEMA,
        "'OPEN', 'HALF_OPEN',\n                                     _row.generation + 1, NULL);",
        "'OPEN', 'HALF_OPEN',\n                                     _row.generation, NULL);",
    ),
    Mutant(
        "sql_half_open_decides_one_outcome_late",
        SCHEMA,
        "ELSIF _len >= _size THEN",
        "ELSIF _len > _size THEN",
    ),
    Mutant(
        "sql_notify_trip_without_open_until",
        SCHEMA,
        "rc_notify_transition(p_key, p_namespace, _from, _to,\n"
        "                                         _row.generation, _row.open_until);",
        "rc_notify_transition(p_key, p_namespace, _from, _to,\n"
        "                                         _row.generation, NULL);",
    ),
    Mutant(
        "sql_configure_default_window_from_numerator",
        SCHEMA,
        "_window := coalesce(p_window_size, _fden);",
        "_window := coalesce(p_window_size, _fnum);",
    ),
    Mutant(
        "sql_record_waits_for_the_disk",
        SCHEMA,
        "    -- rc_relax_commit.\n    IF pg_current_xact_id_if_assigned() IS NULL\n",
        "    -- rc_relax_commit.\n    IF false AND pg_current_xact_id_if_assigned() IS NULL\n",
        must_kill=True,
    ),
    Mutant(
        "sql_transition_commits_without_waiting_for_the_disk",
        SCHEMA,
        "    WHERE current_setting('rc.durable_commit', true) <> '';",
        "    WHERE false;",
        must_kill=True,
    ),
    Mutant(
        "sql_lean_success_ignores_its_generation",
        SCHEMA,
        "          AND (p_generation IS NULL OR p_generation = b.generation)\n",
        "",
        must_kill=True,
    ),
    Mutant(
        "sql_lean_success_in_any_state",
        SCHEMA,
        "          AND b.state = 'CLOSED' AND b.window_duration IS NULL\n",
        "          AND b.window_duration IS NULL\n",
        must_kill=True,
    ),
    Mutant(
        "sql_lean_success_grows_the_window",
        SCHEMA,
        "b.execution_log[cardinality(b.execution_log) - b.window_size + 2 :]",
        "b.execution_log[cardinality(b.execution_log) - b.window_size + 1 :]",
        must_kill=True,
    ),
    Mutant(
        "sql_lean_success_not_counted",
        SCHEMA,
        "            successes = b.successes + 1,\n",
        "            successes = b.successes,\n",
        must_kill=True,
    ),
    Mutant(
        "sql_relax_commit_after_the_callers_writes",
        SCHEMA,
        "BEGIN\n    IF pg_current_xact_id_if_assigned() IS NULL\n",
        "BEGIN\n    IF true\n",
        must_kill=True,
    ),
    Mutant(
        "sql_record_relaxes_after_the_callers_writes",
        SCHEMA,
        "    -- rc_relax_commit.\n    IF pg_current_xact_id_if_assigned() IS NULL\n",
        "    -- rc_relax_commit.\n    IF true\n",
        must_kill=True,
    ),
)


def scratch_copy() -> Path:
    """The working tree as it is (tracked and new files, not ignored ones) in a temp dir."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    target = Path(tempfile.mkdtemp(prefix="rc-mutate-"))
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    return target


def environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The scratch copy's package and tests come first, before the editable install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_isolation(scratch: Path, env: dict[str, str]) -> None:
    """The copy's package and SQL are the ones the tests will load, not the checkout's."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resilient_circuit._machine as m, resilient_circuit._installer as s;"
            "print(m.__file__); print(s._sql_root())",
        ],
        cwd=scratch,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for loaded in probe:
        if not Path(loaded).resolve().is_relative_to(scratch.resolve()):
            raise SystemExit(f"mutate: the scratch copy would load {loaded}, not its own files")


def run_tests(scratch: Path, env: dict[str, str]) -> tuple[bool, str]:
    """(passed, the first failing test or the tail of the output)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *TESTS],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TIMEOUT_S} s"
    if done.returncode == 0:
        return True, ""
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    if failed:
        return False, failed.group(1)
    return False, (done.stdout + done.stderr).strip().splitlines()[-1:][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args()

    mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:48} {m.path}{'  (must be killed)' if m.must_kill else ''}")
        return 0
    unknown = set(args.only or ()) - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")

    scratch = scratch_copy()
    env = environment(scratch)
    try:
        check_isolation(scratch, env)
        originals = {m.path: (scratch / m.path).read_text(encoding="utf-8") for m in mutants}
        for m in mutants:
            found = originals[m.path].count(m.before)
            if found != 1:
                raise SystemExit(f"mutate: {m.id}: its text occurs {found} times in {m.path}")
        started = time.monotonic()
        passed, why = run_tests(scratch, env)
        took = time.monotonic() - started
        print(f"unmutated copy: {'passes' if passed else 'FAILS'} ({took:.0f} s)")
        if not passed:
            print(f"  {why}")
            return 1
        print(f"{'mutant':48} {'file':28} {'result':9} {'s':>4}  killed by")
        survivors = []
        for m in mutants:
            target = scratch / m.path
            target.write_text(originals[m.path].replace(m.before, m.after), encoding="utf-8")
            started = time.monotonic()
            try:
                passed, why = run_tests(scratch, env)
            finally:
                target.write_text(originals[m.path], encoding="utf-8")
            result = "SURVIVED" if passed else "killed"
            if passed:
                survivors.append(m)
            took = time.monotonic() - started
            print(f"{m.id:48} {m.path:28} {result:9} {took:4.0f}  {why}", flush=True)
        killed = len(mutants) - len(survivors)
        print(f"\n{killed} of {len(mutants)} mutants killed", end="")
        must = [m.id for m in survivors if m.must_kill]
        print(f"; must-kill survivors: {', '.join(must)}" if must else "; every must-kill killed")
        return 1 if must else 0
    finally:
        if args.keep:
            print(f"scratch copy kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
