"""The one exception type users see: its message is a complete one-line explanation."""


class GradmidiError(ValueError):
    """Bad input or an unusable file; the CLI prints the message alone and exits non-zero."""

