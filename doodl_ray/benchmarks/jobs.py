"""Job system overhead: items/s through the driver with a no-op worker, and 1 -> 2 actor scaling efficiency.

No-op: every item still makes the full trip (dispatch, a PNG and a results part written to local disk,
the outcome back to the driver, shard files and markers), so the rate is the orchestration ceiling.
Scaling: DOODL with a tiny pixel model (the shipped digits model when present, else random weights) on
1 then 2 CPU actors; efficiency = throughput(2) / (2 * throughput(1)). Rates are steady state: from the
first finished item to the last, so actor start-up (process spawn, model load) is not counted."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: loopback only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--noop-items", type=int, default=3000, help="items for the no-op throughput run")
    parser.add_argument("--model-items", type=int, default=24, help="items per scaling run")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per item (scaling runs)")
    parser.add_argument("--iterations", type=int, default=4, help="DOODL iterations per item (scaling runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _tiny_models(folder: Path) -> tuple[str, str]:
    """The shipped digits model and guide if present, else a random-weight 3-channel 16x16 pair."""
    from doodl_ray.digits import ASSETS_DIR

    if (ASSETS_DIR / "balanced").is_dir() and (ASSETS_DIR / "guide.pt").is_file():
        return str(ASSETS_DIR / "balanced"), str(ASSETS_DIR / "guide.pt")
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    from torch import nn

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False)).save_pretrained(folder / "unet")
    classifier = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                               nn.Linear(128, 10))
    meta = {"input_size": [16, 16], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.jit.save(torch.jit.script(classifier), str(folder / "guide.pt"), _extra_files={"doodl.json": json.dumps(meta)})
    return str(folder / "unet"), str(folder / "guide.pt")


def _steady_rate(spec_data: dict) -> float:
    """Items/s from the first finished item to the last (actor start-up excluded)."""
    from doodl_ray.jobs import run_job
    from doodl_ray.jobs.spec import parse_spec

    marks: list[tuple[float, int]] = []

    def on_progress(counts: dict[str, int]) -> None:
        if not marks or counts["computed"] != marks[-1][1]:
            marks.append((time.perf_counter(), counts["computed"]))

    run_job(parse_spec(spec_data), progress=False, on_progress=on_progress)
    (t0, n0), (t1, n1) = next(m for m in marks if m[1] > 0), marks[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def _spec(folder: Path, name: str, items: int, actors: int, **fields) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"i{k}" for k in range(items)], "target": [k % 10 for k in range(items)]}),
                   folder / f"{name}.parquet")
    return {"run_id": name, "input": {"uri": str(folder / f"{name}.parquet"), "columns": {"id": "id", "target": "target"}},
            "output": {"uri": str(folder / name), "shard_size": 500},
            "resources": {"actors": actors, "gpus_per_actor": 1, "cpus_per_actor": 1}, **fields}


def run(args: argparse.Namespace) -> int:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        noop = _steady_rate(_spec(folder, "noop", args.noop_items, 2, model="none", processor={"name": "noop"},
                                  resources={"actors": 2, "gpus_per_actor": 1, "batch_size": 32, "inflight_per_actor": 3}))
        print(f"no-op: {noop:.0f} items/s through the driver (2 actors, batches of 32, local disk)")
        unet, guide = _tiny_models(folder)
        model = dict(model=unet, guidance={"type": "classifier", "model": guide, "crops": {"count": 2}},
                     method={"name": "doodl", "sampler": {"steps": args.steps}, "doodl": {"iterations": args.iterations}})
        rates = {n: _steady_rate(_spec(folder, f"scale{n}", args.model_items, n, **model)) for n in (1, 2)}
    efficiency = rates[2] / (2 * rates[1])
    print(f"tiny model: {rates[1]:.2f} items/s with 1 actor, {rates[2]:.2f} with 2 -> scaling efficiency {efficiency:.2f}")
    if args.json:
        print(json.dumps({"noop_items_per_s": round(noop, 1), "scaling_efficiency_2": round(efficiency, 3),
                          "model_items_per_s_1": round(rates[1], 3), "model_items_per_s_2": round(rates[2], 3)}))
    return 0
