"""Settings: the one place where configuration is read, merged and validated.

Nothing else in the package reads ``os.environ``. The package is split by concern:

* :mod:`~library_api.config.settings`: the :class:`Settings` model (every key, its default and its own checks)
  and its secret-free view (``check-config``);
* :mod:`~library_api.config.loading`: the five layers merged (:func:`load_settings`), :class:`ConfigError`;
* :mod:`~library_api.config.checks`: the cross-field checks (:func:`validate_settings`);
* :mod:`~library_api.config.security_mode`: which security mode is in force and why;
* :mod:`~library_api.config.tls_files`: the server's TLS files, really read, before any port opens;
* :mod:`~library_api.config.aliases`: other stacks' keys, translated or refused;

The names the rest of the service uses are importable from here (``from library_api.config import Settings``).
"""

from library_api.config.checks import security_problems, validate_settings
from library_api.config.loading import ConfigError, hand_down_overrides, load_settings, read_config_file
from library_api.config.security_mode import SecurityDecision, decide_security_mode
from library_api.config.settings import (
    DEFAULT_CONTENT_SECURITY_POLICY,
    DEFAULT_SECRET_KEY,
    HTTP_METHODS,
    KNOWN_PLACEHOLDER_SECRETS,
    OVERRIDES_ENV,
    SECRET_FIELDS,
    Environment,
    Settings,
    canonical_origin,
    mask_url,
    public_view,
)

__all__ = [
    "DEFAULT_CONTENT_SECURITY_POLICY",
    "DEFAULT_SECRET_KEY",
    "HTTP_METHODS",
    "KNOWN_PLACEHOLDER_SECRETS",
    "OVERRIDES_ENV",
    "SECRET_FIELDS",
    "ConfigError",
    "Environment",
    "SecurityDecision",
    "Settings",
    "canonical_origin",
    "decide_security_mode",
    "hand_down_overrides",
    "load_settings",
    "mask_url",
    "public_view",
    "read_config_file",
    "security_problems",
    "validate_settings",
]
