"""Errors a user can fix. The CLI prints their message (no stack trace) and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it."""


class DataNotFoundError(UserError, FileNotFoundError):
    """Data files are missing and cannot be downloaded; the message names the files and where to put them."""
