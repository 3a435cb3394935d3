"""The paper's experiments as jobs: `doodl-ray prompts` turns the bundled sets into input Parquet (locally and
on a real S3 endpoint), the inputs under jobs/data are what it makes, and every paper spec has a one-step
twin that runs the same items from the same noise, so `doodl-ray review --against` compares like with like."""

from __future__ import annotations

import io
import re
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from doodl_ray.cli import main
from doodl_ray.commands.prompts import prompt_rows
from doodl_ray.data import LABEL_SETS, label_set
from doodl_ray.jobs.reader import read_input
from doodl_ray.jobs.spec import load_spec, parse_spec
from tests.s3_server import s3_endpoint  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted(p for p in (ROOT / "jobs").glob("paper-*.yaml") if not p.stem.endswith("-onestep"))
DRAWBENCH_CATEGORIES = {"Colors": 25, "Conflicting": 10, "Counting": 19, "DALL-E": 20, "Descriptions": 20,
                        "Gary Marcus et al.": 10, "Misspellings": 10, "Positional": 20, "Rare Words": 7,
                        "Reddit": 38, "Text": 21}


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_drawbench_gives_200_prompts_in_11_categories_a_job_can_read(tmp_path: Path):
    rc, _, err = cli("prompts", "drawbench", "--out", str(tmp_path / "in.parquet"))
    assert rc == 0 and "wrote 200 rows (id, prompt, category)" in err
    table = pq.read_table(tmp_path / "in.parquet")
    assert table.column_names == ["id", "prompt", "category"] and table.num_rows == 200
    assert Counter(table["category"].to_pylist()) == DRAWBENCH_CATEGORIES
    assert len(set(table["id"].to_pylist())) == 200 and table["id"][0].as_py() == "drawbench-000"
    spec = parse_spec({"run_id": "db", "model": "m", "input": {"uri": str(tmp_path / "in.parquet"),
                       "columns": {"id": "id", "prompt": "prompt"}, "filter": [{"column": "category", "eq": "Text"}]},
                       "output": {"uri": str(tmp_path / "out")}})
    plan = read_input(spec, {})  # the category column serves per-category runs
    assert len(plan.items) == 21 and not plan.rejected


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_label_sets_give_a_row_per_class_with_its_name_as_target(name: str, tmp_path: Path):
    rc, _, _ = cli("prompts", name, "--template", "a photo of a {name}, a kind of thing", "--out",
                   str(tmp_path / "in.parquet"))
    rows = pq.read_table(tmp_path / "in.parquet").to_pylist()
    names = label_set(name)
    assert rc == 0 and len(rows) == len(names)
    assert [r["target"] for r in rows] == list(names) and [r["class_index"] for r in rows] == list(range(len(names)))
    assert rows[1]["prompt"] == f"a photo of a {names[1]}, a kind of thing"
    assert len({r["id"] for r in rows}) == len(rows) and all(r["id"].startswith(f"{name}-") for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["cub-200", "--template", "a photo of a bird"], "has no {name}"),
    (["cub-200", "--template", "a {name} on a {branch}"], "only {name} can be filled in"),
    (["drawbench", "--template", "a photo of {name}"], "--template applies to label sets"),
])
def test_bad_templates_are_one_line(argv: list[str], message: str, tmp_path: Path):
    rc, _, err = cli("prompts", *argv, "--out", str(tmp_path / "in.parquet"))
    assert rc == 1 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "in.parquet").exists()


def test_prompts_write_to_s3(s3_endpoint):
    bucket = s3_endpoint.bucket()
    rc, _, err = cli("prompts", "stanford-dogs", "--out", f"s3://{bucket}/inputs/dogs.parquet",
                     "--endpoint-url", s3_endpoint.url)
    assert rc == 0 and f"to s3://{bucket}/inputs/dogs.parquet" in err
    table = pq.read_table(io.BytesIO(s3_endpoint.fs().cat_file(f"{bucket}/inputs/dogs.parquet")))
    assert table.num_rows == 120 and table["prompt"][110].as_py() == "a photo of a Brabancon griffon"


def test_committed_inputs_are_what_the_prompts_command_makes():
    """Each paper spec's header names the command that made its input; rerun, it gives the committed table."""
    made = 0
    for path in PAPER:
        spec = load_spec(path)
        if spec.input.uri.startswith("s3://"):
            continue
        command = re.search(r"doodl-ray prompts (\S+)(?: --template \"([^\"]+)\")? --out (\S+)", path.read_text())
        assert command, f"{path.name} does not say how its input was made"
        name, template, out = command.groups()
        assert out == spec.input.uri
        expected = prompt_rows(name, template)
        assert pq.read_table(ROOT / out).to_pydict() == expected, f"{out} is stale: rerun the command in {path.name}"
        made += 1
    assert made == 5  # drawbench (CLIP, aesthetic) and the three fine-grained sets


def test_fine_grained_specs_name_their_bundled_label_set():
    for key, labels in {"birds": "cub-200", "dogs": "stanford-dogs", "aircraft": "fgvc-aircraft"}.items():
        path = ROOT / "jobs" / f"paper-finegrained-{key}.yaml"
        spec = load_spec(path)
        assert spec.guidance.labels == labels and spec.guidance.weights  # the user's checkpoint, in that order
        targets = pq.read_table(ROOT / spec.input.uri)["target"].to_pylist()
        assert targets == list(label_set(labels))
        assert f'prompts {labels} --template "a photo of a {{name}}"' in path.read_text()


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_each_paper_spec_has_a_one_step_twin_on_the_same_items_and_noise(path: Path):
    spec, twin = load_spec(path), load_spec(path.with_name(f"{path.stem}-onestep.yaml"))
    assert (spec.method.name, twin.method.name) == ("doodl", "one-step")
    assert spec.method.doodl.iterations == 50 and spec.method.doodl.optimizer == "reference"
    assert spec.method.sampler == twin.method.sampler and spec.method.guidance_scale == twin.method.guidance_scale
    assert twin.run_id == f"{spec.run_id}-onestep" and twin.output.uri == f"{spec.output.uri}-onestep"
    drop = {"run_id", "output", "method"}
    assert spec.model_dump(exclude=drop) == twin.model_dump(exclude=drop)  # input, model, guides, seed, resources
    assert spec.output.shard_size == twin.output.shard_size
    if not spec.input.uri.startswith("s3://"):
        items = [(i.id, i.seed) for i in read_input(spec, {}).items]
        assert items == [(i.id, i.seed) for i in read_input(twin, {}).items]
