"""A processor plug-in for the fault tests (spec processor.name 'tests.faulty_processor:FaultyProcessor'), in a
module of its own so each actor that loads it imports only the job system, not the test modules."""

from __future__ import annotations

import os
import time

from doodl_ray.errors import NonFiniteLoss
from doodl_ray.jobs.worker import NoopProcessor


class FaultyProcessor(NoopProcessor):
    """Ids in `fail` raise (always, or while the file `outage` exists), ids in `nan` raise the engine's
    permanent NonFiniteLoss, ids in `hang` never finish; the others are the no-op processor's."""

    def __init__(self, spec, device, storage_options, fail=(), nan=(), hang=(), outage=None):
        super().__init__()
        self.fail, self.nan, self.hang, self.outage = set(fail), set(nan), set(hang), outage

    def run(self, items):
        for item in items:
            if item.id in self.fail and (self.outage is None or os.path.exists(self.outage)):
                raise RuntimeError(f"cannot render {item.id}")
            if item.id in self.nan:
                raise NonFiniteLoss("guidance loss is nan")
            if item.id in self.hang:
                time.sleep(600)
        return super().run(items)
