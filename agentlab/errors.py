"""Errors a user can fix. The CLI prints their message (no stack trace) and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it."""


class DataNotFoundError(UserError, FileNotFoundError):
    """Data files are missing and cannot be downloaded; the message names the files and where to put them."""


def os_error_text(e: OSError) -> str:
    """'PATH: cause' for an `OSError` (a write that failed: permission, no space, file size limit, a file where a
    folder should be), in one line."""
    path = e.filename if e.filename is not None else "?"
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    return f"{path}: {e.strerror or e}"


class CannotForget(UserError):
    """A module or learner cannot remove one task's contribution exactly; the message names it and the reason."""
