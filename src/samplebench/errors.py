"""The one exception type for bad user input; the CLI prints its message on one line and exits with code 2."""


class UsageError(ValueError):
    """Bad input from a user: an unknown name, an out-of-range value, a file that is not what it should be."""


def describe(e: BaseException, limit: int = 120) -> str:
    """An exception as ``Type: message`` on one line, its message cut at ``limit`` characters: the cause named in
    an error line about a file."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


def damaged(path: object, reason: str, recover: str) -> UsageError:
    """The error for a state file that cannot be read: which file, why, and how to recover."""
    return UsageError(f"{str(path)!r} is damaged ({reason}); {recover}")


def unknown_text(what: str, value: object, valid, more: str = "") -> str:
    """The text "unknown WHAT 'value' (did you mean 'x'?); valid: ...": the value, the nearest valid name when one is
    close, and the valid names (``more``: what else is valid, e.g. ", or a folder")."""
    from .names import nearest

    valid = [str(v) for v in valid]
    return f"unknown {what} {value!r}{nearest(value, valid)}; valid: {', '.join(valid)}{more}"


def unknown(what: str, value: object, valid, more: str = "") -> UsageError:
    """The error for a name that is not one of ``valid`` (``unknown_text``)."""
    return UsageError(unknown_text(what, value, valid, more))
