"""Errors a user can act on.

Commands print these as one line and exit with status 2 (bad usage or bad input);
anything else is a bug or an environment failure and exits with status 1.
"""


class CVDVAEError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(CVDVAEError):
    """A model config that is malformed or inconsistent."""


class WeightsError(CVDVAEError):
    """A weight file that cannot be read safely or does not match the model."""
