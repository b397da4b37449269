"""The project's own fuzzers: differential RE2-vs-re tests run inside ``make test``."""
