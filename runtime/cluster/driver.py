"""A run over a data set on Ray: the inputs read as a Ray Data data set, written by actors that
each hold one engine (``worker.InputWriter``), one row per input back to this process.

Nothing here schedules: Ray Data makes the blocks (``block_inputs`` inputs each, so a million
small files are not a million tasks), hands batches of ``batch_inputs`` to the actors as they
free up, restarts an actor that dies and runs its batch again. Inputs the ledger holds as
complete are skipped before the data set is made; bad inputs are listed, one line each, in
``OUT/failures_s{seed}.txt``, and the rest go on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from cvdvae.fileio import atomic_path

from ..run_files import RunSettings, Spell
from .ledger import Ledger
from .worker import EngineChoice, InputWriter

FAILURES = "failures_s{seed}.txt"


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None          # None: a Ray started here for this run; "auto" or host:port: a cluster
    actors_per_node: int = 1
    cpus_per_actor: float | None = None  # reserved per actor, its engine's threads (None: reserve 1, and
                                         # the engine threads a node's CPUs shared out among its actors)
    gpus_per_actor: float = 0.0
    batch_inputs: int = 16              # inputs per actor call
    block_inputs: int = 256             # inputs per Ray Data block


@dataclass
class ClusterRun:
    """What happened: the summary line and ``--json``."""

    inputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    outputs: int = 0
    actors: int = 0
    cpus_per_actor: float = 0.0
    gpus_per_actor: float = 0.0
    wall_s: float = 0.0
    failures_file: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "done": self.done, "skipped": self.skipped, "failed": len(self.failed),
                "samples": self.samples, "outputs": self.outputs, "wall_s": round(self.wall_s, 3),
                "samples_per_s": round(self.samples / self.wall_s, 3) if self.wall_s else None,
                "actors": self.actors, "cpus_per_actor": self.cpus_per_actor, "gpus_per_actor": self.gpus_per_actor,
                "failures_file": self.failures_file, "errors": self.failed}


def connect(address: str | None) -> None:
    """Ray: the cluster at ``address``, or a local one; its own logs stay in its session folder,
    Ray Data says warnings and draws its progress bars."""
    import logging
    import os

    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default; silences its tip
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False,
                 configure_logging=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)


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


def run_on_ray(engine: EngineChoice, paths: list[Path], settings: RunSettings, key: str, options: ClusterOptions,
               spell: Spell, progress: bool = True, say: Callable[[str], None] | None = None) -> ClusterRun:
    """Every input of ``paths`` not complete in the ledger written by the actors; ``say(line)`` for
    each failure as it comes back."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    start = time.perf_counter()
    ledger = Ledger(settings.out, key)
    todo = [path for path in paths if not ledger.complete(path.stem)]
    run = ClusterRun(inputs=len(paths), skipped=len(paths) - len(todo))
    if todo:
        connect(options.address)
        DataContext.get_current().enable_progress_bars = progress
        shape = actor_shape(options)
        run.actors, run.cpus_per_actor, run.gpus_per_actor = shape.actors, shape.cpus, shape.gpus
        inputs = ray.data.from_items([{"path": str(path)} for path in todo],
                                     override_num_blocks=max(1, math.ceil(len(todo) / options.block_inputs)))
        written = inputs.map_batches(InputWriter, fn_constructor_args=(replace(engine, threads=shape.threads),
                                                                       settings, key, spell),
                                     batch_size=options.batch_inputs, compute=ActorPoolStrategy(size=shape.actors),
                                     num_cpus=shape.cpus, num_gpus=shape.gpus or None)
        for row in written.iter_rows():
            if row["status"] == "done":
                run.done += 1
                run.samples += int(row["samples"])
                run.outputs += int(row["outputs"])
            else:
                run.failed.append({"input": row["input"], "error": row["error"],
                                   **({"broken": True} if row["status"] == "broken" else {})})
                if say is not None:
                    say(row["error"])
    run.failures_file = write_failures(settings, run.failed)
    run.wall_s = time.perf_counter() - start
    return run


def write_failures(settings: RunSettings, failed: list[dict]) -> str | None:
    """The failures of this run, one line each (a previous run's list is replaced, or removed when
    none failed)."""
    path = settings.out / FAILURES.format(seed=settings.seed)
    if not failed:
        path.unlink(missing_ok=True)
        return None
    with atomic_path(path) as tmp:
        tmp.write_text("".join(item["error"].replace("\n", " ") + "\n" for item in failed))
    return str(path)
