"""What the driver tells a run's metrics: each item's final outcome. The interface lives here, below the
cluster layer, so the driver never imports `cluster`; `cluster.metrics.RunMetrics` also exports the same
counts through Ray's metrics API, and `doodl-ray run` hands that one to the driver.

The totals kept in the process are what the manifest and the summary record (Prometheus is optional; the
manifest stays with the results). The cost is an estimate: GPU seconds are each item's share of its batch's
wall time times the GPUs per actor, so it leaves out actor start-up and idle workers."""

from __future__ import annotations

from typing import Any, Optional, Protocol


class RunRecorder(Protocol):
    """Receives every item's final outcome and the run's capacity (actors ready of those wanted); `cost()` is
    the manifest's and summary's `cost` section."""

    def item_done(self, seconds: Optional[float], gpu_seconds: Optional[float]) -> None: ...

    def item_failed(self) -> None: ...

    def actors(self, ready: int, wanted: int) -> None: ...

    def cost(self) -> dict[str, Any]: ...


class RunTally:
    """Items done/failed, GPU seconds and the estimated cost of one driver session, in the process."""

    def __init__(self, gpu_hourly_price: Optional[float] = None):
        self.gpu_hourly_price = gpu_hourly_price
        self.done = 0
        self.failed = 0
        self.gpu_seconds = 0.0
        self.capacity = (0, 0)  # (ready, wanted) actors

    def item_done(self, seconds: Optional[float], gpu_seconds: Optional[float]) -> None:
        """One item finished: its engine seconds and its GPU seconds (None counts as 0)."""
        self.done += 1
        self.gpu_seconds += gpu_seconds or 0.0

    def item_failed(self) -> None:
        """One item recorded as failed (its attempts are spent, or the failure is permanent)."""
        self.failed += 1

    def actors(self, ready: int, wanted: int) -> None:
        """The run's capacity: actors ready of those wanted (fewer while lost ones are being restarted)."""
        self.capacity = (ready, wanted)

    def estimated_usd(self) -> Optional[float]:
        """GPU hours times the hourly price; None when no price is configured."""
        if self.gpu_hourly_price is None:
            return None
        return self.gpu_seconds / 3600 * self.gpu_hourly_price

    def cost(self) -> dict[str, Any]:
        """The `cost` section of the run's manifest and summary."""
        usd = self.estimated_usd()
        return {"items_done": self.done, "items_failed": self.failed, "gpu_seconds": round(self.gpu_seconds, 3),
                "gpu_hourly_price": self.gpu_hourly_price, "estimated_usd": None if usd is None else round(usd, 6)}
