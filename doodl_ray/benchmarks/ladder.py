"""Cost per accepted image on the shipped digits models: an escalation ladder (jobs.ladder) against single methods.

The ladder runs as a real job (local Ray, CPU actors, the ledger on local disk) on the same items and initial noise
as `bench frontier`; its images are read back from the ledger and judged exactly as the frontier's points are
(frontier.metrics: realistic-and-correct = the independent judge is right and the nearest-training-image distance is
within tau). The judge never serves as the acceptance model. The single methods are the frontier's (its variants,
budgets and `--cache`), chosen with `--methods` and `--budgets`, so the comparison reruns with whatever methods the
frontier has. For each setting it reports the ladder's rate and its mean UNet evaluations per item and per
realistic-and-correct image, the cheapest single-method point that reaches the ladder's rate (the same final rate)
and the best single-method point, each with the ratio of mean evaluations and a paired McNemar test, and per rung
how many items ran it, how many it accepted and how many of those the judge calls realistic and correct."""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from doodl_ray.benchmarks import frontier

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: loopback only
LADDER_SPEC = Path(__file__).resolve().parents[2] / "jobs" / "digits-ladder.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    frontier.add_arguments(parser)  # settings, items, steps, crops, the single methods and their budgets, --cache
    parser.set_defaults(methods=["particles", "one-step", "das"], budgets=[2, 10, 50.67, 152], cap=["one-step=2"], workers=2,
                        plot=None)  # the frontier's items: 50 balanced, 30 rare
    parser.add_argument("--ladder", type=Path, default=LADDER_SPEC,
                        help="a job spec whose `method` block is the ladder (and `budget`, if any); its model, "
                             "guidance and input are the bench's (default: jobs/digits-ladder.yaml)")
    parser.add_argument("--prior-quantile", type=float, default=0.7,
                        help="set the acceptance prior threshold per setting to this quantile of the model's own "
                             "prior on real test digits (0: the spec's threshold)")
    parser.add_argument("--out", type=Path, help="where the ladder jobs write (default: a temporary folder); a rerun "
                        "with the same output resumes them")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    realism = frontier.real_realism()
    spec = yaml.safe_load(args.ladder.read_text())
    report: dict[str, Any] = {"ladder": spec["method"], "settings": {}}
    singles = _singles(args, realism)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for setting in args.settings:
            ladder = _ladder(args, setting, spec, out / setting, realism)
            report["settings"][setting] = compare(ladder, singles[setting])
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(tables(report))
    if args.plot:
        plot(report, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps(report))
    return 0


