"""A real PostgreSQL server of the tests' own: Debian's binaries, a data and socket dir
under a temp dir, a free port on 127.0.0.1, run as the `postgres` user (initdb refuses root).

Used by tests/conftest.py (the `pg_server` fixture), by the fault tests, which stop and
start it (`pg_ctl stop -m immediate`), and by bench/scaleout.py. `find_binaries()` is None
where no server is installed; callers skip, saying so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "postgres"


def find_binaries() -> Path | None:
    """The folder with initdb/pg_ctl/postgres of the newest installed PostgreSQL, if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def why_not() -> str | None:
    """None when a server can be started here, else why not (the skip reason)."""
    if find_binaries() is None:
        return "no PostgreSQL server binaries (Debian package `postgresql`; .ci/run installs it)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no `{USER}` user to run PostgreSQL as (the Debian package creates it)"
    if os.geteuid() != 0 and pwd.getpwnam(USER).pw_uid != os.geteuid():
        return f"cannot run PostgreSQL as `{USER}` without root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgServer:
    """One initdb'd cluster: `start()`, `stop(mode)`, `url(database)`, `create_database(name)`."""

    root: Path
    port: int
    bin: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "sockets"

    def _as_postgres(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout)

    @classmethod
    def create(cls, root: Path) -> PgServer:
        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError(why_not() or "no PostgreSQL")
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root, _free_port(), binaries)
        server.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(USER)
            for path in (root, server.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        server._initdb()
        return server

    def _initdb(self) -> None:
        try:
            self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync")
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"initdb failed: {error.stderr.strip()}") from None
        settings = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.sockets}'\n"
            "max_connections = 200\n"
            "shared_buffers = 128MB\n"
            "fsync = on\n"
            "synchronous_commit = on\n"
            "log_min_messages = warning\n"
        )
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(settings)

    def start(self) -> None:
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._as_postgres("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        done = self._as_postgres(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-d", database, "-XAtq", "-c", statement
        )
        return done.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new empty (or copied from `template`) database; its URL."""
        clause = f" TEMPLATE {template}" if template else ""
        for attempt in range(50):
            try:
                self.sql(f"CREATE DATABASE {name}{clause}")
                break
            except subprocess.CalledProcessError as error:
                # A template in use by another session (a test's leftover connection) is busy for a moment.
                if "being accessed by other users" not in error.stderr or attempt == 49:
                    raise
                time.sleep(0.1)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_server(root: Path) -> PgServer:
    server = PgServer.create(root)
    server.start()
    return server


@contextmanager
def temporary_server() -> Iterator[PgServer]:
    """A started server in a new folder under the system's temp dir (pytest's own tmp
    folders are root's 0700 and the `postgres` user could not reach into them); stopped
    and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="opsdsl-pg-"))
    try:
        server = start_server(root)
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
