"""`doodl-ray bench frontier` end to end at toy size, on models the training script makes in seconds."""

import json
import subprocess
import sys

from PIL import Image


def test_frontier_reports_every_method_at_every_budget(tmp_path):
    assets = tmp_path / "assets"
    subprocess.run([sys.executable, "-m", "doodl_ray.digits.train", "--out", str(assets), "--toy"], check=True,
                   capture_output=True, timeout=300)
    toy = [sys.executable, "-m", "doodl_ray.cli", "bench", "frontier", "--assets", str(assets), "--settings", "rare",
           "--rare-seeds", "2", "--steps", "2", "--budgets", "1", "8", "--raw-scales", "1", "--normalized-scales",
           "--crops", "2", "--search-starts", "1", "--chains", "2", "--workers", "2", "--cache", str(tmp_path / "cache"), "--json"]
    proc = subprocess.run(toy + ["--plot", str(tmp_path / "plot.png"), "--sheet", str(tmp_path / "sheet.png"),
                                 "--sheet-budget", "8"], capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rare = report["settings"]["rare"]
    assert rare["targets"] == [3, 5, 8] and rare["items"] == 6
    methods = rare["methods"]
    assert set(methods) == {"none", "best-of-n", "one-step norm s=0.3", "particles", "doodl", "doodl + prior 20",
                            "search-refine", "one-step raw s=1 (sweep)", "doodl-chain + prior 20", "das a=0.1",
                            "lookahead 3 until 0.3 a=0.1", "noise-langevin a=0.1 h=0.05", "noise-mcmc a=0.1"}
    budgets = {label: [p["budget"] for p in m["points"]] for label, m in methods.items()}
    assert budgets["none"] == [2] and budgets["doodl"] == [16] and budgets["best-of-n"] == [2, 16]
    assert budgets["das a=0.1"] == budgets["noise-langevin a=0.1 h=0.05"] == [16]  # too little for one image at 2
    assert budgets["one-step raw s=1 (sweep)"] == [4] and budgets["one-step norm s=0.3"] == [16]
    for m in methods.values():
        for p in m["points"]:
            assert 0 <= p["real_correct"] <= p["judge_acc"] <= 1 and len(p["per_item"]) == 6
            assert p["unet_evals_max"] <= p["budget"]  # the engine's own counts keep every budget
    tests = {t["comparison"]: t for t in rare["tests"] if t["budget"] == 16}
    assert set(tests) == {"project vs baseline", "exact gradient vs gradient-free"}
    test = tests["project vs baseline"]
    assert not methods[test["best"]]["baseline"] and methods[test["baseline"]]["baseline"]
    gradient = tests["exact gradient vs gradient-free"]
    assert methods[gradient["best"]]["gradient"] == "exact" and methods[gradient["baseline"]]["gradient"] == "none"
    for test in tests.values():
        assert 0 <= test["p_value"] <= 1 and test["only_best"] + test["only_baseline"] <= 6
    assert "| method | 2 | 4 | 16 |" in proc.stdout and "McNemar p" in proc.stdout
    assert "| particles | 16 | " in proc.stdout  # every point with its judge, guide and NN columns
    assert Image.open(tmp_path / "plot.png").size[0] > 300
    width, height = Image.open(tmp_path / "sheet-rare.png").size
    assert height > 12 * 16 and width > 3 * 16  # a row per method, a column per target


    # a rerun takes every result from the cache; --cap cuts a method's ladder short
    again = subprocess.run(toy + ["--methods", "best-of-n", "--cap", "rare:best-of-n=1"], capture_output=True, text=True,
                           timeout=600, check=True)
    assert "1 of 1 results from" in again.stderr
    (point,) = json.loads(again.stdout.strip().splitlines()[-1])["settings"]["rare"]["methods"]["best-of-n"]["points"]
    assert point == methods["best-of-n"]["points"][0]

    # --guide names the guiding classifier: its results are keyed apart, and the assets' own guide named
    # explicitly reproduces the default run's point
    named = subprocess.run(toy + ["--methods", "best-of-n", "--cap", "rare:best-of-n=1", "--guide",
                                  str(assets / "guide.pt")], capture_output=True, text=True, timeout=600, check=True)
    assert "0 of 1 results from" in named.stderr
    (same,) = json.loads(named.stdout.strip().splitlines()[-1])["settings"]["rare"]["methods"]["best-of-n"]["points"]
    assert {k: v for k, v in same.items() if k != "sec_per_image"} == {k: v for k, v in point.items() if k != "sec_per_image"}
