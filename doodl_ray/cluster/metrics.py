"""Per-run metrics through Ray's metrics API: the driver's in-process tally (jobs.metrics.RunTally: counts,
GPU seconds, the cost estimate from an hourly price) also exported by each node's metrics agent.

Metrics made with ray.util.metrics show on the Ray dashboard and in Prometheus (with Ray's `ray_` prefix:
ray_doodl_items_done, ray_doodl_items_failed, ray_doodl_item_seconds, ray_doodl_gpu_seconds,
ray_doodl_cost_usd, and the capacity: ray_doodl_actors_ready of ray_doodl_actors_wanted), tagged with the
run id. `doodl-ray run` and `backfill` hand one to the driver."""

from __future__ import annotations

from typing import Optional

from ray.util.metrics import Counter, Gauge, Histogram

from doodl_ray.jobs.metrics import RunTally

SECONDS_BUCKETS = [0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800]
"""Histogram boundaries for seconds per item: no-op items up to DOODL on large models."""
_TAGS = ("run_id",)


class RunMetrics(RunTally):
    """The tally of one driver session, exported through Ray's metrics API as it grows (needs Ray up)."""

    def __init__(self, run_id: str, gpu_hourly_price: Optional[float] = None):
        super().__init__(gpu_hourly_price)
        self._done = Counter("doodl_items_done", "Items finished successfully.", _TAGS)
        self._failed = Counter("doodl_items_failed", "Items recorded as failed after their attempts.", _TAGS)
        self._seconds = Histogram("doodl_item_seconds", "Engine seconds per item.", SECONDS_BUCKETS, _TAGS)
        self._gpu = Counter("doodl_gpu_seconds", "GPU seconds spent on finished items.", _TAGS)
        self._cost = Gauge("doodl_cost_usd", "Estimated GPU cost of the run so far, in US dollars.", _TAGS)
        self._ready = Gauge("doodl_actors_ready", "Worker actors ready to run items.", _TAGS)
        self._wanted = Gauge("doodl_actors_wanted", "Worker actors the run asks for (lost ones are restarted).", _TAGS)
        for metric in (self._done, self._failed, self._seconds, self._gpu, self._cost, self._ready, self._wanted):
            metric.set_default_tags({"run_id": run_id})

    def item_done(self, seconds: Optional[float], gpu_seconds: Optional[float]) -> None:
        super().item_done(seconds, gpu_seconds)
        self._done.inc()
        self._seconds.observe(seconds or 0.0)
        if gpu_seconds:
            self._gpu.inc(gpu_seconds)
        usd = self.estimated_usd()
        if usd is not None:
            self._cost.set(usd)

    def actors(self, ready: int, wanted: int) -> None:
        if (ready, wanted) != self.capacity:
            self._ready.set(ready)
            self._wanted.set(wanted)
        super().actors(ready, wanted)

    def item_failed(self) -> None:
        super().item_failed()
        self._failed.inc()
