"""Store errors. Any of them means deny: a budget that cannot be checked is not granted."""


class StoreUnavailable(Exception):
    """The budget store cannot be reached or written right now."""
