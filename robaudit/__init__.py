"""robaudit: the command line, and helpers that glue the service, worker and core together."""
