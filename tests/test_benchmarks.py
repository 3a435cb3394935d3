"""The benchmarks run end to end at toy size and print their JSON line (figures are measured elsewhere)."""

import json
import subprocess
import sys

import pytest

from doodl_ray.cli import main


def _last_json(args):
    proc = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "bench", *args, "--json"], capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_grad_benchmark_reports_every_memory_flat_mode():
    """The memory-flat modes and the single chain's plain autograd on the DDIM model (a fresh process each, so
    EDICT's plain autograd is left out for time; the flow model's gradients are checked in test_flow)."""
    modes = ["chain autograd", "chain checkpoint", "edict checkpoint", "edict reversible"]
    result = _last_json(["grad", "--steps", "2", "4", "--size", "16", "--repeats", "1", "--rounds", "1", "--models", "ddim",
                         "--modes", *modes])
    assert result["steps"] == [2, 4] and set(result["models"]) == {"ddim"}
    for model in result["models"].values():
        for key in ("peak_mb", "sec_per_grad", "evals_per_grad"):
            assert set(model[key]) == set(modes)
            assert all(len(v) == 2 for v in model[key].values())
        assert model["peak_mb"]["chain autograd"][1] > model["peak_mb"]["chain autograd"][0]  # grows with steps
        # network evaluations per gradient: the single chain 3N - 1, EDICT's checkpoint 6N - 2, reversible 6N
        assert model["evals_per_grad"]["chain checkpoint"] == [3 * 2 - 1, 3 * 4 - 1]
        assert model["evals_per_grad"]["edict checkpoint"] == [6 * 2 - 2, 6 * 4 - 2]
        assert model["evals_per_grad"]["edict reversible"] == [6 * 2, 6 * 4]
        assert model["roundtrip_rel_err"]["float64"] <= 1e-9 < model["roundtrip_rel_err"]["float32"]


def test_sd_benchmark_runs_at_toy_size():
    result = _last_json(["sd", "--tiny", "--device", "cpu", "--steps", "2", "--iterations", "1", "--crops", "2"])
    assert result["model"] == "sd15" and result["passes"] == 2
    assert result["sec_per_iteration"] > 0 and result["sec_per_guided_forward"] > 0


@pytest.mark.parametrize("model,passes,cfg", [("sdxl", 2, 5.0), ("sd3", 2, 7.0), ("flux", 1, 3.5)])
def test_sd_benchmark_sizes_run_at_toy_size(model, passes, cfg, capsys):
    """The same path for every --model, in this process (the subprocess above covers the command itself)."""
    assert main(["bench", "sd", "--model", model, "--tiny", "--device", "cpu", "--steps", "2", "--iterations", "1",
                 "--crops", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["model"], result["passes"], result["cfg_scale"], result["size"]) == (model, passes, cfg, [16, 16])
    assert result["sec_per_iteration"] > 0 and result["sec_per_guided_forward"] > 0
