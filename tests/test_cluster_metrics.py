"""RunMetrics: counts and the cost estimate in-process, and the same metrics exported by a real Ray head's
metrics agent in Prometheus format (what the dashboard's Grafana panels and a Prometheus scrape read)."""

from __future__ import annotations

import re
import shlex
import time
import urllib.request

import pytest

from doodl_ray.cluster.metrics import RunMetrics
from tests.ray_head import ray_head  # noqa: F401


def test_counts_and_cost():
    metrics = RunMetrics("unit", gpu_hourly_price=1.8)
    metrics.item_done(seconds=2.0, gpu_seconds=1000.0)
    metrics.item_done(seconds=None, gpu_seconds=800.0)  # a row without timings counts as 0 s
    metrics.item_failed()
    assert metrics.cost() == {"items_done": 2, "items_failed": 1, "gpu_seconds": 1800.0, "gpu_hourly_price": 1.8,
                              "estimated_usd": pytest.approx(0.9)}
    unpriced = RunMetrics("unit-free")
    unpriced.item_done(1.0, 36.0)
    assert unpriced.cost()["estimated_usd"] is None and unpriced.cost()["gpu_seconds"] == 36.0


PROBE = ("import ray, time; ray.init(address='auto'); from doodl_ray.cluster.metrics import RunMetrics; "
         "m = RunMetrics('metrics-probe', 3.6); m.item_done(1.5, 10.0); m.item_done(0.5, 10.0); m.item_failed(); "
         "time.sleep(120)")


def _samples(url: str) -> dict[str, float]:
    """Prometheus text lines of the probe's run: metric name (tags dropped) -> value."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found = {}
    for line in text.splitlines():
        match = re.match(r'^(ray_doodl_\w+)\{[^}]*run_id="metrics-probe"[^}]*\} (\S+)$', line)
        if match and 'le="' not in line:
            found[match.group(1)] = float(match.group(2))
    return found


def test_metrics_reach_prometheus(ray_head):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.dashboard_url)
    job = client.submit_job(entrypoint=f"python -c {shlex.quote(PROBE)}")
    try:
        deadline, samples = time.monotonic() + 60, {}
        while time.monotonic() < deadline and len(samples) < 5:
            time.sleep(1)
            samples = _samples(ray_head.metrics_url)
    finally:
        client.stop_job(job)
    done = next(v for k, v in samples.items() if k.startswith("ray_doodl_items_done"))
    failed = next(v for k, v in samples.items() if k.startswith("ray_doodl_items_failed"))
    gpu = next(v for k, v in samples.items() if k.startswith("ray_doodl_gpu_seconds"))
    assert (done, failed, gpu) == (2.0, 1.0, 20.0)
    assert samples["ray_doodl_cost_usd"] == pytest.approx(20 / 3600 * 3.6)
    assert samples["ray_doodl_item_seconds_count"] == 2.0  # (Ray exports the sum from bucket midpoints)
