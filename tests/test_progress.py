"""Job progress where it is read: a plain line every few seconds in a log (stderr not a terminal), the
tqdm bar on a terminal (a real pseudo-terminal, read back from its master side). Real noop jobs on local
Ray, so the counts come from the driver as it records rows."""

from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import sys
import termios
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs import run_job
from doodl_ray.jobs.progress import INTERVAL_ENV, ProgressLines, line_interval
from doodl_ray.jobs.spec import parse_spec
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401

LINE = re.compile(r"^progress-test: (\d+)/12 items \(\d+%\), ok=(\d+), failed=0, rejected=0, left=(\d+), "
                  r"actors=[01]/1 \[\d\d:\d\d<[^,]+, +[^\]]+\]$")


def noop_spec(tmp_path: Path, seconds: float):
    pq.write_table(pa.table({"id": [f"item-{i:02d}" for i in range(12)]}), tmp_path / "in.parquet")
    return parse_spec({"run_id": "progress-test", "model": "unused", "processor": {"name": "noop",
                       "options": {"seconds": seconds}}, "input": {"uri": str(tmp_path / "in.parquet")},
                       "output": {"uri": str(tmp_path / "out"), "shard_size": 5},
                       "resources": {"actors": 1, "gpus_per_actor": 1, "batch_size": 1}})


def test_log_gets_plain_lines_every_interval(ray_session, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0.3")
    started = time.monotonic()
    summary = run_job(noop_spec(tmp_path, seconds=0.1), progress=True)  # ~1.2 s of work: a few lines
    elapsed = time.monotonic() - started
    assert summary.ok == 12
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # no redraws, no cursor codes
    lines = err.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    done = [int(LINE.match(line).group(1)) for line in lines]
    assert done[0] == 0 and done[-1] == 12 and done == sorted(done)  # first at start, last at the end
    # throttled to the interval (a line at the start, at most one per 0.3 s, one at the end), not one per tick
    assert 3 <= len(lines) <= elapsed / 0.3 + 2, (elapsed, lines)
    assert [int(LINE.match(line).group(3)) for line in lines][-1] == 0


def test_terminal_gets_the_bar(ray_session, tmp_path: Path, monkeypatch):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size: 120 columns
    terminal = os.fdopen(slave, "w")
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(master, chunks), daemon=True)  # a full pty would block
    reader.start()
    try:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert run_job(noop_spec(tmp_path, seconds=0.05), progress=True).ok == 12
        terminal.flush()
    finally:
        monkeypatch.undo()
        terminal.close()  # the reader sees end of file
        reader.join(timeout=10)
        os.close(master)
    out = b"".join(chunks).decode()
    assert "\r" in out and "12/12" in out and "100%" in out  # tqdm's bar, redrawn in place
    assert "items (" not in out  # not the log lines


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the slave side is closed
            return
        if not chunk:
            return
        chunks.append(chunk)


def test_resumed_run_counts_from_what_was_done(tmp_path: Path):
    """The rate is over this run's items: a resumed run starting at 10 of 12 is not credited with 10."""
    out = io.StringIO()
    lines = ProgressLines("resume", 12, initial=10, interval=3600, file=out)
    lines.set_postfix(ok=10, left=2)
    lines.update(0)
    lines.update(2)  # within the interval: no line
    lines.close()  # the final count always gets its line
    first, last = out.getvalue().splitlines()
    assert first.startswith("resume: 10/12 items (83%), ok=10, left=2 [")
    assert last.startswith("resume: 12/12 items (100%)")


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_bad_interval_is_one_line(value: str, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, value)
    with pytest.raises(InvalidInput, match=f"{INTERVAL_ENV}=.*seconds > 0"):
        line_interval()
