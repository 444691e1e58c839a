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
