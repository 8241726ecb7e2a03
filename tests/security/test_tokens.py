"""Access tokens: anything expired, tampered, foreign or unsigned is a 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.security.tokens import InvalidToken, TokenService
from tests.support.factories import bearer, create_user, token_for


def forge(ctx: AppContext, **claims: object) -> str:
    base: dict[str, object] = {
        "sub": "1",
        "role": "admin",
        "ver": 0,
        "typ": "access",
        "iss": ctx.settings.jwt_issuer,
        "aud": ctx.settings.jwt_audience,
        "iat": int(time.time()),
        "exp": int(time.time()) + 600,
        "jti": "x",
    }
    base.update(claims)
    key = str(claims.pop("_key", ctx.settings.secret_key.get_secret_value()))
    base.pop("_key", None)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm="HS256")


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/auth/me", headers=bearer(token))


async def test_valid_token_works(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    await create_user(ctx)  # another account, so that answering with the wrong one would show
    response = await me(client, token_for(ctx, user))
    assert response.status_code == 200
    assert (response.json()["id"], response.json()["email"], response.json()["role"]) == (user.id, user.email, "reader")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 60},
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"typ": "refresh"},
        {"jti": None},
        {"sub": "not-a-number"},
        {"_key": "a-different-secret-of-sufficient-length"},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "wrong-type", "missing-jti", "bad-subject", "foreign-key"],
)
async def test_rejected_tokens(client: httpx.AsyncClient, ctx: AppContext, claims: dict[str, object]) -> None:
    user = await create_user(ctx)
    token = forge(ctx, **{"sub": str(user.id), "role": user.role, **claims})
    response = await me(client, token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"


async def test_tampered_payload_is_rejected(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    header, payload, signature = token_for(ctx, user).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert (await me(client, f"{header}.{forged}.{signature}")).status_code == 401


async def test_alg_none_is_rejected(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    unsigned = jwt.encode(
        {
            "sub": str(user.id),
            "role": "admin",
            "ver": 0,
            "typ": "access",
            "iss": ctx.settings.jwt_issuer,
            "aud": ctx.settings.jwt_audience,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
            "jti": "n",
        },
        key=None,
        algorithm="none",
    )
    assert (await me(client, unsigned)).status_code == 401


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc"])
async def test_malformed_authorization_headers(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/api/v1/books", headers={"Authorization": header})
    assert response.status_code == 401  # a credential that is present but wrong is never treated as anonymous


async def test_token_of_a_deleted_account_is_rejected(client: httpx.AsyncClient, ctx: AppContext) -> None:
    token = ctx.tokens.issue_access(
        user_id=987654, role="reader", token_version=0, now=utcnow() - timedelta(seconds=1)
    ).token
    assert (await me(client, token)).status_code == 401


def _claims(ctx: AppContext, user_id: int) -> dict[str, object]:
    now = int(time.time())
    return {
        "sub": str(user_id),
        "role": "admin",
        "ver": 0,
        "typ": "access",
        "iss": ctx.settings.jwt_issuer,
        "aud": ctx.settings.jwt_audience,
        "iat": now,
        "exp": now + 600,
        "jti": "confused",
    }


def _hmac_token(claims: dict[str, object], key: bytes, algorithm: str) -> str:
    """An HMAC-signed JWT assembled by hand, as an attacker would (PyJWT refuses a PEM or short key as HMAC key)."""
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[algorithm]

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": algorithm, "typ": "JWT"}).encode()
    signing_input = part(header) + "." + part(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{part(signature)}"


async def test_algorithm_confusion_is_rejected(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = _claims(ctx, user.id)
    secret = ctx.settings.secret_key.get_secret_value()
    forgeries = {
        "rs256-signed": jwt.encode(claims, private_key, algorithm="RS256"),
        "hs256-with-public-key": _hmac_token(claims, public_pem, "HS256"),
        "hs512-with-the-real-secret": _hmac_token(claims, secret.encode(), "HS512"),
    }
    for name, token in forgeries.items():
        response = await me(client, token)
        assert response.status_code == 401, name
        assert response.headers["content-type"] == "application/problem+json"
    genuine = await me(client, _hmac_token(claims, secret.encode(), "HS256"))
    assert genuine.status_code == 200
    # the account's own role, not the one the claims name
    assert (genuine.json()["id"], genuine.json()["email"], genuine.json()["role"]) == (user.id, user.email, "reader")


def test_a_remembered_token_still_expires(ctx: AppContext) -> None:
    now = [time.time()]
    tokens = TokenService(ctx.settings, clock=lambda: now[0])
    lifetime = timedelta(minutes=ctx.settings.access_token_expire_minutes)
    issued = tokens.issue_access(
        user_id=7, role="reader", token_version=0, now=utcnow() - lifetime - timedelta(seconds=1)
    )
    # expired a second ago, inside the 5 s leeway: verified once, remembered, and answered from memory next time
    assert tokens.verify_access(issued.token).user_id == 7
    now[0] += 1
    assert tokens.verify_access(issued.token).user_id == 7
    now[0] += 4  # past the expiry plus the leeway, by the service's clock: refused from memory too
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify_access(issued.token)
