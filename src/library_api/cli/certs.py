"""``library-api certs``: a small certificate authority for mutual TLS (CA, server and client certificates, CRL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from library_api.cli.common import EXIT_CONFIG, fail

certs_app = typer.Typer(help="A small certificate authority for mutual TLS.", no_args_is_help=True)

CertsDir = Annotated[Path, typer.Option("--dir", help="The authority's directory (ca.pem, ca-key.pem, crl.pem).")]


def _authority(directory: Path) -> Any:
    from library_api.security.issuing import Authority, IssuingError

    try:
        return Authority.load(directory)
    except IssuingError as exc:
        raise fail([str(exc)]) from None


def _write_pair(directory: Path, name: str, pair: Any) -> None:
    from library_api.security.issuing import write_certificate, write_key

    certificate, key = pair
    write_certificate(directory / f"{name}.pem", certificate)
    write_key(directory / f"{name}-key.pem", key)
    typer.echo(f"wrote {directory / f'{name}.pem'} and {directory / f'{name}-key.pem'} (0600)")


@certs_app.command("init-ca")
def certs_init_ca(
    directory: CertsDir = Path("certs"),
    cn: Annotated[str, typer.Option(help="The CA's common name.")] = "Library API CA",
    days: Annotated[int, typer.Option(min=1, max=7300, help="Lifetime in days.")] = 3650,
    key_type: Annotated[str, typer.Option(help="ec (P-256) or rsa (3072 bits).")] = "ec",
    force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False,
) -> None:
    """Create a certificate authority and an empty revocation list."""
    from library_api.security.issuing import Authority, write_revocation_list

    if key_type not in {"ec", "rsa"}:
        raise fail([f"--key-type must be ec or rsa (got {key_type!r})"], EXIT_CONFIG)
    if (directory / "ca.pem").exists() and not force:
        raise fail([f"{directory / 'ca.pem'} exists; pass --force to replace the authority"])
    authority = Authority.create(cn, days, key_type)  # type: ignore[arg-type]
    authority.save(directory)
    write_revocation_list(authority, directory, [])
    typer.echo(f"created CA {cn!r} in {directory} (ca.pem, ca-key.pem 0600, crl.pem)")


@certs_app.command("server")
def certs_server(
    host: Annotated[list[str], typer.Option("--host", help="A DNS name or IP address (repeatable).")],
    directory: CertsDir = Path("certs"),
    days: Annotated[int, typer.Option(help="Lifetime in days, at most 366.")] = 365,
    name: Annotated[str, typer.Option(help="File name stem.")] = "server",
) -> None:
    """Issue a server certificate (serverAuth) for the given hosts."""
    from library_api.security.issuing import IssuingError

    try:
        pair = _authority(directory).issue_server(host, days)
    except IssuingError as exc:
        raise fail([str(exc)], EXIT_CONFIG) from None
    _write_pair(directory, name, pair)


@certs_app.command("client")
def certs_client(
    cn: Annotated[str, typer.Option(help="The client's identity (subject CN).")],
    role: Annotated[
        list[str] | None, typer.Option("--role", help="A role, written as an O attribute (repeatable).")
    ] = None,
    directory: CertsDir = Path("certs"),
    days: Annotated[int, typer.Option(min=1, max=3650, help="Lifetime in days.")] = 365,
    uri_roles: Annotated[bool, typer.Option(help="Also write the roles as urn:library-api:role: URI SANs.")] = False,
    name: Annotated[str | None, typer.Option(help="File name stem (default: the CN).")] = None,
) -> None:
    """Issue a client certificate (clientAuth) carrying roles."""
    from library_api.security.issuing import IssuingError

    try:
        pair = _authority(directory).issue_client(cn, role or [], days, uri_roles=uri_roles)
    except IssuingError as exc:
        raise fail([str(exc)], EXIT_CONFIG) from None
    stem = name or "".join(char if char.isalnum() or char in "-_." else "-" for char in cn)
    _write_pair(directory, stem, pair)


@certs_app.command("revoke")
def certs_revoke(
    file: Annotated[Path, typer.Argument(help="The certificate to revoke.")],
    directory: CertsDir = Path("certs"),
) -> None:
    """Revoke a certificate and rewrite crl.pem (running servers pick it up on their next handshake)."""
    from cryptography import x509

    from library_api.config.tls_files import signed_by
    from library_api.security.issuing import revoked_serials, write_revocation_list

    authority = _authority(directory)
    try:
        certificate = x509.load_pem_x509_certificate(file.read_bytes())
    except (OSError, ValueError) as exc:
        raise fail([f"{file} holds no PEM certificate: {exc}"]) from None
    if not signed_by(certificate, authority.certificate):
        raise fail([f"{file} was not issued by the CA in {directory}"])
    path = write_revocation_list(authority, directory, [*revoked_serials(directory), certificate.serial_number])
    typer.echo(f"revoked serial {certificate.serial_number:x}; wrote {path}")


@certs_app.command("crl")
def certs_crl(directory: CertsDir = Path("certs")) -> None:
    """Sign a fresh crl.pem with the revocations so far (run it before the list's next update, weekly)."""
    from library_api.security.issuing import revoked_serials, write_revocation_list

    serials = revoked_serials(directory)
    path = write_revocation_list(_authority(directory), directory, serials)
    typer.echo(f"wrote {path} ({len(serials)} revoked)")


@certs_app.command("show")
def certs_show(file: Annotated[Path, typer.Argument(help="A PEM certificate.")]) -> None:
    """Print a certificate's subject, issuer, validity, roles and usages."""
    from library_api.security.issuing import IssuingError, describe

    try:
        lines = describe(file)
    except IssuingError as exc:
        raise fail([str(exc)]) from None
    for line in lines:
        typer.echo(line)
