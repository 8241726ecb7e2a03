"""The runner's announcement: the security decision with its reason, and certificate warnings, logged at start."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from library_api.security.issuing import Authority, write_certificate, write_key
from library_api.server.runner import announce
from tests.conftest import fast_settings
from tests.support.logs import captured_log


def test_the_decision_and_a_close_expiry_are_logged(tmp_path: Path) -> None:
    authority = Authority.create("Runner CA")
    certificate, key = authority.issue(
        "127.0.0.1",
        ip_addresses=["127.0.0.1"],
        usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        days=6,
    )
    write_certificate(tmp_path / "server.pem", certificate)
    write_key(tmp_path / "server-key.pem", key)
    settings = fast_settings(tls_cert_file=tmp_path / "server.pem", tls_key_file=tmp_path / "server-key.pem")
    with captured_log() as log:
        announce(settings)
    messages = [record["message"] for record in log.records("library_api.server")]
    assert messages[0] == (
        "security mode https (auto: TLS_CERT_FILE and TLS_KEY_FILE are set and no TLS_CA_FILE); TLS on, "
        "client certificates none"
    )
    assert messages[1].startswith(f"TLS_CERT_FILE: the certificate in {tmp_path / 'server.pem'} expires in 4 day(s)")
