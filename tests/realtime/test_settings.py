"""Real-time and e-mail settings: defaults from the seeds, and the checks made before start."""

from __future__ import annotations

import pytest

from library_api.app import build_broker
from library_api.config import ConfigError, load_settings
from library_api.realtime.broker import MemoryBroker
from library_api.realtime.redis_broker import RedisBroker
from tests.conftest import fast_settings


def test_defaults() -> None:
    settings = load_settings(env={}, env_file=None)
    assert settings.broadcast_interval == 10
    assert settings.shutdown_timeout == 1800
    assert settings.shutdown_progress_interval == 10
    assert settings.ws_per_message_deflate is False
    assert (settings.ws_max_size, settings.ws_ping_interval, settings.ws_ping_timeout) == (64 * 1024, 20, 20)
    assert settings.ws_allow_anonymous is False
    assert (settings.ws_preauth_max_size, settings.ws_handshake_rate) == (16 * 1024, "30/minute")
    assert (settings.ws_max_pending_per_address, settings.ws_max_connections_per_principal) == (8, 20)
    assert settings.smtp_port == 587
    assert settings.email_from_name == "Library System"
    assert not settings.email_enabled


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"ENVIRONMENT": "production", "WS_ALLOW_ANONYMOUS": "true"}, "WS_ALLOW_ANONYMOUS: anonymous"),
        ({"REALTIME_REDIS_PREFIX": "has space"}, "REALTIME_REDIS_PREFIX: must not contain spaces"),
        ({"WS_SEND_QUEUE_SIZE": "0"}, "WS_SEND_QUEUE_SIZE:"),
        ({"BROADCAST_INTERVAL": "-1"}, "BROADCAST_INTERVAL:"),
        ({"WS_HANDSHAKE_RATE": "lots"}, "WS_HANDSHAKE_RATE: 'lots' is not a rate limit"),
        ({"WS_MAX_PENDING_PER_ADDRESS": "0"}, "WS_MAX_PENDING_PER_ADDRESS:"),
        ({"WS_MAX_CONNECTIONS_PER_PRINCIPAL": "0"}, "WS_MAX_CONNECTIONS_PER_PRINCIPAL:"),
        ({"WS_PREAUTH_MAX_SIZE": "10"}, "WS_PREAUTH_MAX_SIZE:"),
    ],
)
def test_bad_realtime_settings_stop_start_up(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env=env, env_file=None)
    assert any(line.startswith(problem) for line in error.value.problems), error.value.problems


def test_mail_is_on_only_with_an_smtp_host() -> None:
    settings = load_settings(
        env={"SMTP_HOST": "mail.example.com", "EMAIL_FROM": "noreply@library.example.com"}, env_file=None
    )
    assert settings.email_enabled


def test_the_broker_follows_redis_url() -> None:
    assert isinstance(build_broker(fast_settings()), MemoryBroker)
    assert isinstance(build_broker(fast_settings(redis_url="redis://127.0.0.1:6379/0")), RedisBroker)
