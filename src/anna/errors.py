"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class AnnaError(Exception):
    """A user-facing error: bad input, a missing file, an infeasible request. Never a bug."""
