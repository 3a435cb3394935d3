"""`doodl-ray generate`: writes the image and its history; every user error is one line and a non-zero exit."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from doodl_ray.cli import main


def test_generate_writes_image_and_history(tiny_pixel, tiny_classifier, tmp_path, capsys):
    out = tmp_path / "digit.png"
    code = main(["generate", "--model", tiny_pixel, "--guidance", "classifier", "--classifier", tiny_classifier,
                 "--target", "3", "--method", "doodl", "--iterations", "2", "--steps", "4", "--optimizer",
                 "normalized", "--seed", "7", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "loss before:" in printed and "after:" in printed
    assert Image.open(out).size == (16, 16)
    history = json.loads(out.with_suffix(".history.json").read_text())
    assert len(history["history"]) == 3 and history["target"] == 3 and history["seed"] == 7
    assert history["final_loss"] == pytest.approx(min(history["history"]), rel=1e-5)


def test_generate_text_model_one_step(tiny_sd, tiny_classifier, tmp_path):
    out = tmp_path / "bird.png"
    assert main(["generate", "--model", tiny_sd, "--prompt", "a bird", "--guidance", "classifier",
                 "--classifier", tiny_classifier, "--target", "1", "--method", "one-step", "--steps", "3",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (16, 16)


@pytest.mark.parametrize("args,message", [
    (["--model", "{pixel}", "--bogus"], "unrecognized arguments: --bogus"),
    (["--model", "{pixel}", "--steps", "x"], "invalid int value"),
    (["--model", "{pixel}", "--steps", "0", "--method", "none"], "steps: Input should be greater than or equal to 1"),
    (["--model", "{tmp}", "--method", "none"], "neither model_index.json nor a UNet2DModel"),
    (["--model", "{pixel}", "--guidance", "classifier", "--classifier", "{cls}", "--target", "10"],
     "outside the classifier's 10 classes"),
    (["--model", "{pixel}", "--guidance", "classifier", "--classifier", "{tmp}/nope.pt", "--target", "1"],
     "classifier file not found"),
    (["--model", "{pixel}", "--method", "doodl"], "needs guidance"),
    (["--model", "{pixel}", "--guidance", "classifier", "--classifier", "{cls}", "--target", "1", "--method", "das",
      "--micro-batch", "0"], "micro_batch must be at least 1"),
])
def test_errors_are_one_line(tiny_pixel, tiny_classifier, tmp_path, args, message):
    args = [a.format(pixel=tiny_pixel, cls=tiny_classifier, tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "generate", *args, "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode != 0
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluation_model_scores_before_and_after(tiny_pixel, tiny_classifier, tmp_path, capsys):
    from tests.tiny_models import save_tiny_classifier

    judge = save_tiny_classifier(tmp_path / "judge.pt", seed=5)
    spec = tmp_path / "judge.yaml"
    spec.write_text(f"type: classifier\nmodel: {judge}\ncrops: {{count: 0}}\n")
    out = tmp_path / "x.png"
    assert main(["generate", "--model", tiny_pixel, "--guidance", "classifier", "--classifier", tiny_classifier,
                 "--target", "4", "--evaluation-spec", str(spec), "--method", "best-of-n", "--candidates", "2",
                 "--steps", "3", "--out", str(out)]) == 0
    scores = json.loads(out.with_suffix(".history.json").read_text())["scores"]
    assert {k.split("/")[0] for k in scores} == {"guide", "eval", "eval_initial"}
    assert all(0 <= v <= 1 for v in scores.values())  # classifier scores are target probabilities
    assert "eval/" in capsys.readouterr().out
