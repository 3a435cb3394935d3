"""A lost node: items/s before, during and after a worker node is SIGKILLed, and seconds to full capacity.

A local multi-node cluster (benchmarks.local_cluster: a head and two worker nodes with one logical GPU each,
`ray start` processes on loopback) runs a job of no-op items that take `--seconds` each on two actors: the job
system's own work around an item (dispatch, a PNG and a results part on disk, shard files), at a pace a GPU
sets. Once the job has run steadily for `--kill-after` seconds, one worker node is SIGKILLed, and a
replacement node starts `--replace-after` seconds later. This process is the driver: it timestamps each
finished item and each change of the actors ready, so "during" is the loss until both actors run again, and
"to full capacity" is counted from the loss and from the replacement node joining."""

from __future__ import annotations

import argparse
import bisect
import json
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from doodl_ray.jobs.metrics import RunTally

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the driver (this process) stays on loopback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=800, help="items in the job")
    parser.add_argument("--seconds", type=float, default=0.1, help="seconds per item (the no-op's stand-in for a GPU)")
    parser.add_argument("--kill-after", type=float, default=10.0, help="seconds of steady work before the loss")
    parser.add_argument("--replace-after", type=float, default=0.0,
                        help="seconds from the loss to starting the replacement node")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


class _Timeline(RunTally):
    """The driver's view, timestamped: each item finished, and each change of the actors ready."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[float] = []
        self.capacity_changes: list[tuple[float, int, int]] = []  # (time, ready, wanted)

    def progress(self, counts: dict[str, int]) -> None:
        while len(self.finished) < counts["computed"]:
            self.finished.append(time.monotonic())

    def actors(self, ready: int, wanted: int) -> None:
        if (ready, wanted) != self.capacity:
            self.capacity_changes.append((time.monotonic(), ready, wanted))
        super().actors(ready, wanted)

    def rate(self, start: float, end: float) -> float:
        """Items finished per second between two times."""
        count = bisect.bisect_right(self.finished, end) - bisect.bisect_left(self.finished, start)
        return count / (end - start) if end > start else float("nan")


def _lose_a_node(cluster: Any, timeline: _Timeline, args: argparse.Namespace, marks: dict[str, float]) -> None:
    """Once the job ran steadily for --kill-after s: SIGKILL a worker node, then start its replacement."""
    while not timeline.finished:
        time.sleep(0.05)
    time.sleep(args.kill_after)
    cluster.workers[0].kill()
    marks["loss"] = time.monotonic()
    time.sleep(args.replace_after)
    replacement = cluster.add_worker(wait=False)
    cluster.wait_up(replacement)
    marks["joined"] = time.monotonic()


def run(args: argparse.Namespace) -> int:
    token = secrets.token_hex(32)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # read when Ray is imported: this driver joins
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from doodl_ray.benchmarks.local_cluster import LocalCluster
    from doodl_ray.jobs import run_job
    from doodl_ray.jobs.spec import parse_spec

    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        folder = Path(tmp)
        cluster = LocalCluster(folder / "cluster", token)
        try:
            cluster.start(workers=2)
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            pq.write_table(pa.table({"id": [f"i{k:05d}" for k in range(args.items)]}), folder / "in.parquet")
            spec = parse_spec({
                "run_id": "bench-faults", "model": "unused",
                "input": {"uri": str(folder / "in.parquet"), "columns": {"id": "id"}},
                "output": {"uri": str(folder / "out"), "shard_size": 100},
                "processor": {"name": "noop", "options": {"seconds": args.seconds}},
                "resources": {"actors": 2, "gpus_per_actor": 1, "batch_size": 1},
                "retries": {"base_delay": 0.5, "max_delay": 2.0},
            })
            timeline, marks = _Timeline(), {}
            loser = threading.Thread(target=_lose_a_node, args=(cluster, timeline, args, marks), daemon=True)
            loser.start()
            summary = run_job(spec, progress=False, on_progress=timeline.progress, metrics=timeline)
            loser.join(timeout=1)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.close()
    return _report(timeline, marks, summary.ok, args)


def _report(timeline: _Timeline, marks: dict[str, float], ok: int, args: argparse.Namespace) -> int:
    after_loss = [(t, ready < wanted) for t, ready, wanted in timeline.capacity_changes
                  if t > marks.get("loss", float("inf"))]
    noticed = next((t for t, short in after_loss if short), None)
    full = next((t for t, short in after_loss if not short and noticed is not None and t > noticed), None)
    if "joined" not in marks or noticed is None or full is None:
        print(f"bench faults: the job ended before the replacement brought it back to full capacity; "
              f"raise --items (now {args.items})")
        return 1
    first, last, loss = timeline.finished[0], timeline.finished[-1], marks["loss"]
    result = {
        "items": ok, "seconds_per_item": args.seconds,
        "before_items_per_s": round(timeline.rate(first, loss), 2),
        "during_items_per_s": round(timeline.rate(loss, full), 2),
        "after_items_per_s": round(timeline.rate(full, last), 2),
        "loss_noticed_after_s": round(noticed - loss, 1),
        "loss_to_full_capacity_s": round(full - loss, 1),
        "join_to_full_capacity_s": round(full - marks["joined"], 1),
        "replacement_started_after_s": args.replace_after,
    }
    print(f"bench faults: {ok} items of {args.seconds:g} s on 2 actors; items/s before the loss "
          f"{result['before_items_per_s']}, during {result['during_items_per_s']}, after "
          f"{result['after_items_per_s']}; the loss noticed after {result['loss_noticed_after_s']} s, full capacity "
          f"{result['loss_to_full_capacity_s']} s after it "
          f"({result['join_to_full_capacity_s']} s after the replacement node joined)")
    if args.json:
        print(json.dumps(result))
    return 0
