"""The exceptions users see: a single line that names the problem and the fix."""


class BortError(Exception):
    """Bad input or an unrecoverable condition; the CLI prints it as one line and exits with code 2."""


class NonFiniteLoss(BortError):
    """Training diverged: the loss became NaN or infinite (the search scores such an arm ê = inf)."""
