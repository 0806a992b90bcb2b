"""User-facing errors: the CLI prints these as one line, without a traceback."""


class BlossomError(Exception):
    """Bad input or an unavailable resource, explained in the message."""
