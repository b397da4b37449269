"""The HTTP sidecar for non-Python hosts."""
