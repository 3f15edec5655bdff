"""Alembic migrations (shipped in the package as syncsvc.migrations)."""
