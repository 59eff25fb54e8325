"""The one exception type that the command-line entry points turn into a one-line message."""


class VaelabError(ValueError):
    """Bad input (config value, data file, checkpoint): the message says what and how to fix it."""
