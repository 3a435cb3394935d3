"""Per-run metrics through Ray's metrics API, plus a cost estimate from GPU seconds and an hourly price.

The driver records every item's final outcome here. Metrics made with ray.util.metrics are exported by
each node's metrics agent, so they show on the Ray dashboard and in Prometheus (with Ray's `ray_`
prefix: ray_doodl_items_done, ray_doodl_items_failed, ray_doodl_item_seconds, ray_doodl_gpu_seconds,
ray_doodl_cost_usd), tagged with the run id. The same totals are kept in the process for the run's
manifest, because Prometheus is optional and the manifest is what stays with the results. The cost is
an estimate: GPU seconds are each item's share of its batch's wall time times the GPUs per actor, so
it leaves out actor start-up and idle workers."""

from __future__ import annotations

from typing import Any, Optional

from ray.util.metrics import Counter, Gauge, Histogram

SECONDS_BUCKETS = [0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800]
"""Histogram boundaries for seconds per item: no-op items up to DOODL on large models."""
_TAGS = ("run_id",)


class RunMetrics:
    """Items done/failed, seconds per item, GPU seconds and the estimated cost of one driver session."""

    def __init__(self, run_id: str, gpu_hourly_price: Optional[float] = None):
        self.gpu_hourly_price = gpu_hourly_price
        self.done = 0
        self.failed = 0
        self.gpu_seconds = 0.0
        self._done = Counter("doodl_items_done", "Items finished successfully.", _TAGS)
        self._failed = Counter("doodl_items_failed", "Items recorded as failed after their attempts.", _TAGS)
        self._seconds = Histogram("doodl_item_seconds", "Engine seconds per item.", SECONDS_BUCKETS, _TAGS)
        self._gpu = Counter("doodl_gpu_seconds", "GPU seconds spent on finished items.", _TAGS)
        self._cost = Gauge("doodl_cost_usd", "Estimated GPU cost of the run so far, in US dollars.", _TAGS)
        for metric in (self._done, self._failed, self._seconds, self._gpu, self._cost):
            metric.set_default_tags({"run_id": run_id})

    def item_done(self, seconds: Optional[float], gpu_seconds: Optional[float]) -> None:
        """One item finished: its engine seconds and its GPU seconds (None counts as 0)."""
        self.done += 1
        self.gpu_seconds += gpu_seconds or 0.0
        self._done.inc()
        self._seconds.observe(seconds or 0.0)
        if gpu_seconds:
            self._gpu.inc(gpu_seconds)
        usd = self.estimated_usd()
        if usd is not None:
            self._cost.set(usd)

    def item_failed(self) -> None:
        """One item recorded as failed (its attempts are spent, or the failure is permanent)."""
        self.failed += 1
        self._failed.inc()

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
