"""The one exception type the CLI turns into a one-line message and exit code 2."""


class EcnreidError(Exception):
    """A user-facing error: bad input, a missing file, an inconsistent resume.

    The message is one line that names the path (or option) and what is wrong with it. A broken internal
    invariant (a programming error, not the user's input) raises ``ValueError`` / ``AssertionError`` instead,
    so that it keeps its traceback.
    """
