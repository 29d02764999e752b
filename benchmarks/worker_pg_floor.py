"""PostgreSQL housekeeping and the server's own floors, with plain psycopg.

``prepare ADMIN_DSN DBNAME...``: (re)create the benchmark databases, empty, and the
floor table in each.
``floors DSN``: per-call latency and round trips of the cheapest statements a
breaker could possibly issue, on an open autocommit connection, so the libraries'
numbers can be read against what the server itself costs.
"""

from __future__ import annotations

import argparse

import psycopg
from _harness import (
    Report,
    RoundTripCounter,
    count_round_trips,
    latencies,
    pg_conninfo,
    pg_host_port,
)
from psycopg import sql

FLOOR_TABLE = "bench_floor"


def prepare(admin_dsn: str, dbnames: list[str]) -> None:
    report = Report("psycopg", psycopg.__version__)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        report.data["info"]["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
        report.data["info"]["server_version_full"] = conn.execute("SELECT version()").fetchone()[0]
        for name in dbnames:
            # Dropped and made anew each run: every run installs the schema from
            # scratch with its own pg-setup and starts with no breaker rows, whatever
            # an earlier run (of an older version) left behind.
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    report.data["info"]["dsns"] = {name: pg_conninfo(admin_dsn, dbname=name) for name in dbnames}
    for name in dbnames:
        with psycopg.connect(pg_conninfo(admin_dsn, dbname=name), autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id int PRIMARY KEY, n bigint NOT NULL)"
            )
            conn.execute(f"INSERT INTO {FLOOR_TABLE} VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
            # The least a function of the security model costs (hot_key.py's third floor):
            # SECURITY DEFINER PL/pgSQL, search_path pinned, one reading and one updating.
            for name, body in (
                ("read", f"RETURN (SELECT n FROM public.{FLOOR_TABLE} WHERE id = p_id);"),
                (
                    "write",
                    f"UPDATE public.{FLOOR_TABLE} SET n = n + 1 WHERE id = p_id"
                    " RETURNING n INTO _n; RETURN _n;",
                ),
            ):
                conn.execute(
                    f"CREATE OR REPLACE FUNCTION public.{FLOOR_TABLE}_{name}(p_id int)"
                    " RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER"
                    " SET search_path = pg_catalog, pg_temp"
                    f" AS $$ DECLARE _n bigint; BEGIN {body} END $$"
                )
    report.emit()


def floors(dsn: str) -> None:
    report = Report("psycopg", psycopg.__version__)
    host, port = pg_host_port(dsn)
    with RoundTripCounter(host, port) as counter:
        proxied = pg_conninfo(dsn, host="127.0.0.1", port=str(counter.port))
        statements = {
            "floor.select1": ("SELECT 1", None),
            "floor.update": (f"UPDATE {FLOOR_TABLE} SET n = n + 1 WHERE id = 1", None),
            "floor.update_async": (
                f"UPDATE {FLOOR_TABLE} SET n = n + 1 WHERE id = 1",
                "-c synchronous_commit=off",
            ),
        }
        for scenario, (statement, options) in statements.items():
            with report.scenario(scenario):
                extra = {"options": options} if options else {}
                with psycopg.connect(pg_conninfo(dsn, **extra), autocommit=True) as conn:
                    result = latencies(lambda c=conn, s=statement: c.execute(s))
                with psycopg.connect(pg_conninfo(proxied, **extra), autocommit=True) as conn:
                    result.update(
                        count_round_trips(counter, lambda c=conn, s=statement: c.execute(s))
                    )
                report.ok(scenario, result)

        def connect_select_close(target: str) -> None:
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute("SELECT 1")

        with report.scenario("floor.connect"):
            result = latencies(lambda: connect_select_close(dsn), max_calls=500, warmup=10)
            result.update(
                count_round_trips(counter, lambda: connect_select_close(proxied), warmup=5)
            )
            report.ok("floor.connect", result)
    report.emit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("admin_dsn")
    p.add_argument("dbnames", nargs="+")
    f = sub.add_parser("floors")
    f.add_argument("dsn")
    args = parser.parse_args()
    try:
        if args.command == "prepare":
            prepare(args.admin_dsn, args.dbnames)
        else:
            floors(args.dsn)
    except psycopg.Error as exc:  # the server is down or refuses: say why, in the table
        report = Report("psycopg", psycopg.__version__)
        report.fail("*", exc)
        report.emit()


if __name__ == "__main__":
    main()
