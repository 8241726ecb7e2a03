"""Runnable benchmarks; each prints its figures and the exact command that produced them."""
