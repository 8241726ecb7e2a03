"""Validation of the security mode and TLS files before start: one line per problem, exit 2, no port opened."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from library_api.cli import app
from library_api.config import load_settings
from library_api.config.tls_files import check_tls_files
from library_api.security.issuing import Authority, write_certificate, write_key, write_revocation_list
from tests.support.certs import PKI, make_pki
from tests.support.ports import refused_port
from tests.support.processes import TEST_ENVIRONMENT
from tests.support.services import port_open

pytestmark = pytest.mark.children_unmeasured

runner = CliRunner()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    other = Authority.create("Other CA")
    other.save(pki.directory / "other")
    write_revocation_list(other, pki.directory / "other", [])
    now = dt.datetime.now(dt.UTC)
    for name, pair in {
        "server-expired": pki.authority.issue(
            "old",
            ip_addresses=["127.0.0.1"],
            usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
            not_before=now - dt.timedelta(days=20),
            days=10,
        ),
        "server-future": pki.authority.issue(
            "new",
            ip_addresses=["127.0.0.1"],
            usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
            not_before=now + dt.timedelta(days=1),
        ),
        "server-soon": pki.authority.issue(
            "soon", ip_addresses=["127.0.0.1"], usages=(ExtendedKeyUsageOID.SERVER_AUTH,), days=10
        ),
    }.items():
        write_certificate(pki.cert(name), pair[0])
        write_key(pki.key(name), pair[1])
    open_key = pki.directory / "open-key.pem"
    open_key.write_bytes(pki.key("server").read_bytes())
    open_key.chmod(0o644)
    (pki.directory / "garbage.pem").write_text("not a certificate\n")
    return pki


def tls_env(pki: PKI, **values: str) -> dict[str, str]:
    base = {"TLS_CERT_FILE": str(pki.cert("server")), "TLS_KEY_FILE": str(pki.key("server"))}
    return {**base, **values}


def run_check(env: dict[str, str]) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["--env-file", "/nonexistent/.env", "check-config"], env={**TEST_ENVIRONMENT, **env})
    return result.exit_code, result.stderr.strip().splitlines()


CASES: dict[str, tuple[dict[str, str], str]] = {
    "missing cert": (
        {"TLS_CERT_FILE": "{dir}/absent.pem"},
        "error: TLS_CERT_FILE: cannot read {dir}/absent.pem: No such file",
    ),
    "missing key": ({"TLS_KEY_FILE": "{dir}/absent-key.pem"}, "error: TLS_KEY_FILE: cannot read {dir}/absent-key.pem"),
    "cert is not PEM": (
        {"TLS_CERT_FILE": "{dir}/garbage.pem"},
        "error: TLS_CERT_FILE: {dir}/garbage.pem holds no PEM certificate",
    ),
    "key is not PEM": (
        {"TLS_KEY_FILE": "{dir}/garbage.pem"},
        "error: TLS_KEY_FILE: {dir}/garbage.pem holds no unencrypted PEM",
    ),
    "key of another certificate": (
        {"TLS_KEY_FILE": "{dir}/reader-key.pem"},
        "error: TLS_KEY_FILE: the key in {dir}/reader-key.pem does not match the certificate in TLS_CERT_FILE",
    ),
    "expired": (
        {"TLS_CERT_FILE": "{dir}/server-expired.pem", "TLS_KEY_FILE": "{dir}/server-expired-key.pem"},
        "error: TLS_CERT_FILE: the certificate in {dir}/server-expired.pem expired on",
    ),
    "not yet valid": (
        {"TLS_CERT_FILE": "{dir}/server-future.pem", "TLS_KEY_FILE": "{dir}/server-future-key.pem"},
        "error: TLS_CERT_FILE: the certificate in {dir}/server-future.pem is not valid before",
    ),
    "world-readable key": (
        {"TLS_KEY_FILE": "{dir}/open-key.pem"},
        "error: TLS_KEY_FILE: {dir}/open-key.pem is readable by every user (mode 0644)",
    ),
    "CA did not sign the server certificate": (
        {"TLS_CA_FILE": "{dir}/other/ca.pem"},
        "error: TLS_CA_FILE: no certificate in {dir}/other/ca.pem signed the server certificate",
    ),
    "CA is not PEM": (
        {"TLS_CA_FILE": "{dir}/garbage.pem"},
        "error: TLS_CA_FILE: {dir}/garbage.pem holds no PEM certificate",
    ),
    "CRL is not PEM": (
        {"TLS_CA_FILE": "{dir}/ca.pem", "TLS_CRL_FILE": "{dir}/garbage.pem"},
        "error: TLS_CRL_FILE: {dir}/garbage.pem holds no PEM certificate revocation list",
    ),
    "CRL of another CA": (
        {"TLS_CA_FILE": "{dir}/ca.pem", "TLS_CRL_FILE": "{dir}/other/crl.pem"},
        "error: TLS_CRL_FILE: the revocation list in {dir}/other/crl.pem is not signed by the CA in TLS_CA_FILE",
    ),
    "CRL without CA": ({"TLS_CRL_FILE": "{dir}/crl.pem"}, "error: TLS_CRL_FILE: a revocation list needs TLS_CA_FILE"),
    "mtls without CA": ({"SECURITY_MODE": "mtls"}, "error: SECURITY_MODE: 'mtls' needs TLS_CA_FILE"),
    "https without files": (
        {"SECURITY_MODE": "https", "TLS_CERT_FILE": "", "TLS_KEY_FILE": ""},
        "error: SECURITY_MODE: 'https' needs TLS_CERT_FILE and TLS_KEY_FILE",
    ),
    "certificate without key": ({"TLS_KEY_FILE": ""}, "error: TLS_CERT_FILE/TLS_KEY_FILE: set both"),
    "production over plain HTTP": (
        {
            "TLS_CERT_FILE": "",
            "TLS_KEY_FILE": "",
            "ENVIRONMENT": "production",
            "SECRET_KEY": "s" * 40,
            "ALLOWED_HOSTS": "library.example.org",
        },
        "error: SECURITY_MODE: production refuses plain HTTP",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_is_one_line_and_exit_2(pki: PKI, case: str) -> None:
    overrides, expected = CASES[case]
    directory = str(pki.directory)
    env = tls_env(pki, **{key: value.format(dir=directory) for key, value in overrides.items()})
    env = {key: value for key, value in env.items() if value}
    if "ENVIRONMENT" in env:
        env |= {"PASSWORD_HASH_MEMORY_KIB": "19456", "PASSWORD_HASH_TIME_COST": "2"}
    code, lines = run_check(env)
    assert code == 2
    assert any(line.startswith(expected.format(dir=directory)) for line in lines), lines


def test_production_accepts_plain_http_behind_a_proxy_when_said_so(pki: PKI) -> None:
    env = {"ENVIRONMENT": "production", "SECRET_KEY": "s" * 40, "ALLOW_HTTP_BEHIND_PROXY": "true"}
    env |= {"ALLOWED_HOSTS": "library.example.org"}
    env |= {"PASSWORD_HASH_MEMORY_KIB": "19456", "PASSWORD_HASH_TIME_COST": "2"}
    code, lines = run_check(env)
    assert code == 0, lines


def test_check_config_shows_the_decided_mode_and_certificate_summary(pki: PKI) -> None:
    env = tls_env(pki, TLS_CA_FILE=str(pki.ca), TLS_CRL_FILE=str(pki.crl))
    result = runner.invoke(app, ["--env-file", "/nonexistent/.env", "check-config"], env={**TEST_ENVIRONMENT, **env})
    assert result.exit_code == 0, result.stderr
    assert "# security mode: mtls (auto: TLS_CA_FILE is set" in result.stdout
    assert "# server certificate: CN=127.0.0.1, issued by CN=Test Library CA" in result.stdout
    assert "# client CA: CN=Test Library CA" in result.stdout
    assert "# revocation list: 0 revoked" in result.stdout


def test_a_certificate_close_to_expiry_is_a_warning_not_a_problem(pki: PKI) -> None:
    env = tls_env(pki, TLS_CERT_FILE=str(pki.cert("server-soon")), TLS_KEY_FILE=str(pki.key("server-soon")))
    result = runner.invoke(app, ["--env-file", "/nonexistent/.env", "check-config"], env={**TEST_ENVIRONMENT, **env})
    assert result.exit_code == 0
    assert f"warning: TLS_CERT_FILE: the certificate in {pki.cert('server-soon')} expires in 9 day(s)" in result.stderr


@pytest.mark.parametrize(
    ("values", "mode", "tls", "clients"),
    [
        ({}, "http", False, "none"),
        ({"cert": True}, "https", True, "none"),
        ({"cert": True, "ca": True}, "mtls", True, "required"),
        ({"cert": True, "ca": True, "SECURITY_MODE": "https"}, "https", True, "optional"),
        ({"cert": True, "SECURITY_MODE": "token"}, "token", True, "none"),
        ({"SECURITY_MODE": "token"}, "token", False, "none"),
    ],
)
def test_auto_and_explicit_modes_decide_tls_and_client_certificates(
    pki: PKI, values: dict[str, object], mode: str, tls: bool, clients: str
) -> None:
    env: dict[str, str] = {}
    if values.get("cert"):
        env |= tls_env(pki)
    if values.get("ca"):
        env["TLS_CA_FILE"] = str(pki.ca)
    env |= {key: str(value) for key, value in values.items() if key.isupper()}
    decision = load_settings(env=env, env_file=None).security
    assert (decision.mode, decision.tls, decision.client_certificates) == (mode, tls, clients)
    assert decision.requires_credentials is (mode in {"token", "mtls"})


def test_check_tls_files_reports_unreadable_ca_and_crl(tmp_path: Path) -> None:
    report = check_tls_files(None, None, tmp_path / "ca.pem", tmp_path / "crl.pem")
    assert [line.split(":")[0] for line in report.problems] == ["TLS_CA_FILE", "TLS_CRL_FILE"]


def test_serve_with_a_bad_certificate_exits_2_before_opening_a_port(pki: PKI, tmp_path: Path) -> None:
    port = refused_port()
    env = {**os.environ, **TEST_ENVIRONMENT}
    env.pop("LIBRARY_API_OVERRIDES", None)
    command = [sys.executable, "-m", "library_api", "serve", "--port", str(port), "--mode", "mtls"]
    command += ["--cert", str(pki.cert("server-expired")), "--key", str(pki.key("server"))]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    assert lines[0] == "error: SECURITY_MODE: 'mtls' needs TLS_CA_FILE, the CA that issues client certificates"
    assert lines[1].startswith(f"error: TLS_CERT_FILE: the certificate in {pki.cert('server-expired')} expired on")
    assert lines[2].startswith("error: TLS_KEY_FILE: the key in")
    assert not port_open("127.0.0.1", port)
