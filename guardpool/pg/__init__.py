"""PostgreSQL plumbing shared by the budget store and the audit ledger.

``pool.py`` turns a URL into a psycopg connection pool whose every step has a
deadline (a hung server answers nothing, and a budget check must still be
denied in time); ``migrate.py`` creates and upgrades the tables from the
``.sql`` files shipped in the package, recording versions in a table.
"""
