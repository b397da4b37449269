"""The parent side: the worker pool manager and the enforcer."""
