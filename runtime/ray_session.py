"""Which Ray a command runs on: the one it is told to join, or its own."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def ray_address(address: str | None) -> str:
    """``address`` when given, else ``$RAY_ADDRESS`` (set for a Ray job's entrypoint), else
    ``"local"``: a Ray started for this process. Ray's own default for no address joins the newest
    cluster any process on this machine started (its ``ray_current_cluster`` file), so a command
    would land on someone else's cluster by chance."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def start_or_join(address: str | None, **settings) -> None:
    """``ray.init`` on :func:`ray_address`, without a dashboard, keeping workers' output in Ray's
    session logs and this process's logging as it is; ``settings`` go to ``ray.init`` as well."""
    import ray

    ray.init(address=ray_address(address), include_dashboard=False, log_to_driver=False, configure_logging=False,
             **settings)


@contextmanager
def ray_for_a_run(address: str | None, **settings) -> Iterator[None]:
    """Ray for the block: the one this process already has, else one started or joined here and let
    go at the end. Within it ``sys.stdout`` is stderr: Ray's driver prints the cluster's error
    messages (a worker died, workers slow to start) to ``sys.stdout`` whatever ``log_to_driver``
    says, and a command's stdout holds only its own output (``--json``'s document)."""
    import ray

    ours, sys.stdout = sys.stdout, sys.stderr
    started = not ray.is_initialized()
    try:
        if started:
            start_or_join(address, **settings)
        yield
    finally:
        if started:
            ray.shutdown()
        sys.stdout = ours
