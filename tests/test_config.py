"""Settings: layers, precedence, file formats, and one readable line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from library_api.config import ConfigError, load_settings, mask_url, public_view


def test_defaults_run_the_embedded_setup() -> None:
    settings = load_settings(env={}, env_file=None)
    assert settings.is_sqlite and settings.should_auto_migrate and settings.should_seed_on_empty
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.effective_log_format == "console"


def test_precedence_flags_over_env_over_dotenv_over_file(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('PORT = 1001\nHOST = "10.0.0.1"\nLOG_LEVEL = "DEBUG"\nPROJECT_NAME = "From file"\n')
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=1002\nHOST=10.0.0.2\nLOG_LEVEL=WARNING\n")
    env = {"PORT": "1003", "HOST": "10.0.0.3"}
    settings = load_settings({"port": 1004}, env=env, env_file=dotenv, config_file=config)
    assert settings.port == 1004
    assert settings.host == "10.0.0.3"
    assert settings.log_level == "WARNING"
    assert settings.project_name == "From file"


def test_yaml_file_and_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("booking_max_days: 14\nbackend_cors_origins:\n  - https://a.example\n")
    settings = load_settings(env={"CONFIG_FILE": str(config)}, env_file=None)
    assert settings.booking_max_days == 14
    assert settings.backend_cors_origins == ["https://a.example"]


def test_seed_env_list_formats() -> None:
    settings = load_settings(
        env={
            "BACKEND_CORS_ORIGINS": '["https://library.example.com", "https://admin.library.example.com"]',
            "ALLOWED_FILE_TYPES": ".jpg,.jpeg,.png,.pdf",
        },
        env_file=None,
    )
    assert settings.backend_cors_origins == ["https://library.example.com", "https://admin.library.example.com"]
    assert settings.allowed_file_types == [".jpg", ".jpeg", ".png", ".pdf"]


def test_every_problem_is_one_line_naming_its_key_and_source() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            env={"PORT": "eighty", "ENVIRONMENT": "staging", "ACCESS_TOKEN_EXPIRE_MINUTES": "0"}, env_file=None
        )
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(p.startswith("PORT:") and "from environment" in p for p in problems)
    assert any(p.startswith("ENVIRONMENT:") for p in problems)
    assert any(p.startswith("ACCESS_TOKEN_EXPIRE_MINUTES:") for p in problems)
    assert all("\n" not in p for p in problems)


def test_production_refuses_default_and_example_secrets() -> None:
    for secret in (None, "your-256-bit-secret-change-this-in-production", "short-secret"):
        env = {"ENVIRONMENT": "production"}
        if secret:
            env["SECRET_KEY"] = secret
        with pytest.raises(ConfigError) as caught:
            load_settings(env=env, env_file=None)
        assert any(p.startswith("SECRET_KEY:") for p in caught.value.problems)
    good = load_settings(
        env={
            "ENVIRONMENT": "production",
            "SECRET_KEY": "x" * 40,
            "ALLOW_HTTP_BEHIND_PROXY": "true",
            "ALLOWED_HOSTS": "library.example.org",
        },
        env_file=None,
    )
    assert good.effective_log_format == "json"
    assert not good.should_seed_on_empty


def test_production_refuses_weak_password_hashing_and_debug() -> None:
    env = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": "y" * 40,
        "PASSWORD_HASH_MEMORY_KIB": "1024",
        "DEBUG": "true",
        "ALLOW_HTTP_BEHIND_PROXY": "true",
        "ALLOWED_HOSTS": "library.example.org",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env, env_file=None)
    assert {p.split(":")[0] for p in caught.value.problems} == {
        "DEBUG",
        "PASSWORD_HASH_MEMORY_KIB/PASSWORD_HASH_TIME_COST",
    }


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"API_V1_STR": "api/"}, "API_V1_STR"),
        ({"ALLOWED_FILE_TYPES": ".pdf"}, "ALLOWED_FILE_TYPES"),
        ({"ROLE_PERMISSIONS": '{"x": ["a"]}'}, "ROLE_PERMISSIONS"),
        ({"ROLE_PERMISSIONS": '{"x": {"permissions": "a"}}'}, "ROLE_PERMISSIONS"),
        ({"ROLE_PERMISSIONS": "{not json"}, "ROLE_PERMISSIONS"),
        ({"LIBRARY_API_OVERRIDES": "[1]"}, "LIBRARY_API_OVERRIDES"),
    ],
)
def test_semantic_problems(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env, env_file=None)
    assert caught.value.problems[0].startswith(f"{key}:")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.toml", "PORT = ", "is not valid"),
        ("bad.yaml", "- a list\n- not a table\n", "must hold a table"),
        ("bad.ini", "PORT=1", "must end in"),
        ("missing.toml", None, "cannot read"),
    ],
)
def test_broken_config_files(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, env_file=None, config_file=path)
    assert caught.value.problems[0].startswith("CONFIG_FILE:")
    assert message in caught.value.problems[0]


def test_inherited_overrides_sit_below_explicit_flags() -> None:
    env = {"LIBRARY_API_OVERRIDES": '{"port": 2001, "workers": 3}', "PORT": "2000"}
    settings = load_settings({"workers": 4}, env=env, env_file=None)
    assert settings.port == 2001 and settings.workers == 4


def test_public_view_masks_secrets() -> None:
    settings = load_settings(
        env={
            "SECRET_KEY": "s3cr3t-value",
            "REDIS_URL": "redis://:pw@redis:6379/0",
            "DATABASE_URL": "postgresql+asyncpg://app:hunter2@db:5432/library",
        },
        env_file=None,
    )
    view = public_view(settings)
    text = repr(view)
    assert "s3cr3t-value" not in text and "hunter2" not in text and ":pw@" not in text
    assert view["SECRET_KEY"] == "********"
    assert view["DATABASE_URL"] == "postgresql+asyncpg://app:***@db:5432/library"


def test_mask_url_leaves_urls_without_passwords() -> None:
    assert mask_url("sqlite+aiosqlite:///var/library.db") == "sqlite+aiosqlite:///var/library.db"
    assert mask_url("postgresql+asyncpg://app@db/library") == "postgresql+asyncpg://app@db/library"
