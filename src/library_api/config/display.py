"""The effective configuration as people may see it: every secret masked (``check-config``, start-up logs)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from library_api.config.settings import SECRET_FIELDS, Settings


def _env_name(field: str) -> str:
    return field.upper()


def public_view(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret masked, for ``check-config`` and logs."""
    view: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_FIELDS:
            view[_env_name(name)] = None if value is None else "********"
        elif name.endswith("_url") and isinstance(value, str):
            view[_env_name(name)] = mask_url(value)
        else:
            view[_env_name(name)] = value.value if isinstance(value, StrEnum) else value
    return view


def mask_url(url: str) -> str:
    """Hide the password part of a connection URL (``scheme://user:***@host/db``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
