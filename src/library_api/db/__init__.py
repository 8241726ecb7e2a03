"""Database access: engine and session factory, the declarative base, and Alembic migrations."""
