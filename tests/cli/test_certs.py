"""``library-api certs``: a CA, server and client certificates with roles, revocation and the CRL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from library_api.cli import app
from library_api.config.tls_files import check_tls_files

runner = CliRunner()


def certs(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["certs", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def authority(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    assert certs("init-ca", "--dir", str(directory))[0] == 0
    return directory


def test_init_ca_writes_a_ca_a_private_key_and_an_empty_crl(authority: Path) -> None:
    assert stat.S_IMODE((authority / "ca-key.pem").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((authority / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert len(x509.load_pem_x509_crl((authority / "crl.pem").read_bytes())) == 0
    code, _, err = certs("init-ca", "--dir", str(authority))
    assert code == 1 and "exists; pass --force" in err


def test_server_and_client_certificates_make_a_valid_tls_setup(authority: Path) -> None:
    code, out, _ = certs("server", "--dir", str(authority), "--host", "127.0.0.1", "--host", "api.example.test")
    assert code == 0 and "server-key.pem (0600)" in out
    code, _, _ = certs("client", "--dir", str(authority), "--cn", "alice", "--role", "librarian", "--role", "monitor")
    assert code == 0
    server = x509.load_pem_x509_certificate((authority / "server.pem").read_bytes())
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days <= 366
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["api.example.test"]
    client = x509.load_pem_x509_certificate((authority / "alice.pem").read_bytes())
    roles = {a.value for a in client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)}
    assert roles == {"librarian", "monitor"}
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert stat.S_IMODE((authority / "alice-key.pem").stat().st_mode) == 0o600
    report = check_tls_files(
        authority / "server.pem", authority / "server-key.pem", authority / "ca.pem", authority / "crl.pem"
    )
    assert report.problems == []


def test_server_lifetime_is_capped_and_hosts_are_required(authority: Path) -> None:
    code, _, err = certs("server", "--dir", str(authority), "--host", "x.test", "--days", "400")
    assert code == 2 and "--days must be between 1 and 366" in err
    code, _, err = certs("server", "--dir", str(authority), "--host", "")
    assert code == 2 and "a server certificate needs at least one --host" in err


def test_revoke_adds_the_serial_to_a_freshly_signed_crl(authority: Path) -> None:
    certs("client", "--dir", str(authority), "--cn", "bob", "--role", "reader")
    serial = x509.load_pem_x509_certificate((authority / "bob.pem").read_bytes()).serial_number
    code, out, _ = certs("revoke", "--dir", str(authority), str(authority / "bob.pem"))
    assert code == 0 and f"{serial:x}" in out
    crl = x509.load_pem_x509_crl((authority / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    code, out, _ = certs("crl", "--dir", str(authority))
    assert code == 0 and "(1 revoked)" in out


def test_revoke_refuses_a_certificate_of_another_ca(authority: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs("init-ca", "--dir", str(other))
    certs("client", "--dir", str(other), "--cn", "eve")
    code, _, err = certs("revoke", "--dir", str(authority), str(other / "eve.pem"))
    assert code == 1 and "was not issued by the CA" in err


def test_show_prints_roles_usages_and_uri_roles(authority: Path) -> None:
    certs("client", "--dir", str(authority), "--cn", "erin", "--role", "librarian", "--uri-roles")
    code, out, _ = certs("show", str(authority / "erin.pem"))
    assert code == 0
    assert "subject: CN=erin,O=librarian" in out
    assert "roles (O): librarian" in out
    assert "extended key usage: clientAuth" in out
    assert "alternative names: urn:library-api:role:librarian" in out


def test_commands_without_a_ca_or_with_bad_input_fail_with_one_line(tmp_path: Path) -> None:
    code, _, err = certs("client", "--dir", str(tmp_path / "none"), "--cn", "x")
    assert code == 1 and "no certificate authority in" in err
    code, _, err = certs("show", str(tmp_path / "missing.pem"))
    assert code == 1 and "holds no PEM certificate" in err
    code, _, err = certs("init-ca", "--dir", str(tmp_path / "x"), "--key-type", "dsa")
    assert code == 2 and "--key-type must be ec or rsa" in err


def test_rsa_authority_issues_clients(tmp_path: Path) -> None:
    directory = tmp_path / "rsa"
    assert certs("init-ca", "--dir", str(directory), "--key-type", "rsa")[0] == 0
    assert certs("client", "--dir", str(directory), "--cn", " ")[0] == 2
    assert certs("client", "--dir", str(directory), "--cn", "svc", "--role", "monitor")[0] == 0
    key = (directory / "ca-key.pem").read_text()
    assert key.startswith("-----BEGIN PRIVATE KEY-----")
