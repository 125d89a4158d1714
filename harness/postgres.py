"""A throw-away PostgreSQL cluster for tests and benchmarks, on a free loopback port.

Usage::

    with Postgres() as pg:                 # initdb + pg_ctl start, accepting connections
        url = pg.database("t1")            # a fresh database: postgresql://...@127.0.0.1:port/t1
        pg.stop()                          # outage (immediate: like a crash)
        pg.start()                         # same port, same data

The cluster lives in a temp dir (``fsync=off``: a test cluster need not survive a power
cut, but it does survive its own crash), listens on 127.0.0.1 only, trusts local connections (no password: loopback, a
temp cluster), and is always stopped and removed on exit. It never touches the system
PostgreSQL on 5432. ``initdb`` refuses to run as root, so as root the cluster is made
and run as the ``postgres`` user (``runuser``), which the Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
USER = "controlroom"
"""The cluster's superuser (what tests connect as)."""


class PostgresError(RuntimeError):
    """The cluster could not be made or started (message includes the log's tail)."""


def bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (Debian keeps them out of PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((r for r in roots if (r / "initdb").exists()), None)


def available() -> bool:
    return bindir() is not None


class Postgres:
    """One private cluster (see the module docstring)."""

    def __init__(self, *, port: int | None = None, host: str = HOST) -> None:
        b = bindir()
        if b is None:
            raise PostgresError("PostgreSQL is not installed (Debian package 'postgresql')")
        self.bin = b
        self.host = host
        """The address it listens on (a cluster's hub address, for nodes in namespaces)."""
        if port is None:
            from harness.ports import free_tcp_port
            port = free_tcp_port()
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="controlroom-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            # initdb: "cannot be run as root"; the server neither.
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._made = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise PostgresError(f"{' '.join(args[:2])} failed: {r.stderr.strip()[-1500:]}"
                                f"\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> None:
        if not self._made:
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                      USER, "-E", "UTF8", "--no-sync", "--no-instructions")
            if self.host != HOST:  # a bridge address: let the nodes behind it in
                with (self.data / "pg_hba.conf").open("a") as f:
                    f.write(f"host all all {self.host}/24 trust\n")
            self._made = True
        # fsync=off only skips the flush to the disk: a commit is still in the kernel
        # before it returns, so a crash of the server (stop -m immediate) loses nothing;
        # synchronous_commit stays on for that reason.
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} -c fsync=off"
                " -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                  str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash (no shutdown checkpoint), which is
        what a restart mid-run looks like to the nodes."""
        if self._made and (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                      "stop")

    def database(self, name: str) -> str:
        """Create database ``name`` (empty) and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> Postgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(ImportError):
            from harness.ports import release
            release(self.port)


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    """Block until ``url`` accepts a connection."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
