"""`doodl-ray bench quality` end to end at toy size, on models the training script makes in seconds."""

import json
import subprocess
import sys

from PIL import Image


def test_quality_benchmark_reports_every_method(tmp_path):
    assets = tmp_path / "assets"
    subprocess.run([sys.executable, "-m", "doodl_ray.digits.train", "--out", str(assets), "--toy"], check=True,
                   capture_output=True, timeout=300)
    sheet = tmp_path / "sheet.png"
    proc = subprocess.run(
        [sys.executable, "-m", "doodl_ray.cli", "bench", "quality", "--assets", str(assets), "--setting", "rare",
         "--seeds", "1", "--steps", "2", "--iterations", "1", "2", "--raw-scales", "1", "--normalized-scales", "1",
         "--crops", "2", "--prior-weights", "0", "5", "--prior-selection", "1", "--sheet", str(sheet), "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["targets"] == [3, 5, 8]
    assert report["doodl"]["prior_selection"] == 1.0
    names = list(report["methods"])
    assert names[:7] == ["none", "one-step raw s=1", "one-step norm s=1", "doodl 1 it", "doodl 2 it",
                         "doodl 1 it + prior 5", "doodl 2 it + prior 5"]
    assert names[7].startswith("best-of-")
    for m in report["methods"].values():
        assert set(m) == {"judge_acc", "judge_prob", "real_correct", "guide_acc", "nn_dist", "sec_per_image"}
        assert 0 <= m["real_correct"] <= m["judge_acc"] <= 1
    assert report["real_nn_dist"] < report["tau"]
    assert "| method | judge acc |" in proc.stdout
    width, height = Image.open(sheet).size
    assert height > 8 * 16 and width > 3 * 16  # a row per method, a column per target
