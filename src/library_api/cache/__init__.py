"""Caching of catalogue reads: the stores (process memory or Redis) and the catalogue cache with its invalidation."""
