"""The GPU slot allocator with a fake GPU count: concurrent jobs never share a slot, a killed
job's slot is free again at once, and a job waits (bounded) when every slot is held."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctsft import gpu_slots
from ctsft.errors import CtsftError

FAKE_GPUS = [f"gpu-fake-{i}" for i in range(3)]

# A job: claim a slot, report it, hold it until told to stop (its stdin closes) or killed.
JOB = """
import sys
from pathlib import Path
from ctsft.gpu_slots import acquire
ids = sys.argv[2].split(",")
index = acquire(ids, Path(sys.argv[1]), wait_s=float(sys.argv[3]), poll_s=0.05)
print(index, flush=True)
sys.stdin.read()
"""


def _start(folder: Path, wait_s: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(folder), ",".join(FAKE_GPUS), str(wait_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _slot(job: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    line = ""
    while not line and time.monotonic() < deadline and job.poll() is None:
        line = job.stdout.readline().strip()
    assert line, f"job printed no slot: {job.stderr.read() if job.poll() is not None else ''}"
    return int(line)


def _stop(jobs: list[subprocess.Popen]) -> None:
    for job in jobs:
        if job.poll() is None:
            job.kill()
        job.wait(timeout=10)


def test_concurrent_jobs_get_distinct_slots_and_a_killed_jobs_slot_is_reclaimed(
    tmp_path: Path,
) -> None:
    jobs = [_start(tmp_path) for _ in FAKE_GPUS]
    try:
        slots = sorted(_slot(job) for job in jobs)
        assert slots == [0, 1, 2]  # three jobs, three GPUs, no sharing
        waiting = _start(tmp_path)  # a fourth job waits: every slot is held
        time.sleep(1.0)
        assert waiting.poll() is None
        jobs.append(waiting)
        victim = jobs[1]
        os.kill(victim.pid, signal.SIGKILL)  # no cleanup runs in the victim
        victim.wait(timeout=10)
        free = [s for s in range(3) if s not in _held_by(jobs[:1] + jobs[2:3], tmp_path)]
        assert _slot(waiting) in free  # the killed job's slot, reclaimed at once
    finally:
        _stop(jobs)


def _held_by(jobs: list[subprocess.Popen], folder: Path) -> list[int]:
    """Slots whose lock file names one of `jobs` as holder."""
    pids = {job.pid for job in jobs}
    held = []
    for index, slot in enumerate(FAKE_GPUS):
        text = (folder / f"{slot}.lock").read_text().strip()
        if text and int(text) in pids:
            held.append(index)
    return held


def test_a_job_that_finds_every_slot_held_gives_up_with_one_line(tmp_path: Path) -> None:
    jobs = [_start(tmp_path) for _ in FAKE_GPUS]
    try:
        for job in jobs:
            _slot(job)
        with pytest.raises(CtsftError, match=r"all 3 GPU\(s\) are held .* --resources gpu=3"):
            gpu_slots.acquire(FAKE_GPUS, tmp_path, wait_s=0.2, poll_s=0.05)
    finally:
        _stop(jobs)


def test_one_process_keeps_its_slot_and_release_frees_it(tmp_path: Path) -> None:
    try:
        first = gpu_slots.acquire(FAKE_GPUS, tmp_path, wait_s=0)
        assert gpu_slots.acquire(FAKE_GPUS, tmp_path, wait_s=0) == first
        other = _start(tmp_path)
        try:
            assert _slot(other) != first
        finally:
            _stop([other])
    finally:
        gpu_slots.release()
    again = _start(tmp_path)
    try:
        assert _slot(again) == 0  # released: the first slot is free for others
    finally:
        _stop([again])
