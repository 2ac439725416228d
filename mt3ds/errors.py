"""The one exception type for a user's mistake: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): shown as one line, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line, or its type's name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
