"""The child side: zygote, job loop, sandbox set-up and guard execution.

Imports nothing from store, audit or server.
"""
