"""Shared helpers for the test suite: real services, real processes, data factories."""
