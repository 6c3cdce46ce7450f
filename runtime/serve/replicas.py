"""Why a model replica died: lost from outside (its node, or killed by an operator or by Ray Serve's
controller), or of its own (its process crashed or was killed for memory while it worked).

The ingress runs a request once more only in the first case: a request that made its replica
crash would take the next one down too. Ray keeps each dead actor's death cause in its control
store (GCS), written by the raylets: ``ActorDiedErrorContext.reason`` is ``NODE_DIED`` when the
node was lost and ``RAY_KILL`` after ``ray.kill``; a process that exited or was killed by the
operating system is ``WORKER_DIED``, and a kill by Ray's memory monitor carries an
``oom_context``. The cause is read from the actor table (``ray._private.state``, what
``ray list actors --detail`` shows) once the actor is marked dead: a lost node is noticed by its
missed health checks, so this waits for it, within the request's time.
"""

from __future__ import annotations

import time
from typing import Any

OUTSIDE = ("NODE_DIED", "RAY_KILL")  # reasons the replica's own work cannot have caused
POLL_S = 0.1


def death_cause(actor_id: str) -> tuple[str, Any] | None:
    """(the reason's name, the death cause) of a dead actor; None while it is not marked dead."""
    from ray._private.state import state
    from ray.core.generated.common_pb2 import ActorDiedErrorContext

    info = state.actor_table(actor_id)
    if not info or info["State"] != "DEAD":
        return None
    cause = info["DeathCause"]
    if cause.HasField("oom_context"):
        return "OUT_OF_MEMORY", cause
    reason = cause.actor_died_error_context.reason if cause.HasField("actor_died_error_context") else 0
    return ActorDiedErrorContext.Reason.Name(reason), cause


def lost_from_outside(err: Exception, wait_s: float) -> tuple[bool, str]:
    """Whether the replica behind ``err`` (a ``RayActorError``) was lost from outside, and its cause
    in words; waits up to ``wait_s`` for Ray to mark it dead (then: not known, so not retried)."""
    if getattr(err, "preempted", False):
        return True, "its node was preempted"
    actor_id = getattr(err, "actor_id", None)
    if not actor_id:
        return False, "death cause not reported"
    deadline = time.monotonic() + wait_s
    while (found := death_cause(actor_id)) is None:
        if time.monotonic() > deadline:
            return False, "not marked dead in time"
        time.sleep(POLL_S)
    reason, _ = found
    return reason in OUTSIDE, reason
