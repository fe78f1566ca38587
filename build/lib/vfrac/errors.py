"""The one exception type for bad input, so callers can tell user errors from bugs."""


class InputError(ValueError):
    """Bad input data; the message names the file (or patient) and the reason."""
