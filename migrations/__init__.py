"""Alembic migrations: the only way robaudit's schema is created."""
