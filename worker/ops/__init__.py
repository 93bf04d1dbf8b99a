"""Operating a running worker: the metrics and health server, its metrics and probes."""

from worker.ops.server import OpsServer

__all__ = ["OpsServer"]
