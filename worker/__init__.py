"""Celery workers: thin tasks that take IDs, load rows, call the numeric core, store results."""
