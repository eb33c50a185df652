"""Observability: the log context and formatters, Prometheus metrics, and the stack's dev-mode defaults."""
