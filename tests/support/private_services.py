"""Private PostgreSQL and Redis servers that a test starts, stops and restarts for real, on free ports.

The machine's own servers are shared by everyone; fault tests need servers of their own to kill. PostgreSQL comes
from the Debian binaries (``/usr/lib/postgresql/15/bin``, run as the ``postgres`` user when the tests run as root,
since PostgreSQL refuses to run as root), Redis from ``redis-server`` on PATH. Every wait polls a condition with
a deadline.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.services import free_port, unavailable

PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pg_user() -> tuple[str | None, int | None, int | None]:
    if os.geteuid() != 0:
        return None, None, None
    entry = pwd.getpwnam("postgres")
    return "postgres", entry.pw_uid, entry.pw_gid


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, started with ``pg_ctl`` on a free port."""

    def __init__(self, data_dir: Path, port: int, root: Path, *, durable: bool = False) -> None:
        self.data_dir = data_dir
        self.port = port
        self.root = root
        self.durable = durable
        self.log = root / f"postgres-{port}.log"

    @classmethod
    def create(cls, *, durable: bool = False) -> PrivatePostgres:
        """Initialise a new primary cluster (trust authentication, replication allowed from loopback).

        Clusters are fast and crash-unsafe (no fsync, asynchronous commit) unless ``durable``: a test that crashes
        the server and counts what survived needs every acknowledged commit on disk.
        """
        if not (PG_BIN / "initdb").exists():
            unavailable(f"PostgreSQL binaries not found in {PG_BIN}")
        root = _private_directory()
        instance = cls(root / "data", free_port(), root, durable=durable)
        instance._run(
            [
                *(str(PG_BIN / "initdb"), "-D", str(instance.data_dir), "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--no-sync", "--no-instructions"),
            ]
        )
        return instance

    def standby(self) -> PrivatePostgres:
        """A streaming replica of this (running) cluster, made with ``pg_basebackup -R``; not started yet."""
        root = _private_directory()
        replica = PrivatePostgres(root / "data", free_port(), root)
        replica._run(
            [
                *(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"),
                *("-D", str(replica.data_dir), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast"),
            ]
        )
        return replica

    def _run(self, command: list[str]) -> None:
        user, _, _ = _pg_user()
        subprocess.run(command, check=True, capture_output=True, user=user, timeout=120)

    @property
    def url(self) -> str:
        """The admin URL (database ``postgres``) for asyncpg."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        """The service's ``DATABASE_URL`` for database ``name`` on this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c shared_buffers=16MB -c max_connections=60"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "start"])
        wait_for(lambda: accepts(self.port), 30, f"PostgreSQL on port {self.port}")

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are disconnected) and wait until the port is closed."""
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        wait_for(lambda: not accepts(self.port), 30, f"PostgreSQL on port {self.port} to stop")

    def crash(self) -> None:
        """Stop the server the way a crash would (``immediate``: no checkpoint, recovery on the next start)."""
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"])
        wait_for(lambda: not accepts(self.port), 30, f"PostgreSQL on port {self.port} to stop")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with ``psql`` and return its unaligned output."""
        user, _, _ = _pg_user()
        result = subprocess.run(
            [
                *(str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database),
                *("-At", "-v", "ON_ERROR_STOP=1", "-c", statement),
            ],
            check=True,
            capture_output=True,
            text=True,
            user=user,
            timeout=60,
        )
        return result.stdout.strip()

    def destroy(self) -> None:
        """Stop the server if it runs and delete its files."""
        if accepts(self.port):
            subprocess.run(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                user=_pg_user()[0],
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _private_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="library-pg-", dir="/tmp"))
    _, uid, gid = _pg_user()
    if uid is not None and gid is not None:
        os.chown(directory, uid, gid)
    return directory


class PrivateRedis:
    """A ``redis-server`` process on a free port; stop and start it at will.

    Without persistence by default (a restart is empty, as after a crash); ``durable`` keeps an append-only file
    written with ``appendfsync always``, so a killed server restarts with every write it acknowledged.
    """

    def __init__(self, password: str | None = None, *, durable: bool = False) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not on PATH")
        self.port = free_port()
        self.password = password
        self.directory = Path(tempfile.mkdtemp(prefix="library-redis-")) if durable else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``REDIS_URL`` for this server."""
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.directory is None:
            command += ["--appendonly", "no"]
        else:
            command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: accepts(self.port), 15, f"Redis on port {self.port}")

    def stop(self) -> None:
        """Kill the server and wait until the port is closed."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=15)
            self.process = None
        wait_for(lambda: not accepts(self.port), 15, f"Redis on port {self.port} to stop")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
