"""What the driver knows of its Ray cluster beyond its own actors: whether the head answers, and which nodes
Ray reports alive.

Actor calls go straight from the driver to its actors, so a run goes on computing while the head (GCS) is
gone, but nothing can be restarted then, and Ray ends the driver's process once the head has been
unreachable for `gcs_rpc_server_reconnect_timeout_s` (60 s by default) with exit status 1 and a message of
its own. The watch asks the head for its node table every few seconds with a short timeout, and calls the
head lost after `timeouts.head_seconds`, by default a margin before Ray would end the process, so the driver
ends with a line of its own and a manifest that says so. A head that comes back in time (GCS fault
tolerance, cluster/README.md) is not lost. The node table also tells the driver which nodes Ray still
reports alive, so a replacement actor is not sent to a node that just lost one."""

from __future__ import annotations

import os
import time
from typing import Optional

RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_RECONNECT_DEFAULT = 60.0
PROBE_EVERY = 2.0  # seconds between probes
PROBE_TIMEOUT = 1.0  # seconds a probe waits for the head


def ray_gives_up_after() -> float:
    """Seconds without its head after which Ray ends this process (its own setting, read as Ray reads it)."""
    return float(os.environ.get(RECONNECT_ENV, RAY_RECONNECT_DEFAULT))


def default_head_seconds() -> float:
    """10 s before Ray gives up (the probes notice an outage up to 3 s late): time to write the manifest and
    say why."""
    return max(PROBE_EVERY + PROBE_TIMEOUT, ray_gives_up_after() - 10.0)


class ClusterWatch:
    """Probes the connected cluster's head; `alive` holds the ids (hex) of the nodes it last reported alive."""

    def __init__(self, head_seconds: Optional[float] = None):
        import ray

        self.head_seconds = head_seconds if head_seconds is not None else default_head_seconds()
        self.address: str = ray.get_runtime_context().gcs_address
        self.alive: set[str] = set()
        self.unreachable_since: Optional[float] = None
        self._next_probe = 0.0

    def poll(self, force: bool = False) -> None:
        """Probe the head when a probe is due (or now, with `force`)."""
        clock = time.monotonic()
        if not force and clock < self._next_probe:
            return
        self._next_probe = clock + PROBE_EVERY
        try:
            nodes = _gcs_client().get_all_node_info(timeout=PROBE_TIMEOUT)
        except Exception:  # RpcError, timeouts: the head does not answer
            if self.unreachable_since is None:
                self.unreachable_since = clock
            return
        self.unreachable_since = None
        self.alive = {node_id.hex() for node_id, info in nodes.items() if info.state == _ALIVE}

    @property
    def unreachable_for(self) -> float:
        """Seconds since the first unanswered probe of the current outage; 0 while the head answers."""
        return 0.0 if self.unreachable_since is None else time.monotonic() - self.unreachable_since

    @property
    def head_lost(self) -> bool:
        return self.unreachable_since is not None and self.unreachable_for >= self.head_seconds


_ALIVE = 0  # GcsNodeInfo.GcsNodeState.ALIVE


def _gcs_client():  # type: ignore[no-untyped-def]
    """This process's client of the head (Ray keeps one per connected process; it has per-call timeouts,
    which ray.nodes() lacks)."""
    from ray._private.worker import global_worker

    return global_worker.gcs_client
