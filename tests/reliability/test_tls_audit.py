"""The TLS audit: sslyze against the real server in ``https`` and ``mtls`` modes, and our own refused handshakes.

One ``library-api serve`` process per mode (certificates from the service's own authority, see
:mod:`tests.support.certs`). sslyze runs every scan command the Mozilla checker needs and the scan is judged
twice: by sslyze's own checker against the Mozilla *intermediate* profile (sslyze ships the profile as JSON), and
by our stricter rules: no SSL 2/3 and no TLS 1.0/1.1 accepted, every TLS 1.2 suite ECDHE with an AEAD cipher
(no DHE, no CBC, no RSA key exchange), TLS 1.3 supported. Apart from sslyze, plain Python ``ssl`` clients that
offer only DHE suites, only CBC suites, or at most TLS 1.1 must be refused by the server.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
from sslyze.plugins.openssl_cipher_suites.implementation import CipherSuitesScanResult
from sslyze.scanner.models import ScanCommandsExtraArguments, ServerScanRequest, ServerScanResult, ServerScanStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ClientAuthenticationCredentials, ServerNetworkConfiguration, ServerNetworkLocation

from tests.reliability.conftest import Record
from tests.support.certs import PKI
from tests.support.processes import ServerProcess

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("tls-audit")]

REFUSED_VERSIONS = ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites")
"""sslyze results for protocol versions the server must not speak at all."""

DHE_ONLY = "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
CBC_ONLY = "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:AES128-SHA"
"""Client offers that a server following the intermediate profile without DHE or CBC must refuse."""

TOLERATED_EXTRA_CURVES = {"X448", "secp521r1"}
"""Key-exchange groups OpenSSL enables by default beyond the profile's X25519, P-256 and P-384. Both are stronger
than the profile's; Python 3.11's ``ssl`` can only narrow the list to a single curve (``set_ecdh_curve``), which
would drop X25519, so the service keeps OpenSSL's list and the audit allows exactly these two extras."""


@pytest.fixture(scope="module", params=["https", "mtls"])
def tls_server(
    request: pytest.FixtureRequest, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    mode = str(request.param)
    directory = tmp_path_factory.mktemp(f"tls-audit-{mode}")
    args: tuple[str, ...] = ("--mode", mode, "--cert", str(pki.cert("server")), "--key", str(pki.key("server")))
    if mode == "mtls":
        args += ("--ca", str(pki.ca))
    # The audit reads the server's TLS configuration from outside; the code behind it is measured in tests/server.
    url = f"sqlite+aiosqlite:///{directory}/library.db"
    server = ServerProcess(database_url=url, directory=directory, args=args, scheme="https", measured=False).launch()
    try:
        server.wait_ready(verify=pki.client_context("reader"))
        yield mode, server
    finally:
        server.stop()


def port_of(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def scan(pki: PKI, mode: str, server: ServerProcess) -> ServerScanResult:
    """One sslyze scan of ``server`` with every command the Mozilla checker needs (and the test CA trusted)."""
    credentials = None
    if mode == "mtls":
        credentials = ClientAuthenticationCredentials(
            certificate_chain_path=pki.cert("reader"), key_path=pki.key("reader")
        )
    request = ServerScanRequest(
        server_location=ServerNetworkLocation("127.0.0.1", port_of(server)),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication="127.0.0.1", tls_client_auth_credentials=credentials, network_timeout=10
        ),
        scan_commands=set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER),
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=pki.ca)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    results = list(scanner.get_results())
    assert len(results) == 1
    result = results[0]
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    assert result.scan_result is not None
    for command in SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER:
        attempt = getattr(result.scan_result, command.value)
        trace = "".join(attempt.error_trace.format()) if attempt.error_trace else ""
        assert attempt.error_reason is None, f"{command.value}: {attempt.error_reason}\n{trace}"
    return result


def cipher_result(result: ServerScanResult, name: str) -> CipherSuitesScanResult:
    assert result.scan_result is not None
    attempt = getattr(result.scan_result, name)
    assert attempt.result is not None, f"{name}: {attempt.error_reason} {attempt.error_trace}"
    found: CipherSuitesScanResult = attempt.result
    return found


