"""SQLAlchemy models of the audit history and session helpers (no Flask, no Celery)."""
