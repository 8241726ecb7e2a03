"""Calling an application in process over HTTP, as if from a chosen peer address."""

from __future__ import annotations

import httpx
from fastapi import FastAPI


def client_for(application: FastAPI, peer: str = "127.0.0.1", *, scheme: str = "http") -> httpx.AsyncClient:
    """An HTTP client calling ``application`` in process, its requests arriving from ``peer``."""
    transport = httpx.ASGITransport(app=application, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://testserver")
