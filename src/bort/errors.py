"""The one exception type users see: a single line that names the problem and the fix."""


class BortError(Exception):
    """Bad input or an unrecoverable condition; the CLI prints it as one line and exits non-zero."""
