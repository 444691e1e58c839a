"""The one exception type for mistakes a user can make.

A `UserError` carries a single line that says what was wrong and what to do. The command-line
entry points (`train.py`, `sample.py`, `python -m diffusion.data...`) print it as
``error: <message>`` and exit with status 2, without a traceback. Anything else that escapes is
a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A bad path, value, file or override: one line, no traceback."""


def check_choice(name: str, value, allowed) -> None:
    """Raise a `UserError` naming `value` and the allowed ones when `value` is not allowed."""
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")


def warn(message: str) -> None:
    """One line on stderr for an input that has no effect here (the command goes on)."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


# the ways a write fails that the user fixes (a full disk, a quota, a read-only or forbidden folder): one line
WRITE_ERRNOS = (28, 122, 30, 13)  # ENOSPC, EDQUOT, EROFS, EACCES


def write_error(error: BaseException, path) -> UserError | None:
    """The one line for a write to `path` that failed for a reason the user fixes, or None for any other failure.
    Libraries that write for us (torch.save) wrap the OSError: it is looked for in the exception's chain."""
    import os

    while error is not None:
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return UserError(f"cannot write {path}: {os.strerror(error.errno)}")
        error = error.__cause__ or error.__context__
    return None
