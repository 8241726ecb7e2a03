"""Forgotten passwords for operators: ``library-api users reset-password`` and the reset settings' checks.

The command runs in this process beside the serving application, on the same database (SQLite and PostgreSQL),
and its mail reaches the real SMTP server of this package's ``conftest``.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from typer.testing import CliRunner, Result

from library_api.cli.main import app as cli_app
from library_api.config import ConfigError, load_settings
from library_api.security.permissions import Role
from tests.notifications.conftest import StartApp
from tests.notifications.test_password_reset import CONFIRM, NEW_PASSWORD, RESET_URL, login, mail_to, start, token_in
from tests.support.certs import ServerTls
from tests.support.cli import SETTING_PREFIXES
from tests.support.factories import bearer, create_user
from tests.support.http import client_for
from tests.support.polling import wait_until
from tests.support.smtp import SmtpServer


async def run_cli(arguments: list[str], env: dict[str, str], stdin: str | None = None) -> Result:
    """``library-api`` in this process, on a thread of its own (the command runs its own event loop), while
    this loop goes on serving the application (whose mail sender may hold SQLite's write lock for a moment)."""
    environment: dict[str, str | None] = {key: None for key in os.environ if key.startswith(SETTING_PREFIXES)}
    environment.update(env)
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, cli_app, arguments, input=stdin, env=environment, catch_exceptions=False
    )


async def test_operators_mail_print_or_set(
    smtp: SmtpServer, start_app: StartApp, tls: ServerTls, committed_url: str
) -> None:
    ctx, app = await start(start_app, smtp)
    user = await create_user(ctx, Role.READER)
    env = {"DATABASE_URL": committed_url, "PASSWORD_RESET_URL": RESET_URL, "PASSWORD_HASH_MEMORY_KIB": "1024"}
    mail_env = {
        **env,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_CA_FILE": str(tls.ca_file),
        "EMAIL_FROM": "noreply@library.example.com",
    }

    mailed = await run_cli(["users", "reset-password", user.email], mail_env)
    assert mailed.exit_code == 0, mailed.output
    assert f"queued a reset link for {user.email}" in mailed.stdout
    mailed_token = token_in(await mail_to(smtp, user.email))  # the running service delivers what the command queued

    printed = await run_cli(["users", "reset-password", "--print-link", user.email], env)
    assert printed.exit_code == 0, printed.output
    link = printed.stdout.strip()
    assert link.startswith(f"{RESET_URL}#token=")
    async with client_for(app) as http:
        stale = await http.post(CONFIRM, json={"token": mailed_token, "password": NEW_PASSWORD})
        assert stale.status_code == 410  # the printed link replaced the mailed one
        fresh = await http.post(CONFIRM, json={"token": link.partition("#token=")[2], "password": NEW_PASSWORD})
        assert fresh.status_code == 204, fresh.text
        access = (await login(http, user.email, NEW_PASSWORD)).json()["access_token"]

        stdin = "set-by-operator-7\n"
        chosen = await run_cli(["users", "reset-password", "--password-stdin", user.email], env, stdin=stdin)
        assert chosen.exit_code == 0, chosen.output
        assert "every session of the account has ended" in chosen.stdout

        async def refused() -> bool:  # the command is another process: this one sees it within the cache's TTL
            return (await http.get("/api/v1/auth/me", headers=bearer(access))).status_code == 401

        await wait_until(refused, within=10, what="the old access token to be refused")
        assert (await login(http, user.email, "set-by-operator-7")).status_code == 200


async def test_operator_command_refusals(committed_url: str) -> None:
    env = {"DATABASE_URL": committed_url}
    both = await run_cli(["users", "reset-password", "--print-link", "--password-stdin", "a@example.org"], env)
    no_url = await run_cli(["users", "reset-password", "--print-link", "a@example.org"], env)
    no_mail = await run_cli(["users", "reset-password", "a@example.org"], {**env, "PASSWORD_RESET_URL": RESET_URL})
    nobody = await run_cli(
        ["users", "reset-password", "--print-link", "nobody@example.org"], {**env, "PASSWORD_RESET_URL": RESET_URL}
    )
    weak = await run_cli(["users", "reset-password", "--password-stdin", "nobody@example.org"], env, stdin="short\n")
    unknown = await run_cli(
        ["users", "reset-password", "--password-stdin", "nobody@example.org"], env, stdin=NEW_PASSWORD
    )
    assert (both.exit_code, no_url.exit_code, no_mail.exit_code) == (2, 2, 2)
    assert "choose one of --print-link and --password-stdin" in both.stderr
    assert "PASSWORD_RESET_URL" in no_url.stderr
    assert "SMTP_HOST and PASSWORD_RESET_URL" in no_mail.stderr
    assert nobody.exit_code == 1 and "no active account" in nobody.stderr
    assert weak.exit_code == 1 and "at least 8 characters" in weak.stderr
    assert unknown.exit_code == 1 and "No account has this e-mail address" in unknown.stderr


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"PASSWORD_RESET_URL": "library.example.com/reset"}, "PASSWORD_RESET_URL: must be an absolute http(s) URL"),
        ({"PASSWORD_RESET_URL": "ftp://library.example.com/reset"}, "PASSWORD_RESET_URL: must be an absolute"),
        ({"PASSWORD_RESET_URL": "https://library.example.com/#reset"}, "PASSWORD_RESET_URL: must be an absolute"),
        (
            {"PASSWORD_RESET_URL": "http://library.example.com/reset", "ENVIRONMENT": "production"},
            "PASSWORD_RESET_URL: must be https outside development",
        ),
        ({"RATE_LIMIT_PASSWORD_RESET_ACCOUNT": "often"}, "RATE_LIMIT_PASSWORD_RESET_ACCOUNT"),
    ],
)
def test_reset_settings_are_checked_before_start(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env=env, env_file=None)
    assert any(line.startswith(problem) for line in error.value.problems), error.value.problems


def test_a_development_link_may_be_plain_http() -> None:
    settings = load_settings(env={"PASSWORD_RESET_URL": "http://127.0.0.1:5173/reset"}, env_file=None)
    assert settings.password_reset_url == "http://127.0.0.1:5173/reset"
    assert not settings.password_reset_enabled  # no SMTP_HOST yet
