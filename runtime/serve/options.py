"""What an operator sets for ``cvdvae serve``: the model and its batching (``ServeOptions``), and the
per-request budget (``Limits``). Both are plain data, JSON-able for ``serve deploy``'s config,
which therefore never holds the token itself, only the name of the environment variable that does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..limits import Limits as ImageLimits


@dataclass(frozen=True)
class Limits(ImageLimits):
    """The pipeline's bounds on one image (``runtime.limits``), tighter for a service, and each
    request's budget. A header beyond them is refused before any pixel is decoded."""

    max_photo_pixels: int = 4096 * 4096      # a photo for ``faces``: as large as an LR image may be
    max_output_pixels: int = 64_000_000      # one whole photo returned (``faces``), after upscaling
    max_body_bytes: int = 8 * 2**20
    max_faces: int = 16                      # faces super-resolved per photo (``faces``)
    max_response_pixels: int = 256_000_000   # every image of one answer together: n x (photo + faces)
    max_n: int = 16
    timeout_s: float = 120.0                 # the whole request, from its first byte to its last
    body_timeout_s: float = 30.0             # reading the body: a slow client gets 408 and frees its slot
    max_queued: int = 64                     # requests waiting for a model replica; beyond: 503
    retry_after_s: int = 5                   # how long a 503 asks the client to wait
    max_requests: int = 256                  # requests the ingress holds at once
    max_bytes_in_flight: int = 128 * 2**20   # their bodies together (a body of unknown length: max_body_bytes)
    photos_at_once: int = 2                  # photos a model replica works on together (each ~0.9 GB at most)
    image_threads: int = 4                   # worker threads per replica: decoding, alignment, paste, encoding


@dataclass(frozen=True)
class ServeOptions:
    model: str
    backend: str = "auto"
    max_batch_size: int = 8         # requests Ray Serve gathers into one batch
    batch_wait_s: float = 0.01      # how long a batch waits to fill
    max_batch: int | None = None    # images per engine call (default: the backend's own limit)
    max_n: int | None = None        # samples per image per engine call
    threads: int = 0                # engine threads (0: the backend's default)
    token_env: str | None = None    # the environment variable that holds the bearer token (None: no token)
    cors_origins: tuple[str, ...] = ()  # web origins besides the service's own that may call it ("*": any)
    host: str = "127.0.0.1"         # the address the service listens on (its name answers; ``runtime.serve.hosts``)
    allowed_hosts: tuple[str, ...] = ()  # more names clients may reach it by ("*": any)
    limits: Limits = field(default_factory=Limits)
    precision: str = "auto"         # what the engine computes in (runtime.backends.PRECISION_CHOICES)

    def to_args(self) -> dict[str, Any]:
        """JSON-able, for ``serve deploy``'s config (``app_builder`` reads it back)."""
        return {**asdict(self), "cors_origins": list(self.cors_origins), "allowed_hosts": list(self.allowed_hosts)}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "ServeOptions":
        return cls(**{**args, "cors_origins": tuple(args.get("cors_origins", ())),
                      "allowed_hosts": tuple(args.get("allowed_hosts", ())),
                      "limits": Limits(**args.get("limits", {}))})
