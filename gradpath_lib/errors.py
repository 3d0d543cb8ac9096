"""One error type for bad input, with messages that name the problem and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class GradpathError(ValueError):
    """Bad input or state the user can fix; the message says what and how."""


def check_choice(what: str, value: object, choices: Iterable[object]) -> None:
    """Raise GradpathError unless `value` is one of `choices`, listing the valid ones."""
    valid = list(choices)
    if value not in valid:
        listed = ", ".join(str(c) for c in valid)
        raise GradpathError(f"unknown {what} {value!r}; valid choices: {listed}")


def error_line(err: BaseException) -> str:
    """`err` in one line: its type and the first line of its message (for tables of what failed)."""
    message = str(err).strip()
    return f"{type(err).__name__}: {message.splitlines()[0]}" if message else type(err).__name__
