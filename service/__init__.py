"""robaudit's HTTP API (Flask) and the persistence layer shared with the workers.

Importing this package does nothing; `service.app.create_app` builds the application.
"""
