"""Private PostgreSQL and Redis servers that a test starts, stops and restarts for real, on ports of their own.

The machine's own servers are shared by everyone; fault tests need servers of their own to kill. PostgreSQL comes
from the Debian binaries (:data:`PG_BIN`: ``TEST_PG_BIN``, else ``pg_config --bindir``, else the newest
``/usr/lib/postgresql/<major>/bin``; run as the ``postgres`` user when the tests run as root, since PostgreSQL
refuses to run as root), Redis from ``redis-server`` on PATH. Every wait polls a condition with a deadline.

Neither server can inherit a listening socket, so each takes a port from this xdist worker's own range
(:func:`tests.support.ports.service_port`), starts again on the next one when it finds the address in use, and is
ready only once the port's listening socket belongs to the very process started (not to whatever answers there).

``initdb`` runs once per test process: every private cluster is a copy of that never-started template directory.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.polling import wait_for
from tests.support.ports import (
    process_listens,
    said_address_in_use,
    service_port,
    start_on_service_port,
    wait_listening,
)
from tests.support.services import unavailable


def postgres_bin_dir() -> Path:
    """Where PostgreSQL's server binaries are: ``TEST_PG_BIN``, ``pg_config --bindir``, or the newest Debian major."""
    if configured := os.environ.get("TEST_PG_BIN"):
        return Path(configured)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30)
        candidate = Path(found.stdout.strip())
        if found.returncode == 0 and (candidate / "initdb").exists():
            return candidate
    majors = sorted(
        (path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return majors[-1] if majors else Path("/usr/lib/postgresql/bin")


PG_BIN = postgres_bin_dir()


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


@functools.cache
def _template_cluster() -> Path:
    """A cluster made by ``initdb`` once per test process and never started, for :meth:`PrivatePostgres.create`."""
    root = _private_directory()
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    template = root / "template"
    subprocess.run(
        [
            *(str(PG_BIN / "initdb"), "-D", str(template), "-U", "postgres", "--auth=trust"),
            *("-E", "UTF8", "--no-sync", "--no-instructions"),
        ],
        check=True,
        capture_output=True,
        user=_pg_user()[0],
        timeout=120,
    )
    return template


def _copy_cluster(template: Path, data_dir: Path) -> None:
    """Copy a stopped cluster's directory, owned by the user PostgreSQL runs as (it refuses any other owner)."""
    shutil.copytree(template, data_dir, symlinks=True)
    _, uid, gid = _pg_user()
    if uid is None or gid is None:
        return
    for directory, subdirectories, files in os.walk(data_dir):
        os.chown(directory, uid, gid)
        for name in (*subdirectories, *files):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, started with ``pg_ctl`` on a port of this worker's range."""

    def __init__(self, data_dir: Path, port: int, root: Path, *, durable: bool = False) -> None:
        self.data_dir = data_dir
        self.port = port
        self.root = root
        self.durable = durable
        self.started_once = False

    @property
    def log(self) -> Path:
        """The server's log (one per port it was started on)."""
        return self.root / f"postgres-{self.port}.log"

    @classmethod
    def create(cls, *, durable: bool = False) -> PrivatePostgres:
        """A new primary cluster (trust authentication, replication allowed from loopback), copied from the template.

        Clusters are fast and crash-unsafe (no fsync, asynchronous commit) unless ``durable``: a test that crashes
        the server and counts what survived needs every acknowledged commit on disk.
        """
        if not (PG_BIN / "initdb").exists():
            unavailable(f"PostgreSQL binaries not found in {PG_BIN}")
        root = _private_directory()
        instance = cls(root / "data", service_port(), root, durable=durable)
        _copy_cluster(_template_cluster(), instance.data_dir)
        return instance

    def standby(self) -> PrivatePostgres:
        """A streaming replica of this (running) cluster, made with ``pg_basebackup -R``; not started yet."""
        root = _private_directory()
        replica = PrivatePostgres(root / "data", service_port(), root)
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
        """Start the server and wait until its postmaster listens on the port.

        The first start moves to another port of the range when this one is taken; later starts (a restart the
        service's ``DATABASE_URL`` already names) must get the same port back.
        """
        if self.started_once:
            if not self._start_on(self.port):
                raise AssertionError(f"PostgreSQL could not listen on port {self.port} again:\n{self._log_tail()}")
            return
        if not self._start_on(self.port):
            self.port = start_on_service_port(self._start_on, "PostgreSQL")
        self.started_once = True

    def _start_on(self, port: int) -> bool:
        self.port = port
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {self.root} -c shared_buffers=16MB -c max_connections=60"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        user, _, _ = _pg_user()
        started = subprocess.run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "start"],
            capture_output=True,
            user=user,
            timeout=120,
            check=False,
        )
        if started.returncode != 0:
            if said_address_in_use(self.log) and not self.started_once:
                return False
            raise AssertionError(f"pg_ctl start failed ({started.returncode}):\n{self._log_tail()}")
        wait_listening(self.postmaster_pid, port, lambda: True, 30, "PostgreSQL")
        return True

    def postmaster_pid(self) -> int | None:
        """The running postmaster's process id, from ``postmaster.pid`` (None while there is none)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.isdigit() else None

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

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
    """A ``redis-server`` process on a port of this worker's range; stop and start it at will.

    Without persistence by default (a restart is empty, as after a crash); ``durable`` keeps an append-only file
    written with ``appendfsync always``, so a killed server restarts with every write it acknowledged.
    """

    def __init__(self, password: str | None = None, *, durable: bool = False) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not on PATH")
        self.port = service_port()
        self.password = password
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False
        self.directory = Path(tempfile.mkdtemp(prefix="library-redis-"))
        atexit.register(shutil.rmtree, self.directory, ignore_errors=True)

    @property
    def url(self) -> str:
        """``REDIS_URL`` for this server."""
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it listens on its port.

        The first start moves to another port of the range when this one is taken; a restart keeps the port that
        the service's ``REDIS_URL`` names.
        """
        if not self._start_on(self.port):
            if self.started_once:
                raise AssertionError(f"redis-server could not listen on port {self.port} again")
            self.port = start_on_service_port(self._start_on, "redis-server")
        self.started_once = True

    def _start_on(self, port: int) -> bool:
        self.port = port
        command = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.directory),
        ]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        log = self.directory / f"redis-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        if process_listens(process, port, 15, "redis-server"):
            self.process = process
            return True
        if said_address_in_use(log):
            return False
        raise AssertionError(f"redis-server exited with {process.returncode}:\n{log.read_text(errors='replace')}")

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


@contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres` with an empty database ``library``, destroyed on the way out; the one
    set-up of the fault tests' clusters (``durable``: a crash loses no acknowledged commit)."""
    cluster = PrivatePostgres.create(durable=durable)
    cluster.start()
    cluster.sql("CREATE DATABASE library")
    try:
        yield cluster
    finally:
        cluster.destroy()


@contextmanager
def running_redis(password: str | None = None, *, durable: bool = False) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, killed on the way out unless the test already stopped it (a paused one is
    resumed first); the one set-up of every test and fixture that needs a Redis of its own."""
    server = PrivateRedis(password, durable=durable)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.resume()
            server.stop()
