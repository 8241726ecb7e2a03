"""Alembic migration environment and versions (shipped inside the package so every install can migrate)."""
