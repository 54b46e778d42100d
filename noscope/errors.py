"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class NoscopeError(Exception):
    """A user-facing error: bad input, missing weights, impossible targets.

    The message must be one line that says what is wrong and, where possible, how to fix it.
    """

    exit_code = 1


class UsageError(NoscopeError):
    """Bad arguments (exit code 2, like click's own usage errors)."""

    exit_code = 2
