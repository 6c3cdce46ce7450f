"""The package's version: what ``meta.json`` records as the writer of an export, and ``cvdvae --version`` says."""

__version__ = "0.2.0"
