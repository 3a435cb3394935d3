"""The benchmarks run end to end at toy size and print their JSON line (figures are measured elsewhere)."""

import json
import subprocess
import sys


def _last_json(args):
    proc = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "bench", *args, "--json"], capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_grad_benchmark_reports_every_mode():
    result = _last_json(["grad", "--steps", "2", "4", "--size", "16", "--repeats", "1"])
    assert result["steps"] == [2, 4]
    for key in ("peak_mb", "sec_per_grad"):
        assert set(result[key]) == {"autograd", "checkpoint", "reversible"}
        assert all(len(v) == 2 for v in result[key].values())
    assert result["peak_mb"]["autograd"][1] > result["peak_mb"]["autograd"][0]  # autograd grows with steps
    assert result["roundtrip_rel_err"]["float64"] <= 1e-9 < result["roundtrip_rel_err"]["float32"]


def test_sd_benchmark_runs_at_toy_size():
    result = _last_json(["sd", "--tiny", "--device", "cpu", "--steps", "2", "--iterations", "1", "--crops", "2"])
    assert result["sec_per_iteration"] > 0 and result["sec_per_cfg_unet_forward"] > 0
