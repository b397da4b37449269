"""Store errors. Any of them means deny: a budget that cannot be checked is not granted."""


class StoreUnavailable(Exception):
    """The budget store cannot be reached or written right now.

    Its message starts with "budget store unavailable: " and names the store
    and the cause: every store raises it so, and a decision's reason is the
    message itself (an enforcer that added the prefix again printed it twice).
    """
