"""Library API service."""
