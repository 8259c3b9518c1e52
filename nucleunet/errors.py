"""The one error type for what the user can fix.

Raise ``UserError`` for bad input the user can correct (a path, a file, an option, a dataset
that changed); the command line prints its message as one line and exits with code 2. Any other
exception is a bug and shows its traceback. ``UserError`` is a ``ValueError``, so code that calls
the modules directly can keep catching ``ValueError``.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix: a missing or unreadable file, a bad option, a dataset that changed."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named, or the data the command needs, is not there."""
