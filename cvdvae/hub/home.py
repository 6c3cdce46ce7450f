"""``$CVDVAE_HOME``: the one folder where fetched weights live."""

from __future__ import annotations

import os
from pathlib import Path


def cvdvae_home() -> Path:
    """``$CVDVAE_HOME``, by default ``~/.cache/cvdvae``."""
    return Path(os.environ.get("CVDVAE_HOME", Path.home() / ".cache" / "cvdvae")).expanduser()
