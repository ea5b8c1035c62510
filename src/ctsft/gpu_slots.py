"""One GPU per job on a multi-GPU box: each job holds an exclusive lock on one GPU's slot file.

`snakemake --cores 32 --resources gpu=4` caps how many GPU jobs run at once, but Snakemake does
not say *which* GPU a job should use. Each job therefore claims the first free slot: an
`flock` on `<lock dir>/<gpu id>.lock`, held for the life of the process. The kernel drops an
`flock` when its process dies, however it dies (SIGKILL included), so a killed job's slot is free
again at once, with no stale lock files to clean up.

Slots are named by the GPU's UUID, not its index, so jobs that see different subsets of the GPUs
(SLURM gives each job its own `CUDA_VISIBLE_DEVICES`, where every GPU is `cuda:0`) never block
each other. The lock folder must be local to the machine (`$CTSFT_GPU_LOCK_DIR`, default
`<tmp>/ctsft-gpu-slots`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ctsft.errors import CtsftError

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "CTSFT_GPU_LOCK_DIR"
WAIT_ENV = "CTSFT_GPU_WAIT_S"
DEFAULT_WAIT_S = 6 * 3600.0

_held: dict[str, int] = {}  # slot id -> open file descriptor holding the lock


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "ctsft-gpu-slots")


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire(
    ids: Sequence[str],
    folder: Path | None = None,
    wait_s: float | None = None,
    poll_s: float = 0.5,
) -> int:
    """Index (into `ids`) of the first free slot, locked until this process exits or `release`.

    Waits up to `wait_s` seconds (`$CTSFT_GPU_WAIT_S`, default 6 h) while every slot is held.
    """
    if not ids:
        raise CtsftError("no GPU to claim")
    for i, slot in enumerate(ids):
        if slot in _held:  # this process already holds one: keep it
            return i
    folder = folder or lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wait_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    warned = False
    while True:
        for i, slot in enumerate(ids):
            fd = _try_lock(folder / f"{_safe(slot)}.lock")
            if fd is not None:
                _held[slot] = fd
                return i
        if time.monotonic() >= deadline:
            raise CtsftError(
                f"all {len(ids)} GPU(s) are held by other ctsft jobs (locks in {folder}): run "
                f"snakemake with --resources gpu={len(ids)}, or set runtime.device=cuda:N"
            )
        if not warned:
            log.warning("all %d GPU slots are busy; waiting for one to free up", len(ids))
            warned = True
        time.sleep(poll_s)


def release() -> None:
    """Give back every slot this process holds (exiting does the same)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


def _safe(slot: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in slot)


def gpu_ids(count: int) -> list[str]:
    """A stable id per visible GPU: its UUID where torch reports one, else its PCI bus id."""
    import torch

    ids = []
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            ids.append(f"gpu-{uuid}")
        else:
            bus = getattr(props, "pci_bus_id", None)
            ids.append(f"gpu-pci{bus}" if bus is not None else f"gpu-index{index}")
    return ids


def claim_gpu(count: int) -> int:
    """The index of a visible GPU no other ctsft job on this machine holds."""
    index = acquire(gpu_ids(count))
    log.info("claimed GPU %d of %d (slot locks in %s)", index, count, lock_dir())
    return index