# sslyze's bundled trust stores hold an old root with a negative serial number, which cryptography warns about
# when sslyze loads them (the warning is about those stores, not about the server under audit).
@pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
def test_sslyze_finds_the_mozilla_intermediate_profile_and_nothing_weaker(
    pki: PKI, tls_server: tuple[str, ServerProcess], figures: Record
) -> None:
    mode, server = tls_server
    result = scan(pki, mode, server)

    for name in REFUSED_VERSIONS:
        refused = cipher_result(result, name)
        assert not refused.is_tls_version_supported, (
            name,
            [s.cipher_suite.name for s in refused.accepted_cipher_suites],
        )

    tls12 = [
        accepted.cipher_suite.name for accepted in cipher_result(result, "tls_1_2_cipher_suites").accepted_cipher_suites
    ]
    assert tls12, "TLS 1.2 must be offered (the intermediate profile keeps it for older clients)"
    for suite in tls12:
        assert suite.startswith("TLS_ECDHE_"), f"{suite}: TLS 1.2 key exchange must be ECDHE (no DHE, no RSA)"
        assert "_GCM_" in suite or "CHACHA20_POLY1305" in suite, f"{suite}: TLS 1.2 cipher must be AEAD (no CBC)"
    tls13 = cipher_result(result, "tls_1_3_cipher_suites")
    assert tls13.is_tls_version_supported and tls13.accepted_cipher_suites

    profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    assert result.scan_result is not None and result.scan_result.elliptic_curves.result is not None
    curves = {curve.name for curve in result.scan_result.elliptic_curves.result.supported_curves or []}
    assert "X25519" in curves and curves & profile.tls_curves == profile.tls_curves, curves
    assert curves - profile.tls_curves <= TOLERATED_EXTRA_CURVES, curves
    try:
        check_server_against_tls_configuration(result, profile)
        issues: dict[str, str] = {}
    except ServerNotCompliantWithTlsConfiguration as found:
        issues = found.issues
    # Only the extra curves may differ from the profile; any other issue (versions, suites, certificate, key
    # sizes, vulnerabilities) fails here.
    assert set(issues) <= {"tls_curves"}, issues
    figures(
        mode=mode,
        mozilla_intermediate="compliant" if not issues else "compliant but for curves",
        extra_curves="+".join(sorted(curves - profile.tls_curves)) or "none",
        tls12_suites=len(tls12),
        tls13_suites=len(tls13.accepted_cipher_suites),
        refused="SSLv2,SSLv3,TLSv1.0,TLSv1.1",
    )


@pytest.mark.parametrize(
    "offer",
    [{"ciphers": DHE_ONLY}, {"ciphers": CBC_ONLY}, {"maximum": ssl.TLSVersion.TLSv1_1}],
    ids=["dhe-only", "cbc-only", "tls1.1"],
)
def test_python_clients_offering_only_dhe_cbc_or_old_versions_are_refused(
    pki: PKI, tls_server: tuple[str, ServerProcess], offer: dict[str, object]
) -> None:
    _, server = tls_server
    context = pki.client_context("reader", **offer)  # type: ignore[arg-type]
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get(server.base_url + "/health", verify=context, timeout=10)
    message = str(refused.value)
    # A refusal by our own client would name NO_CIPHERS_AVAILABLE or NO_PROTOCOLS_AVAILABLE: the offer was sent,
    # and the server answered it with an alert (or closed the connection).
    assert "NO_CIPHERS_AVAILABLE" not in message and "NO_PROTOCOLS_AVAILABLE" not in message, message
    assert any(word in message for word in ("HANDSHAKE_FAILURE", "PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")), (
        message
    )
    accepted = pki.client_context("reader")
    accepted.maximum_version = ssl.TLSVersion.TLSv1_2
    assert httpx.get(server.base_url + "/health", verify=accepted, timeout=10).status_code == 200
