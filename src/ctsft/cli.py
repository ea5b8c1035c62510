"""Shared plumbing of `python -m ctsft.steps.<step> [overrides...]` entry points.

User errors (`CtsftError`) and resource faults (disk full, read-only or forbidden folders, an
output path that is a directory, out of memory; also when a library wraps them in its own
exception) become one `error: ...` line and exit code 2; the workflow's run_step.py does the same.
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


#: errno of the faults a user fixes on the file system (the rest keep their traceback)
_RESOURCE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EISDIR)
#: how libraries that do not raise OSError (safetensors, torch.save) word a full disk
_DISK_FULL = re.compile(r"No space left on device|os error 28|StorageFull|Disk quota exceeded")


def _resource_error(err: BaseException) -> BaseException | None:
    """The resource fault behind `err`: itself, or an exception it was raised from or while
    handling (torch.save and safetensors wrap the OSError of a full disk in their own)."""
    seen: set[int] = set()
    chain: BaseException | None = err
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, (MemoryError, torch.OutOfMemoryError)):
            return chain
        if isinstance(chain, OSError) and chain.errno in _RESOURCE_ERRNOS:
            return chain
        if _DISK_FULL.search(str(chain)):
            return OSError(errno.ENOSPC, "No space left on device")
        chain = chain.__cause__ or chain.__context__
    return None


def resource_message(err: BaseException) -> str | None:
    """One line for a resource fault (disk full, read-only, permission, memory, a file path that
    is a directory), else None."""
    fault = _resource_error(err)
    if fault is None:
        return None
    if not isinstance(fault, OSError):
        return OOM_HINT
    target = getattr(fault, "filename2", None) or fault.filename
    path = _target(target) if target else "the output"
    if fault.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing {path}: free space or set results_dir"
    if fault.errno == errno.EROFS:
        return f"read-only file system: cannot write {path}: set results_dir to a writable folder"
    if fault.errno == errno.EACCES:
        return f"permission denied: {path}: make it writable or set results_dir elsewhere"
    return f"{path} is a directory where a file is to be written: remove or rename it"


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
    except Exception as err:  # a resource fault as one line; anything else: its traceback
        message = resource_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
