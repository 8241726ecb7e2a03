"""Loading the settings: five layers merged, other stacks' keys translated, every problem reported at once.

Values come from five layers, highest precedence first: command-line flags (``overrides``), the process
environment, the ``.env`` file, an optional TOML or YAML configuration file (``--config`` or ``CONFIG_FILE``),
and the defaults of :class:`~library_api.config.settings.Settings`. Each field's problem names the layer its
value came from; the cross-field checks (:mod:`library_api.config.checks`) run on the result.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource, SettingsError

from library_api.config.aliases import translate
from library_api.config.checks import validate_settings
from library_api.config.settings import OVERRIDES_ENV, SECRET_FIELDS, Settings


class ConfigError(Exception):
    """Configuration that cannot start the service; ``problems`` holds one readable line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _env_name(field: str) -> str:
    return field.upper()


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML configuration file into a flat mapping of setting names to values."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"CONFIG_FILE: cannot read {path}: {exc.strerror or exc}"]) from exc
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError([f"CONFIG_FILE: {path} must end in .toml, .yaml or .yml"])
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError([f"CONFIG_FILE: {path} is not valid: {first_line}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"CONFIG_FILE: {path} must hold a table of settings"])
    return {str(key).lower(): value for key, value in data.items()}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    config_file: Path | None = None,
    warnings: list[str] | None = None,
) -> Settings:
    """Merge every configuration layer and validate the result, raising :class:`ConfigError` on any problem.

    ``env`` replaces the process environment (tests pass their own); ``overrides`` are command-line flags.
    Overrides handed down by a parent process through ``LIBRARY_API_OVERRIDES`` sit just below ``overrides``.
    Keys of other stacks are translated or refused (:mod:`library_api.config.aliases`); keys that look like
    ours but are not are appended to ``warnings`` when the caller passes a list.
    """
    warnings = [] if warnings is None else warnings
    environ = dict(os.environ if env is None else env)
    layers: list[tuple[str, dict[str, Any]]] = []

    inherited: dict[str, Any] = {}
    if environ.get(OVERRIDES_ENV):
        try:
            inherited = {k.lower(): v for k, v in json.loads(environ[OVERRIDES_ENV]).items()}
        except (ValueError, AttributeError):
            raise ConfigError([f"{OVERRIDES_ENV}: not a JSON object"]) from None

    explicit = {key.lower(): value for key, value in (overrides or {}).items() if value is not None}
    file_path = config_file or explicit.pop("config_file", None) or inherited.pop("config_file", None)
    file_path = file_path or environ.get("CONFIG_FILE")
    if file_path:
        layers.append((f"config file {file_path}", read_config_file(Path(file_path))))
    translated: list[str] = []
    try:
        if env_file is not None and env_file.is_file():
            raw_file = {key.upper(): value or "" for key, value in dotenv_values(env_file).items()}
            aliases = translate(raw_file, Settings.model_fields, whole_environment=False)
            file_values = dict(DotEnvSettingsSource(Settings, env_file=env_file)())
            layers.append((f"{env_file}", _with_aliases(file_values, aliases.values)))
            translated += aliases.problems
            warnings.extend(f"{env_file}: {line}" for line in aliases.warnings)
        aliases = translate(
            {key.upper(): value for key, value in environ.items()}, Settings.model_fields, whole_environment=True
        )
        layers.append(("environment", _with_aliases(_environment_values(environ), aliases.values)))
        translated += aliases.problems
        warnings.extend(f"environment: {line}" for line in aliases.warnings)
    except SettingsError as exc:
        field = str(exc).split('"')[1] if '"' in str(exc) else "configuration"
        raise ConfigError([f"{_env_name(field)}: not valid JSON"]) from None
    if translated:
        raise ConfigError(translated)
    layers.append(("inherited flags", inherited))
    layers.append(("command line", explicit))

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in layers:
        for key, value in values.items():
            if key in Settings.model_fields:
                merged[key] = value
                origin[key] = source
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe_validation(exc, origin) + _remaining_problems(exc, merged)) from None
    problems = validate_settings(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _remaining_problems(exc: ValidationError, merged: Mapping[str, Any]) -> list[str]:
    """The semantic problems of everything that did validate, so one run reports every problem at once."""
    invalid = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    try:
        partial = Settings(**{key: value for key, value in merged.items() if key not in invalid})
    except ValidationError:  # pragma: no cover - every invalid field was left out above
        return []
    return [line for line in validate_settings(partial) if line.split(":")[0].lower() not in invalid]


def _with_aliases(values: dict[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """A layer's values with the translations of other stacks' keys (which never replace our own keys)."""
    for key, value in aliases.items():
        values.setdefault(key.lower(), value)
    return values


def _environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Values for known settings from an environment mapping (the real one or a test's)."""
    source = EnvSettingsSource(Settings)
    source.env_vars = {key.lower(): value for key, value in environ.items()}
    return dict(source())


def _describe_validation(exc: ValidationError, origin: Mapping[str, str]) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "configuration"
        where = origin.get(field, "default")
        value = error.get("input")
        shown = "" if field in SECRET_FIELDS or isinstance(value, dict) else f" (got {value!r} from {where})"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{_env_name(field)}: {message}{shown}")
    return lines


def hand_down_overrides(overrides: Mapping[str, Any]) -> None:
    """Put command-line overrides into this process's environment for the worker processes it will start.

    Workers rebuild their settings with :func:`load_settings`, which reads them back from
    ``LIBRARY_API_OVERRIDES``; a flag therefore means the same thing in every process.
    """
    encoded = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items() if v is not None}
    os.environ[OVERRIDES_ENV] = json.dumps(encoded)
