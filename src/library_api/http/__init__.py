"""HTTP plumbing shared by every route: RFC 9457 problem responses and pure ASGI middleware."""
