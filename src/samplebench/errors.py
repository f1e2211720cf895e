"""The one exception type for bad user input; the CLI prints its message on one line and exits with code 2."""


class UsageError(ValueError):
    """Bad input from a user: an unknown name, an out-of-range value, a file that is not what it should be."""
