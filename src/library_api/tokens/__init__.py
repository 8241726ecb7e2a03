"""API tokens for services: long-lived opaque credentials with roles, stored only as digests, revocable."""
