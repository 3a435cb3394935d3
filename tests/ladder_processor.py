"""Processor plug-ins for the ladder tests (spec processor.name 'tests.ladder_processor:...'), in a module of
their own so each actor that loads one imports only the job system (and, for the real one, the engine)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from doodl_ray.jobs.ladder_worker import LadderProcessor
from doodl_ray.jobs.worker import NoopProcessor, NoopResult, encode_png


@dataclass
class ScriptedResult(NoopResult):
    accepted: bool = False
    compute: dict[str, int] = field(default_factory=dict)


class ScriptedLadder(NoopProcessor):
    """No model: `accept` maps an id to the rung that accepts it (absent: none does); rung r costs `cost[r - 1]`
    UNet evaluations; the guide loss is the rung's number, so a later rung's result ranks better."""

    def __init__(self, spec, device, storage_options, accept=None, cost=()):
        super().__init__()
        self.accept, self.cost = dict(accept or {}), list(cost)

    def run(self, items):
        return [ScriptedResult(item.id, self.blank, final_loss=-float(item.rung), accepted=self.accept.get(item.id)
                               == item.rung, compute={"unet_evals": self.cost[item.rung - 1]}) for item in items]


class LoggedLadder(LadderProcessor):
    """The real ladder processor, which appends a line to the file `log` when it starts (its actor's pid and each
    rung engine's micro-batch) and one per result it makes (id, rung, the sha256 of its PNG, whether it was
    accepted, the pid), and first sleeps `pause` seconds per item on rung `slow`."""

    def __init__(self, spec, device, storage_options, log, slow=None, pause=0.0):
        super().__init__(spec, device, storage_options)
        self.log, self.slow, self.pause = log, slow, pause
        with open(self.log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "micro_batch": [e.micro_batch for e in self.engines]}) + "\n")

    def run(self, items):
        if items and items[0].rung == self.slow:
            time.sleep(self.pause * len(items))
        results = super().run(items)
        with open(self.log, "a") as f:
            for item, result in zip(items, results):
                f.write(json.dumps({"id": item.id, "rung": item.rung, "accepted": result.accepted, "pid": os.getpid(),
                                    "sha256": hashlib.sha256(encode_png(result.image)).hexdigest()}) + "\n")
        return results
