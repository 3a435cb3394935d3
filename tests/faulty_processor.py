"""A processor plug-in for the fault tests (spec processor.name 'tests.faulty_processor:FaultyProcessor'), in a
module of its own so each actor that loads it imports only the job system, not the test modules."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from doodl_ray.errors import NonFiniteLoss
from doodl_ray.jobs.worker import NoopProcessor


def stamp(item_id: str, nonce: int) -> np.ndarray:
    """An 8x8 image that names its item (the first 24 bytes of its id's sha256) and the attempt that made it
    (a random nonce, like a GPU's non-deterministic result): what the row's final_loss records."""
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[0] = np.frombuffer(hashlib.sha256(item_id.encode()).digest()[:24], dtype=np.uint8).reshape(8, 3)
    image[1, 0] = np.frombuffer(nonce.to_bytes(3, "big"), dtype=np.uint8)
    return image


def read_stamp(png: bytes) -> tuple[bytes, int]:
    """(id digest, nonce) of a stamped PNG."""
    image = np.asarray(Image.open(io.BytesIO(png)))
    return image[0].tobytes(), int.from_bytes(image[1, 0].tobytes(), "big")


def stamp_matches(png: bytes, row: dict) -> bool:
    """Whether an image is the one its ledger row describes: its item's, from the attempt the row records."""
    digest, nonce = read_stamp(png)
    return digest == hashlib.sha256(row["id"].encode()).digest()[:24] and nonce == int(row["final_loss"])


def _count_start(folder: Path) -> int:
    """This start's number, 0 first, counted across processes by creating the first free numbered file."""
    for number in itertools.count():
        try:
            (folder / str(number)).open("x").close()
            return number
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class FaultyProcessor(NoopProcessor):
    """Ids in `fail` raise (always, or while the file `outage` exists), ids in `nan` raise the engine's
    permanent NonFiniteLoss, ids in `hang` never finish; the others wait while the file `hold` exists, take
    `seconds` each and return their stamp, and, with `trace`, leave a file <trace>/<id>.<nonce> holding the
    time they finished. With `loads` (a folder counting every actor's start), only the first `loadable`
    actors start; the others fail as a worker that cannot load its models does."""

    def __init__(self, spec, device, storage_options, fail=(), nan=(), hang=(), outage=None, seconds=0.0,
                 hold=None, trace=None, loads=None, loadable=0):
        if loads is not None and _count_start(Path(loads)) >= loadable:
            raise RuntimeError("cannot load the model")
        super().__init__(seconds)
        self.fail, self.nan, self.hang, self.outage = set(fail), set(nan), set(hang), outage
        self.hold, self.trace = hold, trace

    def run(self, items):
        while self.hold and os.path.exists(self.hold):
            time.sleep(0.05)
        for item in items:
            if item.id in self.fail and (self.outage is None or os.path.exists(self.outage)):
                raise RuntimeError(f"cannot render {item.id}")
            if item.id in self.nan:
                raise NonFiniteLoss("guidance loss is nan")
            if item.id in self.hang:
                time.sleep(600)
        results = super().run(items)
        for result in results:
            nonce = random.randrange(1 << 24)
            result.image, result.final_loss = stamp(result.id, nonce), float(nonce)
            if self.trace:
                (Path(self.trace) / f"{result.id}.{nonce}").write_text(repr(time.time()))
        return results
