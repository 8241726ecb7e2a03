"""Container health check: ``GET /health`` on the service's own port, in the service's own protocol.

Usage: ``python /app/healthcheck.py [PATH]`` (default ``/health``; an orchestrator's exec probe may ask for
``/health/ready`` or ``/health/startup``). Exit status 0 when the service is alive, 1 otherwise, with one line on
stderr saying why. Written in Python because the runtime image has no curl.

The probe reads the settings the service reads, through the same loader (``library_api.config.load_settings``:
environment, ``.env``, ``CONFIG_FILE``), so it always speaks what the server speaks:

* **http**: plain HTTP to the loopback address of ``HOST`` on ``PORT``;
* **https** (and ``token`` with a certificate): HTTPS to the same address. The server's certificate is not
  verified: it names the service's public host, not 127.0.0.1, and it need not be issued by a CA the image
  knows. That is sound here because the probe decides liveness only: it sends no credential or data and
  believes nothing it receives beyond a 200, and only processes inside the container's own network namespace
  can listen on its loopback address;
* **mtls**: no request is served without a client certificate from ``TLS_CA_FILE``. With
  ``HEALTHCHECK_CERT_FILE`` and ``HEALTHCHECK_KEY_FILE`` (a client certificate issued for the probe, e.g. role
  ``monitor``) the probe presents it and asks for ``PATH`` like the other modes. Without them it checks the
  server one layer down: a TLS 1.3 handshake, which only a worker's event loop can complete (the same loop
  that would answer ``/health``; the kernel's backlog and Gunicorn's master cannot), after which the server
  must end the connection, refusing the missing certificate. A hung or dead set of workers fails this probe
  exactly as it would fail ``/health``.

Liveness only: ``/health`` consults no dependency, so a database outage never makes Docker restart a healthy
process.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys

TIMEOUT_SECONDS = 4.0
"""Below the image's ``HEALTHCHECK --timeout`` (5 s), so the probe reports its own reason instead of being killed."""

DEFAULT_PATH = "/health"


class Unhealthy(Exception):
    """The probe's verdict when the service is not alive, with the reason for stderr."""


def probe_host(host: str) -> str:
    """The address to probe for a ``HOST`` setting: the loopback address for a wildcard bind, else the host."""
    if host in ("", "0.0.0.0", "127.0.0.1", "localhost"):  # noqa: S104 - compared with, never bound to
        return "127.0.0.1"
    if host in ("::", "[::]", "::1"):
        return "::1"
    return host


def client_context(certificate: str | None, key: str | None) -> ssl.SSLContext:
    """A TLS client context for a loopback liveness probe (no server verification: see the module's docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate:
        context.load_cert_chain(certificate, key or None)
    return context


def get(connection: http.client.HTTPConnection, path: str) -> None:
    """``GET path`` on ``connection``; raise :class:`Unhealthy` unless the answer is 200."""
    try:
        connection.request("GET", path, headers={"Connection": "close", "User-Agent": "library-api-healthcheck"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise Unhealthy(f"{path} answered {response.status}")


def refuses_missing_certificate(host: str, port: int) -> None:
    """Complete a TLS 1.3 handshake without a certificate; expect the server to end the connection then.

    The handshake completing means a worker answered with its certificate, its certificate request and its
    Finished message. A server that requires client certificates then ends the connection (with the
    ``certificate_required`` alert, or by closing it); one that goes on is not the mtls server configured.
    """
    context = client_context(None, None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with (
        socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as raw,
        context.wrap_socket(raw) as tls,
    ):
        try:
            if tls.recv(1) == b"":
                return
        except ssl.SSLError:
            return
    raise Unhealthy("the server served a client without a certificate, but mtls requires one")


def probe(path: str) -> str:
    """Check the running service; return what was checked, or raise :class:`Unhealthy` saying what failed."""
    from library_api.config import ConfigError, load_settings  # noqa: PLC0415 - reported as a probe failure

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise Unhealthy("configuration: " + "; ".join(exc.problems)) from None
    decision = settings.security
    host, port = probe_host(settings.host), settings.port
    certificate = os.environ.get("HEALTHCHECK_CERT_FILE", "").strip() or None
    key = os.environ.get("HEALTHCHECK_KEY_FILE", "").strip() or None
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if not decision.tls:
            target = f"http://{authority}{path}"
            get(http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS), path)
        elif decision.client_certificates == "required" and certificate is None:
            target = f"mtls handshake with {authority}"
            refuses_missing_certificate(host, port)
        else:
            target = f"https://{authority}{path}"
            context = client_context(certificate, key)
            get(http.client.HTTPSConnection(host, port, timeout=TIMEOUT_SECONDS, context=context), path)
    except (Unhealthy, OSError) as exc:
        raise Unhealthy(f"{target}: {exc}") from None
    return target


def main(argv: list[str]) -> int:
    """Run the probe for ``argv[1]`` (default ``/health``) and turn the outcome into an exit status."""
    path = argv[1] if len(argv) > 1 else DEFAULT_PATH
    try:
        checked = probe(path)
    except Unhealthy as exc:
        sys.stderr.write(f"health check failed: {exc}\n")
        return 1
    sys.stdout.write(f"healthy: {checked}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
