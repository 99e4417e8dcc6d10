"""WSGI entry point for gunicorn (`gunicorn service.wsgi:app`); configured from the env."""

import gc

from service.app import create_app

app = create_app()
# The ~150,000 objects that imports and the app leave behind live as long as the worker: moved
# out of the collector's reach, they no longer make each full collection a 56 ms pause in the
# middle of some request (the API's p99 under load; benchmarks/README.md, API load).
gc.freeze()
