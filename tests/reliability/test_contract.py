"""Contract fuzzing: Schemathesis against the service's own OpenAPI document, as each kind of caller in turn.

A real ``library-api serve`` process answers; Schemathesis reads ``/openapi.json`` from it and runs every phase
(examples, coverage, fuzzing, and the stateful phase that follows the document's links from created books,
bookings and accounts to the operations on them) with every check it has. The callers:

* ``anonymous``: no credential at all;
* ``reader``, ``librarian``, ``admin``: Schemathesis logs in itself through the login operation, and again
  whenever an answer is 401 (the fuzzer may well log its own account out everywhere);
* ``revoked-reader``: one reader's access token, given once and never renewed; the fuzzed ``logout-all`` revokes
  it part-way, and every operation must then document the 401 it answers (a re-login would hide that).

Runs go from the least to the most powerful so that an administrator's run, which may deactivate accounts,
comes last; each caller has an account of its own. The example budget and the seed are fixed
(``tests/reliability/budget.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability import budget
from tests.reliability.conftest import Record
from tests.support.factories import PASSWORD
from tests.support.ports import reserved_socket
from tests.support.processes import ServerProcess
from tests.support.smtp import SocketController

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
# A fuzzing run per role, the first one after the server's set-up: longer than the default per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("contract"), pytest.mark.timeout(180)]

ROLES = ("reader", "librarian", "admin")
CALLERS = ("anonymous", "reader", "revoked-reader", "librarian", "admin")
"""Every run, in order; ``revoked-reader`` is a reader whose one token is not renewed."""
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def account(role: str) -> str:
    return f"contract-{role}@example.org"


class AcceptEverything:
    """An SMTP handler that takes every mail (the password-reset operation sends some)."""

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 2.0.0 accepted"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    mail = SocketController(AcceptEverything(), reserved_socket())
    mail.start()
    # The fuzzer's thousands of requests run code the in-process tests measure already; unmeasured, they run faster.
    live = ServerProcess(
        {
            "RATE_LIMIT_ENABLED": "false",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mail.port),
            "SMTP_SECURITY": "none",
            "EMAIL_FROM": "noreply@library.example.com",
            "PASSWORD_RESET_URL": "http://127.0.0.1/reset-password",
        },
        measured=False,
        json_log=True,
    )
    live.env["DATABASE_URL"] = f"sqlite+aiosqlite:///{live.directory / 'contract.db'}"
    assert live.run_cli("migrate").returncode == 0
    for role in (*ROLES, "revoked-reader"):
        kind = role.rpartition("-")[2]
        created = live.run_cli("users", "create", "--email", account(role), "--password", PASSWORD, "--role", kind)
        assert created.returncode == 0, created.stderr
    live.start(wait="/health/ready")
    yield live
    assert live.stop_cleanly(), live.log_text()[-3000:]
    mail.stop()


OPERATION_RULES = """
# A reset token is opaque: a schema-valid one the service never issued is a documented 400 problem, and one
# already spent (the stateful phase may confirm twice) a documented 410.
[[operations]]
include-path = "/api/v1/auth/password-reset/confirm"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "410", "429"]

# A list's cursor is opaque (any string is schema-valid, only the ones the list handed out are accepted), and the
# deepest offset is a setting (MAX_LIST_OFFSET): both are documented 400 problems. (First: the first block that
# matches an operation is the one that applies.)
[[operations]]
include-operation-id = ["list_books_api_v1_books_get", "list_bookings_api_v1_bookings_get"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "304", "400", "401", "403", "404"]

# Rules no JSON Schema can state, so that a schema-valid request may rightly be refused (the operation's
# description and its documented 415/422 say so): a booking's period (the end after the start, the start not in
# the past, at most BOOKING_MAX_DAYS long), an ISBN's check digit, a cover recognised as JPEG or PNG by content.
[[operations]]
include-path-regex = "^/api/v1/(bookings|books(/[{]book_id[}])?)$"
include-method-regex = "^(POST|PATCH)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-path = "/api/v1/books/{book_id}/cover"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "413", "415"]
"""


def configuration(caller: str) -> str:
    """A Schemathesis configuration; for a role, one that logs in (and again after a 401) as that role."""
    if caller not in ROLES:
        return OPERATION_RULES
    return f"""
[auth.dynamic.openapi.OAuth2PasswordBearer]
path = "/api/v1/auth/login"
method = "post"
payload = {{ username = "{account(caller)}", password = "{PASSWORD}" }}
payload_content_type = "application/x-www-form-urlencoded"
extract_selector = "/access_token"
{OPERATION_RULES}"""


def fixed_token(server: ServerProcess, caller: str) -> str:
    """An access token for the caller's account, logged in once by the test (the fuzzer never renews it)."""
    login = httpx.post(
        f"{server.base_url}/api/v1/auth/login", data={"username": account(caller), "password": PASSWORD}, timeout=30
    )
    assert login.status_code == 200, login.text
    return str(login.json()["access_token"])


@pytest.mark.parametrize("role", CALLERS)
def test_the_service_keeps_its_contract(server: ServerProcess, role: str, tmp_path: Path, figures: Record) -> None:
    chosen = budget.current()
    config = tmp_path / "schemathesis.toml"
    config.write_text(configuration(role), encoding="utf-8")
    report = tmp_path / "report.json"
    command = [
        *(str(SCHEMATHESIS), "--config-file", str(config), "run", f"{server.base_url}/openapi.json"),
        *("--checks", "all", "--max-examples", str(chosen.contract_examples), "--seed", str(chosen.contract_seed)),
        *("--workers", "1", "--request-timeout", "10", "--report", "json", "--report-json-path", str(report)),
    ]
    token = fixed_token(server, role) if role == "revoked-reader" else None
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    started = time.monotonic()
    # The fuzzer runs none of the service's code: coverage's start-up hook would only slow it down.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_PROCESS")}
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path, env=environment
    )
    elapsed = time.monotonic() - started
    assert report.exists(), finished.stdout[-5000:] + finished.stderr[-3000:]
    outcome = json.loads(report.read_text(encoding="utf-8"))
    cases = outcome["test_cases"]
    figures(
        role=role,
        budget=chosen.name,
        max_examples=chosen.contract_examples,
        seed=chosen.contract_seed,
        generated=cases["generated"],
        failures=cases["unique_failures"],
        seconds=round(elapsed, 1),
    )
    assert finished.returncode == 0, finished.stdout[-12000:]
    assert outcome["complete"] and outcome["errors"] == []
    assert outcome["operations"]["tested"] == outcome["operations"]["selected"] > 0
    assert {name: phase["status"] for name, phase in outcome["phases"].items()} == dict.fromkeys(
        ("examples", "coverage", "fuzzing", "stateful"), "success"
    )
    assert cases["unique_failures"] == 0
    assert cases["generated"] > 0
    if token is not None:  # the run did revoke its credential, so the operations after it answered 401
        assert (
            httpx.get(f"{server.base_url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code
            == 401
        )
    if role == "admin":  # an administrator may call everything: no operation may refuse the credentials
        assert not outcome["warnings"].get("missing_auth"), outcome["warnings"]
