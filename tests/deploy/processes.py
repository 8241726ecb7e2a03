"""Real processes for the deployment tests: nginx with the repository's configuration, Uvicorn, Gunicorn,
Prometheus, and a webhook receiver for Alertmanager. Each runs on loopback ports of its own in a temporary
directory and is always stopped.

Python servers serve on a listening socket the test binds and hands down (``pass_fds``); nginx and Prometheus,
which cannot inherit one, take ports from this xdist worker's range (:mod:`tests.support.ports`), start again on
other ports when theirs are taken, and count as started once their own process listens on them.

The nginx configuration is the repository's own, with only the addresses changed to the test's (each
substitution must match exactly once, so a change in the real file cannot go unnoticed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trustme

from tests.deploy.support import DEPLOY
from tests.support.ports import process_listens, said_address_in_use, service_port


def answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether ``url`` answers at all (any status); fails at once if ``process``, which should answer, has exited.

    For a server on an inherited socket, whose connections queue until it accepts: one that answers is this one.
    """
    if process.poll() is not None:
        raise AssertionError(f"the server exited with {process.returncode} before answering {url}")
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


@contextmanager
def running(
    command: list[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose output goes to ``log``; terminated (then killed) on the way out.

    ``pass_fds`` are descriptors the child inherits (a listening socket it serves on).
    """
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env) if env else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


@contextmanager
def on_service_port(
    command: Callable[[int], list[str]],
    *,
    log: Callable[[int], Path],
    what: str,
    env: Mapping[str, str] | None = None,
    attempts: int = 5,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A server that cannot inherit a socket (Prometheus, an exporter) and its port, from this worker's range.

    ``command(port)`` is its command line for a port and ``log(port)`` its log file. It counts as started once the
    process itself listens on the port; when it finds the port taken, it is started again on another.
    """
    for _ in range(attempts):
        port = service_port()
        with running(command(port), log=log(port), env=env) as process:
            if process_listens(process, port, 30, what):
                yield process, port
                return
        if not said_address_in_use(log(port)):
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log(port).read_text(errors='replace')}")
    raise AssertionError(f"{what} found its port taken {attempts} times")


def substitute(text: str, old: str, new: str) -> str:
    """Replace ``old`` with ``new``, insisting that ``old`` occurs exactly once."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"expected exactly one {old!r} in the nginx configuration, found {count}")
    return text.replace(old, new)


@dataclass
class NginxSite:
    """A prepared nginx prefix: configuration, certificates, uploads root and the ports it will listen on."""

    prefix: Path
    http_port: int
    https_port: int
    ca: trustme.CA
    client_ca: trustme.CA

    @property
    def config(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    @property
    def uploads(self) -> Path:
        return self.prefix / "srv" / "uploads"

    @property
    def ca_file(self) -> Path:
        return self.prefix / "ca.pem"

    @property
    def client_ca_file(self) -> Path:
        """The CA nginx verifies client certificates against (written when client certificates are on)."""
        return self.prefix / "conf" / "certs" / "client-ca.pem"

    def url(self, path: str = "/") -> str:
        return f"https://localhost:{self.https_port}{path}"

    def command(self, *extra: str, foreground: bool = False) -> list[str]:
        """The nginx command line for this prefix (``extra`` such as ``-t`` appended)."""
        nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
        assert nginx is not None
        directives = f"pid {self.prefix}/nginx.pid;"
        if os.geteuid() == 0:
            # Workers would otherwise switch to an unprivileged user that cannot enter the temporary prefix.
            directives += " user root;"
        if foreground:
            directives += " daemon off;"
        return [nginx, "-p", str(self.prefix), "-c", str(self.config), "-e", "stderr", "-g", directives, *extra]


def prepare_nginx(directory: Path, *, upstream_port: int, client_certificates: bool = False) -> NginxSite:
    """Copy deploy/nginx into ``directory`` with the test's ports, certificates and uploads directory."""
    conf = directory / "conf"
    shutil.copytree(DEPLOY / "nginx", conf)
    site = NginxSite(directory, service_port(), service_port(), trustme.CA(), trustme.CA())
    server = site.ca.issue_cert("localhost", "127.0.0.1")
    (conf / "certs").mkdir()
    (conf / "certs" / "privkey.pem").write_bytes(server.private_key_pem.bytes())
    (conf / "certs" / "fullchain.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    site.ca.cert_pem.write_to_path(str(site.ca_file))
    if client_certificates:
        site.client_ca.cert_pem.write_to_path(str(conf / "certs" / "client-ca.pem"))
        # What compose.mtls.yaml does: mtls-on.d/ mounted as mtls.d/.
        shutil.rmtree(conf / "mtls.d")
        shutil.copytree(conf / "mtls-on.d", conf / "mtls.d")
    site.uploads.mkdir(parents=True)
    (directory / "acme").mkdir()
    (directory / "logs").mkdir()

    main = (conf / "nginx.conf").read_text()
    main = substitute(main, "server api:8000;", f"server 127.0.0.1:{upstream_port};")
    main = substitute(main, "access_log /dev/stdout library_json;", f"access_log {directory}/access.log library_json;")
    (conf / "nginx.conf").write_text(main)

    servers = (conf / "library-api.conf").read_text()
    servers = substitute(servers, "listen 80 default_server;", f"listen 127.0.0.1:{site.http_port} default_server;")
    servers = substitute(servers, "listen [::]:80 default_server;", "")
    servers = substitute(
        servers, "listen 443 ssl http2 default_server;", f"listen 127.0.0.1:{site.https_port} ssl http2 default_server;"
    )
    servers = substitute(servers, "listen [::]:443 ssl http2 default_server;", "")
    servers = substitute(servers, "root /srv/library;", f"root {directory}/srv;")
    servers = substitute(servers, "root /var/www/acme;", f"root {directory}/acme;")
    (conf / "library-api.conf").write_text(servers)
    return site


def move_site(site: NginxSite) -> None:
    """Give the site new ports (its old ones were taken by the time nginx started) and rewrite its listen lines."""
    servers = site.config.parent / "library-api.conf"
    text = servers.read_text()
    http_port, https_port = service_port(), service_port()
    text = substitute(text, f"listen 127.0.0.1:{site.http_port} ", f"listen 127.0.0.1:{http_port} ")
    text = substitute(text, f"listen 127.0.0.1:{site.https_port} ", f"listen 127.0.0.1:{https_port} ")
    servers.write_text(text)
    site.http_port, site.https_port = http_port, https_port


def start_nginx(site: NginxSite, log: Path, attempts: int = 5) -> subprocess.Popen[bytes]:
    """nginx in the foreground, listening on the site's ports (moved to others when those are taken)."""
    for _ in range(attempts):
        with log.open("wb") as output:
            process = subprocess.Popen(site.command(foreground=True), stdout=output, stderr=subprocess.STDOUT)
        if process_listens(process, site.https_port, 15, "nginx") and process_listens(
            process, site.http_port, 15, "nginx"
        ):
            return process
        process.wait(timeout=10)
        if not said_address_in_use(log):
            raise AssertionError(f"nginx exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        move_site(site)
    raise AssertionError(f"nginx found its ports taken {attempts} times")


@contextmanager
def nginx_running(site: NginxSite) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground on the site's ports; stopped gracefully (SIGQUIT) on the way out."""
    log = site.prefix / "nginx.log"
    process = start_nginx(site, log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@dataclass
class Webhook:
    """An HTTP receiver of Alertmanager's webhook: every JSON body POSTed to it, in order."""

    url: str
    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far."""
        with self.lock:
            return [alert for notification in self.notifications for alert in notification["alerts"]]


@contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    """A webhook receiver on 127.0.0.1 (a free port), served from a thread until the block ends."""
    received: list[Webhook] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            """Keep the notification, answer 200."""
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with received[0].lock:
                received[0].notifications.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reports what matters."""
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.append(Webhook(f"http://127.0.0.1:{server.server_address[1]}/alerts/library-api"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