def _singles(args: argparse.Namespace, realism: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    """Every chosen single method at every chosen budget it runs at (the frontier's tasks, cached by `--cache`)."""
    thresholds = {s: frontier.real_prior_quantile(args.assets / s, args.stop_prior_quantile) for s in args.settings}
    tasks = [(s, v, b) for s in args.settings for v in frontier.variants(args, s, thresholds[s])
             if "(sweep)" not in v.label for b in args.budgets if frontier.runs_at(v, b, args.steps)]
    points: dict[str, list[dict[str, Any]]] = {s: [] for s in args.settings}
    for (setting, variant, budget), outcome in zip(tasks, frontier._run_tasks(args, tasks, realism)):
        outcome.pop("images")
        points[setting].append({"label": variant.label, "budget": int(budget * args.steps), **outcome})
    return points


def ladder_spec(args: argparse.Namespace, setting: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """The bench's ladder job for a setting: the frontier's items (ids, targets, seeds) and guide, the spec's ladder
    (not its dataset budget: the bench measures what the ladder spends when nothing stops it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = frontier._items(args, setting)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [i.id for i in items], "target": [i.target for i in items],
                             "seed": [i.seed for i in items]}), out / "in.parquet")
    method = json.loads(json.dumps(spec["method"]))
    for rung in method["ladder"]:  # every rung at the bench's steps, as the single methods run
        rung.setdefault("sampler", {})["steps"] = args.steps
    if args.prior_quantile:
        method["acceptance"]["prior"] = frontier.real_prior_quantile(args.assets / setting, args.prior_quantile)
    return {
        "run_id": f"bench-ladder-{setting}", "model": str(args.assets / setting), "method": method,
        "guidance": {"type": "classifier", "model": str(frontier.guide_path(args)), "crops": {"count": args.crops}},
        "input": {"uri": str(out / "in.parquet"), "columns": {"id": "id", "target": "target", "seed": "seed"}},
        "output": {"uri": str(out / "run"), "shard_size": 1000},
        "resources": {"actors": args.workers, "gpus_per_actor": 0, "cpus_per_actor": 1, "batch_size": 5,
                      "micro_batch": args.micro_batch},
    }


def _ladder(args: argparse.Namespace, setting: str, spec: dict[str, Any], out: Path,
            realism: dict[str, float]) -> dict[str, Any]:
    """Run the ladder job for a setting (resuming one already under `out`) and judge its images."""
    import ray
    import torch
    from PIL import Image

    from doodl_ray.digits.data import load_split
    from doodl_ray.guidance.classifier import load_torchscript_classifier
    from doodl_ray.jobs import run_job
    from doodl_ray.jobs.ledger import Ledger
    from doodl_ray.jobs.spec import parse_spec
    from doodl_ray.jobs.storage import Storage

    if not ray.is_initialized():
        ray.init(num_cpus=args.workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    job = parse_spec(ladder_spec(args, setting, spec, out))
    summary = run_job(job, progress=False)
    ledger = Ledger(Storage(job.output.uri))
    rows = {r["id"]: r for r in ledger.finished_rows()}
    items = frontier._items(args, setting)
    images = ledger.images([rows[i.id] for i in items])
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(images[rows[i.id]["key"]]["image"]))) for i in items])
    tensor = torch.from_numpy(pixels).float().div(255).reshape(len(items), 1, *pixels.shape[1:3])
    guide = load_torchscript_classifier(str(frontier.guide_path(args)))
    judge = load_torchscript_classifier(str(args.assets / "judge.pt"))
    labels = torch.tensor([i.target for i in items])
    outcome = frontier.metrics(tensor, labels, guide, judge, load_split()[0], realism["tau"])
    evals = [sum(rows[i.id]["rung_evals"] or [0]) for i in items]
    manifest = ledger.run_manifest()["ladder"]
    for rung in manifest["rungs"]:  # how many accepted images the judge agrees with
        took = [k for k, i in enumerate(items) if rows[i.id]["status"] == "ok" and rows[i.id]["rung"] == rung["rung"]]
        rung["accepted_real_correct"] = sum(outcome["per_item"][k] for k in took)
    return {**outcome, "unet_evals_mean": float(np.mean(evals)), "unet_evals_max": int(max(evals)),
            "accepted": summary.ok, "unaccepted": summary.unaccepted, "rungs": manifest["rungs"],
            "items": len(items), "tau": realism["tau"]}


def compare(ladder: dict[str, Any], singles: list[dict[str, Any]]) -> dict[str, Any]:
    """The ladder beside the cheapest single point that reaches its rate and beside the best single point."""
    def versus(point: dict[str, Any] | None) -> dict[str, Any] | None:
        if point is None:
            return None
        test = frontier.mcnemar_exact(ladder["per_item"], point["per_item"])
        return {"label": point["label"], "budget": point["budget"], "real_correct": point["real_correct"],
                "unet_evals_mean": point["unet_evals_mean"], "evals_ratio": ladder["unet_evals_mean"] /
                point["unet_evals_mean"], "only_ladder": test["only_best"], "only_single": test["only_baseline"],
                "p_value": test["p_value"]}

    reaching = [p for p in singles if p["real_correct"] >= ladder["real_correct"]]
    same_rate = min(reaching, key=lambda p: p["unet_evals_mean"]) if reaching else None
    best = max(singles, key=lambda p: (p["real_correct"], -p["unet_evals_mean"])) if singles else None
    good = sum(ladder["per_item"])
    evals_per_rc = ladder["unet_evals_mean"] * ladder["items"] / good if good else float("inf")
    return {"ladder": {**ladder, "unet_evals_per_real_correct": evals_per_rc}, "same_rate": versus(same_rate),
            "best_single": versus(best), "singles": [{k: v for k, v in p.items() if k != "per_item"} for p in singles]}


def tables(report: dict[str, Any]) -> str:
    """The report as Markdown tables, per setting: the comparison, the rungs, the single methods."""
    lines = []
    for setting, entry in report["settings"].items():
        ladder = entry["ladder"]
        lines += [f"\n{setting}: {ladder['items']} items; realistic-and-correct (judge correct, NN distance <= tau = "
                  f"{ladder['tau']:.3f}); UNet evaluations as the engine counted them (the acceptance rule's included)",
                  "", "| | rate | mean UNet evals / item | UNet evals / real & correct image "
                  "| evals ratio (ladder / it) | only ladder | only it | McNemar p |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| ladder | {ladder['real_correct']:.2f} | {ladder['unet_evals_mean']:.0f} | "
                  f"{ladder['unet_evals_per_real_correct']:.0f} | | | | |"]
        for name, point in (("same rate", entry["same_rate"]), ("best single", entry["best_single"])):
            if point is not None:
                per_rc = point["unet_evals_mean"] / point["real_correct"] if point["real_correct"] else float("inf")
                lines.append(f"| {name}: {point['label']} at {point['budget']} | {point['real_correct']:.2f} | "
                             f"{point['unet_evals_mean']:.0f} | {per_rc:.0f} | {point['evals_ratio']:.3f} | "
                             f"{point['only_ladder']} | {point['only_single']} | {point['p_value']:.3g} |")
        lines += ["", "| rung | method | budget | items | accepted | acceptance | accepted real & correct "
                  "| UNet evals |",
                  "|---|---|---|---|---|---|---|---|"]
        for rung in ladder["rungs"]:
            rate = f"{rung['acceptance']:.2f}" if rung["acceptance"] is not None else "-"
            lines.append(f"| {rung['rung']} | {rung['method']} | {rung['budget']} | {rung['items']} "
                         f"| {rung['accepted']} | {rate} | {rung['accepted_real_correct']} | {rung['unet_evals']} |")
        lines += ["", f"unaccepted: {ladder['unaccepted']} (their best image counts when the judge agrees)", "",
                  "| single method | budget | rate | mean UNet evals |", "|---|---|---|---|"]
        for p in sorted(entry["singles"], key=lambda p: (p["label"], p["budget"])):
            lines.append(f"| {p['label']} | {p['budget']} | {p['real_correct']:.2f} | {p['unet_evals_mean']:.0f} |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Rate vs mean UNet evaluations per item: a line per single method, the ladder a star; a panel per setting."""
    with frontier.setting_panels(report, path, "mean UNet evaluations per item") as panels:
        for ax, setting in panels:
            entry = report["settings"][setting]
            for label in sorted({p["label"] for p in entry["singles"]}):
                points = sorted((p for p in entry["singles"] if p["label"] == label), key=lambda p: p["unet_evals_mean"])
                ax.plot([p["unet_evals_mean"] for p in points], [p["real_correct"] for p in points], "--", marker="o",
                        label=label)
            ladder = entry["ladder"]
            ax.scatter([ladder["unet_evals_mean"]], [ladder["real_correct"]], marker="*", s=220, color="black",
                       zorder=4, label="ladder (jobs/digits-ladder.yaml)")
            ax.set_title(f"{setting} ({ladder['items']} items)")
