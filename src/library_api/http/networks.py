"""Sets of IP addresses and networks: trusted proxies, and the networks allowed to read monitoring endpoints."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Networks:
    """A set of addresses and networks, with a cached answer per address (peers repeat)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.contains = lru_cache(maxsize=1024)(self._contains)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _contains(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)
