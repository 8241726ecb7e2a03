"""Keys of the seed's production ``.env`` (and Uvicorn's, Gunicorn's, Compose's): translated or refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from library_api.config import ConfigError, Settings, load_settings
from library_api.config.aliases import READ_ELSEWHERE, REFUSED, TRANSLATED, translate

SEED_ENV = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"
"""The source documents beside the checkout (``../shared/seeds``), where development machines and CI keep them."""


def seed_002() -> str:
    """The production course's text; the tests that read it skip with the reason where it is not beside us."""
    found = sorted(SEED_ENV.glob("002_*.md"))
    if not found:
        pytest.skip(f"the seed documents are not beside the checkout ({SEED_ENV})")
    return found[0].read_text(encoding="utf-8")


def load(env: dict[str, str], env_file: Path | None = None, warnings: list[str] | None = None) -> Settings:
    return load_settings(env=env, env_file=env_file, warnings=warnings)


def test_compose_style_host_and_port_keys_build_the_urls() -> None:
    settings = load(
        {
            "POSTGRES_HOST": "db",
            "POSTGRES_PORT": "5433",
            "POSTGRES_DB": "library_db",
            "POSTGRES_USER": "library",
            "POSTGRES_PASSWORD": "p@ss/word",
            "REDIS_HOST": "cache",
            "REDIS_PORT": "6380",
            "REDIS_PASSWORD": "r:secret",
        }
    )
    assert settings.database_url == "postgresql+asyncpg://library:p%40ss%2Fword@db:5433/library_db"
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://:r%3Asecret@cache:6380/0"


def test_our_url_wins_and_the_container_keys_are_the_containers() -> None:
    settings = load({"DATABASE_URL": "sqlite+aiosqlite:///x.db", "POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "p"})
    assert settings.database_url == "sqlite+aiosqlite:///x.db"


def test_redis_host_beside_redis_url_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load({"REDIS_URL": "redis://a:6379/0", "REDIS_HOST": "b"})
    assert refused.value.problems == [
        "REDIS_HOST: REDIS_URL is set too; keep one of them (REDIS_URL names host and port)"
    ]


def test_cors_origins_and_forwarded_allow_ips_are_ours_under_other_names() -> None:
    settings = load({"CORS_ORIGINS": "https://a.example,https://b.example", "FORWARDED_ALLOW_IPS": "10.0.0.2"})
    assert settings.backend_cors_origins == ["https://a.example", "https://b.example"]
    assert settings.trusted_proxies == ["10.0.0.2"]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FORWARDED_ALLOW_IPS": "*"},
            "FORWARDED_ALLOW_IPS: '*' would let any peer choose the client address (rate limits, allowed "
            "networks); name the proxies in TRUSTED_PROXIES",
        ),
        (
            {"FORWARDED_ALLOW_IPS": "10.0.0.2", "TRUSTED_PROXIES": "10.0.0.3"},
            "FORWARDED_ALLOW_IPS: contradicts TRUSTED_PROXIES; keep TRUSTED_PROXIES only",
        ),
        (
            {"PROXY_HEADERS": "true"},
            "PROXY_HEADERS: forwarded headers are believed only from the proxies named in TRUSTED_PROXIES; set it",
        ),
        (
            {"PROXY_HEADERS": "false", "TRUSTED_PROXIES": "10.0.0.3"},
            "PROXY_HEADERS: false contradicts TRUSTED_PROXIES; keep TRUSTED_PROXIES only",
        ),
        (
            {"CORS_ORIGINS": "https://a.example", "BACKEND_CORS_ORIGINS": "https://b.example"},
            "CORS_ORIGINS: contradicts BACKEND_CORS_ORIGINS; keep BACKEND_CORS_ORIGINS only",
        ),
        (
            {"SESSION_COOKIE_SECURE": "True"},
            "SESSION_COOKIE_SECURE: not supported: the service keeps no cookie sessions; remove it",
        ),
    ],
    ids=["any-peer", "two-lists", "headers-without-proxies", "off-but-listed", "two-cors", "session-cookie"],
)
def test_keys_that_cannot_be_honoured_stop_the_start_with_one_line(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(env)
    assert refused.value.problems == [problem]


def test_proxy_headers_with_named_proxies_or_off_is_honoured() -> None:
    assert load({"PROXY_HEADERS": "true", "TRUSTED_PROXIES": "10.0.0.3"}).trusted_proxies == ["10.0.0.3"]
    assert load({"PROXY_HEADERS": "false"}).trusted_proxies == []
    assert load({"PROXY_HEADERS": "false", "FORWARDED_ALLOW_IPS": "10.0.0.2"}).trusted_proxies == []


@pytest.mark.parametrize(("given", "level"), [("info", "INFO"), ("Warn", "WARNING"), (" debug ", "DEBUG")])
def test_log_levels_in_any_case(given: str, level: str) -> None:
    assert load({"LOG_LEVEL": given}).log_level == level


def test_a_misspelt_key_is_a_warning_naming_the_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("WS_MAX_SIZ=1\nLOG_LEVL=info\nCOMPLETELY_UNRELATED=1\nWEB_CONCURRENCY=4\n")
    warnings: list[str] = []
    load({"WS_PING_INTERVL": "3", "PATH": "/bin", "DATABASE_PASSWORD": "x"}, env_file, warnings)
    assert warnings == [
        f"{env_file}: COMPLETELY_UNRELATED: not a setting of the service, ignored",
        f"{env_file}: LOG_LEVL: not a setting of the service, ignored; did you mean LOG_LEVEL?",
        f"{env_file}: WS_MAX_SIZ: not a setting of the service, ignored; did you mean WS_MAX_SIZE?",
        "environment: DATABASE_PASSWORD: not a setting of the service, ignored",
        "environment: WS_PING_INTERVL: not a setting of the service, ignored; did you mean WS_PING_INTERVAL?",
    ]


def test_a_dotenv_file_is_translated_like_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CORS_ORIGINS=https://a.example\nREDIS_HOST=cache\n")
    settings = load({}, env_file)
    assert settings.backend_cors_origins == ["https://a.example"]
    assert settings.redis_url is not None and settings.redis_url.get_secret_value() == "redis://cache:6379/0"


def test_the_seeds_production_env_keys_all_have_a_meaning() -> None:
    """Every key of the seed's production ``.env`` block is a setting, translated, read elsewhere or refused."""
    seed = seed_002()
    block = seed[seed.index("PROJECT_NAME=Library API") :].split("```", 1)[0]
    keys = {line.split("=", 1)[0] for line in block.splitlines() if "=" in line and not line.startswith("#")}
    ours = {name.upper() for name in Settings.model_fields}
    meaning = ours | TRANSLATED | set(READ_ELSEWHERE) | set(REFUSED)
    assert len(keys) > 40
    assert keys - meaning == set()
    assert translate(dict.fromkeys(keys, "1"), Settings.model_fields, whole_environment=False).warnings == []


def test_the_seeds_uvicorn_and_gunicorn_keys_all_have_a_meaning() -> None:
    """The keys the seed's ``uvicorn_config.py`` and ``gunicorn_conf.py`` read from the environment."""
    seed = seed_002()
    keys = set(re.findall(r'os\.getenv\("([A-Z_]+)"', seed))
    ours = {name.upper() for name in Settings.model_fields}
    assert {"HTTP_MAX_CONNECTIONS", "PROXY_HEADERS", "FORWARDED_ALLOW_IPS", "WORKERS_PER_CORE"} <= keys
    assert keys - (ours | TRANSLATED | set(READ_ELSEWHERE) | set(REFUSED)) == set()
