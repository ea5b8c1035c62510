"""Shared plumbing of `python -m ctsft.steps.<step> [overrides...]` entry points.

User errors (`CtsftError`) and resource faults (disk full, read-only or forbidden folders, out of
memory) become one `error: ...` line and exit code 2; the workflow's run_step.py does the same.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ctsft.config import compose
from ctsft.errors import CtsftError

log = logging.getLogger("ctsft")


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0.0 elsewhere): the job's start-up."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return 0.0


def setup(cfg: DictConfig) -> None:
    """Seed-independent process setup: logging format and torch threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


OOM_HINT = (
    "out of memory: lower train.batch_size / train.eval_batch_size / cdt.head_batch / "
    "cdt.batch_size"
)


def _target(path: str | os.PathLike[str]) -> str:
    """The path a write was making: `ctsft.io.atomic_path` writes `.<name>.<random>.tmp` beside it."""
    temporary = re.compile(r"\.(.+)\.[^.]+\.tmp")
    parts = [(m.group(1) if (m := temporary.fullmatch(p)) else p) for p in Path(path).parts]
    return str(Path(*parts))


def resource_message(err: BaseException) -> str | None:
    """One line for a resource fault (disk full, read-only, permission, memory), else None."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return OOM_HINT
    if not isinstance(err, OSError):
        return None
    path = _target(err.filename) if err.filename else "the output"
    if err.errno == errno.ENOSPC:
        return f"no space left on device writing {path}: free space or set results_dir"
    if err.errno == errno.EROFS:
        return f"read-only file system: cannot write {path}: set results_dir to a writable folder"
    if err.errno == errno.EACCES:
        return f"permission denied: {path}: make it writable or set results_dir elsewhere"
    return None


def usage(step: Callable[[DictConfig], object]) -> str:
    """`--help` text: the step module's docstring and how to see the composed config."""
    module = sys.modules.get(step.__module__)
    spec = getattr(module, "__spec__", None)
    name = (spec.name if spec else step.__module__).removesuffix(".__main__")
    doc = (getattr(module, "__doc__", None) or "").strip()
    return (
        f"usage: python -m {name} [key=value ...] [--print-config]\n\n{doc}\n\n"
        "Overrides use Hydra syntax (config/hydra/); --print-config prints the composed config "
        "and exits."
    )


def run_step(step: Callable[[DictConfig], object], argv: list[str] | None = None) -> int:
    """Compose the config from `argv` overrides, run `step(cfg)`, turn user errors into one line.

    `--help` prints the usage; `--print-config` prints the composed config and exits.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if "--help" in args or "-h" in args:
            print(usage(step))
            return 0
        if "--print-config" in args:
            args.remove("--print-config")
            print(OmegaConf.to_yaml(compose(args)))
            return 0
        cfg = compose(args)
        setup(cfg)
        step(cfg)
    except CtsftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, MemoryError, torch.OutOfMemoryError) as err:
        message = resource_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
