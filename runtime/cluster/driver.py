"""A run over a data set on Ray: the inputs read as a Ray Data data set, written by actors that
each hold one engine (``worker.InputWriter``), one row per input back to this process.

Nothing here schedules: Ray Data makes the blocks (``block_inputs`` inputs each, so a million
small files are not a million tasks), hands batches of ``batch_inputs`` to the actors as they
free up, restarts an actor that dies and runs its batch again. Inputs the ledger holds as
complete (the same content under the same settings) are skipped before the data set is made,
unless the run overwrites: then every input is done again; bad inputs go to the run's record (said as
they come back, and listed in ``OUT/failures_s{seed}.txt``), and the rest go on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cvdvae.fileio import sha256_file

from ..ray_session import ray_for_a_run
from ..run_files import RunRecord, RunSettings, Spell
from .ledger import Ledger
from .worker import EngineChoice, InputWriter, record_of


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None          # None: a Ray started here for this run; "auto" or host:port: a cluster
    actors_per_node: int = 1
    cpus_per_actor: float | None = None  # reserved per actor, its engine's threads (None: reserve 1, and
                                         # the engine threads a node's CPUs shared out among its actors)
    gpus_per_actor: float = 0.0
    batch_inputs: int = 16              # inputs per actor call
    block_inputs: int = 256             # inputs per Ray Data block


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray for the run (``ray_session.ray_for_a_run``): the cluster at ``address``, or a local one;
    its own logs stay in its session folder, Ray Data says warnings and draws its progress bars."""
    import logging
    import os

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default; silences its tip
    with ray_for_a_run(address, logging_level=logging.WARNING):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        yield


@dataclass(frozen=True)
class ActorShape:
    actors: int       # in all: actors per node x nodes alive
    cpus: float       # reserved per actor
    gpus: float
    threads: int      # each engine's CPU threads


def actor_shape(options: ClusterOptions) -> ActorShape:
    """How many actors, and what each reserves and runs with, for the nodes alive now. Without
    ``cpus_per_actor`` an actor reserves one CPU, so the pool always fits beside Ray Data's own
    tasks, and its engine threads the node's CPUs shared out among the node's actors."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    node_cpus = min(node["Resources"].get("CPU", 1.0) for node in nodes)
    threads = int(options.cpus_per_actor or max(1, node_cpus // options.actors_per_node))
    return ActorShape(options.actors_per_node * len(nodes), options.cpus_per_actor or 1.0, options.gpus_per_actor,
                      threads)


def input_digest(path: Path) -> str:
    """The input's content's sha256 ("" when it cannot be read: the actor that reads it says why)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def run_on_ray(engine: EngineChoice, paths: list[Path], settings: RunSettings, key: str, options: ClusterOptions,
               spell: Spell, record: RunRecord, progress: bool = True) -> None:
    """Every input of ``paths`` not complete in the ledger written by the actors, into ``record``."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    ledger = Ledger(settings.out, key, settings.seed)
    digests = {path: input_digest(path) for path in paths}
    todo = [path for path in paths if settings.overwrite or not ledger.complete(path.stem, digests[path])]
    record.skipped += len(paths) - len(todo)
    if not todo:
        return
    with connected(options.address):
        DataContext.get_current().enable_progress_bars = progress
        shape = actor_shape(options)
        record.cluster = {"actors": shape.actors, "cpus_per_actor": shape.cpus, "gpus_per_actor": shape.gpus}
        inputs = ray.data.from_items([{"path": str(path), "sha256": digests[path]} for path in todo],
                                     override_num_blocks=max(1, math.ceil(len(todo) / options.block_inputs)))
        written = inputs.map_batches(InputWriter, fn_constructor_args=(replace(engine, threads=shape.threads),
                                                                       settings, key, spell),
                                     batch_size=options.batch_inputs, compute=ActorPoolStrategy(size=shape.actors),
                                     num_cpus=shape.cpus, num_gpus=shape.gpus or None)
        for row in written.iter_rows():
            record.merge(record_of(row))
