"""The two kinds of failure every task and connector speaks: retry it, or tell the user."""


class TransientError(Exception):
    """Network trouble, throttling, lock contention: retried with backoff."""


class PermanentError(Exception):
    """Bad input, bad credentials, missing permission: fails at once with a message a user can act on."""
