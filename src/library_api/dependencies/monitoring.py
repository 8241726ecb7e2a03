"""Who may read the monitoring endpoints (``/metrics``, ``/health/detailed``).

A caller from one of ``MONITORING_ALLOWED_NETWORKS`` (loopback by default; a cluster's pod network in
Kubernetes) is let in without credentials, as Prometheus scrapes without any; anyone else needs the route's
permission (``metrics:read``, ``health:read``: the ``monitor`` role has both). The client address is the one
:mod:`library_api.http.request_origin` established, so a spoofed ``X-Forwarded-For`` cannot open the door.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from library_api.dependencies.context import get_context
from library_api.dependencies.permissions import PERMISSION_ATTRIBUTE, check, resolve_principal
from library_api.security.permissions import Permission


def monitoring(permission: Permission) -> Any:
    """A dependency admitting allowed networks, and elsewhere only callers holding ``permission``."""

    async def dependency(request: Request) -> None:
        client = request.client
        if client is not None and get_context(request).monitoring_networks.contains(client.host):
            return
        check(await resolve_principal(request), permission)

    setattr(dependency, PERMISSION_ATTRIBUTE, permission.value)
    dependency.__name__ = f"monitoring_{permission.value.replace(':', '_')}"
    return Depends(dependency)
