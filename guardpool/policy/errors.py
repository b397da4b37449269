"""The one error type for every bad config, pattern or guard reference."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy that cannot be loaded, with where and why.

    ``str(err)`` reads ``FILE: KEY.PATH: reason`` so that a user can go straight
    to the offending line; ``file`` and ``key`` are empty when unknown.
    """

    def __init__(self, reason: str, *, key: str = "", file: str = "") -> None:
        self.reason = reason
        self.key = key
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join([*parts, self.reason])

    def located(self, *, key_prefix: str = "", file: str = "") -> PolicyError:
        """The same error, with an outer key path and/or the file filled in."""
        if key_prefix and self.key:
            sep = "" if self.key.startswith("[") else "."
            key = f"{key_prefix}{sep}{self.key}"
        else:
            key = key_prefix or self.key
        return PolicyError(self.reason, key=key, file=file or self.file)
