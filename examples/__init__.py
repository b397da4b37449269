"""Example policy and guards used by the docs, the tests and ``guardpool lint/fuzz``."""
