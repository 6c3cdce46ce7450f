"""Errors a user can act on.

Commands print these as one line and exit with status 2 (bad usage or bad input);
anything else is a bug or an environment failure and exits with status 1.

A message never names a command-line flag: where the remedy is a setting, the message holds
a ``{name}`` field and the setting's value travels with it (None: the setting itself, no
value). A Python caller reads it as the keyword to pass (``from_hr=True``); a command fills
the field with its own flag (``--from-hr``, ``runtime.cli.common``). A message may name another command to run when that
is the remedy (``cvdvae fetch mtcnn``).
"""

from __future__ import annotations

from typing import Any, Callable

# Settings that are not keyword arguments in Python: how a Python caller reaches them.
PYTHON_SPELLING = {"faces": "Pipeline.faces() instead"}


def python_setting(name: str, value: Any) -> str:
    """A setting as a Python caller writes it (a value of None names the setting alone)."""
    if name in PYTHON_SPELLING:
        return PYTHON_SPELLING[name]
    return name if value is None else f"{name}={value!r}"


class CVDVAEError(Exception):
    """Base class: the message says what is wrong and what to do."""

    def __init__(self, message: str, **settings: Any):
        self.template, self.settings = message, settings
        super().__init__(self.describe(python_setting))

    def describe(self, spell: Callable[[str, Any], str]) -> str:
        """The message with each setting's ``{name}`` written by ``spell(name, value)`` (other braces,
        say in a file name, are left as they are)."""
        message = self.template
        for name, value in self.settings.items():
            message = message.replace("{" + name + "}", spell(name, value))
        return message


class ConfigError(CVDVAEError):
    """A model config that is malformed or inconsistent."""


class WeightsError(CVDVAEError):
    """A weight file that cannot be read safely or does not match the model."""


class InputError(CVDVAEError):
    """One input image is unusable (the others are still processed). ``kind`` says how: unreadable,
    unsupported_format, too_large, wrong_size, missing, exists, no_face (the service answers each
    with its own status)."""

    def __init__(self, message: str, kind: str = "unreadable", **settings: Any):
        super().__init__(message, **settings)
        self.kind = kind


class NoFaceFound(InputError):
    """The photo has no face the search settings accept."""

    def __init__(self, message: str, **settings: Any):
        super().__init__(message, "no_face", **settings)


class NonFiniteSamples(CVDVAEError):
    """Samples came out with NaN or Inf: the model is numerically broken. ``broken`` lists, per
    input (or per face of a photo), the indices of the broken samples; ``values`` is how many
    NaN/Inf the engine counted. To keep the finite samples, sample with ``keep_non_finite=True``:
    the output then marks the broken ones instead of this being raised."""

    def __init__(self, message: str, broken: list[list[int]], values: int):
        super().__init__(message)
        self.broken, self.values = broken, values

    @property
    def count(self) -> int:
        """How many samples are broken."""
        return sum(len(indices) for indices in self.broken)


class MissingExtra(CVDVAEError):
    """A job needs optional dependencies that are not installed (``cvdvae.extras``)."""

    def __init__(self, job: str, extra: str):
        super().__init__(f"{job} needs the {extra} extra: pip install 'cvdvae[{extra}]'")
        self.job, self.extra = job, extra
