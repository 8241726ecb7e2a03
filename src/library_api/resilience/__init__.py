"""Staying up when a dependency is not: retries with backoff, a circuit breaker, and the guarded Redis client."""
