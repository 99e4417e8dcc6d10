"""robaudit's web layer: the HTTP API and the web UI (Flask). Persistence, the queue and the
storage it shares with the workers are in `infra`.

Importing this package does nothing; `service.app.create_app` builds the application.
"""
