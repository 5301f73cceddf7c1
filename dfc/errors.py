"""The one error type users see: printed as a single line by the CLI, with a non-zero exit."""


class UserError(Exception):
    """Bad input or environment: a message for a person, never a traceback."""

    exit_code = 2
