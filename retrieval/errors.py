"""The one exception type the CLI turns into a one-line message on stderr."""


class TTRError(Exception):
    """Bad input or an unusable environment, explained in one line for the user."""
