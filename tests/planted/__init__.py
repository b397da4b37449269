"""A planted, deliberately ReDoS-prone guard module: lint must flag it, fuzz must find it."""
