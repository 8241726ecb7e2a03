"""The Dockerfile: linted by hadolint, multi-stage, non-root, signal-ready; .dockerignore keeps secrets out."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from tests.deploy.support import INFRASTRUCTURE_KEYS, ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    result = run(tool("hadolint"), "--failure-threshold", "info", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["scripts/base-image.sh", ".ci/run"])
def test_the_scripts_that_make_the_base_and_start_docker_pass_shellcheck(script: str) -> None:
    result = run(tool("shellcheck"), "--severity=style", ROOT / script)
    assert result.returncode == 0, result.stdout


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nCMD python app.py\n")
    assert run(tool("hadolint"), bad).returncode != 0


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage ``FROM ... AS name``."""
    steps = instructions()
    starts = [index for index, (keyword, _) in enumerate(steps) if keyword == "FROM"] + [len(steps)]
    for begin, end in itertools.pairwise(starts):
        if steps[begin][1].endswith(f" AS {name}"):
            return steps[begin:end]
    raise AssertionError(f"no stage {name}")


def test_no_syntax_directive_so_the_daemon_builds_it_without_a_registry() -> None:
    first_lines = DOCKERFILE.read_text().splitlines()[:5]
    assert not any(re.match(r"#\s*syntax\s*=", line, re.IGNORECASE) for line in first_lines)


def test_multi_stage_on_debian_slim_with_debians_python() -> None:
    steps = instructions()
    arguments = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in steps if k == "ARG")))
    assert arguments["BASE_IMAGE"] == "debian:bookworm-slim"  # scripts/base-image.sh makes the same offline
    stages = [a for k, a in steps if k == "FROM"]
    assert stages == ["${BASE_IMAGE} AS python", "python AS builder", "python AS runtime"]
    installs = " ".join(a for k, a in stage("python") if k == "RUN")
    assert 'apt-get "$@" install -y --no-install-recommends python3 ca-certificates netbase;' in installs
    assert "rm -rf /var/lib/apt/lists/*" in installs
    assert (ROOT / "scripts" / "base-image.sh").read_text().count("debian:bookworm-slim") >= 1


def test_downloads_trust_the_optional_ca_secret_and_nothing_else_changes() -> None:
    downloading = [a for k, a in instructions() if k == "RUN" and re.search(r"apt-get|pip install|uv sync", a)]
    assert len(downloading) == 4
    for arguments in downloading:
        assert "--mount=type=secret,id=ca" in arguments, arguments
        assert "if [ -f /run/secrets/ca ]; then" in arguments, arguments
    text = " ".join(a for k, a in instructions() if k in {"ENV", "ARG"})
    assert "/run/secrets" not in text, "the secret must be used for the downloading step only"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in stage("builder") if k == "ENV")))
    assert env["UV_PYTHON"] == "/usr/bin/python3"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"


def test_the_builder_installs_exactly_the_lock() -> None:
    runs = " ".join(a for k, a in instructions() if k == "RUN")
    assert runs.count("uv sync --locked --no-dev") == 2
    assert "--no-editable" in runs


def test_the_runtime_has_no_build_tools_and_runs_unprivileged_as_pid_1() -> None:
    stage = final_stage()
    runs = " ".join(a for k, a in stage if k == "RUN")
    for forbidden in ("apt-get", "pip install", "uv ", "gcc", "build-essential"):
        assert forbidden not in runs, f"the runtime stage runs {forbidden!r}"
    copies = [a for k, a in stage if k == "COPY"]
    assert any("--from=builder /opt/venv /opt/venv" in copy for copy in copies)
    assert not any(copy.split()[-2:-1] == ["."] for copy in copies), "the runtime must not COPY the whole context"
    env = " ".join(a for k, a in stage if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    users = [a for k, a in stage if k == "USER"]
    assert users == ["10001:10001"]
    assert ("STOPSIGNAL", "SIGTERM") in stage
    health = next(a for k, a in stage if k == "HEALTHCHECK")
    assert "/app/healthcheck.py" in health
    assert "/health" in (ROOT / "deploy" / "healthcheck.py").read_text()
    command = next(a for k, a in stage if k == "CMD")
    assert json.loads(command) == ["gunicorn", "--config", "/app/gunicorn.conf.py"], "CMD must be exec form"
    assert not any(k == "ENTRYPOINT" for k, _ in stage)


def test_every_key_the_health_check_reads_is_documented() -> None:
    read = set(re.findall(r'environ\.get\(\s*"([A-Z][A-Z0-9_]*)"', (ROOT / "deploy" / "healthcheck.py").read_text()))
    assert read == {"HEALTHCHECK_CERT_FILE", "HEALTHCHECK_KEY_FILE"}
    assert read <= set(INFRASTRUCTURE_KEYS)
    assert all(key in (ROOT / "docs" / "deployment.md").read_text() for key in read)


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_everything_the_dockerfile_copies_is_in_the_build_context(ignore_patterns: list[str]) -> None:
    sources = []
    for keyword, arguments in instructions():
        if keyword == "COPY" and "--from=" not in arguments:
            sources += [part for part in arguments.split()[:-1] if not part.startswith("--")]
    assert sources
    for source in sources:
        assert not _ignored(ignore_patterns, source.rstrip("/")), f"{source} is excluded by .dockerignore"
        assert (ROOT / source).exists(), f"{source} does not exist"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".env",
        "src/.env.local",
        ".venv/bin/python",
        ".cache/coverage.json",
        "tests/conftest.py",
        "var/library.db",
        "deploy/nginx/certs/privkey.pem",
        "deploy/prometheus/scrape-token",
        "deploy/alertmanager/alertmanager.generated.yml",
        "src/library_api/__pycache__/app.cpython-311.pyc",
        "backups/library-20250101T000000Z.dump",
        ".deploy/releases",
    ],
)
def test_dockerignore_keeps_secrets_caches_and_tests_out(ignore_patterns: list[str], path: str) -> None:
    assert _ignored(ignore_patterns, path)


def test_dockerignore_lets_the_package_in(ignore_patterns: list[str]) -> None:
    assert not _ignored(ignore_patterns, "src/library_api/app.py")
    assert not _ignored(ignore_patterns, "uv.lock")
