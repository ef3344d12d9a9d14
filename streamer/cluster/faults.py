"""Failures injected on purpose: the cluster's fault tests and a ward's fire drills.

A timed ``kill -9`` lands wherever the process happens to be; these land at one named point, so a
test of what follows (a retry, a restart, a resume) runs the same way every time. Nothing is
injected unless a :class:`Faults` is given to :class:`streamer.cluster.driver.Cluster` for a stream.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    """Where one stream's first incarnation fails (a restarted incarnation runs without faults).

    Attributes:
        replica_exit_on_request: the stream's n-th embedding request (from 1) tells the replica
            that receives it to exit at once, while it holds that request (and any other it holds):
            a replica that dies mid-request. The request is sent again and counted in ``retries``.
        exit_after_checkpoint: after window n is checkpointed and before it is published, the
            stream actor waits until its sinks have delivered what they hold, then exits: Ray
            restarts it, and window n is never published (nor published twice).
    """

    replica_exit_on_request: int | None = None
    exit_after_checkpoint: int | None = None
