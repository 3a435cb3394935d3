"""Job progress for people and for logs: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

A bar redrawn twice a second with carriage returns is unreadable in a cluster log, CI output or `doodl-ray
logs`; there the same counts, rate and time left are printed as one line per DOODL_RAY_PROGRESS_SECONDS
(default 10 s), plus a last one when the run ends. Both keep tqdm's interface (`set_postfix`, `update`,
`close`, `total`), so the driver feeds either the same way."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from doodl_ray.errors import InvalidInput

INTERVAL_ENV = "DOODL_RAY_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s ({percentage:.0f}%){postfix} [{elapsed}<{remaining}, {rate_fmt}]"


def line_interval() -> float:
    """Seconds between progress lines in a non-terminal, from $DOODL_RAY_PROGRESS_SECONDS."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInput(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds > 0")
    return seconds


class ProgressLines:
    """tqdm's interface, writing one plain line per `interval` seconds (and at close) instead of redrawing."""

    def __init__(self, desc: str, total: int, initial: int, interval: float, file: TextIO):
        self.desc, self.total, self.initial, self.n = desc, total, initial, initial
        self.interval, self.file = interval, file
        self.postfix = ""
        self.started = time.monotonic()
        self.printed_at, self.printed_n = -math.inf, None

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.printed_at >= self.interval:
            self._print()

    def close(self) -> None:
        if self.printed_n != self.n:
            self._print()

    def _print(self) -> None:
        self.printed_at, self.printed_n = time.monotonic(), self.n
        line = tqdm.format_meter(self.n, self.total, self.printed_at - self.started, prefix=self.desc, unit="item",
                                 initial=self.initial, postfix=self.postfix, bar_format=LINE_FORMAT)
        print(line, file=self.file, flush=True)


def progress_bar(desc: str, total: int, initial: int = 0, stream: TextIO | None = None) -> tqdm | ProgressLines:
    """A bar when `stream` (default stderr) is a terminal, progress lines otherwise."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, unit="item", dynamic_ncols=True, desc=desc, smoothing=0.05,
                    file=stream)
    return ProgressLines(desc, total, initial, line_interval(), stream)
