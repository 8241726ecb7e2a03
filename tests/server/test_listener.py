"""``serve --fd N``: a listening socket handed down by the parent is checked before anything starts.

Serving on one is what every server test does (``tests.support.processes``); here,
each way a descriptor can be unfit is refused with one readable line and exit code 2.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from library_api.server.gunicorn import gunicorn_options
from library_api.server.listener import ListenerError, address_of, inherited_listener
from tests.conftest import fast_settings
from tests.support.cli import invoke
from tests.support.ports import listening_socket, port_of


def test_a_listening_tcp_socket_is_taken_as_it_is() -> None:
    with listening_socket() as parent:
        taken = inherited_listener(parent.fileno())
        try:
            assert taken.getsockname() == parent.getsockname()
            assert address_of(taken) == f"127.0.0.1:{port_of(parent)}"
        finally:
            taken.detach()  # the same descriptor as the parent's: closed once, by the parent


def test_an_ipv6_address_is_written_in_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        assert address_of(sock) == f"[::1]:{sock.getsockname()[1]}"


def test_a_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ListenerError, match=rf"--fd {sock.fileno()}: the socket is not listening"):
            inherited_listener(sock.fileno())
        assert sock.fileno() != -1  # left open: it was the parent's to close


def test_a_udp_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ListenerError, match=rf"--fd {sock.fileno()}: not a TCP socket"):
            inherited_listener(sock.fileno())
        assert sock.fileno() != -1


def test_a_file_or_a_negative_number_is_refused(tmp_path: Path) -> None:
    with (
        (tmp_path / "plain.txt").open("w") as plain,
        pytest.raises(ListenerError, match=r"--fd \d+: not an open socket"),
    ):
        inherited_listener(plain.fileno())
    with pytest.raises(ListenerError, match=r"--fd -1: a file descriptor is a number from 0 up"):
        inherited_listener(-1)


def test_serve_reports_an_unfit_descriptor_and_exits_2(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        fd = sock.fileno()
        result = invoke(["--env-file", str(tmp_path / "none.env"), "serve", "--fd", str(fd)], env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --fd {fd}: the socket is not listening (bind it and call listen() first)"
    ]


def test_serve_refuses_a_descriptor_with_reload(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    with listening_socket() as sock:
        result = invoke(
            ["--env-file", str(tmp_path / "none.env"), "serve", "--fd", str(sock.fileno()), "--reload"], env
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --fd: reload binds a socket of its own; leave out --reload"]


def test_gunicorn_binds_the_handed_down_descriptor() -> None:
    settings = fast_settings(host="127.0.0.1", port=8123)
    assert gunicorn_options(settings)["bind"] == ["127.0.0.1:8123"]
    assert gunicorn_options(settings, 7)["bind"] == ["fd://7"]
