"""CUDA tests (`make gpu-check`). Each module skips with its reason where torch sees no GPU.

They import no tests/conftest.py fixture (they run with --noconftest): a GPU machine may
have torch and onnxruntime but not the service's packages (SQLAlchemy, Flask, Celery).
"""
